//! A chat client for `overlapped server --model port --mode chat`: lines
//! typed on stdin go out as `C_CHAT`; every `S_CHAT` is printed.
//!
//! Run: `cargo run --release --bin overlapped -- server --model port --mode chat`, then
//! `cargo run -p overlapped --example chat_client [HOST:PORT]` in two
//! terminals (the address is positional; default `127.0.0.1:7777`).

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use overlapped::session::{framing, PacketHandler, PacketSession, Service, ServiceConfig, Session};

const C_CHAT: u16 = 1;
const S_CHAT: u16 = 2;
const S_WELCOME: u16 = 3;
const C_PING: u16 = 4;
const S_PONG: u16 = 5;

/// How often the client says it is there while the user is quiet: well
/// inside the server's idle timeout (120 s by default), which counts
/// complete packets, so a client that only reads is not dropped.
const PING_EVERY: Duration = Duration::from_secs(30);

struct ChatClient;

/// Input ended and the client closes: the disconnect that follows is ours.
static ENDING: AtomicBool = AtomicBool::new(false);
/// Our session id, from `S_WELCOME` (0 until then).
static MY_ID: AtomicU64 = AtomicU64::new(0);
/// Lines we sent, and those of them the room has sent back.
static SENT: AtomicU64 = AtomicU64::new(0);
static ECHOED: AtomicU64 = AtomicU64::new(0);
/// How long the end of input waits for the room to relay our last lines.
const ECHO_WAIT: Duration = Duration::from_secs(10);

impl PacketHandler for ChatClient {
    fn on_connected(&self, session: &Arc<Session>) {
        // Speak at once: the server drops a client that sends no first
        // packet within its handshake timeout (15 s by default).
        session.send(framing::encode(C_PING, &[]).expect("an empty ping fits a frame"));
    }

    fn on_packet(&self, _: &Arc<Session>, id: u16, payload: &[u8]) -> Result<(), String> {
        let id_at = |at: usize| {
            payload
                .get(at..at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        };
        match id {
            S_WELCOME => {
                let me = id_at(0).ok_or("short welcome")?;
                MY_ID.store(me, Ordering::Release);
                println!("* you are session {me}");
            }
            S_CHAT => {
                let sender = id_at(0).ok_or("short chat")?;
                println!("[{sender}] {}", String::from_utf8_lossy(&payload[8..]));
                if sender == MY_ID.load(Ordering::Acquire) {
                    ECHOED.fetch_add(1, Ordering::AcqRel);
                }
            }
            S_PONG => {}
            other => return Err(format!("unknown packet id {other}")),
        }
        Ok(())
    }

    fn on_disconnected(&self, _: &Arc<Session>, reason: &str) {
        if ENDING.load(Ordering::Acquire) {
            // Our end of input: every line went out before the close.
            std::process::exit(0);
        }
        eprintln!("* disconnected: {reason}");
        std::process::exit(1);
    }
}

const USAGE: &str = "usage: chat_client [HOST:PORT]   (default 127.0.0.1:7777)

Lines typed on stdin are sent to the chat room; every line of the room is
printed. End with Ctrl-D.";

fn main() -> std::io::Result<()> {
    let arg = std::env::args().nth(1);
    if matches!(arg.as_deref(), Some("-h" | "--help")) {
        println!("{USAGE}");
        return Ok(());
    }
    let addr = arg.unwrap_or_else(|| "127.0.0.1:7777".into());
    let config = ServiceConfig {
        workers: 1,
        ..ServiceConfig::default()
    };
    let service = Service::client(
        addr.as_str(),
        1,
        config,
        Arc::new(|| Arc::new(PacketSession::new(ChatClient, 4096))),
    )?;
    let pinging = service.clone();
    std::thread::spawn(move || loop {
        std::thread::sleep(PING_EVERY);
        let ping = framing::encode(C_PING, &[]).expect("an empty ping fits a frame");
        for session in pinging.sessions() {
            session.send(ping.clone());
        }
    });
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        let Some(frame) = framing::encode(C_CHAT, &[line.as_bytes()]) else {
            println!("* too long");
            continue;
        };
        for session in service.sessions() {
            if session.send(frame.clone()) {
                SENT.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
    // Input piped in ends at once: see the room relay our lines first.
    let waiting = Instant::now();
    while ECHOED.load(Ordering::Acquire) < SENT.load(Ordering::Acquire)
        && waiting.elapsed() < ECHO_WAIT
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Flush what was typed, then end the stream; the server's end of it
    // disconnects the session, and `on_disconnected` exits.
    ENDING.store(true, Ordering::Release);
    let sessions = service.sessions();
    if sessions.is_empty() {
        return Ok(());
    }
    for session in sessions {
        session.close_gracefully();
    }
    service.wait();
    Ok(())
}
