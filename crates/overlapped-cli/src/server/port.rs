//! The completion-port model: the session layer's `Service` with worker
//! threads, in print, echo or chat mode.

use std::io;
use std::sync::Arc;

use overlapped::session::{
    recv_buffer_for, PacketSession, Service, ServiceConfig, Session, SessionHandler,
};
use overlapped::Bytes;

use super::{print_line, recv_line, Mode, ServerArgs};
use crate::chat::ChatRoom;

pub fn run(args: &ServerArgs) -> io::Result<()> {
    let mut config = ServiceConfig::default();
    if let Some(threads) = args.threads {
        config.workers = usize::from(threads);
    }
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
            Arc::new(move || Arc::new(PacketSession::new(ChatRoom, max_packet)))
        }
    };
    let service = Service::server(args.addr, config, factory)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", args.addr)))?;
    let addr = service.local_addr().expect("a server service listens");
    super::announce(addr);
    // The workers serve; this thread has nothing left to do.
    loop {
        std::thread::park();
    }
}

fn log_connected(session: &Arc<Session>) {
    tracing::info!("client {} connected", session.peer_addr());
}

fn log_disconnected(session: &Arc<Session>, reason: &str) {
    tracing::info!("client {} disconnected: {reason}", session.peer_addr());
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
        session.send(Bytes::copy_from_slice(data));
        Ok(data.len())
    }
    fn on_disconnected(&self, session: &Arc<Session>, reason: &str) {
        log_disconnected(session, reason);
    }
}
