//! `MetricsEndpoint`: a service's counters over HTTP, for Prometheus, and
//! a health check for Kubernetes or Agones — served on the session layer
//! itself, so that what a client can make it hold is bounded like a game
//! session's.
//!
//! Each connection asks one request and gets one answer, then closes. The
//! endpoint runs one worker thread and one timer thread of its own,
//! whatever the load; it holds at most [`EndpointConfig::max_connections`]
//! connections waiting for their request (a newcomer past it displaces the
//! one that has waited longest, so a flood of idle connections cannot keep
//! an honest scrape out), reads at most
//! [`EndpointConfig::max_request_head`] bytes of a request, and drops a
//! connection whose request has not arrived whole within
//! [`EndpointConfig::request_timeout`]. Its descriptors are bounded by
//! twice the connection limit, whatever the game port holds.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::config::ServiceConfig;
use super::connection::{Session, SessionHandler};
use super::heartbeat::Heartbeat;
use super::http::{self, Head};
use super::log_budget::LogBudget;
use super::metrics::DisconnectKind;
use super::service::Service;

/// Tunables of a [`MetricsEndpoint`].
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Connections waiting for their request at once; a newcomer past it
    /// disconnects the one that has waited longest. Default: 64.
    pub max_connections: usize,
    /// A request head must arrive whole this soon after the connection
    /// (and a client must close this soon after its answer). Default: 5 s.
    pub request_timeout: Duration,
    /// Most bytes of a request head; a longer one is answered with 431.
    /// Default: 8 KiB.
    pub max_request_head: usize,
    /// The prefix of every metric's name. Default: `overlapped`.
    pub prefix: String,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            max_connections: 64,
            request_timeout: Duration::from_secs(5),
            max_request_head: 8 * 1024,
            prefix: "overlapped".into(),
        }
    }
}

/// `GET /metrics` (Prometheus' text format) and `GET /healthz` (`ok`; 503
/// once the service is stopping, or while one of its workers has not beat
/// for 5 s — stuck in a job: see [`Service::heartbeat`]) for a
/// [`Service`], on an address of its own. There is no Winsock counterpart; it is what a fleet scrapes.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use overlapped::session::{EndpointConfig, MetricsEndpoint, Service, ServiceConfig, Session, SessionHandler};
/// # struct Echo;
/// # impl SessionHandler for Echo {
/// #     fn on_recv(&self, _: &Arc<Session>, d: &[u8]) -> Result<usize, String> { Ok(d.len()) }
/// # }
/// let game = Service::server("127.0.0.1:7777", ServiceConfig::default(), Arc::new(|| Arc::new(Echo)))?;
/// let metrics = MetricsEndpoint::serve("127.0.0.1:9100", &game, EndpointConfig::default())?;
/// println!("scrape http://{}/metrics", metrics.local_addr());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct MetricsEndpoint {
    service: Service,
    addr: SocketAddr,
}

impl MetricsEndpoint {
    /// Serves `target`'s counters on `addr` (port 0 picks one; see
    /// [`MetricsEndpoint::local_addr`]).
    pub fn serve(
        addr: impl ToSocketAddrs,
        target: &Service,
        config: EndpointConfig,
    ) -> io::Result<MetricsEndpoint> {
        if config.max_connections == 0 || config.max_request_head < 64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a metrics endpoint needs at least one connection and 64 bytes of request head",
            ));
        }
        let shared = Arc::new(Shared {
            target: target.clone(),
            heartbeat: target.heartbeat(BEAT),
            waiting: Mutex::new(VecDeque::new()),
            log: LogBudget::new(10),
            config: config.clone(),
        });
        let service = Service::server(
            addr,
            service_config(&config),
            Arc::new(move || {
                Arc::new(Exchange {
                    shared: shared.clone(),
                    answered: AtomicBool::new(false),
                })
            }),
        )?;
        let addr = service.local_addr().expect("a server listens");
        Ok(MetricsEndpoint { service, addr })
    }

    /// The address it serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.service.session_count()
    }

    /// Stops serving; open connections are dropped.
    pub fn stop(&self) {
        self.service.stop();
    }
}

/// How often the target's workers beat, and how long one may go without
/// before `/healthz` says it is stuck.
const BEAT: Duration = Duration::from_millis(500);
const STALLED_AFTER: Duration = Duration::from_secs(5);

/// The endpoint's own service: one worker, and the limits that bound it.
fn service_config(config: &EndpointConfig) -> ServiceConfig {
    ServiceConfig {
        workers: 1,
        recv_buffer: 2 * config.max_request_head,
        // The smallest pool: a request is a few hundred bytes, and what a
        // flood of large heads touches of the pool stays resident.
        recv_pool_buffers: 1024,
        recv_low_water: config.max_request_head,
        // Displacement keeps the waiting connections to the limit; this
        // bounds what is left (answered ones closing) and the descriptors.
        max_sessions: 2 * config.max_connections,
        max_sessions_per_ip: 0,
        handshake_timeout: Some(config.request_timeout),
        idle_timeout: Some(config.request_timeout),
        max_send_queue: 1 << 20,
        max_memory: 64 << 20,
        // Its `on_disconnected` logs the drops, naming the endpoint.
        log_disconnects: false,
        ..ServiceConfig::default()
    }
}

/// What every connection of an endpoint shares.
struct Shared {
    target: Service,
    /// The target's workers' beats: a stuck worker fails the health check.
    heartbeat: Heartbeat,
    /// Connections that have not had their answer, oldest first.
    waiting: Mutex<VecDeque<Arc<Session>>>,
    /// Connections dropped (slow, idle, malformed, displaced), logged ten a
    /// second and then summarised.
    log: LogBudget,
    config: EndpointConfig,
}

impl Shared {
    fn waiting(&self) -> MutexGuard<'_, VecDeque<Arc<Session>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stop_waiting(&self, session: &Session) {
        self.waiting().retain(|s| s.id() != session.id());
    }

    /// The answer to `method` on `path`: status, type and body.
    fn route(&self, method: &str, path: &str) -> (u16, &'static str, String) {
        if method != "GET" && method != "HEAD" {
            return (405, "text/plain", "only GET and HEAD are served\n".into());
        }
        match path {
            "/metrics" => (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.target.metrics().to_prometheus(&self.config.prefix),
            ),
            "/healthz" if self.target.is_stopping() => (503, "text/plain", "stopping\n".into()),
            "/healthz" => match self.heartbeat.stalled(STALLED_AFTER)[..] {
                [] => (200, "text/plain", "ok\n".into()),
                ref stuck => (503, "text/plain", format!("workers {stuck:?} are stuck\n")),
            },
            _ => (
                404,
                "text/plain",
                "not found: try /metrics or /healthz\n".into(),
            ),
        }
    }
}

/// One connection: a request, its answer, the close.
struct Exchange {
    shared: Arc<Shared>,
    answered: AtomicBool,
}

impl Exchange {
    fn answer(&self, session: &Arc<Session>, response: bytes::Bytes) {
        self.answered.store(true, Ordering::Relaxed);
        self.shared.stop_waiting(session);
        session.send(response);
        session.close_gracefully();
    }
}

impl SessionHandler for Exchange {
    fn on_connected(&self, session: &Arc<Session>) {
        let max = self.shared.config.max_connections;
        let displaced = {
            let mut waiting = self.shared.waiting();
            waiting.push_back(session.clone());
            (waiting.len() > max).then(|| waiting.pop_front()).flatten()
        };
        if let Some(oldest) = displaced {
            oldest.disconnect(&format!(
                "displaced by a newer connection: {max} were waiting for their request"
            ));
        }
    }

    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        if self.answered.load(Ordering::Relaxed) {
            return Ok(data.len());
        }
        match http::parse(data, self.shared.config.max_request_head) {
            Head::Partial => return Ok(0),
            Head::Request { method, path } => {
                let (status, content_type, body) = self.shared.route(&method, &path);
                let response = http::response(status, content_type, &body, method == "HEAD");
                self.answer(session, response);
            }
            Head::Refused { status, reason } => {
                self.shared.log.info(&format!(
                    "metrics endpoint: refused {}: {reason}",
                    session.peer_addr()
                ));
                let body = format!("{reason}\n");
                self.answer(session, http::response(status, "text/plain", &body, false));
            }
        }
        Ok(data.len())
    }

    fn on_disconnected(&self, session: &Arc<Session>, reason: &str) {
        self.shared.stop_waiting(session);
        let routine = matches!(
            DisconnectKind::of(reason),
            DisconnectKind::PeerClosed | DisconnectKind::Shutdown
        );
        if !routine {
            self.shared.log.info(&format!(
                "metrics endpoint: dropped {}: {reason}",
                session.peer_addr()
            ));
        }
    }
}
