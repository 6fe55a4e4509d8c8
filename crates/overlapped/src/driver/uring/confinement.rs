//! A ring only one thread enters, and how the others reach it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::AtomicBool;

use io_uring::squeue;

use super::super::hand_over::HandOver;
use super::super::sync::Confined;
use super::super::sys;
use super::reap::Reaped;

/// What a ring confined to one thread needs: a ring set up with
/// `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN` (Linux 6.1),
/// which the kernel lets only one thread enter, and which finishes requests
/// only when that thread asks for completions — in its own time, instead of
/// interrupting it. That thread, the *issuer*, is the one that enables the
/// ring (it is made disabled, `IORING_SETUP_R_DISABLED`) and from then on the
/// only one that writes the submission queue, so it takes no lock to do so.
/// Any other thread hands its entries over and rings the doorbell, an
/// eventfd that the issuer keeps a multishot poll on.
///
/// The issuer must outlive the ring's requests: once it has exited, the
/// kernel refuses every other thread, and what is still in flight stays
/// there (its memory is kept, never freed under the kernel).
pub(super) struct Confinement {
    /// The vector the issuer copies completions into, which it alone
    /// reaches: it reads the completion queue without a lock. Its owner is
    /// the issuer, the thread that enabled the ring; unclaimed while the
    /// ring is disabled.
    pub(super) reaped: Confined<Vec<Reaped>>,
    /// Entries from other threads, in the order they came.
    pub(super) handed_over: HandOver<squeue::Entry>,
    /// Rung by other threads to wake the issuer.
    pub(super) doorbell: OwnedFd,
    /// The multishot poll on the doorbell runs.
    pub(super) doorbell_watched: AtomicBool,
}

impl Confinement {
    pub(super) fn new() -> io::Result<Confinement> {
        Ok(Confinement {
            reaped: Confined::new(Vec::new()),
            handed_over: HandOver::new(),
            doorbell: sys::eventfd()?,
            doorbell_watched: AtomicBool::new(false),
        })
    }

    pub(super) fn on_issuer(&self) -> bool {
        self.reaped.is_owned_here()
    }

    /// Whether another thread has claimed the ring.
    pub(super) fn claimed_elsewhere(&self) -> bool {
        self.reaped.is_claimed() && !self.on_issuer()
    }

    /// Queues an entry from another thread for the issuer: it is written
    /// either way; the error is the doorbell's.
    pub(super) fn hand_over(&self, entry: squeue::Entry, batching: bool) -> io::Result<()> {
        self.handed_over.push(entry);
        if batching {
            // The doorbell rings when the batch ends.
            return Ok(());
        }
        self.ring_doorbell()
    }

    pub(super) fn ring_doorbell(&self) -> io::Result<()> {
        #[cfg(all(test, not(loom)))]
        if let Some(injected) = super::super::fault::doorbell() {
            return Err(injected);
        }
        sys::eventfd_signal(self.doorbell.as_raw_fd())
    }
}
