//! Dynacast: which simulcast layers of each published video track some subscriber can take,
//! so that the publisher turns the others off at the source (no uplink, no encoder time).
//!
//! Sans-IO. The SFU proxy feeds it every pull (`tracks/new` with remote tracks), every
//! `preferredRid` change (`tracks/update`) and every close (`tracks/close`), the hub feeds it
//! `published`/`unpublished` entries and released sessions; [`Dynacast::poll`] returns the
//! changes to tell publishers (`layers` message, `PROTOCOL.md` §4).
//!
//! **The rule.** A track's *demand* is the highest layer any of its subscriber legs asks for
//! (`q` < `h` < `f`; a leg without a `preferredRid`, or with a rid this module does not know,
//! counts as the top layer, so an unknown client is never starved). The publisher keeps every
//! layer at or below the demand on: the SFU's bandwidth estimation may give a leg that asks
//! `f` the `h` or `q` layer, so those must flow too (like LiveKit's max-subscribed quality).
//! A track nobody pulls has no demand (`max_rid: null`): the publisher keeps only its lowest
//! layer. That layer stays on so that a joiner's first frame does not wait for an encoder to
//! start (the SFU's keyframe route answers from layers that flow).
//!
//! **Debounce.** A rise is sent at once (someone is waiting for the layer). A fall is sent
//! only once the lower demand has held for [`HOLD`]: a subscriber resizing its window or
//! scrolling past a tile turns an encoding off at most about once a second, never several
//! times.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a lower demand must hold before the publisher is told to turn layers off.
pub(crate) const HOLD: Duration = Duration::from_millis(1000);

/// Most subscriber legs remembered per room (beyond: new legs are not tracked, and their
/// tracks keep the layers they have; the SFU's own per-session caps come first in practice).
pub(crate) const MAX_LEGS: usize = 16_384;

/// Most tracks remembered per room.
pub(crate) const MAX_TRACKS: usize = 4_096;

/// A simulcast layer as a subscriber asks for it, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Layer {
    /// `q`: quarter resolution.
    Q,
    /// `h`: half resolution.
    H,
    /// `f`: full resolution (also: no preference, or an unknown rid).
    F,
}

impl Layer {
    /// The layer a `preferredRid` asks for: `q`, `h`, `f`; anything else (none, another
    /// name, hostile bytes) is the top layer.
    pub(crate) fn from_rid(rid: Option<&str>) -> Layer {
        match rid {
            Some("q") => Layer::Q,
            Some("h") => Layer::H,
            _ => Layer::F,
        }
    }

    /// The rid sent to publishers.
    pub(crate) fn rid(self) -> &'static str {
        match self {
            Layer::Q => "q",
            Layer::H => "h",
            Layer::F => "f",
        }
    }
}

/// A published track: its SFU session and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TrackKey {
    pub(crate) session_id: String,
    pub(crate) track_name: String,
}

/// A subscriber leg: the subscriber's SFU session and the m-line it receives on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LegKey {
    session_id: String,
    mid: String,
}

#[derive(Debug, Clone)]
struct Leg {
    track: TrackKey,
    want: Layer,
}

#[derive(Debug, Clone)]
struct TrackState {
    /// What the publisher was told (or does by default: every layer on). `None`: nobody pulls.
    sent: Option<Layer>,
    /// Since when the demand is below `sent` (a fall waiting for [`HOLD`]).
    lower_since: Option<Instant>,
}

/// A change to tell a publisher: keep the layers of track `track` up to `max` on (`None`:
/// nobody pulls it; keep only the lowest layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) track: TrackKey,
    pub(crate) max: Option<Layer>,
}

/// The demand bookkeeping of one room.
#[derive(Debug, Default)]
pub(crate) struct Dynacast {
    tracks: HashMap<TrackKey, TrackState>,
    legs: HashMap<LegKey, Leg>,
}

impl Dynacast {
    /// A video track was published. Its publisher sends every layer until told otherwise.
    pub(crate) fn publish(&mut self, session_id: &str, track_name: &str) {
        if self.tracks.len() >= MAX_TRACKS {
            return;
        }
        self.tracks
            .entry(TrackKey {
                session_id: session_id.to_owned(),
                track_name: track_name.to_owned(),
            })
            .or_insert(TrackState {
                sent: Some(Layer::F),
                lower_since: None,
            });
    }

    /// Track `track_name` of one of `sessions` was withdrawn: forget it and its legs.
    pub(crate) fn unpublish(&mut self, sessions: &[String], track_name: &str) {
        self.tracks
            .retain(|k, _| !(k.track_name == track_name && sessions.contains(&k.session_id)));
        self.legs.retain(|_, l| {
            !(l.track.track_name == track_name && sessions.contains(&l.track.session_id))
        });
    }

    /// Subscriber session `session_id` receives track (`src`, `name`) on `mid`, asking for
    /// `rid` (a pull, or an update that may also retarget the m-line).
    pub(crate) fn leg(&mut self, session_id: &str, mid: &str, src: &str, name: &str, want: Layer) {
        let key = LegKey {
            session_id: session_id.to_owned(),
            mid: mid.to_owned(),
        };
        if !self.legs.contains_key(&key) && self.legs.len() >= MAX_LEGS {
            return;
        }
        self.legs.insert(
            key,
            Leg {
                track: TrackKey {
                    session_id: src.to_owned(),
                    track_name: name.to_owned(),
                },
                want,
            },
        );
    }

    /// Subscriber session `session_id` stopped receiving on `mid`.
    pub(crate) fn close(&mut self, session_id: &str, mid: &str) {
        self.legs.remove(&LegKey {
            session_id: session_id.to_owned(),
            mid: mid.to_owned(),
        });
    }

    /// SFU session `session_id` is gone: its legs and the tracks it published.
    pub(crate) fn drop_session(&mut self, session_id: &str) {
        self.legs
            .retain(|k, l| k.session_id != session_id && l.track.session_id != session_id);
        self.tracks.retain(|k, _| k.session_id != session_id);
    }

    /// The changes due at `now` (rises at once, falls after [`HOLD`]), in track order.
    pub(crate) fn poll(&mut self, now: Instant) -> Vec<Change> {
        let mut demand: HashMap<&TrackKey, Layer> = HashMap::new();
        for l in self.legs.values() {
            let d = demand.entry(&l.track).or_insert(l.want);
            *d = (*d).max(l.want);
        }
        let mut out = Vec::new();
        for (key, st) in &mut self.tracks {
            let want = demand.get(key).copied();
            if want > st.sent {
                st.sent = want;
                st.lower_since = None;
                out.push(Change {
                    track: key.clone(),
                    max: want,
                });
            } else if want < st.sent {
                let since = *st.lower_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= HOLD {
                    st.sent = want;
                    st.lower_since = None;
                    out.push(Change {
                        track: key.clone(),
                        max: want,
                    });
                }
            } else {
                st.lower_since = None;
            }
        }
        out.sort_by(|a, b| a.track.cmp(&b.track));
        out
    }

    /// When [`Dynacast::poll`] has a fall to send next.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.tracks
            .values()
            .filter_map(|t| t.lower_since.map(|s| s + HOLD))
            .min()
    }

    /// What the publisher of the tracks in `sessions` was told last (or does by default),
    /// for each of them: sent again after it resumes, since it may have missed a change
    /// either way while its socket was down.
    pub(crate) fn current(&self, sessions: &[String]) -> Vec<Change> {
        let mut out: Vec<Change> = self
            .tracks
            .iter()
            .filter(|(k, _)| sessions.contains(&k.session_id))
            .map(|(k, t)| Change {
                track: k.clone(),
                max: t.sent,
            })
            .collect();
        out.sort_by(|a, b| a.track.cmp(&b.track));
        out
    }

    /// Whether track (`session_id`, `track_name`) is one this room tracks (tests).
    #[cfg(test)]
    fn knows(&self, session_id: &str, track_name: &str) -> bool {
        self.tracks.contains_key(&TrackKey {
            session_id: session_id.to_owned(),
            track_name: track_name.to_owned(),
        })
    }
}

/// The layer a remote track entry of a `tracks/new` or `tracks/update` body asks for.
pub(crate) fn wanted_layer(track: &satsuma_wire::realtime::TrackObject) -> Layer {
    Layer::from_rid(
        track
            .simulcast
            .as_ref()
            .and_then(|s| s.preferred_rid.as_deref()),
    )
}

/// The highest layer some leg of a track asks for (`None`: no leg): for the tests below.
#[cfg(test)]
impl Dynacast {
    fn demand_of(&self, s: &str, n: &str) -> Option<Layer> {
        self.legs
            .values()
            .filter(|l| l.track.session_id == s && l.track.track_name == n)
            .map(|l| l.want)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str, n: &str, max: Option<Layer>) -> Change {
        Change {
            track: TrackKey {
                session_id: s.to_owned(),
                track_name: n.to_owned(),
            },
            max,
        }
    }

    #[test]
    fn rids_rank_q_h_f_and_anything_else_is_the_top() {
        assert_eq!(Layer::from_rid(Some("q")), Layer::Q);
        assert_eq!(Layer::from_rid(Some("h")), Layer::H);
        assert_eq!(Layer::from_rid(Some("f")), Layer::F);
        assert_eq!(Layer::from_rid(None), Layer::F);
        assert_eq!(Layer::from_rid(Some("")), Layer::F);
        assert_eq!(Layer::from_rid(Some("Q")), Layer::F);
        assert_eq!(Layer::from_rid(Some(&"x".repeat(10_000))), Layer::F);
        assert!(Layer::Q < Layer::H && Layer::H < Layer::F);
        let t = |v: serde_json::Value| serde_json::from_value(v).unwrap();
        assert_eq!(
            wanted_layer(&t(
                serde_json::json!({"simulcast": {"preferredRid": "h"}, "mid": "1"})
            )),
            Layer::H
        );
        assert_eq!(wanted_layer(&t(serde_json::json!({"mid": "1"}))), Layer::F);
        assert_eq!(
            wanted_layer(&t(serde_json::json!({"simulcast": {}}))),
            Layer::F
        );
    }

    #[test]
    fn nobody_pulling_falls_to_lowest_after_the_hold() {
        let t0 = Instant::now();
        let mut d = Dynacast::default();
        d.publish("pub", "cam");
        assert!(d.poll(t0).is_empty(), "the default (all on) is not sent");
        assert_eq!(d.next_deadline(), Some(t0 + HOLD));
        assert!(d.poll(t0 + HOLD / 2).is_empty());
        assert_eq!(d.poll(t0 + HOLD), vec![ch("pub", "cam", None)]);
        assert!(d.poll(t0 + HOLD * 3).is_empty(), "sent once");
        assert_eq!(d.next_deadline(), None);
        assert_eq!(d.current(&["pub".to_owned()]), vec![ch("pub", "cam", None)]);
        assert!(d.current(&["other".to_owned()]).is_empty());
    }

    #[test]
    fn a_rise_is_sent_at_once_and_the_max_of_the_legs_counts() {
        let t0 = Instant::now();
        let mut d = Dynacast::default();
        d.publish("pub", "cam");
        d.leg("s1", "1", "pub", "cam", Layer::Q);
        d.leg("s2", "4", "pub", "cam", Layer::H);
        assert_eq!(d.demand_of("pub", "cam"), Some(Layer::H));
        assert!(d.poll(t0).is_empty());
        assert_eq!(d.poll(t0 + HOLD), vec![ch("pub", "cam", Some(Layer::H))]);
        // s1 asks f: at once.
        d.leg("s1", "1", "pub", "cam", Layer::F);
        assert_eq!(
            d.poll(t0 + HOLD + Duration::from_millis(1)),
            vec![ch("pub", "cam", Some(Layer::F))]
        );
        // Back to q: the other leg's h holds the demand at h, after the hold.
        let t1 = t0 + HOLD * 2;
        d.leg("s1", "1", "pub", "cam", Layer::Q);
        assert!(d.poll(t1).is_empty());
        assert_eq!(d.poll(t1 + HOLD), vec![ch("pub", "cam", Some(Layer::H))]);
        // s2 closes its pull: q.
        d.close("s2", "4");
        let t2 = t1 + HOLD * 2;
        assert!(d.poll(t2).is_empty());
        assert_eq!(d.poll(t2 + HOLD), vec![ch("pub", "cam", Some(Layer::Q))]);
    }

    #[test]
    fn a_resizing_subscriber_does_not_toggle_layers_more_than_once_a_hold() {
        // A subscriber that flips between q and f every 100 ms for 5 s: f goes on once and
        // stays on (every fall is cut short by the next rise).
        let t0 = Instant::now();
        let mut d = Dynacast::default();
        d.publish("pub", "cam");
        d.leg("sub", "2", "pub", "cam", Layer::F);
        let mut sent = Vec::new();
        for i in 0..50u32 {
            let want = if i % 2 == 0 { Layer::Q } else { Layer::F };
            d.leg("sub", "2", "pub", "cam", want);
            sent.extend(d.poll(t0 + Duration::from_millis(100) * i));
        }
        assert!(sent.is_empty(), "{sent:?}");
        // It settles on q: one fall after the hold.
        d.leg("sub", "2", "pub", "cam", Layer::Q);
        let t1 = t0 + Duration::from_secs(5);
        assert!(d.poll(t1).is_empty());
        assert_eq!(d.poll(t1 + HOLD), vec![ch("pub", "cam", Some(Layer::Q))]);
    }

    #[test]
    fn a_fall_that_changes_during_the_hold_sends_the_latest_demand() {
        let t0 = Instant::now();
        let mut d = Dynacast::default();
        d.publish("pub", "cam");
        d.leg("sub", "2", "pub", "cam", Layer::H);
        assert!(d.poll(t0).is_empty());
        d.leg("sub", "2", "pub", "cam", Layer::Q);
        assert!(d.poll(t0 + HOLD / 2).is_empty());
        assert_eq!(d.poll(t0 + HOLD), vec![ch("pub", "cam", Some(Layer::Q))]);
    }

    #[test]
    fn sessions_and_unpublished_tracks_are_forgotten() {
        let t0 = Instant::now();
        let mut d = Dynacast::default();
        d.publish("pub", "cam");
        d.publish("pub", "screen");
        d.publish("pub2", "cam");
        d.leg("sub", "1", "pub", "cam", Layer::F);
        d.leg("sub", "2", "pub2", "cam", Layer::F);
        d.leg("sub2", "1", "pub", "cam", Layer::H);
        // The subscriber session goes: pub/cam keeps sub2's h.
        d.drop_session("sub");
        assert_eq!(d.demand_of("pub", "cam"), Some(Layer::H));
        assert_eq!(d.demand_of("pub2", "cam"), None);
        // Unpublishing needs the publisher's own session.
        d.unpublish(&["pub2".to_owned()], "screen");
        assert!(d.knows("pub", "screen"));
        d.unpublish(&["pub".to_owned()], "screen");
        assert!(!d.knows("pub", "screen"));
        // The publisher's session goes: its tracks and the legs on them.
        d.drop_session("pub");
        assert!(!d.knows("pub", "cam"));
        assert_eq!(d.demand_of("pub", "cam"), None);
        let all = d.poll(t0 + HOLD);
        assert_eq!(
            all,
            Vec::new(),
            "pub2/cam falls only after its hold from now"
        );
        assert_eq!(d.poll(t0 + HOLD * 2), vec![ch("pub2", "cam", None)]);
    }

    #[test]
    fn legs_and_tracks_are_bounded() {
        let mut d = Dynacast::default();
        for i in 0..MAX_TRACKS + 10 {
            d.publish("p", &i.to_string());
        }
        assert_eq!(d.tracks.len(), MAX_TRACKS);
        for i in 0..MAX_LEGS + 10 {
            d.leg("s", &i.to_string(), "p", "0", Layer::Q);
        }
        assert_eq!(d.legs.len(), MAX_LEGS);
        // An existing leg can still change.
        d.leg("s", "0", "p", "0", Layer::F);
        assert_eq!(d.demand_of("p", "0"), Some(Layer::F));
    }

    #[test]
    fn legs_of_tracks_not_published_as_video_change_nothing() {
        let t0 = Instant::now();
        let mut d = Dynacast::default();
        d.leg("sub", "0", "pub", "mic", Layer::F);
        assert!(d.poll(t0 + HOLD * 2).is_empty());
        assert_eq!(d.next_deadline(), None);
    }
}
