//! A ring: where a socket's operations go and where their completions come
//! back, whichever backend carries them out.
//!
//! - The process-wide ring ([`Ring::global`]) has a completion thread that
//!   plays the part of the Windows kernel in the event and routine models:
//!   it records each outcome and signals the operation's event or queues
//!   its routine.
//! - A completion port owns a ring of its own ([`Ring::new`]) and its worker
//!   threads reap it themselves ([`Ring::reap`]), so a completion reaches the
//!   program with no hand-off between threads. Operations started inside
//!   [`Ring::batch`] are handed to the kernel together, in one system call.
//!
//! A thread with nothing to reap sleeps, so an idle program uses no CPU. On
//! io_uring it sleeps in the ring itself (`io_uring_enter` waiting for a
//! completion; the owner's wake-up descriptor is watched by a multishot poll
//! in the same ring), which costs one system call per wake-up. With
//! `OVERLAPPED_WAIT=poll`, on kernels before 5.13, and on the epoll backend,
//! it sleeps in `poll` on an eventfd that is signaled whenever completions
//! are ready (by the kernel itself for io_uring, through
//! `IORING_REGISTER_EVENTFD`), on the backend's own descriptor if it has one
//! (the epoll instance), and on the owner's wake-up descriptor. valgrind
//! cannot follow a thread blocked in `io_uring_enter` (the other threads stop
//! running), so the memcheck runs use `OVERLAPPED_WAIT=poll`.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use super::backend::{self, Backend};
use super::buf_ring::{BufRing, POOL_BUFFERS};
use super::epoll::Epoll;
use super::multicast::Multicast;
use super::op::{Claim, Op, Route};
use super::socket::Forget;
use super::sys;
use super::uring::Uring;

/// The environment variable that makes threads with nothing to reap sleep
/// in `poll` instead of in the ring: `poll`, or `ring` (the default).
const WAIT_VAR: &str = "OVERLAPPED_WAIT";

/// Whether reapers should sleep in the ring (see the module docs).
fn sleep_in_ring() -> bool {
    static IN_RING: OnceLock<bool> = OnceLock::new();
    *IN_RING.get_or_init(|| match std::env::var(WAIT_VAR).as_deref() {
        Ok("poll") => false,
        Ok("ring") | Ok("") | Err(_) => true,
        Ok(other) => {
            tracing::warn!(
                "{WAIT_VAR}={other:?} is neither `ring` nor `poll`; sleeping in the ring"
            );
            true
        }
    })
}

/// How often a retired ring's reaper checks whether it is still needed.
const RETIRED_POLL: Duration = Duration::from_secs(1);

thread_local! {
    /// The ring whose submissions this thread is batching, if any.
    static BATCHING: Cell<*const Ring> = const { Cell::new(std::ptr::null()) };
}

/// The backend that carries a ring's operations out.
// One per ring, inside its `Arc`: boxing the larger variant would only add a
// pointer to follow on every submission.
#[allow(clippy::large_enum_variant)]
enum Engine {
    Uring(Uring),
    Epoll(Epoll),
}

/// Where a thread with nothing to reap sleeps.
enum Sleep {
    /// In `io_uring_enter` (see `Uring::sleep`); io_uring only.
    InRing,
    /// In `poll` on this eventfd, signaled whenever completions are ready
    /// and by [`Ring::wake`].
    Poll(OwnedFd),
}

pub(crate) struct Ring {
    engine: Engine,
    sleep: Sleep,
    /// Operations handed to the backend whose completion was not reaped yet.
    in_flight: AtomicUsize,
    /// Its port was closed: nothing new may start on it.
    retired: AtomicBool,
    /// The buffer pool of multishot receives, made on first use.
    pool: OnceLock<Arc<BufRing>>,
}

/// The process-wide ring, or why it could not be made.
static GLOBAL: OnceLock<Result<Arc<Ring>, (io::ErrorKind, String)>> = OnceLock::new();

impl Ring {
    /// The process-wide ring, created with its completion thread on first use.
    pub(crate) fn global() -> io::Result<&'static Arc<Ring>> {
        let ring = GLOBAL.get_or_init(|| {
            let describe = |e: io::Error| (e.kind(), e.to_string());
            let ring = Ring::new(false).map_err(describe)?;
            let reaper = ring.clone();
            thread::Builder::new()
                .name("overlapped-completions".into())
                .spawn(move || reaper.reap_forever())
                .map_err(describe)?;
            Ok(ring)
        });
        ring.as_ref()
            .map_err(|(kind, message)| io::Error::new(*kind, message.clone()))
    }

    /// A ring without a completion thread: its owner reaps it.
    ///
    /// `cooperative` io_uring rings (`IORING_SETUP_COOP_TASKRUN`) finish
    /// requests the next time the submitting thread enters the kernel
    /// instead of interrupting it; a sleeping thread is still woken. That
    /// suits a port's workers, which enter the kernel for every batch, but
    /// not the event model, whose threads may compute for a long time
    /// between system calls while their events must be signaled.
    pub(crate) fn new(cooperative: bool) -> io::Result<Arc<Ring>> {
        Ring::build(cooperative, false)
    }

    /// A ring that only one thread reaps: the first that does. On io_uring
    /// (Linux 6.1 and later, threads sleeping in the ring) that thread is
    /// the only one that enters the kernel for it (`SINGLE_ISSUER`), and the
    /// kernel finishes its requests when that thread asks, not by
    /// interrupting it (`DEFER_TASKRUN`); other threads still start
    /// operations on it, handing them over. Elsewhere it is an ordinary ring
    /// reaped by one thread.
    ///
    /// The reaping thread must stay while the ring is used: once the ring
    /// is retired it calls [`Ring::reap_while_used`].
    pub(crate) fn confined() -> io::Result<Arc<Ring>> {
        Ring::build(false, true)
    }

    fn build(cooperative: bool, confined: bool) -> io::Result<Arc<Ring>> {
        let engine = match backend::chosen()? {
            Backend::IoUring => Engine::Uring(Uring::new(cooperative, sleep_in_ring(), confined)?),
            Backend::Epoll => Engine::Epoll(Epoll::new()?),
        };
        let sleep = match &engine {
            Engine::Uring(uring) if uring.sleeps_in_ring() => Sleep::InRing,
            Engine::Uring(uring) => {
                let posted = sys::eventfd()?;
                uring.signal_completions_to(&posted)?;
                Sleep::Poll(posted)
            }
            Engine::Epoll(_) => Sleep::Poll(sys::eventfd()?),
        };
        Ok(Arc::new(Ring {
            engine,
            sleep,
            in_flight: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            pool: OnceLock::new(),
        }))
    }

    /// The buffer pool, if one was made.
    pub(crate) fn pool(&self) -> Option<&Arc<BufRing>> {
        self.pool.get()
    }

    /// Makes the buffer pool (and registers it with io_uring) unless it
    /// already exists, with the most buffers a pool has.
    pub(crate) fn ensure_pool(&self) -> io::Result<&Arc<BufRing>> {
        self.ensure_pool_of(POOL_BUFFERS)
    }

    /// Makes the buffer pool with about `buffers` buffers (see
    /// `BufRing::register`) unless it already exists, whatever its size.
    pub(crate) fn ensure_pool_of(&self, buffers: u16) -> io::Result<&Arc<BufRing>> {
        if let Some(pool) = self.pool.get() {
            return Ok(pool);
        }
        let pool = match &self.engine {
            Engine::Uring(uring) => return uring.register_pool(&self.pool, buffers),
            Engine::Epoll(_) => Arc::new(BufRing::in_memory(buffers)?),
        };
        Ok(self.pool.get_or_init(|| pool))
    }

    /// Whether the ring is confined to this thread (it claimed it).
    pub(crate) fn is_confined_to_this_thread(&self) -> bool {
        matches!(&self.engine, Engine::Uring(uring) if uring.is_issuer())
    }

    /// Whether this thread may reap the ring: any thread, unless a confined
    /// ring was claimed by another.
    pub(crate) fn may_reap(&self) -> bool {
        match &self.engine {
            Engine::Uring(uring) => uring.may_reap(),
            Engine::Epoll(_) => true,
        }
    }

    /// Has a thread sleeping in the ring wait up to `wait` for more
    /// completions once one came (see `Uring::set_batch_wait`); `false`
    /// where it cannot (epoll, a kernel before 6.12, reapers in `poll`).
    pub(crate) fn set_batch_wait(&self, wait: Duration) -> bool {
        match (&self.engine, &self.sleep) {
            (Engine::Uring(uring), Sleep::InRing) => uring.set_batch_wait(wait),
            _ => wait.is_zero(),
        }
    }

    /// Whether the ring's port was closed.
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Runs `f` with this thread's submissions to this ring held back, then
    /// hands them all to the kernel at once.
    /// A panic inside `f` ends the batch all the same (what `f` started
    /// goes to the kernel), and the panic goes on.
    pub(crate) fn batch<R>(&self, f: impl FnOnce() -> R) -> R {
        /// Ends the batch when `f` returns or unwinds.
        struct Batch<'a> {
            ring: &'a Ring,
            outer: *const Ring,
        }
        impl Drop for Batch<'_> {
            fn drop(&mut self) {
                BATCHING.with(|b| b.set(self.outer));
                if let Err(e) = self.ring.flush() {
                    tracing::error!("submission failed: {e}");
                }
            }
        }
        let outer = BATCHING.with(|b| b.replace(self as *const Ring));
        let _batch = Batch { ring: self, outer };
        f()
    }

    /// Whether this thread is batching submissions to this ring.
    pub(crate) fn is_batching(&self) -> bool {
        BATCHING.with(|b| std::ptr::eq(b.get(), self))
    }

    /// Wakes a thread sleeping in [`Ring::reap`].
    pub(crate) fn wake(&self) {
        let woken = match (&self.sleep, &self.engine) {
            (Sleep::Poll(posted), _) => sys::eventfd_signal(posted.as_raw_fd()),
            (Sleep::InRing, Engine::Uring(uring)) => uring.wake_sleeper(),
            // Never made: an epoll ring's reapers sleep in `poll`.
            (Sleep::InRing, Engine::Epoll(_)) => Ok(()),
        };
        if let Err(e) = woken {
            tracing::error!("cannot wake a reaper: {e}");
        }
    }

    /// Hands held-back submissions to the kernel.
    pub(crate) fn flush(&self) -> io::Result<()> {
        match &self.engine {
            Engine::Uring(uring) => uring.flush(),
            Engine::Epoll(_) => Ok(()),
        }
    }

    /// Hands `op`, whose memory `claim` holds, to the backend, which keeps
    /// a reference to it until its completion has been reaped. On failure
    /// the op was not submitted, and the claim comes back.
    pub(crate) fn submit<'a>(
        &self,
        op: &'a Arc<Op>,
        claim: Claim<'a>,
    ) -> Result<(), (io::Error, Claim<'a>)> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let submitted = match &self.engine {
            Engine::Uring(uring) => uring.submit(op, claim, self.is_batching()),
            Engine::Epoll(epoll) => epoll.submit(&|| self.wake(), op, claim),
        };
        if submitted.is_err() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        submitted
    }

    /// Hands a multicast's sends to the kernel (see [`Multicast`]): only on
    /// an io_uring confined to this thread, where they wait for the batch's
    /// flush, or are flushed now outside a batch. `Err` when this ring
    /// cannot take it; nothing was sent then.
    pub(crate) fn multicast(&self, record: &Arc<Multicast>) -> io::Result<()> {
        let Engine::Uring(uring) = &self.engine else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the epoll backend sends to each socket on its own",
            ));
        };
        uring.submit_multicast(record, &self.in_flight)?;
        if !self.is_batching() {
            if let Err(e) = self.flush() {
                // The entries are written: the next enter takes them.
                tracing::warn!("a multicast waits in the ring for the next enter: {e}");
            }
        }
        Ok(())
    }

    /// Fills the submission queue with no-ops the kernel is not told of,
    /// so that the next entry cannot be written without an enter.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn fill_submission_queue_for_test(&self) {
        if let Engine::Uring(uring) = &self.engine {
            uring.fill_submission_queue_for_test();
        }
    }

    /// Whether the ring is an io_uring (not the epoll backend).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn is_uring(&self) -> bool {
        matches!(self.engine, Engine::Uring(_))
    }

    /// Forgets a socket whose descriptor is about to close.
    pub(crate) fn forget(&self, fd: RawFd) {
        if let Engine::Epoll(epoll) = &self.engine {
            epoll.forget(fd);
        }
    }

    /// Completes whatever is ready; if nothing, sleeps until something is,
    /// [`Ring::wake`] is called, `also` becomes readable (the owner's own
    /// wake-up), or `timeout` passes. Returns how many operations completed
    /// or delivered data.
    pub(crate) fn reap(
        self: &Arc<Self>,
        timeout: Option<Duration>,
        also: Option<RawFd>,
    ) -> io::Result<usize> {
        if let Engine::Uring(uring) = &self.engine {
            // The first reaper of a confined ring becomes its issuer.
            uring.claim()?;
        }
        self.flush()?;
        let reaped = self.drain();
        if reaped > 0 || timeout == Some(Duration::ZERO) {
            // Under load there is nearly always something to reap: no sleep,
            // and no eventfd to clear.
            return Ok(reaped);
        }
        let fd = match (&self.sleep, &self.engine) {
            (Sleep::Poll(posted), _) => posted.as_raw_fd(),
            (Sleep::InRing, engine) => {
                // Always io_uring: an epoll ring's reapers sleep in `poll`.
                if let Engine::Uring(uring) = engine {
                    uring.sleep(timeout, also)?;
                }
                return Ok(self.drain());
            }
        };
        // About to sleep: clear, then look once more. Whatever is posted
        // after the clear signals the eventfd again, so no completion is
        // slept through.
        sys::eventfd_clear(fd)?;
        let reaped = self.drain();
        if reaped > 0 {
            return Ok(reaped);
        }
        let readiness = match &self.engine {
            Engine::Uring(_) => -1,
            Engine::Epoll(epoll) => epoll.as_raw_fd(),
        };
        sys::wait_readable([fd, readiness, also.unwrap_or(-1)], timeout)?;
        Ok(self.drain())
    }

    fn drain(self: &Arc<Self>) -> usize {
        match &self.engine {
            Engine::Uring(uring) => uring.drain(self.pool(), &self.in_flight),
            Engine::Epoll(epoll) => epoll.drain(self.pool(), &self.in_flight),
        }
    }

    /// Retires the ring of a closed port: nothing new starts on it, and a
    /// thread reaps what is still in flight (cancellations of its sockets)
    /// until no socket uses the ring any more — a thread of its own, or the
    /// issuer of a confined ring, which alone can.
    pub(crate) fn retire(self: &Arc<Self>) {
        if self.retired.swap(true, Ordering::AcqRel) {
            return;
        }
        self.wake();
        if matches!(&self.engine, Engine::Uring(uring) if uring.has_issuer()) {
            return;
        }
        let ring = self.clone();
        let spawned = thread::Builder::new()
            .name("overlapped-retired-ring".into())
            .spawn(move || ring.reap_while_used());
        if let Err(e) = spawned {
            tracing::error!("cannot start the reaper of a closed port: {e}");
        }
    }

    /// Reaps a retired ring until no socket or operation uses it any more
    /// and nothing is in flight; the caller's reference is the last.
    pub(crate) fn reap_while_used(self: &Arc<Self>) {
        // The sockets and operations that still use the ring hold the other
        // references. A confined ring claimed by another thread is that
        // thread's to reap: the port's worker reached it first.
        while self.may_reap()
            && (Arc::strong_count(self) > 1 || self.in_flight.load(Ordering::Acquire) > 0)
        {
            if let Err(e) = self.reap(Some(RETIRED_POLL), None) {
                tracing::error!("reaping a retired ring failed: {e}");
                thread::sleep(RETIRED_POLL);
            }
        }
    }

    /// The completion thread of the process-wide ring.
    fn reap_forever(self: &Arc<Self>) {
        loop {
            if let Err(e) = self.reap(None, None) {
                tracing::error!("reaping completions failed: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Route for Ring {
    fn submit<'a>(&self, op: &'a Arc<Op>, claim: Claim<'a>) -> Result<(), (io::Error, Claim<'a>)> {
        Ring::submit(self, op, claim)
    }

    fn flush(&self) -> io::Result<()> {
        Ring::flush(self)
    }

    fn is_retired(&self) -> bool {
        Ring::is_retired(self)
    }

    fn is_batching(&self) -> bool {
        Ring::is_batching(self)
    }
}

impl Forget for Ring {
    fn forget(&self, fd: RawFd) {
        Ring::forget(self, fd)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use super::*;

    #[test]
    fn a_panic_inside_a_batch_ends_the_batch() {
        let ring = Ring::new(true).unwrap();
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            ring.batch(|| {
                assert!(ring.is_batching());
                panic!("a handler panicked inside the batch");
            })
        }));
        assert!(panicked.is_err());
        assert!(
            !ring.is_batching(),
            "later starts from this thread would be held back for good"
        );
    }

    #[test]
    fn a_batch_inside_a_batch_of_another_ring_gives_it_back_on_unwind() {
        let (outer, inner) = (Ring::new(true).unwrap(), Ring::new(true).unwrap());
        outer.batch(|| {
            let panicked = catch_unwind(AssertUnwindSafe(|| inner.batch(|| panic!("inner"))));
            assert!(panicked.is_err());
            assert!(outer.is_batching(), "the outer batch goes on");
        });
        assert!(!outer.is_batching());
    }
}
