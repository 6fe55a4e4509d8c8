//! `Event` (WSAEVENT), and the waits: `wait_for_multiple_events`
//! (WSAWaitForMultipleEvents) and `sleep_ex` (SleepEx), alertable or not.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use crate::driver::signal::Signal;
use crate::driver::sys;
use crate::error;
use crate::routine;

/// The most events one [`wait_for_multiple_events`] call accepts
/// (`WSA_MAXIMUM_WAIT_EVENTS`).
///
/// We keep Winsock's cap of 64 on purpose: code ported from Windows behaves
/// the same, and the cap is what leads the seed's course to group sessions
/// and, later, to completion ports. A program that needs more waits on
/// several groups from several threads, as the seed's server does, or uses a
/// completion port.
pub const MAXIMUM_WAIT_EVENTS: usize = 64;

/// Waits forever: the `WSA_INFINITE` timeout.
pub const INFINITE: Option<Duration> = None;

/// A manual-reset kernel event: the `WSAEVENT` counterpart.
///
/// Like `WSACreateEvent`, [`Event::new`] makes a manual-reset event that is
/// not signaled. It stays signaled once set until [`Event::reset`] is called;
/// waiting on it never clears it. It is a real kernel object (an `eventfd`
/// whose counter is non-zero while signaled), so it can also be watched with
/// `poll`/`epoll` through [`AsRawFd`].
///
/// Cloning gives another handle to the same event (like duplicating a
/// handle); the event is closed (`WSACloseEvent`) when the last handle is
/// dropped, and an operation that names the event keeps it open until the
/// operation completes.
#[derive(Clone, Debug)]
pub struct Event {
    signal: Signal,
}

impl Event {
    /// Creates a manual-reset, non-signaled event (`WSACreateEvent`).
    pub fn new() -> io::Result<Event> {
        Ok(Event {
            signal: Signal::new()?,
        })
    }

    /// Signals the event (`WSASetEvent`). Setting a signaled event keeps it
    /// signaled.
    pub fn set(&self) -> io::Result<()> {
        self.signal.set()
    }

    /// Returns the event to non-signaled (`WSAResetEvent`).
    pub fn reset(&self) -> io::Result<()> {
        self.signal.reset()
    }

    /// Whether the event is signaled now, without waiting or changing it
    /// (`WSAWaitForMultipleEvents` on this one event with a zero timeout).
    pub fn is_set(&self) -> io::Result<bool> {
        self.signal.is_set()
    }

    /// Whether two handles name the same event.
    pub fn same_as(&self, other: &Event) -> bool {
        self.signal.same_as(&other.signal)
    }

    /// The driver's signal under it, which completions set.
    pub(crate) fn signal(&self) -> &Signal {
        &self.signal
    }
}

impl AsRawFd for Event {
    fn as_raw_fd(&self) -> RawFd {
        self.signal.as_raw_fd()
    }
}

impl AsFd for Event {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.signal.as_fd()
    }
}

/// What [`wait_for_multiple_events`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitResult {
    /// `WSA_WAIT_EVENT_0 + index`: with wait-any, the lowest index of a
    /// signaled event; with wait-all, always 0 (every event is signaled).
    Signaled(usize),
    /// `WSA_WAIT_TIMEOUT` (258): the timeout passed first.
    Timeout,
    /// `WSA_WAIT_IO_COMPLETION` (0xC0): an alertable wait ran completion
    /// routines and returned before any event was signaled.
    IoCompletion,
}

/// Waits until one (`wait_all == false`) or every (`wait_all == true`) event
/// is signaled, or the timeout passes: `WSAWaitForMultipleEvents`.
///
/// - `timeout`: `Some(Duration::ZERO)` polls, [`INFINITE`] (`None`) waits
///   forever, expiry returns [`WaitResult::Timeout`].
/// - Wait-any returns the **lowest** signaled index.
/// - Waiting never resets an event; the program resets it.
/// - `alertable`: completion routines queued to this thread (see
///   [`crate::sleep_ex`]) run inside the wait, which then returns
///   [`WaitResult::IoCompletion`]; a non-alertable wait never runs them.
///
/// Errors: an empty list or more than [`MAXIMUM_WAIT_EVENTS`] events is
/// `WSA_INVALID_PARAMETER` (87), as on Windows.
///
/// Difference: Windows' wait-all is atomic across the events; here it
/// returns once it has seen every event signaled in one check, which is the
/// same for manual-reset events that nobody resets meanwhile.
pub fn wait_for_multiple_events(
    events: &[&Event],
    wait_all: bool,
    timeout: Option<Duration>,
    alertable: bool,
) -> io::Result<WaitResult> {
    if events.is_empty() || events.len() > MAXIMUM_WAIT_EVENTS {
        return Err(error::invalid_parameter(format!(
            "wait_for_multiple_events takes 1 to {MAXIMUM_WAIT_EVENTS} events, got {}",
            events.len()
        )));
    }
    let fds: Vec<RawFd> = events.iter().map(|e| e.as_raw_fd()).collect();
    let routines = match alertable {
        true => Some(routine::current_queue()?.wake.as_raw_fd()),
        false => None,
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        // The objects first, as Windows checks them: an event already
        // signaled is returned, and queued routines wait for the next
        // alertable wait.
        if alertable {
            if let Some(seen) = signaled_now(&fds, wait_all)? {
                return Ok(seen);
            }
            if routine::run_queued() {
                return Ok(WaitResult::IoCompletion);
            }
        }
        let seen = if wait_all {
            wait_all_signaled(&fds, routines, deadline)?
        } else {
            wait_any_signaled(&fds, routines, deadline)?
        };
        if let Some(seen) = seen {
            return Ok(seen);
        }
        // `None`: routines were queued; the loop runs them.
    }
}

/// Whether the wait is satisfied right now, without waiting.
fn signaled_now(fds: &[RawFd], wait_all: bool) -> io::Result<Option<WaitResult>> {
    let ready = sys::poll_readable(fds, Some(Duration::ZERO))?;
    Ok(match wait_all {
        true if ready.iter().all(|&r| r) => Some(WaitResult::Signaled(0)),
        false => ready.iter().position(|&r| r).map(WaitResult::Signaled),
        true => None,
    })
}

fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

/// Waits for any of `fds`; `None` when `routines` became readable first.
fn wait_any_signaled(
    fds: &[RawFd],
    routines: Option<RawFd>,
    deadline: Option<Instant>,
) -> io::Result<Option<WaitResult>> {
    let watched: Vec<RawFd> = fds.iter().copied().chain(routines).collect();
    loop {
        let ready = sys::poll_readable(&watched, remaining(deadline))?;
        if let Some(index) = ready[..fds.len()].iter().position(|&r| r) {
            return Ok(Some(WaitResult::Signaled(index)));
        }
        if ready.len() > fds.len() && ready[fds.len()] {
            return Ok(None);
        }
        if remaining(deadline) == Some(Duration::ZERO) {
            return Ok(Some(WaitResult::Timeout));
        }
    }
}

/// Waits for all of `fds`; `None` when `routines` became readable first.
fn wait_all_signaled(
    fds: &[RawFd],
    routines: Option<RawFd>,
    deadline: Option<Instant>,
) -> io::Result<Option<WaitResult>> {
    loop {
        let ready = sys::poll_readable(fds, Some(Duration::ZERO))?;
        if ready.iter().all(|&r| r) {
            return Ok(Some(WaitResult::Signaled(0)));
        }
        if remaining(deadline) == Some(Duration::ZERO) {
            return Ok(Some(WaitResult::Timeout));
        }
        // Sleep until one of the events still missing is signaled, then check
        // them all again: an event seen earlier may have been reset meanwhile.
        let missing: Vec<RawFd> = fds
            .iter()
            .zip(&ready)
            .filter(|(_, &r)| !r)
            .map(|(&fd, _)| fd)
            .chain(routines)
            .collect();
        let woke = sys::poll_readable(&missing, remaining(deadline))?;
        if routines.is_some() && woke[woke.len() - 1] {
            return Ok(None);
        }
    }
}

/// `SleepEx`: sleeps for `timeout` ([`crate::INFINITE`] = forever). When
/// `alertable`, it returns early with [`WaitResult::IoCompletion`] after
/// running the completion routines queued to this thread; otherwise it
/// returns [`WaitResult::Timeout`] when the time is up.
pub fn sleep_ex(timeout: Option<Duration>, alertable: bool) -> io::Result<WaitResult> {
    if !alertable {
        match timeout {
            Some(t) => std::thread::sleep(t),
            None => loop {
                std::thread::park();
            },
        }
        return Ok(WaitResult::Timeout);
    }
    let queue = routine::current_queue()?;
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        if routine::run_queued() {
            return Ok(WaitResult::IoCompletion);
        }
        let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        if left == Some(Duration::ZERO) {
            return Ok(WaitResult::Timeout);
        }
        sys::wait_readable([std::os::fd::AsRawFd::as_raw_fd(&queue.wake)], left)?;
    }
}
