//! VP8 over RTP (RFC 7741), receiving side, sans-IO: RTP payloads in, whole frames out.
//!
//! A frame is the payloads of one RTP timestamp, from the packet that starts partition 0
//! (`S` = 1, `PID` = 0) to the one with the marker bit, with no sequence number missing in
//! between; each payload without its descriptor. Packets may come out of order within a
//! few frames; a frame that is still incomplete when [`MAX_PENDING`] newer frames are
//! pending is given up (counted in [`Assembler::lost`]). Frames come out in timestamp
//! order; one older than a frame already out is dropped.
//!
//! The bytes are whatever the sender's packetizer was handed: with E2EE, a sealed frame
//! (its first bytes, the VP8 frame header, stay clear).

use std::collections::BTreeMap;

/// Frames held while incomplete at most.
pub const MAX_PENDING: usize = 8;
/// Bytes one frame may reach at most (a sender cannot grow memory without bound).
pub const MAX_FRAME_BYTES: usize = 4 << 20;

/// The parsed VP8 payload descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Its length in bytes (the frame data follows).
    pub len: usize,
    /// `S`: the packet starts a partition.
    pub start: bool,
    /// `PID`: the partition index.
    pub partition: u8,
}

impl Descriptor {
    /// Parses the descriptor at the start of `payload`; `None` if it is truncated.
    #[must_use]
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let b0 = *payload.first()?;
        let mut len = 1;
        if b0 & 0x80 != 0 {
            let x = *payload.get(1)?;
            len += 1;
            if x & 0x80 != 0 {
                // PictureID: 7 or 15 bits (M flag).
                let p = *payload.get(len)?;
                len += if p & 0x80 != 0 { 2 } else { 1 };
            }
            if x & 0x40 != 0 {
                len += 1; // TL0PICIDX
            }
            if x & 0x30 != 0 {
                len += 1; // TID / Y / KEYIDX
            }
        }
        if payload.len() < len {
            return None;
        }
        Some(Self {
            len,
            start: b0 & 0x10 != 0,
            partition: b0 & 0x07,
        })
    }
}

/// Whether a VP8 frame (its first byte, clear also when the frame is sealed) is a keyframe.
#[must_use]
pub fn is_keyframe(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x01 == 0)
}

/// Width and height of a VP8 keyframe (from its uncompressed header), if it is one.
#[must_use]
pub fn keyframe_size(frame: &[u8]) -> Option<(u32, u32)> {
    if !is_keyframe(frame) || frame.get(3..6)? != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([*frame.get(6)?, *frame.get(7)?]) & 0x3fff;
    let h = u16::from_le_bytes([*frame.get(8)?, *frame.get(9)?]) & 0x3fff;
    (w > 0 && h > 0).then_some((u32::from(w), u32::from(h)))
}

#[derive(Debug, Default)]
struct Pending {
    /// Payloads by extended sequence number: (starts partition 0, marker, data).
    packets: BTreeMap<u64, (bool, bool, Vec<u8>)>,
    bytes: usize,
}

impl Pending {
    /// The frame, if the run from a partition-0 start to the marker is complete.
    fn complete(&self) -> Option<Vec<u8>> {
        let (&first, _) = self.packets.iter().find(|(_, (start, _, _))| *start)?;
        let mut out = Vec::with_capacity(self.bytes);
        for (expect, (&seq, (_, marker, data))) in (first..).zip(self.packets.range(first..)) {
            if seq != expect {
                return None;
            }
            out.extend_from_slice(data);
            if *marker {
                return Some(out);
            }
        }
        None
    }
}

/// Reassembles frames from one RTP stream.
#[derive(Debug, Default)]
pub struct Assembler {
    /// Incomplete frames by extended RTP timestamp.
    pending: BTreeMap<i64, Pending>,
    /// The last timestamp handed out.
    last_out: Option<i64>,
    /// Unwrapping: the last raw timestamp and its extended value.
    last_ts: Option<(u32, i64)>,
    /// Frames given up (incomplete, too large) or dropped (too old).
    pub lost: u64,
    /// Payloads whose descriptor does not parse.
    pub malformed: u64,
}

impl Assembler {
    /// One RTP packet; returns the frames it completes as `(extended timestamp, frame)`.
    pub fn push(
        &mut self,
        seq: u64,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Vec<(i64, Vec<u8>)> {
        let Some(d) = Descriptor::parse(payload) else {
            self.malformed += 1;
            return Vec::new();
        };
        let ts = self.extend(timestamp);
        if self.last_out.is_some_and(|l| ts <= l) {
            return Vec::new(); // a late copy of a frame already out (or given up)
        }
        let p = self.pending.entry(ts).or_default();
        p.bytes += payload.len() - d.len;
        if p.bytes > MAX_FRAME_BYTES {
            self.pending.remove(&ts);
            self.lost += 1;
            return Vec::new();
        }
        p.packets.insert(
            seq,
            (
                d.start && d.partition == 0,
                marker,
                payload[d.len..].to_vec(),
            ),
        );
        let mut out = Vec::new();
        if let Some(frame) = p.complete() {
            // Older incomplete frames will not be played before this one: give them up.
            let older: Vec<i64> = self.pending.range(..ts).map(|(k, _)| *k).collect();
            self.lost += older.len() as u64;
            for k in older {
                self.pending.remove(&k);
            }
            self.pending.remove(&ts);
            self.last_out = Some(ts);
            out.push((ts, frame));
        }
        while self.pending.len() > MAX_PENDING {
            self.pending.pop_first();
            self.lost += 1;
        }
        out
    }

    fn extend(&mut self, ts: u32) -> i64 {
        let ext = match self.last_ts {
            None => i64::from(ts),
            // The signed distance from the last one: wraps around 2^32 correctly.
            Some((raw, ext)) => ext + i64::from(ts.wrapping_sub(raw).cast_signed()),
        };
        self.last_ts = Some((ts, ext));
        ext
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Packetizes `frame` into `n` payloads with a descriptor that has a 15-bit PictureID.
    fn packets(frame: &[u8], n: usize) -> Vec<Vec<u8>> {
        let size = frame.len().div_ceil(n);
        frame
            .chunks(size)
            .enumerate()
            .map(|(i, c)| {
                let b0 = 0x80 | if i == 0 { 0x10 } else { 0 };
                let mut p = vec![b0, 0x80, 0x81, 0x23];
                p.extend_from_slice(c);
                p
            })
            .collect()
    }

    #[test]
    fn descriptors_of_every_shape_parse() {
        assert_eq!(
            Descriptor::parse(&[0x10, 0xaa]),
            Some(Descriptor {
                len: 1,
                start: true,
                partition: 0
            })
        );
        assert_eq!(Descriptor::parse(&[0x90, 0x80, 0x05, 0xaa]).unwrap().len, 3);
        assert_eq!(Descriptor::parse(&[0x90, 0x80, 0x85, 0x01]).unwrap().len, 4);
        assert_eq!(
            Descriptor::parse(&[0x81, 0xf0, 0x85, 0x01, 7, 9])
                .unwrap()
                .len,
            6
        );
        assert_eq!(
            Descriptor::parse(&[0x81, 0xf0, 0x85, 0x01, 7, 9])
                .unwrap()
                .partition,
            1
        );
        assert_eq!(Descriptor::parse(&[0x90, 0x80, 0x85]), None);
        assert_eq!(Descriptor::parse(&[]), None);
    }

    #[test]
    fn keyframe_header_gives_the_size() {
        let mut k = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
        k.extend_from_slice(&640u16.to_le_bytes());
        k.extend_from_slice(&(480u16 | 0x4000).to_le_bytes());
        assert_eq!(keyframe_size(&k), Some((640, 480)));
        k[0] |= 1;
        assert!(!is_keyframe(&k));
        assert_eq!(keyframe_size(&k), None);
    }

    #[test]
    fn frames_reassemble_in_order_and_out_of_order() {
        let mut a = Assembler::default();
        let f1: Vec<u8> = (0..100).collect();
        let p1 = packets(&f1, 3);
        assert!(a.push(10, 1000, false, &p1[0]).is_empty());
        assert!(a.push(11, 1000, false, &p1[1]).is_empty());
        assert_eq!(a.push(12, 1000, true, &p1[2]), vec![(1000, f1.clone())]);
        // Reordered: the marker first, the start last.
        let f2: Vec<u8> = (50..250).collect();
        let p2 = packets(&f2, 3);
        assert!(a.push(15, 4000, true, &p2[2]).is_empty());
        assert!(a.push(14, 4000, false, &p2[1]).is_empty());
        assert_eq!(a.push(13, 4000, false, &p2[0]), vec![(4000, f2)]);
        // A late duplicate of frame 1 is not handed out again.
        assert!(a.push(12, 1000, true, &p1[2]).is_empty());
        assert_eq!(a.lost, 0);
    }

    #[test]
    fn a_frame_with_a_hole_is_given_up_when_a_newer_one_completes() {
        let mut a = Assembler::default();
        let p1 = packets(&[1; 30], 3);
        a.push(1, 100, false, &p1[0]);
        a.push(3, 100, true, &p1[2]); // 2 never comes
        let p2 = packets(&[2; 10], 1);
        assert_eq!(a.push(4, 200, true, &p2[0]), vec![(200, vec![2; 10])]);
        assert_eq!(a.lost, 1);
        // Its missing packet arriving afterwards changes nothing.
        assert!(a.push(2, 100, false, &p1[1]).is_empty());
        assert_eq!(a.push(5, 99, true, &[0x00]).len(), 0);
        assert_eq!(a.malformed, 0);
        assert!(a.push(6, 300, true, &[]).is_empty());
        assert_eq!(a.malformed, 1);
    }

    #[test]
    fn timestamps_unwrap_across_2_pow_32() {
        let mut a = Assembler::default();
        let p = packets(&[9; 4], 1);
        assert_eq!(
            a.push(1, u32::MAX - 10, true, &p[0])[0].0,
            i64::from(u32::MAX - 10)
        );
        assert_eq!(a.push(2, 5, true, &p[0])[0].0, i64::from(u32::MAX) + 6);
    }
}
