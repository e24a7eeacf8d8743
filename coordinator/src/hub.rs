//! The hub: live rooms, the connections attached to their participants, and the
//! credentials that let a participant call the SFU proxy.
//!
//! Each room's [`Room`] state machine sits behind its own mutex together with the
//! senders of its participants' connections. Every input is applied and its
//! outputs are handed to the connections' queues under that lock, so every member
//! receives the room's entries in `seq` order. Lock order: hub map, then a room,
//! then the credential map (a leaf).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use axum::extract::ws::{Message, Utf8Bytes};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::dynacast::{Change, Dynacast};
use crate::ice::IceIssuer;
use crate::metrics::{CloseReason, Metrics};
use crate::protocol::{RoomEvent, ServerMessage, TrackKind, close};
use crate::room::journal::RoomImage;
use crate::room::{
    EntryBody, Input, JoinError, JoinRequest, Output, ResumeError, Room, RoomConfig, Wire,
};
use crate::store::{Fence, MemoryStore, RoomStore, StoreError};

/// What a connection's writer task sends.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A frame (counted against the connection's send budget until written).
    Frame(Message),
    /// A resume replay: the entries after `after` up to `until` that participant `id` may
    /// see, streamed from the room's log as the socket drains (never copied into the queue).
    Replay {
        slot: Weak<RoomSlot>,
        id: u64,
        after: u64,
        until: u64,
    },
    /// Close the connection with this code and reason, after the queued frames.
    Close(u16, &'static str),
}

/// Bytes a frame occupies in a send queue.
pub(crate) fn frame_len(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(_) => 2,
    }
}

/// A connection's send queue, bounded in bytes: a frame that would take the queued bytes over
/// the budget is refused (unless the queue is empty, so one frame of any accepted size always
/// fits). The writer task calls [`SendQueue::sent`] after writing each frame.
#[derive(Debug, Clone)]
pub(crate) struct SendQueue {
    tx: mpsc::UnboundedSender<Outbound>,
    queued: Arc<AtomicUsize>,
    budget: usize,
}

impl SendQueue {
    pub(crate) fn new(budget: usize) -> (SendQueue, mpsc::UnboundedReceiver<Outbound>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            SendQueue {
                tx,
                queued: Arc::new(AtomicUsize::new(0)),
                budget,
            },
            rx,
        )
    }

    /// Queues a frame; false (nothing queued) if the queue holds its budget.
    pub(crate) fn push(&self, msg: Message) -> bool {
        let len = frame_len(&msg);
        let mut cur = self.queued.load(Ordering::Relaxed);
        loop {
            if cur > 0 && cur.saturating_add(len) > self.budget {
                return false;
            }
            match self.queued.compare_exchange_weak(
                cur,
                cur + len,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if self.tx.send(Outbound::Frame(msg)).is_err() {
            self.sent(len);
            return false;
        }
        true
    }

    /// Queues a replay or a close (not counted: they hold no frame bytes).
    pub(crate) fn push_control(&self, o: Outbound) -> bool {
        self.tx.send(o).is_ok()
    }

    /// The writer wrote (or dropped) a frame of `len` bytes.
    pub(crate) fn sent(&self, len: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(len))
            });
    }

    /// Bytes queued now.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// The room's handle on one connection.
#[derive(Debug)]
pub(crate) struct ConnHandle {
    pub(crate) conn_id: u64,
    pub(crate) queue: SendQueue,
    /// Closes the connection at once (it holds its send budget).
    pub(crate) kill: oneshot::Sender<(u16, &'static str)>,
}

impl ConnHandle {
    /// Queues a frame; false if the connection holds its send budget (it stopped reading).
    fn send(&self, msg: Message) -> bool {
        self.queue.push(msg)
    }

    /// Closes after queued frames.
    fn close(self, code: u16, reason: &'static str) {
        if !self.queue.push_control(Outbound::Close(code, reason)) {
            let _ = self.kill.send((code, reason));
        }
    }
}

/// One WebSocket connection counted against its IP address's cap; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct IpSlot {
    ip: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// A room and the connections of its participants.
#[derive(Debug)]
pub(crate) struct RoomState {
    pub(crate) room: Room,
    /// The slot this state lives in (resume replays read the log through it).
    slot: Weak<RoomSlot>,
    conns: HashMap<u64, ConnHandle>,
    next_deadline: Option<Instant>,
    /// Index of the SFU node new sessions of this room go to.
    pub(crate) sfu_node: Option<usize>,
    /// SFU session id → node index.
    pub(crate) sfu_sessions: HashMap<String, usize>,
    /// Which simulcast layers of each published video track subscribers take (the SFU
    /// proxy feeds it; publishers hear of changes in `layers` messages).
    pub(crate) dynacast: Dynacast,
    /// This replica's ownership of the room in a durable store.
    fence: Option<Fence>,
    /// The room was lost to this replica (a store write was refused): its connections were
    /// closed and nothing more is delivered or written; the hub forgets it.
    lost: bool,
}

/// The driver note that keeps a room's SFU node across replicas.
const NOTE_SFU_NODE: &str = "sfu_node";

/// One live room.
#[derive(Debug)]
pub(crate) struct RoomSlot {
    pub(crate) name: String,
    pub(crate) state: Mutex<RoomState>,
}

/// Why a fresh join failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HubJoinError {
    Room(JoinError),
    TooManyRooms,
    /// The room store refused (another replica owns the room, or it is unavailable).
    Store(StoreError),
}

/// Why a resume failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HubResumeError {
    Room(ResumeError),
    UnknownRoom,
    /// The room store refused (another replica owns the room, or it is unavailable).
    Store(StoreError),
}

/// Where a credential points.
#[derive(Debug, Clone)]
pub(crate) struct Credential {
    pub(crate) room: String,
    pub(crate) participant: u64,
}

/// Result of applying one input.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Handled {
    /// The input was refused with an `error`.
    pub(crate) refused: bool,
    /// The connection no longer represents a participant.
    pub(crate) detached: bool,
}

/// An SFU session to delete at the SFU (its owner left the room).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SfuClose {
    /// Index of the SFU node that holds it.
    pub(crate) node: usize,
    /// The session id.
    pub(crate) session_id: String,
}

/// Most SFU session closes waiting for the closer task.
const SFU_CLOSE_QUEUE: usize = 4096;

/// All rooms.
#[derive(Debug)]
pub(crate) struct Hub {
    rooms: Mutex<HashMap<String, Arc<RoomSlot>>>,
    credentials: Mutex<HashMap<String, Credential>>,
    room_config: RoomConfig,
    max_rooms: usize,
    pub(crate) metrics: Metrics,
    next_conn: AtomicU64,
    sfu_closes: mpsc::Sender<SfuClose>,
    sfu_close_queue: Mutex<Option<mpsc::Receiver<SfuClose>>>,
    /// Open WebSocket connections per IP address.
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// STUN/TURN servers for `welcome` and `resumed`.
    ice: IceIssuer,
    /// Where rooms live beyond this process (the local memory store: nowhere).
    store: Arc<dyn RoomStore>,
    /// The recorder driver's queue ([`crate::recording`]), when recording is configured.
    recorders: Option<mpsc::Sender<crate::recording::RoomCommand>>,
}

impl Hub {
    pub(crate) fn new(room_config: RoomConfig, max_rooms: usize, metrics: Metrics) -> Self {
        let (sfu_closes, queue) = mpsc::channel(SFU_CLOSE_QUEUE);
        Self {
            rooms: Mutex::new(HashMap::new()),
            credentials: Mutex::new(HashMap::new()),
            room_config,
            max_rooms,
            metrics,
            next_conn: AtomicU64::new(1),
            sfu_closes,
            sfu_close_queue: Mutex::new(Some(queue)),
            per_ip: Arc::new(Mutex::new(HashMap::new())),
            ice: IceIssuer::default(),
            store: Arc::new(MemoryStore::local()),
            recorders: None,
        }
    }

    /// Hands the rooms' recorder commands to the recorder driver's queue.
    #[must_use]
    pub(crate) fn with_recorders(
        mut self,
        tx: mpsc::Sender<crate::recording::RoomCommand>,
    ) -> Self {
        self.recorders = Some(tx);
        self
    }

    /// Keeps rooms in `store` (default: this process's memory only).
    #[must_use]
    pub(crate) fn with_store(mut self, store: Arc<dyn RoomStore>) -> Self {
        self.store = store;
        self
    }

    /// The room store.
    pub(crate) fn store(&self) -> &Arc<dyn RoomStore> {
        &self.store
    }

    /// Hands `ice`'s servers to every participant in `welcome` and `resumed`.
    #[must_use]
    pub(crate) fn with_ice(mut self, ice: IceIssuer) -> Self {
        self.ice = ice;
        self
    }

    /// The ICE servers issuer (`POST /sfu/ice-servers`).
    pub(crate) fn ice(&self) -> &IceIssuer {
        &self.ice
    }

    /// Takes a place for one more connection from `ip`, unless it holds `max` already
    /// (0: no limit). Loopback addresses are not limited (a reverse proxy or TLS front on this
    /// machine; behind one, trust `X-Forwarded-For`).
    pub(crate) fn ip_slot(&self, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let mut counts = self.per_ip.lock();
        let n = counts.entry(ip).or_insert(0);
        if max > 0 && !ip.is_loopback() && *n >= max {
            if *n == 0 {
                counts.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(IpSlot {
            ip,
            counts: self.per_ip.clone(),
        })
    }

    /// How many WebSocket connections are still being served (each holds its [`IpSlot`] until
    /// its writer has flushed or given up).
    pub(crate) fn open_connections(&self) -> usize {
        self.per_ip.lock().values().sum()
    }

    /// Queues the deletion of an SFU session at its node (never under a room lock's I/O).
    pub(crate) fn close_sfu_session(&self, node: usize, session_id: String) {
        if self
            .sfu_closes
            .try_send(SfuClose { node, session_id })
            .is_err()
        {
            self.metrics
                .sfu_session_closes
                .with_label_values(&["dropped"])
                .inc();
            tracing::warn!(
                "SFU close queue full: a released session stays open until the SFU collects it"
            );
        }
    }

    /// The queue of SFU sessions to delete (departed participants'); the server's
    /// closer task takes it once.
    pub(crate) fn take_sfu_closes(&self) -> Option<mpsc::Receiver<SfuClose>> {
        self.sfu_close_queue.lock().take()
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn room(&self, name: &str) -> Option<Arc<RoomSlot>> {
        self.rooms.lock().get(name).cloned()
    }

    /// Every live room (a snapshot of the list).
    pub(crate) fn slots(&self) -> Vec<Arc<RoomSlot>> {
        self.rooms.lock().values().cloned().collect()
    }

    /// How many rooms send new SFU sessions to `node`.
    pub(crate) fn rooms_on_node(&self, node: usize) -> usize {
        let slots: Vec<Arc<RoomSlot>> = self.rooms.lock().values().cloned().collect();
        slots
            .iter()
            .filter(|s| s.state.lock().sfu_node == Some(node))
            .count()
    }

    /// How many SFU sessions of this replica's rooms are on each of `nodes` nodes.
    pub(crate) fn sessions_per_node(&self, nodes: usize) -> Vec<usize> {
        let slots: Vec<Arc<RoomSlot>> = self.rooms.lock().values().cloned().collect();
        let mut counts = vec![0; nodes];
        for slot in slots {
            for node in slot.state.lock().sfu_sessions.values() {
                if let Some(c) = counts.get_mut(*node) {
                    *c += 1;
                }
            }
        }
        counts
    }

    pub(crate) fn credential(&self, token: &str) -> Option<Credential> {
        self.credentials.lock().get(token).cloned()
    }

    /// A new room slot around `room`.
    fn make_slot(&self, room: Room, fence: Option<Fence>) -> Arc<RoomSlot> {
        let name = room.name().to_owned();
        let sfu_node = room
            .note(NOTE_SFU_NODE)
            .and_then(|n| n.parse::<usize>().ok());
        // A rebuilt room's SFU sessions are on the node its owner chose for it.
        let sfu_sessions = match sfu_node {
            Some(node) => room
                .credentials()
                .iter()
                .flat_map(|(_, id)| room.sfu_sessions_of(*id).unwrap_or_default().to_vec())
                .map(|sid| (sid, node))
                .collect(),
            None => HashMap::new(),
        };
        Arc::new_cyclic(|me| RoomSlot {
            name,
            state: Mutex::new(RoomState {
                room,
                slot: me.clone(),
                conns: HashMap::new(),
                next_deadline: None,
                sfu_node,
                sfu_sessions,
                dynacast: Dynacast::default(),
                fence,
                lost: false,
            }),
        })
    }

    /// The live room `name`. With a durable store, a room this replica does not hold is
    /// taken from the store (rebuilt from its image and log) or, with `create`, made new.
    /// `Ok(None)`: no such room (and not `create`).
    fn open_room(&self, name: &str, create: bool) -> Result<Option<Arc<RoomSlot>>, HubJoinError> {
        if let Some(s) = self.room(name) {
            return Ok(Some(s));
        }
        if !self.store.durable() {
            if !create {
                return Ok(None);
            }
            let mut rooms = self.rooms.lock();
            if let Some(s) = rooms.get(name) {
                return Ok(Some(s.clone()));
            }
            if rooms.len() >= self.max_rooms {
                return Err(HubJoinError::TooManyRooms);
            }
            let slot = self.make_slot(
                Room::new(name, self.room_config.clone(), rand::random()),
                None,
            );
            rooms.insert(name.to_owned(), slot.clone());
            self.metrics.rooms.inc();
            return Ok(Some(slot));
        }
        if self.rooms.lock().len() >= self.max_rooms {
            return Err(HubJoinError::TooManyRooms);
        }
        // Store I/O outside the hub's locks. Acquiring is idempotent for this replica, so a
        // concurrent open of the same room gets the same fence and one slot wins below.
        let claim = self.store.acquire(name).map_err(HubJoinError::Store)?;
        let now = Instant::now();
        let (room, rebuilt) = match claim.stored {
            Some(stored) => {
                let restored = RoomImage::decode(&stored.image).and_then(|image| {
                    Room::restore(self.room_config.clone(), &image, stored.entries, now)
                });
                match restored {
                    Ok(room) => (room, true),
                    Err(e) => {
                        tracing::error!(room = name, error = %e, "stored room cannot be rebuilt");
                        self.store.release(name, claim.fence, false);
                        return Err(HubJoinError::Store(StoreError::Corrupt(e.to_string())));
                    }
                }
            }
            None if create => {
                let mut room = Room::new(name, self.room_config.clone(), rand::random());
                room.enable_journal();
                (room, false)
            }
            None => {
                self.store.release(name, claim.fence, true);
                return Ok(None);
            }
        };
        let mut rooms = self.rooms.lock();
        if let Some(s) = rooms.get(name) {
            return Ok(Some(s.clone()));
        }
        if rebuilt {
            self.store
                .stats()
                .rebuilt
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut creds = self.credentials.lock();
            for (token, participant) in room.credentials() {
                creds.insert(
                    token,
                    Credential {
                        room: name.to_owned(),
                        participant,
                    },
                );
                self.metrics.participants.inc();
            }
            tracing::info!(
                room = name,
                seq = room.seq(),
                participants = room.participant_count(),
                "room rebuilt from the store"
            );
        }
        let slot = self.make_slot(room, Some(claim.fence));
        rooms.insert(name.to_owned(), slot.clone());
        self.metrics.rooms.inc();
        drop(rooms);
        if rebuilt {
            // Pending `execute` and presence deadlines start now.
            let mut state = slot.state.lock();
            state.next_deadline = state.room.poll_timeout();
        }
        Ok(Some(slot))
    }

    /// A fresh join: creates the room if needed.
    pub(crate) fn join(
        &self,
        room_name: &str,
        req: JoinRequest,
        conn: ConnHandle,
    ) -> Result<(Arc<RoomSlot>, u64), HubJoinError> {
        let slot = self
            .open_room(room_name, true)?
            .ok_or(HubJoinError::TooManyRooms)?;
        let mut state = slot.state.lock();
        if state.lost {
            return Err(HubJoinError::Store(StoreError::Fenced));
        }
        let token = req.resume_token.clone();
        match state.room.join(Instant::now(), req) {
            Ok(id) => {
                self.credentials.lock().insert(
                    token,
                    Credential {
                        room: room_name.to_owned(),
                        participant: id,
                    },
                );
                self.metrics.participants.inc();
                state.conns.insert(id, conn);
                self.dispatch(&mut state);
                let lost = state.lost;
                drop(state);
                if lost {
                    self.drop_if_empty(&slot);
                    return Err(HubJoinError::Store(StoreError::Fenced));
                }
                Ok((slot, id))
            }
            Err(e) => {
                let empty = state.room.is_empty();
                drop(state);
                if empty {
                    self.drop_if_empty(&slot);
                }
                Err(HubJoinError::Room(e))
            }
        }
    }

    /// Resume on a new connection.
    pub(crate) fn resume(
        &self,
        room_name: &str,
        id: u64,
        token: &str,
        last_seq: u64,
        conn: ConnHandle,
    ) -> Result<Arc<RoomSlot>, HubResumeError> {
        let slot = match self.open_room(room_name, false) {
            Ok(Some(s)) => s,
            Ok(None) => return Err(HubResumeError::UnknownRoom),
            Err(HubJoinError::Store(e)) => return Err(HubResumeError::Store(e)),
            Err(_) => return Err(HubResumeError::UnknownRoom),
        };
        let mut state = slot.state.lock();
        if state.lost {
            return Err(HubResumeError::Store(StoreError::Fenced));
        }
        match state.room.resume(Instant::now(), id, token, last_seq) {
            Ok(()) => {
                if let Some(old) = state.conns.insert(id, conn) {
                    old.close(close::REPLACED, "resumed on another connection");
                }
                self.dispatch(&mut state);
                if state.lost {
                    drop(state);
                    self.drop_if_empty(&slot);
                    return Err(HubResumeError::Store(StoreError::Fenced));
                }
                // Layer changes sent while it was away may be lost: the current ones again.
                let sessions = state.room.sfu_sessions_of(id).unwrap_or_default().to_vec();
                let again = state.dynacast.current(&sessions);
                send_layers(&mut state, again);
                drop(state);
                Ok(slot)
            }
            Err(e) => {
                self.dispatch(&mut state);
                let empty = state.room.is_empty();
                drop(state);
                if empty {
                    self.drop_if_empty(&slot);
                }
                Err(HubResumeError::Room(e))
            }
        }
    }

    /// Applies an input from connection `conn_id` of participant `id`.
    pub(crate) fn handle(
        &self,
        slot: &Arc<RoomSlot>,
        id: u64,
        conn_id: u64,
        input: Input,
    ) -> Handled {
        let mut state = slot.state.lock();
        if state.conns.get(&id).is_none_or(|c| c.conn_id != conn_id) {
            return Handled {
                refused: false,
                detached: true,
            };
        }
        state.room.handle(Instant::now(), id, input);
        let refused = self.dispatch_for(&mut state, Some(id));
        let detached = !state.conns.contains_key(&id);
        let empty = state.room.is_empty() || state.lost;
        drop(state);
        if empty {
            self.drop_if_empty(slot);
        }
        Handled { refused, detached }
    }

    /// A sign of life without a message.
    pub(crate) fn touch(&self, slot: &Arc<RoomSlot>, id: u64, conn_id: u64) {
        let mut state = slot.state.lock();
        if state.conns.get(&id).is_some_and(|c| c.conn_id == conn_id) {
            state.room.touch(Instant::now(), id);
            state.next_deadline = state.room.poll_timeout();
        }
    }

    /// The connection ended; the participant stays until its presence timeout, but the room
    /// no longer waits for its `ready` (it catches up from the log when it resumes). A
    /// connection another one replaced (resume) changes nothing; one the hub already dropped
    /// (send budget) leaves the participant without a connection, so it counts as gone too.
    pub(crate) fn detach(&self, slot: &Arc<RoomSlot>, id: u64, conn_id: u64) {
        let mut state = slot.state.lock();
        match state.conns.get(&id) {
            Some(c) if c.conn_id != conn_id => return,
            Some(_) => {
                state.conns.remove(&id);
            }
            None => {}
        }
        state.room.disconnect(Instant::now(), id);
        self.dispatch(&mut state);
        let lost = state.lost;
        drop(state);
        if lost {
            self.drop_if_empty(slot);
        }
    }

    /// Runs due room timers.
    pub(crate) fn tick(&self) {
        let now = Instant::now();
        let slots: Vec<Arc<RoomSlot>> = self.rooms.lock().values().cloned().collect();
        for slot in slots {
            let mut state = slot.state.lock();
            if let Some(fence) = state.fence
                && !state.lost
                && !self.store.owns(&slot.name, fence)
            {
                // The lease lapsed: another replica may own the room now.
                self.lose(&mut state, &StoreError::Fenced);
            }
            if state.lost {
                drop(state);
                self.drop_if_empty(&slot);
                continue;
            }
            if state.next_deadline.is_some_and(|d| d <= now) {
                state.room.handle_timeout(now);
                self.dispatch(&mut state);
            } else if state.dynacast.next_deadline().is_some_and(|d| d <= now) {
                self.dispatch(&mut state);
            }
            let empty = state.room.is_empty();
            drop(state);
            if empty {
                self.drop_if_empty(&slot);
            }
        }
    }

    /// Applies `f` to a room under its lock and delivers the outputs.
    pub(crate) fn with_room<R>(
        &self,
        slot: &Arc<RoomSlot>,
        f: impl FnOnce(&mut RoomState) -> R,
    ) -> R {
        let mut state = slot.state.lock();
        let r = f(&mut state);
        self.dispatch(&mut state);
        r
    }

    /// Closes every connection (shutdown).
    pub(crate) fn close_all(&self) {
        let slots: Vec<Arc<RoomSlot>> = self.rooms.lock().drain().map(|(_, s)| s).collect();
        let durable = self.store.durable();
        for slot in slots {
            let mut state = slot.state.lock();
            if durable {
                // The rooms live on in the store: nobody leaves. Connections close with 1001
                // and their clients resume on another replica (or this one once restarted).
                self.hand_over(&mut state);
            } else {
                state
                    .room
                    .close_all(close::GOING_AWAY, "server shutting down");
                self.dispatch(&mut state);
            }
            self.metrics.rooms.dec();
        }
        if durable {
            // Other replicas may take the rooms at once instead of after the lease TTL.
            self.store.release_all();
        }
    }

    /// Stops serving a room this replica no longer owns (or hands over): closes its
    /// connections with 1001 so their clients resume where the room is now, forgets its
    /// credentials, writes and delivers nothing more.
    fn hand_over(&self, state: &mut RoomState) {
        state.lost = true;
        while state.room.poll_output().is_some() {}
        let mut creds = self.credentials.lock();
        for (token, _) in state.room.credentials() {
            if creds.remove(&token).is_some() {
                self.metrics.participants.dec();
            }
        }
        drop(creds);
        for (_, c) in state.conns.drain() {
            c.close(
                close::GOING_AWAY,
                "room moved to another coordinator; resume",
            );
        }
    }

    /// A store write for the room was refused: the room is lost to this replica.
    fn lose(&self, state: &mut RoomState, e: &StoreError) {
        tracing::warn!(room = state.room.name(), error = %e, "room lost to this replica; its clients resume elsewhere");
        self.hand_over(state);
    }

    /// Writes what the room's journal holds before its outputs are delivered; false if the
    /// room is lost (nothing may be delivered).
    fn persist(&self, state: &mut RoomState) -> bool {
        if state.lost {
            while state.room.poll_output().is_some() {}
            return false;
        }
        let Some(fence) = state.fence else {
            return true;
        };
        let note = state.sfu_node.map(|n| n.to_string());
        state.room.set_note(NOTE_SFU_NODE, note);
        let Some(batch) = state.room.take_journal() else {
            return true;
        };
        match self.store.append(state.room.name(), fence, &batch) {
            Ok(()) => true,
            Err(e) => {
                self.lose(state, &e);
                false
            }
        }
    }

    fn drop_if_empty(&self, slot: &Arc<RoomSlot>) {
        let mut rooms = self.rooms.lock();
        let same = rooms.get(&slot.name).is_some_and(|s| Arc::ptr_eq(s, slot));
        if !same {
            return;
        }
        let state = slot.state.lock();
        if state.lost {
            rooms.remove(&slot.name);
            self.metrics.rooms.dec();
        } else if state.room.is_empty() {
            rooms.remove(&slot.name);
            self.metrics.rooms.dec();
            if let Some(fence) = state.fence {
                // The call is over: nothing of it stays in the store. Under the hub lock, so
                // a new join of the same name waits for it and starts a new room.
                self.store.release(&slot.name, fence, true);
            }
        }
    }

    fn dispatch(&self, state: &mut RoomState) {
        self.dispatch_for(state, None);
    }

    /// Delivers the room's outputs; returns whether `watch` got an `error`.
    fn dispatch_for(&self, state: &mut RoomState, watch: Option<u64>) -> bool {
        let mut refused = false;
        loop {
            if !self.persist(state) {
                return refused;
            }
            let slow = self.drain_outputs(state, watch, &mut refused);
            if slow.is_empty() {
                break;
            }
            // A connection closed for its send budget is gone: the room stops waiting for
            // its `ready` (which may log an `execute`, delivered on the next round).
            let now = Instant::now();
            for id in slow {
                state.room.disconnect(now, id);
            }
        }
        state.next_deadline = state.room.poll_timeout();
        let changes = state.dynacast.poll(Instant::now());
        send_layers(state, changes);
        refused
    }

    /// One round of [`Hub::dispatch_for`]: delivers the queued outputs and closes the
    /// connections that hold their send budget; returns their participants.
    fn drain_outputs(
        &self,
        state: &mut RoomState,
        watch: Option<u64>,
        refused: &mut bool,
    ) -> Vec<u64> {
        let mut slow = Vec::new();
        let mut closed = Vec::new();
        // A resume's replay (consecutive `Deliver`s to one participant) becomes one streamed
        // `Outbound::Replay` queued where the entries would have been.
        let mut replay: Option<(u64, u64, u64)> = None;
        while let Some(out) = state.room.poll_output() {
            if let Some((to, after, until)) = replay
                && !matches!(&out, Output::Deliver { to: t, .. } if *t == to)
            {
                replay = None;
                self.queue_replay(state, to, after, until);
            }
            match out {
                Output::Reply { to, mut msg } => {
                    self.ice.fill(to, &mut msg, crate::auth::unix_now());
                    match &msg {
                        ServerMessage::Error { code, .. } => {
                            self.metrics.error(code);
                            *refused |= watch == Some(to);
                        }
                        // A refused commit counts toward the consecutive-refusal close
                        // like any refused message.
                        ServerMessage::CommitRejected { .. } => {
                            self.metrics.error(msg.type_name());
                            *refused |= watch == Some(to);
                        }
                        _ => {}
                    }
                    if let Some(c) = state.conns.get(&to)
                        && !c.send(encode_reply(&msg))
                    {
                        slow.push(to);
                    }
                }
                Output::Broadcast(entry) => {
                    self.metrics
                        .entries
                        .with_label_values(&[entry.type_name()])
                        .inc();
                    note_tracks(state, &entry.body);
                    let msg = wire_message(&entry.wire);
                    for (id, c) in &state.conns {
                        if !entry.visible_to(*id) {
                            continue;
                        }
                        if !c.send(msg.clone()) {
                            slow.push(*id);
                        }
                    }
                }
                Output::Deliver { to, entry } => {
                    replay = Some(match replay {
                        Some((_, after, _)) => (to, after, entry.seq),
                        None => (to, entry.seq.saturating_sub(1), entry.seq),
                    });
                }
                Output::Recorder(command) => {
                    let start = match &command {
                        crate::room::recording::RecorderCommand::Start { run, .. } => Some(*run),
                        crate::room::recording::RecorderCommand::Stop { .. } => None,
                    };
                    let queued = self.recorders.as_ref().is_some_and(|tx| {
                        tx.try_send(crate::recording::RoomCommand {
                            room: state.room.name().to_owned(),
                            command,
                        })
                        .is_ok()
                    });
                    if !queued {
                        tracing::warn!(
                            room = state.room.name(),
                            "recorder queue unavailable or full"
                        );
                        if let Some(run) = start {
                            // Its outputs (the host's error) are drained by this loop.
                            state.room.recorder_exited(
                                Instant::now(),
                                run,
                                "the recorder queue is full; try again",
                            );
                        }
                    }
                }
                Output::SfuClose { session_id } => {
                    state.dynacast.drop_session(&session_id);
                    if let Some(node) = state.sfu_sessions.remove(&session_id) {
                        self.metrics.sfu_sessions_released.inc();
                        self.close_sfu_session(node, session_id);
                    }
                }
                Output::Gone {
                    id,
                    resume_token,
                    sfu_sessions,
                    code,
                    reason,
                } => {
                    // Cut the departed participant off the media at once: its SFU
                    // sessions are deleted by the closer task, never under this lock.
                    for session_id in sfu_sessions {
                        state.dynacast.drop_session(&session_id);
                        let Some(node) = state.sfu_sessions.remove(&session_id) else {
                            continue;
                        };
                        self.close_sfu_session(node, session_id);
                    }
                    self.credentials.lock().remove(&resume_token);
                    self.metrics.participants.dec();
                    if let Some(c) = state.conns.remove(&id) {
                        c.close(code, reason);
                    }
                }
            }
        }
        if let Some((to, after, until)) = replay {
            self.queue_replay(state, to, after, until);
        }
        for id in slow {
            if let Some(c) = state.conns.remove(&id) {
                self.metrics.close(CloseReason::SendBudget);
                tracing::info!(
                    participant = id,
                    queued = c.queue.queued(),
                    "closing a connection that holds its send budget (4430)"
                );
                let _ = c.kill.send((
                    close::SLOW_CONSUMER,
                    "send budget exceeded: not reading fast enough; resume",
                ));
                closed.push(id);
            }
        }
        closed
    }

    fn queue_replay(&self, state: &RoomState, to: u64, after: u64, until: u64) {
        if let Some(c) = state.conns.get(&to) {
            let _ = c.queue.push_control(Outbound::Replay {
                slot: state.slot.clone(),
                id: to,
                after,
                until,
            });
        }
    }
}

/// Keeps the dynacast's published video tracks in step with the log.
fn note_tracks(state: &mut RoomState, body: &EntryBody) {
    match body {
        EntryBody::Event(RoomEvent::Published { track, .. })
            if matches!(track.kind, TrackKind::Video | TrackKind::Screenshare) =>
        {
            state.dynacast.publish(&track.session_id, &track.track_name);
        }
        EntryBody::Event(RoomEvent::Unpublished { id, track_name }) => {
            let sessions = state.room.sfu_sessions_of(*id).unwrap_or_default();
            state.dynacast.unpublish(sessions, track_name);
        }
        _ => {}
    }
}

/// Tells publishers which layers of their tracks subscribers take (`layers`). A publisher
/// without a connection misses it and gets the current state when it resumes.
fn send_layers(state: &mut RoomState, changes: Vec<Change>) {
    for ch in changes {
        let Some(owner) = state.room.sfu_session_owner(&ch.track.session_id) else {
            continue;
        };
        let Some(conn) = state.conns.get(&owner) else {
            continue;
        };
        tracing::debug!(
            participant = owner,
            session = %ch.track.session_id,
            track = %ch.track.track_name,
            max_rid = ch.max.map(|l| l.rid()),
            "dynacast: layers"
        );
        let msg = ServerMessage::Layers {
            session_id: ch.track.session_id,
            track_name: ch.track.track_name,
            max_rid: ch.max.map(|l| l.rid().to_owned()),
        };
        // A full queue closes the connection on the next dispatch; it resumes and gets the
        // current state then.
        let _ = conn.send(encode_reply(&msg));
    }
}

pub(crate) fn wire_message(wire: &Wire) -> Message {
    match wire {
        Wire::Text(b) => Message::Text(Utf8Bytes::try_from(b.clone()).unwrap_or_default()),
        Wire::Binary(b) => Message::Binary(b.clone()),
    }
}

/// Encodes a direct reply.
pub(crate) fn encode_reply(msg: &ServerMessage) -> Message {
    Message::Text(
        serde_json::to_string(msg)
            .unwrap_or_else(|_| "{}".to_owned())
            .into(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn frame(n: usize) -> Message {
        Message::Binary(bytes::Bytes::from(vec![0u8; n]))
    }

    #[test]
    fn send_queue_is_bounded_in_bytes() {
        let (q, mut rx) = SendQueue::new(1000);
        // One frame of any size fits an empty queue.
        assert!(q.push(frame(5000)));
        assert_eq!(q.queued(), 5000);
        assert!(!q.push(frame(1)));
        // The writer wrote it: room again, up to the budget.
        let Some(Outbound::Frame(m)) = rx.try_recv().ok() else {
            panic!("no frame");
        };
        q.sent(frame_len(&m));
        assert_eq!(q.queued(), 0);
        assert!(q.push(frame(600)));
        assert!(q.push(frame(400)));
        assert!(!q.push(frame(1)));
        assert_eq!(q.queued(), 1000);
        // Controls are not counted and always go through.
        assert!(q.push_control(Outbound::Close(4430, "x")));
        assert_eq!(q.queued(), 1000);
        // A closed writer: nothing is counted for a frame that cannot be queued.
        drop(rx);
        q.sent(1000);
        assert!(!q.push(frame(10)));
        assert_eq!(q.queued(), 0);
    }

    fn conn(hub: &Hub) -> (ConnHandle, mpsc::UnboundedReceiver<Outbound>) {
        let (queue, rx) = SendQueue::new(1 << 20);
        let (kill, _) = oneshot::channel();
        (
            ConnHandle {
                conn_id: hub.next_conn_id(),
                queue,
                kill,
            },
            rx,
        )
    }

    fn texts(rx: &mut mpsc::UnboundedReceiver<Outbound>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(o) = rx.try_recv() {
            match o {
                Outbound::Frame(Message::Text(t)) => out.push(t.to_string()),
                Outbound::Close(code, why) => out.push(format!("close {code} {why}")),
                _ => {}
            }
        }
        out
    }

    fn request(subject: &str) -> JoinRequest {
        JoinRequest {
            subject: subject.to_owned(),
            name: subject.to_owned(),
            permissions: crate::protocol::Permissions {
                publish: true,
                subscribe: true,
                host: false,
            },
            resume_token: format!("token-of-{subject}"),
            wall_ms: 1,
            visible_only_to: None,
            recorder: false,
        }
    }

    /// Two hubs (replicas) on one shared store: one owner at a time; when the owner dies the
    /// other rebuilds the room on the next resume, and the old owner, fenced, hands its
    /// connections over instead of relaying.
    #[test]
    fn a_shared_store_moves_a_room_between_hubs_without_losing_it() {
        use crate::store::memory::Shared;
        let shared = Arc::new(Shared::default());
        let hub = |replica: &str| {
            Hub::new(RoomConfig::default(), 10, Metrics::new().unwrap())
                .with_store(Arc::new(MemoryStore::shared(shared.clone(), replica)))
        };
        let (a, b) = (hub("a"), hub("b"));
        let (c, mut rx_a) = conn(&a);
        let (slot_a, alice) = a.join("r", request("alice"), c).unwrap();
        let seen = texts(&mut rx_a);
        assert!(
            seen.iter().any(|t| t.contains("\"type\":\"joined\"")),
            "{seen:?}"
        );
        let seq = slot_a.state.lock().room.seq();
        assert!(shared.entry_count("r") > 0, "nothing written");
        // b does not serve a room a holds.
        let (c, _) = conn(&b);
        assert!(matches!(
            b.join("r", request("bob"), c),
            Err(HubJoinError::Store(StoreError::Owned { .. }))
        ));
        // a dies (its lease lapses): the resume at b rebuilds the room.
        shared.expire("a");
        let (c, mut rx_b) = conn(&b);
        let slot_b = b.resume("r", alice, "token-of-alice", seq, c).unwrap();
        let seen = texts(&mut rx_b);
        assert!(seen[0].contains("\"type\":\"resumed\""), "{seen:?}");
        assert_eq!(shared.owner("r").as_deref(), Some("b"));
        assert!(b.credential("token-of-alice").is_some());
        // a, not knowing, relays nothing more: its write is fenced, it hands over.
        let conn_id = slot_a.state.lock().conns[&alice].conn_id;
        let handled = a.handle(
            &slot_a,
            alice,
            conn_id,
            Input::Message(crate::protocol::ClientMessage::Hand { raised: true }),
        );
        assert!(handled.detached);
        let seen = texts(&mut rx_a);
        assert!(!seen.iter().any(|t| t.contains("hand")), "{seen:?}");
        assert!(seen.iter().any(|t| t.starts_with("close 1001")), "{seen:?}");
        assert!(a.room("r").is_none() && a.credential("token-of-alice").is_none());
        // b goes on: the same input there is logged after the seqs a used.
        let conn_id = slot_b.state.lock().conns[&alice].conn_id;
        b.handle(
            &slot_b,
            alice,
            conn_id,
            Input::Message(crate::protocol::ClientMessage::Hand { raised: true }),
        );
        let seen = texts(&mut rx_b);
        assert!(
            seen.iter().any(|t| t.contains("\"type\":\"hand\"")),
            "{seen:?}"
        );
        assert!(slot_b.state.lock().room.seq() > seq);
    }

    #[test]
    fn ip_slots_cap_each_address_and_free_on_drop() {
        let hub = Hub::new(RoomConfig::default(), 10, Metrics::new().unwrap());
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        let s1 = hub.ip_slot(a, 2).unwrap();
        let _s2 = hub.ip_slot(a, 2).unwrap();
        assert!(hub.ip_slot(a, 2).is_none());
        let _s3 = hub.ip_slot(b, 2).unwrap();
        drop(s1);
        let _s4 = hub.ip_slot(a, 2).unwrap();
        // The IPv4-mapped IPv6 form is the same address.
        let mapped: IpAddr = "::ffff:203.0.113.1".parse().unwrap();
        assert!(hub.ip_slot(mapped, 2).is_none());
        // Loopback and an unlimited cap are never refused.
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let held: Vec<IpSlot> = (0..5).map(|_| hub.ip_slot(lo, 2).unwrap()).collect();
        assert_eq!(held.len(), 5);
        assert!(hub.ip_slot(a, 0).is_some());
        assert_eq!(hub.open_connections(), 3 + 5);
        drop(held);
        assert!(!hub.per_ip.lock().contains_key(&lo));
        assert_eq!(hub.open_connections(), 3);
    }
}
