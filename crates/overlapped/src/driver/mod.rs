//! The proactor: starts operations, owns them while the kernel does, and
//! turns kernel completions into the model's notifications.
//!
//! All `unsafe` code of the crate lives under this module. The operation
//! model ([`op`], [`socket`]) and the [`ring`] that reaps completions are
//! backend-neutral; [`uring`] (io_uring) or [`epoll`] (readiness, for hosts
//! without io_uring) carries the operations out.
//!
//! Life of an operation ([`lifecycle`]):
//! 1. The model builds an [`Op`](op::Op) holding its buffers ([`op::IoParts`]).
//! 2. [`start`] takes the socket's lane for its direction (or queues behind
//!    the operation that has it, see [`lanes`]) and claims the operation's
//!    memory ([`op::Claim`]); it tries the call once without blocking, as
//!    Windows does ([`attempt`]): if the data (or buffer space) is there, the
//!    operation completes at once. Otherwise it goes to the kernel through
//!    its socket's [`Route`](op::Route) (a [`ring::Ring`]), and the starter
//!    asks the lanes whether the socket began closing meanwhile (then it
//!    cancels what it submitted: nothing starts on a closing socket).
//! 3. The backend's reaper hands each completion to `lifecycle::complete`,
//!    which records the outcome, signals the event or delivers to the sink,
//!    and hands the next queued operation of that direction to the kernel.
//!
//! `docs/design.md` ("Promises held by code") lists the invariants and the
//! code that enforces each.

#![allow(unsafe_code)]

mod attempt;
pub mod backend;
pub(crate) mod buf;
pub(crate) mod buf_ring;
pub(crate) mod epoll;
#[cfg(all(test, not(loom)))]
pub(crate) mod fault;
pub(crate) mod hand_over;
pub(crate) mod lanes;
mod lifecycle;
pub(crate) mod multicast;
pub(crate) mod op;
pub(crate) mod pool_tail;
pub(crate) mod ring;
pub(crate) mod signal;
pub(crate) mod socket;
pub(crate) mod sync;
pub(crate) mod sys;
#[cfg(all(test, not(loom)))]
mod tests;
pub(crate) mod uring;

use std::io;
use std::sync::Arc;

pub(crate) use lifecycle::{cancel, cancel_all, cancel_multishot, close, start};
pub(crate) use op::Socket;

/// The ring sockets use until they are associated with a completion port,
/// created on first use.
pub(crate) fn backend() -> io::Result<&'static Arc<ring::Ring>> {
    ring::Ring::global()
}
