//! A session's sending: what it queues (from its worker, or handed over
//! from another thread), the one gathered send in flight, and what its
//! completion releases.

use super::*;

/// Bytes to queue: shared, or to be copied into the session's memory.
enum Outgoing<'a> {
    Shared(Bytes),
    Copied(&'a [u8]),
}

impl Outgoing<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Outgoing::Shared(data) => data.len(),
            Outgoing::Copied(data) => data.len(),
        }
    }

    /// Queues the bytes (coalescing small ones); what they cost.
    pub(super) fn push_onto(self, queue: &mut SendQueue) -> usize {
        match self {
            Outgoing::Shared(data) => queue.push_shared(data),
            Outgoing::Copied(data) => queue.push_copy(data),
        }
    }

    /// The bytes as another thread hands them to the worker.
    pub(super) fn into_owned(self) -> Bytes {
        match self {
            Outgoing::Shared(data) => data,
            Outgoing::Copied(data) => Bytes::copy_from_slice(data),
        }
    }
}

impl Session {
    /// Queues `data` to be sent. If no send is in flight, everything queued
    /// goes out in one gathered send now; otherwise it joins the next one.
    /// The bytes are shared, not copied: the same `Bytes` can be queued on
    /// many sessions. Returns `false` (and drops `data`) once disconnected
    /// or closing. From a thread other than the session's worker, the bytes
    /// are handed to the worker, which queues them.
    ///
    /// A peer that does not read lets the queue grow; once it would hold
    /// more than [`ServiceConfig::max_send_queue`](crate::session::ServiceConfig::max_send_queue) bytes, the session
    /// is disconnected instead (its `on_disconnected` runs on the worker,
    /// inside this call when it is made there).
    pub fn send(self: &Arc<Self>, data: Bytes) -> bool {
        self.queue_send(Outgoing::Shared(data))
    }

    /// Queues a copy of `data`, as [`Session::send`] does with its own
    /// bytes. On the session's worker, a copy of up to 1 KiB goes into
    /// memory the session keeps and reuses once earlier copies have been
    /// sent, so a reply built from a slice (an echo, a game packet) costs no
    /// allocation per message; a larger one is allocated on its own.
    pub fn send_copy(self: &Arc<Self>, data: &[u8]) -> bool {
        self.queue_send(Outgoing::Copied(data))
    }

    fn queue_send(self: &Arc<Self>, data: Outgoing<'_>) -> bool {
        if !self.is_connected() || self.gate.is_draining() {
            return false;
        }
        let data = match self.queue_here(data) {
            Ok(queued) => return queued,
            // Another thread, or a send from inside the queue's own update.
            Err(data) => data,
        };
        // What is on its way to the worker is held too: counted against
        // the cap before it is handed over.
        let cost = handed_over_cost(data.len());
        let held =
            self.held_queued.load(Ordering::Relaxed) + self.held_handed.load(Ordering::Relaxed);
        if held + cost > self.max_send_queue {
            Enqueued::Overflow { held, more: cost }.finish(self);
            return false;
        }
        // Counted before it is handed over, unless the close came first:
        // a graceful close then waits for it (see `send_gate`).
        if !self.gate.admit() {
            return false;
        }
        self.held_handed.fetch_add(cost, Ordering::Relaxed);
        let handed = self.hand_to_worker(Io::Deliver(Box::new((self.clone(), data.into_owned()))));
        if !handed {
            self.held_handed.fetch_sub(cost, Ordering::Relaxed);
            self.gate.handed_over();
        }
        handed
    }

    /// Bytes the server holds for this session now: its queued sends
    /// (each buffer with its cost), the sends other threads handed to its
    /// worker that it has not queued yet, and its receive buffer. What the
    /// service's memory budget ([`ServiceConfig::max_memory`](crate::session::ServiceConfig::max_memory))
    /// counts.
    pub fn held_bytes(&self) -> usize {
        self.held_queued.load(Ordering::Relaxed)
            + self.held_handed.load(Ordering::Relaxed)
            + self.held_buffer.load(Ordering::Relaxed)
    }

    /// Bytes another thread handed over, queued here on the worker. They
    /// were taken before any graceful close that came after them, so they
    /// are sent even if the session is closing now, and the close shuts
    /// the write side only after them.
    pub(crate) fn on_handed_over(self: &Arc<Self>, data: Bytes) {
        self.held_handed
            .fetch_sub(handed_over_cost(data.len()), Ordering::Relaxed);
        let queued = self.is_connected() && self.queue_here(Outgoing::Shared(data)).is_ok();
        self.gate.handed_over();
        if !self.is_connected() {
            return;
        }
        if !queued {
            return self.disconnect("its send queue was reached off its worker thread");
        }
        if self.gate.is_draining() {
            self.shut_write_once_flushed();
        }
    }

    /// Queues `data` if this thread is the session's worker (and not inside
    /// the queue's own update); gives it back otherwise. Whether it was
    /// queued, or the session disconnected for it.
    fn queue_here<'a>(self: &Arc<Self>, data: Outgoing<'a>) -> Result<bool, Outgoing<'a>> {
        let queued = self
            .send
            .with_arg(data, |queue, data| self.enqueue(queue, data));
        queued.map(|queued| queued.finish(self))
    }

    /// Posts `io` to the session's worker; `false` once the service is gone.
    pub(super) fn hand_to_worker(self: &Arc<Self>, io: Io) -> bool {
        match self.service.upgrade() {
            Some(service) => service.post_to_worker(self.id, io),
            None => false,
        }
    }

    /// Queues `data` on the worker; what to do next comes back.
    fn enqueue(&self, queue: &mut SendQueue, data: Outgoing<'_>) -> Enqueued {
        let cost = SendQueue::cost_of(data.len());
        if queue.queued + cost > self.max_send_queue && !queue.multishot.is_stopping() {
            return Enqueued::Overflow {
                held: queue.queued,
                more: cost,
            };
        }
        WorkerCounters::bump(&self.counters.packets_out, 1);
        if !queue.started {
            // Nothing goes out before what `on_connected` sends.
            queue.queued += cost;
            self.held_queued.store(queue.queued, Ordering::Relaxed);
            queue.early.push(data.into_owned());
            return Enqueued::Queued {
                batch: None,
                stop_reading: false,
            };
        }
        queue.queued += data.push_onto(queue);
        self.held_queued.store(queue.queued, Ordering::Relaxed);
        self.counters.send_queue_reached(queue.queued);
        let stop_reading = self.multishot && queue.stop_reading(self.max_send_queue);
        let batch = (!queue.in_flight).then(|| {
            queue.in_flight = true;
            queue.take_batch()
        });
        Enqueued::Queued {
            batch,
            stop_reading,
        }
    }

    pub(super) fn post_send(self: &Arc<Self>, batch: Vec<Bytes>) {
        if let Err(e) = self.stream.send(batch, Io::Send(self.clone())) {
            let (error, _, _) = e.into_parts();
            self.disconnect(&format!("cannot post a send: {error}"));
        }
    }

    /// A gathered send completed: report it, then send whatever queued up
    /// meanwhile.
    pub(crate) fn on_send_complete(
        self: &Arc<Self>,
        result: io::Result<Transfer>,
        sent: Option<Vec<Bytes>>,
    ) {
        let sent = sent.unwrap_or_default();
        let done = SendQueue::cost_of_batch(&sent);
        self.finish_send(result.map(|transfer| transfer.bytes), sent, done)
    }

    /// If this session's queue is idle — started, nothing queued or in
    /// flight, connected and not closing — takes `len` bytes of a multicast
    /// as its send in flight (counted against its cap as a send of its own)
    /// and gives the socket to send them on; `None` otherwise, when the
    /// bytes are queued with [`Session::send`] instead. Only on the
    /// session's worker.
    pub(crate) fn lend_to_multicast(
        self: &Arc<Self>,
        len: usize,
    ) -> Option<Arc<crate::driver::Socket>> {
        if !self.is_connected() || self.gate.is_draining() {
            return None;
        }
        let socket = self.stream.multicast_member()?;
        let cost = SendQueue::cost_of(len);
        let lent = self.send.with(|queue| {
            let idle = queue.started && !queue.in_flight && !queue.has_pending();
            if !idle || queue.queued + cost > self.max_send_queue {
                return None;
            }
            queue.in_flight = true;
            queue.queued += cost;
            self.held_queued.store(queue.queued, Ordering::Relaxed);
            self.counters.send_queue_reached(queue.queued);
            Some(self.multishot && queue.stop_reading(self.max_send_queue))
        });
        let stop_reading = lent.flatten()?;
        WorkerCounters::bump(&self.counters.packets_out, 1);
        if stop_reading {
            self.stop_multishot();
        }
        Some(socket)
    }

    /// This session's send of a multicast's `len` bytes ended with
    /// `result` (bytes taken, or `-errno`): as a gathered send's completion.
    pub(crate) fn on_multicast_sent(self: &Arc<Self>, result: i32, len: usize) {
        let taken = match usize::try_from(result) {
            Ok(bytes) if bytes == len => Ok(bytes),
            // A stream send takes every byte unless it fails part way.
            Ok(bytes) => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("the connection took {bytes} of {len} bytes"),
            )),
            Err(_) => Err(crate::error::from_errno(-result)),
        };
        self.finish_send(taken, Vec::new(), SendQueue::cost_of(len))
    }

    /// A send that cost `done` against the cap ended with `result` (bytes
    /// sent): report it, then send whatever queued up meanwhile, in
    /// `spare`'s vector (that of the finished batch).
    fn finish_send(self: &Arc<Self>, result: io::Result<usize>, spare: Vec<Bytes>, done: usize) {
        match result {
            Ok(bytes) => {
                WorkerCounters::bump(&self.counters.bytes_out, bytes as u64);
                self.handler.on_sent(self, bytes)
            }
            Err(e) => return self.disconnect(&format!("send failed: {e}")),
        }
        let next = self.send.with_arg(spare, |queue, mut spare| {
            queue.queued = queue.queued.saturating_sub(done);
            self.held_queued.store(queue.queued, Ordering::Relaxed);
            spare.clear();
            queue.spare = spare;
            let resume = queue.resume_reading(self.max_send_queue);
            if !queue.has_pending() || !self.is_connected() {
                queue.in_flight = false;
                (None, resume)
            } else {
                (Some(queue.take_batch()), resume)
            }
        });
        let Ok((batch, (resumed, restart_multishot))) = next else {
            return self.disconnect("its send queue was reached off its worker thread");
        };
        if let Some(buffer) = resumed {
            self.post_recv(buffer);
        }
        if restart_multishot {
            self.post_multishot();
        }
        match batch {
            Some(batch) => self.post_send(batch),
            None if self.is_closing() => self.shut_write_once_flushed(),
            None => {}
        }
    }
}

/// What [`Session::enqueue`] left to do once the queue is let go of.
enum Enqueued {
    /// The bytes would pass the cap: disconnect.
    Overflow { held: usize, more: usize },
    /// Queued: post `batch` if it is due, and stop reading if asked.
    Queued {
        batch: Option<Vec<Bytes>>,
        stop_reading: bool,
    },
}

impl Enqueued {
    /// Does it; whether the bytes were queued.
    pub(super) fn finish(self, session: &Arc<Session>) -> bool {
        match self {
            Enqueued::Overflow { held, more } => {
                session.disconnect(&format!(
                    "send queue full: {held} bytes waiting and {more} more would pass the \
                     {}-byte limit (the client is not reading)",
                    session.max_send_queue
                ));
                false
            }
            Enqueued::Queued {
                batch,
                stop_reading,
            } => {
                if stop_reading {
                    session.stop_multishot();
                }
                if let Some(batch) = batch {
                    session.post_send(batch);
                }
                true
            }
        }
    }
}
