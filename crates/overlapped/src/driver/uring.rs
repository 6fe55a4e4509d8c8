//! The io_uring backend: rings that take submissions from any thread, and
//! the two ways their completions are reaped.
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
//! Waiting threads sleep in `poll` on an eventfd that the kernel signals
//! whenever it posts completions (`IORING_REGISTER_EVENTFD`), so an idle
//! program uses no CPU. Sleeping there rather than in `io_uring_enter` also
//! keeps the driver usable under valgrind, which does not know that
//! `io_uring_enter` may block.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::buf_ring::{BufRing, Lease, POOL_GROUP};
use super::op::{IoParts, Op, OpKind};
use super::sys;

/// Submission queue size. Requests waiting on sockets do not occupy it, only
/// requests not yet handed to the kernel, so this bounds a burst, not the
/// number of operations in flight.
const SQ_ENTRIES: u32 = 4096;
/// Completion queue size: room for a large burst of completions between two
/// reaps (the kernel keeps any overflow, see IORING_FEAT_NODROP).
const CQ_ENTRIES: u32 = 32 * 1024;
/// How often a retired ring's reaper checks whether it is still needed.
const RETIRED_POLL: Duration = Duration::from_secs(1);

thread_local! {
    /// The ring whose submissions this thread is batching, if any.
    static BATCHING: Cell<*const Ring> = const { Cell::new(std::ptr::null()) };
}

pub(crate) struct Ring {
    ring: IoUring,
    /// Signaled by the kernel each time it posts completions, and by
    /// [`Ring::wake`].
    completions_posted: OwnedFd,
    /// Serializes writers of the submission queue.
    submit_lock: Mutex<()>,
    /// Serializes readers of the completion queue.
    reap_lock: Mutex<()>,
    /// Requests handed to the kernel whose completion was not reaped yet.
    in_flight: AtomicUsize,
    /// Its port was closed: nothing new may start on it.
    retired: AtomicBool,
    /// The buffer pool of multishot receives, registered on first use.
    pool: OnceLock<BufRing>,
}

impl Ring {
    /// The process-wide ring, created with its completion thread on first use.
    pub(crate) fn global() -> io::Result<&'static Arc<Ring>> {
        static RING: OnceLock<Result<Arc<Ring>, i32>> = OnceLock::new();
        let ring = RING.get_or_init(|| {
            let ring = Ring::new(false).map_err(|e| e.raw_os_error().unwrap_or(libc::ENOSYS))?;
            let reaper = ring.clone();
            thread::Builder::new()
                .name("overlapped-completions".into())
                .spawn(move || reaper.reap_forever())
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EAGAIN))?;
            Ok(ring)
        });
        ring.as_ref().map_err(|&e| io::Error::from_raw_os_error(e))
    }

    /// A ring without a completion thread: its owner reaps it.
    ///
    /// `cooperative` rings (`IORING_SETUP_COOP_TASKRUN`) finish requests the
    /// next time the submitting thread enters the kernel instead of
    /// interrupting it; a sleeping thread is still woken. That suits a
    /// port's workers, which enter the kernel for every batch, but not the
    /// event model, whose threads may compute for a long time between
    /// system calls while their events must be signaled.
    pub(crate) fn new(cooperative: bool) -> io::Result<Arc<Ring>> {
        let mut builder = IoUring::builder();
        builder
            .setup_cqsize(CQ_ENTRIES)
            // Submit every entry even if an earlier one fails to prepare; its
            // error then arrives as a completion like any other.
            .setup_submit_all();
        if cooperative {
            builder.setup_coop_taskrun();
        }
        let ring = match builder.build(SQ_ENTRIES) {
            // Kernels before 5.19 do not know the flag: do without it.
            Err(e) if cooperative && e.raw_os_error() == Some(libc::EINVAL) => {
                return Ring::new(false);
            }
            other => other?,
        };
        let completions_posted = sys::eventfd()?;
        ring.submitter()
            .register_eventfd(completions_posted.as_raw_fd())?;
        Ok(Arc::new(Ring {
            ring,
            completions_posted,
            submit_lock: Mutex::new(()),
            reap_lock: Mutex::new(()),
            in_flight: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            pool: OnceLock::new(),
        }))
    }

    /// The buffer pool, if one was registered.
    pub(crate) fn pool(&self) -> Option<&BufRing> {
        self.pool.get()
    }

    /// Registers the buffer pool unless it already is.
    pub(crate) fn ensure_pool(&self) -> io::Result<&BufRing> {
        if let Some(pool) = self.pool.get() {
            return Ok(pool);
        }
        let _guard = self.submit_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = self.pool.get() {
            return Ok(pool);
        }
        let pool = BufRing::register(&self.ring)?;
        Ok(self.pool.get_or_init(|| pool))
    }

    /// Whether the ring's port was closed.
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Runs `f` with this thread's submissions to this ring held back, then
    /// hands them all to the kernel at once.
    pub(crate) fn batch<R>(&self, f: impl FnOnce() -> R) -> R {
        let outer = BATCHING.with(|b| b.replace(self as *const Ring));
        let result = f();
        BATCHING.with(|b| b.set(outer));
        if let Err(e) = self.flush() {
            tracing::error!("io_uring submission failed: {e}");
        }
        result
    }

    /// Whether this thread is batching submissions to this ring.
    pub(crate) fn is_batching(&self) -> bool {
        BATCHING.with(|b| std::ptr::eq(b.get(), self))
    }

    /// Wakes a thread sleeping in [`Ring::reap`].
    pub(crate) fn wake(&self) {
        if let Err(e) = sys::eventfd_signal(self.completions_posted.as_raw_fd()) {
            tracing::error!("cannot wake an io_uring reaper: {e}");
        }
    }

    /// Hands held-back submissions to the kernel.
    pub(crate) fn flush(&self) -> io::Result<()> {
        let _guard = self.submit_lock.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: `submit_lock` makes this thread the only user of the
        // submission queue.
        if unsafe { self.ring.submission_shared() }.is_empty() {
            return Ok(());
        }
        self.enter_submit()
    }

    /// Completes whatever the kernel has posted; if nothing, sleeps until
    /// something is posted, [`Ring::wake`] is called, `also` becomes
    /// readable (the owner's own wake-up), or `timeout` passes. Returns how
    /// many operations completed.
    pub(crate) fn reap(
        self: &Arc<Self>,
        timeout: Option<Duration>,
        also: Option<RawFd>,
    ) -> io::Result<usize> {
        let fd = self.completions_posted.as_raw_fd();
        // Clear before draining: anything posted after the drain signals
        // the eventfd again, so no completion is slept through.
        sys::eventfd_clear(fd)?;
        self.flush()?;
        let reaped = self.drain();
        if reaped > 0 || timeout == Some(Duration::ZERO) {
            return Ok(reaped);
        }
        let watched: Vec<RawFd> = std::iter::once(fd).chain(also).collect();
        sys::poll_readable(&watched, timeout)?;
        Ok(self.drain())
    }

    /// Retires the ring of a closed port: nothing new starts on it, and a
    /// thread reaps what is still in flight (cancellations of its sockets)
    /// until no socket uses the ring any more.
    pub(crate) fn retire(self: &Arc<Self>) {
        if self.retired.swap(true, Ordering::AcqRel) {
            return;
        }
        self.wake();
        let ring = self.clone();
        let spawned = thread::Builder::new()
            .name("overlapped-retired-ring".into())
            .spawn(move || {
                // The sockets and operations that still use the ring hold the
                // other references.
                while Arc::strong_count(&ring) > 1 || ring.in_flight.load(Ordering::Acquire) > 0 {
                    if let Err(e) = ring.reap(Some(RETIRED_POLL), None) {
                        tracing::error!("reaping a retired ring failed: {e}");
                        thread::sleep(RETIRED_POLL);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the reaper of a closed port: {e}");
        }
    }

    /// Hands `op` to the kernel. The ring keeps one reference to it until its
    /// completion arrives.
    pub(crate) fn submit(&self, op: &Arc<Op>) -> io::Result<()> {
        let entry = self.entry_for(op)?;
        let user_data = Arc::into_raw(op.clone()) as u64;
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let result = self.push(entry.user_data(user_data));
        if result.is_err() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            // SAFETY: the entry was not submitted, so the kernel will never
            // complete it; this takes back the reference made just above.
            drop(unsafe { Arc::from_raw(user_data as *const Op) });
        }
        result
    }

    /// Builds the submission entry. Its pointers stay valid until the
    /// completion, because the op owns the memory and the ring owns the op.
    fn entry_for(&self, op: &Arc<Op>) -> io::Result<squeue::Entry> {
        let fd = op
            .socket
            .as_ref()
            .map(|s| types::Fd(s.sock.as_raw_fd()))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF));
        let entry = match &op.kind {
            OpKind::Cancel(target) => {
                return Ok(opcode::AsyncCancel::new(Arc::as_ptr(target) as u64).build());
            }
            OpKind::CancelAll => {
                opcode::AsyncCancel2::new(types::CancelBuilder::fd(fd?).all()).build()
            }
            OpKind::Shutdown(how) => opcode::Shutdown::new(fd?, *how).build(),
            OpKind::RecvMulti => opcode::RecvMulti::new(fd?, POOL_GROUP).build(),
            kind => {
                let fd = fd?;
                op.with_parts(|parts| data_entry(kind, fd, parts))
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?
            }
        };
        Ok(entry)
    }

    fn push(&self, entry: squeue::Entry) -> io::Result<()> {
        let _guard = self.submit_lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            // SAFETY: `submit_lock` makes this thread the only user of the
            // submission queue; the entry's pointers stay valid until its
            // completion (see `entry_for`).
            let pushed = unsafe { self.ring.submission_shared().push(&entry) };
            if pushed.is_ok() {
                break;
            }
            // The queue is full of entries not yet handed over: hand them over.
            self.enter_submit()?;
        }
        if self.is_batching() {
            // Handed over with the rest of the batch, or by the next reap.
            return Ok(());
        }
        self.enter_submit()
    }

    fn enter_submit(&self) -> io::Result<()> {
        loop {
            match self.ring.submit() {
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

    /// The completion thread of the process-wide ring.
    fn reap_forever(self: &Arc<Self>) {
        loop {
            if let Err(e) = self.reap(None, None) {
                tracing::error!("reaping io_uring completions failed: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Completes every operation the kernel has posted a completion for.
    fn drain(self: &Arc<Self>) -> usize {
        let batch: Vec<(u64, i32, u32)> = {
            let _guard = self.reap_lock.lock().unwrap_or_else(|p| p.into_inner());
            // SAFETY: `reap_lock` makes this thread the only reader of the
            // completion queue. The batch is copied out so the queue's slots
            // are released before the completions are handled.
            unsafe { self.ring.completion_shared() }
                .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags()))
                .collect()
        };
        let reaped = batch.len();
        for (user_data, result, flags) in batch {
            let arrival = cqueue::buffer_select(flags).filter(|_| result > 0);
            if cqueue::more(flags) {
                // SAFETY: the kernel will post more completions for this
                // request, so the ring's reference to the op stays alive; this
                // only borrows it.
                let op = unsafe { &*(user_data as *const Op) };
                if let Some(bid) = arrival {
                    super::arrived(op, Lease::new(self.clone(), bid, result as usize));
                }
                continue;
            }
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            // SAFETY: every submitted entry carries a reference made by
            // `Arc::into_raw` in `submit`, and the kernel posts exactly one
            // final completion (without IORING_CQE_F_MORE) for it, so each
            // reference is taken back exactly once.
            let op = unsafe { Arc::from_raw(user_data as *const Op) };
            if let Some(bid) = arrival {
                // A multishot receive that stopped with data in hand.
                super::arrived(&op, Lease::new(self.clone(), bid, result as usize));
            }
            super::complete(op, result);
        }
        reaped
    }
}

/// The entry of an operation that uses the op's memory.
fn data_entry(kind: &OpKind, fd: types::Fd, parts: &mut IoParts) -> squeue::Entry {
    // A stream send completes only when every byte is taken, as an
    // overlapped WSASend does: MSG_WAITALL.
    let stream_send = (libc::MSG_NOSIGNAL | libc::MSG_WAITALL) as u32;
    match (kind, parts.single()) {
        (OpKind::Recv, Some((ptr, len))) => opcode::Recv::new(fd, ptr, len as u32).build(),
        (OpKind::Send, Some((ptr, len))) => opcode::Send::new(fd, ptr, len as u32)
            .flags(stream_send as i32)
            .build(),
        (OpKind::Recv, None) => opcode::RecvMsg::new(fd, parts.msg_ptr()).build(),
        (OpKind::Send, None) => opcode::SendMsg::new(fd, parts.msg_ptr())
            .flags(stream_send)
            .build(),
        // With MSG_TRUNC the kernel reports a datagram's real length, which
        // tells us it did not fit (Winsock's WSAEMSGSIZE).
        (OpKind::RecvFrom, _) => opcode::RecvMsg::new(fd, parts.msg_ptr())
            .flags(libc::MSG_TRUNC as u32)
            .build(),
        (OpKind::SendTo, _) => opcode::SendMsg::new(fd, parts.msg_ptr())
            .flags(libc::MSG_NOSIGNAL as u32)
            .build(),
        (OpKind::Accept, _) => {
            let (addr, len) = parts.addr_ptrs();
            opcode::Accept::new(fd, addr, len)
                .flags(libc::SOCK_CLOEXEC)
                .build()
        }
        (OpKind::Connect, _) => {
            let (addr, len) = parts.addr_ptrs();
            // SAFETY: `len` points into the op's header, set by `use_address`
            // and not changed by a connect; read here before submission.
            opcode::Connect::new(fd, addr, unsafe { *len }).build()
        }
        (OpKind::Cancel(_) | OpKind::CancelAll | OpKind::Shutdown(_) | OpKind::RecvMulti, _) => {
            unreachable!("operations without memory are built in entry_for")
        }
    }
}
