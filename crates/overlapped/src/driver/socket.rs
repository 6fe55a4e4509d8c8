//! A socket as the driver sees it: the descriptor, kept open while any
//! operation on it is in flight, and one ordered lane per direction.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::op::{Direction, Op};
use super::ring::Ring;

/// Operations of one direction that wait for the one in the kernel.
///
/// Winsock fills receives and transmits sends in posting order. io_uring
/// does not promise that for several requests on one socket (a partial send
/// can be overtaken), so the driver hands the kernel one request per
/// direction at a time and queues the rest here in posting order.
#[derive(Default)]
pub(crate) struct Lane {
    /// An operation of this direction is in the kernel.
    pub(crate) busy: bool,
    pub(crate) waiting: VecDeque<Arc<Op>>,
}

pub(crate) struct Lanes {
    /// The ring the socket's operations go to: the process-wide one, or
    /// the ring of the completion port it is associated with.
    pub(crate) ring: Arc<Ring>,
    /// `closesocket` was called: nothing more starts.
    pub(crate) closing: bool,
    /// Operations without a lane (accept, connect, disconnect) in the kernel.
    pub(crate) unordered: usize,
    /// The multishot receive last started, so that it can be cancelled
    /// (weak: the op holds the socket, not the other way round).
    pub(crate) multishot: Weak<Op>,
    recv: Lane,
    send: Lane,
}

impl Lanes {
    pub(crate) fn lane(&mut self, direction: Direction) -> &mut Lane {
        self.ring_and_lane(direction).1
    }

    /// The ring and the lane of `direction` at once, so the ring is used
    /// without taking a reference of its own.
    pub(crate) fn ring_and_lane(&mut self, direction: Direction) -> (&Arc<Ring>, &mut Lane) {
        match direction {
            Direction::Recv => (&self.ring, &mut self.recv),
            Direction::Send => (&self.ring, &mut self.send),
        }
    }

    /// Whether any operation is in the kernel.
    pub(crate) fn any_busy(&self) -> bool {
        self.recv.busy || self.send.busy || self.unordered > 0
    }

    /// Empties both queues, for close.
    pub(crate) fn drain_waiting(&mut self) -> Vec<Arc<Op>> {
        self.recv
            .waiting
            .drain(..)
            .chain(self.send.waiting.drain(..))
            .collect()
    }
}

/// The driver's side of a socket. Each in-flight operation holds an `Arc` of
/// it, so the descriptor is closed only after the last completion.
pub struct Socket {
    pub(crate) sock: socket2::Socket,
    lanes: Mutex<Lanes>,
}

impl Socket {
    pub(crate) fn new(sock: socket2::Socket, ring: Arc<Ring>) -> Arc<Socket> {
        Arc::new(Socket {
            sock,
            lanes: Mutex::new(Lanes {
                ring,
                closing: false,
                unordered: 0,
                multishot: Weak::new(),
                recv: Lane::default(),
                send: Lane::default(),
            }),
        })
    }

    /// The ring the socket's operations go to.
    pub(crate) fn ring(&self) -> Arc<Ring> {
        self.lanes().ring.clone()
    }

    /// Sends the socket's future operations to `ring` (a completion port's).
    pub(crate) fn move_to(&self, ring: Arc<Ring>) {
        self.lanes().ring = ring;
    }

    pub(crate) fn lanes(&self) -> MutexGuard<'_, Lanes> {
        // Lane updates are single assignments or queue pushes/pops, which a
        // panic cannot leave half-done.
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // No operation is in flight (each holds the socket); tell the rings
        // the socket used that its descriptor is about to close.
        let fd = self.sock.as_raw_fd();
        let ring = &self.lanes.get_mut().unwrap_or_else(|p| p.into_inner()).ring;
        ring.forget(fd);
        if let Some(global) = Ring::global_if_started() {
            if !Arc::ptr_eq(global, ring) {
                global.forget(fd);
            }
        }
    }
}
