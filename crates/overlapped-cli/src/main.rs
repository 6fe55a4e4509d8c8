//! `overlapped`: the seed's overlapped-I/O server and client, on Linux.

#[cfg(feature = "agones")]
mod agones;
mod bench;
/// The chat room (the library's `chat_server` example serves this file).
mod chat;
mod client;
mod demo;
mod game;
mod metrics;
mod server;
mod text;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Winsock's overlapped I/O model on Linux io_uring: the seed's server and
/// client.
#[derive(Parser)]
#[command(name = "overlapped", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Accept clients and print every receive: `Recv Data : TEXT (N bytes)`
    /// (or echo, or run a chat room or a game) in the event, routine or
    /// port model.
    Server(server::ServerArgs),
    /// Send a zero-padded message over and over and print `Send Bytes : N`.
    Client(client::ClientArgs),
    /// Run the server and a client together on a free loopback port.
    Demo(demo::DemoArgs),
    /// Load an echo or chat server and report throughput and latency.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    return_freed_memory_at_once();
    init_logging();
    raise_open_file_limit();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server(args) => server::run(args),
        Command::Client(args) => client::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlapped: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The environment variable that sets how long mimalloc waits before it
/// returns freed pages to the system, in milliseconds.
const PURGE_DELAY_VAR: &str = "MIMALLOC_PURGE_DELAY";

/// Has freed memory go back to the system as it is freed: mimalloc returns
/// a thread's freed pages only when that thread allocates again after the
/// delay, so a worker that went quiet after a burst (everyone left) would
/// keep its peak for good. mimalloc reads its options from the environment
/// before `main`, so the program runs itself again with the option set —
/// unless the operator set it.
fn return_freed_memory_at_once() {
    if std::env::var_os(PURGE_DELAY_VAR).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    use std::os::unix::process::CommandExt;
    let error = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(PURGE_DELAY_VAR, "0")
        .exec();
    // Only a failed exec returns: go on with the allocator's default.
    eprintln!("overlapped: cannot set {PURGE_DELAY_VAR} ({error}); freed memory returns lazily");
}

/// Log lines go to stderr, so stdout carries only the seed's output.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OVERLAPPED_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// A server holds a descriptor per client; lift the soft limit to the hard
/// one so the default 1024 does not cap it.
fn raise_open_file_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!("cannot raise the open-file limit: {e}");
    }
}
