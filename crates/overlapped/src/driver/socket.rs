//! A socket as the driver sees it: the descriptor, kept open while any
//! operation on it is in flight, and one ordered lane per direction.
//!
//! Winsock fills receives and transmits sends in posting order. io_uring
//! does not promise that for several requests on one socket (a partial send
//! can be overtaken), so the driver hands the kernel one request per
//! direction at a time and queues the rest in posting order.
//!
//! Which lanes are busy, whether operations wait, whether the socket is
//! closing and how many unordered operations are in the kernel are bits of
//! one atomic word, so that the usual case — the lane is free, or nothing
//! waits behind the operation that completed — takes no lock. The queues of
//! waiting operations are behind a lock that only that other case takes.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use super::op::{Direction, Op};
use super::ring::Ring;

/// `closesocket` was called: nothing more starts.
const CLOSING: u64 = 1;
/// An unordered operation (accept, connect, disconnect, multishot receive)
/// is in the kernel: the count of them sits above this bit.
const UNORDERED: u64 = 1 << 32;

/// The bits of one direction's lane in the socket's state word.
#[derive(Clone, Copy)]
struct LaneBits {
    /// An operation of this direction is in the kernel (or being tried).
    busy: u64,
    /// Operations of this direction may wait in the lane's queue.
    queued: u64,
}

impl LaneBits {
    fn of(direction: Direction) -> LaneBits {
        match direction {
            Direction::Recv => LaneBits {
                busy: 1 << 1,
                queued: 1 << 2,
            },
            Direction::Send => LaneBits {
                busy: 1 << 3,
                queued: 1 << 4,
            },
        }
    }
}

/// What [`Socket::enter_lane`] decided.
pub(crate) enum Admission {
    /// The lane is the caller's: start the operation, then
    /// [`Socket::leave_lane`] once it is no longer in the kernel.
    Go,
    /// The operation waits in the lane; it is handed to the kernel when
    /// the ones before it are done.
    Queued,
    /// The socket is closing.
    Closing,
}

/// What [`Socket::leave_lane`] hands back.
pub(crate) enum Next {
    /// The lane is free.
    Idle,
    /// The next waiting operation, which now owns the lane; `closing` if it
    /// must be aborted rather than started.
    Op { op: Arc<Op>, closing: bool },
}

/// The operations waiting in the lanes, and the multishot receive.
#[derive(Default)]
struct Queues {
    recv: VecDeque<Arc<Op>>,
    send: VecDeque<Arc<Op>>,
    /// The multishot receive last started, so that it can be cancelled
    /// (weak: the op holds the socket, not the other way round).
    multishot: Weak<Op>,
}

impl Queues {
    fn of(&mut self, direction: Direction) -> &mut VecDeque<Arc<Op>> {
        match direction {
            Direction::Recv => &mut self.recv,
            Direction::Send => &mut self.send,
        }
    }
}

/// The driver's side of a socket. Each in-flight operation holds an `Arc` of
/// it, so the descriptor is closed only after the last completion.
pub struct Socket {
    pub(crate) sock: socket2::Socket,
    /// The ring the socket was made on (the process-wide one, or a port's).
    home: Arc<Ring>,
    /// The ring of the completion port it was associated with later.
    moved: OnceLock<Arc<Ring>>,
    /// `CLOSING`, each lane's bits, the unordered count.
    state: AtomicU64,
    queues: Mutex<Queues>,
}

impl Socket {
    pub(crate) fn new(sock: socket2::Socket, ring: Arc<Ring>) -> Arc<Socket> {
        Arc::new(Socket {
            sock,
            home: ring,
            moved: OnceLock::new(),
            state: AtomicU64::new(0),
            queues: Mutex::new(Queues::default()),
        })
    }

    /// The ring the socket's operations go to.
    pub(crate) fn ring(&self) -> &Arc<Ring> {
        self.moved.get().unwrap_or(&self.home)
    }

    /// Sends the socket's future operations to `ring` (a completion port's).
    /// A socket is associated with one port only, as on Windows: a second
    /// call changes nothing.
    pub(crate) fn move_to(&self, ring: Arc<Ring>) {
        if self.moved.set(ring).is_err() {
            tracing::warn!("a socket already associated with a port was associated again");
        }
    }

    fn queues(&self) -> MutexGuard<'_, Queues> {
        // Queue updates are single pushes, pops and assignments, which a
        // panic cannot leave half-done.
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `closesocket` was called.
    pub(crate) fn is_closing(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLOSING != 0
    }

    /// Takes the lane of `direction` for `op`, or queues `op` behind the
    /// operation that has it.
    pub(crate) fn enter_lane(&self, direction: Direction, op: &Arc<Op>) -> Admission {
        let bits = LaneBits::of(direction);
        // The usual case: a free lane, taken without the lock.
        let free = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                (state & (CLOSING | bits.busy) == 0).then_some(state | bits.busy)
            });
        let Err(state) = free else {
            return Admission::Go;
        };
        if state & CLOSING != 0 {
            return Admission::Closing;
        }
        // Busy: queue behind it, unless it was left meanwhile. The flag is
        // set and the op pushed under the lock, which whoever leaves the
        // lane takes once it sees the flag.
        let mut queues = self.queues();
        let entered = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                if state & CLOSING != 0 {
                    None
                } else if state & bits.busy == 0 {
                    Some(state | bits.busy)
                } else {
                    Some(state | bits.queued)
                }
            });
        match entered {
            Err(_) => Admission::Closing,
            Ok(before) if before & bits.busy == 0 => Admission::Go,
            Ok(_) => {
                queues.of(direction).push_back(op.clone());
                Admission::Queued
            }
        }
    }

    /// The operation that had the lane of `direction` is no longer in the
    /// kernel: frees the lane, or hands it to the next waiting operation,
    /// which the caller must start (or abort, if the socket is closing).
    /// The queue's lock is held meanwhile, so a cancel never finds that
    /// operation neither waiting nor in the kernel.
    pub(crate) fn leave_lane(&self, direction: Direction, start_next: impl FnMut(Next) -> bool) {
        let bits = LaneBits::of(direction);
        let left = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                (state & bits.queued == 0).then_some(state & !bits.busy)
            });
        if left.is_ok() {
            return;
        }
        self.hand_lane_over(direction, start_next);
    }

    fn hand_lane_over(&self, direction: Direction, mut start_next: impl FnMut(Next) -> bool) {
        let bits = LaneBits::of(direction);
        let mut queues = self.queues();
        let waiting = queues.of(direction);
        while let Some(op) = waiting.pop_front() {
            if waiting.is_empty() {
                self.state.fetch_and(!bits.queued, Ordering::AcqRel);
            }
            let closing = self.is_closing();
            if start_next(Next::Op { op, closing }) {
                return;
            }
        }
        self.state
            .fetch_and(!(bits.queued | bits.busy), Ordering::AcqRel);
        start_next(Next::Idle);
    }

    /// Counts an unordered operation in, unless the socket is closing.
    pub(crate) fn enter_unordered(&self) -> bool {
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                (state & CLOSING == 0).then_some(state + UNORDERED)
            })
            .is_ok()
    }

    /// An unordered operation is no longer in the kernel.
    pub(crate) fn leave_unordered(&self) {
        self.state.fetch_sub(UNORDERED, Ordering::AcqRel);
    }

    /// Notes the multishot receive just started, for
    /// [`Socket::running_multishot`].
    pub(crate) fn set_multishot(&self, op: &Arc<Op>) {
        self.queues().multishot = Arc::downgrade(op);
    }

    /// The multishot receive last started, if it is still there.
    pub(crate) fn running_multishot(&self) -> Option<Arc<Op>> {
        self.queues().multishot.upgrade()
    }

    /// Takes `target` out of its lane's queue if it waits there; whether it
    /// did. An operation not found there is in the kernel or done.
    pub(crate) fn unqueue(&self, direction: Direction, target: &Arc<Op>) -> bool {
        let mut queues = self.queues();
        let waiting = queues.of(direction);
        let before = waiting.len();
        waiting.retain(|op| !Arc::ptr_eq(op, target));
        before != waiting.len()
    }

    /// `closesocket`: marks the socket closing and empties both queues.
    /// Returns what waited, and whether any operation is in the kernel.
    pub(crate) fn close(&self) -> (Vec<Arc<Op>>, bool) {
        let before = self.state.fetch_or(CLOSING, Ordering::AcqRel);
        let busy = LaneBits::of(Direction::Recv).busy | LaneBits::of(Direction::Send).busy;
        let in_kernel = before & busy != 0 || before >= UNORDERED;
        let queues = &mut *self.queues();
        let waiting = queues.recv.drain(..).chain(queues.send.drain(..)).collect();
        (waiting, in_kernel)
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // No operation is in flight (each holds the socket); tell the rings
        // the socket used that its descriptor is about to close.
        let fd = self.sock.as_raw_fd();
        let home = &self.home;
        let moved = self.moved.get().filter(|m| !Arc::ptr_eq(m, home));
        let global = Ring::global_if_started()
            .filter(|g| !Arc::ptr_eq(g, home) && moved.is_none_or(|m| !Arc::ptr_eq(g, m)));
        for ring in [Some(home), moved, global].into_iter().flatten() {
            ring.forget(fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::thread;

    use super::*;
    use crate::driver::op::{Notify, OpKind};

    fn socket() -> Arc<Socket> {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None);
        let ring = Ring::global().expect("a ring");
        Socket::new(sock.expect("a socket"), ring.clone())
    }

    fn send_op() -> Arc<Op> {
        Op::new(OpKind::Send, None, Notify::Silent, None)
    }

    /// Leaves the lane, taking the operation it is handed, if any.
    fn leave(socket: &Socket) -> Option<Arc<Op>> {
        let mut handed = None;
        socket.leave_lane(Direction::Send, |next| {
            if let Next::Op { op, .. } = next {
                handed = Some(op);
            }
            true
        });
        handed
    }

    #[test]
    fn a_free_lane_is_taken_and_left_without_queueing() {
        let socket = socket();
        assert!(matches!(
            socket.enter_lane(Direction::Send, &send_op()),
            Admission::Go
        ));
        assert!(leave(&socket).is_none());
        assert!(matches!(
            socket.enter_lane(Direction::Send, &send_op()),
            Admission::Go
        ));
    }

    #[test]
    fn operations_behind_a_busy_lane_are_handed_it_in_posting_order() {
        let socket = socket();
        let (first, second, third) = (send_op(), send_op(), send_op());
        assert!(matches!(
            socket.enter_lane(Direction::Send, &first),
            Admission::Go
        ));
        assert!(matches!(
            socket.enter_lane(Direction::Send, &second),
            Admission::Queued
        ));
        assert!(matches!(
            socket.enter_lane(Direction::Send, &third),
            Admission::Queued
        ));
        // The other direction is not held up.
        assert!(matches!(
            socket.enter_lane(Direction::Recv, &send_op()),
            Admission::Go
        ));
        assert!(Arc::ptr_eq(&leave(&socket).unwrap(), &second));
        assert!(Arc::ptr_eq(&leave(&socket).unwrap(), &third));
        assert!(leave(&socket).is_none());
    }

    #[test]
    fn a_closing_socket_refuses_its_lanes_and_gives_back_what_waits() {
        let socket = socket();
        let waiting = send_op();
        assert!(matches!(
            socket.enter_lane(Direction::Send, &send_op()),
            Admission::Go
        ));
        assert!(matches!(
            socket.enter_lane(Direction::Send, &waiting),
            Admission::Queued
        ));
        let (queued, in_kernel) = socket.close();
        assert!(in_kernel);
        assert_eq!(queued.len(), 1);
        assert!(Arc::ptr_eq(&queued[0], &waiting));
        assert!(matches!(
            socket.enter_lane(Direction::Recv, &send_op()),
            Admission::Closing
        ));
        assert!(!socket.enter_unordered());
        assert!(leave(&socket).is_none());
    }

    #[test]
    fn close_counts_unordered_operations_as_in_the_kernel() {
        let socket = socket();
        assert!(socket.enter_unordered());
        assert!(socket.enter_unordered());
        socket.leave_unordered();
        let (_, in_kernel) = socket.close();
        assert!(in_kernel);
        let idle = self::socket();
        assert!(!idle.close().1);
    }

    #[test]
    fn the_lane_is_held_by_one_operation_at_a_time_under_contention() {
        let socket = socket();
        let holders = AtomicUsize::new(0);
        let ran = AtomicUsize::new(0);
        let hold = || {
            assert_eq!(
                holders.fetch_add(1, Ordering::SeqCst),
                0,
                "two hold the lane"
            );
            ran.fetch_add(1, Ordering::SeqCst);
            holders.fetch_sub(1, Ordering::SeqCst);
        };
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..5_000 {
                        if let Admission::Go = socket.enter_lane(Direction::Send, &send_op()) {
                            hold();
                            while leave(&socket).is_some() {
                                hold();
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(
            ran.load(Ordering::SeqCst),
            4 * 5_000,
            "an operation was lost"
        );
    }
}
