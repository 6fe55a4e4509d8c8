//! The completion-port model: the session layer's `Service` with worker
//! threads, in print, echo or chat mode.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::SIGTERM;
use signal_hook::iterator::Signals;

use overlapped::session::{
    recv_buffer_for, PacketSession, Service, ServiceConfig, Session, SessionHandler,
};

use super::{print_line, recv_line, Mode, ServerArgs};
use crate::chat::ChatRoom;

pub fn run(args: &ServerArgs, mut signals: Signals) -> io::Result<()> {
    let mut config = ServiceConfig::default();
    if let Some(threads) = args.threads {
        config.workers = usize::from(threads);
    }
    apply_limits(args, &mut config)?;
    let max_packet = usize::from(args.max_packet);
    // Unframed modes hand on whatever arrives, so a small buffer does: the
    // same 4 KiB a tokio echo server reads into.
    if args.mode != Mode::Chat {
        config.recv_buffer = 4096;
        config.recv_low_water = 1024;
    }
    let factory: overlapped::session::SessionFactory = match args.mode {
        Mode::Print => Arc::new(|| Arc::new(Printer)),
        Mode::Echo => Arc::new(|| Arc::new(Echo)),
        Mode::Chat => {
            config.recv_buffer = recv_buffer_for(max_packet);
            config.recv_low_water = max_packet;
            let rate = (args.max_chat_rate > 0).then_some(args.max_chat_rate);
            Arc::new(move || {
                Arc::new(PacketSession::new(
                    ChatRoom::new(max_packet, rate),
                    max_packet,
                ))
            })
        }
    };
    let service = Service::server(args.addr, config, factory)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", args.addr)))?;
    let addr = service.local_addr().expect("a server service listens");
    super::announce(addr);
    // The workers serve; this thread waits for the signal to stop.
    let signal = signals.forever().next().unwrap_or(SIGTERM);
    let timeout = Duration::from_millis(args.shutdown_timeout_ms);
    tracing::info!(
        "{} received: shutting down (flushing sends, up to {} ms)",
        super::signal_name(signal),
        timeout.as_millis()
    );
    // A second signal during the drain stops at once.
    let stopper = service.clone();
    let waiting = signals.handle();
    let second = std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            tracing::warn!(
                "{} received again: stopping at once, dropping every session",
                super::signal_name(signal)
            );
            stopper.stop();
        }
    });
    let report = service.shutdown(timeout);
    waiting.close();
    let _ = second.join();
    tracing::info!(
        "shutdown: {} sessions closed cleanly, {} dropped at the deadline; {} bytes sent",
        report.closed,
        report.forced,
        report.bytes_sent
    );
    Ok(())
}

fn apply_limits(args: &ServerArgs, config: &mut ServiceConfig) -> io::Result<()> {
    let too_big =
        |flag: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{flag} is too large"));
    if let Some(max) = args.max_sessions {
        config.max_sessions = usize::try_from(max).map_err(|_| too_big("--max-sessions"))?;
    }
    if let Some(ms) = args.idle_timeout_ms {
        config.idle_timeout = (ms > 0).then(|| Duration::from_millis(ms));
    }
    if let Some(max) = args.max_sessions_per_ip {
        config.max_sessions_per_ip =
            usize::try_from(max).map_err(|_| too_big("--max-sessions-per-ip"))?;
    }
    if let Some(ms) = args.handshake_timeout_ms {
        config.handshake_timeout = (ms > 0).then(|| Duration::from_millis(ms));
    }
    if let Some(bytes) = args.max_send_queue {
        config.max_send_queue = usize::try_from(bytes).map_err(|_| too_big("--max-send-queue"))?;
    }
    if let Some(bytes) = args.max_memory {
        config.max_memory = usize::try_from(bytes).map_err(|_| too_big("--max-memory"))?;
    }
    config.multishot = !args.single_recv;
    Ok(())
}

fn log_connected(session: &Arc<Session>) {
    super::JOIN_LOG.info(&format!("client {} connected", session.peer_addr()));
}

fn log_disconnected(session: &Arc<Session>, reason: &str) {
    super::LEAVE_LOG.info(&format!(
        "client {} disconnected: {reason}",
        session.peer_addr()
    ));
}

/// The seed's output: one line per completed receive.
struct Printer;

impl SessionHandler for Printer {
    fn on_connected(&self, session: &Arc<Session>) {
        log_connected(session);
    }
    fn on_recv(&self, _: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        print_line(&recv_line(data));
        Ok(data.len())
    }
    fn on_disconnected(&self, session: &Arc<Session>, reason: &str) {
        log_disconnected(session, reason);
    }
}

/// Every received byte goes back to its sender.
struct Echo;

impl SessionHandler for Echo {
    fn on_connected(&self, session: &Arc<Session>) {
        log_connected(session);
    }
    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        session.send_copy(data);
        Ok(data.len())
    }
    fn on_disconnected(&self, session: &Arc<Session>, reason: &str) {
        log_disconnected(session, reason);
    }
}
