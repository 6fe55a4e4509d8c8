//! A position game on the game layer: players join numbered rooms, move,
//! and every tick each room sends its players a snapshot of everyone's
//! latest position. `overlapped server --mode game` serves this same file.
//!
//! Frames are `[size u16][id u16][payload]`, all numbers little-endian:
//!
//! | id | name | direction | payload |
//! |---|---|---|---|
//! | 10 | `C_JOIN` | client → server | `[room u32][name: UTF-8, 1–32 bytes, no control characters]` |
//! | 11 | `S_JOINED` | server → joiner | `[your id u64][room u32][tick_hz u16]` |
//! | 12 | `S_PLAYER_JOIN` | server → room | `[id u64][name]` |
//! | 13 | `C_MOVE` | client → server | `[x f32][y f32]`, finite, within ±10000 |
//! | 14 | `S_SNAPSHOT` | server → room | `[tick u32][count u16]` + count × `[id u64][x f32][y f32]` |
//! | 15 | `S_PLAYER_LEAVE` | server → room | `[id u64]` |
//!
//! A malformed packet, a move before joining, a second join, a bad name or
//! coordinate, an unknown id or a join to a full room disconnects that
//! session alone, with the reason logged.
//!
//! A player's last position and play time are kept under its name
//! ([`Persistence`]): a player who comes back starts where it left. The
//! load and the save run on the service's blocking threads, never on a
//! worker: the room admits a joiner once its record is in.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use overlapped::game::{
    Group, JoinError, PacketReader, PacketResult, PacketWriter, Room, Rooms, Router, SessionState,
    Tick,
};
use overlapped::session::{LogBudget, PeerFactory, Service, Session};

use super::persistence::{CloseReport, Persistence};
use super::store::Saved;

pub const C_JOIN: u16 = 10;
pub const S_JOINED: u16 = 11;
pub const S_PLAYER_JOIN: u16 = 12;
pub const C_MOVE: u16 = 13;
pub const S_SNAPSHOT: u16 = 14;
pub const S_PLAYER_LEAVE: u16 = 15;

/// The longest name, in bytes.
pub const MAX_NAME: usize = 32;
/// How far from the origin a coordinate may be.
pub const MAX_COORDINATE: f32 = 10_000.0;
/// The largest frame a client may send: a join with the longest name fits
/// with room to spare, so that a name a little too long is refused as a
/// bad name rather than as an oversized frame.
pub const MAX_PACKET: usize = 64;

/// The game's settings.
#[derive(Clone, Copy, Debug)]
pub struct GameConfig {
    /// Snapshots per second.
    pub tick_hz: u16,
    /// Players a room holds; a join beyond it is refused.
    pub max_room_players: usize,
}

/// The rooms, by number: made on the first join, dropped when the last
/// player leaves.
pub struct World {
    config: GameConfig,
    rooms: Rooms<u32, RoomState>,
    /// Where players are kept between visits.
    persistence: Arc<Persistence>,
    /// Why players left, a few hundred lines a second at most.
    leave_log: LogBudget,
}

impl World {
    /// An empty world whose players are kept by `persistence`.
    pub fn new(config: GameConfig, persistence: Arc<Persistence>) -> Arc<World> {
        Arc::new(World {
            config,
            rooms: Rooms::new(config.max_room_players),
            persistence,
            leave_log: LogBudget::new(200),
        })
    }

    /// Queues `session`'s join to room `number`, opening the room if it
    /// is the first; why not if it cannot (full).
    fn join(
        &self,
        number: u32,
        session: &Arc<Session>,
        name: String,
        presence: Arc<Presence>,
    ) -> Result<(), String> {
        let service = session.service().ok_or("the service stopped")?;
        let player = Player {
            id: session.id(),
            name,
            session: session.clone(),
            presence,
        };
        let tick_hz = self.config.tick_hz;
        let persistence = self.persistence.clone();
        let loads_with = service.clone();
        // Counted in the room now; admitted once its record is loaded.
        let admit = move |_: &mut RoomState, room: &Room<RoomState>| {
            let room = room.clone();
            let name = player.name.clone();
            persistence.load(&loads_with, &name, move |saved| {
                room.push(move |state, _| state.admit(player, saved, tick_hz));
            });
        };
        self.rooms
            .join(number, || self.open_room(&service, number), admit)
            .map_err(|e| match e {
                JoinError::Full { capacity } => {
                    format!("room {number} is full ({capacity} players)")
                }
                JoinError::Open(reason) => reason,
                other => format!("room {number}: {other}"),
            })
            .map(drop)
    }

    /// A room ticking at the game's rate.
    fn open_room(&self, service: &Service, number: u32) -> Result<Room<RoomState>, String> {
        let state = RoomState {
            number,
            players: Vec::new(),
            group: Group::new(service),
        };
        let room = Room::new(service, format!("room {number}"), state);
        let period = Duration::from_secs(1) / u32::from(self.config.tick_hz.max(1));
        room.every(period, |state, _, tick| state.send_snapshot(tick))
            .map_err(|e| format!("cannot open room {number}: {e}"))?;
        Ok(room)
    }

    /// Player `id` left room `number` (the room closes after the last);
    /// its record is saved if it was admitted.
    fn leave(&self, session: &Arc<Session>, number: u32, name: &str, presence: &Presence) {
        if let Some(saved) = presence.record() {
            self.persistence
                .save(session.service().as_ref(), name, saved);
        }
        let id = session.id();
        self.rooms.leave(&number, move |room, _| room.leave(id));
    }

    /// Rooms open now (what Agones' `rooms` label says).
    #[allow(dead_code)] // used only by a build with the `agones` feature
    pub fn rooms_open(&self) -> usize {
        self.rooms.len()
    }

    /// Writes the saves still waiting, until `deadline` (at exit).
    pub fn close(&self, deadline: Instant) -> CloseReport {
        self.persistence.close(deadline)
    }

    /// The session factory of the game: every client starts as a player
    /// who has not joined.
    pub fn factory(self: &Arc<World>) -> PeerFactory {
        let world = self.clone();
        Router::new()
            .max_packet(MAX_PACKET)
            .route(C_JOIN, Client::on_join)
            .route(C_MOVE, Client::on_move)
            .factory(move |_peer: SocketAddr| Ok(Client::new(&world)))
    }
}

/// A player's latest position: written by its session's moves, read by
/// its room's ticks. A move is one store, not a job, so however fast a
/// client sends moves, its room's queue holds nothing more for them.
#[derive(Default)]
pub struct Position(AtomicU64);

/// What a player's session and its room share: where it is, and since
/// when it plays (set once its room admitted it, with the play time of its
/// earlier visits).
#[derive(Default)]
pub struct Presence {
    position: Position,
    moved: AtomicBool,
    admitted: OnceLock<(Instant, u64)>,
}

impl Presence {
    fn moved_to(&self, x: f32, y: f32) {
        self.position.set(x, y);
        self.moved.store(true, Ordering::Relaxed);
    }

    /// Takes the saved position, unless the player moved already.
    fn restore(&self, saved: Option<Saved>) {
        if let Some(saved) = saved {
            if !self.moved.load(Ordering::Relaxed) {
                self.position.set(saved.x, saved.y);
            }
        }
        let before = saved.map_or(0, |s| s.play_time_ms);
        let _ = self.admitted.set((Instant::now(), before));
    }

    /// What to save of it: `None` if it was never admitted (its load never
    /// came), which must not overwrite its record.
    fn record(&self) -> Option<Saved> {
        let (since, before) = self.admitted.get()?;
        let (x, y) = self.position.get();
        let played = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
        Some(Saved {
            x,
            y,
            play_time_ms: before.saturating_add(played),
        })
    }
}

impl Position {
    fn set(&self, x: f32, y: f32) {
        let bits = (u64::from(x.to_bits()) << 32) | u64::from(y.to_bits());
        self.0.store(bits, Ordering::Relaxed);
    }

    fn get(&self) -> (f32, f32) {
        let bits = self.0.load(Ordering::Relaxed);
        (
            f32::from_bits((bits >> 32) as u32),
            f32::from_bits(bits as u32),
        )
    }
}

/// A player as its room knows it.
struct Player {
    id: u64,
    name: String,
    session: Arc<Session>,
    presence: Arc<Presence>,
}

/// A room's state, changed only by its jobs.
pub struct RoomState {
    number: u32,
    players: Vec<Player>,
    group: Group,
}

impl RoomState {
    /// A joiner whose record came: into the room, where it left.
    fn admit(&mut self, player: Player, saved: Option<Saved>, tick_hz: u16) {
        player.presence.restore(saved);
        // Gone while its record was loading: its leave ran already.
        if !player.session.is_connected() {
            return;
        }
        self.join(player, tick_hz);
    }

    fn join(&mut self, player: Player, tick_hz: u16) {
        let joined = PacketWriter::new(S_JOINED)
            .u64(player.id)
            .u32(self.number)
            .u16(tick_hz);
        send(&player.session, joined);
        for other in &self.players {
            send(&player.session, player_join(other));
        }
        if let Ok(frame) = player_join(&player).finish() {
            self.group.broadcast(&frame);
        }
        self.group.insert(&player.session);
        self.players.push(player);
    }

    fn leave(&mut self, id: u64) {
        self.players.retain(|p| p.id != id);
        self.group.remove(id);
        if let Ok(frame) = PacketWriter::new(S_PLAYER_LEAVE).u64(id).finish() {
            self.group.broadcast(&frame);
        }
    }

    /// Every player's latest position, to every player, written once.
    fn send_snapshot(&mut self, tick: Tick) {
        let count = self.players.len();
        let mut snapshot = PacketWriter::with_capacity(S_SNAPSHOT, 6 + 16 * count)
            .u32(tick.number as u32)
            .u16(count as u16);
        for player in &self.players {
            let (x, y) = player.presence.position.get();
            snapshot = snapshot.u64(player.id).f32(x).f32(y);
        }
        match snapshot.finish() {
            Ok(frame) => _ = self.group.broadcast(&frame),
            Err(e) => tracing::error!("room {}: cannot send a snapshot: {e}", self.number),
        }
    }
}

fn player_join(player: &Player) -> PacketWriter {
    PacketWriter::new(S_PLAYER_JOIN)
        .u64(player.id)
        .bytes(player.name.as_bytes())
}

fn send(session: &Arc<Session>, frame: PacketWriter) {
    if let Ok(frame) = frame.finish() {
        session.send(frame);
    }
}

/// A session's own state: which room it joined, if any, under which
/// name, and where it is.
pub struct Client {
    world: Arc<World>,
    room: Option<(u32, String, Arc<Presence>)>,
}

impl Client {
    fn new(world: &Arc<World>) -> Client {
        Client {
            world: world.clone(),
            room: None,
        }
    }

    fn on_join(&mut self, session: &Arc<Session>, r: &mut PacketReader) -> PacketResult {
        if let Some((number, _, _)) = self.room {
            return Err(format!("a second C_JOIN (already in room {number})").into());
        }
        let number = r.u32()?;
        let name = r.rest_str().map_err(|_| "bad name: not UTF-8".to_owned())?;
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(format!("bad name: {} bytes (1 to {MAX_NAME})", name.len()).into());
        }
        // A name is relayed to every player of the room: no NUL, escape
        // or line break reaches their screens.
        if name.chars().any(char::is_control) {
            return Err("bad name: a control character".into());
        }
        let presence = Arc::new(Presence::default());
        self.world
            .join(number, session, name.to_owned(), presence.clone())?;
        self.room = Some((number, name.to_owned(), presence));
        Ok(())
    }

    fn on_move(&mut self, _: &Arc<Session>, r: &mut PacketReader) -> PacketResult {
        let (x, y) = (r.f32()?, r.f32()?);
        // Every field read before acting: a longer C_MOVE changes nothing.
        r.finish()?;
        let Some((_, _, presence)) = &self.room else {
            return Err("C_MOVE before C_JOIN".into());
        };
        for value in [x, y] {
            if !value.is_finite() || value.abs() > MAX_COORDINATE {
                return Err(
                    format!("bad coordinate {value} (finite, within ±{MAX_COORDINATE})").into(),
                );
            }
        }
        presence.moved_to(x, y);
        Ok(())
    }
}

impl SessionState for Client {
    fn on_disconnected(&mut self, session: &Arc<Session>, reason: &str) {
        let peer = session.peer_addr();
        self.world
            .leave_log
            .info(&format!("client {peer} disconnected: {reason}"));
        if let Some((number, name, presence)) = self.room.take() {
            self.world.leave(session, number, &name, &presence);
        }
    }
}
