//! The load scenarios (after LiveKit's published benchmark, scaled down) and who pulls what.
//!
//! - **audio**: `A` audio-only publishers, `N` subscribers that each pull every publisher
//!   (LiveKit: 10 → 3,000).
//! - **meeting**: `N` participants, each publishing audio + video and pulling everyone else
//!   (LiveKit: 150 × 150). A participant is two peer connections here, one to publish and one to
//!   pull, because Janus needs that; Satsuma gets the same shape for a like-for-like run.
//! - **livestream**: one audio + video publisher, `N` subscribers (LiveKit: 1 → 3,000).
//! - **limited**: one audio + video publisher, `N` subscribers of which the first has its
//!   downlink limited (a token-bucket shaper in front of the bot, `--limited-kbps`): with
//!   bandwidth estimation it should get a lower simulcast layer while the others keep the top
//!   one.
//! - **relay**: one audio + video publisher, `N` subscribers, run twice per round: on one
//!   `satsuma-sfu` node, and on two nodes joined by the relay (publisher on node A, subscribers
//!   on node B), so the difference is what the relay costs (CPU) and adds (latency).
//! - **ramp**: one audio + video publisher (top video layer only), subscribers added in steps
//!   ([`ramp_counts`]) until a step loses more than 1 % or adds more than 10 ms at p99: the
//!   SFU's maximum sustained egress.
//!
//! [`Plan`] is pure data: which publishers exist, which publishers each subscriber pulls, and how they
//! are split over worker processes.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::media::MediaProfile;

/// A scenario kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScenarioKind {
    /// Audio-only publishers to many subscribers.
    Audio,
    /// N × N video meeting.
    Meeting,
    /// One video publisher to many subscribers.
    Livestream,
    /// One video publisher to a few subscribers, one of them behind a slow downlink.
    Limited,
    /// One video publisher to many subscribers on another node (the relay), against one node.
    Relay,
    /// One audio + video publisher, subscribers added in steps until loss or latency breaks.
    Ramp,
}

impl ScenarioKind {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            ScenarioKind::Audio => "audio",
            ScenarioKind::Meeting => "meeting",
            ScenarioKind::Livestream => "livestream",
            ScenarioKind::Limited => "limited",
            ScenarioKind::Relay => "relay",
            ScenarioKind::Ramp => "ramp",
        }
    }
}

/// Default downlink of the `limited` scenario's limited subscriber, kbit/s: room for the low
/// simulcast layer and audio, not for the middle one.
pub const DEFAULT_LIMIT_KBPS: u32 = 300;

/// A publisher in a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublisherPlan {
    /// Display name.
    pub name: String,
    /// Publishes an audio track named "audio".
    pub audio: bool,
    /// Publishes a video track named "video".
    pub video: bool,
}

impl PublisherPlan {
    /// Track names it publishes.
    pub fn track_names(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.audio {
            v.push("audio".to_owned());
        }
        if self.video {
            v.push("video".to_owned());
        }
        v
    }
}

/// A subscriber in a plan: the indices of the publishers it pulls (all their tracks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriberPlan {
    /// Display name.
    pub name: String,
    /// Publisher indices.
    pub publishers: Vec<usize>,
    /// Its downlink is limited to this many kbit/s (a shaper in front of the bot).
    #[serde(default)]
    pub limit_kbps: Option<u32>,
}

/// Who publishes and who pulls what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Scenario.
    pub kind: ScenarioKind,
    /// Participants as the scenario counts them (memory per participant divides by this).
    pub participants: usize,
    /// Publishers.
    pub publishers: Vec<PublisherPlan>,
    /// Subscribers.
    pub subscribers: Vec<SubscriberPlan>,
}

impl Plan {
    /// Build the plan of `kind` with `n` subscribers (meeting: participants) and, for audio,
    /// `audio_publishers` publishers.
    pub fn new(kind: ScenarioKind, n: usize, audio_publishers: usize) -> Self {
        let publisher = |i: usize, audio: bool, video: bool| PublisherPlan {
            name: format!("pub{i}"),
            audio,
            video,
        };
        let subscriber = |i: usize, publishers: Vec<usize>| SubscriberPlan {
            name: format!("sub{i}"),
            publishers,
            limit_kbps: None,
        };
        match kind {
            ScenarioKind::Audio => {
                let a = audio_publishers.max(1);
                Self {
                    kind,
                    participants: a + n,
                    publishers: (0..a).map(|i| publisher(i, true, false)).collect(),
                    subscribers: (0..n).map(|i| subscriber(i, (0..a).collect())).collect(),
                }
            }
            ScenarioKind::Meeting => {
                let n = n.max(2);
                Self {
                    kind,
                    participants: n,
                    publishers: (0..n).map(|i| publisher(i, true, true)).collect(),
                    subscribers: (0..n)
                        .map(|i| subscriber(i, (0..n).filter(|&j| j != i).collect()))
                        .collect(),
                }
            }
            ScenarioKind::Livestream | ScenarioKind::Relay | ScenarioKind::Ramp => Self {
                kind,
                participants: 1 + n,
                publishers: vec![publisher(0, true, true)],
                subscribers: (0..n).map(|i| subscriber(i, vec![0])).collect(),
            },
            ScenarioKind::Limited => Self::limited(n, DEFAULT_LIMIT_KBPS),
        }
    }

    /// The `limited` scenario: one audio + video publisher, `n` (at least 2) subscribers, the
    /// first (`sub0-limited`) behind a downlink of `limit_kbps`.
    pub fn limited(n: usize, limit_kbps: u32) -> Self {
        let n = n.max(2);
        Self {
            kind: ScenarioKind::Limited,
            participants: 1 + n,
            publishers: vec![PublisherPlan {
                name: "pub0".into(),
                audio: true,
                video: true,
            }],
            subscribers: (0..n)
                .map(|i| SubscriberPlan {
                    name: if i == 0 {
                        format!("sub{i}-limited")
                    } else {
                        format!("sub{i}")
                    },
                    publishers: vec![0],
                    limit_kbps: (i == 0).then_some(limit_kbps),
                })
                .collect(),
        }
    }

    /// Packets per second the publishers send, nominally.
    pub fn ingress_pps(&self, media: &MediaProfile) -> f64 {
        self.publishers
            .iter()
            .map(|p| publisher_ingress_pps(p, media))
            .sum()
    }

    /// Packets per second the SFU should forward, nominally.
    pub fn egress_pps(&self, media: &MediaProfile) -> f64 {
        self.subscribers
            .iter()
            .flat_map(|s| s.publishers.iter())
            .filter_map(|&i| self.publishers.get(i))
            .map(|p| publisher_pps(p, media))
            .sum()
    }

    /// Split indices `0..len` over `workers` processes, round-robin.
    pub fn split(len: usize, workers: usize) -> Vec<Vec<usize>> {
        let w = workers.max(1);
        let mut out = vec![Vec::new(); w];
        for i in 0..len {
            out[i % w].push(i);
        }
        out
    }
}

/// The subscriber counts of the `ramp` scenario's steps: `start` (at least 1), then every
/// multiple of `step` above it, then `max` itself if the multiples stop short of it. Never above
/// `max`.
pub fn ramp_counts(start: usize, step: usize, max: usize) -> Vec<usize> {
    let max = max.max(1);
    let step = step.max(1);
    let first = start.clamp(1, max);
    let mut out = vec![first];
    let mut n = (first / step + 1) * step;
    while n <= max {
        out.push(n);
        n += step;
    }
    if out.last() != Some(&max) {
        out.push(max);
    }
    out
}

/// What a publisher sends: all its simulcast layers.
fn publisher_ingress_pps(p: &PublisherPlan, media: &MediaProfile) -> f64 {
    tracks_pps(p, media.audio_pps(), media.video_ingress_pps())
}

/// What a subscriber of a publisher receives: the top layer.
fn publisher_pps(p: &PublisherPlan, media: &MediaProfile) -> f64 {
    tracks_pps(p, media.audio_pps(), media.video_pps())
}

fn tracks_pps(p: &PublisherPlan, audio: f64, video: f64) -> f64 {
    f64::from(u8::from(p.audio)) * audio + f64::from(u8::from(p.video)) * video
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn audio_plan_fans_every_publisher_to_every_subscriber() {
        let p = Plan::new(ScenarioKind::Audio, 20, 10);
        assert_eq!(p.publishers.len(), 10);
        assert!(p.publishers.iter().all(|p| p.audio && !p.video));
        assert_eq!(p.subscribers.len(), 20);
        assert!(p.subscribers.iter().all(|s| s.publishers.len() == 10));
        assert_eq!(p.participants, 30);
        let m = MediaProfile::default();
        assert_eq!(p.ingress_pps(&m), 500.0);
        assert_eq!(p.egress_pps(&m), 10_000.0);
    }

    #[test]
    fn meeting_subscribers_skip_themselves() {
        let p = Plan::new(ScenarioKind::Meeting, 4, 10);
        assert_eq!(p.participants, 4);
        for (i, s) in p.subscribers.iter().enumerate() {
            assert_eq!(s.publishers.len(), 3);
            assert!(!s.publishers.contains(&i));
        }
        let m = MediaProfile::default();
        let per_pub = 50.0 + m.video_pps();
        assert!((p.egress_pps(&m) - 12.0 * per_pub).abs() < 1e-6);
    }

    #[test]
    fn livestream_has_one_publisher() {
        let p = Plan::new(ScenarioKind::Livestream, 5, 10);
        assert_eq!(p.publishers.len(), 1);
        assert_eq!(p.subscribers.len(), 5);
        assert_eq!(p.participants, 6);
    }

    #[test]
    fn limited_plan_limits_only_the_first_subscriber() {
        let p = Plan::limited(4, 300);
        assert_eq!(p.kind, ScenarioKind::Limited);
        assert_eq!(p.publishers.len(), 1);
        assert_eq!(p.subscribers.len(), 4);
        assert_eq!(p.subscribers[0].limit_kbps, Some(300));
        assert!(p.subscribers[0].name.contains("limited"));
        assert!(p.subscribers[1..].iter().all(|s| s.limit_kbps.is_none()));
        assert_eq!(Plan::limited(0, 300).subscribers.len(), 2);
    }

    #[test]
    fn relay_plan_is_a_livestream() {
        let p = Plan::new(ScenarioKind::Relay, 5, 10);
        assert_eq!(p.kind, ScenarioKind::Relay);
        assert_eq!(p.publishers.len(), 1);
        assert_eq!(p.subscribers.len(), 5);
        assert!(p.subscribers.iter().all(|s| s.publishers == [0]));
        let m = MediaProfile::default();
        let live = Plan::new(ScenarioKind::Livestream, 5, 10);
        assert_eq!(p.egress_pps(&m), live.egress_pps(&m));
    }

    #[test]
    fn ramp_counts_start_then_step_multiples_up_to_the_max() {
        assert_eq!(ramp_counts(1, 20, 100), vec![1, 20, 40, 60, 80, 100]);
        assert_eq!(ramp_counts(1, 20, 50), vec![1, 20, 40, 50]);
        assert_eq!(ramp_counts(20, 20, 60), vec![20, 40, 60]);
        assert_eq!(ramp_counts(5, 2, 9), vec![5, 6, 8, 9]);
        assert_eq!(ramp_counts(0, 0, 3), vec![1, 2, 3]);
        assert_eq!(ramp_counts(10, 5, 4), vec![4]);
        let p = Plan::new(ScenarioKind::Ramp, 7, 10);
        assert_eq!((p.publishers.len(), p.subscribers.len()), (1, 7));
        assert!(p.publishers[0].audio && p.publishers[0].video);
    }

    #[test]
    fn split_is_round_robin_and_complete() {
        let s = Plan::split(5, 2);
        assert_eq!(s, vec![vec![0, 2, 4], vec![1, 3]]);
        assert_eq!(Plan::split(3, 0), vec![vec![0, 1, 2]]);
    }
}
