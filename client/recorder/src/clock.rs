//! Placing one track's frames on the recording's timeline, sans-IO.
//!
//! A frame's RTP timestamp says when it was captured relative to the track's other frames;
//! its arrival says (late by the network and any queue) when it was sent. The offset between
//! the two clocks is estimated as the smallest `arrival - media time` seen: the frame that
//! came fastest. A burst at the start (an SFU that queued packets until the recorder's
//! connection was up) arrives late all at once; taking its first frame's arrival as the anchor
//! would shift the whole track late by the queue's length. So frames are held for [`HOLD`]
//! before they are written, until the offset has settled, and then written at
//! `media time + offset` (never before 0, never before the previous frame).

use std::collections::VecDeque;

/// How long a frame is held before it is written (ns).
pub const HOLD_NS: i64 = 1_000_000_000;

/// One track's clock mapping and the frames it holds.
#[derive(Debug)]
pub struct Timeline {
    clock_rate: i64,
    base: Option<i64>,
    offset: Option<i64>,
    held: VecDeque<(i64, i64, Vec<u8>)>,
    last: Option<u64>,
}

impl Timeline {
    /// A timeline for an RTP clock of `clock_rate` Hz.
    #[must_use]
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: i64::from(clock_rate.max(1)),
            base: None,
            offset: None,
            held: VecDeque::new(),
            last: None,
        }
    }

    /// A frame with extended RTP timestamp `ts` that arrived `arrived_ns` after the
    /// recording's start; returns the frames due now, with their times (ns from the start).
    pub fn push(&mut self, ts: i64, arrived_ns: i64, frame: Vec<u8>) -> Vec<(u64, Vec<u8>)> {
        let base = *self.base.get_or_insert(ts);
        let media = (ts - base).saturating_mul(1_000_000_000) / self.clock_rate;
        let d = arrived_ns - media;
        self.offset = Some(self.offset.map_or(d, |o| o.min(d)));
        self.held.push_back((media, arrived_ns, frame));
        self.release(arrived_ns - HOLD_NS)
    }

    /// Every frame still held (the recording ends).
    pub fn flush(&mut self) -> Vec<(u64, Vec<u8>)> {
        self.release(i64::MAX)
    }

    fn release(&mut self, arrived_by: i64) -> Vec<(u64, Vec<u8>)> {
        let offset = self.offset.unwrap_or(0);
        let mut out = Vec::new();
        while self.held.front().is_some_and(|(_, a, _)| *a <= arrived_by) {
            let Some((media, _, frame)) = self.held.pop_front() else {
                break;
            };
            let at = u64::try_from(media.saturating_add(offset)).unwrap_or(0);
            let at = match self.last {
                Some(l) if at <= l => l + 1_000,
                _ => at,
            };
            self.last = Some(at);
            out.push((at, frame));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const MS: i64 = 1_000_000;

    #[test]
    fn a_burst_at_the_start_lands_where_it_was_captured() {
        // Audio, 20 ms frames from 50 ms on; the first 1.1 s are queued and arrive at 1.15 s
        // in a burst; the rest arrive 5 ms after capture.
        let mut t = Timeline::new(48_000);
        let mut out = Vec::new();
        for i in 0..400i64 {
            let captured = 50 * MS + 20 * MS * i;
            let arrived = if captured < 1150 * MS {
                1150 * MS
            } else {
                captured + 5 * MS
            };
            out.extend(t.push(1000 + 960 * i, arrived, vec![0]));
        }
        out.extend(t.flush());
        assert_eq!(out.len(), 400);
        let first = out[0].0 as i64;
        let last = out[399].0 as i64;
        assert_eq!(
            first,
            55 * MS,
            "the first frame at its capture (+ the fastest delay)"
        );
        assert_eq!(last, 50 * MS + 20 * MS * 399 + 5 * MS);
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn frames_wait_for_the_hold_and_never_go_back() {
        let mut t = Timeline::new(90_000);
        assert!(t.push(0, 0, vec![1]).is_empty());
        assert!(t.push(3000, 33 * MS, vec![2]).is_empty());
        let due = t.push(93_000, 1040 * MS, vec![3]);
        assert_eq!(due.iter().map(|d| d.1[0]).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(due[0].0, 0);
        // A frame whose timestamp went back (a new source) still comes after the last one.
        let mut rest = t.push(0, 2100 * MS, vec![4]);
        rest.extend(t.flush());
        assert!(rest.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(rest[0].0 > due[1].0);
    }
}
