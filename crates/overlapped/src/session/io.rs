//! `Io`: the record each of a service's operations and packets carries
//! through its worker's port — what to do with the completion, and what
//! keeps its owner alive meanwhile.
//!
//! It is generic in the session (`S`), which makes records of it: the
//! service uses one instance, [`super::connection::Io`], and this file
//! names none of the session layer's other parts (the listener is seen as
//! [`Accepting`]).

use std::sync::Arc;

use bytes::Bytes;

use super::jobs::JobQueue;
use crate::port::Completion;

/// What the records need of a session.
pub(crate) trait Announce: Send + Sync + 'static {
    /// The session's id.
    fn id(&self) -> u64;

    /// Runs the session's `on_disconnected` with `reason`.
    fn announce(session: &Arc<Self>, reason: &str);
}

/// What takes the completion of an accept: the service's listener.
pub(crate) trait Accepting<S: Announce>: Send + Sync {
    fn on_accept(self: Arc<Self>, packet: Completion<Io<S>>);
}

/// The record each operation carries through the port: what to do with its
/// completion, and the `Arc` that keeps its owner alive meanwhile.
pub(crate) enum Io<S: Announce> {
    /// An accept of the listener (boxed, so that every record stays two
    /// words, which operations carry without allocating; one a connection).
    Accept(Box<Arc<dyn Accepting<S>>>),
    Connect(Arc<S>),
    Recv(Arc<S>),
    /// The end of a session's multishot receive.
    RecvEnd(Arc<S>),
    Send(Arc<S>),
    /// Start a session accepted on another worker's thread.
    Start(Arc<S>),
    /// Bytes another thread sends on a session (boxed, so that every
    /// record stays two words).
    Deliver(Box<(Arc<S>, Bytes)>),
    /// Another thread closes a session gracefully.
    Drain(Arc<S>),
    /// Another thread disconnected a session: its `on_disconnected` runs
    /// here (or wherever the notice is dropped, if never dispatched).
    Disconnected(Box<DisconnectNotice<S>>),
    /// The service stops: disconnect this worker's sessions and leave.
    Stop,
    /// Bytes to queue on every session of this worker (a broadcast; boxed,
    /// so that every record stays two words).
    Broadcast(Box<Bytes>),
    /// Run the jobs of a queue that belongs to this worker.
    Jobs(Arc<JobQueue>),
    /// Bytes to queue on sessions of this worker: a group's broadcast.
    GroupCast(Box<GroupCast<S>>),
    /// An entry was added to this worker's schedule ahead of the others:
    /// look at it again before sleeping.
    Wake,
}

/// A group's broadcast handed to the worker of some of its members.
pub(crate) struct GroupCast<S> {
    pub(crate) sessions: Vec<Arc<S>>,
    pub(crate) data: Bytes,
}

impl<S> GroupCast<S> {
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
const _: () = assert!(std::mem::size_of::<Io<Probe>>() <= 2 * std::mem::size_of::<usize>());

/// A session type for the size check.
struct Probe(#[allow(dead_code)] u64);

impl Announce for Probe {
    fn id(&self) -> u64 {
        self.0
    }

    fn announce(_: &Arc<Self>, _: &str) {}
}

/// A session's `on_disconnected`, due on its worker. It runs when the
/// worker dispatches the notice, or — should the worker be gone and the
/// notice dropped with its port — where it is dropped: the hook runs
/// exactly once either way.
pub(crate) struct DisconnectNotice<S: Announce> {
    session: Arc<S>,
    reason: String,
    announced: bool,
}

impl<S: Announce> DisconnectNotice<S> {
    pub(crate) fn new(session: Arc<S>, reason: &str) -> Box<DisconnectNotice<S>> {
        Box::new(DisconnectNotice {
            session,
            reason: reason.to_owned(),
            announced: false,
        })
    }

    pub(super) fn announce(&mut self) {
        if !std::mem::replace(&mut self.announced, true) {
            S::announce(&self.session, &self.reason);
        }
    }
}

impl<S: Announce> Drop for DisconnectNotice<S> {
    fn drop(&mut self) {
        if !self.announced {
            let id = self.session.id();
            let _ = crate::boundary::catch(&format!("on_disconnected of session {id}"), || {
                self.announce()
            });
        }
    }
}
