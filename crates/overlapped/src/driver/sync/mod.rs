//! The primitives the driver's lock-free protocols are written against:
//! std's in a normal build, [loom]'s under `--cfg loom`, so that the model
//! checker explores every interleaving of a protocol (the pattern of
//! tokio's `src/loom/`). Reached as `crate::sync`.
//!
//! Each protocol lives in a module of its own that holds no descriptor
//! and no ring, only these primitives ([`super::lanes`],
//! [`super::op::phase`], [`super::hand_over`], [`super::pool_tail`],
//! `crate::port::wake`), and each has a loom model beside it
//! (`scripts/loom.sh` runs them).
//!
//! Two rules keep the models honest:
//! - loom treats a `SeqCst` access as `AcqRel`, so a protocol that needs
//!   a store→load order across two variables (a waiter counted before it
//!   looks again, a flag read after a queue is published) says so with a
//!   `fence(SeqCst)`, which loom does model;
//! - a value one thread owns is reached through [`cell::UnsafeCell`]'s
//!   `with`/`with_mut`, which loom checks for concurrent access.
//!
//! [loom]: https://docs.rs/loom

pub(crate) mod cell;
pub(crate) mod confined;

#[cfg(not(loom))]
pub(crate) use std::sync::{atomic, Condvar, Mutex, MutexGuard};

#[cfg(loom)]
pub(crate) use loom::sync::{atomic, Condvar, Mutex, MutexGuard};

pub(crate) use confined::{current_thread, Confined, ThreadKey};

/// Locks `mutex`, whether or not a thread panicked while holding it: every
/// lock of the driver guards updates (pushes, pops, flag writes) that a
/// panic cannot leave half done.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
