//! `overlapped server --mode game`: the position game. The library's
//! `game_server` example serves this same file as a program of its own.

mod rules;

pub use rules::{GameConfig, World, MAX_PACKET};
