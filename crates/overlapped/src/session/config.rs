//! `ServiceConfig`: the tunables of a service, and their defaults.

use std::thread;
use std::time::Duration;

/// Tunables of a [`Service`](super::Service).
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Worker threads, each with a completion port of its own; sessions are
    /// spread over them. Default: one per CPU.
    pub workers: usize,
    /// Accepts kept posted by the listener. Default: 16.
    pub accepts: usize,
    /// Bytes of each session's receive buffer. Default: 64 KiB.
    pub recv_buffer: usize,
    /// Free bytes below which a receive buffer is compacted; set it to the
    /// largest packet so a whole packet always fits. Default: 4096.
    pub recv_low_water: usize,
    /// Set `TCP_NODELAY` on every session, as game servers do: a small
    /// packet goes out at once instead of waiting for an acknowledgement.
    /// Default: on.
    pub nodelay: bool,
    /// Keep one multishot receive per session that takes buffers from its
    /// worker's pool as data arrives, instead of posting a receive into the
    /// session's own buffer after each one: fewer requests per message, and
    /// an idle session pins no receive buffer. Default: on.
    pub multishot: bool,
    /// Buffers of 2 KiB in the pool that multishot receives take from,
    /// shared out over the workers (each gets at least 1024, at most
    /// 16384, a power of two). The pool must outnumber the sessions with
    /// data on its way; under steady traffic every buffer of it is touched
    /// and resident. Default: 16384 (32 MiB).
    pub recv_pool_buffers: usize,
    /// Most sessions at once; a connection beyond it is closed as soon as
    /// it is accepted, with a log line. Default: 20,000.
    pub max_sessions: usize,
    /// Most sessions at once from one IP address (0: no limit), so that one
    /// address cannot take every slot; beyond it a connection is closed as
    /// soon as it is accepted, with a log line. Loopback peers are not held
    /// to it unless [`ServiceConfig::limit_loopback`] says so. Default: 64.
    pub max_sessions_per_ip: usize,
    /// Hold loopback peers (`127.0.0.0/8`, `::1`) to
    /// [`ServiceConfig::max_sessions_per_ip`] too. Off by default: every
    /// connection of a first try, a local load test, or a proxy or load
    /// balancer on the same host comes from one loopback address, and a
    /// peer on this host can exhaust the machine without a socket anyway.
    /// Remote peers are always counted. Default: off.
    pub limit_loopback: bool,
    /// A session that has not completed a first packet this long after it
    /// connected is disconnected (a slot held by a client that never
    /// speaks). `None` waits however long the idle timeout allows.
    /// Default: 15 s.
    pub handshake_timeout: Option<Duration>,
    /// A session that completes no packet for this long is disconnected: a
    /// silent client, or one that sends half a frame and stalls or trickles
    /// it a byte at a time. `None` keeps sessions however long they stall.
    /// Default: 120 s.
    pub idle_timeout: Option<Duration>,
    /// Most bytes a session's send queue may hold (queued and in flight).
    /// A client that does not read fills it; it is then disconnected, so
    /// its backlog cannot grow the server's memory without bound. Must be
    /// larger than the largest single send. While a queue holds more than
    /// half of it, a session stops receiving (a multishot receive is
    /// cancelled, a single receive not posted again) until the queue is
    /// down to a quarter: a client that sends faster than it reads is
    /// slowed by TCP flow control rather than dropped. Default: 4 MiB.
    pub max_send_queue: usize,
    /// Most bytes the service holds for all its sessions together — their
    /// send queues (each buffer with its cost), sends on their way to a
    /// worker, receive buffers and partial packets, as
    /// [`Session::held_bytes`](super::Session::held_bytes) counts them (0: no budget). Sessions are held
    /// to half of it — the other half is room for what those bytes cost
    /// the allocator, and for the server's own memory, so that the process
    /// stays within the budget: past that half, the sessions holding the
    /// most are disconnected, with a logged reason, until they hold nine
    /// tenths of it. The default is a quarter of the machine's memory,
    /// between 64 MiB and 8 GiB.
    pub max_memory: usize,
    /// Threads of the pool that runs blocking work
    /// ([`BlockingLine`](super::BlockingLine), `Room::blocking`), started
    /// as work first needs them. Default: 4.
    pub blocking_threads: usize,
    /// Blocking calls that may wait for a thread at once; past it a
    /// submission is refused ([`BlockingError::Full`](super::BlockingError::Full)).
    /// Default: 1024.
    pub blocking_queue: usize,
    /// Share the listening port with other processes that bind it the
    /// same way (`SO_REUSEPORT`, see [`TcpListener::bind_shared`](crate::TcpListener::bind_shared)): each
    /// takes a share of the connections. For servers whose sessions need
    /// nothing of each other across processes. Default: off.
    pub reuse_port: bool,
    /// Every connection starts with a PROXY protocol version 2 header
    /// (from a load balancer): the factory, the per-address limit,
    /// [`Session::peer_addr`](super::Session::peer_addr) and the logs see the client it names, and a
    /// connection without a valid one is closed with the reason logged.
    /// Only for a server behind such a balancer: anyone else could claim
    /// any address. Default: off.
    pub proxy_protocol: bool,
    /// A worker with nothing to do waits this long for more completions
    /// once the first could wake it, and handles them together: fewer
    /// wake-ups, each completion at most this much later (io_uring's
    /// minimum wait, Linux 6.12; elsewhere it has no effect). Measured on
    /// the game: 200 µs took a fifth off the CPU per snapshot
    /// (docs/performance-log.md). `None`: wake at the first. Default: `None`.
    pub completion_batch_wait: Option<Duration>,
    /// Log, through `tracing` at info level, why a session was dropped —
    /// a malformed packet, a handler's `Err`, a timeout, a full send
    /// queue, the memory budget, a failed receive or send — as
    /// `session N (PEER) disconnected: REASON`, at most 10 lines a second
    /// (the rest are counted in the next line). A peer that leaves and a
    /// server that stops are not logged, nor a panic, which is logged as
    /// an error anyway. Turn it off when `on_disconnected` logs its own
    /// line. Default: on.
    pub log_disconnects: bool,
}

/// A quarter of the machine's memory, between 64 MiB and 8 GiB: the
/// default [`ServiceConfig::max_memory`].
pub fn default_max_memory() -> usize {
    crate::driver::sys::physical_memory()
        .map_or(1 << 30, |bytes| bytes / 4)
        .clamp(64 << 20, 8 << 30)
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            workers: thread::available_parallelism().map_or(1, |n| n.get()),
            accepts: 16,
            recv_buffer: 64 * 1024,
            recv_low_water: 4096,
            nodelay: true,
            multishot: true,
            recv_pool_buffers: usize::from(crate::driver::buf_ring::POOL_BUFFERS),
            max_sessions: 20_000,
            max_sessions_per_ip: 64,
            limit_loopback: false,
            handshake_timeout: Some(Duration::from_secs(15)),
            idle_timeout: Some(Duration::from_secs(120)),
            max_send_queue: 4 << 20,
            max_memory: default_max_memory(),
            blocking_threads: 4,
            blocking_queue: 1024,
            reuse_port: false,
            proxy_protocol: false,
            completion_batch_wait: None,
            log_disconnects: true,
        }
    }
}
