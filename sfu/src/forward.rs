//! The forwarding core: a plain, sans-IO type that decides, for every RTP packet a publisher sends
//! on a track, which subscriber legs get it and with which header rewrite.
//!
//! It never touches an encoded frame: the [`Arc<[u8]>`](Arc) a publisher's packet arrived in is
//! handed, uncopied, to every leg. Per leg it rewrites:
//!
//! * the **sequence number**, rebased into a space that starts fresh (below 2^15) for each
//!   subscriber, because str0m derives the SRTP rollover counter from the extended sequence number
//!   we pass (handing a late joiner the publisher's extended numbers breaks SRTP silently);
//! * the **RTP timestamp**, offset per leg and kept continuous across simulcast layer switches;
//! * the **payload type**, mapped from the publisher's negotiated PT to the subscriber's;
//! * for VP8, the **PictureID and TL0PICIDX** in the payload descriptor, kept continuous across
//!   simulcast layer switches ([`Vp8Rebase`]). This is the one change inside a payload: a few
//!   bytes of the descriptor in front of the encoded frame, written by str0m as it serialises
//!   the packet ([`Vp8Patch`]); the shared payload itself stays as it arrived, and the encoded
//!   (end-to-end encrypted) frame after the descriptor is never modified.
//!
//! The SSRC, NACK/RTX, RTCP and TWCC of each leg are str0m's (each leg is a `StreamTx` of the
//! subscriber's `Rtc`). Keyframe requests from subscribers are mapped back to their track and
//! throttled per track and layer before they reach the publisher.
//!
//! One `Forwarder` lives in each shard. It has two halves: the *publication* half for tracks
//! published by sessions of this shard (which shards subscribe, keyframe throttling, silence
//! detection) and the *leg* half for subscriptions held by sessions of this shard.
//!
//! Simulcast: the leg half measures the incoming bitrate of every layer of the tracks it has legs
//! on and whether it is flowing ([`RateMeter`]) and keeps a [`LayerSelector`] per subscriber
//! session, fed with that session's bandwidth estimate ([`Forwarder::note_estimate`]).
//! [`Forwarder::select_layers`] (called periodically) sets each leg's *target* layer: the best
//! flowing layer, in layer order, under the leg's `preferredRid` and the estimate (see
//! [`crate::layer`]). The leg switches to it on the target layer's next keyframe and keeps
//! forwarding its old layer until then, so the subscriber never sees a gap.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use str0m::media::{MediaKind, Mid, Pt, Rid};
use str0m::rtp::{ExtensionValues, Vp8Patch};

use crate::ids::{SessionId, ShardId, TrackId};
use crate::keyframe_cache::{CacheDrop, KeyframeCache};
use crate::layer::{LAYER_STALE, LayerSelector, LegInput, RateMeter, SessionPlan, layer_cmp};
use crate::vp8::{Vp8Packet, Vp8Rebase};

/// Bytes a packet costs on the wire beyond its payload (RTP header and extensions, SRTP tag,
/// UDP/IP), for bitrate measurement.
const PACKET_OVERHEAD: usize = 60;
/// Simulcast layers measured per track (more are not selectable; str0m only accepts negotiated
/// rids anyway).
const MAX_LAYERS: usize = 8;
/// The shortest gap between two keyframe requests a publisher makes for its own track (see
/// [`Forwarder::publisher_keyframe_request`]).
pub const PUBLISHER_KEYFRAME_GAP: Duration = Duration::from_millis(250);

/// The shortest gap between two keyframe requests when the one asking is a *fresh* leg: one that
/// has not received a keyframe yet (a subscriber whose transport just came up). A keyframe that
/// answered an earlier request reached the legs that existed then, not this one, so the regular
/// throttle (which drops a request once a keyframe answered the last one) would leave a joiner
/// waiting for the next interval: about a second of black tile at every join. Longer than the
/// 300 ms for which libwebrtc's encoder ignores a keyframe request after the last one it took
/// (Chromium, Safari): a request sooner than that would be lost, not merged.
pub const FRESH_LEG_KEYFRAME_GAP: Duration = Duration::from_millis(350);

/// After an urgent switch down (see "Urgent switches" in [`crate::layer`]), the new layer's
/// keyframe is asked for once more this long after the switch: on a congested link the first
/// one may not have got through, and Chromium itself asks again only after about 3 s without a
/// decodable frame. At least [`FRESH_LEG_KEYFRAME_GAP`], so the encoder takes it.
pub const KEYFRAME_REPEAT_AFTER: Duration = Duration::from_millis(400);

/// How long a new leg waits for the replay of its track's cached keyframe before it takes live
/// packets as usual (the answer comes from the track's home shard within microseconds; this only
/// bounds a lost one).
pub const REPLAY_WAIT: Duration = Duration::from_millis(500);

/// A replay's RTP timestamps are compressed by this factor towards the last replayed packet's:
/// the cached pictures reach the new leg at once, and with their real spacing the receiver would
/// schedule them (and every live picture after them) up to the cache's age late. Compressed, they
/// look like a burst of pictures taken a few milliseconds apart, ending now.
pub const REPLAY_TS_COMPRESSION: i32 = 100;

/// A subscriber leg: the `mid` of a session's m-line that carries a pulled track.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct LegKey {
    /// The subscribing session.
    pub session: SessionId,
    /// Its m-line.
    pub mid: Mid,
}

/// A packet received from a publisher, as the core needs it. Shared between shards in an `Arc`.
#[derive(Debug, Clone)]
pub struct MediaPacket {
    /// Publisher-side payload type.
    pub pt: Pt,
    /// RTP clock rate of the payload type (for timestamp continuity on layer switches).
    pub clock_rate: u32,
    /// Extended (rollover-free) sequence number from the publisher.
    pub seq: u64,
    /// RTP timestamp from the publisher.
    pub timestamp: u32,
    /// RTP marker bit.
    pub marker: bool,
    /// Simulcast layer, if the publisher sends simulcast.
    pub rid: Option<Rid>,
    /// Whether this packet starts a keyframe (codec-level detection; `false` when unknown).
    pub keyframe: bool,
    /// Header extension values worth carrying to subscribers (audio level, orientation, …).
    pub ext: ExtensionValues,
    /// The VP8 payload descriptor, parsed once (VP8 packets with a well-formed descriptor only).
    pub vp8: Option<Vp8Packet>,
    /// The payload, never modified.
    pub payload: Arc<[u8]>,
    /// When the SFU received it.
    pub arrival: Instant,
    /// Whether subscribers may get it resent on NACK (video).
    pub nackable: bool,
}

#[cfg(test)]
impl MediaPacket {
    /// A video packet for tests: one frame per packet (3,000 ticks apart at 90 kHz), marker set,
    /// no VP8 descriptor, payload `frame`.
    pub(crate) fn test_video(seq: u64, now: Instant) -> MediaPacket {
        MediaPacket {
            pt: Pt::from(96),
            clock_rate: 90_000,
            seq,
            timestamp: seq as u32 * 3000,
            marker: true,
            rid: None,
            keyframe: false,
            ext: ExtensionValues::default(),
            vp8: None,
            payload: Arc::from(&b"frame"[..]),
            arrival: now,
            nackable: true,
        }
    }
}

/// One rewritten packet for one leg: what the shard hands to `StreamTx::write_rtp`.
#[derive(Debug, Clone)]
pub struct LegWrite {
    /// Destination leg.
    pub leg: LegKey,
    /// Subscriber-side payload type.
    pub pt: Pt,
    /// Rebased extended sequence number.
    pub seq: u64,
    /// Rebased RTP timestamp.
    pub timestamp: u32,
    /// Marker bit (unchanged).
    pub marker: bool,
    /// Resendable on NACK.
    pub nackable: bool,
    /// Extension values.
    pub ext: ExtensionValues,
    /// The shared payload.
    pub payload: Arc<[u8]>,
    /// VP8 PictureID/TL0PICIDX rewrite for this leg (descriptor bytes only), if any changes.
    pub vp8_patch: Option<Vp8Patch>,
    /// Wallclock for the RTP time (the arrival time).
    pub wallclock: Instant,
    /// The leg switched layers (or resumed) on this packet, a keyframe of its new layer: no
    /// packet sent to it before can help its receiver any more, so the shard drops the leg's
    /// retransmission history (str0m's RTX cache of its send stream) before writing this one,
    /// and NACKs for older packets go unanswered. Resending the old layer's lost packets on NACK only takes link capacity from the
    /// new layer's keyframe: measured on a 300 kbit/s link with 3 % loss (shaped test), the
    /// receiver went on NACKing the f packets the bottleneck had dropped, and their resends sat
    /// in the bottleneck's queue in front of q's keyframe.
    pub restart: bool,
}

/// Why the core declined to forward a packet to a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The subscriber did not negotiate the publisher's codec.
    NoPtMapping,
    /// Older than the first packet the leg forwarded (reordered across the start).
    TooOld,
    /// From a simulcast layer the leg is not on.
    OtherLayer,
    /// Waiting for a keyframe before starting or switching a simulcast layer.
    AwaitingKeyframe,
    /// A new leg waiting for the replay of its track's cached keyframe (see
    /// [`Forwarder::await_replay`]): what it would get now is in the replay.
    AwaitingReplay,
}

impl DropReason {
    /// Label for the `dropped` metric.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NoPtMapping => "no_pt_mapping",
            DropReason::TooOld => "too_old",
            DropReason::OtherLayer => "other_layer",
            DropReason::AwaitingKeyframe => "awaiting_keyframe",
            DropReason::AwaitingReplay => "awaiting_replay",
        }
    }
}

/// Maps publisher extended sequence numbers into a leg's own space.
///
/// `out = in + offset`. A layer switch re-anchors so that the leg's numbers continue without a
/// gap; packets older than the anchor are refused.
#[derive(Debug, Clone)]
pub struct SeqRebase {
    start: u64,
    anchor: Option<(u64, i128)>,
    highest_out: Option<u64>,
}

impl SeqRebase {
    /// A rebase whose first output will be `start` (keep it below 2^15 so SRTP's ROC stays 0).
    pub fn new(start: u64) -> SeqRebase {
        SeqRebase {
            start,
            anchor: None,
            highest_out: None,
        }
    }

    /// Maps one incoming number, or `None` if it predates the anchor.
    pub fn map(&mut self, input: u64) -> Option<u64> {
        let (floor, offset) = *self
            .anchor
            .get_or_insert((input, i128::from(self.start) - i128::from(input)));
        if input < floor {
            return None;
        }
        let out = u64::try_from(i128::from(input) + offset).ok()?;
        self.highest_out = Some(self.highest_out.map_or(out, |h| h.max(out)));
        Some(out)
    }

    /// Re-anchors so that `input` maps to one past the highest number sent so far.
    pub fn switch_to(&mut self, input: u64) {
        let next = self.highest_out.map_or(self.start, |h| h + 1);
        self.anchor = Some((input, i128::from(next) - i128::from(input)));
    }
}

/// Maps publisher RTP timestamps into a leg's own timeline (wrapping u32 arithmetic).
#[derive(Debug, Clone)]
pub struct TsRebase {
    start: u32,
    offset: Option<u32>,
    last: Option<(u32, Instant)>,
}

impl TsRebase {
    /// A rebase whose first output will be `start`.
    pub fn new(start: u32) -> TsRebase {
        TsRebase {
            start,
            offset: None,
            last: None,
        }
    }

    /// Maps one timestamp.
    pub fn map(&mut self, input: u32, arrival: Instant) -> u32 {
        let offset = *self.offset.get_or_insert(self.start.wrapping_sub(input));
        let out = input.wrapping_add(offset);
        self.last = Some((out, arrival));
        out
    }

    /// Re-anchors so that `input` continues the timeline by the wall time elapsed since the last
    /// packet (at least one tick).
    pub fn switch_to(&mut self, input: u32, arrival: Instant, clock_rate: u32) {
        let target = match self.last {
            Some((last_out, last_at)) => {
                let elapsed = arrival.saturating_duration_since(last_at).as_secs_f64();
                let ticks = (elapsed * f64::from(clock_rate)).round().clamp(1.0, 1e9) as u32;
                last_out.wrapping_add(ticks)
            }
            None => self.start,
        };
        self.offset = Some(target.wrapping_sub(input));
    }
}

#[derive(Debug, Clone)]
struct Leg {
    key: LegKey,
    home: ShardId,
    pt_map: Vec<(Pt, Pt)>,
    seq: SeqRebase,
    ts: TsRebase,
    vp8: Vp8Rebase,
    preferred_rid: Option<Rid>,
    target_rid: Option<Rid>,
    current_rid: Option<Rid>,
    started: bool,
    /// Paused by the layer selector (nothing fits): nothing is forwarded; on resume the leg
    /// waits for a keyframe of its target layer.
    paused: bool,
    /// A keyframe was forwarded to this leg (until then its keyframe requests are *fresh*, see
    /// [`FRESH_LEG_KEYFRAME_GAP`]).
    keyframe_seen: bool,
    /// The switch to the target layer is urgent: the old layer is not forwarded meanwhile.
    urgent: bool,
    /// When to ask once more for a keyframe of the layer an urgent switch went to (see
    /// [`KEYFRAME_REPEAT_AFTER`]).
    repeat_keyframe_at: Option<Instant>,
    /// The leg switched layers on the packet being forwarded (see [`LegWrite::restart`]).
    restart: bool,
    /// A new leg waiting, until this instant at most, for the replay of its track's cached
    /// keyframe: nothing is forwarded to it meanwhile (see [`Forwarder::await_replay`]).
    awaiting_replay: Option<Instant>,
    /// The replay was asked for (see [`Forwarder::replay_requested`]).
    replay_requested: bool,
}

impl Leg {
    /// The layer the leg should be on: the selector's choice, else the preference, else where it is.
    fn target(&self) -> Option<Rid> {
        self.target_rid.or(self.preferred_rid).or(self.current_rid)
    }

    /// `pkt` as this leg sends it: payload type `pt`, rebased `seq` and `timestamp`, and the
    /// leg's VP8 PictureID/TL0PICIDX rewrite (which advances the leg's VP8 numbering); the
    /// payload is shared, marker, extensions and nackability are the packet's.
    fn write(
        &mut self,
        pkt: &MediaPacket,
        pt: Pt,
        seq: u64,
        timestamp: u32,
        wallclock: Instant,
    ) -> LegWrite {
        LegWrite {
            leg: self.key,
            pt,
            seq,
            timestamp,
            marker: pkt.marker,
            nackable: pkt.nackable,
            ext: pkt.ext.clone(),
            payload: Arc::clone(&pkt.payload),
            vp8_patch: pkt.vp8.and_then(|v| v.patch(self.vp8.map(v.numbers()))),
            wallclock,
            restart: std::mem::take(&mut self.restart),
        }
    }
}

#[derive(Debug)]
struct Publication {
    session: SessionId,
    mid: Mid,
    kind: MediaKind,
    subscriber_shards: Vec<(ShardId, u32)>,
    last_media: Instant,
    /// Simulcast layers seen, with when each last carried a packet (a handful at most).
    layers_seen: Vec<(Rid, Instant)>,
    /// Per layer: when a request last went to the publisher, and whether one arrived since
    /// (throttled, owed once the interval has passed).
    keyframe_requests: Vec<KeyframeThrottle>,
    /// When the publisher last asked for a keyframe of its own track (`tracks/keyframe`).
    publisher_asked: Option<Instant>,
    /// The packets since the last keyframe of each layer (video; see [`crate::keyframe_cache`]).
    cache: KeyframeCache,
}

/// At most this many simulcast layers are remembered per publication (a peer may send rids
/// that were never negotiated; str0m drops those, this is a bound all the same).
const MAX_LAYERS_SEEN: usize = 8;

impl Publication {
    /// The layer a keyframe request for `rid` should go to: `rid` itself if it is flowing (or
    /// if nothing is known to flow), otherwise the best flowing layer below it, otherwise the
    /// lowest flowing one; for no layer (`None`), the best flowing one, if any. A new subscriber asks for the layer it would like (its preferred
    /// rid); a publisher that does not send that layer (Chromium sends one layer from a small
    /// capture) would never answer, and the subscriber would wait for a periodic keyframe.
    fn flowing_layer_for(&self, rid: Option<Rid>, now: Instant) -> Option<Rid> {
        let flowing = |at: &Instant| now.saturating_duration_since(*at) < LAYER_STALE;
        let live = self
            .layers_seen
            .iter()
            .filter(|(_, at)| flowing(at))
            .map(|(r, _)| *r);
        // A request for no layer in particular (a new leg without a preference) goes to the best
        // flowing layer: for a simulcast track, the publisher would otherwise answer with a
        // keyframe of whichever layer its first stream is, and the leg, which starts on the
        // first keyframe of any layer, would start low and have to climb.
        let Some(wanted) = rid else {
            return live.max_by(layer_cmp);
        };
        if self
            .layers_seen
            .iter()
            .all(|(r, at)| *r != wanted || !flowing(at))
        {
            let below = live
                .clone()
                .filter(|r| layer_cmp(r, &wanted) == Ordering::Less)
                .max_by(layer_cmp);
            if let Some(r) = below.or_else(|| live.min_by(layer_cmp)) {
                return Some(r);
            }
        }
        Some(wanted)
    }
}

#[derive(Debug)]
struct KeyframeThrottle {
    rid: Option<Rid>,
    last_sent: Instant,
    /// A throttled request is owed: it goes out at this instant unless a keyframe comes first.
    owed_at: Option<Instant>,
    /// A keyframe of this layer arrived since the last request went out.
    answered: bool,
}

/// Counts of what [`Forwarder::forward`] did with one packet.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ForwardOutcome {
    /// Legs that got the packet.
    pub forwarded: usize,
    /// Legs that did not, by reason.
    pub dropped: Vec<DropReason>,
    /// A leg is waiting for a keyframe of this layer: the caller should ask the publisher's
    /// shard (the first element) for one. The third element says the request is *fresh* (see
    /// [`FRESH_LEG_KEYFRAME_GAP`]): the leg left its old layer at once (an urgent switch down,
    /// see "Urgent switches" in [`crate::layer`]) and has no picture to show until the keyframe
    /// comes. Such a request must not wait out the regular throttle of a second when a keyframe
    /// of the layer answered someone else's request just before (that keyframe went to the legs
    /// on the layer then, not to this one).
    pub wants_keyframe: Option<(ShardId, Option<Rid>, bool)>,
    /// A leg that switched down urgently asks once more for a keyframe of this layer (see
    /// [`KEYFRAME_REPEAT_AFTER`]): the caller should ask the publisher's shard for one, as a
    /// *fresh* request (its last keyframe may not have reached the leg).
    pub repeat_keyframe: Option<(ShardId, Option<Rid>)>,
    /// Legs that switched to a higher layer (in layer order) on this packet.
    pub switched_up: u32,
    /// Legs that switched to a lower layer on this packet.
    pub switched_down: u32,
    /// A simulcast packet that no leg took because none is on (or switching to) its layer.
    pub unused_layer: bool,
}

/// What [`Forwarder::remove_session`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SessionRemoval {
    /// The session's publications, each with the shards that had legs on it.
    pub publications: Vec<(TrackId, Vec<ShardId>)>,
    /// The session's legs: (leg, track, home shard of the track).
    pub legs: Vec<(LegKey, TrackId, ShardId)>,
}

/// What [`Forwarder::replay`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// The leg got this many cached packets, from a keyframe on.
    Replayed(usize),
    /// Nothing was cached: the leg needs a keyframe request.
    Empty,
    /// The leg cannot take them (gone, not waiting, already started, or the subscriber did not
    /// negotiate the codec): it needs a keyframe request if it is still there.
    Refused,
}

/// Why [`Forwarder::publisher_keyframe_request`] refused a publisher's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublisherKeyframeRefusal {
    /// Not a publication of this shard.
    Unknown,
    /// Not a video track.
    NotVideo,
    /// The publisher asked less than [`PUBLISHER_KEYFRAME_GAP`] ago.
    TooSoon,
}

/// Where a throttled keyframe request should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyframeTarget {
    /// Publishing session.
    pub session: SessionId,
    /// Its m-line.
    pub mid: Mid,
    /// Layer.
    pub rid: Option<Rid>,
}

/// The per-shard forwarding state. See the module docs.
#[derive(Debug)]
pub struct Forwarder {
    keyframe_interval: Duration,
    // Maps keyed by ids the SFU makes (track ids count up, session ids are random) use a fast
    // hasher (Fx): the packet path looks up `publications`, `legs` and `meters` per packet. A
    // leg's key holds the subscriber's mid, which the peer names: that map keeps SipHash.
    publications: FxHashMap<TrackId, Publication>,
    legs: FxHashMap<TrackId, Vec<Leg>>,
    leg_tracks: HashMap<LegKey, TrackId>,
    meters: FxHashMap<TrackId, Vec<(Option<Rid>, RateMeter)>>,
    selectors: FxHashMap<SessionId, LayerSelector>,
    /// The (minimum, desired) bitrate each subscriber session's str0m was last told (see
    /// [`Forwarder::bitrate_changed`]).
    bitrates_told: FxHashMap<SessionId, (u64, u64)>,
}

impl Forwarder {
    /// A forwarder that lets at most one keyframe request per `keyframe_interval` through to a
    /// publisher for each track and layer.
    pub fn new(keyframe_interval: Duration) -> Forwarder {
        Forwarder {
            keyframe_interval,
            publications: FxHashMap::default(),
            legs: FxHashMap::default(),
            leg_tracks: HashMap::new(),
            meters: FxHashMap::default(),
            selectors: FxHashMap::default(),
            bitrates_told: FxHashMap::default(),
        }
    }

    // ---- publication half -------------------------------------------------------------------

    /// Records a track published by a local session.
    pub fn publish(
        &mut self,
        track: TrackId,
        session: SessionId,
        mid: Mid,
        kind: MediaKind,
        now: Instant,
    ) {
        self.publications.insert(
            track,
            Publication {
                session,
                mid,
                kind,
                subscriber_shards: Vec::new(),
                last_media: now,
                layers_seen: Vec::new(),
                keyframe_requests: Vec::new(),
                publisher_asked: None,
                cache: KeyframeCache::default(),
            },
        );
    }

    /// Forgets a publication; returns the shards that had subscribers to it.
    pub fn unpublish(&mut self, track: TrackId) -> Vec<ShardId> {
        self.publications
            .remove(&track)
            .map(|p| p.subscriber_shards.into_iter().map(|(s, _)| s).collect())
            .unwrap_or_default()
    }

    /// The session and m-line publishing a local track.
    pub fn publication_owner(&self, track: TrackId) -> Option<(SessionId, Mid)> {
        self.publications.get(&track).map(|p| (p.session, p.mid))
    }

    /// The kind of a local publication.
    pub fn publication_kind(&self, track: TrackId) -> Option<MediaKind> {
        self.publications.get(&track).map(|p| p.kind)
    }

    /// Notes media (of simulcast layer `rid`, if any) on a publication and returns the shards
    /// to fan it out to.
    pub fn note_media(
        &mut self,
        track: TrackId,
        rid: Option<Rid>,
        now: Instant,
    ) -> Option<&[(ShardId, u32)]> {
        let p = self.publications.get_mut(&track)?;
        p.last_media = now;
        if let Some(rid) = rid {
            if let Some((_, at)) = p.layers_seen.iter_mut().find(|(r, _)| *r == rid) {
                *at = now;
            } else if p.layers_seen.len() < MAX_LAYERS_SEEN {
                p.layers_seen.push((rid, now));
            }
        }
        Some(&p.subscriber_shards)
    }

    /// A keyframe of a local publication's layer `rid` arrived: the requests for that layer (or
    /// for the track as a whole) are answered, and none of them is owed any more.
    pub fn note_keyframe(&mut self, track: TrackId, rid: Option<Rid>) {
        if let Some(p) = self.publications.get_mut(&track) {
            for k in &mut p.keyframe_requests {
                if k.rid == rid || k.rid.is_none() {
                    k.answered = true;
                    k.owed_at = None;
                }
            }
        }
    }

    /// Keeps a packet of a local video publication in its keyframe cache (see
    /// [`crate::keyframe_cache`]); returns why a layer's cache was emptied, if this packet did.
    pub fn cache_packet(&mut self, track: TrackId, pkt: &Arc<MediaPacket>) -> Option<CacheDrop> {
        let p = self.publications.get_mut(&track)?;
        if p.kind != MediaKind::Video {
            return None;
        }
        p.cache.push(pkt)
    }

    /// The cached packets to replay to a new leg on a local publication that wants layer `rid`:
    /// those of the layer a keyframe request for `rid` would go to, or, for a leg without a
    /// preference, of the best layer with a cached keyframe. `None`: nothing usable is cached.
    pub fn replay_packets(
        &self,
        track: TrackId,
        rid: Option<Rid>,
        now: Instant,
    ) -> Option<Vec<Arc<MediaPacket>>> {
        let p = self.publications.get(&track)?;
        if p.kind != MediaKind::Video {
            return None;
        }
        let layer = if rid.is_some() {
            p.flowing_layer_for(rid, now)
        } else {
            p.cache
                .ready_layers(now)
                .max_by(|a, b| match (a, b) {
                    (Some(a), Some(b)) => layer_cmp(a, b),
                    _ => a.is_some().cmp(&b.is_some()),
                })
                .flatten()
        };
        p.cache.replay(layer, now)
    }

    /// Empties the keyframe caches older than their bound; returns the payload bytes and packets
    /// all caches still hold.
    pub fn expire_caches(&mut self, now: Instant) -> (usize, usize) {
        let (mut bytes, mut packets) = (0, 0);
        for p in self.publications.values_mut() {
            p.cache.expire(now);
            bytes += p.cache.bytes();
            packets += p.cache.packets();
        }
        (bytes, packets)
    }

    /// A shard gained a leg on a local publication. Returns false if the track is unknown.
    pub fn add_subscriber_shard(&mut self, track: TrackId, shard: ShardId) -> bool {
        let Some(p) = self.publications.get_mut(&track) else {
            return false;
        };
        match p.subscriber_shards.iter_mut().find(|(s, _)| *s == shard) {
            Some((_, n)) => *n += 1,
            None => p.subscriber_shards.push((shard, 1)),
        }
        true
    }

    /// Shards with legs on a publication (0 for an unknown one).
    pub fn subscriber_shard_count(&self, track: TrackId) -> usize {
        self.publications
            .get(&track)
            .map_or(0, |p| p.subscriber_shards.len())
    }

    /// A shard lost a leg on a local publication.
    pub fn remove_subscriber_shard(&mut self, track: TrackId, shard: ShardId) {
        let Some(p) = self.publications.get_mut(&track) else {
            return;
        };
        if let Some(i) = p.subscriber_shards.iter().position(|(s, _)| *s == shard) {
            let n = &mut p.subscriber_shards[i].1;
            *n = n.saturating_sub(1);
            if *n == 0 {
                p.subscriber_shards.swap_remove(i);
            }
        }
    }

    /// A keyframe request for a local publication, throttled per track and layer. `fresh`: the
    /// leg asking has not received a keyframe yet, so it waits at most
    /// [`FRESH_LEG_KEYFRAME_GAP`] after the last request, whether or not a keyframe answered it.
    pub fn keyframe_request(
        &mut self,
        track: TrackId,
        rid: Option<Rid>,
        fresh: bool,
        now: Instant,
    ) -> Option<KeyframeTarget> {
        let interval = self.keyframe_interval;
        let p = self.publications.get_mut(&track)?;
        if p.kind != MediaKind::Video {
            return None;
        }
        let rid = p.flowing_layer_for(rid, now);
        match p.keyframe_requests.iter_mut().find(|k| k.rid == rid) {
            Some(k)
                if fresh && now.saturating_duration_since(k.last_sent) < FRESH_LEG_KEYFRAME_GAP =>
            {
                // Too soon even for a fresh leg: owed at the end of the short gap. A keyframe
                // arriving before then reaches this leg (its transport is up) and cancels it.
                let due = k.last_sent + FRESH_LEG_KEYFRAME_GAP;
                k.owed_at = Some(k.owed_at.map_or(due, |t| t.min(due)));
                tracing::trace!(?track, ?rid, ?due, "keyframe request for a fresh leg owed");
                return None;
            }
            Some(k) if !fresh && now.saturating_duration_since(k.last_sent) < interval => {
                // Throttled. If no keyframe came since the request that went out, that request
                // may have been lost (a publisher whose path is down looks connected for
                // seconds): one more is owed and goes out when the interval is over (see
                // `owed_keyframe_requests`). If one came, this request is dropped, as the
                // subscriber asks again while it is stuck: a keyframe per interval at most.
                if !k.answered {
                    let due = k.last_sent + interval;
                    k.owed_at = Some(k.owed_at.map_or(due, |t| t.min(due)));
                }
                tracing::trace!(
                    ?track,
                    ?rid,
                    answered = k.answered,
                    "keyframe request throttled"
                );
                return None;
            }
            Some(k) => {
                k.last_sent = now;
                k.owed_at = None;
                k.answered = false;
            }
            None => p.keyframe_requests.push(KeyframeThrottle {
                rid,
                last_sent: now,
                owed_at: None,
                answered: false,
            }),
        }
        Some(KeyframeTarget {
            session: p.session,
            mid: p.mid,
            rid,
        })
    }

    /// The publisher of a local video track asks for a keyframe of it (`tracks/keyframe`, e.g.
    /// because its sending key changed): one target per layer in `layers` (empty: the track as a
    /// whole). It bypasses the per-layer throttle of [`Forwarder::keyframe_request`] but counts
    /// as a request sent for it, so subscribers' requests right after are throttled (and owed,
    /// until a keyframe answers). At most one per track per [`PUBLISHER_KEYFRAME_GAP`].
    pub fn publisher_keyframe_request(
        &mut self,
        track: TrackId,
        layers: &[Option<Rid>],
        now: Instant,
    ) -> Result<Vec<KeyframeTarget>, PublisherKeyframeRefusal> {
        let p = self
            .publications
            .get_mut(&track)
            .ok_or(PublisherKeyframeRefusal::Unknown)?;
        if p.kind != MediaKind::Video {
            return Err(PublisherKeyframeRefusal::NotVideo);
        }
        if p.publisher_asked
            .is_some_and(|t| now.saturating_duration_since(t) < PUBLISHER_KEYFRAME_GAP)
        {
            return Err(PublisherKeyframeRefusal::TooSoon);
        }
        p.publisher_asked = Some(now);
        let layers = if layers.is_empty() { &[None] } else { layers };
        let mut targets = Vec::with_capacity(layers.len());
        for &rid in layers {
            match p.keyframe_requests.iter_mut().find(|k| k.rid == rid) {
                Some(k) => {
                    k.last_sent = now;
                    k.owed_at = None;
                    k.answered = false;
                }
                None => p.keyframe_requests.push(KeyframeThrottle {
                    rid,
                    last_sent: now,
                    owed_at: None,
                    answered: false,
                }),
            }
            targets.push(KeyframeTarget {
                session: p.session,
                mid: p.mid,
                rid,
            });
        }
        Ok(targets)
    }

    /// Keyframe requests that were throttled (while the last one was unanswered, or from a fresh
    /// leg) and are now due: each goes out once (and counts as sent now), so a lost request is
    /// repeated and a fresh leg gets its keyframe.
    pub fn owed_keyframe_requests(&mut self, now: Instant) -> Vec<(TrackId, KeyframeTarget)> {
        let mut due = Vec::new();
        for (track, p) in &mut self.publications {
            for k in &mut p.keyframe_requests {
                if k.owed_at.is_some_and(|t| now >= t) {
                    k.owed_at = None;
                    k.answered = false;
                    k.last_sent = now;
                    due.push((
                        *track,
                        KeyframeTarget {
                            session: p.session,
                            mid: p.mid,
                            rid: k.rid,
                        },
                    ));
                }
            }
        }
        due
    }

    /// Local publications without media for `timeout`.
    pub fn silent_publications(&self, now: Instant, timeout: Duration) -> Vec<TrackId> {
        self.publications
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.last_media) >= timeout)
            .map(|(t, _)| *t)
            .collect()
    }

    // ---- leg half ---------------------------------------------------------------------------

    /// Adds a leg for `track`, published on shard `home`. `pt_map` maps publisher PTs to
    /// subscriber PTs; `seq_start` (below 2^15) and `ts_start` seed the leg's own number spaces.
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe(
        &mut self,
        track: TrackId,
        home: ShardId,
        leg: LegKey,
        pt_map: Vec<(Pt, Pt)>,
        preferred_rid: Option<Rid>,
        seq_start: u64,
        ts_start: u32,
    ) {
        self.unsubscribe(leg);
        self.leg_tracks.insert(leg, track);
        self.legs.entry(track).or_default().push(Leg {
            key: leg,
            home,
            pt_map,
            seq: SeqRebase::new(seq_start),
            ts: TsRebase::new(ts_start),
            vp8: Vp8Rebase::new(),
            preferred_rid,
            target_rid: None,
            current_rid: None,
            started: false,
            paused: false,
            keyframe_seen: false,
            urgent: false,
            repeat_keyframe_at: None,
            restart: false,
            awaiting_replay: None,
            replay_requested: false,
        });
    }

    /// Removes a leg; returns the track it was on and that track's home shard.
    pub fn unsubscribe(&mut self, leg: LegKey) -> Option<(TrackId, ShardId)> {
        let track = self.leg_tracks.remove(&leg)?;
        let mut home = None;
        if let Some(legs) = self.legs.get_mut(&track) {
            if let Some(l) = legs.iter().find(|l| l.key == leg) {
                home = Some(l.home);
            }
            legs.retain(|l| l.key != leg);
            if legs.is_empty() {
                self.legs.remove(&track);
                self.meters.remove(&track);
            }
        }
        home.map(|h| (track, h))
    }

    /// Shard `shard` was reset after a panic: forgets it as a subscriber of every local
    /// publication and returns the tracks below `before` (published before the reset) that our
    /// legs pull from it (their legs must end).
    pub fn forget_shard(&mut self, shard: ShardId, before: TrackId) -> Vec<TrackId> {
        for p in self.publications.values_mut() {
            p.subscriber_shards.retain(|(s, _)| *s != shard);
        }
        self.legs
            .iter()
            .filter(|(t, legs)| t.0 < before.0 && legs.iter().any(|l| l.home == shard))
            .map(|(t, _)| *t)
            .collect()
    }

    /// The publisher's track ended: drops all local legs on it and returns them.
    pub fn end_track(&mut self, track: TrackId) -> Vec<LegKey> {
        let legs = self.legs.remove(&track).unwrap_or_default();
        self.meters.remove(&track);
        for l in &legs {
            self.leg_tracks.remove(&l.key);
        }
        legs.into_iter().map(|l| l.key).collect()
    }

    /// Changes the simulcast layer a leg prefers (the cap of its target layer); the switch happens
    /// on the next keyframe. Run [`Forwarder::select_layers`] afterwards to apply it at once.
    pub fn set_preferred_rid(&mut self, leg: LegKey, rid: Option<Rid>) -> bool {
        let Some(l) = self.leg_mut(leg) else {
            return false;
        };
        l.preferred_rid = rid;
        true
    }

    /// The track, its home shard and the current layer of a leg: where its keyframe requests go.
    pub fn leg_source(&self, leg: LegKey) -> Option<(TrackId, ShardId, Option<Rid>)> {
        let track = *self.leg_tracks.get(&leg)?;
        let l = self.leg(leg)?;
        Some((track, l.home, l.target()))
    }

    /// The simulcast layer a leg prefers (its `preferredRid`; `None` for an unknown leg).
    pub fn leg_preference(&self, leg: LegKey) -> Option<Option<Rid>> {
        self.leg(leg).map(|l| l.preferred_rid)
    }

    /// Whether a session's str0m should be told a new (minimum, desired) bitrate from its
    /// layer plan: false when both are within 5% of what it was last told (repeating it is
    /// useless). Records them when true.
    pub fn bitrate_changed(&mut self, session: SessionId, minimum: u64, desired: u64) -> bool {
        let close = |a: u64, b: u64| a.abs_diff(b) <= b / 20;
        if let Some(&(m, d)) = self.bitrates_told.get(&session)
            && close(minimum, m)
            && close(desired, d)
        {
            return false;
        }
        self.bitrates_told.insert(session, (minimum, desired));
        true
    }

    /// Whether a keyframe was forwarded to `leg` yet (false for an unknown leg). Until then its
    /// keyframe requests are fresh (see [`Forwarder::keyframe_request`]).
    pub fn leg_has_keyframe(&self, leg: LegKey) -> bool {
        self.leg(leg).is_some_and(|l| l.keyframe_seen)
    }

    /// The layer a leg is on (`None` before its first packet, or without simulcast).
    pub fn leg_layer(&self, leg: LegKey) -> Option<Rid> {
        self.leg(leg)?.current_rid
    }

    /// A subscriber session's egress bandwidth estimate (from str0m's BWE). Returns whether it
    /// fell: then select at once (going down is urgent; going up waits for the periodic selection).
    pub fn note_estimate(&mut self, session: SessionId, bps: u64, now: Instant) -> bool {
        tracing::trace!(%session, bps, "bandwidth estimate");
        let selector = self.selectors.entry(session).or_default();
        let fell = selector.estimate_bps().is_some_and(|before| bps < before);
        selector.set_estimate(bps, now);
        fell
    }

    /// A subscriber session's once-a-second transport report: str0m's latest unsmoothed estimate
    /// and the egress loss over the last second (transport-wide feedback). Returns whether to
    /// select at once (the estimate fell, or the loss is heavy).
    pub fn note_peer_report(
        &mut self,
        session: SessionId,
        estimate: Option<u64>,
        loss: Option<f32>,
        now: Instant,
    ) -> bool {
        tracing::trace!(%session, ?estimate, ?loss, "transport report");
        let selector = self.selectors.entry(session).or_default();
        let fell = estimate.is_some_and(|e| selector.set_raw_estimate(e, now));
        let heavy = loss.is_some_and(|l| selector.note_transport_loss(f64::from(l), now));
        fell || heavy
    }

    /// The fraction lost and the round-trip time a subscriber session reported for one of its
    /// legs (its latest receiver report, from str0m's egress stats once a second). Returns whether
    /// the loss is heavy: then select at once.
    pub fn note_egress_report(
        &mut self,
        session: SessionId,
        loss: Option<f32>,
        rtt: Option<Duration>,
        now: Instant,
    ) -> bool {
        tracing::trace!(%session, ?loss, ?rtt, "receiver report");
        self.selectors
            .entry(session)
            .or_default()
            .note_report(loss.map(f64::from), rtt, now)
    }

    /// Measured incoming bitrate of one layer of a track this shard has legs on.
    pub fn layer_bitrate(&self, track: TrackId, rid: Option<Rid>, now: Instant) -> Option<u64> {
        self.meters
            .get(&track)?
            .iter()
            .find(|(r, _)| *r == rid)
            .and_then(|(_, m)| m.rate_bps(now))
    }

    /// Runs layer selection for every subscriber session with legs here (or only `only`): sets
    /// the legs' target layers and returns each session's plan (the shard tells str0m the desired
    /// bitrate).
    pub fn select_layers(
        &mut self,
        now: Instant,
        only: Option<SessionId>,
    ) -> Vec<(SessionId, SessionPlan)> {
        let mut inputs: FxHashMap<SessionId, Vec<LegInput>> = FxHashMap::default();
        let mut tracks: Vec<TrackId> = match only {
            Some(s) => self
                .leg_tracks
                .iter()
                .filter(|(k, _)| k.session == s)
                .map(|(_, t)| *t)
                .collect(),
            None => self.legs.keys().copied().collect(),
        };
        tracks.sort_unstable();
        tracks.dedup();
        for track in &tracks {
            let Some(legs) = self.legs.get(track) else {
                continue;
            };
            let meters = self.meters.get(track);
            let rate = |rid: Option<Rid>| {
                meters
                    .and_then(|m| m.iter().find(|(r, _)| *r == rid))
                    .and_then(|(_, m)| m.rate_bps(now))
            };
            let layers: Vec<(Rid, u64)> = meters
                .into_iter()
                .flatten()
                .filter_map(|(r, m)| Some(((*r)?, m.rate_bps(now)?)))
                .collect();
            for l in legs
                .iter()
                .filter(|l| only.is_none_or(|s| s == l.key.session))
            {
                inputs.entry(l.key.session).or_default().push(LegInput {
                    leg: l.key,
                    layers: layers.clone(),
                    fixed_bps: if layers.is_empty() {
                        rate(None).unwrap_or(0)
                    } else {
                        0
                    },
                    preferred: l.preferred_rid,
                    current: l.target_rid.or(l.current_rid),
                });
            }
        }
        let mut plans = Vec::with_capacity(inputs.len());
        for (session, legs) in inputs {
            let selector = self.selectors.entry(session).or_default();
            let plan = {
                let _span = tracing::trace_span!("select", %session).entered();
                selector.select(&legs, now)
            };
            for change in &plan.changes {
                tracing::debug!(
                    leg = ?change.leg,
                    rid = %change.rid,
                    estimate = ?selector.estimate_bps(),
                    allocated = plan.allocated_bps,
                    "simulcast target layer"
                );
                let Some(track) = self.leg_tracks.get(&change.leg) else {
                    continue;
                };
                if let Some(l) = self
                    .legs
                    .get_mut(track)
                    .and_then(|legs| legs.iter_mut().find(|l| l.key == change.leg))
                {
                    l.target_rid = Some(change.rid);
                    l.urgent = change.urgent;
                }
            }
            for &(leg, pause) in &plan.pauses {
                tracing::debug!(?leg, pause, "simulcast leg pause");
                self.set_leg_paused(leg, pause);
            }
            plans.push((session, plan));
        }
        plans
    }

    /// Pauses a leg (nothing is forwarded to it) or resumes it (on a keyframe of its target
    /// layer, continuing its numbering). See "Pausing" in [`crate::layer`].
    fn set_leg_paused(&mut self, leg: LegKey, pause: bool) {
        if let Some(l) = self.leg_mut(leg) {
            l.paused = pause;
            if pause {
                l.current_rid = None;
                l.urgent = false;
                l.repeat_keyframe_at = None;
            }
        }
    }

    /// A new leg is to be sent its track's cached keyframe (the shard asked the track's home for
    /// it): until [`Forwarder::replay`] brings the answer, or until `until`, nothing is forwarded
    /// to it, so that the replay starts its numbering and no packet reaches it twice (a second
    /// copy of an encrypted frame is refused by the receiver as a replay). Everything held back
    /// meanwhile is in the replay: it was cached before the home shard answered. False for an
    /// unknown leg.
    pub fn await_replay(&mut self, leg: LegKey, until: Instant) -> bool {
        match self.leg_mut(leg) {
            Some(l) => {
                l.awaiting_replay = Some(until);
                l.replay_requested = false;
                true
            }
            None => false,
        }
    }

    /// The shard asked for the replay a leg waits for; it waits until `until` at most now.
    pub fn replay_requested(&mut self, leg: LegKey, until: Instant) {
        if let Some(l) = self.leg_mut(leg) {
            l.awaiting_replay = Some(until);
            l.replay_requested = true;
        }
    }

    /// Legs waiting for a replay not asked for yet (their transport was not up).
    pub fn legs_awaiting_replay_request(&self) -> Vec<LegKey> {
        self.legs
            .values()
            .flatten()
            .filter(|l| l.awaiting_replay.is_some() && !l.replay_requested)
            .map(|l| l.key)
            .collect()
    }

    /// Whether the replay a leg waits for was asked for.
    pub fn leg_replay_requested(&self, leg: LegKey) -> bool {
        self.leg(leg)
            .is_some_and(|l| l.awaiting_replay.is_some() && l.replay_requested)
    }

    /// Whether a leg waits for a replay (see [`Forwarder::await_replay`]).
    pub fn leg_awaits_replay(&self, leg: LegKey) -> bool {
        self.leg(leg).is_some_and(|l| l.awaiting_replay.is_some())
    }

    /// The answer to [`Forwarder::await_replay`] for `leg` on `track`: `packets` are one layer's
    /// cached packets from a keyframe on, in arrival order (empty: nothing cached). A leg still waiting that has
    /// forwarded nothing gets them all, numbered from its start like live packets (sequence
    /// numbers and VP8 PictureID/TL0PICIDX run on into the live packets after them), with their
    /// RTP timestamps compressed towards the last one ([`REPLAY_TS_COMPRESSION`]) and `now` as
    /// their wall clock; payloads are the cached ones, untouched. Either way the leg stops
    /// waiting.
    pub fn replay(
        &mut self,
        track: TrackId,
        leg: LegKey,
        packets: &[Arc<MediaPacket>],
        now: Instant,
        out: &mut Vec<LegWrite>,
    ) -> ReplayOutcome {
        if self.leg_tracks.get(&leg) != Some(&track) {
            return ReplayOutcome::Refused;
        }
        let Some(l) = self.leg_mut(leg) else {
            return ReplayOutcome::Refused;
        };
        if l.awaiting_replay.take().is_none() {
            return ReplayOutcome::Refused;
        }
        let (Some(first), Some(last)) = (packets.first(), packets.last()) else {
            return ReplayOutcome::Empty;
        };
        if l.started || l.paused || !first.keyframe {
            return ReplayOutcome::Refused;
        }
        if !l.pt_map.iter().any(|(i, _)| *i == first.pt) {
            return ReplayOutcome::Refused;
        }
        if first.rid.is_some() {
            l.current_rid = first.rid;
        }
        l.started = true;
        // The live packets after the replay continue from the last one, mapped to now.
        let top = l.ts.map(last.timestamp, now);
        let before = out.len();
        for pkt in packets {
            let Some(&(_, pt)) = l.pt_map.iter().find(|(i, _)| *i == pkt.pt) else {
                continue;
            };
            let Some(seq) = l.seq.map(pkt.seq) else {
                continue;
            };
            let behind = last.timestamp.wrapping_sub(pkt.timestamp) as i32;
            let timestamp = top.wrapping_sub((behind / REPLAY_TS_COMPRESSION) as u32);
            out.push(l.write(pkt, pt, seq, timestamp, now));
        }
        l.keyframe_seen = true;
        ReplayOutcome::Replayed(out.len() - before)
    }

    fn leg(&self, leg: LegKey) -> Option<&Leg> {
        let track = self.leg_tracks.get(&leg)?;
        self.legs
            .get(track)
            .and_then(|legs| legs.iter().find(|l| l.key == leg))
    }

    fn leg_mut(&mut self, leg: LegKey) -> Option<&mut Leg> {
        let track = self.leg_tracks.get(&leg)?;
        self.legs
            .get_mut(track)
            .and_then(|legs| legs.iter_mut().find(|l| l.key == leg))
    }

    /// Number of local legs.
    pub fn leg_count(&self) -> usize {
        self.leg_tracks.len()
    }

    /// Whether this shard has legs on `track`.
    pub fn has_legs(&self, track: TrackId) -> bool {
        self.legs.contains_key(&track)
    }

    /// Decides which local legs get `pkt` and how it is rewritten for each; pushes one
    /// [`LegWrite`] per forwarded copy into `out`.
    pub fn forward(
        &mut self,
        track: TrackId,
        pkt: &MediaPacket,
        out: &mut Vec<LegWrite>,
    ) -> ForwardOutcome {
        let mut outcome = ForwardOutcome::default();
        let Some(legs) = self.legs.get_mut(&track) else {
            return outcome;
        };
        let meters = self.meters.entry(track).or_default();
        let bytes = pkt.payload.len() + PACKET_OVERHEAD;
        if let Some((_, m)) = meters.iter_mut().find(|(r, _)| *r == pkt.rid) {
            m.note(bytes, pkt.arrival);
        } else if meters.len() < MAX_LAYERS {
            let mut m = RateMeter::new(pkt.arrival);
            m.note(bytes, pkt.arrival);
            meters.push((pkt.rid, m));
        }
        for leg in legs.iter_mut() {
            if let Some(until) = leg.awaiting_replay {
                if pkt.arrival < until {
                    outcome.dropped.push(DropReason::AwaitingReplay);
                    continue;
                }
                // No answer in time: forward live, as without a replay.
                leg.awaiting_replay = None;
            }
            let before = leg.current_rid;
            if pkt.rid.is_some()
                && pkt.rid == leg.current_rid
                && leg.repeat_keyframe_at.is_some_and(|t| pkt.arrival >= t)
            {
                leg.repeat_keyframe_at = None;
                outcome.repeat_keyframe = Some((leg.home, pkt.rid));
            }
            let decision = leg_decision(leg, pkt);
            if let (Some(old), Some(new)) = (before, leg.current_rid)
                && old != new
            {
                tracing::debug!(leg = ?leg.key, %old, %new, "simulcast layer switch");
                if layer_cmp(&new, &old) == Ordering::Greater {
                    outcome.switched_up += 1;
                } else {
                    outcome.switched_down += 1;
                }
            }
            match decision {
                Ok(()) => {}
                Err(reason) => {
                    if reason == DropReason::AwaitingKeyframe {
                        let fresh = leg.urgent;
                        outcome.wants_keyframe = Some((leg.home, leg.target().or(pkt.rid), fresh));
                    }
                    outcome.dropped.push(reason);
                    continue;
                }
            }
            let Some(&(_, out_pt)) = leg.pt_map.iter().find(|(i, _)| *i == pkt.pt) else {
                outcome.dropped.push(DropReason::NoPtMapping);
                continue;
            };
            let Some(seq) = leg.seq.map(pkt.seq) else {
                outcome.dropped.push(DropReason::TooOld);
                continue;
            };
            let timestamp = leg.ts.map(pkt.timestamp, pkt.arrival);
            out.push(leg.write(pkt, out_pt, seq, timestamp, pkt.arrival));
            leg.keyframe_seen |= pkt.keyframe;
            outcome.forwarded += 1;
        }
        outcome.unused_layer = pkt.rid.is_some()
            && outcome.forwarded == 0
            && outcome.dropped.iter().all(|r| *r == DropReason::OtherLayer);
        outcome
    }

    /// Removes everything a session had here: its publications and its legs.
    pub fn remove_session(&mut self, session: SessionId) -> SessionRemoval {
        let tracks: Vec<TrackId> = self
            .publications
            .iter()
            .filter(|(_, p)| p.session == session)
            .map(|(t, _)| *t)
            .collect();
        let pubs = tracks.into_iter().map(|t| (t, self.unpublish(t))).collect();
        let legs: Vec<LegKey> = self
            .leg_tracks
            .keys()
            .filter(|k| k.session == session)
            .copied()
            .collect();
        let legs = legs
            .into_iter()
            .filter_map(|l| self.unsubscribe(l).map(|(t, h)| (l, t, h)))
            .collect();
        self.selectors.remove(&session);
        self.bitrates_told.remove(&session);
        SessionRemoval {
            publications: pubs,
            legs,
        }
    }
}

/// Simulcast layer selection for one leg; on `Ok` the leg takes the packet.
fn leg_decision(leg: &mut Leg, pkt: &MediaPacket) -> Result<(), DropReason> {
    let Some(rid) = pkt.rid else {
        // Not simulcast: every packet goes through.
        leg.started = true;
        return Ok(());
    };
    if leg.paused {
        return Err(DropReason::OtherLayer);
    }
    let target = leg.target();
    match (leg.current_rid, target) {
        (Some(current), Some(target)) if current == target => {
            if rid == current {
                Ok(())
            } else {
                Err(DropReason::OtherLayer)
            }
        }
        (current, target) => {
            // Not on a layer yet, or switching to `target` (None: any layer will do).
            let wanted = target.is_none_or(|t| t == rid);
            if wanted && pkt.keyframe {
                if leg.started {
                    leg.seq.switch_to(pkt.seq);
                    leg.ts.switch_to(pkt.timestamp, pkt.arrival, pkt.clock_rate);
                    leg.vp8.switch();
                    leg.restart = true;
                }
                if std::mem::take(&mut leg.urgent) && current.is_some() {
                    leg.repeat_keyframe_at = Some(pkt.arrival + KEYFRAME_REPEAT_AFTER);
                }
                leg.current_rid = Some(rid);
                leg.started = true;
                Ok(())
            } else if current == Some(rid) && !leg.urgent {
                // Keep sending the old layer until the new one has a keyframe (not after an
                // urgent switch: the link does not carry it).
                Ok(())
            } else if wanted {
                Err(DropReason::AwaitingKeyframe)
            } else {
                Err(DropReason::OtherLayer)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::LAYER_STALE;

    fn sid(n: u8) -> SessionId {
        SessionId([n; 16])
    }

    fn leg(n: u8, mid: &str) -> LegKey {
        LegKey {
            session: sid(n),
            mid: Mid::from(mid),
        }
    }

    fn packet(seq: u64, ts: u32, at: Instant) -> MediaPacket {
        MediaPacket {
            pt: Pt::from(96),
            clock_rate: 90_000,
            seq,
            timestamp: ts,
            marker: false,
            rid: None,
            keyframe: false,
            ext: ExtensionValues::default(),
            vp8: None,
            payload: Arc::from(&[1u8, 2, 3][..]),
            arrival: at,
            nackable: true,
        }
    }

    #[test]
    fn str0m_is_told_a_sessions_bitrate_only_when_it_moves_by_more_than_5_percent() {
        let mut f = Forwarder::new(Duration::from_secs(1));
        let s = SessionId([1; 16]);
        assert!(f.bitrate_changed(s, 100_000, 1_000_000));
        assert!(!f.bitrate_changed(s, 104_000, 960_000), "within 5%");
        assert!(f.bitrate_changed(s, 100_000, 1_100_000), "desired moved");
        assert!(f.bitrate_changed(s, 200_000, 1_100_000), "minimum moved");
        assert!(
            f.bitrate_changed(SessionId([2; 16]), 200_000, 1_100_000),
            "per session"
        );
        f.remove_session(s);
        assert!(
            f.bitrate_changed(s, 200_000, 1_100_000),
            "forgotten with the session"
        );
    }

    #[test]
    fn each_leg_gets_its_own_rebased_numbers_and_mapped_pt() {
        let now = Instant::now();
        let mut f = Forwarder::new(Duration::from_secs(1));
        let t = TrackId(1);
        f.subscribe(
            t,
            0,
            leg(2, "0"),
            vec![(Pt::from(96), Pt::from(100))],
            None,
            10,
            1000,
        );
        let mut out = Vec::new();
        // Publisher has been running for a long time: extended seq far beyond one rollover.
        let first = 5 * 65_536 + 7;
        f.forward(t, &packet(first, 4_000_000_000, now), &mut out);
        // A late joiner.
        f.subscribe(
            t,
            0,
            leg(3, "1"),
            vec![(Pt::from(96), Pt::from(98))],
            None,
            20,
            0,
        );
        f.forward(t, &packet(first + 1, 4_000_003_000, now), &mut out);
        f.forward(t, &packet(first + 3, 4_000_006_000, now), &mut out);
        let a: Vec<_> = out.iter().filter(|w| w.leg == leg(2, "0")).collect();
        let b: Vec<_> = out.iter().filter(|w| w.leg == leg(3, "1")).collect();
        assert_eq!(
            a.iter().map(|w| w.seq).collect::<Vec<_>>(),
            vec![10, 11, 13],
            "gaps are preserved so the subscriber can NACK them"
        );
        assert_eq!(b.iter().map(|w| w.seq).collect::<Vec<_>>(), vec![20, 22]);
        assert!(a.iter().all(|w| w.pt == Pt::from(100)));
        assert!(b.iter().all(|w| w.pt == Pt::from(98)));
        assert_eq!(
            a.iter().map(|w| w.timestamp).collect::<Vec<_>>(),
            vec![1000, 4000, 7000]
        );
        assert_eq!(
            b.iter().map(|w| w.timestamp).collect::<Vec<_>>(),
            vec![0, 3000]
        );
        // The payload of one packet is shared by all legs, not copied.
        assert_eq!(out.len(), 5);
        assert!(Arc::ptr_eq(&out[1].payload, &out[2].payload));
        assert!(Arc::ptr_eq(&out[3].payload, &out[4].payload));
    }

    #[test]
    fn timestamps_wrap_and_old_packets_are_refused() {
        let now = Instant::now();
        let mut f = Forwarder::new(Duration::from_secs(1));
        let t = TrackId(1);
        f.subscribe(
            t,
            0,
            leg(2, "0"),
            vec![(Pt::from(96), Pt::from(96))],
            None,
            100,
            u32::MAX - 1,
        );
        let mut out = Vec::new();
        f.forward(t, &packet(50, 10, now), &mut out);
        f.forward(t, &packet(51, 13, now), &mut out);
        let o = f.forward(t, &packet(49, 7, now), &mut out);
        assert_eq!(o.dropped, vec![DropReason::TooOld]);
        assert_eq!(out[0].timestamp, u32::MAX - 1);
        assert_eq!(out[1].timestamp, 1);
        // Reordering after the start is forwarded with the mapped number.
        f.forward(t, &packet(53, 20, now), &mut out);
        f.forward(t, &packet(52, 17, now), &mut out);
        assert_eq!(
            out.iter().map(|w| w.seq).collect::<Vec<_>>(),
            vec![100, 101, 103, 102]
        );
    }

    #[test]
    fn unknown_codec_is_dropped_with_reason() {
        let now = Instant::now();
        let mut f = Forwarder::new(Duration::from_secs(1));
        let t = TrackId(1);
        f.subscribe(
            t,
            0,
            leg(2, "0"),
            vec![(Pt::from(111), Pt::from(111))],
            None,
            1,
            0,
        );
        let mut out = Vec::new();
        let o = f.forward(t, &packet(1, 0, now), &mut out);
        assert_eq!(o.forwarded, 0);
        assert_eq!(o.dropped, vec![DropReason::NoPtMapping]);
        assert!(out.is_empty());
    }

    #[test]
    fn a_keyframe_request_for_a_layer_that_does_not_flow_goes_to_one_that_does() {
        let now = Instant::now();
        let ms = |n: u64| now + Duration::from_millis(n);
        let mut f = Forwarder::new(Duration::from_secs(1));
        let t = TrackId(9);
        f.publish(t, sid(1), Mid::from("v"), MediaKind::Video, now);
        let rid = |r: &str| Some(Rid::from(r));
        let target = |x: Option<KeyframeTarget>| x.and_then(|k| k.rid);
        // Nothing seen yet: the request goes where it was asked.
        assert_eq!(
            target(f.keyframe_request(t, rid("f"), false, now)),
            rid("f")
        );
        // Only q and h flow (a small capture): a request for f goes to h, the best below it.
        f.note_media(t, rid("q"), ms(100));
        f.note_media(t, rid("h"), ms(100));
        assert_eq!(
            target(f.keyframe_request(t, rid("f"), false, ms(200))),
            rid("h")
        );
        // ... and counts against h's throttle, not f's.
        assert_eq!(f.keyframe_request(t, rid("h"), false, ms(300)), None);
        // A flowing layer is asked for itself.
        assert_eq!(
            target(f.keyframe_request(t, rid("q"), false, ms(300))),
            rid("q")
        );
        // Only f flows: a request for q (nothing below it flows) goes to the lowest flowing, f.
        f.note_media(t, rid("f"), ms(2000));
        assert_eq!(
            target(f.keyframe_request(t, rid("q"), false, ms(2000))),
            rid("f")
        );
        // A request for no layer in particular (a new leg without a preference) goes to the best
        // flowing layer, not to whichever stream the publisher's m-line has first.
        f.note_media(t, rid("q"), ms(3100));
        f.note_media(t, rid("f"), ms(3100));
        assert_eq!(
            target(f.keyframe_request(t, None, false, ms(3100))),
            rid("f")
        );
        // A track with no layers (not simulcast) is asked as a whole.
        let single = TrackId(10);
        f.publish(single, sid(1), Mid::from("w"), MediaKind::Video, now);
        f.note_media(single, None, ms(2000));
        assert_eq!(
            target(f.keyframe_request(single, None, false, ms(2000))),
            None
        );
    }

    #[test]
    fn a_fresh_leg_gets_its_keyframe_within_the_short_gap_even_after_an_answered_request() {
        let now = Instant::now();
        let ms = |n: u64| now + Duration::from_millis(n);
        let mut f = Forwarder::new(Duration::from_secs(1));
        let t = TrackId(7);
        f.publish(t, sid(1), Mid::from("v"), MediaKind::Video, now);
        let kt = KeyframeTarget {
            session: sid(1),
            mid: Mid::from("v"),
            rid: None,
        };
        let target = Some(kt);
        // The publisher's keyframe after a key change (or an existing subscriber's request) is
        // answered before the joiner's transport is up ...
        assert_eq!(f.keyframe_request(t, None, false, now), target);
        f.note_keyframe(t, None);
        // ... an old leg asking again is dropped: the keyframe reached it ...
        assert_eq!(f.keyframe_request(t, None, false, ms(100)), None);
        assert!(f.owed_keyframe_requests(ms(1500)).is_empty());
        // ... but the joiner's leg never saw that keyframe: its request is owed until the short
        // gap is over (not dropped, and not held for the whole interval).
        assert_eq!(f.keyframe_request(t, None, true, ms(150)), None);
        assert!(f.owed_keyframe_requests(ms(349)).is_empty());
        assert_eq!(
            f.owed_keyframe_requests(now + FRESH_LEG_KEYFRAME_GAP),
            vec![(t, kt)]
        );
        assert!(f.owed_keyframe_requests(ms(2000)).is_empty(), "sent once");
        // After the short gap a fresh leg's request goes out at once ...
        f.note_keyframe(t, None);
        assert_eq!(f.keyframe_request(t, None, true, ms(700)), target);
        // ... and an owed fresh request is cancelled by a keyframe that comes first (the fresh
        // leg's transport is up, so that keyframe reaches it).
        assert_eq!(f.keyframe_request(t, None, true, ms(800)), None);
        f.note_keyframe(t, None);
        assert!(f.owed_keyframe_requests(ms(2000)).is_empty());
    }

    #[test]
    fn a_leg_is_fresh_until_a_keyframe_was_forwarded_to_it() {
        let now = Instant::now();
        let mut f = Forwarder::new(Duration::from_secs(1));
        let t = TrackId(1);
        let l = leg(2, "0");
        f.subscribe(t, 0, l, vec![(Pt::from(96), Pt::from(96))], None, 1, 0);
        assert!(!f.leg_has_keyframe(l));
        assert!(!f.leg_has_keyframe(leg(9, "9")), "unknown leg");
        let mut out = Vec::new();
        f.forward(t, &packet(1, 0, now), &mut out);
        assert!(!f.leg_has_keyframe(l), "a delta frame is not a keyframe");
        let mut key = packet(2, 3000, now);
        key.keyframe = true;
        f.forward(t, &key, &mut out);
        assert!(f.leg_has_keyframe(l));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn keyframe_requests_are_throttled_per_track_and_layer() {
        let now = Instant::now();
        let mut f = Forwarder::new(Duration::from_secs(1));
        let t = TrackId(7);
        f.publish(t, sid(1), Mid::from("v"), MediaKind::Video, now);
        let first = f.keyframe_request(t, None, false, now);
        assert_eq!(
            first,
            Some(KeyframeTarget {
                session: sid(1),
                mid: Mid::from("v"),
                rid: None
            })
        );
        assert_eq!(
            f.keyframe_request(t, None, false, now + Duration::from_millis(500)),
            None
        );
        assert!(
            f.keyframe_request(t, Some(Rid::from("h")), false, now)
                .is_some()
        );
        assert!(
            f.keyframe_request(t, None, false, now + Duration::from_millis(1000))
                .is_some()
        );
        // The throttled request is owed, not lost: it goes out once the interval is over, once.
        assert!(
            f.owed_keyframe_requests(now + Duration::from_millis(1500))
                .is_empty()
        );
        assert_eq!(
            f.keyframe_request(t, None, false, now + Duration::from_millis(1200)),
            None
        );
        assert!(
            f.owed_keyframe_requests(now + Duration::from_millis(1900))
                .is_empty()
        );
        assert_eq!(
            f.owed_keyframe_requests(now + Duration::from_millis(2000)),
            vec![(
                t,
                KeyframeTarget {
                    session: sid(1),
                    mid: Mid::from("v"),
                    rid: None
                }
            )]
        );
        assert!(
            f.owed_keyframe_requests(now + Duration::from_millis(3500))
                .is_empty()
        );
        // ... and counts as sent: a new request right after it is throttled again.
        assert_eq!(
            f.keyframe_request(t, None, false, now + Duration::from_millis(2100)),
            None
        );
        // Once a keyframe answered the last request, a throttled one is dropped, not owed, and a
        // keyframe arriving meanwhile cancels what was owed.
        let t0 = now + Duration::from_millis(5000);
        assert!(f.keyframe_request(t, None, false, t0).is_some());
        f.note_keyframe(t, None);
        assert_eq!(
            f.keyframe_request(t, None, false, t0 + Duration::from_millis(100)),
            None
        );
        assert!(
            f.owed_keyframe_requests(t0 + Duration::from_millis(1500))
                .is_empty(),
            "answered: nothing owed"
        );
        let t1 = t0 + Duration::from_millis(3000);
        assert!(
            f.keyframe_request(t, Some(Rid::from("h")), false, t1)
                .is_some()
        );
        assert_eq!(
            f.keyframe_request(
                t,
                Some(Rid::from("h")),
                false,
                t1 + Duration::from_millis(400)
            ),
            None
        );
        // A keyframe of another layer answers nothing for this one ...
        f.note_keyframe(t, Some(Rid::from("f")));
        // ... but one of this layer cancels the owed request.
        f.note_keyframe(t, Some(Rid::from("h")));
        assert!(
            f.owed_keyframe_requests(t1 + Duration::from_millis(1500))
                .is_empty()
        );
        // Audio tracks never get keyframe requests.
        let a = TrackId(8);
        f.publish(a, sid(1), Mid::from("a"), MediaKind::Audio, now);
        assert_eq!(f.keyframe_request(a, None, false, now), None);
    }

    #[test]
    fn publisher_keyframe_requests_bypass_the_throttle_and_are_limited_per_track() {
        let now = Instant::now();
        let mut f = Forwarder::new(Duration::from_secs(1));
        let t = TrackId(7);
        f.publish(t, sid(1), Mid::from("v"), MediaKind::Video, now);
        let (h, q) = (Some(Rid::from("h")), Some(Rid::from("q")));
        let target = |rid| KeyframeTarget {
            session: sid(1),
            mid: Mid::from("v"),
            rid,
        };
        // A subscriber's request went out just now: the publisher's still passes, one per layer.
        assert!(f.keyframe_request(t, h, false, now).is_some());
        assert_eq!(
            f.publisher_keyframe_request(t, &[q, h], now + Duration::from_millis(10)),
            Ok(vec![target(q), target(h)])
        );
        // A second one within the gap is refused, also for other layers; at the gap it passes.
        for ms in [11, 100, 259] {
            assert_eq!(
                f.publisher_keyframe_request(t, &[q], now + Duration::from_millis(ms)),
                Err(PublisherKeyframeRefusal::TooSoon),
                "{ms} ms"
            );
        }
        let t1 = now + Duration::from_millis(260);
        assert_eq!(
            f.publisher_keyframe_request(t, &[], t1),
            Ok(vec![target(None)]),
            "no layers: the track as a whole"
        );
        // It counts as sent for the subscriber throttle: subscribers' requests within the interval
        // are held back, and owed while no keyframe came ...
        assert_eq!(
            f.keyframe_request(t, None, false, t1 + Duration::from_millis(50)),
            None
        );
        assert_eq!(
            f.keyframe_request(t, q, false, t1 + Duration::from_millis(50)),
            None
        );
        let owed =
            |f: &mut Forwarder, ms| f.owed_keyframe_requests(now + Duration::from_millis(ms));
        assert!(owed(&mut f, 1009).is_empty(), "q was sent at 10 ms");
        assert_eq!(owed(&mut f, 1010), vec![(t, target(q))]);
        assert!(
            owed(&mut f, 1259).is_empty(),
            "the whole track was sent at 260 ms"
        );
        assert_eq!(owed(&mut f, 1260), vec![(t, target(None))]);
        // ... and not owed once a keyframe answered.
        let t2 = now + Duration::from_millis(5000);
        assert!(f.publisher_keyframe_request(t, &[q, h], t2).is_ok());
        f.note_keyframe(t, q);
        f.note_keyframe(t, h);
        assert_eq!(
            f.keyframe_request(t, h, false, t2 + Duration::from_millis(100)),
            None
        );
        assert!(
            f.owed_keyframe_requests(t2 + Duration::from_millis(2000))
                .is_empty()
        );
        // Audio and unknown tracks are refused.
        let a = TrackId(8);
        f.publish(a, sid(1), Mid::from("a"), MediaKind::Audio, now);
        assert_eq!(
            f.publisher_keyframe_request(a, &[], now),
            Err(PublisherKeyframeRefusal::NotVideo)
        );
        assert_eq!(
            f.publisher_keyframe_request(TrackId(9), &[], now),
            Err(PublisherKeyframeRefusal::Unknown)
        );
        // The limit is per track.
        let u = TrackId(10);
        f.publish(u, sid(1), Mid::from("w"), MediaKind::Video, now);
        assert!(
            f.publisher_keyframe_request(u, &[], now + Duration::from_millis(11))
                .is_ok()
        );
    }

    #[test]
    fn subscriber_shards_are_reference_counted() {
        let now = Instant::now();
        let mut f = Forwarder::new(Duration::from_secs(1));
        let t = TrackId(1);
        f.publish(t, sid(1), Mid::from("0"), MediaKind::Audio, now);
        assert!(f.add_subscriber_shard(t, 0));
        assert!(f.add_subscriber_shard(t, 0));
        assert!(f.add_subscriber_shard(t, 3));
        f.remove_subscriber_shard(t, 0);
        assert_eq!(f.note_media(t, None, now).unwrap(), &[(0, 1), (3, 1)]);
        f.remove_subscriber_shard(t, 0);
        assert_eq!(f.note_media(t, None, now).unwrap(), &[(3, 1)]);
        assert!(!f.add_subscriber_shard(TrackId(99), 0));
        assert_eq!(f.unpublish(t), vec![3]);
        assert!(f.note_media(t, None, now).is_none());
    }

    #[test]
    fn silent_publications_are_reported() {
        let now = Instant::now();
        let mut f = Forwarder::new(Duration::from_secs(1));
        f.publish(TrackId(1), sid(1), Mid::from("0"), MediaKind::Audio, now);
        f.publish(TrackId(2), sid(1), Mid::from("1"), MediaKind::Audio, now);
        let later = now + Duration::from_secs(3);
        f.note_media(TrackId(2), None, later);
        assert_eq!(
            f.silent_publications(later, Duration::from_secs(2)),
            vec![TrackId(1)]
        );
    }

    #[test]
    fn simulcast_leg_waits_for_keyframe_and_switches_without_gaps() {
        let now = Instant::now();
        let mut f = Forwarder::new(Duration::from_secs(1));
        let t = TrackId(1);
        let l = leg(2, "0");
        f.subscribe(
            t,
            0,
            l,
            vec![(Pt::from(96), Pt::from(96))],
            Some(Rid::from("h")),
            1,
            0,
        );
        let mut out = Vec::new();
        let p = |seq: u64, rid: &str, key: bool, ms: u64| {
            let mut p = packet(seq, (ms * 90) as u32, now + Duration::from_millis(ms));
            p.rid = Some(Rid::from(rid));
            p.keyframe = key;
            p
        };
        let o = f.forward(t, &p(10, "h", false, 0), &mut out);
        assert_eq!(o.dropped, vec![DropReason::AwaitingKeyframe]);
        assert_eq!(o.wants_keyframe, Some((0, Some(Rid::from("h")), false)));
        assert_eq!(
            f.forward(t, &p(500, "l", true, 0), &mut out).dropped,
            vec![DropReason::OtherLayer]
        );
        f.forward(t, &p(11, "h", true, 10), &mut out);
        f.forward(t, &p(12, "h", false, 20), &mut out);
        // Switch to "l": keep "h" until "l" has a keyframe.
        assert!(f.set_preferred_rid(l, Some(Rid::from("l"))));
        f.forward(t, &p(501, "l", false, 30), &mut out);
        f.forward(t, &p(13, "h", false, 30), &mut out);
        f.forward(t, &p(502, "l", true, 40), &mut out);
        f.forward(t, &p(14, "h", false, 40), &mut out);
        f.forward(t, &p(503, "l", false, 50), &mut out);
        assert_eq!(
            out.iter().map(|w| w.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5],
            "one continuous sequence across the switch"
        );
        // Only the new layer's keyframe restarts the leg (its receiver needs nothing sent
        // before it); the leg's first keyframe does not.
        assert_eq!(
            out.iter().map(|w| w.restart).collect::<Vec<_>>(),
            vec![false, false, false, true, false],
        );
        let ts: Vec<u32> = out.iter().map(|w| w.timestamp).collect();
        assert!(
            ts.windows(2).all(|w| w[1] > w[0]),
            "timestamps advance: {ts:?}"
        );
        assert_eq!(f.leg_source(l), Some((t, 0, Some(Rid::from("l")))));
    }

    #[test]
    fn selection_follows_the_estimate_and_the_preference_with_hysteresis() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(Duration::from_secs(1));
        let t = TrackId(1);
        let l = leg(2, "0");
        f.subscribe(t, 0, l, vec![(Pt::from(96), Pt::from(96))], None, 1, 0);
        let mut out = Vec::new();
        // Three layers of 1, 4 and 12 packets of 1000 bytes per 33 ms (~0.26/1/3 Mbit/s);
        // a keyframe of every layer every second.
        let mut seqs = [100u64, 10_000, 20_000];
        let mut send = |f: &mut Forwarder, ms: u64, out: &mut Vec<LegWrite>| {
            let mut outcomes = Vec::new();
            for (i, rid) in ["q", "h", "f"].iter().enumerate() {
                let n = [1, 4, 12][i];
                for k in 0..n {
                    let mut p = packet(seqs[i], (ms * 90) as u32, t0 + Duration::from_millis(ms));
                    p.payload = Arc::from(vec![0u8; 1000]);
                    p.rid = Some(Rid::from(*rid));
                    p.keyframe = k == 0 && (ms / 33).is_multiple_of(30);
                    seqs[i] += 1;
                    outcomes.push(f.forward(t, &p, out));
                }
            }
            outcomes
        };
        let now = |ms: u64| t0 + Duration::from_millis(ms);
        let mut ms = 0;
        // No estimate and no selection yet: the first keyframe of any layer (q here) starts it.
        send(&mut f, ms, &mut out);
        assert_eq!(f.leg_layer(l), Some(Rid::from("q")));
        f.note_estimate(l.session, 2_000_000, now(ms));
        let mut unused = 0;
        let mut up = 0;
        let mut run = |f: &mut Forwarder, ms: &mut u64, until: u64, out: &mut Vec<LegWrite>| {
            while *ms < until {
                *ms += 33;
                for o in send(f, *ms, out) {
                    unused += u32::from(o.unused_layer);
                    up += o.switched_up;
                }
                f.select_layers(now(*ms), None);
            }
        };
        // 2 Mbit/s leaves room for h (~1 Mbit/s with headroom) but not f: after the hold (and
        // the meters' first windows), on h's next keyframe, the leg goes up.
        run(&mut f, &mut ms, 2900, &mut out);
        assert_eq!(f.leg_layer(l), Some(Rid::from("q")), "not before the hold");
        run(&mut f, &mut ms, 4100, &mut out);
        assert_eq!(f.leg_layer(l), Some(Rid::from("h")));
        // Preferring q caps the leg at once (on q's next keyframe).
        f.set_preferred_rid(l, Some(Rid::from("q")));
        let plans = f.select_layers(now(ms), Some(l.session));
        assert_eq!(plans[0].1.changes[0].rid, Rid::from("q"));
        run(&mut f, &mut ms, 5100, &mut out);
        assert_eq!(f.leg_layer(l), Some(Rid::from("q")));
        // Preferring h again: up only after the hold.
        f.set_preferred_rid(l, Some(Rid::from("h")));
        assert!(
            f.select_layers(now(ms), Some(l.session))[0]
                .1
                .changes
                .is_empty()
        );
        run(&mut f, &mut ms, 7000, &mut out);
        assert_eq!(f.leg_layer(l), Some(Rid::from("q")), "not before the hold");
        run(&mut f, &mut ms, 8100, &mut out);
        assert_eq!(f.leg_layer(l), Some(Rid::from("h")));
        // The estimate collapses (with loss): down at once, on q's next keyframe.
        f.note_peer_report(l.session, None, Some(0.05), now(ms));
        f.note_estimate(l.session, 300_000, now(ms));
        run(&mut f, &mut ms, 9100, &mut out);
        assert_eq!(f.leg_layer(l), Some(Rid::from("q")));
        assert_eq!(up, 2);
        assert!(unused > 0, "packets of layers no leg is on are counted");
        // The leg's numbers stayed continuous across every switch.
        let seqs: Vec<u64> = out.iter().map(|w| w.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "gap in {seqs:?}");
    }

    #[test]
    fn an_urgent_switch_down_stops_the_old_layer_at_once_and_asks_for_the_keyframe_again() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(Duration::from_secs(1));
        let t = TrackId(1);
        let l = leg(2, "0");
        f.subscribe(t, 0, l, vec![(Pt::from(96), Pt::from(96))], None, 1, 0);
        let mut out = Vec::new();
        // q and f at ~0.25 and ~3 Mbit/s (1 and 12 packets of 1000 bytes per 33 ms); a keyframe
        // of each every 30 packets (~1 s), q's 15 after f's.
        let mut seqs = [100u64, 20_000];
        let mut send = |f: &mut Forwarder, ms: u64, out: &mut Vec<LegWrite>| {
            let mut outcomes = Vec::new();
            for (i, rid) in ["q", "f"].iter().enumerate() {
                for k in 0..[1, 12][i] {
                    let mut p = packet(seqs[i], (ms * 90) as u32, t0 + Duration::from_millis(ms));
                    p.payload = Arc::from(vec![0u8; 1000]);
                    p.rid = Some(Rid::from(*rid));
                    p.keyframe = k == 0 && (ms / 33 + [15, 0][i]).is_multiple_of(30);
                    seqs[i] += 1;
                    outcomes.push((*rid, f.forward(t, &p, out)));
                }
            }
            outcomes
        };
        let now = |ms: u64| t0 + Duration::from_millis(ms);
        // On f (no estimate yet: the top layer), with the meters running.
        let mut ms = 0;
        while ms < 2970 {
            send(&mut f, ms, &mut out);
            f.select_layers(now(ms), None);
            ms += 33;
        }
        assert_eq!(f.leg_layer(l), Some(Rid::from("f")));
        f.note_estimate(l.session, 10_000_000, now(ms));
        // A 300 kbit/s link (losing packets): a severe shortfall, urgent.
        f.note_peer_report(l.session, None, Some(0.05), now(ms));
        f.note_estimate(l.session, 250_000, now(ms));
        let plans = f.select_layers(now(ms), Some(l.session));
        let change = plans[0].1.changes[0];
        assert_eq!((change.rid, change.urgent), (Rid::from("q"), true));
        // f is not forwarded any more, though q's keyframe has not come yet.
        let (mut f_after, mut switched_at, mut repeats) = (0, None, Vec::new());
        let mut asked = None;
        let until = ms + 1500;
        while ms < until {
            ms += 33;
            for (rid, o) in send(&mut f, ms, &mut out) {
                if rid == "f" {
                    f_after += o.forwarded;
                }
                if let Some((_, r, fresh)) = o.wants_keyframe {
                    asked.get_or_insert((r, fresh));
                }
                if o.switched_down > 0 {
                    switched_at = Some(ms);
                }
                if let Some(r) = o.repeat_keyframe {
                    repeats.push((ms, r));
                }
            }
        }
        assert_eq!(f_after, 0, "the old layer stopped at once");
        let switched_at = switched_at.expect("switched to q on its keyframe");
        assert_eq!(f.leg_layer(l), Some(Rid::from("q")));
        // Its keyframe request is fresh: it must not wait out the regular throttle (a second)
        // when a keyframe of q answered someone else's request just before.
        assert_eq!(asked, Some((Some(Rid::from("q")), true)));
        // The leg's send history restarts on q's keyframe: f's lost packets are not resent.
        assert_eq!(out.iter().filter(|w| w.restart).count(), 1);
        // One more keyframe request for q, KEYFRAME_REPEAT_AFTER after the switch (at q's next
        // packet), and only one.
        assert_eq!(repeats.len(), 1, "{repeats:?}");
        let (at, target) = repeats[0];
        assert_eq!(target, (0, Some(Rid::from("q"))));
        let after = Duration::from_millis(at - switched_at);
        assert!(
            after >= KEYFRAME_REPEAT_AFTER
                && after < KEYFRAME_REPEAT_AFTER + Duration::from_millis(100),
            "{after:?}"
        );
        let seqs_ok = out.windows(2).all(|w| w[1].seq == w[0].seq + 1);
        assert!(seqs_ok, "the leg's numbers stay continuous");
    }

    /// A VP8 payload: descriptor with a 15-bit PictureID, TL0PICIDX and TID 0, the first bytes
    /// of a VP8 frame (keyframe or not), and `frame` standing for the encoded (encrypted) rest.
    fn vp8_payload(pid: u16, tl0: u8, key: bool, frame: u8) -> Vec<u8> {
        let mut p = vec![0x90, 0xe0, 0x80 | (pid >> 8) as u8, pid as u8, tl0, 0x00];
        p.push(if key { 0x10 } else { 0x11 });
        p.extend_from_slice(&[0, 0, 0x9d, 0x01, 0x2a, frame, frame, frame]);
        p
    }

    /// One packet of simulcast layer `rid` with a VP8 payload.
    fn vp8_packet(rid: &str, seq: u64, pid: u16, tl0: u8, key: bool, at: Instant) -> MediaPacket {
        let payload = vp8_payload(pid, tl0, key, seq as u8);
        let mut p = packet(seq, seq as u32 * 3000, at);
        p.rid = Some(Rid::from(rid));
        p.keyframe = key;
        p.vp8 = Vp8Packet::parse(&payload);
        p.payload = Arc::from(payload);
        p
    }

    #[test]
    fn a_paused_leg_gets_nothing_and_resumes_on_a_keyframe_without_a_gap() {
        let now = Instant::now();
        let mut f = Forwarder::new(Duration::from_secs(1));
        let t = TrackId(1);
        let l = leg(2, "0");
        f.subscribe(t, 0, l, vec![(Pt::from(96), Pt::from(96))], None, 1, 0);
        let q = |seq: u64, key: bool| {
            let mut p = packet(seq, seq as u32 * 3000, now);
            p.rid = Some(Rid::from("q"));
            p.keyframe = key;
            p
        };
        let mut out = Vec::new();
        f.forward(t, &q(1, true), &mut out);
        f.forward(t, &q(2, false), &mut out);
        assert_eq!(out.len(), 2);
        f.set_leg_paused(l, true);
        let o = f.forward(t, &q(3, true), &mut out);
        assert_eq!(out.len(), 2, "paused: nothing forwarded");
        assert!(o.wants_keyframe.is_none(), "a paused leg asks for nothing");
        f.set_leg_paused(l, false);
        // Resumed: waits for a keyframe (and asks for one), then continues the numbering.
        let o = f.forward(t, &q(4, false), &mut out);
        assert_eq!(out.len(), 2);
        assert!(o.wants_keyframe.is_some());
        f.forward(t, &q(5, true), &mut out);
        f.forward(t, &q(6, false), &mut out);
        let seqs: Vec<u64> = out.iter().map(|w| w.seq).collect();
        assert_eq!(seqs.len(), 4);
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    }

    #[test]
    fn vp8_numbers_stay_continuous_per_leg_across_switches() {
        let now = Instant::now();
        let mut f = Forwarder::new(Duration::from_secs(1));
        let t = TrackId(1);
        let l = leg(2, "0");
        f.subscribe(
            t,
            0,
            l,
            vec![(Pt::from(96), Pt::from(96))],
            Some(Rid::from("h")),
            1,
            0,
        );
        let mut out = Vec::new();
        // h numbers its pictures from 1000 / 50, f from 30000 / 250 (the TL0PICIDX wraps).
        let h = |i: u16, key| vp8_packet("h", 100 + u64::from(i), 1000 + i, 50 + i as u8, key, now);
        let fl = |i: u16, key| {
            vp8_packet(
                "f",
                900 + u64::from(i),
                30_000 + i,
                250u8.wrapping_add(i as u8),
                key,
                now,
            )
        };
        for p in [h(0, true), h(1, false), h(2, false)] {
            f.forward(t, &p, &mut out);
        }
        assert!(
            out.iter().all(|w| w.vp8_patch.is_none()),
            "the first layer passes through unchanged"
        );
        f.set_preferred_rid(l, Some(Rid::from("f")));
        f.forward(t, &fl(0, false), &mut out);
        f.forward(t, &h(3, false), &mut out);
        let switch = fl(1, true);
        f.forward(t, &switch, &mut out);
        f.forward(t, &fl(2, false), &mut out);
        // A retransmission of the keyframe packet maps the same way.
        f.forward(t, &switch, &mut out);
        let expect = |p: &MediaPacket, pid: u16, tl0: u8| {
            let v = p.vp8.unwrap();
            v.patch(crate::vp8::Vp8Numbers {
                picture_id: Some(crate::vp8::PictureId {
                    value: pid,
                    wide: true,
                }),
                tl0_pic_idx: Some(tl0),
            })
        };
        let got: Vec<_> = out.iter().skip(4).map(|w| w.vp8_patch).collect();
        assert_eq!(
            got,
            vec![
                expect(&switch, 1004, 54),
                expect(&fl(2, false), 1005, 55),
                expect(&switch, 1004, 54),
            ]
        );
        // And back to h, which has moved on meanwhile.
        f.set_preferred_rid(l, Some(Rid::from("h")));
        let back = h(40, true);
        f.forward(t, &back, &mut out);
        assert_eq!(out.last().unwrap().vp8_patch, expect(&back, 1006, 56));
        // The payload handed on is the publisher's, byte for byte.
        assert!(Arc::ptr_eq(&out.last().unwrap().payload, &back.payload));
    }

    /// Three layers q/h/f of 1, `h_packets` and `f_packets` packets of 1000 bytes per 33 ms
    /// frame, a keyframe of each every second; `stopped(rid, ms)` silences a layer.
    struct Publisher {
        seqs: [u64; 3],
        h_packets: u64,
        f_packets: u64,
    }

    impl Publisher {
        fn send(
            &mut self,
            f: &mut Forwarder,
            t: TrackId,
            at: Instant,
            ms: u64,
            stopped: impl Fn(&str) -> bool,
            out: &mut Vec<LegWrite>,
        ) -> ForwardOutcome {
            let mut total = ForwardOutcome::default();
            for (i, rid) in ["q", "h", "f"].iter().enumerate() {
                if stopped(rid) {
                    continue;
                }
                let n = [1, self.h_packets, self.f_packets][i];
                for k in 0..n {
                    let mut p = packet(self.seqs[i], (ms * 90) as u32, at);
                    p.payload = Arc::from(vec![0u8; 1000]);
                    p.rid = Some(Rid::from(*rid));
                    p.keyframe = k == 0 && (ms / 33).is_multiple_of(30);
                    self.seqs[i] += 1;
                    let o = f.forward(t, &p, out);
                    total.switched_up += o.switched_up;
                    total.switched_down += o.switched_down;
                }
            }
            total
        }
    }

    #[test]
    fn without_an_estimate_a_leg_stays_on_the_top_layer_whatever_the_bitrates() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(Duration::from_secs(1));
        let t = TrackId(1);
        let l = leg(2, "0");
        f.subscribe(t, 0, l, vec![(Pt::from(96), Pt::from(96))], None, 1, 0);
        let mut out = Vec::new();
        // h sends more than f half of the time (as Chromium's encoder does).
        let mut p = Publisher {
            seqs: [100, 10_000, 20_000],
            h_packets: 5,
            f_packets: 4,
        };
        let mut switches = 0;
        let mut ms = 0;
        while ms < 12_000 {
            p.h_packets = if (ms / 1000) % 2 == 0 { 5 } else { 3 };
            let o = p.send(
                &mut f,
                t,
                t0 + Duration::from_millis(ms),
                ms,
                |_| false,
                &mut out,
            );
            if ms > 2000 {
                switches += o.switched_up + o.switched_down;
            }
            if ms % 250 < 33 {
                f.select_layers(t0 + Duration::from_millis(ms), None);
            }
            ms += 33;
        }
        assert_eq!(f.leg_layer(l), Some(Rid::from("f")));
        assert_eq!(switches, 0, "no flapping between h and f");
    }

    #[test]
    fn a_layer_that_stops_is_left_in_bounded_time_and_taken_again() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(Duration::from_secs(1));
        let t = TrackId(1);
        let l = leg(2, "0");
        f.subscribe(t, 0, l, vec![(Pt::from(96), Pt::from(96))], None, 1, 0);
        let mut out = Vec::new();
        let mut p = Publisher {
            seqs: [100, 10_000, 20_000],
            h_packets: 3,
            f_packets: 9,
        };
        let mut ms = 0;
        let mut run = |f: &mut Forwarder,
                       ms: &mut u64,
                       until: u64,
                       stopped: &dyn Fn(&str) -> bool,
                       out: &mut Vec<LegWrite>| {
            while *ms < until {
                let at = t0 + Duration::from_millis(*ms);
                p.send(f, t, at, *ms, stopped, out);
                if *ms % 250 < 33 {
                    f.select_layers(at, None);
                }
                *ms += 33;
            }
        };
        run(&mut f, &mut ms, 3000, &|_| false, &mut out);
        assert_eq!(f.leg_layer(l), Some(Rid::from("f")));
        // f stops at 3 s: the leg targets h once f is stale, and switches on h's next keyframe
        // (at 3.96 s here; a real leg asks for one at once).
        let stopped_at = ms;
        let mut left_at = None;
        while ms < 8000 {
            let until = ms + 33;
            run(&mut f, &mut ms, until, &|r| r == "f", &mut out);
            if left_at.is_none() && f.leg_layer(l) == Some(Rid::from("h")) {
                left_at = Some(ms);
            }
        }
        let waited = Duration::from_millis(left_at.expect("left f") - stopped_at);
        assert!(
            waited <= LAYER_STALE + Duration::from_millis(250 + 1000),
            "{waited:?}"
        );
        // f is back: taken again on its next keyframe.
        run(&mut f, &mut ms, 10_500, &|_| false, &mut out);
        assert_eq!(f.leg_layer(l), Some(Rid::from("f")));
        let seqs: Vec<u64> = out.iter().map(|w| w.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "gap in {seqs:?}");
    }

    #[test]
    fn removing_a_session_removes_its_publications_and_legs() {
        let now = Instant::now();
        let mut f = Forwarder::new(Duration::from_secs(1));
        f.publish(TrackId(1), sid(1), Mid::from("0"), MediaKind::Video, now);
        f.add_subscriber_shard(TrackId(1), 0);
        f.subscribe(TrackId(5), 4, leg(1, "3"), vec![], None, 1, 0);
        f.subscribe(TrackId(5), 4, leg(2, "3"), vec![], None, 1, 0);
        let removed = f.remove_session(sid(1));
        assert_eq!(removed.publications, vec![(TrackId(1), vec![0])]);
        assert_eq!(removed.legs, vec![(leg(1, "3"), TrackId(5), 4)]);
        assert_eq!(f.leg_count(), 1);
        assert_eq!(f.end_track(TrackId(5)), vec![leg(2, "3")]);
        assert_eq!(f.leg_count(), 0);
    }

    // ---- keyframe replay ----------------------------------------------------------------------

    /// Packet `seq` of a single-layer VP8 track (PictureID `seq`, TL0PICIDX `seq`), `ms` after
    /// `t0`, as the home shard shares it.
    fn single(seq: u64, key: bool, t0: Instant, ms: u64) -> Arc<MediaPacket> {
        let mut p = vp8_packet(
            "x",
            seq,
            seq as u16,
            seq as u8,
            key,
            t0 + Duration::from_millis(ms),
        );
        p.rid = None;
        Arc::new(p)
    }

    #[test]
    fn a_new_leg_gets_the_cached_keyframe_then_the_live_packets_without_gap_or_duplicate() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(Duration::from_secs(1));
        let t = TrackId(1);
        f.publish(t, sid(1), Mid::from("0"), MediaKind::Video, t0);
        // One delta before the keyframe (not cached), the keyframe at 100, 10 deltas after it.
        let packets: Vec<_> = (99..=110)
            .map(|s| single(s, s == 100, t0, (s - 99) * 33))
            .collect();
        for p in &packets {
            f.cache_packet(t, p);
        }
        let l = leg(2, "0");
        f.subscribe(
            t,
            0,
            l,
            vec![(Pt::from(96), Pt::from(97))],
            None,
            1000,
            5000,
        );
        let now = t0 + Duration::from_millis(400);
        assert!(f.await_replay(l, now + REPLAY_WAIT));
        assert!(f.leg_awaits_replay(l));
        // A live packet fanned out before the home shard answered is held back (it is cached).
        let mut out = Vec::new();
        let p111 = single(111, false, t0, 390);
        f.cache_packet(t, &p111);
        let o = f.forward(t, &p111, &mut out);
        assert_eq!(o.dropped, vec![DropReason::AwaitingReplay]);
        assert!(
            o.wants_keyframe.is_none(),
            "a leg waiting for a replay asks for nothing"
        );
        assert!(out.is_empty());

        let replay = f
            .replay_packets(t, None, now)
            .expect("a keyframe is cached");
        assert_eq!(
            replay.iter().map(|p| p.seq).collect::<Vec<_>>(),
            (100..=111).collect::<Vec<_>>()
        );
        assert!(Arc::ptr_eq(&replay[0], &packets[1]), "shared, not copied");
        assert_eq!(
            f.replay(t, l, &replay, now, &mut out),
            ReplayOutcome::Replayed(12)
        );
        assert!(!f.leg_awaits_replay(l));
        assert!(f.leg_has_keyframe(l));
        // The same answer twice is refused: nothing reaches the leg twice.
        assert_eq!(
            f.replay(t, l, &replay, now, &mut out),
            ReplayOutcome::Refused
        );
        assert_eq!(out.len(), 12);
        for n in 112..=113 {
            let p = single(n, false, t0, 400 + (n - 111) * 33);
            assert_eq!(f.forward(t, &p, &mut out).forwarded, 1);
        }
        // Numbered from the leg's start on, continuous into the live packets.
        let seqs: Vec<u64> = out.iter().map(|w| w.seq).collect();
        assert_eq!(seqs, (1000..=1013).collect::<Vec<_>>());
        assert!(out.iter().all(|w| w.pt == Pt::from(97)));
        // Payloads are the publisher's, the keyframe first; a fresh leg's VP8 numbers pass
        // through unchanged.
        assert!(Arc::ptr_eq(&out[0].payload, &packets[1].payload));
        assert!(out.iter().all(|w| w.vp8_patch.is_none()));
        // Timestamps: the replay compressed towards the last cached packet (mapped to the leg's
        // start, at `now`), then the live packets at their real spacing.
        let ts: Vec<u32> = out.iter().map(|w| w.timestamp).collect();
        assert_eq!(ts[11], 5000);
        assert_eq!(ts[0], 5000 - 11 * 3000 / REPLAY_TS_COMPRESSION as u32);
        assert!(ts[..12].windows(2).all(|w| w[1] > w[0]), "{ts:?}");
        assert_eq!(&ts[12..], &[8000, 11_000]);
        assert!(out[..12].iter().all(|w| w.wallclock == now));
    }

    #[test]
    fn a_leg_without_a_preference_replays_the_best_cached_layer_and_stays_on_it() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(Duration::from_secs(1));
        let t = TrackId(1);
        f.publish(t, sid(1), Mid::from("0"), MediaKind::Video, t0);
        let q = |s: u64, key| Arc::new(vp8_packet("q", s, s as u16, 0, key, t0));
        let h = |s: u64, key| Arc::new(vp8_packet("h", s, s as u16, 0, key, t0));
        for p in [
            q(10, true),
            h(50, false),
            q(11, false),
            h(51, true),
            h(52, false),
        ] {
            f.note_media(t, p.rid, t0);
            f.cache_packet(t, &p);
        }
        let l = leg(2, "0");
        f.subscribe(t, 0, l, vec![(Pt::from(96), Pt::from(96))], None, 1, 0);
        f.await_replay(l, t0 + REPLAY_WAIT);
        let replay = f.replay_packets(t, None, t0).unwrap();
        assert_eq!(replay.iter().map(|p| p.seq).collect::<Vec<_>>(), [51, 52]);
        // Asked for q (flowing, cached): q.
        let q_replay = f.replay_packets(t, Some(Rid::from("q")), t0).unwrap();
        assert_eq!(q_replay.iter().map(|p| p.seq).collect::<Vec<_>>(), [10, 11]);
        let mut out = Vec::new();
        assert_eq!(
            f.replay(t, l, &replay, t0, &mut out),
            ReplayOutcome::Replayed(2)
        );
        assert_eq!(f.leg_layer(l), Some(Rid::from("h")));
        assert_eq!(f.forward(t, &q(12, false), &mut out).forwarded, 0);
        assert_eq!(f.forward(t, &h(53, false), &mut out).forwarded, 1);
        assert_eq!(out.iter().map(|w| w.seq).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn a_leg_whose_replay_is_empty_or_late_takes_live_packets_as_before() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(Duration::from_secs(1));
        let t = TrackId(1);
        let (a, b) = (leg(2, "0"), leg(3, "0"));
        let mut out = Vec::new();
        for l in [a, b] {
            f.subscribe(t, 0, l, vec![(Pt::from(96), Pt::from(96))], None, 1, 0);
            f.await_replay(l, t0 + REPLAY_WAIT);
        }
        // Nothing cached: `a` stops waiting and takes the next live packet.
        assert_eq!(f.replay(t, a, &[], t0, &mut out), ReplayOutcome::Empty);
        assert!(!f.leg_has_keyframe(a));
        let o = f.forward(t, &single(5, false, t0, 100), &mut out);
        assert_eq!(
            (o.forwarded, o.dropped.clone()),
            (1, vec![DropReason::AwaitingReplay])
        );
        // No answer within REPLAY_WAIT: `b` takes live packets; a replay after that is refused.
        let late = single(6, false, t0, 600);
        assert_eq!(f.forward(t, &late, &mut out).forwarded, 2);
        let cached = [single(4, true, t0, 0)];
        assert_eq!(
            f.replay(t, b, &cached, t0, &mut out),
            ReplayOutcome::Refused
        );
        // And an answer for another track than the leg's is refused.
        assert_eq!(
            f.replay(TrackId(9), a, &cached, t0, &mut out),
            ReplayOutcome::Refused
        );
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn the_cache_goes_with_its_publication_and_only_video_is_cached() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(Duration::from_secs(1));
        let (video, audio) = (TrackId(1), TrackId(2));
        f.publish(video, sid(1), Mid::from("0"), MediaKind::Video, t0);
        f.publish(audio, sid(1), Mid::from("1"), MediaKind::Audio, t0);
        for s in 1..=3 {
            f.cache_packet(video, &single(s, s == 1, t0, 0));
            f.cache_packet(audio, &single(s, s == 1, t0, 0));
        }
        let (bytes, packets) = f.expire_caches(t0);
        assert_eq!(packets, 3, "video only");
        assert_eq!(bytes, 3 * single(1, true, t0, 0).payload.len());
        assert!(f.replay_packets(audio, None, t0).is_none());
        assert!(f.replay_packets(video, None, t0).is_some());
        // The publisher's track goes away: so does its cache.
        f.unpublish(video);
        assert_eq!(f.expire_caches(t0), (0, 0));
        assert!(f.replay_packets(video, None, t0).is_none());
        // And with the publisher's session.
        f.publish(video, sid(1), Mid::from("0"), MediaKind::Video, t0);
        f.cache_packet(video, &single(7, true, t0, 0));
        assert_eq!(f.expire_caches(t0).1, 1);
        f.remove_session(sid(1));
        assert_eq!(f.expire_caches(t0), (0, 0));
    }

    #[test]
    fn a_leg_remembers_whether_its_replay_was_asked_for() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(Duration::from_secs(1));
        let t = TrackId(1);
        let l = leg(2, "0");
        f.subscribe(t, 0, l, vec![(Pt::from(96), Pt::from(96))], None, 1, 0);
        assert!(f.legs_awaiting_replay_request().is_empty());
        // Transport not up: waits, unasked.
        f.await_replay(l, t0 + Duration::from_secs(30));
        assert_eq!(f.legs_awaiting_replay_request(), vec![l]);
        assert!(f.leg_awaits_replay(l) && !f.leg_replay_requested(l));
        // Asked: waits REPLAY_WAIT from now at most.
        f.replay_requested(l, t0 + REPLAY_WAIT);
        assert!(f.legs_awaiting_replay_request().is_empty());
        assert!(f.leg_replay_requested(l));
        let mut out = Vec::new();
        let late = single(3, false, t0, REPLAY_WAIT.as_millis() as u64 + 1);
        assert_eq!(f.forward(t, &late, &mut out).forwarded, 1);
        assert!(!f.leg_awaits_replay(l) && !f.leg_replay_requested(l));
    }
}
