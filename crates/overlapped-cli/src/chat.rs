//! The chat room: a small game-server room on the session layer.
//! `overlapped server --mode chat` serves this same file.
//!
//! Frames are `[size: u16 LE][id: u16 LE][payload]`:
//! - `S_WELCOME` (3), server to client on connect: `[session id: u64 LE]`;
//! - `C_CHAT` (1), client to server: UTF-8 text, not empty, at most
//!   [`ChatRoom::max_text`] bytes (the room's largest packet less the 12
//!   bytes of the relayed frame's header and sender);
//! - `S_CHAT` (2), server to every session, sender included:
//!   `[sender id: u64 LE][text]`;
//! - `C_PING` (4), client to server: up to 64 bytes of the client's choice,
//!   answered by `S_PONG` (5) with the same bytes, to the sender only. A
//!   client that only reads sends it now and then so that the idle timeout
//!   (which counts complete packets) does not drop it.
//!
//! Anything else disconnects the one session that sent it, with a log line;
//! so does a client that sends more chat lines than the room's rate limit
//! allows (each line costs a send to every session).

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use overlapped::session::{framing, LogBudget, PacketHandler, Session};

/// Lines about sessions joining, a few hundred a second: a connection
/// storm is summarised instead of writing a line per connection.
static JOIN_LOG: LazyLock<LogBudget> = LazyLock::new(|| LogBudget::new(200));

/// Lines about sessions leaving, with their reasons, on a budget of their
/// own: a storm of joins does not hide why someone was dropped.
static LEAVE_LOG: LazyLock<LogBudget> = LazyLock::new(|| LogBudget::new(200));

/// Client to server: a line of chat.
pub const C_CHAT: u16 = 1;
/// Server to clients: a line of chat and who said it.
pub const S_CHAT: u16 = 2;
/// Server to a new client: its session id.
pub const S_WELCOME: u16 = 3;
/// Client to server: are you there?
pub const C_PING: u16 = 4;
/// Server to the client that pinged: yes, with its bytes.
pub const S_PONG: u16 = 5;

/// Most bytes a `C_PING` may carry.
pub const MAX_PING: usize = 64;

/// Bytes an `S_CHAT` adds to the text: the frame header and the sender.
const RELAY_OVERHEAD: usize = framing::HEADER_LEN + 8;

/// The room's rules; one per session (the factory makes one each), with
/// that session's chat-rate budget.
pub struct ChatRoom {
    max_text: usize,
    rate: Option<ChatRate>,
}

impl ChatRoom {
    /// A room whose packets are at most `max_packet` bytes, where each
    /// session may send `lines_per_second` lines on average (`None`: no
    /// limit), in bursts of up to twice that.
    pub fn new(max_packet: usize, lines_per_second: Option<u32>) -> ChatRoom {
        ChatRoom {
            max_text: Self::max_text(max_packet),
            rate: lines_per_second.map(ChatRate::new),
        }
    }

    /// The longest chat text a room of `max_packet`-byte packets relays:
    /// its `S_CHAT`, 12 bytes longer, must fit a packet too.
    pub fn max_text(max_packet: usize) -> usize {
        max_packet.saturating_sub(RELAY_OVERHEAD)
    }
}

/// A token bucket: `per_second` lines on average, bursts of twice that.
struct ChatRate {
    per_second: u32,
    bucket: Mutex<(f64, Instant)>,
}

impl ChatRate {
    fn new(per_second: u32) -> ChatRate {
        ChatRate {
            per_second,
            bucket: Mutex::new((f64::from(per_second) * 2.0, Instant::now())),
        }
    }

    /// Takes a token for one line; `false` once the bucket is empty.
    fn take(&self) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *bucket;
        let now = Instant::now();
        let burst = f64::from(self.per_second) * 2.0;
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * f64::from(self.per_second))
            .min(burst);
        *last = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }
}

impl PacketHandler for ChatRoom {
    fn on_connected(&self, session: &Arc<Session>) {
        JOIN_LOG.info(&format!(
            "session {} joined from {}",
            session.id(),
            session.peer_addr()
        ));
        let welcome = framing::encode(S_WELCOME, &[&session.id().to_le_bytes()]);
        session.send(welcome.expect("an 8-byte payload fits a frame"));
    }

    fn on_packet(&self, session: &Arc<Session>, id: u16, payload: &[u8]) -> Result<(), String> {
        match id {
            C_CHAT => self.chat(session, payload),
            C_PING => pong(session, payload),
            _ => Err(format!("unknown packet id {id}")),
        }
    }

    fn on_disconnected(&self, session: &Arc<Session>, reason: &str) {
        LEAVE_LOG.info(&format!(
            "session {} ({}) disconnected: {reason}",
            session.id(),
            session.peer_addr()
        ));
    }
}

impl ChatRoom {
    fn chat(&self, session: &Arc<Session>, payload: &[u8]) -> Result<(), String> {
        let text =
            std::str::from_utf8(payload).map_err(|_| "chat text is not valid UTF-8".to_string())?;
        if text.is_empty() {
            return Err("chat text is empty".into());
        }
        if text.len() > self.max_text {
            return Err(format!(
                "chat text of {} bytes is longer than the room's {} (its S_CHAT must fit a packet)",
                text.len(),
                self.max_text
            ));
        }
        if let Some(rate) = &self.rate {
            if !rate.take() {
                return Err(format!(
                    "chat flood: more than {} lines a second (each is sent to every session)",
                    rate.per_second
                ));
            }
        }
        let said = framing::encode(S_CHAT, &[&session.id().to_le_bytes(), payload])
            .ok_or_else(|| "chat text is too long to relay".to_string())?;
        if let Some(service) = session.service() {
            service.broadcast(&said);
        }
        Ok(())
    }
}

/// Answers a `C_PING` to its sender alone.
fn pong(session: &Arc<Session>, payload: &[u8]) -> Result<(), String> {
    if payload.len() > MAX_PING {
        return Err(format!(
            "ping of {} bytes is longer than {MAX_PING}",
            payload.len()
        ));
    }
    let pong = framing::encode(S_PONG, &[payload]).expect("a short payload fits a frame");
    session.send(pong);
    Ok(())
}
