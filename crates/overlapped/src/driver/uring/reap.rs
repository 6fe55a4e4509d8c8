//! What the kernel posts: each completion's `user_data` told apart, and
//! handed to the operation it belongs to.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use io_uring::cqueue;

use super::super::buf_ring::{BufRing, Lease};
use super::super::lifecycle;
use super::super::multicast;
use super::super::op::Op;

/// `user_data` of the multishot poll on the owner's wake-up descriptor.
/// An operation's `user_data` is the address of its `Op`, never this small.
pub(super) const WAKE_POLL: u64 = 1;
/// `user_data` of a no-op submitted to wake a thread sleeping in the ring.
pub(super) const WAKE_NOP: u64 = 2;
/// `user_data` of the multishot poll on a confined ring's doorbell.
pub(super) const DOORBELL_POLL: u64 = 3;

/// A completion copied out of the queue: user data, result, flags.
pub(super) type Reaped = (u64, i32, u32);

/// Hands each completion in `batch` to the driver, emptying it.
pub(super) fn complete_all(
    owner: &Owner<'_>,
    batch: &mut Vec<Reaped>,
    mut poll_ended: impl FnMut(u64),
) -> usize {
    let reaped = batch.len();
    for (user_data, result, flags) in batch.drain(..) {
        if user_data <= DOORBELL_POLL {
            // A wake-up only ends a wait. A poll that ended (the kernel
            // stops a multishot poll on overflow) is posted again by the
            // next sleep.
            if !cqueue::more(flags) {
                poll_ended(user_data);
            }
            continue;
        }
        if multicast::is_member(user_data) {
            owner.in_flight.fetch_sub(1, Ordering::AcqRel);
            // SAFETY: only `submit_multicast` tags `user_data` (an op's
            // address is even), with a member whose entry the kernel took;
            // a send posts one completion.
            unsafe { multicast::complete(user_data, result) };
            continue;
        }
        let arrival = cqueue::buffer_select(flags).filter(|_| result > 0);
        if cqueue::more(flags) {
            if let Some(bid) = arrival {
                let op = counted_reference(user_data);
                owner.arrived(&op, bid, result);
            }
            continue;
        }
        owner.in_flight.fetch_sub(1, Ordering::AcqRel);
        // SAFETY: every submitted entry carries a reference made by
        // `Arc::into_raw` in `submit`, and the kernel posts exactly one
        // final completion (without IORING_CQE_F_MORE) for it, so each
        // reference is taken back exactly once.
        let op = unsafe { Arc::from_raw(user_data as *const Op) };
        if let Some(bid) = arrival {
            // A multishot receive that stopped with data in hand.
            owner.arrived(&op, bid, result);
        }
        lifecycle::complete(op, result);
    }
    reaped
}

/// What a drain reports to, of the ring that owns the backend.
pub(super) struct Owner<'a> {
    pub(super) pool: Option<&'a Arc<BufRing>>,
    pub(super) in_flight: &'a AtomicUsize,
}

impl Owner<'_> {
    /// Hands buffer `bid` of the pool, which the kernel filled with
    /// `result` bytes for `op`, to the operation's sink.
    fn arrived(&self, op: &Op, bid: u16, result: i32) {
        match self.pool {
            Some(pool) => lifecycle::arrived(op, Lease::new(pool.clone(), bid, result as usize)),
            // A buffer is selected only from a registered pool.
            None => tracing::error!("a completion names a buffer of a pool the ring does not have"),
        }
    }
}

/// A reference of its own to the op of a request the kernel is not done
/// with (it posted a completion with `IORING_CQE_F_MORE`), for as long as
/// one of its arrivals is handled: the ring's own reference is let go of
/// only at the request's final completion, which the one reaper handles
/// after this one.
fn counted_reference(user_data: u64) -> Arc<Op> {
    let op = user_data as *const Op;
    // SAFETY: `user_data` is a reference made by `Arc::into_raw` in
    // `Uring::submit`, which the ring holds until the final completion;
    // that completion comes after this one and is handled after it by the
    // same reaper (see `Uring::drain`), so the op is alive here. Counting
    // one more reference leaves the ring's own untouched.
    unsafe {
        Arc::increment_strong_count(op);
        Arc::from_raw(op)
    }
}
