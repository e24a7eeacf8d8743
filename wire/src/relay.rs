//! The E2EE relay wire format (`docs/e2ee-relay.md`): the binary frames that carry MLS
//! handshake messages through the coordinator's room log, and the typed log entries the
//! E2EE core consumes.
//!
//! Client → server: `u8 kind ‖ payload`. Server → client:
//! `u64 BE seq ‖ u8 kind ‖ u64 BE from ‖ payload`. Kind 1 (KeyPackage): payload is the
//! KeyPackage `MLSMessage`. Kind 2 (Commit): payload is
//! `u32 BE commit_len ‖ commit MLSMessage ‖ welcome MLSMessage (may be empty)`. Kind 3
//! (application): payload is one MLS application message (`MLSMessage` in `PrivateMessage`
//! framing) carrying an end-to-end encrypted chat message (`docs/chat.md`); it is not a
//! handshake message, so [`Handshake`] refuses it and [`ApplicationFrame`] decodes it.
//!
//! Two views of the same bytes: the coordinator relays payloads it does not interpret
//! ([`MlsFrame`], [`client_commit_frame`], [`split_commit_payload`]); members decode them
//! strictly ([`Handshake`], [`ServerFrame`]). The JSON entries (`joined`, `left`, `away`,
//! `back`, `creator`, `execute`, `commit_void`) come from the coordinator's JSON protocol
//! ([`crate::room::RoomEvent`]) and become [`Entry`] values with [`Entry::from_event`].
//! Decoding never panics; every malformed frame is a [`RelayError`].

use crate::room::RoomEvent;

/// Binary kind of a KeyPackage frame (a KeyPackage `MLSMessage`).
pub const KIND_KEY_PACKAGE: u8 = 1;
/// Binary kind of a Commit frame
/// (`u32 BE commit_len ‖ commit MLSMessage ‖ welcome MLSMessage (may be empty)`).
pub const KIND_COMMIT: u8 = 2;
/// Binary kind of an application frame: one MLS application message (`PrivateMessage`)
/// carrying an end-to-end encrypted chat message. The coordinator relays it in the room's
/// order like the handshake kinds, but cannot read it (`docs/chat.md`).
pub const KIND_APPLICATION: u8 = 3;
/// Largest application frame (kind byte included) a coordinator accepts by default: a chat
/// message of [`MAX_CHAT_TEXT_BYTES`] plus the MLS framing, signature and padding fits.
pub const MAX_APPLICATION_FRAME: usize = 8 << 10;
/// Longest chat text (UTF-8 bytes) a client sends; longer text is refused before encryption.
pub const MAX_CHAT_TEXT_BYTES: usize = 4000;
/// Largest payload accepted in a binary frame (1 MiB): a Welcome with an inline
/// ratchet tree for a few hundred members fits easily.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Header length of a server → client binary frame (`seq ‖ kind ‖ from`).
pub const SERVER_HEADER_LEN: usize = 17;

/// Why a binary frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// Shorter than its fixed header.
    #[error("frame too short: {0} bytes")]
    TooShort(usize),
    /// A kind other than 1 or 2.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A commit length pointing past the end of the frame.
    #[error("commit length {len} exceeds the {available} bytes available")]
    BadCommitLength {
        /// Declared length.
        len: usize,
        /// Bytes after the length field.
        available: usize,
    },
    /// An empty KeyPackage or commit.
    #[error("empty MLS message")]
    Empty,
    /// Payload over [`MAX_PAYLOAD`].
    #[error("payload of {0} bytes is too large")]
    TooLarge(usize),
}

/// An MLS handshake payload (both directions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// A KeyPackage `MLSMessage`.
    KeyPackage(Vec<u8>),
    /// A Commit `MLSMessage` and its Welcome `MLSMessage` (empty if nobody is added).
    Commit {
        /// The commit.
        commit: Vec<u8>,
        /// The Welcome, or empty.
        welcome: Vec<u8>,
    },
}

impl Handshake {
    /// The binary kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Handshake::KeyPackage(_) => KIND_KEY_PACKAGE,
            Handshake::Commit { .. } => KIND_COMMIT,
        }
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Handshake::KeyPackage(kp) => out.extend_from_slice(kp),
            Handshake::Commit { commit, welcome } => write_commit_payload(commit, welcome, out),
        }
    }

    fn decode_payload(kind: u8, payload: &[u8]) -> Result<Self, RelayError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(RelayError::TooLarge(payload.len()));
        }
        match kind {
            KIND_KEY_PACKAGE => {
                if payload.is_empty() {
                    return Err(RelayError::Empty);
                }
                Ok(Handshake::KeyPackage(payload.to_vec()))
            }
            KIND_COMMIT => {
                let (commit, welcome) = try_split_commit_payload(payload)?;
                if commit.is_empty() {
                    return Err(RelayError::Empty);
                }
                Ok(Handshake::Commit {
                    commit: commit.to_vec(),
                    welcome: welcome.to_vec(),
                })
            }
            other => Err(RelayError::UnknownKind(other)),
        }
    }

    /// Client → server frame: `u8 kind ‖ payload`.
    pub fn encode_client_frame(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.payload_len());
        out.push(self.kind());
        self.encode_payload(&mut out);
        out
    }

    /// Decode a client → server frame (what the coordinator receives).
    pub fn decode_client_frame(frame: &[u8]) -> Result<Self, RelayError> {
        let (kind, payload) = frame.split_first().ok_or(RelayError::TooShort(0))?;
        Self::decode_payload(*kind, payload)
    }

    fn payload_len(&self) -> usize {
        match self {
            Handshake::KeyPackage(kp) => kp.len(),
            Handshake::Commit { commit, welcome } => 4 + commit.len() + welcome.len(),
        }
    }
}

/// A server → client binary frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    /// Log position.
    pub seq: u64,
    /// The participant that sent the handshake message.
    pub from: u64,
    /// The handshake message.
    pub handshake: Handshake,
}

impl ServerFrame {
    /// `u64 BE seq ‖ u8 kind ‖ u64 BE from ‖ payload`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SERVER_HEADER_LEN + self.handshake.payload_len());
        encode_mls_header(self.seq, self.handshake.kind(), self.from, &mut out);
        self.handshake.encode_payload(&mut out);
        out
    }

    /// Decode a server → client binary frame.
    pub fn decode(frame: &[u8]) -> Result<Self, RelayError> {
        let (seq, kind, from, payload) = split_server_frame(frame)?;
        Ok(Self {
            seq,
            from,
            handshake: Handshake::decode_payload(kind, payload)?,
        })
    }

    /// As a log entry.
    pub fn into_entry(self) -> Entry {
        match self.handshake {
            Handshake::KeyPackage(key_package) => Entry::KeyPackage {
                seq: self.seq,
                from: self.from,
                key_package,
            },
            Handshake::Commit { commit, welcome } => Entry::Commit {
                seq: self.seq,
                from: self.from,
                commit,
                welcome,
            },
        }
    }
}

/// One entry of a room's ordered log, as the E2EE core consumes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// `joined {id}`.
    Joined {
        /// Log position.
        seq: u64,
        /// Who joined.
        id: u64,
    },
    /// `left {id, reason}`.
    Left {
        /// Log position.
        seq: u64,
        /// Who left.
        id: u64,
    },
    /// `away {id}`: `id`'s connection ended without a leave (it may resume).
    Away {
        /// Log position.
        seq: u64,
        /// Whose connection ended.
        id: u64,
    },
    /// `back {id, from_seq}`: `id` resumed after an `away`, replaying the log after
    /// `from_seq`.
    Back {
        /// Log position.
        seq: u64,
        /// Who resumed.
        id: u64,
        /// Its resume point.
        from_seq: u64,
    },
    /// `creator {id, group_id}` (group id decoded from hex by the driver).
    Creator {
        /// Log position.
        seq: u64,
        /// The named creator.
        id: u64,
        /// The new group's id.
        group_id: Vec<u8>,
    },
    /// Binary kind 1.
    KeyPackage {
        /// Log position.
        seq: u64,
        /// Sender.
        from: u64,
        /// KeyPackage `MLSMessage`.
        key_package: Vec<u8>,
    },
    /// Binary kind 2.
    Commit {
        /// Log position.
        seq: u64,
        /// Sender.
        from: u64,
        /// Commit `MLSMessage`.
        commit: Vec<u8>,
        /// Welcome `MLSMessage` or empty.
        welcome: Vec<u8>,
    },
    /// `execute {epoch}`.
    Execute {
        /// Log position.
        seq: u64,
        /// The epoch senders switch to.
        epoch: u64,
    },
    /// `commit_void {epoch, from}`: the commit `from` made at `epoch` is void; the
    /// room is back at `epoch`.
    CommitVoid {
        /// Log position.
        seq: u64,
        /// The epoch the voided commit was created in.
        epoch: u64,
        /// Its sender.
        from: u64,
    },
}

impl Entry {
    /// The entry's log position.
    pub fn seq(&self) -> u64 {
        match self {
            Entry::Joined { seq, .. }
            | Entry::Left { seq, .. }
            | Entry::Away { seq, .. }
            | Entry::Back { seq, .. }
            | Entry::Creator { seq, .. }
            | Entry::KeyPackage { seq, .. }
            | Entry::Commit { seq, .. }
            | Entry::Execute { seq, .. }
            | Entry::CommitVoid { seq, .. } => *seq,
        }
    }
}

/// `seq ‖ kind ‖ from ‖ payload` of a server → client frame, without interpreting the
/// payload.
fn split_server_frame(frame: &[u8]) -> Result<(u64, u8, u64, &[u8]), RelayError> {
    let (seq, rest) = frame
        .split_first_chunk::<8>()
        .ok_or(RelayError::TooShort(frame.len()))?;
    let (kind, rest) = rest
        .split_first()
        .ok_or(RelayError::TooShort(frame.len()))?;
    let (from, payload) = rest
        .split_first_chunk::<8>()
        .ok_or(RelayError::TooShort(frame.len()))?;
    Ok((
        u64::from_be_bytes(*seq),
        *kind,
        u64::from_be_bytes(*from),
        payload,
    ))
}

/// `u32 BE len ‖ commit ‖ welcome`.
fn write_commit_payload(commit: &[u8], welcome: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(commit.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(commit);
    out.extend_from_slice(welcome);
}

fn try_split_commit_payload(payload: &[u8]) -> Result<(&[u8], &[u8]), RelayError> {
    let (len, rest) = payload
        .split_first_chunk::<4>()
        .ok_or(RelayError::TooShort(payload.len()))?;
    let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
    if len > rest.len() {
        return Err(RelayError::BadCommitLength {
            len,
            available: rest.len(),
        });
    }
    Ok(rest.split_at(len))
}

/// A server → client binary log entry as the coordinator relays it: the header and the
/// client's payload, unchanged and uninterpreted (any kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlsFrame {
    /// Per-room sequence number.
    pub seq: u64,
    /// [`KIND_KEY_PACKAGE`] or [`KIND_COMMIT`].
    pub kind: u8,
    /// Sending participant.
    pub from: u64,
    /// The client's payload, unchanged.
    pub payload: Vec<u8>,
}

impl MlsFrame {
    /// Header length of a server → client binary frame.
    pub const HEADER_LEN: usize = SERVER_HEADER_LEN;

    /// Encodes the frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::HEADER_LEN + self.payload.len());
        encode_mls_header(self.seq, self.kind, self.from, &mut out);
        out.extend_from_slice(&self.payload);
        out
    }

    /// Decodes a server → client binary frame (`None`: shorter than the header).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (seq, kind, from, payload) = split_server_frame(bytes).ok()?;
        Some(Self {
            seq,
            kind,
            from,
            payload: payload.to_vec(),
        })
    }
}

/// Writes `seq ‖ kind ‖ from`.
pub fn encode_mls_header(seq: u64, kind: u8, from: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&seq.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&from.to_be_bytes());
}

/// Builds a client → server commit frame: `2 ‖ u32 BE len ‖ commit ‖ welcome`.
pub fn client_commit_frame(commit: &[u8], welcome: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + commit.len() + welcome.len());
    out.push(KIND_COMMIT);
    write_commit_payload(commit, welcome, &mut out);
    out
}

/// Builds a client → server KeyPackage frame: `1 ‖ key_package`.
pub fn client_key_package_frame(key_package: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + key_package.len());
    out.push(KIND_KEY_PACKAGE);
    out.extend_from_slice(key_package);
    out
}

/// Builds a client → server application frame: `3 ‖ application MLSMessage`.
pub fn client_application_frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + message.len());
    out.push(KIND_APPLICATION);
    out.extend_from_slice(message);
    out
}

/// A server → client application frame (kind [`KIND_APPLICATION`]): an MLS application
/// message the coordinator logged at `seq` for sender `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplicationFrame {
    /// Log position.
    pub seq: u64,
    /// The participant that sent it (as the coordinator says; members check it against the
    /// MLS sender).
    pub from: u64,
    /// The application `MLSMessage`.
    pub message: Vec<u8>,
}

impl ApplicationFrame {
    /// Whether a server → client binary frame is an application frame (its kind byte), so a
    /// member routes it here instead of to [`ServerFrame::decode`].
    pub fn is_application(frame: &[u8]) -> bool {
        frame.get(8) == Some(&KIND_APPLICATION)
    }

    /// `u64 BE seq ‖ 3 ‖ u64 BE from ‖ message`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SERVER_HEADER_LEN + self.message.len());
        encode_mls_header(self.seq, KIND_APPLICATION, self.from, &mut out);
        out.extend_from_slice(&self.message);
        out
    }

    /// Decodes a server → client application frame.
    pub fn decode(frame: &[u8]) -> Result<Self, RelayError> {
        let (seq, kind, from, payload) = split_server_frame(frame)?;
        if kind != KIND_APPLICATION {
            return Err(RelayError::UnknownKind(kind));
        }
        if payload.is_empty() {
            return Err(RelayError::Empty);
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(RelayError::TooLarge(payload.len()));
        }
        Ok(Self {
            seq,
            from,
            message: payload.to_vec(),
        })
    }
}

/// Splits a commit payload (`u32 BE len ‖ commit ‖ welcome`) into (commit, welcome);
/// `None` when the length does not fit. An empty commit splits (the coordinator refuses it
/// by its MLS framing; members refuse it as [`RelayError::Empty`]).
pub fn split_commit_payload(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    try_split_commit_payload(payload).ok()
}

/// Why a JSON log entry could not become an [`Entry`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// `creator.group_id` is not lowercase or uppercase hex of whole bytes.
    #[error("creator group_id is not hex")]
    GroupIdNotHex,
    /// Not a JSON log entry (`{"seq":N,"type":...}`), or wrong fields for its type.
    #[error("entry: {0}")]
    Json(String),
}

impl Entry {
    /// The `type`s of the JSON log entries the E2EE core reads.
    pub const JSON_TYPES: &'static [&'static str] = &[
        "joined",
        "left",
        "away",
        "back",
        "creator",
        "execute",
        "commit_void",
    ];

    /// Decodes a JSON log entry as received (`{"seq":N,"type":...}`): the entries of
    /// [`Entry::JSON_TYPES`] are checked in full ([`crate::room::EventFrame`]); every other
    /// `type` is `Ok(None)` without looking further, so entries the core does not read never
    /// stop it.
    pub fn parse_json(text: &str) -> Result<Option<Self>, EntryError> {
        #[derive(serde::Deserialize)]
        struct Tagged {
            #[serde(rename = "type")]
            ty: String,
        }
        let tagged: Tagged =
            serde_json::from_str(text).map_err(|e| EntryError::Json(e.to_string()))?;
        if !Self::JSON_TYPES.contains(&tagged.ty.as_str()) {
            return Ok(None);
        }
        let frame: crate::room::EventFrame =
            serde_json::from_str(text).map_err(|e| EntryError::Json(e.to_string()))?;
        Self::from_event(frame.seq, &frame.event)
    }

    /// The JSON log entry `seq`/`event` as the E2EE core reads it; `Ok(None)` for the
    /// entries it does not read (tracks, hands, speaking, …).
    pub fn from_event(seq: u64, event: &RoomEvent) -> Result<Option<Self>, EntryError> {
        Ok(Some(match event {
            RoomEvent::Joined { id, .. } => Entry::Joined { seq, id: *id },
            RoomEvent::Left { id, .. } => Entry::Left { seq, id: *id },
            RoomEvent::Away { id } => Entry::Away { seq, id: *id },
            RoomEvent::Back { id, from_seq } => Entry::Back {
                seq,
                id: *id,
                from_seq: *from_seq,
            },
            RoomEvent::Creator { id, group_id } => Entry::Creator {
                seq,
                id: *id,
                group_id: decode_hex(group_id).ok_or(EntryError::GroupIdNotHex)?,
            },
            RoomEvent::Execute { epoch } => Entry::Execute { seq, epoch: *epoch },
            RoomEvent::CommitVoid { epoch, from } => Entry::CommitVoid {
                seq,
                epoch: *epoch,
                from: *from,
            },
            RoomEvent::Session { .. }
            | RoomEvent::Published { .. }
            | RoomEvent::Unpublished { .. }
            | RoomEvent::TrackEnabled { .. }
            | RoomEvent::Muted { .. }
            | RoomEvent::Hand { .. }
            | RoomEvent::Speaking { .. }
            | RoomEvent::Codecs { .. }
            | RoomEvent::Host { .. }
            | RoomEvent::Locked { .. }
            | RoomEvent::Cap { .. } => return Ok(None),
        }))
    }
}

/// Hex (either case, whole bytes) to bytes.
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn raw_and_typed_views_agree() {
        let typed = ServerFrame {
            seq: 7,
            from: 3,
            handshake: Handshake::Commit {
                commit: vec![1, 2],
                welcome: vec![3],
            },
        };
        let bytes = typed.encode();
        let raw = MlsFrame::decode(&bytes).expect("header fits");
        assert_eq!((raw.seq, raw.kind, raw.from), (7, KIND_COMMIT, 3));
        assert_eq!(raw.encode(), bytes);
        assert_eq!(
            split_commit_payload(&raw.payload),
            Some((&[1u8, 2][..], &[3u8][..]))
        );
        assert_eq!(client_commit_frame(&[1, 2], &[3]), {
            let mut c = vec![KIND_COMMIT];
            c.extend_from_slice(&raw.payload);
            c
        });
        assert_eq!(
            client_key_package_frame(&[9, 9]),
            Handshake::KeyPackage(vec![9, 9]).encode_client_frame()
        );
        assert_eq!(MlsFrame::decode(&bytes[..16]), None);
        assert_eq!(
            split_commit_payload(&[0, 0, 0, 0]),
            Some((&[][..], &[][..]))
        );
    }

    #[test]
    fn json_types_are_the_entries_the_core_reads() {
        for t in Entry::JSON_TYPES {
            assert!(crate::room::RoomEvent::TYPES.contains(t), "{t}");
        }
        assert_eq!(
            Entry::parse_json(
                r#"{"seq":3,"type":"joined","id":2,"name":"x","joined_at_ms":1,"host":false}"#
            ),
            Ok(Some(Entry::Joined { seq: 3, id: 2 }))
        );
        // A future entry type, or one the core does not read, is skipped unread.
        assert_eq!(
            Entry::parse_json(r#"{"seq":5,"type":"chat","x":[]}"#),
            Ok(None)
        );
        assert_eq!(
            Entry::parse_json(r#"{"seq":5,"type":"hand","id":1}"#),
            Ok(None)
        );
        // The ones it reads must be complete.
        assert!(matches!(
            Entry::parse_json(r#"{"seq":3,"type":"joined","id":2}"#),
            Err(EntryError::Json(_))
        ));
        assert!(matches!(
            Entry::parse_json(r#"{"seq":1}"#),
            Err(EntryError::Json(_))
        ));
        assert!(matches!(
            Entry::parse_json("not json"),
            Err(EntryError::Json(_))
        ));
    }

    #[test]
    fn json_entries_become_core_entries() {
        let e = |text: &str| {
            let f: crate::room::EventFrame = serde_json::from_str(text).unwrap();
            Entry::from_event(f.seq, &f.event)
        };
        assert_eq!(
            e(r#"{"seq":4,"type":"creator","id":1,"group_id":"0aFF"}"#),
            Ok(Some(Entry::Creator {
                seq: 4,
                id: 1,
                group_id: vec![0x0a, 0xff]
            }))
        );
        assert_eq!(
            e(r#"{"seq":4,"type":"creator","id":1,"group_id":"0af"}"#),
            Err(EntryError::GroupIdNotHex)
        );
        assert_eq!(
            e(r#"{"seq":4,"type":"creator","id":1,"group_id":"zz"}"#),
            Err(EntryError::GroupIdNotHex)
        );
        assert_eq!(
            e(r#"{"seq":6,"type":"back","id":2,"from_seq":3}"#),
            Ok(Some(Entry::Back {
                seq: 6,
                id: 2,
                from_seq: 3
            }))
        );
        assert_eq!(
            e(r#"{"seq":5,"type":"hand","id":1,"raised":true}"#),
            Ok(None)
        );
    }

    #[test]
    fn server_frames_round_trip() {
        for hs in [
            Handshake::KeyPackage(vec![1, 2, 3]),
            Handshake::Commit {
                commit: vec![9; 5],
                welcome: vec![],
            },
            Handshake::Commit {
                commit: vec![9; 5],
                welcome: vec![7; 3],
            },
        ] {
            let f = ServerFrame {
                seq: 0x0102_0304_0506_0708,
                from: 42,
                handshake: hs.clone(),
            };
            let bytes = f.encode();
            assert_eq!(&bytes[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
            assert_eq!(bytes[8], hs.kind());
            assert_eq!(ServerFrame::decode(&bytes), Ok(f));
            let c = hs.encode_client_frame();
            assert_eq!(Handshake::decode_client_frame(&c), Ok(hs));
        }
    }

    #[test]
    fn application_frames_round_trip_and_stay_out_of_handshakes() {
        let f = ApplicationFrame {
            seq: 9,
            from: 4,
            message: vec![0, 1, 0, 2, 7, 7],
        };
        let bytes = f.encode();
        assert!(ApplicationFrame::is_application(&bytes));
        assert_eq!(bytes[8], KIND_APPLICATION);
        assert_eq!(ApplicationFrame::decode(&bytes), Ok(f.clone()));
        // The raw view relays it unchanged.
        let raw = MlsFrame::decode(&bytes).expect("header fits");
        assert_eq!((raw.seq, raw.kind, raw.from), (9, KIND_APPLICATION, 4));
        assert_eq!(raw.encode(), bytes);
        // Handshake decoders refuse it: a chat message never reaches the committer.
        assert_eq!(
            ServerFrame::decode(&bytes),
            Err(RelayError::UnknownKind(KIND_APPLICATION))
        );
        let c = client_application_frame(&f.message);
        assert_eq!(c[0], KIND_APPLICATION);
        assert_eq!(&c[1..], &f.message[..]);
        assert_eq!(
            Handshake::decode_client_frame(&c),
            Err(RelayError::UnknownKind(KIND_APPLICATION))
        );
        // Malformed.
        assert_eq!(
            ApplicationFrame::decode(&bytes[..17]),
            Err(RelayError::Empty)
        );
        assert_eq!(
            ApplicationFrame::decode(&bytes[..5]),
            Err(RelayError::TooShort(5))
        );
        let commit = ServerFrame {
            seq: 1,
            from: 1,
            handshake: Handshake::KeyPackage(vec![1]),
        }
        .encode();
        assert!(!ApplicationFrame::is_application(&commit));
        assert_eq!(
            ApplicationFrame::decode(&commit),
            Err(RelayError::UnknownKind(KIND_KEY_PACKAGE))
        );
        assert!(!ApplicationFrame::is_application(&[0; 8]));
    }

    #[test]
    fn commit_layout_is_length_prefixed() {
        let c = Handshake::Commit {
            commit: vec![0xaa, 0xbb],
            welcome: vec![0xcc],
        }
        .encode_client_frame();
        assert_eq!(c, vec![2, 0, 0, 0, 2, 0xaa, 0xbb, 0xcc]);
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert_eq!(ServerFrame::decode(&[0; 3]), Err(RelayError::TooShort(3)));
        let mut f = vec![0u8; 17];
        f[8] = 9;
        f.push(1);
        assert_eq!(ServerFrame::decode(&f), Err(RelayError::UnknownKind(9)));
        assert_eq!(
            Handshake::decode_client_frame(&[2, 0, 0, 0, 9, 1]),
            Err(RelayError::BadCommitLength {
                len: 9,
                available: 1
            })
        );
        assert_eq!(Handshake::decode_client_frame(&[1]), Err(RelayError::Empty));
        assert_eq!(
            Handshake::decode_client_frame(&[2, 0, 0, 0, 0]),
            Err(RelayError::Empty)
        );
        assert_eq!(
            Handshake::decode_client_frame(&[2, 0, 0]),
            Err(RelayError::TooShort(2))
        );
    }
}
