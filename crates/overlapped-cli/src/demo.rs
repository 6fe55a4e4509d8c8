//! `overlapped demo`: the seed's system in one command.

use std::io;
use std::thread;

use clap::Args;
use overlapped::TcpListener;

use crate::{client, server};

/// Options of `overlapped demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Number of sends.
    #[arg(long, default_value_t = 3)]
    count: u64,
    /// Pause between sends, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
}

/// Starts the server on a free loopback port and runs one client against it;
/// both print their lines, as the seed's two console windows do.
pub fn run(args: DemoArgs) -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    tracing::info!("server listening on {addr}");
    thread::Builder::new()
        .name("server".into())
        .spawn(move || server::serve_seed(listener))?;
    client::run(client::demo_args(addr, args.count, args.interval_ms))?;
    // Let the server print the last receive before the process ends.
    thread::sleep(std::time::Duration::from_millis(100));
    Ok(())
}
