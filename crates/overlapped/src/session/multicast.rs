//! A broadcast to sessions of the worker it is made on, as one multicast
//! (see [`crate::driver::multicast`]): the sessions whose queue is idle
//! lend it their one send in flight; the others queue the bytes as usual.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use bytes::Bytes;

use super::connection::Session;
use super::core::ServiceCore;
use crate::boundary::panic_message;
use crate::driver::multicast::MemberSink;

impl ServiceCore {
    /// Sends `data` to each of `sessions`, all of worker `worker`, which is
    /// this thread: as one multicast for those whose queue is idle, queued
    /// with [`Session::send`] on the others. How many it reached.
    pub(crate) fn multicast_here<'a>(
        &self,
        worker: usize,
        data: &Bytes,
        sessions: impl Iterator<Item = &'a Arc<Session>>,
    ) -> usize {
        let port = &self.ports[worker];
        if !port.can_multicast(data.len()) {
            return sessions
                .filter(|session| session.send(data.clone()))
                .count();
        }
        let (mut lent, mut sockets, mut queued) = (Vec::new(), Vec::new(), 0);
        for session in sessions {
            match session.lend_to_multicast(data.len()) {
                Some(socket) => {
                    lent.push(session.clone());
                    sockets.push(socket);
                }
                None => queued += usize::from(session.send(data.clone())),
            }
        }
        let sent = lent.len();
        if sent > 0 {
            let sink = Box::new(Members {
                sessions: lent,
                len: data.len(),
            });
            port.multicast(data.clone(), sockets, sink);
        }
        queued + sent
    }
}

/// The sessions of a multicast, by member index.
struct Members {
    sessions: Vec<Arc<Session>>,
    len: usize,
}

impl MemberSink for Members {
    /// A member's send ended: its session hears of it as of a send of its
    /// own. The session's hooks run here, on its worker (the ring's reaper):
    /// one that panics disconnects its own session, as in a dispatch.
    fn sent(&self, index: usize, result: i32) {
        let session = &self.sessions[index];
        let done = panic::catch_unwind(AssertUnwindSafe(|| {
            session.on_multicast_sent(result, self.len)
        }));
        let Err(panic) = done else { return };
        let reason = format!("its handler panicked: {}", panic_message(panic.as_ref()));
        tracing::error!("session {} disconnected: {reason}", session.id());
        if panic::catch_unwind(AssertUnwindSafe(|| session.disconnect(&reason))).is_err() {
            tracing::error!("session {}: on_disconnected panicked too", session.id());
        }
    }
}
