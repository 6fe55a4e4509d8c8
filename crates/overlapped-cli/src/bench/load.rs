//! Echo load: ping-pong, flood, fixed rate, or idle connections, every
//! echoed byte checked against the pattern it was sent with.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use overlapped::error::{ErrorExt, WSAENOBUFS};
use overlapped::{Completion, CompletionPort, PortStream};

use super::report::{Report, Tally};
use super::{BenchArgs, BenchMode};

/// What a packet was for, and which connection it belongs to.
enum Req {
    Connect(usize),
    Send(usize),
    /// The end of a connection's multishot receive; its arrivals come as
    /// packets without a record, keyed by the connection's index.
    RecvEnd(usize),
}

/// How long every connection has to come up.
const CONNECT_LIMIT: Duration = Duration::from_secs(60);
/// How long the echoes of the last messages have to come back.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// The bytes of message `seq` of connection `conn`: its numbers, then a
/// pattern that differs for every message, so a byte from the wrong message
/// or place shows.
fn fill_message(out: &mut Vec<u8>, conn: usize, seq: u64, size: usize) {
    let start = out.len();
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(conn as u32).to_le_bytes());
    let seed = (conn as u64)
        .wrapping_mul(131)
        .wrapping_add(seq.wrapping_mul(31));
    out.extend((12..size).map(|i| seed.wrapping_add(i as u64 * 7) as u8));
    debug_assert_eq!(out.len() - start, size);
}

struct Conn {
    index: usize,
    stream: PortStream<Req>,
    alive: bool,
    /// Intended send times of messages not sent yet.
    queued: VecDeque<Instant>,
    /// Intended send times of messages sent and not echoed yet.
    in_flight: VecDeque<Instant>,
    sending: bool,
    next_send: u64,
    next_recv: u64,
    /// Echoed bytes not yet making a whole message.
    rx: Vec<u8>,
    expected: Vec<u8>,
    /// When the next message is due, at a fixed rate.
    due: Instant,
    /// The run is over: no new messages, only echoes still awaited.
    closing: bool,
}

impl Conn {
    /// Keeps a receive posted; arrivals take buffers from the port's pool.
    fn post_recv(&mut self, tally: &mut Tally) {
        if self
            .stream
            .recv_multishot(Req::RecvEnd(self.index))
            .is_err()
        {
            self.fail(tally);
        }
    }

    fn fail(&mut self, tally: &mut Tally) {
        if self.alive {
            self.alive = false;
            tally.errors += 1;
            let _ = self.stream.close();
        }
    }

    /// Sends every queued message in one gathered send, if none is in flight.
    fn flush(&mut self, size: usize, tally: &mut Tally) {
        if self.sending || self.queued.is_empty() || !self.alive {
            return;
        }
        let mut batch = Vec::with_capacity(self.queued.len() * size);
        while let Some(intended) = self.queued.pop_front() {
            fill_message(&mut batch, self.index, self.next_send, size);
            self.next_send += 1;
            self.in_flight.push_back(intended);
        }
        self.sending = true;
        if self
            .stream
            .send(vec![batch], Req::Send(self.index))
            .is_err()
        {
            self.fail(tally);
        }
    }

    /// Checks every whole message echoed so far; returns how many.
    fn check_echoes(&mut self, size: usize, tally: &mut Tally) -> usize {
        let mut at = 0;
        let mut whole = 0;
        while self.rx.len() - at >= size {
            self.expected.clear();
            fill_message(&mut self.expected, self.index, self.next_recv, size);
            if self.rx[at..at + size] != self.expected[..] {
                tally.mismatches += 1;
            }
            let intended = self.in_flight.pop_front().unwrap_or_else(Instant::now);
            tally.record(intended.elapsed(), size);
            self.next_recv += 1;
            at += size;
            whole += 1;
        }
        self.rx.drain(..at);
        whole
    }
}

pub fn run(args: &BenchArgs, duration: Duration) -> io::Result<Report> {
    let size = args.size as usize;
    let port = CompletionPort::<Req>::new(1)?;
    let mut tally = Tally::new();
    let mut conns = connect_all(args, &port, &mut tally)?;

    tally.start();
    let started = Instant::now();
    let end = started + duration;
    let interval = args
        .rate
        .map(|rate| Duration::from_secs_f64(conns.len() as f64 / rate as f64));
    let total = conns.len() as f64;
    for conn in &mut conns {
        match (args.mode, interval) {
            (BenchMode::Idle, _) => {}
            // Spread the connections over one interval so the load is smooth.
            (_, Some(interval)) => conn.due = started + interval.mul_f64(conn.index as f64 / total),
            (BenchMode::Flood, None) => conn.queued.extend((0..args.window).map(|_| started)),
            _ => conn.queued.push_back(started),
        }
        conn.flush(size, &mut tally);
    }

    let mut batch = Vec::with_capacity(256);
    let mut next_due = started;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if let Some(interval) = interval {
            if now >= next_due {
                next_due = pace(&mut conns, interval, now, size, &mut tally);
            }
        }
        let wait = (end - now).min(Duration::from_millis(100));
        let wait = match interval {
            Some(_) => wait.min(next_due.saturating_duration_since(now)),
            None => wait,
        };
        port.get_queued_completion_status_ex(&mut batch, 256, Some(wait))?;
        port.submit_batch(|| handle(&mut conns, &mut batch, args, &mut tally));
        tally.tick();
    }
    let elapsed = started.elapsed();
    let mut report = tally.report(args, elapsed);
    drain(&port, &mut conns, &mut batch, args, &mut tally)?;
    let size = size as u64;
    report.bytes_sent = conns.iter().map(|c| c.next_send * size).sum();
    report.bytes_verified =
        conns.iter().map(|c| c.next_recv * size).sum::<u64>() - tally.mismatches * size;
    report.unanswered = conns.iter().map(|c| c.next_send - c.next_recv).sum();
    report.errors = tally.errors;
    report.mismatches = tally.mismatches;
    drop(conns);
    port.close();
    Ok(report)
}

/// Sends nothing more and waits for the echoes of what was sent, so that
/// every byte sent is accounted for: verified, or reported unanswered.
fn drain(
    port: &CompletionPort<Req>,
    conns: &mut [Conn],
    batch: &mut Vec<Completion<Req>>,
    args: &BenchArgs,
    tally: &mut Tally,
) -> io::Result<()> {
    for conn in conns.iter_mut() {
        conn.closing = true;
        conn.queued.clear();
    }
    let deadline = Instant::now() + DRAIN_LIMIT;
    let awaiting = |conns: &[Conn]| {
        conns
            .iter()
            .any(|c| c.alive && (c.sending || !c.in_flight.is_empty()))
    };
    while awaiting(conns) && Instant::now() < deadline {
        port.get_queued_completion_status_ex(batch, 256, Some(Duration::from_millis(100)))?;
        port.submit_batch(|| handle(conns, batch, args, tally));
    }
    Ok(())
}

/// Handles a batch of packets; what it starts goes out together.
fn handle(
    conns: &mut [Conn],
    batch: &mut Vec<Completion<Req>>,
    args: &BenchArgs,
    tally: &mut Tally,
) {
    for mut packet in batch.drain(..) {
        let Some(req) = packet.record.take() else {
            if let Some(bytes) = packet.received() {
                on_arrival(&mut conns[packet.key as usize], bytes, args, tally);
            }
            continue;
        };
        match req {
            Req::RecvEnd(i) => match packet.result {
                // The pool ran dry or the kernel stopped the receive: again.
                Err(e) if e.winsock_code() == Some(WSAENOBUFS) => conns[i].post_recv(tally),
                _ => conns[i].fail(tally),
            },
            Req::Send(i) => {
                let conn = &mut conns[i];
                conn.sending = false;
                match packet.result {
                    Ok(_) => conn.flush(args.size as usize, tally),
                    Err(_) => conn.fail(tally),
                }
            }
            Req::Connect(_) => {}
        }
    }
}

/// Opens every connection with overlapped connects and waits for them.
fn connect_all(
    args: &BenchArgs,
    port: &CompletionPort<Req>,
    tally: &mut Tally,
) -> io::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(args.conns as usize);
    for index in 0..args.conns as usize {
        let stream = port
            .connect(args.addr, index as u64, Req::Connect(index))
            .map_err(|(e, _)| {
                io::Error::new(e.kind(), format!("cannot connect to {}: {e}", args.addr))
            })?;
        let _ = stream.stream().set_nodelay(true);
        conns.push(Conn {
            index,
            stream,
            alive: true,
            queued: VecDeque::new(),
            in_flight: VecDeque::new(),
            sending: false,
            next_send: 0,
            next_recv: 0,
            rx: Vec::new(),
            expected: Vec::new(),
            due: Instant::now(),
            closing: false,
        });
    }
    let deadline = Instant::now() + CONNECT_LIMIT;
    let mut waiting = conns.len();
    while waiting > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(mut packet) = port.get_queued_completion_status(Some(left))? else {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{waiting} connections did not come up"),
            ));
        };
        let Some(Req::Connect(i)) = packet.record.take() else {
            continue;
        };
        waiting -= 1;
        match packet.result {
            Ok(_) => {
                tally.connected += 1;
                conns[i].post_recv(tally);
            }
            Err(e) => {
                if tally.errors == 0 {
                    eprintln!("connect failed: {e}");
                }
                conns[i].fail(tally);
            }
        }
    }
    Ok(conns)
}

/// Queues the messages that fell due; returns when the next one is due.
fn pace(
    conns: &mut [Conn],
    interval: Duration,
    now: Instant,
    size: usize,
    tally: &mut Tally,
) -> Instant {
    let mut next = now + interval;
    for conn in conns.iter_mut().filter(|c| c.alive) {
        while conn.due <= now {
            conn.queued.push_back(conn.due);
            conn.due += interval;
        }
        next = next.min(conn.due);
        conn.flush(size, tally);
    }
    next
}

/// Echoed bytes arrived on `conn`: check them, and in a closed loop let the
/// next messages go.
fn on_arrival(conn: &mut Conn, bytes: &[u8], args: &BenchArgs, tally: &mut Tally) {
    if !conn.alive {
        return;
    }
    conn.rx.extend_from_slice(bytes);
    let size = args.size as usize;
    let whole = conn.check_echoes(size, tally);
    if args.rate.is_none() && !conn.closing {
        let now = Instant::now();
        conn.queued.extend((0..whole).map(|_| now));
    }
    conn.flush(size, tally);
}
