//! Draining a node (issue 15): `SIGTERM`, or `satsuma-sfu drain` (which calls
//! `POST /v1/apps/{appId}/drain` on a running node with an app's secret), puts the node in the
//! draining state. From then on it refuses new sessions (`POST sessions/new` answers 503
//! `{"errorCode": "draining"}`) and `/healthz` answers 503 `{"status": "draining"}`, so the
//! coordinator's placement skips it and tells the participants on it to move (a new session on
//! another node, made by their clients; their E2EE state stays as it is). Calls on the sessions
//! it already holds keep working while they move, and `/livez` (liveness) stays 200. The process exits 0 once it holds no
//! session, or when the drain deadline (`--drain-timeout`) passes.
//!
//! [`Drain`] is the shared flag (lock-free reads on the API path) plus a notification for the
//! process's main task; [`DrainState`] is the sans-IO decision of when to exit.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Whether (and since when) this node is draining. Shared by the API handlers and `main`.
#[derive(Debug, Default)]
pub struct Drain {
    since: OnceLock<Instant>,
    started: Notify,
}

impl Drain {
    /// A node that is not draining.
    pub fn new() -> Drain {
        Drain::default()
    }

    /// Starts draining at `now`; `false` if the node was draining already (the first start
    /// counts).
    pub fn start(&self, now: Instant) -> bool {
        let first = self.since.set(now).is_ok();
        if first {
            self.started.notify_waiters();
            self.started.notify_one();
        }
        first
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.since.get().is_some()
    }

    /// When draining started.
    pub fn since(&self) -> Option<Instant> {
        self.since.get().copied()
    }

    /// Resolves once draining has started (at once if it has).
    pub async fn started(&self) {
        loop {
            let notified = self.started.notified();
            if self.is_draining() {
                return;
            }
            notified.await;
        }
    }
}

/// What a draining node does next ([`DrainState::poll`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainStep {
    /// Sessions remain and the deadline has not passed: look again later.
    Wait,
    /// No session left: exit.
    Empty,
    /// The deadline passed with sessions left (that many): exit anyway.
    Deadline(usize),
}

/// The exit decision of a draining node, fed the session count and the time.
#[derive(Debug, Clone, Copy)]
pub struct DrainState {
    started: Instant,
    deadline: Duration,
}

impl DrainState {
    /// Draining started at `started`; the node exits at the latest `deadline` after.
    pub fn new(started: Instant, deadline: Duration) -> DrainState {
        DrainState { started, deadline }
    }

    /// With `sessions` sessions left at `now`: wait, or exit (empty, or the deadline passed).
    pub fn poll(&self, now: Instant, sessions: usize) -> DrainStep {
        if sessions == 0 {
            DrainStep::Empty
        } else if now.saturating_duration_since(self.started) >= self.deadline {
            DrainStep::Deadline(sessions)
        } else {
            DrainStep::Wait
        }
    }

    /// How long draining has lasted at `now`.
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_exits_when_empty_or_at_its_deadline() {
        let t0 = Instant::now();
        let d = DrainState::new(t0, Duration::from_secs(30));
        assert_eq!(d.poll(t0, 3), DrainStep::Wait);
        assert_eq!(d.poll(t0 + Duration::from_secs(29), 1), DrainStep::Wait);
        assert_eq!(d.poll(t0 + Duration::from_secs(5), 0), DrainStep::Empty);
        assert_eq!(
            d.poll(t0 + Duration::from_secs(30), 2),
            DrainStep::Deadline(2)
        );
        assert_eq!(d.poll(t0 + Duration::from_secs(31), 0), DrainStep::Empty);
        assert_eq!(
            d.elapsed(t0 + Duration::from_secs(4)),
            Duration::from_secs(4)
        );
    }

    #[tokio::test]
    async fn the_first_start_counts_and_wakes_the_waiter() {
        let drain = std::sync::Arc::new(Drain::new());
        assert!(!drain.is_draining());
        let waiter = {
            let drain = drain.clone();
            tokio::spawn(async move { drain.started().await })
        };
        tokio::task::yield_now().await;
        let t0 = Instant::now();
        assert!(drain.start(t0));
        assert!(!drain.start(t0 + Duration::from_secs(1)));
        assert_eq!(drain.since(), Some(t0));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("no panic");
        // Once draining, waiting returns at once.
        tokio::time::timeout(Duration::from_secs(1), drain.started())
            .await
            .expect("at once");
    }
}
