//! `CompletionPort`: the I/O completion port flavour (IOCP).
//!
//! A port is a queue of completion packets shared by worker threads. A
//! socket is associated with one port and a *completion key*; every
//! operation on it then reports to the port, carrying the program's own
//! *record* of the operation (what an extended `OVERLAPPED` carries in a
//! Windows server: the session, the kind of request). Workers dequeue
//! packets with [`CompletionPort::get_queued_completion_status`] (one) or
//! [`CompletionPort::get_queued_completion_status_ex`] (a batch).
//!
//! ## How completions reach workers
//! A port owns an io_uring of its own, and its sockets' operations go to it.
//! There is no completion thread: a worker that finds the packet queue
//! empty becomes the port's *reaper* — it hands the kernel the submissions
//! waiting in the ring and reaps every completion posted, turning each into
//! a packet — while other workers wait for packets. When the reaper leaves
//! with packets, it wakes one waiter to take over reaping. Packets are handed
//! out first in, first out, to whichever worker asks next; a worker that
//! takes a batch takes up to `max` packets under one lock acquisition. With
//! one worker the whole path — submit, reap, handle — runs on one thread
//! with no hand-off, and operations started inside
//! [`CompletionPort::submit_batch`] reach the kernel in one system call.
//!
//! Several packets of one socket may be processed by different workers at
//! once; the session layer keeps at most one receive and one send in flight
//! per session so that this never reorders a stream.
//!
//! The session layer's `Service` gives each of its workers a port of its
//! own instead, whose ring only that worker reaps and enters: on Linux 6.1
//! and later the kernel then runs it as `SINGLE_ISSUER | DEFER_TASKRUN`, and
//! operations other threads start are handed over to the worker. Such a
//! worker delivers every completion of its ring itself, so those packets go
//! to a queue only it touches: it takes them, reaps and sleeps without the
//! port's lock, which only packets posted by other threads take.

mod dequeue;
mod packet;
mod socket;
mod wake;

pub use packet::Completion;
use packet::Memory;
pub use socket::{PortListener, PortStream};
use wake::Wake;

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::driver::buf_ring::POOL_BUFFERS;
use crate::driver::multicast::{self, MemberSink, Multicast};
use crate::driver::op::{self, Notify, Outcome, Payload, Sink};
use crate::driver::ring::Ring;
use crate::error;
use crate::event::Event;
use crate::overlapped::Transfer;
use crate::sync::{current_thread, Confined, ThreadKey};
use std::os::fd::AsRawFd;

struct Queue<T> {
    packets: VecDeque<Completion<T>>,
    closed: bool,
    /// Workers blocked in a dequeue, other than the reaper.
    waiting: usize,
    /// The worker reaping the ring, if any.
    reaper: Option<ThreadKey>,
}

pub(crate) struct Shared<T> {
    queue: Mutex<Queue<T>>,
    /// `queue.closed`, readable without the lock.
    closed: AtomicBool,
    /// The packets the worker of a confined ring delivers to itself — all
    /// of the ring's completions — queued without a lock. Claimed by that
    /// worker once the ring is confined to it; unclaimed on other ports.
    local: Confined<VecDeque<Completion<T>>>,
    ready: Condvar,
    concurrency: usize,
    ring: Arc<Ring>,
    /// Wakes the reaper for a posted packet or a close (its signal is kept
    /// apart from the ring's own eventfd, which other reapers of the ring
    /// may clear), and tells the owner of `local`, which reaps and sleeps
    /// without the lock, of packets posted meanwhile.
    wake: Wake<Event>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        // Queue updates are single pushes, pops and flag writes.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a packet; dropped if the port is closed.
    fn enqueue(&self, packet: Completion<T>) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        // The worker itself: it is awake, and it alone takes from `local`.
        let mut packet = Some(packet);
        self.local.with(|local| local.extend(packet.take()));
        let Some(packet) = packet else { return };
        let (wake_waiter, wake_reaper) = {
            let mut queue = self.lock();
            if queue.closed {
                return;
            }
            queue.packets.push_back(packet);
            // An owner about to sleep either sees the packet or is woken.
            let owner_reaping = self.wake.published(queue.packets.len());
            // The reaper itself queues the packets it reaps: no need to wake it.
            let asleep_elsewhere =
                queue.reaper.is_some_and(|id| id != current_thread()) || owner_reaping;
            (queue.waiting > 0, asleep_elsewhere)
        };
        if wake_waiter {
            self.ready.notify_one();
        } else if wake_reaper {
            // Posted from outside: the reaper may be asleep in the ring.
            self.wake_reaper();
        }
    }

    fn wake_reaper(&self) {
        if let Err(e) = self.wake.wake() {
            tracing::error!("cannot wake a completion port's reaper: {e}");
        }
    }

    /// Closes the port: wakes everyone and retires the ring.
    fn close(&self) {
        let dropped = {
            let mut queue = self.lock();
            queue.closed = true;
            self.closed.store(true, Ordering::Release);
            self.wake.set_queued(0);
            std::mem::take(&mut queue.packets)
        };
        self.ready.notify_all();
        self.wake_reaper();
        self.ring.retire();
        drop(dropped);
    }
}

/// Closes the port when the last handle to it goes away.
struct Handle<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Drop for Handle<T> {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// An I/O completion port (`CreateIoCompletionPort`).
///
/// Cloning gives another handle to the same port. [`CompletionPort::close`]
/// closes it for every handle.
/// The port closes when [`CompletionPort::close`] is called or when the
/// last handle, including those held by its sockets, is dropped.
pub struct CompletionPort<T> {
    shared: Arc<Shared<T>>,
    handle: Arc<Handle<T>>,
}

impl<T> Clone for CompletionPort<T> {
    fn clone(&self) -> Self {
        CompletionPort {
            shared: self.shared.clone(),
            handle: self.handle.clone(),
        }
    }
}

impl<T: Send + 'static> CompletionPort<T> {
    /// Creates a port (`CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL,
    /// 0, concurrency)`). `concurrency` is the number of worker threads the
    /// program means to run on it; 0 means one per CPU, as on Windows. It
    /// is advisory: the port does not block extra workers.
    pub fn new(concurrency: usize) -> io::Result<CompletionPort<T>> {
        crate::driver::backend()?;
        let concurrency = match concurrency {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        CompletionPort::with_ring(concurrency, Ring::new(true)?)
    }

    /// A port for exactly one worker thread, whose ring is confined to it
    /// ([`Ring::confined`]): the first thread that dequeues is the only one
    /// that ever reaps, so it takes no lock to submit, and on Linux 6.1 and
    /// later the kernel runs the ring as `SINGLE_ISSUER | DEFER_TASKRUN`.
    /// Other threads may still start operations and post packets.
    ///
    /// That thread must stay until the ring is no longer used: after the
    /// port closes it runs what [`CompletionPort::leftover_reaping`] gives it.
    pub(crate) fn for_one_worker() -> io::Result<CompletionPort<T>> {
        crate::driver::backend()?;
        CompletionPort::with_ring(1, Ring::confined()?)
    }

    fn with_ring(concurrency: usize, ring: Arc<Ring>) -> io::Result<CompletionPort<T>> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                packets: VecDeque::new(),
                closed: false,
                waiting: 0,
                reaper: None,
            }),
            closed: AtomicBool::new(false),
            local: Confined::new(VecDeque::new()),
            ready: Condvar::new(),
            concurrency,
            ring,
            wake: Wake::new(Event::new()?),
        });
        Ok(CompletionPort {
            handle: Arc::new(Handle {
                shared: shared.clone(),
            }),
            shared,
        })
    }

    /// Whether this thread can send `len` bytes to some of the port's
    /// sockets as one multicast ([`CompletionPort::multicast`]): the port's
    /// ring is an io_uring confined to this thread (a worker's), still open.
    pub(crate) fn can_multicast(&self, len: usize) -> bool {
        let ring = self.ring();
        (1..=multicast::MAX_LEN).contains(&len)
            && ring.is_confined_to_this_thread()
            && !ring.is_retired()
    }

    /// Sends `data` to every socket in `members` (each from
    /// [`PortStream::multicast_member`]) under one record, and reports each
    /// member's outcome to `sink` by its index (see
    /// [`crate::driver::multicast`]). Call it where
    /// [`CompletionPort::can_multicast`] says it can; should the ring still
    /// refuse, every member fails with the error.
    pub(crate) fn multicast(
        &self,
        data: bytes::Bytes,
        members: Vec<Arc<crate::driver::Socket>>,
        sink: Box<dyn MemberSink>,
    ) {
        let record = Multicast::new(data, members, sink);
        if let Err(e) = self.ring().multicast(&record) {
            record.fail_all(&e);
        }
    }

    pub(crate) fn ring(&self) -> &Arc<Ring> {
        &self.shared.ring
    }

    /// Has the worker, once a completion could wake it, wait up to `wait`
    /// for more (io_uring's minimum wait); `false` where the backend or the
    /// kernel cannot.
    pub(crate) fn set_batch_wait(&self, wait: Duration) -> bool {
        self.shared.ring.set_batch_wait(wait)
    }

    /// Makes the pool of buffers that multishot receives take from now,
    /// of about `buffers` buffers (a power of two, between the pool's
    /// least and most): under steady traffic the kernel takes every buffer
    /// of a pool in turn and all of it becomes resident, so a service's
    /// ports share out what it may hold.
    pub(crate) fn make_receive_pool(&self, buffers: usize) -> io::Result<()> {
        let buffers = u16::try_from(buffers).unwrap_or(POOL_BUFFERS);
        self.shared.ring.ensure_pool_of(buffers)?;
        Ok(())
    }

    /// What the one worker of a port made by [`CompletionPort::for_one_worker`]
    /// must still do once it stops handling packets, before its thread
    /// ends: until the port closes, take (and drop) what reaches it — only
    /// it takes the packets its ring delivers to itself — then reap the
    /// ring, which only it can, until no socket uses it. `None` for other
    /// threads and ports, whose rings are reaped by a thread of their own.
    pub(crate) fn leftover_reaping(self) -> Option<impl FnOnce() + Send> {
        if !self.shared.ring.is_confined_to_this_thread() {
            return None;
        }
        Some(move || {
            let mut dropped = Vec::new();
            while self
                .get_queued_completion_status_ex(&mut dropped, 64, crate::INFINITE)
                .is_ok()
            {
                dropped.clear();
            }
            let ring = self.shared.ring.clone();
            // Only the ring is kept: the port's own references go now.
            drop(self);
            ring.reap_while_used();
        })
    }

    /// Runs `f`, holding back the operations it starts on this port's
    /// sockets, then hands them all to the kernel in one system call. Inside
    /// `f` no operation completes at once: each reports through the port.
    /// A worker that handles a batch of packets does it inside this.
    pub fn submit_batch<R>(&self, f: impl FnOnce() -> R) -> R {
        self.shared.ring.batch(f)
    }

    /// The number of worker threads the port was created for.
    pub fn concurrency(&self) -> usize {
        self.shared.concurrency
    }

    /// Queues a packet of the program's own (`PostQueuedCompletionStatus`):
    /// it is dequeued like any completion, with `bytes` as its byte count.
    /// `WSA_INVALID_HANDLE` (6) once the port is closed.
    pub fn post(&self, key: u64, bytes: usize, record: Option<T>) -> io::Result<()> {
        if self.shared.lock().closed {
            return Err(error::invalid_handle("the completion port is closed"));
        }
        self.shared.enqueue(Completion {
            key,
            result: Ok(Transfer {
                bytes,
                flags: 0,
                source: None,
            }),
            record,
            memory: Memory::None,
        });
        Ok(())
    }

    /// Closes the port (`CloseHandle`): every waiting worker wakes with
    /// `ERROR_ABANDONED_WAIT_0` (735), queued packets are dropped, and later
    /// completions of its sockets are discarded.
    pub fn close(&self) {
        self.shared.close();
    }

    /// Whether [`CompletionPort::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// The notification that turns an operation's completion into a packet
    /// for this port under `key`.
    pub(crate) fn delivery(&self, key: u64) -> Notify {
        Notify::Deliver((self.shared.clone(), key))
    }
}

impl<T: Send + 'static> Sink for Shared<T> {
    fn deliver(&self, key: u64, outcome: Outcome, payload: Payload) {
        let (record, memory) = match payload {
            Payload::Done { op, record } => (record.and_then(op::downcast::<T>), Memory::Op(op)),
            Payload::Lease(lease) => (None, Memory::Lease(lease)),
        };
        self.enqueue(Completion {
            key,
            result: outcome.into_result().map(Transfer::from),
            record,
            memory,
        });
    }
}

/// Moves up to `max` packets from the front of `from` to `put`.
fn hand_out<T>(
    from: &mut VecDeque<Completion<T>>,
    max: usize,
    put: &mut dyn FnMut(Completion<T>),
) -> usize {
    let n = from.len().min(max);
    from.drain(..n).for_each(put);
    n
}

impl<T> fmt::Debug for CompletionPort<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionPort")
            .field("concurrency", &self.shared.concurrency)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ErrorExt;

    fn posted(port: &CompletionPort<u32>, key: u64) {
        port.post(key, 0, None).expect("the port is open");
    }

    /// A confined port whose ring this thread reaped once, which claims it.
    fn claimed_port() -> CompletionPort<u32> {
        let port = CompletionPort::<u32>::for_one_worker().unwrap();
        let nothing = port.get_queued_completion_status(Some(Duration::ZERO));
        assert!(nothing.unwrap().is_none());
        port
    }

    fn next_key(port: &CompletionPort<u32>) -> Option<u64> {
        let timeout = Some(Duration::from_secs(5));
        let packet = port.get_queued_completion_status(timeout).expect("open");
        packet.map(|p| p.key)
    }

    #[test]
    fn the_worker_of_a_confined_port_queues_its_own_packets_without_the_lock() {
        let port = claimed_port();
        let confined = port.ring().is_confined_to_this_thread();
        assert_eq!(port.shared.local.is_owned_here(), confined);

        posted(&port, 2);
        assert_eq!(port.shared.wake.posted(), !confined);
        assert_eq!(next_key(&port), Some(2));
    }

    #[test]
    fn packets_from_another_thread_reach_the_worker_of_a_confined_port() {
        let port = claimed_port();
        posted(&port, 2);
        let other = port.clone();
        std::thread::spawn(move || posted(&other, 3))
            .join()
            .unwrap();
        let mut keys = vec![next_key(&port), next_key(&port)];
        keys.sort();
        assert_eq!(keys, vec![Some(2), Some(3)]);
    }

    #[test]
    fn closing_a_confined_port_drops_the_packets_its_worker_queued() {
        let port = claimed_port();
        posted(&port, 2);
        let other = port.clone();
        std::thread::spawn(move || other.close()).join().unwrap();
        let after_close = port.get_queued_completion_status(Some(Duration::ZERO));
        let code = after_close.unwrap_err().winsock_code();
        assert_eq!(code, Some(crate::error::ERROR_ABANDONED_WAIT_0));
        assert!(port.shared.local.with(|local| local.is_empty()) != Some(false));
    }

    #[test]
    fn the_worker_of_a_confined_port_sleeps_without_the_lock_and_a_post_wakes_it() {
        let port = claimed_port();
        if !port.shared.local.is_owned_here() {
            return; // an ordinary ring: its reaper registers under the lock
        }
        let other = port.clone();
        let poster = std::thread::spawn(move || {
            while !other.shared.wake.owner_reaping() {
                std::thread::yield_now();
            }
            let registered = other.shared.lock().reaper.is_some();
            posted(&other, 9);
            registered
        });
        // Waits for good; if the post does not wake it, a watchdog closes
        // the port, which always does.
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let watched = port.clone();
        let watchdog = std::thread::spawn(move || {
            if finished.recv_timeout(Duration::from_secs(20)).is_err() {
                watched.close();
            }
        });
        let woken = port.get_queued_completion_status(crate::INFINITE);
        drop(done);
        watchdog.join().unwrap();
        let key = woken
            .expect("woken by the post, not by a close")
            .map(|p| p.key);
        assert_eq!(key, Some(9));
        assert!(
            !poster.join().unwrap(),
            "the worker reaped without registering"
        );
    }
}
