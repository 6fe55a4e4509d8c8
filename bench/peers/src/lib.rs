//! Shared bits of the peer servers: the address argument and the ready line
//! the benchmark script waits for.

use std::net::SocketAddr;

pub mod game;
pub mod uring;

/// The address to listen on: the first argument, or 127.0.0.1:7777.
pub fn listen_addr() -> SocketAddr {
    let arg = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7777".into());
    arg.parse().unwrap_or_else(|e| {
        eprintln!("bad address {arg:?}: {e}");
        std::process::exit(2)
    })
}

/// Tells the benchmark script that the server accepts connections.
pub fn announce(addr: SocketAddr) {
    eprintln!("listening on {addr}");
}

/// Bytes of the read buffer each connection uses.
pub const READ_BUFFER: usize = 4096;
