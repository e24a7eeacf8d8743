//! VP9 over RTP (RFC 9628, formerly draft-ietf-payload-vp9), receiving side, sans-IO: RTP
//! payloads in, whole pictures out.
//!
//! Each payload starts with the VP9 payload descriptor:
//!
//! ```text
//!  I|P|L|F|B|E|V|Z           I: picture id present      P: inter-picture predicted
//!  [M|PICTURE ID (7/15 bit)] L: layer indices present   F: flexible mode
//!  [TID|U|SID|D]             B: starts a (layer) frame  E: ends a (layer) frame
//!  [TL0PICIDX]  (L, not F)   V: scalability structure   Z: not a reference upwards
//!  [P_DIFF|N] x1..3 (F, P)
//!  [SS]         (V)
//! ```
//!
//! A *picture* is everything with one RTP timestamp: one frame per spatial layer (one frame
//! without SVC), each from a packet with `B` to one with `E`; the RTP marker ends the
//! picture. A picture comes out when the run of sequence numbers from its first `B` packet
//! (spatial layer 0) to the marker is complete, as its layer frames in order, each without
//! the descriptors. Pictures come out in timestamp order; an incomplete one is given up (as
//! in [`crate::vp8`]) when a newer one completes or [`MAX_PENDING`] are waiting.
//!
//! The layer frames are kept apart because each is one encoded frame of the sender's
//! encoder, and the E2EE transform seals each on its own: they are opened one by one and
//! then joined into one VP9 superframe ([`superframe`]), which is what a WebM block of a
//! multi-layer picture holds. With one spatial layer (what Chromium sends for a single VP9
//! encoding without `scalabilityMode`) the block is the frame itself, byte for byte.

use std::collections::BTreeMap;

use thiserror::Error;

/// Pictures held while incomplete at most.
pub const MAX_PENDING: usize = 8;
/// Bytes one picture may reach at most.
pub const MAX_FRAME_BYTES: usize = 4 << 20;
/// Spatial layers one picture may have at most (SID is 3 bits; a superframe holds 8).
pub const MAX_LAYERS: usize = 8;

/// Why a payload descriptor does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DescriptorError {
    /// The payload is empty.
    #[error("empty VP9 payload")]
    Empty,
    /// The descriptor ends before the field its flags announce.
    #[error("VP9 payload descriptor truncated in {0}")]
    Truncated(&'static str),
    /// Flexible mode with more than three reference indices (`N` set on the third).
    #[error("VP9 payload descriptor has more than 3 reference indices")]
    TooManyReferences,
}

/// Layer indices (`L`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layer {
    /// `TID`: temporal layer.
    pub temporal: u8,
    /// `U`: switching-up point.
    pub switching_up: bool,
    /// `SID`: spatial layer.
    pub spatial: u8,
    /// `D`: depends on the spatial layer below (inter-layer prediction).
    pub inter_layer: bool,
}

/// The scalability structure (`V`), as far as the recorder uses it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scalability {
    /// Number of spatial layers (`N_S` + 1).
    pub spatial_layers: u8,
    /// Width and height of each spatial layer (`Y`), lowest first; empty without `Y`.
    pub sizes: Vec<(u16, u16)>,
    /// Pictures in the group of pictures description (`N_G`; 0 without `G`).
    pub pictures_in_group: u8,
}

/// A parsed VP9 payload descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Its length in bytes (the frame data follows).
    pub len: usize,
    /// `P`: inter-picture predicted (false on a keyframe).
    pub inter_picture: bool,
    /// `F`: flexible mode.
    pub flexible: bool,
    /// `B`: the packet starts a frame.
    pub begin: bool,
    /// `E`: the packet ends a frame.
    pub end: bool,
    /// `Z`: not used as a reference by the spatial layer above.
    pub not_upward_reference: bool,
    /// `PICTURE ID` (7 or 15 bits), if `I`.
    pub picture_id: Option<u16>,
    /// Layer indices, if `L`.
    pub layer: Option<Layer>,
    /// `TL0PICIDX` (non-flexible mode with `L`).
    pub tl0_pic_idx: Option<u8>,
    /// `P_DIFF`s (flexible mode with `P`): pictures referenced, as picture-id differences.
    pub references: Vec<u8>,
    /// The scalability structure, if `V`.
    pub scalability: Option<Scalability>,
}

fn byte(payload: &[u8], at: usize, what: &'static str) -> Result<u8, DescriptorError> {
    payload
        .get(at)
        .copied()
        .ok_or(DescriptorError::Truncated(what))
}

impl Descriptor {
    /// Parses the descriptor at the start of `payload`.
    ///
    /// # Errors
    /// The payload is empty or shorter than its flags say, or names more than three
    /// references.
    pub fn parse(payload: &[u8]) -> Result<Self, DescriptorError> {
        let b0 = *payload.first().ok_or(DescriptorError::Empty)?;
        let bit = |n: u8| b0 & (0x80 >> n) != 0;
        let (i, p, l, f, b, e, v, z) = (
            bit(0),
            bit(1),
            bit(2),
            bit(3),
            bit(4),
            bit(5),
            bit(6),
            bit(7),
        );
        let mut at = 1;
        let mut picture_id = None;
        if i {
            let m = byte(payload, at, "PICTURE ID")?;
            at += 1;
            picture_id = Some(if m & 0x80 != 0 {
                let lo = byte(payload, at, "extended PICTURE ID")?;
                at += 1;
                (u16::from(m & 0x7f) << 8) | u16::from(lo)
            } else {
                u16::from(m)
            });
        }
        let mut layer = None;
        let mut tl0_pic_idx = None;
        if l {
            let x = byte(payload, at, "layer indices")?;
            at += 1;
            layer = Some(Layer {
                temporal: x >> 5,
                switching_up: x & 0x10 != 0,
                spatial: (x >> 1) & 0x07,
                inter_layer: x & 0x01 != 0,
            });
            if !f {
                tl0_pic_idx = Some(byte(payload, at, "TL0PICIDX")?);
                at += 1;
            }
        }
        let mut references = Vec::new();
        if f && p {
            loop {
                if references.len() == 3 {
                    return Err(DescriptorError::TooManyReferences);
                }
                let r = byte(payload, at, "P_DIFF")?;
                at += 1;
                references.push(r >> 1);
                if r & 0x01 == 0 {
                    break;
                }
            }
        }
        let mut scalability = None;
        if v {
            let s = byte(payload, at, "scalability structure")?;
            at += 1;
            let n_s = (s >> 5) + 1;
            let (y, g) = (s & 0x10 != 0, s & 0x08 != 0);
            let mut ss = Scalability {
                spatial_layers: n_s,
                ..Scalability::default()
            };
            if y {
                for _ in 0..n_s {
                    let w = u16::from_be_bytes([
                        byte(payload, at, "SS WIDTH")?,
                        byte(payload, at + 1, "SS WIDTH")?,
                    ]);
                    let h = u16::from_be_bytes([
                        byte(payload, at + 2, "SS HEIGHT")?,
                        byte(payload, at + 3, "SS HEIGHT")?,
                    ]);
                    at += 4;
                    ss.sizes.push((w, h));
                }
            }
            if g {
                let n_g = byte(payload, at, "SS N_G")?;
                at += 1;
                ss.pictures_in_group = n_g;
                for _ in 0..n_g {
                    let d = byte(payload, at, "SS picture description")?;
                    at += 1;
                    // R: how many P_DIFF bytes follow.
                    at += usize::from((d >> 2) & 0x03);
                    if at > payload.len() {
                        return Err(DescriptorError::Truncated("SS P_DIFF"));
                    }
                }
            }
            scalability = Some(ss);
        }
        Ok(Self {
            len: at,
            inter_picture: p,
            flexible: f,
            begin: b,
            end: e,
            not_upward_reference: z,
            picture_id,
            layer,
            tl0_pic_idx,
            references,
            scalability,
        })
    }

    /// The spatial layer (0 without layer indices).
    #[must_use]
    pub fn spatial(&self) -> u8 {
        self.layer.map_or(0, |l| l.spatial)
    }
}

/// Why a VP9 frame's uncompressed header does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HeaderError {
    /// The frame ends inside the header.
    #[error("VP9 frame header truncated")]
    Truncated,
    /// `frame_marker` is not 2: not a VP9 frame (or still sealed).
    #[error("not a VP9 frame (frame marker)")]
    FrameMarker,
    /// A keyframe without the sync code 0x49 0x83 0x42.
    #[error("VP9 keyframe without its sync code")]
    SyncCode,
}

/// What the recorder reads from a VP9 frame's uncompressed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// `profile` (0..=3).
    pub profile: u8,
    /// `show_existing_frame`: the frame only repeats a decoded one.
    pub show_existing: bool,
    /// `frame_type` is KEY_FRAME.
    pub keyframe: bool,
    /// Width and height (keyframes).
    pub size: Option<(u32, u32)>,
}

struct Bits<'a> {
    data: &'a [u8],
    at: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Result<u32, HeaderError> {
        let b = self.data.get(self.at / 8).ok_or(HeaderError::Truncated)?;
        let v = (b >> (7 - self.at % 8)) & 1;
        self.at += 1;
        Ok(u32::from(v))
    }

    fn bits(&mut self, n: u32) -> Result<u32, HeaderError> {
        let mut v = 0;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Ok(v)
    }
}

/// Parses the start of a VP9 frame's uncompressed header (VP9 bitstream spec §6.2): the
/// profile, `show_existing_frame`, `frame_type` and, on a keyframe, the frame size. For a
/// superframe this is its first frame's header.
///
/// # Errors
/// The frame is not VP9 (wrong frame marker, a keyframe without its sync code) or too short.
pub fn parse_header(frame: &[u8]) -> Result<FrameHeader, HeaderError> {
    let mut r = Bits { data: frame, at: 0 };
    if r.bits(2)? != 2 {
        return Err(HeaderError::FrameMarker);
    }
    let low = r.bit()?;
    let high = r.bit()?;
    let profile = u8::try_from((high << 1) | low).unwrap_or(0);
    if profile == 3 {
        r.bit()?; // reserved_zero
    }
    if r.bit()? == 1 {
        r.bits(3)?; // frame_to_show_map_idx
        return Ok(FrameHeader {
            profile,
            show_existing: true,
            keyframe: false,
            size: None,
        });
    }
    let keyframe = r.bit()? == 0;
    r.bits(2)?; // show_frame, error_resilient_mode
    if !keyframe {
        return Ok(FrameHeader {
            profile,
            show_existing: false,
            keyframe: false,
            size: None,
        });
    }
    if r.bits(24)? != 0x49_83_42 {
        return Err(HeaderError::SyncCode);
    }
    // color_config()
    if profile >= 2 {
        r.bit()?; // ten_or_twelve_bit
    }
    let color_space = r.bits(3)?;
    if color_space != 7 {
        r.bit()?; // color_range
        if profile == 1 || profile == 3 {
            r.bits(3)?; // subsampling_x, subsampling_y, reserved_zero
        }
    } else if profile == 1 || profile == 3 {
        r.bit()?; // reserved_zero
    }
    // frame_size()
    let w = r.bits(16)? + 1;
    let h = r.bits(16)? + 1;
    Ok(FrameHeader {
        profile,
        show_existing: false,
        keyframe: true,
        size: Some((w, h)),
    })
}

/// Whether a (decrypted) VP9 frame or superframe starts with a keyframe.
#[must_use]
pub fn is_keyframe(frame: &[u8]) -> bool {
    parse_header(frame).is_ok_and(|h| h.keyframe)
}

/// Joins the frames of one picture into a VP9 superframe (VP9 bitstream spec Annex B): the
/// frames back to back, then an index (marker byte, each frame's size in 1 to 4 bytes little
/// endian, marker byte). One frame is returned as it is. `None` for no frames, more than 8,
/// or a frame of 4 GiB or more.
#[must_use]
pub fn superframe(frames: &[Vec<u8>]) -> Option<Vec<u8>> {
    match frames {
        [] => None,
        [one] => Some(one.clone()),
        _ if frames.len() > MAX_LAYERS => None,
        _ => {
            let largest = frames.iter().map(Vec::len).max().unwrap_or(0);
            let largest = u32::try_from(largest).ok()?;
            let mag: u8 = match largest {
                0..=0xff => 1,
                0x100..=0xffff => 2,
                0x1_0000..=0xff_ffff => 3,
                _ => 4,
            };
            let n = u8::try_from(frames.len()).ok()?;
            let marker = 0xc0 | ((mag - 1) << 3) | (n - 1);
            let total: usize = frames.iter().map(Vec::len).sum();
            let mut out = Vec::with_capacity(total + 2 + usize::from(mag) * frames.len());
            for f in frames {
                out.extend_from_slice(f);
            }
            out.push(marker);
            for f in frames {
                let size = u32::try_from(f.len()).ok()?.to_le_bytes();
                out.extend_from_slice(&size[..usize::from(mag)]);
            }
            out.push(marker);
            Some(out)
        }
    }
}

/// One reassembled picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    /// Extended RTP timestamp.
    pub timestamp: i64,
    /// Its frames (one per spatial layer, lowest first), descriptors removed; still sealed
    /// with E2EE.
    pub frames: Vec<Vec<u8>>,
    /// The first frame's descriptor has `P` = 0: a keyframe (the decrypted header says it
    /// too; [`is_keyframe`]).
    pub keyframe: bool,
    /// Width and height of the highest spatial layer, from a scalability structure in the
    /// picture (senders put one on keyframes).
    pub size: Option<(u32, u32)>,
}

#[derive(Debug)]
struct Packet {
    begin: bool,
    end: bool,
    marker: bool,
    spatial: u8,
    inter_picture: bool,
    size: Option<(u16, u16)>,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct Pending {
    packets: BTreeMap<u64, Packet>,
    bytes: usize,
}

impl Pending {
    /// The picture, if the run from the first `B` packet of spatial layer 0 to the marker is
    /// complete and well formed.
    fn complete(&self, timestamp: i64) -> Option<Picture> {
        let (&first, p0) = self.packets.iter().find(|(_, p)| p.begin)?;
        if p0.spatial != 0 {
            return None; // the base layer's start is missing
        }
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let mut open = false;
        let mut size = None;
        for (expect, (&seq, p)) in (first..).zip(self.packets.range(first..)) {
            if seq != expect {
                return None;
            }
            if p.begin {
                if open || frames.len() == MAX_LAYERS {
                    return None; // a frame starts inside another one
                }
                frames.push(Vec::new());
                open = true;
            } else if !open {
                return None; // data between frames
            }
            if let Some(s) = p.size {
                size = Some(s);
            }
            frames.last_mut()?.extend_from_slice(&p.data);
            if p.end {
                open = false;
            }
            if p.marker {
                if open {
                    return None; // the marker inside a frame
                }
                return Some(Picture {
                    timestamp,
                    frames,
                    keyframe: !p0.inter_picture,
                    size: size
                        .filter(|&(w, h)| w > 0 && h > 0)
                        .map(|(w, h)| (u32::from(w), u32::from(h))),
                });
            }
        }
        None
    }
}

/// Reassembles pictures from one RTP stream.
#[derive(Debug, Default)]
pub struct Assembler {
    pending: BTreeMap<i64, Pending>,
    last_out: Option<i64>,
    last_ts: Option<(u32, i64)>,
    /// Pictures given up (incomplete, malformed, too large) or dropped (too old).
    pub lost: u64,
    /// Payloads whose descriptor does not parse.
    pub malformed: u64,
}

impl Assembler {
    /// One RTP packet; returns the picture it completes, if any.
    ///
    /// # Errors
    /// The payload descriptor does not parse (the packet is dropped and counted in
    /// `malformed`; the stream goes on).
    pub fn push(
        &mut self,
        seq: u64,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Result<Option<Picture>, DescriptorError> {
        let d = match Descriptor::parse(payload) {
            Ok(d) => d,
            Err(e) => {
                self.malformed += 1;
                return Err(e);
            }
        };
        let ts = self.extend(timestamp);
        if self.last_out.is_some_and(|l| ts <= l) {
            return Ok(None); // a late copy of a picture already out (or given up)
        }
        let data = payload.get(d.len..).unwrap_or_default();
        let p = self.pending.entry(ts).or_default();
        p.bytes += data.len();
        if p.bytes > MAX_FRAME_BYTES {
            self.pending.remove(&ts);
            self.lost += 1;
            return Ok(None);
        }
        // The largest spatial layer's size, if the packet carries the structure.
        let size = d.scalability.as_ref().and_then(|s| {
            s.sizes
                .iter()
                .copied()
                .max_by_key(|&(w, h)| u32::from(w) * u32::from(h))
        });
        p.packets.insert(
            seq,
            Packet {
                begin: d.begin,
                end: d.end,
                marker,
                spatial: d.spatial(),
                inter_picture: d.inter_picture,
                size,
                data: data.to_vec(),
            },
        );
        let mut out = None;
        if let Some(picture) = p.complete(ts) {
            let older: Vec<i64> = self.pending.range(..ts).map(|(k, _)| *k).collect();
            self.lost += older.len() as u64;
            for k in older {
                self.pending.remove(&k);
            }
            self.pending.remove(&ts);
            self.last_out = Some(ts);
            out = Some(picture);
        }
        while self.pending.len() > MAX_PENDING {
            self.pending.pop_first();
            self.lost += 1;
        }
        Ok(out)
    }

    fn extend(&mut self, ts: u32) -> i64 {
        let ext = match self.last_ts {
            None => i64::from(ts),
            Some((raw, ext)) => ext + i64::from(ts.wrapping_sub(raw).cast_signed()),
        };
        self.last_ts = Some((ts, ext));
        ext
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    /// A VP9 keyframe header (profile 0, BT.601, studio range) of `w`x`h`, then `rest`.
    pub(crate) fn keyframe(w: u16, h: u16, rest: &[u8]) -> Vec<u8> {
        // frame_marker 10, profile 00, show_existing 0, frame_type 0, show_frame 1,
        // error_resilient 0 -> 1000 0010 = 0x82; sync code; color_space 001 (BT.601),
        // color_range 0, then width-1 and height-1 (16 bits each), then 0 bits.
        let mut bits: Vec<u8> = Vec::new();
        let mut push = |v: u32, n: u32| {
            for i in (0..n).rev() {
                bits.push(u8::try_from((v >> i) & 1).unwrap());
            }
        };
        push(0b10, 2);
        push(0, 2);
        push(0, 1);
        push(0, 1);
        push(1, 1);
        push(0, 1);
        push(0x49_83_42, 24);
        push(1, 3);
        push(0, 1);
        push(u32::from(w) - 1, 16);
        push(u32::from(h) - 1, 16);
        while !bits.len().is_multiple_of(8) {
            bits.push(0);
        }
        let mut out: Vec<u8> = bits
            .chunks(8)
            .map(|c| c.iter().fold(0u8, |a, b| (a << 1) | b))
            .collect();
        out.extend_from_slice(rest);
        out
    }

    /// An inter frame header (frame_type 1), then `rest`.
    pub(crate) fn inter_frame(rest: &[u8]) -> Vec<u8> {
        // 10 00 0 1 1 0 = 0x86
        let mut out = vec![0x86];
        out.extend_from_slice(rest);
        out
    }

    /// Packetizes the layer frames of one picture into payloads of at most `chunk` data
    /// bytes, non-flexible mode with a 15-bit picture id and layer indices; returns
    /// `(marker, payload)` per packet.
    pub(crate) fn packetize(
        frames: &[Vec<u8>],
        key: bool,
        chunk: usize,
        ss: bool,
    ) -> Vec<(bool, Vec<u8>)> {
        let mut out = Vec::new();
        for (sid, f) in frames.iter().enumerate() {
            let chunks: Vec<&[u8]> = f.chunks(chunk).collect();
            for (i, c) in chunks.iter().enumerate() {
                let (b, e) = (i == 0, i + 1 == chunks.len());
                let with_ss = ss && sid == 0 && b;
                let b0 = 0x80 // I
                    | if key { 0 } else { 0x40 } // P
                    | 0x20 // L
                    | if b { 0x08 } else { 0 }
                    | if e { 0x04 } else { 0 }
                    | if with_ss { 0x02 } else { 0 };
                let sid = u8::try_from(sid).unwrap();
                let mut p = vec![b0, 0x80 | 0x12, 0x34, (sid << 1) | u8::from(sid > 0), 7];
                if with_ss {
                    let n = u8::try_from(frames.len() - 1).unwrap();
                    p.push((n << 5) | 0x10);
                    for s in 0..frames.len() {
                        let k = u16::try_from(s + 1).unwrap();
                        p.extend_from_slice(&(320 * k).to_be_bytes());
                        p.extend_from_slice(&(180 * k).to_be_bytes());
                    }
                }
                p.extend_from_slice(c);
                let marker = e && usize::from(sid) + 1 == frames.len();
                out.push((marker, p));
            }
        }
        out
    }

    #[test]
    fn descriptors_of_every_shape_parse() {
        // B and E only.
        let d = Descriptor::parse(&[0x0c, 0xaa]).unwrap();
        assert_eq!(
            (d.len, d.begin, d.end, d.inter_picture),
            (1, true, true, false)
        );
        assert_eq!((d.picture_id, d.layer), (None, None));
        // 7-bit and 15-bit picture ids.
        assert_eq!(
            Descriptor::parse(&[0x88, 0x05]).unwrap().picture_id,
            Some(5)
        );
        let d = Descriptor::parse(&[0xc8, 0x81, 0x02, 0xff]).unwrap();
        assert_eq!(
            (d.len, d.picture_id, d.inter_picture),
            (3, Some(0x102), true)
        );
        // Layer indices, non-flexible: TID 2, U, SID 1, D; TL0PICIDX 9.
        let d = Descriptor::parse(&[0xa8, 0x05, 0b0101_0011, 9]).unwrap();
        assert_eq!(d.len, 4);
        assert_eq!(
            d.layer,
            Some(Layer {
                temporal: 2,
                switching_up: true,
                spatial: 1,
                inter_layer: true
            })
        );
        assert_eq!(d.tl0_pic_idx, Some(9));
        // Flexible with P: two references (N on the first), no TL0PICIDX.
        let d = Descriptor::parse(&[0xf8, 0x05, 0x00, (1 << 1) | 1, 3 << 1, 0xee]).unwrap();
        assert_eq!(
            (d.len, d.references.clone(), d.tl0_pic_idx),
            (5, vec![1, 3], None)
        );
        assert!(d.flexible);
        // Scalability structure: 2 spatial layers with sizes, a group of 2 pictures.
        let d = Descriptor::parse(&[
            0x0a, 0x38, 0x01, 0x40, 0x00, 0xb4, 0x02, 0x80, 0x01, 0x68, 2, 0x04, 1, 0x00,
        ])
        .unwrap();
        let ss = d.scalability.unwrap();
        assert_eq!(ss.spatial_layers, 2);
        assert_eq!(ss.sizes, vec![(320, 180), (640, 360)]);
        assert_eq!(ss.pictures_in_group, 2);
        assert_eq!(d.len, 14);
        assert!(d.begin);
    }

    #[test]
    fn malformed_descriptors_are_typed_errors() {
        assert_eq!(Descriptor::parse(&[]), Err(DescriptorError::Empty));
        assert_eq!(
            Descriptor::parse(&[0x80]),
            Err(DescriptorError::Truncated("PICTURE ID"))
        );
        assert_eq!(
            Descriptor::parse(&[0x80, 0x81]),
            Err(DescriptorError::Truncated("extended PICTURE ID"))
        );
        assert_eq!(
            Descriptor::parse(&[0x20, 0x00]),
            Err(DescriptorError::Truncated("TL0PICIDX"))
        );
        assert_eq!(
            Descriptor::parse(&[0x50, 0x03, 0x03, 0x03, 0x02]),
            Err(DescriptorError::TooManyReferences)
        );
        assert_eq!(
            Descriptor::parse(&[0x50, 0x03]),
            Err(DescriptorError::Truncated("P_DIFF"))
        );
        assert_eq!(
            Descriptor::parse(&[0x02, 0x10, 0x01, 0x40, 0x00]),
            Err(DescriptorError::Truncated("SS HEIGHT"))
        );
        assert_eq!(
            Descriptor::parse(&[0x02, 0x08, 1, 0x0c, 1]),
            Err(DescriptorError::Truncated("SS P_DIFF"))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(d) = Descriptor::parse(&bytes) {
                prop_assert!(d.len <= bytes.len());
            }
            let _ = parse_header(&bytes);
            let mut a = Assembler::default();
            for (i, c) in bytes.chunks(5).enumerate() {
                let _ = a.push(i as u64, 100, c.first().is_some_and(|b| b & 1 == 1), c);
            }
        }
    }

    #[test]
    fn headers_give_keyframes_and_sizes() {
        let k = keyframe(640, 360, &[1, 2, 3]);
        let h = parse_header(&k).unwrap();
        assert_eq!((h.keyframe, h.size, h.profile), (true, Some((640, 360)), 0));
        assert!(is_keyframe(&k));
        assert!(!is_keyframe(&inter_frame(&[9; 4])));
        assert_eq!(parse_header(&inter_frame(&[])).unwrap().size, None);
        // show_existing_frame: 10 00 1 xxx
        assert!(parse_header(&[0x88]).unwrap().show_existing);
        assert_eq!(parse_header(&[0x00, 0x00]), Err(HeaderError::FrameMarker));
        assert_eq!(parse_header(&k[..6]), Err(HeaderError::Truncated));
        let mut bad = k.clone();
        bad[1] ^= 0xff;
        assert_eq!(parse_header(&bad), Err(HeaderError::SyncCode));
        assert_eq!(parse_header(&[]), Err(HeaderError::Truncated));
    }

    #[test]
    fn superframes_carry_an_index_at_both_ends() {
        assert_eq!(superframe(&[]), None);
        assert_eq!(superframe(&[vec![1, 2]]), Some(vec![1, 2]));
        let s = superframe(&[vec![7; 3], vec![8; 300]]).unwrap();
        // Two frames, sizes in 2 bytes: 110 01 001 = 0xc9.
        assert_eq!(s.len(), 303 + 2 + 4);
        assert_eq!(&s[303..], &[0xc9, 3, 0, 0x2c, 0x01, 0xc9]);
        let nine: Vec<Vec<u8>> = (0..9).map(|_| vec![0]).collect();
        assert_eq!(superframe(&nine), None);
    }

    #[test]
    fn one_layer_pictures_reassemble_in_and_out_of_order() {
        let mut a = Assembler::default();
        let f1 = keyframe(320, 180, &(0..200).map(|i| i as u8).collect::<Vec<_>>());
        let pk = packetize(std::slice::from_ref(&f1), true, 80, true);
        assert_eq!(pk.len(), 3);
        assert_eq!(a.push(10, 1000, pk[0].0, &pk[0].1).unwrap(), None);
        assert_eq!(a.push(11, 1000, pk[1].0, &pk[1].1).unwrap(), None);
        let p = a.push(12, 1000, pk[2].0, &pk[2].1).unwrap().unwrap();
        assert_eq!(p.frames, vec![f1.clone()]);
        assert!(p.keyframe);
        assert_eq!(p.size, Some((320, 180)));
        // Reordered delta frame.
        let f2 = inter_frame(&[5; 150]);
        let pk = packetize(std::slice::from_ref(&f2), false, 60, false);
        assert_eq!(a.push(15, 4000, pk[2].0, &pk[2].1).unwrap(), None);
        assert_eq!(a.push(13, 4000, pk[0].0, &pk[0].1).unwrap(), None);
        let p = a.push(14, 4000, pk[1].0, &pk[1].1).unwrap().unwrap();
        assert_eq!((p.frames, p.keyframe, p.size), (vec![f2], false, None));
        // A late duplicate is not handed out again.
        assert_eq!(
            a.push(12, 1000, true, &packetize(&[f1], true, 500, false)[0].1)
                .unwrap(),
            None
        );
        assert_eq!(a.lost, 0);
    }

    #[test]
    fn spatial_layers_come_out_as_one_picture_of_several_frames() {
        let mut a = Assembler::default();
        let frames = vec![keyframe(320, 180, &[1; 90]), inter_frame(&[2; 130])];
        let pk = packetize(&frames, true, 50, true);
        let mut got = None;
        for (i, (m, p)) in pk.iter().enumerate() {
            let r = a.push(100 + i as u64, 9000, *m, p).unwrap();
            assert_eq!(
                r.is_some(),
                i + 1 == pk.len(),
                "only the marker completes it"
            );
            got = got.or(r);
        }
        let p = got.unwrap();
        assert_eq!(p.frames, frames);
        assert!(p.keyframe);
        assert_eq!(p.size, Some((640, 360)), "the top layer's size");
        let s = superframe(&p.frames).unwrap();
        assert!(is_keyframe(&s));
    }

    #[test]
    fn a_picture_with_a_hole_or_without_its_base_is_given_up() {
        let mut a = Assembler::default();
        let pk = packetize(&[inter_frame(&[1; 100])], false, 40, false);
        a.push(1, 100, pk[0].0, &pk[0].1).unwrap();
        a.push(3, 100, pk[2].0, &pk[2].1).unwrap(); // 2 never comes
        // The next picture has only its upper layer (the base was lost).
        let two = packetize(
            &[inter_frame(&[2; 10]), inter_frame(&[3; 10])],
            false,
            100,
            false,
        );
        assert_eq!(a.push(5, 200, two[1].0, &two[1].1).unwrap(), None);
        let ok = packetize(&[inter_frame(&[4; 10])], false, 100, false);
        let p = a.push(6, 300, ok[0].0, &ok[0].1).unwrap().unwrap();
        assert_eq!(p.timestamp, 300);
        assert_eq!(a.lost, 2);
        assert_eq!(a.push(2, 100, pk[1].0, &pk[1].1).unwrap(), None);
        assert_eq!(a.push(7, 400, true, &[]), Err(DescriptorError::Empty));
        assert_eq!(a.malformed, 1);
    }

    #[test]
    fn oversized_pictures_and_too_many_pending_are_bounded() {
        let mut a = Assembler::default();
        let big = vec![0x08; 64 * 1024];
        let mut seq = 0;
        for _ in 0..=(MAX_FRAME_BYTES / big.len()) {
            seq += 1;
            a.push(seq, 7, false, &big).unwrap();
        }
        assert_eq!(a.lost, 1);
        for ts in 0..20u32 {
            a.push(1000 + u64::from(ts), 100 + ts, false, &[0x08, 1])
                .unwrap();
        }
        assert!(a.pending.len() <= MAX_PENDING);
    }
}
