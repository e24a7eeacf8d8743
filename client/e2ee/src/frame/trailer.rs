//! The DAVE v1.1.4 frame trailer, byte-exact:
//!
//! ```text
//! [interleaved payload: clear ranges untouched, the rest replaced by ciphertext]
//! [8-byte truncated AES-128-GCM tag]
//! [ULEB128 truncated nonce (u32)]
//! [ULEB128 (offset, length) pairs of clear ranges, ascending, non-overlapping]
//! [1 byte supplemental size = 8 + len(nonce) + len(ranges) + 1 + 2]
//! [0xFA 0xFA]
//! ```
//!
//! Parsing is strict: every ULEB128 value must use its shortest encoding, the
//! nonce must fit 32 bits, and ranges must be ascending, non-overlapping and
//! inside the payload. A frame that fails is "not a protocol frame".

use super::aead::TAG_LEN;

/// The two marker bytes that end every protocol frame.
pub const MARKER: [u8; 2] = [0xFA, 0xFA];

/// Smallest possible supplemental size: tag, supplemental-size byte, marker
/// (a real frame also needs at least one nonce byte).
pub const MIN_SUPPLEMENTAL_SIZE: usize = TAG_LEN + 1 + MARKER.len();

/// Largest number of bytes a ULEB128 value takes here (u64).
pub const MAX_LEB128_LEN: usize = 10;

/// A byte range of the payload that is sent in the clear and authenticated
/// as additional data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClearRange {
    /// Offset of the first clear byte in the payload.
    pub offset: usize,
    /// Number of clear bytes.
    pub len: usize,
}

impl ClearRange {
    /// One past the last clear byte.
    #[must_use]
    pub fn end(&self) -> usize {
        self.offset.saturating_add(self.len)
    }
}

/// Why a byte string is not a DAVE protocol frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrailerError {
    /// Shorter than the smallest possible trailer.
    #[error("frame too short for a trailer")]
    TooShort,
    /// Does not end in `FA FA`.
    #[error("missing FA FA marker")]
    NoMarker,
    /// The supplemental-size byte is below the minimum or larger than the frame.
    #[error("supplemental size {0} out of bounds")]
    BadSupplementalSize(u8),
    /// The nonce is missing, not minimal ULEB128, or larger than 32 bits.
    #[error("bad truncated nonce")]
    BadNonce,
    /// A clear range is truncated, not minimal ULEB128, out of order,
    /// overlapping or outside the payload.
    #[error("bad clear range list")]
    BadRanges,
}

/// Number of bytes `value` takes in ULEB128.
#[must_use]
pub fn leb128_len(mut value: u64) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

/// Appends `value` as ULEB128.
pub fn write_leb128(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(0x80 | (value & 0x7F) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads one minimally encoded ULEB128 value; returns it and its length.
#[must_use]
pub fn read_leb128(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (index, &byte) in bytes.iter().enumerate().take(MAX_LEB128_LEN) {
        let shift = 7 * index as u32;
        let bits = u64::from(byte & 0x7F);
        if index == MAX_LEB128_LEN - 1 && bits > 1 {
            return None;
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            // A final zero byte after the first is a padded (non-minimal) encoding.
            if index > 0 && byte == 0 {
                return None;
            }
            return Some((value, index + 1));
        }
    }
    None
}

/// Appends the serialized clear ranges.
pub fn write_ranges(ranges: &[ClearRange], out: &mut Vec<u8>) {
    for range in ranges {
        write_leb128(range.offset as u64, out);
        write_leb128(range.len as u64, out);
    }
}

/// Serialized length of the clear-range list.
#[must_use]
pub fn ranges_len(ranges: &[ClearRange]) -> usize {
    ranges
        .iter()
        .map(|r| leb128_len(r.offset as u64) + leb128_len(r.len as u64))
        .sum()
}

/// A parsed protocol frame, borrowing the received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolFrame<'a> {
    /// The interleaved payload (clear and encrypted bytes).
    pub payload: &'a [u8],
    /// The 8-byte truncated tag.
    pub tag: [u8; TAG_LEN],
    /// The 32-bit truncated nonce; its top byte is the ratchet generation.
    pub nonce: u32,
    /// The clear ranges, already validated against the payload.
    pub ranges: ClearRanges<'a>,
    /// The supplemental-size byte.
    pub supplemental_size: u8,
}

/// The validated, still serialized clear-range list of a [`ProtocolFrame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClearRanges<'a> {
    bytes: &'a [u8],
}

impl<'a> ClearRanges<'a> {
    /// Iterates the ranges in ascending order.
    #[must_use]
    pub fn iter(&self) -> ClearRangeIter<'a> {
        ClearRangeIter { bytes: self.bytes }
    }

    /// `true` when the whole payload is encrypted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl<'a> IntoIterator for ClearRanges<'a> {
    type Item = ClearRange;
    type IntoIter = ClearRangeIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterator over [`ClearRanges`].
#[derive(Debug, Clone)]
pub struct ClearRangeIter<'a> {
    bytes: &'a [u8],
}

impl Iterator for ClearRangeIter<'_> {
    type Item = ClearRange;

    fn next(&mut self) -> Option<ClearRange> {
        // The list was validated by `ProtocolFrame::parse`; stop on anything odd.
        let (offset, used) = read_leb128(self.bytes)?;
        let (len, used_len) = read_leb128(self.bytes.get(used..)?)?;
        self.bytes = self.bytes.get(used + used_len..)?;
        Some(ClearRange {
            offset: usize::try_from(offset).ok()?,
            len: usize::try_from(len).ok()?,
        })
    }
}

impl<'a> ProtocolFrame<'a> {
    /// Parses and validates the trailer of `frame` (the receiver's
    /// protocol-frame check).
    ///
    /// # Errors
    /// [`TrailerError`] saying which check failed.
    pub fn parse(frame: &'a [u8]) -> Result<Self, TrailerError> {
        if frame.len() < MIN_SUPPLEMENTAL_SIZE {
            return Err(TrailerError::TooShort);
        }
        let (rest, marker) = frame.split_at(frame.len() - MARKER.len());
        if marker != MARKER {
            return Err(TrailerError::NoMarker);
        }
        let Some((&size_byte, _)) = rest.split_last() else {
            return Err(TrailerError::TooShort);
        };
        let supplemental = usize::from(size_byte);
        if supplemental < MIN_SUPPLEMENTAL_SIZE || supplemental > frame.len() {
            return Err(TrailerError::BadSupplementalSize(size_byte));
        }
        let payload_len = frame.len() - supplemental;
        let (payload, trailer) = frame.split_at(payload_len);
        let (tag_bytes, after_tag) = trailer.split_at(TAG_LEN);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(tag_bytes);
        // After the tag: nonce ‖ ranges ‖ size byte ‖ marker.
        let fields = &after_tag[..after_tag.len() - 1 - MARKER.len()];
        let (nonce, nonce_len) = read_leb128(fields).ok_or(TrailerError::BadNonce)?;
        let nonce = u32::try_from(nonce).map_err(|_| TrailerError::BadNonce)?;
        let range_bytes = &fields[nonce_len..];
        validate_ranges(range_bytes, payload_len)?;
        Ok(Self {
            payload,
            tag,
            nonce,
            ranges: ClearRanges { bytes: range_bytes },
            supplemental_size: size_byte,
        })
    }

    /// The ratchet generation carried in the nonce's top byte (before
    /// unwrapping).
    #[must_use]
    pub fn generation_byte(&self) -> u8 {
        (self.nonce >> 24) as u8
    }
}

fn validate_ranges(mut bytes: &[u8], payload_len: usize) -> Result<(), TrailerError> {
    let mut previous_end = 0usize;
    while !bytes.is_empty() {
        let (offset, used) = read_leb128(bytes).ok_or(TrailerError::BadRanges)?;
        bytes = &bytes[used..];
        let (len, used) = read_leb128(bytes).ok_or(TrailerError::BadRanges)?;
        bytes = &bytes[used..];
        let offset = usize::try_from(offset).map_err(|_| TrailerError::BadRanges)?;
        let len = usize::try_from(len).map_err(|_| TrailerError::BadRanges)?;
        let end = offset.checked_add(len).ok_or(TrailerError::BadRanges)?;
        if offset < previous_end || end > payload_len {
            return Err(TrailerError::BadRanges);
        }
        previous_end = end;
    }
    Ok(())
}

/// Appends the trailer for `payload_len` payload bytes (already in `out`).
///
/// Returns `None` (and leaves `out` unchanged) when nonce and ranges do not fit
/// the one-byte supplemental size.
pub fn write_trailer(
    out: &mut Vec<u8>,
    tag: &[u8; TAG_LEN],
    nonce: u32,
    ranges: &[ClearRange],
) -> Option<()> {
    let supplemental =
        TAG_LEN + leb128_len(u64::from(nonce)) + ranges_len(ranges) + 1 + MARKER.len();
    let size_byte = u8::try_from(supplemental).ok()?;
    out.reserve(supplemental);
    out.extend_from_slice(tag);
    write_leb128(u64::from(nonce), out);
    write_ranges(ranges, out);
    out.push(size_byte);
    out.extend_from_slice(&MARKER);
    Some(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn leb128_round_trip_and_minimality() {
        for value in [
            0u64,
            1,
            127,
            128,
            300,
            1 << 21,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            write_leb128(value, &mut out);
            assert_eq!(out.len(), leb128_len(value));
            assert_eq!(read_leb128(&out), Some((value, out.len())));
        }
        assert_eq!(read_leb128(&[0x80, 0x00]), None, "padded zero");
        assert_eq!(read_leb128(&[0x81, 0x80, 0x00]), None, "padded");
        assert_eq!(read_leb128(&[0x80]), None, "truncated");
        assert_eq!(read_leb128(&[]), None);
        assert_eq!(
            read_leb128(&[0xFF; 9].iter().chain(&[0x02]).copied().collect::<Vec<_>>()),
            None
        );
    }

    #[test]
    fn write_then_parse() {
        let mut frame = vec![1u8; 30];
        let ranges = [
            ClearRange { offset: 0, len: 3 },
            ClearRange {
                offset: 10,
                len: 20,
            },
        ];
        write_trailer(&mut frame, &[7u8; 8], 0x0100_0001, &ranges).unwrap();
        let parsed = ProtocolFrame::parse(&frame).unwrap();
        assert_eq!(parsed.payload.len(), 30);
        assert_eq!(parsed.nonce, 0x0100_0001);
        assert_eq!(parsed.generation_byte(), 1);
        assert_eq!(parsed.ranges.iter().collect::<Vec<_>>(), ranges);
    }

    #[test]
    fn rejects_overlap_and_out_of_bounds() {
        for ranges in [
            vec![
                ClearRange { offset: 5, len: 5 },
                ClearRange { offset: 8, len: 1 },
            ],
            vec![ClearRange { offset: 25, len: 6 }],
            vec![
                ClearRange { offset: 5, len: 1 },
                ClearRange { offset: 2, len: 1 },
            ],
        ] {
            let mut frame = vec![0u8; 30];
            write_trailer(&mut frame, &[0u8; 8], 1, &ranges).unwrap();
            assert_eq!(ProtocolFrame::parse(&frame), Err(TrailerError::BadRanges));
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        assert_eq!(
            ProtocolFrame::parse(&[0xFA; 5]),
            Err(TrailerError::TooShort)
        );
        assert_eq!(
            ProtocolFrame::parse(&[0u8; 20]),
            Err(TrailerError::NoMarker)
        );
        let mut frame = vec![0u8; 20];
        frame.extend_from_slice(&[10, 0xFA, 0xFA]);
        assert_eq!(
            ProtocolFrame::parse(&frame),
            Err(TrailerError::BadSupplementalSize(10))
        );
        // Supplemental size 11: no room for a nonce.
        let mut frame = vec![0u8; 20];
        frame.extend_from_slice(&[11, 0xFA, 0xFA]);
        assert_eq!(ProtocolFrame::parse(&frame), Err(TrailerError::BadNonce));
        // Nonce above u32.
        let mut frame = vec![0u8; 8];
        write_leb128(1 << 32, &mut frame);
        let size = frame.len() + 3;
        frame.extend_from_slice(&[size as u8, 0xFA, 0xFA]);
        assert_eq!(ProtocolFrame::parse(&frame), Err(TrailerError::BadNonce));
    }
}
