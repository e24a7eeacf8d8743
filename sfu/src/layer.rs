//! Simulcast layer selection: plain, sans-IO types fed measurements and time, returning
//! decisions.
//!
//! * [`RateMeter`] measures the incoming bitrate of one publisher layer (one per track and rid,
//!   kept by the [`Forwarder`](crate::forward::Forwarder) that forwards the track) and says
//!   whether the layer is flowing.
//! * [`LayerSelector`] decides, for one subscriber session, which layer each of its video legs
//!   should be on.
//!
//! Layers are ranked by their order ([`layer_cmp`]: `q` < `h` < `f`), never by a bitrate sample:
//! an encoder often spends more bits on a middle layer than on the top one for a while, and a
//! ranking by measured bitrate would flip a subscriber between them. A layer is *available* while
//! it is flowing (a packet within [`LAYER_STALE`], and at least one [`METER_WINDOW`] measured). A
//! leg's choices are the available layers up to its cap (`preferredRid`: the highest layer it
//! wants; if no available layer is at or below it, the lowest available one). Without a bandwidth
//! estimate every leg takes the best of its choices. With one (str0m's GCC), the session's
//! estimate is split over its legs: every leg gets at least its lowest choice, then legs are
//! raised one layer at a time, round robin, while the total fits. For that fit a layer costs its
//! measured bitrate, but never less than a lower layer costs, so a higher layer is never taken for
//! being cheaper. A layer that stops flowing is left (for the best available one below it) at the
//! next selection; one that comes back is taken again.
//!
//! Hysteresis: a session whose legs no longer fit in the estimate drops at once (to what fits
//! the full estimate); a leg goes up only after the estimate has left room for the higher layer
//! (with [`UP_HEADROOM`] to spare) for [`UP_HOLD`] without interruption. A falling estimate (below
//! [`FALLING`] of its peak over the last [`PEAK_WINDOW`]: congestion, which GCC follows down in
//! steps over a second or more) is followed with that margin, so a leg leaves a layer the link can
//! no longer carry early instead of one step at a time. The switch itself happens
//! later, on a keyframe of the target layer (see [`crate::forward`]); the selector only sets the
//! target.
//!
//! Loss: str0m's estimator can take seconds to notice a bottleneck whose queue is full (no more
//! delay growth, only loss). The SFU also watches the loss its subscribers report (RTCP receiver
//! reports): when a leg's fraction lost reaches [`HEAVY_LOSS`], the session's legs are fitted into
//! what got through (the current allocation times the share not lost), at once.
//!
//! The selector also says which bitrate the session would like to send ([`SessionPlan::desired_bps`]:
//! every leg's top layer, whatever its preference, with headroom) and what it should keep sending
//! ([`SessionPlan::minimum_bps`]: every leg one layer above its current one, up to its cap), which
//! the shard hands to str0m (`Bwe::set_bitrate(minimum, desired)`). str0m probes towards the
//! desired bitrate and keeps its estimate within a small multiple of it, so the desired bitrate
//! does not follow a lowered preference (the estimate would collapse and take long to recover
//! when the preference is raised again). str0m pads up to the minimum (never beyond its estimate),
//! so a session waiting to go up keeps proving the link instead of letting an application-limited
//! estimate sink to its media rate.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use str0m::media::Rid;

use crate::forward::LegKey;

/// How long the estimate must leave room for a higher layer before a leg goes up.
pub const UP_HOLD: Duration = Duration::from_millis(2500);
/// A leg goes up only if the higher allocation fits in this fraction of the estimate.
pub const UP_HEADROOM: f64 = 0.85;
/// Fraction lost (receiver report) of a leg from which loss caps the allocation.
pub const HEAVY_LOSS: f64 = 0.2;
/// How long a heavy-loss report caps the allocation.
pub const LOSS_MEMORY: Duration = Duration::from_millis(1500);
/// An estimate below this fraction of its recent peak counts as falling.
pub const FALLING: f64 = 0.7;
/// How far back the peak of the estimate is remembered.
pub const PEAK_WINDOW: Duration = Duration::from_secs(2);
/// Length of one measuring window of a [`RateMeter`].
pub const METER_WINDOW: Duration = Duration::from_millis(500);
/// A layer with no packet for this long counts as stopped (not available).
pub const LAYER_STALE: Duration = Duration::from_millis(1500);

/// The order of simulcast layers, lowest first: `q` < `h` < `f` (quarter, half and full
/// resolution: the rids Satsuma's web client and bots send, as LiveKit's do), then any other rid
/// in byte order (`r0` < `r1` < `r2`).
pub fn layer_cmp(a: &Rid, b: &Rid) -> Ordering {
    fn rank(r: &str) -> (u8, &str) {
        let known = match r {
            "q" => 0,
            "h" => 1,
            "f" => 2,
            _ => 3,
        };
        (known, r)
    }
    rank(a).cmp(&rank(b))
}

/// Incoming bitrate of one stream, measured over windows of [`METER_WINDOW`] and smoothed
/// exponentially (weight ½ per window), so a keyframe every few seconds is averaged in.
#[derive(Debug, Clone)]
pub struct RateMeter {
    window_start: Instant,
    window_bytes: u64,
    rate_bps: Option<f64>,
    last_packet: Instant,
}

impl RateMeter {
    /// A meter whose first window starts at `now`.
    pub fn new(now: Instant) -> RateMeter {
        RateMeter {
            window_start: now,
            window_bytes: 0,
            rate_bps: None,
            last_packet: now,
        }
    }

    /// Counts one packet of `bytes` (payload plus header overhead) at `now`.
    pub fn note(&mut self, bytes: usize, now: Instant) {
        self.roll(now);
        self.window_bytes = self.window_bytes.saturating_add(bytes as u64);
        self.last_packet = now;
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < METER_WINDOW {
            return;
        }
        let sample = self.window_bytes as f64 * 8.0 / elapsed.as_secs_f64();
        self.rate_bps = Some(match self.rate_bps {
            Some(r) => (r + sample) / 2.0,
            None => sample,
        });
        self.window_start = now;
        self.window_bytes = 0;
    }

    /// The smoothed bitrate in bits/s: `None` until one window is complete, or once the stream
    /// has been silent for [`LAYER_STALE`].
    pub fn rate_bps(&self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.last_packet) >= LAYER_STALE {
            return None;
        }
        self.rate_bps.map(|r| r.round() as u64)
    }
}

/// What the selector needs to know about one leg of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct LegInput {
    /// The leg.
    pub leg: LegKey,
    /// The available (flowing) simulcast layers of the source with their measured bitrates, in
    /// any order. Empty for a track without simulcast (or none flowing).
    pub layers: Vec<(Rid, u64)>,
    /// Bitrate of a track without simulcast (audio, single-layer video): always sent.
    pub fixed_bps: u64,
    /// The subscriber's `preferredRid`: the highest layer it wants.
    pub preferred: Option<Rid>,
    /// The layer the leg is on or switching to.
    pub current: Option<Rid>,
}

/// A decision for one leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegTarget {
    /// The leg.
    pub leg: LegKey,
    /// The layer it should be on.
    pub rid: Rid,
}

/// The selector's decisions for one session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionPlan {
    /// Legs whose target layer changes.
    pub changes: Vec<LegTarget>,
    /// What the session would like to send: every leg on its top layer (preference ignored),
    /// with headroom (bits/s).
    pub desired_bps: u64,
    /// What the chosen layers need (bits/s).
    pub allocated_bps: u64,
    /// What to keep sending, with padding where media is less: every leg one layer up (at most
    /// its cap), without headroom (bits/s).
    pub minimum_bps: u64,
}

/// Layer selection for one subscriber session. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct LayerSelector {
    estimate_bps: Option<u64>,
    /// Recent estimates (time, bits/s), for the peak over [`PEAK_WINDOW`].
    recent: Vec<(Instant, u64)>,
    /// The last heavy loss: (fraction lost, when).
    loss: Option<(f64, Instant)>,
    up_since: HashMap<LegKey, Instant>,
}

impl LayerSelector {
    /// A selector with no estimate yet (legs then keep whatever layer they are on).
    pub fn new() -> LayerSelector {
        LayerSelector::default()
    }

    /// str0m reported a new egress bandwidth estimate at `now`.
    pub fn set_estimate(&mut self, bps: u64, now: Instant) {
        self.estimate_bps = Some(bps);
        self.recent
            .retain(|(t, _)| now.saturating_duration_since(*t) < PEAK_WINDOW);
        // Bounded: str0m reports at most a few estimates per feedback interval.
        if self.recent.len() >= 256 {
            self.recent.remove(0);
        }
        self.recent.push((now, bps));
    }

    /// A leg's fraction lost as its subscriber reported it. Returns whether the loss is heavy
    /// (see the module docs). Nonsense values (a peer sends them) count as no loss.
    pub fn note_loss(&mut self, fraction: f64, now: Instant) -> bool {
        if !fraction.is_finite() || fraction < HEAVY_LOSS {
            return false;
        }
        let share = fraction.min(1.0);
        let keep = self
            .loss
            .filter(|(s, t)| *s > share && now.saturating_duration_since(*t) < LOSS_MEMORY);
        self.loss = Some(keep.unwrap_or((share, now)));
        true
    }

    /// The heavy loss still in memory, if any.
    fn heavy_loss(&self, now: Instant) -> Option<f64> {
        self.loss
            .filter(|(_, t)| now.saturating_duration_since(*t) < LOSS_MEMORY)
            .map(|(s, _)| s)
    }

    /// The estimate to allocate from: the estimate, or less while it is falling.
    fn usable_estimate(&self, estimate: u64, now: Instant) -> u64 {
        let peak = self
            .recent
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) < PEAK_WINDOW)
            .map(|(_, b)| *b)
            .max()
            .unwrap_or(estimate);
        if (estimate as f64) < peak as f64 * FALLING {
            (estimate as f64 * FALLING) as u64
        } else {
            estimate
        }
    }

    /// The latest estimate.
    pub fn estimate_bps(&self) -> Option<u64> {
        self.estimate_bps
    }

    /// Chooses layers for the session's legs at `now`.
    pub fn select(&mut self, legs: &[LegInput], now: Instant) -> SessionPlan {
        let fixed: u64 = legs.iter().map(|l| l.fixed_bps).sum();
        // Per simulcast leg: its choices (layer order, capped by preference, monotone costs).
        let mut options: Vec<(&LegInput, Vec<(Rid, u64)>)> = legs
            .iter()
            .filter(|l| !l.layers.is_empty())
            .map(|l| (l, capped_layers(l)))
            .collect();
        options.sort_by_key(|(l, _)| (l.leg.session, l.leg.mid.to_string()));
        let next_step = |alloc: &[usize]| -> u64 {
            let next: u64 = options
                .iter()
                .zip(alloc)
                .filter_map(|((_, o), &i)| o.get((i + 1).min(o.len().saturating_sub(1))))
                .map(|(_, b)| *b)
                .sum();
            fixed + next
        };
        let top_need: u64 = legs
            .iter()
            .filter_map(|l| l.layers.iter().map(|(_, b)| *b).max())
            .sum();
        let desired_bps = ((fixed + top_need) as f64 / UP_HEADROOM).round() as u64;
        self.up_since
            .retain(|k, _| options.iter().any(|(l, _)| l.leg == *k));

        // Where every leg is now (index into its options); a leg above its cap, or on a layer that
        // stopped, comes down at once.
        let current: Vec<Option<usize>> = options
            .iter()
            .map(|(l, o)| l.current.map(|c| index_at_or_below(o, &c)))
            .collect();
        let Some(estimate) = self.estimate_bps else {
            // No estimate: every leg at its cap.
            let top: Vec<usize> = options
                .iter()
                .map(|(_, o)| o.len().saturating_sub(1))
                .collect();
            let mut plan = SessionPlan {
                desired_bps,
                minimum_bps: next_step(&top),
                ..SessionPlan::default()
            };
            for ((l, o), &i) in options.iter().zip(&top) {
                push_change(&mut plan, l, o, i);
                plan.allocated_bps += o.get(i).map_or(0, |(_, b)| *b);
            }
            plan.allocated_bps += fixed;
            return plan;
        };
        let mut room = self.usable_estimate(estimate, now).saturating_sub(fixed);
        if let Some(share) = self.heavy_loss(now) {
            // Only what got through fits: the current allocation less the share lost.
            let current_cost: u64 = options
                .iter()
                .zip(&current)
                .map(|((_, o), c)| c.and_then(|i| o.get(i)).map_or(0, |(_, b)| *b))
                .sum();
            room = room.min((current_cost as f64 * (1.0 - share)) as u64);
        }
        let cost = |alloc: &[usize]| -> u64 {
            options
                .iter()
                .zip(alloc)
                .map(|((_, o), &i)| o.get(i).map_or(0, |(_, b)| *b))
                .sum()
        };

        // What can be held: the current layers if they fit, else what fits the full estimate.
        let start: Vec<usize> = current.iter().map(|c| c.unwrap_or(0)).collect();
        let hold = if current.iter().all(Option::is_some) && cost(&start) <= room {
            start.clone()
        } else {
            let lowest = vec![0; options.len()];
            let fit = raise(&options, lowest, room);
            // Never raise a leg here (that waits for the hold time), only lower it.
            fit.iter()
                .zip(&current)
                .map(|(&f, c)| c.map_or(f, |c| c.min(f)))
                .collect()
        };
        // What we would go up to, with headroom.
        let up_room = (room as f64 * UP_HEADROOM) as u64;
        let up = raise(&options, hold.clone(), up_room);

        let mut plan = SessionPlan::default();
        let mut chosen = hold.clone();
        for (n, ((l, o), cur)) in options.iter().zip(&current).enumerate() {
            if up[n] > hold[n] && cur.is_some() {
                let since = *self.up_since.entry(l.leg).or_insert(now);
                if now.saturating_duration_since(since) >= UP_HOLD {
                    chosen[n] = up[n];
                    self.up_since.remove(&l.leg);
                }
            } else {
                self.up_since.remove(&l.leg);
            }
            push_change(&mut plan, l, o, chosen[n]);
        }
        plan.allocated_bps = fixed + cost(&chosen);
        plan.desired_bps = desired_bps;
        plan.minimum_bps = next_step(&chosen);
        plan
    }
}

/// A leg's choices: its available layers in layer order, up to and including its cap (at least
/// the lowest one), each costing its measured bitrate but never less than a lower layer.
fn capped_layers(l: &LegInput) -> Vec<(Rid, u64)> {
    let mut o = l.layers.clone();
    o.sort_by(|a, b| layer_cmp(&a.0, &b.0));
    o.dedup_by(|a, b| a.0 == b.0);
    if let Some(p) = l.preferred {
        let at_or_below = o
            .iter()
            .take_while(|(r, _)| layer_cmp(r, &p) != Ordering::Greater)
            .count();
        o.truncate(at_or_below.max(1));
    }
    let mut floor = 0;
    for (_, b) in &mut o {
        floor = floor.max(*b);
        *b = floor;
    }
    o
}

/// The index of the highest choice at or below layer `rid` in layer order (0 if none is).
fn index_at_or_below(o: &[(Rid, u64)], rid: &Rid) -> usize {
    o.iter()
        .rposition(|(r, _)| layer_cmp(r, rid) != Ordering::Greater)
        .unwrap_or(0)
}

/// Raises legs one layer at a time, round robin, while the total stays within `room`.
fn raise(options: &[(&LegInput, Vec<(Rid, u64)>)], mut alloc: Vec<usize>, room: u64) -> Vec<usize> {
    let total = |alloc: &[usize]| -> u64 {
        options
            .iter()
            .zip(alloc)
            .map(|((_, o), &i)| o.get(i).map_or(0, |(_, b)| *b))
            .sum()
    };
    loop {
        let mut raised = false;
        for n in 0..options.len() {
            let next = alloc[n] + 1;
            if next >= options[n].1.len() {
                continue;
            }
            let mut trial = alloc.clone();
            trial[n] = next;
            if total(&trial) <= room {
                alloc = trial;
                raised = true;
            }
        }
        if !raised {
            return alloc;
        }
    }
}

fn push_change(plan: &mut SessionPlan, l: &LegInput, o: &[(Rid, u64)], i: usize) {
    if let Some((rid, _)) = o.get(i)
        && l.current != Some(*rid)
    {
        plan.changes.push(LegTarget {
            leg: l.leg,
            rid: *rid,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SessionId;
    use str0m::media::Mid;

    fn leg(mid: &str) -> LegKey {
        LegKey {
            session: SessionId([1; 16]),
            mid: Mid::from(mid),
        }
    }

    fn layers() -> Vec<(Rid, u64)> {
        vec![
            (Rid::from("f"), 1_500_000),
            (Rid::from("q"), 150_000),
            (Rid::from("h"), 500_000),
        ]
    }

    fn input(mid: &str, current: Option<&str>, preferred: Option<&str>) -> LegInput {
        LegInput {
            leg: leg(mid),
            layers: layers(),
            fixed_bps: 0,
            preferred: preferred.map(Rid::from),
            current: current.map(Rid::from),
        }
    }

    fn targets(plan: &SessionPlan) -> Vec<(String, String)> {
        plan.changes
            .iter()
            .map(|t| (t.leg.mid.to_string(), t.rid.to_string()))
            .collect()
    }

    impl LayerSelector {
        /// Sets an estimate far in the past, so that it is not "falling".
        fn set_estimate_at(&mut self, bps: u64) {
            self.recent.clear();
            self.estimate_bps = Some(bps);
        }
    }

    #[test]
    fn a_falling_estimate_is_followed_with_margin() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new();
        s.set_estimate(3_000_000, t0);
        let cur = [input("0", Some("f"), None)];
        assert!(s.select(&cur, t0).changes.is_empty());
        // 1.6M still carries f (1.5M), but it is falling fast: leave f now.
        let t1 = t0 + Duration::from_millis(500);
        s.set_estimate(1_600_000, t1);
        let plan = s.select(&cur, t1);
        assert_eq!(targets(&plan), vec![("0".into(), "h".into())]);
        // 650k carries h (500k), but not while falling from 3M (650k * 0.7 < 500k).
        let t2 = t0 + Duration::from_millis(1000);
        s.set_estimate(650_000, t2);
        let plan = s.select(&[input("0", Some("h"), None)], t2);
        assert_eq!(targets(&plan), vec![("0".into(), "q".into())]);
        // Once the peak is forgotten, 650k holds h again (no going up from q without the hold).
        let t3 = t2 + PEAK_WINDOW;
        s.set_estimate(650_000, t3);
        assert!(
            s.select(&[input("0", Some("h"), None)], t3)
                .changes
                .is_empty()
        );
    }

    #[test]
    fn heavy_reported_loss_moves_legs_down_at_once() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new();
        s.set_estimate_at(3_000_000);
        let cur = [input("0", Some("f"), None)];
        // Light loss or nonsense: nothing.
        assert!(!s.note_loss(0.05, t0));
        assert!(!s.note_loss(f64::NAN, t0));
        assert!(s.select(&cur, t0).changes.is_empty());
        // 70% lost: only ~450k of f's 1.5M got through: q.
        assert!(s.note_loss(0.7, t0));
        let plan = s.select(&cur, t0);
        assert_eq!(targets(&plan), vec![("0".into(), "q".into())]);
        // The cap is remembered for a while (no going up), then forgotten.
        let cur = [input("0", Some("q"), None)];
        assert!(s.select(&cur, t0 + UP_HOLD / 2).changes.is_empty());
        let later = t0 + LOSS_MEMORY;
        assert!(s.select(&cur, later).changes.is_empty());
        assert_eq!(
            targets(&s.select(&cur, later + UP_HOLD)),
            vec![("0".into(), "f".into())]
        );
    }

    #[test]
    fn meter_measures_and_goes_stale() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(t0);
        assert_eq!(m.rate_bps(t0), None);
        // 100 packets of 1250 bytes per second = 1 Mbit/s.
        for i in 0..300u64 {
            m.note(1250, t0 + Duration::from_millis(i * 10));
        }
        let now = t0 + Duration::from_millis(2990);
        let r = m.rate_bps(now).unwrap();
        assert!((950_000..=1_050_000).contains(&r), "{r}");
        assert_eq!(m.rate_bps(now + LAYER_STALE), None);
    }

    #[test]
    fn drops_at_once_and_goes_up_only_after_the_hold() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new();
        s.set_estimate_at(5_000_000);
        let plan = s.select(&[input("0", Some("f"), None)], t0);
        assert!(plan.changes.is_empty());
        assert_eq!(plan.allocated_bps, 1_500_000);
        assert_eq!(
            plan.desired_bps,
            (1_500_000_f64 / UP_HEADROOM).round() as u64
        );

        // The estimate collapses: straight down to what fits.
        s.set_estimate_at(400_000);
        let plan = s.select(&[input("0", Some("f"), None)], t0);
        assert_eq!(targets(&plan), vec![("0".into(), "q".into())]);
        assert_eq!(plan.allocated_bps, 150_000);

        // It recovers: up only once it has stayed high for UP_HOLD.
        s.set_estimate_at(3_000_000);
        let cur = [input("0", Some("q"), None)];
        assert!(s.select(&cur, t0).changes.is_empty());
        assert!(s.select(&cur, t0 + UP_HOLD / 2).changes.is_empty());
        // An interruption restarts the hold.
        s.set_estimate_at(300_000);
        assert!(s.select(&cur, t0 + UP_HOLD / 2).changes.is_empty());
        s.set_estimate_at(3_000_000);
        let t1 = t0 + UP_HOLD;
        assert!(s.select(&cur, t1).changes.is_empty());
        assert!(
            s.select(&cur, t1 + UP_HOLD - Duration::from_millis(1))
                .changes
                .is_empty()
        );
        let plan = s.select(&cur, t1 + UP_HOLD);
        assert_eq!(targets(&plan), vec![("0".into(), "f".into())]);
    }

    #[test]
    fn headroom_keeps_a_leg_from_going_up_to_the_edge() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new();
        // h needs 500k: fits 550k but not with 15% headroom.
        s.set_estimate_at(550_000);
        let cur = [input("0", Some("q"), None)];
        assert!(s.select(&cur, t0).changes.is_empty());
        assert!(s.select(&cur, t0 + UP_HOLD * 2).changes.is_empty());
        // But a leg already on h stays there.
        assert!(
            s.select(&[input("0", Some("h"), None)], t0)
                .changes
                .is_empty()
        );
    }

    #[test]
    fn preference_caps_the_layer_and_lowers_at_once() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new();
        s.set_estimate_at(10_000_000);
        let plan = s.select(&[input("0", Some("f"), Some("h"))], t0);
        assert_eq!(targets(&plan), vec![("0".into(), "h".into())]);
        // The desired bitrate does not follow the preference down; the padding target does.
        assert_eq!(
            plan.desired_bps,
            (1_500_000_f64 / UP_HEADROOM).round() as u64
        );
        assert_eq!(plan.minimum_bps, 500_000);
        // A preferred layer that is not sent does not cap.
        let plan = s.select(&[input("0", Some("f"), Some("x"))], t0);
        assert!(plan.changes.is_empty());
    }

    #[test]
    fn the_estimate_is_split_over_legs_round_robin() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new();
        // 1.4M: both legs on h (1M) fit, f for one (2M) does not.
        s.set_estimate_at(1_400_000);
        let legs = [input("0", Some("f"), None), input("1", Some("f"), None)];
        let plan = s.select(&legs, t0);
        assert_eq!(
            targets(&plan),
            vec![("0".into(), "h".into()), ("1".into(), "h".into())]
        );
        // Fixed-rate legs (audio) come off the top.
        let mut legs = legs.to_vec();
        legs.push(LegInput {
            leg: leg("2"),
            layers: Vec::new(),
            fixed_bps: 500_000,
            preferred: None,
            current: None,
        });
        let plan = s.select(&legs, t0);
        assert_eq!(
            targets(&plan),
            vec![("0".into(), "h".into()), ("1".into(), "q".into())]
        );
        assert_eq!(plan.allocated_bps, 500_000 + 500_000 + 150_000);
        // Even a tiny estimate keeps every leg on its lowest layer.
        s.set_estimate_at(10_000);
        let plan = s.select(&legs, t0);
        assert_eq!(plan.allocated_bps, 500_000 + 2 * 150_000);
    }

    #[test]
    fn minimum_bitrate_steps_one_layer_up() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new();
        s.set_estimate_at(400_000);
        let plan = s.select(&[input("0", Some("q"), None)], t0);
        assert_eq!(
            plan.desired_bps,
            (1_500_000_f64 / UP_HEADROOM).round() as u64
        );
        assert_eq!(plan.minimum_bps, 500_000, "pad towards h");
        assert_eq!(plan.allocated_bps, 150_000);
        s.set_estimate_at(800_000);
        let plan = s.select(&[input("0", Some("h"), None)], t0);
        assert_eq!(plan.minimum_bps, 1_500_000);
        let plan = s.select(&[input("0", Some("f"), None)], t0);
        assert_eq!(plan.minimum_bps, 1_500_000);
    }

    fn with_layers(mut l: LegInput, layers: &[(&str, u64)]) -> LegInput {
        l.layers = layers.iter().map(|(r, b)| (Rid::from(*r), *b)).collect();
        l
    }

    #[test]
    fn layers_rank_by_order_not_by_name_or_bitrate() {
        let mut rids: Vec<Rid> = ["f", "r1", "q", "zz", "h", "r0"]
            .into_iter()
            .map(Rid::from)
            .collect();
        rids.sort_by(layer_cmp);
        let names: Vec<String> = rids.iter().map(|r| r.to_string()).collect();
        assert_eq!(names, ["q", "h", "f", "r0", "r1", "zz"]);
    }

    #[test]
    fn a_middle_layer_measured_above_the_top_one_does_not_make_the_top_one_lose() {
        // What Chromium did in one window: more bits on h than on f.
        let measured = [("f", 410_000), ("h", 462_000), ("q", 100_000)];
        let t0 = Instant::now();
        // Without an estimate: f, whatever the samples say, and it stays there.
        let mut s = LayerSelector::new();
        let plan = s.select(&[with_layers(input("0", Some("h"), None), &measured)], t0);
        assert_eq!(targets(&plan), vec![("0".into(), "f".into())]);
        for i in 0..20u64 {
            // The samples keep swapping places.
            let (h, f) = if i % 2 == 0 {
                (462_000, 410_000)
            } else {
                (380_000, 450_000)
            };
            let l = with_layers(
                input("0", Some("f"), None),
                &[("f", f), ("h", h), ("q", 100_000)],
            );
            let plan = s.select(&[l], t0 + Duration::from_millis(250 * i));
            assert!(plan.changes.is_empty(), "window {i}: {plan:?}");
        }
        // With an estimate: f costs at least what h costs, so where h fits, f does too.
        let mut s = LayerSelector::new();
        s.set_estimate_at(700_000);
        let l = with_layers(input("0", Some("f"), None), &measured);
        let plan = s.select(std::slice::from_ref(&l), t0);
        assert!(plan.changes.is_empty(), "{plan:?}");
        assert_eq!(plan.allocated_bps, 462_000);
        // ... and from q it goes up to f, not to h, once the hold is over.
        let l = with_layers(input("0", Some("q"), None), &measured);
        assert!(s.select(std::slice::from_ref(&l), t0).changes.is_empty());
        let plan = s.select(&[l], t0 + UP_HOLD);
        assert_eq!(targets(&plan), vec![("0".into(), "f".into())]);
    }

    #[test]
    fn a_layer_that_stops_is_left_and_taken_again_when_it_is_back() {
        let t0 = Instant::now();
        let all = [("q", 150_000), ("h", 500_000), ("f", 1_500_000)];
        let no_f = [("q", 150_000), ("h", 500_000)];
        let only_q = [("q", 150_000)];
        for estimate in [None, Some(5_000_000)] {
            let mut s = LayerSelector::new();
            if let Some(e) = estimate {
                s.set_estimate_at(e);
            }
            let on = |rid: &str, layers: &[(&str, u64)]| {
                with_layers(input("0", Some(rid), None), layers)
            };
            assert!(s.select(&[on("f", &all)], t0).changes.is_empty());
            // f stopped: down to the best layer still flowing, at once.
            let plan = s.select(&[on("f", &no_f)], t0);
            assert_eq!(
                targets(&plan),
                vec![("0".into(), "h".into())],
                "{estimate:?}"
            );
            let plan = s.select(&[on("h", &only_q)], t0);
            assert_eq!(
                targets(&plan),
                vec![("0".into(), "q".into())],
                "{estimate:?}"
            );
            // They come back: taken again (after the hold when an estimate decides).
            let t1 = t0 + Duration::from_secs(1);
            let plan = s.select(&[on("q", &all)], t1);
            if estimate.is_some() {
                assert!(plan.changes.is_empty());
                let plan = s.select(&[on("q", &all)], t1 + UP_HOLD);
                assert_eq!(targets(&plan), vec![("0".into(), "f".into())]);
            } else {
                assert_eq!(targets(&plan), vec![("0".into(), "f".into())]);
            }
            // Nothing flowing at all: the leg stays where it is.
            let plan = s.select(&[on("f", &[])], t1);
            assert!(plan.changes.is_empty(), "{estimate:?}");
        }
    }

    #[test]
    fn the_cap_takes_the_best_available_layer_at_or_below_it() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new();
        // Prefers h, h is not flowing: q (not f, which is above the cap).
        let l = with_layers(
            input("0", Some("f"), Some("h")),
            &[("q", 150_000), ("f", 1_500_000)],
        );
        assert_eq!(targets(&s.select(&[l], t0)), vec![("0".into(), "q".into())]);
        // Prefers q, only h and f flow: the lowest of them.
        let l = with_layers(
            input("0", Some("f"), Some("q")),
            &[("h", 500_000), ("f", 1_500_000)],
        );
        assert_eq!(targets(&s.select(&[l], t0)), vec![("0".into(), "h".into())]);
    }

    #[test]
    fn without_an_estimate_legs_go_to_their_cap() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new();
        let plan = s.select(
            &[input("0", None, None), input("1", Some("h"), Some("q"))],
            t0,
        );
        assert_eq!(
            targets(&plan),
            vec![("0".into(), "f".into()), ("1".into(), "q".into())]
        );
        let plan = s.select(&[input("0", Some("q"), None)], t0);
        assert_eq!(targets(&plan), vec![("0".into(), "f".into())]);
    }
}
