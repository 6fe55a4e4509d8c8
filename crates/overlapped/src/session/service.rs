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

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use bytes::Bytes;

use super::blocking::{BlockingLine, BlockingMetrics, BlockingPool};
use super::config::ServiceConfig;
use super::connection::{Io, PeerFactory, Session, SessionFactory};
use super::core::{ServiceCore, DISCONNECTS_LOGGED_PER_SECOND};
use super::io::in_transit_cost;
use super::listener::Listener;
use super::log_budget::LogBudget;
use super::metrics::Metrics;
use super::registry::Registry;
use super::schedule::Schedule;
use super::sweep;
use super::timers::Timers;
use super::worker::Worker;
use crate::net::{TcpListener, TcpStream};
use crate::port::CompletionPort;

impl Session {
    /// The service the session belongs to, while it runs.
    pub fn service(&self) -> Option<Service> {
        let host: Arc<dyn std::any::Any + Send + Sync> = self.host()?;
        host.downcast::<ServiceCore>().ok().map(Service::from_core)
    }
}

/// A server or client: worker threads, each dispatching the packets of its
/// own completion port, and the sessions it tracks (the classic IOCP
/// `Service`, with a port per worker).
///
/// Cloning gives another handle to the same service.
#[derive(Clone)]
pub struct Service {
    pub(super) core: Arc<ServiceCore>,
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
            disconnect_log: LogBudget::new(DISCONNECTS_LOGGED_PER_SECOND),
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
        if let Some(wait) = core.config.completion_batch_wait {
            let batching = core.ports.iter().all(|port| port.set_batch_wait(wait));
            if !batching {
                tracing::warn!(
                    "completion_batch_wait takes io_uring on Linux 6.12 or later: ignored"
                );
            }
        }
        let mut workers = Vec::new();
        {
            let core = core.clone();
            workers.push(Worker::spawn("service-timer".into(), move || {
                core.timers.keep_time(sweep::of(&core));
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

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("sessions", &self.session_count())
            .field("local_addr", &self.local_addr())
            .finish()
    }
}
