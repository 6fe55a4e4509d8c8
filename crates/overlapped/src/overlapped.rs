//! `Overlapped` (OVERLAPPED) and `get_overlapped_result`
//! (WSAGetOverlappedResult).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::driver;
use crate::driver::op::{Notify, Op, Outcome};
use crate::error;
use crate::event::Event;

/// The record of one overlapped operation: the `WSAOVERLAPPED` counterpart.
///
/// Like an `OVERLAPPED` whose `hEvent` is set, an `Overlapped` made with
/// [`Overlapped::with_event`] names the [`Event`] that its operation signals
/// when it completes, with success or error. One record serves one operation
/// at a time; starting another while the first is pending is refused with a
/// clear error (Windows leaves that undefined).
///
/// The buffers of an operation move into it when it starts and come back to
/// the record when it completes; read them with [`Overlapped::buffers`] or
/// take them with [`Overlapped::take_buffers`]. `B` is the buffer type
/// (`Vec<u8>` unless you choose another [`crate::IoBuf`]).
///
/// Dropping the record while its operation is pending cancels the
/// operation; the memory it lent to the kernel is freed only after the
/// kernel has let go of it.
pub struct Overlapped<B = Vec<u8>> {
    event: Option<Event>,
    op: Option<Arc<Op>>,
    buffers: Option<Vec<B>>,
}

/// Bytes and flags of a completed operation: what `WSAGetOverlappedResult`
/// writes to `lpcbTransfer` and `lpdwFlags` (and `WSARecvFrom` to `lpFrom`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes received or sent.
    pub bytes: usize,
    /// Receive flags as `recvmsg` reports them in `msg_flags` (Linux
    /// values; [`Transfer::winsock_flags`] gives Winsock's).
    pub flags: u32,
    /// The sender of a datagram, for [`crate::UdpSocket::recv_from`].
    pub source: Option<SocketAddr>,
}

/// Winsock's `MSG_TRUNC`: the datagram was longer than the buffers.
pub const MSG_TRUNC: u32 = 0x0100;
/// Winsock's `MSG_CTRUNC`: the control data was longer than its buffer.
pub const MSG_CTRUNC: u32 = 0x0200;
/// Winsock's `MSG_OOB`: out-of-band data.
pub const MSG_OOB: u32 = 0x0001;

impl Transfer {
    /// Whether a datagram was longer than the buffers (and cut short).
    pub fn is_truncated(&self) -> bool {
        self.flags & libc::MSG_TRUNC as u32 != 0
    }

    /// [`Transfer::flags`] in Winsock's values (`lpFlags`): [`MSG_TRUNC`],
    /// [`MSG_CTRUNC`], [`MSG_OOB`]; Linux-only flags are left out.
    pub fn winsock_flags(&self) -> u32 {
        [
            (libc::MSG_TRUNC, MSG_TRUNC),
            (libc::MSG_CTRUNC, MSG_CTRUNC),
            (libc::MSG_OOB, MSG_OOB),
        ]
        .into_iter()
        .filter(|&(linux, _)| self.flags & linux as u32 != 0)
        .fold(0, |flags, (_, winsock)| flags | winsock)
    }
}

impl From<Outcome> for Transfer {
    fn from(outcome: Outcome) -> Transfer {
        Transfer {
            bytes: outcome.bytes,
            flags: outcome.flags,
            source: outcome.source,
        }
    }
}

/// How an operation started: the two successful returns of
/// `WSARecv`/`WSASend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Started {
    /// It completed at once (the call returned 0): the bytes and flags are
    /// here, and the record's event is already signaled.
    Completed(Transfer),
    /// It is in flight (`WSA_IO_PENDING`, 997): the outcome arrives through
    /// the event and [`get_overlapped_result`]. Nothing was written yet.
    Pending,
}

/// A start that failed (the call returned `SOCKET_ERROR` with an error other
/// than `WSA_IO_PENDING`). The operation never started, so no completion will
/// ever be reported for it; the buffers it was given come back here.
///
/// For an operation started through a completion port, the record given
/// to the start comes back too ([`StartError::into_parts`]).
///
/// It converts into `std::io::Error` with `?`.
pub struct StartError<B, R = ()> {
    error: io::Error,
    buffers: Vec<B>,
    record: Option<R>,
}

impl<B, R> StartError<B, R> {
    pub(crate) fn new(error: io::Error, buffers: Vec<B>) -> StartError<B, R> {
        StartError {
            error,
            buffers,
            record: None,
        }
    }

    pub(crate) fn with_record(mut self, record: Option<R>) -> StartError<B, R> {
        self.record = record;
        self
    }

    /// The reason, the buffers and the record (completion-port starts).
    pub fn into_parts(self) -> (io::Error, Vec<B>, Option<R>) {
        (self.error, self.buffers, self.record)
    }

    /// The reason the operation did not start.
    pub fn error(&self) -> &io::Error {
        &self.error
    }

    /// The buffers given to the failed start.
    pub fn into_buffers(self) -> Vec<B> {
        self.buffers
    }

    /// The reason, dropping the buffers.
    pub fn into_error(self) -> io::Error {
        self.error
    }
}

impl<B, R> fmt::Debug for StartError<B, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartError")
            .field("error", &self.error)
            .field("buffers", &self.buffers.len())
            .finish()
    }
}

impl<B, R> fmt::Display for StartError<B, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the overlapped operation did not start: {}", self.error)
    }
}

impl<B, R> std::error::Error for StartError<B, R> {}

impl<B, R> From<StartError<B, R>> for io::Error {
    fn from(e: StartError<B, R>) -> io::Error {
        e.error
    }
}

impl<B: Send + 'static> Overlapped<B> {
    /// A record with no event (`OVERLAPPED` with `hEvent = NULL`): learn the
    /// outcome with [`Overlapped::result`] or [`get_overlapped_result`].
    pub fn new() -> Overlapped<B> {
        Overlapped {
            event: None,
            op: None,
            buffers: None,
        }
    }

    /// A record whose operations signal `event` when they complete
    /// (`overlapped.hEvent = event`).
    pub fn with_event(event: Event) -> Overlapped<B> {
        Overlapped {
            event: Some(event),
            op: None,
            buffers: None,
        }
    }

    /// The event this record signals, if any.
    pub fn event(&self) -> Option<&Event> {
        self.event.as_ref()
    }

    /// Whether an operation started with this record is still in flight
    /// (`HasOverlappedIoCompleted` is the opposite).
    pub fn is_pending(&self) -> bool {
        self.op.as_ref().is_some_and(|op| !op.is_done())
    }

    /// The outcome of the last operation: `WSAGetOverlappedResult` without
    /// the socket argument.
    ///
    /// - Completed with success: its bytes and flags.
    /// - Completed with an error: that operation's own error (for example
    ///   10054 reset, 995 aborted).
    /// - Still pending and `wait == false`: `WSA_IO_INCOMPLETE` (996).
    /// - `wait == true`: blocks until it completes. (Windows waits on
    ///   `hEvent`; this waits on the operation itself, so an event shared by
    ///   several operations cannot wake it early.)
    /// - No operation was ever started: `WSA_INVALID_PARAMETER` (87).
    ///
    /// Once it completed, its buffers are back in the record.
    pub fn result(&mut self, wait: bool) -> io::Result<Transfer> {
        let op = self.op.as_ref().ok_or_else(|| {
            error::invalid_parameter("no operation was started with this OVERLAPPED")
        })?;
        let outcome = match op.outcome() {
            Some(outcome) => outcome,
            None if wait => op.wait(),
            None => return Err(error::incomplete()),
        };
        self.collect_buffers();
        outcome.into_result().map(Transfer::from)
    }

    /// The buffers of the last operation, once it completed.
    pub fn buffers(&mut self) -> Option<&[B]> {
        self.collect_buffers();
        self.buffers.as_deref()
    }

    /// Takes the buffers of the last operation, once it completed; `None`
    /// while it is pending or if they were taken already.
    pub fn take_buffers(&mut self) -> Option<Vec<B>> {
        self.collect_buffers();
        self.buffers.take()
    }

    fn collect_buffers(&mut self) {
        if let Some(op) = &self.op {
            if let Some(buffers) = op.take_buffers() {
                self.buffers = Some(buffers);
            }
        }
    }

    /// Starts `op` on behalf of this record: the shared part of every
    /// `WSARecv`/`WSASend` flavour.
    pub(crate) fn start(
        &mut self,
        make_op: impl FnOnce(Notify, Vec<B>) -> Arc<Op>,
        buffers: Vec<B>,
    ) -> Result<Started, StartError<B>> {
        if self.is_pending() {
            return Err(StartError::new(
                error::invalid_parameter("this OVERLAPPED still belongs to a pending operation"),
                buffers,
            ));
        }
        let notify = match &self.event {
            Some(event) => Notify::Event(event.signal().clone()),
            None => Notify::Silent,
        };
        let op = make_op(notify, buffers);
        match driver::start(&op) {
            Ok(started) => {
                self.op = Some(op);
                self.buffers = None;
                Ok(match started {
                    Some(outcome) => Started::Completed(outcome.into()),
                    None => Started::Pending,
                })
            }
            Err(error) => Err(StartError::new(error, op.reclaim_buffers())),
        }
    }

    pub(crate) fn current_op(&self) -> Option<&Arc<Op>> {
        self.op.as_ref()
    }
}

impl<B: Send + 'static> Default for Overlapped<B> {
    fn default() -> Self {
        Overlapped::new()
    }
}

impl<B> fmt::Debug for Overlapped<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overlapped")
            .field("event", &self.event)
            .field("pending", &self.op.as_ref().is_some_and(|op| !op.is_done()))
            .finish()
    }
}

impl<B> Drop for Overlapped<B> {
    fn drop(&mut self) {
        if let Some(op) = self.op.take() {
            if !op.is_done() {
                // The kernel may still write into the buffers: cancel, and let
                // the driver free them when the cancellation completes.
                let _ = driver::cancel(&op, false);
            }
        }
    }
}

pub(crate) mod sealed {
    use std::sync::Arc;

    use crate::driver::Socket;

    pub trait Sealed {
        fn driver_socket(&self) -> &Arc<Socket>;
    }
}

/// A socket that overlapped operations run on (a Winsock `SOCKET` created
/// with `WSA_FLAG_OVERLAPPED`). Implemented by this crate's socket types.
pub trait AsOverlappedSocket: sealed::Sealed {}

impl<T: sealed::Sealed> AsOverlappedSocket for T {}

/// The driver's side of one of our sockets.
pub(crate) fn driver_socket<S: sealed::Sealed>(socket: &S) -> &Arc<crate::driver::Socket> {
    socket.driver_socket()
}

/// `WSAGetOverlappedResult(socket, overlapped, &bytes, wait, &flags)`:
/// [`Overlapped::result`], checking that the record's operation was started
/// on `socket` (`WSA_INVALID_PARAMETER` otherwise).
pub fn get_overlapped_result<S, B>(
    socket: &S,
    overlapped: &mut Overlapped<B>,
    wait: bool,
) -> io::Result<Transfer>
where
    S: AsOverlappedSocket + ?Sized,
    B: Send + 'static,
{
    let belongs = overlapped
        .current_op()
        .and_then(|op| op.socket.as_ref())
        .is_some_and(|s| Arc::ptr_eq(s, socket.driver_socket()));
    if overlapped.current_op().is_some() && !belongs {
        return Err(error::invalid_parameter(
            "this OVERLAPPED's operation was started on another socket",
        ));
    }
    overlapped.result(wait)
}
