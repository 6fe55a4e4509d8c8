//! A worker's schedule: work due at a moment (a room's delayed job, its
//! next tick), run by that worker between completions. The worker waits
//! on its port no longer than until the earliest entry, so a tick needs
//! no thread of its own and no hand-off: it is run where its room's jobs
//! run.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// What runs when an entry is due.
pub(crate) type Due = Box<dyn FnOnce() + Send>;

struct Entry {
    at: Instant,
    /// Entries due at the same moment run in the order they were added.
    seq: u64,
    run: Due,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// Reversed: the heap's top is the earliest entry.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Default)]
struct Entries {
    heap: BinaryHeap<Entry>,
    next_seq: u64,
    stopped: bool,
}

/// One worker's entries.
#[derive(Default)]
pub(crate) struct Schedule {
    entries: Mutex<Entries>,
}

impl Schedule {
    fn entries(&self) -> MutexGuard<'_, Entries> {
        // Pushes and pops only: a panic cannot leave the heap half done.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `run` at `at`. Whether it is now the earliest entry (a worker
    /// asleep until a later one must be woken); `None` once stopped (and
    /// `run` dropped).
    pub(crate) fn add(&self, at: Instant, run: Due) -> Option<bool> {
        let mut entries = self.entries();
        if entries.stopped {
            return None;
        }
        let seq = entries.next_seq;
        entries.next_seq += 1;
        let earliest = entries.heap.peek().is_none_or(|top| at < top.at);
        entries.heap.push(Entry { at, seq, run });
        Some(earliest)
    }

    /// When the earliest entry is due.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.entries().heap.peek().map(|top| top.at)
    }

    /// Takes the entries due by `now()`, earliest first; the clock is read
    /// only when there is an entry (a worker asks after every batch).
    pub(crate) fn take_due(&self, now: impl FnOnce() -> Instant) -> Vec<Due> {
        let mut entries = self.entries();
        let mut due = Vec::new();
        if entries.heap.is_empty() {
            return due;
        }
        let now = now();
        while entries.heap.peek().is_some_and(|top| top.at <= now) {
            if let Some(entry) = entries.heap.pop() {
                due.push(entry.run);
            }
        }
        due
    }

    /// Drops every entry and refuses new ones (the service stopped).
    pub(crate) fn stop(&self) {
        let dropped = {
            let mut entries = self.entries();
            entries.stopped = true;
            std::mem::take(&mut entries.heap)
        };
        // Outside the lock: an entry may own what adds to this schedule.
        drop(dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[test]
    fn entries_come_due_earliest_first_and_in_order_of_adding_at_one_moment() {
        let schedule = Schedule::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        for (n, at) in [(1, 20), (2, 10), (3, 10), (4, 30)] {
            let order = order.clone();
            let at = t0 + Duration::from_millis(at);
            schedule.add(at, Box::new(move || order.lock().unwrap().push(n)));
        }
        assert_eq!(schedule.next(), Some(t0 + Duration::from_millis(10)));
        for run in schedule.take_due(|| t0 + Duration::from_millis(20)) {
            run();
        }
        assert_eq!(*order.lock().unwrap(), vec![2, 3, 1]);
        assert_eq!(schedule.next(), Some(t0 + Duration::from_millis(30)));
    }

    #[test]
    fn an_entry_earlier_than_every_other_says_so() {
        let schedule = Schedule::default();
        let t0 = Instant::now();
        assert_eq!(
            schedule.add(t0 + Duration::from_secs(2), Box::new(|| {})),
            Some(true)
        );
        assert_eq!(
            schedule.add(t0 + Duration::from_secs(3), Box::new(|| {})),
            Some(false)
        );
        assert_eq!(
            schedule.add(t0 + Duration::from_secs(1), Box::new(|| {})),
            Some(true)
        );
        schedule.stop();
        assert_eq!(schedule.add(t0, Box::new(|| {})), None);
        assert_eq!(schedule.next(), None);
    }
}
