//! A service's timer thread: accepts re-armed after a back-off, and the
//! sweep that disconnects sessions stalled past the idle timeout.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::clock::now_millis;
use super::core::ServiceCore;
use super::listener::Listener;

/// What the timer thread waits for.
#[derive(Default)]
struct Due {
    /// Accepts to post again once the moment passes (accept back-off).
    deferred_accepts: Vec<(Instant, Arc<Listener>)>,
    stopped: bool,
}

#[derive(Default)]
pub(super) struct Timers {
    due: Mutex<Due>,
    changed: Condvar,
}

impl Timers {
    fn due(&self) -> MutexGuard<'_, Due> {
        // Updates are single pushes, drains and flag writes.
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Posts an accept of `listener` again after `delay`.
    pub(super) fn defer_accept(&self, listener: Arc<Listener>, delay: Duration) {
        self.due()
            .deferred_accepts
            .push((Instant::now() + delay, listener));
        self.changed.notify_all();
    }

    /// Ends the timer thread.
    pub(super) fn stop(&self) {
        self.due().stopped = true;
        self.changed.notify_all();
    }

    /// The timer thread of `core`: re-arms deferred accepts and disconnects
    /// sessions that stalled past the idle timeout, until stopped.
    ///
    /// Nothing of the program's runs here (hooks go to the workers), but
    /// the thread outlives any panic all the same: without it no idle
    /// session would be dropped and no deferred accept would come back.
    pub(super) fn keep_time(&self, core: &ServiceCore) {
        let config = core.config();
        let sweep_every = [config.idle_timeout, config.handshake_timeout]
            .into_iter()
            .flatten()
            .min()
            .map(|t| (t / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)));
        let mut next_sweep = sweep_every.map(|every| Instant::now() + every);
        let budget = config.max_memory;
        let mut next_budget_check = (budget > 0).then(Instant::now);
        let mut due = self.due();
        while !due.stopped {
            let now = Instant::now();
            let (ready, later): (Vec<_>, Vec<_>) = due
                .deferred_accepts
                .drain(..)
                .partition(|(at, _)| *at <= now);
            due.deferred_accepts = later;
            let sweep = next_sweep.is_some_and(|at| at <= now);
            let check_budget = next_budget_check.is_some_and(|at| at <= now);
            if !ready.is_empty() || sweep || check_budget {
                drop(due);
                for (_, listener) in ready {
                    let _ = crate::boundary::catch("re-arming an accept", || listener.rearm());
                }
                if sweep {
                    let _ =
                        crate::boundary::catch("the idle sweep", || drop_stalled_sessions(core));
                    next_sweep = sweep_every.map(|every| now + every);
                }
                if check_budget {
                    let held = crate::boundary::catch("the memory budget", || {
                        hold_to_budget(core, budget)
                    });
                    // Closer together while a quarter of it is used.
                    let every = match held {
                        Ok(held) if held > budget / 4 => BUDGET_CHECK_BUSY,
                        _ => BUDGET_CHECK_IDLE,
                    };
                    next_budget_check = Some(now + every);
                }
                due = self.due();
                continue;
            }
            let wake_at = due
                .deferred_accepts
                .iter()
                .map(|(at, _)| *at)
                .chain(next_sweep)
                .chain(next_budget_check)
                .min();
            due = match wake_at {
                Some(at) => {
                    let wait = at.saturating_duration_since(now);
                    let waited = self.changed.wait_timeout(due, wait);
                    waited.unwrap_or_else(|p| p.into_inner()).0
                }
                None => self.changed.wait(due).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

/// How often the memory budget is checked while sessions hold less than a
/// quarter of it, and while they hold more.
const BUDGET_CHECK_IDLE: Duration = Duration::from_millis(100);
const BUDGET_CHECK_BUSY: Duration = Duration::from_millis(10);

/// Disconnects the sessions holding the most while the service holds more
/// than half of `budget` for them, down to nine twentieths. The other half
/// is room for what the bytes held cost the allocator and for the server's
/// own memory, so that the process stays within the budget. Broadcasts on
/// their way to a busy worker count too, but no session holds them: a
/// session is shed only for bytes of its own, never one that holds
/// nothing, which would free nothing. Returns what the service holds
/// afterwards.
fn hold_to_budget(core: &ServiceCore, budget: usize) -> usize {
    let mut sessions: Vec<(usize, _)> = core
        .session_snapshot()
        .into_iter()
        .map(|session| (session.held_bytes(), session))
        .collect();
    let in_transit = core.held_in_transit();
    let mut held = sessions.iter().map(|(bytes, _)| bytes).sum::<usize>() + in_transit;
    let limit = budget / 2;
    if held <= limit {
        return held;
    }
    sessions.sort_unstable_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
    let target = limit / 10 * 9;
    for (bytes, session) in sessions {
        // Heaviest first: past the first that holds nothing, none holds any.
        if held <= target || bytes == 0 {
            break;
        }
        session.disconnect(&format!(
            "memory budget: the server holds {held} bytes for its sessions ({in_transit} of \
             them broadcasts on their way to a busy worker), past half of its {budget}; \
             this one held the most ({bytes} bytes)"
        ));
        held = held.saturating_sub(bytes);
    }
    held
}

/// Disconnects the sessions of `core` that completed no packet for longer
/// than its idle timeout, or no first packet within its handshake timeout.
fn drop_stalled_sessions(core: &ServiceCore) {
    let config = core.config();
    let millis = |t: Option<Duration>| t.map(|t| t.as_millis() as u64);
    let (idle, handshake) = (
        millis(config.idle_timeout),
        millis(config.handshake_timeout),
    );
    if idle.is_none() && handshake.is_none() {
        return;
    }
    let now = now_millis();
    for session in core.session_snapshot() {
        if let Some(limit) = handshake {
            if let Some(silent) = session.silent_for(now).filter(|&s| s > limit) {
                session.disconnect(&format!(
                    "handshake timeout: no first packet in {silent} ms (limit {limit} ms)"
                ));
                continue;
            }
        }
        if let Some(limit) = idle {
            let stalled = session.stalled_for(now);
            if stalled > limit {
                session.disconnect(&format!(
                    "idle timeout: no complete packet for {stalled} ms (limit {limit} ms)"
                ));
            }
        }
    }
}
