//! Prometheus' text exposition format: what the metrics of the session
//! layer are rendered with.

use std::fmt::Write as _;

/// A histogram in Prometheus' text: cumulative buckets over `bounds_us`
/// (then `+Inf`), the sum in seconds, and the count — the `+Inf` bucket,
/// so the two always agree.
pub(crate) fn write_histogram(
    out: &mut String,
    name: &str,
    help: &str,
    bounds_us: &[u64],
    buckets: &[u64],
    sum_us: u64,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    let mut cumulative = 0;
    for (bucket, n) in buckets.iter().enumerate() {
        cumulative += n;
        let bound = bounds_us
            .get(bucket)
            .map_or("+Inf".to_owned(), |&us| format!("{}", us as f64 / 1e6));
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_sum {}", sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {cumulative}");
}
