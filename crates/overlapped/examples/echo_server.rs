//! The smallest server on the session layer: every byte back to its
//! sender. `overlapped server --model port --mode echo` is the same.
//!
//! Run: `cargo run -p overlapped --example echo_server [ADDR]` (default
//! `127.0.0.1:7777`), then e.g. `nc 127.0.0.1 7777`; stop it with Ctrl-C.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use overlapped::session::{Service, ServiceConfig, Session, SessionHandler, StopSignals};

/// Sends whatever arrives straight back.
struct Echo;

impl SessionHandler for Echo {
    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        // Copied into memory the session reuses: no allocation per message.
        session.send_copy(data);
        Ok(data.len())
    }
    // No `on_disconnected`: the service logs why it dropped a client
    // (`ServiceConfig::log_disconnects`).
}

fn main() -> io::Result<()> {
    tracing_subscriber::fmt().with_writer(io::stderr).init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7777".into());
    // Caught before the server listens: a signal as the first clients
    // connect still drains them.
    let signals = StopSignals::catch()?;
    let service = Service::server(
        addr.as_str(),
        ServiceConfig::default(),
        Arc::new(|| Arc::new(Echo)),
    )?;
    tracing::info!("echo server listening on {:?}", service.local_addr());
    service.run_until(signals, Duration::from_secs(5))?;
    Ok(())
}
