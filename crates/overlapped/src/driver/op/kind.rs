//! What an operation does.

pub(crate) use super::super::lanes::Direction;

/// What the operation does. `T` is what a cancel names its target by (the
/// operation record, [`super::OpKind`]).
pub(crate) enum Kind<T> {
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
    Cancel(T),
    /// Cancel every in-flight operation on the socket (`closesocket`).
    CancelAll,
    /// Accept a connection (`AcceptEx`); the new descriptor lands in
    /// [`IoParts::accepted`](super::IoParts::accepted), the peer's address in the address buffer.
    Accept,
    /// Connect to the address in the address buffer (`ConnectEx`).
    Connect,
    /// Shut the connection down (`DisconnectEx`).
    Shutdown(i32),
    /// Keep receiving into buffers of the ring's pool: one completion per
    /// arrival, until it fails or the pool runs dry (multishot receive).
    RecvMulti,
}

impl<T> Kind<T> {
    pub(crate) fn direction(&self) -> Option<Direction> {
        match self {
            Kind::Recv | Kind::RecvFrom => Some(Direction::Recv),
            Kind::Send | Kind::SendTo => Some(Direction::Send),
            _ => None,
        }
    }

    /// Whether the operation moves data or a connection (not a cancel or a
    /// shutdown, which a close does not abort).
    pub(crate) fn is_io(&self) -> bool {
        !matches!(self, Kind::Cancel(_) | Kind::CancelAll | Kind::Shutdown(_))
    }

    /// Whether the operation works on a socket without a lane: several may
    /// be in the kernel at once (accepts, connect, disconnect).
    pub(crate) fn is_unordered(&self) -> bool {
        matches!(
            self,
            Kind::Accept | Kind::Connect | Kind::Shutdown(_) | Kind::RecvMulti
        )
    }
}
