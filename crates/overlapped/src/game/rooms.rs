//! `Rooms`: rooms by key, made on the first join and closed when the last
//! member leaves, with a capacity each.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

use super::room::Room;

/// Why [`Rooms::join`] refused a member.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinError {
    /// The room has its capacity of members.
    Full {
        /// The capacity of a room.
        capacity: usize,
    },
    /// The room is closed — it closed itself ([`Room::close`]: a match
    /// ended) or its service stopped — and takes no more jobs. Its key
    /// opens a new room once the members it had have left.
    Closed,
    /// The room did not exist and could not be opened (the reason `open`
    /// gave).
    Open(String),
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Full { capacity } => write!(f, "the room is full ({capacity} members)"),
            JoinError::Closed => f.write_str("the room is closed"),
            JoinError::Open(reason) => write!(f, "cannot open the room: {reason}"),
        }
    }
}

impl std::error::Error for JoinError {}

/// A room and its members: joined, or whose join job is queued.
struct Slot<S> {
    room: Room<S>,
    members: usize,
}

/// Rooms by key (a room number, a match id): a room is made on its first
/// join and closed when its last member leaves, and holds at most
/// `capacity` members.
///
/// Members are counted here, under one lock, in the order the joins and
/// leaves are called: "full" and "empty" are decided once, so a room is
/// never over-filled, and a join never lands in a room that is closing —
/// a join after the last leave makes a new room. Each join and leave
/// pushes its job to the room in that same order, and the last leave
/// pushes the room's close after its own job, so every job pushed before
/// it still runs. A room that closed otherwise ([`Room::close`], or its
/// service stopped) refuses joins ([`JoinError::Closed`]): a join is
/// counted only if its job was taken.
///
/// ```no_run
/// # use overlapped::game::{Rooms, Room};
/// # use overlapped::session::Service;
/// # fn f(service: &Service) -> Result<(), overlapped::game::JoinError> {
/// let rooms: Rooms<u32, Vec<u64>> = Rooms::new(64);
/// let room = rooms.join(7, || Ok(Room::new(service, "room 7", Vec::new())), |players, _| players.push(42))?;
/// rooms.leave(&7, |players, _| players.retain(|&id| id != 42));
/// # Ok(()) }
/// ```
pub struct Rooms<K, S> {
    slots: Mutex<HashMap<K, Slot<S>>>,
    capacity: usize,
}

impl<K, S> fmt::Debug for Rooms<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rooms")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl<K: Eq + Hash, S: Send + 'static> Rooms<K, S> {
    /// No rooms yet; each will hold at most `capacity` members.
    pub fn new(capacity: usize) -> Rooms<K, S> {
        Rooms {
            slots: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<K, Slot<S>>> {
        // Counts and inserts only: a panic cannot leave them half done
        // (`open` runs before anything changes).
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a member into room `key` — opened with `open` if there is
    /// none — and pushes `join` as the room's job. The room, or why not:
    /// it is full, or `open` failed. `open` runs under the registry's
    /// lock: it must not call this registry.
    pub fn join(
        &self,
        key: K,
        open: impl FnOnce() -> Result<Room<S>, String>,
        join: impl FnOnce(&mut S, &Room<S>) + Send + 'static,
    ) -> Result<Room<S>, JoinError> {
        let full = JoinError::Full {
            capacity: self.capacity,
        };
        let mut slots = self.slots();
        let slot = match slots.entry(key) {
            Entry::Occupied(slot) => slot.into_mut(),
            // A room that could hold no one is never opened.
            Entry::Vacant(_) if self.capacity == 0 => return Err(full),
            Entry::Vacant(vacant) => {
                let room = open().map_err(JoinError::Open)?;
                vacant.insert(Slot { room, members: 0 })
            }
        };
        if slot.members >= self.capacity {
            return Err(full);
        }
        if !slot.room.push(join) {
            // Closed: the join is not counted, and a room it was the first
            // of is not kept.
            if slot.members == 0 {
                slots.retain(|_, slot| slot.members > 0);
            }
            return Err(JoinError::Closed);
        }
        slot.members += 1;
        Ok(slot.room.clone())
    }

    /// Counts a member out of room `key` and pushes `leave` as its job;
    /// the last member's leave is followed by the room's close. Nothing
    /// if there is no such room.
    pub fn leave(&self, key: &K, leave: impl FnOnce(&mut S, &Room<S>) + Send + 'static) {
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(key) else {
            return;
        };
        slot.room.push(leave);
        slot.members = slot.members.saturating_sub(1);
        if slot.members == 0 {
            if let Some(slot) = slots.remove(key) {
                slot.room.push(|_, room| room.close());
            }
        }
    }

    /// Rooms open now.
    pub fn len(&self) -> usize {
        self.slots().len()
    }

    /// Whether no room is open.
    pub fn is_empty(&self) -> bool {
        self.slots().is_empty()
    }

    /// Members of room `key` now (joined, or whose join is queued).
    pub fn members(&self, key: &K) -> usize {
        self.slots().get(key).map_or(0, |slot| slot.members)
    }

    /// The room with `key`, if it is open.
    pub fn get(&self, key: &K) -> Option<Room<S>> {
        self.slots().get(key).map(|slot| slot.room.clone())
    }
}
