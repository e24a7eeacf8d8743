//! The room: a pure state machine, fed events with injected time, returning outputs.
//!
//! A [`Room`] owns everything the server knows about one call: participants, their
//! SFU sessions and published tracks, host rights, lock and cap, the ordered log
//! every member receives (each entry has the next per-room `seq`), and the MLS
//! relay state of `docs/e2ee-relay.md` (group id, epoch, group members, ready
//! set, pending `execute`). It does no I/O and reads no clock: the driver calls
//! [`Room::join`], [`Room::resume`], [`Room::handle`], [`Room::bind_sfu_session`]
//! and [`Room::handle_timeout`], then drains [`Room::poll_output`] and delivers
//! what comes out, in order. [`Room::poll_timeout`] says when to call back.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::mls_framing::{self, WireFormat};
use crate::protocol::{
    self, ClientMessage, GroupInfo, KIND_APPLICATION, KIND_COMMIT, KIND_KEY_PACKAGE, LeaveReason,
    Limits, ParticipantInfo, Permissions, RoomEvent, ServerMessage, Snapshot, TrackInfo, TrackKind,
    close, commit_rejected, error_code,
};

/// Longest accepted track name or SFU session id.
pub const MAX_NAME_LEN: usize = 128;

/// Superseded KeyPackages per participant that a commit may still add.
const OLD_KEY_PACKAGES: usize = 4;

/// Tunables of a room.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// Silence after which a participant is announced as left.
    pub presence_timeout: Duration,
    /// How long `execute` waits for missing `ready`s after a commit.
    pub execute_timeout: Duration,
    /// Log entries kept for resume.
    pub replay_max_entries: usize,
    /// Log bytes kept for resume.
    pub replay_max_bytes: usize,
    /// Cap of a new room.
    pub default_max_participants: u32,
    /// The highest cap a host may set.
    pub hard_max_participants: u32,
    /// The first joiner of an empty room (and, when the last host leaves, the
    /// oldest participant) becomes host.
    pub first_joiner_is_host: bool,
    /// Tracks one participant may announce.
    pub max_tracks_per_participant: usize,
    /// SFU sessions one participant may own; a new one beyond it releases the oldest.
    pub max_sfu_sessions_per_participant: usize,
    /// Largest KeyPackage frame (kind byte included).
    pub max_key_package_bytes: usize,
    /// Largest commit frame (kind byte included) is this ...
    pub max_commit_base_bytes: usize,
    /// ... plus this per participant of the room's cap, ...
    pub max_commit_bytes_per_participant: usize,
    /// ... and never more than this (the connection's binary frame limit).
    pub max_binary_bytes: usize,
    /// Limits advertised to clients (not enforced by the room itself).
    pub limits: Limits,
    /// Test hooks: [`JoinRequest::visible_only_to`] is honoured (a hostile coordinator
    /// for the test suites). Off in production.
    pub test_hooks: bool,
    /// The driver can run a recorder: hosts may `record` (see [`recording`]).
    pub recording: bool,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            presence_timeout: Duration::from_secs(15),
            execute_timeout: Duration::from_secs(2),
            replay_max_entries: 4096,
            replay_max_bytes: 16 << 20,
            default_max_participants: 100,
            hard_max_participants: 1000,
            first_joiner_is_host: true,
            max_tracks_per_participant: 16,
            max_sfu_sessions_per_participant: 4,
            max_key_package_bytes: 16 << 10,
            max_commit_base_bytes: 64 << 10,
            max_commit_bytes_per_participant: 4 << 10,
            max_binary_bytes: 1 << 20,
            test_hooks: false,
            recording: false,
            limits: Limits {
                heartbeat_interval_ms: 5000,
                presence_timeout_ms: 15000,
                max_text_bytes: 16 << 10,
                max_binary_bytes: 1 << 20,
                messages_per_second: 50,
                replay_window: 4096,
                max_key_package_bytes: 16 << 10,
                bytes_per_second: 128 << 10,
            },
        }
    }
}

/// A verified join request (the driver checked the token).
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Token subject (identity).
    pub subject: String,
    /// Display name.
    pub name: String,
    /// Permissions from the token.
    pub permissions: Permissions,
    /// A fresh random secret for resume and `/sfu` calls.
    pub resume_token: String,
    /// Wall clock, Unix ms.
    pub wall_ms: u64,
    /// Test hook (honoured only with [`RoomConfig::test_hooks`]): every entry about this
    /// participant (its `joined`, `left`, MLS frames, sessions, tracks, ...) goes only to
    /// itself and this participant, and other joiners' snapshots omit it.
    pub visible_only_to: Option<u64>,
    /// The token grants `recorder`: the participant is shown to everyone as recording
    /// ([`ParticipantInfo::recorder`]).
    pub recorder: bool,
}

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The room is locked and the joiner is no host.
    #[error("room is locked")]
    Locked,
    /// The room is at its cap.
    #[error("room is full")]
    Full,
    /// A host removed this identity.
    #[error("removed from this room")]
    Removed,
}

impl JoinError {
    /// The close code for this refusal.
    pub fn close_code(self) -> u16 {
        match self {
            Self::Locked => close::ROOM_LOCKED,
            Self::Full => close::ROOM_FULL,
            Self::Removed => close::REMOVED,
        }
    }
}

/// Why a resume was refused (close [`close::RESUME_FAILED`]; join fresh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// No such participant (it timed out, left, or never existed).
    #[error("unknown participant")]
    UnknownParticipant,
    /// The resume token does not match.
    #[error("bad resume token")]
    BadToken,
    /// `last_seq` is ahead of the room.
    #[error("last_seq {last_seq} is ahead of the room ({seq})")]
    FutureSeq {
        /// Client's value.
        last_seq: u64,
        /// Room's value.
        seq: u64,
    },
    /// Entries after `last_seq` are no longer retained; the participant was removed.
    #[error("entries after seq {last_seq} are no longer retained (oldest kept: {oldest})")]
    Gap {
        /// Client's value.
        last_seq: u64,
        /// Oldest retained seq.
        oldest: u64,
    },
}

/// An input from a participant's connection.
#[derive(Debug, Clone)]
pub enum Input {
    /// A parsed JSON message.
    Message(ClientMessage),
    /// A binary frame (`u8 kind ‖ payload`).
    Binary(Bytes),
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq)]
pub enum EntryBody {
    /// A JSON event.
    Event(RoomEvent),
    /// A relayed MLS payload; the bytes are in the wire frame.
    Mls {
        /// [`KIND_KEY_PACKAGE`] or [`KIND_COMMIT`].
        kind: u8,
        /// Sender.
        from: u64,
    },
}

/// An encoded frame, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// UTF-8 JSON.
    Text(Bytes),
    /// Binary.
    Binary(Bytes),
}

impl Wire {
    /// Encoded length.
    pub fn len(&self) -> usize {
        match self {
            Self::Text(b) | Self::Binary(b) => b.len(),
        }
    }

    /// Never empty in practice.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its per-room sequence number.
    pub seq: u64,
    /// What it is.
    pub body: EntryBody,
    /// How it goes on the wire (encoded once, sent to everyone).
    pub wire: Wire,
    /// Who receives it: everyone (`None`), or only these participants (the test hook
    /// [`JoinRequest::visible_only_to`]).
    pub audience: Option<Vec<u64>>,
    /// The participant whose message caused it (its share of the log), if any.
    pub owner: Option<u64>,
    /// When it was logged (the time of the input that caused it).
    pub at: Option<Instant>,
}

impl Entry {
    /// Whether participant `id` receives this entry.
    pub fn visible_to(&self, id: u64) -> bool {
        self.audience.as_ref().is_none_or(|a| a.contains(&id))
    }
}

impl Entry {
    /// Short name for metrics.
    pub fn type_name(&self) -> &'static str {
        match &self.body {
            EntryBody::Event(e) => e.type_name(),
            EntryBody::Mls { kind, .. } if *kind == KIND_COMMIT => "commit",
            EntryBody::Mls { kind, .. } if *kind == KIND_APPLICATION => "chat",
            EntryBody::Mls { .. } => "key_package",
        }
    }
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send a direct message to one participant's connection.
    Reply {
        /// Participant.
        to: u64,
        /// Message.
        msg: ServerMessage,
    },
    /// Send a new entry to every participant's connection.
    Broadcast(Arc<Entry>),
    /// Send an existing entry to one participant (resume replay).
    Deliver {
        /// Participant.
        to: u64,
        /// Entry.
        entry: Arc<Entry>,
    },
    /// The participant is no longer in the room: close its connection (if any)
    /// with this code, forget its credentials and close its SFU sessions.
    Gone {
        /// Participant.
        id: u64,
        /// Its resume token (the driver may index credentials by it).
        resume_token: String,
        /// The SFU sessions it created: the driver deletes them at the SFU at once, so
        /// a removed or departed participant receives no more media.
        sfu_sessions: Vec<String>,
        /// Close code.
        code: u16,
        /// Close reason.
        reason: &'static str,
    },
    /// Delete this SFU session at the SFU (released: its owner holds newer ones, closed it, or
    /// is gone while it was being created).
    SfuClose {
        /// The session id.
        session_id: String,
    },
    /// Start or stop this room's recorder process (see [`recording`]).
    Recorder(recording::RecorderCommand),
}

/// Why an SFU session could not be reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SfuReserveError {
    /// The participant is not in the room.
    #[error("participant is gone")]
    Gone,
    /// As many creations as the session cap are already under way.
    #[error("too many SFU sessions being created at once")]
    TooMany,
}

/// The replay of a resume could not continue: entries it needs were dropped from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("entries after seq {after} are no longer retained")]
pub struct ReplayGap {
    /// The last seq delivered.
    pub after: u64,
}

/// One participant's part of the log (entries its messages caused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Share {
    entries: usize,
    bytes: usize,
}

#[derive(Debug, Clone)]
struct Participant {
    id: u64,
    subject: String,
    name: String,
    permissions: Permissions,
    host: bool,
    joined_at_ms: u64,
    resume_token: String,
    last_seen: Instant,
    /// Whether a connection is attached. A participant whose socket dropped stays in the
    /// room for its presence timeout and may resume; meanwhile `execute` does not wait for
    /// its `ready` and it is not named creator while a connected participant exists.
    connected: bool,
    /// Whether its latest `away`/`back` entry is `away` (what clients were told; an
    /// `away` over the bound is not logged, see [`AWAY_ENTRIES_PER_WINDOW`]).
    away: bool,
    /// When its recent `away` entries were logged (at most [`AWAY_ENTRIES_PER_WINDOW`]).
    aways: VecDeque<Instant>,
    sfu_sessions: Vec<String>,
    /// SFU session creations under way (reserved against the cap before the SFU is asked).
    sfu_pending: usize,
    tracks: Vec<TrackInfo>,
    hand_raised: bool,
    speaking: bool,
    /// The video codecs it decodes (`codecs`), once it said.
    codecs: Option<Vec<String>>,
    /// The codec its video goes out in (`codecs.sending`), if it said.
    sending: Option<String>,
    /// Joined as a recorder (shown to everyone).
    recorder: bool,
}

impl Participant {
    fn info(&self) -> ParticipantInfo {
        ParticipantInfo {
            id: self.id,
            name: self.name.clone(),
            joined_at_ms: self.joined_at_ms,
            host: self.host,
            sfu_sessions: self.sfu_sessions.clone(),
            tracks: self.tracks.clone(),
            hand_raised: self.hand_raised,
            speaking: self.speaking,
            codecs: self.codecs.clone(),
            sending: self.sending.clone(),
            away: self.away,
            recorder: self.recorder,
        }
    }
}

/// At most this many `away` entries per participant within [`AWAY_WINDOW`]: a client
/// that reconnects in a loop cannot flood the log (and every member) with presence
/// entries. A disconnect beyond it is not logged (nor is the matching resume): the
/// participant then still counts as present for the designated committer, as before
/// `away` existed, while `execute` still stops waiting for it.
pub const AWAY_ENTRIES_PER_WINDOW: usize = 6;
/// The window of [`AWAY_ENTRIES_PER_WINDOW`].
pub const AWAY_WINDOW: Duration = Duration::from_secs(60);

/// The MLS group the room relays for.
#[derive(Debug, Clone)]
struct Group {
    id: Vec<u8>,
    epoch: u64,
    creator: u64,
    /// Live participants the coordinator knows are in the group: the creator and
    /// everyone added by an accepted commit (with a KeyPackage it logged itself), minus
    /// those that left or logged a new KeyPackage since.
    members: BTreeSet<u64>,
    /// Members that reported `ready` for the current epoch.
    ready: BTreeSet<u64>,
    /// When `execute {epoch}` is due if not everyone reported.
    execute_deadline: Option<Instant>,
    /// The last epoch an `execute` was logged for.
    executed: Option<u64>,
    /// The latest logged commit while it may still be voided (`commit_failed`).
    last_commit: Option<LastCommit>,
    /// The epoch each member last reported `commit_failed` for.
    failed_reports: BTreeMap<u64, u64>,
}

/// What voiding the latest commit has to undo.
#[derive(Debug, Clone)]
struct LastCommit {
    /// The epoch it was created in (the room moved to `epoch + 1`).
    epoch: u64,
    /// Its sender.
    from: u64,
    /// Members before it was accepted.
    members_before: BTreeSet<u64>,
}

#[derive(Serialize)]
struct EventFrameRef<'a> {
    seq: u64,
    #[serde(flatten)]
    event: &'a RoomEvent,
}

/// One room's state machine.
#[derive(Debug)]
pub struct Room {
    name: String,
    config: RoomConfig,
    seq: u64,
    log: VecDeque<Arc<Entry>>,
    log_bytes: usize,
    /// The highest seq trimmed off the front of the log (a resume from before it has a gap).
    /// Superseded KeyPackages dropped from the middle do not count: nobody needs them.
    trimmed_upto: u64,
    /// Each participant's share of the log.
    shares: BTreeMap<u64, Share>,
    /// The seq of the latest retained entry of each state (see [`state_key`]).
    latest_state: std::collections::HashMap<StateKey, u64>,
    /// Retained entries a later entry supersedes (dropped first when the log is full).
    superseded: BTreeSet<u64>,
    /// The seq of each participant's retained KeyPackage (at most one each).
    latest_kp: BTreeMap<u64, u64>,
    /// SHA-256 of each participant's last few superseded KeyPackages (dropped from the log):
    /// a commit built before the newer one arrived may still add one of them.
    old_kps: BTreeMap<u64, VecDeque<[u8; 32]>>,
    /// The time of the input being handled (entries are stamped with it).
    now: Option<Instant>,
    next_id: u64,
    participants: BTreeMap<u64, Participant>,
    locked: bool,
    max_participants: u32,
    removed_subjects: HashSet<String>,
    group: Option<Group>,
    group_seed: u64,
    groups_created: u64,
    outputs: VecDeque<Output>,
    /// Test hook: hidden participant → the one participant that may see it.
    hidden: BTreeMap<u64, u64>,
    /// Driver notes kept with the room's durable state (e.g. its SFU node).
    notes: BTreeMap<String, String>,
    /// What a durable store must still write (journal on; see [`journal`]).
    journal: Option<journal::Journal>,
    /// End-to-end encrypted chat: rate buckets and retained entries (see [`chat`]).
    chat: chat::ChatRelay,
    /// Host-controlled recording (see [`recording`]; driver state, not in the durable image).
    recording: recording::Recording,
    /// Unit tests: a store inside the room; every drained round checks a rebuild from it.
    #[cfg(test)]
    shadow: Option<journal::shadow::Shadow>,
}

impl Room {
    /// A new, empty room. `group_seed` makes its MLS group ids unique (random from the driver).
    pub fn new(name: impl Into<String>, config: RoomConfig, group_seed: u64) -> Self {
        let max_participants = config.default_max_participants;
        Self {
            name: name.into(),
            config,
            seq: 0,
            log: VecDeque::new(),
            log_bytes: 0,
            trimmed_upto: 0,
            shares: BTreeMap::new(),
            latest_state: std::collections::HashMap::new(),
            superseded: BTreeSet::new(),
            latest_kp: BTreeMap::new(),
            old_kps: BTreeMap::new(),
            now: None,
            next_id: 1,
            participants: BTreeMap::new(),
            locked: false,
            max_participants,
            removed_subjects: HashSet::new(),
            group: None,
            group_seed,
            groups_created: 0,
            outputs: VecDeque::new(),
            hidden: BTreeMap::new(),
            notes: BTreeMap::new(),
            journal: cfg!(test).then(journal::Journal::default),
            chat: chat::ChatRelay::default(),
            recording: recording::Recording::default(),
            #[cfg(test)]
            shadow: Some(journal::shadow::Shadow::default()),
        }
    }

    /// Sets a driver note (kept with the durable state; `None` removes it).
    pub fn set_note(&mut self, key: &str, value: Option<String>) {
        match value {
            Some(v) => {
                if self.notes.get(key) != Some(&v) {
                    self.notes.insert(key.to_owned(), v);
                }
            }
            None => {
                self.notes.remove(key);
            }
        }
    }

    /// A driver note.
    pub fn note(&self, key: &str) -> Option<&str> {
        self.notes.get(key).map(String::as_str)
    }

    /// Room name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last assigned `seq`.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Number of participants.
    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    /// No participants left: the driver drops the room.
    pub fn is_empty(&self) -> bool {
        self.participants.is_empty()
    }

    /// Is `id` in the room?
    pub fn contains(&self, id: u64) -> bool {
        self.participants.contains_key(&id)
    }

    /// Permissions of `id`.
    pub fn permissions(&self, id: u64) -> Option<Permissions> {
        self.participants.get(&id).map(|p| p.permissions)
    }

    /// Which participant created SFU session `session_id`.
    pub fn sfu_session_owner(&self, session_id: &str) -> Option<u64> {
        self.participants
            .values()
            .find(|p| p.sfu_sessions.iter().any(|s| s == session_id))
            .map(|p| p.id)
    }

    /// Current MLS group id and epoch.
    pub fn group_epoch(&self) -> Option<(&[u8], u64)> {
        self.group.as_ref().map(|g| (g.id.as_slice(), g.epoch))
    }

    /// The room state now.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_for(None)
    }

    /// The room state as participant `viewer` may see it (hidden participants are
    /// left out for everyone but themselves and the one they are visible to).
    fn snapshot_for(&self, viewer: Option<u64>) -> Snapshot {
        Snapshot {
            participants: self
                .participants
                .values()
                .filter(|p| viewer.is_none_or(|v| self.sees(v, p.id)))
                .map(Participant::info)
                .collect(),
            locked: self.locked,
            max_participants: self.max_participants,
            group: self.group.as_ref().map(|g| GroupInfo {
                group_id: hex::encode(&g.id),
                epoch: g.epoch,
                creator: g.creator,
            }),
        }
    }

    /// Whether `viewer` may see participant `subject` (test hook; always true without it).
    fn sees(&self, viewer: u64, subject: u64) -> bool {
        self.hidden
            .get(&subject)
            .is_none_or(|&v| viewer == v || viewer == subject)
    }

    /// Who receives an entry about `subjects`: everyone, unless one of them is hidden.
    fn audience(&self, subjects: &[u64]) -> Option<Vec<u64>> {
        let mut audience = Vec::new();
        for s in subjects {
            if let Some(&v) = self.hidden.get(s) {
                audience.extend([*s, v]);
            }
        }
        (!audience.is_empty()).then_some(audience)
    }

    /// Next output for the driver.
    pub fn poll_output(&mut self) -> Option<Output> {
        let out = self.outputs.pop_front();
        #[cfg(test)]
        if out.is_none() {
            journal::shadow::check(self);
        }
        out
    }

    /// When [`Room::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let presence = self
            .participants
            .values()
            .map(|p| p.last_seen + self.config.presence_timeout)
            .min();
        let execute = self.group.as_ref().and_then(|g| g.execute_deadline);
        match (presence, execute) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A fresh participant joins. On success the outputs start with its `welcome`.
    pub fn join(&mut self, now: Instant, req: JoinRequest) -> Result<u64, JoinError> {
        self.now = Some(now);
        if self.removed_subjects.contains(&req.subject) {
            return Err(JoinError::Removed);
        }
        let count = self.participants.len();
        if count >= self.config.hard_max_participants as usize {
            return Err(JoinError::Full);
        }
        if !req.permissions.host {
            if self.locked {
                return Err(JoinError::Locked);
            }
            if count >= self.max_participants as usize {
                return Err(JoinError::Full);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        if self.config.test_hooks
            && let Some(v) = req.visible_only_to
        {
            self.hidden.insert(id, v);
        }
        let host = req.permissions.host
            || (self.config.first_joiner_is_host && !self.participants.values().any(|p| p.host));
        self.outputs.push_back(Output::Reply {
            to: id,
            msg: ServerMessage::Welcome {
                v: protocol::PROTOCOL_VERSION,
                room: self.name.clone(),
                participant_id: id,
                resume_token: req.resume_token.clone(),
                seq: self.seq,
                snapshot: self.snapshot_for(Some(id)),
                limits: self.config.limits.clone(),
                // The driver adds the ICE servers: they need the wall clock (hub.rs).
                ice_servers: Vec::new(),
                ice_expires_at: None,
            },
        });
        self.recorder_joined(id, &req.subject, req.recorder);
        let p = Participant {
            id,
            subject: req.subject,
            name: req.name,
            permissions: req.permissions,
            host,
            joined_at_ms: req.wall_ms,
            resume_token: req.resume_token,
            last_seen: now,
            connected: true,
            away: false,
            aways: VecDeque::new(),
            sfu_sessions: Vec::new(),
            sfu_pending: 0,
            tracks: Vec::new(),
            hand_raised: false,
            codecs: None,
            sending: None,
            speaking: false,
            recorder: req.recorder,
        };
        let event = RoomEvent::Joined {
            id,
            name: p.name.clone(),
            joined_at_ms: p.joined_at_ms,
            host,
            recorder: req.recorder,
        };
        self.participants.insert(id, p);
        self.append_event(event);
        self.ensure_group(now);
        Ok(id)
    }

    /// A participant resumes on a new connection; on success the outputs are its
    /// `resumed` followed by every entry after `last_seq`.
    pub fn resume(
        &mut self,
        now: Instant,
        id: u64,
        resume_token: &str,
        last_seq: u64,
    ) -> Result<(), ResumeError> {
        self.now = Some(now);
        let Some(p) = self.participants.get(&id) else {
            return Err(ResumeError::UnknownParticipant);
        };
        if !bool::from(p.resume_token.as_bytes().ct_eq(resume_token.as_bytes())) {
            return Err(ResumeError::BadToken);
        }
        if last_seq > self.seq {
            return Err(ResumeError::FutureSeq {
                last_seq,
                seq: self.seq,
            });
        }
        if last_seq < self.trimmed_upto {
            self.remove_participant(now, id, LeaveReason::ResumeFailed);
            return Err(ResumeError::Gap {
                last_seq,
                oldest: self.trimmed_upto + 1,
            });
        }
        let mut back = false;
        if let Some(p) = self.participants.get_mut(&id) {
            p.last_seen = now;
            p.connected = true;
            back = std::mem::take(&mut p.away);
        }
        self.outputs.push_back(Output::Reply {
            to: id,
            msg: ServerMessage::Resumed {
                participant_id: id,
                from_seq: last_seq,
                seq: self.seq,
                limits: self.config.limits.clone(),
                ice_servers: Vec::new(),
                ice_expires_at: None,
            },
        });
        for entry in self
            .log
            .iter()
            .filter(|e| e.seq > last_seq && e.visible_to(id))
        {
            self.outputs.push_back(Output::Deliver {
                to: id,
                entry: entry.clone(),
            });
        }
        if back {
            // After the replay's outputs: the resumed connection gets it after them.
            self.append_event(RoomEvent::Back {
                id,
                from_seq: last_seq,
            });
        }
        Ok(())
    }

    /// Reserves one SFU session for participant `id` before the proxy asks the SFU for it, so
    /// concurrent creations can never exceed the cap. Sessions beyond the cap (counting those
    /// being created) are released, oldest first: a participant that reconnects its media
    /// never runs out. Refused while as many creations as the cap are under way.
    pub fn reserve_sfu_session(&mut self, now: Instant, id: u64) -> Result<(), SfuReserveError> {
        self.now = Some(now);
        let max = self.config.max_sfu_sessions_per_participant.max(1);
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(SfuReserveError::Gone)?;
        if p.sfu_pending >= max {
            return Err(SfuReserveError::TooMany);
        }
        p.sfu_pending += 1;
        p.last_seen = now;
        let excess = (p.sfu_sessions.len() + p.sfu_pending).saturating_sub(max);
        let oldest: Vec<String> = p.sfu_sessions.iter().take(excess).cloned().collect();
        for sid in oldest {
            self.release_sfu_session(now, id, &sid);
        }
        Ok(())
    }

    /// A reserved creation failed (or its request was abandoned): frees the reservation.
    pub fn cancel_sfu_reservation(&mut self, id: u64) {
        if let Some(p) = self.participants.get_mut(&id) {
            p.sfu_pending = p.sfu_pending.saturating_sub(1);
        }
    }

    /// The proxy created SFU session `session_id` for participant `id` (consuming a
    /// reservation if it holds one; beyond the cap the oldest session is released).
    /// Returns false if the participant is gone or the id is unusable: the driver must then
    /// delete the session at the SFU.
    pub fn bind_sfu_session(&mut self, now: Instant, id: u64, session_id: &str) -> bool {
        self.now = Some(now);
        let max = self.config.max_sfu_sessions_per_participant.max(1);
        let Some(p) = self.participants.get_mut(&id) else {
            return false;
        };
        p.sfu_pending = p.sfu_pending.saturating_sub(1);
        if session_id.is_empty()
            || session_id.len() > MAX_NAME_LEN
            || p.sfu_sessions.iter().any(|s| s == session_id)
        {
            return false;
        }
        p.last_seen = now;
        let excess = (p.sfu_sessions.len() + 1).saturating_sub(max);
        let oldest: Vec<String> = p.sfu_sessions.iter().take(excess).cloned().collect();
        for sid in oldest {
            self.release_sfu_session(now, id, &sid);
        }
        if let Some(p) = self.participants.get_mut(&id) {
            p.sfu_sessions.push(session_id.to_owned());
        }
        self.append_event(RoomEvent::Session {
            id,
            session_id: session_id.to_owned(),
        });
        true
    }

    /// Releases SFU session `session_id` of participant `id`: its tracks are unpublished
    /// (entries `unpublished`) and the driver deletes it at the SFU ([`Output::SfuClose`]).
    /// Returns false if `id` does not own it.
    pub fn release_sfu_session(&mut self, now: Instant, id: u64, session_id: &str) -> bool {
        self.now = Some(now);
        let Some(p) = self.participants.get_mut(&id) else {
            return false;
        };
        let Some(i) = p.sfu_sessions.iter().position(|s| s == session_id) else {
            return false;
        };
        p.sfu_sessions.remove(i);
        let mut gone = Vec::new();
        p.tracks.retain(|t| {
            let keep = t.session_id != session_id;
            if !keep {
                gone.push(t.track_name.clone());
            }
            keep
        });
        for track_name in gone {
            self.append_event(RoomEvent::Unpublished { id, track_name });
        }
        self.outputs.push_back(Output::SfuClose {
            session_id: session_id.to_owned(),
        });
        true
    }

    /// SFU sessions participant `id` holds, oldest first.
    pub fn sfu_sessions_of(&self, id: u64) -> Option<&[String]> {
        self.participants
            .get(&id)
            .map(|p| p.sfu_sessions.as_slice())
    }

    /// Entries for a resume replay that streams from the log: those after `after` up to
    /// `until` that `id` may see, about `max_bytes` at most (at least one). Returns them and
    /// the seq to continue after (`until` when done). Fails if entries after `after` were
    /// trimmed off the log meanwhile.
    pub fn replay_chunk(
        &self,
        id: u64,
        after: u64,
        until: u64,
        max_bytes: usize,
    ) -> Result<(Vec<Arc<Entry>>, u64), ReplayGap> {
        if after < self.trimmed_upto {
            return Err(ReplayGap { after });
        }
        let start = self.log.partition_point(|e| e.seq <= after);
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut next = until;
        for e in self.log.range(start..) {
            if e.seq > until {
                break;
            }
            if !out.is_empty() && bytes + e.wire.len() > max_bytes {
                next = out.last().map_or(after, |l: &Arc<Entry>| l.seq);
                break;
            }
            if e.visible_to(id) {
                bytes += e.wire.len();
                out.push(e.clone());
            }
        }
        Ok((out, next))
    }

    /// Whether a message from `from` that logs about `bytes` must be refused to protect the
    /// others' resume windows: the log is full, its oldest entry is younger than the presence
    /// timeout (a disconnected member may still need it), and `from` already holds its share
    /// (1/N of the entries and bytes, N the participants).
    fn log_refuses(&self, now: Instant, from: u64, bytes: usize) -> bool {
        let max_entries = self.config.replay_max_entries.max(1);
        let max_bytes = self.config.replay_max_bytes;
        let full = self.log.len() >= max_entries || self.log_bytes + bytes > max_bytes;
        if !full || self.oldest_superseded().is_some() || self.chat.oldest().is_some() {
            return false;
        }
        let young = self.log.front().is_some_and(|e| {
            e.at.is_some_and(|at| now < at + self.config.presence_timeout)
        });
        if !young {
            return false;
        }
        let n = self.participants.len().max(1);
        let share = self.shares.get(&from).copied().unwrap_or_default();
        share.entries + 1 > max_entries / n || share.bytes + bytes > max_bytes / n
    }

    /// Largest commit frame (kind byte included) in this room.
    fn max_commit_bytes(&self) -> usize {
        let cap = usize::try_from(self.max_participants).unwrap_or(usize::MAX);
        self.config
            .max_commit_base_bytes
            .saturating_add(
                self.config
                    .max_commit_bytes_per_participant
                    .saturating_mul(cap),
            )
            .min(self.config.max_binary_bytes)
    }

    /// A sign of life from `id` that carries no message (e.g. a WebSocket ping).
    pub fn touch(&mut self, now: Instant, id: u64) {
        self.now = Some(now);
        if let Some(p) = self.participants.get_mut(&id) {
            p.last_seen = now;
        }
    }

    /// The connection of `id` ended (its socket is gone; not a leave). The participant stays
    /// for its presence timeout and may resume, but until it does, a pending `execute` no
    /// longer waits for its `ready`: it replays the commit and the `execute` from the log when
    /// it resumes (`docs/e2ee-relay.md`, Ready / execute). Logs `away {id}` (so the
    /// designated committer passes over it until its `back`), at most
    /// [`AWAY_ENTRIES_PER_WINDOW`] times per [`AWAY_WINDOW`].
    pub fn disconnect(&mut self, now: Instant, id: u64) {
        self.now = Some(now);
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        if !p.connected {
            return;
        }
        p.connected = false;
        while p.aways.front().is_some_and(|t| now >= *t + AWAY_WINDOW) {
            p.aways.pop_front();
        }
        if !p.away && p.aways.len() < AWAY_ENTRIES_PER_WINDOW {
            p.aways.push_back(now);
            p.away = true;
            self.append_event(RoomEvent::Away { id });
        }
        self.check_execute();
    }

    /// Whether `id` is in the room with a connection attached.
    pub fn is_connected(&self, id: u64) -> bool {
        self.participants.get(&id).is_some_and(|p| p.connected)
    }

    /// Time passed: presence timeouts and overdue `execute`s.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        let expired: Vec<u64> = self
            .participants
            .values()
            .filter(|p| now >= p.last_seen + self.config.presence_timeout)
            .map(|p| p.id)
            .collect();
        for id in expired {
            self.remove_participant(now, id, LeaveReason::Timeout);
        }
        let due = self
            .group
            .as_ref()
            .and_then(|g| g.execute_deadline)
            .is_some_and(|d| now >= d);
        if due {
            self.execute();
        }
    }

    /// Removes every participant (server shutdown); no entries are logged.
    pub fn close_all(&mut self, code: u16, reason: &'static str) {
        for (id, p) in std::mem::take(&mut self.participants) {
            self.outputs.push_back(Output::Gone {
                id,
                resume_token: p.resume_token,
                sfu_sessions: p.sfu_sessions,
                code,
                reason,
            });
        }
    }

    /// A message from participant `from`. Messages from unknown ids are ignored.
    pub fn handle(&mut self, now: Instant, from: u64, input: Input) {
        self.now = Some(now);
        let Some(p) = self.participants.get_mut(&from) else {
            return;
        };
        p.last_seen = now;
        // Only an attached connection delivers messages.
        p.connected = true;
        let logs = match &input {
            Input::Binary(b) => Some(b.len() + protocol::MlsFrame::HEADER_LEN),
            Input::Message(m) => match m {
                ClientMessage::Publish { .. }
                | ClientMessage::Unpublish { .. }
                | ClientMessage::SetTrack { .. }
                | ClientMessage::Hand { .. }
                | ClientMessage::Speaking { .. }
                | ClientMessage::Mute { .. }
                | ClientMessage::Lock { .. }
                | ClientMessage::Record { .. }
                | ClientMessage::SetCap { .. } => Some(256),
                ClientMessage::Codecs { .. } => Some(512),
                _ => None,
            },
        };
        if let Some(bytes) = logs
            && self.log_refuses(now, from, bytes)
        {
            let message =
                "the room's log is full and you hold your share of it; message dropped".to_owned();
            match &input {
                Input::Binary(b) if b.first() == Some(&KIND_COMMIT) => {
                    let current_epoch = self.group.as_ref().map(|g| g.epoch);
                    self.reply(
                        from,
                        ServerMessage::CommitRejected {
                            epoch: None,
                            current_epoch,
                            reason: error_code::LOG_FULL.to_owned(),
                            detail: Some(message),
                        },
                    );
                }
                Input::Binary(b) => {
                    let refused = match b.first() {
                        Some(&KIND_KEY_PACKAGE) => Some("key_package"),
                        Some(&KIND_APPLICATION) => Some("chat"),
                        _ => None,
                    };
                    self.error(from, error_code::LOG_FULL, message, refused);
                }
                Input::Message(m) => {
                    let refused = m.type_name();
                    self.error(from, error_code::LOG_FULL, message, Some(refused));
                }
            }
            return;
        }
        match input {
            Input::Message(msg) => self.handle_message(now, from, msg),
            Input::Binary(bytes) => self.handle_binary(now, from, bytes),
        }
    }

    fn handle_message(&mut self, now: Instant, from: u64, msg: ClientMessage) {
        let refused = msg.type_name();
        let result = match msg {
            ClientMessage::Hello { .. } => Err((
                error_code::ALREADY_JOINED,
                "hello may only be the first message".to_owned(),
            )),
            ClientMessage::Ping { t } => {
                self.reply(from, ServerMessage::Pong { t });
                Ok(())
            }
            ClientMessage::Leave {} => {
                self.remove_participant(now, from, LeaveReason::Left);
                Ok(())
            }
            ClientMessage::Publish {
                session_id,
                track_name,
                kind,
                enabled,
            } => self.publish(from, session_id, track_name, kind, enabled),
            ClientMessage::Unpublish { track_name } => self.unpublish(from, &track_name),
            ClientMessage::SetTrack {
                track_name,
                enabled,
            } => self.set_track(from, &track_name, enabled),
            ClientMessage::Hand { raised } => {
                if let Some(p) = self.participants.get_mut(&from)
                    && p.hand_raised != raised
                {
                    p.hand_raised = raised;
                    self.append_event(RoomEvent::Hand { id: from, raised });
                }
                Ok(())
            }
            ClientMessage::Speaking { speaking } => self.speaking(from, speaking),
            ClientMessage::Codecs { video, sending } => self.codecs(from, video, sending),
            ClientMessage::Mute { target, kind } => self.mute(from, target, kind),
            ClientMessage::Remove { target } => self.remove(now, from, target),
            ClientMessage::Lock { locked } => self.lock(from, locked),
            ClientMessage::Record { action } => self.record(now, from, action),
            ClientMessage::SetCap { max_participants } => self.set_cap(from, max_participants),
            ClientMessage::Ready { epoch, group_id } => self.ready(from, epoch, group_id),
            ClientMessage::CommitFailed { epoch } => self.commit_failed(now, from, epoch),
        };
        if let Err((code, message)) = result {
            self.error(from, code, message, Some(refused));
        }
    }

    fn handle_binary(&mut self, now: Instant, from: u64, bytes: Bytes) {
        let Some((&kind, payload)) = bytes.split_first() else {
            self.error(
                from,
                error_code::MALFORMED,
                "empty binary frame".to_owned(),
                None,
            );
            return;
        };
        if kind == KIND_APPLICATION {
            self.chat_message(now, from, &bytes);
            return;
        }
        let limit = match kind {
            KIND_KEY_PACKAGE => self.config.max_key_package_bytes,
            KIND_COMMIT => self.max_commit_bytes(),
            _ => usize::MAX,
        };
        if bytes.len() > limit {
            let what = if kind == KIND_COMMIT {
                "commit"
            } else {
                "key_package"
            };
            self.error(
                from,
                error_code::TOO_LARGE,
                format!("{what} frames are limited to {limit} bytes in this room"),
                Some(what),
            );
            return;
        }
        match kind {
            KIND_KEY_PACKAGE => {
                if let Err(e) = mls_framing::expect_wire_format(payload, WireFormat::KeyPackage) {
                    self.error(
                        from,
                        error_code::MLS_FRAMING,
                        e.to_string(),
                        Some("key_package"),
                    );
                    return;
                }
                self.append_mls(KIND_KEY_PACKAGE, from, payload);
                // A group member announcing a KeyPackage has reset its MLS state: it is
                // no longer in the group until a commit re-adds it and it reports
                // `ready`. If it was the last live member, a new creator is named so a
                // lone member that reset is not stranded.
                let released = self.group.as_mut().is_some_and(|g| {
                    g.ready.remove(&from);
                    g.members.remove(&from)
                });
                if released {
                    self.ensure_group(now);
                    // It is not waited for any more: the others may all be ready.
                    self.check_execute();
                }
            }
            KIND_COMMIT => self.commit(now, from, payload),
            other => self.error(
                from,
                error_code::UNKNOWN_TYPE,
                format!("unknown binary kind {other}"),
                None,
            ),
        }
    }

    fn commit(&mut self, now: Instant, from: u64, payload: &[u8]) {
        let checked = self.check_commit(from, payload);
        let commit = match checked {
            Ok(c) => c,
            Err((reason, epoch, detail)) => {
                let current_epoch = self.group.as_ref().map(|g| g.epoch);
                self.reply(
                    from,
                    ServerMessage::CommitRejected {
                        epoch,
                        current_epoch,
                        reason: reason.to_owned(),
                        detail,
                    },
                );
                return;
            }
        };
        let timeout = self.config.execute_timeout;
        let live: Vec<u64> = commit
            .adds
            .iter()
            .map(|a| a.participant)
            .filter(|id| self.participants.contains_key(id))
            .collect();
        if let Some(g) = self.group.as_mut() {
            g.last_commit = Some(LastCommit {
                epoch: g.epoch,
                from,
                members_before: g.members.clone(),
            });
            g.epoch += 1;
            g.ready.clear();
            g.execute_deadline = Some(now + timeout);
            // Only members drive the group: the participants this commit adds (with a
            // KeyPackage they logged themselves) are members from now on.
            g.members.extend(live);
        }
        self.append_mls(KIND_COMMIT, from, payload);
    }

    /// Decides whether a commit frame from `from` may be logged. On refusal: the
    /// `commit_rejected` reason, the commit's epoch if readable, and a detail.
    fn check_commit(
        &self,
        from: u64,
        payload: &[u8],
    ) -> Result<mls_framing::PublicCommit, (&'static str, Option<u64>, Option<String>)> {
        let split = protocol::split_commit_payload(payload);
        let header_epoch = split
            .and_then(|(c, _)| mls_framing::parse_commit(c).ok())
            .map(|h| h.epoch);
        let Some(g) = &self.group else {
            return Err((commit_rejected::NO_GROUP, header_epoch, None));
        };
        if !g.members.contains(&from) {
            return Err((
                commit_rejected::NOT_MEMBER,
                header_epoch,
                Some(
                    "only the group's creator and participants added by an accepted commit may commit"
                        .to_owned(),
                ),
            ));
        }
        let malformed = |detail: String| (commit_rejected::MALFORMED, header_epoch, Some(detail));
        let Some((commit, welcome)) = split else {
            return Err(malformed(
                "commit payload: u32 length exceeds the frame".to_owned(),
            ));
        };
        let parsed = mls_framing::parse_public_commit(commit)
            .map_err(|e| malformed(format!("commit: {e}")))?;
        if parsed.group_id != g.id {
            return Err((commit_rejected::WRONG_GROUP, Some(parsed.epoch), None));
        }
        if parsed.epoch != g.epoch {
            return Err((commit_rejected::STALE_EPOCH, Some(parsed.epoch), None));
        }
        if welcome.is_empty() != parsed.adds.is_empty() {
            return Err(malformed(if welcome.is_empty() {
                "a commit that adds members needs their Welcome".to_owned()
            } else {
                "a Welcome without an Add".to_owned()
            }));
        }
        if !welcome.is_empty() {
            mls_framing::expect_wire_format(welcome, WireFormat::Welcome)
                .map_err(|e| malformed(format!("welcome: {e}")))?;
        }
        for add in &parsed.adds {
            if !self.logged_key_package(add.participant, &add.key_package) {
                return Err((
                    commit_rejected::UNKNOWN_KEY_PACKAGE,
                    Some(parsed.epoch),
                    Some(format!(
                        "adds a KeyPackage that participant {} did not log",
                        add.participant
                    )),
                ));
            }
        }
        Ok(parsed)
    }

    /// Whether participant `id` logged exactly this KeyPackage (the struct, without the
    /// 4-byte `MLSMessage` header) in an entry still retained.
    /// Superseded ones still count (the last [`OLD_KEY_PACKAGES`] of each participant): a
    /// committer may have built its commit before the newer KeyPackage reached it.
    fn logged_key_package(&self, id: u64, key_package: &[u8]) -> bool {
        let skip = protocol::MlsFrame::HEADER_LEN + 4;
        self.log.iter().any(|e| {
            matches!(e.body, EntryBody::Mls { kind: KIND_KEY_PACKAGE, from } if from == id)
                && matches!(&e.wire, Wire::Binary(w) if w.get(skip..) == Some(key_package))
        }) || self.old_kps.get(&id).is_some_and(|old| {
            let digest: [u8; 32] = Sha256::digest(key_package).into();
            old.contains(&digest)
        })
    }

    fn ready(
        &mut self,
        from: u64,
        epoch: u64,
        group_id: Option<String>,
    ) -> Result<(), (&'static str, String)> {
        let Some(g) = self.group.as_mut() else {
            return Err((error_code::INVALID, "no MLS group yet".to_owned()));
        };
        if !g.members.contains(&from) {
            return Err((
                error_code::NOT_MEMBER,
                "not a member of the MLS group: only its creator and participants added by an accepted commit report ready".to_owned(),
            ));
        }
        if let Some(gid) = group_id
            && hex::decode(&gid).ok().as_deref() != Some(g.id.as_slice())
        {
            // A ready for an older group: harmless, ignored.
            return Ok(());
        }
        if epoch > g.epoch {
            return Err((
                error_code::INVALID,
                format!("epoch {epoch} is ahead of the group ({})", g.epoch),
            ));
        }
        if epoch == g.epoch && g.execute_deadline.is_some() {
            g.ready.insert(from);
            self.check_execute();
        }
        Ok(())
    }

    /// Appends `execute` once every group member whose connection is live has reported
    /// `ready` for the current epoch. Members whose socket dropped (in their resume window)
    /// are not waited for: they apply the commit and the `execute` from the log on resume.
    /// Nor are the members the epoch's commit *added*: a joiner held no key before, so no
    /// frame it could decrypt is lost when senders switch before it processed its Welcome;
    /// frames under the new key wait in its holdback until it has (issue 18: the joiner's
    /// Welcome processing and `ready` round trip were on the critical path of every join).
    fn check_execute(&mut self) {
        let participants = &self.participants;
        let all_ready = self.group.as_ref().is_some_and(|g| {
            let added_now = |m: &u64| {
                g.last_commit
                    .as_ref()
                    .is_some_and(|c| c.epoch + 1 == g.epoch && !c.members_before.contains(m))
            };
            g.execute_deadline.is_some()
                && g.members.iter().all(|m| {
                    g.ready.contains(m)
                        || added_now(m)
                        || !participants.get(m).is_some_and(|p| p.connected)
                })
        });
        if all_ready {
            self.execute();
        }
    }

    fn execute(&mut self) {
        let Some(g) = self.group.as_mut() else {
            return;
        };
        g.execute_deadline = None;
        let epoch = g.epoch;
        g.executed = Some(epoch);
        self.append_event(RoomEvent::Execute { epoch });
    }

    /// `commit_failed {epoch}`: member `from` could not process the commit created at
    /// `epoch`. Voids that commit if it is the latest, `from` was a member before it
    /// (a member it added cannot void it) and is not its sender, and nobody else who was
    /// a member before it has applied it (reported `ready` for `epoch + 1`). Otherwise
    /// `from` is the one out of step and stops being a member.
    fn commit_failed(
        &mut self,
        now: Instant,
        from: u64,
        epoch: u64,
    ) -> Result<(), (&'static str, String)> {
        let Some(g) = self.group.as_mut() else {
            return Err((error_code::INVALID, "no MLS group yet".to_owned()));
        };
        if !g.members.contains(&from) {
            return Err((
                error_code::NOT_MEMBER,
                "not a member of the MLS group".to_owned(),
            ));
        }
        if g.failed_reports.get(&from) == Some(&epoch) {
            return Err((
                error_code::INVALID,
                format!("commit_failed for epoch {epoch} was already reported"),
            ));
        }
        g.failed_reports.insert(from, epoch);
        let voidable = g.last_commit.as_ref().filter(|c| {
            c.epoch == epoch
                && c.epoch + 1 == g.epoch
                && c.from != from
                && c.members_before.contains(&from)
                && !g
                    .ready
                    .iter()
                    .any(|m| *m != c.from && c.members_before.contains(m))
        });
        let Some(void) = voidable.cloned() else {
            // Others applied it (or there is no such commit): the reporter is the one
            // out of step. It must reset and re-announce a KeyPackage.
            g.members.remove(&from);
            g.ready.remove(&from);
            self.error(
                from,
                error_code::NOT_MEMBER,
                format!(
                    "the commit of epoch {epoch} stands (others applied it); no longer a group member: re-announce a KeyPackage"
                ),
                Some("commit_failed"),
            );
            if self.group.as_ref().is_some_and(|g| g.members.is_empty()) {
                self.ensure_group(now);
            } else {
                self.check_execute();
            }
            return Ok(());
        };
        // Void: back to `epoch`, without the commit's sender and whoever it added.
        g.epoch = void.epoch;
        g.members
            .retain(|m| *m != void.from && void.members_before.contains(m));
        g.ready.clear();
        g.execute_deadline = None;
        g.last_commit = None;
        let execute_missing = g.executed != Some(void.epoch);
        self.append_event(RoomEvent::CommitVoid {
            epoch: void.epoch,
            from: void.from,
        });
        if self.group.as_ref().is_some_and(|g| g.members.is_empty()) {
            self.ensure_group(now);
        } else if execute_missing {
            // The void commit superseded `execute {epoch}`: every member is back at
            // `epoch`, so senders switch to it now.
            self.execute();
        }
        Ok(())
    }

    /// Names a creator when no live group member exists: the oldest participant whose
    /// connection is live (one in its resume window could hold everybody up until it resumes
    /// or times out), or the oldest participant if none is connected.
    fn ensure_group(&mut self, now: Instant) {
        let needs_group = self.group.as_ref().is_none_or(|g| g.members.is_empty());
        if !needs_group {
            return;
        }
        let connected = self
            .participants
            .values()
            .find(|p| p.connected)
            .map(|p| p.id);
        let Some(creator) = connected.or_else(|| self.participants.keys().next().copied()) else {
            self.group = None;
            return;
        };
        self.groups_created += 1;
        let mut id = Vec::with_capacity(16);
        id.extend_from_slice(&self.group_seed.to_be_bytes());
        id.extend_from_slice(&self.groups_created.to_be_bytes());
        let group_id = hex::encode(&id);
        self.group = Some(Group {
            id,
            epoch: 0,
            creator,
            members: BTreeSet::from([creator]),
            ready: BTreeSet::new(),
            execute_deadline: Some(now + self.config.execute_timeout),
            executed: None,
            last_commit: None,
            failed_reports: BTreeMap::new(),
        });
        self.append_event(RoomEvent::Creator {
            id: creator,
            group_id,
        });
        // A creator in its resume window is not waited for either.
        self.check_execute();
    }

    fn remove_participant(&mut self, now: Instant, id: u64, reason: LeaveReason) {
        let Some(p) = self.participants.remove(&id) else {
            return;
        };
        self.recorder_left(id);
        self.old_kps.remove(&id);
        let (code, why) = match reason {
            LeaveReason::Left => (close::NORMAL, "left"),
            LeaveReason::Timeout => (close::PRESENCE_TIMEOUT, "presence timeout"),
            LeaveReason::Removed => (close::REMOVED, "removed by a host"),
            LeaveReason::ResumeFailed => (close::RESUME_FAILED, "resume failed; join fresh"),
        };
        self.outputs.push_back(Output::Gone {
            id,
            resume_token: p.resume_token,
            sfu_sessions: p.sfu_sessions,
            code,
            reason: why,
        });
        self.append_event(RoomEvent::Left { id, reason });
        if p.host
            && self.config.first_joiner_is_host
            && !self.participants.values().any(|q| q.host)
            && let Some(next) = self.participants.values_mut().next()
        {
            next.host = true;
            let next_id = next.id;
            self.append_event(RoomEvent::Host { id: next_id });
        }
        if let Some(g) = self.group.as_mut() {
            g.members.remove(&id);
            g.ready.remove(&id);
        }
        if self.group.as_ref().is_some_and(|g| g.members.is_empty()) {
            self.ensure_group(now);
        } else {
            self.check_execute();
        }
        self.stop_recording_if_alone(now);
    }

    fn publish(
        &mut self,
        from: u64,
        session_id: String,
        track_name: String,
        kind: TrackKind,
        enabled: bool,
    ) -> Result<(), (&'static str, String)> {
        let max = self.config.max_tracks_per_participant;
        let p = self.participant_mut(from)?;
        if !p.permissions.publish {
            return Err((error_code::FORBIDDEN, "no publish permission".to_owned()));
        }
        if !p.sfu_sessions.contains(&session_id) {
            return Err((
                error_code::FORBIDDEN,
                "session was not created by this participant".to_owned(),
            ));
        }
        if track_name.is_empty() || track_name.len() > MAX_NAME_LEN {
            return Err((error_code::INVALID, "track_name length".to_owned()));
        }
        if p.tracks.iter().any(|t| t.track_name == track_name) {
            return Err((error_code::INVALID, "track already published".to_owned()));
        }
        if p.tracks.len() >= max {
            return Err((error_code::INVALID, format!("at most {max} tracks")));
        }
        let track = TrackInfo {
            track_name,
            session_id,
            kind,
            enabled,
        };
        p.tracks.push(track.clone());
        self.append_event(RoomEvent::Published { id: from, track });
        Ok(())
    }

    fn unpublish(&mut self, from: u64, track_name: &str) -> Result<(), (&'static str, String)> {
        let p = self.participant_mut(from)?;
        let Some(i) = p.tracks.iter().position(|t| t.track_name == track_name) else {
            return Err((error_code::NOT_FOUND, "no such track".to_owned()));
        };
        p.tracks.remove(i);
        self.append_event(RoomEvent::Unpublished {
            id: from,
            track_name: track_name.to_owned(),
        });
        Ok(())
    }

    fn set_track(
        &mut self,
        from: u64,
        track_name: &str,
        enabled: bool,
    ) -> Result<(), (&'static str, String)> {
        let p = self.participant_mut(from)?;
        let Some(t) = p.tracks.iter_mut().find(|t| t.track_name == track_name) else {
            return Err((error_code::NOT_FOUND, "no such track".to_owned()));
        };
        if t.enabled != enabled {
            t.enabled = enabled;
            self.append_event(RoomEvent::TrackEnabled {
                id: from,
                track_name: track_name.to_owned(),
                enabled,
            });
        }
        Ok(())
    }

    fn speaking(&mut self, from: u64, speaking: bool) -> Result<(), (&'static str, String)> {
        let p = self.participant_mut(from)?;
        if !p.permissions.publish {
            return Err((error_code::FORBIDDEN, "no publish permission".to_owned()));
        }
        if p.speaking != speaking {
            p.speaking = speaking;
            self.append_event(RoomEvent::Speaking { id: from, speaking });
        }
        Ok(())
    }

    /// `codecs`: what `from` decodes and sends; logged when it changes.
    fn codecs(
        &mut self,
        from: u64,
        video: Vec<String>,
        sending: Option<String>,
    ) -> Result<(), (&'static str, String)> {
        protocol::check_codec_list(&video).map_err(|e| (error_code::INVALID, e))?;
        if let Some(s) = &sending {
            protocol::check_codec_list(std::slice::from_ref(s))
                .map_err(|e| (error_code::INVALID, format!("sending: {e}")))?;
        }
        let p = self.participant_mut(from)?;
        if p.codecs.as_ref() != Some(&video) || p.sending != sending {
            p.codecs = Some(video.clone());
            p.sending.clone_from(&sending);
            self.append_event(RoomEvent::Codecs {
                id: from,
                video,
                sending,
            });
        }
        Ok(())
    }

    fn is_host(&self, id: u64) -> bool {
        self.participants.get(&id).is_some_and(|p| p.host)
    }

    fn mute(
        &mut self,
        from: u64,
        target: u64,
        kind: TrackKind,
    ) -> Result<(), (&'static str, String)> {
        if target != from && !self.is_host(from) {
            return Err((
                error_code::FORBIDDEN,
                "only a host may mute others".to_owned(),
            ));
        }
        let t = self.participant_mut(target)?;
        for track in t.tracks.iter_mut().filter(|tr| tr.kind == kind) {
            track.enabled = false;
        }
        self.append_event(RoomEvent::Muted {
            id: target,
            by: from,
            kind,
        });
        Ok(())
    }

    fn remove(
        &mut self,
        now: Instant,
        from: u64,
        target: u64,
    ) -> Result<(), (&'static str, String)> {
        if !self.is_host(from) {
            return Err((
                error_code::FORBIDDEN,
                "only a host may remove participants".to_owned(),
            ));
        }
        if target == from {
            return Err((error_code::INVALID, "use leave to leave".to_owned()));
        }
        let t = self.participant_mut(target)?;
        if t.host {
            return Err((error_code::FORBIDDEN, "a host cannot be removed".to_owned()));
        }
        let subject = t.subject.clone();
        self.removed_subjects.insert(subject);
        self.remove_participant(now, target, LeaveReason::Removed);
        Ok(())
    }

    fn lock(&mut self, from: u64, locked: bool) -> Result<(), (&'static str, String)> {
        if !self.is_host(from) {
            return Err((
                error_code::FORBIDDEN,
                "only a host may lock the room".to_owned(),
            ));
        }
        if self.locked != locked {
            self.locked = locked;
            self.append_event(RoomEvent::Locked { locked, by: from });
        }
        Ok(())
    }

    fn set_cap(&mut self, from: u64, max: Option<u32>) -> Result<(), (&'static str, String)> {
        if !self.is_host(from) {
            return Err((
                error_code::FORBIDDEN,
                "only a host may set the cap".to_owned(),
            ));
        }
        let cap = max.unwrap_or(self.config.default_max_participants);
        if cap == 0 || cap > self.config.hard_max_participants {
            return Err((
                error_code::INVALID,
                format!(
                    "max_participants must be 1..={}",
                    self.config.hard_max_participants
                ),
            ));
        }
        if cap != self.max_participants {
            self.max_participants = cap;
            self.append_event(RoomEvent::Cap {
                max_participants: cap,
                by: from,
            });
        }
        Ok(())
    }

    fn participant_mut(&mut self, id: u64) -> Result<&mut Participant, (&'static str, String)> {
        self.participants
            .get_mut(&id)
            .ok_or((error_code::NOT_FOUND, format!("no participant {id}")))
    }

    /// Tells participant `to` to move its SFU sessions `sessions` off their node, which is
    /// draining or down (`reason`, [`satsuma_wire::room::move_reason`]; issue 15). Nothing if it
    /// is not here.
    pub fn order_move(&mut self, to: u64, sessions: Vec<String>, reason: &str) {
        if self.participants.contains_key(&to) {
            self.reply(
                to,
                ServerMessage::Move {
                    sessions,
                    reason: reason.to_owned(),
                },
            );
        }
    }

    fn reply(&mut self, to: u64, msg: ServerMessage) {
        self.outputs.push_back(Output::Reply { to, msg });
    }

    fn error(&mut self, to: u64, code: &str, message: String, refused: Option<&str>) {
        self.reply(
            to,
            ServerMessage::Error {
                code: code.to_owned(),
                message,
                refused: refused.map(str::to_owned),
            },
        );
    }

    fn append_event(&mut self, event: RoomEvent) {
        let owner = event_owner(&event);
        self.seq += 1;
        let seq = self.seq;
        let json = serde_json::to_vec(&EventFrameRef { seq, event: &event })
            .unwrap_or_else(|_| b"{}".to_vec());
        let audience = if self.hidden.is_empty() {
            None
        } else {
            self.audience(&event_subjects(&event))
        };
        self.push_entry(Entry {
            seq,
            body: EntryBody::Event(event),
            wire: Wire::Text(Bytes::from(json)),
            audience,
            owner,
            at: self.now,
        });
    }

    fn append_mls(&mut self, kind: u8, from: u64, payload: &[u8]) {
        self.seq += 1;
        let seq = self.seq;
        let mut buf = Vec::with_capacity(protocol::MlsFrame::HEADER_LEN + payload.len());
        protocol::encode_mls_header(seq, kind, from, &mut buf);
        buf.extend_from_slice(payload);
        let audience = self.audience(&[from]);
        if kind == KIND_KEY_PACKAGE
            && let Some(prev) = self.latest_kp.insert(from, seq)
        {
            // A later KeyPackage from the same participant supersedes its earlier one
            // (`docs/e2ee-relay.md`): it leaves the log, so nobody's KeyPackages can push the
            // others' entries out of the resume window. A commit may still add it (a committer
            // may have built one before the newer KeyPackage reached it): its digest is kept.
            let skip = protocol::MlsFrame::HEADER_LEN + 4;
            let i = self.log.partition_point(|e| e.seq < prev);
            if let Some(Wire::Binary(w)) =
                self.log.get(i).filter(|e| e.seq == prev).map(|e| &e.wire)
                && let Some(kp) = w.get(skip..)
            {
                let old = self.old_kps.entry(from).or_default();
                old.push_back(Sha256::digest(kp).into());
                if old.len() > OLD_KEY_PACKAGES {
                    old.pop_front();
                }
            }
            self.drop_seq(prev);
        }
        self.push_entry(Entry {
            seq,
            body: EntryBody::Mls { kind, from },
            wire: Wire::Binary(Bytes::from(buf)),
            audience,
            owner: Some(from),
            at: self.now,
        });
    }

    /// Removes entry `seq` from anywhere in the log (a superseded one; this is no trim:
    /// resumes from before it stay possible).
    fn drop_seq(&mut self, seq: u64) {
        let i = self.log.partition_point(|e| e.seq < seq);
        if self.log.get(i).is_some_and(|e| e.seq == seq)
            && let Some(old) = self.log.remove(i)
        {
            if let Some(j) = &mut self.journal {
                j.dropped(seq);
            }
            self.forget(&old);
        }
    }

    /// Accounting for an entry that left the log.
    fn forget(&mut self, e: &Entry) {
        self.superseded.remove(&e.seq);
        if let EntryBody::Mls {
            kind: KIND_APPLICATION,
            ..
        } = e.body
        {
            self.chat.forget(e.seq);
        }
        if let Some(k) = state_key(e)
            && self.latest_state.get(&k) == Some(&e.seq)
        {
            self.latest_state.remove(&k);
        }
        if let EntryBody::Mls {
            kind: KIND_KEY_PACKAGE,
            from,
        } = e.body
            && self.latest_kp.get(&from) == Some(&e.seq)
        {
            self.latest_kp.remove(&from);
        }
        self.log_bytes -= e.wire.len();
        if let Some(owner) = e.owner
            && let Some(share) = self.shares.get_mut(&owner)
        {
            share.entries -= 1;
            share.bytes -= e.wire.len();
            if share.entries == 0 {
                self.shares.remove(&owner);
            }
        }
    }

    fn push_entry(&mut self, entry: Entry) {
        let entry = Arc::new(entry);
        if let Some(k) = state_key(&entry)
            && let Some(prev) = self.latest_state.insert(k, entry.seq)
        {
            self.superseded.insert(prev);
        }
        self.log_bytes += entry.wire.len();
        if let Some(owner) = entry.owner {
            let share = self.shares.entry(owner).or_default();
            share.entries += 1;
            share.bytes += entry.wire.len();
        }
        if let Some(j) = &mut self.journal {
            j.appended(&entry);
        }
        self.log.push_back(entry.clone());
        while self.log.len() > self.config.replay_max_entries.max(1)
            || (self.log_bytes > self.config.replay_max_bytes && self.log.len() > 1)
        {
            // Superseded state entries go first: no resume needs them (a later entry of the
            // same kind about the same subject carries the state), so dropping them costs
            // nobody's resume window; then chat messages (best effort, docs/chat.md). Only
            // then does the log age from its front.
            if let Some(seq) = self.oldest_superseded().or_else(|| self.chat.oldest()) {
                self.drop_seq(seq);
            } else if let Some(old) = self.log.pop_front() {
                self.trimmed_upto = self.trimmed_upto.max(old.seq);
                if let Some(j) = &mut self.journal {
                    j.dropped(old.seq);
                }
                self.forget(&old);
            }
        }
        self.outputs.push_back(Output::Broadcast(entry));
    }

    /// The seq of the oldest retained entry a later entry supersedes (see [`state_key`]).
    fn oldest_superseded(&self) -> Option<u64> {
        self.superseded.first().copied()
    }
}

/// What a state entry sets: a later entry with the same key supersedes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum StateKey {
    /// `away` / `back`.
    Presence(u64),
    Hand(u64),
    Speaking(u64),
    Codecs(u64),
    TrackEnabled(u64, String),
    Muted(u64, TrackKind),
    Locked,
    Cap,
}

/// The state an entry sets, if it is a state entry (away/back, hand, speaking, codecs,
/// track enabled, muted, locked, cap); `None` for entries every resume needs.
fn state_key(e: &Entry) -> Option<StateKey> {
    let EntryBody::Event(event) = &e.body else {
        return None;
    };
    // Hidden entries (test hook) are never compacted: their audience differs.
    if e.audience.is_some() {
        return None;
    }
    Some(match event {
        RoomEvent::Away { id } | RoomEvent::Back { id, .. } => StateKey::Presence(*id),
        RoomEvent::Hand { id, .. } => StateKey::Hand(*id),
        RoomEvent::Speaking { id, .. } => StateKey::Speaking(*id),
        RoomEvent::Codecs { id, .. } => StateKey::Codecs(*id),
        RoomEvent::TrackEnabled { id, track_name, .. } => {
            StateKey::TrackEnabled(*id, track_name.clone())
        }
        RoomEvent::Muted { id, kind, .. } => StateKey::Muted(*id, *kind),
        RoomEvent::Locked { .. } => StateKey::Locked,
        RoomEvent::Cap { .. } => StateKey::Cap,
        _ => return None,
    })
}

/// The participant whose message an event records (its share of the log); `None` for what the
/// room itself decides (joins, departures, creators, executes, voids, host changes).
fn event_owner(event: &RoomEvent) -> Option<u64> {
    match event {
        RoomEvent::Session { id, .. }
        | RoomEvent::Published { id, .. }
        | RoomEvent::Unpublished { id, .. }
        | RoomEvent::TrackEnabled { id, .. }
        | RoomEvent::Hand { id, .. }
        | RoomEvent::Speaking { id, .. }
        | RoomEvent::Codecs { id, .. } => Some(*id),
        RoomEvent::Muted { by, .. } | RoomEvent::Locked { by, .. } | RoomEvent::Cap { by, .. } => {
            Some(*by)
        }
        RoomEvent::Joined { .. }
        | RoomEvent::Left { .. }
        | RoomEvent::Away { .. }
        | RoomEvent::Back { .. }
        | RoomEvent::Creator { .. }
        | RoomEvent::Execute { .. }
        | RoomEvent::CommitVoid { .. }
        | RoomEvent::Host { .. } => None,
    }
}

/// The participants an event is about or caused by (for the visibility test hook).
/// `creator` and `execute` concern the whole group and are never hidden.
fn event_subjects(event: &RoomEvent) -> Vec<u64> {
    match event {
        RoomEvent::Joined { id, .. }
        | RoomEvent::Left { id, .. }
        | RoomEvent::Away { id }
        | RoomEvent::Back { id, .. }
        | RoomEvent::Session { id, .. }
        | RoomEvent::Published { id, .. }
        | RoomEvent::Unpublished { id, .. }
        | RoomEvent::TrackEnabled { id, .. }
        | RoomEvent::Hand { id, .. }
        | RoomEvent::Speaking { id, .. }
        | RoomEvent::Codecs { id, .. }
        | RoomEvent::Host { id } => vec![*id],
        RoomEvent::Muted { id, by, .. } => vec![*id, *by],
        RoomEvent::Locked { by, .. } | RoomEvent::Cap { by, .. } => vec![*by],
        RoomEvent::CommitVoid { from, .. } => vec![*from],
        RoomEvent::Creator { .. } | RoomEvent::Execute { .. } => Vec::new(),
    }
}

pub mod chat;
pub mod journal;
pub mod recording;

#[cfg(test)]
mod tests;
