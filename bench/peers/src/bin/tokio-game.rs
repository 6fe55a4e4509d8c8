//! The game server a tokio user would write: a task per connection (its
//! reader, and a writer fed by an mpsc channel), a task per room that owns
//! the room's players, takes their commands from an mpsc channel, and every
//! `tokio::time::interval` tick encodes one snapshot as `Bytes` and hands it
//! to each member's writer.
//!
//! Same protocol as `overlapped server --model port --mode game`:
//! `[size u16 LE][id u16 LE][payload]`, size counting the header;
//! `C_JOIN`=10 `[room u32][name]`, `S_JOINED`=11 `[id u64][room u32][tick_hz u16]`,
//! `S_PLAYER_JOIN`=12 `[id u64][name]`, `C_MOVE`=13 `[x f32][y f32]`,
//! `S_SNAPSHOT`=14 `[tick u32][count u16]` + count × `[id u64][x f32][y f32]`,
//! `S_PLAYER_LEAVE`=15 `[id u64]`.
//!
//! ```text
//! tokio-game [--addr 127.0.0.1:7777] [--threads N] [--tick-hz 20] [--max-room-players 64]
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use overlapped_bench_peers::game::{
    C_JOIN, C_MOVE, MAX_CLIENT_FRAME, MAX_COORD, S_JOINED, S_PLAYER_JOIN, S_PLAYER_LEAVE,
    S_SNAPSHOT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

/// Frames queued for one connection's writer; a client that falls this far
/// behind misses snapshots rather than growing the server's memory.
const WRITER_QUEUE: usize = 256;

struct Options {
    addr: SocketAddr,
    threads: usize,
    tick_hz: u16,
    max_room_players: usize,
}

fn options() -> Options {
    let mut options = Options {
        addr: "127.0.0.1:7777".parse().unwrap(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        tick_hz: 20,
        max_room_players: 64,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next().unwrap_or_else(|| {
                eprintln!("{name} needs a value");
                std::process::exit(2)
            })
        };
        fn parse<T: std::str::FromStr>(name: &str, value: String) -> T
        where
            T::Err: std::fmt::Display,
        {
            value.parse().unwrap_or_else(|e| {
                eprintln!("bad {name} {value:?}: {e}");
                std::process::exit(2)
            })
        }
        match arg.as_str() {
            "--addr" => options.addr = parse("--addr", value("--addr")),
            "--threads" => options.threads = parse("--threads", value("--threads")),
            "--tick-hz" => options.tick_hz = parse("--tick-hz", value("--tick-hz")),
            "--max-room-players" => {
                options.max_room_players = parse("--max-room-players", value("--max-room-players"))
            }
            // A bare address, as the other peers take it.
            other if !other.starts_with('-') => options.addr = parse("address", arg),
            other => {
                eprintln!("unknown option {other}");
                std::process::exit(2)
            }
        }
    }
    // A snapshot of the whole room must fit a frame: 10 + 16 per player.
    if options.threads == 0
        || options.tick_hz == 0
        || !(1..=4095).contains(&options.max_room_players)
    {
        eprintln!("--threads and --tick-hz must be at least 1, --max-room-players 1 to 4095");
        std::process::exit(2)
    }
    options
}

fn frame(id: u16, parts: &[&[u8]]) -> Bytes {
    let len = 4 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut out = BytesMut::with_capacity(len);
    out.put_u16_le(len as u16);
    out.put_u16_le(id);
    for part in parts {
        out.put_slice(part);
    }
    out.freeze()
}

/// What a connection asks of its room.
enum Command {
    Join {
        id: u64,
        name: Bytes,
        writer: mpsc::Sender<Bytes>,
        /// Whether the player got in (false: the room is full).
        reply: oneshot::Sender<bool>,
    },
    Move {
        id: u64,
        x: f32,
        y: f32,
    },
    Leave {
        id: u64,
    },
}

/// The rooms by number. A joiner sends its `Join` while holding the lock,
/// and a room that became empty removes itself under it only when no
/// command waits, so no join is ever sent to a room that is gone.
type Rooms = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Command>>>>;

struct Player {
    id: u64,
    name: Bytes,
    x: f32,
    y: f32,
    writer: mpsc::Sender<Bytes>,
}

fn main() -> std::io::Result<()> {
    let options = options();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads)
        .enable_all()
        .build()?
        .block_on(serve(options))
}

async fn serve(options: Options) -> std::io::Result<()> {
    let listener = TcpListener::bind(options.addr).await?;
    overlapped_bench_peers::announce(listener.local_addr()?);
    let options = Arc::new(options);
    let rooms: Rooms = Arc::default();
    let next_id = AtomicU64::new(1);
    loop {
        // A client that resets before its accept must not stop the server.
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        stream.set_nodelay(true)?;
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let (mut reader, mut writer) = stream.into_split();
        // Room enough for the joiner's `S_PLAYER_JOIN` of every member, too.
        let (out, mut outbox) = mpsc::channel::<Bytes>(WRITER_QUEUE + options.max_room_players);
        tokio::spawn(async move {
            while let Some(frame) = outbox.recv().await {
                if writer.write_all(&frame).await.is_err() {
                    return;
                }
            }
        });
        let rooms = rooms.clone();
        let options = options.clone();
        tokio::spawn(async move {
            let mut room = None;
            let _ = session(id, &mut reader, out, &rooms, &options, &mut room).await;
            if let Some(room) = room {
                let _ = room.send(Command::Leave { id });
            }
            // The reader drops here; the writer ends once the room has let
            // go of its sender, and the socket closes with it.
        });
    }
}

/// Reads and handles one connection's frames until it closes or breaks a
/// rule. `room` is set once the player is in one.
async fn session(
    id: u64,
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    out: mpsc::Sender<Bytes>,
    rooms: &Rooms,
    options: &Options,
    room: &mut Option<mpsc::UnboundedSender<Command>>,
) -> Result<(), ()> {
    let mut buffer = vec![0u8; overlapped_bench_peers::READ_BUFFER];
    let mut filled = 0;
    loop {
        let n = match reader.read(&mut buffer[filled..]).await {
            Ok(0) | Err(_) => return Err(()),
            Ok(n) => n,
        };
        filled += n;
        let mut at = 0;
        while filled - at >= 4 {
            let size = u16::from_le_bytes([buffer[at], buffer[at + 1]]) as usize;
            let kind = u16::from_le_bytes([buffer[at + 2], buffer[at + 3]]);
            if !(4..=MAX_CLIENT_FRAME).contains(&size) {
                return Err(());
            }
            if filled - at < size {
                break;
            }
            let payload = &buffer[at + 4..at + size];
            match (kind, &room) {
                (C_JOIN, None) => {
                    let name = payload.get(4..).ok_or(())?;
                    if name.is_empty() || name.len() > 32 || std::str::from_utf8(name).is_err() {
                        return Err(());
                    }
                    let number = u32::from_le_bytes(payload[..4].try_into().unwrap());
                    let (reply, joined) = oneshot::channel();
                    let sender = {
                        let mut map = rooms.lock().unwrap();
                        let sender = map
                            .entry(number)
                            .or_insert_with(|| spawn_room(number, rooms.clone(), options))
                            .clone();
                        let _ = sender.send(Command::Join {
                            id,
                            name: Bytes::copy_from_slice(name),
                            writer: out.clone(),
                            reply,
                        });
                        sender
                    };
                    if joined.await != Ok(true) {
                        return Err(());
                    }
                    *room = Some(sender);
                }
                (C_MOVE, Some(room)) => {
                    if payload.len() != 8 {
                        return Err(());
                    }
                    let x = f32::from_le_bytes(payload[..4].try_into().unwrap());
                    let y = f32::from_le_bytes(payload[4..].try_into().unwrap());
                    let valid = |v: f32| v.is_finite() && v.abs() <= MAX_COORD;
                    if !valid(x) || !valid(y) {
                        return Err(());
                    }
                    let _ = room.send(Command::Move { id, x, y });
                }
                // A move before joining, a second join, or an unknown id.
                _ => return Err(()),
            }
            at += size;
        }
        buffer.copy_within(at..filled, 0);
        filled -= at;
    }
}

/// Starts the task of room `number`; returns where its commands go.
fn spawn_room(number: u32, rooms: Rooms, options: &Options) -> mpsc::UnboundedSender<Command> {
    let (sender, commands) = mpsc::unbounded_channel();
    tokio::spawn(room(
        number,
        commands,
        rooms,
        options.tick_hz,
        options.max_room_players,
    ));
    sender
}

/// One room: its players, their commands, and a snapshot every tick.
async fn room(
    number: u32,
    mut commands: mpsc::UnboundedReceiver<Command>,
    rooms: Rooms,
    tick_hz: u16,
    max_players: usize,
) {
    let period = Duration::from_secs_f64(1.0 / f64::from(tick_hz));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut players: Vec<Player> = Vec::new();
    loop {
        tokio::select! {
            command = commands.recv() => {
                // The room's sender stays in the map while the room runs.
                let Some(command) = command else { return };
                match command {
                    Command::Join { id, name, writer, reply } => {
                        if players.len() >= max_players {
                            let _ = reply.send(false);
                            continue;
                        }
                        let mut joined = BytesMut::with_capacity(14);
                        joined.put_u64_le(id);
                        joined.put_u32_le(number);
                        joined.put_u16_le(tick_hz);
                        let _ = writer.try_send(frame(S_JOINED, &[&joined]));
                        for other in &players {
                            let _ = writer.try_send(frame(S_PLAYER_JOIN, &[&other.id.to_le_bytes(), &other.name]));
                        }
                        let announce = frame(S_PLAYER_JOIN, &[&id.to_le_bytes(), &name]);
                        for other in &players {
                            let _ = other.writer.try_send(announce.clone());
                        }
                        players.push(Player { id, name, x: 0.0, y: 0.0, writer });
                        let _ = reply.send(true);
                    }
                    Command::Move { id, x, y } => {
                        if let Some(player) = players.iter_mut().find(|p| p.id == id) {
                            player.x = x;
                            player.y = y;
                        }
                    }
                    Command::Leave { id } => {
                        players.retain(|p| p.id != id);
                        let left = frame(S_PLAYER_LEAVE, &[&id.to_le_bytes()]);
                        for other in &players {
                            let _ = other.writer.try_send(left.clone());
                        }
                        if players.is_empty() {
                            let mut map = rooms.lock().unwrap();
                            // A join sent meanwhile keeps the room.
                            if commands.is_empty() {
                                map.remove(&number);
                                return;
                            }
                        }
                    }
                }
            }
            at = ticker.tick() => {
                if players.is_empty() {
                    continue;
                }
                // Ticks number the scheduled slots, skipped ones included.
                let tick = ((at - started).as_secs_f64() * f64::from(tick_hz)).round() as u32;
                let mut snapshot = BytesMut::with_capacity(10 + players.len() * 16);
                snapshot.put_u16_le((10 + players.len() * 16) as u16);
                snapshot.put_u16_le(S_SNAPSHOT);
                snapshot.put_u32_le(tick);
                snapshot.put_u16_le(players.len() as u16);
                for player in &players {
                    snapshot.put_u64_le(player.id);
                    snapshot.put_f32_le(player.x);
                    snapshot.put_f32_le(player.y);
                }
                let snapshot = snapshot.freeze();
                for player in &players {
                    // A writer this far behind misses the snapshot.
                    let _ = player.writer.try_send(snapshot.clone());
                }
            }
        }
    }
}
