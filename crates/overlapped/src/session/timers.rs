//! A service's timer thread: work deferred to a moment (an accept re-armed
//! after a back-off), and the periodic sweeps (idle sessions, the memory
//! budget) that [`super::sweep`] carries out.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Work for the timer thread to run once its moment has come.
pub(crate) type Deferred = Box<dyn FnOnce() + Send>;

/// What the timer thread waits for.
#[derive(Default)]
struct Due {
    /// Work to run once the moment passes (accept back-off).
    deferred: Vec<(Instant, Deferred)>,
    stopped: bool,
}

#[derive(Default)]
pub(super) struct Timers {
    due: Mutex<Due>,
    changed: Condvar,
}

/// The periodic work of the timer thread.
pub(super) struct Sweeps<Stalled, Budget> {
    /// How often to drop stalled sessions, if ever.
    pub(super) sweep_every: Option<Duration>,
    /// Drops sessions stalled past the idle or handshake timeout.
    pub(super) drop_stalled: Stalled,
    /// The memory budget (0: none).
    pub(super) budget: usize,
    /// Sheds sessions past half of the budget; returns what the service
    /// holds afterwards.
    pub(super) hold_to_budget: Budget,
}

/// How often the memory budget is checked while sessions hold less than a
/// quarter of it, and while they hold more.
const BUDGET_CHECK_IDLE: Duration = Duration::from_millis(100);
const BUDGET_CHECK_BUSY: Duration = Duration::from_millis(10);

impl Timers {
    fn due(&self) -> MutexGuard<'_, Due> {
        // Updates are single pushes, drains and flag writes.
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `run` on the timer thread after `delay`.
    pub(super) fn defer(&self, delay: Duration, run: Deferred) {
        self.due().deferred.push((Instant::now() + delay, run));
        self.changed.notify_all();
    }

    /// Ends the timer thread.
    pub(super) fn stop(&self) {
        self.due().stopped = true;
        self.changed.notify_all();
    }

    /// The timer thread: runs deferred work and the sweeps, until stopped.
    ///
    /// Nothing of the program's runs here (hooks go to the workers), but
    /// the thread outlives any panic all the same: without it no idle
    /// session would be dropped and no deferred accept would come back.
    pub(super) fn keep_time(&self, sweeps: Sweeps<impl Fn(), impl Fn(usize) -> usize>) {
        let Sweeps {
            sweep_every,
            drop_stalled,
            budget,
            hold_to_budget,
        } = sweeps;
        let mut next_sweep = sweep_every.map(|every| Instant::now() + every);
        let mut next_budget_check = (budget > 0).then(Instant::now);
        let mut due = self.due();
        while !due.stopped {
            let now = Instant::now();
            let (ready, later): (Vec<_>, Vec<_>) =
                due.deferred.drain(..).partition(|(at, _)| *at <= now);
            due.deferred = later;
            let sweep = next_sweep.is_some_and(|at| at <= now);
            let check_budget = next_budget_check.is_some_and(|at| at <= now);
            if !ready.is_empty() || sweep || check_budget {
                drop(due);
                for (_, run) in ready {
                    let _ = crate::boundary::catch("deferred work", run);
                }
                if sweep {
                    let _ = crate::boundary::catch("the idle sweep", &drop_stalled);
                    next_sweep = sweep_every.map(|every| now + every);
                }
                if check_budget {
                    let held =
                        crate::boundary::catch("the memory budget", || hold_to_budget(budget));
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
                .deferred
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
