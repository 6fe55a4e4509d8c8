//! The io_uring backend: one ring, submissions from any thread, and one
//! completion thread that sleeps in the kernel until completions arrive.
//!
//! The completion thread plays the part of the Windows kernel in the event
//! model: it records each outcome and signals the operation's event. While
//! nothing completes it sleeps in `read` on an eventfd that the kernel
//! signals whenever it posts a completion (`IORING_REGISTER_EVENTFD`), so
//! an idle program uses no CPU. Sleeping in `read` rather than in
//! `io_uring_enter` also keeps the driver usable under valgrind, which
//! does not know that `io_uring_enter` may block.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;

use io_uring::{opcode, squeue, types, IoUring};

use super::op::{Op, OpKind};
use super::sys;

/// Submission queue size. Requests waiting on sockets do not occupy it, only
/// requests not yet handed to the kernel, so this bounds a burst, not the
/// number of operations in flight.
const SQ_ENTRIES: u32 = 1024;
/// Completion queue size: room for a large burst of completions between two
/// reaps (the kernel keeps any overflow, see IORING_FEAT_NODROP).
const CQ_ENTRIES: u32 = 16 * 1024;
pub(crate) struct Ring {
    ring: IoUring,
    /// Signaled by the kernel each time it posts completions.
    completions_posted: OwnedFd,
    /// Serializes writers of the submission queue.
    submit_lock: Mutex<()>,
}

impl Ring {
    /// The process-wide ring, created with its completion thread on first use.
    pub(crate) fn global() -> io::Result<&'static Ring> {
        static RING: OnceLock<Result<&'static Ring, i32>> = OnceLock::new();
        let ring = RING
            .get_or_init(|| Ring::start().map_err(|e| e.raw_os_error().unwrap_or(libc::ENOSYS)));
        ring.map_err(io::Error::from_raw_os_error)
    }

    fn start() -> io::Result<&'static Ring> {
        let ring = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            // Submit every entry even if an earlier one fails to prepare; its
            // error then arrives as a completion like any other.
            .setup_submit_all()
            .build(SQ_ENTRIES)?;
        let completions_posted = sys::eventfd_blocking()?;
        ring.submitter()
            .register_eventfd(completions_posted.as_raw_fd())?;
        // The ring lives as long as the process: in-flight operations may
        // outlive every handle the program holds.
        let ring: &'static Ring = Box::leak(Box::new(Ring {
            ring,
            completions_posted,
            submit_lock: Mutex::new(()),
        }));
        thread::Builder::new()
            .name("overlapped-completions".into())
            .spawn(move || ring.reap_forever())?;
        Ok(ring)
    }

    /// Hands `op` to the kernel. The ring keeps one reference to it until its
    /// completion arrives.
    pub(crate) fn submit(&self, op: &Arc<Op>) -> io::Result<()> {
        let entry = self.entry_for(op)?;
        let user_data = Arc::into_raw(op.clone()) as u64;
        let result = self.push(entry.user_data(user_data));
        if result.is_err() {
            // SAFETY: the entry was not submitted, so the kernel will never
            // complete it; this takes back the reference made just above.
            drop(unsafe { Arc::from_raw(user_data as *const Op) });
        }
        result
    }

    /// Builds the submission entry. Its pointers stay valid until the
    /// completion, because the op owns the memory and the ring owns the op.
    fn entry_for(&self, op: &Arc<Op>) -> io::Result<squeue::Entry> {
        let fd = |op: &Op| {
            op.socket
                .as_ref()
                .map(|s| types::Fd(s.sock.as_raw_fd()))
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
        };
        let msg = || {
            op.msg_ptr()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
        };
        let addr = || {
            op.addr_ptrs()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
        };
        let entry = match &op.kind {
            OpKind::Recv => opcode::RecvMsg::new(fd(op)?, msg()?).build(),
            OpKind::RecvFrom => opcode::RecvMsg::new(fd(op)?, msg()?)
                .flags(libc::MSG_TRUNC as u32)
                .build(),
            // MSG_WAITALL: a stream send completes only when every byte is
            // taken, as an overlapped WSASend does.
            OpKind::Send => opcode::SendMsg::new(fd(op)?, msg()?)
                .flags((libc::MSG_NOSIGNAL | libc::MSG_WAITALL) as u32)
                .build(),
            OpKind::SendTo => opcode::SendMsg::new(fd(op)?, msg()?)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build(),
            OpKind::Cancel(target) => opcode::AsyncCancel::new(Arc::as_ptr(target) as u64).build(),
            OpKind::CancelAll => {
                opcode::AsyncCancel2::new(types::CancelBuilder::fd(fd(op)?).all()).build()
            }
            OpKind::Accept => {
                let (addr, len) = addr()?;
                opcode::Accept::new(fd(op)?, addr, len)
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
            }
            OpKind::Connect => {
                let (addr, len) = addr()?;
                // SAFETY: `len` points into the op's header, which the
                // connect does not change; read here before submission.
                opcode::Connect::new(fd(op)?, addr, unsafe { *len }).build()
            }
            OpKind::Shutdown(how) => opcode::Shutdown::new(fd(op)?, *how).build(),
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

    fn reap_forever(&self) {
        let mut batch: Vec<(u64, i32)> = Vec::with_capacity(256);
        loop {
            // Clearing the counter before draining the queue means a
            // completion posted after the drain signals it again: none is
            // missed.
            if let Err(e) = sys::eventfd_wait(self.completions_posted.as_raw_fd()) {
                tracing::error!("waiting for io_uring completions failed: {e}");
                thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            // SAFETY: this thread is the only reader of the completion queue.
            let completions = unsafe { self.ring.completion_shared() };
            batch.extend(completions.map(|cqe| (cqe.user_data(), cqe.result())));
            for (user_data, result) in batch.drain(..) {
                // SAFETY: every submitted entry carries a reference made by
                // `Arc::into_raw` in `submit`, and the kernel posts exactly one
                // completion for it (no multishot requests are used), so each
                // reference is taken back exactly once.
                let op = unsafe { Arc::from_raw(user_data as *const Op) };
                super::complete(op, result);
            }
        }
    }
}
