//! Where an operation is in its life, and so who may touch its memory and
//! its outcome — the protocol alone, with no descriptor or ring in it, so
//! that loom can check it (`loom_models` below, under `--cfg loom`).
//!
//! An operation's memory (its buffers, message header, address) is lent to
//! the kernel while it runs, and each hand-over between threads is one
//! atomic step of the phase, a release paired with an acquire:
//!
//! | phase | the memory is … | reached through |
//! |---|---|---|
//! | `IDLE` | whoever holds the op outside the kernel: it is new, waits in its lane, or its start failed | [`Phase::claim`] → a [`Claim`]; [`Phase::finish_idle`] (a cancel, a close) |
//! | `OWNED` | the one thread that claimed it: starting it, or performing it for the backend | the [`Claim`] |
//! | `SUBMITTED` | the backend's (the kernel's) | [`Phase::claim_from_backend`], [`Phase::finish_from_backend`], once the backend let go |
//! | `FINISHING` | the finishing thread's, alone | inside `finish` |
//! | `DONE` | the first taker's ([`Phase::take`]); the outcome is fixed | [`Phase::outcome`], [`Phase::wait`] |
//!
//! Every claim is a compare-and-swap, so two threads can never both hold
//! the memory: a second claimer is refused, not trusted. The only contract
//! left to the caller is the one no type can know: that the kernel has let
//! go of a submitted operation (its final completion was reaped, or the
//! epoll backend performs it under its own lock) — the two `unsafe`
//! functions.

use crate::sync::atomic::{fence, AtomicBool, AtomicU8, AtomicUsize, Ordering};
use crate::sync::cell::UnsafeCell;
use crate::sync::{lock, Condvar, Mutex};

const IDLE: u8 = 0;
const OWNED: u8 = 1;
const SUBMITTED: u8 = 2;
const FINISHING: u8 = 3;
const DONE: u8 = 4;

/// The phase of an operation with memory `P` and outcome `O`.
pub(crate) struct Phase<P, O> {
    phase: AtomicU8,
    /// The memory was taken out ([`Phase::take`], [`Claim::take`]):
    /// nobody touches it again.
    taken: AtomicBool,
    memory: UnsafeCell<Option<P>>,
    /// Written once, by the finishing thread, before `DONE` is published.
    outcome: UnsafeCell<O>,
    /// Threads blocked in [`Phase::wait`], so a finish wakes only if needed.
    waiters: AtomicUsize,
    /// What `wait` sleeps on; a finish takes it only when someone waits.
    sleep: Mutex<()>,
    completed: Condvar,
}

// SAFETY: `memory` and `outcome` are reached only by the thread the phase
// makes their owner (see the module docs): a claim or a finish is a
// compare-and-swap that only one thread wins, and each hand-over is a
// release store (or release-acquire exchange) read with acquire. The
// values themselves move between threads with their owner: `P: Send`,
// `O: Send`.
unsafe impl<P: Send, O: Send> Sync for Phase<P, O> {}

impl<P, O: Copy> Phase<P, O> {
    /// A new operation's phase: `IDLE`, holding `memory`, with `unset` as
    /// its outcome until it finishes.
    pub(crate) fn new(memory: Option<P>, unset: O) -> Phase<P, O> {
        Phase {
            phase: AtomicU8::new(IDLE),
            taken: AtomicBool::new(false),
            memory: UnsafeCell::new(memory),
            outcome: UnsafeCell::new(unset),
            waiters: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            completed: Condvar::new(),
        }
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.phase.load(Ordering::Acquire) == IDLE
    }

    pub(crate) fn is_done(&self) -> bool {
        self.phase.load(Ordering::Acquire) == DONE
    }

    /// Claims the memory of an `IDLE` operation: to start it, or to take
    /// the memory back after a failed start. `None` if it is not idle.
    pub(crate) fn claim(&self) -> Option<Claim<'_, P, O>> {
        self.claim_from(IDLE)
    }

    /// Claims the memory of a submitted operation the backend has let go
    /// of: to perform it (epoll) or hand it to the kernel again (the rest
    /// of a send). `None` if it is not submitted.
    ///
    /// # Safety
    /// The backend must have let go of the memory: the kernel posted the
    /// request's final completion and this thread handles it, or this is
    /// the epoll backend performing the operation under its own lock.
    pub(crate) unsafe fn claim_from_backend(&self) -> Option<Claim<'_, P, O>> {
        self.claim_from(SUBMITTED)
    }

    /// Takes back a submitted operation whose request never reached the
    /// backend (its entry could not be written): the claim gives it back
    /// idle, the caller's again — the rollback of a failed submit.
    ///
    /// # Safety
    /// The backend never saw the request.
    pub(crate) unsafe fn abandon(&self) -> Option<Claim<'_, P, O>> {
        let mut claim = self.claim_from(SUBMITTED)?;
        claim.back_to = IDLE;
        Some(claim)
    }

    fn claim_from(&self, from: u8) -> Option<Claim<'_, P, O>> {
        self.phase
            .compare_exchange(from, OWNED, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        Some(Claim {
            phase: self,
            back_to: from,
        })
    }

    /// Finishes an `IDLE` operation (aborted in its lane, say) with the
    /// outcome `f` reads off its memory; whether it did (only the first
    /// finish of an operation does).
    pub(crate) fn finish_idle(&self, f: impl FnOnce(Option<&mut P>) -> O) -> bool {
        self.finish_from(IDLE, f)
    }

    /// Finishes a submitted operation whose request the backend has let
    /// go of; whether it did.
    ///
    /// # Safety
    /// As for [`Phase::claim_from_backend`].
    pub(crate) unsafe fn finish_from_backend(&self, f: impl FnOnce(Option<&mut P>) -> O) -> bool {
        self.finish_from(SUBMITTED, f)
    }

    fn finish_from(&self, from: u8, f: impl FnOnce(Option<&mut P>) -> O) -> bool {
        let claimed =
            self.phase
                .compare_exchange(from, FINISHING, Ordering::AcqRel, Ordering::Acquire);
        if claimed.is_err() {
            return false;
        }
        self.finish_claimed(f);
        true
    }

    /// The owner of the memory (the phase is `FINISHING`, set by this
    /// thread) records the outcome and publishes `DONE`.
    fn finish_claimed(&self, f: impl FnOnce(Option<&mut P>) -> O) {
        let outcome = self.with_memory(f);
        // SAFETY: FINISHING, which this thread set, makes it the only one
        // to touch the outcome until DONE is published below.
        self.outcome.with_mut(|slot| unsafe { *slot = outcome });
        self.phase.store(DONE, Ordering::Release);
        // Paired with the fence in `wait`: either that waiter sees DONE,
        // or this sees its count (a store→load order across two
        // variables, which acquire and release alone do not give).
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::Relaxed) > 0 {
            drop(lock(&self.sleep));
            self.completed.notify_all();
        }
    }

    /// Runs `f` on the memory, unless it was taken out. Only the phase's
    /// owner calls this (a claim, or a finish in progress).
    fn with_memory<R>(&self, f: impl FnOnce(Option<&mut P>) -> R) -> R {
        if self.taken.load(Ordering::Acquire) {
            return f(None);
        }
        // SAFETY: the caller owns the memory in the current phase (OWNED
        // through its claim, or FINISHING), which no other thread touches.
        self.memory
            .with_mut(|memory| f(unsafe { (*memory).as_mut() }))
    }

    /// The outcome, once the operation is done.
    pub(crate) fn outcome(&self) -> Option<O> {
        if !self.is_done() {
            return None;
        }
        // SAFETY: DONE was seen with acquire ordering: the outcome was
        // written before it was published, and is never written again.
        Some(self.outcome.with(|outcome| unsafe { *outcome }))
    }

    /// Blocks until the operation is done and returns its outcome.
    pub(crate) fn wait(&self) -> O {
        if let Some(outcome) = self.outcome() {
            return outcome;
        }
        let mut asleep = lock(&self.sleep);
        self.waiters.fetch_add(1, Ordering::Relaxed);
        // Paired with the fence in `finish_claimed` (see there).
        fence(Ordering::SeqCst);
        let outcome = loop {
            if let Some(outcome) = self.outcome() {
                break outcome;
            }
            asleep = self
                .completed
                .wait(asleep)
                .unwrap_or_else(|p| p.into_inner());
        };
        self.waiters.fetch_sub(1, Ordering::Relaxed);
        outcome
    }

    /// Takes the memory out of a done operation; only the first caller
    /// gets it.
    pub(crate) fn take(&self) -> Option<P> {
        if !self.is_done() || self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: DONE was seen with acquire ordering, so the finishing
        // thread is done with the memory, and setting `taken` made this
        // thread the only one to touch it from now on.
        self.memory.with_mut(|memory| unsafe { (*memory).take() })
    }
}

/// The memory of an operation, claimed by this thread: it alone touches
/// it until the claim ends — by handing it to the backend
/// ([`Claim::submit`]), by finishing ([`Claim::finish`]), by taking the
/// memory out ([`Claim::take`]) or, dropped (a failed start, an unwind),
/// by giving it back to the phase it came from.
pub struct Claim<'a, P, O: Copy> {
    phase: &'a Phase<P, O>,
    back_to: u8,
}

impl<P, O: Copy> Claim<'_, P, O> {
    /// Runs `f` on the memory, unless it was taken out.
    pub(crate) fn with_memory<R>(&mut self, f: impl FnOnce(Option<&mut P>) -> R) -> R {
        self.phase.with_memory(f)
    }

    /// Hands the operation to the backend, which from now on owns its
    /// memory. Done before the request is given to the kernel, which may
    /// complete it at once; if the request then cannot be written, the
    /// thread that submitted gets it back with [`Phase::claim_from_backend`]
    /// and abandons it (see `driver::abandon`).
    pub(crate) fn submit(self) {
        self.phase.phase.store(SUBMITTED, Ordering::Release);
        std::mem::forget(self);
    }

    /// Finishes the operation with the outcome `f` reads off its memory.
    pub(crate) fn finish(self, f: impl FnOnce(Option<&mut P>) -> O) {
        self.phase.phase.store(FINISHING, Ordering::Relaxed);
        let phase = self.phase;
        std::mem::forget(self);
        phase.finish_claimed(f);
    }

    /// Takes the memory out (a start that failed gives the program its
    /// buffers back); the operation is idle again, with no memory.
    pub(crate) fn take(self) -> Option<P> {
        let taken = match self.phase.taken.swap(true, Ordering::AcqRel) {
            true => None,
            // SAFETY: this thread owns the memory through the claim, and
            // setting `taken` keeps everyone else out of it for good.
            false => self
                .phase
                .memory
                .with_mut(|memory| unsafe { (*memory).take() }),
        };
        drop(self);
        taken
    }
}

impl<P, O: Copy> Drop for Claim<'_, P, O> {
    fn drop(&mut self) {
        self.phase.phase.store(self.back_to, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    type Test = Phase<Vec<u8>, u32>;

    #[test]
    fn only_one_thread_claims_an_idle_operation() {
        let phase = Test::new(Some(vec![1]), 0);
        let first = phase.claim();
        assert!(first.is_some());
        assert!(phase.claim().is_none(), "a second claim is refused");
        drop(first);
        assert!(phase.claim().is_some(), "given back when dropped");
    }

    #[test]
    fn a_submitted_operation_is_finished_only_from_the_backend() {
        let phase = Test::new(Some(vec![1]), 0);
        phase.claim().unwrap().submit();
        assert!(!phase.finish_idle(|_| 5), "not idle any more");
        // SAFETY: no backend holds this test's memory.
        assert!(unsafe { phase.finish_from_backend(|m| m.unwrap()[0] as u32) });
        assert_eq!(phase.outcome(), Some(1));
        assert_eq!(phase.take(), Some(vec![1]));
        assert_eq!(phase.take(), None, "only the first taker");
    }

    #[test]
    fn a_claim_finishes_with_what_it_read() {
        let phase = Test::new(Some(vec![7]), 0);
        let mut claim = phase.claim().unwrap();
        claim.with_memory(|m| m.unwrap().push(8));
        claim.finish(|m| m.map_or(0, |m| m.len() as u32));
        assert_eq!(phase.wait(), 2);
        assert!(phase.claim().is_none(), "a done operation stays done");
    }

    #[test]
    fn memory_taken_through_a_claim_is_gone_for_good() {
        let phase = Test::new(Some(vec![3]), 0);
        assert_eq!(phase.claim().unwrap().take(), Some(vec![3]));
        assert!(phase.is_idle());
        assert!(phase.finish_idle(|m| m.map_or(9, |_| 1)));
        assert_eq!(phase.outcome(), Some(9));
        assert_eq!(phase.take(), None);
    }
}

/// loom models of the hand-overs. Tried and seen failing: `wait`'s and
/// the finish's fences removed (a waiter sleeps through the finish, which
/// loom reports as a deadlock), and `Claim::submit` as a relaxed store
/// (the finisher then reads the memory the starter wrote without order,
/// which loom's cell reports).
#[cfg(all(test, loom))]
mod loom_models {
    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    type Test = Phase<Vec<u8>, usize>;

    #[test]
    fn a_finish_on_another_thread_wakes_the_waiter() {
        loom::model(|| {
            let phase = Arc::new(Test::new(Some(vec![1, 2]), 0));
            let finisher = {
                let phase = phase.clone();
                thread::spawn(move || {
                    assert!(phase.finish_idle(|m| m.map_or(0, |m| m.len())));
                })
            };
            assert_eq!(phase.wait(), 2);
            finisher.join().unwrap();
        });
    }

    #[test]
    fn the_memory_passes_from_the_starter_through_the_backend_to_one_taker() {
        loom::model(|| {
            let phase = Arc::new(Test::new(Some(Vec::new()), 0));
            // The "kernel": completes the request once it was submitted.
            let backend = {
                let phase = phase.clone();
                thread::spawn(move || loop {
                    // SAFETY: this thread plays the backend, which let go
                    // of nothing it did not own.
                    if unsafe { phase.finish_from_backend(|m| m.map_or(0, |m| m[0] as usize)) } {
                        return;
                    }
                    thread::yield_now();
                })
            };
            let mut claim = phase.claim().unwrap();
            claim.with_memory(|m| m.unwrap().push(9));
            claim.submit();
            let taker = {
                let phase = phase.clone();
                thread::spawn(move || {
                    phase.wait();
                    phase.take()
                })
            };
            assert_eq!(phase.wait(), 9);
            let mine = phase.take();
            let theirs = taker.join().unwrap();
            backend.join().unwrap();
            assert!(mine.is_some() != theirs.is_some(), "exactly one taker");
        });
    }
}
