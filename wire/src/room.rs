//! Wire types of the coordinator's WebSocket protocol, version [`PROTOCOL_VERSION`].
//!
//! Shared by the coordinator and its clients (the web client's worker, the bot, tests):
//! JSON control messages in text frames, MLS payloads in binary frames (their framing is
//! in [`crate::relay`], re-exported here). `coordinator/PROTOCOL.md` documents every
//! message; this module is the normative encoding.

use serde::{Deserialize, Serialize};

pub use crate::ice::IceServer;
pub use crate::relay::{
    KIND_APPLICATION, KIND_COMMIT, KIND_KEY_PACKAGE, MlsFrame, client_application_frame,
    client_commit_frame, client_key_package_frame, encode_mls_header, split_commit_payload,
};

/// The protocol version spoken by this coordinator (`hello.v`).
pub const PROTOCOL_VERSION: u32 = 1;

/// WebSocket close codes the coordinator uses (all other connections carry on).
pub mod close {
    /// The participant sent `leave`.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame exceeded the hard transport limit (sent by the WebSocket layer itself).
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The first message was not a valid `hello`, or it did not come in time.
    pub const BAD_HELLO: u16 = 4000;
    /// `hello.v` is not a supported protocol version.
    pub const UNSUPPORTED_VERSION: u16 = 4001;
    /// Too many protocol errors on this connection.
    pub const PROTOCOL_VIOLATION: u16 = 4002;
    /// The join token is invalid, expired, or for another room.
    pub const UNAUTHORIZED: u16 = 4401;
    /// A host removed this participant (it may not rejoin this room while it exists).
    pub const REMOVED: u16 = 4403;
    /// No message arrived within the presence timeout; the participant has left.
    pub const PRESENCE_TIMEOUT: u16 = 4408;
    /// Another connection resumed this participant.
    pub const REPLACED: u16 = 4409;
    /// Resume impossible (unknown participant, bad token, or missed entries no
    /// longer retained): join fresh with a join token.
    pub const RESUME_FAILED: u16 = 4410;
    /// The room is locked.
    pub const ROOM_LOCKED: u16 = 4423;
    /// The room is at its participant cap.
    pub const ROOM_FULL: u16 = 4424;
    /// The connection kept sending faster than its rate limit.
    pub const FLOOD: u16 = 4429;
    /// The connection did not read its messages fast enough (resume to catch up).
    pub const SLOW_CONSUMER: u16 = 4430;

    /// Every close code above by its Rust name (the web client's `CLOSE` object in
    /// `wire.js` is generated from this list).
    pub const ALL: &[(&str, u16)] = &[
        ("NORMAL", NORMAL),
        ("GOING_AWAY", GOING_AWAY),
        ("MESSAGE_TOO_BIG", MESSAGE_TOO_BIG),
        ("BAD_HELLO", BAD_HELLO),
        ("UNSUPPORTED_VERSION", UNSUPPORTED_VERSION),
        ("PROTOCOL_VIOLATION", PROTOCOL_VIOLATION),
        ("UNAUTHORIZED", UNAUTHORIZED),
        ("REMOVED", REMOVED),
        ("PRESENCE_TIMEOUT", PRESENCE_TIMEOUT),
        ("REPLACED", REPLACED),
        ("RESUME_FAILED", RESUME_FAILED),
        ("ROOM_LOCKED", ROOM_LOCKED),
        ("ROOM_FULL", ROOM_FULL),
        ("FLOOD", FLOOD),
        ("SLOW_CONSUMER", SLOW_CONSUMER),
    ];
}

/// Most codec names in a `codecs` message.
pub const MAX_CODECS: usize = 16;
/// Longest codec name in a `codecs` message (bytes).
pub const MAX_CODEC_NAME: usize = 16;

/// Checks a `codecs` list from a client: at most [`MAX_CODECS`] distinct names, each 1 to
/// [`MAX_CODEC_NAME`] bytes of `a-z 0-9 -` (e.g. `vp8`, `h264`, `flexfec-03`).
pub fn check_codec_list(video: &[String]) -> Result<(), String> {
    if video.len() > MAX_CODECS {
        return Err(format!("at most {MAX_CODECS} codecs"));
    }
    for (i, name) in video.iter().enumerate() {
        let ok = (1..=MAX_CODEC_NAME).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(format!(
                "codec names are 1 to {MAX_CODEC_NAME} characters of a-z 0-9 -"
            ));
        }
        if video[..i].contains(name) {
            return Err("codec names must be distinct".to_owned());
        }
    }
    Ok(())
}

/// Error codes carried by [`ServerMessage::Error`].
pub mod error_code {
    /// Not JSON, wrong fields, or a binary frame that does not parse.
    pub const MALFORMED: &str = "malformed";
    /// A JSON message with an unknown `type`.
    pub const UNKNOWN_TYPE: &str = "unknown_type";
    /// The frame is larger than the configured limit.
    pub const TOO_LARGE: &str = "too_large";
    /// The participant lacks the permission for this message.
    pub const FORBIDDEN: &str = "forbidden";
    /// The target participant or track does not exist.
    pub const NOT_FOUND: &str = "not_found";
    /// A field value is out of range or inconsistent with room state.
    pub const INVALID: &str = "invalid";
    /// Over the per-connection rate limit; the message was dropped.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// A binary MLS payload whose MLS framing is not what the kind requires.
    pub const MLS_FRAMING: &str = "mls_framing";
    /// `hello` sent twice.
    pub const ALREADY_JOINED: &str = "already_joined";
    /// `record`: this coordinator is not configured to record (no recorder command).
    pub const RECORDING_UNAVAILABLE: &str = "recording_unavailable";
    /// `record` `start`: the room is already being recorded (or a recording is starting or
    /// stopping); `stop`: nothing to stop.
    pub const RECORDING_STATE: &str = "recording_state";
    /// The recorder a host started could not start or ended before it joined the room
    /// (sent to that host; `refused` is `record`).
    pub const RECORDING_FAILED: &str = "recording_failed";
    /// An MLS group message (`ready`, `commit_failed`) from a participant the
    /// coordinator does not count as a group member.
    pub const NOT_MEMBER: &str = "not_member";
    /// The room's resume log is under pressure and this participant already holds its share
    /// of it: the message (which would have logged an entry) was dropped.
    pub const LOG_FULL: &str = "log_full";

    /// Every error code above by its Rust name (the web client's `ERROR_CODE` object in
    /// `wire.js` is generated from this list).
    pub const ALL: &[(&str, &str)] = &[
        ("MALFORMED", MALFORMED),
        ("UNKNOWN_TYPE", UNKNOWN_TYPE),
        ("TOO_LARGE", TOO_LARGE),
        ("FORBIDDEN", FORBIDDEN),
        ("NOT_FOUND", NOT_FOUND),
        ("INVALID", INVALID),
        ("RATE_LIMITED", RATE_LIMITED),
        ("MLS_FRAMING", MLS_FRAMING),
        ("ALREADY_JOINED", ALREADY_JOINED),
        ("RECORDING_UNAVAILABLE", RECORDING_UNAVAILABLE),
        ("RECORDING_STATE", RECORDING_STATE),
        ("RECORDING_FAILED", RECORDING_FAILED),
        ("NOT_MEMBER", NOT_MEMBER),
        ("LOG_FULL", LOG_FULL),
    ];
}

/// `commit_rejected.reason` values.
pub mod commit_rejected {
    /// The commit was created in an epoch other than the room's current one.
    pub const STALE_EPOCH: &str = "stale_epoch";
    /// The commit is for another group than the room's.
    pub const WRONG_GROUP: &str = "wrong_group";
    /// The room has no group yet.
    pub const NO_GROUP: &str = "no_group";
    /// The sender is not a member of the room's group.
    pub const NOT_MEMBER: &str = "not_member";
    /// The commit's MLS framing could not be read.
    pub const MALFORMED: &str = "malformed";
    /// The Welcome adds a KeyPackage that was not announced in the room log.
    pub const UNKNOWN_KEY_PACKAGE: &str = "unknown_key_package";

    /// Every reason above by its Rust name.
    pub const ALL: &[(&str, &str)] = &[
        ("STALE_EPOCH", STALE_EPOCH),
        ("WRONG_GROUP", WRONG_GROUP),
        ("NO_GROUP", NO_GROUP),
        ("NOT_MEMBER", NOT_MEMBER),
        ("MALFORMED", MALFORMED),
        ("UNKNOWN_KEY_PACKAGE", UNKNOWN_KEY_PACKAGE),
    ];
}

/// What a participant may do; carried in the join token's `perms` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Permissions {
    /// May create SFU sessions, push tracks and announce them, report speaking.
    pub publish: bool,
    /// May create SFU sessions and pull other members' tracks.
    pub subscribe: bool,
    /// Is a host: may mute others, remove participants, lock the room and set its cap.
    pub host: bool,
}

impl Permissions {
    /// Parses the `perms` claim (`["publish","subscribe","host"]`); unknown names are ignored.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Self {
        let mut p = Self::default();
        for n in names {
            match n.as_ref() {
                "publish" => p.publish = true,
                "subscribe" => p.subscribe = true,
                "host" => p.host = true,
                _ => {}
            }
        }
        p
    }

    /// The claim form of these permissions.
    pub fn to_names(self) -> Vec<String> {
        let mut v = Vec::new();
        if self.publish {
            v.push("publish".to_owned());
        }
        if self.subscribe {
            v.push("subscribe".to_owned());
        }
        if self.host {
            v.push("host".to_owned());
        }
        v
    }
}

/// Kind of a published track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    /// Microphone.
    Audio,
    /// Camera.
    Video,
    /// Screen share.
    Screenshare,
}

/// `hello.resume`: continue an earlier participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The participant id from `welcome`.
    pub participant_id: u64,
    /// The `resume_token` from `welcome`.
    pub resume_token: String,
    /// The highest `seq` the client has processed (0 if none).
    pub last_seq: u64,
}

/// Client → server JSON messages (text frames), tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// First message on a connection: join with `token`, or resume with `resume`.
    Hello {
        /// Protocol version, must be [`PROTOCOL_VERSION`].
        v: u32,
        /// Join token (JWT) for a fresh join.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Resume an earlier participant instead of joining fresh.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Resume>,
        /// Test hook (only with `--test-hooks`; otherwise the hello is refused like one
        /// with an unknown field): everything about this new participant is delivered
        /// only to itself and participant `test_visible_only_to`, as a hostile
        /// coordinator would announce a ghost.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test_visible_only_to: Option<u64>,
    },
    /// Heartbeat; answered with `pong`. Any message counts as a sign of life.
    Ping {
        /// Echoed back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        t: Option<u64>,
    },
    /// Leave the room now.
    Leave {},
    /// Announce a track pushed to one of this participant's SFU sessions.
    Publish {
        /// The SFU session (must have been created by this participant through the proxy).
        session_id: String,
        /// The SFU track name.
        track_name: String,
        /// Audio, video or screenshare.
        kind: TrackKind,
        /// Whether it is currently enabled (unmuted).
        #[serde(default = "yes")]
        enabled: bool,
    },
    /// Withdraw a published track.
    Unpublish {
        /// The track name.
        track_name: String,
    },
    /// Enable or disable (mute) one of this participant's tracks.
    SetTrack {
        /// The track name.
        track_name: String,
        /// New state.
        enabled: bool,
    },
    /// Raise or lower this participant's hand.
    Hand {
        /// Raised?
        raised: bool,
    },
    /// Voice activity of this participant.
    Speaking {
        /// Speaking?
        speaking: bool,
    },
    /// The video codecs this participant's browser decodes (sent once after `welcome`;
    /// publishers pick a codec every participant decodes). See [`check_codec_list`].
    Codecs {
        /// Lowercase codec names without `video/`, e.g. `["vp8", "h264", "vp9", "av1"]`.
        video: Vec<String>,
        /// The codec this participant's video goes out in now (same name rules), if it
        /// sends video: a subscriber that does not decode it can say so.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sending: Option<String>,
    },
    /// Disable all of `target`'s tracks of `kind` (host, or `target` is self).
    Mute {
        /// Participant id.
        target: u64,
        /// Which tracks (default audio).
        #[serde(default = "audio")]
        kind: TrackKind,
    },
    /// Remove `target` from the room (host only).
    Remove {
        /// Participant id.
        target: u64,
    },
    /// Lock or unlock the room (host only). A locked room refuses joins by non-hosts.
    Lock {
        /// Locked?
        locked: bool,
    },
    /// Start or stop recording the room (host only; refused with `recording_unavailable`
    /// when the coordinator has no recorder configured). `start` makes the coordinator run
    /// a recorder that joins the room as a visible member (`recorder: true`); `stop` makes
    /// it leave. At most one recorder per room.
    Record {
        /// What to do.
        action: RecordAction,
    },
    /// Set or clear the participant cap (host only).
    SetCap {
        /// New cap; `null` = the server default.
        max_participants: Option<u32>,
    },
    /// This member processed the commit (or Welcome, or group creation) to `epoch`.
    Ready {
        /// The epoch the member is now in.
        epoch: u64,
        /// The group (hex); a ready for another group is ignored.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group_id: Option<String>,
    },
    /// This member could not process the sequenced commit created at `epoch` (it is
    /// still in `epoch`, with its MLS state intact).
    CommitFailed {
        /// The epoch the failed commit was created in.
        epoch: u64,
    },
}

fn yes() -> bool {
    true
}

/// `record.action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordAction {
    /// Start a recording.
    Start,
    /// Stop the recording.
    Stop,
}

fn audio() -> TrackKind {
    TrackKind::Audio
}

impl ClientMessage {
    /// The `type` tag, for metrics and errors.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Ping { .. } => "ping",
            Self::Leave {} => "leave",
            Self::Publish { .. } => "publish",
            Self::Unpublish { .. } => "unpublish",
            Self::SetTrack { .. } => "set_track",
            Self::Hand { .. } => "hand",
            Self::Speaking { .. } => "speaking",
            Self::Codecs { .. } => "codecs",
            Self::Mute { .. } => "mute",
            Self::Remove { .. } => "remove",
            Self::Lock { .. } => "lock",
            Self::Record { .. } => "record",
            Self::SetCap { .. } => "set_cap",
            Self::Ready { .. } => "ready",
            Self::CommitFailed { .. } => "commit_failed",
        }
    }

    /// The JSON `type` names this version accepts.
    pub const TYPES: &'static [&'static str] = &[
        "hello",
        "ping",
        "leave",
        "publish",
        "unpublish",
        "set_track",
        "hand",
        "speaking",
        "codecs",
        "mute",
        "remove",
        "lock",
        "record",
        "set_cap",
        "ready",
        "commit_failed",
    ];
}

/// Why a participant left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// It sent `leave`.
    Left,
    /// Nothing heard from it within the presence timeout.
    Timeout,
    /// A host removed it.
    Removed,
    /// It tried to resume but missed entries no longer retained; it rejoins fresh.
    ResumeFailed,
}

/// A published track as the room knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// SFU track name.
    pub track_name: String,
    /// SFU session that carries it.
    pub session_id: String,
    /// Audio, video or screenshare.
    pub kind: TrackKind,
    /// Unmuted?
    pub enabled: bool,
}

/// A participant as seen in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    /// Participant id (per room, in join order).
    pub id: u64,
    /// Display name (from the token).
    pub name: String,
    /// Join time, Unix milliseconds.
    pub joined_at_ms: u64,
    /// Host?
    pub host: bool,
    /// SFU sessions it created (through the proxy).
    pub sfu_sessions: Vec<String>,
    /// Published tracks.
    pub tracks: Vec<TrackInfo>,
    /// Hand raised?
    pub hand_raised: bool,
    /// Speaking?
    pub speaking: bool,
    /// The video codecs it decodes (its `codecs` message); absent until it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codecs: Option<Vec<String>>,
    /// The codec its video goes out in (its `codecs` message's `sending`), if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sending: Option<String>,
    /// Its connection ended without a leave and it has not resumed (the latest of its
    /// `away`/`back` entries is `away`).
    #[serde(default)]
    pub away: bool,
    /// It joined as a recorder (its join token carries the `recorder` grant): it pulls and
    /// decrypts every track and stores them, and every client shows that the call is being
    /// recorded and by whom. Absent (false) for everyone else.
    #[serde(default, skip_serializing_if = "is_false")]
    pub recorder: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The MLS group the room currently relays for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// Group id, hex.
    pub group_id: String,
    /// Current epoch (after the last accepted commit).
    pub epoch: u64,
    /// Participant named creator.
    pub creator: u64,
}

/// Room state at a given `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Participants in join order.
    pub participants: Vec<ParticipantInfo>,
    /// Locked?
    pub locked: bool,
    /// Participant cap.
    pub max_participants: u32,
    /// The MLS group, if one has been named.
    pub group: Option<GroupInfo>,
}

/// Limits the client must respect, sent in `welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Send something (e.g. `ping`) at least this often.
    pub heartbeat_interval_ms: u64,
    /// Silence longer than this is a leave.
    pub presence_timeout_ms: u64,
    /// Largest accepted text frame.
    pub max_text_bytes: usize,
    /// Largest accepted binary frame.
    pub max_binary_bytes: usize,
    /// Sustained messages per second allowed.
    pub messages_per_second: u32,
    /// How many entries are kept for resume.
    pub replay_window: usize,
    /// Largest accepted KeyPackage frame (0 from older servers: unknown).
    #[serde(default)]
    pub max_key_package_bytes: usize,
    /// Sustained bytes per second allowed (0 from older servers: unknown).
    #[serde(default)]
    pub bytes_per_second: u64,
}

/// Server → client JSON messages that are replies to one connection (no `seq`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Reply to a fresh `hello`.
    Welcome {
        /// Protocol version.
        v: u32,
        /// Room name.
        room: String,
        /// This participant's id.
        participant_id: u64,
        /// Secret for `hello.resume` and for `/sfu` calls (`Authorization: Bearer`).
        resume_token: String,
        /// The snapshot reflects every entry up to and including this `seq`;
        /// entries with a higher `seq` follow on the socket, starting with this
        /// participant's own `joined`.
        seq: u64,
        /// Room state at `seq`.
        snapshot: Snapshot,
        /// Limits.
        limits: Limits,
        /// STUN/TURN servers for this participant's media connection
        /// (`RTCConfiguration.iceServers`), with its own short-lived TURN credentials; empty
        /// when the coordinator has no TURN configuration.
        #[serde(default)]
        ice_servers: Vec<IceServer>,
        /// Unix seconds when the TURN credentials in `ice_servers` expire (absent: none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ice_expires_at: Option<u64>,
    },
    /// Reply to a resuming `hello`; the missed entries follow.
    Resumed {
        /// Participant id.
        participant_id: u64,
        /// Entries after this `seq` follow (the client's `last_seq`).
        from_seq: u64,
        /// The room's current `seq` at resume time.
        seq: u64,
        /// Limits.
        limits: Limits,
        /// Fresh STUN/TURN servers and credentials, as in `welcome`.
        #[serde(default)]
        ice_servers: Vec<IceServer>,
        /// Unix seconds when the TURN credentials in `ice_servers` expire (absent: none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ice_expires_at: Option<u64>,
    },
    /// Reply to `ping`.
    Pong {
        /// Echo of `ping.t`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        t: Option<u64>,
    },
    /// A message from this connection was refused; nothing else changed.
    Error {
        /// Machine-readable code (see [`error_code`]).
        code: String,
        /// Human-readable detail.
        message: String,
        /// The `type` (or binary kind) of the refused message, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refused: Option<String>,
    },
    /// A commit was not accepted into the log.
    CommitRejected {
        /// Epoch the commit was created at (from its MLS framing; `null` if unreadable).
        epoch: Option<u64>,
        /// The room's current epoch (`null` if no group).
        current_epoch: Option<u64>,
        /// `stale_epoch`, `wrong_group`, `no_group`, `not_member`, `malformed`,
        /// `unknown_key_package`.
        reason: String,
        /// Human-readable detail, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// Dynacast: which simulcast layers of one of this participant's published video tracks
    /// some subscriber can take. The publisher keeps its encodings up to `max_rid` on and
    /// turns the ones above it off; `max_rid: null` (nobody pulls the track) keeps only its
    /// lowest encoding on.
    Layers {
        /// The SFU session that publishes the track.
        session_id: String,
        /// Its SFU track name.
        track_name: String,
        /// `q`, `h` or `f`; `null`: no subscriber.
        max_rid: Option<String>,
    },
    /// Move off an SFU node (issue 15): the node that holds `sessions` (this participant's)
    /// is draining or down. The client makes a new SFU session (`POST /sfu/sessions/new`:
    /// the coordinator places it on a live node), pushes its tracks there and announces
    /// them (`unpublish` the old names, `publish` the new), pulls again what it pulled, then
    /// deletes the old sessions (`DELETE /sfu/sessions/{id}`). Its MLS state stays as it is:
    /// no rejoin. Sent again while the client still holds a session on that node.
    Move {
        /// The client's SFU sessions on the node it must leave.
        sessions: Vec<String>,
        /// Why: [`move_reason`].
        reason: String,
    },
}

/// `move.reason` values.
pub mod move_reason {
    /// The node is draining (`SIGTERM` or `satsuma-sfu drain`): it takes no new sessions and
    /// exits when empty or at its deadline.
    pub const DRAINING: &str = "draining";
    /// The node does not answer its health checks (crashed, killed, unreachable).
    pub const DOWN: &str = "down";
}

/// Entries of the room log (JSON ones); each goes out as `{"seq":N,"type":...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RoomEvent {
    /// A participant entered the room.
    Joined {
        /// Participant id.
        id: u64,
        /// Display name.
        name: String,
        /// Unix ms.
        joined_at_ms: u64,
        /// Host?
        host: bool,
        /// A recorder (see [`ParticipantInfo::recorder`])? Absent: no.
        #[serde(default, skip_serializing_if = "is_false")]
        recorder: bool,
    },
    /// A participant left.
    Left {
        /// Participant id.
        id: u64,
        /// Why.
        reason: LeaveReason,
    },
    /// `id`'s connection ended without a leave: it stays for its presence timeout and
    /// may resume (the designated committer skips it meanwhile).
    Away {
        /// Participant id.
        id: u64,
    },
    /// `id` resumed after an `away`; its replay starts after `from_seq`.
    Back {
        /// Participant id.
        id: u64,
        /// The `last_seq` of its resume: the last entry it had processed.
        from_seq: u64,
    },
    /// `id` creates MLS group `group_id` at epoch 0.
    Creator {
        /// Participant id.
        id: u64,
        /// Group id, hex.
        group_id: String,
    },
    /// Senders switch their media keys to `epoch` now.
    Execute {
        /// The epoch.
        epoch: u64,
    },
    /// The commit `from` created at `epoch` (the latest one) is void: a member could
    /// not process it and nobody else applied it. The group is at `epoch` again.
    CommitVoid {
        /// The epoch the void commit was created in (the group's epoch now).
        epoch: u64,
        /// Its sender, no longer a group member.
        from: u64,
    },
    /// Participant `id` owns SFU session `session_id`.
    Session {
        /// Participant id.
        id: u64,
        /// SFU session id.
        session_id: String,
    },
    /// A track was announced.
    Published {
        /// Participant id.
        id: u64,
        /// The track.
        track: TrackInfo,
    },
    /// A track was withdrawn.
    Unpublished {
        /// Participant id.
        id: u64,
        /// Track name.
        track_name: String,
    },
    /// A track was enabled or disabled by its owner.
    TrackEnabled {
        /// Participant id.
        id: u64,
        /// Track name.
        track_name: String,
        /// New state.
        enabled: bool,
    },
    /// `by` muted `id`'s tracks of `kind`: `id` must stop sending them.
    Muted {
        /// Target participant.
        id: u64,
        /// Who muted.
        by: u64,
        /// Which tracks.
        kind: TrackKind,
    },
    /// Hand raised or lowered.
    Hand {
        /// Participant id.
        id: u64,
        /// Raised?
        raised: bool,
    },
    /// Voice activity.
    Speaking {
        /// Participant id.
        id: u64,
        /// Speaking?
        speaking: bool,
    },
    /// The video codecs `id` decodes (logged when they change).
    Codecs {
        /// Participant id.
        id: u64,
        /// Lowercase codec names without `video/`.
        video: Vec<String>,
        /// The codec its video goes out in now, if it said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sending: Option<String>,
    },
    /// `id` became a host (the previous host left).
    Host {
        /// Participant id.
        id: u64,
    },
    /// The room was locked or unlocked.
    Locked {
        /// Locked?
        locked: bool,
        /// By whom.
        by: u64,
    },
    /// The participant cap changed.
    Cap {
        /// The cap now in force.
        max_participants: u32,
        /// By whom.
        by: u64,
    },
}

impl RoomEvent {
    /// The `type` tag.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Joined { .. } => "joined",
            Self::Left { .. } => "left",
            Self::Away { .. } => "away",
            Self::Back { .. } => "back",
            Self::Creator { .. } => "creator",
            Self::Execute { .. } => "execute",
            Self::CommitVoid { .. } => "commit_void",
            Self::Session { .. } => "session",
            Self::Published { .. } => "published",
            Self::Unpublished { .. } => "unpublished",
            Self::TrackEnabled { .. } => "track_enabled",
            Self::Muted { .. } => "muted",
            Self::Hand { .. } => "hand",
            Self::Speaking { .. } => "speaking",
            Self::Codecs { .. } => "codecs",
            Self::Host { .. } => "host",
            Self::Locked { .. } => "locked",
            Self::Cap { .. } => "cap",
        }
    }

    /// The JSON `type` names of the log's JSON entries.
    pub const TYPES: &'static [&'static str] = &[
        "joined",
        "left",
        "away",
        "back",
        "creator",
        "execute",
        "commit_void",
        "session",
        "published",
        "unpublished",
        "track_enabled",
        "muted",
        "hand",
        "speaking",
        "codecs",
        "host",
        "locked",
        "cap",
    ];
}

impl ServerMessage {
    /// The `type` tag.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Welcome { .. } => "welcome",
            Self::Resumed { .. } => "resumed",
            Self::Pong { .. } => "pong",
            Self::Error { .. } => "error",
            Self::CommitRejected { .. } => "commit_rejected",
            Self::Layers { .. } => "layers",
            Self::Move { .. } => "move",
        }
    }

    /// The JSON `type` names of the direct replies: a server text frame with one of these
    /// types is a [`ServerMessage`], any other is a log entry ([`EventFrame`]).
    pub const TYPES: &'static [&'static str] = &[
        "welcome",
        "resumed",
        "pong",
        "error",
        "commit_rejected",
        "layers",
        "move",
    ];
}

/// A JSON log entry as sent: `seq` plus the flattened event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventFrame {
    /// Per-room sequence number.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: RoomEvent,
}

/// Any text frame the server sends, decoded (for clients).
#[derive(Debug, Clone, PartialEq)]
pub enum ServerText {
    /// A log entry.
    Event(EventFrame),
    /// A direct reply.
    Direct(ServerMessage),
}

impl ServerText {
    /// Decodes a server text frame: entries have a `seq` field, replies do not.
    pub fn decode(text: &str) -> Result<Self, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        if is_direct(&value) {
            Ok(Self::Direct(serde_json::from_value(value)?))
        } else {
            Ok(Self::Event(serde_json::from_value(value)?))
        }
    }
}

fn is_direct(v: &serde_json::Value) -> bool {
    v.get("type")
        .and_then(|t| t.as_str())
        .is_some_and(|t| ServerMessage::TYPES.contains(&t))
}

/// Why a client text frame is not a [`ClientMessage`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientDecodeError {
    /// A JSON object whose `type` this version does not know (shown cut to 40
    /// characters).
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// Not JSON, not an object with a string `type`, or wrong fields for a known type.
    #[error("{detail}")]
    Malformed {
        /// The known `type` of the refused message, if it had one.
        refused: Option<&'static str>,
        /// What serde said.
        detail: String,
    },
}

impl ClientDecodeError {
    /// The [`error_code`] of the refusal.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownType(_) => error_code::UNKNOWN_TYPE,
            Self::Malformed { .. } => error_code::MALFORMED,
        }
    }

    /// The `refused` field of the refusal.
    pub fn refused(&self) -> Option<&'static str> {
        match self {
            Self::UnknownType(_) => None,
            Self::Malformed { refused, .. } => *refused,
        }
    }
}

impl ClientMessage {
    /// Decodes a client text frame, telling an unknown `type` from other malformed JSON.
    pub fn decode(text: &str) -> Result<Self, ClientDecodeError> {
        let err = match serde_json::from_str::<Self>(text) {
            Ok(m) => return Ok(m),
            Err(e) => e,
        };
        #[derive(Deserialize)]
        struct Tagged {
            #[serde(rename = "type")]
            ty: String,
        }
        match serde_json::from_str::<Tagged>(text) {
            Ok(Tagged { ty }) => match Self::TYPES.iter().find(|t| **t == ty) {
                Some(known) => Err(ClientDecodeError::Malformed {
                    refused: Some(known),
                    detail: err.to_string(),
                }),
                None => {
                    let mut shown: String = ty.chars().take(40).collect();
                    if shown.len() < ty.len() {
                        shown.push('…');
                    }
                    Err(ClientDecodeError::UnknownType(shown))
                }
            },
            Err(_) => Err(ClientDecodeError::Malformed {
                refused: None,
                detail: err.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn codec_lists_are_bounded_and_named_plainly() {
        let l = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(check_codec_list(&l(&["vp8", "h264", "vp9", "av1", "flexfec-03"])).is_ok());
        assert!(check_codec_list(&[]).is_ok());
        assert!(check_codec_list(&l(&["H264"])).is_err());
        assert!(check_codec_list(&l(&["video/vp8"])).is_err());
        assert!(check_codec_list(&l(&["vp8\u{0}"])).is_err());
        assert!(check_codec_list(&l(&["é"])).is_err());
        assert!(check_codec_list(&l(&[&"a".repeat(MAX_CODEC_NAME)])).is_ok());
        assert!(check_codec_list(&l(&[&"a".repeat(MAX_CODEC_NAME + 1)])).is_err());
        assert!(check_codec_list(&l(&["vp8", "vp8"])).is_err());
        let many: Vec<String> = (0..=MAX_CODECS).map(|i| format!("c{i}")).collect();
        assert!(check_codec_list(&many[..MAX_CODECS]).is_ok());
        assert!(check_codec_list(&many).is_err());
        // The message itself: unknown fields and wrong types are refused like any other.
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"codecs","video":["vp8"]}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Codecs {
                video: l(&["vp8"]),
                sending: None
            }
        );
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"codecs","video":["vp8"],"sending":"vp8"}"#).unwrap();
        assert!(matches!(m, ClientMessage::Codecs { sending: Some(s), .. } if s == "vp8"));
        assert!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"codecs","video":"vp8"}"#).is_err()
        );
        assert!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"codecs","video":[],"x":1}"#).is_err()
        );
    }

    #[test]
    fn layers_message_names_the_track_and_a_nullable_rid() {
        let m = ServerMessage::Layers {
            session_id: "s".into(),
            track_name: "cam".into(),
            max_rid: None,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(
            text,
            r#"{"type":"layers","session_id":"s","track_name":"cam","max_rid":null}"#
        );
        assert_eq!(ServerText::decode(&text).unwrap(), ServerText::Direct(m));
    }

    #[test]
    fn client_messages_parse() {
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"hello","v":1,"token":"abc"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Hello {
                v: 1,
                token: Some("abc".into()),
                resume: None,
                test_visible_only_to: None,
            }
        );
        let m: ClientMessage = serde_json::from_str(r#"{"type":"leave"}"#).unwrap();
        assert_eq!(m, ClientMessage::Leave {});
        let m: ClientMessage = serde_json::from_str(r#"{"type":"mute","target":3}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Mute {
                target: 3,
                kind: TrackKind::Audio
            }
        );
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"nope"}"#).is_err());
        assert!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"hand","raised":true,"x":1}"#)
                .is_err()
        );
    }

    #[test]
    fn type_names_match_serde_tags() {
        let samples = [
            r#"{"type":"ping"}"#,
            r#"{"type":"leave"}"#,
            r#"{"type":"hand","raised":true}"#,
            r#"{"type":"ready","epoch":3}"#,
            r#"{"type":"commit_failed","epoch":3}"#,
            r#"{"type":"set_cap","max_participants":null}"#,
        ];
        for s in samples {
            let m: ClientMessage = serde_json::from_str(s).unwrap();
            let tag = serde_json::to_value(&m).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned();
            assert_eq!(tag, m.type_name());
            assert!(ClientMessage::TYPES.contains(&m.type_name()));
        }
    }

    #[test]
    fn event_frames_flatten_seq() {
        let f = EventFrame {
            seq: 9,
            event: RoomEvent::Left {
                id: 4,
                reason: LeaveReason::Timeout,
            },
        };
        let s = serde_json::to_string(&f).unwrap();
        assert_eq!(s, r#"{"seq":9,"type":"left","id":4,"reason":"timeout"}"#);
        assert_eq!(ServerText::decode(&s).unwrap(), ServerText::Event(f));
        let pong = serde_json::to_string(&ServerMessage::Pong { t: Some(1) }).unwrap();
        assert_eq!(
            ServerText::decode(&pong).unwrap(),
            ServerText::Direct(ServerMessage::Pong { t: Some(1) })
        );
    }

    #[test]
    fn mls_frames_round_trip() {
        let f = MlsFrame {
            seq: 0x0102030405060708,
            kind: KIND_COMMIT,
            from: 42,
            payload: vec![1, 2, 3],
        };
        let bytes = f.encode();
        assert_eq!(bytes.len(), 20);
        assert_eq!(MlsFrame::decode(&bytes), Some(f));
        assert_eq!(MlsFrame::decode(&bytes[..16]), None);
    }

    #[test]
    fn decode_tells_unknown_types_from_malformed() {
        let code = |text: &str| {
            let e = ClientMessage::decode(text).unwrap_err();
            (e.code(), e.refused())
        };
        assert_eq!(code(r#"{"type":"warp"}"#), (error_code::UNKNOWN_TYPE, None));
        assert_eq!(
            code(r#"{"type":"hand","raised":1}"#),
            (error_code::MALFORMED, Some("hand"))
        );
        assert_eq!(code("nope"), (error_code::MALFORMED, None));
        assert_eq!(code(r#"{"kind":"hand"}"#), (error_code::MALFORMED, None));
        let long = format!(r#"{{"type":"{}"}}"#, "x".repeat(100));
        assert_eq!(
            ClientMessage::decode(&long),
            Err(ClientDecodeError::UnknownType(format!(
                "{}…",
                "x".repeat(40)
            )))
        );
        assert_eq!(
            ClientMessage::decode(r#"{"type":"leave"}"#),
            Ok(ClientMessage::Leave {})
        );
    }

    #[test]
    fn commit_payload_split() {
        let frame = client_commit_frame(b"commit", b"welcome");
        assert_eq!(
            split_commit_payload(&frame[1..]),
            Some((&b"commit"[..], &b"welcome"[..]))
        );
        assert_eq!(split_commit_payload(&[0, 0, 0, 9, 1]), None);
        assert_eq!(split_commit_payload(&[0, 0]), None);
    }
}
