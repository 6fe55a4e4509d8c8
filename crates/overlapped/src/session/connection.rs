//! `Session`: one connection of a service, with its receive always posted
//! and a send queue of which at most one gathered send is in flight.

use std::fmt;
use std::io;
use std::mem;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use bytes::Bytes;

use super::clock::now_millis;
use super::core::ServiceCore;
use super::io::{DisconnectNotice, Io};
use super::metrics::Counters as WorkerCounters;
use super::recv_buffer::RecvBuffer;
use super::send_gate::SendGate;
use super::send_queue::SendQueue;
use super::service::Service;
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

    /// The session is gone; called exactly once, with the reason.
    fn on_disconnected(&self, session: &Arc<Session>, reason: &str) {
        let _ = (session, reason);
    }
}

/// The receive buffer, and the vector that carries it into the kernel.
struct RecvSlot {
    buffer: Option<RecvBuffer>,
    carrier: Vec<Tail>,
}

/// Bytes to queue: shared, or to be copied into the session's memory.
enum Outgoing<'a> {
    Shared(Bytes),
    Copied(&'a [u8]),
}

impl Outgoing<'_> {
    fn len(&self) -> usize {
        match self {
            Outgoing::Shared(data) => data.len(),
            Outgoing::Copied(data) => data.len(),
        }
    }

    /// Queues the bytes (coalescing small ones); what they cost.
    fn push_onto(self, queue: &mut SendQueue) -> usize {
        match self {
            Outgoing::Shared(data) => queue.push_shared(data),
            Outgoing::Copied(data) => queue.push_copy(data),
        }
    }

    /// The bytes as another thread hands them to the worker.
    fn into_owned(self) -> Bytes {
        match self {
            Outgoing::Shared(data) => data,
            Outgoing::Copied(data) => Bytes::copy_from_slice(data),
        }
    }
}

/// One connection of a [`Service`].
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
    service: Weak<ServiceCore>,
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
        service: Weak<ServiceCore>,
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

    /// The service's core, while it runs.
    pub(crate) fn core(&self) -> Option<Arc<ServiceCore>> {
        self.service.upgrade()
    }

    /// Whether the session is still connected.
    pub fn is_connected(&self) -> bool {
        !self.disconnected.load(Ordering::Acquire)
    }

    /// Whether the session is one of `core`'s.
    pub(crate) fn belongs_to(&self, core: &Arc<ServiceCore>) -> bool {
        std::ptr::eq(self.service.as_ptr(), Arc::as_ptr(core))
    }

    /// The counters of the session's worker.
    pub(crate) fn counters(&self) -> &WorkerCounters {
        &self.counters
    }

    /// The service the session belongs to, while it runs.
    pub fn service(&self) -> Option<Service> {
        self.service.upgrade().map(Service::from_core)
    }

    /// Queues `data` to be sent. If no send is in flight, everything queued
    /// goes out in one gathered send now; otherwise it joins the next one.
    /// The bytes are shared, not copied: the same `Bytes` can be queued on
    /// many sessions. Returns `false` (and drops `data`) once disconnected
    /// or closing. From a thread other than the session's worker, the bytes
    /// are handed to the worker, which queues them.
    ///
    /// A peer that does not read lets the queue grow; once it would hold
    /// more than [`super::ServiceConfig::max_send_queue`] bytes, the session
    /// is disconnected instead (its `on_disconnected` runs on the worker,
    /// inside this call when it is made there).
    pub fn send(self: &Arc<Self>, data: Bytes) -> bool {
        self.queue_send(Outgoing::Shared(data))
    }

    /// Queues a copy of `data`, as [`Session::send`] does with its own
    /// bytes. On the session's worker, a copy of up to 1 KiB goes into
    /// memory the session keeps and reuses once earlier copies have been
    /// sent, so a reply built from a slice (an echo, a game packet) costs no
    /// allocation per message; a larger one is allocated on its own.
    pub fn send_copy(self: &Arc<Self>, data: &[u8]) -> bool {
        self.queue_send(Outgoing::Copied(data))
    }

    fn queue_send(self: &Arc<Self>, data: Outgoing<'_>) -> bool {
        if !self.is_connected() || self.gate.is_draining() {
            return false;
        }
        let data = match self.queue_here(data) {
            Ok(queued) => return queued,
            // Another thread, or a send from inside the queue's own update.
            Err(data) => data,
        };
        // What is on its way to the worker is held too: counted against
        // the cap before it is handed over.
        let cost = handed_over_cost(data.len());
        let held =
            self.held_queued.load(Ordering::Relaxed) + self.held_handed.load(Ordering::Relaxed);
        if held + cost > self.max_send_queue {
            Enqueued::Overflow { held, more: cost }.finish(self);
            return false;
        }
        // Counted before it is handed over, unless the close came first:
        // a graceful close then waits for it (see `send_gate`).
        if !self.gate.admit() {
            return false;
        }
        self.held_handed.fetch_add(cost, Ordering::Relaxed);
        let handed = self.hand_to_worker(Io::Deliver(Box::new((self.clone(), data.into_owned()))));
        if !handed {
            self.held_handed.fetch_sub(cost, Ordering::Relaxed);
            self.gate.handed_over();
        }
        handed
    }

    /// Bytes the server holds for this session now: its queued sends
    /// (each buffer with its cost), the sends other threads handed to its
    /// worker that it has not queued yet, and its receive buffer. What the
    /// service's memory budget ([`super::ServiceConfig::max_memory`])
    /// counts.
    pub fn held_bytes(&self) -> usize {
        self.held_queued.load(Ordering::Relaxed)
            + self.held_handed.load(Ordering::Relaxed)
            + self.held_buffer.load(Ordering::Relaxed)
    }

    /// Bytes another thread handed over, queued here on the worker. They
    /// were taken before any graceful close that came after them, so they
    /// are sent even if the session is closing now, and the close shuts
    /// the write side only after them.
    pub(crate) fn on_handed_over(self: &Arc<Self>, data: Bytes) {
        self.held_handed
            .fetch_sub(handed_over_cost(data.len()), Ordering::Relaxed);
        let queued = self.is_connected() && self.queue_here(Outgoing::Shared(data)).is_ok();
        self.gate.handed_over();
        if !self.is_connected() {
            return;
        }
        if !queued {
            return self.disconnect("its send queue was reached off its worker thread");
        }
        if self.gate.is_draining() {
            self.shut_write_once_flushed();
        }
    }

    /// Queues `data` if this thread is the session's worker (and not inside
    /// the queue's own update); gives it back otherwise. Whether it was
    /// queued, or the session disconnected for it.
    fn queue_here<'a>(self: &Arc<Self>, data: Outgoing<'a>) -> Result<bool, Outgoing<'a>> {
        let queued = self
            .send
            .with_arg(data, |queue, data| self.enqueue(queue, data));
        queued.map(|queued| queued.finish(self))
    }

    /// Posts `io` to the session's worker; `false` once the service is gone.
    fn hand_to_worker(self: &Arc<Self>, io: Io) -> bool {
        match self.service.upgrade() {
            Some(service) => service.post_to_worker(self.id, io),
            None => false,
        }
    }

    /// Queues `data` on the worker; what to do next comes back.
    fn enqueue(&self, queue: &mut SendQueue, data: Outgoing<'_>) -> Enqueued {
        let cost = SendQueue::cost_of(data.len());
        if queue.queued + cost > self.max_send_queue && !queue.multishot.is_stopping() {
            return Enqueued::Overflow {
                held: queue.queued,
                more: cost,
            };
        }
        WorkerCounters::bump(&self.counters.packets_out, 1);
        if !queue.started {
            // Nothing goes out before what `on_connected` sends.
            queue.queued += cost;
            self.held_queued.store(queue.queued, Ordering::Relaxed);
            queue.early.push(data.into_owned());
            return Enqueued::Queued {
                batch: None,
                stop_reading: false,
            };
        }
        queue.queued += data.push_onto(queue);
        self.held_queued.store(queue.queued, Ordering::Relaxed);
        self.counters.send_queue_reached(queue.queued);
        let stop_reading = self.multishot && queue.stop_reading(self.max_send_queue);
        let batch = (!queue.in_flight).then(|| {
            queue.in_flight = true;
            queue.take_batch()
        });
        Enqueued::Queued {
            batch,
            stop_reading,
        }
    }

    /// Cancels the multishot receive for backpressure; its end comes back
    /// through [`Session::on_multishot_end`].
    fn stop_multishot(self: &Arc<Self>) {
        if let Err(e) = self.stream.cancel_multishot() {
            // It ended on its own already: its end, on the way or handled,
            // finds the session stopping and does not post it again.
            tracing::debug!("session {}: no multishot receive to stop: {e}", self.id);
        }
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

    fn post_multishot(self: &Arc<Self>) {
        if !self.is_connected() {
            return;
        }
        if let Err((error, _)) = self.stream.recv_multishot(Io::RecvEnd(self.clone())) {
            self.disconnect(&format!("cannot post a receive: {error}"));
        }
    }

    /// Bytes arrived through the multishot receive.
    pub(crate) fn on_arrival(self: &Arc<Self>, bytes: &[u8]) {
        // Bytes received while closing are dropped unread.
        if !self.is_connected() || self.is_closing() {
            return;
        }
        WorkerCounters::bump(&self.counters.bytes_in, bytes.len() as u64);
        let outcome = self.recv.with(|slot| self.receive(slot, bytes));
        match outcome {
            Some(Ok(())) => {}
            Some(Err(reason)) => self.disconnect(&reason),
            None => self.disconnect("its receive buffer was reached off its worker thread"),
        }
    }

    /// Hands `bytes`, after what the buffer holds, to the handler.
    fn receive(self: &Arc<Self>, slot: &mut RecvSlot, bytes: &[u8]) -> Result<(), String> {
        let outcome = match slot.buffer.as_mut() {
            // Nothing pending: the handler reads the pooled buffer directly,
            // and only an incomplete packet is copied out of it.
            None => self.handler.on_recv(self, bytes).and_then(|consumed| {
                let rest = bytes
                    .get(consumed..)
                    .ok_or("handler consumed more than it was given")?;
                if !rest.is_empty() {
                    let (capacity, low_water) = self.recv_capacity;
                    let buffer = slot
                        .buffer
                        .insert(RecvBuffer::growable(capacity, low_water));
                    if !buffer.append(rest) {
                        return Err("receive buffer full: a packet larger than the buffer".into());
                    }
                }
                Ok(())
            }),
            Some(buffer) => self.receive_into(buffer, bytes),
        };
        // An idle session pins no receive buffer.
        if slot
            .buffer
            .as_ref()
            .is_some_and(|b| b.readable().is_empty())
        {
            slot.buffer = None;
        }
        if slot.buffer.is_none() {
            self.made_progress();
        }
        let allocated = slot.buffer.as_ref().map_or(0, RecvBuffer::allocated);
        self.held_buffer.store(allocated, Ordering::Relaxed);
        outcome
    }

    /// Hands `bytes`, after what `buffer` holds of an incomplete packet, to
    /// the handler — in pieces as room allows, the handler consuming whole
    /// packets between them, so that any packet that fits the buffer is
    /// received whole however the arrivals cut it.
    fn receive_into(
        self: &Arc<Self>,
        buffer: &mut RecvBuffer,
        mut bytes: &[u8],
    ) -> Result<(), String> {
        while !bytes.is_empty() {
            let room = buffer.room();
            if room == 0 {
                return Err("receive buffer full: a packet larger than the buffer".into());
            }
            let (piece, rest) = bytes.split_at(bytes.len().min(room));
            if !buffer.append(piece) {
                return Err("receive buffer full: a packet larger than the buffer".into());
            }
            let consumed = self.handler.on_recv(self, buffer.readable())?;
            buffer
                .consume(consumed)
                .map_err(|e| format!("handler error: {e}"))?;
            if !self.is_connected() || self.is_closing() {
                // Nothing more is handed to a session its handler ended.
                return Ok(());
            }
            bytes = rest;
        }
        Ok(())
    }

    /// The multishot receive ended.
    pub(crate) fn on_multishot_end(self: &Arc<Self>, result: io::Result<Transfer>) {
        let code = result.as_ref().err().and_then(|e| e.winsock_code());
        let restartable = matches!(code, Some(WSAENOBUFS | WSA_OPERATION_ABORTED));
        if restartable && self.multishot_ended_for_backpressure() {
            return;
        }
        match result {
            Ok(_) => self.on_end_of_stream(),
            // The pool ran dry or the kernel stopped it: start it again.
            Err(e) if e.winsock_code() == Some(WSAENOBUFS) => self.post_multishot(),
            Err(e) => self.disconnect(&format!("receive failed: {e}")),
        }
    }

    /// Whether an end of the multishot receive belongs to backpressure:
    /// `true` if the receive stays stopped, or was posted again because the
    /// queue drained meanwhile.
    fn multishot_ended_for_backpressure(self: &Arc<Self>) -> bool {
        let resume = self.send.with(SendQueue::multishot_ended);
        let Some(Some(resume)) = resume else {
            return false;
        };
        if resume {
            self.post_multishot();
        }
        true
    }

    fn post_recv(self: &Arc<Self>, mut buffer: RecvBuffer) {
        if !self.is_connected() {
            return;
        }
        let tail = buffer.lend();
        self.held_buffer.store(buffer.capacity(), Ordering::Relaxed);
        let carrier = self.recv.with(|slot| {
            slot.buffer = Some(buffer);
            let mut carrier = mem::take(&mut slot.carrier);
            carrier.push(tail);
            carrier
        });
        let Some(carrier) = carrier else {
            return self.disconnect("its receive buffer was reached off its worker thread");
        };
        if let Err(e) = self.stream.recv(carrier, Io::Recv(self.clone())) {
            let (error, _, _) = e.into_parts();
            self.disconnect(&format!("cannot post a receive: {error}"));
        }
    }

    /// A receive completed: hand the bytes to the handler, then post the
    /// next receive.
    pub(crate) fn on_recv_complete(
        self: &Arc<Self>,
        result: io::Result<Transfer>,
        tails: Option<Vec<Tail>>,
    ) {
        let Some(mut buffer) = self.recv.with(|slot| slot.buffer.take()).flatten() else {
            return;
        };
        let received = match result {
            Ok(transfer) => transfer.bytes,
            Err(e) => return self.disconnect(&format!("receive failed: {e}")),
        };
        WorkerCounters::bump(&self.counters.bytes_in, received as u64);
        if let Some(mut carrier) = tails {
            if let Some(tail) = carrier.pop() {
                buffer.restore(tail, received);
            }
            self.recv.with(|slot| slot.carrier = carrier);
        }
        if received == 0 {
            return self.on_end_of_stream();
        }
        if !self.is_connected() {
            return;
        }
        if self.is_closing() {
            buffer.clear();
            return self.post_recv(buffer);
        }
        let consumed = match self.handler.on_recv(self, buffer.readable()) {
            Ok(consumed) => consumed,
            Err(reason) => return self.disconnect(&reason),
        };
        if let Err(e) = buffer.consume(consumed) {
            return self.disconnect(&format!("handler error: {e}"));
        }
        if buffer.readable().is_empty() {
            self.made_progress();
        }
        buffer.compact_if_needed();
        if buffer.free() == 0 {
            return self.disconnect("receive buffer full: a packet larger than the buffer");
        }
        self.post_recv_unless_backlogged(buffer);
    }

    /// Posts the next receive, unless the send queue holds more than half
    /// its cap: then the peer sends faster than it reads, and the session
    /// stops reading until the queue is down to a quarter, so TCP flow
    /// control slows the peer instead of the queue growing to the cap.
    fn post_recv_unless_backlogged(self: &Arc<Self>, buffer: RecvBuffer) {
        let unparked = self.send.with_arg(buffer, |queue, buffer| {
            if queue.queued > self.max_send_queue / 2 {
                queue.parked_recv = Some(buffer);
                return None;
            }
            Some(buffer)
        });
        match unparked {
            Ok(Some(buffer)) => self.post_recv(buffer),
            Ok(None) => {}
            Err(_) => self.disconnect("its send queue was reached off its worker thread"),
        }
    }

    fn post_send(self: &Arc<Self>, batch: Vec<Bytes>) {
        if let Err(e) = self.stream.send(batch, Io::Send(self.clone())) {
            let (error, _, _) = e.into_parts();
            self.disconnect(&format!("cannot post a send: {error}"));
        }
    }

    /// A gathered send completed: report it, then send whatever queued up
    /// meanwhile.
    pub(crate) fn on_send_complete(
        self: &Arc<Self>,
        result: io::Result<Transfer>,
        sent: Option<Vec<Bytes>>,
    ) {
        match result {
            Ok(transfer) => {
                WorkerCounters::bump(&self.counters.bytes_out, transfer.bytes as u64);
                self.handler.on_sent(self, transfer.bytes)
            }
            Err(e) => return self.disconnect(&format!("send failed: {e}")),
        }
        let next = self.send.with_arg(sent, |queue, sent| {
            // Keep the finished batch's vector for the next one.
            let mut spare = sent.unwrap_or_default();
            let done = SendQueue::cost_of_batch(&spare);
            queue.queued = queue.queued.saturating_sub(done);
            self.held_queued.store(queue.queued, Ordering::Relaxed);
            spare.clear();
            queue.spare = spare;
            let resume = queue.resume_reading(self.max_send_queue);
            if !queue.has_pending() || !self.is_connected() {
                queue.in_flight = false;
                (None, resume)
            } else {
                (Some(queue.take_batch()), resume)
            }
        });
        let Ok((batch, (resumed, restart_multishot))) = next else {
            return self.disconnect("its send queue was reached off its worker thread");
        };
        if let Some(buffer) = resumed {
            self.post_recv(buffer);
        }
        if restart_multishot {
            self.post_multishot();
        }
        match batch {
            Some(batch) => self.post_send(batch),
            None if self.is_closing() => self.shut_write_once_flushed(),
            None => {}
        }
    }
}

/// What a send handed to the worker from another thread holds until the
/// worker queues it: its bytes, its box and its packet in the port's queue.
fn handed_over_cost(len: usize) -> usize {
    len + 256
}

/// What [`Session::enqueue`] left to do once the queue is let go of.
enum Enqueued {
    /// The bytes would pass the cap: disconnect.
    Overflow { held: usize, more: usize },
    /// Queued: post `batch` if it is due, and stop reading if asked.
    Queued {
        batch: Option<Vec<Bytes>>,
        stop_reading: bool,
    },
}

impl Enqueued {
    /// Does it; whether the bytes were queued.
    fn finish(self, session: &Arc<Session>) -> bool {
        match self {
            Enqueued::Overflow { held, more } => {
                session.disconnect(&format!(
                    "send queue full: {held} bytes waiting and {more} more would pass the \
                     {}-byte limit (the client is not reading)",
                    session.max_send_queue
                ));
                false
            }
            Enqueued::Queued {
                batch,
                stop_reading,
            } => {
                if stop_reading {
                    session.stop_multishot();
                }
                if let Some(batch) = batch {
                    session.post_send(batch);
                }
                true
            }
        }
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
