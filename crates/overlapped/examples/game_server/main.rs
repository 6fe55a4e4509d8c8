//! A game server on the game layer: rooms with a 20 Hz snapshot tick. The
//! game itself, protocol and rules, is the file `overlapped server --mode
//! game` serves: `crates/overlapped-cli/src/game/rules.rs`.
//!
//! Run: `cargo run -p overlapped --example game_server [ADDR]` (default
//! `127.0.0.1:7777`); stop it with Ctrl-C, which shuts it down gracefully.
//! `overlapped bench --mode game` drives it with bots.

#[path = "../../../overlapped-cli/src/game/rules.rs"]
mod game;

use std::io;
use std::time::Duration;

use overlapped::session::{Service, ServiceConfig, StopSignals};

use game::{GameConfig, World, MAX_PACKET};

fn main() -> io::Result<()> {
    // The library logs through `tracing`: refusals, disconnect reasons,
    // panics. Without a subscriber they are not shown.
    tracing_subscriber::fmt().with_writer(io::stderr).init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7777".into());
    let world = World::new(GameConfig {
        tick_hz: 20,
        max_room_players: 64,
    });
    // Receive buffers that always hold a whole packet.
    let config = ServiceConfig {
        recv_buffer: overlapped::session::recv_buffer_for(MAX_PACKET),
        recv_low_water: MAX_PACKET,
        ..ServiceConfig::default()
    };
    // Caught before the server listens: a signal as the first clients
    // connect still drains them.
    let signals = StopSignals::catch()?;
    let service = Service::server_with(addr.as_str(), config, world.factory())?;
    tracing::info!("game server listening on {:?}", service.local_addr());
    service.run_until(signals, Duration::from_secs(5))?;
    Ok(())
}
