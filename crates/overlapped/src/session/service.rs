//! `Service`: worker threads, a completion port for each, and the sessions
//! they serve, on the server side (with a [`super::Listener`]) or the client
//! side.
//!
//! Each worker has a port of its own, whose ring only that worker reaps
//! (`CompletionPort::for_one_worker`: on Linux 6.1 and later the kernel runs
//! it as `SINGLE_ISSUER | DEFER_TASKRUN`), and each session belongs to one
//! worker, chosen by its id: its completions are handled on that thread, one
//! after another, in order. Any thread may still start operations on any
//! session (a broadcast, a timer); they are handed over to its worker.

use std::collections::hash_map::Entry;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustc_hash::FxHashMap;

use super::blocking::{BlockingLine, BlockingMetrics, BlockingPool};
use super::connection::{Session, SessionHandler, SessionLimits};
use super::jobs::JobQueue;
use super::listener::per_address_refusal;
use super::listener::Listener;
use super::metrics::{Counters, Metrics};
use super::proxy_protocol::Proxied;
use super::recv_buffer::RecvBuffer;
use super::registry::Registry;
use super::schedule::{Due, Schedule};
use super::timers::Timers;
use super::worker::Worker;
use crate::boundary::panic_message;
use crate::event::INFINITE;
use crate::net::{TcpListener, TcpStream};
use crate::port::{Completion, CompletionPort};
use crate::sync::{current_thread, ThreadKey};

/// Makes the handler of each new session.
pub type SessionFactory = Arc<dyn Fn() -> Arc<dyn SessionHandler> + Send + Sync>;

/// Makes the handler of each new session knowing its peer's address, or
/// refuses the connection: an `Err` closes it as soon as it is accepted,
/// with the reason logged (as a refusal for the session limits is) and
/// counted in [`Metrics::refused`]. Runs on the worker that accepted.
pub type PeerFactory =
    Arc<dyn Fn(SocketAddr) -> Result<Arc<dyn SessionHandler>, String> + Send + Sync>;

/// The record each operation carries through the port: what to do with its
/// completion, and the `Arc` that keeps its owner alive meanwhile.
pub(crate) enum Io {
    Accept(Arc<Listener>),
    Connect(Arc<Session>),
    Recv(Arc<Session>),
    /// The end of a session's multishot receive.
    RecvEnd(Arc<Session>),
    Send(Arc<Session>),
    /// Start a session accepted on another worker's thread.
    Start(Arc<Session>),
    /// Bytes another thread sends on a session (boxed, so that every
    /// record stays two words, which operations carry without allocating).
    Deliver(Box<(Arc<Session>, Bytes)>),
    /// Another thread closes a session gracefully.
    Drain(Arc<Session>),
    /// Another thread disconnected a session: its `on_disconnected` runs
    /// here (or wherever the notice is dropped, if never dispatched).
    Disconnected(Box<DisconnectNotice>),
    /// The service stops: disconnect this worker's sessions and leave.
    Stop,
    /// Bytes to queue on every session of this worker (a broadcast; boxed,
    /// so that every record stays two words).
    Broadcast(Box<Bytes>),
    /// Run the jobs of a queue that belongs to this worker.
    Jobs(Arc<JobQueue>),
    /// Bytes to queue on sessions of this worker: a group's broadcast.
    GroupCast(Box<GroupCast>),
    /// An entry was added to this worker's schedule ahead of the others:
    /// look at it again before sleeping.
    Wake,
}

/// A group's broadcast handed to the worker of some of its members.
pub(crate) struct GroupCast {
    pub(crate) sessions: Vec<Arc<Session>>,
    pub(crate) data: Bytes,
}

impl GroupCast {
    /// What it holds until that worker has queued it.
    pub(crate) fn cost(&self) -> usize {
        in_transit_cost(&self.data) + self.sessions.len() * std::mem::size_of::<usize>()
    }
}

/// What a broadcast handed to another worker holds until that worker fans
/// it out: its bytes, its box and its packet in the port's queue.
fn in_transit_cost(data: &Bytes) -> usize {
    data.len() + 256
}

// Every record travels inside its operation without an allocation of its
// own only while it fits in two words (see `op::Erased`).
const _: () = assert!(std::mem::size_of::<Io>() <= 2 * std::mem::size_of::<usize>());

/// A session's `on_disconnected`, due on its worker. It runs when the
/// worker dispatches the notice, or — should the worker be gone and the
/// notice dropped with its port — where it is dropped: the hook runs
/// exactly once either way.
pub(crate) struct DisconnectNotice {
    session: Arc<Session>,
    reason: String,
    announced: bool,
}

impl DisconnectNotice {
    pub(crate) fn new(session: Arc<Session>, reason: &str) -> Box<DisconnectNotice> {
        Box::new(DisconnectNotice {
            session,
            reason: reason.to_owned(),
            announced: false,
        })
    }

    fn announce(&mut self) {
        if !std::mem::replace(&mut self.announced, true) {
            self.session.announce_disconnect(&self.reason);
        }
    }
}

impl Drop for DisconnectNotice {
    fn drop(&mut self) {
        if !self.announced {
            let id = self.session.id();
            let _ = crate::boundary::catch(&format!("on_disconnected of session {id}"), || {
                self.announce()
            });
        }
    }
}

/// Tunables of a [`Service`].
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
    /// [`Session::held_bytes`] counts them (0: no budget). Sessions are held
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
    /// same way (`SO_REUSEPORT`, see [`TcpListener::bind_shared`]): each
    /// takes a share of the connections. For servers whose sessions need
    /// nothing of each other across processes. Default: off.
    pub reuse_port: bool,
    /// Every connection starts with a PROXY protocol version 2 header
    /// (from a load balancer): the factory, the per-address limit,
    /// [`Session::peer_addr`] and the logs see the client it names, and a
    /// connection without a valid one is closed with the reason logged.
    /// Only for a server behind such a balancer: anyone else could claim
    /// any address. Default: off.
    pub proxy_protocol: bool,
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
        }
    }
}

pub(crate) use super::clock::now_millis;

/// What [`Service::shutdown`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Sessions whose queued sends were flushed and that closed cleanly.
    pub closed: usize,
    /// Sessions still open when the drain ended — at the deadline, or when
    /// a stop cut it short — disconnected at once.
    pub forced: usize,
    /// Bytes the service's sends delivered to the kernel over its life:
    /// all of them reach the peers that closed cleanly.
    pub bytes_sent: u64,
    /// The shutdown was asked for on one of the service's own worker
    /// threads (from a hook), which cannot wait for the sessions it serves
    /// itself: it goes on on a thread of its own, and the counts above are
    /// 0. [`Service::wait`] waits for it; the final counts are logged.
    pub in_background: bool,
    /// A [`Service::stop`] from elsewhere (a second signal in
    /// [`Service::run_until`]) ended the drain before its deadline: the
    /// `forced` sessions were dropped then, not at the deadline.
    pub cut_short: bool,
    /// Blocking calls ([`BlockingLine`]) still waiting or running at the
    /// deadline: dropped, their results never delivered.
    pub blocking_unfinished: usize,
}

impl ShutdownReport {
    /// The report of a service that stopped before any shutdown.
    pub(crate) fn nothing(bytes_sent: u64) -> ShutdownReport {
        ShutdownReport {
            closed: 0,
            forced: 0,
            bytes_sent,
            in_background: false,
            cut_short: false,
            blocking_unfinished: 0,
        }
    }
}

/// `N sessions closed cleanly, M dropped at the deadline; B bytes sent`
/// (or `M dropped when the drain was cut short`).
impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let when = if self.cut_short {
            "when the drain was cut short"
        } else {
            "at the deadline"
        };
        write!(
            f,
            "{} sessions closed cleanly, {} dropped {when}; {} bytes sent",
            self.closed, self.forced, self.bytes_sent
        )?;
        if self.blocking_unfinished > 0 {
            write!(
                f,
                "; {} blocking calls unfinished",
                self.blocking_unfinished
            )?;
        }
        Ok(())
    }
}

pub(crate) struct ServiceCore {
    /// One port per worker, reaped by that worker alone.
    ports: Vec<CompletionPort<Io>>,
    factory: PeerFactory,
    config: ServiceConfig,
    /// The sessions, by id, by worker and by address, under one lock.
    registry: Registry,
    /// The threads that run blocking work for the service's rooms.
    blocking: Arc<BlockingPool>,
    /// Bytes of broadcasts handed to other workers and not fanned out yet:
    /// counted with the sessions' against the memory budget.
    in_transit: AtomicUsize,
    next_id: AtomicU64,
    listener: Mutex<Option<Arc<Listener>>>,
    workers: Mutex<Vec<Worker>>,
    /// The thread of each port's worker, in port order.
    worker_threads: OnceLock<Vec<ThreadKey>>,
    /// The counters of each worker, in port order (see [`Metrics`]); a
    /// session holds its worker's.
    counters: Vec<Arc<Counters>>,
    timers: Timers,
    /// What each worker runs at a moment (rooms' delayed jobs and ticks),
    /// in port order.
    schedules: Vec<Schedule>,
    /// The worker the next room goes to.
    next_room: AtomicUsize,
    /// Tickers started so far.
    tickers: AtomicU64,
    /// Sessions `stop` disconnected (what a shutdown it cut short reports
    /// as dropped).
    dropped_by_stop: AtomicUsize,
    /// `stop` has begun: a shutdown that finds it set before its own stop
    /// was cut short.
    stopping: AtomicBool,
    /// A shutdown or a stop has begun (what a health check reports).
    ending: AtomicBool,
    /// `stop` has finished: what [`Service::wait`] waits for.
    stopped: Mutex<bool>,
    stopped_changed: Condvar,
}

impl ServiceCore {
    /// Whether the current thread is one of the service's workers.
    fn is_worker_thread(&self) -> bool {
        let me = current_thread();
        self.worker_threads
            .get()
            .is_some_and(|workers| workers.contains(&me))
    }

    /// The sessions open now.
    pub(crate) fn session_snapshot(&self) -> Vec<Arc<Session>> {
        self.registry.snapshot()
    }

    /// Drops a disconnected session from the tables.
    pub(crate) fn forget(&self, id: u64) {
        self.registry.remove(self.worker_index(id), id);
    }

    /// Sessions open now from `ip`.
    pub(crate) fn sessions_from(&self, ip: IpAddr) -> usize {
        self.registry.open_from(ip)
    }

    /// Makes a session for a stream (connected, or about to be) and tracks
    /// it; the factory's reason if it refuses the peer.
    pub(crate) fn adopt(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Result<Arc<Session>, String> {
        // Behind a balancer the factory waits for the header that names
        // the client (`proxy_protocol::Proxied` calls it).
        let handler = if self.config.proxy_protocol {
            Arc::new(Proxied::new())
        } else {
            self.make_handler(peer)?
        };
        self.configure(&stream);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let stream = self.port_of(id).associate(stream, id);
        let limits = SessionLimits {
            recv_buffer: self.recv_buffer(),
            multishot: self.multishot(),
            max_send_queue: self.config.max_send_queue,
            counters: self.counters[self.worker_index(id)].clone(),
        };
        let session = Session::new(
            id,
            peer,
            stream,
            handler,
            Arc::downgrade(self),
            limits,
            self.worker_of(id),
        );
        self.registry.insert(self.worker_index(id), session.clone());
        Ok(session)
    }

    /// The program's handler for a session with `peer`, or the factory's
    /// reason to refuse it (counted).
    pub(crate) fn make_handler(&self, peer: SocketAddr) -> Result<Arc<dyn SessionHandler>, String> {
        (self.factory)(peer).inspect_err(|_| self.count_refusal())
    }

    /// Makes `client` the address of `session` (a PROXY protocol header
    /// named it), if the per-address limit lets it in; the refusal is
    /// counted.
    pub(crate) fn readdress(&self, session: &Session, client: SocketAddr) -> Result<(), String> {
        let admitted = self.registry.readdress(session, client, |open| {
            match per_address_refusal(&self.config, client, open) {
                Some(refusal) => Err(refusal),
                None => Ok(()),
            }
        });
        admitted.inspect_err(|_| self.count_refusal())
    }

    fn configure(&self, stream: &TcpStream) {
        if self.config.nodelay {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::warn!("cannot set TCP_NODELAY: {e}");
            }
        }
    }

    /// The counters of the worker running on this thread (the first
    /// worker's off the workers).
    pub(crate) fn counters_here(&self) -> &Counters {
        &self.counters[self.worker_index_here().unwrap_or(0)]
    }

    pub(crate) fn count_accept(&self) {
        Counters::add(&self.counters_here().accepted, 1);
    }

    pub(crate) fn count_refusal(&self) {
        Counters::add(&self.counters_here().refused, 1);
    }

    /// Sessions open now.
    pub(crate) fn session_count(&self) -> usize {
        self.registry.len()
    }

    /// Posts an accept of `listener` again after `delay`.
    pub(crate) fn defer_accept(&self, listener: Arc<Listener>, delay: Duration) {
        self.timers.defer_accept(listener, delay);
    }

    /// The port of the first worker, which the listener reports to.
    pub(crate) fn port(&self) -> &CompletionPort<Io> {
        &self.ports[0]
    }

    /// The port of the worker that session `id` belongs to.
    fn port_of(&self, id: u64) -> &CompletionPort<Io> {
        &self.ports[self.worker_index(id)]
    }

    fn worker_index(&self, id: u64) -> usize {
        (id % self.ports.len() as u64) as usize
    }

    /// The thread of the worker that session `id` belongs to. Workers start
    /// before any session is made; were one missing, the session's state
    /// would belong to this thread, and its worker would disconnect it.
    fn worker_of(&self, id: u64) -> ThreadKey {
        let threads = self.worker_threads.get();
        let worker = threads.and_then(|threads| threads.get(self.worker_index(id)));
        worker.copied().unwrap_or_else(current_thread)
    }

    /// Queues `data` on every session of the worker at `index` (called on
    /// that worker); how many took it.
    fn broadcast_here(&self, index: usize, data: &Bytes) -> usize {
        self.registry
            .of_worker(index)
            .iter()
            .filter(|session| session.send(data.clone()))
            .count()
    }

    /// Bytes the service holds outside its sessions: broadcasts on their
    /// way to a worker.
    pub(crate) fn held_in_transit(&self) -> usize {
        self.in_transit.load(Ordering::Relaxed)
    }

    /// The index of the worker running on this thread, if it is one.
    fn worker_index_here(&self) -> Option<usize> {
        let me = current_thread();
        self.worker_threads.get()?.iter().position(|&w| w == me)
    }

    /// Hands `io` to the worker of session `id`; `false` once its port is
    /// closed.
    pub(crate) fn post_to_worker(&self, id: u64, io: Io) -> bool {
        self.port_of(id).post(id, 0, Some(io)).is_ok()
    }

    /// Hands `io` to the worker at `index`; `false` once its port is closed.
    pub(crate) fn post_to_worker_at(&self, index: usize, io: Io) -> bool {
        self.ports
            .get(index)
            .is_some_and(|port| port.post(0, 0, Some(io)).is_ok())
    }

    /// Worker threads (and ports).
    pub(crate) fn worker_count(&self) -> usize {
        self.ports.len()
    }

    /// A number for a new ticker, from 0 up (its stagger, see
    /// `Room::every`).
    pub(crate) fn next_ticker(&self) -> u64 {
        self.tickers.fetch_add(1, Ordering::Relaxed)
    }

    /// The worker a new room goes to: each in turn.
    pub(crate) fn worker_for_room(&self) -> usize {
        self.next_room.fetch_add(1, Ordering::Relaxed) % self.ports.len()
    }

    /// Runs `run` on the worker at `index` once `at` has come; `false`
    /// once the service has stopped.
    pub(crate) fn run_at(&self, index: usize, at: Instant, run: Due) -> bool {
        let Some(schedule) = self.schedules.get(index) else {
            return false;
        };
        match schedule.add(at, run) {
            None => false,
            // The worker may be asleep until a later entry.
            Some(true) if self.worker_index_here() != Some(index) => {
                self.post_to_worker_at(index, Io::Wake)
            }
            Some(_) => true,
        }
    }

    /// The index of the worker a session belongs to.
    pub(crate) fn worker_index_of(&self, id: u64) -> usize {
        self.worker_index(id)
    }

    /// The index of the worker running on this thread, if it is one.
    pub(crate) fn current_worker(&self) -> Option<usize> {
        self.worker_index_here()
    }

    /// Counts what a group's broadcast holds on its way to a worker.
    pub(crate) fn hold_in_transit(&self, bytes: usize) {
        self.in_transit.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn release_in_transit(&self, bytes: usize) {
        self.in_transit.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub(crate) fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// Whether sessions keep a multishot receive.
    pub(crate) fn multishot(&self) -> bool {
        self.config.multishot
    }

    fn recv_buffer(&self) -> RecvBuffer {
        RecvBuffer::new(self.config.recv_buffer, self.config.recv_low_water)
    }

    /// Dispatches a packet, guarded (see [`ServiceCore::run_guarded`]).
    fn dispatch_guarded(self: &Arc<Self>, packet: Completion<Io>, receiving: &mut Receiving) {
        // A session's packets carry its id; the listener's carry 0, which
        // names no session (ids start at 1).
        let key = packet.key;
        self.run_guarded(key, || self.dispatch(packet, receiving));
    }

    /// Runs `work` for session `id`. A handler that panics inside it
    /// disconnects that session, with the panic as the logged reason,
    /// instead of ending the worker and stalling every other session of
    /// that worker. The session's state survives a panic (its worker is
    /// let in again after an unwind), and the session is disconnected at
    /// once.
    pub(crate) fn run_guarded(&self, id: u64, work: impl FnOnce()) {
        let Err(panic) = panic::catch_unwind(AssertUnwindSafe(work)) else {
            return;
        };
        let what = panic_message(panic.as_ref());
        let session = self.registry.get(id);
        let Some(session) = session else {
            tracing::error!("a handler panicked: {what}");
            return;
        };
        let reason = format!("its handler panicked: {what}");
        tracing::error!("session {id} disconnected: {reason}");
        let disconnected = panic::catch_unwind(AssertUnwindSafe(|| session.disconnect(&reason)));
        if let Err(again) = disconnected {
            let what = panic_message(again.as_ref());
            tracing::error!("session {id}: on_disconnected panicked too: {what}");
        }
    }

    fn dispatch(self: &Arc<Self>, mut packet: Completion<Io>, receiving: &mut Receiving) {
        let Some(io) = packet.record.take() else {
            // An arrival of a multishot receive: the key names the session.
            if let Some(bytes) = packet.received() {
                if let Some(session) = receiving.session(packet.key, self) {
                    session.on_arrival(bytes);
                }
            }
            return;
        };
        match io {
            Io::Accept(listener) => listener.on_accept(self, packet),
            Io::Connect(session) => match packet.result {
                Ok(_) => session.start(),
                Err(e) => session.disconnect(&format!("connect failed: {e}")),
            },
            Io::Recv(session) => {
                let tails = packet.take_buffers();
                session.on_recv_complete(packet.result, tails)
            }
            Io::RecvEnd(session) => {
                receiving.ended(session.id());
                session.on_multishot_end(packet.result)
            }
            Io::Send(session) => {
                let sent = packet.take_buffers();
                session.on_send_complete(packet.result, sent)
            }
            Io::Start(session) => session.begin(),
            Io::Deliver(delivery) => {
                let (session, data) = *delivery;
                session.on_handed_over(data)
            }
            Io::Drain(session) => session.on_drain(),
            Io::Disconnected(mut notice) => notice.announce(),
            Io::Stop => self.disconnect_sessions_of(current_thread(), "service stopped"),
            Io::Broadcast(data) => {
                if let Some(index) = self.worker_index_here() {
                    self.broadcast_here(index, &data);
                }
                self.in_transit
                    .fetch_sub(in_transit_cost(&data), Ordering::Relaxed);
            }
            Io::Jobs(queue) => queue.run(self),
            Io::GroupCast(cast) => {
                self.release_in_transit(cast.cost());
                for session in &cast.sessions {
                    session.send(cast.data.clone());
                }
            }
            Io::Wake => {}
        }
    }

    /// Disconnects the sessions of the worker running on `worker`, there
    /// (the service stops).
    fn disconnect_sessions_of(&self, worker: ThreadKey, reason: &str) {
        let sessions: Vec<Arc<Session>> = self
            .session_snapshot()
            .into_iter()
            .filter(|session| self.worker_of(session.id()) == worker)
            .collect();
        self.dropped_by_stop
            .fetch_add(sessions.len(), Ordering::Relaxed);
        for session in sessions {
            self.run_guarded(session.id(), || session.disconnect(reason));
        }
    }

    /// A worker thread: dispatches the packets of its port until the
    /// service stops it (or the port closes).
    fn work(self: Arc<Self>, index: usize, port: &CompletionPort<Io>) {
        let mut batch = Vec::with_capacity(64);
        let mut receiving = Receiving::default();
        let schedule = &self.schedules[index];
        loop {
            // Asleep no later than the next entry of the schedule is due.
            let timeout = schedule.next().map_or(INFINITE, |at| {
                Some(at.saturating_duration_since(Instant::now()))
            });
            // The port returns an error only once it is closed.
            if port
                .get_queued_completion_status_ex(&mut batch, 64, timeout)
                .is_err()
            {
                return;
            }
            let mut stopping = false;
            // What the handlers start goes to the kernel in one submission.
            port.submit_batch(|| {
                for packet in batch.drain(..) {
                    stopping |= matches!(packet.record, Some(Io::Stop));
                    self.dispatch_guarded(packet, &mut receiving);
                }
                for due in schedule.take_due(Instant::now) {
                    let _ = crate::boundary::catch("a scheduled job", due);
                }
            });
            if stopping {
                return;
            }
        }
    }
}

/// A worker's own table of the sessions whose multishot receive it is
/// handling arrivals for, so that an arrival, which names its session only
/// by id, is matched without the service's shared table and its lock. An
/// entry is made at a session's first arrival and dropped with the end of
/// its multishot receive, which comes after every arrival of it: it keeps
/// no session alive that the receive itself does not.
#[derive(Default)]
struct Receiving {
    sessions: FxHashMap<u64, Arc<Session>>,
}

impl Receiving {
    /// The session an arrival under `id` is for, if it is still tracked.
    fn session(&mut self, id: u64, core: &ServiceCore) -> Option<&Arc<Session>> {
        match self.sessions.entry(id) {
            Entry::Occupied(tracked) => Some(tracked.into_mut()),
            Entry::Vacant(untracked) => Some(untracked.insert(core.registry.get(id)?)),
        }
    }

    /// Session `id`'s multishot receive ended: no arrival of it follows.
    fn ended(&mut self, id: u64) {
        self.sessions.remove(&id);
    }
}

/// A server or client: worker threads, each dispatching the packets of its
/// own completion port, and the sessions it tracks (the classic IOCP
/// `Service`, with a port per worker).
///
/// Cloning gives another handle to the same service.
#[derive(Clone)]
pub struct Service {
    core: Arc<ServiceCore>,
}

impl Service {
    pub(crate) fn from_core(core: Arc<ServiceCore>) -> Service {
        Service { core }
    }

    pub(crate) fn core(&self) -> &Arc<ServiceCore> {
        &self.core
    }

    fn start(config: ServiceConfig, factory: PeerFactory) -> io::Result<Service> {
        let workers = config.workers.max(1);
        let ports = (0..workers)
            .map(|_| CompletionPort::for_one_worker())
            .collect::<io::Result<Vec<_>>>()?;
        let blocking = Arc::new(BlockingPool::new(
            config.blocking_threads,
            config.blocking_queue,
        ));
        let core = Arc::new(ServiceCore {
            ports,
            factory,
            config,
            registry: Registry::new(workers),
            blocking,
            in_transit: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            listener: Mutex::new(None),
            workers: Mutex::new(Vec::new()),
            worker_threads: OnceLock::new(),
            counters: (0..workers).map(|_| Arc::default()).collect(),
            timers: Timers::default(),
            schedules: (0..workers).map(|_| Schedule::default()).collect(),
            next_room: AtomicUsize::new(0),
            tickers: AtomicU64::new(0),
            dropped_by_stop: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            ending: AtomicBool::new(false),
            stopped: Mutex::new(false),
            stopped_changed: Condvar::new(),
        });
        if core.multishot() {
            // A confined ring takes registrations only from its worker once
            // that has started: register the sessions' buffer pools now. On
            // failure the first multishot receive reports the error.
            for port in &core.ports {
                let share = core.config.recv_pool_buffers / core.ports.len();
                if let Err(e) = port.make_receive_pool(share) {
                    tracing::warn!("cannot register a receive buffer pool: {e}");
                }
            }
        }
        let mut workers = Vec::new();
        {
            let core = core.clone();
            workers.push(Worker::spawn("service-timer".into(), move || {
                core.timers.keep_time(&core);
                None::<fn()>
            })?);
        }
        for (index, port) in core.ports.iter().enumerate() {
            let core = core.clone();
            let port = port.clone();
            workers.push(Worker::spawn(
                format!("service-worker-{index}"),
                move || {
                    core.work(index, &port);
                    port.leftover_reaping()
                },
            )?);
        }
        // The timer's thread comes first.
        let threads = workers[1..].iter().map(|w| w.key);
        let _ = core.worker_threads.set(threads.collect());
        *core.workers.lock().unwrap_or_else(|p| p.into_inner()) = workers;
        Ok(Service { core })
    }

    /// A server: listens on `addr`, keeps `config.accepts` accepts posted,
    /// and makes a session with a handler from `factory` for each client.
    pub fn server(
        addr: impl ToSocketAddrs,
        config: ServiceConfig,
        factory: SessionFactory,
    ) -> io::Result<Service> {
        Service::server_with(addr, config, Arc::new(move |_| Ok(factory())))
    }

    /// A server whose factory learns each client's address and may refuse
    /// it (see [`PeerFactory`]); otherwise as [`Service::server`].
    pub fn server_with(
        addr: impl ToSocketAddrs,
        config: ServiceConfig,
        factory: PeerFactory,
    ) -> io::Result<Service> {
        let addrs = resolve(addr)?;
        let listener = TcpListener::bind_shared(&addrs[..], config.reuse_port)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", addrs[0])))?;
        let service = Service::start(config, factory)?;
        let listener = Listener::start(&service.core, listener)?;
        *service
            .core
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(listener);
        Ok(service)
    }

    /// A client: connects `count` sessions to `addr` with overlapped
    /// connects (`ConnectEx`). Failed connects are reported to their
    /// handler's `on_disconnected`.
    pub fn client(
        addr: impl ToSocketAddrs,
        count: usize,
        config: ServiceConfig,
        factory: SessionFactory,
    ) -> io::Result<Service> {
        let addr = resolve(addr)?[0];
        let service = Service::start(config, Arc::new(move |_| Ok(factory())))?;
        for _ in 0..count {
            if let Err(e) = service.connect(addr) {
                // No handle reaches the caller: its threads must not outlive it.
                service.stop();
                return Err(e);
            }
        }
        Ok(service)
    }

    /// Starts one more client session to `addr`.
    pub fn connect(&self, addr: SocketAddr) -> io::Result<Arc<Session>> {
        // The session must exist before its connect completes, so the
        // socket is made and adopted first, then connected.
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        let stream = TcpStream::from_unconnected(socket)?;
        let session = self
            .core
            .adopt(stream, addr)
            .map_err(|refusal| io::Error::new(io::ErrorKind::ConnectionRefused, refusal))?;
        if let Err(e) = session.connect(addr) {
            session.disconnect(&format!("connect failed: {e}"));
            return Err(e);
        }
        Ok(session)
    }

    /// The listening address of a server.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        let listener = self.core.listener.lock().unwrap_or_else(|p| p.into_inner());
        listener.as_ref().map(|l| l.local_addr())
    }

    /// Connected sessions right now.
    pub fn session_count(&self) -> usize {
        self.core.session_count()
    }

    /// A snapshot of the connected sessions.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.core.session_snapshot()
    }

    /// Queues the same bytes on every connected session (small ones are
    /// copied into each session's coalescing buffer, larger ones shared).
    /// Each worker fans the broadcast out to its own sessions: this call
    /// queues it on the sessions of the worker it runs on, if any, and hands
    /// it to every other worker once — one packet each, not one per
    /// session. Returns how many sessions it was queued on or handed to.
    pub fn broadcast(&self, data: &Bytes) -> usize {
        let here = self.core.worker_index_here();
        let mut reached = 0;
        for (index, port) in self.core.ports.iter().enumerate() {
            if Some(index) == here {
                reached += self.core.broadcast_here(index, data);
            } else {
                let cost = in_transit_cost(data);
                self.core.in_transit.fetch_add(cost, Ordering::Relaxed);
                let posted = port.post(0, 0, Some(Io::Broadcast(Box::new(data.clone()))));
                match posted {
                    Ok(()) => reached += self.core.registry.worker_len(index),
                    Err(_) => _ = self.core.in_transit.fetch_sub(cost, Ordering::Relaxed),
                }
            }
        }
        reached
    }

    /// A new line of blocking work on the service's pool (see
    /// [`BlockingLine`]).
    pub fn blocking_line(&self) -> BlockingLine {
        BlockingLine::new(&self.core.blocking)
    }

    /// Whether a [`Service::shutdown`] or [`Service::stop`] has begun: the
    /// service takes no new sessions, and a health check says so.
    pub fn is_stopping(&self) -> bool {
        self.core.ending.load(Ordering::Acquire)
    }

    /// Bytes the service's sends have delivered to the kernel so far.
    pub fn bytes_sent(&self) -> u64 {
        self.metrics().bytes_out
    }

    /// The service's counters now: sessions, packets and bytes in and out,
    /// disconnects by kind, its rooms' jobs and tick lateness.
    pub fn metrics(&self) -> Metrics {
        let mut metrics = Metrics::sum(&self.core.counters, self.session_count());
        metrics.blocking = BlockingMetrics::read(&self.core.blocking);
        metrics
    }

    /// Shuts the service down cleanly: stops accepting, closes every
    /// session gracefully ([`Session::close_gracefully`]: queued sends are
    /// flushed, then the peer sees the end of the stream), waits up to
    /// `timeout` for the peers to close, then stops the service, dropping
    /// whatever session is left.
    pub fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        if self.core.is_worker_thread() {
            return self.shutdown_in_background(timeout);
        }
        self.core.ending.store(true, Ordering::Release);
        let deadline = Instant::now() + timeout;
        let dropped_before = self.core.dropped_by_stop.load(Ordering::Relaxed);
        self.stop_listening();
        tracing::info!(
            "stopped accepting; closing {} sessions gracefully",
            self.session_count()
        );
        let mut closing = rustc_hash::FxHashSet::default();
        loop {
            // Each round closes whatever joined since the last (an accept
            // that completed as the listener stopped).
            for session in self.sessions() {
                if closing.insert(session.id()) {
                    session.close_gracefully();
                }
            }
            if self.session_count() == 0 || Instant::now() >= deadline {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        // Blocking work the sessions' ends asked for (a save) finishes
        // within the same deadline.
        let blocking_unfinished = self.core.blocking.finish(deadline);
        let cut_short = self.core.stopping.load(Ordering::Acquire);
        self.stop();
        // Those still open at the deadline, or when another thread's
        // `stop` (a second signal) cut the drain short.
        let forced = self.core.dropped_by_stop.load(Ordering::Relaxed) - dropped_before;
        ShutdownReport {
            closed: closing.len().saturating_sub(forced),
            forced,
            bytes_sent: self.bytes_sent(),
            in_background: false,
            cut_short,
            blocking_unfinished,
        }
    }

    /// [`Service::shutdown`] asked for on a worker thread: it goes on on a
    /// thread of its own, so that this worker serves its sessions while
    /// they close.
    fn shutdown_in_background(&self, timeout: Duration) -> ShutdownReport {
        let service = self.clone();
        let spawned = thread::Builder::new()
            .name("service-shutdown".into())
            .spawn(move || {
                let report = service.shutdown(timeout);
                tracing::info!("shutdown: {report}");
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the shutdown's thread ({e}); stopping at once");
            self.stop();
        }
        ShutdownReport {
            in_background: true,
            ..ShutdownReport::nothing(self.bytes_sent())
        }
    }

    /// Waits until the service has stopped ([`Service::stop`], or the end
    /// of a [`Service::shutdown`], from any thread). On one of the
    /// service's own worker threads it returns at once: that worker must go
    /// on serving for the service to stop.
    pub fn wait(&self) {
        if self.core.is_worker_thread() {
            return;
        }
        let mut stopped = lock_ignoring_poison(&self.core.stopped);
        while !*stopped {
            stopped = self
                .core
                .stopped_changed
                .wait(stopped)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn stop_listening(&self) {
        if let Some(listener) = self
            .core
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            listener.close();
        }
    }

    /// Stops the service: stops listening, disconnects every session (each
    /// worker disconnects its own, so every `on_disconnected` runs on its
    /// worker), closes the ports and waits until no worker runs the
    /// service's code any more. A worker then stays on its own until the
    /// kernel has finished the requests left on its ring (the cancellations
    /// of sessions the program still holds), which only it can reap.
    ///
    /// Called from a hook, on a worker, it disconnects that worker's
    /// sessions there and does not wait for it (it leaves once the hook
    /// returns).
    pub fn stop(&self) {
        self.core.stopping.store(true, Ordering::Release);
        self.core.ending.store(true, Ordering::Release);
        self.core.blocking.stop();
        self.stop_listening();
        self.core.timers.stop();
        for schedule in &self.core.schedules {
            schedule.stop();
        }
        let me = current_thread();
        for (index, port) in self.core.ports.iter().enumerate() {
            let worker = self.core.worker_threads.get().map(|w| w[index]);
            if worker == Some(me) {
                self.core.disconnect_sessions_of(me, "service stopped");
            } else if port.post(0, 0, Some(Io::Stop)).is_err() {
                // Stopped already.
            }
        }
        let workers =
            std::mem::take(&mut *self.core.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for worker in workers {
            if worker.key != me {
                worker.wait();
            }
        }
        for port in &self.core.ports {
            port.close();
        }
        // Sessions a worker did not get to (one it was handed as it left):
        // with the ports closed, their hooks run here.
        let left = self.sessions();
        self.core
            .dropped_by_stop
            .fetch_add(left.len(), Ordering::Relaxed);
        for session in left {
            session.disconnect("service stopped");
        }
        *lock_ignoring_poison(&self.core.stopped) = true;
        self.core.stopped_changed.notify_all();
    }
}

/// The addresses `addr` names: at least one, or an error saying so.
fn resolve(addr: impl ToSocketAddrs) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolves to no address",
        ));
    }
    Ok(addrs)
}

/// Locks `mutex` whether or not a thread panicked holding it: the flags and
/// tables of a service are single writes a panic cannot leave half done.
fn lock_ignoring_poison<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("sessions", &self.session_count())
            .field("local_addr", &self.local_addr())
            .finish()
    }
}
