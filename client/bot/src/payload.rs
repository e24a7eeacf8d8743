//! Synthetic media payloads that a receiver can verify byte for byte.
//!
//! Every RTP payload the bot sends is a pure function of a few fields that the payload itself carries
//! ([`PayloadFields`]): which track, which packet, when it was sent, which frame, whether it is a
//! keyframe, and how long it is. A receiver reads those fields back, rebuilds the payload it *should* have
//! received and compares every byte. Any change to the payload on the way (a flipped bit, a truncation,
//! a payload from another track) shows up as a mismatch.
//!
//! Layout of a payload:
//!
//! ```text
//! [codec header] [bot header, 38 bytes] [filler]
//! ```
//!
//! * Audio ("Opus-like"): the codec header is one Opus TOC byte (`0x78`: SILK-only wideband 20 ms, mono,
//!   one frame). Real decoders would not like the rest, but an SFU never decodes.
//! * Video ("VP8-like"): a valid VP8 RTP payload descriptor (RFC 7741 §4.2) with a 15-bit PictureID,
//!   a TL0PICIDX and a TID byte (every picture is on temporal layer 0), S=1 on the first packet of a
//!   frame, and on that first packet the VP8 payload header (RFC 7741 §4.3): 3 bytes with the inverse
//!   keyframe flag P, plus the 7-byte keyframe start code and size on a keyframe. SFUs (and str0m's
//!   `Vp8Descriptor::starts_keyframe`) detect keyframes from exactly these bits. The PictureID and
//!   TL0PICIDX count frames, each simulcast layer from its own far-apart start
//!   ([`PayloadFields::picture_id`]), as real encoders' layers do: a subscriber that sees a jump in
//!   them at a layer switch sees an SFU that did not rewrite them.
//! * Bot header: magic `SATB`, version, kind, flags, simulcast layer index (0 = lowest, 0 without
//!   simulcast), then big-endian track id (u64), packet sequence number (u64, per layer), send time in
//!   microseconds since the Unix epoch (u64), frame number (u32, per layer) and total payload length
//!   (u16).
//! * Filler: bytes from a small PRNG seeded with every header field, so that a corrupted header field
//!   also corrupts the expected filler and cannot go unnoticed.
//!
//! An SFU may legitimately rewrite the VP8 PictureID and TL0PICIDX (to keep them continuous per
//! subscriber across layer switches, RFC 7741 §4.2), and nothing else; [`verify`] tells that apart
//! from real corruption ([`Verified::picture_id_rewritten`]) and returns what arrived.

use thiserror::Error;

/// Magic bytes that open the bot header.
pub const MAGIC: [u8; 4] = *b"SATB";
/// Version of the payload layout (2: TL0PICIDX and TID in the VP8 descriptor).
pub const VERSION: u8 = 2;
/// Size of the bot header in bytes.
pub const BOT_HEADER_LEN: usize = 38;
/// The Opus TOC byte the audio payloads start with.
pub const OPUS_TOC: u8 = 0x78;
/// Width the VP8 keyframe header announces.
pub const VP8_WIDTH: u16 = 640;
/// Height the VP8 keyframe header announces.
pub const VP8_HEIGHT: u16 = 480;

/// How far apart the PictureIDs of neighbouring simulcast layers start.
pub const PICTURE_ID_LAYER_STRIDE: u32 = 10_007;
/// How far apart the TL0PICIDXs of neighbouring simulcast layers start.
pub const TL0_PIC_IDX_LAYER_STRIDE: u32 = 85;

const FLAG_KEYFRAME: u8 = 0x01;
const FLAG_FRAME_START: u8 = 0x02;
const FLAG_FRAME_END: u8 = 0x04;

/// Kind of media a payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    /// Opus-like audio.
    Audio,
    /// VP8-like video.
    Video,
}

impl MediaKind {
    fn code(self) -> u8 {
        match self {
            MediaKind::Audio => 0,
            MediaKind::Video => 1,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(MediaKind::Audio),
            1 => Some(MediaKind::Video),
            _ => None,
        }
    }
}

/// Everything a payload is derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadFields {
    /// Audio or video.
    pub kind: MediaKind,
    /// Identifies the publishing track (random per track).
    pub track_id: u64,
    /// Packet sequence number within the track, from 0, +1 per packet.
    pub seq: u64,
    /// Send time, microseconds since the Unix epoch.
    pub sent_at_us: u64,
    /// Frame number (video; for audio equal to the packet number).
    pub frame: u32,
    /// The frame is a keyframe (video only).
    pub keyframe: bool,
    /// First packet of its frame.
    pub frame_start: bool,
    /// Last packet of its frame (RTP marker bit for video).
    pub frame_end: bool,
    /// Total payload length in bytes, codec header included.
    pub len: u16,
    /// Simulcast layer index (0 is the lowest; 0 without simulcast). Sequence and frame numbers
    /// count per layer.
    pub layer: u8,
}

impl PayloadFields {
    fn flags(&self) -> u8 {
        let mut f = 0;
        if self.keyframe {
            f |= FLAG_KEYFRAME;
        }
        if self.frame_start {
            f |= FLAG_FRAME_START;
        }
        if self.frame_end {
            f |= FLAG_FRAME_END;
        }
        f
    }

    /// The VP8 PictureID this frame carries (15 bits): the frame number, from a start that
    /// differs per layer by [`PICTURE_ID_LAYER_STRIDE`].
    pub fn picture_id(&self) -> u16 {
        let start = u32::from(self.layer).wrapping_mul(PICTURE_ID_LAYER_STRIDE);
        (self.frame.wrapping_add(start) & 0x7fff) as u16
    }

    /// The VP8 TL0PICIDX this frame carries: every frame is on temporal layer 0, so it counts
    /// frames too, from a start that differs per layer by [`TL0_PIC_IDX_LAYER_STRIDE`].
    pub fn tl0_pic_idx(&self) -> u8 {
        let start = u32::from(self.layer).wrapping_mul(TL0_PIC_IDX_LAYER_STRIDE);
        self.frame.wrapping_add(start) as u8
    }

    /// Length of the codec header for these fields.
    pub fn codec_header_len(&self) -> usize {
        match self.kind {
            MediaKind::Audio => 1,
            MediaKind::Video => {
                // descriptor: required byte, X byte, two PictureID bytes, TL0PICIDX, TID
                let mut n = VP8_DESCRIPTOR_LEN;
                if self.frame_start {
                    n += if self.keyframe { 10 } else { 3 };
                }
                n
            }
        }
    }

    /// Smallest payload length these fields allow.
    pub fn min_len(&self) -> usize {
        self.codec_header_len() + BOT_HEADER_LEN
    }
}

/// Why a received payload failed verification.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PayloadError {
    /// Too short to hold the codec and bot headers.
    #[error("payload too short ({0} bytes)")]
    TooShort(usize),
    /// The VP8 payload descriptor is malformed.
    #[error("malformed VP8 payload descriptor")]
    BadDescriptor,
    /// The bot header's magic or version is wrong (not a bot payload, or corrupted).
    #[error("bad bot header magic or version")]
    BadMagic,
    /// The kind byte is unknown or does not match the codec header.
    #[error("bad media kind")]
    BadKind,
    /// The length field disagrees with the payload length.
    #[error("length field {field} but payload has {actual} bytes")]
    BadLength {
        /// Length the header announces.
        field: usize,
        /// Length received.
        actual: usize,
    },
    /// The bytes differ from what the fields say was sent.
    #[error("payload differs from the sent bytes at offset {0}")]
    Mismatch(usize),
}

/// A payload that passed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The fields the payload was built from.
    pub fields: PayloadFields,
    /// The VP8 PictureID or TL0PICIDX differs from the sent one (an SFU rewrote it); all other
    /// bytes are identical.
    pub picture_id_rewritten: bool,
    /// The VP8 PictureID as received (video).
    pub picture_id: Option<u16>,
    /// The VP8 TL0PICIDX as received (video).
    pub tl0_pic_idx: Option<u8>,
}

/// Length of the VP8 payload descriptor the bot sends.
const VP8_DESCRIPTOR_LEN: usize = 6;
/// Bytes of that descriptor an SFU may rewrite: PictureID (without its M bit) and TL0PICIDX.
const VP8_NUMBERING_BYTES: std::ops::RangeInclusive<usize> = 2..=4;

/// Builds the payload for `fields`.
///
/// `fields.len` is raised to [`PayloadFields::min_len`] if it is smaller.
pub fn build(fields: &PayloadFields) -> Vec<u8> {
    let mut fields = *fields;
    let min = fields.min_len();
    if usize::from(fields.len) < min {
        fields.len = u16::try_from(min).unwrap_or(u16::MAX);
    }
    let len = usize::from(fields.len);
    let mut out = Vec::with_capacity(len);
    write_codec_header(&fields, &mut out);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(fields.kind.code());
    out.push(fields.flags());
    out.push(fields.layer);
    out.extend_from_slice(&fields.track_id.to_be_bytes());
    out.extend_from_slice(&fields.seq.to_be_bytes());
    out.extend_from_slice(&fields.sent_at_us.to_be_bytes());
    out.extend_from_slice(&fields.frame.to_be_bytes());
    out.extend_from_slice(&fields.len.to_be_bytes());
    let mut rng = Filler::new(&fields);
    while out.len() < len {
        out.push(rng.next_byte());
    }
    out
}

fn write_codec_header(fields: &PayloadFields, out: &mut Vec<u8>) {
    match fields.kind {
        MediaKind::Audio => out.push(OPUS_TOC),
        MediaKind::Video => {
            // X=1, S on frame start, PID=0
            let mut required = 0x80;
            if fields.frame_start {
                required |= 0x10;
            }
            out.push(required);
            out.push(0xe0); // I=1, L=1, T=1: PictureID, TL0PICIDX and TID present
            let pid = fields.picture_id();
            out.push(0x80 | (pid >> 8) as u8); // M=1: 15-bit PictureID
            out.push((pid & 0xff) as u8);
            out.push(fields.tl0_pic_idx());
            out.push(0x00); // TID 0, Y=0
            if fields.frame_start {
                // VP8 payload header: size0=0, show_frame=1, version=0, P (inverse keyframe flag)
                let p = if fields.keyframe { 0 } else { 1 };
                out.push(0x10 | p);
                out.push(0);
                out.push(0);
                if fields.keyframe {
                    out.extend_from_slice(&[0x9d, 0x01, 0x2a]);
                    out.extend_from_slice(&VP8_WIDTH.to_le_bytes());
                    out.extend_from_slice(&VP8_HEIGHT.to_le_bytes());
                }
            }
        }
    }
}

/// Parsed VP8 payload descriptor (the subset the bot needs to find its header again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Descriptor {
    /// S bit: first packet of a partition.
    pub start: bool,
    /// Partition index.
    pub partition: u8,
    /// PictureID if present.
    pub picture_id: Option<u16>,
    /// TL0PICIDX if present.
    pub tl0_pic_idx: Option<u8>,
    /// Offset of the byte after the descriptor.
    pub len: usize,
}

impl Vp8Descriptor {
    /// Parses the descriptor at the start of `payload`.
    pub fn parse(payload: &[u8]) -> Result<Self, PayloadError> {
        let required = *payload.first().ok_or(PayloadError::TooShort(0))?;
        let mut off = 1;
        let mut picture_id = None;
        let mut tl0_pic_idx = None;
        let byte = |off: &mut usize| -> Result<u8, PayloadError> {
            let b = *payload.get(*off).ok_or(PayloadError::BadDescriptor)?;
            *off += 1;
            Ok(b)
        };
        if required & 0x80 != 0 {
            let ext = byte(&mut off)?;
            if ext & 0x80 != 0 {
                let hi = byte(&mut off)?;
                if hi & 0x80 != 0 {
                    let lo = byte(&mut off)?;
                    picture_id = Some((u16::from(hi & 0x7f) << 8) | u16::from(lo));
                } else {
                    picture_id = Some(u16::from(hi & 0x7f));
                }
            }
            if ext & 0x40 != 0 {
                tl0_pic_idx = Some(byte(&mut off)?);
            }
            if ext & 0x30 != 0 {
                byte(&mut off)?; // TID/Y/KEYIDX
            }
        }
        Ok(Self {
            start: required & 0x10 != 0,
            partition: required & 0x07,
            picture_id,
            tl0_pic_idx,
            len: off,
        })
    }

    /// Whether the packet starts a VP8 keyframe (S=1, PID=0 and P=0 in the payload header).
    pub fn starts_keyframe(&self, payload: &[u8]) -> bool {
        self.start && self.partition == 0 && payload.get(self.len).is_some_and(|h| h & 1 == 0)
    }
}

/// Reads the fields from a received payload and checks every byte against a rebuilt payload.
pub fn verify(payload: &[u8]) -> Result<Verified, PayloadError> {
    if payload.is_empty() {
        return Err(PayloadError::TooShort(0));
    }
    // Find the bot header: after the Opus TOC, or after the VP8 descriptor (+ payload header).
    let (kind, header_at, received) =
        if payload[0] == OPUS_TOC && payload.get(1..5) == Some(&MAGIC[..]) {
            (MediaKind::Audio, 1, None)
        } else {
            let d = Vp8Descriptor::parse(payload)?;
            let mut at = d.len;
            if d.start && d.partition == 0 {
                let keyframe = d.starts_keyframe(payload);
                at += if keyframe { 10 } else { 3 };
            }
            (MediaKind::Video, at, Some(d))
        };
    let header = payload
        .get(header_at..header_at + BOT_HEADER_LEN)
        .ok_or(PayloadError::TooShort(payload.len()))?;
    if header[0..4] != MAGIC || header[4] != VERSION {
        return Err(PayloadError::BadMagic);
    }
    if MediaKind::from_code(header[5]) != Some(kind) {
        return Err(PayloadError::BadKind);
    }
    let flags = header[6];
    let be64 = |b: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_be_bytes(a)
    };
    let fields = PayloadFields {
        kind,
        track_id: be64(&header[8..16]),
        seq: be64(&header[16..24]),
        sent_at_us: be64(&header[24..32]),
        frame: u32::from_be_bytes([header[32], header[33], header[34], header[35]]),
        keyframe: flags & FLAG_KEYFRAME != 0,
        frame_start: flags & FLAG_FRAME_START != 0,
        frame_end: flags & FLAG_FRAME_END != 0,
        len: u16::from_be_bytes([header[36], header[37]]),
        layer: header[7],
    };
    if usize::from(fields.len) != payload.len() || payload.len() < fields.min_len() {
        return Err(PayloadError::BadLength {
            field: usize::from(fields.len),
            actual: payload.len(),
        });
    }
    let expected = build(&fields);
    // The PictureID's 15 bits and the TL0PICIDX (bytes 2..=4 of a video payload) may be
    // rewritten; every other byte, the descriptor's width and flags included, must be identical.
    let video = kind == MediaKind::Video;
    let mut picture_id_rewritten = false;
    for (i, (a, b)) in expected.iter().zip(payload.iter()).enumerate() {
        if a != b {
            if video && VP8_NUMBERING_BYTES.contains(&i) && (i != 2 || (a & 0x80) == (b & 0x80)) {
                picture_id_rewritten = true;
                continue;
            }
            return Err(PayloadError::Mismatch(i));
        }
    }
    let (picture_id, tl0_pic_idx) = match received {
        Some(d) if d.picture_id.is_none() || d.tl0_pic_idx.is_none() => {
            return Err(PayloadError::BadDescriptor);
        }
        Some(d) => (d.picture_id, d.tl0_pic_idx),
        None => (None, None),
    };
    Ok(Verified {
        fields,
        picture_id_rewritten,
        picture_id,
        tl0_pic_idx,
    })
}

/// Deterministic filler: SplitMix64 seeded from every header field.
struct Filler {
    state: u64,
    buf: u64,
    left: u8,
}

impl Filler {
    fn new(f: &PayloadFields) -> Self {
        let seed = f.track_id
            ^ f.seq.rotate_left(17)
            ^ f.sent_at_us.rotate_left(31)
            ^ u64::from(f.frame).rotate_left(47)
            ^ (u64::from(f.flags()) << 56)
            ^ (u64::from(f.len) << 40)
            ^ (u64::from(f.layer) << 8)
            ^ u64::from(f.kind.code());
        Self {
            state: seed,
            buf: 0,
            left: 0,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_byte(&mut self) -> u8 {
        if self.left == 0 {
            self.buf = self.next_u64();
            self.left = 8;
        }
        let b = (self.buf & 0xff) as u8;
        self.buf >>= 8;
        self.left -= 1;
        b
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn video(seq: u64, keyframe: bool, start: bool, len: u16) -> PayloadFields {
        PayloadFields {
            kind: MediaKind::Video,
            track_id: 0xdead_beef_0102_0304,
            seq,
            sent_at_us: 1_700_000_000_000_000 + seq,
            frame: 40_000 + seq as u32,
            keyframe,
            frame_start: start,
            frame_end: true,
            len,
            layer: 2,
        }
    }

    #[test]
    fn audio_roundtrip() {
        let f = PayloadFields {
            kind: MediaKind::Audio,
            track_id: 7,
            seq: 3,
            sent_at_us: 99,
            frame: 3,
            keyframe: false,
            frame_start: true,
            frame_end: true,
            len: 100,
            layer: 0,
        };
        let p = build(&f);
        assert_eq!(p.len(), 100);
        assert_eq!(p[0], OPUS_TOC);
        let v = verify(&p).unwrap();
        assert_eq!(v.fields, f);
        assert!(!v.picture_id_rewritten);
    }

    #[test]
    fn video_roundtrip_and_str0m_agrees_on_keyframes() {
        for (keyframe, start) in [(true, true), (false, true), (true, false), (false, false)] {
            let f = video(5, keyframe, start, 1000);
            let p = build(&f);
            assert_eq!(p.len(), 1000);
            let v = verify(&p).unwrap();
            assert_eq!(v.fields, f);
            let ours = Vp8Descriptor::parse(&p).unwrap();
            let theirs = str0m::rtp::Vp8Descriptor::parse(&p).unwrap();
            assert_eq!(theirs.picture_id(), ours.picture_id);
            assert_eq!(theirs.picture_id(), Some(f.picture_id()));
            assert_eq!(theirs.tl0_pic_idx(), Some(f.tl0_pic_idx()));
            assert_eq!(theirs.tl0_pic_idx(), ours.tl0_pic_idx);
            assert_eq!(v.picture_id, Some(f.picture_id()));
            assert_eq!(v.tl0_pic_idx, Some(f.tl0_pic_idx()));
            assert_eq!(theirs.starts_keyframe(&p), keyframe && start);
            assert_eq!(ours.starts_keyframe(&p), keyframe && start);
        }
    }

    #[test]
    fn layers_number_their_pictures_from_far_apart_starts() {
        let at = |layer: u8, frame: u32| PayloadFields {
            layer,
            frame,
            ..video(1, false, true, 100)
        };
        for frame in [0, 1, 5000, 0x7fff, u32::MAX] {
            for (a, b) in [(0, 1), (1, 2), (0, 2)] {
                let (x, y) = (at(a, frame), at(b, frame));
                let pid_gap = y.picture_id().wrapping_sub(x.picture_id()) & 0x7fff;
                let tl0_gap = y.tl0_pic_idx().wrapping_sub(x.tl0_pic_idx());
                assert!((1000..0x7000).contains(&pid_gap), "{a}/{b} at {frame}");
                assert!((30..226).contains(&tl0_gap), "{a}/{b} at {frame}");
            }
            // Within a layer both count frames, wrapping.
            let (x, y) = (at(2, frame), at(2, frame.wrapping_add(1)));
            assert_eq!(y.picture_id(), (x.picture_id() + 1) & 0x7fff);
            assert_eq!(y.tl0_pic_idx(), x.tl0_pic_idx().wrapping_add(1));
        }
    }

    #[test]
    fn short_length_is_raised_to_minimum() {
        let f = video(1, true, true, 0);
        let p = build(&f);
        assert_eq!(p.len(), f.min_len());
        assert!(verify(&p).is_ok());
    }

    #[test]
    fn every_single_bit_flip_is_detected_except_picture_id() {
        let f = video(9, true, true, 120);
        let p = build(&f);
        for i in 0..p.len() {
            for bit in 0..8 {
                let mut q = p.clone();
                q[i] ^= 1 << bit;
                let r = verify(&q);
                let in_pid = i == 3 || i == 4 || (i == 2 && bit < 7);
                if in_pid {
                    assert!(r.unwrap().picture_id_rewritten, "byte {i} bit {bit}");
                } else {
                    assert!(r.is_err(), "flip at byte {i} bit {bit} went unnoticed");
                }
            }
        }
    }

    #[test]
    fn truncation_and_garbage_are_rejected() {
        let p = build(&video(2, false, true, 200));
        for n in 0..p.len() {
            assert!(verify(&p[..n]).is_err(), "truncated to {n}");
        }
        assert!(verify(&[0xff; 64]).is_err());
        assert!(verify(&[]).is_err());
        assert!(verify(&[0x80]).is_err());
    }

    #[test]
    fn payloads_of_different_packets_differ() {
        let a = build(&video(1, false, false, 300));
        let b = build(&video(2, false, false, 300));
        assert_ne!(a[20..], b[20..]);
    }
}
