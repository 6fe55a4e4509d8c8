//! The chat room: a small game-server room on the session layer.
//!
//! Frames are `[size: u16 LE][id: u16 LE][payload]`:
//! - `S_WELCOME` (3), server to client on connect: `[session id: u64 LE]`;
//! - `C_CHAT` (1), client to server: UTF-8 text, not empty;
//! - `S_CHAT` (2), server to every session, sender included:
//!   `[sender id: u64 LE][text]`.
//!
//! Anything else disconnects the one session that sent it, with a log line.

use std::sync::Arc;

use overlapped::session::{framing, PacketHandler, Session};

/// Client to server: a line of chat.
pub const C_CHAT: u16 = 1;
/// Server to clients: a line of chat and who said it.
pub const S_CHAT: u16 = 2;
/// Server to a new client: its session id.
pub const S_WELCOME: u16 = 3;

/// The room's rules, shared by every session of the server.
pub struct ChatRoom;

impl PacketHandler for ChatRoom {
    fn on_connected(&self, session: &Arc<Session>) {
        tracing::info!(
            "session {} joined from {}",
            session.id(),
            session.peer_addr()
        );
        let welcome = framing::encode(S_WELCOME, &[&session.id().to_le_bytes()]);
        session.send(welcome.expect("an 8-byte payload fits a frame"));
    }

    fn on_packet(&self, session: &Arc<Session>, id: u16, payload: &[u8]) -> Result<(), String> {
        if id != C_CHAT {
            return Err(format!("unknown packet id {id}"));
        }
        let text =
            std::str::from_utf8(payload).map_err(|_| "chat text is not valid UTF-8".to_string())?;
        if text.is_empty() {
            return Err("chat text is empty".into());
        }
        let said = framing::encode(S_CHAT, &[&session.id().to_le_bytes(), payload])
            .ok_or_else(|| "chat text is too long to relay".to_string())?;
        if let Some(service) = session.service() {
            service.broadcast(&said);
        }
        Ok(())
    }

    fn on_disconnected(&self, session: &Arc<Session>, reason: &str) {
        tracing::info!(
            "session {} ({}) disconnected: {reason}",
            session.id(),
            session.peer_addr()
        );
    }
}
