//! `Io`: the record each of a service's operations and packets carries
//! through its worker's port — what to do with the completion, and what
//! keeps its owner alive meanwhile.

use std::sync::Arc;

use bytes::Bytes;

use super::connection::Session;
use super::jobs::JobQueue;
use super::listener::Listener;

/// The record each operation carries through the port: what to do with its
/// completion, and the `Arc` that keeps its owner alive meanwhile.
pub(crate) enum Io {
    Accept(Arc<Listener>),
    Connect(Arc<Session>),
    Recv(Arc<Session>),
    /// The end of a session's multishot receive.
    RecvEnd(Arc<Session>),
    Send(Arc<Session>),
    /// Start a session accepted on another worker's thread.
    Start(Arc<Session>),
    /// Bytes another thread sends on a session (boxed, so that every
    /// record stays two words, which operations carry without allocating).
    Deliver(Box<(Arc<Session>, Bytes)>),
    /// Another thread closes a session gracefully.
    Drain(Arc<Session>),
    /// Another thread disconnected a session: its `on_disconnected` runs
    /// here (or wherever the notice is dropped, if never dispatched).
    Disconnected(Box<DisconnectNotice>),
    /// The service stops: disconnect this worker's sessions and leave.
    Stop,
    /// Bytes to queue on every session of this worker (a broadcast; boxed,
    /// so that every record stays two words).
    Broadcast(Box<Bytes>),
    /// Run the jobs of a queue that belongs to this worker.
    Jobs(Arc<JobQueue>),
    /// Bytes to queue on sessions of this worker: a group's broadcast.
    GroupCast(Box<GroupCast>),
    /// An entry was added to this worker's schedule ahead of the others:
    /// look at it again before sleeping.
    Wake,
}

/// A group's broadcast handed to the worker of some of its members.
pub(crate) struct GroupCast {
    pub(crate) sessions: Vec<Arc<Session>>,
    pub(crate) data: Bytes,
}

impl GroupCast {
    /// What it holds until that worker has queued it.
    pub(crate) fn cost(&self) -> usize {
        in_transit_cost(&self.data) + self.sessions.len() * std::mem::size_of::<usize>()
    }
}

/// What a broadcast handed to another worker holds until that worker fans
/// it out: its bytes, its box and its packet in the port's queue.
pub(crate) fn in_transit_cost(data: &Bytes) -> usize {
    data.len() + 256
}

// Every record travels inside its operation without an allocation of its
// own only while it fits in two words (see `op::Erased`).
const _: () = assert!(std::mem::size_of::<Io>() <= 2 * std::mem::size_of::<usize>());

/// A session's `on_disconnected`, due on its worker. It runs when the
/// worker dispatches the notice, or — should the worker be gone and the
/// notice dropped with its port — where it is dropped: the hook runs
/// exactly once either way.
pub(crate) struct DisconnectNotice {
    session: Arc<Session>,
    reason: String,
    announced: bool,
}

impl DisconnectNotice {
    pub(crate) fn new(session: Arc<Session>, reason: &str) -> Box<DisconnectNotice> {
        Box::new(DisconnectNotice {
            session,
            reason: reason.to_owned(),
            announced: false,
        })
    }

    pub(super) fn announce(&mut self) {
        if !std::mem::replace(&mut self.announced, true) {
            self.session.announce_disconnect(&self.reason);
        }
    }
}

impl Drop for DisconnectNotice {
    fn drop(&mut self) {
        if !self.announced {
            let id = self.session.id();
            let _ = crate::boundary::catch(&format!("on_disconnected of session {id}"), || {
                self.announce()
            });
        }
    }
}
