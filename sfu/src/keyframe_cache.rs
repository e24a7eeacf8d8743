//! The packets of a published video track since its last keyframe, per simulcast layer, so that a
//! new subscriber leg can be sent a decodable picture at once instead of asking the publisher for
//! a keyframe and waiting for it (issue 18: the joiner's first frame).
//!
//! Sans-IO and copy-free: a [`KeyframeCache`] holds the same [`Arc<MediaPacket>`] the forwarder
//! fans out (no payload is copied, and the cache's ring buffers are reused, so caching a packet
//! allocates nothing once a layer's ring has grown to its working size). A layer's cache starts
//! at the first packet of a keyframe and holds every packet after it until one of the bounds
//! ([`MAX_PACKETS`], [`MAX_BYTES`], [`MAX_AGE`] after the keyframe) is passed: then it is emptied
//! and waits for the next keyframe. It is dropped with its publication.
//!
//! Only VP8 is cached: its keyframe start is exact (the first packet of a keyframe, `S=1`,
//! partition 0, `P=0`, see [`crate::session::is_keyframe`]) and every packet carries a parsed
//! descriptor ([`MediaPacket::vp8`]). Other codecs are not cached (a leg falls back to a
//! keyframe request): str0m flags every packet of a VP9 keyframe (not only its first), an H.264
//! IDR slice but not the SPS/PPS that may travel in packets before it, and an AV1 new coded
//! video sequence only when the encoder starts one.
//!
//! The payloads are end-to-end encrypted frames, replayed byte for byte; see
//! `docs/architecture.md` ("Keyframe replay") for what that means for keys and epochs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::media::Rid;

use crate::forward::MediaPacket;

/// Packets one layer's cache holds at most.
pub const MAX_PACKETS: usize = 600;
/// Payload bytes one layer's cache holds at most.
pub const MAX_BYTES: usize = 1024 * 1024;
/// How long after its keyframe a layer's cache is kept. Longer replays are bigger bursts to the
/// new leg and more likely to be under an older key than the one the joiner gets.
pub const MAX_AGE: Duration = Duration::from_secs(2);
/// Layers cached per track at most (str0m only accepts negotiated rids; a bound all the same).
const MAX_LAYERS: usize = 8;
/// The ring of a layer starts with room for this many packets (it grows, once, up to
/// [`MAX_PACKETS`]).
const INITIAL_CAPACITY: usize = 64;

/// Why a layer's cache was emptied before its next keyframe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheDrop {
    /// More than [`MAX_PACKETS`] since the keyframe.
    Packets,
    /// More than [`MAX_BYTES`] since the keyframe.
    Bytes,
    /// Older than [`MAX_AGE`].
    Age,
    /// A packet the cache cannot follow (not VP8, or without a well-formed descriptor).
    Codec,
}

impl CacheDrop {
    /// Label for the metric.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheDrop::Packets => "packets",
            CacheDrop::Bytes => "bytes",
            CacheDrop::Age => "age",
            CacheDrop::Codec => "codec",
        }
    }
}

/// One layer: its packets from a keyframe's first packet on (empty: waiting for a keyframe).
#[derive(Debug)]
struct LayerCache {
    rid: Option<Rid>,
    packets: VecDeque<Arc<MediaPacket>>,
    bytes: usize,
}

impl LayerCache {
    fn clear(&mut self) {
        self.packets.clear();
        self.bytes = 0;
    }

    /// When the cached keyframe arrived (`None`: nothing cached).
    fn since(&self) -> Option<Instant> {
        self.packets.front().map(|p| p.arrival)
    }

    fn push(&mut self, pkt: &Arc<MediaPacket>) -> Option<CacheDrop> {
        if pkt.vp8.is_none() {
            let had = !self.packets.is_empty();
            self.clear();
            return had.then_some(CacheDrop::Codec);
        }
        if pkt.keyframe {
            self.clear();
        } else {
            let first = self.packets.front()?;
            if pkt.seq < first.seq {
                // Reordered from before the keyframe: a leg starting at the keyframe refuses it.
                return None;
            }
            let reason = if self.packets.len() >= MAX_PACKETS {
                Some(CacheDrop::Packets)
            } else if self.bytes + pkt.payload.len() > MAX_BYTES {
                Some(CacheDrop::Bytes)
            } else if pkt.arrival.saturating_duration_since(first.arrival) > MAX_AGE {
                Some(CacheDrop::Age)
            } else {
                None
            };
            if reason.is_some() {
                self.clear();
                return reason;
            }
        }
        self.bytes += pkt.payload.len();
        self.packets.push_back(Arc::clone(pkt));
        None
    }
}

/// The caches of one published video track, one per simulcast layer. See the module docs.
#[derive(Debug, Default)]
pub struct KeyframeCache {
    layers: Vec<LayerCache>,
}

impl KeyframeCache {
    /// Notes a packet the track's publisher sent; returns why a layer's cache was emptied, if
    /// this packet emptied one.
    pub fn push(&mut self, pkt: &Arc<MediaPacket>) -> Option<CacheDrop> {
        let i = match self.layers.iter().position(|l| l.rid == pkt.rid) {
            Some(i) => i,
            None if self.layers.len() < MAX_LAYERS && pkt.keyframe && pkt.vp8.is_some() => {
                self.layers.push(LayerCache {
                    rid: pkt.rid,
                    packets: VecDeque::with_capacity(INITIAL_CAPACITY),
                    bytes: 0,
                });
                self.layers.len() - 1
            }
            None => return None,
        };
        self.layers[i].push(pkt)
    }

    /// The layers with a cached keyframe no older than [`MAX_AGE`] at `now`.
    pub fn ready_layers(&self, now: Instant) -> impl Iterator<Item = Option<Rid>> + '_ {
        self.layers
            .iter()
            .filter(move |l| {
                l.since()
                    .is_some_and(|t| now.saturating_duration_since(t) <= MAX_AGE)
            })
            .map(|l| l.rid)
    }

    /// The packets of layer `rid` from its last keyframe on, in arrival order, if it has one no
    /// older than [`MAX_AGE`] at `now`.
    pub fn replay(&self, rid: Option<Rid>, now: Instant) -> Option<Vec<Arc<MediaPacket>>> {
        let layer = self.layers.iter().find(|l| l.rid == rid)?;
        let since = layer.since()?;
        if now.saturating_duration_since(since) > MAX_AGE {
            return None;
        }
        Some(layer.packets.iter().cloned().collect())
    }

    /// Empties layers whose keyframe is older than [`MAX_AGE`] (a layer that stopped keeps its
    /// packets otherwise); returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        for l in &mut self.layers {
            if l.since()
                .is_some_and(|t| now.saturating_duration_since(t) > MAX_AGE)
            {
                l.clear();
                n += 1;
            }
        }
        n
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.bytes).sum()
    }

    /// Packets held.
    pub fn packets(&self) -> usize {
        self.layers.iter().map(|l| l.packets.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vp8::Vp8Packet;
    use str0m::media::Pt;
    use str0m::rtp::ExtensionValues;

    /// A VP8 packet (descriptor without PictureID; a key or delta frame header) of `len` bytes.
    fn vp8(seq: u64, key: bool, len: usize, rid: Option<&str>, at: Instant) -> Arc<MediaPacket> {
        let mut payload = vec![0x10, if key { 0x00 } else { 0x01 }];
        payload.resize(len.max(3), 7);
        Arc::new(MediaPacket {
            pt: Pt::from(96),
            clock_rate: 90_000,
            seq,
            timestamp: seq as u32 * 3000,
            marker: false,
            rid: rid.map(Rid::from),
            keyframe: key,
            ext: ExtensionValues::default(),
            vp8: Vp8Packet::parse(&payload),
            payload: Arc::from(payload),
            arrival: at,
            nackable: true,
        })
    }

    fn seqs(packets: &[Arc<MediaPacket>]) -> Vec<u64> {
        packets.iter().map(|p| p.seq).collect()
    }

    #[test]
    fn a_layer_holds_the_packets_since_its_last_keyframe_and_nothing_before_one() {
        let t = Instant::now();
        let mut c = KeyframeCache::default();
        assert_eq!(c.push(&vp8(1, false, 100, None, t)), None);
        assert!(c.replay(None, t).is_none(), "nothing before a keyframe");
        for (seq, key) in [(2, true), (3, false), (4, false)] {
            c.push(&vp8(seq, key, 100, None, t));
        }
        let first = c.replay(None, t).unwrap();
        assert_eq!(seqs(&first), vec![2, 3, 4]);
        // The same Arcs as fanned out: nothing copied.
        let again = c.replay(None, t).unwrap();
        assert!(Arc::ptr_eq(&first[0], &again[0]));
        // A new keyframe starts over; a packet reordered from before it is not kept.
        c.push(&vp8(6, true, 100, None, t));
        c.push(&vp8(5, false, 100, None, t));
        c.push(&vp8(7, false, 100, None, t));
        assert_eq!(seqs(&c.replay(None, t).unwrap()), vec![6, 7]);
        assert_eq!((c.packets(), c.bytes()), (2, 200));
    }

    #[test]
    fn each_simulcast_layer_is_cached_apart() {
        let t = Instant::now();
        let mut c = KeyframeCache::default();
        c.push(&vp8(10, true, 50, Some("q"), t));
        c.push(&vp8(20, false, 50, Some("h"), t));
        c.push(&vp8(11, false, 50, Some("q"), t));
        let ready: Vec<_> = c.ready_layers(t).collect();
        assert_eq!(ready, vec![Some(Rid::from("q"))]);
        c.push(&vp8(21, true, 50, Some("h"), t));
        assert_eq!(seqs(&c.replay(Some(Rid::from("q")), t).unwrap()), [10, 11]);
        assert_eq!(seqs(&c.replay(Some(Rid::from("h")), t).unwrap()), [21]);
        assert!(c.replay(None, t).is_none());
    }

    #[test]
    fn bounds_empty_a_layer_until_its_next_keyframe() {
        let t = Instant::now();
        let mut c = KeyframeCache::default();
        // Packets.
        c.push(&vp8(0, true, 10, None, t));
        for seq in 1..MAX_PACKETS as u64 {
            assert_eq!(c.push(&vp8(seq, false, 10, None, t)), None);
        }
        assert_eq!(c.packets(), MAX_PACKETS);
        let seq = MAX_PACKETS as u64;
        assert_eq!(
            c.push(&vp8(seq, false, 10, None, t)),
            Some(CacheDrop::Packets)
        );
        assert_eq!((c.packets(), c.bytes()), (0, 0));
        assert_eq!(c.push(&vp8(seq + 1, false, 10, None, t)), None);
        assert!(c.replay(None, t).is_none(), "waits for the next keyframe");
        // Bytes.
        c.push(&vp8(1000, true, 2000, None, t));
        let mut seq = 1001;
        let dropped = loop {
            if let Some(d) = c.push(&vp8(seq, false, 2000, None, t)) {
                break d;
            }
            assert!(c.bytes() <= MAX_BYTES);
            seq += 1;
        };
        assert_eq!(dropped, CacheDrop::Bytes);
        assert_eq!(seq - 1000, (MAX_BYTES / 2000) as u64);
        // Age: at push, at replay and by `expire`.
        c.push(&vp8(2000, true, 10, None, t));
        let late = t + MAX_AGE + Duration::from_millis(1);
        assert!(c.replay(None, t + MAX_AGE).is_some());
        assert!(c.replay(None, late).is_none());
        assert_eq!(c.ready_layers(late).count(), 0);
        assert_eq!(
            c.push(&vp8(2001, false, 10, None, late)),
            Some(CacheDrop::Age)
        );
        c.push(&vp8(3000, true, 10, None, t));
        assert_eq!(c.expire(t + MAX_AGE), 0);
        assert_eq!(c.expire(late), 1);
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn a_packet_without_a_vp8_descriptor_empties_the_layer() {
        let t = Instant::now();
        let mut c = KeyframeCache::default();
        c.push(&vp8(1, true, 10, None, t));
        let mut other = (*vp8(2, false, 10, None, t)).clone();
        other.vp8 = None;
        assert_eq!(c.push(&Arc::new(other.clone())), Some(CacheDrop::Codec));
        assert!(c.replay(None, t).is_none());
        // A keyframe of an uncached codec never opens a layer.
        let mut c = KeyframeCache::default();
        other.keyframe = true;
        assert_eq!(c.push(&Arc::new(other)), None);
        assert_eq!(c.ready_layers(t).count(), 0);
    }
}
