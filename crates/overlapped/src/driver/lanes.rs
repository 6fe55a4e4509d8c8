//! A socket's lanes: which operations it may hand the kernel now, and
//! whether it is closing — the protocol alone, with no descriptor or ring
//! in it, so that loom can check it (`tests` below, under `--cfg loom`).
//!
//! Winsock fills receives and transmits sends in posting order. io_uring
//! does not promise that for several requests on one socket (a partial send
//! can be overtaken), so the driver hands the kernel one request per
//! direction at a time and queues the rest in posting order: the lane of
//! that direction. Accepts, connects, disconnects and multishot receives
//! take no lane; they are only counted.
//!
//! Which lanes are busy, whether operations wait, whether the socket is
//! closing and how many unordered operations are in the kernel are bits of
//! one atomic word, so that the usual case — the lane is free, or nothing
//! waits behind the operation that completed — takes no lock. The queues of
//! waiting operations are behind a lock that only that other case takes.
//!
//! ## Nothing starts on a closing socket
//! `closesocket` ([`Lanes::close`]) sets `CLOSING`, takes back what waits
//! in the lanes, and — if anything holds a lane or is counted — the caller
//! cancels everything the kernel has for the socket. An operation can be
//! between its admission and the kernel at that moment: admitted before
//! `CLOSING`, not yet submitted when the cancel goes. So every thread that
//! hands an operation to the kernel asks [`Lanes::still_open`] *after* it
//! did, and cancels that operation itself if the socket began closing.
//! `still_open` is a read-modify-write, not a load: both it and `close`'s
//! are then ordered in the word's one modification order, and either the
//! starter sees `CLOSING` (and cancels what it submitted), or its
//! submission happened before `close` (and the close's cancel, submitted
//! after, finds it).

use std::collections::VecDeque;

use super::sync::atomic::{AtomicU64, Ordering};
use super::sync::{lock, Mutex, MutexGuard};

/// Which way data flows; operations in one direction on one socket are
/// handed to the kernel one at a time, in posting order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Recv,
    Send,
}

/// `closesocket` was called: nothing more starts.
const CLOSING: u64 = 1;
/// An unordered operation (accept, connect, disconnect, multishot receive)
/// is in the kernel: the count of them sits above this bit.
const UNORDERED: u64 = 1 << 32;

/// The bits of one direction's lane in the state word.
#[derive(Clone, Copy)]
struct LaneBits {
    /// An operation of this direction is in the kernel (or on its way).
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

    fn both_busy() -> u64 {
        LaneBits::of(Direction::Recv).busy | LaneBits::of(Direction::Send).busy
    }
}

/// What [`Lanes::enter`] decided.
pub(crate) enum Admission {
    /// The lane is the caller's: start the operation, ask
    /// [`Lanes::still_open`] once it is submitted, and [`Lanes::leave`]
    /// once it is no longer in the kernel.
    Go,
    /// The operation waits in the lane; it is handed over when the ones
    /// before it are done.
    Queued,
    /// The socket is closing.
    Closing,
}

/// What [`Lanes::leave`] hands its caller.
pub(crate) enum Next<T> {
    /// The lane is free.
    Idle,
    /// The next waiting operation, which now owns the lane; `closing` if it
    /// must be aborted rather than started.
    Op { op: T, closing: bool },
}

/// What [`Lanes::close`] found.
pub(crate) struct Closed<T> {
    /// The operations that waited in the lanes: the caller aborts them.
    pub(crate) waiting: Vec<T>,
    /// Whether any operation held a lane or was counted: the caller
    /// cancels whatever the kernel has for the socket.
    pub(crate) in_kernel: bool,
    /// Whether it was closing already (a second `closesocket`).
    pub(crate) again: bool,
}

/// The operations waiting in the lanes.
struct Queues<T> {
    recv: VecDeque<T>,
    send: VecDeque<T>,
}

impl<T> Queues<T> {
    fn of(&mut self, direction: Direction) -> &mut VecDeque<T> {
        match direction {
            Direction::Recv => &mut self.recv,
            Direction::Send => &mut self.send,
        }
    }
}

/// The lanes of one socket.
pub(crate) struct Lanes<T> {
    /// `CLOSING`, each lane's bits, the unordered count.
    state: AtomicU64,
    queues: Mutex<Queues<T>>,
}

impl<T: Clone> Lanes<T> {
    pub(crate) fn new() -> Lanes<T> {
        Lanes {
            state: AtomicU64::new(0),
            queues: Mutex::new(Queues {
                recv: VecDeque::new(),
                send: VecDeque::new(),
            }),
        }
    }

    fn queues(&self) -> MutexGuard<'_, Queues<T>> {
        lock(&self.queues)
    }

    /// Whether `closesocket` was called (a hint: a start asks
    /// [`Lanes::still_open`] once it has submitted).
    pub(crate) fn is_closing(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLOSING != 0
    }

    /// Takes the lane of `direction` for `op`, or queues `op` behind the
    /// operation that has it.
    pub(crate) fn enter(&self, direction: Direction, op: &T) -> Admission {
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

    /// Asked by a thread that has just handed an operation to the kernel:
    /// `false` if the socket began closing meanwhile, and the caller must
    /// cancel that operation itself (see the module docs). A
    /// read-modify-write that changes nothing, so that it is ordered
    /// against `close`'s.
    pub(crate) fn still_open(&self) -> bool {
        self.state.fetch_or(0, Ordering::AcqRel) & CLOSING == 0
    }

    /// The operation that had the lane of `direction` is no longer in the
    /// kernel: frees the lane, or hands it to the next waiting operation,
    /// which `start_next` must start (or abort, if the socket is closing)
    /// and say whether it did (`false` passes the lane on again). The
    /// queue's lock is held meanwhile, so a cancel never finds that
    /// operation neither waiting nor started.
    pub(crate) fn leave(&self, direction: Direction, start_next: impl FnMut(Next<T>) -> bool) {
        let bits = LaneBits::of(direction);
        let left = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                (state & bits.queued == 0).then_some(state & !bits.busy)
            });
        if left.is_ok() {
            return;
        }
        self.hand_over(direction, start_next);
    }

    fn hand_over(&self, direction: Direction, mut start_next: impl FnMut(Next<T>) -> bool) {
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

    /// Takes the operation `is_target` picks out of its lane's queue if it
    /// waits there; whether it did. One not found there is in the kernel,
    /// on its way there, or done.
    pub(crate) fn unqueue(&self, direction: Direction, is_target: impl Fn(&T) -> bool) -> bool {
        let mut queues = self.queues();
        let waiting = queues.of(direction);
        let before = waiting.len();
        waiting.retain(|op| !is_target(op));
        before != waiting.len()
    }

    /// `CancelIoEx` with no `OVERLAPPED`: empties both queues, leaving the
    /// socket open. What waited comes back, and `in_kernel` says whether
    /// anything holds a lane or is counted.
    pub(crate) fn take_waiting(&self) -> Closed<T> {
        let state = self.state.load(Ordering::Acquire);
        let in_kernel = state & LaneBits::both_busy() != 0 || state >= UNORDERED;
        let queues = &mut *self.queues();
        let waiting = queues.recv.drain(..).chain(queues.send.drain(..)).collect();
        Closed {
            waiting,
            in_kernel,
            again: state & CLOSING != 0,
        }
    }

    /// `closesocket`: marks the socket closing and empties both queues.
    pub(crate) fn close(&self) -> Closed<T> {
        let before = self.state.fetch_or(CLOSING, Ordering::AcqRel);
        let in_kernel = before & LaneBits::both_busy() != 0 || before >= UNORDERED;
        let queues = &mut *self.queues();
        let waiting = queues.recv.drain(..).chain(queues.send.drain(..)).collect();
        Closed {
            waiting,
            in_kernel,
            again: before & CLOSING != 0,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::thread;

    use super::*;

    type Op = Arc<u32>;

    fn op() -> Op {
        Arc::new(0)
    }

    /// Leaves the send lane, taking the operation it is handed, if any.
    fn leave(lanes: &Lanes<Op>) -> Option<Op> {
        let mut handed = None;
        lanes.leave(Direction::Send, |next| {
            if let Next::Op { op, .. } = next {
                handed = Some(op);
            }
            true
        });
        handed
    }

    #[test]
    fn a_free_lane_is_taken_and_left_without_queueing() {
        let lanes = Lanes::new();
        assert!(matches!(lanes.enter(Direction::Send, &op()), Admission::Go));
        assert!(leave(&lanes).is_none());
        assert!(matches!(lanes.enter(Direction::Send, &op()), Admission::Go));
    }

    #[test]
    fn operations_behind_a_busy_lane_are_handed_it_in_posting_order() {
        let lanes = Lanes::new();
        let (first, second, third) = (op(), op(), op());
        assert!(matches!(
            lanes.enter(Direction::Send, &first),
            Admission::Go
        ));
        assert!(matches!(
            lanes.enter(Direction::Send, &second),
            Admission::Queued
        ));
        assert!(matches!(
            lanes.enter(Direction::Send, &third),
            Admission::Queued
        ));
        // The other direction is not held up.
        assert!(matches!(lanes.enter(Direction::Recv, &op()), Admission::Go));
        assert!(Arc::ptr_eq(&leave(&lanes).unwrap(), &second));
        assert!(Arc::ptr_eq(&leave(&lanes).unwrap(), &third));
        assert!(leave(&lanes).is_none());
    }

    #[test]
    fn a_closing_socket_refuses_its_lanes_and_gives_back_what_waits() {
        let lanes = Lanes::new();
        let waiting = op();
        assert!(matches!(lanes.enter(Direction::Send, &op()), Admission::Go));
        assert!(matches!(
            lanes.enter(Direction::Send, &waiting),
            Admission::Queued
        ));
        let closed = lanes.close();
        assert!(closed.in_kernel);
        assert_eq!(closed.waiting.len(), 1);
        assert!(Arc::ptr_eq(&closed.waiting[0], &waiting));
        assert!(matches!(
            lanes.enter(Direction::Recv, &op()),
            Admission::Closing
        ));
        assert!(!lanes.enter_unordered());
        assert!(!lanes.still_open());
        assert!(leave(&lanes).is_none());
    }

    #[test]
    fn close_counts_unordered_operations_as_in_the_kernel() {
        let lanes = Lanes::<Op>::new();
        assert!(lanes.enter_unordered());
        assert!(lanes.enter_unordered());
        lanes.leave_unordered();
        assert!(lanes.close().in_kernel);
        assert!(!Lanes::<Op>::new().close().in_kernel);
    }

    #[test]
    fn the_lane_is_held_by_one_operation_at_a_time_under_contention() {
        let lanes = Lanes::new();
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
                        if let Admission::Go = lanes.enter(Direction::Send, &op()) {
                            hold();
                            while leave(&lanes).is_some() {
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

/// loom models: nothing a start submits escapes a concurrent close.
///
/// The ring is modelled as what matters here, the order in which entries
/// reach the kernel's submission queue: a confined ring, written by its
/// issuer and fed by other threads through the real [`HandOver`]. The
/// check: an operation that reached the queue has a cancel after it.
///
/// Tried and seen failing: `still_open` as a plain acquire load (the
/// issuer then misses the handed-over entry and its cancel goes first),
/// the issuer pushing its own entry without taking the handed-over ones
/// first, and no `still_open` check at all.
///
/// [`HandOver`]: super::hand_over::HandOver
#[cfg(all(test, loom))]
mod loom_models {
    use loom::sync::{Arc, Mutex};
    use loom::thread;

    use super::*;
    use crate::driver::hand_over::HandOver;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Entry {
        Op(u8),
        Cancel(u8),
        CancelAll,
    }

    /// A confined ring, as far as the order of its submissions goes.
    #[derive(Default)]
    struct Ring {
        queue: Mutex<Vec<Entry>>,
        hand_over: HandOver<Entry>,
    }

    impl Default for HandOver<Entry> {
        fn default() -> Self {
            HandOver::new()
        }
    }

    impl Ring {
        /// `Uring::push` on the issuer: what was handed over goes first.
        fn submit_on_issuer(&self, entry: Entry) {
            let mut queue = self.queue.lock().unwrap();
            let taken = self.hand_over.take(|e| {
                queue.push(*e);
                Ok::<(), ()>(())
            });
            assert!(taken.is_ok());
            queue.push(entry);
        }

        /// `Uring::push` on any other thread.
        fn submit_elsewhere(&self, entry: Entry) {
            self.hand_over.push(entry);
        }

        /// The issuer's next flush.
        fn flush(&self) {
            let mut queue = self.queue.lock().unwrap();
            let _ = self.hand_over.take(|e| {
                queue.push(*e);
                Ok::<(), ()>(())
            });
        }

        /// Whether every operation in the queue has a cancel after it.
        fn every_op_is_cancelled_after(&self) -> bool {
            let queue = self.queue.lock().unwrap();
            queue.iter().enumerate().all(|(at, entry)| match entry {
                Entry::Op(id) => queue[at + 1..]
                    .iter()
                    .any(|later| matches!(later, Entry::CancelAll) || *later == Entry::Cancel(*id)),
                _ => true,
            })
        }
    }

    /// `driver::start` of operation `id` on `lanes`, submitting with `submit`.
    fn start(lanes: &Lanes<u8>, id: u8, submit: impl Fn(Entry)) {
        if let Admission::Go = lanes.enter(Direction::Recv, &id) {
            submit(Entry::Op(id));
            if !lanes.still_open() {
                submit(Entry::Cancel(id));
            }
        }
    }

    /// `driver::close` on `lanes`.
    fn close(lanes: &Lanes<u8>, submit: impl Fn(Entry)) -> Vec<u8> {
        let closed = lanes.close();
        if closed.in_kernel {
            submit(Entry::CancelAll);
        }
        closed.waiting
    }

    #[test]
    fn a_start_handed_over_to_the_issuer_as_it_closes_the_socket_is_cancelled() {
        loom::model(|| {
            let lanes = Arc::new(Lanes::new());
            let ring = Arc::new(Ring::default());
            let starter = {
                let (lanes, ring) = (lanes.clone(), ring.clone());
                thread::spawn(move || start(&lanes, 1, |e| ring.submit_elsewhere(e)))
            };
            // This thread is the issuer, and closes.
            close(&lanes, |e| ring.submit_on_issuer(e));
            starter.join().unwrap();
            ring.flush();
            assert!(ring.every_op_is_cancelled_after());
        });
    }

    #[test]
    fn a_start_on_the_issuer_as_another_thread_closes_the_socket_is_cancelled() {
        loom::model(|| {
            let lanes = Arc::new(Lanes::new());
            let ring = Arc::new(Ring::default());
            let closer = {
                let (lanes, ring) = (lanes.clone(), ring.clone());
                thread::spawn(move || close(&lanes, |e| ring.submit_elsewhere(e)))
            };
            start(&lanes, 1, |e| ring.submit_on_issuer(e));
            closer.join().unwrap();
            ring.flush();
            assert!(ring.every_op_is_cancelled_after());
        });
    }

    #[test]
    fn an_operation_handed_the_lane_as_the_socket_closes_is_aborted_or_cancelled() {
        loom::model(|| {
            let lanes = Arc::new(Lanes::new());
            let ring = Arc::new(Ring::default());
            // Operation 1 holds the lane; 2 waits behind it.
            assert!(matches!(lanes.enter(Direction::Recv, &1), Admission::Go));
            ring.submit_on_issuer(Entry::Op(1));
            assert!(matches!(
                lanes.enter(Direction::Recv, &2),
                Admission::Queued
            ));
            let aborted = Arc::new(Mutex::new(Vec::new()));
            // 1 completes elsewhere, and that thread starts 2.
            let completer = {
                let (lanes, ring, aborted) = (lanes.clone(), ring.clone(), aborted.clone());
                thread::spawn(move || {
                    lanes.leave(Direction::Recv, |next| match next {
                        Next::Idle => true,
                        Next::Op { op, closing: true } => {
                            aborted.lock().unwrap().push(op);
                            false
                        }
                        Next::Op { op, .. } => {
                            ring.submit_elsewhere(Entry::Op(op));
                            if !lanes.still_open() {
                                ring.submit_elsewhere(Entry::Cancel(op));
                            }
                            true
                        }
                    });
                })
            };
            let waiting = close(&lanes, |e| ring.submit_on_issuer(e));
            aborted.lock().unwrap().extend(waiting);
            completer.join().unwrap();
            ring.flush();
            let queue = ring.queue.lock().unwrap().clone();
            let submitted_2 = queue.contains(&Entry::Op(2));
            let aborted_2 = aborted.lock().unwrap().contains(&2);
            assert!(submitted_2 != aborted_2, "2 is submitted or aborted, once");
            assert!(ring.every_op_is_cancelled_after());
        });
    }
}
