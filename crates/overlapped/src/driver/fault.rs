//! Failures a test can inject where the kernel could fail but on a test
//! machine never does: `io_uring_enter`, the doorbell of a confined ring.
//! Per thread, so that tests running side by side do not see each
//! other's.

use std::cell::Cell;
use std::io;

thread_local! {
    static ENTERS: Cell<(u32, i32)> = const { Cell::new((0, 0)) };
    static DOORBELLS: Cell<(u32, i32)> = const { Cell::new((0, 0)) };
}

/// The next `count` enters from this thread fail with `errno`.
pub(crate) fn fail_enters(count: u32, errno: i32) {
    ENTERS.with(|e| e.set((count, errno)));
}

/// The next `count` doorbells this thread rings fail with `errno`.
pub(crate) fn fail_doorbells(count: u32, errno: i32) {
    DOORBELLS.with(|d| d.set((count, errno)));
}

fn take(which: &'static std::thread::LocalKey<Cell<(u32, i32)>>) -> Option<io::Error> {
    which.with(|cell| match cell.get() {
        (0, _) => None,
        (left, errno) => {
            cell.set((left - 1, errno));
            Some(io::Error::from_raw_os_error(errno))
        }
    })
}

/// An injected failure for this enter, if one is due.
pub(crate) fn enter() -> Option<io::Error> {
    take(&ENTERS)
}

/// An injected failure for this doorbell, if one is due.
pub(crate) fn doorbell() -> Option<io::Error> {
    take(&DOORBELLS)
}
