//! The bridge between the relay and the rest of the node: one tokio task that routes, holding
//! only id maps (the decisions are the relay core's and the shards' cores').
//!
//! * **Which node holds a session.** With the relay on, a session id names its node: its first
//!   two bytes are the node's tag ([`node_tag`], the start of the SHA-256 of the node name), the
//!   rest random ([`SessionId::tagged`]). A pull (`tracks/new`, `tracks/update`) of a track of a
//!   session that is not on this node is resolved before the shard sees it
//!   ([`BridgeHandle::resolve_tracks`]): the peer with that tag is asked for the track over the
//!   relay (one subscription per track and node, whatever the number of pulls); once it
//!   announces it, the track gets a local id whose home is the pulling session's shard
//!   ([`RelayInput::Publish`]) and a name in the directory
//!   ([`Directory::publish_remote`]), so the shard resolves the pull as for a local track.
//!   An app written for Cloudflare's API changes nothing: the session id it got from node A is
//!   the one it passes to node B.
//! * **Relay → shards.** Media of a relayed track goes to its home shard
//!   ([`RelayInput::Media`]), which fans it out to the shards with legs on it. On the origin
//!   node, [`RelayEvent::LocalTrackWanted`] subscribes [`RELAY_SHARD`] to the publisher's shard
//!   (and `LocalTrackUnwanted` unsubscribes it), and a peer's keyframe request becomes the
//!   keyframe request of a leg.
//! * **Directory → relay.** Every local track published or gone is published to or withdrawn
//!   from the relay ([`Directory::set_listener`]).
//! * **Shards → relay.** Keyframe requests and packets go straight to the [`RelayHandle`];
//!   a relayed track nobody pulls any more is released here ([`BridgeHandle::release`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use str0m::media::{KeyframeRequestKind, MediaKind, Rid};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::core::{RelayEvent, RemoteTrackId};
use super::driver::RelayHandle;
use super::media::from_relay;
use super::metrics::RelayMetrics;
use super::wire::{KeyframeKind, LayerDemand, TrackKind, TrackRef};
use crate::api::types::{Location, TrackObject};
use crate::directory::{Directory, PublishedTrack, TrackChange};
use crate::ids::{SessionId, ShardId, TrackId};
use crate::shard::{PeerMsg, RELAY_SHARD, RelayAction, RelayInput, ShardMsg};

/// How long a pull waits for the origin node to announce a track.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A node's tag: the first two bytes of the SHA-256 of its name. Session ids made on the node
/// start with it.
pub fn node_tag(node: &str) -> [u8; 2] {
    let h = Sha256::digest(node.as_bytes());
    [h[0], h[1]]
}

/// What a shard's driver needs of the relay.
#[derive(Debug, Clone)]
pub struct ShardRelay {
    /// Packets and keyframe requests.
    pub handle: RelayHandle,
    /// Releases.
    pub bridge: BridgeHandle,
}

impl ShardRelay {
    /// A subscriber shard's message to the relay: a packet of a local track some peer node pulls
    /// goes to the relay once. (The relay learns of ended tracks from the directory.)
    pub fn local_media(&self, msg: PeerMsg) {
        if let PeerMsg::Media { track, packet } = msg {
            self.handle
                .local_media(super::media::to_relay(track.0, &packet));
        }
    }

    /// Carries out what a shard's relayed-track legs ask of the relay.
    pub fn act(&self, action: RelayAction) {
        match action {
            RelayAction::Keyframe {
                remote,
                rid,
                kind,
                fresh,
            } => {
                let kind = match kind {
                    KeyframeRequestKind::Fir => KeyframeKind::Fir,
                    _ => KeyframeKind::Pli,
                };
                self.handle
                    .request_keyframe(remote, rid.map(|r| r.to_string()), kind, fresh);
            }
            RelayAction::Release { track } => self.bridge.release(track),
        }
    }
}

type RemoteKey = (Arc<str>, SessionId, String);

#[derive(Debug)]
enum BridgeMsg {
    Resolve {
        key: RemoteKey,
        shard: ShardId,
        reply: oneshot::Sender<bool>,
    },
    Cancel {
        key: RemoteKey,
    },
    Release {
        track: TrackId,
    },
}

/// The API's and the shards' side of the bridge (cheap to clone).
#[derive(Debug, Clone)]
pub struct BridgeHandle {
    tx: mpsc::UnboundedSender<BridgeMsg>,
    tag: [u8; 2],
}

impl BridgeHandle {
    /// This node's tag (new session ids start with it).
    pub fn tag(&self) -> [u8; 2] {
        self.tag
    }

    /// Nobody here pulls the relayed track `track` any more (its home shard ended it).
    pub fn release(&self, track: TrackId) {
        let _ = self.tx.send(BridgeMsg::Release { track });
    }

    /// Makes sure the remote tracks among `tracks` (pulls of sessions on other nodes) are
    /// relayed here and named in the directory, waiting up to [`RESOLVE_TIMEOUT`] for each.
    /// Pulls that cannot be resolved are left to the shard, which answers them `not_found`.
    pub async fn resolve_tracks(
        &self,
        directory: &Directory,
        app: &Arc<str>,
        shard: ShardId,
        tracks: &[TrackObject],
    ) {
        for t in tracks {
            if t.location != Some(Location::Remote) {
                continue;
            }
            let (Some(sid), Some(name)) = (&t.session_id, &t.track_name) else {
                continue;
            };
            let Some(session) = SessionId::parse(sid) else {
                continue;
            };
            if session.tag() == self.tag
                || directory.session_shard(app, session).is_some()
                || directory.lookup(app, session, name).is_some()
            {
                continue;
            }
            let key = (Arc::clone(app), session, name.clone());
            let (reply, rx) = oneshot::channel();
            let msg = BridgeMsg::Resolve {
                key: key.clone(),
                shard,
                reply,
            };
            if self.tx.send(msg).is_err() {
                return;
            }
            match tokio::time::timeout(RESOLVE_TIMEOUT, rx).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::info!(%session, name, "relayed track not announced in time");
                    let _ = self.tx.send(BridgeMsg::Cancel { key });
                }
            }
        }
    }
}

/// The bridge's receiving end, until [`Bridge::start`] starts it.
#[derive(Debug)]
pub struct BridgeInbox {
    rx: mpsc::UnboundedReceiver<BridgeMsg>,
}

/// A handle and the inbox behind it, for node `node` whose peers are `peers`.
pub fn channel(node: &str) -> (BridgeHandle, BridgeInbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        BridgeHandle {
            tx,
            tag: node_tag(node),
        },
        BridgeInbox { rx },
    )
}

#[derive(Debug)]
struct Remote {
    track: TrackId,
    home: ShardId,
    key: RemoteKey,
    ready: bool,
    waiters: Vec<oneshot::Sender<bool>>,
}

#[derive(Debug)]
struct Local {
    shard: ShardId,
    pulled: bool,
}

/// The bridge task's state (see the module docs).
pub struct Bridge {
    relay: RelayHandle,
    directory: Arc<Directory>,
    shards: Vec<mpsc::Sender<ShardMsg>>,
    metrics: RelayMetrics,
    peers_by_tag: HashMap<[u8; 2], String>,
    remote: HashMap<RemoteTrackId, Remote>,
    by_key: HashMap<RemoteKey, RemoteTrackId>,
    by_track: HashMap<TrackId, RemoteTrackId>,
    local: HashMap<u64, Local>,
}

impl Bridge {
    /// Starts the bridge of node `node` with peer nodes `peers`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        node: &str,
        peers: impl IntoIterator<Item = String>,
        relay: RelayHandle,
        events: mpsc::Receiver<RelayEvent>,
        inbox: BridgeInbox,
        directory: Arc<Directory>,
        shards: Vec<mpsc::Sender<ShardMsg>>,
        metrics: RelayMetrics,
    ) -> JoinHandle<()> {
        let own = node_tag(node);
        let mut peers_by_tag = HashMap::new();
        for peer in peers {
            let tag = node_tag(&peer);
            if tag == own {
                tracing::warn!(
                    peer,
                    node,
                    "relay peer has this node's tag: its sessions cannot be pulled from here"
                );
                continue;
            }
            if let Some(other) = peers_by_tag.insert(tag, peer.clone()) {
                tracing::warn!(
                    peer,
                    other,
                    "two relay peers share a tag: pulls of their sessions go to {peer}"
                );
            }
        }
        let (changes_tx, changes) = mpsc::unbounded_channel();
        directory.set_listener(changes_tx);
        let bridge = Bridge {
            relay,
            directory,
            shards,
            metrics,
            peers_by_tag,
            remote: HashMap::new(),
            by_key: HashMap::new(),
            by_track: HashMap::new(),
            local: HashMap::new(),
        };
        tokio::spawn(bridge.run(events, inbox.rx, changes))
    }

    async fn run(
        mut self,
        mut events: mpsc::Receiver<RelayEvent>,
        mut inbox: mpsc::UnboundedReceiver<BridgeMsg>,
        mut changes: mpsc::UnboundedReceiver<TrackChange>,
    ) {
        loop {
            tokio::select! {
                e = events.recv() => match e {
                    Some(e) => self.event(e).await,
                    None => return,
                },
                Some(m) = inbox.recv() => self.message(m).await,
                Some(c) = changes.recv() => self.change(c),
            }
        }
    }

    async fn to_shard(&self, shard: ShardId, msg: ShardMsg) {
        if let Some(tx) = self.shards.get(shard) {
            let _ = tx.send(msg).await;
        }
    }

    async fn message(&mut self, m: BridgeMsg) {
        match m {
            BridgeMsg::Resolve { key, shard, reply } => {
                if self.directory.lookup(&key.0, key.1, &key.2).is_some() {
                    let _ = reply.send(true);
                    return;
                }
                if let Some(r) = self.by_key.get(&key).and_then(|h| self.remote.get_mut(h)) {
                    r.waiters.push(reply);
                    return;
                }
                let Some(peer) = self.peers_by_tag.get(&key.1.tag()).cloned() else {
                    let _ = reply.send(false);
                    return;
                };
                let track = self.directory.next_track_id();
                let track_ref = TrackRef::new(&*key.0, key.1.to_string(), key.2.clone());
                let Some(handle) = self
                    .relay
                    .subscribe(&peer, track_ref, track.0, LayerDemand::All)
                    .await
                else {
                    let _ = reply.send(false);
                    return;
                };
                self.by_key.insert(key.clone(), handle);
                self.by_track.insert(track, handle);
                self.remote.insert(
                    handle,
                    Remote {
                        track,
                        home: shard,
                        key,
                        ready: false,
                        waiters: vec![reply],
                    },
                );
            }
            BridgeMsg::Cancel { key } => {
                let pending = self
                    .by_key
                    .get(&key)
                    .and_then(|h| self.remote.get(h))
                    .filter(|r| !r.ready)
                    .map(|r| r.track);
                if let Some(track) = pending {
                    self.forget(track);
                }
            }
            BridgeMsg::Release { track } => self.forget(track),
        }
    }

    /// Unsubscribes a relayed track and forgets its name.
    fn forget(&mut self, track: TrackId) {
        let Some(handle) = self.by_track.remove(&track) else {
            return;
        };
        let Some(r) = self.remote.remove(&handle) else {
            return;
        };
        self.by_key.remove(&r.key);
        self.relay.unsubscribe(track.0);
        self.directory
            .unpublish_remote(&r.key.0, r.key.1, &r.key.2, track);
        for w in r.waiters {
            let _ = w.send(false);
        }
    }

    async fn event(&mut self, e: RelayEvent) {
        match e {
            RelayEvent::TrackReady {
                remote,
                kind,
                params,
            } => {
                let Some(r) = self.remote.get_mut(&remote) else {
                    return;
                };
                let waiters = std::mem::take(&mut r.waiters);
                if !r.ready {
                    r.ready = true;
                    let (track, home, key) = (r.track, r.home, r.key.clone());
                    let kind = match kind {
                        TrackKind::Audio => MediaKind::Audio,
                        TrackKind::Video => MediaKind::Video,
                    };
                    let input = RelayInput::Publish {
                        track,
                        remote,
                        session: key.1,
                        kind,
                    };
                    self.to_shard(home, ShardMsg::Relay(input)).await;
                    let entry = PublishedTrack {
                        track,
                        shard: home,
                        kind,
                        params,
                    };
                    self.directory.publish_remote(&key.0, key.1, &key.2, entry);
                }
                for w in waiters {
                    let _ = w.send(true);
                }
            }
            RelayEvent::TrackEnded { remote, reason } => {
                let Some(r) = self.remote.remove(&remote) else {
                    return;
                };
                tracing::debug!(session = %r.key.1, name = r.key.2, ?reason, "relayed track ended");
                self.by_key.remove(&r.key);
                self.by_track.remove(&r.track);
                if r.ready {
                    self.directory
                        .unpublish_remote(&r.key.0, r.key.1, &r.key.2, r.track);
                    let input = RelayInput::Ended { track: r.track };
                    self.to_shard(r.home, ShardMsg::Relay(input)).await;
                }
                for w in r.waiters {
                    let _ = w.send(false);
                }
            }
            RelayEvent::Media { remote, media } => {
                let Some(r) = self.remote.get(&remote).filter(|r| r.ready) else {
                    return;
                };
                let packet = Arc::new(from_relay(&media, Instant::now()));
                let msg = ShardMsg::Relay(RelayInput::Media {
                    track: r.track,
                    packet,
                });
                if let Some(tx) = self.shards.get(r.home)
                    && tx.try_send(msg).is_err()
                {
                    self.metrics.drop("shard_queue_full");
                }
            }
            RelayEvent::LocalTrackWanted { id, .. } => {
                let Some(l) = self.local.get_mut(&id).filter(|l| !l.pulled) else {
                    return;
                };
                l.pulled = true;
                let msg = PeerMsg::Subscribe {
                    track: TrackId(id),
                    shard: RELAY_SHARD,
                };
                let shard = l.shard;
                self.to_shard(shard, ShardMsg::Peer(msg)).await;
            }
            RelayEvent::LocalTrackUnwanted { id } => {
                let Some(l) = self.local.get_mut(&id).filter(|l| l.pulled) else {
                    return;
                };
                l.pulled = false;
                let msg = PeerMsg::Unsubscribe {
                    track: TrackId(id),
                    shard: RELAY_SHARD,
                };
                let shard = l.shard;
                self.to_shard(shard, ShardMsg::Peer(msg)).await;
            }
            RelayEvent::KeyframeRequest {
                id,
                rid,
                kind,
                fresh,
            } => {
                let Some(shard) = self.local.get(&id).map(|l| l.shard) else {
                    return;
                };
                let msg = PeerMsg::KeyframeRequest {
                    track: TrackId(id),
                    rid: rid.as_deref().map(Rid::from),
                    kind: match kind {
                        KeyframeKind::Pli => KeyframeRequestKind::Pli,
                        KeyframeKind::Fir => KeyframeRequestKind::Fir,
                    },
                    fresh,
                };
                self.to_shard(shard, ShardMsg::Peer(msg)).await;
            }
        }
    }

    fn change(&mut self, c: TrackChange) {
        match c {
            TrackChange::Published {
                app,
                session,
                name,
                track,
            } => {
                self.local.insert(
                    track.track.0,
                    Local {
                        shard: track.shard,
                        pulled: false,
                    },
                );
                let kind = match track.kind {
                    MediaKind::Audio => TrackKind::Audio,
                    MediaKind::Video => TrackKind::Video,
                };
                self.relay.publish(
                    track.track.0,
                    TrackRef::new(&*app, session.to_string(), name),
                    kind,
                    track.params,
                );
            }
            TrackChange::Unpublished { track } => {
                self.local.remove(&track.0);
                self.relay.unpublish(track.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_session_ids_name_their_node() {
        let a = node_tag("sfu-a");
        assert_eq!(a, node_tag("sfu-a"));
        assert_ne!(a, node_tag("sfu-b"));
        for _ in 0..100 {
            let id = SessionId::tagged(a);
            assert_eq!(id.tag(), a);
            assert_eq!(SessionId::parse(&id.to_string()), Some(id));
        }
        assert_ne!(SessionId::tagged(a), SessionId::tagged(a));
    }
}
