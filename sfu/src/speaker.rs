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
//! hysteresis (on above [`SPEAKING_ON`], off below [`SPEAKING_OFF`]).
//!
//! The *active speaker* of a set of tracks is a dominant speaker, chosen on a slower measure,
//! the track's *presence* (loudness smoothed over [`PRESENCE_SMOOTHING`]), among the tracks that
//! were speaking within [`RECENT_SPEECH`]. It changes only when another such track is clearly
//! more present ([`SWITCH_MARGIN`]), and silence alone does not end it: the last one to speak
//! stays the active speaker until someone else speaks or its track stops sending (nothing heard
//! for [`RECENT_SPEECH`]; a muted browser track keeps sending silence, and stays). Speech has gaps
//! between words (and a test's fake microphone beeps): choosing on the instant `speaking` flag
//! made the choice flip between two people talking at once several times a second, and drop to
//! nobody between a single speaker's words.

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
/// Smoothing time constant of the presence (what the active speaker is chosen on).
pub const PRESENCE_SMOOTHING: Duration = Duration::from_millis(1500);
/// A track is a candidate for active speaker if it was speaking this recently.
pub const RECENT_SPEECH: Duration = Duration::from_secs(2);
/// A track speaking now takes over from a current active speaker that has been quiet this long.
pub const QUIET_HANDOVER: Duration = Duration::from_millis(500);
/// A new active speaker must be this much more present than the current one.
pub const SWITCH_MARGIN: f32 = 1.25;
/// A track not heard from for this long is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(10);

/// What is known about one track's level.
#[derive(Debug, Clone, Copy)]
struct TrackLevel {
    activity: f32,
    presence: f32,
    last_dbov: i8,
    /// Whether its latest packet carried voice (above the floor, not marked as not voice).
    last_voiced: bool,
    speaking: bool,
    /// When the track was last seen speaking.
    spoke: Option<Instant>,
    updated: Instant,
}

impl TrackLevel {
    fn activity_at(&self, now: Instant) -> f32 {
        self.activity * decay(now.saturating_duration_since(self.updated), SMOOTHING)
    }

    fn presence_at(&self, now: Instant) -> f32 {
        self.presence
            * decay(
                now.saturating_duration_since(self.updated),
                PRESENCE_SMOOTHING,
            )
    }

    fn spoke_within(&self, window: Duration, now: Instant) -> bool {
        self.spoke
            .is_some_and(|at| now.saturating_duration_since(at) <= window)
    }

    fn heard_within(&self, window: Duration, now: Instant) -> bool {
        now.saturating_duration_since(self.updated) <= window
    }

    fn speaking_at(&self, now: Instant) -> bool {
        self.speaking && self.activity_at(now) >= SPEAKING_OFF
    }
}

fn decay(elapsed: Duration, constant: Duration) -> f32 {
    (-(elapsed.as_secs_f32() / constant.as_secs_f32())).exp()
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
            presence: 0.0,
            last_dbov: dbov,
            last_voiced: false,
            speaking: false,
            spoke: None,
            updated: now,
        });
        // Weight of the new sample: what the old value lost by decaying over the gap, at least
        // one packet's worth (20 ms) so same-instant packets still count.
        let elapsed = now
            .saturating_duration_since(entry.updated)
            .max(Duration::from_millis(20));
        let keep = decay(elapsed, SMOOTHING);
        entry.activity = entry.activity * keep + loudness * (1.0 - keep);
        let keep = decay(elapsed, PRESENCE_SMOOTHING);
        entry.presence = entry.presence * keep + loudness * (1.0 - keep);
        entry.last_dbov = dbov;
        entry.last_voiced = loudness > 0.0;
        entry.updated = now;
        let was = entry.speaking;
        entry.speaking = if was {
            entry.activity >= SPEAKING_OFF
        } else {
            entry.activity > SPEAKING_ON
        };
        if entry.speaking {
            entry.spoke = Some(now);
        }
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

    /// The active speaker among `candidates` at `now` (see the module docs): the most present
    /// of the tracks that spoke within [`RECENT_SPEECH`]. `current` is kept unless another is
    /// [`SWITCH_MARGIN`] times more present, or `current` has been quiet for
    /// [`QUIET_HANDOVER`] while another is speaking now. `current` stays through silence while
    /// it is still among `candidates` and sending (heard within [`RECENT_SPEECH`]); `None` when
    /// nobody has spoken recently.
    pub fn choose(
        &self,
        candidates: impl IntoIterator<Item = TrackId>,
        current: Option<TrackId>,
        now: Instant,
    ) -> Option<TrackId> {
        // The most present recent speaker, and the most present one speaking now (not current).
        let mut best: Option<(TrackId, f32)> = None;
        let mut talking: Option<(TrackId, f32)> = None;
        let mut cur: Option<&TrackLevel> = None;
        for track in candidates {
            let Some(t) = self.tracks.get(&track) else {
                continue;
            };
            let presence = t.presence_at(now);
            if Some(track) == current {
                // A current speaker whose track stopped sending is gone.
                cur = t.heard_within(RECENT_SPEECH, now).then_some(t);
                continue;
            }
            if t.spoke_within(RECENT_SPEECH, now) && best.is_none_or(|(_, p)| presence > p) {
                best = Some((track, presence));
            }
            // A taker must be voicing now: one who just muted stays "speaking" through the
            // smoothing's tail (~0.5 s of silence packets), and must not take over meanwhile.
            if t.speaking_at(now) && t.last_voiced && talking.is_none_or(|(_, p)| presence > p) {
                talking = Some((track, presence));
            }
        }
        let Some((cur_id, cur)) = current.zip(cur) else {
            return best.map(|(t, _)| t);
        };
        // Only someone speaking now takes over from a current speaker: a track that spoke a
        // moment ago and stopped (muted) keeps a high presence for a while, and must not win it
        // back from the one who is talking.
        let cur_presence = cur.presence_at(now);
        if let Some((t, p)) = talking
            && (p > cur_presence * SWITCH_MARGIN || !cur.spoke_within(QUIET_HANDOVER, now))
        {
            return Some(t);
        }
        Some(cur_id)
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
        assert_eq!(d.speaking_count(t), 2);
        // Nobody speaking, both still sending silence: the last speaker stays.
        let quiet = t;
        for _ in 0..150 {
            d.observe(a, -127, None, t);
            d.observe(b, -127, None, t);
            t += PACKET;
        }
        assert_eq!(d.speaking_count(t), 0);
        assert_eq!(d.choose([a, b], Some(b), t), Some(b));
        // b's track is gone (not a candidate) and a has not spoken for 3 s: nobody.
        assert_eq!(d.choose([a], Some(b), t), None);
        // Both stop sending: after RECENT_SPEECH nobody is the active speaker.
        assert_eq!(d.choose([a, b], Some(b), t + RECENT_SPEECH + PACKET), None);
        assert!(t - quiet >= Duration::from_secs(3));
    }

    /// One 100 ms burst every `period` (a beeping fake microphone, or words with gaps).
    fn beep(
        d: &mut SpeakerDetector,
        track: TrackId,
        phase: Duration,
        period: Duration,
        t: Instant,
    ) {
        let in_period = phase.as_millis() % period.as_millis();
        let dbov = if in_period < 100 { -15 } else { -127 };
        d.observe(track, dbov, None, t);
    }

    #[test]
    fn two_people_talking_at_once_do_not_make_the_choice_flicker() {
        let mut d = SpeakerDetector::default();
        let (a, b) = (TrackId(1), TrackId(2));
        let t0 = Instant::now();
        let period = Duration::from_millis(400);
        let mut current = None;
        let mut changes = 0;
        let mut t = t0;
        while t < t0 + Duration::from_secs(20) {
            let since = t - t0;
            beep(&mut d, a, since, period, t);
            beep(&mut d, b, since + Duration::from_millis(200), period, t);
            let chosen = d.choose([a, b], current, t);
            if chosen != current {
                changes += 1;
                current = chosen;
            }
            t += PACKET;
        }
        assert!(current.is_some());
        assert_eq!(changes, 1, "the choice changed {changes} times in 20 s");
    }

    #[test]
    fn a_single_speaker_with_pauses_stays_and_a_new_one_takes_over_within_1_5_s() {
        let mut d = SpeakerDetector::default();
        let (a, b) = (TrackId(1), TrackId(2));
        let t0 = Instant::now();
        let period = Duration::from_millis(500);
        let mut current = None;
        let mut t = t0;
        // a speaks in bursts, b sends silence: a is chosen and stays through every gap.
        let mut chosen_at = None;
        while t < t0 + Duration::from_secs(10) {
            beep(&mut d, a, t - t0, period, t);
            d.observe(b, -127, None, t);
            current = d.choose([a, b], current, t);
            if current.is_some() && chosen_at.is_none() {
                chosen_at = Some(t);
            }
            if chosen_at.is_some() {
                assert_eq!(current, Some(a), "a lost the choice at {:?}", t - t0);
            }
            t += PACKET;
        }
        // Now a is silent and b speaks: b takes over, within a second.
        let switch = t;
        while current != Some(b) {
            assert!(
                t - switch < Duration::from_secs(1),
                "no switch to b within 1 s"
            );
            d.observe(a, -127, None, t);
            beep(&mut d, b, t - t0, period, t);
            current = d.choose([a, b], current, t);
            t += PACKET;
        }
    }

    #[test]
    fn one_who_just_went_quiet_does_not_win_it_back_from_the_one_talking() {
        let mut d = SpeakerDetector::default();
        let (a, b) = (TrackId(1), TrackId(2));
        let mut t = Instant::now();
        // a talks loudly for 3 s, b quietly: a is the speaker.
        for _ in 0..150 {
            d.observe(a, -5, None, t);
            d.observe(b, -35, None, t);
            t += PACKET;
        }
        let mut current = d.choose([a, b], None, t);
        assert_eq!(current, Some(a));
        // a mutes (silence packets), b keeps talking: b takes over, and a, whose presence
        // stays high for a while after it spoke, never gets it back.
        let muted = t;
        let mut took_over = None;
        while t < muted + Duration::from_secs(4) {
            d.observe(a, -127, None, t);
            d.observe(b, -35, None, t);
            current = d.choose([a, b], current, t);
            if current == Some(b) && took_over.is_none() {
                took_over = Some(t - muted);
            }
            if took_over.is_some() {
                assert_eq!(
                    current,
                    Some(b),
                    "a won it back {:?} after muting",
                    t - muted
                );
            }
            t += PACKET;
        }
        assert!(
            took_over.is_some_and(|d| d <= Duration::from_millis(1500)),
            "{took_over:?}"
        );
    }

    #[test]
    fn one_who_just_muted_does_not_take_over_while_the_speaker_pauses() {
        let mut d = SpeakerDetector::default();
        let (a, b) = (TrackId(1), TrackId(2));
        let mut t = Instant::now();
        // b talks (softly) for 3 s, a is silent: b is the speaker.
        for _ in 0..150 {
            d.observe(a, -127, None, t);
            d.observe(b, -45, None, t);
            t += PACKET;
        }
        let mut current = d.choose([a, b], None, t);
        assert_eq!(current, Some(b));
        // b pauses; a says a word (0.3 s, from 0.3 s into the pause) and mutes: silence
        // packets. b's pause opens the handover (QUIET_HANDOVER after b last spoke) while a's
        // smoothed activity is still above the speaking threshold, but a is not voicing any
        // more: b stays the speaker.
        let paused = t;
        while t < paused + Duration::from_secs(2) {
            let into = t - paused;
            let a_level = if into >= Duration::from_millis(300) && into < Duration::from_millis(600)
            {
                -20
            } else {
                -127
            };
            d.observe(a, a_level, None, t);
            d.observe(b, -127, None, t);
            current = d.choose([a, b], current, t);
            assert_eq!(current, Some(b), "a took over {into:?} into b's pause");
            t += PACKET;
        }
        // One who talks (voicing now) still takes over from a quiet speaker.
        let quiet = t;
        while t < quiet + Duration::from_secs(2) {
            d.observe(a, -10, None, t);
            d.observe(b, -127, None, t);
            current = d.choose([a, b], current, t);
            t += PACKET;
        }
        assert_eq!(current, Some(a));
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
