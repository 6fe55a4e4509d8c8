//! One non-blocking try at an operation, the fast path Windows also takes,
//! and what a kernel's result means for each kind of operation.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use super::op::{Claim, IoParts, OpKind, Outcome};
use super::sys;

/// One non-blocking attempt, the fast path Windows also takes. `Ok(None)`
/// means the kernel must wait for the socket. Called by the thread starting
/// the operation, which holds its lane and, through `claim`, its memory.
pub(super) fn try_now(
    claim: &mut Claim<'_>,
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
    parts: &mut IoParts,
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

pub(super) fn sent_outcome(bytes: usize) -> Outcome {
    Outcome {
        bytes,
        error: None,
        flags: 0,
        source: None,
    }
}

fn recv_outcome(kind: &OpKind, parts: &IoParts, n: usize) -> Outcome {
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

/// What the kernel's `result` means for an operation of `kind`.
pub(super) fn outcome_of(kind: &OpKind, parts: Option<&mut IoParts>, result: i32) -> Outcome {
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
