//! `Listener`: keeps several overlapped accepts posted and re-arms each one.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::clock::now_millis;
use super::config::ServiceConfig;
use super::core::ServiceCore;
use super::io::Io;
use super::log_budget::LogBudget;
use crate::error::{ErrorExt, WSA_OPERATION_ABORTED};
use crate::net::TcpListener;
use crate::port::{Completion, PortListener};

/// Pause before re-arming an accept that failed for lack of resources
/// (descriptors, memory), so the server does not spin while it lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Refused connections logged one by one in a second; past that, a summary.
const REFUSALS_LOGGED_PER_SECOND: u32 = 10;
/// At most one log line per this long about failing accepts.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(1);

/// The accepting side of a server [`super::Service`].
pub struct Listener {
    socket: PortListener<Io>,
    closed: AtomicBool,
    /// When a failing accept was last logged (service clock, ms; 0: never).
    last_failure_log: AtomicU64,
    /// Refused connections, logged a few a second (a storm is summarised).
    refusals: LogBudget,
}

impl Listener {
    pub(crate) fn start(
        core: &Arc<ServiceCore>,
        listener: TcpListener,
    ) -> io::Result<Arc<Listener>> {
        let listener = Arc::new(Listener {
            socket: core.port().associate_listener(listener, 0)?,
            closed: AtomicBool::new(false),
            last_failure_log: AtomicU64::new(0),
            refusals: LogBudget::new(REFUSALS_LOGGED_PER_SECOND),
        });
        for _ in 0..core_accepts(core) {
            listener.post_accept()?;
        }
        Ok(listener)
    }

    fn post_accept(self: &Arc<Self>) -> io::Result<()> {
        self.socket
            .accept(Io::Accept(self.clone()))
            .map(drop)
            .map_err(|(e, _)| e)
    }

    /// Posts the accept again (after a back-off), unless closed.
    pub(crate) fn rearm(self: &Arc<Self>) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self.post_accept() {
            tracing::error!("cannot re-arm an accept: {e}");
        }
    }

    /// An accept completed: re-arm it, then start the new session.
    pub(crate) fn on_accept(self: Arc<Self>, core: &Arc<ServiceCore>, mut packet: Completion<Io>) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let accepted = packet.take_accepted();
        if let Err(e) = &packet.result {
            if e.winsock_code() == Some(WSA_OPERATION_ABORTED) {
                return;
            }
            if is_out_of_resources(e) {
                // The connection waits in the backlog; retrying at once
                // would fail the same way until something is freed.
                self.log_failure(&format!(
                    "accept failed: {e}; retrying in {} ms",
                    ACCEPT_BACKOFF.as_millis()
                ));
                core.defer_accept(self, ACCEPT_BACKOFF);
                return;
            }
            self.log_failure(&format!("accept failed: {e}"));
        }
        self.rearm();
        if let Some((stream, peer)) = accepted {
            let adopted = match refusal(core, peer) {
                Some(refusal) => {
                    core.count_refusal();
                    Err(refusal)
                }
                // A factory's refusal is counted before the stream closes.
                None => core.adopt(stream, peer),
            };
            let session = match adopted {
                Ok(session) => session,
                Err(refusal) => {
                    self.refusals.log(&format!("refused {peer}: {refusal}"));
                    return;
                }
            };
            core.count_accept();
            // The accept's packet names the listener, not the session: a
            // panicking `on_connected` must still disconnect this session.
            core.run_guarded(session.id(), || session.start());
        }
    }

    /// Logs an accept failure, at most once per [`ACCEPT_LOG_EVERY`].
    fn log_failure(&self, message: &str) {
        let now = now_millis();
        let last = self.last_failure_log.load(Ordering::Relaxed);
        let quiet = ACCEPT_LOG_EVERY.as_millis() as u64;
        if last == 0 || now.saturating_sub(last) >= quiet {
            self.last_failure_log.store(now, Ordering::Relaxed);
            tracing::warn!("{message}");
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr()
    }

    /// Stops accepting; posted accepts complete as aborted.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.socket.close();
    }
}

/// Why a connection from `peer` is refused, if it is: the service is full,
/// or its address has all the sessions it may have (counted once a PROXY
/// protocol header named the client, when the service takes them). The
/// reason names the setting that lifts it (the CLI's flag and the config's
/// field).
fn refusal(core: &ServiceCore, peer: SocketAddr) -> Option<String> {
    let config = core.config();
    let open = core.session_count();
    if open >= config.max_sessions {
        let limit = config.max_sessions;
        return Some(format!(
            "{open} sessions open, the limit is {limit} \
             (--max-sessions, ServiceConfig::max_sessions)"
        ));
    }
    if config.proxy_protocol {
        return None;
    }
    per_address_refusal(config, peer, core.sessions_from(peer.ip()))
}

/// Why another session from `peer`'s address is refused when it has
/// `from_ip` already, if it is.
pub(crate) fn per_address_refusal(
    config: &ServiceConfig,
    peer: SocketAddr,
    from_ip: usize,
) -> Option<String> {
    let per_ip = config.max_sessions_per_ip;
    if per_ip == 0 || (is_loopback(peer) && !config.limit_loopback) {
        return None;
    }
    (from_ip >= per_ip).then(|| {
        let loopback = if is_loopback(peer) {
            "; loopback peers are counted only with --limit-loopback, \
             ServiceConfig::limit_loopback"
        } else {
            ""
        };
        format!(
            "{from_ip} sessions open from {}, the limit per address is {per_ip} \
             (--max-sessions-per-ip, ServiceConfig::max_sessions_per_ip; 0 = none{loopback})",
            peer.ip()
        )
    })
}

/// A peer on this host: `127.0.0.0/8`, `::1`, or either mapped into IPv6.
fn is_loopback(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

/// Failures that last until descriptors or memory are freed.
fn is_out_of_resources(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

fn core_accepts(core: &ServiceCore) -> usize {
    core.config().accepts.max(1)
}
