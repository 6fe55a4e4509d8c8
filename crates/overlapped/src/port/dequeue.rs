//! Taking completions off a port: `GetQueuedCompletionStatus` and its
//! batch form — the packets queued, else the port's ring reaped by the
//! thread that owns it, else a sleep until a post or a completion.

use super::*;

impl<T: Send + 'static> CompletionPort<T> {
    /// Dequeues one packet (`GetQueuedCompletionStatus`), waiting up to
    /// `timeout` ([`crate::INFINITE`] = forever). `Ok(None)` when the
    /// timeout passed (`WAIT_TIMEOUT`); `ERROR_ABANDONED_WAIT_0` (735) once
    /// the port is closed.
    pub fn get_queued_completion_status(
        &self,
        timeout: Option<Duration>,
    ) -> io::Result<Option<Completion<T>>> {
        let mut packet = None;
        self.dequeue(timeout, 1, &mut |p| packet = Some(p))?;
        Ok(packet)
    }

    /// Dequeues up to `max` packets into `into` (`GetQueuedCompletionStatusEx`),
    /// waiting up to `timeout` for the first. Returns how many were added;
    /// 0 means the timeout passed.
    pub fn get_queued_completion_status_ex(
        &self,
        into: &mut Vec<Completion<T>>,
        max: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        self.dequeue(timeout, max, &mut |p| into.push(p))
    }

    /// Hands up to `max` packets to `put`, waiting up to `timeout` for the
    /// first; reaps the ring meanwhile unless another worker does. The
    /// packets a confined ring's worker delivered to itself come first, and
    /// reach it without a lock while no other thread has posted any.
    fn dequeue(
        &self,
        timeout: Option<Duration>,
        max: usize,
        put: &mut dyn FnMut(Completion<T>),
    ) -> io::Result<usize> {
        let shared = &*self.shared;
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut last_look = false;
        loop {
            if shared.closed.load(Ordering::Acquire) {
                // Packets hold their operations, which hold the port.
                shared.local.with(VecDeque::clear);
                return Err(error::abandoned());
            }
            let mut taken = shared
                .local
                .with(|local| hand_out(local, max, put))
                .unwrap_or(0);
            let posted = shared.wake.posted();
            if taken == max || (taken > 0 && !posted) {
                return Ok(taken);
            }
            // The owner of the local queue reaps without the lock.
            if taken == 0 && !posted && !last_look && shared.local.is_owned_here() {
                last_look = self.reap_as_owner(deadline)?;
                continue;
            }
            let mut queue = shared.lock();
            if queue.closed {
                continue;
            }
            if taken > 0 || !queue.packets.is_empty() || last_look {
                taken += hand_out(&mut queue.packets, max - taken, put);
                shared.wake.set_queued(queue.packets.len());
                return Ok(taken);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            // A confined ring is reaped by its own thread only; others
            // wait for the packets it queues.
            if queue.reaper.is_none() && shared.ring.may_reap() {
                queue.reaper = Some(current_thread());
                // Reset under the lock: a post or close after this point
                // takes the lock first, then sets it again.
                shared.wake.clear()?;
                drop(queue);
                let reaped = shared
                    .ring
                    .reap(left, Some(shared.wake.signal().as_raw_fd()));
                if shared.ring.is_confined_to_this_thread() {
                    // From now on this thread delivers every completion.
                    shared.local.claim();
                }
                let mut queue = shared.lock();
                queue.reaper = None;
                if queue.waiting > 0 {
                    // Someone must reap while this worker handles its packets.
                    shared.ready.notify_one();
                }
                reaped?;
                last_look = left == Some(Duration::ZERO);
                continue;
            }
            if left == Some(Duration::ZERO) {
                return Ok(0);
            }
            queue.waiting += 1;
            queue = match left {
                Some(left) => {
                    let waited = shared.ready.wait_timeout(queue, left);
                    waited.unwrap_or_else(|p| p.into_inner()).0
                }
                None => shared.ready.wait(queue).unwrap_or_else(|p| p.into_inner()),
            };
            queue.waiting -= 1;
        }
    }

    /// Reaps the ring as the owner of the port's local queue (the issuer
    /// of its confined ring, its one worker), without the lock: it delivers
    /// every completion itself, and a post from another thread wakes it
    /// through `owner_reaping`. Returns whether the deadline has passed.
    fn reap_as_owner(&self, deadline: Option<Instant>) -> io::Result<bool> {
        let shared = &*self.shared;
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        // A post the look misses rings the signal, so the sleep below ends
        // at once (see `wake`).
        let posted = shared.wake.owner_about_to_sleep();
        let reaped = match posted {
            Ok(true) => Ok(0),
            Ok(false) if shared.closed.load(Ordering::Acquire) => Ok(0),
            Ok(false) => shared
                .ring
                .reap(left, Some(shared.wake.signal().as_raw_fd())),
            Err(e) => Err(e),
        };
        shared.wake.owner_awake();
        reaped?;
        Ok(left == Some(Duration::ZERO))
    }
}
