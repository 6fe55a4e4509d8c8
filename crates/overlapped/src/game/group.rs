//! `Group`: a set of sessions (a room's players) that one broadcast
//! reaches, written once.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use rustc_hash::FxHashMap;

use crate::session::core::ServiceCore;
use crate::session::io::{GroupCast, Io};
use crate::session::{Service, Session};

/// A set of sessions of one service that a broadcast reaches: the bytes
/// are encoded once and every member's send queue shares them (small ones
/// are copied into each session's coalescing buffer instead, which costs
/// less than a reference).
///
/// Members are kept by the worker they belong to. A broadcast queues on
/// the members of the worker it is called on directly, and hands every
/// other worker with members one packet listing them — one hand-off per
/// worker, not one per send. Called from a room's job, the members on the
/// room's own worker are reached without any hand-off.
///
/// On io_uring, the members of one worker whose send queue is idle (the
/// usual case for a game's snapshots) share one operation record for the
/// broadcast: one send each in the kernel, all from the same bytes, and
/// each member's outcome handled as that session's own send completing —
/// counted against its send-queue cap until then, its `on_sent` run, and
/// what it queued meanwhile sent after it. A member with sends queued
/// already queues the bytes behind them. (Winsock has no such call: a
/// broadcast there is a `WSASend` per socket.)
///
/// A group is plain data: keep it in a room's state and change it from the
/// room's jobs. Members that disconnected are skipped by broadcasts; remove
/// them in the session's `on_disconnected` (or the job it pushes).
pub struct Group {
    service: Weak<ServiceCore>,
    /// Members, by the index of their worker.
    by_worker: Vec<FxHashMap<u64, Arc<Session>>>,
    len: usize,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").field("len", &self.len).finish()
    }
}

impl Group {
    /// An empty group of `service`'s sessions.
    pub fn new(service: &Service) -> Group {
        let workers = service.core().worker_count();
        Group {
            service: Arc::downgrade(service.core()),
            by_worker: (0..workers).map(|_| FxHashMap::default()).collect(),
            len: 0,
        }
    }

    /// Adds `session`; `false` if it was a member already or belongs to
    /// another service.
    pub fn insert(&mut self, session: &Arc<Session>) -> bool {
        let Some(core) = self.service.upgrade() else {
            return false;
        };
        if !session.belongs_to(&core) {
            return false;
        }
        let worker = core.worker_index_of(session.id());
        let added = self.by_worker[worker]
            .insert(session.id(), session.clone())
            .is_none();
        self.len += usize::from(added);
        added
    }

    /// Removes the session with `id`; the session if it was a member.
    pub fn remove(&mut self, id: u64) -> Option<Arc<Session>> {
        let removed = self
            .by_worker
            .iter_mut()
            .find_map(|members| members.remove(&id));
        self.len -= usize::from(removed.is_some());
        removed
    }

    /// Whether the session with `id` is a member.
    pub fn contains(&self, id: u64) -> bool {
        self.by_worker
            .iter()
            .any(|members| members.contains_key(&id))
    }

    /// Members now.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the group has no member.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The members, in no particular order.
    pub fn sessions(&self) -> impl Iterator<Item = &Arc<Session>> {
        self.by_worker.iter().flat_map(|members| members.values())
    }

    /// Queues `data` on every member (see [`Session::send`]); returns how
    /// many it was queued on or handed over for.
    pub fn broadcast(&self, data: &Bytes) -> usize {
        self.broadcast_except(data, None)
    }

    /// Queues `data` on every member but the session with id `except`
    /// ("everyone but the sender").
    pub fn broadcast_except(&self, data: &Bytes, except: Option<u64>) -> usize {
        let Some(core) = self.service.upgrade() else {
            return 0;
        };
        let here = core.current_worker();
        let mut reached = 0;
        for (worker, members) in self.by_worker.iter().enumerate() {
            let members = members
                .values()
                .filter(|session| Some(session.id()) != except && session.is_connected());
            if Some(worker) == here {
                reached += core.multicast_here(worker, data, members);
                continue;
            }
            let cast = GroupCast {
                sessions: members.cloned().collect(),
                data: data.clone(),
            };
            if cast.sessions.is_empty() {
                continue;
            }
            let (count, cost) = (cast.sessions.len(), cast.cost());
            core.hold_in_transit(cost);
            if core.post_to_worker_at(worker, Io::GroupCast(Box::new(cast))) {
                reached += count;
            } else {
                core.release_in_transit(cost);
            }
        }
        reached
    }
}
