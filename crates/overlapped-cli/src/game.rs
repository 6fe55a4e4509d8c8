//! `overlapped server --mode game`: the position game of the library's
//! `game_server` example, the same file, served by the CLI.

#[path = "../../overlapped/examples/game_server/game.rs"]
mod rules;

pub use rules::{GameConfig, World, MAX_PACKET};
