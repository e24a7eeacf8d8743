//! The one token bucket: `burst` tokens at most, refilled at `rate` tokens per second. Time is
//! passed in ([`Instant`]), so the bucket is deterministic under test and costs no clock read of
//! its own on a hot path.
//!
//! A token can stand for a request (`try_take`) or for a byte (`try_take_n` with a packet's
//! length), so the same bucket limits request rates and bitrates.

use std::time::{Duration, Instant};

/// A token bucket. See the module docs.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `rate` tokens per second. A `burst` below 1
    /// is raised to 1 so that a bucket with a positive rate can ever grant a token; a `rate` of 0
    /// grants the burst once and never refills.
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        let rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
        let burst = if burst.is_finite() {
            burst.max(1.0)
        } else {
            1.0
        };
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// `per_second` requests per second with a burst of as many (the usual request limit).
    pub fn per_second(per_second: u32, now: Instant) -> TokenBucket {
        let r = f64::from(per_second.max(1));
        TokenBucket::new(r, r, now)
    }

    /// Tokens per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Most tokens the bucket holds.
    pub fn burst(&self) -> f64 {
        self.burst
    }

    fn refill(&mut self, now: Instant) {
        // Time never runs backwards for the bucket: an earlier `now` refills nothing.
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.try_take_n(now, 1)
    }

    /// Takes `n` tokens if there are that many; otherwise takes none.
    pub fn try_take_n(&mut self, now: Instant, n: u64) -> bool {
        self.refill(now);
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Tokens available at `now` (refills first).
    pub fn available(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// How long from `now` until `n` tokens are available (zero if they are; `None` if they
    /// never will be: more than the burst, or no refill).
    pub fn wait_for(&mut self, now: Instant, n: u64) -> Option<Duration> {
        self.refill(now);
        let n = n as f64;
        if self.tokens >= n {
            return Some(Duration::ZERO);
        }
        if n > self.burst || self.rate <= 0.0 {
            return None;
        }
        Some(Duration::from_secs_f64((n - self.tokens) / self.rate))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn allows_a_burst_then_refills_at_the_rate() {
        let now = Instant::now();
        let mut b = TokenBucket::per_second(50, now);
        assert_eq!((0..60).filter(|_| b.try_take(now)).count(), 50);
        assert!(!b.try_take(now + Duration::from_millis(10)));
        // 20 ms at 50/s is one token.
        assert!(b.try_take(now + Duration::from_millis(30)));
        assert!(!b.try_take(now + Duration::from_millis(30)));
        // A long pause refills to the burst, not beyond.
        let later = now + Duration::from_secs(5);
        assert_eq!((0..60).filter(|_| b.try_take(later)).count(), 50);
    }

    #[test]
    fn rate_and_burst_are_separate() {
        let now = Instant::now();
        let mut b = TokenBucket::new(2.0, 5.0, now);
        assert_eq!((0..10).filter(|_| b.try_take(now)).count(), 5);
        let t = now + Duration::from_secs(1);
        assert_eq!((0..10).filter(|_| b.try_take(t)).count(), 2);
    }

    #[test]
    fn takes_many_tokens_at_once_or_none() {
        let now = Instant::now();
        // A byte budget: 1000 bytes/s, burst 1500.
        let mut b = TokenBucket::new(1000.0, 1500.0, now);
        assert!(b.try_take_n(now, 1200));
        assert!(!b.try_take_n(now, 400));
        assert!(b.try_take_n(now, 300));
        assert!((b.available(now) - 0.0).abs() < 1e-9);
        let t = now + Duration::from_millis(500);
        assert!(!b.try_take_n(t, 501));
        assert!(b.try_take_n(t, 500));
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let now = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(10.0, 1.0, now);
        assert!(b.try_take(now));
        assert!(!b.try_take(now - Duration::from_secs(5)));
        // And the earlier time did not move the clock back: 100 ms after `now` refills one.
        assert!(b.try_take(now + Duration::from_millis(100)));
    }

    #[test]
    fn degenerate_parameters_are_tamed() {
        let now = Instant::now();
        let mut b = TokenBucket::new(f64::NAN, 0.0, now);
        assert_eq!(b.burst(), 1.0);
        assert_eq!(b.rate(), 0.0);
        assert!(b.try_take(now));
        assert!(!b.try_take(now + Duration::from_secs(1000)));
        assert_eq!(b.wait_for(now, 1), None);
        let mut b = TokenBucket::new(-5.0, f64::INFINITY, now);
        assert_eq!(b.rate(), 0.0);
        assert_eq!(b.burst(), 1.0);
        assert!(b.try_take(now));
        assert!(!b.try_take(now));
    }

    #[test]
    fn wait_for_tells_when_tokens_are_back() {
        let now = Instant::now();
        let mut b = TokenBucket::new(4.0, 2.0, now);
        assert_eq!(b.wait_for(now, 2), Some(Duration::ZERO));
        assert!(b.try_take_n(now, 2));
        let w = b.wait_for(now, 1).unwrap();
        assert!((w.as_secs_f64() - 0.25).abs() < 1e-9, "{w:?}");
        assert_eq!(b.wait_for(now, 3), None);
    }
}
