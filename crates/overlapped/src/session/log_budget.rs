//! A budget of log lines per second: a storm of connections (refused,
//! joined, left) writes a few lines and then a summary, not one line each.

use std::sync::Mutex;

use super::clock::now_millis;

/// Up to `per_second` lines a second; the lines past it are counted and
/// summarised in the first line of the next second.
pub struct LogBudget {
    per_second: u32,
    window: Mutex<Window>,
}

struct Window {
    /// Start of the current second (service clock, ms).
    started: u64,
    logged: u32,
    held_back: u64,
}

impl LogBudget {
    /// A budget of `per_second` lines a second.
    pub fn new(per_second: u32) -> LogBudget {
        LogBudget {
            per_second,
            window: Mutex::new(Window {
                started: 0,
                logged: 0,
                held_back: 0,
            }),
        }
    }

    /// Logs `line` at warning level unless this second's budget is spent.
    pub fn log(&self, line: &str) {
        if let Some(held_back) = self.admit() {
            if held_back > 0 {
                tracing::warn!("({held_back} more like the next were not logged)");
            }
            tracing::warn!("{line}");
        }
    }

    /// Logs `line` at info level unless this second's budget is spent.
    pub fn info(&self, line: &str) {
        if let Some(held_back) = self.admit() {
            if held_back > 0 {
                tracing::info!("({held_back} more like the next were not logged)");
            }
            tracing::info!("{line}");
        }
    }

    /// Whether a line may be logged now; if so, how many were held back
    /// since the last one.
    fn admit(&self) -> Option<u64> {
        let now = now_millis();
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_sub(window.started) >= 1000 {
            window.started = now;
            window.logged = 0;
        }
        if window.logged >= self.per_second {
            window.held_back += 1;
            return None;
        }
        window.logged += 1;
        Some(std::mem::take(&mut window.held_back))
    }
}
