//! Keyframe replay between shards: a new video leg asks its track's home shard for the packets
//! cached since the track's last keyframe ([`crate::keyframe_cache`]) and gets them at once,
//! instead of a keyframe request to the publisher and the wait for its answer (issue 18).
//!
//! ```text
//!  leg's shard                                    track's home shard
//!  activate_leg: Forwarder::await_replay(leg)
//!     PeerMsg::Subscribe ───────────────────────▶ (fans the track out to this shard from now)
//!  once the subscriber's transport is up:
//!     PeerMsg::ReplayRequest ───────────────────▶ Forwarder::replay_packets(track, rid)
//!  Forwarder::replay(leg, packets) ◀─────────── PeerMsg::Replay { packets (Arcs, no copy) }
//!     → LegWrites, then live packets
//!  nothing cached / refused: a fresh keyframe request, as without the cache
//! ```
//!
//! Messages between two shards arrive in order, so every live packet the leg's shard gets for the
//! track before the `Replay` was fanned out before the home shard answered: it is in the cache,
//! and the leg holds it back until the replay ([`crate::forward::DropReason::AwaitingReplay`]).

use std::mem;
use std::sync::Arc;

use str0m::media::{MediaKind, Rid};

use super::core::{Core, PeerMsg};
use super::media::paced;
use crate::forward::{LegKey, MediaPacket, REPLAY_WAIT, ReplayOutcome};
use crate::ids::{SessionId, ShardId, TrackId};
use crate::session::{LegState, Session};

impl Core {
    /// A new video leg (replay on): it waits for the replay, which it asks for now if its
    /// transport is up, else when it comes up ([`Core::replay_on_connect`], or the next
    /// housekeeping once ICE is connected again, [`Core::start_pending_replays`]; str0m would
    /// hold packets written before until the next write, and live packets are in the cache).
    pub(super) fn start_replay(
        &mut self,
        leg: LegKey,
        track: TrackId,
        home: ShardId,
        rid: Option<Rid>,
        connected: bool,
    ) {
        if !connected {
            let until = self.now + self.ctx.config.session_timeout;
            self.forwarder.await_replay(leg, until);
            return;
        }
        self.forwarder.replay_requested(leg, self.now + REPLAY_WAIT);
        let shard = self.id;
        self.send_to_shard(
            home,
            PeerMsg::ReplayRequest {
                track,
                leg,
                rid,
                shard,
            },
        );
    }

    /// A subscriber's transport came up for the first time (replay on): legs waiting for a
    /// replay ask for it, the other video legs for a keyframe (as
    /// [`Core::request_keyframes_for`] does without the cache).
    pub(super) fn replay_on_connect(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        let legs: Vec<(LegKey, TrackId, ShardId)> = session
            .subscriptions
            .iter()
            .filter(|(_, s)| s.state == LegState::Active && s.kind == MediaKind::Video)
            .map(|(mid, s)| {
                let leg = LegKey {
                    session: id,
                    mid: *mid,
                };
                (leg, s.track, s.home)
            })
            .collect();
        for (leg, track, home) in legs {
            let Some(rid) = self.forwarder.leg_preference(leg) else {
                continue;
            };
            if self.forwarder.leg_replay_requested(leg) {
                continue;
            }
            if self.forwarder.leg_awaits_replay(leg) {
                self.start_replay(leg, track, home, rid, true);
            } else if !self.forwarder.leg_has_keyframe(leg) {
                self.request_pli(home, track, rid, true);
            }
        }
    }

    /// Housekeeping: legs that wait for a replay they could not ask for (their session's ICE
    /// was not connected) ask once it is.
    pub(super) fn start_pending_replays(&mut self) {
        for leg in self.forwarder.legs_awaiting_replay_request() {
            let connected = self
                .sessions
                .get(&leg.session)
                .is_some_and(Session::is_connected);
            if let Some((track, home, rid)) = self.forwarder.leg_source(leg)
                && connected
            {
                self.start_replay(leg, track, home, rid, true);
            }
        }
    }

    /// The home shard: a new leg on `track` (on shard `shard`) asks for the cached packets of
    /// layer `rid`. Always answers, with nothing when nothing usable is cached.
    pub(super) fn replay_request(
        &mut self,
        track: TrackId,
        leg: LegKey,
        rid: Option<Rid>,
        shard: ShardId,
    ) {
        let packets = if self.ctx.config.keyframe_replay {
            self.forwarder
                .replay_packets(track, rid, self.now)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        self.send_to_shard(
            shard,
            PeerMsg::Replay {
                track,
                leg,
                packets,
            },
        );
    }

    /// The leg's shard: the answer to [`Core::replay_request`]. The leg gets the packets, or
    /// (nothing cached, or it cannot take them) asks for a keyframe the way a new leg does
    /// without a cache: a fresh request once its transport is up.
    pub(super) fn replay_answer(
        &mut self,
        track: TrackId,
        leg: LegKey,
        packets: Vec<Arc<MediaPacket>>,
    ) {
        let mut writes = mem::take(&mut self.writes);
        let outcome = self
            .forwarder
            .replay(track, leg, &packets, self.now, &mut writes);
        let paced = paced(
            &self.ctx.config,
            packets.first().is_some_and(|p| p.rid.is_some()),
        );
        for w in writes.drain(..) {
            self.write_leg(w, paced);
        }
        self.writes = writes;
        // A keyframe the SFU had before the subscriber's session existed was sent before its
        // participant joined, most likely under an E2EE epoch it cannot read (a joiner reads
        // frames from the sender's key change on, and every sender emits a keyframe then). It
        // gets the replay all the same, and the publisher is *not* asked: a keyframe request
        // that reaches a browser just before its key change makes it ignore the key change's
        // own keyframe request (Chromium takes one per 300 ms), and the joiner waits for the
        // sender's retry (measured: 8 of 10 bench joins waited 218-493 ms when the SFU asked).
        // Counted apart (`replayed_old`).
        let (created, connected) = self
            .sessions
            .get(&leg.session)
            .map_or((None, false), |s| (Some(s.created), s.is_connected()));
        let older = packets
            .first()
            .zip(created)
            .is_some_and(|(p, created)| p.arrival < created);
        let metrics = &self.ctx.metrics;
        let result = match outcome {
            ReplayOutcome::Replayed(n) => {
                metrics.keyframe_replay_packets.inc_by(n as u64);
                tracing::debug!(
                    ?leg,
                    ?track,
                    packets = n,
                    older,
                    "keyframe replayed to a new leg"
                );
                if older { "replayed_old" } else { "replayed" }
            }
            ReplayOutcome::Empty => "empty",
            ReplayOutcome::Refused => "refused",
        };
        metrics.keyframe_replays.with_label_values(&[result]).inc();
        if matches!(outcome, ReplayOutcome::Replayed(_)) || self.forwarder.leg_has_keyframe(leg) {
            return;
        }
        if let Some((track, home, rid)) = self.forwarder.leg_source(leg)
            && connected
        {
            self.request_pli(home, track, rid, true);
        }
    }
}
