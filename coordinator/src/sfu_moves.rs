//! Moving participants off an SFU node that is draining or down (issue 15).
//!
//! After each health check ([`crate::sfu_proxy::SfuPool::check_health`], every
//! `sfu_health_interval`, 1 s by default), every node this replica's check found unhealthy is
//! asked once more why: a draining node answers `/healthz` with 503 `{"status": "draining"}`
//! (`satsuma-sfu drain` or `SIGTERM`); anything else (no answer, refused connection, another
//! failure) is `down`. A draining node is evacuated at once (it says so); a healthy node is
//! taken as down only after [`DOWN_AFTER`] consecutive failed checks, so that one lost or slow
//! answer (a blip) moves nobody (a node already draining or down that stops answering stays
//! unhealthy at once). Placement skips a node from its first failed check on (new sessions go
//! elsewhere until a check passes again: that costs little, placing on a dead node costs a
//! join). Then each participant that holds a session on it gets a direct `move {sessions, reason}` ([`satsuma_wire::room::ServerMessage::Move`]):
//! its client makes a new session through the proxy (placed on a live node), publishes its
//! tracks there, pulls again what it pulled, and deletes the old session; its MLS state is
//! untouched. The order is repeated every [`RESEND`] while the participant still holds a
//! session there (a client that was away, or lost the first one). Nobody is told while no node
//! is healthy: the move would land where it started (e.g. the only node, whose shard panicked).
//!
//! Metrics: `satsuma_coord_sfu_moves_total{reason}` (sessions ordered off a node, each once) and
//! `satsuma_coord_sfu_evacuation_seconds` (first order until none of this replica's sessions
//! is left on the node).
//!
//! The decisions are in [`Evacuation`] (sans-IO: fed the nodes' states, the sessions and the
//! time; returns the orders); [`Moves`] is the thin driver the health loop runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use satsuma_wire::room::move_reason;

use crate::hub::RoomSlot;
use crate::server::App;

/// How often an order is repeated while the participant still holds the session there.
pub(crate) const RESEND: Duration = Duration::from_secs(3);

/// Consecutive failed health checks (rounds seeing [`NodeState::Down`]) after which a healthy
/// node is taken as down and its participants are moved. With the default 1-s health interval
/// a node killed outright is evacuated ~2 s after it died.
pub(crate) const DOWN_AFTER: u32 = 2;

/// One node's state as the health check saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeState {
    Healthy,
    Draining,
    Down,
}

impl NodeState {
    fn reason(self) -> Option<&'static str> {
        match self {
            NodeState::Healthy => None,
            NodeState::Draining => Some(move_reason::DRAINING),
            NodeState::Down => Some(move_reason::DOWN),
        }
    }
}

/// A session on some node: its room, its owner, its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlacedSession {
    pub(crate) room: usize,
    pub(crate) owner: u64,
    pub(crate) session_id: String,
    pub(crate) node: usize,
}

/// An order to send: participant `owner` of room `room` moves `sessions` (`reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Order {
    pub(crate) room: usize,
    pub(crate) owner: u64,
    pub(crate) sessions: Vec<String>,
    pub(crate) reason: &'static str,
}

/// What one round decided.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Round {
    pub(crate) orders: Vec<Order>,
    /// Sessions ordered off a node for the first time, by reason.
    pub(crate) first_orders: Vec<&'static str>,
    /// Nodes that had sessions ordered off and now hold none: `(node, seconds since the
    /// first order)`.
    pub(crate) evacuated: Vec<(usize, f64)>,
    /// Nodes that became unhealthy this round (for the log): `(node, reason)`.
    pub(crate) newly_unhealthy: Vec<(usize, &'static str)>,
}

/// The sans-IO evacuation state: per node, since when it is being evacuated and how many checks
/// in a row failed; per session, when its owner was last told.
#[derive(Debug)]
pub(crate) struct Evacuation {
    since: Vec<Option<Instant>>,
    evacuated: Vec<bool>,
    /// Consecutive rounds that saw the node `Down` (reset by any answer: healthy or draining).
    failed: Vec<u32>,
    told: HashMap<String, Instant>,
}

impl Evacuation {
    pub(crate) fn new(nodes: usize) -> Evacuation {
        Evacuation {
            since: vec![None; nodes],
            evacuated: vec![false; nodes],
            failed: vec![0; nodes],
            told: HashMap::new(),
        }
    }

    /// One round at `now` with the nodes' `states` as this round's health check saw them and
    /// every `sessions` of this replica. Each call is one check: a healthy node seen `Down` is
    /// taken as down from the [`DOWN_AFTER`]th call in a row on.
    pub(crate) fn round(
        &mut self,
        now: Instant,
        observed: &[NodeState],
        sessions: &[PlacedSession],
    ) -> Round {
        let states = self.damp(observed);
        let states = states.as_slice();
        let mut round = Round::default();
        for (i, state) in states.iter().enumerate() {
            let Some(since) = self.since.get_mut(i) else {
                continue;
            };
            match state.reason() {
                None => {
                    *since = None;
                    if let Some(e) = self.evacuated.get_mut(i) {
                        *e = false;
                    }
                }
                Some(reason) if since.is_none() => {
                    *since = Some(now);
                    round.newly_unhealthy.push((i, reason));
                }
                Some(_) => {}
            }
        }
        let mut by_owner: BTreeMap<(usize, u64, &'static str), Vec<String>> = BTreeMap::new();
        let mut occupied = vec![false; states.len()];
        // With no healthy node to go to, a move would land where it started (placement falls
        // back to the room's node): nobody is told until one is healthy. Placement skips a node
        // from its first failed check on, so this asks what the check saw, not the damped state.
        let somewhere = observed.contains(&NodeState::Healthy);
        for s in sessions.iter().filter(|_| somewhere) {
            let Some(reason) = states.get(s.node).and_then(|st| st.reason()) else {
                continue;
            };
            if let Some(o) = occupied.get_mut(s.node) {
                *o = true;
            }
            let due = match self.told.get(&s.session_id) {
                None => {
                    round.first_orders.push(reason);
                    true
                }
                Some(at) => now.saturating_duration_since(*at) >= RESEND,
            };
            if due {
                self.told.insert(s.session_id.clone(), now);
                by_owner
                    .entry((s.room, s.owner, reason))
                    .or_default()
                    .push(s.session_id.clone());
            }
        }
        if !somewhere {
            return round;
        }
        // Forget sessions that are gone (moved, closed).
        self.told
            .retain(|sid, _| sessions.iter().any(|s| &s.session_id == sid));
        for (i, since) in self.since.iter().enumerate() {
            let (Some(since), Some(false), Some(false)) = (
                since,
                occupied.get(i).copied(),
                self.evacuated.get(i).copied(),
            ) else {
                continue;
            };
            if let Some(e) = self.evacuated.get_mut(i) {
                *e = true;
            }
            round
                .evacuated
                .push((i, now.saturating_duration_since(*since).as_secs_f64()));
        }
        round.orders = by_owner
            .into_iter()
            .map(|((room, owner, reason), sessions)| Order {
                room,
                owner,
                sessions,
                reason,
            })
            .collect();
        round
    }

    /// The states the round acts on: a `Down` of a node that was healthy counts as `Healthy`
    /// until it is the [`DOWN_AFTER`]th in a row; a node already being evacuated (draining, or
    /// down) that stops answering is down at once.
    fn damp(&mut self, observed: &[NodeState]) -> Vec<NodeState> {
        observed
            .iter()
            .enumerate()
            .map(|(i, state)| {
                let Some(failed) = self.failed.get_mut(i) else {
                    return *state;
                };
                if *state != NodeState::Down {
                    *failed = 0;
                    return *state;
                }
                *failed = failed.saturating_add(1);
                let unhealthy = self.since.get(i).is_some_and(Option::is_some);
                if unhealthy || *failed >= DOWN_AFTER {
                    NodeState::Down
                } else {
                    NodeState::Healthy
                }
            })
            .collect()
    }
}

/// The driver: asks unhealthy nodes why, reads the rooms' sessions, sends the orders.
#[derive(Debug)]
pub(crate) struct Moves {
    evacuation: Evacuation,
    client: reqwest::Client,
}

impl Moves {
    pub(crate) fn new(nodes: usize) -> Moves {
        Moves {
            evacuation: Evacuation::new(nodes),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Why node `url` is unhealthy: `Draining` if its `/healthz` says so, else `Down`.
    async fn why(&self, url: &str) -> NodeState {
        let Ok(resp) = self.client.get(format!("{url}/healthz")).send().await else {
            return NodeState::Down;
        };
        if resp.status().is_success() {
            // Back between the two checks: the next round decides.
            return NodeState::Healthy;
        }
        let body = resp.bytes().await.unwrap_or_default();
        let draining = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_owned))
            .is_some_and(|s| s == "draining");
        if draining {
            NodeState::Draining
        } else {
            NodeState::Down
        }
    }

    /// One round after a health check.
    pub(crate) async fn run(&mut self, app: &App) {
        let mut states = Vec::with_capacity(app.sfu.nodes.len());
        for n in &app.sfu.nodes {
            if n.healthy.load(Ordering::Relaxed) {
                states.push(NodeState::Healthy);
            } else {
                states.push(self.why(&n.url).await);
            }
        }
        let slots: Vec<Arc<RoomSlot>> = app.hub.slots();
        let mut sessions = Vec::new();
        if states.iter().any(|s| *s != NodeState::Healthy) {
            for (room, slot) in slots.iter().enumerate() {
                let st = slot.state.lock();
                for (sid, placed) in &st.sfu_sessions {
                    let Some(owner) = st.room.sfu_session_owner(sid) else {
                        continue;
                    };
                    let node = app.sfu.node_of_session(sid).unwrap_or(*placed);
                    sessions.push(PlacedSession {
                        room,
                        owner,
                        session_id: sid.clone(),
                        node,
                    });
                }
            }
        }
        let round = self.evacuation.round(Instant::now(), &states, &sessions);
        for (node, reason) in &round.newly_unhealthy {
            let url = app.sfu.nodes.get(*node).map_or("?", |n| n.url.as_str());
            tracing::info!(node = %url, reason, "SFU node unhealthy: moving its participants to other nodes");
        }
        for reason in &round.first_orders {
            app.metrics.sfu_moves.with_label_values(&[reason]).inc();
        }
        for (node, secs) in &round.evacuated {
            let url = app.sfu.nodes.get(*node).map_or("?", |n| n.url.as_str());
            tracing::info!(node = %url, seconds = secs, "SFU node evacuated: no session of this replica left on it");
            app.metrics.sfu_evacuation_seconds.observe(*secs);
        }
        for order in round.orders {
            let Some(slot) = slots.get(order.room) else {
                continue;
            };
            tracing::debug!(room = %slot.name, participant = order.owner, sessions = ?order.sessions, reason = order.reason, "move order");
            app.hub.with_room(slot, |st| {
                st.room
                    .order_move(order.owner, order.sessions, order.reason);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(room: usize, owner: u64, sid: &str, node: usize) -> PlacedSession {
        PlacedSession {
            room,
            owner,
            session_id: sid.to_owned(),
            node,
        }
    }

    #[test]
    fn owners_on_an_unhealthy_node_are_told_once_per_resend_and_the_node_evacuates() {
        use NodeState::*;
        let t0 = Instant::now();
        let mut e = Evacuation::new(2);
        let sessions = vec![
            s(0, 1, "a", 0),
            s(0, 2, "b", 1),
            s(0, 2, "c", 1),
            s(1, 7, "d", 1),
        ];
        // All healthy: nothing.
        let r = e.round(t0, &[Healthy, Healthy], &sessions);
        assert_eq!(r, Round::default());
        // Node 1 drains: its owners are told, grouped per participant.
        let r = e.round(t0, &[Healthy, Draining], &sessions);
        assert_eq!(r.newly_unhealthy, vec![(1, "draining")]);
        assert_eq!(r.first_orders, vec!["draining"; 3]);
        assert_eq!(
            r.orders,
            vec![
                Order {
                    room: 0,
                    owner: 2,
                    sessions: vec!["b".into(), "c".into()],
                    reason: "draining"
                },
                Order {
                    room: 1,
                    owner: 7,
                    sessions: vec!["d".into()],
                    reason: "draining"
                },
            ]
        );
        // Within RESEND: not again.
        let r = e.round(t0 + Duration::from_secs(1), &[Healthy, Draining], &sessions);
        assert!(r.orders.is_empty() && r.first_orders.is_empty() && r.newly_unhealthy.is_empty());
        // Participant 2 moved (b and c gone, a new session on node 0); 7 did not: told again.
        let later = vec![s(0, 1, "a", 0), s(0, 2, "e", 0), s(1, 7, "d", 1)];
        let r = e.round(t0 + RESEND, &[Healthy, Draining], &later);
        assert_eq!(r.orders.len(), 1);
        assert_eq!(r.orders[0].owner, 7);
        assert!(r.first_orders.is_empty());
        assert!(r.evacuated.is_empty());
        // Everyone left node 1: evacuated once, with the time since the first order.
        let done = vec![s(0, 1, "a", 0), s(0, 2, "e", 0), s(1, 7, "f", 0)];
        let r = e.round(t0 + Duration::from_secs(4), &[Healthy, Down], &done);
        assert_eq!(r.evacuated, vec![(1, 4.0)]);
        let r = e.round(t0 + Duration::from_secs(5), &[Healthy, Down], &done);
        assert!(r.evacuated.is_empty());
    }

    #[test]
    fn nobody_moves_while_no_node_is_healthy() {
        use NodeState::*;
        let t0 = Instant::now();
        let mut e = Evacuation::new(2);
        let sessions = vec![s(0, 1, "a", 0), s(0, 2, "b", 1)];
        // A single node whose shard panicked, or every node down: nowhere to go (node 0's first
        // failed check makes placement skip it, though it is not taken as down yet).
        let r = e.round(t0, &[Down, Draining], &sessions);
        assert!(r.orders.is_empty() && r.first_orders.is_empty() && r.evacuated.is_empty());
        assert_eq!(r.newly_unhealthy, vec![(1, "draining")]);
        let r = e.round(t0 + Duration::from_secs(1), &[Down, Draining], &sessions);
        assert!(r.orders.is_empty() && r.first_orders.is_empty() && r.evacuated.is_empty());
        assert_eq!(r.newly_unhealthy, vec![(0, "down")]);
        // Node 0 back: node 1's participant is told.
        let r = e.round(t0 + Duration::from_secs(2), &[Healthy, Draining], &sessions);
        assert_eq!(r.orders.len(), 1);
        assert_eq!(r.orders[0].owner, 2);
    }

    #[test]
    fn a_node_that_comes_back_is_evacuated_again_from_scratch() {
        use NodeState::*;
        let t0 = Instant::now();
        let mut e = Evacuation::new(2);
        let sessions = vec![s(0, 1, "a", 0)];
        assert!(e.round(t0, &[Down, Healthy], &sessions).orders.is_empty());
        assert_eq!(e.round(t0, &[Down, Healthy], &sessions).orders.len(), 1);
        assert!(
            e.round(t0, &[Healthy, Healthy], &sessions)
                .orders
                .is_empty()
        );
        // Healthy again: down anew only after DOWN_AFTER failed checks.
        let r = e.round(t0 + Duration::from_millis(10), &[Down, Healthy], &sessions);
        assert!(r.newly_unhealthy.is_empty());
        let r = e.round(t0 + Duration::from_millis(20), &[Down, Healthy], &sessions);
        assert_eq!(r.newly_unhealthy, vec![(0, "down")]);
        // The session was told within RESEND: not yet again.
        assert!(r.orders.is_empty());
    }

    #[test]
    fn one_failed_check_moves_nobody_two_in_a_row_do() {
        use NodeState::*;
        assert_eq!(DOWN_AFTER, 2);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut e = Evacuation::new(2);
        let sessions = vec![s(0, 1, "a", 0), s(0, 2, "b", 1), s(1, 3, "c", 1)];
        assert_eq!(
            e.round(at(0), &[Healthy, Healthy], &sessions),
            Round::default()
        );
        // A blip: node 1 missed one check. Nobody is told, nothing is logged.
        assert_eq!(
            e.round(at(1000), &[Healthy, Down], &sessions),
            Round::default()
        );
        // It answers again: the count starts over, so the next single miss is a blip too.
        assert_eq!(
            e.round(at(2000), &[Healthy, Healthy], &sessions),
            Round::default()
        );
        assert_eq!(
            e.round(at(3000), &[Healthy, Down], &sessions),
            Round::default()
        );
        assert_eq!(
            e.round(at(4000), &[Healthy, Healthy], &sessions),
            Round::default()
        );
        // Down twice in a row: it is down, its participants are told.
        assert_eq!(
            e.round(at(5000), &[Healthy, Down], &sessions),
            Round::default()
        );
        let r = e.round(at(6000), &[Healthy, Down], &sessions);
        assert_eq!(r.newly_unhealthy, vec![(1, "down")]);
        assert_eq!(r.first_orders, vec!["down"; 2]);
        let owners: Vec<u64> = r.orders.iter().map(|o| o.owner).collect();
        assert_eq!(owners, vec![2, 3]);
        // It stays down (no new log line), and the order is repeated after RESEND.
        let r = e.round(at(6000) + RESEND, &[Healthy, Down], &sessions);
        assert!(r.newly_unhealthy.is_empty());
        assert_eq!(r.orders.len(), 2);
    }

    #[test]
    fn draining_moves_at_once_and_a_drained_node_that_stops_answering_stays_unhealthy() {
        use NodeState::*;
        let t0 = Instant::now();
        let mut e = Evacuation::new(2);
        let sessions = vec![s(0, 1, "a", 1), s(0, 2, "b", 1)];
        // The node says it drains: no second check needed.
        let r = e.round(t0, &[Healthy, Draining], &sessions);
        assert_eq!(r.newly_unhealthy, vec![(1, "draining")]);
        assert_eq!(r.orders.len(), 2);
        // Participant 1 moved; the node then exits (or is killed) before 2 did: a single failed
        // check does not make it healthy again, 2 is still told after RESEND.
        let left = vec![s(0, 1, "c", 0), s(0, 2, "b", 1)];
        let r = e.round(t0 + RESEND, &[Healthy, Down], &left);
        assert!(r.newly_unhealthy.is_empty(), "{r:?}");
        assert_eq!(r.orders.len(), 1);
        assert_eq!(r.orders[0].owner, 2);
        assert_eq!(r.orders[0].reason, "down");
    }
}
