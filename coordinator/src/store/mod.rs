//! Room stores: where a room's durable state and log live, and who owns a room.
//!
//! The room ([`crate::room::Room`]) stays a plain state machine. With a durable store its
//! journal is on, and the hub writes what [`crate::room::Room::take_journal`] returns with
//! [`RoomStore::append`] *before* it delivers the outputs of the inputs that caused it: no
//! client sees an entry the store does not hold. A write is conditional on still owning the
//! room (the [`Fence`] of [`RoomStore::acquire`]); a refused write ends the room on this
//! replica and its clients resume elsewhere.
//!
//! Backends:
//! - [`MemoryStore::local`]: the default. Nothing leaves the process (the room in memory is
//!   the only copy), rooms do not journal, behaviour is exactly as without a store.
//! - [`MemoryStore::shared`]: an in-process store several hubs can share, with ownership
//!   (tests of failover without an etcd).
//! - [`EtcdStore`]: etcd through its v3 JSON gateway; ownership by a lease per replica and a
//!   fencing token per room (see `docs/room-store.md`).
//!
//! The trait is synchronous: the hub applies an input and writes its journal under the
//! room's lock, so the room's total order is the store's order. A write to etcd holds that
//! room's lock for one round trip (other rooms are not held up).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::room::journal::Persist;

mod etcd;
pub mod memory;

pub use etcd::{EtcdConfig, EtcdStore};
pub use memory::MemoryStore;

/// Where rooms live (`--etcd-endpoint` etc.; default: this process's memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// etcd client URLs; empty: rooms live in memory only (the default).
    pub etcd_endpoints: Vec<String>,
    /// Key prefix in etcd (ends with `/`).
    pub etcd_prefix: String,
    /// This replica's id among the coordinator replicas (default: a random one).
    pub replica_id: Option<String>,
    /// The URL other replicas reach this replica at (they forward clients of its rooms there).
    pub replica_url: Option<String>,
    /// Lease TTL: how long a dead replica's rooms stay taken.
    pub lease_ttl: std::time::Duration,
    /// Longest wait for one etcd request.
    pub timeout: std::time::Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            etcd_endpoints: Vec::new(),
            etcd_prefix: "/satsuma/".to_owned(),
            replica_id: None,
            replica_url: None,
            lease_ttl: std::time::Duration::from_secs(3),
            // Longer than an etcd leader election with the default election timeout (1-2 s):
            // an election must not end a room.
            timeout: std::time::Duration::from_secs(3),
        }
    }
}

impl StoreConfig {
    /// Opens the store this config names.
    pub fn open(&self) -> Result<std::sync::Arc<dyn RoomStore>, StoreError> {
        if self.etcd_endpoints.is_empty() {
            return Ok(std::sync::Arc::new(MemoryStore::local()));
        }
        let replica = self
            .replica_id
            .clone()
            .unwrap_or_else(|| format!("coordinator-{}", hex::encode(rand::random::<[u8; 6]>())));
        let mut prefix = self.etcd_prefix.clone();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(std::sync::Arc::new(EtcdStore::connect(EtcdConfig {
            endpoints: self.etcd_endpoints.clone(),
            prefix,
            replica,
            url: self.replica_url.clone(),
            lease_ttl: self.lease_ttl,
            timeout: self.timeout,
        })?))
    }
}

/// Proof of ownership of a room: every write is conditional on it. For etcd it is the
/// revision at which this replica created the room's owner key; a later owner's differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence(pub i64);

/// A room as a store holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredRoom {
    /// The encoded [`crate::room::journal::RoomImage`].
    pub image: Vec<u8>,
    /// The retained log entries: seq and encoded entry.
    pub entries: Vec<(u64, Vec<u8>)>,
}

/// Ownership of a room, just taken (or already held by this replica).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// What every write must present.
    pub fence: Fence,
    /// The room's stored state, if it exists (rebuild it), else a new room.
    pub stored: Option<StoredRoom>,
}

/// Why a store refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Another replica owns the room.
    #[error("room is owned by replica {replica}")]
    Owned {
        /// Its id.
        replica: String,
        /// Its public URL, if it advertises one (clients may be redirected there).
        url: Option<String>,
    },
    /// This replica no longer owns the room (its lease expired, or another took it).
    #[error("room ownership lost")]
    Fenced,
    /// The store cannot be reached or has no quorum; nothing was written.
    #[error("room store unavailable: {0}")]
    Unavailable(String),
    /// The stored room cannot be read.
    #[error("stored room is corrupt: {0}")]
    Corrupt(String),
}

/// One replica's view of one SFU node (placement from any replica: every replica publishes
/// what its health checks see and how many of its rooms use each node).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SfuNodeReport {
    /// The node's base URL (as configured; nodes are matched by it).
    pub url: String,
    /// The replica's last health check of it passed.
    pub healthy: bool,
    /// Rooms of the replica placed on it.
    pub rooms: u64,
}

/// Counters of a store's writes (for the metrics and the cost measurements).
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Conditional appends written.
    pub writes: AtomicU64,
    /// Value bytes those carried.
    pub bytes: AtomicU64,
    /// Appends refused (fenced or unavailable).
    pub failures: AtomicU64,
    /// Rooms acquired (new or rebuilt).
    pub acquired: AtomicU64,
    /// Rooms rebuilt from stored state.
    pub rebuilt: AtomicU64,
}

impl StoreStats {
    pub(crate) fn wrote(&self, p: &Persist) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(
            u64::try_from(p.bytes()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// `(writes, bytes)` so far.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.writes.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// Where rooms live. See the module docs.
pub trait RoomStore: Send + Sync + std::fmt::Debug {
    /// Whether rooms must journal and every change be written (false: rooms live only in
    /// this process and the other calls are never made).
    fn durable(&self) -> bool;

    /// Takes ownership of `room` (or confirms this replica holds it) and returns its stored
    /// state. Fails with [`StoreError::Owned`] while another replica holds it.
    fn acquire(&self, room: &str) -> Result<Claim, StoreError>;

    /// Writes a journal batch, atomically, if `fence` still owns the room.
    fn append(&self, room: &str, fence: Fence, batch: &Persist) -> Result<(), StoreError>;

    /// Gives up ownership of `room`; with `end`, deletes everything stored about it (the
    /// room is empty). Best effort: a lost lease releases it anyway.
    fn release(&self, room: &str, fence: Fence, end: bool);

    /// Whether this replica holds a working store connection (readiness).
    fn ready(&self) -> bool;

    /// Releases every room this replica owns (before exit: others take them at once).
    fn release_all(&self);

    /// Whether this replica still holds `room` with `fence`, as far as it knows without
    /// asking the store (false once its lease lapsed).
    fn owns(&self, room: &str, fence: Fence) -> bool {
        let _ = (room, fence);
        true
    }

    /// The URL of the replica that owns `room` if another replica does and advertises one
    /// (requests for the room are forwarded there), as the store says now. `None`: nobody
    /// else owns it (or this store has no other replicas).
    fn owner_url(&self, room: &str) -> Result<Option<String>, StoreError> {
        let _ = room;
        Ok(None)
    }

    /// Publishes this replica's view of the SFU nodes; it stays in the store while this
    /// replica lives (with etcd: under its lease). Not a room write: never fenced.
    fn report_sfu_nodes(&self, nodes: &[SfuNodeReport]) -> Result<(), StoreError> {
        let _ = nodes;
        Ok(())
    }

    /// The other live replicas' published views of the SFU nodes: `(replica, its reports)`.
    /// Empty where replicas share nothing (the local memory store).
    fn sfu_nodes(&self) -> Result<Vec<(String, Vec<SfuNodeReport>)>, StoreError> {
        Ok(Vec::new())
    }

    /// Write counters.
    fn stats(&self) -> &StoreStats;
}
