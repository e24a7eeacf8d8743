//! What arrived on one pulled track: verification, loss, duplicates, latency, keyframes.
//!
//! A [`Reception`] is fed every RTP payload of one pulled track together with the arrival time and
//! produces [`ReceptionStats`]. Payloads are checked byte for byte ([`crate::payload::verify`]); the
//! bot sequence number inside each payload gives loss and duplicates independently of whatever RTP
//! sequence numbers the SFU rewrote; the send time inside gives one-way latency (sender and receiver
//! share the host clock).
//!
//! Simulcast: each payload says which layer it belongs to, and sequence and frame numbers count per
//! layer. Loss is counted per layer and per *run*: a stretch of one layer the SFU forwarded with one
//! RTP-to-bot sequence offset (an SFU keeps its outgoing numbers continuous across a layer switch,
//! so each switch starts a new run). The packets a layer sent while the receiver was on another
//! layer are therefore not loss.
//!
//! Video also goes through a small decoder model: a frame is *decodable* once all its packets are
//! in and it is a keyframe, or it directly follows the last decoded frame of the same layer. After a
//! layer switch only a keyframe of the new layer is decodable. The longest time between two decoded
//! frames is the *freeze*; a change of the decoded layer is a *layer switch*.
//!
//! VP8 numbering: a decoder orders and ages pictures by PictureID and tracks temporal-layer
//! dependencies by TL0PICIDX, so both must run on without a jump in the stream it is given, also
//! across layer switches (each layer numbers its pictures on its own: an SFU has to rewrite
//! them). In RTP sequence order, between two received packets `k` sequence numbers apart, the
//! PictureID may move forward by at most `k` (each packet in between could start a picture) and
//! the TL0PICIDX by at most as much as the PictureID; anything else is a *numbering jump*.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::payload::{self, MediaKind};

/// Sequence numbers this far below the first one seen are counted as `too_old` instead of tracked.
const SEQ_WINDOW_BEFORE_FIRST: u64 = 4096;
/// At most this many latency samples are kept (enough for minutes of a track).
const MAX_LATENCY_SAMPLES: usize = 1 << 20;
/// Layers tracked per pulled track; payloads claiming a higher layer index count as `foreign`.
pub const MAX_LAYERS: usize = 8;
/// Incomplete or undecodable frames kept per layer.
const MAX_PENDING_FRAMES: usize = 128;
/// Runs (see the module docs) kept per layer.
const MAX_RUNS: usize = 4096;
/// Without a decoded frame for this long while packets arrive, ask for a keyframe.
const STUCK_AFTER: Duration = Duration::from_millis(500);
/// Video packets whose VP8 numbering is kept for the continuity check (by RTP sequence number).
const MAX_NUMBERED_PACKETS: usize = 4096;

/// Latency summary in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub samples: u64,
    /// Smallest one-way latency seen.
    pub min_us: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest.
    pub max_us: u64,
    /// Mean.
    pub mean_us: u64,
}

/// Statistics of one pulled track.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ReceptionStats {
    /// Media kind seen in the payloads (None before the first valid payload).
    pub kind: Option<MediaKind>,
    /// Bot track id carried in the payloads.
    pub track_id: Option<u64>,
    /// RTP packets received (valid or not).
    pub packets: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Distinct valid bot sequence numbers received.
    pub unique: u64,
    /// Valid payloads whose sequence number was already received.
    pub duplicates: u64,
    /// Sequence numbers missing between the lowest and highest received.
    pub lost: u64,
    /// Payloads that failed byte-for-byte verification.
    pub corrupt: u64,
    /// Valid payloads whose track id differs from the first one seen (wrong routing).
    pub foreign: u64,
    /// Valid video payloads whose VP8 PictureID or TL0PICIDX was rewritten (all other bytes
    /// identical).
    pub picture_id_rewritten: u64,
    /// Neighbouring video packets (in RTP sequence order) between which the PictureID jumped
    /// (see the module docs); 0 when a decoder would see continuous numbering.
    pub picture_id_jumps: u64,
    /// Neighbouring video packets between which the TL0PICIDX jumped.
    pub tl0_pic_idx_jumps: u64,
    /// Valid payloads with a sequence number far below the first one seen (not tracked).
    pub too_old: u64,
    /// Lowest valid sequence number received.
    pub first_seq: Option<u64>,
    /// Highest valid sequence number received.
    pub last_seq: Option<u64>,
    /// Keyframes received (first packet of a keyframe).
    pub keyframes: u64,
    /// Time from the start of the subscription to the first packet, in ms.
    pub first_packet_ms: Option<f64>,
    /// Time from the start of the subscription to the first keyframe packet, in ms.
    pub first_keyframe_ms: Option<f64>,
    /// Times the difference between RTP sequence number and bot sequence number changed (an SFU that
    /// forwards every packet of a stream must keep it constant).
    pub rtp_seq_offset_changes: u64,
    /// Keyframe requests this receiver sent.
    pub keyframe_requests_sent: u64,
    /// One-way latency from the sender's clock to arrival.
    pub latency: LatencySummary,
    /// Description of the last verification failure.
    pub last_error: Option<String>,
    /// Layer of the last decoded video frame (0 is the lowest; 0 without simulcast).
    pub layer: Option<u8>,
    /// Times the decoded layer changed.
    pub layer_switches: u64,
    /// Video frames decoded (see the module docs).
    pub frames_decoded: u64,
    /// Longest time between two decoded video frames, in ms.
    pub longest_freeze_ms: Option<f64>,
    /// When the longest freeze ended, in ms since the start of the subscription.
    pub longest_freeze_end_ms: Option<f64>,
    /// Per layer that sent anything (simulcast), lowest first.
    pub layers: Vec<LayerReceptionStats>,
}

/// What arrived on one simulcast layer of a pulled track.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LayerReceptionStats {
    /// Layer index.
    pub layer: u8,
    /// Distinct valid sequence numbers received.
    pub unique: u64,
    /// Duplicates.
    pub duplicates: u64,
    /// Sequence numbers missing inside the runs this layer was forwarded in.
    pub lost: u64,
    /// Runs (stretches between layer switches) this layer was forwarded in.
    pub runs: u64,
    /// Keyframes received.
    pub keyframes: u64,
    /// Frames decoded.
    pub frames_decoded: u64,
}

/// Reception state of one simulcast layer.
#[derive(Debug, Default)]
struct LayerState {
    seq_base: Option<u64>,
    seen: Vec<u64>,
    /// (rtp offset, first seq, last seq).
    runs: Vec<(i128, u64, u64)>,
    stats: LayerReceptionStats,
    frames: BTreeMap<u32, FrameAssembly>,
}

#[derive(Debug, Default, Clone, Copy)]
struct FrameAssembly {
    start_seq: Option<u64>,
    end_seq: Option<u64>,
    packets: u64,
    keyframe: bool,
    /// RTP sequence number of the first packet as received (the stream order a decoder sees).
    rtp_start: Option<u64>,
}

impl FrameAssembly {
    fn complete(&self) -> bool {
        match (self.start_seq, self.end_seq) {
            (Some(a), Some(b)) => b >= a && self.packets == b - a + 1,
            _ => false,
        }
    }
}

/// Reception state of one pulled track.
#[derive(Debug)]
pub struct Reception {
    started: Instant,
    stats: ReceptionStats,
    latencies: Vec<u32>,
    latency_sum: u128,
    latency_min: u64,
    latency_max: u64,
    latency_count: u64,
    last_keyframe_request: Option<Instant>,
    keyframe_seen: bool,
    first_keyframe_at: Option<Instant>,
    rtp_offset: Option<i128>,
    layers: Vec<LayerState>,
    /// (layer, frame) last decoded, and when.
    decoded: Option<(u8, u32, Instant)>,
    /// RTP sequence number of the last decoded frame's first packet: a decoder never goes back.
    decoded_rtp: Option<u64>,
    /// Layer of the previous valid payload.
    last_layer: Option<u8>,
    /// VP8 (PictureID, TL0PICIDX) of recent video packets by extended RTP sequence number.
    numbering: BTreeMap<u64, (u16, u8)>,
}

/// What the caller should do after a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceptionAction {
    /// Nothing.
    None,
    /// Video without a keyframe yet: ask the sender for one (throttled to one per second).
    RequestKeyframe,
}

impl Reception {
    /// A new reception; `started` is when the subscription began (for time-to-first-keyframe).
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            stats: ReceptionStats::default(),
            latencies: Vec::new(),
            latency_sum: 0,
            latency_min: u64::MAX,
            latency_max: 0,
            latency_count: 0,
            last_keyframe_request: None,
            keyframe_seen: false,
            first_keyframe_at: None,
            rtp_offset: None,
            layers: Vec::new(),
            decoded: None,
            decoded_rtp: None,
            last_layer: None,
            numbering: BTreeMap::new(),
        }
    }

    /// Handle one payload that arrived at `now` (`now_us`: the same instant in Unix microseconds).
    pub fn on_payload(&mut self, payload: &[u8], now: Instant, now_us: u64) -> ReceptionAction {
        self.on_packet(payload, None, now, now_us)
    }

    /// Like [`Reception::on_payload`], with the packet's extended RTP sequence number as received, to
    /// check that the sender's (or SFU's) RTP numbering moves in step with the bot sequence numbers.
    pub fn on_packet(
        &mut self,
        payload: &[u8],
        rtp_seq: Option<u64>,
        now: Instant,
        now_us: u64,
    ) -> ReceptionAction {
        let s = &mut self.stats;
        s.packets += 1;
        s.bytes += payload.len() as u64;
        if s.first_packet_ms.is_none() {
            s.first_packet_ms = Some(ms(now.saturating_duration_since(self.started)));
        }
        let v = match payload::verify(payload) {
            Ok(v) => v,
            Err(e) => {
                s.corrupt += 1;
                s.last_error = Some(e.to_string());
                return ReceptionAction::None;
            }
        };
        let f = v.fields;
        if *s.track_id.get_or_insert(f.track_id) != f.track_id || usize::from(f.layer) >= MAX_LAYERS
        {
            s.foreign += 1;
            return ReceptionAction::None;
        }
        s.kind.get_or_insert(f.kind);
        if v.picture_id_rewritten {
            s.picture_id_rewritten += 1;
        }
        if f.keyframe && f.frame_start {
            s.keyframes += 1;
            self.keyframe_seen = true;
            self.first_keyframe_at.get_or_insert(now);
            if s.first_keyframe_ms.is_none() {
                s.first_keyframe_ms = Some(ms(now.saturating_duration_since(self.started)));
            }
        }
        let offset = rtp_seq.map_or(0, |rtp| i128::from(rtp) - i128::from(f.seq));
        if rtp_seq.is_some() {
            match self.rtp_offset {
                Some(o) if o != offset => {
                    self.stats.rtp_seq_offset_changes += 1;
                    self.rtp_offset = Some(offset);
                }
                Some(_) => {}
                None => self.rtp_offset = Some(offset),
            }
        }
        if let (Some(rtp), Some(pid), Some(tl0)) = (rtp_seq, v.picture_id, v.tl0_pic_idx) {
            self.check_numbering(rtp, pid, tl0);
        }
        let li = usize::from(f.layer);
        if self.layers.len() <= li {
            self.layers.resize_with(li + 1, LayerState::default);
        }
        let switched_in = self.last_layer.is_some_and(|l| l != f.layer);
        self.last_layer = Some(f.layer);
        let layer = &mut self.layers[li];
        layer.stats.layer = f.layer;
        if f.keyframe && f.frame_start {
            layer.stats.keyframes += 1;
        }
        match layer.mark_seen(f.seq) {
            Seen::New => {
                layer.stats.unique += 1;
                layer.note_run(offset, f.seq, switched_in);
                if f.kind == MediaKind::Video {
                    layer.note_frame_packet(&f, rtp_seq);
                }
                let s = &mut self.stats;
                s.unique += 1;
                s.first_seq = Some(s.first_seq.map_or(f.seq, |x| x.min(f.seq)));
                s.last_seq = Some(s.last_seq.map_or(f.seq, |x| x.max(f.seq)));
                self.record_latency(now_us.saturating_sub(f.sent_at_us));
                if f.kind == MediaKind::Video {
                    self.decode(f.layer, f.frame, now);
                }
            }
            Seen::Duplicate => {
                layer.stats.duplicates += 1;
                self.stats.duplicates += 1;
            }
            Seen::TooOld => self.stats.too_old += 1,
        }
        if f.kind == MediaKind::Video {
            // Ask for a keyframe until one arrives, and whenever decoding is stuck.
            let last_progress = self.decoded.map(|(_, _, t)| t).or(self.first_keyframe_at);
            let stuck =
                last_progress.is_some_and(|t| now.saturating_duration_since(t) >= STUCK_AFTER);
            let due = self
                .last_keyframe_request
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
            if (!self.keyframe_seen || stuck) && due {
                self.last_keyframe_request = Some(now);
                self.stats.keyframe_requests_sent += 1;
                return ReceptionAction::RequestKeyframe;
            }
        }
        ReceptionAction::None
    }

    /// Decodes whatever became decodable after a packet of `frame` on `layer` arrived.
    fn decode(&mut self, layer: u8, frame: u32, now: Instant) {
        let li = usize::from(layer);
        let Some(state) = self.layers.get_mut(li) else {
            return;
        };
        let Some(asm) = state.frames.get(&frame).copied() else {
            return;
        };
        if !asm.complete() {
            return;
        }
        let follows = |d: Option<(u8, u32, Instant)>, f: u32| {
            d.is_some_and(|(l, last, _)| l == layer && last.wrapping_add(1) == f)
        };
        if !(asm.keyframe || follows(self.decoded, frame)) {
            return;
        }
        // A frame from before the last decoded one in stream order (a late retransmission of a
        // layer the SFU has left) is too late for a decoder.
        if let (Some(last), Some(rtp)) = (self.decoded_rtp, asm.rtp_start)
            && rtp < last
        {
            return;
        }
        // Decode `frame`, then every complete frame that directly follows it.
        let mut next = frame;
        loop {
            let Some(state) = self.layers.get_mut(li) else {
                return;
            };
            let rtp_start = match state.frames.get(&next) {
                Some(a) if a.complete() => a.rtp_start,
                _ => break,
            };
            state.frames.remove(&next);
            state.stats.frames_decoded += 1;
            // Older frames of this layer can never be decoded now.
            state
                .frames
                .retain(|f, _| f.wrapping_sub(next) < u32::MAX / 2);
            let s = &mut self.stats;
            s.frames_decoded += 1;
            if let Some((prev_layer, _, at)) = self.decoded {
                if prev_layer != layer {
                    s.layer_switches += 1;
                }
                let gap = ms(now.saturating_duration_since(at));
                if s.longest_freeze_ms.is_none_or(|g| gap > g) {
                    s.longest_freeze_ms = Some(gap);
                    s.longest_freeze_end_ms = Some(ms(now.saturating_duration_since(self.started)));
                }
            }
            s.layer = Some(layer);
            if rtp_start.is_some() {
                self.decoded_rtp = rtp_start;
            }
            self.decoded = Some((layer, next, now));
            next = next.wrapping_add(1);
        }
    }
}

impl LayerState {
    /// A run continues while the offset stays and no other layer came in between (a late packet
    /// of the run, below its end, still belongs to it); anything else starts a new run.
    fn note_run(&mut self, offset: i128, seq: u64, switched_in: bool) {
        let full = self.runs.len() >= MAX_RUNS;
        match self.runs.iter_mut().rev().find(|(o, _, _)| *o == offset) {
            Some((_, first, last)) if !switched_in || seq <= *last => {
                *first = (*first).min(seq);
                *last = (*last).max(seq);
            }
            _ if !full => self.runs.push((offset, seq, seq)),
            _ => {}
        }
    }

    fn note_frame_packet(&mut self, f: &payload::PayloadFields, rtp_seq: Option<u64>) {
        if !self.frames.contains_key(&f.frame) && self.frames.len() >= MAX_PENDING_FRAMES {
            self.frames.pop_first();
        }
        let a = self.frames.entry(f.frame).or_default();
        a.packets += 1;
        if f.frame_start {
            a.start_seq = Some(f.seq);
            a.keyframe = f.keyframe;
            a.rtp_start = rtp_seq;
        }
        if f.frame_end {
            a.end_seq = Some(f.seq);
        }
    }

    fn lost(&self) -> u64 {
        self.runs
            .iter()
            .map(|(_, a, b)| (b - a + 1).saturating_sub(self.count_seen(*a, *b)))
            .sum()
    }

    fn count_seen(&self, a: u64, b: u64) -> u64 {
        (a..=b).filter(|s| self.has_seq(*s)).count() as u64
    }

    fn has_seq(&self, seq: u64) -> bool {
        let Some(base) = self.seq_base else {
            return false;
        };
        let Some(idx) = seq.checked_sub(base) else {
            return false;
        };
        self.seen
            .get((idx / 64) as usize)
            .is_some_and(|w| w & (1 << (idx % 64)) != 0)
    }

    fn mark_seen(&mut self, seq: u64) -> Seen {
        let base = *self
            .seq_base
            .get_or_insert(seq.saturating_sub(SEQ_WINDOW_BEFORE_FIRST));
        let Some(idx) = seq.checked_sub(base) else {
            return Seen::TooOld;
        };
        let word = (idx / 64) as usize;
        let bit = 1u64 << (idx % 64);
        // Bound memory: a hostile or broken sender could jump far ahead.
        if word > (1 << 20) {
            return Seen::TooOld;
        }
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            Seen::Duplicate
        } else {
            self.seen[word] |= bit;
            Seen::New
        }
    }
}

impl Reception {
    /// Checks a video packet's VP8 numbering against its neighbours in RTP sequence order.
    fn check_numbering(&mut self, rtp: u64, pid: u16, tl0: u8) {
        if self.numbering.contains_key(&rtp) {
            return; // a duplicate
        }
        let before = self
            .numbering
            .range(..rtp)
            .next_back()
            .map(|(s, n)| (*s, *n));
        let after = self
            .numbering
            .range(rtp + 1..)
            .next()
            .map(|(s, n)| (*s, *n));
        let pairs = [
            before.map(|(s, n)| (rtp - s, n, (pid, tl0))),
            after.map(|(s, n)| (s - rtp, (pid, tl0), n)),
        ];
        for (gap, (pid_a, tl0_a), (pid_b, tl0_b)) in pairs.into_iter().flatten() {
            let pid_step = u64::from(pid_b.wrapping_sub(pid_a) & 0x7fff);
            let tl0_step = u64::from(tl0_b.wrapping_sub(tl0_a));
            if pid_step > gap {
                self.stats.picture_id_jumps += 1;
            }
            if tl0_step > pid_step.min(gap) {
                self.stats.tl0_pic_idx_jumps += 1;
            }
        }
        if self.numbering.len() >= MAX_NUMBERED_PACKETS {
            self.numbering.pop_first();
        }
        self.numbering.insert(rtp, (pid, tl0));
    }

    fn record_latency(&mut self, us: u64) {
        self.latency_count += 1;
        self.latency_sum += u128::from(us);
        self.latency_min = self.latency_min.min(us);
        self.latency_max = self.latency_max.max(us);
        if self.latencies.len() < MAX_LATENCY_SAMPLES {
            self.latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
        }
    }

    /// Forgets the latency samples so far: the next [`Reception::stats`] summarises only what
    /// arrives from now on (a measurement window), every other counter stays cumulative.
    pub fn restart_latency(&mut self) {
        self.latencies.clear();
        self.latency_sum = 0;
        self.latency_min = u64::MAX;
        self.latency_max = 0;
        self.latency_count = 0;
    }

    /// Statistics so far.
    pub fn stats(&self) -> ReceptionStats {
        let mut s = self.stats.clone();
        s.lost = self.layers.iter().map(LayerState::lost).sum();
        if self.layers.len() > 1 {
            s.layers = self
                .layers
                .iter()
                .map(|l| LayerReceptionStats {
                    lost: l.lost(),
                    runs: l.runs.len() as u64,
                    ..l.stats.clone()
                })
                .collect();
        }
        if self.latency_count > 0 {
            let mut v = self.latencies.clone();
            v.sort_unstable();
            let pct = |p: f64| {
                let i = ((v.len() as f64 - 1.0) * p).round() as usize;
                u64::from(v.get(i).copied().unwrap_or(0))
            };
            s.latency = LatencySummary {
                samples: self.latency_count,
                min_us: self.latency_min,
                p50_us: pct(0.5),
                p99_us: pct(0.99),
                max_us: self.latency_max,
                mean_us: (self.latency_sum / u128::from(self.latency_count)) as u64,
            };
        }
        s
    }

    /// Whether the sequence number `seq` of layer 0 (the only layer without simulcast) has been
    /// received.
    pub fn has_seq(&self, seq: u64) -> bool {
        self.layers.first().is_some_and(|l| l.has_seq(seq))
    }
}

enum Seen {
    New,
    Duplicate,
    TooOld,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::payload::{PayloadFields, build};

    fn pkt(seq: u64, kind: MediaKind, keyframe: bool) -> Vec<u8> {
        build(&PayloadFields {
            kind,
            track_id: 42,
            seq,
            sent_at_us: 1_000u64.wrapping_add(seq.wrapping_mul(10)),
            frame: seq as u32,
            keyframe,
            frame_start: true,
            frame_end: true,
            len: 200,
            layer: 0,
        })
    }

    #[test]
    fn counts_loss_duplicates_corruption_and_latency() {
        let t0 = Instant::now();
        let mut r = Reception::new(t0);
        for seq in [10, 11, 13, 13, 14, 12, 17] {
            r.on_payload(&pkt(seq, MediaKind::Audio, false), t0, 5_000);
        }
        let mut bad = pkt(18, MediaKind::Audio, false);
        bad[100] ^= 1;
        r.on_payload(&bad, t0, 5_000);
        let s = r.stats();
        assert_eq!(s.packets, 8);
        assert_eq!(s.unique, 6);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.lost, 2); // 15, 16
        assert_eq!(s.corrupt, 1);
        assert_eq!(s.first_seq, Some(10));
        assert_eq!(s.last_seq, Some(17));
        assert_eq!(s.latency.samples, 6);
        assert_eq!(s.latency.max_us, 5_000 - 1_100);
        assert_eq!(s.latency.min_us, 5_000 - 1_170);
        assert!(r.has_seq(12) && !r.has_seq(15));
    }

    #[test]
    fn restarted_latency_covers_only_what_came_after() {
        let t0 = Instant::now();
        let mut r = Reception::new(t0);
        // Sent at 1,000 + 10 × seq µs: seq 0..5 arrive 9,000 µs late, 5..10 only 100 µs.
        for seq in 0..5 {
            r.on_payload(&pkt(seq, MediaKind::Audio, false), t0, 10_000 + seq * 10);
        }
        assert_eq!(r.stats().latency.p50_us, 9_000);
        r.restart_latency();
        assert_eq!(r.stats().latency.samples, 0, "nothing since the restart");
        for seq in 5..10 {
            r.on_payload(&pkt(seq, MediaKind::Audio, false), t0, 1_100 + seq * 10);
        }
        let s = r.stats();
        assert_eq!(s.latency.samples, 5);
        assert_eq!(
            (s.latency.min_us, s.latency.p99_us, s.latency.max_us),
            (100, 100, 100)
        );
        assert_eq!(s.unique, 10, "the other counters stay cumulative");
    }

    #[test]
    fn notices_rtp_renumbering_that_does_not_follow_the_payloads() {
        let t0 = Instant::now();
        let mut r = Reception::new(t0);
        for seq in 0..5u64 {
            r.on_packet(
                &pkt(seq, MediaKind::Audio, false),
                Some(70_000 + seq),
                t0,
                0,
            );
        }
        // Loss of bot seq 5 with a matching RTP gap keeps the offset.
        r.on_packet(&pkt(6, MediaKind::Audio, false), Some(70_006), t0, 0);
        assert_eq!(r.stats().rtp_seq_offset_changes, 0);
        // An RTP jump without a payload gap is a renumbering error.
        r.on_packet(&pkt(7, MediaKind::Audio, false), Some(70_100), t0, 0);
        assert_eq!(r.stats().rtp_seq_offset_changes, 1);
        assert_eq!(r.stats().lost, 1);
    }

    #[test]
    fn asks_for_a_keyframe_until_one_arrives_throttled() {
        let t0 = Instant::now();
        let mut r = Reception::new(t0);
        let a = r.on_payload(&pkt(1, MediaKind::Video, false), t0, 0);
        assert_eq!(a, ReceptionAction::RequestKeyframe);
        let a = r.on_payload(
            &pkt(2, MediaKind::Video, false),
            t0 + Duration::from_millis(500),
            0,
        );
        assert_eq!(a, ReceptionAction::None);
        let a = r.on_payload(
            &pkt(3, MediaKind::Video, false),
            t0 + Duration::from_millis(1001),
            0,
        );
        assert_eq!(a, ReceptionAction::RequestKeyframe);
        let a = r.on_payload(
            &pkt(4, MediaKind::Video, true),
            t0 + Duration::from_millis(1200),
            0,
        );
        assert_eq!(a, ReceptionAction::None);
        let a = r.on_payload(
            &pkt(5, MediaKind::Video, false),
            t0 + Duration::from_millis(3000),
            0,
        );
        assert_eq!(a, ReceptionAction::None);
        let s = r.stats();
        assert_eq!(s.keyframes, 1);
        assert_eq!(s.keyframe_requests_sent, 2);
        assert!((s.first_keyframe_ms.unwrap() - 1200.0).abs() < 0.01);
    }

    /// One video frame of `n` packets on `layer` with bot numbers from `seq`:
    /// `(payload, index in the frame)`.
    fn frame(layer: u8, seq: u64, frame: u32, n: u64, key: bool) -> Vec<(Vec<u8>, u64)> {
        (0..n)
            .map(|i| {
                let f = PayloadFields {
                    kind: MediaKind::Video,
                    track_id: 42,
                    seq: seq + i,
                    sent_at_us: 0,
                    frame,
                    keyframe: key,
                    frame_start: i == 0,
                    frame_end: i + 1 == n,
                    len: 200,
                    layer,
                };
                (build(&f), i)
            })
            .collect()
    }

    #[test]
    fn simulcast_switches_count_freezes_and_no_loss() {
        let t0 = Instant::now();
        let mut r = Reception::new(t0);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // The SFU's outgoing RTP numbers run on across layers; each layer has its own bot numbers.
        let rtp = std::cell::Cell::new(1000u64);
        let feed = |r: &mut Reception, layer: u8, seq: &mut u64, fr: u32, key: bool, ms: u64| {
            let n = if layer == 0 { 1 } else { 3 };
            for (p, _) in frame(layer, *seq, fr, n, key) {
                r.on_packet(&p, Some(rtp.get()), at(ms), 0);
                rtp.set(rtp.get() + 1);
            }
            *seq += n;
        };
        let (mut q, mut h) = (500u64, 9000u64);
        // h: a keyframe and 10 frames, 33 ms apart.
        for i in 0..11u32 {
            feed(&mut r, 1, &mut h, 100 + i, i == 0, u64::from(i) * 33);
        }
        // Switch to q on a keyframe; q's earlier packets were never forwarded (not loss).
        for i in 0..10u32 {
            feed(&mut r, 0, &mut q, 7 + i, i == 0, 363 + u64::from(i) * 33);
        }
        // A q delta frame is lost (a real loss), and h comes back only with a delta frame at first
        // (not decodable: frozen), then its keyframe 1.5 s later.
        q += 1;
        rtp.set(rtp.get() + 1);
        feed(&mut r, 0, &mut q, 18, false, 730);
        h += 300;
        feed(&mut r, 1, &mut h, 200, false, 760);
        feed(&mut r, 1, &mut h, 201, true, 2200);
        feed(&mut r, 1, &mut h, 202, false, 2233);
        let s = r.stats();
        assert_eq!(s.corrupt, 0);
        assert_eq!(s.layer, Some(1));
        assert_eq!(s.layer_switches, 2);
        assert_eq!(s.lost, 1, "only the lost q packet: {s:#?}");
        assert_eq!(s.layers.len(), 2);
        assert_eq!(s.layers[0].lost, 1);
        assert_eq!(s.layers[1].lost, 0);
        assert_eq!(s.layers[1].runs, 2);
        // Decoded: 11 h + 10 q + 2 h; the q frame after the loss and the first h frame are not.
        assert_eq!(s.frames_decoded, 23, "{s:#?}");
        let freeze = s.longest_freeze_ms.unwrap();
        // From the last q frame before the loss (660 ms) to the h keyframe.
        assert!((1530.0..1550.0).contains(&freeze), "{freeze}");
        assert_eq!(s.longest_freeze_end_ms, Some(2200.0));
    }

    /// Writes VP8 numbering into a bot video payload as an SFU would (descriptor bytes 2..=4).
    fn renumber(p: &mut [u8], pid: u16, tl0: u8) {
        p[2] = 0x80 | (pid >> 8) as u8;
        p[3] = pid as u8;
        p[4] = tl0;
    }

    /// h for 10 frames, then f from a keyframe, 3 packets a frame, RTP numbers running on; with
    /// `rewrite`, f's numbering continues h's as an SFU should make it. Some packets are lost
    /// and some arrive out of order.
    fn switch_stream(rewrite: bool) -> ReceptionStats {
        let t0 = Instant::now();
        let mut r = Reception::new(t0);
        let mut packets = Vec::new();
        let mut rtp = 5000u64;
        let mut last = (0u16, 0u8);
        for i in 0..10u32 {
            for (p, _) in frame(1, u64::from(i) * 3, 40_000 + i, 3, i == 0) {
                let v = payload::verify(&p).unwrap();
                last = (v.picture_id.unwrap(), v.tl0_pic_idx.unwrap());
                packets.push((p, rtp));
                rtp += 1;
            }
        }
        for i in 0..10u32 {
            for (mut p, _) in frame(2, 900 + u64::from(i) * 3, 41_000 + i, 3, i == 0) {
                if rewrite {
                    let n = i as u16 + 1;
                    renumber(&mut p, (last.0 + n) & 0x7fff, last.1.wrapping_add(n as u8));
                }
                packets.push((p, rtp));
                rtp += 1;
            }
        }
        // Loss: the last packet before the switch, three packets (parts of two frames) of h,
        // one packet of f.
        for lost in [29, 15, 14, 13, 45] {
            packets.remove(lost);
        }
        // Reordering: swap neighbours around the switch and later.
        packets.swap(24, 25);
        packets.swap(30, 33);
        for (p, seq) in &packets {
            r.on_packet(p, Some(*seq), t0, 0);
        }
        // A retransmission of an early packet.
        r.on_packet(&packets[3].0, Some(packets[3].1), t0, 0);
        r.stats()
    }

    #[test]
    fn vp8_numbering_must_run_on_across_a_switch() {
        let s = switch_stream(true);
        assert_eq!(s.corrupt, 0, "{s:#?}");
        assert_eq!(s.picture_id_rewritten, 29, "the f packets that arrived");
        assert_eq!(s.picture_id_jumps, 0, "{s:#?}");
        assert_eq!(s.tl0_pic_idx_jumps, 0, "{s:#?}");
        // Without the rewrite, the decoder would see the layers' own numbering jump.
        let s = switch_stream(false);
        assert_eq!(s.corrupt, 0, "{s:#?}");
        assert_eq!(s.picture_id_rewritten, 0);
        assert!(s.picture_id_jumps >= 1, "{s:#?}");
        assert!(s.tl0_pic_idx_jumps >= 1, "{s:#?}");
    }

    #[test]
    fn a_rewrite_that_leaves_the_tl0_pic_idx_behind_is_a_jump() {
        let t0 = Instant::now();
        let mut r = Reception::new(t0);
        let mut rtp = 0;
        for (i, layer) in [(0u32, 0u8), (1, 0), (2, 2), (3, 2)] {
            for (mut p, _) in frame(layer, u64::from(i), 100 + i, 1, true) {
                // PictureID continuous, TL0PICIDX as the layer numbers it.
                let tl0 = p[4];
                renumber(&mut p, 7 + i as u16, tl0);
                r.on_packet(&p, Some(rtp), t0, 0);
                rtp += 1;
            }
        }
        let s = r.stats();
        assert_eq!(s.picture_id_jumps, 0, "{s:#?}");
        assert_eq!(s.tl0_pic_idx_jumps, 1, "{s:#?}");
    }

    #[test]
    fn a_late_frame_of_a_left_layer_is_not_decoded() {
        let t0 = Instant::now();
        let mut r = Reception::new(t0);
        let mut packets = frame(1, 0, 1, 3, true);
        // The last packet of h's keyframe is late; meanwhile the SFU switched to q.
        let late = packets.pop().unwrap();
        for (p, s) in packets {
            r.on_packet(&p, Some(s), t0, 0);
        }
        for (p, s) in frame(0, 0, 1, 1, true) {
            r.on_packet(&p, Some(s + 3), t0, 0);
        }
        r.on_packet(&late.0, Some(late.1), t0 + Duration::from_millis(50), 0);
        let s = r.stats();
        assert_eq!(s.layer, Some(0), "{s:#?}");
        assert_eq!(s.frames_decoded, 1);
    }

    #[test]
    fn foreign_track_and_far_jumps_are_contained() {
        let t0 = Instant::now();
        let mut r = Reception::new(t0);
        r.on_payload(&pkt(5_000, MediaKind::Audio, false), t0, 0);
        let other = build(&PayloadFields {
            kind: MediaKind::Audio,
            track_id: 43,
            seq: 5_001,
            sent_at_us: 0,
            frame: 0,
            keyframe: false,
            frame_start: true,
            frame_end: true,
            len: 60,
            layer: 0,
        });
        r.on_payload(&other, t0, 0);
        r.on_payload(&pkt(1, MediaKind::Audio, false), t0, 0);
        r.on_payload(&pkt(u64::MAX - 1, MediaKind::Audio, false), t0, 0);
        let s = r.stats();
        assert_eq!(s.foreign, 1);
        assert_eq!(s.too_old, 2);
        assert_eq!(s.unique, 1);
    }
}
