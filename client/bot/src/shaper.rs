//! A token-bucket shaper for the datagrams a bot receives: a bottleneck link in front of the bot.
//!
//! Datagrams queue behind the bucket and leave it at the configured rate (with a small burst);
//! a datagram that would make the queue hold more than [`QUEUE_DELAY`] worth of traffic is dropped
//! (drop-tail), as a router with a bounded buffer would. Sans-IO: fed datagrams and time, it says
//! when the next one may leave ([`Shaper::next_release`]) and hands out the due ones
//! ([`Shaper::pop_due`]). The driver feeds released datagrams to the participant with the
//! release time as their arrival time, so congestion shows up as delay (and loss) to str0m.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The queue holds at most this much traffic at the configured rate (but at least [`MIN_QUEUE`]).
pub const QUEUE_DELAY: Duration = Duration::from_millis(200);
/// Smallest queue in bytes.
pub const MIN_QUEUE: usize = 16 * 1024;
/// Bucket depth (burst) in bytes.
pub const BURST: f64 = 6.0 * 1200.0;

/// Counters of a shaper.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ShaperStats {
    /// Datagrams that went through.
    pub passed: u64,
    /// Datagrams dropped because the queue was full.
    pub dropped: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct Shaper {
    rate_bps: u64,
    tokens: f64,
    last: Instant,
    queue: VecDeque<(SocketAddr, Vec<u8>)>,
    queued_bytes: usize,
    stats: ShaperStats,
}

impl Shaper {
    /// A shaper passing `rate_bps` bits per second, starting with a full bucket.
    pub fn new(rate_bps: u64, now: Instant) -> Self {
        Self {
            rate_bps: rate_bps.max(1),
            tokens: BURST,
            last: now,
            queue: VecDeque::new(),
            queued_bytes: 0,
            stats: ShaperStats::default(),
        }
    }

    /// Changes the rate from `now` on.
    pub fn set_rate(&mut self, rate_bps: u64, now: Instant) {
        self.refill(now);
        self.rate_bps = rate_bps.max(1);
    }

    /// The configured rate.
    pub fn rate_bps(&self) -> u64 {
        self.rate_bps
    }

    /// Counters so far.
    pub fn stats(&self) -> ShaperStats {
        self.stats
    }

    fn limit_bytes(&self) -> usize {
        let by_delay = (self.rate_bps as f64 / 8.0 * QUEUE_DELAY.as_secs_f64()) as usize;
        by_delay.max(MIN_QUEUE)
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate_bps as f64 / 8.0).min(BURST);
        self.last = self.last.max(now);
    }

    /// A datagram arrived at `now`; false if it was dropped.
    pub fn push(&mut self, now: Instant, from: SocketAddr, bytes: Vec<u8>) -> bool {
        if self.queued_bytes + bytes.len() > self.limit_bytes() {
            self.stats.dropped += 1;
            return false;
        }
        self.refill(now);
        self.queued_bytes += bytes.len();
        self.queue.push_back((from, bytes));
        true
    }

    /// The next datagram that may leave at `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        self.refill(now);
        let len = self.queue.front()?.1.len() as f64;
        if self.tokens < len.min(BURST) {
            return None;
        }
        self.tokens -= len;
        let (from, bytes) = self.queue.pop_front()?;
        self.queued_bytes -= bytes.len();
        self.stats.passed += 1;
        Some((from, bytes))
    }

    /// When the head of the queue may leave (`None` when the queue is empty).
    pub fn next_release(&self) -> Option<Instant> {
        let len = self.queue.front()?.1.len() as f64;
        let missing = (len.min(BURST) - self.tokens).max(0.0);
        Some(self.last + Duration::from_secs_f64(missing * 8.0 / self.rate_bps as f64))
    }

    /// Empties the queue (the limit was lifted): everything queued, in order.
    pub fn drain(&mut self) -> impl Iterator<Item = (SocketAddr, Vec<u8>)> + '_ {
        self.queued_bytes = 0;
        self.stats.passed += self.queue.len() as u64;
        self.queue.drain(..)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn passes_the_configured_rate_and_drops_beyond_the_queue() {
        let t0 = Instant::now();
        // 400 kbit/s = 50 kB/s. Offer 1 Mbit/s of 1000-byte datagrams for 2 s.
        let mut s = Shaper::new(400_000, t0);
        let mut passed_bytes = 0usize;
        let mut now = t0;
        for i in 0..250u64 {
            now = t0 + Duration::from_millis(i * 8);
            s.push(now, addr(), vec![0; 1000]);
            while let Some((_, b)) = s.pop_due(now) {
                passed_bytes += b.len();
            }
        }
        let elapsed = now.duration_since(t0).as_secs_f64();
        let rate = passed_bytes as f64 * 8.0 / elapsed;
        assert!((380_000.0..=470_000.0).contains(&rate), "{rate}");
        assert!(s.stats().dropped > 50, "{:?}", s.stats());
        // The head leaves when the bucket has refilled.
        let at = s.next_release().unwrap();
        assert!(at > now && at <= now + Duration::from_millis(25), "{at:?}");
        assert!(s.pop_due(at).is_some());
        // Lifting the limit hands over the rest in order.
        let rest = s.drain().count();
        assert!(rest > 0);
        assert_eq!(s.next_release(), None);
    }

    #[test]
    fn below_the_rate_nothing_waits() {
        let t0 = Instant::now();
        let mut s = Shaper::new(1_000_000, t0);
        for i in 0..100u64 {
            let now = t0 + Duration::from_millis(i * 20);
            assert!(s.push(now, addr(), vec![0; 1000]));
            assert!(s.pop_due(now).is_some(), "datagram {i} waited");
        }
        assert_eq!(s.stats().dropped, 0);
    }
}
