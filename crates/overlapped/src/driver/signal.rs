//! `Signal`: the kernel object a completion sets — an eventfd, readable
//! while signaled, until reset. The model's `Event` (WSAEVENT) wraps it;
//! the driver knows only this.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use super::sys;

/// A manual-reset signal: set stays set until reset. Clones name the same
/// eventfd, which closes with the last of them.
#[derive(Clone, Debug)]
pub(crate) struct Signal {
    fd: Arc<OwnedFd>,
}

impl Signal {
    /// A new signal, not set.
    pub(crate) fn new() -> io::Result<Signal> {
        Ok(Signal {
            fd: Arc::new(sys::eventfd()?),
        })
    }

    /// Sets it; setting a set signal keeps it set.
    pub(crate) fn set(&self) -> io::Result<()> {
        sys::eventfd_signal(self.fd.as_raw_fd())
    }

    /// Clears it.
    pub(crate) fn reset(&self) -> io::Result<()> {
        sys::eventfd_clear(self.fd.as_raw_fd())
    }

    /// Whether it is set now, without waiting or changing it.
    pub(crate) fn is_set(&self) -> io::Result<bool> {
        Ok(sys::poll_readable(&[self.fd.as_raw_fd()], Some(Duration::ZERO))?[0])
    }

    /// Whether two handles name the same signal.
    pub(crate) fn same_as(&self, other: &Signal) -> bool {
        Arc::ptr_eq(&self.fd, &other.fd)
    }
}

impl AsRawFd for Signal {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Signal {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
