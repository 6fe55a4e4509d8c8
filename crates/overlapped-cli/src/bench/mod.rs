//! `overlapped bench`: a load generator on our own driver, so that one core
//! of client can push harder than one core of server.

mod fanout;
mod game;
mod game_report;
mod game_wire;
mod load;
mod report;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// What the load looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchMode {
    /// Each connection sends a message and waits for its echo.
    Pingpong,
    /// Each connection keeps a window of messages in flight.
    Flood,
    /// Chat room fan-out: one sender, every session receives each message.
    Fanout,
    /// Connections that only stay open, for memory per connection.
    Idle,
    /// Game rooms: `--rooms` × `--players` bots move at the tick rate and
    /// check every snapshot.
    Game,
}

/// Options of `overlapped bench`.
#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// Server address (a name such as `localhost:7777` is resolved).
    #[arg(long, default_value = "127.0.0.1:7777", value_parser = crate::server::resolve_addr)]
    pub addr: SocketAddr,
    /// Connections.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub conns: u32,
    /// Bytes per message (fanout: bytes of chat text).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(16..=65_536))]
    pub size: u32,
    /// Seconds of measured load, after every connection is up.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Load shape.
    #[arg(long, value_enum, default_value_t = BenchMode::Pingpong)]
    pub mode: BenchMode,
    /// Messages per second in total, for a fixed offered load (pingpong and
    /// flood); unlimited when absent.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Messages in flight per connection in flood mode (fanout: for the sender).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub window: u32,
    /// Game mode: rooms.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rooms: u32,
    /// Game mode: players (bots) per room.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=4095))]
    pub players: u32,
    /// Game mode: moves per second of each bot (the server's tick rate).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub tick_hz: u16,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    fn duration(&self) -> io::Result<Duration> {
        Duration::try_from_secs_f64(self.duration)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "--duration must be a positive number of seconds",
                )
            })
    }
}

pub fn run(args: BenchArgs) -> io::Result<()> {
    let duration = args.duration()?;
    if args.rate == Some(0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--rate must be at least 1",
        ));
    }
    if args.mode == BenchMode::Game {
        let report = game::run(&args, duration)?;
        print_report(&report, args.json)?;
        return failed(&[
            (report.bots - report.joined, "bots did not join"),
            (report.errors as usize, "bot errors"),
        ]);
    }
    let report = match args.mode {
        BenchMode::Fanout => fanout::run(&args, duration)?,
        _ => load::run(&args, duration)?,
    };
    print_report(&report, args.json)?;
    let not_up = u64::from(report.conns).saturating_sub(report.connected);
    failed(&[
        (not_up as usize, "connections not up"),
        (report.errors as usize, "errors"),
        (report.mismatches as usize, "mismatches"),
        (report.unanswered as usize, "messages unanswered"),
    ])
}

/// An error naming every count that is not zero: a run where a connection,
/// a message or a bot failed exits non-zero, and says how many.
fn failed(counts: &[(usize, &str)]) -> io::Result<()> {
    let failures: Vec<String> = counts
        .iter()
        .filter(|(count, _)| *count > 0)
        .map(|(count, what)| format!("{count} {what}"))
        .collect();
    if failures.is_empty() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "the run failed: {}",
        failures.join(", ")
    )))
}

/// Prints a report, as one JSON object or as text.
fn print_report(
    report: &(impl serde::Serialize + std::fmt::Display),
    json: bool,
) -> io::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string(report).map_err(io::Error::other)?
        );
    } else {
        println!("{report}");
    }
    Ok(())
}
