//! VP8 picture numbering per subscriber leg: plain, sans-IO types that keep the PictureID and
//! TL0PICIDX a subscriber sees continuous across simulcast layer switches.
//!
//! Every simulcast layer of a VP8 track numbers its pictures on its own (RFC 7741 §4.2: a 15-bit
//! (or 7-bit) PictureID, +1 per picture, and an 8-bit TL0PICIDX, +1 per base-temporal-layer
//! picture). A leg that switches from one layer to another would hand its subscriber's decoder a
//! jump in both. A receiver's frame buffer orders and ages pictures by PictureID, so a jump
//! backwards makes it wait for or discard frames it considers stale; a jump in TL0PICIDX breaks
//! its temporal-layer dependency tracking. [`Vp8Rebase`] (one per leg) maps the fields of every
//! forwarded packet: unchanged until the leg's first switch, and from each switch on offset so
//! that the new layer's first picture continues one past the highest one the leg forwarded.
//!
//! Within a run (the stretch between two switches) the mapping is a fixed offset, so every packet
//! of one picture, whether reordered or retransmitted, maps to the same output, and gaps (lost
//! pictures) stay gaps.
//!
//! What changes on the wire is only the VP8 payload descriptor, in front of the encoded frame: the
//! bytes of the PictureID and TL0PICIDX fields, keeping their width (str0m's
//! [`Vp8Patch`], applied while it serialises the packet, also on retransmission). The encoded (end-
//! to-end encrypted) frame after the descriptor is never touched. A packet without a PictureID
//! (or TL0PICIDX) keeps what it has; KEYIDX is never rewritten.

use str0m::rtp::{Vp8Descriptor, Vp8Patch};

/// Largest 15-bit PictureID.
const PICTURE_ID_MASK: u16 = 0x7fff;
/// Largest 7-bit PictureID.
const SHORT_PICTURE_ID_MASK: u16 = 0x7f;
/// TL0PICIDX is one byte.
const TL0_MASK: u16 = 0xff;

/// A PictureID as carried in one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PictureId {
    /// The value (below 2^15, or below 2^7 when not `wide`).
    pub value: u16,
    /// The 15-bit form (M bit set); otherwise 7 bits.
    pub wide: bool,
}

impl PictureId {
    fn mask(self) -> u16 {
        if self.wide {
            PICTURE_ID_MASK
        } else {
            SHORT_PICTURE_ID_MASK
        }
    }
}

/// The numbering fields of one VP8 packet's payload descriptor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vp8Numbers {
    /// PictureID, if present.
    pub picture_id: Option<PictureId>,
    /// TL0PICIDX, if present.
    pub tl0_pic_idx: Option<u8>,
}

/// The parsed payload descriptor of one VP8 packet from a publisher, shared by every leg the
/// packet goes to (parsed once, patched per leg).
#[derive(Debug, Clone, Copy)]
pub struct Vp8Packet {
    descriptor: Vp8Descriptor,
    numbers: Vp8Numbers,
}

impl Vp8Packet {
    /// Parses the descriptor at the start of an RTP payload; `None` if it is malformed or
    /// truncated (such a packet is forwarded as it is).
    pub fn parse(payload: &[u8]) -> Option<Vp8Packet> {
        let descriptor = Vp8Descriptor::parse(payload).ok()?;
        // When present, the PictureID is the first optional field (RFC 7741 §4.2), right after
        // the required byte and the X byte; its top bit (M) says 15 bits.
        let picture_id = descriptor.picture_id().map(|value| PictureId {
            value,
            wide: payload.get(2).is_some_and(|b| b & 0x80 != 0),
        });
        Some(Vp8Packet {
            descriptor,
            numbers: Vp8Numbers {
                picture_id,
                tl0_pic_idx: descriptor.tl0_pic_idx(),
            },
        })
    }

    /// The numbering fields as the publisher sent them.
    pub fn numbers(&self) -> Vp8Numbers {
        self.numbers
    }

    /// The patch that writes `out` into this packet's descriptor, or `None` when `out` is what
    /// the packet already carries (or cannot be written: it never is for values from
    /// [`Vp8Rebase::map`]).
    pub fn patch(&self, out: Vp8Numbers) -> Option<Vp8Patch> {
        if out == self.numbers {
            return None;
        }
        let mut builder = self.descriptor.patch();
        if let (Some(_), Some(p)) = (self.numbers.picture_id, out.picture_id) {
            builder = builder.picture_id(p.value);
        }
        if let (Some(_), Some(t)) = (self.numbers.tl0_pic_idx, out.tl0_pic_idx) {
            builder = builder.tl0_pic_idx(t);
        }
        builder.build().ok()
    }
}

/// One field's continuity across runs: `out = (in + offset) mod 2^bits`, re-anchored at a switch
/// so that the run's first value is one past the highest value sent.
#[derive(Debug, Clone, Copy, Default)]
struct Continuity {
    offset: u16,
    /// Highest output so far (in the field's widest form), in wrapping order.
    highest: Option<u16>,
    /// The next value starts a new run.
    restart: bool,
}

impl Continuity {
    /// Maps `value` (a field of `mask + 1` values); `full` is the mask of the field's widest form.
    fn map(&mut self, value: u16, mask: u16, full: u16) -> u16 {
        if std::mem::take(&mut self.restart)
            && let Some(h) = self.highest
        {
            self.offset = h.wrapping_add(1).wrapping_sub(value);
        }
        let out = value.wrapping_add(self.offset) & mask;
        self.highest = Some(match self.highest {
            None => out,
            Some(h) => {
                // Newer when less than half the space ahead (wrapping).
                let ahead = out.wrapping_sub(h) & mask;
                if ahead != 0 && ahead <= mask / 2 {
                    h.wrapping_add(ahead) & full
                } else {
                    h
                }
            }
        });
        out
    }
}

/// PictureID and TL0PICIDX rewriting for one subscriber leg. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct Vp8Rebase {
    picture_id: Continuity,
    tl0_pic_idx: Continuity,
}

impl Vp8Rebase {
    /// A leg that has forwarded nothing yet: its first run passes the numbers through.
    pub fn new() -> Vp8Rebase {
        Vp8Rebase::default()
    }

    /// The leg switches to another source (simulcast layer): from the next packet that carries
    /// each field, that field continues one past the highest value forwarded so far.
    pub fn switch(&mut self) {
        self.picture_id.restart = true;
        self.tl0_pic_idx.restart = true;
    }

    /// The numbers to send for one forwarded packet.
    pub fn map(&mut self, input: Vp8Numbers) -> Vp8Numbers {
        Vp8Numbers {
            picture_id: input.picture_id.map(|p| PictureId {
                value: self.picture_id.map(p.value, p.mask(), PICTURE_ID_MASK),
                wide: p.wide,
            }),
            tl0_pic_idx: input
                .tl0_pic_idx
                .map(|t| self.tl0_pic_idx.map(u16::from(t), TL0_MASK, TL0_MASK) as u8),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nums(pid: u16, tl0: u8) -> Vp8Numbers {
        Vp8Numbers {
            picture_id: Some(PictureId {
                value: pid,
                wide: true,
            }),
            tl0_pic_idx: Some(tl0),
        }
    }

    fn pid(n: Vp8Numbers) -> u16 {
        n.picture_id.map(|p| p.value).unwrap()
    }

    /// A VP8 payload: descriptor with a 15-bit (or 7-bit) PictureID, TL0PICIDX and TID, then
    /// a fake encoded frame.
    fn payload(pid: u16, wide: bool, tl0: u8) -> Vec<u8> {
        let mut p = vec![0x90, 0xe0];
        if wide {
            p.extend_from_slice(&[0x80 | (pid >> 8) as u8, pid as u8]);
        } else {
            p.push(pid as u8 & 0x7f);
        }
        p.extend_from_slice(&[tl0, 0x20]);
        p.extend_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0xde, 0xad, 0xbe, 0xef]);
        p
    }

    #[test]
    fn the_first_run_passes_through_and_a_switch_continues_the_numbers() {
        let mut r = Vp8Rebase::new();
        assert_eq!(r.map(nums(100, 7)), nums(100, 7));
        assert_eq!(r.map(nums(101, 8)), nums(101, 8));
        // A retransmitted packet of an earlier picture maps as before and moves nothing.
        assert_eq!(r.map(nums(100, 7)), nums(100, 7));
        r.switch();
        // The other layer is far away in both fields.
        assert_eq!(r.map(nums(20_000, 200)), nums(102, 9));
        assert_eq!(r.map(nums(20_000, 200)), nums(102, 9), "same picture");
        assert_eq!(r.map(nums(20_001, 201)), nums(103, 10));
        // A gap within a run stays a gap (the receiver must see the loss).
        assert_eq!(r.map(nums(20_004, 204)), nums(106, 13));
        // Back to the first layer, which has moved on meanwhile.
        r.switch();
        assert_eq!(r.map(nums(150, 57)), nums(107, 14));
    }

    #[test]
    fn numbers_wrap_around() {
        let mut r = Vp8Rebase::new();
        assert_eq!(r.map(nums(0x7ffe, 254)), nums(0x7ffe, 254));
        r.switch();
        assert_eq!(r.map(nums(5, 3)), nums(0x7fff, 255));
        assert_eq!(r.map(nums(6, 4)), nums(0, 0));
        assert_eq!(r.map(nums(7, 5)), nums(1, 1));
        r.switch();
        assert_eq!(r.map(nums(0x7ff0, 128)), nums(2, 2));
        assert_eq!(r.map(nums(0x7fff, 143)), nums(17, 17));
        assert_eq!(r.map(nums(0, 144)), nums(18, 18));
        // Something older than the highest (a late packet) does not become the highest.
        assert_eq!(r.map(nums(0x7ffe, 142)), nums(16, 16));
        r.switch();
        assert_eq!(r.map(nums(999, 99)), nums(19, 19));
    }

    #[test]
    fn packets_without_the_fields_keep_what_they_have() {
        let mut r = Vp8Rebase::new();
        assert_eq!(r.map(Vp8Numbers::default()), Vp8Numbers::default());
        r.map(nums(10, 1));
        r.switch();
        // Only a PictureID on the new layer: the TL0PICIDX restart waits for the first one.
        let only_pid = Vp8Numbers {
            picture_id: nums(500, 0).picture_id,
            tl0_pic_idx: None,
        };
        assert_eq!(pid(r.map(only_pid)), 11);
        assert_eq!(r.map(only_pid).tl0_pic_idx, None);
        assert_eq!(r.map(nums(501, 90)), nums(12, 2));
    }

    #[test]
    fn a_seven_bit_picture_id_stays_seven_bits_and_continuous() {
        let short = |v: u16| Vp8Numbers {
            picture_id: Some(PictureId {
                value: v,
                wide: false,
            }),
            tl0_pic_idx: None,
        };
        let mut r = Vp8Rebase::new();
        assert_eq!(r.map(short(126)), short(126));
        assert_eq!(r.map(short(127)), short(127));
        assert_eq!(r.map(short(0)), short(0));
        r.switch();
        assert_eq!(r.map(short(40)), short(1));
        assert_eq!(r.map(short(41)), short(2));
        // A switch onto a layer with 15-bit PictureIDs continues from there.
        r.switch();
        let out = r.map(nums(9000, 0));
        assert_eq!(pid(out) & 0x7f, 3);
    }

    #[test]
    fn patches_are_built_only_for_changes_and_keep_the_field_width() {
        let original = payload(20_000, true, 200);
        let p = Vp8Packet::parse(&original).unwrap();
        assert_eq!(p.numbers(), nums(20_000, 200));
        assert!(p.patch(p.numbers()).is_none(), "nothing to change");
        assert!(p.patch(nums(102, 9)).is_some());
        // The same numbers from another descriptor shape: a 7-bit PictureID takes 7-bit values.
        let short = payload(100, false, 3);
        let p = Vp8Packet::parse(&short).unwrap();
        assert_eq!(
            p.numbers().picture_id,
            Some(PictureId {
                value: 100,
                wide: false
            })
        );
        let mut r = Vp8Rebase::new();
        r.map(nums(0x7ff0, 0));
        r.switch();
        let out = r.map(p.numbers());
        assert!(out.picture_id.unwrap().value <= 0x7f);
        assert!(p.patch(out).is_some());
        // Malformed or truncated descriptors are not parsed (forwarded as they are).
        assert!(Vp8Packet::parse(&[0x80]).is_none());
        assert!(Vp8Packet::parse(&[]).is_none());
        assert!(Vp8Packet::parse(&[0x90, 0x80, 0x80]).is_none());
    }

    /// One packet as a leg would get it: which run and picture it belongs to, and its numbers.
    #[derive(Debug, Clone)]
    struct Sent {
        run: usize,
        picture: usize,
        input: Vp8Numbers,
    }

    /// Arbitrary switch sequences: runs of pictures from sources with unrelated numbering
    /// (any start, so wrap-around happens), temporal layers (TL0PICIDX only moves on TID 0
    /// pictures, and every run starts on one: a keyframe), 1-4 packets per picture, packets
    /// reordered within a small window and duplicated (retransmissions).
    fn switch_sequences() -> impl Strategy<Value = Vec<Sent>> {
        let run = (
            any::<u16>(),
            any::<u8>(),
            prop::collection::vec((0u8..3, 1usize..5), 1..40),
        );
        prop::collection::vec(run, 1..8).prop_flat_map(|runs| {
            let mut sent = Vec::new();
            let mut picture = 0;
            for (r, (pid0, tl00, pictures)) in runs.iter().enumerate() {
                let mut tl0 = *tl00;
                for (i, (tid, packets)) in pictures.iter().enumerate() {
                    let tid = if i == 0 { 0 } else { *tid };
                    if tid == 0 && i > 0 {
                        tl0 = tl0.wrapping_add(1);
                    }
                    let pid = pid0.wrapping_add(i as u16) & PICTURE_ID_MASK;
                    for _ in 0..*packets {
                        sent.push(Sent {
                            run: r,
                            picture,
                            input: nums(pid, tl0),
                        });
                    }
                    picture += 1;
                }
            }
            let n = sent.len();
            (
                Just(sent),
                prop::collection::vec((0..n, 0usize..3), 0..n.min(20)),
            )
                .prop_map(|(mut sent, moves)| {
                    // Reorder within a run, never before its first packet (the keyframe
                    // packet the forwarder switches on; it refuses anything of the new layer
                    // before it, and anything of the old layer after it), and duplicate
                    // (a retransmission).
                    for (at, d) in moves {
                        let starts = |i: usize| i == 0 || sent[i - 1].run != sent[i].run;
                        let to = (at + d).min(sent.len() - 1);
                        if sent[at].run == sent[to].run && !starts(at) && !starts(to) {
                            sent.swap(at, to);
                        }
                        if d == 2 {
                            let dup = sent[to].clone();
                            sent.insert(to + 1, dup);
                        }
                    }
                    sent
                })
        })
    }

    proptest! {
        #[test]
        fn output_is_continuous_across_arbitrary_switches(sent in switch_sequences()) {
            let mut r = Vp8Rebase::new();
            let mut run = 0;
            // Per picture: its output; per run: its pictures in order.
            let mut out: std::collections::BTreeMap<usize, Vp8Numbers> = Default::default();
            let mut inputs: std::collections::BTreeMap<usize, Vp8Numbers> = Default::default();
            for s in &sent {
                if s.run != run {
                    r.switch();
                    run = s.run;
                }
                let o = r.map(s.input);
                // Every packet of one picture maps to the same numbers.
                let first = *out.entry(s.picture).or_insert(o);
                prop_assert_eq!(first, o, "picture {}", s.picture);
                inputs.insert(s.picture, s.input);
            }
            let first_run: Vec<&Sent> = sent.iter().filter(|s| s.run == 0).collect();
            for s in first_run {
                prop_assert_eq!(out[&s.picture], s.input, "the first run passes through");
            }
            let pictures: Vec<usize> = out.keys().copied().collect();
            let run_of = |p: usize| sent.iter().find(|s| s.picture == p).map(|s| s.run);
            for w in pictures.windows(2) {
                let (a, b) = (out[&w[0]], out[&w[1]]);
                let step = pid(b).wrapping_sub(pid(a)) & PICTURE_ID_MASK;
                prop_assert_eq!(step, 1, "PictureID +1 per picture: {:?} -> {:?}", a, b);
                let tl0_step = b.tl0_pic_idx.unwrap().wrapping_sub(a.tl0_pic_idx.unwrap());
                if run_of(w[0]) == run_of(w[1]) {
                    let want = inputs[&w[1]].tl0_pic_idx.unwrap()
                        .wrapping_sub(inputs[&w[0]].tl0_pic_idx.unwrap());
                    prop_assert_eq!(tl0_step, want, "TL0PICIDX follows its source in a run");
                } else {
                    prop_assert_eq!(tl0_step, 1, "TL0PICIDX +1 at a switch");
                }
            }
        }
    }
}
