//! The completion-port model: the session layer's `Service` with worker
//! threads, in print, echo or chat mode.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use overlapped::session::{
    recv_buffer_for, PacketSession, PeerFactory, Service, ServiceConfig, Session, SessionHandler,
    StopSignals,
};

use super::{print_line, recv_line, Mode, ServerArgs};
use crate::chat::ChatRoom;
use crate::game::{self, GameConfig, World};

/// Serves until `signals` catch SIGINT/SIGTERM, then drains.
pub fn run(args: &ServerArgs, signals: StopSignals) -> io::Result<()> {
    let mut config = ServiceConfig {
        // Every mode's `on_disconnected` logs its own line, naming the client.
        log_disconnects: false,
        ..ServiceConfig::default()
    };
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
    let mut world = None;
    let factory: PeerFactory = match args.mode {
        Mode::Print => Arc::new(|_| Ok(Arc::new(Printer))),
        Mode::Echo => Arc::new(|_| Ok(Arc::new(Echo))),
        Mode::Chat => {
            config.recv_buffer = recv_buffer_for(max_packet);
            config.recv_low_water = max_packet;
            let rate = (args.max_chat_rate > 0).then_some(args.max_chat_rate);
            Arc::new(move |_| {
                Ok(Arc::new(PacketSession::new(
                    ChatRoom::new(max_packet, rate),
                    max_packet,
                )))
            })
        }
        Mode::Game => {
            config.recv_buffer = recv_buffer_for(game::MAX_PACKET);
            config.recv_low_water = game::MAX_PACKET;
            let persistence = game::Persistence::new(open_store(args)?);
            let game = World::new(
                GameConfig {
                    tick_hz: args.tick_hz,
                    max_room_players: usize::from(args.max_room_players),
                },
                persistence,
            );
            world = Some(game.clone());
            game.factory()
        }
    };
    #[cfg(feature = "agones")]
    let (factory, agones_events) = if args.agones {
        let (tracker, events) = crate::agones::channel();
        (crate::agones::track(factory, tracker), Some(events))
    } else {
        (factory, None)
    };
    let service = Service::server_with(args.addr, config, factory)?;
    let metrics = match args
        .metrics_addr
        .map(|addr| crate::metrics::serve(addr, &service))
    {
        Some(Err(e)) => {
            service.stop();
            return Err(e);
        }
        Some(Ok(endpoint)) => Some(endpoint),
        None => None,
    };
    let addr = service.local_addr().expect("a server service listens");
    super::announce(addr);
    // The workers serve; this thread waits for the signal to stop.
    #[cfg(feature = "agones")]
    let agones = match agones_events {
        Some(events) => match start_agones(args, &service, events, world.clone()) {
            Ok(agones) => Some(agones),
            Err(e) => {
                service.stop();
                return Err(e);
            }
        },
        None => None,
    };
    let grace = Duration::from_millis(args.shutdown_timeout_ms);
    service.run_until(signals, grace)?;
    #[cfg(feature = "agones")]
    if let Some(agones) = agones {
        agones.stop();
    }
    if let Some(endpoint) = metrics {
        endpoint.stop();
    }
    if let Some(world) = world {
        // The players who left in the drain are saved before exit.
        let report = world.close(Instant::now() + grace);
        match report.unsaved {
            0 => tracing::info!("players saved: {} saves written", report.written),
            n => tracing::error!(
                "{n} players' saves could not be written before exit (the database was \
                 unavailable or behind); {} were written",
                report.written
            ),
        }
    }
    Ok(())
}

/// The game server's life with Agones (`--agones`), the server listening.
#[cfg(feature = "agones")]
fn start_agones(
    args: &ServerArgs,
    service: &Service,
    events: crate::agones::Events,
    world: Option<Arc<World>>,
) -> io::Result<crate::agones::Agones> {
    let counted = service.clone();
    let occupancy: crate::agones::Occupancy = Arc::new(move || {
        let rooms = world.as_ref().map_or(0, |world| world.rooms_open());
        (counted.session_count(), rooms)
    });
    let config = crate::agones::AgonesConfig {
        sidecar: None,
        health_every: Duration::from_millis(args.agones_health_ms),
        shutdown_when_empty: args.agones_shutdown_when_empty,
    };
    crate::agones::Agones::start(service, events, occupancy, config)
}

/// The game's store, as `--db` names it (`--db-delay-ms` slows it down).
fn open_store(args: &ServerArgs) -> io::Result<Option<Box<dyn game::store::Store>>> {
    let store =
        game::store::open(&args.db).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if args.db_delay_ms == 0 {
        return Ok(store);
    }
    Ok(store.map(|inner| {
        Box::new(game::store::Slow {
            inner,
            delay: Duration::from_millis(args.db_delay_ms),
        }) as Box<dyn game::store::Store>
    }))
}

/// The game's workers take completions in groups for up to this long
/// (`--batch-wait-us`): a fifth less CPU per snapshot in alternating runs
/// (docs/performance-log.md), for at most 0.2 ms of the 2 ms its ticks may
/// be late.
const GAME_BATCH_WAIT_US: u64 = 200;

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
    config.limit_loopback = args.limit_loopback;
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
    config.reuse_port = args.reuse_port;
    config.proxy_protocol = args.proxy_protocol;
    let batch_wait_us = args.batch_wait_us.unwrap_or(match args.mode {
        Mode::Game => GAME_BATCH_WAIT_US,
        _ => 0,
    });
    config.completion_batch_wait =
        (batch_wait_us > 0).then(|| Duration::from_micros(batch_wait_us));
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
