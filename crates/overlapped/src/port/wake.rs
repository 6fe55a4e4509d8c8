//! How a packet posted by another thread reaches the worker of a confined
//! port, which reaps and sleeps without the port's lock — the protocol
//! alone, with no ring or queue in it, so that loom can check it
//! (`loom_models` below, under `--cfg loom`).
//!
//! The worker (the *owner* of the port's local queue) says it is about to
//! reap, then looks at the shared queue's length; a poster publishes the
//! new length, then looks whether the owner reaps. One of the two sees the
//! other: either the owner finds the packet and does not sleep, or the
//! poster rings the wake-up signal, which ends the sleep. That is a
//! store→load order across two variables on each side, which acquire and
//! release alone do not give: each side has a `SeqCst` fence between its
//! store and its load.
//!
//! The signal (an eventfd the sleeping worker watches) is reset only when
//! a wake-up was rung since the last reset (`pending`), which saves a
//! system call per sleep; it is reset *before* the owner looks at the
//! queue, so a wake-up rung after the look leaves it set.

use std::io;

use crate::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};

/// What a sleeping owner is woken by: set by [`Wake::wake`], reset by the
/// owner before it looks again.
pub(crate) trait Signal {
    fn set(&self) -> io::Result<()>;
    fn reset(&self) -> io::Result<()>;
}

impl Signal for crate::event::Event {
    fn set(&self) -> io::Result<()> {
        crate::event::Event::set(self)
    }

    fn reset(&self) -> io::Result<()> {
        crate::event::Event::reset(self)
    }
}

pub(crate) struct Wake<S> {
    /// The shared queue's length, readable without its lock.
    queued: AtomicUsize,
    /// The owner of the local queue reaps, and may sleep, without the lock.
    owner_reaping: AtomicBool,
    /// The signal was set since the last reset.
    pending: AtomicBool,
    signal: S,
}

impl<S: Signal> Wake<S> {
    pub(crate) fn new(signal: S) -> Wake<S> {
        Wake {
            queued: AtomicUsize::new(0),
            owner_reaping: AtomicBool::new(false),
            pending: AtomicBool::new(false),
            signal,
        }
    }

    pub(crate) fn signal(&self) -> &S {
        &self.signal
    }

    /// Whether packets may wait in the shared queue.
    pub(crate) fn posted(&self) -> bool {
        self.queued.load(Ordering::Acquire) > 0
    }

    /// The shared queue now holds `len` packets (a hand-out, a close);
    /// called under the queue's lock.
    pub(crate) fn set_queued(&self, len: usize) {
        self.queued.store(len, Ordering::Release);
    }

    /// A poster pushed a packet and the shared queue now holds `len`
    /// (called under the queue's lock): whether the owner may be reaping,
    /// and asleep, so that [`Wake::wake`] is due.
    pub(crate) fn published(&self, len: usize) -> bool {
        self.queued.store(len, Ordering::Release);
        fence(Ordering::SeqCst);
        self.owner_reaping.load(Ordering::Relaxed)
    }

    /// Rings the signal.
    pub(crate) fn wake(&self) -> io::Result<()> {
        let set = self.signal.set();
        // After the signal: whoever sees the flag also finds the signal to
        // reset.
        self.pending.store(true, Ordering::Release);
        set
    }

    /// Resets the signal, if it was rung since the last reset.
    pub(crate) fn clear(&self) -> io::Result<()> {
        if self.pending.swap(false, Ordering::AcqRel) {
            self.signal.reset()?;
        }
        Ok(())
    }

    /// The owner is about to reap, and to sleep if nothing is ready:
    /// whether packets were posted meanwhile (then it must not sleep).
    /// [`Wake::owner_awake`] ends it.
    pub(crate) fn owner_about_to_sleep(&self) -> io::Result<bool> {
        self.owner_reaping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.clear()?;
        Ok(self.queued.load(Ordering::Relaxed) > 0)
    }

    /// The owner is done reaping.
    pub(crate) fn owner_awake(&self) {
        self.owner_reaping.store(false, Ordering::Release);
    }

    /// Whether the owner reaps now (for tests).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn owner_reaping(&self) -> bool {
        self.owner_reaping.load(Ordering::SeqCst)
    }
}

/// loom models: no post is slept through. Tried and seen failing: either
/// fence removed (the owner reads the old length while the poster reads
/// that it is not reaping), and the owner resetting the signal after it
/// looked at the queue instead of before.
#[cfg(all(test, loom))]
mod loom_models {
    use loom::sync::{Arc, Mutex};
    use loom::thread;

    use super::*;

    /// An eventfd, as far as a sleeper goes: set or not.
    #[derive(Default)]
    struct Flag(Mutex<bool>);

    impl Signal for Flag {
        fn set(&self) -> io::Result<()> {
            *self.0.lock().unwrap() = true;
            Ok(())
        }
        fn reset(&self) -> io::Result<()> {
            *self.0.lock().unwrap() = false;
            Ok(())
        }
    }

    /// The owner's round, while `posting` posts: it goes to sleep unless
    /// it saw the post, and a sleep lasts — `owner_reaping` stays set — at
    /// least until the poster is done; then the sleep must end, the signal
    /// set.
    fn owner_round(wake: &Wake<Flag>, posting: thread::JoinHandle<()>) {
        let posted = wake.owner_about_to_sleep().unwrap();
        posting.join().unwrap();
        if !posted {
            assert!(
                *wake.signal().0.lock().unwrap(),
                "the post was slept through"
            );
        }
        wake.owner_awake();
    }

    fn poster(wake: Arc<Wake<Flag>>, len: usize) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            if wake.published(len) {
                wake.wake().unwrap();
            }
        })
    }

    #[test]
    fn a_post_as_the_owner_goes_to_sleep_is_not_slept_through() {
        loom::model(|| {
            let wake = Arc::new(Wake::new(Flag::default()));
            owner_round(&wake, poster(wake.clone(), 1));
        });
    }

    #[test]
    fn a_post_as_the_owner_clears_an_earlier_wake_up_is_not_slept_through() {
        loom::model(|| {
            let wake = Arc::new(Wake::new(Flag::default()));
            // An earlier post rang the signal; its packet was taken since.
            wake.wake().unwrap();
            owner_round(&wake, poster(wake.clone(), 1));
        });
    }
}
