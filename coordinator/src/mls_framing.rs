//! Reading the clear header of an MLS message (RFC 9420 §6) without any keys.
//!
//! The coordinator arbitrates commits per epoch, so it must learn a commit's
//! `group_id` and `epoch` and check that it really is a commit. Both MLS
//! framings carry these in the clear:
//!
//! ```text
//! struct {
//!     ProtocolVersion version = mls10;   // uint16, 1
//!     WireFormat wire_format;            // uint16
//!     select (wire_format) {
//!         case mls_public_message:  PublicMessage;   // 1
//!         case mls_private_message: PrivateMessage;  // 2
//!         case mls_welcome:         Welcome;         // 3
//!         case mls_group_info:      GroupInfo;       // 4
//!         case mls_key_package:     KeyPackage;      // 5
//!     };
//! } MLSMessage;
//!
//! PublicMessage  = FramedContent{ group_id<V>, uint64 epoch, Sender sender,
//!                                 authenticated_data<V>, ContentType content_type, ... } ...
//! PrivateMessage = { group_id<V>, uint64 epoch, ContentType content_type,
//!                    authenticated_data<V>, encrypted_sender_data<V>, ciphertext<V> }
//! Sender         = { uint8 sender_type; member: uint32 leaf_index |
//!                    external: uint32 sender_index | new_member_*: nothing }
//! ```
//!
//! `<V>` vectors use the MLS variable-length integer (RFC 9420 §2.1.2): the top
//! two bits of the first byte give the length of the length (1, 2 or 4 bytes),
//! `0b11` is invalid, and the minimum encoding is mandatory.
//!
//! Only the header is read; the rest of the message is opaque and stays so.

use thiserror::Error;

/// `ProtocolVersion` value of MLS 1.0.
pub const MLS10: u16 = 1;

/// Largest group id we accept (RFC 9420 does not cap it; real ids are 16–32 bytes).
pub const MAX_GROUP_ID_LEN: usize = 256;

/// MLS `WireFormat` values (RFC 9420 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// `mls_public_message` (1).
    PublicMessage,
    /// `mls_private_message` (2).
    PrivateMessage,
    /// `mls_welcome` (3).
    Welcome,
    /// `mls_group_info` (4).
    GroupInfo,
    /// `mls_key_package` (5).
    KeyPackage,
}

impl WireFormat {
    fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::PublicMessage,
            2 => Self::PrivateMessage,
            3 => Self::Welcome,
            4 => Self::GroupInfo,
            5 => Self::KeyPackage,
            _ => return None,
        })
    }

    /// The registry value.
    pub fn to_u16(self) -> u16 {
        match self {
            Self::PublicMessage => 1,
            Self::PrivateMessage => 2,
            Self::Welcome => 3,
            Self::GroupInfo => 4,
            Self::KeyPackage => 5,
        }
    }
}

/// MLS `ContentType` (RFC 9420 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// `application` (1).
    Application,
    /// `proposal` (2).
    Proposal,
    /// `commit` (3).
    Commit,
}

impl ContentType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Application,
            2 => Self::Proposal,
            3 => Self::Commit,
            _ => return None,
        })
    }
}

/// Why a byte string is not a well-formed MLS message header.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FramingError {
    /// The input ended inside the header.
    #[error("MLS message truncated")]
    Truncated,
    /// `version` is not mls10.
    #[error("unsupported MLS protocol version {0}")]
    Version(u16),
    /// Unknown `wire_format`.
    #[error("unknown MLS wire format {0}")]
    WireFormat(u16),
    /// A variable-length integer used the reserved `0b11` prefix or was not minimal.
    #[error("invalid MLS variable-length integer")]
    VarInt,
    /// The group id is longer than [`MAX_GROUP_ID_LEN`].
    #[error("MLS group id too long ({0} bytes)")]
    GroupIdTooLong(usize),
    /// Unknown `sender_type`.
    #[error("unknown MLS sender type {0}")]
    SenderType(u8),
    /// Unknown `content_type`.
    #[error("unknown MLS content type {0}")]
    ContentType(u8),
    /// The message is not of the expected wire format.
    #[error("expected MLS {expected:?}, got {got:?}")]
    UnexpectedWireFormat {
        /// What the caller needed.
        expected: &'static str,
        /// What the bytes say.
        got: WireFormat,
    },
    /// The handshake message is not a commit.
    #[error("MLS message is a {0:?}, not a commit")]
    NotCommit(ContentType),
}

/// The clear header of an `MLSMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlsHeader {
    /// The wire format.
    pub wire_format: WireFormat,
    /// For Public/PrivateMessage: the group, epoch and content type.
    pub framed: Option<FramedHeader>,
}

/// The clear part of a PublicMessage or PrivateMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramedHeader {
    /// `group_id`.
    pub group_id: Vec<u8>,
    /// `epoch` the message was created in.
    pub epoch: u64,
    /// `content_type`.
    pub content_type: ContentType,
}

/// A cursor over hostile input: every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FramingError> {
        if self.buf.len() < n {
            return Err(FramingError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, FramingError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, FramingError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, FramingError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, FramingError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// RFC 9420 §2.1.2 variable-length integer.
    fn varint(&mut self) -> Result<usize, FramingError> {
        let first = self.u8()?;
        let (len, min) = match first >> 6 {
            0 => return Ok(usize::from(first & 0x3f)),
            1 => (2usize, 64u32),
            2 => (4usize, 16384u32),
            _ => return Err(FramingError::VarInt),
        };
        let rest = self.take(len - 1)?;
        let mut v = u32::from(first & 0x3f);
        for b in rest {
            v = (v << 8) | u32::from(*b);
        }
        if v < min {
            return Err(FramingError::VarInt);
        }
        usize::try_from(v).map_err(|_| FramingError::VarInt)
    }

    fn vector(&mut self) -> Result<&'a [u8], FramingError> {
        let len = self.varint()?;
        self.take(len)
    }
}

/// Encodes `len` as an MLS variable-length integer (for building test messages).
pub fn encode_varint(len: usize, out: &mut Vec<u8>) {
    if len < 64 {
        out.push(len as u8);
    } else if len < 16384 {
        out.extend_from_slice(&((len as u16) | 0x4000).to_be_bytes());
    } else {
        out.extend_from_slice(&((len as u32 & 0x3fff_ffff) | 0x8000_0000).to_be_bytes());
    }
}

/// Parses the clear header of an `MLSMessage`.
pub fn parse_header(bytes: &[u8]) -> Result<MlsHeader, FramingError> {
    let mut r = Reader { buf: bytes };
    let version = r.u16()?;
    if version != MLS10 {
        return Err(FramingError::Version(version));
    }
    let wf = r.u16()?;
    let wire_format = WireFormat::from_u16(wf).ok_or(FramingError::WireFormat(wf))?;
    let framed = match wire_format {
        WireFormat::PublicMessage => {
            let group_id = group_id(&mut r)?;
            let epoch = r.u64()?;
            let sender_type = r.u8()?;
            match sender_type {
                1 | 2 => {
                    r.u32()?;
                }
                3 | 4 => {}
                other => return Err(FramingError::SenderType(other)),
            }
            r.vector()?; // authenticated_data
            let ct = r.u8()?;
            let content_type = ContentType::from_u8(ct).ok_or(FramingError::ContentType(ct))?;
            Some(FramedHeader {
                group_id,
                epoch,
                content_type,
            })
        }
        WireFormat::PrivateMessage => {
            let group_id = group_id(&mut r)?;
            let epoch = r.u64()?;
            let ct = r.u8()?;
            let content_type = ContentType::from_u8(ct).ok_or(FramingError::ContentType(ct))?;
            Some(FramedHeader {
                group_id,
                epoch,
                content_type,
            })
        }
        _ => None,
    };
    Ok(MlsHeader {
        wire_format,
        framed,
    })
}

fn group_id(r: &mut Reader<'_>) -> Result<Vec<u8>, FramingError> {
    let len = r.varint()?;
    if len > MAX_GROUP_ID_LEN {
        return Err(FramingError::GroupIdTooLong(len));
    }
    Ok(r.take(len)?.to_vec())
}

/// Parses a commit: a Public- or PrivateMessage whose content type is `commit`.
pub fn parse_commit(bytes: &[u8]) -> Result<FramedHeader, FramingError> {
    let header = parse_header(bytes)?;
    match header.framed {
        Some(f) if f.content_type == ContentType::Commit => Ok(f),
        Some(f) => Err(FramingError::NotCommit(f.content_type)),
        None => Err(FramingError::UnexpectedWireFormat {
            expected: "PublicMessage or PrivateMessage",
            got: header.wire_format,
        }),
    }
}

/// Checks that `bytes` starts like an `MLSMessage` of the given wire format.
pub fn expect_wire_format(bytes: &[u8], expected: WireFormat) -> Result<(), FramingError> {
    let header = parse_header(bytes)?;
    if header.wire_format == expected {
        Ok(())
    } else {
        Err(FramingError::UnexpectedWireFormat {
            expected: match expected {
                WireFormat::PublicMessage => "PublicMessage",
                WireFormat::PrivateMessage => "PrivateMessage",
                WireFormat::Welcome => "Welcome",
                WireFormat::GroupInfo => "GroupInfo",
                WireFormat::KeyPackage => "KeyPackage",
            },
            got: header.wire_format,
        })
    }
}

/// Builders for MLS-shaped bytes: headers are exact RFC 9420 encodings, bodies are
/// filler. For tests of the coordinator and of clients that talk to it.
pub mod build {
    use super::{WireFormat, encode_varint};

    /// A PublicMessage commit from member `leaf` of `group_id` at `epoch`, followed by `body`.
    pub fn public_commit(group_id: &[u8], epoch: u64, leaf: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&super::MLS10.to_be_bytes());
        out.extend_from_slice(&WireFormat::PublicMessage.to_u16().to_be_bytes());
        encode_varint(group_id.len(), &mut out);
        out.extend_from_slice(group_id);
        out.extend_from_slice(&epoch.to_be_bytes());
        out.push(1); // sender_type = member
        out.extend_from_slice(&leaf.to_be_bytes());
        encode_varint(0, &mut out); // authenticated_data
        out.push(3); // content_type = commit
        out.extend_from_slice(body);
        out
    }

    /// A PrivateMessage of `content_type` in `group_id` at `epoch`, followed by `body`.
    pub fn private_message(group_id: &[u8], epoch: u64, content_type: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&super::MLS10.to_be_bytes());
        out.extend_from_slice(&WireFormat::PrivateMessage.to_u16().to_be_bytes());
        encode_varint(group_id.len(), &mut out);
        out.extend_from_slice(group_id);
        out.extend_from_slice(&epoch.to_be_bytes());
        out.push(content_type);
        encode_varint(0, &mut out); // authenticated_data
        out.extend_from_slice(body);
        out
    }

    /// An MLSMessage header of `wire_format` followed by `body` (KeyPackage, Welcome...).
    pub fn message(wire_format: WireFormat, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&super::MLS10.to_be_bytes());
        out.extend_from_slice(&wire_format.to_u16().to_be_bytes());
        out.extend_from_slice(body);
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn public_commit_header() {
        let msg = build::public_commit(b"group-1", 7, 3, b"rest");
        let h = parse_commit(&msg).unwrap();
        assert_eq!(h.group_id, b"group-1");
        assert_eq!(h.epoch, 7);
        assert_eq!(h.content_type, ContentType::Commit);
    }

    #[test]
    fn private_commit_header() {
        let msg = build::private_message(&[9; 32], u64::MAX, 3, &[0xaa; 40]);
        let h = parse_commit(&msg).unwrap();
        assert_eq!(h.group_id, vec![9; 32]);
        assert_eq!(h.epoch, u64::MAX);
    }

    #[test]
    fn proposal_is_not_a_commit() {
        let msg = build::private_message(b"g", 1, 2, &[]);
        assert_eq!(
            parse_commit(&msg),
            Err(FramingError::NotCommit(ContentType::Proposal))
        );
    }

    #[test]
    fn key_package_is_not_a_commit() {
        let msg = build::message(WireFormat::KeyPackage, &[1, 2, 3]);
        assert!(matches!(
            parse_commit(&msg),
            Err(FramingError::UnexpectedWireFormat { .. })
        ));
        assert_eq!(expect_wire_format(&msg, WireFormat::KeyPackage), Ok(()));
        assert!(expect_wire_format(&msg, WireFormat::Welcome).is_err());
    }

    #[test]
    fn rejects_bad_version_and_format() {
        assert_eq!(parse_header(&[0, 2, 0, 1]), Err(FramingError::Version(2)));
        assert_eq!(
            parse_header(&[0, 1, 0, 9]),
            Err(FramingError::WireFormat(9))
        );
        assert_eq!(parse_header(&[0, 1]), Err(FramingError::Truncated));
        assert_eq!(parse_header(&[]), Err(FramingError::Truncated));
    }

    #[test]
    fn sender_types() {
        // new_member_commit (4) has no index.
        let mut msg = vec![0, 1, 0, 1, 1, b'g'];
        msg.extend_from_slice(&5u64.to_be_bytes());
        msg.push(4);
        msg.push(0); // authenticated_data
        msg.push(3);
        let h = parse_commit(&msg).unwrap();
        assert_eq!(h.epoch, 5);
        msg[14] = 0; // reserved sender type
        assert_eq!(parse_commit(&msg), Err(FramingError::SenderType(0)));
    }

    #[test]
    fn varint_rules() {
        // two-byte form for a value < 64 is not minimal
        let mut msg = vec![0, 1, 0, 2, 0x40, 0x01, b'g'];
        msg.extend_from_slice(&1u64.to_be_bytes());
        msg.push(3);
        assert_eq!(parse_header(&msg), Err(FramingError::VarInt));
        // 0b11 prefix is invalid
        let msg = vec![0, 1, 0, 2, 0xc0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(parse_header(&msg), Err(FramingError::VarInt));
    }

    #[test]
    fn long_group_id_uses_two_byte_length_and_is_capped() {
        let gid = vec![7u8; 200];
        let msg = build::public_commit(&gid, 1, 0, &[]);
        assert_eq!(&msg[4..6], &[0x40, 200]);
        assert_eq!(parse_commit(&msg).unwrap().group_id, gid);
        let too_long = build::public_commit(&[1u8; 300], 1, 0, &[]);
        assert_eq!(
            parse_commit(&too_long),
            Err(FramingError::GroupIdTooLong(300))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_header(&bytes);
            let _ = parse_commit(&bytes);
        }

        #[test]
        fn public_commits_round_trip(
            gid in proptest::collection::vec(any::<u8>(), 0..=MAX_GROUP_ID_LEN),
            epoch in any::<u64>(),
            leaf in any::<u32>(),
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let msg = build::public_commit(&gid, epoch, leaf, &body);
            let h = parse_commit(&msg).unwrap();
            prop_assert_eq!(h.group_id, gid);
            prop_assert_eq!(h.epoch, epoch);
        }

        #[test]
        fn private_messages_round_trip(
            gid in proptest::collection::vec(any::<u8>(), 0..=MAX_GROUP_ID_LEN),
            epoch in any::<u64>(),
            ct in 1u8..=3,
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let msg = build::private_message(&gid, epoch, ct, &body);
            let h = parse_header(&msg).unwrap().framed.unwrap();
            prop_assert_eq!(h.group_id, gid);
            prop_assert_eq!(h.epoch, epoch);
            prop_assert_eq!(parse_commit(&msg).is_ok(), ct == 3);
        }

        #[test]
        fn every_truncation_of_a_commit_is_rejected(
            gid in proptest::collection::vec(any::<u8>(), 0..80),
            epoch in any::<u64>(),
        ) {
            let msg = build::public_commit(&gid, epoch, 0, &[]);
            for cut in 0..msg.len() {
                prop_assert!(parse_commit(&msg[..cut]).is_err());
            }
        }

        #[test]
        fn varint_round_trips(len in 0usize..(1 << 30)) {
            let mut buf = Vec::new();
            encode_varint(len, &mut buf);
            let mut r = Reader { buf: &buf };
            prop_assert_eq!(r.varint().unwrap(), len);
            prop_assert!(r.buf.is_empty());
        }
    }
}
