//! The in-memory room store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Claim, Fence, RoomStore, StoreError, StoreStats, StoredRoom};
use crate::room::journal::Persist;

/// One room as the shared store holds it.
#[derive(Debug, Default)]
struct Held {
    owner: Option<(String, Fence)>,
    image: Option<Vec<u8>>,
    entries: BTreeMap<u64, Vec<u8>>,
}

/// The state several [`MemoryStore::shared`] handles share.
#[derive(Debug, Default)]
pub struct Shared {
    rooms: Mutex<HashMap<String, Held>>,
    next_fence: Mutex<i64>,
}

impl Shared {
    /// Simulates the death of `replica`: its ownerships lapse (as its etcd lease would).
    pub fn expire(&self, replica: &str) {
        for held in self.rooms.lock().values_mut() {
            if held.owner.as_ref().is_some_and(|(r, _)| r == replica) {
                held.owner = None;
            }
        }
    }

    /// The replica owning `room`, if any.
    pub fn owner(&self, room: &str) -> Option<String> {
        self.rooms
            .lock()
            .get(room)
            .and_then(|h| h.owner.as_ref().map(|(r, _)| r.clone()))
    }

    /// Stored entries of `room`.
    pub fn entry_count(&self, room: &str) -> usize {
        self.rooms.lock().get(room).map_or(0, |h| h.entries.len())
    }
}

/// The in-memory store: [`MemoryStore::local`] (the default: rooms live only in this
/// process and do not journal) or [`MemoryStore::shared`] (a store in this process that
/// several hubs share, with ownership; for tests).
#[derive(Debug)]
pub struct MemoryStore {
    shared: Option<Arc<Shared>>,
    replica: String,
    stats: StoreStats,
}

impl MemoryStore {
    /// Rooms in this process only; nothing is journaled.
    pub fn local() -> Self {
        Self {
            shared: None,
            replica: String::new(),
            stats: StoreStats::default(),
        }
    }

    /// A handle on `shared` for replica `replica`.
    pub fn shared(shared: Arc<Shared>, replica: impl Into<String>) -> Self {
        Self {
            shared: Some(shared),
            replica: replica.into(),
            stats: StoreStats::default(),
        }
    }
}

impl RoomStore for MemoryStore {
    fn durable(&self) -> bool {
        self.shared.is_some()
    }

    fn acquire(&self, room: &str) -> Result<Claim, StoreError> {
        let Some(shared) = &self.shared else {
            return Ok(Claim {
                fence: Fence(0),
                stored: None,
            });
        };
        let mut rooms = shared.rooms.lock();
        let held = rooms.entry(room.to_owned()).or_default();
        let fence = match &held.owner {
            Some((r, f)) if *r == self.replica => *f,
            Some((r, _)) => {
                return Err(StoreError::Owned {
                    replica: r.clone(),
                    url: None,
                });
            }
            None => {
                let mut next = shared.next_fence.lock();
                *next += 1;
                let f = Fence(*next);
                held.owner = Some((self.replica.clone(), f));
                f
            }
        };
        self.stats
            .acquired
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stored = held.image.as_ref().map(|image| StoredRoom {
            image: image.clone(),
            entries: held.entries.iter().map(|(s, v)| (*s, v.clone())).collect(),
        });
        Ok(Claim { fence, stored })
    }

    fn append(&self, room: &str, fence: Fence, batch: &Persist) -> Result<(), StoreError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let mut rooms = shared.rooms.lock();
        let held = rooms.get_mut(room).ok_or(StoreError::Fenced)?;
        if held.owner.as_ref() != Some(&(self.replica.clone(), fence)) {
            self.stats
                .failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(StoreError::Fenced);
        }
        if let Some(i) = &batch.image {
            held.image = Some(i.clone());
        }
        for (s, v) in &batch.put {
            held.entries.insert(*s, v.clone());
        }
        for s in &batch.delete {
            held.entries.remove(s);
        }
        self.stats.wrote(batch);
        Ok(())
    }

    fn release(&self, room: &str, fence: Fence, end: bool) {
        let Some(shared) = &self.shared else {
            return;
        };
        let mut rooms = shared.rooms.lock();
        let mine = rooms
            .get(room)
            .is_some_and(|h| h.owner.as_ref() == Some(&(self.replica.clone(), fence)));
        if !mine {
            return;
        }
        if end {
            rooms.remove(room);
        } else if let Some(h) = rooms.get_mut(room) {
            h.owner = None;
        }
    }

    fn ready(&self) -> bool {
        true
    }

    fn release_all(&self) {
        if let Some(shared) = &self.shared {
            shared.expire(&self.replica);
        }
    }

    fn stats(&self) -> &StoreStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn batch(seq: u64) -> Persist {
        Persist {
            image: Some(format!("image {seq}").into_bytes()),
            put: vec![(seq, vec![1, 2, 3])],
            delete: Vec::new(),
        }
    }

    #[test]
    fn one_owner_at_a_time_and_a_fenced_writer_is_refused() {
        let shared = Arc::new(Shared::default());
        let a = MemoryStore::shared(shared.clone(), "a");
        let b = MemoryStore::shared(shared.clone(), "b");
        let claim = a.acquire("r").unwrap();
        assert!(claim.stored.is_none());
        a.append("r", claim.fence, &batch(1)).unwrap();
        assert!(matches!(b.acquire("r"), Err(StoreError::Owned { .. })));
        // a dies: b takes the room with what a wrote.
        shared.expire("a");
        let taken = b.acquire("r").unwrap();
        assert_ne!(taken.fence, claim.fence);
        let stored = taken.stored.unwrap();
        assert_eq!(stored.image, b"image 1");
        assert_eq!(stored.entries, vec![(1, vec![1, 2, 3])]);
        // a comes back believing it owns the room: fenced.
        assert_eq!(
            a.append("r", claim.fence, &batch(2)),
            Err(StoreError::Fenced)
        );
        b.append("r", taken.fence, &batch(2)).unwrap();
        assert_eq!(shared.entry_count("r"), 2);
        b.release("r", taken.fence, true);
        assert_eq!(shared.owner("r"), None);
        assert_eq!(shared.entry_count("r"), 0);
    }

    #[test]
    fn the_local_store_keeps_nothing() {
        let s = MemoryStore::local();
        assert!(!s.durable());
        let c = s.acquire("r").unwrap();
        s.append("r", c.fence, &batch(1)).unwrap();
        assert!(s.acquire("r").unwrap().stored.is_none());
    }
}
