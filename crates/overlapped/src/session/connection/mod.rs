//! `Session`: one connection of a service, with its receive always posted
//! and a send queue of which at most one gathered send is in flight.

mod recv;
mod send;

use std::fmt;
use std::io;
use std::mem;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use bytes::Bytes;

use super::clock::now_millis;
use super::io::{Announce, DisconnectNotice};
use super::metrics::Counters as WorkerCounters;
use super::recv_buffer::RecvBuffer;
use super::send_gate::SendGate;
use super::send_queue::SendQueue;
use crate::driver::buf::Tail;
use crate::error::{ErrorExt, WSAENOBUFS, WSA_OPERATION_ABORTED};
use crate::overlapped::Transfer;
use crate::port::PortStream;
use crate::sync::{Confined, ThreadKey};

/// What a service's sessions do: the hooks of the classic IOCP session.
///
/// Every hook runs on the worker thread the session belongs to, one at a
/// time, in order — never inside a call the program makes on another
/// thread ([`Session::send`], [`Session::disconnect`], `Service::stop`
/// hand their work to the worker). A hook that panics disconnects its own
/// session, with the panic as the logged reason; the worker goes on
/// serving the others.
pub trait SessionHandler: Send + Sync + 'static {
    /// The session is connected and its first receive is about to be posted.
    fn on_connected(&self, session: &Arc<Session>) {
        let _ = session;
    }

    /// Bytes arrived; `data` holds every byte received and not yet
    /// consumed. Returns how many bytes it consumed (the rest stays for the
    /// next call), or the reason to disconnect the session.
    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String>;

    /// A gathered send of `bytes` bytes completed.
    fn on_sent(&self, session: &Arc<Session>, bytes: usize) {
        let _ = (session, bytes);
    }

    /// The session is gone; called exactly once, with the reason (free
    /// text; [`DisconnectKind::of`](crate::session::DisconnectKind::of)
    /// classifies it). The service has logged it already unless it was
    /// routine or [`ServiceConfig::log_disconnects`](crate::session::ServiceConfig::log_disconnects) is off.
    fn on_disconnected(&self, session: &Arc<Session>, reason: &str) {
        let _ = (session, reason);
    }
}

/// Makes the handler of each new session.
pub type SessionFactory = Arc<dyn Fn() -> Arc<dyn SessionHandler> + Send + Sync>;

/// Makes the handler of each new session knowing its peer's address, or
/// refuses the connection: an `Err` closes it as soon as it is accepted,
/// with the reason logged (as a refusal for the session limits is) and
/// counted in [`Metrics::refused`](super::Metrics::refused). Runs on the worker that accepted.
pub type PeerFactory =
    Arc<dyn Fn(SocketAddr) -> Result<Arc<dyn SessionHandler>, String> + Send + Sync>;

/// The record of the service's operations and packets (see [`super::io::Io`]).
pub(crate) type Io = super::io::Io<Session>;

/// What a session, and the handler between it and the program (the PROXY
/// protocol's), need of the service it belongs to: the service implements
/// it, and a session names nothing else of it.
pub(crate) trait Host: std::any::Any + Send + Sync {
    /// Drops a disconnected session from the service's tables.
    fn forget(&self, id: u64);

    /// Logs why `session` was dropped, if the service logs disconnects
    /// (`ServiceConfig::log_disconnects`) and this is not a routine one.
    fn log_disconnect(&self, session: &Session, reason: &str);

    /// Hands `io` to the worker of session `id`; `false` once its port is
    /// closed.
    fn post_to_worker(&self, id: u64, io: Io) -> bool;

    /// Makes `client` the address of `session` (a PROXY protocol header
    /// named it), if the per-address limit lets it in.
    fn readdress(&self, session: &Session, client: SocketAddr) -> Result<(), String>;

    /// The program's handler for a session with `peer`, or the reason to
    /// refuse it.
    fn make_handler(&self, peer: SocketAddr) -> Result<Arc<dyn SessionHandler>, String>;
}

/// The receive buffer, and the vector that carries it into the kernel.
struct RecvSlot {
    buffer: Option<RecvBuffer>,
    carrier: Vec<Tail>,
}

/// One connection of a [`Service`](super::Service).
///
/// Every operation in flight holds an `Arc` of its session, so a session
/// lives until its last completion has been handled, whatever else drops it.
///
/// Its receive buffer and send queue belong to its worker thread, which
/// reaches them without a lock; a send or close from any other thread is
/// handed to that worker as a packet on its port.
pub struct Session {
    id: u64,
    peer: SocketAddr,
    /// The client a PROXY protocol header named (see `proxy_protocol`),
    /// set once, under the registry's lock.
    proxied_peer: OnceLock<SocketAddr>,
    stream: PortStream<Io>,
    handler: Arc<dyn SessionHandler>,
    service: Weak<dyn Host>,
    /// The receive buffer (while no receive is in flight it is whole).
    recv: Confined<RecvSlot>,
    send: Confined<SendQueue>,
    disconnected: AtomicBool,
    /// Receives arrive through a multishot receive (see
    /// [`super::ServiceConfig::multishot`]); the buffer then exists only
    /// while it holds the start of an incomplete packet.
    multishot: bool,
    /// Size of the buffer made when one is needed again.
    recv_capacity: (usize, usize),
    /// Most bytes the send queue may hold before the session is dropped.
    max_send_queue: usize,
    /// The counters of its worker (see [`super::Metrics`]).
    counters: Arc<WorkerCounters>,
    /// When the session last had no incomplete packet pending (ms on the
    /// service clock): the idle timeout runs from here.
    last_progress: AtomicU64,
    /// What the server holds for this session, readable from any thread
    /// (for the service's memory budget): its send queue's cost as its
    /// worker last stored it, the sends on their way to the worker, and its
    /// receive buffer.
    held_queued: AtomicUsize,
    held_handed: AtomicUsize,
    held_buffer: AtomicUsize,
    /// When the session was made (ms on the service clock): the handshake
    /// timeout runs from here until its first complete packet.
    made_at: u64,
    /// It has completed a packet.
    spoke: AtomicBool,
    /// Whether a graceful close is under way (no new sends, received bytes
    /// are discarded, and the write side shuts once the queue is flushed),
    /// and how many sends other threads handed to the worker that it has
    /// not queued yet.
    gate: SendGate,
    /// The write side was shut down.
    write_shut: AtomicBool,
    /// The peer ended its sending side (`NO_EOF`, `EOF_FIRST`: before any
    /// graceful close of ours, `EOF_AFTER_CLOSE`: during one).
    end_of_stream: AtomicU8,
}

/// The peer has not ended its sending side.
const NO_EOF: u8 = 0;
/// The peer ended its sending side first (a half-close, or a close).
const EOF_FIRST: u8 = 1;
/// The peer ended its sending side during our graceful close.
const EOF_AFTER_CLOSE: u8 = 2;

/// The limits a session enforces, from its service's configuration.
pub(crate) struct SessionLimits {
    pub(crate) recv_buffer: RecvBuffer,
    pub(crate) multishot: bool,
    pub(crate) max_send_queue: usize,
    /// The counters of the session's worker.
    pub(crate) counters: Arc<WorkerCounters>,
}

impl Session {
    pub(crate) fn new(
        id: u64,
        peer: SocketAddr,
        stream: PortStream<Io>,
        handler: Arc<dyn SessionHandler>,
        service: Weak<dyn Host>,
        limits: SessionLimits,
        worker: ThreadKey,
    ) -> Arc<Session> {
        let SessionLimits {
            recv_buffer,
            multishot,
            max_send_queue,
            counters,
        } = limits;
        let recv_capacity = (recv_buffer.capacity(), recv_buffer.low_water());
        let recv_buffer = (!multishot).then_some(recv_buffer);
        Arc::new(Session {
            id,
            peer,
            proxied_peer: OnceLock::new(),
            stream,
            handler,
            service,
            recv: Confined::owned_by(
                worker,
                RecvSlot {
                    buffer: recv_buffer,
                    carrier: Vec::new(),
                },
            ),
            send: Confined::owned_by(worker, SendQueue::default()),
            disconnected: AtomicBool::new(false),
            multishot,
            recv_capacity,
            max_send_queue,
            counters,
            last_progress: AtomicU64::new(now_millis()),
            held_queued: AtomicUsize::new(0),
            held_handed: AtomicUsize::new(0),
            held_buffer: AtomicUsize::new(0),
            made_at: now_millis(),
            spoke: AtomicBool::new(false),
            gate: SendGate::new(),
            write_shut: AtomicBool::new(false),
            end_of_stream: AtomicU8::new(NO_EOF),
        })
    }

    /// The session's id, unique within its service.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The peer's address: the client's, as a PROXY protocol header named
    /// it when the service takes them
    /// ([`ServiceConfig::proxy_protocol`](super::ServiceConfig::proxy_protocol)).
    pub fn peer_addr(&self) -> SocketAddr {
        self.proxied_peer.get().copied().unwrap_or(self.peer)
    }

    /// Records the client a PROXY protocol header named (the registry does,
    /// under its lock, as it moves the address's count).
    pub(crate) fn set_proxied_peer(&self, client: SocketAddr) {
        let _ = self.proxied_peer.set(client);
    }

    /// The service, while it runs.
    pub(crate) fn host(&self) -> Option<Arc<dyn Host>> {
        self.service.upgrade()
    }

    /// Whether the session is still connected.
    pub fn is_connected(&self) -> bool {
        !self.disconnected.load(Ordering::Acquire)
    }

    /// Whether the session is one of `service`'s.
    pub(crate) fn belongs_to<H: Host>(&self, service: &Arc<H>) -> bool {
        std::ptr::addr_eq(self.service.as_ptr(), Arc::as_ptr(service))
    }

    /// The counters of the session's worker.
    pub(crate) fn counters(&self) -> &WorkerCounters {
        &self.counters
    }

    /// Disconnects the session (`closesocket`): the connection ends at
    /// once, whoever still holds the session (the peer sees the end of the
    /// stream), in-flight operations are cancelled, and
    /// [`SessionHandler::on_disconnected`] runs — on the session's worker,
    /// after any hook already running there, never inside this call when
    /// it is made on another thread (so it may be called while holding a
    /// lock the hook takes). Only the first call does anything; the held
    /// `Arc<Session>` is an inert handle afterwards (sends return `false`).
    pub fn disconnect(self: &Arc<Self>, reason: &str) {
        if self.disconnected.swap(true, Ordering::AcqRel) {
            return;
        }
        self.counters.disconnected(reason);
        let _ = self.stream.close();
        if let Some(service) = self.service.upgrade() {
            service.forget(self.id);
            service.log_disconnect(self, reason);
        }
        if self.is_on_worker() {
            return self.announce_disconnect(reason);
        }
        // If the port is closed the notice is dropped here, and the hook
        // runs here: the worker is gone with its service.
        self.hand_to_worker(Io::Disconnected(DisconnectNotice::new(
            self.clone(),
            reason,
        )));
    }

    /// Runs [`SessionHandler::on_disconnected`]: on the worker, or where
    /// [`Session::disconnect`] decided.
    pub(crate) fn announce_disconnect(self: &Arc<Self>, reason: &str) {
        self.handler.on_disconnected(self, reason);
    }

    /// Closes the session gracefully (the server side of a clean shutdown):
    /// new sends are refused, what is queued is sent, then the write side
    /// is shut down (the peer reads to the end and sees EOF); received bytes
    /// are discarded until the peer closes, which disconnects the session.
    /// The Winsock way of a graceful close: `shutdown(SD_SEND)` once the
    /// last `WSASend` completed, `WSARecv` until it returns 0, `closesocket`.
    ///
    /// Every send that returned `true` before this call — from any thread —
    /// reaches the peer before the end of the stream.
    pub fn close_gracefully(self: &Arc<Self>) {
        if !self.gate.begin_drain() {
            return;
        }
        if self.is_on_worker() {
            self.shut_write_once_flushed();
        } else if !self.hand_to_worker(Io::Drain(self.clone())) {
            self.shut_write();
        }
    }

    /// On the worker: shuts the write side if nothing is left to send — no
    /// send in flight, none handed over on its way; otherwise the last of
    /// them does.
    fn shut_write_once_flushed(self: &Arc<Self>) {
        if self.send.with(|queue| queue.in_flight) == Some(false) && !self.gate.has_handed_over() {
            self.shut_write();
        }
    }

    /// [`Session::close_gracefully`] on the worker, which another thread
    /// asked to.
    pub(crate) fn on_drain(self: &Arc<Self>) {
        self.shut_write_once_flushed();
    }

    /// Whether a graceful close is under way.
    pub fn is_closing(&self) -> bool {
        self.gate.is_draining()
    }

    fn shut_write(self: &Arc<Self>) {
        if self.write_shut.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Err(e) = self.stream.shutdown(std::net::Shutdown::Write) {
            // ENOTCONN: the peer reset the connection first; nothing was owed
            // that it could still read.
            if e.raw_os_error() == Some(libc::ENOTCONN) {
                return self.disconnect("closed by peer");
            }
            return self.disconnect(&format!("cannot shut the connection down: {e}"));
        }
        if self.end_of_stream.load(Ordering::Acquire) != NO_EOF {
            // Both sides are done: what was owed went out before the FIN.
            self.disconnect(self.closed_reason());
        }
    }

    /// The peer ended its sending side: nothing more arrives. What is
    /// queued for it is still owed — a peer that half-closes reads on — so
    /// it is sent, then the write side shuts and the session ends (as a
    /// graceful close does); during our own graceful close, the same ends
    /// that close.
    fn on_end_of_stream(self: &Arc<Self>) {
        let end = if self.is_closing() {
            EOF_AFTER_CLOSE
        } else {
            EOF_FIRST
        };
        self.end_of_stream.store(end, Ordering::Release);
        if self.write_shut.load(Ordering::Acquire) {
            return self.disconnect(self.closed_reason());
        }
        self.gate.begin_drain();
        self.shut_write_once_flushed();
    }

    /// Milliseconds (service clock) since the session last had no
    /// incomplete packet pending.
    pub(crate) fn stalled_for(&self, now: u64) -> u64 {
        now.saturating_sub(self.last_progress.load(Ordering::Relaxed))
    }

    /// Nothing is pending: the idle timeout starts over.
    fn made_progress(&self) {
        self.last_progress.store(now_millis(), Ordering::Relaxed);
        // Called once what arrived was consumed whole: a packet completed.
        if !self.spoke.load(Ordering::Relaxed) {
            self.spoke.store(true, Ordering::Relaxed);
        }
    }

    /// Milliseconds (service clock) it has gone without completing a first
    /// packet since it was made; `None` once it has.
    pub(crate) fn silent_for(&self, now: u64) -> Option<u64> {
        (!self.spoke.load(Ordering::Relaxed)).then(|| now.saturating_sub(self.made_at))
    }

    /// The reason for an end of stream.
    fn closed_reason(&self) -> &'static str {
        match self.end_of_stream.load(Ordering::Acquire) {
            EOF_FIRST => "closed by peer",
            _ if self.is_closing() => "closed by server shutdown",
            _ => "closed by peer",
        }
    }

    /// Starts the overlapped connect of a client session; its completion
    /// starts the session.
    pub(crate) fn connect(self: &Arc<Self>, addr: SocketAddr) -> io::Result<()> {
        self.stream
            .start_connect(addr, Io::Connect(self.clone()))
            .map(drop)
            .map_err(|(e, _)| e)
    }

    /// Whether the current thread is the session's worker.
    pub(crate) fn is_on_worker(&self) -> bool {
        self.send.is_owned_here()
    }

    /// Announces the connection and posts the first receive, on the
    /// session's worker: off it, the worker is asked to.
    pub(crate) fn start(self: &Arc<Self>) {
        if self.is_on_worker() {
            self.begin();
        } else if !self.hand_to_worker(Io::Start(self.clone())) {
            self.disconnect("service stopped");
        }
    }

    /// [`Session::start`] on the worker, which another thread asked to.
    pub(crate) fn begin(self: &Arc<Self>) {
        if !self.is_on_worker() {
            return self.disconnect("started off its worker thread");
        }
        if !self.is_connected() {
            // Disconnected before it started: its `on_disconnected` is due
            // (or ran), and `on_connected` never comes after it.
            return;
        }
        // What `on_connected` sends goes out first, then what was sent to
        // the session before it started (a broadcast, another thread).
        let early = self.send.with(|queue| {
            queue.started = true;
            mem::take(&mut queue.early)
        });
        self.handler.on_connected(self);
        if !self.is_connected() {
            return;
        }
        if let Some(early) = early.filter(|early| !early.is_empty()) {
            self.send_early(early);
        }
        if self.multishot {
            let post = self
                .send
                .with(|queue| queue.start_reading(self.max_send_queue));
            if post == Some(true) {
                self.post_multishot();
            }
            return;
        }
        let buffer = self.recv.with(|slot| slot.buffer.take()).flatten();
        if let Some(buffer) = buffer {
            self.post_recv_unless_backlogged(buffer);
        }
    }

    /// Queues the sends that waited for the session to start, after what
    /// `on_connected` queued.
    fn send_early(self: &Arc<Self>, early: Vec<Bytes>) {
        let batch = self.send.with(|queue| {
            queue.early = early;
            queue.release_early()
        });
        if let Some(Some(batch)) = batch {
            self.post_send(batch);
        }
    }
}

/// What a send handed to the worker from another thread holds until the
/// worker queues it: its bytes, its box and its packet in the port's queue.
fn handed_over_cost(len: usize) -> usize {
    len + 256
}

impl Announce for Session {
    fn id(&self) -> u64 {
        self.id
    }

    fn announce(session: &Arc<Self>, reason: &str) {
        session.announce_disconnect(reason);
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("connected", &self.is_connected())
            .finish()
    }
}
