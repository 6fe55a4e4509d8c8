//! Chat fan-out: every connection joins the room, one sends `C_CHAT`, and
//! each `S_CHAT` that reaches any session counts as a delivery.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use overlapped::session::{
    framing, PacketHandler, PacketSession, Service, ServiceConfig, Session, SessionHandler,
};

use super::report::{Report, Tally};
use super::BenchArgs;

const C_CHAT: u16 = 1;
const S_CHAT: u16 = 2;
const S_WELCOME: u16 = 3;
/// Members that connect at once while the room fills.
const JOIN_WAVE: u64 = 100;

/// Counters the client sessions update from the service's worker.
#[derive(Default)]
struct Room {
    joined: AtomicU64,
    deliveries: AtomicU64,
    mismatches: AtomicU64,
    errors: AtomicU64,
    /// Send times of the sender's messages in flight.
    sender: Mutex<Option<VecDeque<Instant>>>,
    latency: Mutex<Vec<Duration>>,
    text: Vec<u8>,
    running: AtomicBool,
    failed_joins: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

struct Member {
    room: Arc<Room>,
    id: Mutex<Option<u64>>,
}

impl PacketHandler for Member {
    fn on_packet(&self, session: &Arc<Session>, id: u16, payload: &[u8]) -> Result<(), String> {
        match id {
            S_WELCOME => {
                let id = u64::from_le_bytes(payload.try_into().map_err(|_| "short welcome")?);
                *self.id.lock().unwrap() = Some(id);
                self.room.joined.fetch_add(1, Ordering::SeqCst);
            }
            S_CHAT => {
                if payload.len() < 8 || payload[8..] != self.room.text[..] {
                    self.room.mismatches.fetch_add(1, Ordering::Relaxed);
                }
                self.room.deliveries.fetch_add(1, Ordering::Relaxed);
                let me = *self.id.lock().unwrap();
                let from = payload
                    .get(..8)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap()));
                if me.is_some() && me == from {
                    self.on_own_message(session);
                }
            }
            other => return Err(format!("unexpected packet id {other}")),
        }
        Ok(())
    }

    fn on_disconnected(&self, _: &Arc<Session>, reason: &str) {
        if self.room.running.load(Ordering::SeqCst) {
            self.room.errors.fetch_add(1, Ordering::Relaxed);
        } else if self.id.lock().unwrap().is_none() {
            // Never joined: the room cannot fill.
            self.room.failed_joins.fetch_add(1, Ordering::SeqCst);
            let mut first = self.room.first_failure.lock().unwrap();
            first.get_or_insert_with(|| reason.to_string());
        }
    }
}

impl Member {
    /// The sender saw its own message come back: record it, send the next.
    fn on_own_message(&self, session: &Arc<Session>) {
        let mut sender = self.room.sender.lock().unwrap();
        let Some(in_flight) = sender.as_mut() else {
            return;
        };
        if let Some(sent) = in_flight.pop_front() {
            self.room.latency.lock().unwrap().push(sent.elapsed());
        }
        if self.room.running.load(Ordering::SeqCst) {
            in_flight.push_back(Instant::now());
            session.send(framing::encode(C_CHAT, &[&self.room.text]).expect("text fits a frame"));
        }
    }
}

pub fn run(args: &BenchArgs, duration: Duration) -> io::Result<Report> {
    let text: Vec<u8> = (0..args.size as usize)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    if framing::encode(S_CHAT, &[&[0; 8], &text]).is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--size is too large for a chat frame",
        ));
    }
    let room = Arc::new(Room {
        text,
        ..Room::default()
    });
    let config = ServiceConfig {
        workers: 1,
        ..ServiceConfig::default()
    };
    let shared = room.clone();
    let factory = Arc::new(move || {
        let member = Member {
            room: shared.clone(),
            id: Mutex::new(None),
        };
        Arc::new(PacketSession::new(member, 65_535)) as Arc<dyn SessionHandler>
    });
    // Members join in waves, each waiting for the last to be welcomed: the
    // benchmark measures fan-out, not how a server rides out a connect storm
    // (an ordinary tokio listener has a backlog of 128).
    let service = Service::client(args.addr, 0, config, factory)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut started = 0u64;
    while room.joined.load(Ordering::SeqCst) < u64::from(args.conns) {
        let joined = room.joined.load(Ordering::SeqCst);
        if started == joined && started < u64::from(args.conns) {
            let wave = (u64::from(args.conns) - started).min(JOIN_WAVE);
            for _ in 0..wave {
                service.connect(args.addr)?;
            }
            started += wave;
        }
        let failed = room.failed_joins.load(Ordering::SeqCst);
        if Instant::now() > deadline || failed > 0 {
            service.stop();
            let why = room.first_failure.lock().unwrap().clone();
            let why = why.unwrap_or_else(|| "timed out".into());
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{joined} of {} members joined the room, {failed} failed: {why}",
                    args.conns
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let sessions = service.sessions();
    let sender = sessions
        .first()
        .ok_or_else(|| io::Error::other("no session"))?
        .clone();

    let mut tally = Tally::new();
    tally.connected = room.joined.load(Ordering::SeqCst);
    tally.start();
    room.running.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let baseline = room.deliveries.load(Ordering::SeqCst);
    *room.sender.lock().unwrap() = Some((0..args.window).map(|_| Instant::now()).collect());
    for _ in 0..args.window {
        sender.send(framing::encode(C_CHAT, &[&room.text]).expect("text fits a frame"));
    }
    while started.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(50));
        tally.messages = room.deliveries.load(Ordering::Relaxed) - baseline;
        tally.tick();
    }
    room.running.store(false, Ordering::SeqCst);
    let elapsed = started.elapsed();
    tally.messages = room.deliveries.load(Ordering::SeqCst) - baseline;
    tally.bytes = tally.messages * (args.size as u64 + 12);
    for latency in room.latency.lock().unwrap().drain(..) {
        let _ = tally.latency.record((latency.as_micros() as u64).max(1));
    }
    tally.mismatches = room.mismatches.load(Ordering::SeqCst);
    tally.errors = room.errors.load(Ordering::SeqCst);
    service.stop();
    Ok(tally.report(args, elapsed))
}
