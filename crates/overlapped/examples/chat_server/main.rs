//! A chat server on the session layer: one room, every line to everyone
//! (see `crates/overlapped-cli/src/chat.rs`, which the CLI serves too, for
//! the protocol). `overlapped server --model port
//! --mode chat` serves the same room with its limits as options.
//!
//! Run: `cargo run -p overlapped --example chat_server [ADDR]` (default
//! `127.0.0.1:7777`), then `cargo run -p overlapped --example chat_client`
//! in two terminals; stop it with Ctrl-C.

#[path = "../../../overlapped-cli/src/chat.rs"]
mod room;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use overlapped::session::{recv_buffer_for, PacketSession, Service, ServiceConfig, StopSignals};

use room::ChatRoom;

/// The largest packet a client may send, header included.
const MAX_PACKET: usize = 4096;
/// Chat lines a client may send a second (each goes to every session).
const MAX_CHAT_RATE: u32 = 200;

fn main() -> io::Result<()> {
    // The library logs through `tracing`; without a subscriber nothing shows.
    tracing_subscriber::fmt().with_writer(io::stderr).init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7777".into());
    let config = ServiceConfig {
        recv_buffer: recv_buffer_for(MAX_PACKET),
        recv_low_water: MAX_PACKET,
        ..ServiceConfig::default()
    };
    // Caught before the server listens: a signal as the first clients
    // connect still drains them.
    let signals = StopSignals::catch()?;
    let service = Service::server(
        addr.as_str(),
        config,
        Arc::new(|| {
            Arc::new(PacketSession::new(
                ChatRoom::new(MAX_PACKET, Some(MAX_CHAT_RATE)),
                MAX_PACKET,
            ))
        }),
    )?;
    tracing::info!("chat server listening on {:?}", service.local_addr());
    service.run_until(signals, Duration::from_secs(5))?;
    Ok(())
}
