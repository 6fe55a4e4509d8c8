//! Winsock-style error codes on top of `std::io::Error`.
//!
//! Every fallible call returns `std::io::Error`. Errors the kernel reported
//! keep their errno (so `kind()` and `raw_os_error()` work as usual); errors
//! the model itself defines (pending, incomplete, not found, bad parameter)
//! carry a [`WinsockCode`]. [`ErrorExt::winsock_code`] gives the Winsock
//! number for either, so code ported from Windows reads the same.

use std::fmt;
use std::io;

/// `WSA_INVALID_HANDLE`: closed or bad handle.
pub const WSA_INVALID_HANDLE: u32 = 6;
/// `WSA_INVALID_PARAMETER`: bad argument (for example a wait on 0 events).
pub const WSA_INVALID_PARAMETER: u32 = 87;
/// `WSA_WAIT_TIMEOUT`: a wait expired.
pub const WSA_WAIT_TIMEOUT: u32 = 258;
/// `WSA_WAIT_IO_COMPLETION`: an alertable wait ran completion routines.
pub const WSA_WAIT_IO_COMPLETION: u32 = 0xC0;
/// `WSA_OPERATION_ABORTED`: the operation was cancelled or its socket closed.
pub const WSA_OPERATION_ABORTED: u32 = 995;
/// `WSA_IO_INCOMPLETE`: the operation has not completed yet.
pub const WSA_IO_INCOMPLETE: u32 = 996;
/// `WSA_IO_PENDING`: the operation started and will complete later.
pub const WSA_IO_PENDING: u32 = 997;
/// `ERROR_ABANDONED_WAIT_0`: the completion port was closed while waiting.
pub const ERROR_ABANDONED_WAIT_0: u32 = 735;
/// `ERROR_NOT_FOUND`: there was no pending operation to cancel.
pub const ERROR_NOT_FOUND: u32 = 1168;
/// `WSAEMSGSIZE`: a datagram was larger than the receive buffers.
pub const WSAEMSGSIZE: u32 = 10040;
/// `WSAENOBUFS`: no buffer space; for a multishot receive, its buffer pool
/// ran dry and the receive stopped (start it again).
pub const WSAENOBUFS: u32 = 10055;
/// `WSAECONNABORTED`: the connection was aborted locally.
pub const WSAECONNABORTED: u32 = 10053;
/// `WSAECONNRESET`: the peer reset the connection.
pub const WSAECONNRESET: u32 = 10054;
/// `WSAENOTSOCK`: not a socket — or one already closed.
pub const WSAENOTSOCK: u32 = 10038;
/// `WSAESHUTDOWN`: that direction of the socket was shut down.
pub const WSAESHUTDOWN: u32 = 10058;
/// `WSAETIMEDOUT`: the connection attempt timed out.
pub const WSAETIMEDOUT: u32 = 10060;
/// `WSAENOTCONN`: the socket is not connected.
pub const WSAENOTCONN: u32 = 10057;
/// `WSAECONNREFUSED`: nobody listens at the address.
pub const WSAECONNREFUSED: u32 = 10061;

/// A model-level error with its Winsock code, carried inside `io::Error`.
#[derive(Debug)]
pub struct WinsockCode {
    code: u32,
    message: String,
}

impl WinsockCode {
    /// The Winsock code (for example 996 for `WSA_IO_INCOMPLETE`).
    pub fn code(&self) -> u32 {
        self.code
    }
}

impl fmt::Display for WinsockCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (Winsock error {})", self.message, self.code)
    }
}

impl std::error::Error for WinsockCode {}

/// Reads the Winsock-style code of an error (`WSAGetLastError`).
pub trait ErrorExt {
    /// The Winsock code for this error, when there is a counterpart:
    /// 995 for an aborted operation, 10054 for a reset, and so on.
    fn winsock_code(&self) -> Option<u32>;

    /// What the failed operation transferred all the same, where Windows
    /// fills it in beside the error: the bytes and sender of a datagram
    /// too large for the buffers (`WSAEMSGSIZE`), the bytes a send took
    /// before it failed.
    fn transfer(&self) -> Option<crate::Transfer>;
}

impl ErrorExt for io::Error {
    fn transfer(&self) -> Option<crate::Transfer> {
        let failed = self.get_ref()?.downcast_ref::<FailedTransfer>()?;
        Some(failed.transfer)
    }

    fn winsock_code(&self) -> Option<u32> {
        if let Some(code) = self.get_ref().and_then(|e| e.downcast_ref::<WinsockCode>()) {
            return Some(code.code);
        }
        if let Some(failed) = self
            .get_ref()
            .and_then(|e| e.downcast_ref::<FailedTransfer>())
        {
            return winsock_code_of_errno(failed.errno);
        }
        self.raw_os_error().and_then(winsock_code_of_errno)
    }
}

/// An operation's error with what it transferred all the same (see
/// [`ErrorExt::transfer`]), carried inside `io::Error`.
#[derive(Debug)]
pub struct FailedTransfer {
    errno: i32,
    transfer: crate::Transfer,
}

impl FailedTransfer {
    /// The errno the operation failed with.
    pub fn errno(&self) -> i32 {
        self.errno
    }
}

impl fmt::Display for FailedTransfer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cause = io::Error::from_raw_os_error(self.errno);
        write!(f, "{cause} after {} bytes", self.transfer.bytes)
    }
}

impl std::error::Error for FailedTransfer {}

/// Maps a Linux errno to the Winsock code a Windows program would see.
pub fn winsock_code_of_errno(errno: i32) -> Option<u32> {
    let code = match errno {
        libc::ECANCELED => WSA_OPERATION_ABORTED,
        libc::EBADF | libc::ENOTSOCK => WSAENOTSOCK,
        libc::EINTR => 10004,
        libc::EACCES => 10013,
        libc::EFAULT => 10014,
        libc::EINVAL => 10022,
        libc::EMFILE | libc::ENFILE => 10024,
        libc::EAGAIN => 10035,
        // A non-blocking connect under way: WSAEWOULDBLOCK on Windows
        // (its 10036, WSAEINPROGRESS, means a blocking call is running).
        libc::EINPROGRESS => 10035,
        libc::EALREADY => 10037,
        libc::EDESTADDRREQ => 10039,
        libc::EMSGSIZE => WSAEMSGSIZE,
        libc::EPROTOTYPE => 10041,
        libc::ENOPROTOOPT => 10042,
        libc::EPROTONOSUPPORT => 10043,
        libc::EOPNOTSUPP => 10045,
        libc::EAFNOSUPPORT => 10047,
        libc::EADDRINUSE => 10048,
        libc::EADDRNOTAVAIL => 10049,
        libc::ENETDOWN => 10050,
        libc::ENETUNREACH => 10051,
        libc::ENETRESET => 10052,
        libc::ECONNABORTED | libc::EPIPE => WSAECONNABORTED,
        libc::ECONNRESET => WSAECONNRESET,
        libc::ENOBUFS | libc::ENOMEM => WSAENOBUFS,
        libc::EISCONN => 10056,
        libc::ENOTCONN => WSAENOTCONN,
        libc::ESHUTDOWN => WSAESHUTDOWN,
        libc::ETIMEDOUT => WSAETIMEDOUT,
        libc::ECONNREFUSED => WSAECONNREFUSED,
        libc::EHOSTDOWN => 10064,
        libc::EHOSTUNREACH => 10065,
        _ => return None,
    };
    Some(code)
}

fn with_code(kind: io::ErrorKind, code: u32, message: impl Into<String>) -> io::Error {
    io::Error::new(
        kind,
        WinsockCode {
            code,
            message: message.into(),
        },
    )
}

/// 87: a bad argument.
pub(crate) fn invalid_parameter(message: impl Into<String>) -> io::Error {
    with_code(io::ErrorKind::InvalidInput, WSA_INVALID_PARAMETER, message)
}

/// 996: the operation is still in flight.
pub(crate) fn incomplete() -> io::Error {
    with_code(
        io::ErrorKind::WouldBlock,
        WSA_IO_INCOMPLETE,
        "overlapped I/O is still in progress",
    )
}

/// 995: cancelled, or its socket was closed.
pub(crate) fn aborted() -> io::Error {
    with_code(
        io::ErrorKind::Other,
        WSA_OPERATION_ABORTED,
        "the overlapped operation was aborted by a cancel or by closing its socket",
    )
}

/// 6: a closed handle.
pub(crate) fn invalid_handle(message: impl Into<String>) -> io::Error {
    with_code(io::ErrorKind::InvalidInput, WSA_INVALID_HANDLE, message)
}

/// 735: the completion port closed under a waiter.
pub(crate) fn abandoned() -> io::Error {
    with_code(
        io::ErrorKind::BrokenPipe,
        ERROR_ABANDONED_WAIT_0,
        "the completion port was closed",
    )
}

/// 1168: nothing to cancel.
pub(crate) fn not_found() -> io::Error {
    with_code(
        io::ErrorKind::NotFound,
        ERROR_NOT_FOUND,
        "no pending operation to cancel",
    )
}

/// 10038: the socket was closed (`closesocket` was called on it).
pub(crate) fn closed_socket() -> io::Error {
    with_code(
        io::ErrorKind::NotConnected,
        WSAENOTSOCK,
        "the socket was closed",
    )
}

/// The error of an operation that failed with `errno` after transferring
/// what `transfer` says: reachable through [`ErrorExt::transfer`].
pub(crate) fn with_transfer(errno: i32, transfer: crate::Transfer) -> io::Error {
    let kind = io::Error::from_raw_os_error(errno).kind();
    io::Error::new(kind, FailedTransfer { errno, transfer })
}

/// Turns an errno reported by the kernel for an operation into an error,
/// giving "aborted" its Winsock meaning.
pub(crate) fn from_errno(errno: i32) -> io::Error {
    if errno == libc::ECANCELED {
        aborted()
    } else {
        io::Error::from_raw_os_error(errno)
    }
}
