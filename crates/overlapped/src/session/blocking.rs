//! Blocking work in the IOCP manner: a bounded pool of threads runs the
//! closures the workers must not (a database call, a file), and each hands
//! its result back to whoever asked — a room's job, or any closure.
//!
//! Work is submitted on a [`BlockingLine`]: the work of one line runs one
//! at a time, in the order it was submitted (a room's reads see its own
//! writes), and lines run beside each other on up to
//! [`ServiceConfig::blocking_threads`](super::ServiceConfig::blocking_threads)
//! threads, started as work first needs them. At most
//! [`ServiceConfig::blocking_queue`](super::ServiceConfig::blocking_queue)
//! calls wait at once; past that a submission is refused at once with
//! [`BlockingError::Full`], never queued without bound.
//!
//! Every piece of the pool's state — the lines' queues, which lines are
//! ready or running, the counts — lives under one lock, so "one at a time
//! per line, in order, none lost" is a property of each critical section,
//! not of an interleaving.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crate::boundary::panic_message;

/// Upper bounds, in microseconds, of the buckets of the blocking calls'
/// wait and run histograms (then one bucket for the slower).
pub const BLOCKING_BOUNDS_US: [u64; 10] = [
    100, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000, 5_000_000, 30_000_000,
];
const BUCKETS: usize = BLOCKING_BOUNDS_US.len() + 1;

/// Why blocking work was not run, or did not return a value.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockingError {
    /// The pool's queue holds its capacity of waiting calls: the call was
    /// refused, not queued.
    Full {
        /// The queue's capacity.
        capacity: usize,
    },
    /// The service is shutting down or stopped.
    Stopped,
    /// The work panicked (the panic's message); the pool's thread went on.
    Panicked(String),
}

impl fmt::Display for BlockingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockingError::Full { capacity } => {
                write!(f, "the blocking pool is full ({capacity} calls waiting)")
            }
            BlockingError::Stopped => f.write_str("the service is stopping"),
            BlockingError::Panicked(what) => write!(f, "the blocking call panicked: {what}"),
        }
    }
}

impl std::error::Error for BlockingError {}

type Task = Box<dyn FnOnce() + Send>;

/// The pool of a service.
pub(crate) struct BlockingPool {
    threads: usize,
    capacity: usize,
    state: Mutex<PoolState>,
    /// Signalled when a line becomes ready, and when work ends (for
    /// [`BlockingPool::finish`]).
    changed: Condvar,
    next_line: AtomicU64,
    stats: Stats,
}

struct PoolState {
    /// The calls waiting on each line, oldest first, with when they came.
    lines: HashMap<u64, VecDeque<(Instant, Task)>>,
    /// Lines with a call waiting and none running, in the order they
    /// became so.
    ready: VecDeque<u64>,
    /// Lines with a call running.
    busy: HashSet<u64>,
    waiting: usize,
    running: usize,
    spawned: usize,
    accepting: bool,
    stopped: bool,
}

/// What the metrics read: counts and the two histograms.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) calls: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) panics: AtomicU64,
    pub(crate) wait: Histogram,
    pub(crate) run: Histogram,
}

/// Microsecond buckets over [`BLOCKING_BOUNDS_US`], and their sum.
#[derive(Default)]
pub(crate) struct Histogram {
    pub(crate) buckets: [AtomicU64; BUCKETS],
    pub(crate) sum_us: AtomicU64,
}

impl Histogram {
    fn record(&self, took: Duration) {
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = BLOCKING_BOUNDS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The buckets now, and the sum.
    pub(crate) fn read(&self) -> (Vec<u64>, u64) {
        let buckets = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        (buckets, self.sum_us.load(Ordering::Relaxed))
    }
}

impl BlockingPool {
    pub(crate) fn new(threads: usize, capacity: usize) -> BlockingPool {
        BlockingPool {
            threads: threads.max(1),
            capacity,
            state: Mutex::new(PoolState {
                lines: HashMap::new(),
                ready: VecDeque::new(),
                busy: HashSet::new(),
                waiting: 0,
                running: 0,
                spawned: 0,
                accepting: true,
                stopped: false,
            }),
            changed: Condvar::new(),
            next_line: AtomicU64::new(1),
            stats: Stats::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, PoolState> {
        // Tasks run outside the lock: a panic never leaves it half changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls waiting now.
    pub(crate) fn waiting(&self) -> usize {
        self.state().waiting
    }

    fn new_line(&self) -> u64 {
        self.next_line.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues `task` on line `line`; a thread is started if every one is
    /// busy and the pool may have more.
    fn submit(self: &Arc<Self>, line: u64, task: Task) -> Result<(), BlockingError> {
        let mut state = self.state();
        if !state.accepting {
            return Err(BlockingError::Stopped);
        }
        if state.waiting >= self.capacity {
            drop(state);
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(BlockingError::Full {
                capacity: self.capacity,
            });
        }
        let queue = state.lines.entry(line).or_default();
        let first = queue.is_empty();
        queue.push_back((Instant::now(), task));
        state.waiting += 1;
        if first && !state.busy.contains(&line) {
            state.ready.push_back(line);
        }
        let idle = state.spawned - state.running;
        let start_one = idle < state.ready.len() && state.spawned < self.threads;
        if start_one {
            state.spawned += 1;
        }
        drop(state);
        self.changed.notify_all();
        if start_one {
            let pool = self.clone();
            let spawned = thread::Builder::new()
                .name("service-blocking".into())
                .spawn(move || pool.serve());
            if let Err(e) = spawned {
                tracing::error!("cannot start a blocking thread: {e}");
                self.state().spawned -= 1;
            }
        }
        Ok(())
    }

    /// A pool thread: runs the next call of the next ready line until the
    /// pool stops.
    fn serve(&self) {
        let mut state = self.state();
        loop {
            if state.stopped {
                state.spawned -= 1;
                return;
            }
            let Some(line) = state.ready.pop_front() else {
                state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            let queue = state.lines.get_mut(&line).expect("a ready line has calls");
            let (queued_at, task) = queue.pop_front().expect("a ready line has calls");
            state.waiting -= 1;
            state.running += 1;
            state.busy.insert(line);
            drop(state);
            self.stats.wait.record(queued_at.elapsed());
            // The task catches its own work's panic; this catches the rest.
            let _ = crate::boundary::catch("a blocking call", task);
            state = self.state();
            state.running -= 1;
            state.busy.remove(&line);
            let more = state.lines.get(&line).is_some_and(|q| !q.is_empty());
            if more {
                state.ready.push_back(line);
            } else {
                state.lines.remove(&line);
            }
            self.changed.notify_all();
        }
    }

    /// Takes no more calls and waits until every queued one has run, or
    /// `deadline`; how many were left waiting or running.
    pub(crate) fn finish(&self, deadline: Instant) -> usize {
        let mut state = self.state();
        state.accepting = false;
        loop {
            let left = state.waiting + state.running;
            let now = Instant::now();
            if left == 0 || now >= deadline {
                return left;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Stops the pool: calls not started are dropped (their results never
    /// come), threads leave after the call they run.
    pub(crate) fn stop(&self) {
        let dropped = {
            let mut state = self.state();
            state.accepting = false;
            state.stopped = true;
            state.ready.clear();
            state.waiting = 0;
            std::mem::take(&mut state.lines)
        };
        self.changed.notify_all();
        // Dropped outside the lock: a task's captures may run drops of
        // their own.
        drop(dropped);
    }
}

/// The blocking pool's counters at one moment ([`Metrics::blocking`](super::Metrics::blocking)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockingMetrics {
    /// Calls waiting for a thread now.
    pub waiting: u64,
    /// Calls run (a panicking one included).
    pub calls: u64,
    /// Calls refused because the queue was full.
    pub refused: u64,
    /// Calls whose work panicked.
    pub panics: u64,
    /// How long calls waited for a thread: one count per bucket of
    /// [`BLOCKING_BOUNDS_US`], then the slower.
    pub wait: Vec<u64>,
    /// Their waits, summed, in microseconds.
    pub wait_sum_us: u64,
    /// How long calls ran, in the same buckets.
    pub run: Vec<u64>,
    /// Their run times, summed, in microseconds.
    pub run_sum_us: u64,
}

impl BlockingMetrics {
    pub(crate) fn read(pool: &BlockingPool) -> BlockingMetrics {
        let stats = &pool.stats;
        let (wait, wait_sum_us) = stats.wait.read();
        let (run, run_sum_us) = stats.run.read();
        BlockingMetrics {
            waiting: pool.waiting() as u64,
            calls: stats.calls.load(Ordering::Relaxed),
            refused: stats.refused.load(Ordering::Relaxed),
            panics: stats.panics.load(Ordering::Relaxed),
            wait,
            wait_sum_us,
            run,
            run_sum_us,
        }
    }

    pub(crate) fn write_prometheus(&self, out: &mut String, prefix: &str) {
        use std::fmt::Write;
        let counts = [
            (
                "blocking_waiting",
                "gauge",
                "Blocking calls waiting for a thread.",
                self.waiting,
            ),
            (
                "blocking_calls_total",
                "counter",
                "Blocking calls run.",
                self.calls,
            ),
            (
                "blocking_refused_total",
                "counter",
                "Blocking calls refused: the queue was full.",
                self.refused,
            ),
            (
                "blocking_panics_total",
                "counter",
                "Blocking calls that panicked.",
                self.panics,
            ),
        ];
        for (name, kind, help, value) in counts {
            let _ = writeln!(out, "# HELP {prefix}_{name} {help}");
            let _ = writeln!(out, "# TYPE {prefix}_{name} {kind}");
            let _ = writeln!(out, "{prefix}_{name} {value}");
        }
        let histograms = [
            (
                "wait",
                "How long blocking calls waited for a thread.",
                &self.wait,
                self.wait_sum_us,
            ),
            (
                "run",
                "How long blocking calls ran.",
                &self.run,
                self.run_sum_us,
            ),
        ];
        for (what, help, buckets, sum) in histograms {
            let name = format!("{prefix}_blocking_{what}_seconds");
            super::prometheus::write_histogram(out, &name, help, &BLOCKING_BOUNDS_US, buckets, sum);
        }
    }
}

/// A line of blocking work of a [`Service`](super::Service): what is run
/// on one line runs one at a time, in the order it was submitted, on the
/// service's pool of blocking threads — the IOCP pattern of handing a
/// database call to a thread of its own and posting its result back.
/// There is no Winsock counterpart; on Windows it is a thread pool's
/// work item (`QueueUserWorkItem`).
///
/// Cloning gives another handle to the same line.
#[derive(Clone)]
pub struct BlockingLine {
    pool: Weak<BlockingPool>,
    id: u64,
}

impl fmt::Debug for BlockingLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingLine")
            .field("id", &self.id)
            .finish()
    }
}

impl BlockingLine {
    pub(crate) fn new(pool: &Arc<BlockingPool>) -> BlockingLine {
        BlockingLine {
            pool: Arc::downgrade(pool),
            id: pool.new_line(),
        }
    }

    /// Runs `work` on a blocking thread, after the work submitted on this
    /// line before it, then `then` with its value — or with
    /// [`BlockingError::Panicked`] if it panicked — on the same thread.
    /// `Err` at once, and neither runs, when the pool's queue is full or
    /// the service is stopping.
    ///
    /// `then` usually hands the value to whoever asked (a room's job:
    /// [`Room::blocking`](crate::game::Room::blocking) does just that).
    pub fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
        then: impl FnOnce(Result<T, BlockingError>) + Send + 'static,
    ) -> Result<(), BlockingError> {
        let pool = self.pool.upgrade().ok_or(BlockingError::Stopped)?;
        let stats = pool.clone();
        let task = Box::new(move || {
            let started = Instant::now();
            let value = panic::catch_unwind(AssertUnwindSafe(work));
            // Counted before the value is handed on: whoever it reaches
            // sees the call in the metrics.
            stats.stats.run.record(started.elapsed());
            stats.stats.calls.fetch_add(1, Ordering::Relaxed);
            let value = value.map_err(|panic| {
                stats.stats.panics.fetch_add(1, Ordering::Relaxed);
                let what = panic_message(panic.as_ref()).to_owned();
                tracing::error!("a blocking call panicked: {what}");
                BlockingError::Panicked(what)
            });
            let _ = crate::boundary::catch("a blocking call's result", move || then(value));
        });
        pool.submit(self.id, task)
    }
}
