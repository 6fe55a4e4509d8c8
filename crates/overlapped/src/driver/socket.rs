//! A socket as the driver sees it: the descriptor, kept open while any
//! operation on it is in flight, the rings its operations go to, and its
//! lanes (one ordered lane per direction, see [`super::lanes`]).
//!
//! It is generic in the operations it queues (`O`) and the rings they go
//! to (`R`), which hold sockets in turn: the driver uses one instance,
//! [`super::op::Socket`], and this file names neither.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use super::lanes::{Admission, Closed, Direction, Lanes, Next};

/// What a socket needs of a ring it used: to be told that its descriptor
/// is about to close (the epoll backend keeps a registration per
/// descriptor, which must go before the number is reused).
pub trait Forget: Send + Sync {
    fn forget(&self, fd: RawFd);
}

/// The driver's side of a socket. Each in-flight operation holds an `Arc` of
/// it, so the descriptor is closed only after the last completion.
pub struct Socket<O, R: ?Sized + Forget> {
    pub(crate) sock: socket2::Socket,
    /// The ring the socket was made on (the process-wide one, or a port's).
    home: Arc<R>,
    /// The ring of the completion port it was associated with later.
    moved: OnceLock<Arc<R>>,
    lanes: Lanes<Arc<O>>,
    /// The multishot receive last started, so that it can be cancelled
    /// (weak: the op holds the socket, not the other way round).
    multishot: Mutex<Weak<O>>,
    /// What happened to the connection that every later call reports, as
    /// Windows does: `RESET`, `SHUT_READ`, `SHUT_WRITE`.
    conditions: AtomicU8,
}

/// The peer reset the connection: every later call fails with 10054.
const RESET: u8 = 1;
/// The program shut the receiving side down: later receives fail with 10058.
const SHUT_READ: u8 = 2;
/// The program shut the sending side down: later sends fail with 10058.
const SHUT_WRITE: u8 = 4;

impl<O, R: ?Sized + Forget> Socket<O, R> {
    pub(crate) fn new(sock: socket2::Socket, ring: Arc<R>) -> Arc<Self> {
        Arc::new(Socket {
            sock,
            home: ring,
            moved: OnceLock::new(),
            lanes: Lanes::new(),
            multishot: Mutex::new(Weak::new()),
            conditions: AtomicU8::new(0),
        })
    }

    /// The ring the socket's operations go to.
    pub(crate) fn ring(&self) -> &Arc<R> {
        self.moved.get().unwrap_or(&self.home)
    }

    /// Sends the socket's future operations to `ring` (a completion port's).
    /// A socket is associated with one port only, as on Windows: a second
    /// call changes nothing.
    pub(crate) fn move_to(&self, ring: Arc<R>) {
        if self.moved.set(ring).is_err() {
            tracing::warn!("a socket already associated with a port was associated again");
        }
    }

    /// Whether the operations it was given now go to another ring than
    /// the one it was made on.
    pub(crate) fn is_moved(&self) -> bool {
        self.moved.get().is_some()
    }

    /// The ring the socket was made on, or the one it moved to.
    pub(crate) fn ring_of(&self, moved: bool) -> &Arc<R> {
        match (moved, self.moved.get()) {
            (true, Some(ring)) => ring,
            _ => &self.home,
        }
    }

    /// Every ring the socket's operations may have gone to: the one it was
    /// made on, and the one it moved to.
    pub(crate) fn rings(&self) -> impl Iterator<Item = &Arc<R>> {
        let home = &self.home;
        let moved = self.moved.get().filter(|m| !Arc::ptr_eq(m, home));
        std::iter::once(home).chain(moved)
    }

    /// Notes that the peer reset the connection.
    pub(crate) fn note_reset(&self) {
        self.conditions.fetch_or(RESET, Ordering::Release);
    }

    /// Whether the peer reset the connection.
    pub(crate) fn was_reset(&self) -> bool {
        self.conditions.load(Ordering::Acquire) & RESET != 0
    }

    /// Notes that the program shut down one or both directions.
    pub(crate) fn note_shutdown(&self, how: std::net::Shutdown) {
        let shut = match how {
            std::net::Shutdown::Read => SHUT_READ,
            std::net::Shutdown::Write => SHUT_WRITE,
            std::net::Shutdown::Both => SHUT_READ | SHUT_WRITE,
        };
        self.conditions.fetch_or(shut, Ordering::Release);
    }

    /// Whether the program shut down the direction `direction` moves data.
    pub(crate) fn is_shut(&self, direction: Direction) -> bool {
        let shut = match direction {
            Direction::Recv => SHUT_READ,
            Direction::Send => SHUT_WRITE,
        };
        self.conditions.load(Ordering::Acquire) & shut != 0
    }

    /// Whether `closesocket` was called.
    pub(crate) fn is_closing(&self) -> bool {
        self.lanes.is_closing()
    }

    /// See [`Lanes::enter`].
    pub(crate) fn enter_lane(&self, direction: Direction, op: &Arc<O>) -> Admission {
        self.lanes.enter(direction, op)
    }

    /// See [`Lanes::still_open`].
    pub(crate) fn still_open(&self) -> bool {
        self.lanes.still_open()
    }

    /// See [`Lanes::leave`].
    pub(crate) fn leave_lane(
        &self,
        direction: Direction,
        start_next: impl FnMut(Next<Arc<O>>) -> bool,
    ) {
        self.lanes.leave(direction, start_next);
    }

    /// See [`Lanes::enter_unordered`].
    pub(crate) fn enter_unordered(&self) -> bool {
        self.lanes.enter_unordered()
    }

    /// See [`Lanes::leave_unordered`].
    pub(crate) fn leave_unordered(&self) {
        self.lanes.leave_unordered();
    }

    fn multishot(&self) -> MutexGuard<'_, Weak<O>> {
        // A single assignment, which a panic cannot leave half done.
        self.multishot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes the multishot receive just started, for
    /// [`Socket::running_multishot`].
    pub(crate) fn set_multishot(&self, op: &Arc<O>) {
        *self.multishot() = Arc::downgrade(op);
    }

    /// The multishot receive last started, if it is still there.
    pub(crate) fn running_multishot(&self) -> Option<Arc<O>> {
        self.multishot().upgrade()
    }

    /// Takes `target` out of its lane's queue if it waits there; whether it
    /// did. An operation not found there is in the kernel or done.
    pub(crate) fn unqueue(&self, direction: Direction, target: &Arc<O>) -> bool {
        self.lanes.unqueue(direction, |op| Arc::ptr_eq(op, target))
    }

    /// `CancelIoEx` with no `OVERLAPPED` on the lanes: see
    /// [`Lanes::take_waiting`].
    pub(crate) fn take_waiting(&self) -> Closed<Arc<O>> {
        self.lanes.take_waiting()
    }

    /// `closesocket` on the lanes: see [`Lanes::close`].
    pub(crate) fn close(&self) -> Closed<Arc<O>> {
        self.lanes.close()
    }
}

impl<O, R: ?Sized + Forget> Drop for Socket<O, R> {
    fn drop(&mut self) {
        // No operation is in flight (each holds the socket); tell the rings
        // the socket used that its descriptor is about to close.
        let fd = self.sock.as_raw_fd();
        for ring in self.rings() {
            ring.forget(fd);
        }
    }
}
