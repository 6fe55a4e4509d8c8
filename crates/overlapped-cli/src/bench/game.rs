//! Game load: `rooms × players` bots join their rooms, each sends `C_MOVE`
//! at the tick rate with a position that encodes the move's number, and
//! checks every frame the server sends: snapshots name only players of the
//! bot's room, tick numbers only go up, and the bot's own entry is one of
//! the positions it sent and never an older one than before.
//!
//! Measured after every bot has joined: snapshots and entries delivered per
//! second, update age (a move's send to the first snapshot that holds it),
//! snapshot lateness, snapshots lost (gaps in tick numbers) and errors.
//!
//! Lateness needs no clock of the server's: on each connection, a snapshot
//! of tick `t` arriving at `a` gives the offset `a − t / tick_hz`; the
//! earliest offset seen on the connection is the schedule, and each
//! snapshot is late by its offset minus that one.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use overlapped::error::{ErrorExt, WSAENOBUFS};
use overlapped::{Completion, CompletionPort, PortStream};

use super::game_report::GameReport;
use super::game_wire::{f32_at, frame, move_number, position, u16_at, u32_at, u64_at};
use super::{BenchArgs, BenchMode};

const C_JOIN: u16 = 10;
const S_JOINED: u16 = 11;
const S_PLAYER_JOIN: u16 = 12;
const C_MOVE: u16 = 13;
const S_SNAPSHOT: u16 = 14;
const S_PLAYER_LEAVE: u16 = 15;

/// Bots that connect and join at once while the rooms fill.
const JOIN_WAVE: usize = 100;
/// How long every bot has to connect and join.
const JOIN_LIMIT: Duration = Duration::from_secs(60);
/// Moves go out in this many groups per tick period, so they are spread
/// over the period rather than sent all at once.
const SLOTS: usize = 50;
/// Errors described in the report.
const DESCRIBED: usize = 5;

enum Req {
    Connect(usize),
    Send(usize),
    /// The end of a bot's multishot receive; its arrivals come as packets
    /// without a record, keyed by the bot's index.
    RecvEnd(usize),
}

/// Counters of the whole run, updated by the bots.
struct Stats {
    /// The measured period is running.
    measuring: bool,
    /// Snapshot offsets are µs since this instant.
    epoch: Instant,
    joined: usize,
    /// Bots that failed before they joined.
    lost_before_join: usize,
    snapshots: u64,
    entries: u64,
    lost: u64,
    moves: u64,
    age: Histogram<u64>,
    errors: u64,
    described: Vec<String>,
    /// A connect failed: the run cannot be set up.
    setup_failure: Option<String>,
}

impl Stats {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.described.len() < DESCRIBED {
            self.described.push(what);
        }
    }
}

struct Bot {
    index: usize,
    room: u32,
    stream: PortStream<Req>,
    alive: bool,
    /// `S_JOINED` arrived.
    joined: bool,
    id: u64,
    tick_hz: u16,
    /// Ids of the room's players, this bot's own included.
    members: HashSet<u64>,
    /// Bytes received and not yet a whole frame.
    rx: Vec<u8>,
    sending: bool,
    /// Frames to send once the send in flight completes.
    out: Vec<u8>,
    /// The number of the next move; move 0 is the (0, 0) before any.
    next_move: u32,
    /// Moves sent and not yet seen in a snapshot, with their send times.
    unseen: VecDeque<(u32, Instant)>,
    /// The newest move seen in a snapshot.
    seen: u32,
    last_tick: Option<u32>,
    first_tick: u32,
    /// The earliest snapshot offset on this connection, in µs.
    earliest: i64,
    /// Offsets of the snapshots of the measured period, in µs.
    offsets: Vec<i64>,
}

impl Bot {
    fn post_recv(&mut self, stats: &mut Stats) {
        if let Err((e, _)) = self.stream.recv_multishot(Req::RecvEnd(self.index)) {
            self.fail(stats, format!("cannot receive: {e}"));
        }
    }

    fn fail(&mut self, stats: &mut Stats, why: String) {
        if !self.alive {
            return;
        }
        self.alive = false;
        if !self.joined {
            stats.lost_before_join += 1;
        }
        stats.error(format!("bot {} (room {}): {why}", self.index, self.room));
        let _ = self.stream.close();
    }

    /// Queues a frame, and sends what is queued unless a send is in flight.
    fn send(&mut self, id: u16, payload: &[u8], stats: &mut Stats) {
        frame(id, payload, &mut self.out);
        self.flush(stats);
    }

    fn flush(&mut self, stats: &mut Stats) {
        if self.sending || self.out.is_empty() || !self.alive {
            return;
        }
        self.sending = true;
        let bytes = std::mem::take(&mut self.out);
        if let Err(e) = self.stream.send(vec![bytes], Req::Send(self.index)) {
            self.fail(stats, format!("cannot send: {}", e.error()));
        }
    }

    fn send_move(&mut self, now: Instant, stats: &mut Stats) {
        if !self.alive || !self.joined {
            return;
        }
        let k = self.next_move;
        self.next_move += 1;
        let (x, y) = position(k);
        let mut payload = [0u8; 8];
        payload[..4].copy_from_slice(&x.to_le_bytes());
        payload[4..].copy_from_slice(&y.to_le_bytes());
        self.unseen.push_back((k, now));
        if stats.measuring {
            stats.moves += 1;
        }
        self.send(C_MOVE, &payload, stats);
    }

    /// Bytes arrived: handle every whole frame.
    fn on_arrival(&mut self, bytes: &[u8], now: Instant, stats: &mut Stats) {
        if !self.alive {
            return;
        }
        let mut rx = std::mem::take(&mut self.rx);
        rx.extend_from_slice(bytes);
        let mut at = 0;
        let mut outcome = Ok(());
        while rx.len() - at >= 4 {
            let size = usize::from(u16_at(&rx, at));
            if size < 4 {
                outcome = Err(format!("frame size {size}"));
                break;
            }
            if rx.len() - at < size {
                break;
            }
            let id = u16_at(&rx, at + 2);
            outcome = self.on_frame(id, &rx[at + 4..at + size], now, stats);
            if outcome.is_err() {
                break;
            }
            at += size;
        }
        rx.drain(..at);
        self.rx = rx;
        if let Err(why) = outcome {
            self.fail(stats, why);
        }
    }

    fn on_frame(
        &mut self,
        id: u16,
        payload: &[u8],
        now: Instant,
        stats: &mut Stats,
    ) -> Result<(), String> {
        match id {
            S_SNAPSHOT => self.on_snapshot(payload, now, stats),
            S_JOINED => {
                if self.joined {
                    return Err("a second S_JOINED".into());
                }
                if payload.len() != 14 {
                    return Err(format!("S_JOINED of {} bytes", payload.len()));
                }
                let (id, room, hz) = (u64_at(payload, 0), u32_at(payload, 8), u16_at(payload, 12));
                if room != self.room {
                    return Err(format!("S_JOINED to room {room}"));
                }
                if hz == 0 {
                    return Err("S_JOINED with tick_hz 0".into());
                }
                if !self.members.insert(id) {
                    return Err(format!("S_JOINED with id {id}, another player's"));
                }
                self.id = id;
                self.tick_hz = hz;
                self.joined = true;
                stats.joined += 1;
                Ok(())
            }
            S_PLAYER_JOIN => {
                if payload.len() < 9 || payload.len() > 8 + 32 {
                    return Err(format!("S_PLAYER_JOIN of {} bytes", payload.len()));
                }
                if std::str::from_utf8(&payload[8..]).is_err() {
                    return Err("S_PLAYER_JOIN with a name not UTF-8".into());
                }
                let id = u64_at(payload, 0);
                if !self.members.insert(id) {
                    return Err(format!("S_PLAYER_JOIN of {id}, already in the room"));
                }
                Ok(())
            }
            S_PLAYER_LEAVE => {
                if payload.len() != 8 {
                    return Err(format!("S_PLAYER_LEAVE of {} bytes", payload.len()));
                }
                let id = u64_at(payload, 0);
                if self.joined && id == self.id {
                    return Err("S_PLAYER_LEAVE of the bot itself".into());
                }
                if !self.members.remove(&id) {
                    return Err(format!("S_PLAYER_LEAVE of {id}, not in the room"));
                }
                Ok(())
            }
            other => Err(format!("unexpected frame id {other}")),
        }
    }

    fn on_snapshot(
        &mut self,
        payload: &[u8],
        now: Instant,
        stats: &mut Stats,
    ) -> Result<(), String> {
        if !self.joined {
            return Err("S_SNAPSHOT before S_JOINED".into());
        }
        if payload.len() < 6 {
            return Err(format!("S_SNAPSHOT of {} bytes", payload.len()));
        }
        let tick = u32_at(payload, 0);
        let count = usize::from(u16_at(payload, 4));
        if payload.len() != 6 + count * 16 {
            return Err(format!(
                "S_SNAPSHOT of {} bytes for {count} players",
                payload.len()
            ));
        }
        match self.last_tick {
            Some(last) if tick <= last => {
                return Err(format!("snapshot tick {tick} after tick {last}"));
            }
            Some(last) => {
                if stats.measuring {
                    stats.lost += u64::from(tick - last - 1);
                }
            }
            None => self.first_tick = tick,
        }
        self.last_tick = Some(tick);

        let mut own = None;
        for entry in payload[6..].chunks_exact(16) {
            let id = u64_at(entry, 0);
            if !self.members.contains(&id) {
                return Err(format!(
                    "snapshot tick {tick} holds id {id}, not of the room"
                ));
            }
            if id == self.id {
                if own.is_some() {
                    return Err(format!("snapshot tick {tick} holds the bot twice"));
                }
                own = Some((f32_at(entry, 8), f32_at(entry, 12)));
            }
        }
        let (x, y) = own.ok_or_else(|| format!("snapshot tick {tick} without the bot"))?;
        let k = move_number(x, y)
            .filter(|&k| k < self.next_move)
            .ok_or_else(|| format!("snapshot tick {tick}: own position ({x}, {y}) never sent"))?;
        if k < self.seen {
            return Err(format!(
                "snapshot tick {tick}: own position went back from move {} to {k}",
                self.seen
            ));
        }
        if k > self.seen {
            self.seen = k;
            while let Some(&(j, sent)) = self.unseen.front() {
                if j > k {
                    break;
                }
                self.unseen.pop_front();
                if j == k && stats.measuring {
                    let age = now.saturating_duration_since(sent).as_micros() as u64;
                    let _ = stats.age.record(age.max(1));
                }
            }
        }

        let since = (now - stats.epoch).as_micros() as i64;
        let scheduled = i64::from(tick - self.first_tick) * 1_000_000 / i64::from(self.tick_hz);
        let offset = since - scheduled;
        self.earliest = self.earliest.min(offset);
        if stats.measuring {
            stats.snapshots += 1;
            stats.entries += count as u64;
            self.offsets.push(offset);
        }
        Ok(())
    }
}

/// The result of a game run.
pub fn run(args: &BenchArgs, duration: Duration) -> io::Result<GameReport> {
    let rooms = args.rooms;
    let total = rooms as usize * args.players as usize;
    let period = Duration::from_secs_f64(1.0 / f64::from(args.tick_hz));
    let port = CompletionPort::<Req>::new(1)?;
    let mut stats = Stats {
        measuring: false,
        epoch: Instant::now(),
        joined: 0,
        lost_before_join: 0,
        snapshots: 0,
        entries: 0,
        lost: 0,
        moves: 0,
        age: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
        errors: 0,
        described: Vec::new(),
        setup_failure: None,
    };
    let mut bots: Vec<Bot> = Vec::with_capacity(total);
    let mut pump = Pump {
        port: &port,
        batch: Vec::with_capacity(256),
        slot: 0,
        next_slot: Instant::now(),
        slot_len: period / SLOTS as u32,
    };

    // Bots join in waves, each waiting for the last to settle: the run
    // measures the game, not how a server rides out a connect storm.
    let deadline = Instant::now() + JOIN_LIMIT;
    loop {
        let settled = stats.joined + stats.lost_before_join;
        if settled == total {
            break;
        }
        if settled == bots.len() {
            let wave = (total - bots.len()).min(JOIN_WAVE);
            for _ in 0..wave {
                let index = bots.len();
                let stream = port
                    .connect(args.addr, index as u64, Req::Connect(index))
                    .map_err(|(e, _)| {
                        io::Error::new(e.kind(), format!("cannot connect to {}: {e}", args.addr))
                    })?;
                let _ = stream.stream().set_nodelay(true);
                bots.push(Bot {
                    index,
                    room: (index % rooms as usize) as u32,
                    stream,
                    alive: true,
                    joined: false,
                    id: 0,
                    tick_hz: args.tick_hz,
                    members: HashSet::new(),
                    rx: Vec::new(),
                    sending: false,
                    out: Vec::new(),
                    next_move: 1,
                    unseen: VecDeque::new(),
                    seen: 0,
                    last_tick: None,
                    first_tick: 0,
                    earliest: i64::MAX,
                    offsets: Vec::new(),
                });
            }
        }
        let now = Instant::now();
        if now > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} of {total} bots joined in {} s",
                    stats.joined,
                    JOIN_LIMIT.as_secs()
                ),
            ));
        }
        pump.run(&mut bots, &mut stats, now + Duration::from_millis(10))?;
        if let Some(why) = stats.setup_failure.take() {
            return Err(io::Error::new(io::ErrorKind::ConnectionRefused, why));
        }
    }

    stats.measuring = true;
    let started = Instant::now();
    pump.run(&mut bots, &mut stats, started + duration)?;
    let elapsed = started.elapsed();
    stats.measuring = false;

    let mut lateness =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
    for bot in &bots {
        for offset in &bot.offsets {
            let _ = lateness.record((offset - bot.earliest).max(1) as u64);
        }
    }
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let report = GameReport {
        mode: BenchMode::Game,
        rooms,
        players: args.players,
        bots: total,
        joined: stats.joined,
        tick_hz: args.tick_hz,
        seconds,
        messages: stats.snapshots,
        messages_per_sec: stats.snapshots as f64 / seconds,
        expected_per_sec: total as f64 * f64::from(args.tick_hz),
        entries: stats.entries,
        entries_per_sec: stats.entries as f64 / seconds,
        moves_sent: stats.moves,
        update_age_p50_us: stats.age.value_at_quantile(0.5),
        update_age_p99_us: stats.age.value_at_quantile(0.99),
        update_age_max_us: stats.age.max(),
        lateness_p50_us: lateness.value_at_quantile(0.5),
        lateness_p99_us: lateness.value_at_quantile(0.99),
        lateness_max_us: lateness.max(),
        lost: stats.lost,
        errors: stats.errors,
        first_errors: stats.described,
    };
    drop(bots);
    port.close();
    Ok(report)
}

/// Bot `i`'s name, new in each run: a server that keeps players between
/// visits (`--db`) would otherwise start a bot where an earlier run's bot
/// of that name left, at a position this run never sent.
fn bot_name(i: usize) -> String {
    static RUN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.map_or(0, |d| d.as_nanos() as u64) ^ u64::from(std::process::id())
    });
    format!("bot{i}-{:x}", run & 0xffff_ffff_ffff)
}

/// The event loop: packets as they come, and moves at their slots.
struct Pump<'a> {
    port: &'a CompletionPort<Req>,
    batch: Vec<Completion<Req>>,
    /// The next slot of moves to send, and when.
    slot: usize,
    next_slot: Instant,
    slot_len: Duration,
}

impl Pump<'_> {
    fn run(&mut self, bots: &mut [Bot], stats: &mut Stats, until: Instant) -> io::Result<()> {
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            if now >= self.next_slot {
                self.port.submit_batch(|| {
                    while self.next_slot <= now {
                        for bot in bots.iter_mut().skip(self.slot).step_by(SLOTS) {
                            bot.send_move(now, stats);
                        }
                        self.slot = (self.slot + 1) % SLOTS;
                        self.next_slot += self.slot_len;
                    }
                });
            }
            let wait = until.min(self.next_slot).saturating_duration_since(now);
            self.port
                .get_queued_completion_status_ex(&mut self.batch, 256, Some(wait))?;
            let now = Instant::now();
            let batch = &mut self.batch;
            self.port.submit_batch(|| handle(bots, batch, now, stats));
        }
    }
}

/// Handles a batch of packets; what it starts goes out together.
fn handle(bots: &mut [Bot], batch: &mut Vec<Completion<Req>>, now: Instant, stats: &mut Stats) {
    for mut packet in batch.drain(..) {
        let Some(req) = packet.record.take() else {
            if let Some(bytes) = packet.received() {
                bots[packet.key as usize].on_arrival(bytes, now, stats);
            }
            continue;
        };
        match req {
            Req::Connect(i) => match packet.result {
                Ok(_) => {
                    let bot = &mut bots[i];
                    bot.post_recv(stats);
                    let mut join = bot.room.to_le_bytes().to_vec();
                    join.extend_from_slice(bot_name(i).as_bytes());
                    bot.send(C_JOIN, &join, stats);
                }
                Err(e) => {
                    stats
                        .setup_failure
                        .get_or_insert_with(|| format!("cannot connect: {e}"));
                    bots[i].fail(stats, format!("cannot connect: {e}"));
                }
            },
            Req::RecvEnd(i) => match packet.result {
                // The pool ran dry or the kernel stopped the receive: again.
                Err(e) if e.winsock_code() == Some(WSAENOBUFS) => bots[i].post_recv(stats),
                Ok(_) => bots[i].fail(stats, "closed by the server".into()),
                Err(e) => bots[i].fail(stats, format!("receive failed: {e}")),
            },
            Req::Send(i) => {
                let bot = &mut bots[i];
                bot.sending = false;
                match packet.result {
                    Ok(_) => bot.flush(stats),
                    Err(e) => bot.fail(stats, format!("send failed: {e}")),
                }
            }
        }
    }
}
