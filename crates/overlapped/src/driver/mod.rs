//! The proactor: starts operations, owns them while the kernel does, and
//! turns kernel completions into the model's notifications.
//!
//! All `unsafe` code of the crate lives under this module. The operation
//! model ([`op`], [`socket`]) and the [`ring`] that reaps completions are
//! backend-neutral; [`uring`] (io_uring) or [`epoll`] (readiness, for hosts
//! without io_uring) carries the operations out.
//!
//! Life of an operation:
//! 1. The model builds an [`Op`] holding its buffers ([`op::IoParts`]).
//! 2. [`start`] takes the socket's lane for its direction (or queues behind
//!    the operation that has it, see [`lanes`]) and claims the operation's
//!    memory ([`op::Claim`]); it tries the call once without blocking, as
//!    Windows does: if the data (or buffer space) is there, the operation
//!    completes at once. Otherwise it goes to the kernel, and the starter
//!    asks the lanes whether the socket began closing meanwhile (then it
//!    cancels what it submitted: nothing starts on a closing socket).
//! 3. The backend's reaper calls [`complete`], which records the outcome,
//!    signals the event or delivers to the sink, and hands the next queued
//!    operation of that direction to the kernel.
//!
//! `docs/design.md` ("Promises held by code") lists the invariants and the
//! code that enforces each.

#![allow(unsafe_code)]

pub mod backend;
pub(crate) mod buf;
pub(crate) mod buf_ring;
pub(crate) mod epoll;
#[cfg(all(test, not(loom)))]
pub(crate) mod fault;
pub(crate) mod hand_over;
pub(crate) mod lanes;
pub(crate) mod op;
pub(crate) mod pool_tail;
pub(crate) mod ring;
pub(crate) mod signal;
pub(crate) mod socket;
pub(crate) mod sync;
pub(crate) mod sys;
#[cfg(all(test, not(loom)))]
mod tests;
pub(crate) mod uring;

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use lanes::{Admission, Direction, Next};
use op::{Op, OpKind, Outcome};
use socket::Socket;

use crate::error::{self, ErrorExt};

/// The ring sockets use until they are associated with a completion port,
/// created on first use.
pub(crate) fn backend() -> io::Result<&'static Arc<ring::Ring>> {
    ring::Ring::global()
}

/// Starts `op`: `Ok(Some(outcome))` when it completed at once (its event is
/// then already signaled), `Ok(None)` when it is pending, `Err` when it could
/// not start (then nothing will ever be reported for it).
pub(crate) fn start(op: &Arc<Op>) -> io::Result<Option<Outcome>> {
    let Some(socket) = &op.socket else {
        return Err(error::invalid_parameter("not a socket operation"));
    };
    op.reset_notification()?;
    refuse_on(socket, &op.kind)?;
    let ring = socket.ring();
    if ring.is_retired() {
        return Err(error::invalid_handle(
            "the socket's completion port is closed",
        ));
    }
    if op.kind.is_unordered() {
        return start_unordered(op, socket);
    }
    let Some(direction) = op.kind.direction() else {
        return Err(error::invalid_parameter("not a socket data operation"));
    };
    match socket.enter_lane(direction, op) {
        Admission::Go => {}
        Admission::Queued => return Ok(None),
        Admission::Closing => return Err(error::closed_socket()),
    }
    let Some(mut claim) = op.claim() else {
        leave_lane(socket, direction);
        return Err(error::invalid_parameter(
            "the operation was started already",
        ));
    };
    // Inside a batch the kernel gets every operation: its own first attempt
    // costs nothing extra there, while ours would cost a system call.
    if !ring.is_batching() {
        match try_now(&mut claim, &op.kind, &socket.sock) {
            Ok(None) => {}
            Ok(Some(outcome)) if outcome.error.is_none() => {
                op.finish_claimed(claim, |_| outcome);
                leave_lane(socket, direction);
                return Ok(Some(outcome));
            }
            Ok(Some(failed)) => {
                // It failed at once (a datagram too large for the buffers):
                // as on Windows, the call fails and nothing is reported
                // later; the error keeps what it received, the buffers
                // (given back with it) hold it.
                drop(claim);
                leave_lane(socket, direction);
                let errno = failed.error.unwrap_or(libc::EIO);
                return Err(error::with_transfer(errno, failed.into()));
            }
            Err(e) => {
                drop(claim);
                leave_lane(socket, direction);
                if e.raw_os_error() == Some(libc::ECONNRESET) {
                    socket.note_reset();
                }
                return Err(e);
            }
        }
    }
    if let Err((e, mut claim)) = submit(socket, op, claim) {
        let sent_early = claim.with_memory(|parts| parts.map_or(0, |p| p.sent_early));
        if sent_early > 0 {
            // Part of it went out on the fast path: it did start, and
            // completes now with what it sent and the error.
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            op.finish_claimed(claim, |_| Outcome {
                bytes: sent_early,
                ..Outcome::failed(errno)
            });
            leave_lane(socket, direction);
            return Ok(None);
        }
        drop(claim);
        leave_lane(socket, direction);
        return Err(e);
    }
    cancel_if_closed_meanwhile(socket, op);
    Ok(None)
}

/// Hands `op`, whose memory `claim` holds, to the ring its socket's
/// operations go to now, and notes which one that was, for a cancel. On
/// failure the op was not submitted, and the claim comes back.
fn submit<'a>(
    socket: &Socket,
    op: &'a Arc<Op>,
    claim: op::Claim<'a>,
) -> Result<(), (io::Error, op::Claim<'a>)> {
    let moved = socket.is_moved();
    op.note_ring(moved);
    socket.ring_of(moved).submit(op, claim)
}

/// `op` was just handed to the kernel: if its socket began closing
/// meanwhile, the close's cancel may have gone first and missed it, so
/// cancel it now (see `lanes`: nothing starts on a closing socket).
fn cancel_if_closed_meanwhile(socket: &Socket, op: &Arc<Op>) {
    if socket.still_open() {
        return;
    }
    if let Err(e) = cancel(op, false) {
        if e.winsock_code() != Some(error::ERROR_NOT_FOUND) {
            tracing::error!("cannot cancel an operation started as its socket closed: {e}");
        }
    }
}

/// Refuses to start an operation the socket can no longer carry out, with
/// the error Windows gives: 10038 once it is closed, 10054 for good once
/// the peer reset it, 10058 in a direction the program shut down.
fn refuse_on(socket: &Socket, kind: &OpKind) -> io::Result<()> {
    if socket.is_closing() {
        return Err(error::closed_socket());
    }
    let direction = match kind {
        OpKind::RecvMulti => Some(Direction::Recv),
        kind => kind.direction(),
    };
    if direction.is_some() && socket.was_reset() {
        return Err(io::Error::from_raw_os_error(libc::ECONNRESET));
    }
    if direction.is_some_and(|d| socket.is_shut(d)) {
        return Err(io::Error::from_raw_os_error(libc::ESHUTDOWN));
    }
    Ok(())
}

/// Starts an operation that takes no lane: several may be in the kernel.
fn start_unordered(op: &Arc<Op>, socket: &Socket) -> io::Result<Option<Outcome>> {
    let Some(claim) = op.claim() else {
        return Err(error::invalid_parameter(
            "the operation was started already",
        ));
    };
    if !socket.enter_unordered() {
        return Err(error::closed_socket());
    }
    if let OpKind::RecvMulti = op.kind {
        socket.set_multishot(op);
    }
    if let Err((e, claim)) = submit(socket, op, claim) {
        drop(claim);
        socket.leave_unordered();
        return Err(e);
    }
    cancel_if_closed_meanwhile(socket, op);
    Ok(None)
}

/// Submits a request that names no memory of its own (a cancel).
fn submit_request(ring: &ring::Ring, request: &Arc<Op>) -> io::Result<()> {
    let claim = request
        .claim()
        .ok_or_else(|| error::invalid_parameter("a request was submitted twice"))?;
    ring.submit(request, claim).map_err(|(e, _)| e)
}

/// One non-blocking attempt, the fast path Windows also takes. `Ok(None)`
/// means the kernel must wait for the socket. Called by the thread starting
/// the operation, which holds its lane and, through `claim`, its memory.
fn try_now(
    claim: &mut op::Claim<'_>,
    kind: &OpKind,
    sock: &socket2::Socket,
) -> io::Result<Option<Outcome>> {
    let attempt = claim.with_memory(|parts| parts.map(|parts| attempt_now(kind, sock, parts)));
    attempt.transpose().map(Option::flatten)
}

/// [`try_now`] on the operation's memory, which the calling thread owns.
fn attempt_now(
    kind: &OpKind,
    sock: &socket2::Socket,
    parts: &mut op::IoParts,
) -> io::Result<Option<Outcome>> {
    let stream = matches!(kind, OpKind::Recv | OpKind::Send);
    match kind {
        OpKind::Recv | OpKind::RecvFrom => {
            let flags = recv_flags(kind);
            let received = match parts.single().filter(|_| stream) {
                // SAFETY: the buffer (or header, iovecs and address) belongs
                // to the op's IoParts, live and owned by this thread.
                Some((ptr, len)) => unsafe { sys::recv_now(sock, ptr, len, flags) },
                // SAFETY: as above, for the header and everything it points at.
                None => unsafe { sys::recvmsg_now(sock, parts.msg_ptr(), flags) },
            };
            Ok(received?.map(|n| recv_outcome(kind, parts, n)))
        }
        OpKind::Send | OpKind::SendTo => {
            let flags = libc::MSG_NOSIGNAL;
            let sent = match parts.single().filter(|_| stream) {
                // SAFETY: as above; the kernel only reads during the call.
                Some((ptr, len)) => unsafe { sys::send_now(sock, ptr, len, flags) },
                // SAFETY: as above, for the header and everything it points at.
                None => unsafe { sys::sendmsg_now(sock, parts.msg_ptr(), flags) },
            };
            Ok(match sent? {
                Some(n) if n >= parts.total => Some(sent_outcome(n)),
                Some(n) => {
                    parts.advance(n);
                    None
                }
                None => None,
            })
        }
        _ => Ok(None),
    }
}

fn recv_flags(kind: &OpKind) -> i32 {
    match kind {
        // With MSG_TRUNC the kernel reports a datagram's real length, which
        // tells us it did not fit (Winsock's WSAEMSGSIZE).
        OpKind::RecvFrom => libc::MSG_TRUNC,
        _ => 0,
    }
}

fn sent_outcome(bytes: usize) -> Outcome {
    Outcome {
        bytes,
        error: None,
        flags: 0,
        source: None,
    }
}

fn recv_outcome(kind: &OpKind, parts: &op::IoParts, n: usize) -> Outcome {
    let mut outcome = Outcome {
        bytes: n,
        error: None,
        flags: parts.msg_flags(),
        source: None,
    };
    if let OpKind::RecvFrom = kind {
        outcome.source = parts.source();
        if n > parts.total {
            outcome.bytes = parts.total;
            outcome.error = Some(libc::EMSGSIZE);
        }
    }
    outcome
}

/// Called by the backend with each completion the kernel posted. An
/// operation of a socket closed before it completed reports "aborted",
/// as every operation pending at `closesocket` does on Windows — even
/// one the close's own shutdown ended first.
pub(crate) fn complete(op: Arc<Op>, result: i32) {
    let result = remembering_a_reset(&op, result);
    let closed = op.kind.is_io() && op.socket.as_ref().is_some_and(|s| s.is_closing());
    if closed && matches!(op.kind, OpKind::Accept) && result >= 0 {
        // SAFETY: a successful accept's result is a new descriptor that
        // nothing else owns; dropping it closes the connection it accepted.
        drop(unsafe { OwnedFd::from_raw_fd(result) });
    }
    let result = if closed { -libc::ECANCELED } else { result };
    if let (OpKind::Send, Ok(sent @ 1..)) = (&op.kind, usize::try_from(result)) {
        if send_the_rest(&op, sent) {
            return;
        }
    }
    // SAFETY: the backend calls this with the final completion of the
    // operation's request: it let go of the memory.
    unsafe { op.finish_from_backend(|parts| outcome_of(&op.kind, parts, result)) };
    let Some(socket) = &op.socket else { return };
    if let Some(direction) = op.kind.direction() {
        leave_lane(socket, direction);
    } else if op.kind.is_unordered() {
        socket.leave_unordered();
    }
}

/// A reset is reported to every later call, as on Windows ("the socket is
/// no longer usable"), where the kernel reports it once: the receive after
/// it reads the end of the stream, the send after it `EPIPE`.
fn remembering_a_reset(op: &Op, result: i32) -> i32 {
    let Some(socket) = op.socket.as_ref().filter(|_| op.kind.direction().is_some()) else {
        return result;
    };
    if result == -libc::ECONNRESET {
        socket.note_reset();
        return result;
    }
    let after_reset = match op.kind.direction() {
        Some(Direction::Recv) => result == 0,
        _ => result == -libc::EPIPE,
    };
    if after_reset && socket.was_reset() {
        -libc::ECONNRESET
    } else {
        result
    }
}

/// A stream send completes only once every byte is taken, as an
/// overlapped `WSASend` does; the kernel takes at most about 2 GiB per
/// request (`MAX_RW_COUNT`), so a larger send is handed to it again for
/// the rest. Whether it was (the op is then the kernel's again, or done).
fn send_the_rest(op: &Arc<Op>, sent: usize) -> bool {
    let Some(socket) = &op.socket else {
        return false;
    };
    // SAFETY: the kernel posted the request's final completion, which this
    // thread handles: it let go of the memory.
    let Some(mut claim) = (unsafe { op.claim_from_backend() }) else {
        return false;
    };
    let more = claim.with_memory(|parts| match parts {
        Some(parts) if parts.remaining() > sent => {
            parts.advance(sent);
            true
        }
        _ => false,
    });
    if !more {
        return false;
    }
    match submit(socket, op, claim) {
        Ok(()) => cancel_if_closed_meanwhile(socket, op),
        Err((e, claim)) => {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            op.finish_claimed(claim, |parts| Outcome {
                bytes: parts.map_or(0, |p| p.sent_early),
                ..Outcome::failed(errno)
            });
            if let Some(direction) = op.kind.direction() {
                leave_lane(socket, direction);
            }
        }
    }
    true
}

/// What the kernel's `result` means for an operation of `kind`.
fn outcome_of(kind: &OpKind, parts: Option<&mut op::IoParts>, result: i32) -> Outcome {
    match kind {
        OpKind::Cancel(_) | OpKind::CancelAll => {
            if result < 0 {
                Outcome::failed(-result)
            } else {
                sent_outcome(0)
            }
        }
        _ if result < 0 => Outcome::failed(-result),
        OpKind::Recv | OpKind::RecvFrom => match parts {
            Some(parts) => recv_outcome(kind, parts, result as usize),
            None => sent_outcome(result as usize),
        },
        OpKind::Send | OpKind::SendTo => {
            sent_outcome(parts.map_or(0, |p| p.sent_early) + result as usize)
        }
        OpKind::Accept => {
            // SAFETY: a successful accept's result is a new descriptor that
            // nothing else owns.
            let accepted = unsafe { OwnedFd::from_raw_fd(result) };
            match parts {
                Some(parts) => {
                    parts.accepted = Some(accepted);
                    Outcome {
                        source: parts.source(),
                        ..sent_outcome(0)
                    }
                }
                // No memory to hold it: dropping it closes the connection
                // rather than leaking it.
                None => Outcome::aborted(),
            }
        }
        OpKind::Connect | OpKind::Shutdown(_) => sent_outcome(0),
        // The data, if any, went out as an arrival; a receive that ends with
        // data in hand stopped on its own and may be started again.
        OpKind::RecvMulti if result > 0 => Outcome::failed(libc::ENOBUFS),
        OpKind::RecvMulti => sent_outcome(0),
    }
}

/// One arrival of a multishot receive: to the operation's sink.
pub(crate) fn arrived(op: &Op, lease: buf_ring::Lease) {
    let bytes = lease.bytes().len();
    op.deliver_arrival(sent_outcome(bytes), lease);
}

/// The operation that had the lane of `direction` is no longer in the
/// kernel: hands the kernel the next one waiting there, or frees the lane.
fn leave_lane(socket: &Socket, direction: Direction) {
    socket.leave_lane(direction, |next| match next {
        Next::Idle => true,
        Next::Op { op, closing: true } => {
            op.finish_idle(Outcome::aborted());
            false
        }
        Next::Op { op, .. } => {
            let Some(claim) = op.claim() else {
                // Finished already (a cancel took it out of the lane).
                return false;
            };
            match submit(socket, &op, claim) {
                Ok(()) => {
                    cancel_if_closed_meanwhile(socket, &op);
                    true
                }
                Err((e, claim)) => {
                    // It was reported pending, so it must complete: with
                    // this error.
                    let errno = e.raw_os_error().unwrap_or(libc::EIO);
                    op.finish_claimed(claim, |_| Outcome::failed(errno));
                    false
                }
            }
        }
    });
}

/// `CancelIoEx` for one operation. With `wait`, blocks until the kernel has
/// answered, so a lost race is reported as "not found".
pub(crate) fn cancel(target: &Arc<Op>, wait: bool) -> io::Result<()> {
    let Some(socket) = &target.socket else {
        return Err(error::not_found());
    };
    if target.is_done() {
        return Err(error::not_found());
    }
    if let Some(direction) = target.kind.direction().filter(|_| target.is_idle()) {
        // Still waiting behind another operation: the kernel never saw it.
        if socket.unqueue(direction, target) {
            target.finish_idle(Outcome::aborted());
            return Ok(());
        }
    }
    let request = Op::new(
        OpKind::Cancel(target.clone()),
        None,
        op::Notify::Silent,
        None,
    );
    // To the ring the target went to: the socket may have joined a port
    // since.
    let ring = socket.ring_of(target.on_moved_ring());
    submit_request(ring, &request)?;
    if !wait {
        return Ok(());
    }
    // Waiting inside a batch would wait for a request still held back.
    ring.flush()?;
    match request.wait().error {
        None | Some(libc::EALREADY) => Ok(()),
        Some(libc::ENOENT) => Err(error::not_found()),
        Some(errno) => Err(error::from_errno(errno)),
    }
}

/// `CancelIoEx` on the socket's running multishot receive, without waiting:
/// its final completion reports "aborted" once the kernel lets go of it.
/// "Not found" when none is running.
pub(crate) fn cancel_multishot(socket: &Socket) -> io::Result<()> {
    let running = socket.running_multishot();
    match running {
        Some(op) => cancel(&op, false),
        None => Err(error::not_found()),
    }
}

/// `closesocket`: nothing more starts, the connection ends at once (a FIN
/// after what was sent, or a reset under `SO_LINGER` zero, as on Windows),
/// queued operations complete with "aborted" now, and those in the kernel
/// are cancelled and complete with "aborted" when the kernel lets go of
/// them. The descriptor itself closes when the last of them has
/// completed; until then its number stays taken, but the connection is
/// gone.
///
/// `false` if the socket was closed already (Windows: `WSAENOTSOCK`).
pub(crate) fn close(socket: &Arc<Socket>) -> bool {
    let lanes::Closed {
        waiting,
        in_kernel,
        again,
    } = socket.close();
    if again {
        return false;
    }
    end_connection(&socket.sock);
    for op in waiting {
        op.finish_idle(Outcome::aborted());
    }
    if !in_kernel {
        return true;
    }
    cancel_everything_in_the_kernel(socket);
    true
}

/// Asks every ring that may hold requests of `socket` to cancel them all
/// (`ASYNC_CANCEL` by descriptor).
fn cancel_everything_in_the_kernel(socket: &Arc<Socket>) {
    // Operations started before the socket joined a port are still in the
    // process-wide ring: cancel there too.
    let mut rings = vec![socket.ring().clone()];
    if let Ok(global) = backend() {
        if !Arc::ptr_eq(global, &rings[0]) {
            rings.push(global.clone());
        }
    }
    for ring in rings {
        let request = Op::new(
            OpKind::CancelAll,
            Some(socket.clone()),
            op::Notify::Silent,
            None,
        );
        if let Err(e) = submit_request(&ring, &request) {
            tracing::error!("cannot cancel the operations of a socket: {e}");
        }
    }
}

/// `CancelIoEx(s, NULL)`: every operation pending on the socket — waiting
/// in its lanes, or in the kernel — completes with "aborted"; the socket
/// stays open. "Not found" (1168) when none is pending.
pub(crate) fn cancel_all(socket: &Arc<Socket>) -> io::Result<()> {
    let lanes::Closed {
        waiting, in_kernel, ..
    } = socket.take_waiting();
    if waiting.is_empty() && !in_kernel {
        return Err(error::not_found());
    }
    for op in waiting {
        op.finish_idle(Outcome::aborted());
    }
    if in_kernel {
        cancel_everything_in_the_kernel(socket);
    }
    Ok(())
}

/// Ends the connection of a socket being closed, without closing its
/// descriptor, which in-flight requests still hold: io_uring would keep a
/// connection open for as long as a request holds its file.
fn end_connection(sock: &socket2::Socket) {
    let ended = match sock.linger() {
        Ok(Some(linger)) if linger.is_zero() => sys::abort_connection(sock),
        _ => sock.shutdown(std::net::Shutdown::Both),
    };
    match ended.as_ref().map_err(io::Error::raw_os_error) {
        // Not connected (a listener, a datagram socket, a connect that has
        // not finished) or already reset: nothing to end.
        Ok(()) | Err(Some(libc::ENOTCONN | libc::EINVAL)) => {}
        Err(_) => tracing::debug!("closing a socket: {:?}", ended),
    }
}
