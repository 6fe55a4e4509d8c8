//! TCP: a listening socket and a connected stream.

use std::io;
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Type};

use super::{cancel, register, sealed, start_recv, start_send, start_with_routine};
use crate::driver::op::{IoParts, OpKind};
use crate::driver::Socket;
use crate::driver::{self, buf::IoBuf, buf::IoBufMut};
use crate::overlapped::{Overlapped, StartError, Started, Transfer};

/// Backlog of pending connections; the kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 4096;

/// A listening TCP socket (`socket` + `bind` + `listen`).
#[derive(Debug)]
pub struct TcpListener {
    sock: socket2::Socket,
}

impl TcpListener {
    /// Creates a socket, binds it to the first address of `addr` that works,
    /// and listens (`socket`, `bind`, `listen(SOMAXCONN)`). The address may be
    /// reused at once after a previous server exits (`SO_REUSEADDR`).
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        TcpListener::bind_shared(addr, false)
    }

    /// As [`TcpListener::bind`], and with `reuse_port` the port may be
    /// shared (`SO_REUSEPORT`): several processes (or listeners) that each
    /// bind it with the option take their share of its connections, which
    /// the kernel spreads over them by a hash of each connection's
    /// addresses. Winsock has no counterpart (`SO_REUSEADDR` there lets a
    /// second socket *steal* a port).
    pub fn bind_shared(addr: impl ToSocketAddrs, reuse_port: bool) -> io::Result<TcpListener> {
        each_address(addr, |addr| {
            let sock =
                socket2::Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            sock.set_reuse_address(true)?;
            if reuse_port {
                sock.set_reuse_port(true)?;
            }
            sock.bind(&addr.into())?;
            sock.listen(LISTEN_BACKLOG)?;
            Ok(TcpListener { sock })
        })
    }

    /// Waits for a connection and returns it with the peer's address (`accept`).
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (sock, addr) = loop {
            match self.sock.accept() {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        let peer = addr.as_socket().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "peer is not an IP address")
        })?;
        Ok((TcpStream::from_socket(sock)?, peer))
    }

    /// The address the listener is bound to (`getsockname`).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        socket_addr(self.sock.local_addr()?)
    }

    pub(crate) fn into_socket(self) -> socket2::Socket {
        self.sock
    }
}

/// A connected TCP socket that runs overlapped receives and sends.
///
/// Dropping it, or calling [`TcpStream::close`], is `closesocket`: every
/// operation still pending on it completes with `WSA_OPERATION_ABORTED`
/// (995) through its event. The descriptor is released once the kernel has
/// let go of the last of them.
#[derive(Debug)]
pub struct TcpStream {
    socket: Arc<Socket>,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket").field("sock", &self.sock).finish()
    }
}

/// The socket's descriptor, borrowed (Winsock's `SOCKET` handle): for
/// options this crate does not wrap (`socket2::SockRef::from(&stream)`),
/// or to peek and poll. Operations own the stream's data: reading or
/// writing through the descriptor races them.
impl AsFd for TcpStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.sock.as_fd()
    }
}

impl TcpStream {
    /// Connects to the first address of `addr` that accepts (`connect`).
    /// A refused connection is `ECONNREFUSED` (Winsock 10061).
    pub fn connect(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        each_address(addr, |addr| {
            let sock =
                socket2::Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            sock.connect(&addr.into())?;
            TcpStream::from_socket(sock)
        })
    }

    /// Like [`TcpStream::connect`], giving up after `timeout`.
    pub fn connect_timeout(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let sock = socket2::Socket::new(
            Domain::for_address(*addr),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        sock.connect_timeout(&(*addr).into(), timeout)
            .map_err(|e| match (e.kind(), e.raw_os_error()) {
                // Expiry carries no errno; Windows reports WSAETIMEDOUT.
                (io::ErrorKind::TimedOut, None) => io::Error::from_raw_os_error(libc::ETIMEDOUT),
                _ => e,
            })?;
        TcpStream::from_socket(sock)
    }

    /// Takes over a connected `std` stream.
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        stream.set_nonblocking(false)?;
        TcpStream::from_socket(stream.into())
    }

    /// Wraps a connection the driver accepted on `ring`.
    pub(crate) fn from_accepted(
        fd: std::os::fd::OwnedFd,
        ring: Arc<crate::driver::ring::Ring>,
    ) -> TcpStream {
        TcpStream {
            socket: Socket::new(socket2::Socket::from(fd), ring),
        }
    }

    /// Wraps a socket about to be connected by the driver (`ConnectEx`).
    pub(crate) fn from_unconnected(sock: socket2::Socket) -> io::Result<TcpStream> {
        TcpStream::from_socket(sock)
    }

    fn from_socket(sock: socket2::Socket) -> io::Result<TcpStream> {
        Ok(TcpStream {
            socket: register(sock)?,
        })
    }

    /// Starts a receive into `buffers` (`WSARecv`).
    ///
    /// The buffers are filled in order with no gaps; each buffer's `len()` is
    /// its receive window. The receive completes when data arrives, possibly
    /// filling less than all of it; with 0 bytes when the peer closed its
    /// side; with `WSAECONNRESET` (10054) when the peer reset. Several
    /// receives on one socket are filled in the order they were started.
    ///
    /// Returns [`Started::Completed`] when data was already there (the event
    /// is then signaled too) or [`Started::Pending`] (997) otherwise; on a
    /// start error no completion will ever be reported and the buffers come
    /// back in the [`StartError`].
    pub fn recv<B: IoBufMut>(
        &self,
        overlapped: &mut Overlapped<B>,
        buffers: Vec<B>,
    ) -> Result<Started, StartError<B>> {
        start_recv(&self.socket, OpKind::Recv, overlapped, buffers)
    }

    /// Starts a send of every byte of `buffers`, in order (`WSASend`).
    ///
    /// It completes once the kernel has taken all the bytes (not when the
    /// peer got them). Several sends on one socket are transmitted in the
    /// order they were started, never interleaved.
    pub fn send<B: IoBuf>(
        &self,
        overlapped: &mut Overlapped<B>,
        buffers: Vec<B>,
    ) -> Result<Started, StartError<B>> {
        start_send(&self.socket, OpKind::Send, None, overlapped, buffers)
    }

    /// Starts a receive whose outcome goes to a completion routine
    /// (`WSARecv` with `lpCompletionRoutine`), with the same semantics as
    /// [`TcpStream::recv`].
    ///
    /// `routine` gets the outcome and the buffers back. It runs on this
    /// thread only, inside an alertable wait ([`crate::sleep_ex`] or
    /// [`crate::wait_for_multiple_events`] with `alertable`), even when the
    /// receive completed at once. It may start new operations. Closing the
    /// socket runs it with `WSA_OPERATION_ABORTED` (995).
    pub fn recv_with_routine<B, F>(
        &self,
        buffers: Vec<B>,
        routine: F,
    ) -> Result<Started, StartError<B>>
    where
        B: IoBufMut,
        F: FnOnce(io::Result<Transfer>, Vec<B>) + 'static,
    {
        start_with_routine(
            &self.socket,
            OpKind::Recv,
            IoParts::for_recv(buffers),
            routine,
        )
    }

    /// Starts a send whose outcome goes to a completion routine (`WSASend`
    /// with `lpCompletionRoutine`); see [`TcpStream::recv_with_routine`].
    pub fn send_with_routine<B, F>(
        &self,
        buffers: Vec<B>,
        routine: F,
    ) -> Result<Started, StartError<B>>
    where
        B: IoBuf,
        F: FnOnce(io::Result<Transfer>, Vec<B>) + 'static,
    {
        start_with_routine(
            &self.socket,
            OpKind::Send,
            IoParts::for_send(buffers),
            routine,
        )
    }

    /// Cancels the operation of `overlapped` on this socket (`CancelIoEx`).
    ///
    /// The operation then completes with `WSA_OPERATION_ABORTED` (995)
    /// through its event. `ERROR_NOT_FOUND` (1168) when nothing is pending:
    /// nothing was started, it already completed, or it completed while the
    /// cancel was on its way (its outcome is then the normal one).
    pub fn cancel<B: Send + 'static>(&self, overlapped: &Overlapped<B>) -> io::Result<()> {
        cancel(&self.socket, overlapped)
    }

    /// Cancels every operation pending on this socket, whatever notifies
    /// it — event, completion routine or completion port
    /// (`CancelIoEx(s, NULL)`); the socket stays open. Each completes with
    /// `WSA_OPERATION_ABORTED` (995); `ERROR_NOT_FOUND` (1168) when none
    /// was pending.
    pub fn cancel_all(&self) -> io::Result<()> {
        driver::cancel_all(&self.socket)
    }

    /// Shuts down one or both directions (`shutdown`); `Shutdown::Write`
    /// sends FIN after the data already queued.
    ///
    /// As on Windows, a later send after `Shutdown::Write` (or a receive
    /// after `Shutdown::Read`) fails at once with `WSAESHUTDOWN` (10058).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.socket.sock.shutdown(how)?;
        self.socket.note_shutdown(how);
        Ok(())
    }

    /// Closes the socket (`closesocket`); the same as dropping it.
    pub fn close(self) {}

    /// Sets `SO_LINGER`; `Some(Duration::ZERO)` makes close send a reset.
    pub fn set_linger(&self, linger: Option<Duration>) -> io::Result<()> {
        self.socket.sock.set_linger(linger)
    }

    /// Sets `TCP_NODELAY`.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.socket.sock.set_nodelay(nodelay)
    }

    /// The local address (`getsockname`).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        socket_addr(self.socket.sock.local_addr()?)
    }

    /// The peer's address (`getpeername`).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        socket_addr(self.socket.sock.peer_addr()?)
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        driver::close(&self.socket);
    }
}

impl sealed::Sealed for TcpStream {
    fn driver_socket(&self) -> &Arc<Socket> {
        &self.socket
    }
}

pub(super) fn socket_addr(addr: socket2::SockAddr) -> io::Result<SocketAddr> {
    addr.as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP socket address"))
}

/// Runs `f` on each address of `addr` until one succeeds; the last error
/// otherwise.
pub(super) fn each_address<T>(
    addr: impl ToSocketAddrs,
    mut f: impl FnMut(SocketAddr) -> io::Result<T>,
) -> io::Result<T> {
    let mut last = None;
    for addr in addr.to_socket_addrs()? {
        match f(addr) {
            Ok(t) => return Ok(t),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to use")))
}
