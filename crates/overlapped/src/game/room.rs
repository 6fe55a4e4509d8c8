//! `Room`: state that jobs change one at a time on a service's worker,
//! with delayed jobs and repeating ticks.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::session::core::ServiceCore;
use crate::session::jobs::JobQueue;
use crate::session::{BlockingError, BlockingLine, Service};

/// State of type `S` owned by a queue of jobs (the course's `JobQueue`
/// under a `GameRoom`): jobs run one at a time, never beside each other, in
/// the order they were pushed, on one of its service's worker threads —
/// no thread per room, no lock for the program to take.
///
/// Any thread, and any session hook, may push a job without blocking (the
/// job waits its turn); a job may push more, which run after it. A job
/// reaches the state as `&mut S`, and the room itself to push more or to
/// arm timers. A job that panics is logged and counted
/// ([`Metrics::job_panics`](crate::session::Metrics::job_panics)); the
/// room goes on with the next (its state as the panic left it).
///
/// A room lives until [`Room::close`] or until its service stops: its
/// ticks keep it alive, so dropping the handles does not end it. Sessions
/// reach a room through a handle kept in their state.
///
/// Each room runs on one worker; rooms are spread over the workers in
/// turn. A group broadcast from a job reaches the members on that worker
/// directly and each other worker in one hand-off ([`super::Group`]).
pub struct Room<S> {
    inner: Arc<RoomInner<S>>,
}

struct RoomInner<S> {
    /// The service, while it runs.
    service: Weak<ServiceCore>,
    jobs: Arc<JobQueue>,
    /// The room's line of blocking work: its calls run in submission order.
    line: BlockingLine,
    state: Mutex<S>,
    ticks_run: AtomicU64,
    ticks_skipped: AtomicU64,
}

impl<S> Clone for Room<S> {
    fn clone(&self) -> Self {
        Room {
            inner: self.inner.clone(),
        }
    }
}

impl<S> fmt::Debug for Room<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Room")
            .field("worker", &self.inner.jobs.worker())
            .field("closed", &self.inner.jobs.is_closed())
            .finish()
    }
}

/// Why a room refused a timer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomError {
    /// The room was closed, or its service stopped.
    Closed,
    /// A tick period of zero.
    ZeroPeriod,
}

impl fmt::Display for RoomError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoomError::Closed => f.write_str("the room is closed"),
            RoomError::ZeroPeriod => f.write_str("a tick period must be longer than zero"),
        }
    }
}

impl std::error::Error for RoomError {}

/// One run of a repeating tick ([`Room::every`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tick {
    /// The slot this tick was scheduled for: the first tick is 1, and
    /// slots skipped for lateness are counted, so the number says where on
    /// the period's grid this tick sits (`start + number × period`).
    pub number: u64,
    /// When the slot was due.
    pub due: Instant,
    /// How late the tick started (after the room's earlier jobs, the
    /// worker's other work, the wake-up).
    pub lateness: Duration,
    /// Slots skipped just before this tick because the tick before it
    /// ended a whole period or more late (0 almost always).
    pub skipped: u64,
}

/// A repeating tick's handle ([`Room::every`]): cancel it, or read how it
/// has run.
#[derive(Clone, Debug)]
pub struct Ticker {
    control: Arc<TickControl>,
}

struct TickControl {
    cancelled: AtomicBool,
    /// Held by a run from its check of `cancelled` to its end, and by a
    /// cancel from another thread: a cancel that returned has seen every
    /// run that passed the check finish, so none starts after it.
    running: Mutex<()>,
    /// The room's queue: which worker its runs are on.
    jobs: Arc<JobQueue>,
    /// The room's service, while it runs.
    service: Weak<ServiceCore>,
    ran: AtomicU64,
    skipped: AtomicU64,
}

impl fmt::Debug for TickControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TickControl")
            .field("cancelled", &self.cancelled)
            .field("ran", &self.ran)
            .field("skipped", &self.skipped)
            .finish_non_exhaustive()
    }
}

impl TickControl {
    fn running(&self) -> MutexGuard<'_, ()> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Ticker {
    /// Stops the tick: no run starts after this call returns. Called on
    /// another thread while a run is under way, it waits for that run to
    /// end; called from a job or tick of the room's worker (the tick itself
    /// included), no run can be under way beside it, and it returns at once.
    pub fn cancel(&self) {
        let control = &self.control;
        let on_its_worker = control
            .service
            .upgrade()
            .is_some_and(|core| core.current_worker() == Some(control.jobs.worker()));
        if on_its_worker {
            control.cancelled.store(true, Ordering::Release);
        } else {
            let _run = control.running();
            control.cancelled.store(true, Ordering::Release);
        }
    }

    /// Ticks run so far.
    pub fn ran(&self) -> u64 {
        self.control.ran.load(Ordering::Relaxed)
    }

    /// Slots skipped so far because a tick ran a whole period late.
    pub fn skipped(&self) -> u64 {
        self.control.skipped.load(Ordering::Relaxed)
    }
}

impl<S: Send + 'static> Room<S> {
    /// A room of `service` holding `state`, on the next worker in turn.
    /// `name` is how the logs name it (a panicking job).
    pub fn new(service: &Service, name: impl Into<String>, state: S) -> Room<S> {
        let core = service.core();
        let worker = core.worker_for_room();
        Room {
            inner: Arc::new(RoomInner {
                service: Arc::downgrade(core),
                jobs: Arc::new(JobQueue::new(
                    Arc::downgrade(core) as Weak<_>,
                    worker,
                    name.into(),
                )),
                line: service.blocking_line(),
                state: Mutex::new(state),
                ticks_run: AtomicU64::new(0),
                ticks_skipped: AtomicU64::new(0),
            }),
        }
    }

    /// Queues `job`; it runs after every job pushed before it. Returns
    /// `false` (and drops the job) once the room is closed or its service
    /// stopped. Never blocks on the room's work.
    ///
    /// The queue has no bound of its own: bound what a client can make you
    /// push (a join and a leave per session, not a job per packet — the
    /// game's moves are a store the tick reads).
    pub fn push(&self, job: impl FnOnce(&mut S, &Room<S>) + Send + 'static) -> bool {
        let room = self.clone();
        self.inner
            .jobs
            .push(Box::new(move || room.run(|state, room| job(state, room))))
    }

    /// Runs `work` on the service's pool of blocking threads — a database
    /// call, a file: what must not stall the room's worker — then `then`
    /// with its value as a job of this room, in the room's order with its
    /// other jobs. The room's blocking calls run one at a time in the order
    /// they were made, so a read sees the room's earlier writes; rooms'
    /// calls run beside each other. `then` gets
    /// [`BlockingError::Panicked`] if `work` panicked; `Err` at once (and
    /// neither runs) when the pool's queue is full or the service is
    /// stopping. If the room closed meanwhile, `then` does not run.
    ///
    /// ```no_run
    /// # use overlapped::game::Room;
    /// # fn f(room: &Room<Vec<String>>) -> Result<(), overlapped::session::BlockingError> {
    /// room.blocking(
    ///     || std::fs::read_to_string("motd.txt"),                   // on a blocking thread
    ///     |lines, _, motd| lines.push(motd.ok().and_then(Result::ok).unwrap_or_default()),
    /// )?;
    /// # Ok(()) }
    /// ```
    pub fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
        then: impl FnOnce(&mut S, &Room<S>, Result<T, BlockingError>) + Send + 'static,
    ) -> Result<(), BlockingError> {
        let room = self.clone();
        self.inner.line.run(work, move |value| {
            room.push(move |state, room| then(state, room, value));
        })
    }

    /// Queues `job` once `delay` has passed (then it waits its turn behind
    /// the jobs already pushed). `Err` once the room is closed.
    pub fn push_after(
        &self,
        delay: Duration,
        job: impl FnOnce(&mut S, &Room<S>) + Send + 'static,
    ) -> Result<(), RoomError> {
        let room = self.clone();
        self.at(Instant::now() + delay, move || {
            room.push(job);
        })
    }

    /// Runs `tick` every `period`, as a job of the room, until the room
    /// closes or the [`Ticker`] is cancelled.
    ///
    /// **Staggering.** The first tick is due one period from now plus a
    /// stagger of less than a period: one of 16 phases of the period, taken
    /// in turn by the service's tickers in the golden-ratio order (the k-th
    /// ticker's phase is the fractional part of k × 0.618… in sixteenths),
    /// so any number of tickers fill the phases evenly. Rooms opened
    /// together — a burst of joins — would otherwise tick together, and the
    /// last of them would wait for the snapshots of all the others on their
    /// worker; spread over every moment of the period, the worker would
    /// wake for each room apart. Sixteen phases keep both small: the rooms
    /// of a phase tick in one wake-up.
    ///
    /// **Lateness and skipping.** Each tick's slot is on a fixed grid
    /// (`start + n × period`), so a late tick does not push later ones
    /// back: the next is armed for the next slot, not a period after this
    /// one ran. The next slot is armed only once this tick has run, so a
    /// stalled room never finds ticks piled up: when a tick ends a whole
    /// period or more late, the slots already past are skipped — counted
    /// in [`Tick::skipped`], [`Ticker::skipped`] and the service's metrics
    /// — and the next tick runs at the next slot still ahead. Ticks never
    /// bunch up to catch up. Every tick's lateness goes into the service's
    /// tick-lateness histogram ([`Metrics`](crate::session::Metrics)).
    pub fn every(
        &self,
        period: Duration,
        tick: impl FnMut(&mut S, &Room<S>, Tick) + Send + 'static,
    ) -> Result<Ticker, RoomError> {
        if period.is_zero() {
            return Err(RoomError::ZeroPeriod);
        }
        let control = Arc::new(TickControl {
            cancelled: AtomicBool::new(false),
            running: Mutex::new(()),
            jobs: self.inner.jobs.clone(),
            service: self.inner.service.clone(),
            ran: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        });
        let service = self.inner.service.upgrade().ok_or(RoomError::Closed)?;
        let ticking = Ticking {
            room: self.clone(),
            tick: Box::new(tick),
            period,
            due: Instant::now() + period + stagger(service.next_ticker(), period),
            number: 1,
            skipped: 0,
            control: control.clone(),
        };
        ticking.arm()?;
        Ok(Ticker { control })
    }

    /// Stops the room: jobs not run yet are dropped, later pushes and
    /// timers refused, ticks end. The state is dropped with the last
    /// handle (and the last job or timer holding one).
    ///
    /// To let the jobs already pushed run first (a player's leave), push
    /// the close as a job instead: `room.push(|_, room| room.close())`.
    pub fn close(&self) {
        self.inner.jobs.close();
    }

    /// Whether the room was closed, or its service stopped.
    pub fn is_closed(&self) -> bool {
        self.inner.jobs.is_closed() || !self.inner.jobs.has_service()
    }

    /// Ticks this room has run, over all its tickers.
    pub fn ticks_run(&self) -> u64 {
        self.inner.ticks_run.load(Ordering::Relaxed)
    }

    /// Tick slots this room skipped for lateness, over all its tickers.
    pub fn ticks_skipped(&self) -> u64 {
        self.inner.ticks_skipped.load(Ordering::Relaxed)
    }

    /// Whether two handles name the same room.
    pub fn same_room(&self, other: &Room<S>) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Runs `f` on the room's worker at `at`.
    fn at(&self, at: Instant, f: impl FnOnce() + Send + 'static) -> Result<(), RoomError> {
        let jobs = &self.inner.jobs;
        let service = self.inner.service.upgrade().ok_or(RoomError::Closed)?;
        if jobs.is_closed() || !service.run_at(jobs.worker(), at, Box::new(f)) {
            return Err(RoomError::Closed);
        }
        Ok(())
    }

    /// Runs a job on the state (on the room's worker, by its queue).
    fn run(&self, job: impl FnOnce(&mut S, &Room<S>)) {
        let mut state = self.state();
        job(&mut state, self);
    }

    fn state(&self) -> MutexGuard<'_, S> {
        // Only the room's worker locks it, one job at a time; a job that
        // panicked leaves the state as it was, which the next job gets.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The moments of a period that tickers start on (see [`Room::every`]).
const STAGGER_PHASES: u32 = 16;

/// The stagger of the `k`-th ticker: the fractional part of k × φ (the
/// golden ratio), a sequence that spreads any number of tickers evenly,
/// rounded down to one of [`STAGGER_PHASES`] phases of the period.
fn stagger(k: u64, period: Duration) -> Duration {
    const PHI_FRACTION: f64 = 0.618_033_988_749_894_9;
    let fraction = (k as f64 * PHI_FRACTION).fract();
    let phase = (fraction * STAGGER_PHASES as f64).floor() / STAGGER_PHASES as f64;
    period.mul_f64(phase)
}

type TickFn<S> = Box<dyn FnMut(&mut S, &Room<S>, Tick) + Send>;

/// A repeating tick between its runs: armed in the room's worker's
/// schedule, it pushes itself as a job when due.
struct Ticking<S> {
    room: Room<S>,
    tick: TickFn<S>,
    period: Duration,
    due: Instant,
    number: u64,
    skipped: u64,
    control: Arc<TickControl>,
}

impl<S: Send + 'static> Ticking<S> {
    fn arm(self) -> Result<(), RoomError> {
        let room = self.room.clone();
        room.at(self.due, move || {
            let room = self.room.clone();
            room.inner.jobs.push(Box::new(move || self.fire()));
        })
    }

    /// Runs the tick (as a job of the room), then arms the next slot.
    fn fire(mut self) {
        let control = self.control.clone();
        let _run = control.running();
        if control.cancelled.load(Ordering::Acquire) {
            return;
        }
        let started = Instant::now();
        let tick = Tick {
            number: self.number,
            due: self.due,
            lateness: started.saturating_duration_since(self.due),
            skipped: std::mem::take(&mut self.skipped),
        };
        if let Some(service) = self.room.inner.service.upgrade() {
            service.counters_here().tick_ran(tick.lateness);
        }
        self.control.ran.fetch_add(1, Ordering::Relaxed);
        self.room.inner.ticks_run.fetch_add(1, Ordering::Relaxed);
        let room = self.room.clone();
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (self.tick)(&mut room.state(), &room, tick);
        }));
        self.next_slot(Instant::now());
        let _ = self.arm();
        // A panicking tick is logged and counted as any job's is (by the
        // queue); the next slot is armed all the same.
        if let Err(panic) = ran {
            std::panic::resume_unwind(panic);
        }
    }

    /// Moves to the next slot still ahead of `now`, counting those passed.
    fn next_slot(&mut self, now: Instant) {
        self.due += self.period;
        self.number += 1;
        if self.due > now {
            return;
        }
        let behind = now.duration_since(self.due).as_nanos() / self.period.as_nanos();
        let passed = u64::try_from(behind).unwrap_or(u64::MAX).saturating_add(1);
        self.due += self
            .period
            .saturating_mul(u32::try_from(passed).unwrap_or(u32::MAX));
        self.number = self.number.saturating_add(passed);
        self.skipped = passed;
        self.control.skipped.fetch_add(passed, Ordering::Relaxed);
        if let Some(service) = self.room.inner.service.upgrade() {
            service.counters_here().ticks_skipped(passed);
        }
        self.room
            .inner
            .ticks_skipped
            .fetch_add(passed, Ordering::Relaxed);
    }
}
