//! How the program learns that an operation completed, and what it gets.

use std::any::Any;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use smallbox::space::S4;
use smallbox::SmallBox;

use super::super::buf_ring::Lease;
use super::super::signal::Signal;
use super::Finished;
use crate::error;

/// Where a completed operation's outcome and memory go: a completion
/// routine's thread or a completion port. `tag` is what the sink was given
/// with the operation (a routine's id, a completion key).
pub(crate) trait Sink: Send + Sync {
    fn deliver(&self, tag: u64, outcome: Outcome, payload: Payload);
}

/// What a delivery hands over besides the outcome.
pub(crate) enum Payload {
    /// The operation itself, at its final completion: its memory (buffers,
    /// an accepted connection) stays in it until taken with
    /// [`Op::take_parts`], and the program's record, already taken out.
    Done {
        op: Finished,
        record: Option<Erased>,
    },
    /// One arrival of a multishot receive, in a pooled buffer.
    Lease(Lease),
}

/// A value of the program's whose type the driver does not know (its
/// buffers, its record). Up to four words are kept in place: a `Vec` of
/// buffers and the usual record (an enum around an `Arc`) go to the kernel
/// and back without a heap allocation of their own.
pub(crate) type Erased = SmallBox<dyn Any + Send, S4>;

/// A sink and the tag to deliver with.
pub(crate) type Delivery = (Arc<dyn Sink>, u64);

/// How the program learns that the operation completed.
pub(crate) enum Notify {
    /// Only through the `Overlapped` (polling or `get_overlapped_result`).
    Silent,
    /// Signal this event (`OVERLAPPED::hEvent`).
    Event(Signal),
    /// Give the outcome and the buffers away (completion routine, port).
    Deliver(Delivery),
}

/// The outcome of a completed operation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Outcome {
    /// Bytes transferred.
    pub(crate) bytes: usize,
    /// The errno the operation failed with, if it failed.
    pub(crate) error: Option<i32>,
    /// `msg_flags` of a receive.
    pub(crate) flags: u32,
    /// The source address of a datagram receive.
    pub(crate) source: Option<SocketAddr>,
}

impl Outcome {
    pub(crate) fn failed(errno: i32) -> Outcome {
        Outcome {
            bytes: 0,
            error: Some(errno),
            flags: 0,
            source: None,
        }
    }

    pub(crate) fn aborted() -> Outcome {
        Outcome::failed(libc::ECANCELED)
    }

    /// The outcome as a result; an error keeps what the operation
    /// transferred all the same (bytes, a datagram's sender), as Windows
    /// fills them in beside the error.
    pub(crate) fn into_result(self) -> io::Result<Outcome> {
        match self.error {
            Some(errno) if self.bytes > 0 || self.source.is_some() => {
                Err(error::with_transfer(errno, self.into()))
            }
            Some(errno) => Err(error::from_errno(errno)),
            None => Ok(self),
        }
    }
}
