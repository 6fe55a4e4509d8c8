//! What an operation does.

use std::sync::Arc;

pub(crate) use super::super::lanes::Direction;
use super::Op;

/// What the operation does.
pub(crate) enum OpKind {
    /// Stream receive into the iovecs (`WSARecv`).
    Recv,
    /// Stream send of the iovecs, all of them (`WSASend`).
    Send,
    /// Datagram receive with the source address (`WSARecvFrom`).
    RecvFrom,
    /// Datagram send to an address (`WSASendTo`).
    SendTo,
    /// Cancel one in-flight operation (`CancelIoEx`). Holding the target
    /// keeps its address, which the kernel matches on, from being reused.
    Cancel(Arc<Op>),
    /// Cancel every in-flight operation on the socket (`closesocket`).
    CancelAll,
    /// Accept a connection (`AcceptEx`); the new descriptor lands in
    /// [`IoParts::accepted`], the peer's address in the address buffer.
    Accept,
    /// Connect to the address in the address buffer (`ConnectEx`).
    Connect,
    /// Shut the connection down (`DisconnectEx`).
    Shutdown(i32),
    /// Keep receiving into buffers of the ring's pool: one completion per
    /// arrival, until it fails or the pool runs dry (multishot receive).
    RecvMulti,
}

impl OpKind {
    pub(crate) fn direction(&self) -> Option<Direction> {
        match self {
            OpKind::Recv | OpKind::RecvFrom => Some(Direction::Recv),
            OpKind::Send | OpKind::SendTo => Some(Direction::Send),
            _ => None,
        }
    }

    /// Whether the operation moves data or a connection (not a cancel or a
    /// shutdown, which a close does not abort).
    pub(crate) fn is_io(&self) -> bool {
        !matches!(
            self,
            OpKind::Cancel(_) | OpKind::CancelAll | OpKind::Shutdown(_)
        )
    }

    /// Whether the operation works on a socket without a lane: several may
    /// be in the kernel at once (accepts, connect, disconnect).
    pub(crate) fn is_unordered(&self) -> bool {
        matches!(
            self,
            OpKind::Accept | OpKind::Connect | OpKind::Shutdown(_) | OpKind::RecvMulti
        )
    }
}
