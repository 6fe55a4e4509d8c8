//! The game-server layer on the session layer: [`Room`]s whose jobs run
//! one at a time on the service's workers, with delayed jobs and ticks;
//! per-session state owned by the session ([`SessionState`]); typed
//! packets ([`PacketReader`], [`PacketWriter`]) and a dispatch table from
//! packet id to handler ([`Router`]); [`Group`]s a broadcast reaches
//! written once; and [`Rooms`] by key, made on the first join and closed
//! when the last member leaves.
//!
//! The course this crate follows grows its IOCP `Service` into the same
//! pieces: a `JobQueue` that runs a `GameRoom`'s work one job at a time
//! instead of locking it, a job timer, packet serialisation. Here they run
//! on the service's own worker threads: a room needs no thread, and its
//! tick is run by its worker between completions.
//!
//! `examples/game_server.rs` is a whole game on these pieces, and
//! `overlapped server --mode game` serves it.

mod group;
mod room;
mod rooms;
mod router;
mod wire;

pub use group::Group;
pub use room::{Room, RoomError, Tick, Ticker};
pub use rooms::{JoinError, Rooms};
pub use router::{PacketError, PacketResult, Router, SessionState};
pub use wire::{PacketReader, PacketWriter, ReadError, ReadProblem, WriteError};
