//! The io_uring backend: one `IoUring` per [`super::ring::Ring`], taking
//! submissions from any thread and posting completions that the ring's
//! reaper drains.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};

use super::buf_ring::{BufRing, Lease, POOL_GROUP};
use super::op::{IoParts, Op, OpKind};
use super::ring::Ring;

/// Submission queue size. Requests waiting on sockets do not occupy it, only
/// requests not yet handed to the kernel, so this bounds a burst, not the
/// number of operations in flight.
const SQ_ENTRIES: u32 = 4096;
/// Completion queue size: room for a large burst of completions between two
/// reaps (the kernel keeps any overflow, see IORING_FEAT_NODROP).
const CQ_ENTRIES: u32 = 32 * 1024;

/// Checks that this kernel lets the process set up an io_uring with what the
/// driver uses. Container seccomp profiles often refuse `io_uring_setup`.
pub(crate) fn probe() -> io::Result<()> {
    let ring: IoUring = IoUring::builder().setup_submit_all().build(8)?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    let needed = [
        opcode::Recv::CODE,
        opcode::Send::CODE,
        opcode::RecvMsg::CODE,
        opcode::SendMsg::CODE,
        opcode::Accept::CODE,
        opcode::Connect::CODE,
        opcode::Shutdown::CODE,
        opcode::AsyncCancel::CODE,
    ];
    match needed.iter().find(|&&code| !probe.is_supported(code)) {
        Some(code) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("io_uring lacks opcode {code}"),
        )),
        None => Ok(()),
    }
}

pub(crate) struct Uring {
    ring: IoUring,
    /// Serializes writers of the submission queue.
    submit_lock: Mutex<()>,
    /// Entries were held back for a flush (set under `submit_lock`), so a
    /// flush with nothing to do — every reap starts with one — takes no lock.
    held_back: AtomicBool,
    /// Serializes readers of the completion queue, and keeps the vector
    /// they copy completions into between reaps.
    reaped: Mutex<Vec<Reaped>>,
}

/// A completion copied out of the queue: user data, result, flags.
type Reaped = (u64, i32, u32);

impl Uring {
    /// Sets up a ring that signals `completions_posted` whenever it posts
    /// completions. See [`Ring::new`] for `cooperative`.
    pub(crate) fn new(cooperative: bool, completions_posted: &OwnedFd) -> io::Result<Uring> {
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
                return Uring::new(false, completions_posted);
            }
            other => other?,
        };
        ring.submitter()
            .register_eventfd(completions_posted.as_raw_fd())?;
        Ok(Uring {
            ring,
            submit_lock: Mutex::new(()),
            held_back: AtomicBool::new(false),
            reaped: Mutex::new(Vec::new()),
        })
    }

    /// Registers the buffer pool into `slot` unless it already is.
    pub(crate) fn register_pool<'a>(&self, slot: &'a OnceLock<BufRing>) -> io::Result<&'a BufRing> {
        let _guard = self.submit_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = slot.get() {
            return Ok(pool);
        }
        let pool = BufRing::register(&self.ring)?;
        Ok(slot.get_or_init(|| pool))
    }

    /// Hands held-back submissions to the kernel.
    pub(crate) fn flush(&self) -> io::Result<()> {
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
    /// ring keeps one reference to it until its completion arrives.
    pub(crate) fn submit(&self, op: &Arc<Op>, batching: bool) -> io::Result<()> {
        let entry = entry_for(op)?;
        let user_data = Arc::into_raw(op.clone()) as u64;
        let result = self.push(entry.user_data(user_data), batching);
        if result.is_err() {
            // SAFETY: the entry was not submitted, so the kernel will never
            // complete it; this takes back the reference made just above.
            drop(unsafe { Arc::from_raw(user_data as *const Op) });
        }
        result
    }

    fn push(&self, entry: squeue::Entry, batching: bool) -> io::Result<()> {
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
        if batching {
            // Handed over with the rest of the batch, or by the next reap.
            self.held_back.store(true, Ordering::Release);
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

    /// Completes every operation the kernel has posted a completion for.
    pub(crate) fn drain(&self, owner: &Arc<Ring>) -> usize {
        let mut batch = {
            let mut kept = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
            // SAFETY: the `reaped` lock makes this thread the only reader of
            // the completion queue. The batch is copied out so the queue's
            // slots are released before the completions are handled.
            let completions = unsafe { self.ring.completion_shared() };
            if completions.is_empty() {
                return 0;
            }
            let mut batch = std::mem::take(&mut *kept);
            batch.extend(completions.map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())));
            batch
        };
        let reaped = batch.len();
        for (user_data, result, flags) in batch.drain(..) {
            let arrival = cqueue::buffer_select(flags).filter(|_| result > 0);
            if cqueue::more(flags) {
                // SAFETY: the kernel will post more completions for this
                // request, so the ring's reference to the op stays alive; this
                // only borrows it.
                let op = unsafe { &*(user_data as *const Op) };
                if let Some(bid) = arrival {
                    super::arrived(op, Lease::new(owner.clone(), bid, result as usize));
                }
                continue;
            }
            owner.completed_one();
            // SAFETY: every submitted entry carries a reference made by
            // `Arc::into_raw` in `submit`, and the kernel posts exactly one
            // final completion (without IORING_CQE_F_MORE) for it, so each
            // reference is taken back exactly once.
            let op = unsafe { Arc::from_raw(user_data as *const Op) };
            if let Some(bid) = arrival {
                // A multishot receive that stopped with data in hand.
                super::arrived(&op, Lease::new(owner.clone(), bid, result as usize));
            }
            super::complete(op, result);
        }
        // Kept for the next reap, unless another reaper's vector is there.
        let mut kept = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        if kept.capacity() < batch.capacity() {
            *kept = batch;
        }
        reaped
    }
}

/// Builds the submission entry and marks the op submitted. Its pointers
/// stay valid until the completion, because the op owns the memory and the
/// ring owns the op.
fn entry_for(op: &Arc<Op>) -> io::Result<squeue::Entry> {
    let fd = op
        .socket
        .as_ref()
        .map(|s| types::Fd(s.sock.as_raw_fd()))
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF));
    op.submit_with(|parts| {
        let entry = match (&op.kind, parts) {
            (OpKind::Cancel(target), _) => {
                opcode::AsyncCancel::new(Arc::as_ptr(target) as u64).build()
            }
            (OpKind::CancelAll, _) => {
                opcode::AsyncCancel2::new(types::CancelBuilder::fd(fd?).all()).build()
            }
            (OpKind::Shutdown(how), _) => opcode::Shutdown::new(fd?, *how).build(),
            (OpKind::RecvMulti, _) => opcode::RecvMulti::new(fd?, POOL_GROUP).build(),
            (kind, Some(parts)) => data_entry(kind, fd?, parts),
            (_, None) => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        Ok(entry)
    })
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
