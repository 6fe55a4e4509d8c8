//! The record of one operation while the driver owns it.
//!
//! An [`Op`] is shared (`Arc`) between the program's `Overlapped` and the
//! driver. The driver holds one reference for as long as the kernel may touch
//! the operation's memory, so dropping the `Overlapped` or the socket early
//! never frees anything the kernel still uses. Nothing here is specific to
//! io_uring: the backend only reads the prepared [`IoParts`].
//!
//! This module holds the record, how the program is told it finished (a
//! [`Sink`], an event), where it goes ([`Route`]: the ring of its socket),
//! and finished records kept for reuse ([`Finished`]). Its parts name
//! nothing of it:
//! - [`kind`]: what the operation does;
//! - [`parts`]: the memory it lends to the kernel;
//! - [`outcome`]: what it came to;
//! - [`phase`]: who may touch the memory when (the lock-free protocol).

pub(crate) mod kind;
pub(crate) mod outcome;
pub(crate) mod parts;
pub(crate) mod phase;

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub(crate) use kind::Direction;
pub(crate) use outcome::{Erased, Outcome};
pub(crate) use parts::{downcast, IoParts};

use super::buf_ring::Lease;
use super::signal::Signal;
use super::socket;
use phase::Phase;

/// What the operation does; a cancel names its target.
pub(crate) type OpKind = kind::Kind<Arc<Op>>;

/// A socket as the driver sees it, with its operations and the rings they
/// go to (see [`socket::Socket`]).
pub type Socket = socket::Socket<Op, dyn Route>;

/// An operation's memory, claimed by one thread (see [`phase::Claim`]).
pub(crate) type Claim<'a> = phase::Claim<'a, IoParts, Outcome>;

/// Where a socket's operations go: a ring, as the operations see it. The
/// rings implement it; the operations and sockets name only this, so the
/// ring and its backends can carry operations out without the operation
/// types naming them back.
pub trait Route: socket::Forget {
    /// Hands `op`, whose memory `claim` holds, to the backend, which keeps
    /// a reference to it until its completion has been reaped. On failure
    /// the op was not submitted, and the claim comes back.
    fn submit<'a>(&self, op: &'a Arc<Op>, claim: Claim<'a>) -> Result<(), (io::Error, Claim<'a>)>;

    /// Hands held-back submissions to the kernel.
    fn flush(&self) -> io::Result<()>;

    /// Whether the ring's completion port was closed: nothing new may start.
    fn is_retired(&self) -> bool;

    /// Whether this thread is holding its submissions back for a batch.
    fn is_batching(&self) -> bool;
}

/// Where a completed operation's outcome and memory go: a completion
/// routine's thread or a completion port. `tag` is what the sink was given
/// with the operation (a routine's id, a completion key).
pub(crate) trait Sink: Send + Sync {
    fn deliver(&self, tag: u64, outcome: Outcome, payload: Payload);
}

/// What a delivery hands over besides the outcome.
pub(crate) enum Payload {
    /// The operation itself, at its final completion: its memory (buffers,
    /// an accepted connection) stays in it until taken with
    /// [`Op::take_parts`], and the program's record, already taken out.
    Done {
        op: Finished,
        record: Option<Erased>,
    },
    /// One arrival of a multishot receive, in a pooled buffer.
    Lease(Lease),
}

/// A sink and the tag to deliver with.
pub(crate) type Delivery = (Arc<dyn Sink>, u64);

/// How the program learns that the operation completed.
pub(crate) enum Notify {
    /// Only through the `Overlapped` (polling or `get_overlapped_result`).
    Silent,
    /// Signal this event (`OVERLAPPED::hEvent`).
    Event(Signal),
    /// Give the outcome and the buffers away (completion routine, port).
    Deliver(Delivery),
}

/// One operation, shared between the program and the driver.
///
/// Its state is a few atomics, not a lock: a message passes through two
/// operations (its receive and its reply), and each changes phase three or
/// four times. Who may touch the memory follows from the [`phase`].
pub struct Op {
    pub(crate) kind: OpKind,
    pub(crate) socket: Option<Arc<Socket>>,
    /// The event to signal (`Notify::Event`).
    event: Option<Signal>,
    /// Where the outcome and the arrivals go (`Notify::Deliver`). Fixed for
    /// the operation's life, so an arrival reaches it without the lock.
    deliver: Option<Delivery>,
    /// The outcome is still to be delivered to `Op::deliver` (cleared at
    /// completion, or when the operation never started).
    delivery_due: AtomicBool,
    /// It was submitted to the ring its socket moved to (a port's), not
    /// the one the socket was made on: where a cancel must go.
    on_moved_ring: AtomicBool,
    /// The memory, the outcome, and who owns them.
    phase: Phase<IoParts, Outcome>,
}

impl Op {
    pub(crate) fn new(
        kind: OpKind,
        socket: Option<Arc<Socket>>,
        notify: Notify,
        parts: Option<IoParts>,
    ) -> Arc<Op> {
        let (event, deliver) = match notify {
            Notify::Silent => (None, None),
            Notify::Event(event) => (Some(event), None),
            Notify::Deliver(deliver) => (None, Some(deliver)),
        };
        let delivery_due = deliver.is_some();
        let phase = Phase::new(parts, Outcome::aborted());
        if let Some(mut spare) = take_spare() {
            if let Some(op) = Arc::get_mut(&mut spare) {
                op.kind = kind;
                op.socket = socket;
                op.event = event;
                op.deliver = deliver;
                *op.delivery_due.get_mut() = delivery_due;
                *op.on_moved_ring.get_mut() = false;
                op.phase = phase;
                return spare;
            }
        }
        Arc::new(Op {
            kind,
            socket,
            event,
            deliver,
            delivery_due: AtomicBool::new(delivery_due),
            on_moved_ring: AtomicBool::new(false),
            phase,
        })
    }

    /// Claims the memory of an operation that is not started yet (or
    /// waits in its lane): `None` if another thread has it, or it started.
    pub(crate) fn claim(&self) -> Option<Claim<'_>> {
        self.phase.claim()
    }

    /// Claims the memory of a submitted operation the backend let go of.
    ///
    /// # Safety
    /// As for [`Phase::claim_from_backend`]: the kernel posted the request's
    /// final completion and this thread handles it, or this is the epoll
    /// backend performing it under its own lock.
    pub(crate) unsafe fn claim_from_backend(&self) -> Option<Claim<'_>> {
        // SAFETY: the caller's contract is the phase's.
        unsafe { self.phase.claim_from_backend() }
    }

    /// Takes back an operation whose submission failed before its entry
    /// reached any queue the kernel reads: it is the caller's again, idle
    /// once the returned claim ends (the rollback of a failed submit).
    ///
    /// # Safety
    /// The backend never saw the request (its entry was not written).
    pub(crate) unsafe fn abandon(&self) -> Option<Claim<'_>> {
        // SAFETY: a request the backend never saw is not the backend's.
        unsafe { self.phase.abandon() }
    }

    /// Notes which of its socket's rings the operation is submitted to
    /// (see [`super::socket::Socket::ring_of`]).
    pub(crate) fn note_ring(&self, moved: bool) {
        self.on_moved_ring.store(moved, Ordering::Release);
    }

    /// Whether it went to the ring its socket moved to.
    pub(crate) fn on_moved_ring(&self) -> bool {
        self.on_moved_ring.load(Ordering::Acquire)
    }

    pub(crate) fn is_done(&self) -> bool {
        self.phase.is_done()
    }

    /// Whether it is new, waits in its lane, or failed to start.
    pub(crate) fn is_idle(&self) -> bool {
        self.phase.is_idle()
    }

    /// The outcome, if the operation completed.
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        self.phase.outcome()
    }

    /// Blocks until the operation completes and returns its outcome.
    pub(crate) fn wait(&self) -> Outcome {
        self.phase.wait()
    }

    /// Takes the memory back once the operation completed; only the first
    /// caller gets it.
    pub(crate) fn take_parts(&self) -> Option<IoParts> {
        self.phase.take()
    }

    /// Takes the buffers back once the operation completed.
    pub(crate) fn take_buffers<B: 'static>(&self) -> Option<Vec<B>> {
        self.take_parts().map(IoParts::into_buffers)
    }

    /// Takes the memory back from an operation that never started, and
    /// drops its delivery without running it.
    pub(crate) fn reclaim(&self) -> Option<IoParts> {
        self.delivery_due.store(false, Ordering::Release);
        self.claim()?.take()
    }

    /// [`Op::reclaim`], keeping only the buffers.
    pub(crate) fn reclaim_buffers<B: 'static>(&self) -> Vec<B> {
        self.reclaim()
            .map(IoParts::into_buffers)
            .unwrap_or_default()
    }

    /// Finishes an operation this thread claimed: records the outcome `f`
    /// reads off the memory, and tells the program.
    pub(crate) fn finish_claimed(
        self: &Arc<Self>,
        claim: Claim<'_>,
        f: impl FnOnce(Option<&mut IoParts>) -> Outcome,
    ) {
        let (mut delivery, mut record) = (None, None);
        claim.finish(|parts| self.closing(parts, &mut delivery, &mut record, f));
        self.announce(delivery, record);
    }

    /// Finishes an operation that waits in its lane, or was never started
    /// (aborted by a cancel or a close); only the first finish counts.
    pub(crate) fn finish_idle(self: &Arc<Self>, outcome: Outcome) {
        let (mut delivery, mut record) = (None, None);
        let finished = self
            .phase
            .finish_idle(|parts| self.closing(parts, &mut delivery, &mut record, |_| outcome));
        if finished {
            self.announce(delivery, record);
        }
    }

    /// Finishes a submitted operation whose request the backend let go of,
    /// with the outcome `f` reads off the memory.
    ///
    /// # Safety
    /// As for [`Op::claim_from_backend`].
    pub(crate) unsafe fn finish_from_backend(
        self: &Arc<Self>,
        f: impl FnOnce(Option<&mut IoParts>) -> Outcome,
    ) {
        let (mut delivery, mut record) = (None, None);
        // SAFETY: the caller's contract is the phase's.
        let finished = unsafe {
            self.phase
                .finish_from_backend(|parts| self.closing(parts, &mut delivery, &mut record, f))
        };
        debug_assert!(finished, "an operation finished twice");
        if finished {
            self.announce(delivery, record);
        }
    }

    /// What the one thread finishing the operation does with its memory:
    /// reads the outcome off it with `f`, and, if the outcome is due at a
    /// sink, takes the program's record out for it.
    fn closing<'a>(
        &'a self,
        parts: Option<&mut IoParts>,
        delivery: &mut Option<&'a Delivery>,
        record: &mut Option<Erased>,
        f: impl FnOnce(Option<&mut IoParts>) -> Outcome,
    ) -> Outcome {
        if self.delivery_due.swap(false, Ordering::AcqRel) {
            *delivery = self.deliver.as_ref();
        }
        let Some(parts) = parts else {
            return f(None);
        };
        let outcome = f(Some(&mut *parts));
        if delivery.is_some() {
            *record = parts.take_erased_record();
        }
        outcome
    }

    /// Tells the program the operation is over (the phase woke the
    /// waiters already): delivers it to the sink, or signals the event.
    fn announce(self: &Arc<Self>, delivery: Option<&Delivery>, record: Option<Erased>) {
        if let Some((sink, tag)) = delivery {
            let outcome = self.outcome().unwrap_or_else(Outcome::aborted);
            let op = Finished::new(self.clone());
            sink.deliver(*tag, outcome, Payload::Done { op, record });
        }
        if let Some(event) = &self.event {
            if let Err(e) = event.set() {
                tracing::error!("cannot signal the event of a completed operation: {e}");
            }
        }
    }

    /// Hands one arrival of a multishot receive to the operation's sink,
    /// leaving the operation in flight.
    pub(crate) fn deliver_arrival(&self, outcome: Outcome, lease: Lease) {
        if let Some((sink, tag)) = &self.deliver {
            sink.deliver(*tag, outcome, Payload::Lease(lease));
        }
    }

    /// Clears the event before a start, as `WSARecv`/`WSASend` do.
    pub(crate) fn reset_notification(&self) -> io::Result<()> {
        match &self.event {
            Some(event) => event.reset(),
            None => Ok(()),
        }
    }
}

/// A completed operation as a sink hands it on: when the last reference to
/// it goes, its allocation is kept for the next operation this thread
/// starts. A server starts one per message; reusing the record saves an
/// allocation and a free each time.
pub(crate) struct Finished(Option<Arc<Op>>);

impl Finished {
    fn new(op: Arc<Op>) -> Finished {
        Finished(Some(op))
    }

    /// The operation's memory (see [`Op::take_parts`]).
    pub(crate) fn take_parts(&self) -> Option<IoParts> {
        self.0.as_ref().and_then(|op| op.take_parts())
    }
}

impl Drop for Finished {
    fn drop(&mut self) {
        if let Some(op) = self.0.take() {
            keep_spare(op);
        }
    }
}

/// Most finished operations a thread keeps for reuse: enough for a burst of
/// completions handled between two starts, small enough not to matter.
const SPARE_OPS: usize = 256;

thread_local! {
    static SPARE: RefCell<Vec<Arc<Op>>> = const { RefCell::new(Vec::new()) };
}

/// Keeps `op` for reuse if nothing else refers to it: no kernel request,
/// no cancel naming it, no `Overlapped`, no weak reference.
fn keep_spare(mut op: Arc<Op>) {
    let Some(unshared) = Arc::get_mut(&mut op) else {
        return;
    };
    // Let go of what the operation held now, not when it is reused.
    unshared.kind = OpKind::CancelAll;
    unshared.socket = None;
    unshared.event = None;
    unshared.deliver = None;
    unshared.phase = Phase::new(None, Outcome::aborted());
    // During thread teardown the list may be gone: then the op is freed.
    let _ = SPARE.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_OPS {
            spare.push(op);
        }
    });
}

fn take_spare() -> Option<Arc<Op>> {
    SPARE
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Keeps what it is handed, so a test decides when it is dropped.
    #[derive(Default)]
    struct Keeping {
        payloads: Mutex<Vec<Payload>>,
    }

    impl Sink for Keeping {
        fn deliver(&self, _: u64, _: Outcome, payload: Payload) {
            self.payloads.lock().unwrap().push(payload);
        }
    }

    fn receive_into(sink: &Arc<Keeping>) -> Arc<Op> {
        let parts = IoParts::for_recv(vec![vec![0u8; 8]]).with_record(5u32);
        let sink: Arc<dyn Sink> = sink.clone();
        Op::new(OpKind::Recv, None, Notify::Deliver((sink, 7)), Some(parts))
    }

    #[test]
    fn a_finished_operation_is_reused_without_its_sink_buffers_or_record() {
        let sink = Arc::new(Keeping::default());
        let first = receive_into(&sink);
        let address = Arc::as_ptr(&first);
        first.finish_idle(Outcome::aborted());
        drop(first);
        // The packet goes last: its operation is now kept for reuse.
        sink.payloads.lock().unwrap().clear();
        assert_eq!(
            Arc::strong_count(&sink),
            1,
            "the kept operation let go of its sink"
        );

        let second = Op::new(OpKind::Send, None, Notify::Silent, None);
        assert_eq!(Arc::as_ptr(&second), address, "the allocation was reused");
        assert!(second.is_idle());
        let parts = second.claim().unwrap().with_memory(|parts| parts.is_some());
        assert!(!parts, "no buffers of the last use");
        second.finish_idle(Outcome::aborted());
        assert!(
            sink.payloads.lock().unwrap().is_empty(),
            "nothing went to the old sink"
        );
    }

    #[test]
    fn an_operation_still_referenced_is_not_reused() {
        let sink = Arc::new(Keeping::default());
        let first = receive_into(&sink);
        first.finish_idle(Outcome::aborted());
        // The packet goes while the program still holds the operation.
        sink.payloads.lock().unwrap().clear();
        let second = Op::new(OpKind::Send, None, Notify::Silent, None);
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(first.is_done(), "the first keeps its outcome");
    }

    #[test]
    fn only_the_first_taker_gets_the_memory_of_a_finished_operation() {
        let op = Op::new(
            OpKind::Recv,
            None,
            Notify::Silent,
            Some(IoParts::for_recv(vec![vec![0u8; 8]])),
        );
        assert!(op.take_parts().is_none(), "not before it finished");
        op.finish_idle(Outcome::aborted());
        let takers: Vec<_> = (0..4)
            .map(|_| {
                let op = op.clone();
                std::thread::spawn(move || op.take_buffers::<Vec<u8>>().is_some())
            })
            .collect();
        let got: usize = takers.into_iter().map(|t| t.join().unwrap() as usize).sum();
        assert_eq!(got, 1);
        assert!(op.outcome().is_some(), "the outcome stays readable");
    }

    #[test]
    fn every_waiter_wakes_when_another_thread_finishes_the_operation() {
        for round in 0..200 {
            let op = Op::new(OpKind::Send, None, Notify::Silent, None);
            let (woke, wakes) = std::sync::mpsc::channel();
            for _ in 0..3 {
                let (op, woke) = (op.clone(), woke.clone());
                std::thread::spawn(move || woke.send(op.wait().bytes).unwrap());
            }
            let finisher = op.clone();
            std::thread::spawn(move || {
                finisher.finish_idle(Outcome {
                    bytes: round,
                    ..Outcome::aborted()
                })
            });
            for _ in 0..3 {
                let bytes = wakes.recv_timeout(std::time::Duration::from_secs(10));
                assert_eq!(bytes, Ok(round), "a waiter slept through the finish");
            }
        }
    }
}
