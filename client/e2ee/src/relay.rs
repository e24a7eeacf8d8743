//! The E2EE relay wire format (`docs/e2ee-relay.md`): typed coordinator log entries
//! and the codec of the binary frames that carry MLS bytes.
//!
//! Client → server: `u8 kind ‖ payload`. Server → client:
//! `u64 BE seq ‖ u8 kind ‖ u64 BE from ‖ payload`. Kind 1 (KeyPackage): payload is the
//! KeyPackage `MLSMessage`. Kind 2 (Commit): payload is
//! `u32 BE commit_len ‖ commit MLSMessage ‖ welcome MLSMessage (may be empty)`.
//!
//! The JSON entries (`joined`, `left`, `away`, `back`, `creator`, `execute`, `commit_void`) are decoded by the
//! driver from the coordinator's JSON protocol and handed over as [`Entry`] values.
//! Decoding never panics; every malformed frame is a [`RelayError`].

/// Binary kind of a KeyPackage frame.
pub const KIND_KEY_PACKAGE: u8 = 1;
/// Binary kind of a Commit frame.
pub const KIND_COMMIT: u8 = 2;
/// Largest payload accepted in a binary frame (1 MiB): a Welcome with an inline
/// ratchet tree for a few hundred members fits easily.
pub const MAX_PAYLOAD: usize = 1 << 20;

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
            Handshake::Commit { commit, welcome } => {
                let len = u32::try_from(commit.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(commit);
                out.extend_from_slice(welcome);
            }
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
                if len == 0 {
                    return Err(RelayError::Empty);
                }
                let (commit, welcome) = rest.split_at(len);
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
        let mut out = Vec::with_capacity(17 + self.handshake.payload_len());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.push(self.handshake.kind());
        out.extend_from_slice(&self.from.to_be_bytes());
        self.handshake.encode_payload(&mut out);
        out
    }

    /// Decode a server → client binary frame.
    pub fn decode(frame: &[u8]) -> Result<Self, RelayError> {
        let (seq, rest) = frame
            .split_first_chunk::<8>()
            .ok_or(RelayError::TooShort(frame.len()))?;
        let (kind, rest) = rest
            .split_first()
            .ok_or(RelayError::TooShort(frame.len()))?;
        let (from, payload) = rest
            .split_first_chunk::<8>()
            .ok_or(RelayError::TooShort(frame.len()))?;
        Ok(Self {
            seq: u64::from_be_bytes(*seq),
            from: u64::from_be_bytes(*from),
            handshake: Handshake::decode_payload(*kind, payload)?,
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

#[cfg(test)]
mod tests {
    use super::*;

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
