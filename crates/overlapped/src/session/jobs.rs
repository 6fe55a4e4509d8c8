//! `JobQueue`: work for one object (a room) run one job at a time, in push
//! order, on one of the service's workers — the course's `JobQueue`, which
//! replaces a lock around a `GameRoom` with a queue of what to do to it.
//!
//! A queue belongs to one worker. A push appends the job and, if the queue
//! was idle, posts the queue to that worker's port once; the worker then
//! runs jobs until the queue is empty (or a batch is done, so that its
//! sessions are served between long runs). No job of a queue ever runs
//! beside another: only its worker runs them, one after another.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::boundary::panic_message;

/// What a queue needs of its service: a way to its worker, and the
/// worker's counters.
pub(crate) trait JobHost: Send + Sync {
    /// Hands `queue` to the worker at `worker` to run its jobs; `false`
    /// once that worker's port is closed.
    fn post_jobs(&self, worker: usize, queue: Arc<JobQueue>) -> bool;

    /// Counts a job run on this worker, and whether it panicked.
    fn job_ran(&self, panicked: bool);
}

/// A job: the closure pushed, with what it needs to reach its room.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// Jobs run per visit to the worker before the queue goes to the back of
/// the worker's line (its sessions' completions are handled in between).
const JOBS_PER_VISIT: usize = 256;

#[derive(Default)]
struct Pending {
    jobs: VecDeque<Job>,
    /// The queue is posted to its worker, or being run there: a push only
    /// appends.
    scheduled: bool,
    closed: bool,
}

/// Jobs that run one at a time, in push order, on one worker.
pub(crate) struct JobQueue {
    worker: usize,
    service: Weak<dyn JobHost>,
    pending: Mutex<Pending>,
    /// What a panicking job is logged as part of ("room 3").
    name: String,
}

impl JobQueue {
    pub(crate) fn new(service: Weak<dyn JobHost>, worker: usize, name: String) -> JobQueue {
        JobQueue {
            worker,
            service,
            pending: Mutex::new(Pending::default()),
            name,
        }
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        // Pushes and pops are single operations a panic cannot leave half
        // done (jobs run outside the lock).
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The worker the jobs run on.
    pub(crate) fn worker(&self) -> usize {
        self.worker
    }

    /// Whether its service still runs.
    pub(crate) fn has_service(&self) -> bool {
        self.service.strong_count() > 0
    }

    /// Appends `job`; `false` (and the job dropped) once the queue is
    /// closed or its service stopped.
    pub(crate) fn push(self: &Arc<Self>, job: Job) -> bool {
        let mut pending = self.pending();
        if pending.closed {
            return false;
        }
        pending.jobs.push_back(job);
        if std::mem::replace(&mut pending.scheduled, true) {
            return true;
        }
        drop(pending);
        if self.post() {
            return true;
        }
        self.close();
        false
    }

    /// Posts the queue to its worker.
    fn post(self: &Arc<Self>) -> bool {
        match self.service.upgrade() {
            Some(service) => service.post_jobs(self.worker, self.clone()),
            None => false,
        }
    }

    /// Refuses later pushes and drops the jobs not run yet.
    pub(crate) fn close(&self) {
        let dropped = {
            let mut pending = self.pending();
            pending.closed = true;
            std::mem::take(&mut pending.jobs)
        };
        // Dropped outside the lock: a job may own a handle of this queue.
        drop(dropped);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.pending().closed
    }

    /// On the worker: runs the jobs pushed so far, up to a batch, each
    /// guarded (a panicking job is logged and counted; the next runs).
    pub(crate) fn run(self: &Arc<Self>) {
        let Some(service) = self.service.upgrade() else {
            return self.close();
        };
        for _ in 0..JOBS_PER_VISIT {
            let job = {
                let mut pending = self.pending();
                match pending.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        pending.scheduled = false;
                        return;
                    }
                }
            };
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            if let Err(panic) = &outcome {
                let what = panic_message(panic.as_ref());
                tracing::error!("a job of {} panicked: {what}", self.name);
            }
            service.job_ran(outcome.is_err());
        }
        // More are waiting: back of the worker's line, still scheduled.
        if !self.post() {
            self.close();
        }
    }
}
