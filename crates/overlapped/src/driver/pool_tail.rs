//! Who writes the free-buffer ring of a pool, and how buffers given back
//! by other threads reach it — the protocol alone, with no kernel memory
//! in it, so that loom can check it (`loom_models` below, under `--cfg
//! loom`).
//!
//! The kernel takes free buffers from a ring of entries that we write up
//! to a tail we publish. Writing an entry and moving the tail must be done
//! by one thread at a time. Until the pool has an owner, any thread writes
//! under a lock. The issuer of a confined ring then claims it
//! ([`PoolTail::settle_on_owner`], at each reap), and from then on writes
//! alone, without the lock: it gives back most buffers itself (it reaps
//! every arrival). A buffer another thread gives back waits in a list the
//! owner empties at its next reap. The claim is made under the lock, and
//! the lock's holders check for it, so no write of another thread overlaps
//! one of the owner's.

use super::sync::atomic::{AtomicBool, Ordering};
use super::sync::{lock, Confined, Mutex};

/// The tail while no thread owns the pool, and what other threads give
/// back once one does.
struct Refills {
    tail: u16,
    returned: Vec<u16>,
}

pub(crate) struct PoolTail {
    refills: Mutex<Refills>,
    /// The tail, once a thread owns the pool.
    owned: Confined<u16>,
    /// `refills.returned` holds buffers for the owner to put back.
    returned_pending: AtomicBool,
}

impl PoolTail {
    pub(crate) fn new() -> PoolTail {
        PoolTail {
            refills: Mutex::new(Refills {
                tail: 0,
                returned: Vec::new(),
            }),
            owned: Confined::new(0),
            returned_pending: AtomicBool::new(false),
        }
    }

    /// Gives buffer `bid` back: `write(tail, bids)` writes the entries of
    /// `bids` from `tail` on and publishes the new tail. `write` is called
    /// by one thread at a time (the owner, or the holder of the lock), or
    /// not at all when the owner will put the buffer back itself.
    pub(crate) fn give_back(&self, bid: u16, write: impl FnOnce(&mut u16, &[u16])) {
        let mut write = Some(write);
        let by_owner = self.owned.with(|tail| {
            if let Some(write) = write.take() {
                write(tail, &[bid]);
            }
        });
        if by_owner.is_some() {
            return;
        }
        let mut refills = lock(&self.refills);
        if self.owned.is_claimed() {
            // Owned by another thread: it puts the buffer back.
            refills.returned.push(bid);
            self.returned_pending.store(true, Ordering::Release);
            return;
        }
        if let Some(write) = write {
            write(&mut refills.tail, &[bid]);
        }
    }

    /// Called by the thread that is to own the pool (a confined ring's
    /// issuer) at each of its reaps: claims the pool the first time, then
    /// puts back what other threads gave back meanwhile, with `write` (as
    /// in [`PoolTail::give_back`]).
    pub(crate) fn settle_on_owner(&self, write: impl FnOnce(&mut u16, &[u16])) {
        if !self.owned.is_owned_here() {
            let refills = lock(&self.refills);
            if self.owned.claim() {
                self.owned.with(|owned| *owned = refills.tail);
            }
            return;
        }
        if !self.returned_pending.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut refills = lock(&self.refills);
        self.owned.with(|owned| write(owned, &refills.returned));
        // Cleared, not taken: its room is kept for the next buffers.
        refills.returned.clear();
    }
}

/// loom models. Tried and seen failing: a thread giving a buffer back
/// that looks for an owner before it takes the lock (it finds none, the
/// owner claims meanwhile, and both write the ring at once, which loom's
/// cell reports), and `returned_pending` stored before the buffer is in
/// the list (the owner clears the flag, finds nothing, and the buffer is
/// never put back).
#[cfg(all(test, loom))]
mod loom_models {
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    /// The ring of entries, as far as its writers go: the buffers written,
    /// in order, and the tail.
    #[derive(Default)]
    struct Ring(UnsafeCell<Vec<u16>>);

    // SAFETY: the model checks, through loom's cell, that the protocol
    // lets one writer at a time in.
    unsafe impl Sync for Ring {}

    impl Ring {
        fn writer(&self) -> impl FnOnce(&mut u16, &[u16]) + '_ {
            move |tail, bids| {
                self.0.with_mut(|written| {
                    // SAFETY: loom reports it if two writers overlap.
                    let written = unsafe { &mut *written };
                    written.extend_from_slice(bids);
                });
                *tail = tail.wrapping_add(bids.len() as u16);
            }
        }

        fn written(&self) -> Vec<u16> {
            // SAFETY: every writer has been joined.
            self.0.with(|written| unsafe { (*written).clone() })
        }
    }

    #[test]
    fn every_buffer_given_back_as_the_pool_gets_its_owner_is_written_once() {
        loom::model(|| {
            let pool = Arc::new(PoolTail::new());
            let ring = Arc::new(Ring::default());
            let other = {
                let (pool, ring) = (pool.clone(), ring.clone());
                thread::spawn(move || pool.give_back(7, ring.writer()))
            };
            // This thread becomes the owner, and gives one back itself.
            pool.settle_on_owner(ring.writer());
            pool.give_back(1, ring.writer());
            other.join().unwrap();
            // Its next reap puts back what the other gave.
            pool.settle_on_owner(ring.writer());
            let mut written = ring.written();
            written.sort();
            assert_eq!(written, vec![1, 7]);
        });
    }
}
