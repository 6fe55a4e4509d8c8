//! `Registry`: the sessions a service tracks — by id, by worker, and how
//! many from each address.
//!
//! The three tables change together, under one lock: a session is in all
//! of them or in none, and its address's count moves with it. Tracked as
//! three locks, a disconnect landing between a session's insert and its
//! address's count would take a count that was never given, and leave the
//! address a slot short for good.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use rustc_hash::FxHashMap;

use super::config::ServiceConfig;
use super::connection::Session;

pub(crate) struct Registry {
    tables: Mutex<Tables>,
}

struct Tables {
    by_id: FxHashMap<u64, Arc<Session>>,
    /// The sessions of each worker, in port order: what a broadcast that a
    /// worker fans out itself goes to.
    by_worker: Vec<FxHashMap<u64, Arc<Session>>>,
    /// Sessions open from each IP address (no entry: none).
    per_ip: FxHashMap<IpAddr, usize>,
}

impl Registry {
    /// No sessions, for a service of `workers` workers.
    pub(crate) fn new(workers: usize) -> Registry {
        Registry {
            tables: Mutex::new(Tables {
                by_id: FxHashMap::default(),
                by_worker: (0..workers).map(|_| FxHashMap::default()).collect(),
                per_ip: FxHashMap::default(),
            }),
        }
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        // Every change is made whole before the lock is let go: a panic
        // cannot leave the tables half changed.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tracks `session`, which belongs to worker `worker`.
    pub(crate) fn insert(&self, worker: usize, session: Arc<Session>) {
        let mut tables = self.tables();
        *tables.per_ip.entry(session.peer_addr().ip()).or_insert(0) += 1;
        tables.by_worker[worker].insert(session.id(), session.clone());
        tables.by_id.insert(session.id(), session);
    }

    /// Stops tracking session `id` of worker `worker`; the session, if it
    /// was tracked.
    pub(crate) fn remove(&self, worker: usize, id: u64) -> Option<Arc<Session>> {
        let mut tables = self.tables();
        let session = tables.by_id.remove(&id)?;
        tables.by_worker[worker].remove(&id);
        let ip = session.peer_addr().ip();
        if let Some(open) = tables.per_ip.get_mut(&ip) {
            *open -= 1;
            if *open == 0 {
                tables.per_ip.remove(&ip);
            }
        }
        Some(session)
    }

    /// Moves `session`'s address count to `client` (the client a PROXY
    /// protocol header named) and makes that its address — if `admit`,
    /// given how many sessions `client`'s address has now, lets it in.
    pub(crate) fn readdress(
        &self,
        session: &Session,
        client: SocketAddr,
        admit: impl FnOnce(usize) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut tables = self.tables();
        if !tables.by_id.contains_key(&session.id()) {
            return Err("the session ended".into());
        }
        admit(tables.per_ip.get(&client.ip()).copied().unwrap_or(0))?;
        let from = session.peer_addr().ip();
        if let Some(open) = tables.per_ip.get_mut(&from) {
            *open -= 1;
            if *open == 0 {
                tables.per_ip.remove(&from);
            }
        }
        *tables.per_ip.entry(client.ip()).or_insert(0) += 1;
        session.set_proxied_peer(client);
        Ok(())
    }

    /// Session `id`, if it is tracked.
    pub(crate) fn get(&self, id: u64) -> Option<Arc<Session>> {
        self.tables().by_id.get(&id).cloned()
    }

    /// Sessions tracked now.
    pub(crate) fn len(&self) -> usize {
        self.tables().by_id.len()
    }

    /// The sessions tracked now.
    pub(crate) fn snapshot(&self) -> Vec<Arc<Session>> {
        self.tables().by_id.values().cloned().collect()
    }

    /// The sessions of worker `worker` now.
    pub(crate) fn of_worker(&self, worker: usize) -> Vec<Arc<Session>> {
        self.tables().by_worker[worker].values().cloned().collect()
    }

    /// How many sessions worker `worker` has now.
    pub(crate) fn worker_len(&self, worker: usize) -> usize {
        self.tables().by_worker[worker].len()
    }

    /// Sessions open now from `ip`.
    pub(crate) fn open_from(&self, ip: IpAddr) -> usize {
        self.tables().per_ip.get(&ip).copied().unwrap_or(0)
    }
}

/// Why another session from `peer`'s address is refused when it has
/// `from_ip` already, if it is.
pub(crate) fn per_address_refusal(
    config: &ServiceConfig,
    peer: SocketAddr,
    from_ip: usize,
) -> Option<String> {
    let per_ip = config.max_sessions_per_ip;
    if per_ip == 0 || (is_loopback(peer) && !config.limit_loopback) {
        return None;
    }
    (from_ip >= per_ip).then(|| {
        let loopback = if is_loopback(peer) {
            "; loopback peers are counted only with --limit-loopback, \
             ServiceConfig::limit_loopback"
        } else {
            ""
        };
        format!(
            "{from_ip} sessions open from {}, the limit per address is {per_ip} \
             (--max-sessions-per-ip, ServiceConfig::max_sessions_per_ip; 0 = none{loopback})",
            peer.ip()
        )
    })
}

/// A peer on this host: `127.0.0.0/8`, `::1`, or either mapped into IPv6.
fn is_loopback(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}
