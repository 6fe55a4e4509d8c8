//! The game's floor: the least work an io_uring server can do for
//! `overlapped bench --mode game` on this kernel, to measure the game
//! servers against (issue #27). No runtime and no library, one thread, one
//! ring (`SINGLE_ISSUER | DEFER_TASKRUN`), a multishot accept, a multishot
//! receive per connection into a provided buffer ring, and for each room's
//! tick one snapshot encoded once and sent to every player straight from
//! that one buffer, the whole phase's sends handed to the kernel in the
//! `io_uring_enter` that then waits. Rooms tick on the same 16 phases as
//! `overlapped`'s and `tokio-game-fair`'s, and the wait takes completions
//! in groups the way `--batch-wait-us` does (`IORING_ENTER_EXT_ARG` with a
//! minimum wait).
//!
//! It is a measuring instrument for `bench/run.py`, not a server anyone
//! should run: it checks frames only as far as the protocol needs, keeps no
//! per-client limits and no persistence, and a send the kernel cannot take
//! whole ends the connection.
//!
//! ```text
//! uring-game-floor [--addr 127.0.0.1:7777] [--tick-hz 20] [--max-room-players 64] [--batch-wait-us 200]
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};
use overlapped_bench_peers::game::{
    C_JOIN, C_MOVE, MAX_CLIENT_FRAME, S_JOINED, S_PLAYER_JOIN, S_PLAYER_LEAVE, S_SNAPSHOT,
};
use overlapped_bench_peers::uring::{set_nodelay, Pool};

/// The phases of a period that rooms start on, as the other servers' do.
const PHASES: u32 = 16;
/// Completions one wait asks for before its minimum wait may end it.
const BATCH_WANT: usize = 64;

/// Buffers in the receive pool (a power of two), and their size.
const BUFFERS: u16 = 8192;
const BUFFER_SIZE: usize = 2048;

/// What a completion is for, in the top bits of its user data; the low 32
/// bits carry a descriptor (receives) or an out-buffer's index (sends).
const ACCEPT: u64 = 1 << 62;
const SEND: u64 = 1 << 61;

struct Options {
    addr: SocketAddr,
    tick_hz: u16,
    max_room_players: usize,
    batch_wait_us: u32,
}

fn options() -> Options {
    let mut options = Options {
        addr: "127.0.0.1:7777".parse().unwrap(),
        tick_hz: 20,
        max_room_players: 64,
        batch_wait_us: 200,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_else(|| {
            eprintln!("{arg} needs a value");
            std::process::exit(2)
        });
        let bad = |e: &dyn std::fmt::Display| -> ! {
            eprintln!("bad {arg} {value:?}: {e}");
            std::process::exit(2)
        };
        match arg.as_str() {
            "--addr" => options.addr = value.parse().unwrap_or_else(|e| bad(&e)),
            "--tick-hz" => options.tick_hz = value.parse().unwrap_or_else(|e| bad(&e)),
            "--max-room-players" => {
                options.max_room_players = value.parse().unwrap_or_else(|e| bad(&e))
            }
            "--batch-wait-us" => options.batch_wait_us = value.parse().unwrap_or_else(|e| bad(&e)),
            // One core: the option of the other peers is taken and ignored.
            "--threads" => {}
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

fn main() -> io::Result<()> {
    let options = options();
    let listener = TcpListener::bind(options.addr)?;
    let mut ring: IoUring = IoUring::builder()
        .setup_cqsize(32 * 1024)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(4096)?;
    let pool = Pool::register(&ring, BUFFERS, BUFFER_SIZE)?;
    overlapped_bench_peers::announce(listener.local_addr()?);
    let accept = opcode::AcceptMulti::new(Fd(listener.as_raw_fd()))
        .build()
        .user_data(ACCEPT);
    let mut floor = Floor {
        ring: &mut ring,
        pool,
        period: Duration::from_secs_f64(1.0 / f64::from(options.tick_hz)),
        options,
        conns: Vec::new(),
        rooms: HashMap::new(),
        due: BinaryHeap::new(),
        outs: Outs::default(),
        rooms_opened: 0,
        next_id: 1,
    };
    floor.push(accept)?;
    floor.run()
}

/// One connection, by its descriptor.
#[derive(Default)]
struct Conn {
    id: u64,
    room: Option<u32>,
    name: Vec<u8>,
    at: (f32, f32),
    /// The start of a frame split across arrivals.
    partial: Vec<u8>,
}

struct Room {
    /// The players' descriptors.
    players: Vec<i32>,
    started: Instant,
    /// Which opening of this room number the heap's entries are for.
    opening: u64,
}

/// Encoded frames in flight, shared by the sends that point into them.
#[derive(Default)]
struct Outs {
    buffers: Vec<(Vec<u8>, u32)>,
    free: Vec<u32>,
}

impl Outs {
    fn take(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.buffers.push((Vec::new(), 0));
            self.buffers.len() as u32 - 1
        })
    }

    /// One send of buffer `index` finished.
    fn sent(&mut self, index: u32) {
        let (bytes, sends) = &mut self.buffers[index as usize];
        *sends -= 1;
        if *sends == 0 {
            bytes.clear();
            self.free.push(index);
        }
    }
}

struct Floor<'a> {
    ring: &'a mut IoUring,
    pool: Pool,
    options: Options,
    period: Duration,
    conns: Vec<Option<Conn>>,
    rooms: HashMap<u32, Room>,
    /// Each room's next tick: (when, room number, opening).
    due: BinaryHeap<Reverse<(Instant, u32, u64)>>,
    outs: Outs,
    rooms_opened: u64,
    next_id: u64,
}

impl Floor<'_> {
    /// Runs the due ticks, hands the kernel what was queued and waits for
    /// completions or the next tick; forever.
    fn run(&mut self) -> io::Result<()> {
        let mut batch = Vec::with_capacity(4096);
        loop {
            let next = self.tick_due_rooms(Instant::now())?;
            let timeout = Timespec::from(next.saturating_duration_since(Instant::now()));
            let args = SubmitArgs::new().timespec(&timeout);
            let args = match self.options.batch_wait_us {
                0 => args,
                usec => args.min_wait_usec(usec),
            };
            let want = if self.options.batch_wait_us > 0 {
                BATCH_WANT
            } else {
                1
            };
            match self.ring.submitter().submit_with_args(want, &args) {
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::ETIME | libc::EBUSY)
                    ) => {}
                other => drop(other?),
            }
            batch.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for (user_data, result, flags) in batch.drain(..) {
                self.handle(user_data, result, flags)?;
            }
        }
    }

    /// Ticks every room whose slot has come; returns when the next is due.
    fn tick_due_rooms(&mut self, now: Instant) -> io::Result<Instant> {
        while let Some(&Reverse((at, number, opening))) = self.due.peek() {
            if at > now {
                return Ok(at);
            }
            self.due.pop();
            let Some(room) = self.rooms.get(&number) else {
                continue;
            };
            if room.opening != opening {
                continue;
            }
            // The slot on the room's grid; slots already past are skipped.
            let behind = now.duration_since(at).as_nanos() / self.period.as_nanos();
            let slot_at = at + self.period * behind as u32;
            let slot =
                (slot_at.duration_since(room.started).as_nanos() / self.period.as_nanos()) as u32;
            self.snapshot(number, slot)?;
            self.due
                .push(Reverse((slot_at + self.period, number, opening)));
        }
        Ok(now + self.period)
    }

    fn snapshot(&mut self, number: u32, slot: u32) -> io::Result<()> {
        let room = &self.rooms[&number];
        let index = self.outs.take();
        let bytes = &mut self.outs.buffers[index as usize].0;
        let size = 10 + room.players.len() * 16;
        bytes.extend_from_slice(&(size as u16).to_le_bytes());
        bytes.extend_from_slice(&S_SNAPSHOT.to_le_bytes());
        bytes.extend_from_slice(&slot.to_le_bytes());
        bytes.extend_from_slice(&(room.players.len() as u16).to_le_bytes());
        for &fd in &room.players {
            let conn = self.conns[fd as usize]
                .as_ref()
                .expect("a player's connection");
            bytes.extend_from_slice(&conn.id.to_le_bytes());
            bytes.extend_from_slice(&conn.at.0.to_le_bytes());
            bytes.extend_from_slice(&conn.at.1.to_le_bytes());
        }
        // Lent out for the sends, so a tick allocates nothing.
        let players = std::mem::take(&mut self.rooms.get_mut(&number).expect("the room").players);
        let sent = self.send_to(&players, index);
        self.rooms.get_mut(&number).expect("the room").players = players;
        sent
    }

    /// Sends out-buffer `index` to each of `fds`; frees it if `fds` is empty.
    fn send_to(&mut self, fds: &[i32], index: u32) -> io::Result<()> {
        if fds.is_empty() {
            self.outs.buffers[index as usize].1 = 1;
            self.outs.sent(index);
            return Ok(());
        }
        let (bytes, sends) = &mut self.outs.buffers[index as usize];
        *sends += fds.len() as u32;
        let (ptr, len) = (bytes.as_ptr(), bytes.len() as u32);
        for &fd in fds {
            let send = opcode::Send::new(Fd(fd), ptr, len)
                .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
                .build()
                .user_data(SEND | u64::from(index));
            self.push(send)?;
        }
        Ok(())
    }

    fn send_frame(&mut self, fds: &[i32], id: u16, parts: &[&[u8]]) -> io::Result<()> {
        let index = self.outs.take();
        let bytes = &mut self.outs.buffers[index as usize].0;
        let size = 4 + parts.iter().map(|p| p.len()).sum::<usize>();
        bytes.extend_from_slice(&(size as u16).to_le_bytes());
        bytes.extend_from_slice(&id.to_le_bytes());
        for part in parts {
            bytes.extend_from_slice(part);
        }
        self.send_to(fds, index)
    }

    fn handle(&mut self, user_data: u64, result: i32, flags: u32) -> io::Result<()> {
        if user_data & ACCEPT != 0 {
            if result >= 0 {
                self.accepted(result)?;
            }
            return Ok(());
        }
        if user_data & SEND != 0 {
            self.outs.sent(user_data as u32);
            return Ok(());
        }
        let fd = user_data as u32 as i32;
        match cqueue::buffer_select(flags) {
            Some(bid) if result > 0 => {
                // SAFETY: the kernel wrote `result` bytes into buffer `bid`,
                // which stays ours until it is recycled below.
                let data =
                    unsafe { std::slice::from_raw_parts(self.pool.buffer(bid), result as usize) };
                let alive = self.arrived(fd, data)?;
                self.pool.recycle(bid);
                if !alive {
                    self.close(fd)?;
                } else if !cqueue::more(flags) {
                    self.recv(fd)?;
                }
            }
            // The pool ran dry for a moment: receive again.
            _ if result == -libc::ENOBUFS => self.recv(fd)?,
            // End of stream or an error: done with this connection.
            _ => self.close(fd)?,
        }
        Ok(())
    }

    fn accepted(&mut self, fd: i32) -> io::Result<()> {
        set_nodelay(fd);
        let slot = fd as usize;
        if self.conns.len() <= slot {
            self.conns.resize_with(slot + 1, || None);
        }
        self.conns[slot] = Some(Conn {
            id: self.next_id,
            ..Conn::default()
        });
        self.next_id += 1;
        self.recv(fd)
    }

    /// Handles the frames in `data`; `false` if the client broke a rule.
    fn arrived(&mut self, fd: i32, data: &[u8]) -> io::Result<bool> {
        let Some(conn) = self.conns[fd as usize].as_mut() else {
            return Ok(true);
        };
        let mut partial = std::mem::take(&mut conn.partial);
        let bytes: &[u8] = if partial.is_empty() {
            data
        } else {
            partial.extend_from_slice(data);
            &partial
        };
        let mut start = 0;
        while bytes.len() - start >= 4 {
            let size = usize::from(u16::from_le_bytes([bytes[start], bytes[start + 1]]));
            let kind = u16::from_le_bytes([bytes[start + 2], bytes[start + 3]]);
            if !(4..=MAX_CLIENT_FRAME).contains(&size) {
                return Ok(false);
            }
            if bytes.len() - start < size {
                break;
            }
            if !self.frame(fd, kind, &bytes[start + 4..start + size])? {
                return Ok(false);
            }
            start += size;
        }
        let rest = bytes[start..].to_vec();
        if let Some(conn) = self.conns[fd as usize].as_mut() {
            conn.partial = rest;
        }
        Ok(true)
    }

    fn frame(&mut self, fd: i32, kind: u16, payload: &[u8]) -> io::Result<bool> {
        let conn = self.conns[fd as usize].as_mut().expect("a live connection");
        match (kind, conn.room) {
            (C_MOVE, Some(_)) if payload.len() == 8 => {
                let x = f32::from_le_bytes(payload[..4].try_into().unwrap());
                let y = f32::from_le_bytes(payload[4..].try_into().unwrap());
                conn.at = (x, y);
                Ok(true)
            }
            (C_JOIN, None) if payload.len() > 4 && payload.len() <= 4 + 32 => {
                let number = u32::from_le_bytes(payload[..4].try_into().unwrap());
                conn.name = payload[4..].to_vec();
                self.join(fd, number)
            }
            _ => Ok(false),
        }
    }

    fn join(&mut self, fd: i32, number: u32) -> io::Result<bool> {
        if !self.rooms.contains_key(&number) {
            self.open(number);
        }
        let room = &self.rooms[&number];
        if room.players.len() >= self.options.max_room_players {
            return Ok(false);
        }
        let others = room.players.clone();
        let conn = self.conns[fd as usize].as_mut().expect("a live connection");
        conn.room = Some(number);
        let (id, name) = (conn.id, conn.name.clone());
        let mut joined = Vec::with_capacity(14);
        joined.extend_from_slice(&id.to_le_bytes());
        joined.extend_from_slice(&number.to_le_bytes());
        joined.extend_from_slice(&self.options.tick_hz.to_le_bytes());
        self.send_frame(&[fd], S_JOINED, &[&joined])?;
        for &other in &others {
            let conn = self.conns[other as usize]
                .as_ref()
                .expect("a player's connection");
            let (other_id, other_name) = (conn.id.to_le_bytes(), conn.name.clone());
            self.send_frame(&[fd], S_PLAYER_JOIN, &[&other_id, &other_name])?;
        }
        self.send_frame(&others, S_PLAYER_JOIN, &[&id.to_le_bytes(), &name])?;
        self.rooms
            .get_mut(&number)
            .expect("the room")
            .players
            .push(fd);
        Ok(true)
    }

    fn open(&mut self, number: u32) {
        let k = self.rooms_opened;
        self.rooms_opened += 1;
        let golden = 0.618_033_988_749_894_9_f64;
        let phase = ((k as f64 * golden).fract() * f64::from(PHASES)).floor() / f64::from(PHASES);
        let started = Instant::now() + self.period.mul_f64(phase);
        self.rooms.insert(
            number,
            Room {
                players: Vec::new(),
                started,
                opening: k,
            },
        );
        self.due.push(Reverse((started + self.period, number, k)));
    }

    fn close(&mut self, fd: i32) -> io::Result<()> {
        let Some(conn) = self.conns[fd as usize].take() else {
            return Ok(());
        };
        if let Some(number) = conn.room {
            let room = self.rooms.get_mut(&number).expect("the player's room");
            room.players.retain(|&p| p != fd);
            let others = room.players.clone();
            if others.is_empty() {
                self.rooms.remove(&number);
            }
            self.send_frame(&others, S_PLAYER_LEAVE, &[&conn.id.to_le_bytes()])?;
        }
        // SAFETY: `fd` came from the accept and nothing else owns it; a
        // send still in flight holds its own reference to the file.
        unsafe { libc::close(fd) };
        Ok(())
    }

    fn recv(&mut self, fd: i32) -> io::Result<()> {
        self.push(
            opcode::RecvMulti::new(Fd(fd), Pool::GROUP)
                .build()
                .user_data(u64::from(fd as u32)),
        )
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        // SAFETY: a send points into an out-buffer, which is neither
        // freed nor changed until every send of it completed; the other
        // entries point at nothing.
        unsafe { overlapped_bench_peers::uring::push(self.ring, &entry) }
    }
}
