//! The shard's side of the relay between SFU nodes: tracks published on another node and pulled
//! by sessions here (*relayed tracks*), and this node's tracks pulled by other nodes.
//!
//! **Pulled from another node.** A relayed track has a home shard here, like a local
//! publication: the shard of the session that first pulled it. Its publication in the
//! home shard's [`Forwarder`](crate::forward::Forwarder) has no local session behind it (its
//! owner is the publishing session's id on the other node, which no session here has), so legs
//! subscribe to it, rebase it and get its packets exactly as for a local track: the relay's
//! packets enter [`Core::handle_relay`] once per node and fan out to the shards with legs on it.
//! The legs' keyframe requests are throttled by the forwarder as for a local publisher and go
//! to the origin node ([`RelayAction::Keyframe`]); the subscribers' NACKs are answered by each
//! leg's RTX cache here. A relayed track without legs for [`RELEASE_AFTER`] is released
//! ([`RelayAction::Release`]): the relay unsubscribes it, and the link closes once idle.
//!
//! **Pulled by other nodes.** The relay is one more subscriber shard, [`RELAY_SHARD`], of a
//! local publication: the relay's bridge subscribes it when some peer pulls the track, and the
//! publisher's shard hands each packet to it once (not once per remote subscriber), which the
//! driver passes to the relay ([`crate::relay::media::to_relay`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Rid};

use super::core::{Action, Core};
use crate::forward::{KeyframeTarget, MediaPacket};
use crate::ids::{SessionId, ShardId, TrackId};
use crate::metrics::PacketDrop;
use crate::relay::RemoteTrackId;

/// The shard id of the relay as a subscriber of local publications (no real shard has it).
pub const RELAY_SHARD: ShardId = usize::MAX;

/// A relayed track without legs for this long is released (long enough for a pulling client
/// to answer the SFU's offer, which activates its leg).
pub(crate) const RELEASE_AFTER: Duration = Duration::from_secs(15);

/// The m-line id a relayed track's publication carries in the forwarder (no local m-line).
const RELAY_MID: &str = "relay";

/// What the relay tells the home shard of a relayed track.
#[derive(Debug)]
pub enum RelayInput {
    /// A track of another node is relayed here; its publication lives on this shard.
    Publish {
        /// The local id pulls resolve to.
        track: TrackId,
        /// The relay's handle of it.
        remote: RemoteTrackId,
        /// The publishing session (on the other node).
        session: SessionId,
        /// Audio or video.
        kind: MediaKind,
    },
    /// A packet of a relayed track.
    Media {
        /// The track.
        track: TrackId,
        /// The packet, as its publisher sent it to the origin node.
        packet: Arc<MediaPacket>,
    },
    /// A relayed track is gone (unpublished on its node, or its link is refused).
    Ended {
        /// The track.
        track: TrackId,
    },
}

impl RelayInput {
    /// Whether losing this on a full inbox is acceptable (media: the legs' NACKs and keyframe
    /// requests repair it).
    pub(crate) fn is_lossy(&self) -> bool {
        matches!(self, RelayInput::Media { .. })
    }
}

/// What the shard asks of the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayAction {
    /// Ask the origin node for a keyframe of a relayed track (the throttle passed it).
    Keyframe {
        /// The relay's handle.
        remote: RemoteTrackId,
        /// Layer.
        rid: Option<Rid>,
        /// PLI or FIR.
        kind: KeyframeRequestKind,
        /// The leg asking has had no keyframe yet.
        fresh: bool,
    },
    /// Nobody here pulls this relayed track any more: unsubscribe it.
    Release {
        /// The local id.
        track: TrackId,
    },
}

#[derive(Debug)]
struct Relayed {
    remote: RemoteTrackId,
    /// Since when no shard has legs on it.
    unused_since: Option<Instant>,
}

/// The relayed tracks whose home is this shard.
#[derive(Debug, Default)]
pub(super) struct RelayedTracks {
    tracks: HashMap<TrackId, Relayed>,
}

impl RelayedTracks {
    pub(super) fn contains(&self, track: TrackId) -> bool {
        self.tracks.contains_key(&track)
    }
}

impl Core {
    /// An input from the relay for a relayed track of this shard.
    pub fn handle_relay(&mut self, now: Instant, input: RelayInput) {
        self.now = now;
        match input {
            RelayInput::Publish {
                track,
                remote,
                session,
                kind,
            } => {
                self.forwarder
                    .publish(track, session, Mid::from(RELAY_MID), kind, now);
                self.relayed.tracks.insert(
                    track,
                    Relayed {
                        remote,
                        unused_since: Some(now),
                    },
                );
            }
            RelayInput::Media { track, packet } => {
                if self.relayed.contains(track) {
                    self.ctx.metrics.rtp_in.inc();
                    self.fanout(track, packet);
                } else {
                    self.dropped(PacketDrop::UnpublishedTrack);
                }
            }
            RelayInput::Ended { track } => {
                if self.relayed.tracks.remove(&track).is_some() {
                    self.end_publication(track);
                }
            }
        }
        self.settle();
    }

    /// A relayed track's publication ends: its legs everywhere end.
    fn end_publication(&mut self, track: TrackId) {
        self.speakers.forget(track);
        for shard in self.forwarder.unpublish(track) {
            self.send_to_shard(shard, super::core::PeerMsg::TrackEnded { track });
        }
    }

    /// If `track` is relayed here: ends it and releases it from the relay (it was collected
    /// for silence, or is no longer wanted). False for local tracks.
    pub(super) fn release_relayed(&mut self, track: TrackId) -> bool {
        if self.relayed.tracks.remove(&track).is_none() {
            return false;
        }
        self.end_publication(track);
        self.actions
            .push_back(Action::Relay(RelayAction::Release { track }));
        true
    }

    /// A keyframe request for `track`; true when it is a relayed track (then it went through
    /// the throttle and, if let through, to the origin node).
    pub(super) fn relay_keyframe(
        &mut self,
        track: TrackId,
        rid: Option<Rid>,
        kind: KeyframeRequestKind,
        fresh: bool,
    ) -> bool {
        let Some(remote) = self.relayed.tracks.get(&track).map(|r| r.remote) else {
            return false;
        };
        if let Some(target) = self.forwarder.keyframe_request(track, rid, fresh, self.now) {
            self.actions.push_back(Action::Relay(RelayAction::Keyframe {
                remote,
                rid: target.rid,
                kind,
                fresh,
            }));
        }
        true
    }

    /// A keyframe request the throttle owed; true when it is for a relayed track (then it
    /// went to the origin node).
    pub(super) fn relay_owed_keyframe(&mut self, track: TrackId, target: &KeyframeTarget) -> bool {
        let Some(remote) = self.relayed.tracks.get(&track).map(|r| r.remote) else {
            return false;
        };
        self.actions.push_back(Action::Relay(RelayAction::Keyframe {
            remote,
            rid: target.rid,
            kind: KeyframeRequestKind::Pli,
            fresh: false,
        }));
        true
    }

    /// After a panic reset: every relayed track of this shard is released (pulls made after
    /// the reset relay it again).
    pub(super) fn relay_reset(&mut self) {
        let tracks: Vec<TrackId> = self.relayed.tracks.drain().map(|(t, _)| t).collect();
        for track in tracks {
            self.actions
                .push_back(Action::Relay(RelayAction::Release { track }));
        }
    }

    /// Releases relayed tracks that had no legs for [`RELEASE_AFTER`].
    pub(super) fn relay_housekeeping(&mut self) {
        let now = self.now;
        let mut release = Vec::new();
        for (track, r) in &mut self.relayed.tracks {
            if self.forwarder.subscriber_shard_count(*track) > 0 {
                r.unused_since = None;
                continue;
            }
            let since = *r.unused_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= RELEASE_AFTER {
                release.push(*track);
            }
        }
        for track in release {
            self.release_relayed(track);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::directory::Directory;
    use crate::metrics::Metrics;
    use crate::shard::core::{CoreContext, PeerMsg};

    fn core(now: Instant) -> Core {
        let ctx = Arc::new(CoreContext {
            config: Config::default(),
            directory: Arc::new(Directory::default()),
            metrics: Metrics::new(),
            candidates: vec!["127.0.0.1:9".parse().unwrap()],
            tcp_candidates: Vec::new(),
        });
        Core::new(0, 2, ctx, now)
    }

    fn packet(seq: u64, now: Instant) -> Arc<MediaPacket> {
        Arc::new(MediaPacket::test_video(seq, now))
    }

    fn actions(c: &mut Core) -> Vec<Action> {
        std::iter::from_fn(|| c.poll_action()).collect()
    }

    #[test]
    fn a_relayed_track_fans_out_asks_the_origin_for_keyframes_and_is_released_unused() {
        let mut now = Instant::now();
        let mut c = core(now);
        let (track, remote) = (TrackId(7), RemoteTrackId(3));
        let session = SessionId::random();
        c.handle_relay(
            now,
            RelayInput::Publish {
                track,
                remote,
                session,
                kind: MediaKind::Video,
            },
        );
        // Shard 1 has a leg on it: each relayed packet goes there once.
        c.handle_peer(now, PeerMsg::Subscribe { track, shard: 1 });
        c.handle_relay(
            now,
            RelayInput::Media {
                track,
                packet: packet(1, now),
            },
        );
        let a = actions(&mut c);
        assert!(
            matches!(a.as_slice(), [Action::ToShard(1, PeerMsg::Media { track: t, packet })] if *t == track && packet.seq == 1),
            "{a:?}"
        );
        // A media packet of a track that is not relayed here is dropped.
        c.handle_relay(
            now,
            RelayInput::Media {
                track: TrackId(8),
                packet: packet(1, now),
            },
        );
        assert!(actions(&mut c).is_empty());

        // The legs' keyframe requests pass the throttle once, then go to the origin.
        let pli = |fresh| PeerMsg::KeyframeRequest {
            track,
            rid: None,
            kind: KeyframeRequestKind::Pli,
            fresh,
        };
        c.handle_peer(now, pli(true));
        let a = actions(&mut c);
        let expected = RelayAction::Keyframe {
            remote,
            rid: None,
            kind: KeyframeRequestKind::Pli,
            fresh: true,
        };
        assert!(
            matches!(a.as_slice(), [Action::Relay(r)] if *r == expected),
            "{a:?}"
        );
        c.handle_peer(now, pli(false));
        assert!(actions(&mut c).is_empty(), "throttled");

        // Without legs for RELEASE_AFTER it is released, and its publication is gone.
        c.handle_peer(now, PeerMsg::Unsubscribe { track, shard: 1 });
        now += Duration::from_secs(1);
        c.handle_timeout(now);
        // The throttled request is owed (no keyframe answered the first): it goes out now;
        // the track is not released yet.
        let a = actions(&mut c);
        assert!(
            matches!(
                a.as_slice(),
                [Action::Relay(RelayAction::Keyframe { fresh: false, .. })]
            ),
            "{a:?}"
        );
        now += RELEASE_AFTER;
        c.handle_timeout(now);
        now += Duration::from_millis(300);
        c.handle_timeout(now);
        let a = actions(&mut c);
        assert!(
            a.iter().any(
                |a| matches!(a, Action::Relay(RelayAction::Release { track: t }) if *t == track)
            ),
            "{a:?}"
        );
        c.handle_peer(now, PeerMsg::Subscribe { track, shard: 1 });
        let a = actions(&mut c);
        assert!(
            matches!(a.as_slice(), [Action::ToShard(1, PeerMsg::TrackEnded { track: t })] if *t == track),
            "a late leg on a released track ends: {a:?}"
        );
    }
}
