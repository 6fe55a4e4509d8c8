//! A game server on the game layer: rooms with a 20 Hz snapshot tick. The
//! game itself, protocol and rules, is the file `overlapped server --mode
//! game` serves: `crates/overlapped-cli/src/game/rules.rs`.
//!
//! Run: `cargo run -p overlapped --example game_server [ADDR] [DB]` (default
//! `127.0.0.1:7777` and `game.sqlite3`; `none` keeps no one, a
//! `postgres://` URL uses PostgreSQL); stop it with Ctrl-C, which shuts it
//! down gracefully and saves the players still in.
//! `overlapped bench --mode game` drives it with bots.

#[path = "../../../overlapped-cli/src/game/rules.rs"]
mod game;
#[path = "../../../overlapped-cli/src/game/persistence.rs"]
mod persistence;
// The CLI's `--db-delay-ms` slows its store down; the example does not.
#[allow(dead_code)]
#[path = "../../../overlapped-cli/src/game/store.rs"]
mod store;

use std::io;
use std::time::{Duration, Instant};

use overlapped::session::{Service, ServiceConfig, StopSignals};

use game::{GameConfig, World, MAX_PACKET};

fn main() -> io::Result<()> {
    // The library logs through `tracing`: refusals, disconnect reasons,
    // panics. Without a subscriber they are not shown.
    tracing_subscriber::fmt().with_writer(io::stderr).init();
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7777".into());
    let db = args.next().unwrap_or_else(|| "game.sqlite3".into());
    // Where players are kept between visits: opened (or refused, with the
    // reason) before anyone connects.
    let store = store::open(&db).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let world = World::new(
        GameConfig {
            tick_hz: 20,
            max_room_players: 64,
        },
        persistence::Persistence::new(store),
    );
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
    let saved = world.close(Instant::now() + Duration::from_secs(5));
    tracing::info!(
        "{} saves written, {} could not be",
        saved.written,
        saved.unsaved
    );
    Ok(())
}
