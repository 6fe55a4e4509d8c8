//! `overlapped server --mode game`: the position game, and where it keeps
//! its players. The library's `game_server` example serves these same
//! files as a program of its own.

pub mod persistence;
mod rules;
pub mod store;

pub use persistence::Persistence;
pub use rules::{GameConfig, World, MAX_PACKET};
