//! The game server a tokio expert would write for one core (issue #27):
//!
//! - a current-thread runtime with a `LocalSet`: the accept loop, every
//!   connection and every room are local tasks on one thread, and what
//!   they share is `Rc<RefCell<_>>` and `Cell`, no lock, no atomic;
//! - rooms tick on 16 phases of the period (the k-th room's first tick one
//!   period plus frac(k·φ) sixteenths of it from its start), so a burst of
//!   joins does not make every room tick in one burst;
//! - a move is one store into the player's `Cell`, which the tick reads: no
//!   message, no wake-up of the room per move;
//! - the tick writes each snapshot with `try_write` straight to the socket,
//!   and only what the kernel does not take waits in the connection's
//!   pending bytes for its writer task (bounded: past it a snapshot is
//!   dropped, as a slow client's would be).
//!
//! Same protocol as `overlapped server --model port --mode game` and
//! `tokio-game`:
//!
//! ```text
//! tokio-game-fair [--addr 127.0.0.1:7777] [--tick-hz 20] [--max-room-players 64]
//! ```

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use overlapped_bench_peers::game::{
    C_JOIN, C_MOVE, MAX_CLIENT_FRAME, MAX_COORD, S_JOINED, S_PLAYER_JOIN, S_PLAYER_LEAVE,
    S_SNAPSHOT,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};

/// Bytes a connection may have waiting for its writer; past it a snapshot
/// is dropped.
const MAX_PENDING: usize = 256 * 1024;
/// The phases of a period that rooms start on, as `overlapped`'s rooms do.
const PHASES: u32 = 16;

struct Options {
    addr: SocketAddr,
    tick_hz: u16,
    max_room_players: usize,
}

fn options() -> Options {
    let mut options = Options {
        addr: "127.0.0.1:7777".parse().unwrap(),
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
        let number = |name: &str, text: String| -> u64 {
            text.parse().unwrap_or_else(|e| {
                eprintln!("bad {name} {text:?}: {e}");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            "--addr" => {
                options.addr = value("--addr").parse().unwrap_or_else(|e| {
                    eprintln!("bad --addr: {e}");
                    std::process::exit(2)
                })
            }
            "--tick-hz" => options.tick_hz = number("--tick-hz", value("--tick-hz")) as u16,
            "--max-room-players" => {
                options.max_room_players =
                    number("--max-room-players", value("--max-room-players")) as usize
            }
            // One core: the option of the other peers is taken and ignored.
            "--threads" => drop(value("--threads")),
            other => {
                eprintln!("unknown option {other}");
                std::process::exit(2)
            }
        }
    }
    if options.tick_hz == 0 || !(1..=4095).contains(&options.max_room_players) {
        eprintln!("--tick-hz must be at least 1, --max-room-players 1 to 4095");
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

/// A connection's way out: straight to the socket when it takes the bytes,
/// else into the pending bytes its writer task sends when it can.
struct Out {
    stream: Rc<TcpStream>,
    pending: RefCell<BytesMut>,
    wake_writer: Notify,
    broken: Cell<bool>,
}

impl Out {
    fn send(&self, frame: &[u8]) {
        if self.broken.get() {
            return;
        }
        let mut pending = self.pending.borrow_mut();
        if !pending.is_empty() {
            if pending.len() + frame.len() <= MAX_PENDING {
                pending.put_slice(frame);
            }
            return;
        }
        match self.stream.try_write(frame) {
            Ok(n) if n == frame.len() => {}
            Ok(n) => {
                pending.put_slice(&frame[n..]);
                self.wake_writer.notify_one();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pending.put_slice(frame);
                self.wake_writer.notify_one();
            }
            Err(_) => self.broken.set(true),
        }
    }

    /// The writer task: sends what waits whenever the socket takes it.
    async fn write_pending(self: Rc<Self>) {
        loop {
            self.wake_writer.notified().await;
            while !self.pending.borrow().is_empty() {
                if self.stream.writable().await.is_err() {
                    self.broken.set(true);
                    return;
                }
                let mut pending = self.pending.borrow_mut();
                match self.stream.try_write(&pending) {
                    Ok(n) => pending.advance(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        self.broken.set(true);
                        return;
                    }
                }
            }
            if self.broken.get() {
                return;
            }
        }
    }
}

struct Player {
    id: u64,
    name: Bytes,
    /// Where the player is: its moves store here, the room's tick reads.
    at: Rc<Cell<(f32, f32)>>,
    out: Rc<Out>,
}

struct Room {
    number: u32,
    players: Vec<Player>,
    /// The room's tick task, ended with the room.
    ticker: Option<tokio::task::JoinHandle<()>>,
}

struct Game {
    rooms: RefCell<HashMap<u32, Rc<RefCell<Room>>>>,
    tick_hz: u16,
    max_room_players: usize,
    rooms_opened: Cell<u64>,
    next_id: Cell<u64>,
}

fn main() -> io::Result<()> {
    let options = options();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, serve(options))
}

async fn serve(options: Options) -> io::Result<()> {
    let listener = TcpListener::bind(options.addr).await?;
    overlapped_bench_peers::announce(listener.local_addr()?);
    let game = Rc::new(Game {
        rooms: RefCell::default(),
        tick_hz: options.tick_hz,
        max_room_players: options.max_room_players,
        rooms_opened: Cell::new(0),
        next_id: Cell::new(1),
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        stream.set_nodelay(true)?;
        let id = game.next_id.get();
        game.next_id.set(id + 1);
        let stream = Rc::new(stream);
        let out = Rc::new(Out {
            stream: stream.clone(),
            pending: RefCell::default(),
            wake_writer: Notify::new(),
            broken: Cell::new(false),
        });
        tokio::task::spawn_local(out.clone().write_pending());
        let game = game.clone();
        tokio::task::spawn_local(async move {
            let mut joined = None;
            let _ = session(id, &stream, &out, &game, &mut joined).await;
            if let Some(room) = joined {
                game.leave(&room, id);
            }
            // The writer task ends with its `Out` once nobody sends.
            out.broken.set(true);
            out.wake_writer.notify_one();
        });
    }
}

/// Reads one connection's frames until it closes or breaks a rule.
async fn session(
    id: u64,
    stream: &TcpStream,
    out: &Rc<Out>,
    game: &Rc<Game>,
    joined: &mut Option<Rc<RefCell<Room>>>,
) -> Result<(), ()> {
    let mut buffer = vec![0u8; overlapped_bench_peers::READ_BUFFER];
    let mut filled = 0;
    let mut at: Option<Rc<Cell<(f32, f32)>>> = None;
    loop {
        stream.readable().await.map_err(drop)?;
        let n = match stream.try_read(&mut buffer[filled..]) {
            Ok(0) => return Err(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(()),
        };
        filled += n;
        let mut start = 0;
        while filled - start >= 4 {
            let size = u16::from_le_bytes([buffer[start], buffer[start + 1]]) as usize;
            let kind = u16::from_le_bytes([buffer[start + 2], buffer[start + 3]]);
            if !(4..=MAX_CLIENT_FRAME).contains(&size) {
                return Err(());
            }
            if filled - start < size {
                break;
            }
            let payload = &buffer[start + 4..start + size];
            match (kind, &at) {
                (C_JOIN, None) => {
                    let name = payload.get(4..).ok_or(())?;
                    if name.is_empty() || name.len() > 32 || std::str::from_utf8(name).is_err() {
                        return Err(());
                    }
                    let number = u32::from_le_bytes(payload[..4].try_into().unwrap());
                    let position = Rc::new(Cell::new((0.0, 0.0)));
                    let room = game
                        .join(
                            number,
                            id,
                            Bytes::copy_from_slice(name),
                            position.clone(),
                            out,
                        )
                        .ok_or(())?;
                    *joined = Some(room);
                    at = Some(position);
                }
                (C_MOVE, Some(position)) => {
                    if payload.len() != 8 {
                        return Err(());
                    }
                    let x = f32::from_le_bytes(payload[..4].try_into().unwrap());
                    let y = f32::from_le_bytes(payload[4..].try_into().unwrap());
                    let valid = |v: f32| v.is_finite() && v.abs() <= MAX_COORD;
                    if !valid(x) || !valid(y) {
                        return Err(());
                    }
                    position.set((x, y));
                }
                _ => return Err(()),
            }
            start += size;
        }
        buffer.copy_within(start..filled, 0);
        filled -= start;
    }
}

impl Game {
    /// Puts the player in room `number` (opened if it is the first);
    /// `None` if the room is full.
    fn join(
        self: &Rc<Self>,
        number: u32,
        id: u64,
        name: Bytes,
        at: Rc<Cell<(f32, f32)>>,
        out: &Rc<Out>,
    ) -> Option<Rc<RefCell<Room>>> {
        let room = self.rooms.borrow().get(&number).cloned();
        let room = room.unwrap_or_else(|| self.open(number));
        {
            let mut state = room.borrow_mut();
            if state.players.len() >= self.max_room_players {
                return None;
            }
            let mut joined = BytesMut::with_capacity(14);
            joined.put_u64_le(id);
            joined.put_u32_le(number);
            joined.put_u16_le(self.tick_hz);
            out.send(&frame(S_JOINED, &[&joined]));
            for other in &state.players {
                out.send(&frame(
                    S_PLAYER_JOIN,
                    &[&other.id.to_le_bytes(), &other.name],
                ));
            }
            let announce = frame(S_PLAYER_JOIN, &[&id.to_le_bytes(), &name]);
            for other in &state.players {
                other.out.send(&announce);
            }
            state.players.push(Player {
                id,
                name,
                at,
                out: out.clone(),
            });
        }
        Some(room)
    }

    fn open(self: &Rc<Self>, number: u32) -> Rc<RefCell<Room>> {
        let room = Rc::new(RefCell::new(Room {
            number,
            players: Vec::new(),
            ticker: None,
        }));
        let k = self.rooms_opened.get();
        self.rooms_opened.set(k + 1);
        let ticker = tokio::task::spawn_local(tick(room.clone(), self.tick_hz, k));
        room.borrow_mut().ticker = Some(ticker);
        self.rooms.borrow_mut().insert(number, room.clone());
        room
    }

    fn leave(&self, room: &Rc<RefCell<Room>>, id: u64) {
        let mut state = room.borrow_mut();
        state.players.retain(|p| p.id != id);
        let left = frame(S_PLAYER_LEAVE, &[&id.to_le_bytes()]);
        for other in &state.players {
            other.out.send(&left);
        }
        if state.players.is_empty() {
            self.rooms.borrow_mut().remove(&state.number);
            if let Some(ticker) = state.ticker.take() {
                ticker.abort();
            }
        }
    }
}

/// The `k`-th room's ticks: one snapshot of the room to each player every
/// period, on phase frac(k·φ) of the period (in sixteenths).
async fn tick(room: Rc<RefCell<Room>>, tick_hz: u16, k: u64) {
    let period = Duration::from_secs_f64(1.0 / f64::from(tick_hz));
    let golden = 0.618_033_988_749_894_9_f64;
    let phase = ((k as f64 * golden).fract() * f64::from(PHASES)).floor() / f64::from(PHASES);
    let started = Instant::now() + period + period.mul_f64(phase);
    let mut ticker = tokio::time::interval_at(started, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut snapshot = BytesMut::new();
    loop {
        let at = ticker.tick().await;
        let state = room.borrow();
        // Ticks number the scheduled slots, skipped ones included.
        let slot = ((at - started).as_secs_f64() * f64::from(tick_hz)).round() as u32 + 1;
        snapshot.clear();
        snapshot.reserve(10 + state.players.len() * 16);
        snapshot.put_u16_le((10 + state.players.len() * 16) as u16);
        snapshot.put_u16_le(S_SNAPSHOT);
        snapshot.put_u32_le(slot);
        snapshot.put_u16_le(state.players.len() as u16);
        for player in &state.players {
            let (x, y) = player.at.get();
            snapshot.put_u64_le(player.id);
            snapshot.put_f32_le(x);
            snapshot.put_f32_le(y);
        }
        for player in &state.players {
            player.out.send(&snapshot);
        }
    }
}
