//! The readiness backend, for kernels or sandboxes without io_uring.
//!
//! It keeps the completion model on top of epoll (through `polling`): a
//! pending operation waits in its socket's queue, the socket is armed for
//! the readiness that operation needs (one-shot, so an idle socket costs
//! nothing), and the ring's reaper carries the operation out with a
//! non-blocking system call once the socket is ready. What the program sees
//! is the same as with io_uring: the operation owns its memory until it
//! completes, completions come from the reaper, cancellation and close work
//! the same way.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use polling::{Event, Events, PollMode, Poller};

use super::buf_ring::{BufRing, Lease, POOL_BUFFER_SIZE};
use super::lifecycle;
use super::op::{Claim, Direction, IoParts, Op, OpKind};
use super::sys;

pub(crate) struct Epoll {
    poller: Poller,
    state: Mutex<State>,
    /// Held by the one thread reaping (see [`Epoll::drain`]), with the
    /// vector it collects completions into, kept between reaps.
    reaping: Mutex<Vec<Reaped>>,
}

#[derive(Default)]
struct State {
    /// Sockets with operations waiting for readiness, by descriptor.
    sockets: HashMap<RawFd, Waiting>,
    /// Completions made at submission (cancellations, shutdowns, connects
    /// that finished at once), for the next reap.
    ready: Vec<Reaped>,
    events: Events,
}

/// The operations waiting on one socket.
#[derive(Default)]
struct Waiting {
    /// Receives, accepts and multishot receives, in posting order.
    readers: VecDeque<Arc<Op>>,
    /// Sends and connects, in posting order.
    writers: VecDeque<Arc<Op>>,
    /// The interest the socket is armed with now, if any.
    armed: Option<Interest>,
    /// The descriptor is in the epoll set (armed or spent).
    registered: bool,
    /// The descriptor was made non-blocking (listeners, connecting sockets).
    nonblocking: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Interest {
    readable: bool,
    writable: bool,
}

/// What the reaper hands to the driver, in order.
enum Reaped {
    Complete(Arc<Op>, i32),
    Arrival(Arc<Op>, Lease),
}

/// The result of one attempt at an operation.
enum Attempt {
    /// The socket is not ready: keep waiting.
    Wait,
    /// Final: the io_uring-style result (bytes, descriptor, or -errno).
    Done(i32),
    /// Data for a multishot receive, which keeps waiting.
    Arrival(Lease),
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        Ok(Epoll {
            poller: Poller::new()?,
            state: Mutex::new(State::default()),
            reaping: Mutex::new(Vec::new()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Updates to the state are queue pushes and pops that a panic cannot
        // leave half-done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `op` over: completes it at once where that needs no waiting,
    /// otherwise queues it on its socket and arms the socket.
    ///
    /// `claim` holds the op's memory; on failure the op was not submitted,
    /// and the claim comes back.
    /// `wake` wakes the ring's reaper.
    pub(crate) fn submit<'a>(
        &self,
        wake: &dyn Fn(),
        op: &'a Arc<Op>,
        mut claim: Claim<'a>,
    ) -> Result<(), (io::Error, Claim<'a>)> {
        if let OpKind::Cancel(target) = &op.kind {
            claim.submit();
            let mut state = self.state();
            let result = cancel(&mut state, target);
            self.finish_now(wake, state, op, result);
            return Ok(());
        }
        let Some(socket) = op.socket.as_ref() else {
            return Err((io::Error::from_raw_os_error(libc::EBADF), claim));
        };
        let fd = socket.sock.as_raw_fd();
        let connected = match &op.kind {
            // Started now, with the op's memory (the address).
            OpKind::Connect => match start_connect(&socket.sock, &mut claim) {
                Ok(connected) => connected,
                Err(e) => return Err((e, claim)),
            },
            _ => None,
        };
        let mut state = self.state();
        let immediate = match &op.kind {
            OpKind::CancelAll => Some(self.cancel_all(&mut state, fd)),
            OpKind::Shutdown(how) => Some(shutdown(&socket.sock, *how)),
            OpKind::Connect => connected,
            OpKind::Accept => {
                // Accepting must not block the reaper when another accept
                // took the connection first.
                let waiting = state.sockets.entry(fd).or_default();
                if !waiting.nonblocking {
                    if let Err(e) = socket.sock.set_nonblocking(true) {
                        return Err((e, claim));
                    }
                    waiting.nonblocking = true;
                }
                None
            }
            _ => None,
        };
        // This backend's from now on: the reaper performs it under the
        // state's lock, which this thread holds until it is queued.
        claim.submit();
        if let Some(result) = immediate {
            self.finish_now(wake, state, op, result);
            return Ok(());
        }
        let waiting = state.sockets.entry(fd).or_default();
        match waits_for(&op.kind) {
            Direction::Recv => waiting.readers.push_back(op.clone()),
            Direction::Send => waiting.writers.push_back(op.clone()),
        }
        let Err(e) = self.arm(fd, waiting) else {
            return Ok(());
        };
        // Not armed, so it would never complete: take it back.
        let waiting = state.sockets.entry(fd).or_default();
        waiting.readers.retain(|o| !Arc::ptr_eq(o, op));
        waiting.writers.retain(|o| !Arc::ptr_eq(o, op));
        drop(state);
        // SAFETY: it was taken out of the queues, under the lock, before the
        // reaper could perform it: the backend never had it.
        let claim = unsafe { op.abandon() };
        Err((
            e,
            claim.expect("an op this thread submitted is still submitted"),
        ))
    }

    /// Completes `op` with `result` at the next reap, and wakes the reaper.
    fn finish_now(
        &self,
        wake: &dyn Fn(),
        mut state: MutexGuard<'_, State>,
        op: &Arc<Op>,
        result: i32,
    ) {
        state.ready.push(Reaped::Complete(op.clone(), result));
        drop(state);
        wake();
    }

    /// Arms `fd` for what its waiting operations need, if not armed so.
    fn arm(&self, fd: RawFd, waiting: &mut Waiting) -> io::Result<()> {
        let wanted = Interest {
            readable: !waiting.readers.is_empty(),
            writable: !waiting.writers.is_empty(),
        };
        if !(wanted.readable || wanted.writable) || waiting.armed == Some(wanted) {
            return Ok(());
        }
        let event = Event::new(fd as usize, wanted.readable, wanted.writable);
        // SAFETY: `fd` is the descriptor of a socket that an operation
        // waiting on it keeps open; `forget` removes it from the set before
        // the socket closes it.
        let source = unsafe { BorrowedFd::borrow_raw(fd) };
        let modified = if waiting.registered {
            self.poller
                .modify_with_mode(source, event, PollMode::Oneshot)
        } else {
            Err(io::Error::from_raw_os_error(libc::ENOENT))
        };
        match modified {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                // SAFETY: as above; the set holds the descriptor until
                // `forget` deletes it, before the socket closes it.
                unsafe { self.poller.add_with_mode(fd, event, PollMode::Oneshot) }?;
            }
            other => other?,
        }
        waiting.registered = true;
        waiting.armed = Some(wanted);
        Ok(())
    }

    /// Removes a socket about to close from the epoll set.
    pub(crate) fn forget(&self, fd: RawFd) {
        let mut state = self.state();
        if let Some(waiting) = state.sockets.remove(&fd) {
            if waiting.registered {
                // SAFETY: the descriptor is still open: the socket calls this
                // before it closes it.
                let source = unsafe { BorrowedFd::borrow_raw(fd) };
                if let Err(e) = self.poller.delete(source) {
                    tracing::debug!("epoll could not forget a socket: {e}");
                }
            }
        }
    }

    /// Cancels every waiting operation on `fd` (`closesocket`); the result is
    /// how many there were.
    fn cancel_all(&self, state: &mut State, fd: RawFd) -> i32 {
        let Some(waiting) = state.sockets.get_mut(&fd) else {
            return 0;
        };
        let cancelled: Vec<Arc<Op>> = waiting
            .readers
            .drain(..)
            .chain(waiting.writers.drain(..))
            .collect();
        let count = cancelled.len() as i32;
        for op in cancelled {
            state.ready.push(Reaped::Complete(op, -libc::ECANCELED));
        }
        count
    }

    /// Carries out what the ready sockets allow and hands every completion
    /// to the driver. Returns how many there were.
    ///
    /// One reaper at a time: the `reaping` lock is held from the collection
    /// to the last completion handled, so that one socket's arrivals and
    /// completions are handled in the order they were made, by one thread.
    /// The state's lock is let go of meanwhile: a completion may start the
    /// next operation of its lane, which takes it.
    ///
    /// `pool` is the ring's buffer pool, if it has one, and `in_flight` the
    /// count of its operations whose final completion was not reaped.
    pub(crate) fn drain(&self, pool: Option<&Arc<BufRing>>, in_flight: &AtomicUsize) -> usize {
        let mut finished = self.reaping.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut state = self.state();
            finished.append(&mut state.ready);
            self.progress_ready(pool, &mut state, &mut finished);
        }
        let count = finished.len();
        for item in finished.drain(..) {
            match item {
                Reaped::Arrival(op, lease) => lifecycle::arrived(&op, lease),
                Reaped::Complete(op, result) => {
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    lifecycle::complete(op, result);
                }
            }
        }
        count
    }

    fn progress_ready(
        &self,
        pool: Option<&Arc<BufRing>>,
        state: &mut State,
        out: &mut Vec<Reaped>,
    ) {
        let State {
            sockets, events, ..
        } = state;
        events.clear();
        if let Err(e) = self.poller.wait(events, Some(Duration::ZERO)) {
            tracing::error!("epoll_wait failed: {e}");
            return;
        }
        for event in events.iter() {
            let fd = event.key as RawFd;
            let Some(waiting) = sockets.get_mut(&fd) else {
                continue;
            };
            waiting.armed = None;
            if event.readable {
                progress(pool, &mut waiting.readers, out);
            }
            if event.writable {
                progress(pool, &mut waiting.writers, out);
            }
            if let Err(e) = self.arm(fd, waiting) {
                // The socket cannot be watched any more: fail what waits on it.
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                for op in waiting.readers.drain(..).chain(waiting.writers.drain(..)) {
                    out.push(Reaped::Complete(op, -errno));
                }
            }
        }
    }
}

impl AsRawFd for Epoll {
    /// The epoll descriptor, readable while any armed socket is ready.
    fn as_raw_fd(&self) -> RawFd {
        self.poller.as_raw_fd()
    }
}

/// Which readiness an operation waits for.
fn waits_for(kind: &OpKind) -> Direction {
    match kind {
        OpKind::Send | OpKind::SendTo | OpKind::Connect => Direction::Send,
        _ => Direction::Recv,
    }
}

/// Most arrivals one multishot receive takes per readiness event: a socket
/// with a lot to read yields to the others (it is re-armed and comes round
/// again), and the program sees its data in batches of a bounded size, as
/// the kernel's multishot receive delivers it.
const ARRIVALS_PER_EVENT: usize = 16;

/// Carries out the operations at the head of `queue` while the socket lets
/// them complete.
fn progress(pool: Option<&Arc<BufRing>>, queue: &mut VecDeque<Arc<Op>>, out: &mut Vec<Reaped>) {
    let mut arrivals = 0;
    while let Some(op) = queue.front() {
        match attempt(pool, op) {
            Attempt::Wait => return,
            Attempt::Arrival(lease) => {
                out.push(Reaped::Arrival(op.clone(), lease));
                arrivals += 1;
                if arrivals == ARRIVALS_PER_EVENT {
                    return;
                }
            }
            Attempt::Done(result) => {
                if let Some(op) = queue.pop_front() {
                    out.push(Reaped::Complete(op, result));
                }
            }
        }
    }
}

/// One non-blocking try at `op`.
fn attempt(pool: Option<&Arc<BufRing>>, op: &Op) -> Attempt {
    let Some(socket) = &op.socket else {
        return Attempt::Done(-libc::EBADF);
    };
    let sock = &socket.sock;
    let outcome = match op.kind {
        OpKind::Recv | OpKind::RecvFrom | OpKind::Send | OpKind::SendTo | OpKind::Accept => {
            // SAFETY: a submitted op waiting in this backend's queues is
            // performed by the reaper under the backend's lock (held by our
            // caller); no kernel request holds it (this backend makes none).
            let Some(mut claim) = (unsafe { op.claim_from_backend() }) else {
                return Attempt::Done(-libc::EINVAL);
            };
            claim.with_memory(|parts| match parts {
                // SAFETY: the claim makes the memory this thread's for the
                // call.
                Some(parts) => unsafe { attempt_now(&op.kind, sock, parts) },
                None => Ok(Some(-libc::EINVAL)),
            })
        }
        OpKind::Connect => match sock.take_error() {
            Ok(Some(e)) => Ok(Some(-e.raw_os_error().unwrap_or(libc::ECONNREFUSED))),
            Ok(None) => Ok(Some(0)),
            Err(e) => Err(e),
        },
        OpKind::RecvMulti => return receive_into_pool(pool, sock),
        OpKind::Cancel(_) | OpKind::CancelAll | OpKind::Shutdown(_) => Ok(Some(0)),
    };
    match outcome {
        Ok(Some(result)) => Attempt::Done(result),
        Ok(None) => Attempt::Wait,
        Err(e) => Attempt::Done(-e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// One non-blocking system call for a data operation or an accept:
/// `Ok(None)` when the socket is not ready, else the io_uring-style result.
///
/// # Safety
/// `parts` must describe memory the op owns (as `IoParts` does) that no
/// one else uses during the call.
unsafe fn attempt_now(
    kind: &OpKind,
    sock: &socket2::Socket,
    parts: &mut IoParts,
) -> io::Result<Option<i32>> {
    let stream = matches!(kind, OpKind::Recv | OpKind::Send);
    let single = parts.single().filter(|_| stream);
    // Per the contract, the buffers, header and address buffer are live,
    // owned by the op and unshared for the call: each call below reads or
    // writes only them.
    let transferred = match (kind, single) {
        // SAFETY: `ptr` and `len` describe the op's one buffer (above).
        (OpKind::Recv, Some((ptr, len))) => unsafe { sys::recv_now(sock, ptr, len, 0) },
        // SAFETY: the header and what it points at are the op's (above).
        (OpKind::Recv, None) => unsafe { sys::recvmsg_now(sock, parts.msg_ptr(), 0) },
        // SAFETY: as above.
        (OpKind::RecvFrom, _) => unsafe {
            sys::recvmsg_now(sock, parts.msg_ptr(), libc::MSG_TRUNC)
        },
        // SAFETY: `ptr` and `len` describe the op's one buffer (above).
        (OpKind::Send, Some((ptr, len))) => unsafe {
            sys::send_now(sock, ptr, len, libc::MSG_NOSIGNAL)
        },
        // SAFETY: the header and what it points at are the op's (above).
        (OpKind::Send | OpKind::SendTo, _) => unsafe {
            sys::sendmsg_now(sock, parts.msg_ptr(), libc::MSG_NOSIGNAL)
        },
        (OpKind::Accept, _) => {
            let (addr, len) = parts.addr_ptrs();
            // SAFETY: the address buffer and its length are the op's.
            return unsafe { sys::accept_now(sock, addr, len) };
        }
        _ => return Ok(Some(-libc::EINVAL)),
    };
    let Some(n) = transferred? else {
        return Ok(None);
    };
    // A stream send completes only when every byte is taken, as an
    // overlapped WSASend does; the rest waits for room.
    if let OpKind::Send = kind {
        let remaining = parts.remaining();
        if n < remaining {
            parts.advance(n);
            return Ok(None);
        }
    }
    Ok(Some(n.min(i32::MAX as usize) as i32))
}

/// One arrival of a multishot receive, into a buffer of the ring's pool.
/// Like io_uring, the receive ends with `ENOBUFS` when the pool is dry.
fn receive_into_pool(pool: Option<&Arc<BufRing>>, sock: &socket2::Socket) -> Attempt {
    let Some(pool) = pool else {
        return Attempt::Done(-libc::ENOBUFS);
    };
    let Some((bid, ptr)) = pool.pick() else {
        return Attempt::Done(-libc::ENOBUFS);
    };
    // SAFETY: `pick` handed this thread buffer `bid`, valid for
    // POOL_BUFFER_SIZE bytes, until it is recycled below or by its lease.
    match unsafe { sys::recv_now(sock, ptr, POOL_BUFFER_SIZE, 0) } {
        Ok(Some(n)) if n > 0 => Attempt::Arrival(Lease::new(pool.clone(), bid, n)),
        other => {
            pool.recycle(bid);
            match other {
                Ok(Some(_)) => Attempt::Done(0),
                Ok(None) => Attempt::Wait,
                Err(e) => Attempt::Done(-e.raw_os_error().unwrap_or(libc::EIO)),
            }
        }
    }
}

/// `CancelIoEx` on one waiting operation: 0 if it was waiting (it then
/// completes as cancelled), `-ENOENT` if it already completed.
fn cancel(state: &mut State, target: &Arc<Op>) -> i32 {
    let Some(socket) = &target.socket else {
        return -libc::ENOENT;
    };
    let Some(waiting) = state.sockets.get_mut(&socket.sock.as_raw_fd()) else {
        return -libc::ENOENT;
    };
    for queue in [&mut waiting.readers, &mut waiting.writers] {
        if let Some(at) = queue.iter().position(|op| Arc::ptr_eq(op, target)) {
            if let Some(op) = queue.remove(at) {
                state.ready.push(Reaped::Complete(op, -libc::ECANCELED));
                return 0;
            }
        }
    }
    -libc::ENOENT
}

fn shutdown(sock: &socket2::Socket, how: i32) -> i32 {
    let how = match how {
        libc::SHUT_RD => std::net::Shutdown::Read,
        libc::SHUT_WR => std::net::Shutdown::Write,
        _ => std::net::Shutdown::Both,
    };
    match sock.shutdown(how) {
        Ok(()) => 0,
        Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
    }
}

/// Starts a non-blocking connect: `Some(result)` if it finished at once,
/// `None` if it is in progress (it then waits for writability).
fn start_connect(sock: &socket2::Socket, claim: &mut Claim<'_>) -> io::Result<Option<i32>> {
    sock.set_nonblocking(true)?;
    let started = claim.with_memory(|parts| {
        let (addr, len) = parts?.addr_ptrs();
        // SAFETY: the address buffer and its length belong to the op's
        // header, which the claim makes this thread's for the call.
        Some(unsafe { sys::connect_now(sock, addr, len) })
    });
    let started = started.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok(match started {
        Ok(true) => Some(0),
        Ok(false) => None,
        Err(e) => Some(-e.raw_os_error().unwrap_or(libc::EIO)),
    })
}
