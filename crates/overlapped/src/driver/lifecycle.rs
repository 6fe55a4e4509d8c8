//! The life of an operation: started, queued in its lane or handed to the
//! kernel, completed, cancelled, and what a close does to it (see the
//! [module docs](super) for the steps).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use super::attempt::{outcome_of, sent_outcome, try_now};
use super::buf_ring::Lease;
use super::lanes::{self, Admission, Direction, Next};
use super::op::{self, Op, OpKind, Outcome, Route, Socket};
use super::sys;
use crate::error::{self, ErrorExt};

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
fn submit_request(ring: &dyn Route, request: &Arc<Op>) -> io::Result<()> {
    let claim = request
        .claim()
        .ok_or_else(|| error::invalid_parameter("a request was submitted twice"))?;
    ring.submit(request, claim).map_err(|(e, _)| e)
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

/// One arrival of a multishot receive: to the operation's sink.
pub(crate) fn arrived(op: &Op, lease: Lease) {
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
    submit_request(&**ring, &request)?;
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
    // ring it was made on: cancel there too.
    for ring in socket.rings() {
        let request = Op::new(
            OpKind::CancelAll,
            Some(socket.clone()),
            op::Notify::Silent,
            None,
        );
        if let Err(e) = submit_request(&**ring, &request) {
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
