//! `Listener`: keeps several overlapped accepts posted and re-arms each one.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::clock::now_millis;
use super::connection::{Io, Session};
use super::core::{Listening, ServiceCore};
use super::io::Accepting;
use super::log_budget::LogBudget;
use super::registry::per_address_refusal;
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
    /// The service it accepts for, while it runs.
    service: Weak<ServiceCore>,
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
            service: Arc::downgrade(core),
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
            .accept(Io::Accept(Box::new(self.clone())))
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
    fn accepted(self: Arc<Self>, core: &Arc<ServiceCore>, mut packet: Completion<Io>) {
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
                core.defer(ACCEPT_BACKOFF, Box::new(move || self.rearm()));
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

impl Accepting<Session> for Listener {
    fn on_accept(self: Arc<Self>, packet: Completion<Io>) {
        if let Some(core) = self.service.upgrade() {
            self.accepted(&core, packet);
        }
    }
}

impl Listening for Listener {
    fn local_addr(&self) -> SocketAddr {
        Listener::local_addr(self)
    }

    fn close(&self) {
        Listener::close(self);
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
