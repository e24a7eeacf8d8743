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

/// A relayed track without legs for this long is released.
pub(crate) const RELEASE_AFTER: Duration = Duration::from_secs(5);

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
