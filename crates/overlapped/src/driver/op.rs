//! The record of one operation while the driver owns it.
//!
//! An [`Op`] is shared (`Arc`) between the program's `Overlapped` and the
//! driver. The driver holds one reference for as long as the kernel may touch
//! the operation's memory, so dropping the `Overlapped` or the socket early
//! never frees anything the kernel still uses. Nothing here is specific to
//! io_uring: the backend only reads the prepared [`IoParts`].

use std::any::Any;
use std::cell::{RefCell, UnsafeCell};
use std::io;
use std::mem;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use smallbox::space::S4;
use smallbox::{smallbox, SmallBox};

use super::buf::{IoBuf, IoBufMut};
use super::buf_ring::Lease;
pub(crate) use super::lanes::Direction;
use super::socket::Socket;
use crate::error;
use crate::event::Event;

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

/// A value of the program's whose type the driver does not know (its
/// buffers, its record). Up to four words are kept in place: a `Vec` of
/// buffers and the usual record (an enum around an `Arc`) go to the kernel
/// and back without a heap allocation of their own.
pub(crate) type Erased = SmallBox<dyn Any + Send, S4>;

/// A sink and the tag to deliver with.
pub(crate) type Delivery = (Arc<dyn Sink>, u64);

/// How the program learns that the operation completed.
pub(crate) enum Notify {
    /// Only through the `Overlapped` (polling or `get_overlapped_result`).
    Silent,
    /// Signal this event (`OVERLAPPED::hEvent`).
    Event(Event),
    /// Give the outcome and the buffers away (completion routine, port).
    Deliver(Delivery),
}

/// The outcome of a completed operation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Outcome {
    /// Bytes transferred.
    pub(crate) bytes: usize,
    /// The errno the operation failed with, if it failed.
    pub(crate) error: Option<i32>,
    /// `msg_flags` of a receive.
    pub(crate) flags: u32,
    /// The source address of a datagram receive.
    pub(crate) source: Option<SocketAddr>,
}

impl Outcome {
    pub(crate) fn failed(errno: i32) -> Outcome {
        Outcome {
            bytes: 0,
            error: Some(errno),
            flags: 0,
            source: None,
        }
    }

    pub(crate) fn aborted() -> Outcome {
        Outcome::failed(libc::ECANCELED)
    }

    pub(crate) fn into_result(self) -> io::Result<Outcome> {
        match self.error {
            Some(errno) => Err(error::from_errno(errno)),
            None => Ok(self),
        }
    }
}

/// The message header and address buffer of the operations that need them
/// (several buffers, datagrams, accept, connect), in one allocation.
pub(crate) struct Header {
    pub(crate) msg: libc::msghdr,
    pub(crate) addr: libc::sockaddr_storage,
    /// The iovec of a single buffer, so `msg` can point at it.
    iov: libc::iovec,
}

/// The memory an operation lends to the kernel: the program's buffers, where
/// they are, and the message header if the operation needs one. Everything
/// the kernel is given a pointer to lives on the heap, so moving `IoParts`
/// moves no byte the kernel points at. A receive or send into one buffer
/// needs no header and no iovec array: the kernel gets pointer and length.
pub(crate) struct IoParts {
    /// The program's buffers, `Vec<B>`, type-erased until they go back.
    buffers: Erased,
    /// The one buffer, when there is exactly one.
    single: Option<libc::iovec>,
    /// Every buffer, when there are several (on the heap, so stable).
    several: Vec<libc::iovec>,
    header: Option<Box<Header>>,
    /// Total length of the buffers.
    pub(crate) total: usize,
    /// Bytes a send already transferred on the fast path, before the rest
    /// went to the kernel.
    pub(crate) sent_early: usize,
    /// The connection an accept produced.
    pub(crate) accepted: Option<std::os::fd::OwnedFd>,
    /// The program's own record of the operation (a completion port's
    /// `OVERLAPPED`), given back with the outcome, or on a failed start.
    record: Option<Erased>,
}

// SAFETY: the raw pointers in the iovecs and the header point into heap
// memory owned by this same value (the buffers, the iovec array, the
// header); they move between threads together with their owner.
unsafe impl Send for IoParts {}

impl IoParts {
    /// Describes buffers the kernel will write into.
    pub(crate) fn for_recv<B: IoBufMut>(mut buffers: Vec<B>) -> IoParts {
        let iovecs = buffers.iter_mut().map(|b| libc::iovec {
            iov_base: b.stable_mut_ptr().cast(),
            iov_len: b.len(),
        });
        let (single, several) = IoParts::describe(iovecs);
        IoParts::assemble(smallbox!(buffers), single, several)
    }

    /// Describes buffers the kernel will read from.
    pub(crate) fn for_send<B: IoBuf>(buffers: Vec<B>) -> IoParts {
        let iovecs = buffers.iter().map(|b| libc::iovec {
            iov_base: b.stable_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        });
        let (single, several) = IoParts::describe(iovecs);
        IoParts::assemble(smallbox!(buffers), single, several)
    }

    fn describe(
        iovecs: impl ExactSizeIterator<Item = libc::iovec>,
    ) -> (Option<libc::iovec>, Vec<libc::iovec>) {
        if iovecs.len() == 1 {
            (iovecs.into_iter().next(), Vec::new())
        } else {
            (None, iovecs.collect())
        }
    }

    fn assemble(
        buffers: Erased,
        single: Option<libc::iovec>,
        several: Vec<libc::iovec>,
    ) -> IoParts {
        let total = single.iter().chain(&several).map(|v| v.iov_len).sum();
        IoParts {
            buffers,
            single,
            several,
            header: None,
            total,
            sent_early: 0,
            accepted: None,
            record: None,
        }
    }

    /// The one buffer's pointer and length, when the operation can go to
    /// the kernel without a message header.
    pub(crate) fn single(&self) -> Option<(*mut u8, usize)> {
        match (&self.single, &self.header) {
            (Some(iov), None) => Some((iov.iov_base.cast(), iov.iov_len)),
            _ => None,
        }
    }

    /// The message header, made on first use and pointed at the buffers.
    pub(crate) fn header(&mut self) -> &mut Header {
        let header = self.header.get_or_insert_with(|| {
            Box::new(Header {
                // SAFETY: all-zero is a valid msghdr, sockaddr_storage and iovec.
                msg: unsafe { mem::zeroed() },
                // SAFETY: as above.
                addr: unsafe { mem::zeroed() },
                // SAFETY: as above.
                iov: unsafe { mem::zeroed() },
            })
        });
        match self.single {
            Some(iov) => {
                header.iov = iov;
                header.msg.msg_iov = &mut header.iov;
                header.msg.msg_iovlen = 1;
            }
            None => {
                header.msg.msg_iov = self.several.as_mut_ptr();
                header.msg.msg_iovlen = self.several.len();
            }
        }
        header
    }

    /// The header's message pointer for `recvmsg`/`sendmsg`.
    pub(crate) fn msg_ptr(&mut self) -> *mut libc::msghdr {
        &mut self.header().msg
    }

    /// Attaches the program's record of the operation.
    pub(crate) fn with_record<T: Send + 'static>(mut self, record: T) -> IoParts {
        self.record = Some(smallbox!(record));
        self
    }

    /// Takes the program's record back, if it is of type `T`.
    pub(crate) fn take_record<T: 'static>(&mut self) -> Option<T> {
        downcast(self.record.take()?)
    }

    /// Memory for an operation that lends no buffer of the program's.
    pub(crate) fn empty() -> IoParts {
        IoParts::assemble(smallbox!(Vec::<Vec<u8>>::new()), None, Vec::new())
    }

    /// Memory for an operation that moves no data (accept, connect): only
    /// the address buffer.
    pub(crate) fn for_address(target: Option<SocketAddr>) -> IoParts {
        let mut parts = IoParts::assemble(smallbox!(Vec::<Vec<u8>>::new()), None, Vec::new());
        parts.use_address(target);
        parts
    }

    /// Takes the connection an accept produced.
    pub(crate) fn take_accepted(&mut self) -> Option<std::os::fd::OwnedFd> {
        self.accepted.take()
    }

    /// The program's buffers, if they are of type `B`.
    pub(crate) fn try_into_buffers<B: 'static>(self) -> Option<Vec<B>> {
        downcast(self.buffers)
    }

    /// Points the header's name at the address buffer, for a datagram
    /// receive (the kernel writes the source) or send (we write the target).
    pub(crate) fn use_address(&mut self, target: Option<SocketAddr>) {
        let header = self.header();
        let len = match target {
            Some(target) => {
                let target = socket2::SockAddr::from(target);
                // SAFETY: `target` holds `len()` valid bytes of a sockaddr, and
                // sockaddr_storage is large enough for any address family.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        target.as_ptr().cast::<u8>(),
                        (&mut header.addr as *mut libc::sockaddr_storage).cast::<u8>(),
                        target.len() as usize,
                    );
                }
                target.len()
            }
            None => mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        };
        header.msg.msg_name = (&mut header.addr as *mut libc::sockaddr_storage).cast();
        header.msg.msg_namelen = len;
    }

    /// The address buffer and its length field, for accept and connect.
    pub(crate) fn addr_ptrs(&mut self) -> (*mut libc::sockaddr, *mut libc::socklen_t) {
        let header = self.header();
        (
            (&mut header.addr as *mut libc::sockaddr_storage).cast(),
            &mut header.msg.msg_namelen,
        )
    }

    /// The `msg_flags` a `recvmsg` reported.
    pub(crate) fn msg_flags(&self) -> u32 {
        self.header.as_ref().map_or(0, |h| h.msg.msg_flags as u32)
    }

    /// The source address the kernel wrote for a datagram receive.
    pub(crate) fn source(&self) -> Option<SocketAddr> {
        let header = self.header.as_ref()?;
        let len = header.msg.msg_namelen;
        if len == 0 {
            return None;
        }
        // SAFETY: the kernel wrote a sockaddr of `len` bytes into `addr`, and
        // the storage is copied, not referenced.
        let addr = unsafe { socket2::SockAddr::new(header.addr, len) };
        addr.as_socket()
    }

    /// Bytes not yet transferred: the total less what [`IoParts::advance`]
    /// skipped.
    pub(crate) fn remaining(&self) -> usize {
        self.total - self.sent_early
    }

    /// Skips the first `n` bytes after a partial send on the fast path, so
    /// the kernel sends only the rest.
    pub(crate) fn advance(&mut self, mut n: usize) {
        self.sent_early += n;
        if let Some(iov) = &mut self.single {
            // SAFETY: n < iov_len (the send was partial), so the new base
            // stays inside the buffer.
            iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n) }.cast();
            iov.iov_len -= n;
        } else {
            let mut first = 0;
            while first < self.several.len() && n >= self.several[first].iov_len {
                n -= self.several[first].iov_len;
                first += 1;
            }
            self.several.drain(..first);
            if let Some(iov) = self.several.first_mut() {
                // SAFETY: n < iov_len, so the new base stays inside the buffer.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n) }.cast();
                iov.iov_len -= n;
            }
        }
        if self.header.is_some() {
            // Re-point the header at what is left.
            self.header();
        }
    }

    /// Gives the program's buffers back.
    pub(crate) fn into_buffers<B: 'static>(self) -> Vec<B> {
        match self.try_into_buffers() {
            Some(buffers) => buffers,
            // An `Overlapped<B>` only ever starts operations with `Vec<B>`.
            None => unreachable!("buffers of an operation changed type"),
        }
    }
}

/// The value inside `erased`, if it is a `T`.
pub(crate) fn downcast<T: 'static>(erased: Erased) -> Option<T> {
    erased.downcast::<T>().ok().map(SmallBox::into_inner)
}

/// Where the operation is in its life (`Op::phase`).
///
/// The phase says who may touch the operation's memory (`Op::parts`):
/// - `QUEUED`: created, or waiting behind earlier operations in its
///   direction — whoever holds it outside the kernel: the thread starting
///   it, or the one that took it out of its lane's queue (under the
///   queue's lock).
/// - `SUBMITTED`: handed to the backend — the kernel, or the epoll reaper
///   under the backend's lock; then the thread that finishes it.
/// - `FINISHING`: the thread finishing it, alone.
/// - `DONE`: whoever takes it first (`Op::taken`); the outcome is fixed.
mod phase {
    pub(super) const QUEUED: u8 = 0;
    pub(super) const SUBMITTED: u8 = 1;
    pub(super) const FINISHING: u8 = 2;
    pub(super) const DONE: u8 = 3;
}

/// One operation, shared between the program and the driver.
///
/// Its state is a few atomics, not a lock: a message passes through two
/// operations (its receive and its reply), and each changes phase three or
/// four times. Who may touch the memory follows from the phase (see
/// [`phase`]), and each hand-over between threads goes through a release
/// store of the phase (or a lock of the hand-over's own: a lane's queue,
/// the epoll backend's state, the kernel's rings) and an acquire load.
pub(crate) struct Op {
    pub(crate) kind: OpKind,
    pub(crate) socket: Option<Arc<Socket>>,
    /// The event to signal (`Notify::Event`).
    event: Option<Event>,
    /// Where the outcome and the arrivals go (`Notify::Deliver`). Fixed for
    /// the operation's life, so an arrival reaches it without the lock.
    deliver: Option<Delivery>,
    phase: AtomicU8,
    /// The memory was taken out (`take_parts`, `reclaim`): nobody touches
    /// `parts` again until the op is reused.
    taken: AtomicBool,
    /// The outcome is still to be delivered to `Op::deliver` (cleared at
    /// completion, or when the operation never started).
    delivery_due: AtomicBool,
    /// Written once, by the finishing thread, before `DONE` is published.
    outcome: UnsafeCell<Outcome>,
    parts: UnsafeCell<Option<IoParts>>,
    /// Threads blocked in `wait`, so completion only wakes when needed.
    waiters: AtomicUsize,
    /// It was submitted to the ring its socket moved to (a port's), not
    /// the one the socket was made on: where a cancel must go.
    on_moved_ring: AtomicBool,
    /// What `wait` sleeps on; a finish takes it only when someone waits.
    sleep: Mutex<()>,
    completed: Condvar,
}

// SAFETY: `outcome` is written only by the one thread that moved the phase
// to FINISHING (a compare-and-swap), before it publishes DONE with a
// release store; it is read only after an acquire load saw DONE. `parts`
// is touched only by the phase's owner (see `phase`), each hand-over
// ordered by a release/acquire pair or by the hand-over's own lock, and
// after DONE only by the one thread that set `taken`. Everything else is
// atomics, a lock and immutable fields.
unsafe impl Sync for Op {}

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
        if let Some(mut spare) = take_spare() {
            if let Some(op) = Arc::get_mut(&mut spare) {
                op.kind = kind;
                op.socket = socket;
                op.event = event;
                op.deliver = deliver;
                *op.phase.get_mut() = phase::QUEUED;
                *op.taken.get_mut() = false;
                *op.delivery_due.get_mut() = delivery_due;
                *op.parts.get_mut() = parts;
                *op.waiters.get_mut() = 0;
                *op.on_moved_ring.get_mut() = false;
                return spare;
            }
        }
        Arc::new(Op {
            kind,
            socket,
            event,
            deliver,
            phase: AtomicU8::new(phase::QUEUED),
            taken: AtomicBool::new(false),
            delivery_due: AtomicBool::new(delivery_due),
            outcome: UnsafeCell::new(Outcome::aborted()),
            parts: UnsafeCell::new(parts),
            waiters: AtomicUsize::new(0),
            on_moved_ring: AtomicBool::new(false),
            sleep: Mutex::new(()),
            completed: Condvar::new(),
        })
    }

    /// Runs `f` on the operation's memory, unless it was taken out.
    ///
    /// # Safety
    /// The calling thread must own the memory in the current phase (see
    /// [`phase`]): it is starting the operation, or performs it for the
    /// backend under the backend's lock.
    pub(crate) unsafe fn with_parts<R>(&self, f: impl FnOnce(&mut IoParts) -> R) -> Option<R> {
        // SAFETY: the caller owns the memory now (the contract above).
        unsafe { self.owned_parts() }.map(f)
    }

    /// The operation's memory, unless it was taken out.
    ///
    /// # Safety
    /// As for [`Op::with_parts`], and no other reference to the memory may
    /// be alive while the returned one is.
    #[allow(clippy::mut_from_ref)] // the phase protocol makes it exclusive
    unsafe fn owned_parts(&self) -> Option<&mut IoParts> {
        if self.taken.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: per the contract, this thread owns the memory now.
        unsafe { (*self.parts.get()).as_mut() }
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
        self.phase.load(Ordering::Acquire) == phase::DONE
    }

    pub(crate) fn is_queued(&self) -> bool {
        self.phase.load(Ordering::Acquire) == phase::QUEUED
    }

    pub(crate) fn mark_submitted(&self) {
        self.phase.store(phase::SUBMITTED, Ordering::Release);
    }

    /// [`Op::mark_submitted`], once `f` has built the kernel's request from
    /// the operation's memory.
    ///
    /// # Safety
    /// As for [`Op::with_parts`]: the calling thread is the one starting
    /// the operation, which owns it until it is marked submitted.
    pub(crate) unsafe fn submit_with<R>(&self, f: impl FnOnce(Option<&mut IoParts>) -> R) -> R {
        // SAFETY: the caller owns the memory until the store below.
        let built = f(unsafe { self.owned_parts() });
        self.mark_submitted();
        built
    }

    pub(crate) fn mark_queued(&self) {
        self.phase.store(phase::QUEUED, Ordering::Release);
    }

    /// The outcome, if the operation completed.
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        if !self.is_done() {
            return None;
        }
        // SAFETY: DONE was seen with acquire ordering: the outcome was
        // written before it was published, and is never written again.
        Some(unsafe { *self.outcome.get() })
    }

    /// Blocks until the operation completes and returns its outcome.
    pub(crate) fn wait(&self) -> Outcome {
        if let Some(outcome) = self.outcome() {
            return outcome;
        }
        let mut asleep = self.sleep.lock().unwrap_or_else(|p| p.into_inner());
        // Counted before the phase is read again (both sequentially
        // consistent), so a finish either sees the count or is seen here.
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let outcome = loop {
            if self.phase.load(Ordering::SeqCst) == phase::DONE {
                break self.outcome();
            }
            asleep = self
                .completed
                .wait(asleep)
                .unwrap_or_else(|p| p.into_inner());
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        outcome.unwrap_or_else(Outcome::aborted)
    }

    /// Takes the memory back once the operation completed; only the first
    /// caller gets it.
    pub(crate) fn take_parts(&self) -> Option<IoParts> {
        if !self.is_done() || self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: DONE was seen with acquire ordering, so the finishing
        // thread is done with the memory, and setting `taken` made this
        // thread the only one to touch it from now on.
        unsafe { (*self.parts.get()).take() }
    }

    /// Takes the buffers back once the operation completed.
    pub(crate) fn take_buffers<B: 'static>(&self) -> Option<Vec<B>> {
        self.take_parts().map(IoParts::into_buffers)
    }

    /// Takes the memory back from an operation that never started, and
    /// drops its delivery without running it.
    pub(crate) fn reclaim(&self) -> Option<IoParts> {
        debug_assert!(self.is_queued());
        self.delivery_due.store(false, Ordering::Release);
        if !self.is_queued() || self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: an operation that failed to start belongs to the thread
        // that tried to start it; setting `taken` keeps everyone else out.
        unsafe { (*self.parts.get()).take() }
    }

    /// [`Op::reclaim`], keeping only the buffers.
    pub(crate) fn reclaim_buffers<B: 'static>(&self) -> Vec<B> {
        self.reclaim()
            .map(IoParts::into_buffers)
            .unwrap_or_default()
    }

    /// Records the outcome and tells the program: the operation is over.
    pub(crate) fn finish(self: &Arc<Self>, outcome: Outcome) {
        self.finish_with(|_| outcome);
    }

    /// [`Op::finish`] with the outcome `f` reads off the operation's memory.
    /// Only the first finish of an operation counts.
    pub(crate) fn finish_with(self: &Arc<Self>, f: impl FnOnce(Option<&mut IoParts>) -> Outcome) {
        let claimed = self
            .phase
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now < phase::FINISHING).then_some(phase::FINISHING)
            });
        if claimed.is_err() {
            debug_assert!(false, "an operation finished twice");
            return;
        }
        let delivery = match self.delivery_due.swap(false, Ordering::AcqRel) {
            true => self.deliver.as_ref(),
            false => None,
        };
        // SAFETY: moving the phase to FINISHING made this thread the only
        // owner of the memory and the outcome until DONE is published.
        let mut parts = unsafe { self.owned_parts() };
        let outcome = f(parts.as_deref_mut());
        let record = delivery.and(parts.and_then(|parts| parts.record.take()));
        // SAFETY: as above; DONE, published below, makes it readable.
        unsafe { *self.outcome.get() = outcome };
        // Sequentially consistent, as is `wait`'s count: see `wait`.
        self.phase.store(phase::DONE, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            drop(self.sleep.lock().unwrap_or_else(|p| p.into_inner()));
            self.completed.notify_all();
        }
        if let Some((sink, tag)) = delivery {
            let op = Finished(Some(self.clone()));
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
    *unshared.parts.get_mut() = None;
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

#[cfg(test)]
mod tests {
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
        first.finish(Outcome::aborted());
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
        assert!(second.is_queued());
        // SAFETY: this thread made the op and is the only one to know it.
        let parts = unsafe { second.with_parts(|_| ()) };
        assert!(parts.is_none(), "no buffers of the last use");
        second.finish(Outcome::aborted());
        assert!(
            sink.payloads.lock().unwrap().is_empty(),
            "nothing went to the old sink"
        );
    }

    #[test]
    fn an_operation_still_referenced_is_not_reused() {
        let sink = Arc::new(Keeping::default());
        let first = receive_into(&sink);
        first.finish(Outcome::aborted());
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
        op.finish(Outcome::aborted());
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
                finisher.finish(Outcome {
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
