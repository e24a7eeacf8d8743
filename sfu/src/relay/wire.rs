//! What goes over a relay link: media datagrams and the control stream's frames.
//!
//! # Media datagrams (one QUIC datagram each)
//!
//! ```text
//!  0      kind = 0x01 (media, version 1)
//!  1..    track id (QUIC varint: the origin node's id of the published track)
//!  ..     flags (u8): 0x01 marker, 0x02 keyframe, 0x04 nackable, 0x08 rid present,
//!                     0x10 VP8 descriptor in front of the payload
//!  ..     payload type (u8, the publisher's)
//!  ..     clock rate (varint, Hz)
//!  ..     extended sequence number (varint, the publisher's, rollover-free)
//!  ..     RTP timestamp (u32, big-endian)
//!  ..     rid: length (u8, 1..=8) + ASCII bytes, when flag 0x08
//!  ..     header extensions: count (u8, ≤ 8), then per extension: id (u8), length (u8), bytes
//!  ..     payload: everything that is left, exactly as the publisher sent it
//! ```
//!
//! The RTP header fields the forwarder rewrites per leg (sequence number, timestamp, payload
//! type) travel as the publisher sent them, so the receiving node's forwarder rebases them for its
//! own legs exactly as it does for a local publisher. The payload (an end-to-end encrypted frame)
//! is copied into the datagram and out of it, never read or changed.
//!
//! # Control stream (one reliable bidirectional QUIC stream per link)
//!
//! A sequence of frames: a length (u32, big-endian, at most [`MAX_CONTROL_FRAME`]) and that many
//! bytes of one JSON-encoded [`ControlMsg`]. The control path carries a few messages per
//! second per track at most (keyframe requests, layer demands, NACK batches), so readability wins
//! over compactness there; the frame length bounds what a hostile peer can make a node buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use str0m::format::PayloadParams;

/// The kind byte of a version-1 media datagram.
pub const KIND_MEDIA: u8 = 0x01;
/// The longest control frame a node accepts (its body, without the 4-byte length).
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;
/// The longest rid (str0m's limit).
pub const MAX_RID_LEN: usize = 8;
/// Most header extensions in one datagram.
pub const MAX_EXTENSIONS: usize = 8;
/// The protocol version both ends must speak (in [`ControlMsg::Hello`]).
pub const PROTOCOL_VERSION: u32 = 1;
/// Most sequence numbers in one [`ControlMsg::Nack`].
pub const MAX_NACK_SEQS: usize = 256;
/// The longest node name, app, session id or track name on the control stream.
pub const MAX_NAME_LEN: usize = 128;
/// Most payload types announced for one track.
pub const MAX_PARAMS: usize = 32;

const FLAG_MARKER: u8 = 0x01;
const FLAG_KEYFRAME: u8 = 0x02;
const FLAG_NACKABLE: u8 = 0x04;
const FLAG_RID: u8 = 0x08;
const FLAG_VP8: u8 = 0x10;
const KNOWN_FLAGS: u8 = FLAG_MARKER | FLAG_KEYFRAME | FLAG_NACKABLE | FLAG_RID | FLAG_VP8;

/// Relay header extension ids: the values of the RTP header extensions the SFU carries to its
/// subscribers (the negotiated RTP ids differ per session, so the relay has its own).
pub mod ext_id {
    /// `ssrc-audio-level`: the level (−dBov, 0..=127) as one byte.
    pub const AUDIO_LEVEL: u8 = 1;
    /// `ssrc-audio-level`'s voice activity bit: one byte, 0 or 1.
    pub const VOICE_ACTIVITY: u8 = 2;
    /// `urn:3gpp:video-orientation`: one byte (str0m's `VideoOrientation` value).
    pub const VIDEO_ORIENTATION: u8 = 3;
    /// `video-content-type`: one byte (1: screen share).
    pub const VIDEO_CONTENT_TYPE: u8 = 4;
}

/// Why a datagram or control frame was refused. Every variant is a peer's fault (or an attack):
/// the frame is dropped and counted, the node carries on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The input ended inside a field.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A kind byte this version does not know.
    #[error("unknown datagram kind {0:#04x}")]
    UnknownKind(u8),
    /// Flag bits this version does not know.
    #[error("unknown flags {0:#04x}")]
    UnknownFlags(u8),
    /// A rid that is empty, too long or not ASCII alphanumeric.
    #[error("malformed rid")]
    BadRid,
    /// More header extensions than [`MAX_EXTENSIONS`], or a repeated or unknown id, or a
    /// length that does not fit the id.
    #[error("malformed header extension")]
    BadExtension,
    /// A value out of its range (clock rate 0, a sequence number past 2^48).
    #[error("{0} out of range")]
    OutOfRange(&'static str),
    /// A control frame longer than [`MAX_CONTROL_FRAME`].
    #[error("control frame of {0} bytes exceeds the limit")]
    FrameTooLong(usize),
    /// A control frame that is not a valid message.
    #[error("malformed control message: {0}")]
    BadMessage(String),
}

// ---------------------------------------------------------------------------------------------
// QUIC variable-length integers (RFC 9000, section 16).

/// Appends `v` as a QUIC varint (at most 2^62 − 1; larger values are clamped to it).
pub fn put_varint(buf: &mut BytesMut, v: u64) {
    let v = v.min((1 << 62) - 1);
    if v < 1 << 6 {
        buf.put_u8(v as u8);
    } else if v < 1 << 14 {
        buf.put_u16(0x4000 | v as u16);
    } else if v < 1 << 30 {
        buf.put_u32(0x8000_0000 | v as u32);
    } else {
        buf.put_u64(0xc000_0000_0000_0000 | v);
    }
}

/// Reads a QUIC varint.
pub fn get_varint(buf: &mut &[u8], what: &'static str) -> Result<u64, WireError> {
    let first = *buf.first().ok_or(WireError::Truncated(what))?;
    let len = 1usize << (first >> 6);
    if buf.len() < len {
        return Err(WireError::Truncated(what));
    }
    let mut v = u64::from(first & 0x3f);
    for &b in buf.get(1..len).unwrap_or_default() {
        v = (v << 8) | u64::from(b);
    }
    buf.advance(len);
    Ok(v)
}

fn get_u8(buf: &mut &[u8], what: &'static str) -> Result<u8, WireError> {
    if buf.is_empty() {
        return Err(WireError::Truncated(what));
    }
    Ok(buf.get_u8())
}

fn get_u32(buf: &mut &[u8], what: &'static str) -> Result<u32, WireError> {
    if buf.len() < 4 {
        return Err(WireError::Truncated(what));
    }
    Ok(buf.get_u32())
}

fn take<'a>(buf: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
    if buf.len() < n {
        return Err(WireError::Truncated(what));
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}

// ---------------------------------------------------------------------------------------------
// Media.

/// The header extension values the relay carries (those the SFU hands on to its subscribers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayExt {
    /// Audio level in −dBov (0 loudest … 127 silence).
    pub audio_level: Option<i8>,
    /// Voice activity flag of the audio level extension.
    pub voice_activity: Option<bool>,
    /// Video orientation (str0m's `VideoOrientation` as u8).
    pub video_orientation: Option<u8>,
    /// Video content type (1: screen share).
    pub video_content_type: Option<u8>,
}

impl RelayExt {
    fn count(&self) -> u8 {
        u8::from(self.audio_level.is_some())
            + u8::from(self.voice_activity.is_some())
            + u8::from(self.video_orientation.is_some())
            + u8::from(self.video_content_type.is_some())
    }
}

/// One RTP packet of a published track, as it crosses a relay link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayMedia {
    /// The origin node's id of the track.
    pub track: u64,
    /// The publisher's payload type.
    pub pt: u8,
    /// RTP clock rate of that payload type.
    pub clock_rate: u32,
    /// The publisher's extended sequence number (below 2^48).
    pub seq: u64,
    /// The publisher's RTP timestamp.
    pub timestamp: u32,
    /// RTP marker bit.
    pub marker: bool,
    /// The packet starts a keyframe.
    pub keyframe: bool,
    /// Subscribers may get it resent on NACK (video).
    pub nackable: bool,
    /// Whether the payload starts with a VP8 payload descriptor (the receiver parses it again).
    pub vp8: bool,
    /// Simulcast layer.
    pub rid: Option<String>,
    /// Header extension values.
    pub ext: RelayExt,
    /// The payload, untouched.
    pub payload: Bytes,
}

/// Sequence numbers above this are refused (an extended 16-bit sequence number reaches it after
/// 2^32 rollovers: never).
pub const MAX_SEQ: u64 = 1 << 48;

fn valid_rid(rid: &str) -> bool {
    !rid.is_empty()
        && rid.len() <= MAX_RID_LEN
        && rid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl RelayMedia {
    /// Bytes of header in front of the payload.
    pub fn header_len(&self) -> usize {
        let mut scratch = BytesMut::with_capacity(64);
        self.put_header(&mut scratch);
        scratch.len()
    }

    fn put_header(&self, buf: &mut BytesMut) {
        buf.put_u8(KIND_MEDIA);
        put_varint(buf, self.track);
        let rid = self.rid.as_deref().filter(|r| valid_rid(r));
        let mut flags = 0;
        for (on, flag) in [
            (self.marker, FLAG_MARKER),
            (self.keyframe, FLAG_KEYFRAME),
            (self.nackable, FLAG_NACKABLE),
            (rid.is_some(), FLAG_RID),
            (self.vp8, FLAG_VP8),
        ] {
            if on {
                flags |= flag;
            }
        }
        buf.put_u8(flags);
        buf.put_u8(self.pt);
        put_varint(buf, u64::from(self.clock_rate));
        put_varint(buf, self.seq.min(MAX_SEQ - 1));
        buf.put_u32(self.timestamp);
        if let Some(rid) = rid {
            buf.put_u8(rid.len() as u8);
            buf.put_slice(rid.as_bytes());
        }
        buf.put_u8(self.ext.count());
        let e = &self.ext;
        if let Some(v) = e.audio_level {
            buf.put_slice(&[ext_id::AUDIO_LEVEL, 1, v as u8]);
        }
        if let Some(v) = e.voice_activity {
            buf.put_slice(&[ext_id::VOICE_ACTIVITY, 1, u8::from(v)]);
        }
        if let Some(v) = e.video_orientation {
            buf.put_slice(&[ext_id::VIDEO_ORIENTATION, 1, v]);
        }
        if let Some(v) = e.video_content_type {
            buf.put_slice(&[ext_id::VIDEO_CONTENT_TYPE, 1, v]);
        }
    }

    /// The datagram: header, then the payload bytes as they are. A rid that is not valid on
    /// the wire (see [`RelayMedia::decode`]) is left out rather than sent.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(32 + self.payload.len());
        self.put_header(&mut buf);
        buf.put_slice(&self.payload);
        buf.freeze()
    }

    /// Parses a datagram. The payload shares `datagram`'s memory (no copy).
    pub fn decode(datagram: &Bytes) -> Result<RelayMedia, WireError> {
        let mut buf: &[u8] = datagram;
        let kind = get_u8(&mut buf, "kind")?;
        if kind != KIND_MEDIA {
            return Err(WireError::UnknownKind(kind));
        }
        let track = get_varint(&mut buf, "track id")?;
        let flags = get_u8(&mut buf, "flags")?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(WireError::UnknownFlags(flags));
        }
        let pt = get_u8(&mut buf, "payload type")?;
        if pt > 127 {
            return Err(WireError::OutOfRange("payload type"));
        }
        let clock_rate = get_varint(&mut buf, "clock rate")?;
        let clock_rate = u32::try_from(clock_rate)
            .ok()
            .filter(|&c| c > 0)
            .ok_or(WireError::OutOfRange("clock rate"))?;
        let seq = get_varint(&mut buf, "sequence number")?;
        if seq >= MAX_SEQ {
            return Err(WireError::OutOfRange("sequence number"));
        }
        let timestamp = get_u32(&mut buf, "timestamp")?;
        let rid = if flags & FLAG_RID != 0 {
            let len = usize::from(get_u8(&mut buf, "rid length")?);
            let bytes = take(&mut buf, len, "rid")?;
            let rid = std::str::from_utf8(bytes).map_err(|_| WireError::BadRid)?;
            if !valid_rid(rid) {
                return Err(WireError::BadRid);
            }
            Some(rid.to_string())
        } else {
            None
        };
        let count = usize::from(get_u8(&mut buf, "extension count")?);
        if count > MAX_EXTENSIONS {
            return Err(WireError::BadExtension);
        }
        let mut ext = RelayExt::default();
        for _ in 0..count {
            let id = get_u8(&mut buf, "extension id")?;
            let len = usize::from(get_u8(&mut buf, "extension length")?);
            let value = take(&mut buf, len, "extension value")?;
            let [v] = value else {
                return Err(WireError::BadExtension);
            };
            let v = *v;
            let slot_was_empty = match id {
                ext_id::AUDIO_LEVEL => ext.audio_level.replace(v as i8).is_none(),
                ext_id::VOICE_ACTIVITY if v <= 1 => ext.voice_activity.replace(v == 1).is_none(),
                ext_id::VIDEO_ORIENTATION if v <= 3 => ext.video_orientation.replace(v).is_none(),
                ext_id::VIDEO_CONTENT_TYPE => ext.video_content_type.replace(v).is_none(),
                _ => false,
            };
            if !slot_was_empty {
                return Err(WireError::BadExtension);
            }
        }
        let header = datagram.len() - buf.len();
        Ok(RelayMedia {
            track,
            pt,
            clock_rate,
            seq,
            timestamp,
            marker: flags & FLAG_MARKER != 0,
            keyframe: flags & FLAG_KEYFRAME != 0,
            nackable: flags & FLAG_NACKABLE != 0,
            vp8: flags & FLAG_VP8 != 0,
            rid,
            ext,
            payload: datagram.slice(header..),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Control.

/// A published track as the relay names it: the app the publishing session belongs to, the
/// session (32 hex characters, as in the API) and the track name within it. A track is only
/// found under its own app: a session of one app cannot pull another app's track through the
/// relay any more than on one node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TrackRef {
    /// The app of the publishing session (empty: none, for tools and tests).
    #[serde(default)]
    pub app: String,
    /// The publishing session's id.
    pub session: String,
    /// The track name.
    pub name: String,
}

impl TrackRef {
    /// The track `name` of session `session` of app `app`.
    pub fn new(
        app: impl Into<String>,
        session: impl Into<String>,
        name: impl Into<String>,
    ) -> TrackRef {
        TrackRef {
            app: app.into(),
            session: session.into(),
            name: name.into(),
        }
    }

    fn validate(&self) -> Result<(), WireError> {
        for (what, s) in [("session", &self.session), ("track name", &self.name)] {
            if s.is_empty() || s.len() > MAX_NAME_LEN {
                return Err(WireError::BadMessage(format!("{what} of bad length")));
            }
        }
        if self.app.len() > MAX_NAME_LEN {
            return Err(WireError::BadMessage("app of bad length".into()));
        }
        Ok(())
    }
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    /// Audio.
    Audio,
    /// Video.
    Video,
}

/// Which simulcast layers a subscribing node wants of a track.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "layers", content = "rids")]
pub enum LayerDemand {
    /// Every layer (the node's legs choose among them), or the only one of a track without
    /// simulcast.
    #[default]
    All,
    /// Only these rids (a node whose legs all want low layers saves the link the high ones).
    Only(Vec<String>),
}

impl LayerDemand {
    /// Whether a packet of layer `rid` is wanted.
    pub fn wants(&self, rid: Option<&str>) -> bool {
        match (self, rid) {
            (LayerDemand::All, _) | (LayerDemand::Only(_), None) => true,
            (LayerDemand::Only(rids), Some(r)) => rids.iter().any(|x| x == r),
        }
    }

    /// The union of two demands.
    #[must_use]
    pub fn union(&self, other: &LayerDemand) -> LayerDemand {
        match (self, other) {
            (LayerDemand::Only(a), LayerDemand::Only(b)) => {
                let mut rids = a.clone();
                for r in b {
                    if !rids.contains(r) {
                        rids.push(r.clone());
                    }
                }
                rids.sort();
                LayerDemand::Only(rids)
            }
            _ => LayerDemand::All,
        }
    }

    fn validate(&self) -> Result<(), WireError> {
        if let LayerDemand::Only(rids) = self
            && (rids.len() > 8 || !rids.iter().all(|r| valid_rid(r)))
        {
            return Err(WireError::BadMessage("bad layer demand".into()));
        }
        Ok(())
    }
}

/// A keyframe request's flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyframeKind {
    /// Picture loss indication.
    Pli,
    /// Full intra request.
    Fir,
}

/// Why a subscription was refused or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// No such track on the origin node.
    NotFound,
    /// The publisher stopped or left.
    Unpublished,
    /// The origin node refuses more subscriptions (limit, draining).
    Refused,
}

/// One message on a link's control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlMsg {
    /// The first message each way: who speaks and which protocol version.
    Hello {
        /// The sender's node name (it must match its certificate).
        node: String,
        /// [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// Subscriber → origin: send me this track's media (or change which layers).
    Subscribe {
        /// The track.
        track: TrackRef,
        /// Which layers.
        demand: LayerDemand,
    },
    /// Origin → subscriber: the track exists and its media comes with this id.
    Announce {
        /// The track as asked for.
        track: TrackRef,
        /// The id its datagrams carry.
        id: u64,
        /// Audio or video.
        kind: TrackKind,
        /// The publisher's negotiated payload types (codec, clock rate, format parameters):
        /// the subscribing node maps them to its own subscribers' payload types.
        #[serde(default)]
        params: Vec<PayloadParams>,
    },
    /// Origin → subscriber: no (more) media for this track.
    Withdraw {
        /// The track.
        track: TrackRef,
        /// Why.
        reason: EndReason,
    },
    /// Subscriber → origin: no more media for this track.
    Unsubscribe {
        /// The track (named, not by id: it may not have been announced yet).
        track: TrackRef,
    },
    /// Subscriber → origin: a subscriber needs a keyframe.
    Keyframe {
        /// The track's id.
        id: u64,
        /// The layer (simulcast), if any.
        rid: Option<String>,
        /// PLI or FIR.
        kind: KeyframeKind,
        /// The subscriber asking has had no keyframe yet (a new leg): the origin's throttle
        /// lets it through sooner (see `Forwarder::keyframe_request`).
        #[serde(default)]
        fresh: bool,
    },
    /// Subscriber → origin: these packets did not arrive over the link; resend them.
    Nack {
        /// The track's id.
        id: u64,
        /// The simulcast layer the numbers are of (each layer numbers its packets on its own).
        #[serde(default)]
        rid: Option<String>,
        /// The publisher's extended sequence numbers (of layer `rid`).
        seqs: Vec<u64>,
    },
    /// Subscriber → origin: what arrived over the link since the last report (loss feedback
    /// for the origin's metrics).
    Report {
        /// Media datagrams received.
        received: u64,
        /// Media datagrams missing (gaps not repaired).
        lost: u64,
    },
}

impl ControlMsg {
    /// Checks the bounds a hostile peer could overstep (lengths of names and lists).
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            ControlMsg::Hello { node, .. } if node.is_empty() || node.len() > MAX_NAME_LEN => {
                return Err(WireError::BadMessage("node name of bad length".into()));
            }
            ControlMsg::Subscribe { track, demand } => {
                track.validate()?;
                demand.validate()?;
            }
            ControlMsg::Announce { params, .. } if params.len() > MAX_PARAMS => {
                return Err(WireError::BadMessage("too many payload types".into()));
            }
            ControlMsg::Announce { track, .. }
            | ControlMsg::Withdraw { track, .. }
            | ControlMsg::Unsubscribe { track } => {
                track.validate()?;
            }
            ControlMsg::Keyframe { rid: Some(r), .. } | ControlMsg::Nack { rid: Some(r), .. }
                if !valid_rid(r) =>
            {
                return Err(WireError::BadRid);
            }
            ControlMsg::Nack { seqs, .. } if seqs.len() > MAX_NACK_SEQS => {
                return Err(WireError::BadMessage("too many NACKed packets".into()));
            }
            _ => {}
        }
        Ok(())
    }

    /// The frame: 4-byte length, then the JSON body.
    pub fn encode(&self) -> Bytes {
        // Serialising these plain enums cannot fail (no maps with non-string keys, no
        // fallible Serialize impls); an empty frame would be refused by the peer anyway.
        let body = serde_json::to_vec(self).unwrap_or_default();
        let mut buf = BytesMut::with_capacity(4 + body.len());
        buf.put_u32(body.len() as u32);
        buf.put_slice(&body);
        buf.freeze()
    }

    /// Parses one frame's body.
    pub fn decode(body: &[u8]) -> Result<ControlMsg, WireError> {
        let msg: ControlMsg =
            serde_json::from_slice(body).map_err(|e| WireError::BadMessage(e.to_string()))?;
        msg.validate()?;
        Ok(msg)
    }
}

/// Reassembles control frames from the stream's bytes as they arrive, in any chunking.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    failed: bool,
}

impl FrameDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The next complete message, `Ok(None)` when more bytes are needed. After an error the
    /// stream is out of step: the decoder keeps returning it (the link must be closed).
    pub fn next_msg(&mut self) -> Result<Option<ControlMsg>, WireError> {
        if self.failed {
            return Err(WireError::BadMessage("stream failed earlier".into()));
        }
        let Some(len) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > MAX_CONTROL_FRAME {
            self.failed = true;
            self.buf.clear();
            return Err(WireError::FrameTooLong(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        self.buf.advance(4);
        let body = self.buf.split_to(len);
        ControlMsg::decode(&body).map(Some).inspect_err(|_| {
            self.failed = true;
            self.buf.clear();
        })
    }

    /// Bytes buffered (at most one frame plus its length).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn sample() -> RelayMedia {
        RelayMedia {
            track: 70_000,
            pt: 96,
            clock_rate: 90_000,
            seq: 65_537,
            timestamp: 0xdead_beef,
            marker: true,
            keyframe: true,
            nackable: true,
            vp8: true,
            rid: Some("h".into()),
            ext: RelayExt {
                audio_level: None,
                voice_activity: None,
                video_orientation: Some(1),
                video_content_type: Some(1),
            },
            payload: Bytes::from_static(b"\x90\x80\x01encrypted frame bytes"),
        }
    }

    #[test]
    fn media_round_trips_and_the_payload_is_the_tail_of_the_datagram() {
        let m = sample();
        let d = m.encode();
        assert!(d.ends_with(&m.payload));
        assert_eq!(d.len(), m.header_len() + m.payload.len());
        assert_eq!(RelayMedia::decode(&d).unwrap(), m);
        let audio = RelayMedia {
            rid: None,
            vp8: false,
            keyframe: false,
            nackable: false,
            clock_rate: 48_000,
            ext: RelayExt {
                audio_level: Some(-30),
                voice_activity: Some(true),
                ..RelayExt::default()
            },
            ..sample()
        };
        assert_eq!(RelayMedia::decode(&audio.encode()).unwrap(), audio);
    }

    #[test]
    fn hostile_media_is_refused_with_a_reason() {
        let d = sample().encode();
        for cut in 0..d.len() - sample().payload.len() {
            assert!(
                matches!(
                    RelayMedia::decode(&d.slice(..cut)),
                    Err(WireError::Truncated(_))
                ),
                "cut at {cut}"
            );
        }
        assert_eq!(
            RelayMedia::decode(&Bytes::from_static(&[0x7f])),
            Err(WireError::UnknownKind(0x7f))
        );
        let mut b = BytesMut::new();
        b.put_u8(KIND_MEDIA);
        put_varint(&mut b, 1);
        b.put_u8(0x40);
        assert_eq!(
            RelayMedia::decode(&b.freeze()),
            Err(WireError::UnknownFlags(0x40))
        );
        let mut b = BytesMut::new();
        b.put_u8(KIND_MEDIA);
        put_varint(&mut b, 1);
        b.put_u8(0);
        b.put_u8(96);
        put_varint(&mut b, 0);
        assert_eq!(
            RelayMedia::decode(&b.freeze()),
            Err(WireError::OutOfRange("clock rate"))
        );
        // A repeated extension id.
        let mut b = BytesMut::new();
        b.put_u8(KIND_MEDIA);
        put_varint(&mut b, 1);
        b.put_u8(0);
        b.put_u8(111);
        put_varint(&mut b, 48_000);
        put_varint(&mut b, 1);
        b.put_u32(1);
        b.put_u8(2);
        b.put_slice(&[ext_id::AUDIO_LEVEL, 1, 5, ext_id::AUDIO_LEVEL, 1, 6]);
        assert_eq!(
            RelayMedia::decode(&b.freeze()),
            Err(WireError::BadExtension)
        );
    }

    #[test]
    fn an_invalid_rid_is_left_out_when_sending() {
        let m = RelayMedia {
            rid: Some("much-too-long".into()),
            ..sample()
        };
        assert_eq!(RelayMedia::decode(&m.encode()).unwrap().rid, None);
    }

    #[test]
    fn varints_round_trip_at_every_width() {
        for v in [
            0,
            63,
            64,
            16_383,
            16_384,
            (1 << 30) - 1,
            1 << 30,
            (1 << 62) - 1,
        ] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            let mut s: &[u8] = &b;
            assert_eq!(get_varint(&mut s, "v").unwrap(), v);
            assert!(s.is_empty());
        }
    }

    #[test]
    fn control_frames_reassemble_from_any_chunking() {
        let msgs = vec![
            ControlMsg::Hello {
                node: "sfu-a".into(),
                version: PROTOCOL_VERSION,
            },
            ControlMsg::Subscribe {
                track: TrackRef::new("app", "ab".repeat(16), "video"),
                demand: LayerDemand::Only(vec!["q".into(), "h".into()]),
            },
            ControlMsg::Announce {
                track: TrackRef::new("app", "ab".repeat(16), "video"),
                id: 3,
                kind: TrackKind::Video,
                params: vec![PayloadParams::new(
                    str0m::media::Pt::from(96),
                    Some(str0m::media::Pt::from(97)),
                    str0m::format::CodecSpec {
                        codec: str0m::format::Codec::Vp8,
                        clock_rate: str0m::media::Frequency::NINETY_KHZ,
                        channels: None,
                        format: str0m::format::FormatParams::default(),
                    },
                )],
            },
            ControlMsg::Keyframe {
                id: 3,
                rid: Some("f".into()),
                kind: KeyframeKind::Fir,
                fresh: true,
            },
            ControlMsg::Nack {
                id: 3,
                rid: Some("h".into()),
                seqs: vec![1, 2, 9],
            },
        ];
        let stream: Vec<u8> = msgs.iter().flat_map(|m| m.encode().to_vec()).collect();
        for chunk in [1, 3, 7, stream.len()] {
            let mut d = FrameDecoder::new();
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                d.push(piece);
                while let Some(m) = d.next_msg().unwrap() {
                    out.push(m);
                }
            }
            assert_eq!(out, msgs, "chunk {chunk}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn hostile_control_frames_fail_the_stream() {
        let mut d = FrameDecoder::new();
        d.push(&u32::MAX.to_be_bytes());
        assert_eq!(
            d.next_msg(),
            Err(WireError::FrameTooLong(u32::MAX as usize))
        );
        assert!(d.next_msg().is_err(), "stays failed");
        let mut d = FrameDecoder::new();
        d.push(&5u32.to_be_bytes());
        d.push(b"{\"t\":");
        assert!(matches!(d.next_msg(), Err(WireError::BadMessage(_))));
        let long = ControlMsg::Nack {
            id: 1,
            rid: None,
            seqs: (0..1000).collect(),
        };
        let mut d = FrameDecoder::new();
        d.push(&long.encode());
        assert!(d.next_msg().is_err());
        // A NACK from a node that does not name the layer is of the track's only stream.
        let mut d = FrameDecoder::new();
        let body = br#"{"t":"nack","id":1,"seqs":[4]}"#;
        d.push(&(body.len() as u32).to_be_bytes());
        d.push(body);
        assert!(matches!(
            d.next_msg(),
            Ok(Some(ControlMsg::Nack { rid: None, .. }))
        ));
        let unknown = br#"{"t":"hello","node":"x","version":1,"extra":true}"#;
        assert!(ControlMsg::decode(unknown).is_err());
    }

    #[test]
    fn layer_demands_union_and_filter() {
        let q = LayerDemand::Only(vec!["q".into()]);
        let h = LayerDemand::Only(vec!["h".into()]);
        let u = q.union(&h);
        assert!(u.wants(Some("q")) && u.wants(Some("h")) && !u.wants(Some("f")));
        assert!(u.wants(None));
        assert_eq!(q.union(&LayerDemand::All), LayerDemand::All);
    }

    proptest! {
        #[test]
        fn media_decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = RelayMedia::decode(&Bytes::from(data));
        }

        #[test]
        fn media_decode_after_a_valid_prefix_never_panics(
            tail in proptest::collection::vec(any::<u8>(), 0..64),
            cut in 0usize..40,
        ) {
            let d = sample().encode();
            let mut v = d[..cut.min(d.len())].to_vec();
            v.extend(tail);
            let _ = RelayMedia::decode(&Bytes::from(v));
        }

        #[test]
        fn media_round_trips(
            track in 0u64..(1 << 62), pt in 0u8..128, clock_rate in 1u32.., seq in 0u64..MAX_SEQ,
            timestamp: u32, marker: bool, keyframe: bool, nackable: bool, vp8: bool,
            rid in proptest::option::of("[a-z0-9]{1,8}"),
            level in proptest::option::of(any::<i8>()),
            payload in proptest::collection::vec(any::<u8>(), 0..1300),
        ) {
            let m = RelayMedia {
                track, pt, clock_rate, seq, timestamp, marker, keyframe, nackable, vp8, rid,
                ext: RelayExt { audio_level: level, ..RelayExt::default() },
                payload: Bytes::from(payload),
            };
            prop_assert_eq!(RelayMedia::decode(&m.encode()).unwrap(), m);
        }

        #[test]
        fn control_decoder_never_panics(chunks in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..80), 0..8)) {
            let mut d = FrameDecoder::new();
            for c in chunks {
                d.push(&c);
                let _ = d.next_msg();
            }
        }

        #[test]
        fn control_json_garbage_never_panics(s in "\\{\"t\":\"[a-z_]{1,12}\"[ -~]{0,80}") {
            let _ = ControlMsg::decode(s.as_bytes());
        }
    }
}
