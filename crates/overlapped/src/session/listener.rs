//! `Listener`: keeps several overlapped accepts posted and re-arms each one.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::service::{Io, ServiceCore};
use crate::error::{ErrorExt, WSA_OPERATION_ABORTED};
use crate::net::TcpListener;
use crate::port::{Completion, PortListener};

/// Pause before re-arming an accept that failed for lack of resources
/// (descriptors, memory), so a worker does not spin while it lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The accepting side of a server [`super::Service`].
pub struct Listener {
    socket: PortListener<Io>,
    closed: AtomicBool,
}

impl Listener {
    pub(crate) fn start(
        core: &Arc<ServiceCore>,
        listener: TcpListener,
    ) -> io::Result<Arc<Listener>> {
        let listener = Arc::new(Listener {
            socket: core.port().associate_listener(listener, 0)?,
            closed: AtomicBool::new(false),
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
            tracing::warn!("accept failed: {e}");
            std::thread::sleep(ACCEPT_BACKOFF);
        }
        if let Err(e) = self.post_accept() {
            tracing::error!("cannot re-arm an accept: {e}");
        }
        if let Some((stream, peer)) = accepted {
            core.adopt(stream, peer).start();
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

fn core_accepts(core: &ServiceCore) -> usize {
    core.config().accepts.max(1)
}
