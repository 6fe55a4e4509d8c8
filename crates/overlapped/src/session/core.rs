//! `ServiceCore`: what a service's workers, sessions, listener, rooms and
//! timers share — its ports, the session registry, the configuration and
//! counters, each worker's schedule.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::blocking::BlockingPool;
use super::config::ServiceConfig;
use super::connection::{Host, Io, PeerFactory, Session, SessionHandler, SessionLimits};
use super::jobs::{JobHost, JobQueue};
use super::log_budget::LogBudget;
use super::metrics::{Counters, DisconnectKind};
use super::proxy_protocol::Proxied;
use super::recv_buffer::RecvBuffer;
use super::registry::{per_address_refusal, Registry};
use super::schedule::{Due, Schedule};
use super::timers::Timers;
use super::worker::Worker;
use crate::net::TcpStream;
use crate::port::CompletionPort;
use crate::sync::{current_thread, ThreadKey};

pub(crate) struct ServiceCore {
    /// One port per worker, reaped by that worker alone.
    pub(super) ports: Vec<CompletionPort<Io>>,
    pub(super) factory: PeerFactory,
    pub(super) config: ServiceConfig,
    /// The sessions, by id, by worker and by address, under one lock.
    pub(super) registry: Registry,
    /// The threads that run blocking work for the service's rooms.
    pub(super) blocking: Arc<BlockingPool>,
    /// Bytes of broadcasts handed to other workers and not fanned out yet:
    /// counted with the sessions' against the memory budget.
    pub(super) in_transit: AtomicUsize,
    pub(super) next_id: AtomicU64,
    pub(super) listener: Mutex<Option<Arc<dyn Listening>>>,
    pub(super) workers: Mutex<Vec<Worker>>,
    /// The thread of each port's worker, in port order.
    pub(super) worker_threads: OnceLock<Vec<ThreadKey>>,
    /// The counters of each worker, in port order (see [`Metrics`](super::Metrics)); a
    /// session holds its worker's.
    pub(super) counters: Vec<Arc<Counters>>,
    pub(super) timers: Timers,
    /// What each worker runs at a moment (rooms' delayed jobs and ticks),
    /// in port order.
    pub(super) schedules: Vec<Schedule>,
    /// The worker the next room goes to.
    pub(super) next_room: AtomicUsize,
    /// Tickers started so far.
    pub(super) tickers: AtomicU64,
    /// Sessions `stop` disconnected (what a shutdown it cut short reports
    /// as dropped).
    pub(super) dropped_by_stop: AtomicUsize,
    /// `stop` has begun: a shutdown that finds it set before its own stop
    /// was cut short.
    pub(super) stopping: AtomicBool,
    /// A shutdown or a stop has begun (what a health check reports).
    pub(super) ending: AtomicBool,
    /// `stop` has finished: what [`Service::wait`](super::Service::wait) waits for.
    pub(super) stopped: Mutex<bool>,
    pub(super) stopped_changed: Condvar,
    /// The lines saying why sessions were dropped
    /// ([`ServiceConfig::log_disconnects`]).
    pub(super) disconnect_log: LogBudget,
}

/// Lines a second that say why a session was dropped: a storm of bad
/// clients writes a few, then a count.
pub(super) const DISCONNECTS_LOGGED_PER_SECOND: u32 = 10;

impl ServiceCore {
    /// Whether the current thread is one of the service's workers.
    pub(super) fn is_worker_thread(&self) -> bool {
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
            Arc::downgrade(self) as Weak<dyn Host>,
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

    pub(super) fn configure(&self, stream: &TcpStream) {
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

    /// Runs `run` on the timer thread once `delay` has passed (an accept
    /// re-armed after a back-off).
    pub(crate) fn defer(&self, delay: Duration, run: Box<dyn FnOnce() + Send>) {
        self.timers.defer(delay, run);
    }

    /// The port of the first worker, which the listener reports to.
    pub(crate) fn port(&self) -> &CompletionPort<Io> {
        &self.ports[0]
    }

    /// The port of the worker that session `id` belongs to.
    pub(super) fn port_of(&self, id: u64) -> &CompletionPort<Io> {
        &self.ports[self.worker_index(id)]
    }

    pub(super) fn worker_index(&self, id: u64) -> usize {
        (id % self.ports.len() as u64) as usize
    }

    /// The thread of the worker that session `id` belongs to. Workers start
    /// before any session is made; were one missing, the session's state
    /// would belong to this thread, and its worker would disconnect it.
    pub(super) fn worker_of(&self, id: u64) -> ThreadKey {
        let threads = self.worker_threads.get();
        let worker = threads.and_then(|threads| threads.get(self.worker_index(id)));
        worker.copied().unwrap_or_else(current_thread)
    }

    /// Queues `data` on every session of the worker at `index` (called on
    /// that worker); how many took it.
    pub(super) fn broadcast_here(&self, index: usize, data: &Bytes) -> usize {
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
    pub(super) fn worker_index_here(&self) -> Option<usize> {
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

    pub(super) fn recv_buffer(&self) -> RecvBuffer {
        RecvBuffer::new(self.config.recv_buffer, self.config.recv_low_water)
    }
}

/// The service's listener, as the service sees it.
pub(crate) trait Listening: Send + Sync {
    /// The address it listens on.
    fn local_addr(&self) -> SocketAddr;

    /// Stops accepting; posted accepts complete as aborted.
    fn close(&self);
}

impl Host for ServiceCore {
    fn forget(&self, id: u64) {
        ServiceCore::forget(self, id);
    }

    fn log_disconnect(&self, session: &Session, reason: &str) {
        // A panic is logged as an error where it is caught.
        let routine = matches!(
            DisconnectKind::of(reason),
            DisconnectKind::PeerClosed | DisconnectKind::Shutdown | DisconnectKind::Panic
        );
        if self.config.log_disconnects && !routine {
            self.disconnect_log.info(&format!(
                "session {} ({}) disconnected: {reason}",
                session.id(),
                session.peer_addr()
            ));
        }
    }

    fn post_to_worker(&self, id: u64, io: Io) -> bool {
        ServiceCore::post_to_worker(self, id, io)
    }

    fn readdress(&self, session: &Session, client: SocketAddr) -> Result<(), String> {
        ServiceCore::readdress(self, session, client)
    }

    fn make_handler(&self, peer: SocketAddr) -> Result<Arc<dyn SessionHandler>, String> {
        ServiceCore::make_handler(self, peer)
    }
}

impl JobHost for ServiceCore {
    fn post_jobs(&self, worker: usize, queue: Arc<JobQueue>) -> bool {
        self.post_to_worker_at(worker, Io::Jobs(queue))
    }

    fn job_ran(&self, panicked: bool) {
        self.counters_here().job_ran(panicked);
    }
}

/// Locks `mutex` whether or not a thread panicked holding it: the flags and
/// tables of a service are single writes a panic cannot leave half done.
pub(super) fn lock_ignoring_poison<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
