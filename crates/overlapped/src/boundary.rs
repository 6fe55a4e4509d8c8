//! Panic boundaries: every place the library runs the program's code — a
//! session hook, a completion routine, a timer's work — catches a panic
//! there, logs it, and lets the thread go on with its other work.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

/// Runs `f`; on a panic, logs it as a panic of `what` and returns the
/// panic's message instead.
///
/// `AssertUnwindSafe`: what `f` may leave half-updated is the program's own
/// state, which it keeps across the panic just as it would after an error
/// it returned; the library's own state around a boundary is restored by
/// guards (see each caller).
pub(crate) fn catch<R>(what: &str, f: impl FnOnce() -> R) -> Result<R, String> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let message = panic_message(panic.as_ref()).to_owned();
        tracing::error!("{what} panicked: {message}");
        message
    })
}

/// The message a panic was raised with, when it is text.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text
    } else {
        "(not a text message)"
    }
}
