//! UDP: overlapped send-to and receive-from.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use socket2::{Domain, Protocol, Type};

use super::tcp::{each_address, socket_addr};
use super::{cancel, register, sealed, start_recv, start_send};
use crate::driver::op::OpKind;
use crate::driver::Socket;
use crate::driver::{self, buf::IoBuf, buf::IoBufMut};
use crate::overlapped::{Overlapped, StartError, Started};

/// A UDP socket that runs overlapped `WSASendTo` and `WSARecvFrom`.
///
/// Dropping it is `closesocket`, with the same guarantees as
/// [`crate::TcpStream`].
#[derive(Debug)]
pub struct UdpSocket {
    socket: Arc<Socket>,
}

impl UdpSocket {
    /// Creates a UDP socket bound to the first address of `addr` that works.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<UdpSocket> {
        each_address(addr, |addr| {
            let sock =
                socket2::Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            sock.bind(&addr.into())?;
            Ok(UdpSocket {
                socket: register(sock)?,
            })
        })
    }

    /// Starts a receive of one datagram into `buffers` (`WSARecvFrom`); the
    /// sender's address comes back in [`crate::Transfer::source`].
    ///
    /// A datagram larger than the buffers fills them and the operation fails
    /// with `WSAEMSGSIZE` (10040), as on Windows; the rest of it is lost.
    pub fn recv_from<B: IoBufMut>(
        &self,
        overlapped: &mut Overlapped<B>,
        buffers: Vec<B>,
    ) -> Result<Started, StartError<B>> {
        start_recv(&self.socket, OpKind::RecvFrom, overlapped, buffers)
    }

    /// Starts a send of `buffers`, gathered into one datagram, to `target`
    /// (`WSASendTo`).
    pub fn send_to<B: IoBuf>(
        &self,
        overlapped: &mut Overlapped<B>,
        buffers: Vec<B>,
        target: SocketAddr,
    ) -> Result<Started, StartError<B>> {
        start_send(
            &self.socket,
            OpKind::SendTo,
            Some(target),
            overlapped,
            buffers,
        )
    }

    /// Cancels the operation of `overlapped` on this socket (`CancelIoEx`);
    /// see [`crate::TcpStream::cancel`].
    pub fn cancel<B: Send + 'static>(&self, overlapped: &Overlapped<B>) -> io::Result<()> {
        cancel(&self.socket, overlapped)
    }

    /// Cancels every operation pending on this socket
    /// (`CancelIoEx(s, NULL)`); see [`crate::TcpStream::cancel_all`].
    pub fn cancel_all(&self) -> io::Result<()> {
        crate::driver::cancel_all(&self.socket)
    }

    /// Closes the socket (`closesocket`); the same as dropping it.
    pub fn close(self) {}

    /// The local address (`getsockname`).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        socket_addr(self.socket.sock.local_addr()?)
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        driver::close(&self.socket);
    }
}

impl sealed::Sealed for UdpSocket {
    fn driver_socket(&self) -> &Arc<Socket> {
        &self.socket
    }
}
