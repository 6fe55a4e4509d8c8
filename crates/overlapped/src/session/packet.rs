//! `PacketSession`: cuts a session's byte stream into frames.

use std::sync::Arc;

use super::connection::{Session, SessionHandler};
use super::framing::{self, next_frame};

/// What a packet-based session does with whole frames.
pub trait PacketHandler: Send + Sync + 'static {
    /// The session is connected.
    fn on_connected(&self, session: &Arc<Session>) {
        let _ = session;
    }

    /// A whole frame arrived. An error disconnects the session, with the
    /// error as the logged reason. Once the handler has disconnected the
    /// session or begun its graceful close, no later frame reaches it.
    fn on_packet(&self, session: &Arc<Session>, id: u16, payload: &[u8]) -> Result<(), String>;

    /// The session is gone; called exactly once.
    fn on_disconnected(&self, session: &Arc<Session>, reason: &str) {
        let _ = (session, reason);
    }
}

/// A [`SessionHandler`] that cuts the stream into
/// `[size: u16 LE][id: u16 LE][payload]` frames and hands each whole frame,
/// exactly once, to a [`PacketHandler`]. A size below 4 or above
/// `max_packet` disconnects the session.
pub struct PacketSession<H> {
    handler: H,
    max_packet: usize,
}

impl<H: PacketHandler> PacketSession<H> {
    /// Frames of up to `max_packet` bytes, header included.
    pub fn new(handler: H, max_packet: usize) -> PacketSession<H> {
        PacketSession {
            handler,
            max_packet,
        }
    }
}

impl<H: PacketHandler> SessionHandler for PacketSession<H> {
    fn on_connected(&self, session: &Arc<Session>) {
        self.handler.on_connected(session);
    }

    fn on_recv(&self, session: &Arc<Session>, data: &[u8]) -> Result<usize, String> {
        let mut consumed = 0;
        while let Some(frame) =
            next_frame(&data[consumed..], self.max_packet).map_err(|e| e.to_string())?
        {
            consumed += frame.wire_len();
            super::metrics::Counters::bump(&session.counters().packets_in, 1);
            self.handler.on_packet(session, frame.id, frame.payload)?;
            if !session.is_connected() || session.is_closing() {
                // The handler ended the session (a kick, a logout): the
                // frames after this one are dropped unread, as every byte
                // received from then on is.
                return Ok(data.len());
            }
        }
        Ok(consumed)
    }

    fn on_disconnected(&self, session: &Arc<Session>, reason: &str) {
        self.handler.on_disconnected(session, reason);
    }
}

/// The smallest receive buffer that always holds a whole frame of
/// `max_packet` bytes after compaction.
pub fn recv_buffer_for(max_packet: usize) -> usize {
    (max_packet * 2).max(framing::HEADER_LEN * 2).max(16 * 1024)
}
