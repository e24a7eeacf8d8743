//! What of a room survives its coordinator: the journal a room keeps for a room store
//! (`crate::store`), and the rebuild of a room from what the store holds.
//!
//! A room with its journal on records, while it handles inputs, what a store must hold to
//! rebuild it: the log entries it appended (except ephemeral ones, see [`is_ephemeral`]), the
//! seqs it dropped from its log (trimmed or superseded), and its durable state as a
//! [`RoomImage`] (participants with their credentials, host rights, lock and cap, removed
//! identities, the MLS group's epoch, members, last commit). The driver takes it with
//! [`Room::take_journal`] after each input and writes it to the store *before* it delivers
//! the outputs, so nothing a client saw is missing from the store.
//!
//! Ephemeral entries (`speaking`) take a seq but are never written. So that a rebuilt room
//! never hands out a seq a client already saw, the image carries a seq *ceiling*: the room
//! assigns seqs up to it without writing, and raises it (a write) before it passes it. A
//! rebuilt room continues after the ceiling; the skipped seqs were ephemeral entries, and
//! clients already accept gaps (superseded entries leave the log too).
//!
//! [`Room::restore`] rebuilds a room from an image and the stored entries. Everything not in
//! the image is connection state and starts fresh: every participant is disconnected (not
//! `away`-logged; it resumes or times out after the presence timeout from the rebuild),
//! nobody is `ready`, a pending `execute` is due after the execute timeout.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Entry, EntryBody, Group, LastCommit, Participant, Room, RoomConfig, Wire};
use crate::protocol::{self, Permissions, RoomEvent, TrackInfo};

/// Seqs an owner may assign to ephemeral entries beyond the last written ceiling.
pub const SEQ_RESERVE: u64 = 64;

/// Version of the stored image and entry formats.
const FORMAT: u32 = 1;

/// Whether an entry is never written to a store: it carries no state a resume or the MLS
/// order needs (voice activity), or the servers must not keep it beyond the in-memory resume
/// log (chat ciphertext, `docs/chat.md`).
pub fn is_ephemeral(e: &Entry) -> bool {
    matches!(
        e.body,
        EntryBody::Event(RoomEvent::Speaking { .. })
            | EntryBody::Mls {
                kind: protocol::KIND_APPLICATION,
                ..
            }
    )
}

/// What the store must apply, atomically, before the outputs of the inputs that caused it
/// are delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Persist {
    /// The new durable state, if it changed (an encoded [`RoomImage`]).
    pub image: Option<Vec<u8>>,
    /// New log entries: seq and encoded entry ([`decode_entry`]).
    pub put: Vec<(u64, Vec<u8>)>,
    /// Seqs that left the log.
    pub delete: Vec<u64>,
}

impl Persist {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.image.is_none() && self.put.is_empty() && self.delete.is_empty()
    }

    /// Bytes this write carries (values only).
    pub fn bytes(&self) -> usize {
        self.image.as_ref().map_or(0, Vec::len)
            + self.put.iter().map(|(_, v)| v.len()).sum::<usize>()
    }
}

/// The journal of a room whose store is durable.
#[derive(Debug, Default)]
pub(super) struct Journal {
    appended: Vec<Arc<Entry>>,
    dropped: Vec<u64>,
    /// The seq ceiling of the last image taken.
    ceiling: u64,
    /// The last image taken (to write it only when it changed).
    last_image: Vec<u8>,
}

impl Journal {
    pub(super) fn appended(&mut self, e: &Arc<Entry>) {
        if !is_ephemeral(e) {
            self.appended.push(e.clone());
        }
    }

    pub(super) fn dropped(&mut self, seq: u64) {
        self.dropped.push(seq);
    }
}

/// Why a stored room could not be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The image does not parse.
    #[error("room image: {0}")]
    Image(String),
    /// An entry does not parse.
    #[error("entry {seq}: {detail}")]
    Entry {
        /// Its seq.
        seq: u64,
        /// What is wrong.
        detail: String,
    },
    /// A format this build does not know.
    #[error("unknown stored format {0}")]
    Format(u32),
}

/// A participant as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ParticipantImage {
    id: u64,
    subject: String,
    name: String,
    permissions: Permissions,
    host: bool,
    joined_at_ms: u64,
    resume_token: String,
    away: bool,
    sfu_sessions: Vec<String>,
    tracks: Vec<TrackInfo>,
    hand_raised: bool,
    codecs: Option<Vec<String>>,
    sending: Option<String>,
    /// Joined as a recorder (absent in images written before recorders existed).
    #[serde(default)]
    recorder: bool,
}

/// The MLS group as stored (without who is `ready`: connection state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct GroupImage {
    id: String,
    epoch: u64,
    creator: u64,
    members: BTreeSet<u64>,
    /// An `execute` is pending for the current epoch.
    pending_execute: bool,
    executed: Option<u64>,
    /// `(epoch, from, members_before)` of the latest commit while it may be voided.
    last_commit: Option<(u64, u64, BTreeSet<u64>)>,
    failed_reports: BTreeMap<u64, u64>,
}

/// A room's durable state (everything but its log and its connections).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomImage {
    v: u32,
    name: String,
    /// The seq ceiling: no seq up to it may be assigned by a rebuilt room.
    seq: u64,
    next_id: u64,
    trimmed_upto: u64,
    locked: bool,
    max_participants: u32,
    removed_subjects: BTreeSet<String>,
    group_seed: u64,
    groups_created: u64,
    hidden: BTreeMap<u64, u64>,
    /// Hex SHA-256 digests of superseded KeyPackages a commit may still add.
    old_kps: BTreeMap<u64, Vec<String>>,
    participants: Vec<ParticipantImage>,
    group: Option<GroupImage>,
    /// Driver notes ([`Room::set_note`]).
    #[serde(default)]
    notes: BTreeMap<String, String>,
}

impl RoomImage {
    /// Parses a stored image.
    pub fn decode(bytes: &[u8]) -> Result<Self, RestoreError> {
        let image: RoomImage =
            serde_json::from_slice(bytes).map_err(|e| RestoreError::Image(e.to_string()))?;
        if image.v != FORMAT {
            return Err(RestoreError::Format(image.v));
        }
        Ok(image)
    }

    /// The seq ceiling.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Number of participants.
    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }
}

/// Encodes a log entry for a store: `u8 format ‖ u8 flags ‖ [u64 owner] ‖ [u32 n ‖ n × u64
/// audience] ‖ wire`, flags bit 0 = binary wire, bit 1 = owner, bit 2 = audience.
pub fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(e.wire.len() + 16);
    out.push(FORMAT as u8);
    let mut flags = 0u8;
    if matches!(e.wire, Wire::Binary(_)) {
        flags |= 1;
    }
    if e.owner.is_some() {
        flags |= 2;
    }
    if e.audience.is_some() {
        flags |= 4;
    }
    out.push(flags);
    if let Some(o) = e.owner {
        out.extend_from_slice(&o.to_be_bytes());
    }
    if let Some(a) = &e.audience {
        out.extend_from_slice(&u32::try_from(a.len()).unwrap_or(u32::MAX).to_be_bytes());
        for id in a {
            out.extend_from_slice(&id.to_be_bytes());
        }
    }
    match &e.wire {
        Wire::Text(b) | Wire::Binary(b) => out.extend_from_slice(b),
    }
    out
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Some(head)
}

fn take_u64(b: &mut &[u8]) -> Option<u64> {
    take(b, 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
}

/// Decodes a stored log entry (the inverse of [`encode_entry`]).
pub fn decode_entry(seq: u64, bytes: &[u8], at: Option<Instant>) -> Result<Entry, RestoreError> {
    let bad = |detail: &str| RestoreError::Entry {
        seq,
        detail: detail.to_owned(),
    };
    let mut b = bytes;
    let head = take(&mut b, 2).ok_or_else(|| bad("short"))?;
    if u32::from(head[0]) != FORMAT {
        return Err(RestoreError::Format(u32::from(head[0])));
    }
    let flags = head[1];
    let owner = if flags & 2 != 0 {
        Some(take_u64(&mut b).ok_or_else(|| bad("short owner"))?)
    } else {
        None
    };
    let audience = if flags & 4 != 0 {
        let n = take(&mut b, 4)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| bad("short audience"))?;
        let mut a = Vec::new();
        for _ in 0..n {
            a.push(take_u64(&mut b).ok_or_else(|| bad("short audience"))?);
        }
        Some(a)
    } else {
        None
    };
    let wire = Bytes::copy_from_slice(b);
    let (body, wire) = if flags & 1 != 0 {
        // `u64 seq ‖ u8 kind ‖ u64 from ‖ payload`
        let mut h: &[u8] = &wire;
        let frame_seq = take_u64(&mut h).ok_or_else(|| bad("short MLS frame"))?;
        let kind = take(&mut h, 1).ok_or_else(|| bad("short MLS frame"))?[0];
        let from = take_u64(&mut h).ok_or_else(|| bad("short MLS frame"))?;
        if frame_seq != seq {
            return Err(bad("seq in the frame differs"));
        }
        (EntryBody::Mls { kind, from }, Wire::Binary(wire))
    } else {
        #[derive(Deserialize)]
        struct Frame {
            seq: u64,
            #[serde(flatten)]
            event: RoomEvent,
        }
        let f: Frame = serde_json::from_slice(&wire).map_err(|e| bad(&e.to_string()))?;
        if f.seq != seq {
            return Err(bad("seq in the event differs"));
        }
        (EntryBody::Event(f.event), Wire::Text(wire))
    };
    Ok(Entry {
        seq,
        body,
        wire,
        audience,
        owner,
        at,
    })
}

impl Room {
    /// Starts journaling for a durable store; [`Room::take_journal`] then returns what to
    /// write after each input.
    pub fn enable_journal(&mut self) {
        if self.journal.is_none() {
            self.journal = Some(Journal {
                ceiling: self.seq,
                ..Journal::default()
            });
        }
    }

    /// What the store must hold now that it does not, if anything (journal on). The driver
    /// writes it before delivering the outputs queued since the last call.
    pub fn take_journal(&mut self) -> Option<Persist> {
        // Unit tests: a room whose journal a driver takes is checked by that driver's store,
        // not by the shadow (which would miss what the driver took).
        #[cfg(test)]
        {
            self.shadow = None;
        }
        self.journal_batch()
    }

    fn journal_batch(&mut self) -> Option<Persist> {
        let seq = self.seq;
        let mut j = self.journal.take()?;
        if seq > j.ceiling {
            j.ceiling = seq + SEQ_RESERVE;
        }
        let image = self.image(j.ceiling);
        let image = serde_json::to_vec(&image).unwrap_or_default();
        let mut persist = Persist::default();
        if image != j.last_image {
            persist.image = Some(image.clone());
            j.last_image = image;
        }
        let dropped: BTreeSet<u64> = j.dropped.drain(..).collect();
        let mut put_seqs = BTreeSet::new();
        for e in j.appended.drain(..) {
            if !dropped.contains(&e.seq) {
                put_seqs.insert(e.seq);
                persist.put.push((e.seq, encode_entry(&e)));
            }
        }
        let appended_now: BTreeSet<u64> = persist.put.iter().map(|(s, _)| *s).collect();
        persist.delete = dropped
            .into_iter()
            .filter(|s| !appended_now.contains(s) && !put_seqs.contains(s))
            .collect();
        self.journal = Some(j);
        (!persist.is_empty()).then_some(persist)
    }

    /// Whether the journal is on.
    pub fn journaling(&self) -> bool {
        self.journal.is_some()
    }

    /// The credentials of every participant: `(resume_token, id)`.
    pub fn credentials(&self) -> Vec<(String, u64)> {
        self.participants
            .values()
            .map(|p| (p.resume_token.clone(), p.id))
            .collect()
    }

    /// The durable state with seq ceiling `ceiling`.
    fn image(&self, ceiling: u64) -> RoomImage {
        RoomImage {
            v: FORMAT,
            name: self.name.clone(),
            seq: ceiling,
            next_id: self.next_id,
            trimmed_upto: self.trimmed_upto,
            locked: self.locked,
            max_participants: self.max_participants,
            removed_subjects: self.removed_subjects.iter().cloned().collect(),
            group_seed: self.group_seed,
            groups_created: self.groups_created,
            hidden: self.hidden.clone(),
            old_kps: self
                .old_kps
                .iter()
                .map(|(id, d)| (*id, d.iter().map(hex::encode).collect()))
                .collect(),
            participants: self
                .participants
                .values()
                .map(|p| ParticipantImage {
                    id: p.id,
                    subject: p.subject.clone(),
                    name: p.name.clone(),
                    permissions: p.permissions,
                    host: p.host,
                    joined_at_ms: p.joined_at_ms,
                    resume_token: p.resume_token.clone(),
                    away: p.away,
                    sfu_sessions: p.sfu_sessions.clone(),
                    tracks: p.tracks.clone(),
                    hand_raised: p.hand_raised,
                    codecs: p.codecs.clone(),
                    sending: p.sending.clone(),
                    recorder: p.recorder,
                })
                .collect(),
            group: self.group.as_ref().map(|g| GroupImage {
                id: hex::encode(&g.id),
                epoch: g.epoch,
                creator: g.creator,
                members: g.members.clone(),
                pending_execute: g.execute_deadline.is_some(),
                executed: g.executed,
                last_commit: g
                    .last_commit
                    .as_ref()
                    .map(|c| (c.epoch, c.from, c.members_before.clone())),
                failed_reports: g.failed_reports.clone(),
            }),
            notes: self.notes.clone(),
        }
    }

    /// Rebuilds a room from its stored image and entries (any order), journal on. Every
    /// participant starts disconnected, seen `now`.
    pub fn restore(
        config: RoomConfig,
        image: &RoomImage,
        entries: Vec<(u64, Vec<u8>)>,
        now: Instant,
    ) -> Result<Room, RestoreError> {
        let mut room = Room::new(image.name.clone(), config, image.group_seed);
        room.now = Some(now);
        room.next_id = image.next_id;
        room.trimmed_upto = image.trimmed_upto;
        room.locked = image.locked;
        room.max_participants = image.max_participants;
        room.removed_subjects = image.removed_subjects.iter().cloned().collect();
        room.groups_created = image.groups_created;
        room.hidden = image.hidden.clone();
        room.notes = image.notes.clone();
        for (id, digests) in &image.old_kps {
            let mut old = VecDeque::new();
            for d in digests {
                let bytes: [u8; 32] = hex::decode(d)
                    .ok()
                    .and_then(|v| v.try_into().ok())
                    .ok_or_else(|| RestoreError::Image("bad KeyPackage digest".to_owned()))?;
                old.push_back(bytes);
            }
            room.old_kps.insert(*id, old);
        }
        for p in &image.participants {
            room.participants.insert(
                p.id,
                Participant {
                    id: p.id,
                    subject: p.subject.clone(),
                    name: p.name.clone(),
                    permissions: p.permissions,
                    host: p.host,
                    joined_at_ms: p.joined_at_ms,
                    resume_token: p.resume_token.clone(),
                    last_seen: now,
                    connected: false,
                    away: p.away,
                    aways: VecDeque::new(),
                    sfu_sessions: p.sfu_sessions.clone(),
                    sfu_pending: 0,
                    tracks: p.tracks.clone(),
                    hand_raised: p.hand_raised,
                    speaking: false,
                    codecs: p.codecs.clone(),
                    sending: p.sending.clone(),
                    recorder: p.recorder,
                },
            );
        }
        if let Some(g) = &image.group {
            room.group = Some(Group {
                id: hex::decode(&g.id).map_err(|e| RestoreError::Image(e.to_string()))?,
                epoch: g.epoch,
                creator: g.creator,
                members: g.members.clone(),
                ready: BTreeSet::new(),
                execute_deadline: g.pending_execute.then(|| now + room.config.execute_timeout),
                executed: g.executed,
                last_commit: g
                    .last_commit
                    .as_ref()
                    .map(|(epoch, from, before)| LastCommit {
                        epoch: *epoch,
                        from: *from,
                        members_before: before.clone(),
                    }),
                failed_reports: g.failed_reports.clone(),
            });
        }
        #[cfg(test)]
        let stored: BTreeMap<u64, Vec<u8>> = entries.iter().cloned().collect();
        let mut decoded = Vec::with_capacity(entries.len());
        for (seq, bytes) in entries {
            decoded.push(decode_entry(seq, &bytes, Some(now))?);
        }
        decoded.sort_by_key(|e| e.seq);
        let mut last = 0;
        for e in decoded {
            last = e.seq;
            room.restore_entry(Arc::new(e));
        }
        room.seq = image.seq.max(last);
        room.journal = Some(Journal {
            ceiling: room.seq,
            last_image: serde_json::to_vec(&room.image(room.seq)).unwrap_or_default(),
            ..Journal::default()
        });
        #[cfg(test)]
        {
            room.shadow = Some(shadow::Shadow {
                image: room.journal.as_ref().map(|j| j.last_image.clone()),
                entries: stored,
            });
        }
        Ok(room)
    }

    /// Puts a stored entry back into the log with its accounting (no trim, no output).
    fn restore_entry(&mut self, entry: Arc<Entry>) {
        if let Some(k) = super::state_key(&entry)
            && let Some(prev) = self.latest_state.insert(k, entry.seq)
        {
            self.superseded.insert(prev);
        }
        if let EntryBody::Mls {
            kind: protocol::KIND_KEY_PACKAGE,
            from,
        } = entry.body
        {
            self.latest_kp.insert(from, entry.seq);
        }
        self.log_bytes += entry.wire.len();
        if let Some(owner) = entry.owner {
            let share = self.shares.entry(owner).or_default();
            share.entries += 1;
            share.bytes += entry.wire.len();
        }
        self.log.push_back(entry);
    }
}

/// Test support: a store kept inside the room that applies every journal batch, and a check
/// that a room rebuilt from it equals the live one.
#[cfg(test)]
pub(super) mod shadow {
    use super::*;

    /// What a store would hold.
    #[derive(Debug, Default)]
    pub(in crate::room) struct Shadow {
        pub(in crate::room) image: Option<Vec<u8>>,
        pub(in crate::room) entries: BTreeMap<u64, Vec<u8>>,
    }

    impl Shadow {
        pub(in crate::room) fn apply(&mut self, p: &Persist) {
            if let Some(i) = &p.image {
                self.image = Some(i.clone());
            }
            for (s, v) in &p.put {
                self.entries.insert(*s, v.clone());
            }
            for s in &p.delete {
                self.entries.remove(s);
            }
        }
    }

    /// Takes the room's journal into its shadow store and checks that a room rebuilt from
    /// the shadow has the live room's durable state, log (less ephemeral entries) and
    /// snapshot (less voice activity).
    pub(in crate::room) fn check(room: &mut Room) {
        if room.journal.is_none() {
            room.enable_journal();
        }
        let Some(mut shadow) = room.shadow.take() else {
            return;
        };
        if let Some(p) = room.journal_batch() {
            shadow.apply(&p);
        }
        if let Some(image) = &shadow.image {
            let image = RoomImage::decode(image).unwrap_or_else(|e| panic!("image: {e}"));
            let entries = shadow
                .entries
                .iter()
                .map(|(s, v)| (*s, v.clone()))
                .collect();
            let now = room.now.unwrap_or_else(Instant::now);
            let rebuilt = Room::restore(room.config.clone(), &image, entries, now)
                .unwrap_or_else(|e| panic!("restore: {e}"));
            let ceiling = room.journal.as_ref().map_or(0, |j| j.ceiling);
            assert_eq!(rebuilt.image(ceiling), room.image(ceiling), "rebuilt image");
            assert!(rebuilt.seq >= room.seq, "rebuilt seq goes back");
            let live: Vec<(u64, Wire)> = room
                .log
                .iter()
                .filter(|e| !is_ephemeral(e))
                .map(|e| (e.seq, e.wire.clone()))
                .collect();
            let back: Vec<(u64, Wire)> = rebuilt
                .log
                .iter()
                .map(|e| (e.seq, e.wire.clone()))
                .collect();
            assert_eq!(back, live, "rebuilt log");
            let mut a = room.snapshot();
            let b = rebuilt.snapshot();
            for p in &mut a.participants {
                p.speaking = false;
            }
            assert_eq!(a, b, "rebuilt snapshot");
        }
        room.shadow = Some(shadow);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::Duration;

    use super::*;
    use crate::protocol::{ClientMessage, ServerMessage};
    use crate::room::{Input, JoinRequest, Output};

    fn req(subject: &str) -> JoinRequest {
        JoinRequest {
            subject: subject.to_owned(),
            name: subject.to_owned(),
            permissions: Permissions {
                publish: true,
                subscribe: true,
                host: false,
            },
            resume_token: format!("tok-{subject}"),
            wall_ms: 1,
            visible_only_to: None,
            recorder: false,
        }
    }

    fn drain(room: &mut Room) -> Vec<Output> {
        std::iter::from_fn(|| room.poll_output()).collect()
    }

    /// A store that applies every batch.
    fn store(room: &mut Room, held: &mut shadow::Shadow) -> Option<Persist> {
        let p = room.take_journal();
        if let Some(p) = &p {
            held.apply(p);
        }
        p
    }

    fn rebuild(held: &shadow::Shadow, now: Instant) -> Room {
        let image = RoomImage::decode(held.image.as_ref().unwrap()).unwrap();
        let entries = held.entries.iter().map(|(s, v)| (*s, v.clone())).collect();
        Room::restore(RoomConfig::default(), &image, entries, now).unwrap()
    }

    #[test]
    fn speaking_is_never_written_and_a_rebuilt_room_never_reuses_its_seqs() {
        let t = Instant::now();
        let mut room = Room::new("r", RoomConfig::default(), 7);
        room.shadow = None;
        room.enable_journal();
        let mut held = shadow::Shadow::default();
        let a = room.join(t, req("a")).unwrap();
        drain(&mut room);
        let first = store(&mut room, &mut held).unwrap();
        assert!(first.image.is_some() && !first.put.is_empty());
        // Voice activity: seqs go up, nothing is written until the reserve runs out.
        let mut writes = 0;
        for i in 0..(2 * SEQ_RESERVE) {
            room.handle(
                t,
                a,
                Input::Message(ClientMessage::Speaking {
                    speaking: i % 2 == 0,
                }),
            );
            drain(&mut room);
            if let Some(p) = store(&mut room, &mut held) {
                assert!(p.put.is_empty(), "a speaking entry was written");
                assert!(p.image.is_some(), "only the ceiling moves");
                writes += 1;
            }
        }
        assert!(
            writes <= 3,
            "{writes} writes for {} speaking entries",
            2 * SEQ_RESERVE
        );
        let seen = room.seq();
        let mut back = rebuild(&held, t);
        assert!(back.seq() >= seen, "rebuilt seq {} < {seen}", back.seq());
        // The participant resumes with the last seq it saw; the next entry is new to it.
        back.resume(t, a, "tok-a", seen).unwrap();
        let out = drain(&mut back);
        assert!(matches!(
            &out[0],
            Output::Reply {
                msg: ServerMessage::Resumed { .. },
                ..
            }
        ));
        back.handle(t, a, Input::Message(ClientMessage::Hand { raised: true }));
        let next = drain(&mut back)
            .into_iter()
            .find_map(|o| match o {
                Output::Broadcast(e) => Some(e.seq),
                _ => None,
            })
            .unwrap();
        assert!(next > seen);
    }

    #[test]
    fn a_rebuilt_room_holds_everyone_disconnected_and_runs_a_pending_execute() {
        let t = Instant::now();
        let config = RoomConfig::default();
        let mut room = Room::new("r", config.clone(), 7);
        room.shadow = None;
        room.enable_journal();
        let mut held = shadow::Shadow::default();
        let a = room.join(t, req("a")).unwrap();
        let b = room.join(t, req("b")).unwrap();
        drain(&mut room);
        store(&mut room, &mut held);
        let now = t + Duration::from_secs(1);
        let mut back = rebuild(&held, now);
        assert_eq!(back.participant_count(), 2);
        assert!(!back.is_connected(a) && !back.is_connected(b));
        assert_eq!(
            back.credentials(),
            vec![("tok-a".to_owned(), a), ("tok-b".to_owned(), b)]
        );
        // The creator's group had an execute pending: due one execute timeout after the
        // rebuild, not before.
        assert_eq!(back.poll_timeout(), Some(now + config.execute_timeout));
        // Presence: the participants have a full presence timeout from the rebuild.
        back.handle_timeout(now + config.presence_timeout - Duration::from_millis(1));
        assert_eq!(back.participant_count(), 2);
        back.handle_timeout(now + config.presence_timeout);
        assert!(back.is_empty());
    }

    #[test]
    fn entries_round_trip_with_owner_and_audience() {
        let e = Entry {
            seq: 9,
            body: EntryBody::Mls { kind: 1, from: 3 },
            wire: Wire::Binary(Bytes::from({
                let mut w = Vec::new();
                protocol::encode_mls_header(9, 1, 3, &mut w);
                w.extend_from_slice(b"kp");
                w
            })),
            audience: Some(vec![3, 4]),
            owner: Some(3),
            at: None,
        };
        assert_eq!(decode_entry(9, &encode_entry(&e), None).unwrap(), e);
        // A stored entry under the wrong key, or cut short, is refused, not trusted.
        assert!(decode_entry(8, &encode_entry(&e), None).is_err());
        let bytes = encode_entry(&e);
        assert!(decode_entry(9, &bytes[..5], None).is_err());
        assert!(decode_entry(9, b"", None).is_err());
        assert!(RoomImage::decode(b"{}").is_err());
    }
}
