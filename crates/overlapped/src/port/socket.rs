//! Sockets associated with a completion port.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;

use socket2::{Domain, Protocol, Type};

use super::CompletionPort;
use crate::driver::op::{IoParts, Op, OpKind};
use crate::driver::Socket;
use crate::driver::{self, buf::IoBuf, buf::IoBufMut};
use crate::net::{TcpListener, TcpStream};
use crate::overlapped::{StartError, Started};

/// Associating sockets with a port (`CreateIoCompletionPort` with a socket).
impl<T: Send + 'static> CompletionPort<T> {
    /// Associates a connected socket with the port under `key`
    /// (`CreateIoCompletionPort(socket, port, key, 0)`): every operation on
    /// the returned stream reports here.
    pub fn associate(&self, stream: TcpStream, key: u64) -> PortStream<T> {
        PortStream::new(stream, self.clone(), key)
    }

    /// Associates a listening socket with the port under `key`, for
    /// overlapped accepts ([`PortListener::accept`]).
    pub fn associate_listener(
        &self,
        listener: TcpListener,
        key: u64,
    ) -> io::Result<PortListener<T>> {
        PortListener::new(listener, self.clone(), key)
    }

    /// Starts an overlapped connect (`ConnectEx`) on a new socket associated
    /// with the port under `key`. The stream comes back at once; the packet
    /// carrying `record` reports whether the connection was made.
    pub fn connect(
        &self,
        addr: SocketAddr,
        key: u64,
        record: T,
    ) -> Result<PortStream<T>, (io::Error, T)> {
        PortStream::connect(self.clone(), addr, key, record)
    }
}

/// A TCP stream associated with a completion port: its receives, sends and
/// disconnect report to the port as packets carrying a record `T`.
///
/// Dropping it, or [`PortStream::close`], is `closesocket`: operations in
/// flight complete with `WSA_OPERATION_ABORTED` (995) through the port.
#[derive(Debug)]
pub struct PortStream<T> {
    stream: TcpStream,
    port: CompletionPort<T>,
    key: u64,
}

impl<T: Send + 'static> PortStream<T> {
    pub(super) fn new(stream: TcpStream, port: CompletionPort<T>, key: u64) -> PortStream<T> {
        crate::net::driver_socket(&stream).move_to(port.ring().clone());
        PortStream { stream, port, key }
    }

    pub(super) fn connect(
        port: CompletionPort<T>,
        addr: SocketAddr,
        key: u64,
        record: T,
    ) -> Result<PortStream<T>, (io::Error, T)> {
        let made =
            socket2::Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
                .and_then(TcpStream::from_unconnected);
        let stream = match made {
            Ok(stream) => PortStream::new(stream, port, key),
            Err(e) => return Err((e, record)),
        };
        stream.start_connect(addr, record)?;
        Ok(stream)
    }

    /// Starts an overlapped connect (`ConnectEx`) of this stream, which is
    /// not connected yet; the packet carrying `record` reports the outcome.
    pub(crate) fn start_connect(
        &self,
        addr: SocketAddr,
        record: T,
    ) -> Result<Started, (io::Error, T)> {
        let parts = IoParts::for_address(Some(addr)).with_record(record);
        self.start(OpKind::Connect, parts)
            .map_err(|(e, mut parts)| {
                let record = parts.take_record::<T>();
                (e, record.expect("an unstarted connect keeps its record"))
            })
    }

    /// Starts a receive (`WSARecv` on an associated socket); the packet
    /// carries `record` and the buffers. Even a receive that completes at
    /// once queues its packet, as on Windows.
    pub fn recv<B: IoBufMut>(
        &self,
        buffers: Vec<B>,
        record: T,
    ) -> Result<Started, StartError<B, T>> {
        self.start_io(OpKind::Recv, IoParts::for_recv(buffers).with_record(record))
    }

    /// Starts a send of every byte of `buffers`, gathered (`WSASend`).
    pub fn send<B: IoBuf>(&self, buffers: Vec<B>, record: T) -> Result<Started, StartError<B, T>> {
        self.start_io(OpKind::Send, IoParts::for_send(buffers).with_record(record))
    }

    /// Keeps a receive posted (a multishot receive with a buffer pool; no
    /// Winsock counterpart): every arrival is a packet with no record whose
    /// bytes are in [`super::Completion::received`], taken from a pool of
    /// buffers the port shares among its sockets, so an idle stream pins no
    /// buffer. It ends with one final packet carrying `record`: 0 bytes when
    /// the peer closed, the error otherwise; `WSAENOBUFS` (10055) means the pool ran dry
    /// (or the kernel stopped the receive) and it may simply be started again.
    ///
    /// Packets of one stream must be handled in the order they are dequeued,
    /// so use it with one worker thread, or order them yourself.
    pub fn recv_multishot(&self, record: T) -> Result<Started, (io::Error, T)> {
        if let Err(e) = self.port.ring().ensure_pool() {
            return Err((e, record));
        }
        self.start(OpKind::RecvMulti, IoParts::empty().with_record(record))
            .map_err(|(e, mut parts)| {
                (
                    e,
                    parts
                        .take_record::<T>()
                        .expect("the record given to the receive"),
                )
            })
    }

    /// Stops the running [`PortStream::recv_multishot`] (`CancelIoEx` on
    /// it), without waiting: arrivals already on their way are still
    /// delivered, then its final packet carries the record with
    /// `WSA_OPERATION_ABORTED` (995) — or whatever ended it first.
    /// `ERROR_NOT_FOUND` (1168) when no multishot receive is running.
    pub fn cancel_multishot(&self) -> io::Result<()> {
        driver::cancel_multishot(self.socket())
    }

    /// Cancels every operation pending on this stream (`CancelIoEx(s,
    /// NULL)`), the multishot receive included; the stream stays open. Each
    /// reports 995 through the port; `ERROR_NOT_FOUND` (1168) when none was
    /// pending. (A single operation cannot be named: its record moved into
    /// it, and the port hands out no `OVERLAPPED` address.)
    pub fn cancel_all(&self) -> io::Result<()> {
        driver::cancel_all(self.socket())
    }

    /// Starts a graceful disconnect (`DisconnectEx`): queued data is sent,
    /// then FIN; a pending receive completes with 0 bytes.
    pub fn disconnect(&self, record: T) -> Result<Started, (io::Error, T)> {
        let parts = IoParts::for_address(None).with_record(record);
        self.start(OpKind::Shutdown(libc::SHUT_RDWR), parts)
            .map_err(|(e, mut parts)| {
                (
                    e,
                    parts
                        .take_record::<T>()
                        .expect("the record given to disconnect"),
                )
            })
    }

    fn start_io<B: 'static>(
        &self,
        kind: OpKind,
        parts: IoParts,
    ) -> Result<Started, StartError<B, T>> {
        self.start(kind, parts).map_err(|(error, mut parts)| {
            let record = parts.take_record::<T>();
            StartError::new(error, parts.into_buffers()).with_record(record)
        })
    }

    /// Starts `kind`; on failure the memory comes back untouched (boxed: a
    /// failed start is rare, and the error stays small).
    fn start(&self, kind: OpKind, parts: IoParts) -> Result<Started, (io::Error, Box<IoParts>)> {
        let op = Op::new(
            kind,
            Some(self.socket().clone()),
            self.port.delivery(self.key),
            Some(parts),
        );
        match driver::start(&op) {
            Ok(Some(outcome)) => Ok(Started::Completed(outcome.into())),
            Ok(None) => Ok(Started::Pending),
            Err(e) => Err((
                e,
                Box::new(
                    op.reclaim()
                        .expect("an unstarted operation keeps its memory"),
                ),
            )),
        }
    }

    /// Closes the socket now (`closesocket`), keeping the handle: the
    /// connection ends at once, nothing more starts (a start fails with
    /// `WSAENOTSOCK`, 10038), and operations in flight complete with 995.
    /// A second call fails with `WSAENOTSOCK`, as on Windows.
    pub fn close(&self) -> io::Result<()> {
        match driver::close(self.socket()) {
            true => Ok(()),
            false => Err(crate::error::closed_socket()),
        }
    }

    /// Shuts down one or both directions at once (`shutdown`); later
    /// operations in a direction shut down fail with `WSAESHUTDOWN` (10058).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.stream.shutdown(how)
    }

    /// This stream's socket, if a multicast sent from this thread can
    /// carry a send on it now: the stream is open for sending, and its
    /// port's ring is an io_uring confined to this thread (a port worker's).
    pub(crate) fn multicast_member(&self) -> Option<Arc<Socket>> {
        let socket = self.socket();
        let ring = self.port.ring();
        let on_this_ring = std::ptr::addr_eq(Arc::as_ptr(socket.ring()), Arc::as_ptr(ring));
        let open = !socket.is_closing()
            && !socket.was_reset()
            && !socket.is_shut(driver::lanes::Direction::Send);
        (open && on_this_ring && ring.is_confined_to_this_thread() && !ring.is_retired())
            .then(|| socket.clone())
    }

    /// The completion key this stream reports with.
    pub fn key(&self) -> u64 {
        self.key
    }

    /// The underlying stream, for its options and addresses.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    fn socket(&self) -> &Arc<Socket> {
        crate::net::driver_socket(&self.stream)
    }
}

/// A listening socket associated with a completion port, for overlapped
/// accepts (`AcceptEx`). Several accepts may be posted at once.
#[derive(Debug)]
pub struct PortListener<T> {
    socket: Arc<Socket>,
    local_addr: SocketAddr,
    port: CompletionPort<T>,
    key: u64,
}

impl<T: Send + 'static> PortListener<T> {
    pub(super) fn new(
        listener: TcpListener,
        port: CompletionPort<T>,
        key: u64,
    ) -> io::Result<PortListener<T>> {
        let local_addr = listener.local_addr()?;
        Ok(PortListener {
            socket: Socket::new(listener.into_socket(), port.ring().clone()),
            local_addr,
            port,
            key,
        })
    }

    /// Posts an accept (`AcceptEx`). Its packet carries `record`; take the
    /// connection from it with [`super::Completion::take_accepted`].
    pub fn accept(&self, record: T) -> Result<Started, (io::Error, T)> {
        let parts = IoParts::for_address(None).with_record(record);
        let op = Op::new(
            OpKind::Accept,
            Some(self.socket.clone()),
            self.port.delivery(self.key),
            Some(parts),
        );
        match driver::start(&op) {
            Ok(_) => Ok(Started::Pending),
            Err(e) => {
                let record = op.reclaim().and_then(|mut p| p.take_record::<T>());
                Err((e, record.expect("an unstarted accept keeps its record")))
            }
        }
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops listening: posted accepts complete with 995, the socket closes.
    /// New connection attempts are refused from this call on, even while
    /// the posted accepts are still being cancelled.
    pub fn close(&self) {
        // On Linux, shutting a listening socket down takes it out of the
        // listening state at once; the descriptor itself closes later.
        let _ = self.socket.sock.shutdown(std::net::Shutdown::Read);
        driver::close(&self.socket);
    }
}

impl<T> Drop for PortListener<T> {
    fn drop(&mut self) {
        driver::close(&self.socket);
    }
}
