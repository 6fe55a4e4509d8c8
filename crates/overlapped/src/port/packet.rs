//! A completion packet: what `GetQueuedCompletionStatus` returns.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use crate::driver::buf_ring::Lease;
use crate::driver::op::{Finished, IoParts};
use crate::net::TcpStream;
use crate::overlapped::Transfer;

/// One completion packet: what `GetQueuedCompletionStatus` returns.
///
/// The packet of a finished receive, send or accept holds the operation's
/// memory — its buffers, the accepted connection — until it is taken
/// ([`Completion::take_buffers`], [`Completion::take_accepted`]) or the
/// packet is dropped; a multishot arrival holds its pooled buffer the same
/// way. Handle packets promptly: a packet kept also keeps its socket's
/// descriptor open.
pub struct Completion<T> {
    /// The completion key of the socket, or of a posted packet.
    pub key: u64,
    /// Bytes and flags, or the operation's own error (995 when cancelled
    /// or its socket closed, 10054 on reset, …).
    pub result: io::Result<Transfer>,
    /// The record given when the operation started (the `OVERLAPPED`);
    /// `None` for the arrivals of a multishot receive.
    pub record: Option<T>,
    pub(super) memory: Memory,
}

/// Where a packet's data is. A completed operation keeps its buffers until
/// they are taken, so a packet moves through the queue at its small size.
pub(super) enum Memory {
    /// A posted packet: no data.
    None,
    /// A completed operation, holding the buffers or accepted connection.
    Op(Finished),
    /// One arrival of a multishot receive.
    Lease(Lease),
}

impl<T> Completion<T> {
    /// Bytes transferred (`lpNumberOfBytesTransferred`); 0 for a failure.
    pub fn bytes(&self) -> usize {
        self.result.as_ref().map_or(0, |t| t.bytes)
    }

    /// The bytes of one arrival of [`PortStream::recv_multishot`](super::PortStream::recv_multishot), in a
    /// buffer of the port's pool that goes back to the pool with the packet.
    pub fn received(&self) -> Option<&[u8]> {
        match &self.memory {
            Memory::Lease(lease) => Some(lease.bytes()),
            _ => None,
        }
    }

    /// The completed operation's memory, if not taken yet.
    fn take_parts(&self) -> Option<IoParts> {
        match &self.memory {
            Memory::Op(op) => op.take_parts(),
            Memory::None | Memory::Lease(_) => None,
        }
    }

    /// The buffers of a receive or send, if they are of type `B`.
    pub fn take_buffers<B: 'static>(&mut self) -> Option<Vec<B>> {
        self.take_parts()?.try_into_buffers()
    }

    /// The connection an accept produced ([`PortListener::accept`](super::PortListener::accept)), with
    /// the peer's address.
    pub fn take_accepted(&mut self) -> Option<(TcpStream, SocketAddr)> {
        let fd = self.take_parts()?.take_accepted()?;
        let peer = self.result.as_ref().ok()?.source?;
        let ring = crate::driver::backend().ok()?.clone();
        Some((TcpStream::from_accepted(fd, ring), peer))
    }
}

impl<T> fmt::Debug for Completion<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("key", &self.key)
            .field("result", &self.result)
            .field("record", &self.record.is_some())
            .finish()
    }
}
