//! What a bench run measured, and the progress line shown meanwhile.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{BenchArgs, BenchMode};

/// The result of one run.
#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: BenchMode,
    pub conns: u32,
    pub connected: u64,
    pub size: u32,
    pub rate: Option<u64>,
    pub seconds: f64,
    /// Messages echoed and checked (fanout: deliveries).
    pub messages: u64,
    pub messages_per_sec: f64,
    pub mb_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub errors: u64,
    pub mismatches: u64,
    /// Echo modes, over the whole run and the drain after it: bytes sent,
    /// bytes echoed back and found as sent, and messages never echoed.
    pub bytes_sent: u64,
    pub bytes_verified: u64,
    pub unanswered: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "mode         {:?}, {} of {} connections up, {} B",
            self.mode, self.connected, self.conns, self.size
        )?;
        writeln!(f, "messages     {} in {:.2} s", self.messages, self.seconds)?;
        writeln!(
            f,
            "throughput   {:.0} msg/s, {:.2} MB/s",
            self.messages_per_sec, self.mb_per_sec
        )?;
        writeln!(
            f,
            "latency      p50 {} us, p99 {} us, p99.9 {} us",
            self.p50_us, self.p99_us, self.p999_us
        )?;
        if self.bytes_sent > 0 {
            writeln!(
                f,
                "verified     {} of {} bytes sent; {} messages unanswered",
                self.bytes_verified, self.bytes_sent, self.unanswered
            )?;
        }
        write!(
            f,
            "errors       {}, mismatches {}",
            self.errors, self.mismatches
        )
    }
}

/// Counters shared by the load generators.
pub struct Tally {
    pub latency: Histogram<u64>,
    pub messages: u64,
    pub bytes: u64,
    pub errors: u64,
    pub mismatches: u64,
    pub connected: u64,
    progress: Option<Progress>,
}

struct Progress {
    started: Instant,
    next: Instant,
    last_messages: u64,
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            messages: 0,
            bytes: 0,
            errors: 0,
            mismatches: 0,
            connected: 0,
            progress: None,
        }
    }

    /// Starts the measured period: counters from the connect phase are
    /// dropped, and a progress line runs on a terminal.
    pub fn start(&mut self) {
        self.latency.reset();
        self.messages = 0;
        self.bytes = 0;
        if std::io::stderr().is_terminal() {
            let now = Instant::now();
            self.progress = Some(Progress {
                started: now,
                next: now + Duration::from_secs(1),
                last_messages: 0,
            });
        }
    }

    pub fn record(&mut self, latency: Duration, bytes: usize) {
        self.messages += 1;
        self.bytes += bytes as u64;
        let _ = self.latency.record((latency.as_micros() as u64).max(1));
    }

    /// Prints a progress line once a second, on a terminal.
    pub fn tick(&mut self) {
        let Some(progress) = &mut self.progress else {
            return;
        };
        let now = Instant::now();
        if now < progress.next {
            return;
        }
        let rate = self.messages - progress.last_messages;
        progress.last_messages = self.messages;
        progress.next += Duration::from_secs(1);
        let _ = write!(
            std::io::stderr(),
            "\r{:>4.0}s  {rate:>9} msg/s  errors {}  mismatches {}   ",
            (now - progress.started).as_secs_f64(),
            self.errors,
            self.mismatches
        );
    }

    pub fn report(&self, args: &BenchArgs, elapsed: Duration) -> Report {
        if self.progress.is_some() {
            eprintln!();
        }
        let seconds = elapsed.as_secs_f64().max(1e-9);
        Report {
            mode: args.mode,
            conns: args.conns,
            connected: self.connected,
            size: args.size,
            rate: args.rate,
            seconds,
            messages: self.messages,
            messages_per_sec: self.messages as f64 / seconds,
            mb_per_sec: self.bytes as f64 / seconds / 1e6,
            p50_us: self.latency.value_at_quantile(0.5),
            p99_us: self.latency.value_at_quantile(0.99),
            p999_us: self.latency.value_at_quantile(0.999),
            errors: self.errors,
            mismatches: self.mismatches,
            bytes_sent: 0,
            bytes_verified: 0,
            unanswered: 0,
        }
    }
}
