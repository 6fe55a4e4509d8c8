//! A value that one thread, once it claims it, reaches without a lock.
//!
//! A ring confined to its worker (`IORING_SETUP_SINGLE_ISSUER`) makes that
//! worker the only thread that reaps it, so most of what a message touches
//! — the packets the worker delivers to itself, the pool buffers it gives
//! back — is touched by that one thread. [`Confined`] lets it do so without
//! a lock; any other thread is turned away and takes the locked way.

use std::cell::Cell;
use std::num::NonZeroU64;

use super::atomic;
use super::cell::UnsafeCell;

/// A thread, as the driver tells threads apart: a number given to each
/// thread the first time it asks, never given again. (Not `ThreadId`:
/// under loom every modelled thread runs on one thread of the OS.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ThreadKey(NonZeroU64);

/// The current thread's key. Asked once per submission, so it is a
/// thread-local read, not `thread::current()` (which clones a handle).
pub(crate) fn current_thread() -> ThreadKey {
    // std's, not loom's: a key is a name, not something to model.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    fn next() -> ThreadKey {
        let key = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ThreadKey(NonZeroU64::new(key).expect("thread keys do not wrap"))
    }
    #[cfg(not(loom))]
    std::thread_local! {
        static KEY: ThreadKey = next();
    }
    #[cfg(loom)]
    loom::thread_local! {
        static KEY: ThreadKey = next();
    }
    KEY.with(|key| *key)
}

/// A value only its owner thread uses, with no lock.
pub(crate) struct Confined<T> {
    /// The key of the thread that claimed it (see [`ThreadKey`]); 0 while
    /// unclaimed, when nobody may use it. Set once.
    owner: atomic::AtomicU64,
    /// The owner is inside [`Confined::with`]: a nested call is turned away
    /// instead of making a second `&mut` to the value.
    in_use: Cell<bool>,
    value: UnsafeCell<T>,
}

// SAFETY: `value` and `in_use` are only reached through `with`, which lets
// only the owner thread in, one call at a time; `owner` is an atomic. Every other thread touches neither, so sharing the cell is
// like sending the value to the owner once: `T: Send` suffices.
unsafe impl<T: Send> Sync for Confined<T> {}

impl<T> Confined<T> {
    pub(crate) fn new(value: T) -> Confined<T> {
        Confined {
            owner: atomic::AtomicU64::new(0),
            in_use: Cell::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// A value that thread `owner` alone will use.
    pub(crate) fn owned_by(owner: ThreadKey, value: T) -> Confined<T> {
        Confined {
            owner: atomic::AtomicU64::new(owner.0.get()),
            in_use: Cell::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Makes the current thread the owner, unless there is one already.
    /// Returns whether the current thread is the owner.
    pub(crate) fn claim(&self) -> bool {
        let me = current_thread().0.get();
        match self.owner.compare_exchange(
            0,
            me,
            atomic::Ordering::AcqRel,
            atomic::Ordering::Acquire,
        ) {
            Ok(_) => true,
            Err(owner) => owner == me,
        }
    }

    /// Whether some thread has claimed it.
    pub(crate) fn is_claimed(&self) -> bool {
        self.owner.load(atomic::Ordering::Acquire) != 0
    }

    /// Whether the current thread is the owner. (Relaxed: only the owner's
    /// own claim can make it true, and a thread sees its own writes.)
    pub(crate) fn is_owned_here(&self) -> bool {
        self.owner.load(atomic::Ordering::Relaxed) == current_thread().0.get()
    }

    /// Runs `f` on the value if the current thread owns it and is not
    /// already inside `with`; `None` otherwise.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        self.with_arg((), |value, ()| f(value)).ok()
    }

    /// [`Confined::with`] for an `f` that takes `arg`, which comes back
    /// untouched when the current thread may not use the value.
    pub(crate) fn with_arg<A, R>(&self, arg: A, f: impl FnOnce(&mut T, A) -> R) -> Result<R, A> {
        if !self.is_owned_here() || self.in_use.replace(true) {
            return Err(arg);
        }
        /// Lets the owner in again when `f` returns or unwinds.
        struct Leave<'a>(&'a Cell<bool>);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.set(false);
            }
        }
        let _leave = Leave(&self.in_use);
        self.value.with_mut(|value| {
            // SAFETY: only the owner thread gets here (checked above, and
            // the owner never changes once set), and `in_use` keeps it from
            // getting here twice at once, so this is the only reference to
            // the value.
            Ok(f(unsafe { &mut *value }, arg))
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn an_unclaimed_cell_lets_nobody_in() {
        let cell = Confined::new(1);
        assert_eq!(cell.with(|v| *v), None);
    }

    use std::thread;

    #[test]
    fn the_owner_reaches_the_value_and_another_thread_does_not() {
        let cell = Confined::new(1);
        assert!(cell.claim());
        assert_eq!(cell.with(|v| *v += 1), Some(()));
        thread::scope(|s| {
            s.spawn(|| {
                assert!(!cell.claim());
                assert_eq!(cell.with(|v| *v), None);
            });
        });
        assert_eq!(cell.with(|v| *v), Some(2));
    }

    #[test]
    fn an_argument_comes_back_from_a_thread_that_is_not_the_owner() {
        let cell = Confined::owned_by(current_thread(), 0);
        assert_eq!(cell.with_arg(5, |v, add| *v += add), Ok(()));
        thread::scope(|s| {
            s.spawn(|| assert_eq!(cell.with_arg(7, |v, add| *v += add), Err(7)));
        });
        assert_eq!(cell.with(|v| *v), Some(5));
    }

    #[test]
    fn a_nested_call_is_turned_away() {
        let cell = Confined::new(0);
        cell.claim();
        let nested = cell.with(|_| cell.with(|v| *v));
        assert_eq!(nested, Some(None));
        assert_eq!(cell.with(|v| *v), Some(0));
    }

    #[test]
    fn the_owner_gets_in_again_after_a_panic_inside() {
        let cell = Confined::new(0);
        cell.claim();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cell.with(|_| panic!("inside"));
        }));
        assert!(panicked.is_err());
        assert_eq!(cell.with(|v| *v), Some(0));
    }
}
