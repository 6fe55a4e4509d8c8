//! What an operation comes to: its outcome, and the program's values the
//! driver carries without knowing their type.

use std::any::Any;
use std::io;
use std::net::SocketAddr;

use smallbox::space::S4;
use smallbox::SmallBox;

use crate::error;

/// A value of the program's whose type the driver does not know (its
/// buffers, its record). Up to four words are kept in place: a `Vec` of
/// buffers and the usual record (an enum around an `Arc`) go to the kernel
/// and back without a heap allocation of their own.
pub(crate) type Erased = SmallBox<dyn Any + Send, S4>;

/// The outcome of a completed operation.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
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
