//! A worker's loop: it takes the packets of its port in batches and hands
//! each to what it is for, guarded, then runs what its schedule has due.

use std::collections::hash_map::Entry;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use rustc_hash::FxHashMap;

use super::connection::{Io, Session};
use super::core::ServiceCore;
use super::io::in_transit_cost;
use crate::boundary::panic_message;
use crate::event::INFINITE;
use crate::port::{Completion, CompletionPort};
use crate::sync::{current_thread, ThreadKey};

impl ServiceCore {
    /// Dispatches a packet, guarded (see [`ServiceCore::run_guarded`]).
    fn dispatch_guarded(self: &Arc<Self>, packet: Completion<Io>, receiving: &mut Receiving) {
        // A session's packets carry its id; the listener's carry 0, which
        // names no session (ids start at 1).
        let key = packet.key;
        self.run_guarded(key, || self.dispatch(packet, receiving));
    }

    /// Runs `work` for session `id`. A handler that panics inside it
    /// disconnects that session, with the panic as the logged reason,
    /// instead of ending the worker and stalling every other session of
    /// that worker. The session's state survives a panic (its worker is
    /// let in again after an unwind), and the session is disconnected at
    /// once.
    pub(crate) fn run_guarded(&self, id: u64, work: impl FnOnce()) {
        let Err(panic) = panic::catch_unwind(AssertUnwindSafe(work)) else {
            return;
        };
        let what = panic_message(panic.as_ref());
        let session = self.registry.get(id);
        let Some(session) = session else {
            tracing::error!("a handler panicked: {what}");
            return;
        };
        let reason = format!("its handler panicked: {what}");
        tracing::error!("session {id} disconnected: {reason}");
        let disconnected = panic::catch_unwind(AssertUnwindSafe(|| session.disconnect(&reason)));
        if let Err(again) = disconnected {
            let what = panic_message(again.as_ref());
            tracing::error!("session {id}: on_disconnected panicked too: {what}");
        }
    }

    fn dispatch(self: &Arc<Self>, mut packet: Completion<Io>, receiving: &mut Receiving) {
        let Some(io) = packet.record.take() else {
            // An arrival of a multishot receive: the key names the session.
            if let Some(bytes) = packet.received() {
                if let Some(session) = receiving.session(packet.key, self) {
                    session.on_arrival(bytes);
                }
            }
            return;
        };
        match io {
            Io::Accept(listener) => (*listener).on_accept(packet),
            Io::Connect(session) => match packet.result {
                Ok(_) => session.start(),
                Err(e) => session.disconnect(&format!("connect failed: {e}")),
            },
            Io::Recv(session) => {
                let tails = packet.take_buffers();
                session.on_recv_complete(packet.result, tails)
            }
            Io::RecvEnd(session) => {
                receiving.ended(session.id());
                session.on_multishot_end(packet.result)
            }
            Io::Send(session) => {
                let sent = packet.take_buffers();
                session.on_send_complete(packet.result, sent)
            }
            Io::Start(session) => session.begin(),
            Io::Deliver(delivery) => {
                let (session, data) = *delivery;
                session.on_handed_over(data)
            }
            Io::Drain(session) => session.on_drain(),
            Io::Disconnected(mut notice) => notice.announce(),
            Io::Stop => self.disconnect_sessions_of(current_thread(), "service stopped"),
            Io::Broadcast(data) => {
                if let Some(index) = self.worker_index_here() {
                    self.broadcast_here(index, &data);
                }
                self.in_transit
                    .fetch_sub(in_transit_cost(&data), Ordering::Relaxed);
            }
            Io::Jobs(queue) => queue.run(),
            Io::GroupCast(cast) => {
                self.release_in_transit(cast.cost());
                let connected = cast.sessions.iter().filter(|s| s.is_connected());
                if let Some(index) = self.worker_index_here() {
                    self.multicast_here(index, &cast.data, connected);
                } else {
                    for session in connected {
                        session.send(cast.data.clone());
                    }
                }
            }
            Io::Wake => {}
        }
    }

    /// Disconnects the sessions of the worker running on `worker`, there
    /// (the service stops).
    pub(super) fn disconnect_sessions_of(&self, worker: ThreadKey, reason: &str) {
        let sessions: Vec<Arc<Session>> = self
            .session_snapshot()
            .into_iter()
            .filter(|session| self.worker_of(session.id()) == worker)
            .collect();
        self.dropped_by_stop
            .fetch_add(sessions.len(), Ordering::Relaxed);
        for session in sessions {
            self.run_guarded(session.id(), || session.disconnect(reason));
        }
    }

    /// A worker thread: dispatches the packets of its port until the
    /// service stops it (or the port closes).
    pub(super) fn work(self: Arc<Self>, index: usize, port: &CompletionPort<Io>) {
        let mut batch = Vec::with_capacity(64);
        let mut receiving = Receiving::default();
        let schedule = &self.schedules[index];
        loop {
            // Asleep no later than the next entry of the schedule is due.
            let timeout = schedule.next().map_or(INFINITE, |at| {
                Some(at.saturating_duration_since(Instant::now()))
            });
            // The port returns an error only once it is closed.
            if port
                .get_queued_completion_status_ex(&mut batch, 64, timeout)
                .is_err()
            {
                return;
            }
            let mut stopping = false;
            // What the handlers start goes to the kernel in one submission.
            port.submit_batch(|| {
                for packet in batch.drain(..) {
                    stopping |= matches!(packet.record, Some(Io::Stop));
                    self.dispatch_guarded(packet, &mut receiving);
                }
                for due in schedule.take_due(Instant::now) {
                    let _ = crate::boundary::catch("a scheduled job", due);
                }
            });
            if stopping {
                return;
            }
        }
    }
}

/// A worker's own table of the sessions whose multishot receive it is
/// handling arrivals for, so that an arrival, which names its session only
/// by id, is matched without the service's shared table and its lock. An
/// entry is made at a session's first arrival and dropped with the end of
/// its multishot receive, which comes after every arrival of it: it keeps
/// no session alive that the receive itself does not.
#[derive(Default)]
struct Receiving {
    sessions: FxHashMap<u64, Arc<Session>>,
}

impl Receiving {
    /// The session an arrival under `id` is for, if it is still tracked.
    fn session(&mut self, id: u64, core: &ServiceCore) -> Option<&Arc<Session>> {
        match self.sessions.entry(id) {
            Entry::Occupied(tracked) => Some(tracked.into_mut()),
            Entry::Vacant(untracked) => Some(untracked.insert(core.registry.get(id)?)),
        }
    }

    /// Session `id`'s multishot receive ended: no arrival of it follows.
    fn ended(&mut self, id: u64) {
        self.sessions.remove(&id);
    }
}
