//! The io_uring backend: one `IoUring` per [`super::ring::Ring`], taking
//! submissions from any thread and posting completions that the ring's
//! reaper drains.
//!
//! A ring may be *confined* to one thread (see [`Confinement`]): then only
//! that thread enters the kernel for it, and others hand their entries over.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring};

use super::buf_ring::BufRing;
use super::multicast::{self, Multicast};
use super::op::{Claim, Op};
use confinement::Confinement;
use entry::entry_for;
use reap::{Reaped, DOORBELL_POLL, WAKE_NOP, WAKE_POLL};

mod confinement;
mod entry;
pub(crate) mod probe;
mod reap;
mod setup;

/// `Uring::wake_poll` when no wake-up poll runs.
const NO_WAKE_POLL: RawFd = -1;

pub(crate) struct Uring {
    ring: IoUring,
    /// Set when only one thread may enter the ring.
    confinement: Option<Confinement>,
    /// Threads with nothing to reap sleep in `io_uring_enter` rather than in
    /// `poll` on the eventfd (see [`Uring::sleep`]).
    sleeps_in_ring: bool,
    /// The descriptor the multishot wake-up poll watches while it runs;
    /// -1 when none runs.
    wake_poll: AtomicI32,
    /// Serializes writers of the submission queue.
    submit_lock: Mutex<()>,
    /// Entries were held back for a flush (set under `submit_lock`), so a
    /// flush with nothing to do — every reap starts with one — takes no lock.
    held_back: AtomicBool,
    /// Serializes readers of the completion queue, and keeps the vector
    /// they copy completions into between reaps.
    reaped: Mutex<Vec<Reaped>>,
    /// How long a sleeper waits for more completions once it could wake
    /// (io_uring's minimum wait, `IORING_FEAT_MIN_TIMEOUT`, Linux 6.12); 0:
    /// it wakes at the first.
    batch_wait_usec: AtomicU32,
    /// The kernel takes a minimum wait.
    min_timeout: bool,
}

/// Completions a sleeper waits for when it batches: what one dispatch
/// handles.
const BATCH_WANT: usize = 64;

impl Uring {
    /// Sets up a ring. A thread with nothing to reap sleeps in the ring
    /// itself if `sleep_in_ring` is asked for and the kernel can bound that
    /// wait with a timeout (`IORING_FEAT_EXT_ARG`, 5.11); otherwise it sleeps
    /// in `poll` on an eventfd given to [`Uring::signal_completions_to`].
    /// See [`Ring::new`](super::ring::Ring::new) for `cooperative`. A `confined` ring (see
    /// [`Confinement`]) is made where the kernel can (6.1) and the thread
    /// sleeps in the ring; otherwise the ring is an ordinary one.
    pub(crate) fn new(cooperative: bool, sleep_in_ring: bool, confined: bool) -> io::Result<Uring> {
        let setup::Built {
            ring,
            sleeps_in_ring,
            confinement,
        } = setup::build(cooperative, sleep_in_ring, confined)?;
        Ok(Uring::with(ring, sleeps_in_ring, confinement))
    }

    fn with(ring: IoUring, sleeps_in_ring: bool, confinement: Option<Confinement>) -> Uring {
        let min_timeout = ring.params().is_feature_min_timeout();
        Uring {
            ring,
            confinement,
            sleeps_in_ring,
            wake_poll: AtomicI32::new(NO_WAKE_POLL),
            submit_lock: Mutex::new(()),
            held_back: AtomicBool::new(false),
            reaped: Mutex::new(Vec::new()),
            batch_wait_usec: AtomicU32::new(0),
            min_timeout,
        }
    }

    /// Has sleepers wait up to `wait` for more completions once one came
    /// (where the kernel takes a minimum wait): fewer wake-ups, for at most
    /// that much lateness. `false` where the kernel cannot.
    pub(crate) fn set_batch_wait(&self, wait: Duration) -> bool {
        let usec = u32::try_from(wait.as_micros()).unwrap_or(u32::MAX);
        self.batch_wait_usec.store(usec, Ordering::Relaxed);
        self.min_timeout || usec == 0
    }

    /// Whether the ring is confined to this thread.
    pub(crate) fn is_issuer(&self) -> bool {
        self.confinement.as_ref().is_some_and(|c| c.on_issuer())
    }

    /// Whether this thread may reap the ring: any thread, unless it is
    /// confined to another.
    pub(crate) fn may_reap(&self) -> bool {
        !self
            .confinement
            .as_ref()
            .is_some_and(|c| c.claimed_elsewhere())
    }

    /// Whether a thread confined this ring (and so must stay to reap it).
    pub(crate) fn has_issuer(&self) -> bool {
        self.confinement
            .as_ref()
            .is_some_and(|c| c.reaped.is_claimed())
    }

    /// Makes this thread the issuer of a confined ring that has none yet:
    /// enables the ring and starts watching the doorbell. Nothing to do on
    /// an ordinary ring, or for the issuer.
    pub(crate) fn claim(&self) -> io::Result<()> {
        let Some(confinement) = &self.confinement else {
            return Ok(());
        };
        if confinement.on_issuer() {
            return Ok(());
        }
        if !confinement.reaped.claim() {
            // Another thread claimed it first.
            return Err(confined_elsewhere());
        }
        self.ring.submitter().register_enable_rings()?;
        // What other threads handed over meanwhile goes out with the next flush.
        self.held_back.store(true, Ordering::Release);
        Ok(())
    }

    /// Has the kernel signal `eventfd` whenever it posts completions
    /// (`IORING_REGISTER_EVENTFD`), for threads that sleep in `poll`.
    pub(crate) fn signal_completions_to(&self, eventfd: &OwnedFd) -> io::Result<()> {
        self.ring.submitter().register_eventfd(eventfd.as_raw_fd())
    }

    /// Registers a pool of `buffers` buffers into `slot` unless one already is.
    /// A confined ring takes registrations only while it is disabled or
    /// from its issuer.
    pub(crate) fn register_pool<'a>(
        &self,
        slot: &'a OnceLock<Arc<BufRing>>,
        buffers: u16,
    ) -> io::Result<&'a Arc<BufRing>> {
        if !self.may_reap() {
            return slot.get().ok_or_else(confined_elsewhere);
        }
        let _guard = self.submit_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = slot.get() {
            return Ok(pool);
        }
        let pool = Arc::new(BufRing::register(&self.ring, buffers)?);
        Ok(slot.get_or_init(|| pool))
    }

    /// Hands held-back submissions to the kernel. On a confined ring, the
    /// issuer also takes what other threads handed over, and another thread
    /// rings the doorbell for what it handed over.
    pub(crate) fn flush(&self) -> io::Result<()> {
        if let Some(confinement) = &self.confinement {
            return self.flush_confined(confinement);
        }
        // Entries held back after this load are flushed by the batch that
        // held them back, which flushes as it ends.
        if !self.held_back.load(Ordering::Acquire) {
            return Ok(());
        }
        let _guard = self.submit_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.held_back.store(false, Ordering::Relaxed);
        // SAFETY: `submit_lock` makes this thread the only user of the
        // submission queue.
        if unsafe { self.ring.submission_shared() }.is_empty() {
            return Ok(());
        }
        self.enter_submit()
    }

    /// Hands `op` to the kernel, now or (`batching`) with the next flush. The
    /// ring keeps one reference to it until its completion arrives. An
    /// error means the entry was not written, and the op is the caller's
    /// again; once written, the entry reaches the kernel with the next
    /// enter even if this one failed, so the op stays the ring's.
    pub(crate) fn submit<'a>(
        &self,
        op: &'a Arc<Op>,
        mut claim: Claim<'a>,
        batching: bool,
    ) -> Result<(), (io::Error, Claim<'a>)> {
        let entry = match claim.with_memory(|parts| entry_for(op, parts)) {
            Ok(entry) => entry,
            Err(e) => return Err((e, claim)),
        };
        let user_data = Arc::into_raw(op.clone()) as u64;
        // The kernel's from here: it may complete the request as soon as
        // the entry is written.
        claim.submit();
        match self.push(entry.user_data(user_data), batching) {
            Pushed::Entered => Ok(()),
            Pushed::Written(e) => {
                tracing::warn!("an operation waits in the ring for the next enter: {e}");
                Ok(())
            }
            Pushed::Refused(e) => {
                // SAFETY: the entry was not written, so the kernel will never
                // complete it; this takes back the reference made above.
                drop(unsafe { Arc::from_raw(user_data as *const Op) });
                // SAFETY: as above, the kernel never saw the request.
                let claim = unsafe { op.abandon() };
                Err((e, claim.expect("a refused submission is still submitted")))
            }
        }
    }

    /// Hands every member of `record` to the kernel, held back for the
    /// next flush; only the issuer of a confined ring may. The ring takes a
    /// reference to the record, which the last member's completion gives
    /// back; a member whose entry cannot be written ends at once with the
    /// error. `in_flight` counts one request per member.
    pub(crate) fn submit_multicast(
        &self,
        record: &Arc<Multicast>,
        in_flight: &AtomicUsize,
    ) -> io::Result<()> {
        if !self.is_issuer() || record.len() == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a multicast goes to a confined ring, from its issuer",
            ));
        }
        let stream_send = libc::MSG_NOSIGNAL | libc::MSG_WAITALL;
        let raw = Arc::into_raw(record.clone());
        for index in 0..record.len() {
            let (fd, ptr, len, user_data) = record.send_of(index);
            let entry = opcode::Send::new(types::Fd(fd), ptr, len)
                .flags(stream_send)
                .build()
                .user_data(user_data);
            in_flight.fetch_add(1, Ordering::AcqRel);
            // SAFETY: this thread is the issuer, the queue's only user; the
            // entry points into the record's buffer, which the ring's
            // reference (`raw`) keeps until the member's completion.
            if let Err(e) = unsafe { self.push_entry(&entry) } {
                in_flight.fetch_sub(1, Ordering::AcqRel);
                // SAFETY: the entry was not written, so this member never
                // completes; the ring's reference is still held.
                unsafe { multicast::refused(&*raw, index, &e) };
            }
        }
        self.held_back.store(true, Ordering::Release);
        Ok(())
    }

    fn flush_confined(&self, confinement: &Confinement) -> io::Result<()> {
        if !confinement.on_issuer() {
            if confinement.handed_over.is_pending() {
                return confinement.ring_doorbell();
            }
            return Ok(());
        }
        let earlier = confinement.handed_over.take(|entry| {
            // SAFETY: on a confined ring only the issuer, this thread,
            // writes the submission queue.
            unsafe { self.push_entry(entry) }
        });
        if earlier? {
            self.held_back.store(true, Ordering::Relaxed);
        }
        if !self.held_back.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        // SAFETY: this thread, the issuer, is the queue's only user.
        if unsafe { self.ring.submission_shared() }.is_empty() {
            // A sleep handed the entries over already.
            return Ok(());
        }
        self.enter_submit()
    }

    /// Writes `entry` into the submission queue and, unless `batching`,
    /// hands the queue to the kernel; what became of it.
    fn push(&self, entry: squeue::Entry, batching: bool) -> Pushed {
        let _guard = match &self.confinement {
            Some(confinement) if !confinement.on_issuer() => {
                return match confinement.hand_over(entry, batching) {
                    Ok(()) => Pushed::Entered,
                    Err(e) => Pushed::Written(e),
                };
            }
            Some(confinement) => {
                // The issuer is the only writer of the queue: no lock. What
                // other threads handed over goes first, so that the queue
                // keeps the order the entries were made in.
                // SAFETY: this thread is the issuer, the queue's only user.
                let earlier = confinement
                    .handed_over
                    .take(|e| unsafe { self.push_entry(e) });
                if let Err(e) = earlier {
                    return Pushed::Refused(e);
                }
                None
            }
            None => Some(self.submit_lock.lock().unwrap_or_else(|p| p.into_inner())),
        };
        // SAFETY: this thread is the only user of the submission queue: it
        // holds `submit_lock`, or it is the issuer of a confined ring.
        if let Err(e) = unsafe { self.push_entry(&entry) } {
            return Pushed::Refused(e);
        }
        if batching {
            // Handed over with the rest of the batch, or by the next reap.
            self.held_back.store(true, Ordering::Release);
            return Pushed::Entered;
        }
        match self.enter_submit() {
            Ok(()) => Pushed::Entered,
            Err(e) => {
                // The entry is in the queue: the next flush enters again.
                self.held_back.store(true, Ordering::Release);
                Pushed::Written(e)
            }
        }
    }

    /// See `Ring::fill_submission_queue_for_test`.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn fill_submission_queue_for_test(&self) {
        let _guard = self.submit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let nop = opcode::Nop::new().build().user_data(WAKE_NOP);
        // SAFETY: the lock makes this thread the queue's only user (the
        // test's ring is not confined); a no-op points at nothing.
        while unsafe { self.ring.submission_shared().push(&nop) }.is_ok() {}
    }

    /// Writes `entry` into the submission queue, handing the queue to the
    /// kernel first if it is full.
    ///
    /// # Safety
    /// The caller must be the only thread using the submission queue, and
    /// the entry's pointers must stay valid until its completion (see
    /// `entry_for`).
    unsafe fn push_entry(&self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the caller makes this thread the queue's only user and
            // vouches for the entry's pointers.
            let pushed = unsafe { self.ring.submission_shared().push(entry) };
            if pushed.is_ok() {
                return Ok(());
            }
            // The queue is full of entries not yet handed over: hand them over.
            self.enter_submit()?;
        }
    }

    /// Hands the submission queue to the kernel. On a confined ring it also
    /// asks for completions (`IORING_ENTER_GETEVENTS`), which is when the
    /// kernel finishes the work it deferred for this thread.
    fn enter_submit(&self) -> io::Result<()> {
        #[cfg(all(test, not(loom)))]
        if let Some(injected) = super::fault::enter() {
            return Err(injected);
        }
        loop {
            let entered = match &self.confinement {
                None => self.ring.submit(),
                Some(_) => {
                    // SAFETY: only the issuer enters a confined ring, and it
                    // is the only writer of the queue whose length is read.
                    let queued = unsafe { self.ring.submission_shared() }.len() as u32;
                    // SAFETY: no argument is passed, so no pointer is read.
                    unsafe {
                        self.ring.submitter().enter::<libc::sigset_t>(
                            queued,
                            0,
                            io_uring::EnterFlags::GETEVENTS.bits(),
                            None,
                        )
                    }
                }
            };
            match entered {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The completion queue is overflowing; the completion thread
                // is draining it. Let it run, then retry.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => {
                    thread::yield_now();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether threads with nothing to reap sleep in the ring.
    pub(crate) fn sleeps_in_ring(&self) -> bool {
        self.sleeps_in_ring
    }

    /// Sleeps in `io_uring_enter` until a completion is posted, `also`
    /// becomes readable (a multishot poll on it, kept in the ring, posts a
    /// completion for every wake-up), or `timeout` passes. One system call
    /// both hands the kernel whatever is held back and waits, and the
    /// kernel's deferred work for this thread runs inside the wait instead
    /// of interrupting a `poll`.
    pub(crate) fn sleep(&self, timeout: Option<Duration>, also: Option<RawFd>) -> io::Result<()> {
        if let Some(fd) = also {
            self.watch_wake_fd(fd)?;
        }
        if let Some(confinement) = &self.confinement {
            self.watch_doorbell(confinement)?;
        }
        // Not under `submit_lock`, which would stop every other thread from
        // submitting while this one sleeps: the kernel takes only the
        // entries whose tail a pusher has published.
        let submitter = self.ring.submitter();
        let batch = self.batch_wait_usec.load(Ordering::Relaxed);
        let waited = match timeout {
            _ if batch > 0 && self.min_timeout => {
                // Up to BATCH_WANT completions, for up to `batch` µs once
                // the first could end the wait; still woken by the deadline.
                let args = types::SubmitArgs::new().min_wait_usec(batch);
                match timeout {
                    Some(timeout) => {
                        let timespec = types::Timespec::from(timeout);
                        submitter.submit_with_args(BATCH_WANT, &args.timespec(&timespec))
                    }
                    None => submitter.submit_with_args(BATCH_WANT, &args),
                }
            }
            None => submitter.submit_and_wait(1),
            Some(timeout) => {
                let timespec = types::Timespec::from(timeout);
                submitter.submit_with_args(1, &types::SubmitArgs::new().timespec(&timespec))
            }
        };
        match waited {
            Ok(_) => Ok(()),
            // The timeout passed, a signal came, or the completion queue is
            // overflowing: the caller drains and looks again either way.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Keeps a multishot poll on `fd` in the ring, unless one runs already.
    fn watch_wake_fd(&self, fd: RawFd) -> io::Result<()> {
        let watched = self.wake_poll.swap(fd, Ordering::AcqRel);
        if watched == fd {
            return Ok(());
        }
        let poll = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(WAKE_POLL);
        // Handed over by the wait that follows.
        self.push(poll, true).written().inspect_err(|_| {
            self.wake_poll.store(NO_WAKE_POLL, Ordering::Release);
        })
    }

    /// Keeps a multishot poll on a confined ring's doorbell, unless one
    /// runs already. Only the issuer calls this.
    fn watch_doorbell(&self, confinement: &Confinement) -> io::Result<()> {
        if confinement.doorbell_watched.load(Ordering::Acquire) {
            return Ok(());
        }
        let fd = types::Fd(confinement.doorbell.as_raw_fd());
        let poll = opcode::PollAdd::new(fd, libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(DOORBELL_POLL);
        // Handed over by the wait that follows. The doorbell is never read:
        // the poll posts a completion for every ring, not while it is
        // readable.
        self.push(poll, true).written()?;
        confinement.doorbell_watched.store(true, Ordering::Release);
        Ok(())
    }

    /// Wakes a thread sleeping in the ring: a no-op's completion ends its
    /// wait, or, from outside a confined ring, the doorbell.
    pub(crate) fn wake_sleeper(&self) -> io::Result<()> {
        match &self.confinement {
            Some(confinement) if !confinement.on_issuer() => confinement.ring_doorbell(),
            _ => {
                let nop = opcode::Nop::new().build().user_data(WAKE_NOP);
                match self.push(nop, false) {
                    Pushed::Entered => Ok(()),
                    Pushed::Written(e) | Pushed::Refused(e) => Err(e),
                }
            }
        }
    }

    /// Notes that a wake-up poll ended, so that the next sleep posts it again.
    fn poll_ended(&self, user_data: u64) {
        match (user_data, &self.confinement) {
            (WAKE_POLL, _) => self.wake_poll.store(NO_WAKE_POLL, Ordering::Release),
            (DOORBELL_POLL, Some(confinement)) => {
                confinement.doorbell_watched.store(false, Ordering::Release);
            }
            _ => {}
        }
    }

    /// Completes every operation the kernel has posted a completion for.
    ///
    /// One reaper at a time: the issuer of a confined ring (the only thread
    /// that may), or whoever holds the `reaped` lock — held from the copy
    /// of the completions to the last of them handled, so that the
    /// completions of one request are handled in the order the kernel
    /// posted them, by one thread (a multishot receive's arrivals before
    /// its final completion, which lets go of the request).
    ///
    /// `pool` is the ring's buffer pool, if it has one, and `in_flight` the
    /// count of its requests whose final completion was not reaped.
    pub(crate) fn drain(&self, pool: Option<&Arc<BufRing>>, in_flight: &AtomicUsize) -> usize {
        if self.is_issuer() {
            if let Some(pool) = pool {
                pool.settle_on_issuer();
            }
        }
        let owner = reap::Owner { pool, in_flight };
        let by_issuer = self.confinement.as_ref().and_then(|confinement| {
            confinement.reaped.with(|batch| {
                // SAFETY: only the issuer reaps a confined ring (others may
                // not even enter it), and `with` let only it in.
                unsafe { self.copy_completions(batch) };
                reap::complete_all(&owner, batch, |ended| self.poll_ended(ended))
            })
        });
        if let Some(reaped) = by_issuer {
            return reaped;
        }
        let mut batch = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the `reaped` lock, held until the batch is handled, makes
        // this thread the only reader of the completion queue.
        unsafe { self.copy_completions(&mut batch) };
        reap::complete_all(&owner, &mut batch, |ended| self.poll_ended(ended))
    }

    /// Copies the posted completions into `batch`, so the queue's slots are
    /// released before the completions are handled.
    ///
    /// # Safety
    /// The caller must be the only reader of the completion queue.
    unsafe fn copy_completions(&self, batch: &mut Vec<Reaped>) {
        // SAFETY: per the contract.
        let completions = unsafe { self.ring.completion_shared() };
        batch.extend(completions.map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())));
    }
}

/// What became of an entry [`Uring::push`] was given.
enum Pushed {
    /// Written, and handed to the kernel (or held back for the batch).
    Entered,
    /// Written, but the kernel was not told (the enter or the doorbell
    /// failed): it takes the entry at the next enter, so what the entry
    /// points at must stay.
    Written(io::Error),
    /// Not written: the kernel never sees it.
    Refused(io::Error),
}

impl Pushed {
    /// `Ok` once the entry is written, whether or not the kernel was told.
    fn written(self) -> io::Result<()> {
        match self {
            Pushed::Entered | Pushed::Written(_) => Ok(()),
            Pushed::Refused(e) => Err(e),
        }
    }
}

/// The error of a thread that uses a ring confined to another.
fn confined_elsewhere() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "this ring is confined to another thread (IORING_SETUP_SINGLE_ISSUER)",
    )
}
