//! A service's counters: what it accepted, refused, received, sent and
//! dropped, and how late its rooms' ticks ran — readable in-process
//! ([`Service::metrics`](super::Service::metrics)) and as Prometheus text.
//!
//! Each worker writes counters of its own (one cache line apart from the
//! others'), so the hot path adds to memory no other core writes; a read
//! sums them.

use std::fmt::Write as _;

use super::blocking::BlockingMetrics;
use super::prometheus::write_histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why sessions ended, in kinds a dashboard can graph: the reason each
/// `on_disconnected` gets, classified by [`DisconnectKind::of`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DisconnectKind {
    /// The peer closed (or half-closed) the connection.
    PeerClosed,
    /// The server shut down or stopped.
    Shutdown,
    /// No complete packet within the idle timeout.
    IdleTimeout,
    /// No first packet within the handshake timeout.
    HandshakeTimeout,
    /// The client did not read: its send queue reached its cap.
    SendQueueFull,
    /// The service's memory budget shed it.
    MemoryBudget,
    /// Its handler panicked.
    Panic,
    /// A receive or send failed (a reset, a broken pipe).
    IoError,
    /// The program's own reason: a malformed packet, a protocol rule, a kick.
    Rejected,
}

impl DisconnectKind {
    /// Every kind, in the order of the metrics' labels.
    pub const ALL: [DisconnectKind; 9] = [
        DisconnectKind::PeerClosed,
        DisconnectKind::Shutdown,
        DisconnectKind::IdleTimeout,
        DisconnectKind::HandshakeTimeout,
        DisconnectKind::SendQueueFull,
        DisconnectKind::MemoryBudget,
        DisconnectKind::Panic,
        DisconnectKind::IoError,
        DisconnectKind::Rejected,
    ];

    /// The kind of a disconnect reason as the session layer words it.
    /// Reasons the layer does not word itself (a handler's `Err`, a
    /// program's `disconnect`) are [`DisconnectKind::Rejected`].
    pub fn of(reason: &str) -> DisconnectKind {
        const KINDS: [(&str, DisconnectKind); 12] = [
            ("closed by peer", DisconnectKind::PeerClosed),
            ("closed by server shutdown", DisconnectKind::Shutdown),
            ("service stopped", DisconnectKind::Shutdown),
            ("idle timeout", DisconnectKind::IdleTimeout),
            ("handshake timeout", DisconnectKind::HandshakeTimeout),
            ("send queue full", DisconnectKind::SendQueueFull),
            ("memory budget", DisconnectKind::MemoryBudget),
            ("its handler panicked", DisconnectKind::Panic),
            ("receive failed", DisconnectKind::IoError),
            ("send failed", DisconnectKind::IoError),
            ("connect failed", DisconnectKind::IoError),
            ("cannot ", DisconnectKind::IoError),
        ];
        KINDS
            .iter()
            .find(|(prefix, _)| reason.starts_with(prefix))
            .map_or(DisconnectKind::Rejected, |&(_, kind)| kind)
    }

    /// The label value in the Prometheus output.
    pub fn label(self) -> &'static str {
        match self {
            DisconnectKind::PeerClosed => "peer_closed",
            DisconnectKind::Shutdown => "shutdown",
            DisconnectKind::IdleTimeout => "idle_timeout",
            DisconnectKind::HandshakeTimeout => "handshake_timeout",
            DisconnectKind::SendQueueFull => "send_queue_full",
            DisconnectKind::MemoryBudget => "memory_budget",
            DisconnectKind::Panic => "panic",
            DisconnectKind::IoError => "io_error",
            DisconnectKind::Rejected => "rejected",
        }
    }
}

/// Upper bounds, in microseconds, of the tick-lateness histogram's
/// buckets (the last bucket takes the rest).
pub const TICK_LATENESS_BOUNDS_US: [u64; 10] = [
    100, 250, 500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000,
];

const BUCKETS: usize = TICK_LATENESS_BOUNDS_US.len() + 1;

/// One worker's counters, on a cache line of their own.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) packets_in: AtomicU64,
    pub(crate) packets_out: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    send_queue_high_water: AtomicU64,
    disconnects: [AtomicU64; DisconnectKind::ALL.len()],
    jobs_run: AtomicU64,
    job_panics: AtomicU64,
    ticks_skipped: AtomicU64,
    /// Ticks by lateness; their sum is the ticks run (no separate count
    /// that a scrape could read at another moment than the buckets).
    tick_lateness: [AtomicU64; BUCKETS],
    tick_lateness_sum_us: AtomicU64,
}

impl Counters {
    /// Adds `n` to `counter`, which any thread may write (a refusal, a
    /// disconnect): an atomic add, so that no count is lost.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds `n` to `counter`, which only this counters' worker writes (what
    /// its sessions receive and send, its jobs and ticks): a plain load and
    /// store, without the locked add's cost on every message. Readers on
    /// other threads see each store whole.
    pub(crate) fn bump(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    pub(crate) fn send_queue_reached(&self, bytes: usize) {
        let bytes = bytes as u64;
        if bytes > self.send_queue_high_water.load(Ordering::Relaxed) {
            self.send_queue_high_water
                .fetch_max(bytes, Ordering::Relaxed);
        }
    }

    pub(crate) fn disconnected(&self, reason: &str) {
        let kind = DisconnectKind::of(reason);
        let index = DisconnectKind::ALL.iter().position(|&k| k == kind);
        if let Some(index) = index {
            Counters::add(&self.disconnects[index], 1);
        }
    }

    pub(crate) fn job_ran(&self, panicked: bool) {
        Counters::bump(&self.jobs_run, 1);
        if panicked {
            Counters::add(&self.job_panics, 1);
        }
    }

    pub(crate) fn ticks_skipped(&self, skipped: u64) {
        Counters::add(&self.ticks_skipped, skipped);
    }

    pub(crate) fn tick_ran(&self, lateness: Duration) {
        let us = lateness.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = TICK_LATENESS_BOUNDS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(BUCKETS - 1);
        Counters::bump(&self.tick_lateness[bucket], 1);
        Counters::bump(&self.tick_lateness_sum_us, us);
    }
}

/// The counters of a service at one moment ([`Service::metrics`](super::Service::metrics)).
///
/// Counters count from the service's start; `sessions_open` and
/// `send_queue_high_water` are levels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Sessions connected now.
    pub sessions_open: u64,
    /// Connections accepted and made sessions.
    pub accepted: u64,
    /// Connections refused as they were accepted (the session limit, the
    /// per-address limit, or the program's factory).
    pub refused: u64,
    /// Packets received: frames handed on by a [`PacketSession`](super::PacketSession)
    /// or a [`Router`](crate::game::Router) (a raw [`SessionHandler`](super::SessionHandler)'s
    /// bytes count in `bytes_in` only).
    pub packets_in: u64,
    /// Sends queued on sessions (each `send`, and each session a broadcast
    /// reached).
    pub packets_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes the kernel took from the sessions' sends.
    pub bytes_out: u64,
    /// The most bytes any session's send queue held.
    pub send_queue_high_water: u64,
    /// Sessions ended, by kind, in the order of [`DisconnectKind::ALL`].
    pub disconnects: Vec<(DisconnectKind, u64)>,
    /// Jobs run by the service's rooms.
    pub jobs_run: u64,
    /// Jobs that panicked (each was logged; its room went on).
    pub job_panics: u64,
    /// Ticks run by the service's rooms: the sum of `tick_lateness`, read
    /// at the same moment, so a scrape's count always matches its buckets.
    pub ticks: u64,
    /// Tick slots skipped because a tick ran a whole period late.
    pub ticks_skipped: u64,
    /// Ticks by lateness: one count per bucket of
    /// [`TICK_LATENESS_BOUNDS_US`], then the ticks later than the last.
    pub tick_lateness: Vec<u64>,
    /// The ticks' lateness, summed, in microseconds.
    pub tick_lateness_sum_us: u64,
    /// The blocking pool's calls ([`BlockingLine`](super::BlockingLine)).
    pub blocking: BlockingMetrics,
}

impl Metrics {
    pub(crate) fn sum(workers: &[Arc<Counters>], sessions_open: usize) -> Metrics {
        let total = |field: fn(&Counters) -> &AtomicU64| -> u64 {
            workers
                .iter()
                .map(|c| field(c).load(Ordering::Relaxed))
                .sum()
        };
        let disconnects = DisconnectKind::ALL
            .iter()
            .enumerate()
            .map(|(i, &kind)| {
                let n = workers
                    .iter()
                    .map(|c| c.disconnects[i].load(Ordering::Relaxed));
                (kind, n.sum())
            })
            .collect();
        let tick_lateness: Vec<u64> = (0..BUCKETS)
            .map(|i| {
                workers
                    .iter()
                    .map(|c| c.tick_lateness[i].load(Ordering::Relaxed))
                    .sum()
            })
            .collect();
        Metrics {
            sessions_open: sessions_open as u64,
            accepted: total(|c| &c.accepted),
            refused: total(|c| &c.refused),
            packets_in: total(|c| &c.packets_in),
            packets_out: total(|c| &c.packets_out),
            bytes_in: total(|c| &c.bytes_in),
            bytes_out: total(|c| &c.bytes_out),
            send_queue_high_water: workers
                .iter()
                .map(|c| c.send_queue_high_water.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0),
            disconnects,
            jobs_run: total(|c| &c.jobs_run),
            job_panics: total(|c| &c.job_panics),
            ticks: tick_lateness.iter().sum(),
            ticks_skipped: total(|c| &c.ticks_skipped),
            tick_lateness,
            tick_lateness_sum_us: total(|c| &c.tick_lateness_sum_us),
            blocking: BlockingMetrics::default(),
        }
    }

    /// Sessions that ended with `kind`.
    pub fn disconnects_of(&self, kind: DisconnectKind) -> u64 {
        self.disconnects
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }

    /// The tick lateness below which `quantile` (0–1) of the ticks ran,
    /// as the upper bound of its bucket; `None` before the first tick or
    /// when it falls in the open last bucket.
    pub fn tick_lateness_quantile(&self, quantile: f64) -> Option<Duration> {
        let count: u64 = self.tick_lateness.iter().sum();
        if count == 0 {
            return None;
        }
        let rank = (quantile.clamp(0.0, 1.0) * count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, n) in self.tick_lateness.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return TICK_LATENESS_BOUNDS_US
                    .get(bucket)
                    .map(|&us| Duration::from_micros(us));
            }
        }
        None
    }

    /// The counters in Prometheus' text exposition format (version
    /// 0.0.4), every name prefixed with `prefix` and an underscore.
    pub fn to_prometheus(&self, prefix: &str) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {prefix}_{name} {help}");
            let _ = writeln!(out, "# TYPE {prefix}_{name} {kind}");
            let _ = writeln!(out, "{prefix}_{name} {value}");
        };
        metric(
            "sessions_open",
            "gauge",
            "Sessions connected now.",
            self.sessions_open,
        );
        metric(
            "sessions_accepted_total",
            "counter",
            "Connections accepted.",
            self.accepted,
        );
        metric(
            "sessions_refused_total",
            "counter",
            "Connections refused on accept.",
            self.refused,
        );
        metric(
            "packets_in_total",
            "counter",
            "Packets received.",
            self.packets_in,
        );
        metric(
            "packets_out_total",
            "counter",
            "Sends queued on sessions.",
            self.packets_out,
        );
        metric(
            "bytes_in_total",
            "counter",
            "Bytes received.",
            self.bytes_in,
        );
        metric("bytes_out_total", "counter", "Bytes sent.", self.bytes_out);
        metric(
            "send_queue_high_water_bytes",
            "gauge",
            "The most bytes any session's send queue held.",
            self.send_queue_high_water,
        );
        metric("jobs_run_total", "counter", "Room jobs run.", self.jobs_run);
        metric(
            "job_panics_total",
            "counter",
            "Room jobs that panicked.",
            self.job_panics,
        );
        metric("ticks_total", "counter", "Room ticks run.", self.ticks);
        metric(
            "ticks_skipped_total",
            "counter",
            "Tick slots skipped, a period late.",
            self.ticks_skipped,
        );
        let _ = writeln!(
            out,
            "# HELP {prefix}_disconnects_total Sessions ended, by reason kind."
        );
        let _ = writeln!(out, "# TYPE {prefix}_disconnects_total counter");
        for (kind, n) in &self.disconnects {
            let _ = writeln!(
                out,
                "{prefix}_disconnects_total{{reason=\"{}\"}} {n}",
                kind.label()
            );
        }
        write_histogram(
            &mut out,
            &format!("{prefix}_tick_lateness_seconds"),
            "How late room ticks ran.",
            &TICK_LATENESS_BOUNDS_US,
            &self.tick_lateness,
            self.tick_lateness_sum_us,
        );
        self.blocking.write_prometheus(&mut out, prefix);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_the_layer_words_are_classified_by_kind() {
        let cases = [
            ("closed by peer", DisconnectKind::PeerClosed),
            ("closed by server shutdown", DisconnectKind::Shutdown),
            ("service stopped", DisconnectKind::Shutdown),
            (
                "idle timeout: no complete packet for 9 ms (limit 5 ms)",
                DisconnectKind::IdleTimeout,
            ),
            (
                "handshake timeout: no first packet in 9 ms (limit 5 ms)",
                DisconnectKind::HandshakeTimeout,
            ),
            (
                "send queue full: 10 bytes queued",
                DisconnectKind::SendQueueFull,
            ),
            (
                "memory budget: sessions hold 9 bytes",
                DisconnectKind::MemoryBudget,
            ),
            ("its handler panicked: boom", DisconnectKind::Panic),
            (
                "receive failed: Connection reset by peer",
                DisconnectKind::IoError,
            ),
            ("send failed: Broken pipe", DisconnectKind::IoError),
            ("C_MOVE before C_JOIN", DisconnectKind::Rejected),
        ];
        for (reason, kind) in cases {
            assert_eq!(DisconnectKind::of(reason), kind, "{reason}");
        }
    }

    #[test]
    fn tick_lateness_lands_in_the_bucket_of_its_upper_bound() {
        let counters = [Arc::new(Counters::default())];
        counters[0].tick_ran(Duration::from_micros(100));
        counters[0].tick_ran(Duration::from_micros(101));
        counters[0].ticks_skipped(2);
        counters[0].tick_ran(Duration::from_secs(1));
        let metrics = Metrics::sum(&counters, 0);
        assert_eq!(&metrics.tick_lateness[..3], &[1, 1, 0]);
        assert_eq!(metrics.tick_lateness[BUCKETS - 1], 1);
        assert_eq!(metrics.ticks, 3);
        assert_eq!(metrics.ticks_skipped, 2);
        assert_eq!(
            metrics.tick_lateness_quantile(0.5),
            Some(Duration::from_micros(250))
        );
        assert_eq!(metrics.tick_lateness_quantile(1.0), None);
    }

    #[test]
    fn prometheus_text_has_a_type_line_per_metric_and_cumulative_buckets() {
        let counters = [Arc::new(Counters::default()), Arc::new(Counters::default())];
        Counters::add(&counters[0].accepted, 2);
        Counters::add(&counters[1].accepted, 3);
        counters[1].disconnected("closed by peer");
        counters[0].tick_ran(Duration::from_micros(50));
        counters[1].tick_ran(Duration::from_micros(700));
        let text = Metrics::sum(&counters, 4).to_prometheus("game");
        assert!(
            text.contains("\ngame_sessions_accepted_total 5\n"),
            "{text}"
        );
        assert!(text.contains("game_sessions_open 4\n"), "{text}");
        assert!(
            text.contains("game_disconnects_total{reason=\"peer_closed\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("game_tick_lateness_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("game_tick_lateness_seconds_bucket{le=\"0.001\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("game_tick_lateness_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("game_tick_lateness_seconds_count 2\n"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {family} "))
                    || text.contains(&format!("# TYPE {name} ")),
                "no TYPE line for {name}"
            );
        }
    }
}
