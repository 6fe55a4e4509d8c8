//! The game's protocol, as the game peers speak it (the same as
//! `overlapped server --mode game`): frames are `[u16 size][u16 id]` and a
//! payload, little-endian.

pub const C_JOIN: u16 = 10;
pub const S_JOINED: u16 = 11;
pub const S_PLAYER_JOIN: u16 = 12;
pub const C_MOVE: u16 = 13;
pub const S_SNAPSHOT: u16 = 14;
pub const S_PLAYER_LEAVE: u16 = 15;
/// The largest frame a client sends: a join with a 32-byte name.
pub const MAX_CLIENT_FRAME: usize = 4 + 4 + 32;
/// The largest coordinate a move may carry.
pub const MAX_COORD: f32 = 10_000.0;
