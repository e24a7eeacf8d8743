//! Codec-aware clear ranges: which bytes of an encoded frame the sender leaves
//! unencrypted so that stock WebRTC packetizers and depacketizers still work
//! (DAVE v1.1.4, libdave `codec_utils`).
//!
//! | Codec | Clear bytes | Browser to browser |
//! |-------|-------------|--------------------|
//! | Opus  | none | works |
//! | VP8   | 10 on a keyframe (`byte0 & 1 == 0`: frame tag, start code, dimensions), 1 on a delta frame | works |
//! | VP9   | none (the depacketizer only reads the RTP payload descriptor) | works |
//! | H.264 | every start code, rewritten as `00 00 00 01`; slice / IDR NALs: header and the slice-header bytes through `pps_id` (emulation prevention skipped while parsing); other NALs fully clear | works where the browser has H.264; the sender retries with a new nonce when ciphertext or trailer forms a start code |
//! | H.265 | start codes as for H.264; VCL NALs (type < 32): the 2-byte header; other NALs fully clear | only where the browser sends H.265 (Safari, recent Chrome with hardware support) |
//! | AV1   | OBU header, extension byte and minimal LEB128 size; types 2, 8, 15 dropped; the last OBU loses its size field | **does not work between browsers**: the last OBU's size is removed so the trailer can follow it, which needs a patched AV1 depacketizer browsers do not have |
//!
//! An unknown codec, or a frame the parser does not understand, is encrypted
//! whole. The output frame can differ from the input (H.264/H.265 start codes
//! are widened to 4 bytes, AV1 OBUs rewritten); the receiver gets the rewritten
//! bytes back after decryption.

use super::trailer::{ClearRange, write_leb128};

/// The codec of an encoded frame, as the sender knows it from the track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Opus audio: fully encrypted.
    Opus,
    /// VP8 video.
    Vp8,
    /// VP9 video: fully encrypted.
    Vp9,
    /// H.264 video in Annex-B form.
    H264,
    /// H.265 video in Annex-B form.
    H265,
    /// AV1 video (low-overhead OBU stream); not browser-safe, see module docs.
    Av1,
    /// Any other codec: fully encrypted.
    Unknown,
}

impl Codec {
    /// Maps a WebRTC MIME type (`audio/opus`, `video/VP8`, `video/H264`, …) to
    /// a codec, case-insensitively.
    #[must_use]
    pub fn from_mime_type(mime: &str) -> Self {
        let subtype = mime.rsplit('/').next().unwrap_or(mime);
        match subtype.to_ascii_lowercase().as_str() {
            "opus" => Self::Opus,
            "vp8" => Self::Vp8,
            "vp9" => Self::Vp9,
            "h264" => Self::H264,
            "h265" | "hevc" => Self::H265,
            "av1" => Self::Av1,
            _ => Self::Unknown,
        }
    }

    /// `true` for H.264 and H.265, whose packetizers split frames on start
    /// codes (so ciphertext and trailer must not contain one).
    #[must_use]
    pub fn uses_start_codes(self) -> bool {
        matches!(self, Self::H264 | Self::H265)
    }
}

/// A frame rewritten for encryption: the bytes in wire order and the ranges
/// that stay clear (ascending, non-overlapping, adjacent ranges merged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameLayout {
    /// The (possibly rewritten) frame.
    pub bytes: Vec<u8>,
    /// The clear ranges of `bytes`.
    pub clear: Vec<ClearRange>,
}

impl FrameLayout {
    /// Empties the layout, keeping its allocations.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.clear.clear();
    }

    fn push_clear(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let offset = self.bytes.len();
        self.bytes.extend_from_slice(data);
        match self.clear.last_mut() {
            Some(last) if last.end() == offset => last.len += data.len(),
            _ => self.clear.push(ClearRange {
                offset,
                len: data.len(),
            }),
        }
    }

    fn push_encrypted(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
    }

    /// Fills the layout for `frame` of `codec`. Returns `false` when the frame
    /// could not be parsed and was laid out fully encrypted instead.
    pub fn build(&mut self, codec: Codec, frame: &[u8]) -> bool {
        self.clear();
        let parsed = match codec {
            Codec::Opus | Codec::Vp9 | Codec::Unknown => {
                self.push_encrypted(frame);
                return true;
            }
            Codec::Vp8 => self.vp8(frame),
            Codec::H264 => self.h26x(frame, H26x::H264),
            Codec::H265 => self.h26x(frame, H26x::H265),
            Codec::Av1 => self.av1(frame),
        };
        if parsed.is_none() {
            self.clear();
            self.push_encrypted(frame);
            return false;
        }
        true
    }

    fn vp8(&mut self, frame: &[u8]) -> Option<()> {
        const KEYFRAME_CLEAR: usize = 10;
        const DELTA_CLEAR: usize = 1;
        let first = *frame.first()?;
        let clear = if first & 1 == 0 {
            KEYFRAME_CLEAR
        } else {
            DELTA_CLEAR
        };
        if frame.len() < clear {
            return None;
        }
        self.push_clear(&frame[..clear]);
        self.push_encrypted(&frame[clear..]);
        Some(())
    }

    fn h26x(&mut self, frame: &[u8], kind: H26x) -> Option<()> {
        // The frame must begin with a start code; bytes before it would be lost.
        let (mut nal_start, first_code_len) = next_start_code(frame, 0)?;
        if nal_start != first_code_len {
            return None;
        }
        loop {
            let next = next_start_code(frame, nal_start);
            let nal_end = next.map_or(frame.len(), |(start, code_len)| start - code_len);
            let nal = frame.get(nal_start..nal_end)?;
            if nal.len() < kind.header_len() {
                return None;
            }
            self.push_clear(&LONG_START_CODE);
            match kind.clear_prefix(nal)? {
                Some(clear) => {
                    self.push_clear(&nal[..clear]);
                    self.push_encrypted(&nal[clear..]);
                }
                None => self.push_clear(nal),
            }
            match next {
                Some((start, _)) => nal_start = start,
                None => return Some(()),
            }
        }
    }

    fn av1(&mut self, frame: &[u8]) -> Option<()> {
        const HAS_EXTENSION: u8 = 0b0000_0100;
        const HAS_SIZE: u8 = 0b0000_0010;
        const TYPE_MASK: u8 = 0b0111_1000;
        const TEMPORAL_DELIMITER: u8 = 2;
        const TILE_LIST: u8 = 8;
        const PADDING: u8 = 15;
        // AV1 leb128() is at most 8 bytes.
        const MAX_SIZE_LEN: usize = 8;

        let mut pos = 0usize;
        let mut size_buf = Vec::with_capacity(MAX_SIZE_LEN);
        while pos < frame.len() {
            let header = frame[pos];
            let header_pos = pos;
            pos += 1;
            let has_extension = header & HAS_EXTENSION != 0;
            let has_size = header & HAS_SIZE != 0;
            let obu_type = (header & TYPE_MASK) >> 3;
            if has_extension {
                pos += 1;
            }
            if pos > frame.len() || (has_size && pos >= frame.len()) {
                return None;
            }
            let payload_len = if has_size {
                let (size, used) = read_av1_leb128(&frame[pos..])?;
                pos += used;
                let size = usize::try_from(size).ok()?;
                if size > frame.len() - pos {
                    return None;
                }
                size
            } else {
                frame.len() - pos
            };
            let payload = &frame[pos..pos + payload_len];
            pos += payload_len;
            if matches!(obu_type, TEMPORAL_DELIMITER | TILE_LIST | PADDING) {
                continue;
            }
            let last = pos == frame.len();
            let keep_size = has_size && !last;
            let new_header = if last { header & !HAS_SIZE } else { header };
            self.push_clear(&[new_header]);
            if has_extension {
                self.push_clear(&frame[header_pos + 1..header_pos + 2]);
            }
            if keep_size {
                size_buf.clear();
                write_leb128(payload_len as u64, &mut size_buf);
                self.push_clear(&size_buf);
            }
            self.push_encrypted(payload);
        }
        Some(())
    }
}

/// AV1 `leb128()`: up to 8 bytes, padding allowed (it is re-encoded minimally).
fn read_av1_leb128(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (index, &byte) in bytes.iter().enumerate().take(8) {
        value |= u64::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, index + 1));
        }
    }
    None
}

const LONG_START_CODE: [u8; 4] = [0, 0, 0, 1];

#[derive(Debug, Clone, Copy)]
enum H26x {
    H264,
    H265,
}

impl H26x {
    fn header_len(self) -> usize {
        match self {
            Self::H264 => 1,
            Self::H265 => 2,
        }
    }

    /// `Some(Some(n))`: the first `n` bytes of the NAL stay clear, the rest is
    /// encrypted; `Some(None)`: the whole NAL stays clear; `None`: the NAL
    /// cannot be parsed (the caller then encrypts the whole frame).
    fn clear_prefix(self, nal: &[u8]) -> Option<Option<usize>> {
        match self {
            Self::H264 => {
                const SLICE: u8 = 1;
                const IDR: u8 = 5;
                let nal_type = nal[0] & 0x1F;
                if nal_type != SLICE && nal_type != IDR {
                    return Some(None);
                }
                let covered = bytes_covering_pps_id(&nal[1..])?;
                Some(Some(1 + covered))
            }
            Self::H265 => {
                let nal_type = (nal[0] & 0x7E) >> 1;
                Some((nal_type < 32).then_some(2))
            }
        }
    }
}

/// Bytes of an H.264 slice payload (after the NAL header) that cover the
/// first three exp-Golomb fields (`first_mb_in_slice`, `slice_type`,
/// `pps_id`), counting emulation-prevention bytes. Matches libdave: the count
/// is `bit_position / 8 + 1`, clamped to the payload.
fn bytes_covering_pps_id(payload: &[u8]) -> Option<usize> {
    const EMULATION_PREVENTION: u8 = 0x03;
    let total_bits = payload.len().checked_mul(8)?;
    let mut bit = 0usize;
    let mut zeros = 0u32;
    let mut values = 0;
    while values < 3 {
        if bit >= total_bits {
            return None;
        }
        let byte_index = bit / 8;
        let bit_index = bit % 8;
        let byte = payload[byte_index];
        if bit_index == 0
            && byte_index >= 2
            && byte == EMULATION_PREVENTION
            && payload[byte_index - 1] == 0
            && payload[byte_index - 2] == 0
        {
            bit += 8;
            continue;
        }
        if byte & (0x80 >> bit_index) == 0 {
            zeros += 1;
            bit += 1;
            if zeros >= 32 {
                return None;
            }
        } else {
            values += 1;
            bit += 1 + zeros as usize;
            zeros = 0;
        }
    }
    if bit > total_bits {
        return None;
    }
    Some((bit / 8 + 1).min(payload.len()))
}

/// Finds the next `00 00 01` at or after `from`; returns the index of the NAL
/// unit after it and the start code's length (4 when a zero byte precedes it).
pub(crate) fn next_start_code(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i + 3 <= buf.len() {
        if buf[i + 2] > 1 {
            i += 3;
        } else if buf[i + 1] != 0 {
            i += 2;
        } else if buf[i] != 0 || buf[i + 2] != 1 {
            i += 1;
        } else {
            let code_len = if i >= 1 && buf[i - 1] == 0 { 4 } else { 3 };
            return Some((i + 3, code_len));
        }
    }
    None
}

/// `true` when `buf[from..to]` contains `00 00 01`.
pub(crate) fn contains_start_code(buf: &[u8], from: usize, to: usize) -> bool {
    buf.get(from..to)
        .is_some_and(|window| window.windows(3).any(|w| w == [0, 0, 1]))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ranges(codec: Codec, frame: &[u8]) -> (Vec<(usize, usize)>, bool) {
        let mut layout = FrameLayout::default();
        let ok = layout.build(codec, frame);
        (layout.clear.iter().map(|r| (r.offset, r.len)).collect(), ok)
    }

    #[test]
    fn vp8_keyframe_and_delta() {
        let key = [0x10u8; 20];
        assert_eq!(ranges(Codec::Vp8, &key), (vec![(0, 10)], true));
        let delta = [0x11u8; 20];
        assert_eq!(ranges(Codec::Vp8, &delta), (vec![(0, 1)], true));
        // A keyframe shorter than its header is encrypted whole.
        assert_eq!(ranges(Codec::Vp8, &[0x10u8; 5]), (vec![], false));
        assert_eq!(ranges(Codec::Vp8, &[]), (vec![], false));
    }

    #[test]
    fn opus_and_vp9_fully_encrypted() {
        assert_eq!(ranges(Codec::Opus, &[1, 2, 3]), (vec![], true));
        assert_eq!(ranges(Codec::Vp9, &[0u8; 50]), (vec![], true));
    }

    #[test]
    fn h264_without_leading_start_code_is_encrypted_whole() {
        assert_eq!(
            ranges(Codec::H264, &[0x65, 0, 0, 1, 0x65, 0x88]),
            (vec![], false)
        );
        assert_eq!(ranges(Codec::H264, &[0, 0, 1]), (vec![], false));
    }

    #[test]
    fn av1_rewrites_last_obu_and_drops_delimiters() {
        // Temporal delimiter (type 2, has_size, size 0), then a frame OBU
        // (type 6, has_size) with a padded 2-byte size of 3.
        let frame = [0x12, 0x00, 0x32, 0x83, 0x00, 0xAA, 0xBB, 0xCC];
        let mut layout = FrameLayout::default();
        assert!(layout.build(Codec::Av1, &frame));
        // Last OBU: has_size cleared, size removed.
        assert_eq!(layout.bytes, vec![0x30, 0xAA, 0xBB, 0xCC]);
        assert_eq!(layout.clear, vec![ClearRange { offset: 0, len: 1 }]);

        // Two OBUs: the first keeps a minimal size.
        let frame = [0x32, 0x81, 0x00, 0x11, 0x32, 0x01, 0x22];
        let mut layout = FrameLayout::default();
        assert!(layout.build(Codec::Av1, &frame));
        assert_eq!(layout.bytes, vec![0x32, 0x01, 0x11, 0x30, 0x22]);
        assert_eq!(
            layout.clear,
            vec![
                ClearRange { offset: 0, len: 2 },
                ClearRange { offset: 3, len: 1 }
            ]
        );
        // Size overflowing the frame: encrypted whole.
        assert_eq!(ranges(Codec::Av1, &[0x32, 0x05, 0x00]), (vec![], false));
    }

    #[test]
    fn start_code_search() {
        assert_eq!(next_start_code(&[0, 0, 1, 5], 0), Some((3, 3)));
        assert_eq!(next_start_code(&[0, 0, 0, 1, 5], 0), Some((4, 4)));
        assert_eq!(next_start_code(&[9, 0, 0, 1], 0), Some((4, 3)));
        assert_eq!(next_start_code(&[0, 0, 2, 0, 0], 0), None);
        assert!(contains_start_code(&[5, 0, 0, 1], 0, 4));
        assert!(!contains_start_code(&[5, 0, 0, 1], 0, 3));
    }

    #[test]
    fn mime_types() {
        assert_eq!(Codec::from_mime_type("video/VP8"), Codec::Vp8);
        assert_eq!(Codec::from_mime_type("audio/opus"), Codec::Opus);
        assert_eq!(Codec::from_mime_type("video/H265"), Codec::H265);
        assert_eq!(Codec::from_mime_type("video/rtx"), Codec::Unknown);
    }
}
