//! Shard health, read by `/healthz`: which shards panicked (and when) and which died for good.
//!
//! A shard that panics is caught on its own thread: its sessions are closed, its state is reset
//! and it goes on taking work (see [`crate::shard::Shard::run`]). `/healthz` then answers 503,
//! naming the shard, for [`crate::Config::shard_panic_hold`], so that probes, load balancers and
//! monitoring see the failure; after that it is healthy again. A shard thread that ended without
//! being asked to (a panic outside the guarded work) is dead: `/healthz` stays 503 until the
//! process is restarted by its supervisor.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

const NEVER: u64 = u64::MAX;

#[derive(Debug)]
struct ShardState {
    panics: AtomicU64,
    /// Milliseconds since `start` of the last panic, or [`NEVER`].
    last_panic_ms: AtomicU64,
    dead: AtomicBool,
}

/// See the module docs. Lock-free: shards write, `/healthz` reads.
#[derive(Debug)]
pub struct ShardHealth {
    start: Instant,
    shards: Vec<ShardState>,
}

/// One unhealthy shard, as `/healthz` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardProblem {
    /// Shard index.
    pub shard: usize,
    /// `restarted` (panicked recently, sessions closed, taking work again) or `dead`.
    pub state: &'static str,
    /// Panics of this shard since start.
    pub panics: u64,
    /// Milliseconds since its last panic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_panic_ms: Option<u64>,
}

impl ShardHealth {
    /// Health of `shards` shards, all healthy.
    pub fn new(shards: usize, start: Instant) -> ShardHealth {
        ShardHealth {
            start,
            shards: (0..shards)
                .map(|_| ShardState {
                    panics: AtomicU64::new(0),
                    last_panic_ms: AtomicU64::new(NEVER),
                    dead: AtomicBool::new(false),
                })
                .collect(),
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.start).as_millis()).unwrap_or(NEVER - 1)
    }

    /// Shard `shard` panicked at `now` and was restarted.
    pub fn note_panic(&self, shard: usize, now: Instant) {
        if let Some(s) = self.shards.get(shard) {
            s.panics.fetch_add(1, Ordering::Relaxed);
            s.last_panic_ms.store(self.ms(now), Ordering::Release);
        }
    }

    /// Shard `shard`'s thread ended for good.
    pub fn note_dead(&self, shard: usize) {
        if let Some(s) = self.shards.get(shard) {
            s.dead.store(true, Ordering::Release);
        }
    }

    /// Whether shard `shard` can take new sessions.
    pub fn is_alive(&self, shard: usize) -> bool {
        self.shards
            .get(shard)
            .is_some_and(|s| !s.dead.load(Ordering::Acquire))
    }

    /// Shards that are dead, or panicked less than `hold` before `now`.
    pub fn problems(&self, now: Instant, hold: Duration) -> Vec<ShardProblem> {
        let now_ms = self.ms(now);
        let hold_ms = u64::try_from(hold.as_millis()).unwrap_or(NEVER);
        self.shards
            .iter()
            .enumerate()
            .filter_map(|(shard, s)| {
                let panics = s.panics.load(Ordering::Relaxed);
                let last = s.last_panic_ms.load(Ordering::Acquire);
                let since = (last != NEVER).then(|| now_ms.saturating_sub(last));
                let state = if s.dead.load(Ordering::Acquire) {
                    "dead"
                } else if since.is_some_and(|ms| ms < hold_ms) {
                    "restarted"
                } else {
                    return None;
                };
                Some(ShardProblem {
                    shard,
                    state,
                    panics,
                    since_panic_ms: since,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_reported_for_the_hold_period_then_forgotten() {
        let t0 = Instant::now();
        let h = ShardHealth::new(2, t0);
        let hold = Duration::from_secs(30);
        assert!(h.problems(t0, hold).is_empty());
        h.note_panic(1, t0 + Duration::from_secs(1));
        let p = h.problems(t0 + Duration::from_secs(2), hold);
        assert_eq!(
            p,
            vec![ShardProblem {
                shard: 1,
                state: "restarted",
                panics: 1,
                since_panic_ms: Some(1000),
            }]
        );
        assert!(h.is_alive(1));
        assert!(h.problems(t0 + Duration::from_secs(31), hold).is_empty());
        // Out-of-range shards are ignored.
        h.note_panic(7, t0);
        h.note_dead(7);
        assert!(!h.is_alive(7));
    }

    #[test]
    fn a_dead_shard_stays_reported() {
        let t0 = Instant::now();
        let h = ShardHealth::new(2, t0);
        h.note_dead(0);
        assert!(!h.is_alive(0));
        let p = h.problems(t0 + Duration::from_secs(3600), Duration::from_secs(1));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].state, "dead");
        assert_eq!(p[0].since_panic_ms, None);
    }
}
