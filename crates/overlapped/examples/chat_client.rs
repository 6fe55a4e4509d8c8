//! A chat client for `overlapped server --model port --mode chat`: lines
//! typed on stdin go out as `C_CHAT`; every `S_CHAT` is printed.
//!
//! Run: `cargo run --release --bin overlapped -- server --model port --mode chat`, then
//! `cargo run -p overlapped --example chat_client [HOST:PORT]` in two
//! terminals (the address is positional; default `127.0.0.1:7777`).

use std::io::BufRead;
use std::sync::Arc;

use overlapped::session::{framing, PacketHandler, PacketSession, Service, ServiceConfig, Session};

const C_CHAT: u16 = 1;
const S_CHAT: u16 = 2;
const S_WELCOME: u16 = 3;
const C_PING: u16 = 4;
const S_PONG: u16 = 5;

/// How often the client says it is there while the user is quiet: well
/// inside the server's idle timeout (120 s by default), which counts
/// complete packets, so a client that only reads is not dropped.
const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

struct ChatClient;

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
            S_WELCOME => println!("* you are session {}", id_at(0).ok_or("short welcome")?),
            S_CHAT => println!(
                "[{}] {}",
                id_at(0).ok_or("short chat")?,
                String::from_utf8_lossy(&payload[8..])
            ),
            S_PONG => {}
            other => return Err(format!("unknown packet id {other}")),
        }
        Ok(())
    }

    fn on_disconnected(&self, _: &Arc<Session>, reason: &str) {
        println!("* disconnected: {reason}");
        std::process::exit(0);
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
            session.send(frame.clone());
        }
    }
    service.stop();
    Ok(())
}
