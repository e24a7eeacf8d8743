//! Reading the clear parts of MLS messages (RFC 9420 §6) without any keys.
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
//! [`parse_header`] reads only that header. For commits the coordinator goes further
//! ([`parse_public_commit`], further down): it parses a PublicMessage commit in full to
//! learn whom it adds (the KeyPackages, byte for byte) and whom it removes, because
//! only participants added by an accepted commit count as group members. Signatures
//! and MACs stay unchecked: the coordinator holds no keys.

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

// ---------------------------------------------------------------------------
// Full PublicMessage commits (RFC 9420 §6.2, §12.4) — what "only members drive
// the group" needs: who sent it, what it adds (the KeyPackages, byte for byte)
// and which leaves it removes.
//
// ```text
// PublicMessage = FramedContent content; FramedContentAuthData auth;
//                 MAC membership_tag (sender_type member only)
// FramedContent  = group_id<V>, uint64 epoch, Sender, authenticated_data<V>,
//                  ContentType content_type (= commit), Commit commit
// Commit         = ProposalOrRef proposals<V>; optional<UpdatePath> path
// ProposalOrRef  = uint8 type (1 proposal, 2 reference); Proposal | ProposalRef<V>
// Proposal       = uint16 proposal_type; add(1): KeyPackage | remove(3): uint32 removed | ...
// KeyPackage     = uint16 version, uint16 cipher_suite, init_key<V>, LeafNode,
//                  extensions<V>, signature<V>
// LeafNode       = encryption_key<V>, signature_key<V>, Credential, Capabilities,
//                  uint8 leaf_node_source (1 key_package: uint64 not_before, uint64 not_after;
//                  2 update: -; 3 commit: parent_hash<V>), extensions<V>, signature<V>
// Credential     = uint16 credential_type; basic(1): identity<V> | x509(2): certificates<V>
// Capabilities   = versions<V>, cipher_suites<V>, extensions<V>, proposals<V>, credentials<V>
// UpdatePath     = LeafNode leaf_node; UpdatePathNode nodes<V>
// FramedContentAuthData (commit) = signature<V>, confirmation_tag<V>
// ```
//
// Every length is checked against the input before it is used, nothing recurses,
// and the whole message must be consumed: the parser is linear in the input and
// cannot panic. Only what Satsuma's clients send is accepted: a commit from a
// member, with by-value Add and Remove proposals, and basic credentials whose
// identity starts with the 8-byte participant id.

/// Why a commit is not one the coordinator accepts.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommitError {
    /// The clear header is malformed.
    #[error(transparent)]
    Framing(#[from] FramingError),
    /// Not a PublicMessage (PrivateMessage commits cannot be checked).
    #[error("a commit must be an MLS PublicMessage, got {0:?}")]
    NotPublic(WireFormat),
    /// The sender is not a member (external, new-member commits are not used).
    #[error("commit sender type {0} is not a member")]
    SenderNotMember(u8),
    /// A proposal by reference (clients send proposals by value only).
    #[error("proposal by reference")]
    ProposalByReference,
    /// Invalid `ProposalOrRefType`.
    #[error("invalid ProposalOrRef type {0}")]
    ProposalOrRefType(u8),
    /// A proposal type other than Add and Remove.
    #[error("proposal type {0} is not allowed (only add and remove)")]
    ProposalType(u16),
    /// A credential that is not a basic credential.
    #[error("credential type {0} is not basic")]
    CredentialType(u16),
    /// A basic credential identity shorter than the 8-byte participant id.
    #[error("credential identity of {0} bytes is shorter than a participant id")]
    ShortIdentity(usize),
    /// A leaf node source that does not fit its place.
    #[error("leaf node source {0} is not allowed here")]
    LeafNodeSource(u8),
    /// An `optional<T>` presence byte other than 0 or 1.
    #[error("invalid optional presence byte {0}")]
    Optional(u8),
    /// Unsupported KeyPackage protocol version.
    #[error("KeyPackage version {0} is not mls10")]
    KeyPackageVersion(u16),
    /// More proposals than any client sends.
    #[error("more than {MAX_PROPOSALS} proposals")]
    TooManyProposals,
    /// Bytes after the end of the message.
    #[error("{0} bytes after the end of the commit")]
    Trailing(usize),
}

/// Most proposals one commit may carry (the committer adds one member and
/// removes the departed ones per commit).
pub const MAX_PROPOSALS: usize = 1024;

/// An Add proposal of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedKeyPackage {
    /// The first 8 bytes (big-endian) of the basic credential's identity.
    pub participant: u64,
    /// The KeyPackage exactly as encoded in the commit (an `MLSMessage` KeyPackage
    /// without its 4-byte `version ‖ wire_format` header).
    pub key_package: Vec<u8>,
}

/// A PublicMessage commit, parsed as far as the coordinator needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicCommit {
    /// `group_id`.
    pub group_id: Vec<u8>,
    /// The epoch it was created in.
    pub epoch: u64,
    /// The committer's leaf index.
    pub sender_leaf: u32,
    /// Add proposals, in order.
    pub adds: Vec<AddedKeyPackage>,
    /// Leaf indices of Remove proposals, in order.
    pub removes: Vec<u32>,
    /// Whether it carries an UpdatePath.
    pub has_path: bool,
}

impl<'a> Reader<'a> {
    /// A sub-reader over the next `<V>` vector.
    fn sub(&mut self) -> Result<Reader<'a>, FramingError> {
        Ok(Reader {
            buf: self.vector()?,
        })
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

const LEAF_SOURCE_KEY_PACKAGE: u8 = 1;
const LEAF_SOURCE_UPDATE: u8 = 2;
const LEAF_SOURCE_COMMIT: u8 = 3;

/// Reads a LeafNode; returns the participant id of its basic credential.
fn leaf_node(r: &mut Reader<'_>, source: u8) -> Result<u64, CommitError> {
    r.vector()?; // encryption_key
    r.vector()?; // signature_key
    let credential_type = r.u16()?;
    if credential_type != 1 {
        return Err(CommitError::CredentialType(credential_type));
    }
    let identity = r.vector()?;
    let Some(id) = identity.get(..8) else {
        return Err(CommitError::ShortIdentity(identity.len()));
    };
    let mut id_bytes = [0u8; 8];
    id_bytes.copy_from_slice(id);
    for _ in 0..5 {
        r.vector()?; // capabilities: versions, cipher_suites, extensions, proposals, credentials
    }
    let got = r.u8()?;
    if got != source {
        return Err(CommitError::LeafNodeSource(got));
    }
    match got {
        LEAF_SOURCE_KEY_PACKAGE => {
            r.u64()?; // not_before
            r.u64()?; // not_after
        }
        LEAF_SOURCE_UPDATE => {}
        _ => {
            r.vector()?; // parent_hash
        }
    }
    r.vector()?; // extensions
    r.vector()?; // signature
    Ok(u64::from_be_bytes(id_bytes))
}

/// Reads a KeyPackage; returns it with its bytes.
fn key_package(r: &mut Reader<'_>) -> Result<AddedKeyPackage, CommitError> {
    let start = r.buf;
    let version = r.u16()?;
    if version != MLS10 {
        return Err(CommitError::KeyPackageVersion(version));
    }
    r.u16()?; // cipher_suite
    r.vector()?; // init_key
    let participant = leaf_node(r, LEAF_SOURCE_KEY_PACKAGE)?;
    r.vector()?; // extensions
    r.vector()?; // signature
    let used = start.len() - r.buf.len();
    Ok(AddedKeyPackage {
        participant,
        key_package: start[..used].to_vec(),
    })
}

/// Parses a KeyPackage `MLSMessage` (what binary kind 1 carries) exactly; returns the
/// participant id of its credential.
pub fn parse_key_package_message(bytes: &[u8]) -> Result<AddedKeyPackage, CommitError> {
    let mut r = Reader { buf: bytes };
    let version = r.u16()?;
    if version != MLS10 {
        return Err(FramingError::Version(version).into());
    }
    let wf = r.u16()?;
    let wire_format = WireFormat::from_u16(wf).ok_or(FramingError::WireFormat(wf))?;
    if wire_format != WireFormat::KeyPackage {
        return Err(FramingError::UnexpectedWireFormat {
            expected: "KeyPackage",
            got: wire_format,
        }
        .into());
    }
    let kp = key_package(&mut r)?;
    if !r.is_empty() {
        return Err(CommitError::Trailing(r.buf.len()));
    }
    Ok(kp)
}

/// Parses a whole PublicMessage commit from a member (see the module notes).
pub fn parse_public_commit(bytes: &[u8]) -> Result<PublicCommit, CommitError> {
    let mut r = Reader { buf: bytes };
    let version = r.u16()?;
    if version != MLS10 {
        return Err(FramingError::Version(version).into());
    }
    let wf = r.u16()?;
    let wire_format = WireFormat::from_u16(wf).ok_or(FramingError::WireFormat(wf))?;
    if wire_format != WireFormat::PublicMessage {
        return Err(CommitError::NotPublic(wire_format));
    }
    let group_id = group_id(&mut r)?;
    let epoch = r.u64()?;
    let sender_type = r.u8()?;
    if sender_type != 1 {
        return Err(CommitError::SenderNotMember(sender_type));
    }
    let sender_leaf = r.u32()?;
    r.vector()?; // authenticated_data
    let ct = r.u8()?;
    let content_type = ContentType::from_u8(ct).ok_or(FramingError::ContentType(ct))?;
    if content_type != ContentType::Commit {
        return Err(FramingError::NotCommit(content_type).into());
    }
    let mut adds = Vec::new();
    let mut removes = Vec::new();
    let mut proposals = r.sub()?;
    while !proposals.is_empty() {
        if adds.len() + removes.len() >= MAX_PROPOSALS {
            return Err(CommitError::TooManyProposals);
        }
        match proposals.u8()? {
            1 => {}
            2 => return Err(CommitError::ProposalByReference),
            other => return Err(CommitError::ProposalOrRefType(other)),
        }
        match proposals.u16()? {
            1 => adds.push(key_package(&mut proposals)?),
            3 => removes.push(proposals.u32()?),
            other => return Err(CommitError::ProposalType(other)),
        }
    }
    let has_path = match r.u8()? {
        0 => false,
        1 => {
            leaf_node(&mut r, LEAF_SOURCE_COMMIT)?;
            r.vector()?; // nodes
            true
        }
        other => return Err(CommitError::Optional(other)),
    };
    r.vector()?; // signature
    r.vector()?; // confirmation_tag
    r.vector()?; // membership_tag
    if !r.is_empty() {
        return Err(CommitError::Trailing(r.buf.len()));
    }
    Ok(PublicCommit {
        group_id,
        epoch,
        sender_leaf,
        adds,
        removes,
        has_path,
    })
}

/// Builders for MLS-shaped bytes: headers are exact RFC 9420 encodings, bodies are
/// filler. For tests of the coordinator and of clients that talk to it.
pub mod build {
    use super::{WireFormat, encode_varint};

    fn vector(bytes: &[u8], out: &mut Vec<u8>) {
        encode_varint(bytes.len(), out);
        out.extend_from_slice(bytes);
    }

    fn leaf_node(participant: u64, source: u8, filler: &[u8], out: &mut Vec<u8>) {
        vector(&[0x11; 32], out); // encryption_key
        vector(&[0x22; 32], out); // signature_key
        out.extend_from_slice(&1u16.to_be_bytes()); // basic credential
        let mut identity = participant.to_be_bytes().to_vec();
        identity.extend_from_slice(filler);
        vector(&identity, out);
        for _ in 0..5 {
            vector(&[0, 1], out); // capabilities
        }
        out.push(source);
        match source {
            1 => {
                out.extend_from_slice(&0u64.to_be_bytes());
                out.extend_from_slice(&u64::MAX.to_be_bytes());
            }
            3 => vector(&[0x33; 32], out), // parent_hash
            _ => {}
        }
        vector(&[], out); // extensions
        vector(&[0x44; 64], out); // signature
    }

    /// A structurally valid KeyPackage (the struct, without an MLSMessage header) whose
    /// basic credential identity is `participant` (8 bytes BE) followed by `filler`.
    /// Keys and signatures are filler: only the coordinator's parser accepts it.
    pub fn key_package(participant: u64, filler: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&super::MLS10.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes()); // cipher_suite
        vector(&[0x55; 32], &mut out); // init_key
        leaf_node(participant, 1, filler, &mut out);
        vector(&[], &mut out); // extensions
        vector(&[0x66; 64], &mut out); // signature
        out
    }

    /// [`key_package`] as an `MLSMessage` (what a client logs with binary kind 1).
    pub fn key_package_message(participant: u64, filler: &[u8]) -> Vec<u8> {
        message(WireFormat::KeyPackage, &key_package(participant, filler))
    }

    /// A structurally valid PublicMessage commit from member `leaf` (participant
    /// `committer`) of `group_id` at `epoch`: by-value Adds of `adds` (KeyPackage
    /// structs, e.g. from [`key_package`]), Removes of leaves `removes`, and an
    /// UpdatePath. Signatures and MACs are filler.
    pub fn commit(
        group_id: &[u8],
        epoch: u64,
        leaf: u32,
        committer: u64,
        adds: &[Vec<u8>],
        removes: &[u32],
    ) -> Vec<u8> {
        let mut proposals = Vec::new();
        for r in removes {
            proposals.push(1); // by value
            proposals.extend_from_slice(&3u16.to_be_bytes());
            proposals.extend_from_slice(&r.to_be_bytes());
        }
        for kp in adds {
            proposals.push(1);
            proposals.extend_from_slice(&1u16.to_be_bytes());
            proposals.extend_from_slice(kp);
        }
        let mut body = Vec::new();
        vector(&proposals, &mut body);
        body.push(1); // path present
        leaf_node(committer, 3, b"", &mut body);
        vector(&[0x77; 80], &mut body); // nodes
        vector(&[0x88; 64], &mut body); // signature
        vector(&[0x99; 32], &mut body); // confirmation_tag
        vector(&[0xaa; 32], &mut body); // membership_tag
        public_commit(group_id, epoch, leaf, &body)
    }

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

    #[test]
    fn full_commit_round_trips() {
        let kp7 = build::key_package(7, b"binding");
        let kp9 = build::key_package(9, b"");
        let msg = build::commit(b"gid", 4, 2, 3, &[kp7.clone(), kp9.clone()], &[5, 1]);
        let c = parse_public_commit(&msg).unwrap();
        assert_eq!(c.group_id, b"gid");
        assert_eq!((c.epoch, c.sender_leaf, c.has_path), (4, 2, true));
        assert_eq!(c.removes, vec![5, 1]);
        assert_eq!(
            c.adds,
            vec![
                AddedKeyPackage {
                    participant: 7,
                    key_package: kp7.clone()
                },
                AddedKeyPackage {
                    participant: 9,
                    key_package: kp9
                }
            ]
        );
        // The header parser agrees.
        let h = parse_commit(&msg).unwrap();
        assert_eq!((h.group_id, h.epoch), (b"gid".to_vec(), 4));
        // A logged KeyPackage message parses to the same struct bytes.
        let logged = build::key_package_message(7, b"binding");
        assert_eq!(&logged[4..], &kp7[..]);
        assert_eq!(parse_key_package_message(&logged).unwrap().participant, 7);
    }

    /// Replaces the proposals vector of a built commit (no adds, no removes) with `proposals`.
    fn with_proposals(proposals: &[u8]) -> Vec<u8> {
        let base = build::commit(b"g", 1, 0, 1, &[], &[]);
        // header: 2+2 + 1+1 (group id) + 8 + 1+4 + 1 (aad) + 1 (content type) = 21; then 0x00.
        assert_eq!(base[21], 0);
        let mut out = base[..21].to_vec();
        encode_varint(proposals.len(), &mut out);
        out.extend_from_slice(proposals);
        out.extend_from_slice(&base[22..]);
        out
    }

    #[test]
    fn commits_satsuma_does_not_send_are_refused() {
        assert_eq!(
            parse_public_commit(&with_proposals(&[])).unwrap().adds,
            vec![]
        );
        // by reference
        assert_eq!(
            parse_public_commit(&with_proposals(&[2, 1, 0])),
            Err(CommitError::ProposalByReference)
        );
        assert_eq!(
            parse_public_commit(&with_proposals(&[0])),
            Err(CommitError::ProposalOrRefType(0))
        );
        // update (2), psk (4), reinit (5), external_init (6), gce (7)
        for t in [2u16, 4, 5, 6, 7, 0xffff] {
            let mut p = vec![1];
            p.extend_from_slice(&t.to_be_bytes());
            assert_eq!(
                parse_public_commit(&with_proposals(&p)),
                Err(CommitError::ProposalType(t))
            );
        }
        // a remove without its index
        assert!(matches!(
            parse_public_commit(&with_proposals(&[1, 0, 3, 0, 0])),
            Err(CommitError::Framing(FramingError::Truncated))
        ));
        // trailing bytes
        let mut msg = build::commit(b"g", 1, 0, 1, &[], &[]);
        msg.push(0);
        assert_eq!(parse_public_commit(&msg), Err(CommitError::Trailing(1)));
        // PrivateMessage, proposals, other senders
        let private = build::private_message(b"g", 1, 3, &[0; 8]);
        assert_eq!(
            parse_public_commit(&private),
            Err(CommitError::NotPublic(WireFormat::PrivateMessage))
        );
        let mut external = build::commit(b"g", 1, 0, 1, &[], &[]);
        external[14] = 2;
        assert_eq!(
            parse_public_commit(&external),
            Err(CommitError::SenderNotMember(2))
        );
        let mut proposal = build::commit(b"g", 1, 0, 1, &[], &[]);
        proposal[20] = 2;
        assert_eq!(
            parse_public_commit(&proposal),
            Err(CommitError::Framing(FramingError::NotCommit(
                ContentType::Proposal
            )))
        );
    }

    #[test]
    fn key_packages_must_carry_a_participant_id() {
        // identity of 5 bytes
        let mut kp = Vec::new();
        kp.extend_from_slice(&[0, 1, 0, 1]);
        encode_varint(0, &mut kp); // init_key
        encode_varint(0, &mut kp); // encryption_key
        encode_varint(0, &mut kp); // signature_key
        kp.extend_from_slice(&[0, 1]);
        encode_varint(5, &mut kp);
        kp.extend_from_slice(b"short");
        let msg = build::message(WireFormat::KeyPackage, &kp);
        assert_eq!(
            parse_key_package_message(&msg),
            Err(CommitError::ShortIdentity(5))
        );
        // x509 credential
        let mut x = build::key_package(1, b"");
        // version 2, suite 2, init_key 1+32, encryption_key 1+32, signature_key 1+32
        let at = 4 + 33 + 33 + 33;
        assert_eq!(&x[at..at + 2], &[0, 1]);
        x[at + 1] = 2;
        assert_eq!(
            parse_key_package_message(&build::message(WireFormat::KeyPackage, &x)),
            Err(CommitError::CredentialType(2))
        );
        // a KeyPackage whose leaf claims to come from a commit
        let mut c = build::key_package(1, b"");
        let source_at = at + 2 + 1 + 8 + 5 * 3;
        assert_eq!(c[source_at], 1);
        c[source_at] = 3;
        assert_eq!(
            parse_key_package_message(&build::message(WireFormat::KeyPackage, &c)),
            Err(CommitError::LeafNodeSource(3))
        );
    }

    #[test]
    fn proposal_count_is_capped() {
        let removes: Vec<u32> = (0..=MAX_PROPOSALS as u32).collect();
        let msg = build::commit(b"g", 1, 0, 1, &[], &removes);
        assert_eq!(
            parse_public_commit(&msg),
            Err(CommitError::TooManyProposals)
        );
        let msg = build::commit(b"g", 1, 0, 1, &[], &removes[1..]);
        assert_eq!(
            parse_public_commit(&msg).unwrap().removes.len(),
            MAX_PROPOSALS
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_header(&bytes);
            let _ = parse_commit(&bytes);
            let _ = parse_public_commit(&bytes);
            let _ = parse_key_package_message(&bytes);
        }

        /// Hostile edits of a valid commit (byte flips, insertions, deletions, cuts)
        /// give an error or a parse, never a panic; every strict prefix is an error.
        #[test]
        fn mutated_commits_never_panic(
            ids in proptest::collection::vec(any::<u64>(), 0..3),
            removes in proptest::collection::vec(any::<u32>(), 0..3),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        ) {
            let adds: Vec<Vec<u8>> = ids.iter().map(|i| build::key_package(*i, b"x")).collect();
            let msg = build::commit(b"group", 3, 1, 2, &adds, &removes);
            let parsed = parse_public_commit(&msg).unwrap();
            prop_assert_eq!(parsed.adds.iter().map(|a| a.participant).collect::<Vec<_>>(), ids);
            prop_assert_eq!(&parsed.removes, &removes);
            for cut in 0..msg.len() {
                prop_assert!(parse_public_commit(&msg[..cut]).is_err());
            }
            let mut m = msg.clone();
            for (at, byte, op) in edits {
                let i = at.index(m.len().max(1));
                match op {
                    0 if !m.is_empty() => m[i] = byte,
                    1 => m.insert(i.min(m.len()), byte),
                    _ if !m.is_empty() => { m.remove(i); }
                    _ => {}
                }
            }
            if let Ok(c) = parse_public_commit(&m) {
                // Whatever parses is self-consistent: every add is a parsable KeyPackage.
                for a in c.adds {
                    let logged = build::message(WireFormat::KeyPackage, &a.key_package);
                    prop_assert_eq!(parse_key_package_message(&logged).map(|k| k.participant), Ok(a.participant));
                }
            }
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
