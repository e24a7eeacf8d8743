//! Audio levels and the active speaker, read from the `ssrc-audio-level` RTP header extension
//! (RFC 6464) that browsers put on every Opus packet. The payload is never looked at, so this
//! works for end-to-end encrypted audio too.
//!
//! Sans-IO: [`SpeakerDetector::observe`] is fed each audio packet's level with its arrival time;
//! [`SpeakerDetector::level`] and [`SpeakerDetector::choose`] answer for a given `now`. Each shard
//! owns one detector for the audio tracks it sees (its own publishers' and those it forwards).
//!
//! The level of a packet is in -dBov (0 is the loudest, -127 silence). A track's *activity* is an
//! exponentially smoothed loudness above a speech floor, so one click does not make a speaker and
//! a pause of a few hundred milliseconds does not unmake one. A track is *speaking* with
//! hysteresis (on above [`SPEAKING_ON`], off below [`SPEAKING_OFF`]). The active speaker of a set
//! of tracks is the most active speaking one, and the current choice is kept unless another
//! track is clearly louder ([`SWITCH_MARGIN`]), so the highlight does not flicker between two
//! people talking at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::ids::TrackId;

/// Levels quieter than this (in -dBov) count as silence.
pub const SPEECH_FLOOR_DBOV: i8 = -60;
/// Smoothing time constant of the activity.
pub const SMOOTHING: Duration = Duration::from_millis(400);
/// Activity above which a track starts speaking (dB above the floor, smoothed).
pub const SPEAKING_ON: f32 = 12.0;
/// Activity below which a speaking track stops speaking.
pub const SPEAKING_OFF: f32 = 6.0;
/// A new active speaker must be this much more active than the current one.
pub const SWITCH_MARGIN: f32 = 1.25;
/// A track not heard from for this long is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(10);

/// What is known about one track's level.
#[derive(Debug, Clone, Copy)]
struct TrackLevel {
    activity: f32,
    last_dbov: i8,
    speaking: bool,
    updated: Instant,
}

impl TrackLevel {
    fn activity_at(&self, now: Instant) -> f32 {
        self.activity * decay(now.saturating_duration_since(self.updated))
    }
}

fn decay(elapsed: Duration) -> f32 {
    (-(elapsed.as_secs_f32() / SMOOTHING.as_secs_f32())).exp()
}

/// A track's level as reported through the API.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    /// Last packet's level in -dBov (0 loudest, -127 silence).
    pub last_dbov: i8,
    /// Smoothed activity (dB above the speech floor).
    pub activity: f32,
    /// Whether the track is speaking now.
    pub speaking: bool,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct SpeakerDetector {
    tracks: HashMap<TrackId, TrackLevel>,
}

impl SpeakerDetector {
    /// Records one packet's level. `voice_activity` is the extension's V bit when present: a
    /// packet the sender marks as not voice counts as silence whatever its level.
    /// Returns `Some(speaking)` when the track's speaking state changed.
    pub fn observe(
        &mut self,
        track: TrackId,
        dbov: i8,
        voice_activity: Option<bool>,
        now: Instant,
    ) -> Option<bool> {
        let dbov = dbov.clamp(-127, 0);
        let loudness = if voice_activity == Some(false) {
            0.0
        } else {
            f32::from(dbov.saturating_sub(SPEECH_FLOOR_DBOV).max(0))
        };
        let entry = self.tracks.entry(track).or_insert(TrackLevel {
            activity: 0.0,
            last_dbov: dbov,
            speaking: false,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(entry.updated);
        // Weight of the new sample: what the old value lost by decaying over the gap, at least
        // one packet's worth (20 ms) so same-instant packets still count.
        let keep = decay(elapsed.max(Duration::from_millis(20)));
        entry.activity = entry.activity * keep + loudness * (1.0 - keep);
        entry.last_dbov = dbov;
        entry.updated = now;
        let was = entry.speaking;
        entry.speaking = if was {
            entry.activity >= SPEAKING_OFF
        } else {
            entry.activity > SPEAKING_ON
        };
        (was != entry.speaking).then_some(entry.speaking)
    }

    /// The level of `track` at `now`, if it was heard recently.
    pub fn level(&self, track: TrackId, now: Instant) -> Option<Level> {
        let t = self.tracks.get(&track)?;
        let activity = t.activity_at(now);
        Some(Level {
            last_dbov: t.last_dbov,
            activity,
            // A track that went quiet (muted, DTX, gone) stops speaking without new packets.
            speaking: t.speaking && activity >= SPEAKING_OFF,
        })
    }

    /// The active speaker among `candidates` at `now`: the most active speaking track, keeping
    /// `current` unless another is [`SWITCH_MARGIN`] times more active.
    pub fn choose(
        &self,
        candidates: impl IntoIterator<Item = TrackId>,
        current: Option<TrackId>,
        now: Instant,
    ) -> Option<TrackId> {
        let mut best: Option<(TrackId, f32)> = None;
        let mut current_activity = None;
        for track in candidates {
            let Some(level) = self.level(track, now).filter(|l| l.speaking) else {
                continue;
            };
            if Some(track) == current {
                current_activity = Some(level.activity);
            }
            if best.is_none_or(|(_, a)| level.activity > a) {
                best = Some((track, level.activity));
            }
        }
        match (best, current, current_activity) {
            (Some((_, a)), Some(cur), Some(cur_a)) if a < cur_a * SWITCH_MARGIN => Some(cur),
            (best, _, _) => best.map(|(t, _)| t),
        }
    }

    /// Tracks currently speaking.
    pub fn speaking_count(&self, now: Instant) -> usize {
        self.tracks
            .keys()
            .filter(|t| self.level(**t, now).is_some_and(|l| l.speaking))
            .count()
    }

    /// Forgets `track` (unpublished).
    pub fn forget(&mut self, track: TrackId) {
        self.tracks.remove(&track);
    }

    /// Forgets tracks not heard from for [`FORGET_AFTER`].
    pub fn expire(&mut self, now: Instant) {
        self.tracks
            .retain(|_, t| now.saturating_duration_since(t.updated) < FORGET_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKET: Duration = Duration::from_millis(20);

    /// Feeds `n` packets of one level, 20 ms apart, returning the time after the last.
    fn talk(
        d: &mut SpeakerDetector,
        track: TrackId,
        dbov: i8,
        n: usize,
        mut t: Instant,
    ) -> Instant {
        for _ in 0..n {
            d.observe(track, dbov, None, t);
            t += PACKET;
        }
        t
    }

    #[test]
    fn speech_makes_a_speaker_and_silence_ends_it() {
        let mut d = SpeakerDetector::default();
        let a = TrackId(1);
        let t0 = Instant::now();
        let t = talk(&mut d, a, -127, 50, t0);
        assert!(!d.level(a, t).unwrap().speaking, "silence is not speech");
        let t = talk(&mut d, a, -30, 50, t);
        let l = d.level(a, t).unwrap();
        assert!(l.speaking, "a second of speech at -30 dBov: {l:?}");
        assert_eq!(l.last_dbov, -30);
        // A short pause (200 ms) keeps the speaker; a long one ends it.
        let t = talk(&mut d, a, -127, 10, t);
        assert!(
            d.level(a, t).unwrap().speaking,
            "a 200 ms pause ended speech"
        );
        let t = talk(&mut d, a, -127, 50, t);
        assert!(!d.level(a, t).unwrap().speaking);
    }

    #[test]
    fn a_track_that_stops_sending_stops_speaking() {
        let mut d = SpeakerDetector::default();
        let a = TrackId(1);
        let t = talk(&mut d, a, -20, 50, Instant::now());
        assert!(d.level(a, t).unwrap().speaking);
        assert!(!d.level(a, t + Duration::from_secs(2)).unwrap().speaking);
        d.expire(t + FORGET_AFTER);
        assert!(d.level(a, t + FORGET_AFTER).is_none());
    }

    #[test]
    fn a_single_click_is_not_speech_and_vad_false_is_silence() {
        let mut d = SpeakerDetector::default();
        let a = TrackId(1);
        let t = talk(&mut d, a, -127, 10, Instant::now());
        let t = talk(&mut d, a, 0, 1, t);
        assert!(
            !d.level(a, t).unwrap().speaking,
            "one loud packet made a speaker"
        );
        let mut t = t;
        for _ in 0..50 {
            d.observe(a, -10, Some(false), t);
            t += PACKET;
        }
        assert!(
            !d.level(a, t).unwrap().speaking,
            "packets marked not-voice made a speaker"
        );
    }

    #[test]
    fn the_active_speaker_is_sticky_until_someone_is_clearly_louder() {
        let mut d = SpeakerDetector::default();
        let (a, b) = (TrackId(1), TrackId(2));
        let mut t = Instant::now();
        for _ in 0..50 {
            d.observe(a, -30, None, t);
            d.observe(b, -28, None, t);
            t += PACKET;
        }
        // b is a little louder, but a is current: a stays.
        assert_eq!(d.choose([a, b], Some(a), t), Some(a));
        // Without a current choice the louder one wins.
        assert_eq!(d.choose([a, b], None, t), Some(b));
        // b gets much louder: switch.
        for _ in 0..50 {
            d.observe(a, -40, None, t);
            d.observe(b, -10, None, t);
            t += PACKET;
        }
        assert_eq!(d.choose([a, b], Some(a), t), Some(b));
        // Nobody speaking: no active speaker.
        assert_eq!(d.choose([a, b], Some(b), t + Duration::from_secs(3)), None);
        assert_eq!(d.speaking_count(t), 2);
        assert_eq!(d.speaking_count(t + Duration::from_secs(3)), 0);
    }

    #[test]
    fn hostile_levels_are_clamped() {
        let mut d = SpeakerDetector::default();
        let a = TrackId(1);
        let t = Instant::now();
        d.observe(a, i8::MIN, None, t);
        d.observe(a, i8::MAX, None, t);
        let l = d.level(a, t).unwrap();
        assert!(l.activity.is_finite() && l.last_dbov == 0);
    }
}
