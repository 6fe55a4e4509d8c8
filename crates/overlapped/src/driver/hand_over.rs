//! Entries other threads hand to the issuer of a confined ring — the
//! protocol alone, with no ring in it, so that loom can check it (`tests`
//! below, under `--cfg loom`).
//!
//! Only the issuer writes a confined ring's submission queue. Any other
//! thread pushes its entry here and rings the doorbell; the issuer moves
//! the entries into the queue at its next flush — and, so that the queue
//! keeps the order in which entries were handed over, *before* any entry of
//! its own ([`HandOver::take`] ahead of every push). That order is what
//! makes a cancel the issuer submits find an operation another thread
//! submitted first (see `super::lanes`).

use super::sync::atomic::{AtomicBool, Ordering};
use super::sync::{lock, Mutex};

pub(crate) struct HandOver<E> {
    /// Entries from other threads, in the order they came.
    list: Mutex<Vec<E>>,
    /// `list` may hold entries: spares the issuer a lock per push.
    pending: AtomicBool,
}

impl<E> HandOver<E> {
    pub(crate) fn new() -> HandOver<E> {
        HandOver {
            list: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
        }
    }

    /// Queues `entry` for the issuer (any thread but the issuer).
    pub(crate) fn push(&self, entry: E) {
        lock(&self.list).push(entry);
        // After the push, so that whoever sees the flag finds the entry;
        // a release store, so that a thread this one synchronizes with
        // later (through a socket's lanes, say) sees it too.
        self.pending.store(true, Ordering::Release);
    }

    /// Whether entries may wait (for a thread that only rings the doorbell).
    pub(crate) fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Moves every waiting entry to `submit`, in the order they came; the
    /// issuer calls this before it writes an entry of its own. Whether
    /// there were any. Stops at the first entry `submit` refuses, which
    /// stays first in line with everything after it.
    pub(crate) fn take<Err>(
        &self,
        mut submit: impl FnMut(&E) -> Result<(), Err>,
    ) -> Result<bool, Err> {
        if !self.pending.load(Ordering::Acquire) {
            return Ok(false);
        }
        let mut list = lock(&self.list);
        // Cleared under the lock: a push after this sets it again, and
        // its entry is either taken below or waits for the next take.
        self.pending.store(false, Ordering::Relaxed);
        let mut taken = 0;
        let submitted = list.iter().try_for_each(|entry| {
            submit(entry)?;
            taken += 1;
            Ok(())
        });
        list.drain(..taken);
        if submitted.is_err() {
            self.pending.store(true, Ordering::Relaxed);
        }
        submitted.map(|()| taken > 0)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn entries_are_taken_in_the_order_they_came() {
        let hand_over = HandOver::new();
        hand_over.push(1);
        hand_over.push(2);
        let mut taken = Vec::new();
        let any = hand_over.take(|&e| {
            taken.push(e);
            Ok::<_, ()>(())
        });
        assert_eq!(any, Ok(true));
        assert_eq!(taken, [1, 2]);
        assert_eq!(hand_over.take(|_| Ok::<_, ()>(())), Ok(false));
    }

    #[test]
    fn an_entry_the_queue_refuses_stays_first_in_line() {
        let hand_over = HandOver::new();
        hand_over.push(1);
        hand_over.push(2);
        let refused = hand_over.take(|&e| if e == 2 { Err(e) } else { Ok(()) });
        assert_eq!(refused, Err(2));
        assert!(hand_over.is_pending());
        let mut taken = Vec::new();
        hand_over
            .take(|&e| {
                taken.push(e);
                Ok::<_, ()>(())
            })
            .unwrap();
        assert_eq!(taken, [2]);
    }
}
