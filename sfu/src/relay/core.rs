//! The relay's sans-IO core: plain state fed with events and the current time, producing
//! [`Action`]s (what to send, connect or close) for its driver and [`RelayEvent`]s for the SFU.
//!
//! One `RelayCore` lives on each node. For every peer node it keeps one link:
//!
//! * **origin half**: the tracks published on this node that the peer pulls, with the layers it
//!   wants. A packet of such a track becomes one datagram per pulling peer — however many
//!   subscribers that peer has — and is kept a short while for NACKs from that peer.
//! * **subscriber half**: the peer's tracks that subscribers on this node pull. However many
//!   local subscribers (`SubscriberId`s) want a track, it is subscribed once on the link, with
//!   the union of their layer demands; packets that went missing on the link are NACKed to the
//!   origin, which resends them from its buffer.
//!
//! Links are made on demand: the first subscription to a peer's track asks the driver to
//! connect ([`Action::Connect`]). Once the driver reports the link up (after mutual TLS and the
//! `hello` exchange), the subscriber half (re)sends its subscriptions; a link that goes down is
//! re-dialled while something still wants it, and closed after [`IDLE_CLOSE`] without use. If
//! both nodes dial each other at once, the connection dialled by the node with the smaller name
//! is kept and the other is closed ([`Action::Close`]), so there is one connection per pair.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use str0m::format::PayloadParams;

use super::wire::{
    ControlMsg, EndReason, FrameDecoder, KeyframeKind, LayerDemand, MAX_NACK_SEQS, RelayMedia,
    TrackKind, TrackRef, WireError,
};

/// Packets per track the origin keeps for NACKs from its peers.
pub const RESEND_BUFFER: usize = 512;
/// A gap bigger than this is not NACKed (the origin will not have it any more; a keyframe
/// request is the better repair).
pub const MAX_GAP: u64 = 128;
/// Times a missing packet is NACKed before it counts as lost.
pub const NACK_TRIES: u8 = 3;
/// The shortest wait between two NACKs of one packet (longer on links with a longer RTT).
pub const NACK_RETRY_MIN: Duration = Duration::from_millis(20);
/// Wait before dialling a peer again after its link went down or failed.
pub const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// A link neither half uses for this long is closed.
pub const IDLE_CLOSE: Duration = Duration::from_secs(30);
/// Two connections of a pair that came up within this time of each other, dialled from both
/// ends, are a dial race (see [`RelayCore::link_up`]).
pub const DIAL_RACE_WINDOW: Duration = Duration::from_secs(10);
/// Local tracks one peer may pull at once; more are refused ([`EndReason::Refused`]), so a
/// misbehaving peer cannot make this node hold unbounded state.
pub const MAX_SERVED_PER_PEER: usize = 4096;
/// How often a subscriber reports what arrived over the link.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// The driver's id of one QUIC connection.
pub type ConnId = u64;
/// A local subscriber of a remote track: chosen by the SFU (a leg, a shard, …), opaque here.
pub type SubscriberId = u64;

/// The core's handle for a remote track this node subscribes to, stable across reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemoteTrackId(pub u64);

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a connection to this peer (it reports [`RelayCore::link_up`] or
    /// [`RelayCore::link_failed`]).
    Connect {
        /// Peer node.
        peer: String,
    },
    /// Write this frame on the peer's control stream.
    SendControl {
        /// Peer node.
        peer: String,
        /// Connection.
        conn: ConnId,
        /// An encoded frame (length and body).
        frame: Bytes,
    },
    /// Send this datagram to the peer.
    SendDatagram {
        /// Peer node.
        peer: String,
        /// Connection.
        conn: ConnId,
        /// An encoded media datagram.
        datagram: Bytes,
    },
    /// Close this connection.
    Close {
        /// Peer node.
        peer: String,
        /// Connection.
        conn: ConnId,
        /// Why (logged, sent as the close reason).
        reason: &'static str,
    },
}

/// What the SFU must know or do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// A remote track's origin confirmed it: media for `remote` follows.
    TrackReady {
        /// The core's handle (the same one [`RelayCore::subscribe`] returned).
        remote: RemoteTrackId,
        /// Audio or video.
        kind: TrackKind,
        /// The publisher's payload types, as its node announced them.
        params: Vec<PayloadParams>,
    },
    /// A remote track is gone (not found, unpublished, refused): its subscribers are dropped.
    TrackEnded {
        /// The handle.
        remote: RemoteTrackId,
        /// Why.
        reason: EndReason,
    },
    /// A packet of a remote track.
    Media {
        /// The handle.
        remote: RemoteTrackId,
        /// The packet (its `track` is the origin's id, meaningless here).
        media: RelayMedia,
    },
    /// Some peer now pulls this local track, or the layers peers want changed: feed its
    /// packets to [`RelayCore::local_media`] (only the layers in `demand` are sent).
    LocalTrackWanted {
        /// The local track id (as given to [`RelayCore::publish`]).
        id: u64,
        /// The union of the layers every pulling peer wants.
        demand: LayerDemand,
    },
    /// No peer pulls this local track any more.
    LocalTrackUnwanted {
        /// The local track id.
        id: u64,
    },
    /// A subscriber on a peer needs a keyframe of a local track.
    KeyframeRequest {
        /// The local track id.
        id: u64,
        /// The layer.
        rid: Option<String>,
        /// PLI or FIR.
        kind: KeyframeKind,
        /// The subscriber asking has had no keyframe yet.
        fresh: bool,
    },
}

/// Counters of one link (since the core started; the driver turns them into metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Media datagrams sent (resends included).
    pub datagrams_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// Media datagrams received and accepted.
    pub datagrams_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Datagrams resent on the peer's NACKs.
    pub resent: u64,
    /// NACKed packets no longer in the resend buffer.
    pub resend_misses: u64,
    /// Sequence numbers NACKed to the peer.
    pub nacked: u64,
    /// Packets that went missing on the way here and were never repaired.
    pub lost_in: u64,
    /// What the peer reported lost on the way there.
    pub lost_out: u64,
    /// Datagrams refused: malformed, or of a track not subscribed (late after an unsubscribe).
    pub dropped_in: u64,
    /// Links (connections) made up.
    pub connects: u64,
}

#[derive(Debug)]
struct LocalTrack {
    track: TrackRef,
    kind: TrackKind,
    params: Vec<PayloadParams>,
    /// The last packets, by layer (an index into `rids`) and sequence number, for resends.
    recent: VecDeque<(u8, u64, Bytes)>,
    /// The simulcast layers seen (each layer numbers its packets on its own).
    rids: Vec<Option<String>>,
    /// The union demand last reported in [`RelayEvent::LocalTrackWanted`].
    reported: Option<LayerDemand>,
}

#[derive(Debug)]
struct Missing {
    tries: u8,
    next: Instant,
}

#[derive(Debug)]
struct RemoteTrack {
    handle: RemoteTrackId,
    subscribers: HashMap<SubscriberId, LayerDemand>,
    /// The demand last sent in a `subscribe`.
    sent_demand: Option<LayerDemand>,
    /// The origin's id once announced on the current connection.
    id: Option<u64>,
    kind: Option<TrackKind>,
    params: Vec<PayloadParams>,
    /// Per simulcast layer: what arrived and what is missing (each layer of a simulcast track
    /// is its own RTP stream, with its own sequence numbers).
    layers: Vec<LayerSeq>,
}

/// Most simulcast layers tracked per remote track (more are dropped and counted).
pub const MAX_LAYERS: usize = 8;

/// What arrived of one layer of a remote track (see [`RemoteTrack::layers`]).
#[derive(Debug)]
struct LayerSeq {
    rid: Option<String>,
    highest: Option<u64>,
    missing: BTreeMap<u64, Missing>,
}

impl RemoteTrack {
    fn demand(&self) -> LayerDemand {
        let mut it = self.subscribers.values();
        let first = it.next().cloned().unwrap_or_default();
        it.fold(first, |acc, d| acc.union(d))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    /// No connection; dial at `retry` if wanted.
    Down { retry: Instant },
    /// The driver is dialling.
    Connecting,
    /// Up on this connection.
    Up { conn: ConnId, dialled_by_us: bool },
}

#[derive(Debug)]
struct Link {
    state: LinkState,
    decoder: FrameDecoder,
    /// Origin half: local track id → the layers this peer wants.
    served: HashMap<u64, LayerDemand>,
    /// Subscriber half, by track.
    remote: HashMap<TrackRef, RemoteTrack>,
    /// Origin's id → track (on the current connection).
    remote_ids: HashMap<u64, TrackRef>,
    stats: LinkStats,
    idle_since: Instant,
    /// When the current connection came up.
    up_since: Instant,
    next_report: Instant,
    report_received: u64,
    report_lost: u64,
    rtt: Duration,
}

impl Link {
    fn new(now: Instant) -> Link {
        Link {
            state: LinkState::Down { retry: now },
            decoder: FrameDecoder::new(),
            served: HashMap::new(),
            remote: HashMap::new(),
            remote_ids: HashMap::new(),
            stats: LinkStats::default(),
            idle_since: now,
            up_since: now,
            next_report: now + REPORT_INTERVAL,
            report_received: 0,
            report_lost: 0,
            rtt: Duration::from_millis(10),
        }
    }

    fn in_use(&self) -> bool {
        !self.served.is_empty() || !self.remote.is_empty()
    }

    fn conn(&self) -> Option<ConnId> {
        match self.state {
            LinkState::Up { conn, .. } => Some(conn),
            _ => None,
        }
    }
}

/// Why a control message from a peer was refused (the link is closed: it is out of step).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The bytes did not decode.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A message that makes no sense here (a second `hello`, an id never announced, …).
    #[error("unexpected {0}")]
    Unexpected(&'static str),
}

/// The relay's state on one node (see the module docs).
#[derive(Debug)]
pub struct RelayCore {
    me: String,
    links: HashMap<String, Link>,
    local: HashMap<u64, LocalTrack>,
    local_by_ref: HashMap<TrackRef, u64>,
    /// Remote handle → (peer, track).
    handles: HashMap<RemoteTrackId, (String, TrackRef)>,
    /// Subscriber → handle.
    subscribers: HashMap<SubscriberId, RemoteTrackId>,
    next_handle: u64,
    actions: VecDeque<Action>,
    events: VecDeque<RelayEvent>,
}

impl RelayCore {
    /// The core of node `me`.
    pub fn new(me: impl Into<String>) -> RelayCore {
        RelayCore {
            me: me.into(),
            links: HashMap::new(),
            local: HashMap::new(),
            local_by_ref: HashMap::new(),
            handles: HashMap::new(),
            subscribers: HashMap::new(),
            next_handle: 1,
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.me
    }

    /// The next thing for the driver to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next thing for the SFU to know.
    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    /// When [`RelayCore::handle_timeout`] must next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for link in self.links.values() {
            match link.state {
                LinkState::Down { retry } if !link.remote.is_empty() => at(retry),
                LinkState::Up { .. } => {
                    at(link.next_report);
                    if !link.in_use() {
                        at(link.idle_since + IDLE_CLOSE);
                    }
                    for t in link.remote.values() {
                        let missing = t.layers.iter().flat_map(|l| l.missing.values());
                        if let Some(m) = missing.map(|m| m.next).min() {
                            at(m);
                        }
                    }
                }
                _ => {}
            }
        }
        next
    }

    /// Counters of the link to `peer`.
    pub fn link_stats(&self, peer: &str) -> Option<LinkStats> {
        self.links.get(peer).map(|l| l.stats)
    }

    /// Peers with a link (up or not) and whether it is up.
    pub fn links(&self) -> impl Iterator<Item = (&str, bool)> {
        self.links
            .iter()
            .map(|(p, l)| (p.as_str(), l.conn().is_some()))
    }

    /// The relay legs of one link: tracks served to `peer` and its tracks pulled here.
    pub fn link_legs(&self, peer: &str) -> Option<(usize, usize)> {
        self.links
            .get(peer)
            .map(|l| (l.served.len(), l.remote.len()))
    }

    /// The relay legs: tracks served to peers and remote tracks pulled, over all links.
    pub fn legs(&self) -> (usize, usize) {
        self.links
            .values()
            .fold((0, 0), |(s, r), l| (s + l.served.len(), r + l.remote.len()))
    }

    /// The link's round-trip time as the driver measures it (it paces NACK retries).
    pub fn note_rtt(&mut self, peer: &str, rtt: Duration) {
        if let Some(link) = self.links.get_mut(peer) {
            link.rtt = rtt;
        }
    }

    // --- links ---------------------------------------------------------------------------

    /// The driver has an authenticated connection to `peer` (it dialled, or accepted one).
    pub fn link_up(&mut self, peer: &str, conn: ConnId, dialled_by_us: bool, now: Instant) {
        let me_smaller = self.me.as_str() < peer;
        let link = self
            .links
            .entry(peer.to_string())
            .or_insert_with(|| Link::new(now));
        if let LinkState::Up {
            conn: old,
            dialled_by_us: old_ours,
        } = link.state
        {
            if old == conn {
                return;
            }
            // A live peer never dials while it has a link, so a second connection is either a
            // race (both dialled at once: keep the one the smaller name dialled, as the peer
            // does) or the peer lost the old one (it restarted, or saw it die first): keep the
            // new one rather than wait for the old one's idle timeout.
            let race = dialled_by_us != old_ours
                && now.saturating_duration_since(link.up_since) < DIAL_RACE_WINDOW;
            let keep_new = !race || dialled_by_us == me_smaller;
            if !keep_new {
                self.actions.push_back(Action::Close {
                    peer: peer.to_string(),
                    conn,
                    reason: "duplicate link",
                });
                return;
            }
            self.actions.push_back(Action::Close {
                peer: peer.to_string(),
                conn: old,
                reason: "duplicate link",
            });
            self.reset_link(peer, now);
        }
        let Some(link) = self.links.get_mut(peer) else {
            return;
        };
        link.state = LinkState::Up {
            conn,
            dialled_by_us,
        };
        link.decoder = FrameDecoder::new();
        link.idle_since = now;
        link.up_since = now;
        link.next_report = now + REPORT_INTERVAL;
        link.stats.connects += 1;
        let subscribes: Vec<ControlMsg> = link
            .remote
            .iter_mut()
            .map(|(track, t)| {
                let demand = t.demand();
                t.sent_demand = Some(demand.clone());
                ControlMsg::Subscribe {
                    track: track.clone(),
                    demand,
                }
            })
            .collect();
        for msg in subscribes {
            self.push_control(peer, conn, &msg);
        }
    }

    /// Dialling `peer` failed; it is tried again after [`RECONNECT_BACKOFF`] while wanted.
    pub fn link_failed(&mut self, peer: &str, now: Instant) {
        if let Some(link) = self.links.get_mut(peer)
            && link.state == LinkState::Connecting
        {
            link.state = LinkState::Down {
                retry: now + RECONNECT_BACKOFF,
            };
        }
    }

    /// The connection `conn` to `peer` closed (either side, any reason).
    pub fn link_down(&mut self, peer: &str, conn: ConnId, now: Instant) {
        let Some(link) = self.links.get(peer) else {
            return;
        };
        if link.conn() != Some(conn) {
            return; // a duplicate we closed, or an old one
        }
        self.reset_link(peer, now);
        if let Some(link) = self.links.get_mut(peer) {
            link.state = LinkState::Down {
                retry: now + RECONNECT_BACKOFF,
            };
        }
    }

    /// Forgets what the peer's side of the current connection held: what it pulled from us,
    /// and the ids of its announcements (they are made again on the next connection).
    fn reset_link(&mut self, peer: &str, now: Instant) {
        let Some(link) = self.links.get_mut(peer) else {
            return;
        };
        let served: Vec<u64> = link.served.drain().map(|(id, _)| id).collect();
        link.remote_ids.clear();
        for t in link.remote.values_mut() {
            t.id = None;
            t.sent_demand = None;
            t.layers.clear();
        }
        link.idle_since = now;
        for id in served {
            self.report_local_demand(id);
        }
    }

    // --- the subscriber half ---------------------------------------------------------------

    /// A local subscriber wants `track` published on `peer`, with these layers. Returns the
    /// remote track's handle ([`RelayEvent::TrackReady`] and media carry it). A subscriber
    /// already subscribed somewhere is moved here.
    pub fn subscribe(
        &mut self,
        peer: &str,
        track: TrackRef,
        subscriber: SubscriberId,
        demand: LayerDemand,
        now: Instant,
    ) -> RemoteTrackId {
        if let Some(&old) = self.subscribers.get(&subscriber)
            && self.handles.get(&old) != Some(&(peer.to_string(), track.clone()))
        {
            self.unsubscribe(subscriber, now);
        }
        let link = self
            .links
            .entry(peer.to_string())
            .or_insert_with(|| Link::new(now));
        let next_handle = &mut self.next_handle;
        let remote = link.remote.entry(track.clone()).or_insert_with(|| {
            let handle = RemoteTrackId(*next_handle);
            *next_handle += 1;
            RemoteTrack {
                handle,
                subscribers: HashMap::new(),
                sent_demand: None,
                id: None,
                kind: None,
                params: Vec::new(),
                layers: Vec::new(),
            }
        });
        let handle = remote.handle;
        remote.subscribers.insert(subscriber, demand);
        if let Some(kind) = remote.kind.filter(|_| remote.id.is_some()) {
            self.events.push_back(RelayEvent::TrackReady {
                remote: handle,
                kind,
                params: remote.params.clone(),
            });
        }
        let demand = remote.demand();
        let send = remote.sent_demand.as_ref() != Some(&demand);
        if send {
            remote.sent_demand = Some(demand.clone());
        }
        self.handles
            .insert(handle, (peer.to_string(), track.clone()));
        self.subscribers.insert(subscriber, handle);
        match link.state {
            LinkState::Up { conn, .. } if send => {
                self.push_control(peer, conn, &ControlMsg::Subscribe { track, demand });
            }
            LinkState::Down { .. } => {
                link.state = LinkState::Connecting;
                self.actions.push_back(Action::Connect {
                    peer: peer.to_string(),
                });
            }
            _ => {}
        }
        handle
    }

    /// A local subscriber no longer wants its remote track; the last one unsubscribes on the
    /// link.
    pub fn unsubscribe(&mut self, subscriber: SubscriberId, now: Instant) {
        let Some(handle) = self.subscribers.remove(&subscriber) else {
            return;
        };
        let Some((peer, track)) = self.handles.get(&handle).cloned() else {
            return;
        };
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        let conn = link.conn();
        let Some(remote) = link.remote.get_mut(&track) else {
            return;
        };
        remote.subscribers.remove(&subscriber);
        if remote.subscribers.is_empty() {
            if let Some(id) = remote.id {
                link.remote_ids.remove(&id);
            }
            link.remote.remove(&track);
            self.handles.remove(&handle);
            if !link.in_use() {
                link.idle_since = now;
            }
            if let Some(conn) = conn {
                self.push_control(&peer, conn, &ControlMsg::Unsubscribe { track });
            }
            return;
        }
        let demand = remote.demand();
        if remote.sent_demand.as_ref() != Some(&demand) && conn.is_some() {
            remote.sent_demand = Some(demand.clone());
            if let Some(conn) = conn {
                self.push_control(&peer, conn, &ControlMsg::Subscribe { track, demand });
            }
        }
    }

    /// A local subscriber's layer demand changed.
    pub fn set_demand(&mut self, subscriber: SubscriberId, demand: LayerDemand, now: Instant) {
        let Some(handle) = self.subscribers.get(&subscriber).copied() else {
            return;
        };
        let Some((peer, track)) = self.handles.get(&handle).cloned() else {
            return;
        };
        self.subscribe(&peer, track, subscriber, demand, now);
    }

    /// A local subscriber of a remote track needs a keyframe (`fresh`: it has had none yet).
    pub fn request_keyframe(
        &mut self,
        remote: RemoteTrackId,
        rid: Option<String>,
        kind: KeyframeKind,
        fresh: bool,
    ) {
        let Some((peer, track)) = self.handles.get(&remote).cloned() else {
            return;
        };
        let Some(link) = self.links.get(&peer) else {
            return;
        };
        let (Some(conn), Some(id)) = (link.conn(), link.remote.get(&track).and_then(|t| t.id))
        else {
            return;
        };
        self.push_control(
            &peer,
            conn,
            &ControlMsg::Keyframe {
                id,
                rid,
                kind,
                fresh,
            },
        );
    }

    /// A datagram arrived from `peer`.
    pub fn datagram_received(
        &mut self,
        peer: &str,
        datagram: &Bytes,
        now: Instant,
    ) -> Result<(), WireError> {
        let Some(link) = self.links.get_mut(peer) else {
            return Ok(());
        };
        let media = match RelayMedia::decode(datagram) {
            Ok(m) => m,
            Err(e) => {
                link.stats.dropped_in += 1;
                return Err(e);
            }
        };
        let Some(remote) = link
            .remote_ids
            .get(&media.track)
            .and_then(|t| link.remote.get_mut(t))
        else {
            link.stats.dropped_in += 1;
            return Ok(());
        };
        let rid = media.rid.as_deref();
        let layer = match remote.layers.iter().position(|l| l.rid.as_deref() == rid) {
            Some(i) => &mut remote.layers[i],
            None if remote.layers.len() < MAX_LAYERS => {
                remote.layers.push(LayerSeq {
                    rid: media.rid.clone(),
                    highest: None,
                    missing: BTreeMap::new(),
                });
                let last = remote.layers.len() - 1;
                &mut remote.layers[last]
            }
            None => {
                link.stats.dropped_in += 1;
                return Ok(());
            }
        };
        let seq = media.seq;
        match layer.highest {
            Some(h) if seq <= h => {
                if layer.missing.remove(&seq).is_none() {
                    link.stats.dropped_in += 1; // a duplicate, or older than what we track
                    return Ok(());
                }
            }
            Some(h) => {
                let gap = seq - h - 1;
                if gap > MAX_GAP {
                    link.stats.lost_in += gap;
                    link.report_lost += gap;
                } else {
                    for s in h + 1..seq {
                        layer.missing.insert(
                            s,
                            Missing {
                                tries: 0,
                                next: now,
                            },
                        );
                    }
                }
                layer.highest = Some(seq);
            }
            None => layer.highest = Some(seq),
        }
        // Give up on missing packets far behind (the buffer at the origin is gone anyway).
        while let Some((&s, _)) = layer.missing.first_key_value() {
            if seq.saturating_sub(s) <= RESEND_BUFFER as u64 {
                break;
            }
            layer.missing.remove(&s);
            link.stats.lost_in += 1;
            link.report_lost += 1;
        }
        link.stats.datagrams_in += 1;
        link.stats.bytes_in += datagram.len() as u64;
        link.report_received += 1;
        let handle = remote.handle;
        self.events.push_back(RelayEvent::Media {
            remote: handle,
            media,
        });
        Ok(())
    }

    // --- the origin half -------------------------------------------------------------------

    /// A track published on this node that peers may pull, with the publisher's payload
    /// types (announced to subscribing nodes).
    pub fn publish(
        &mut self,
        id: u64,
        track: TrackRef,
        kind: TrackKind,
        params: Vec<PayloadParams>,
    ) {
        self.local_by_ref.insert(track.clone(), id);
        self.local.insert(
            id,
            LocalTrack {
                track,
                kind,
                params,
                recent: VecDeque::new(),
                rids: Vec::new(),
                reported: None,
            },
        );
    }

    /// A local track is gone: peers pulling it are told.
    pub fn unpublish(&mut self, id: u64) {
        let Some(local) = self.local.remove(&id) else {
            return;
        };
        self.local_by_ref.remove(&local.track);
        let mut tell = Vec::new();
        for (peer, link) in &mut self.links {
            if link.served.remove(&id).is_some()
                && let Some(conn) = link.conn()
            {
                tell.push((peer.clone(), conn));
            }
        }
        for (peer, conn) in tell {
            let msg = ControlMsg::Withdraw {
                track: local.track.clone(),
                reason: EndReason::Unpublished,
            };
            self.push_control(&peer, conn, &msg);
        }
        if local.reported.is_some() {
            self.events.push_back(RelayEvent::LocalTrackUnwanted { id });
        }
    }

    /// A packet of a local track: one datagram to each peer that pulls the track and wants the
    /// packet's layer.
    pub fn local_media(&mut self, media: &RelayMedia) {
        let Some(local) = self.local.get_mut(&media.track) else {
            return;
        };
        if local.reported.is_none() {
            return;
        }
        let datagram = media.encode();
        let rid = media.rid.as_deref();
        let layer = match local.rids.iter().position(|r| r.as_deref() == rid) {
            Some(i) => Some(i),
            None if local.rids.len() < MAX_LAYERS => {
                local.rids.push(media.rid.clone());
                Some(local.rids.len() - 1)
            }
            None => None,
        };
        if media.nackable
            && let Some(layer) = layer
        {
            if local.recent.len() >= RESEND_BUFFER {
                local.recent.pop_front();
            }
            // MAX_LAYERS fits a u8.
            local
                .recent
                .push_back((layer as u8, media.seq, datagram.clone()));
        }
        for (peer, link) in &mut self.links {
            let (Some(conn), Some(demand)) = (link.conn(), link.served.get(&media.track)) else {
                continue;
            };
            if !demand.wants(media.rid.as_deref()) {
                continue;
            }
            link.stats.datagrams_out += 1;
            link.stats.bytes_out += datagram.len() as u64;
            self.actions.push_back(Action::SendDatagram {
                peer: peer.clone(),
                conn,
                datagram: datagram.clone(),
            });
        }
    }

    /// Bytes from the control stream of `conn` to `peer`. A protocol error closes the link (the
    /// error is returned for logging and counting).
    pub fn control_received(
        &mut self,
        peer: &str,
        conn: ConnId,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), ProtocolError> {
        let Some(link) = self.links.get_mut(peer) else {
            return Ok(());
        };
        if link.conn() != Some(conn) {
            return Ok(());
        }
        link.decoder.push(bytes);
        loop {
            let Some(link) = self.links.get_mut(peer) else {
                return Ok(());
            };
            let msg = match link.decoder.next_msg() {
                Ok(Some(msg)) => msg,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.close(peer, conn, "malformed control stream");
                    return Err(e.into());
                }
            };
            if let Err(e) = self.handle_control(peer, conn, msg, now) {
                self.close(peer, conn, "protocol error");
                return Err(e);
            }
        }
    }

    fn close(&mut self, peer: &str, conn: ConnId, reason: &'static str) {
        self.actions.push_back(Action::Close {
            peer: peer.to_string(),
            conn,
            reason,
        });
    }

    fn handle_control(
        &mut self,
        peer: &str,
        conn: ConnId,
        msg: ControlMsg,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        match msg {
            ControlMsg::Hello { .. } => return Err(ProtocolError::Unexpected("second hello")),
            ControlMsg::Subscribe { track, demand } => {
                let Some(&id) = self.local_by_ref.get(&track) else {
                    let msg = ControlMsg::Withdraw {
                        track,
                        reason: EndReason::NotFound,
                    };
                    self.push_control(peer, conn, &msg);
                    return Ok(());
                };
                let (kind, params) = self
                    .local
                    .get(&id)
                    .map_or((TrackKind::Video, Vec::new()), |l| {
                        (l.kind, l.params.clone())
                    });
                let Some(link) = self.links.get_mut(peer) else {
                    return Ok(());
                };
                if !link.served.contains_key(&id) && link.served.len() >= MAX_SERVED_PER_PEER {
                    let msg = ControlMsg::Withdraw {
                        track,
                        reason: EndReason::Refused,
                    };
                    self.push_control(peer, conn, &msg);
                    return Ok(());
                }
                let fresh = link.served.insert(id, demand).is_none();
                if fresh {
                    let msg = ControlMsg::Announce {
                        track,
                        id,
                        kind,
                        params,
                    };
                    self.push_control(peer, conn, &msg);
                }
                self.report_local_demand(id);
            }
            ControlMsg::Unsubscribe { track } => {
                if let Some(&id) = self.local_by_ref.get(&track)
                    && let Some(link) = self.links.get_mut(peer)
                    && link.served.remove(&id).is_some()
                {
                    if !link.in_use() {
                        link.idle_since = now;
                    }
                    self.report_local_demand(id);
                }
            }
            ControlMsg::Announce {
                track,
                id,
                kind,
                params,
            } => {
                let Some(link) = self.links.get_mut(peer) else {
                    return Ok(());
                };
                let Some(remote) = link.remote.get_mut(&track) else {
                    // We unsubscribed meanwhile; our unsubscribe is on its way.
                    return Ok(());
                };
                if let Some(old) = remote.id.replace(id) {
                    link.remote_ids.remove(&old);
                }
                remote.kind = Some(kind);
                remote.params.clone_from(&params);
                remote.layers.clear();
                let handle = remote.handle;
                link.remote_ids.insert(id, track);
                self.events.push_back(RelayEvent::TrackReady {
                    remote: handle,
                    kind,
                    params,
                });
            }
            ControlMsg::Withdraw { track, reason } => {
                let Some(link) = self.links.get_mut(peer) else {
                    return Ok(());
                };
                let Some(remote) = link.remote.remove(&track) else {
                    return Ok(());
                };
                if let Some(id) = remote.id {
                    link.remote_ids.remove(&id);
                }
                if !link.in_use() {
                    link.idle_since = now;
                }
                self.handles.remove(&remote.handle);
                for s in remote.subscribers.keys() {
                    self.subscribers.remove(s);
                }
                self.events.push_back(RelayEvent::TrackEnded {
                    remote: remote.handle,
                    reason,
                });
            }
            ControlMsg::Keyframe {
                id,
                rid,
                kind,
                fresh,
            } => {
                let served = self
                    .links
                    .get(peer)
                    .is_some_and(|l| l.served.contains_key(&id));
                if served {
                    self.events.push_back(RelayEvent::KeyframeRequest {
                        id,
                        rid,
                        kind,
                        fresh,
                    });
                }
            }
            ControlMsg::Nack { id, rid, seqs } => {
                self.resend(peer, conn, id, rid.as_deref(), &seqs);
            }
            ControlMsg::Report { lost, .. } => {
                if let Some(link) = self.links.get_mut(peer) {
                    link.stats.lost_out += lost;
                }
            }
        }
        Ok(())
    }

    fn resend(&mut self, peer: &str, conn: ConnId, id: u64, rid: Option<&str>, seqs: &[u64]) {
        let Some(link) = self.links.get_mut(peer) else {
            return;
        };
        if !link.served.contains_key(&id) {
            return;
        }
        let Some(local) = self.local.get(&id) else {
            return;
        };
        // Sequence numbers are per layer: a NACK names the layer it is for.
        let layer = local
            .rids
            .iter()
            .position(|r| r.as_deref() == rid)
            .map(|i| i as u8);
        for &seq in seqs {
            // The buffer is in arrival order, which is sequence order but for reordering.
            let found = layer.and_then(|layer| {
                local
                    .recent
                    .iter()
                    .rev()
                    .find(|(l, s, _)| *l == layer && *s == seq)
            });
            match found {
                Some((_, _, datagram)) => {
                    link.stats.resent += 1;
                    link.stats.datagrams_out += 1;
                    link.stats.bytes_out += datagram.len() as u64;
                    self.actions.push_back(Action::SendDatagram {
                        peer: peer.to_string(),
                        conn,
                        datagram: datagram.clone(),
                    });
                }
                None => link.stats.resend_misses += 1,
            }
        }
    }

    /// Reports the union of what peers want of a local track, if it changed.
    fn report_local_demand(&mut self, id: u64) {
        let mut union: Option<LayerDemand> = None;
        for link in self.links.values() {
            if let Some(d) = link.served.get(&id) {
                union = Some(union.map_or_else(|| d.clone(), |u| u.union(d)));
            }
        }
        let Some(local) = self.local.get_mut(&id) else {
            return;
        };
        if local.reported == union {
            return;
        }
        local.reported.clone_from(&union);
        match union {
            Some(demand) => self
                .events
                .push_back(RelayEvent::LocalTrackWanted { id, demand }),
            None => {
                local.recent.clear();
                self.events.push_back(RelayEvent::LocalTrackUnwanted { id });
            }
        }
    }

    // --- time ----------------------------------------------------------------------------

    /// Sends due NACKs and reports, re-dials wanted links, closes idle ones.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut control = Vec::new();
        for (peer, link) in &mut self.links {
            match link.state {
                LinkState::Down { retry } if !link.remote.is_empty() && retry <= now => {
                    link.state = LinkState::Connecting;
                    self.actions
                        .push_back(Action::Connect { peer: peer.clone() });
                }
                LinkState::Up { conn, .. } => {
                    if !link.in_use() && now >= link.idle_since + IDLE_CLOSE {
                        self.actions.push_back(Action::Close {
                            peer: peer.clone(),
                            conn,
                            reason: "idle",
                        });
                        continue;
                    }
                    let retry = (link.rtt * 2).max(NACK_RETRY_MIN);
                    for remote in link.remote.values_mut() {
                        let Some(id) = remote.id else { continue };
                        for layer in &mut remote.layers {
                            let mut seqs = Vec::new();
                            let mut given_up = Vec::new();
                            for (&seq, m) in &mut layer.missing {
                                if m.next > now {
                                    continue;
                                }
                                if m.tries >= NACK_TRIES {
                                    given_up.push(seq);
                                    continue;
                                }
                                if seqs.len() < MAX_NACK_SEQS {
                                    m.tries += 1;
                                    m.next = now + retry;
                                    seqs.push(seq);
                                }
                            }
                            for seq in given_up {
                                layer.missing.remove(&seq);
                                link.stats.lost_in += 1;
                                link.report_lost += 1;
                            }
                            if !seqs.is_empty() {
                                link.stats.nacked += seqs.len() as u64;
                                let rid = layer.rid.clone();
                                let msg = ControlMsg::Nack { id, rid, seqs };
                                control.push((peer.clone(), conn, msg));
                            }
                        }
                    }
                    if now >= link.next_report {
                        link.next_report = now + REPORT_INTERVAL;
                        if !link.remote.is_empty() {
                            control.push((
                                peer.clone(),
                                conn,
                                ControlMsg::Report {
                                    received: std::mem::take(&mut link.report_received),
                                    lost: std::mem::take(&mut link.report_lost),
                                },
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        for (peer, conn, msg) in control {
            self.push_control(&peer, conn, &msg);
        }
    }

    fn push_control(&mut self, peer: &str, conn: ConnId, msg: &ControlMsg) {
        self.actions.push_back(Action::SendControl {
            peer: peer.to_string(),
            conn,
            frame: msg.encode(),
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::relay::wire::RelayExt;

    fn track(name: &str) -> TrackRef {
        TrackRef::new("app", "aa".repeat(16), name)
    }

    fn media(track: u64, seq: u64, rid: Option<&str>) -> RelayMedia {
        RelayMedia {
            track,
            pt: 96,
            clock_rate: 90_000,
            seq,
            timestamp: seq as u32 * 3000,
            marker: false,
            keyframe: seq == 0,
            nackable: true,
            vp8: false,
            rid: rid.map(Into::into),
            ext: RelayExt::default(),
            payload: Bytes::from(vec![seq as u8; 100]),
        }
    }

    /// Two cores wired back to back: what one sends, the other receives (datagrams may be
    /// dropped by a filter).
    struct Pair {
        a: RelayCore,
        b: RelayCore,
        now: Instant,
        a_events: Vec<RelayEvent>,
        b_events: Vec<RelayEvent>,
        connects: usize,
        datagrams_ab: usize,
        drop_ab: Box<dyn FnMut(&RelayMedia) -> bool>,
    }

    impl Pair {
        fn new() -> Pair {
            Pair {
                a: RelayCore::new("a"),
                b: RelayCore::new("b"),
                now: Instant::now(),
                a_events: Vec::new(),
                b_events: Vec::new(),
                connects: 0,
                datagrams_ab: 0,
                drop_ab: Box::new(|_| false),
            }
        }

        /// Runs actions until both are quiet. A connect from either side makes connection 1.
        fn pump(&mut self) {
            loop {
                let mut progress = false;
                while let Some(action) = self.a.poll_action() {
                    progress = true;
                    self.deliver("a", action);
                }
                while let Some(action) = self.b.poll_action() {
                    progress = true;
                    self.deliver("b", action);
                }
                while let Some(e) = self.a.poll_event() {
                    self.a_events.push(e);
                }
                while let Some(e) = self.b.poll_event() {
                    self.b_events.push(e);
                }
                if !progress {
                    return;
                }
            }
        }

        fn core(&mut self, name: &str) -> &mut RelayCore {
            if name == "a" {
                &mut self.a
            } else {
                &mut self.b
            }
        }

        fn deliver(&mut self, from: &str, action: Action) {
            let now = self.now;
            let to = if from == "a" { "b" } else { "a" };
            match action {
                Action::Connect { .. } => {
                    self.connects += 1;
                    let c = self.connects as u64;
                    self.core(to).link_up(from, c, false, now);
                    self.core(from).link_up(to, c, true, now);
                }
                Action::SendControl { frame, conn, .. } => {
                    self.core(to)
                        .control_received(from, conn, &frame, now)
                        .unwrap();
                }
                Action::SendDatagram { datagram, .. } => {
                    let m = RelayMedia::decode(&datagram).unwrap();
                    if from == "a" {
                        self.datagrams_ab += 1;
                        if (self.drop_ab)(&m) {
                            return;
                        }
                    }
                    self.core(to)
                        .datagram_received(from, &datagram, now)
                        .unwrap();
                }
                Action::Close { conn, .. } => {
                    self.core(to).link_down(from, conn, now);
                    self.core(from).link_down(to, conn, now);
                }
            }
        }

        fn b_media(&self) -> Vec<u64> {
            self.b_events
                .iter()
                .filter_map(|e| match e {
                    RelayEvent::Media { media, .. } => Some(media.seq),
                    _ => None,
                })
                .collect()
        }
    }

    #[test]
    fn a_track_crosses_the_link_once_for_many_subscribers() {
        let mut p = Pair::new();
        p.a.publish(7, track("cam"), TrackKind::Video, Vec::new());
        let now = p.now;
        let h1 = p.b.subscribe("a", track("cam"), 1, LayerDemand::All, now);
        p.pump();
        for s in 2..=5 {
            assert_eq!(
                p.b.subscribe("a", track("cam"), s, LayerDemand::All, now),
                h1
            );
        }
        p.pump();
        assert_eq!(p.connects, 1, "one connection");
        assert!(p.b_events.contains(&RelayEvent::TrackReady {
            remote: h1,
            kind: TrackKind::Video,
            params: Vec::new(),
        }));
        assert_eq!(
            p.a_events,
            vec![RelayEvent::LocalTrackWanted {
                id: 7,
                demand: LayerDemand::All
            }]
        );
        for seq in 0..10 {
            p.a.local_media(&media(7, seq, None));
        }
        p.pump();
        assert_eq!(p.datagrams_ab, 10, "each packet once, not 5 times");
        assert_eq!(p.b_media(), (0..10).collect::<Vec<_>>());
        // Payload bytes arrive untouched.
        let got = p.b_events.iter().find_map(|e| match e {
            RelayEvent::Media { media, remote } if media.seq == 3 => Some((*remote, media)),
            _ => None,
        });
        let (remote, m) = got.unwrap();
        assert_eq!(remote, h1);
        assert_eq!(m.payload, media(7, 3, None).payload);
        // Unsubscribing all but the last keeps the track; the last ends it on the origin.
        for s in 1..=4 {
            p.b.unsubscribe(s, now);
        }
        p.pump();
        assert!(
            !p.a_events
                .contains(&RelayEvent::LocalTrackUnwanted { id: 7 })
        );
        p.b.unsubscribe(5, now);
        p.pump();
        assert!(
            p.a_events
                .contains(&RelayEvent::LocalTrackUnwanted { id: 7 })
        );
        p.a.local_media(&media(7, 10, None));
        p.pump();
        assert_eq!(p.datagrams_ab, 10, "nothing sent once nobody pulls");
    }

    #[test]
    fn keyframe_requests_reach_the_origin() {
        let mut p = Pair::new();
        p.a.publish(7, track("cam"), TrackKind::Video, Vec::new());
        let h = p.b.subscribe("a", track("cam"), 1, LayerDemand::All, p.now);
        p.pump();
        p.b.request_keyframe(h, Some("f".into()), KeyframeKind::Pli, true);
        p.pump();
        assert!(p.a_events.contains(&RelayEvent::KeyframeRequest {
            id: 7,
            rid: Some("f".into()),
            kind: KeyframeKind::Pli,
            fresh: true,
        }));
    }

    #[test]
    fn unknown_tracks_and_unpublished_tracks_end_the_subscription() {
        let mut p = Pair::new();
        let h =
            p.b.subscribe("a", track("nope"), 1, LayerDemand::All, p.now);
        p.pump();
        assert!(p.b_events.contains(&RelayEvent::TrackEnded {
            remote: h,
            reason: EndReason::NotFound
        }));
        p.a.publish(8, track("mic"), TrackKind::Audio, Vec::new());
        let h = p.b.subscribe("a", track("mic"), 2, LayerDemand::All, p.now);
        p.pump();
        p.a.unpublish(8);
        p.pump();
        assert!(p.b_events.contains(&RelayEvent::TrackEnded {
            remote: h,
            reason: EndReason::Unpublished
        }));
        assert_eq!(p.b.legs(), (0, 0));
        assert_eq!(p.a.legs(), (0, 0));
    }

    #[test]
    fn layer_demands_are_unioned_and_filter_what_is_sent() {
        let mut p = Pair::new();
        p.a.publish(7, track("cam"), TrackKind::Video, Vec::new());
        let only = |r: &[&str]| LayerDemand::Only(r.iter().map(|s| s.to_string()).collect());
        p.b.subscribe("a", track("cam"), 1, only(&["q"]), p.now);
        p.pump();
        p.b.subscribe("a", track("cam"), 2, only(&["h"]), p.now);
        p.pump();
        assert_eq!(
            p.a_events.last(),
            Some(&RelayEvent::LocalTrackWanted {
                id: 7,
                demand: only(&["h", "q"])
            })
        );
        for (seq, rid) in [(0, "q"), (1, "h"), (2, "f")] {
            p.a.local_media(&media(7, seq, Some(rid)));
        }
        p.pump();
        assert_eq!(p.datagrams_ab, 2, "f is not sent");
        p.b.set_demand(2, only(&["q"]), p.now);
        p.pump();
        assert_eq!(
            p.a_events.last(),
            Some(&RelayEvent::LocalTrackWanted {
                id: 7,
                demand: only(&["q"])
            })
        );
    }

    #[test]
    fn loss_on_the_link_is_nacked_and_repaired_from_the_origin_buffer() {
        let mut p = Pair::new();
        p.a.publish(7, track("cam"), TrackKind::Video, Vec::new());
        p.b.subscribe("a", track("cam"), 1, LayerDemand::All, p.now);
        p.pump();
        // Drop 3 and 4 the first time they are sent.
        let mut dropped = std::collections::HashSet::new();
        p.drop_ab = Box::new(move |m| (m.seq == 3 || m.seq == 4) && dropped.insert(m.seq));
        for seq in 0..8 {
            p.a.local_media(&media(7, seq, None));
        }
        p.pump();
        assert_eq!(p.b_media(), vec![0, 1, 2, 5, 6, 7]);
        assert!(p.b.poll_timeout().is_some_and(|t| t <= p.now));
        p.b.handle_timeout(p.now);
        p.pump();
        assert_eq!(p.b_media(), vec![0, 1, 2, 5, 6, 7, 3, 4]);
        let a = p.a.link_stats("b").unwrap();
        assert_eq!(a.resent, 2);
        let b = p.b.link_stats("a").unwrap();
        assert_eq!((b.nacked, b.lost_in), (2, 0));
        // Lost for good: NACKed NACK_TRIES times, then counted lost and reported.
        p.drop_ab = Box::new(|m| m.seq == 9);
        for seq in 8..11 {
            p.a.local_media(&media(7, seq, None));
        }
        p.pump();
        for _ in 0..=NACK_TRIES {
            p.now += Duration::from_millis(100);
            p.b.handle_timeout(p.now);
            p.pump();
        }
        let b = p.b.link_stats("a").unwrap();
        assert_eq!(b.lost_in, 1);
        p.now += REPORT_INTERVAL;
        p.b.handle_timeout(p.now);
        p.pump();
        assert_eq!(p.a.link_stats("b").unwrap().lost_out, 1);
    }

    /// Each simulcast layer is its own RTP stream with its own sequence numbers: the link
    /// tracks arrival and loss per layer (tracked per track, the packets of a layer numbered
    /// below another's were taken for duplicates and dropped, and the gaps between the layers'
    /// numbers NACKed), and a NACK is answered with the packet of the layer it names.
    #[test]
    fn simulcast_layers_number_their_packets_apart_and_are_nacked_per_layer() {
        let mut p = Pair::new();
        p.a.publish(7, track("cam"), TrackKind::Video, Vec::new());
        p.b.subscribe("a", track("cam"), 1, LayerDemand::All, p.now);
        p.pump();
        // Interleaved as a publisher sends them: q from 100, h from 5000, f from 40.
        let starts = [("q", 100u64), ("h", 5000), ("f", 40)];
        let mut dropped = false;
        p.drop_ab = Box::new(move |m| {
            let lost = m.rid.as_deref() == Some("h") && m.seq == 5003 && !dropped;
            dropped |= lost;
            lost
        });
        let mut sent = 0;
        for i in 0..6 {
            for (rid, start) in starts {
                let mut m = media(7, start + i, Some(rid));
                m.payload = Bytes::from(format!("{rid}{}", start + i).into_bytes());
                p.a.local_media(&m);
                sent += 1;
            }
        }
        p.pump();
        let b = p.b.link_stats("a").unwrap();
        assert_eq!(
            (b.datagrams_in, b.dropped_in),
            (sent - 1, 0),
            "every layer's packets arrive, only the lost one is missing"
        );
        // Only h's 5003 is NACKed, and A resends h's packet, not another layer's.
        p.b_events.clear();
        p.b.handle_timeout(p.now);
        p.pump();
        let b = p.b.link_stats("a").unwrap();
        assert_eq!((b.nacked, b.lost_in), (1, 0));
        let repaired: Vec<(Option<String>, u64, Bytes)> = p
            .b_events
            .iter()
            .filter_map(|e| match e {
                RelayEvent::Media { media, .. } => {
                    Some((media.rid.clone(), media.seq, media.payload.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            repaired,
            vec![(Some("h".into()), 5003, Bytes::from_static(b"h5003"))]
        );
        assert_eq!(p.a.link_stats("b").unwrap().resent, 1);
        // Nothing more is missing.
        assert!(p.b.poll_timeout().is_none_or(|t| t > p.now));
    }

    #[test]
    fn a_link_that_goes_down_is_redialled_and_subscriptions_restored() {
        let mut p = Pair::new();
        p.a.publish(7, track("cam"), TrackKind::Video, Vec::new());
        let h = p.b.subscribe("a", track("cam"), 1, LayerDemand::All, p.now);
        p.pump();
        p.a.link_down("b", 1, p.now);
        p.b.link_down("a", 1, p.now);
        p.pump();
        assert!(
            p.a_events
                .contains(&RelayEvent::LocalTrackUnwanted { id: 7 })
        );
        assert!(p.b.poll_action().is_none(), "waits for the backoff");
        p.now += RECONNECT_BACKOFF;
        p.b.handle_timeout(p.now);
        p.pump();
        assert_eq!(p.connects, 2);
        p.a.local_media(&media(7, 100, None));
        p.pump();
        assert_eq!(p.b_media(), vec![100]);
        let ready = p
            .b_events
            .iter()
            .filter(|e| matches!(e, RelayEvent::TrackReady { remote, .. } if *remote == h))
            .count();
        assert_eq!(
            ready, 2,
            "announced again on the new connection, same handle"
        );
    }

    #[test]
    fn simultaneous_dials_keep_the_connection_of_the_smaller_name() {
        let now = Instant::now();
        let mut a = RelayCore::new("a");
        let mut b = RelayCore::new("b");
        // a dialled conn 1, b dialled conn 2; both come up on both sides in opposite orders.
        a.link_up("b", 1, true, now);
        b.link_up("a", 2, true, now);
        a.link_up("b", 2, false, now);
        b.link_up("a", 1, false, now);
        let closes = |c: &mut RelayCore| {
            std::iter::from_fn(|| c.poll_action())
                .filter_map(|x| match x {
                    Action::Close { conn, .. } => Some(conn),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(closes(&mut a), vec![2]);
        assert_eq!(closes(&mut b), vec![2]);
    }

    #[test]
    fn a_peer_that_dials_again_later_replaces_the_old_connection() {
        let mut p = Pair::new();
        p.a.publish(7, track("cam"), TrackKind::Video, Vec::new());
        p.b.subscribe("a", track("cam"), 1, LayerDemand::All, p.now);
        p.pump();
        assert_eq!(p.connects, 1);
        // B restarted: it knows nothing of connection 1, which A still holds.
        p.now += Duration::from_secs(60);
        let mut b = RelayCore::new("b");
        b.subscribe("a", track("cam"), 1, LayerDemand::All, p.now);
        assert!(matches!(b.poll_action(), Some(Action::Connect { .. })));
        p.a.link_up("b", 2, false, p.now);
        b.link_up("a", 2, true, p.now);
        let a_closes: Vec<ConnId> = std::iter::from_fn(|| p.a.poll_action())
            .filter_map(|x| match x {
                Action::Close { conn, .. } => Some(conn),
                _ => None,
            })
            .collect();
        assert_eq!(
            a_closes,
            vec![1],
            "the dead connection goes, the new one stays"
        );
        // The same from the same dialler within the race window: also the new one.
        p.a.link_up("b", 3, false, p.now);
        let a_closes: Vec<ConnId> = std::iter::from_fn(|| p.a.poll_action())
            .filter_map(|x| match x {
                Action::Close { conn, .. } => Some(conn),
                _ => None,
            })
            .collect();
        assert_eq!(a_closes, vec![2]);
    }

    #[test]
    fn garbage_closes_the_link_and_stray_datagrams_are_counted() {
        let mut p = Pair::new();
        p.a.publish(7, track("cam"), TrackKind::Video, Vec::new());
        p.b.subscribe("a", track("cam"), 1, LayerDemand::All, p.now);
        p.pump();
        assert!(
            p.a.datagram_received("b", &Bytes::from_static(b"\xff\x00"), p.now)
                .is_err()
        );
        assert_eq!(p.a.link_stats("b").unwrap().dropped_in, 1);
        // Media of a track nobody here subscribed.
        p.a.datagram_received("b", &media(99, 1, None).encode(), p.now)
            .unwrap();
        assert_eq!(p.a.link_stats("b").unwrap().dropped_in, 2);
        let err = p.a.control_received("b", 1, b"\x00\x00\x00\x02{}", p.now);
        assert!(err.is_err());
        assert!(matches!(
            p.a.poll_action(),
            Some(Action::Close { conn: 1, .. })
        ));
        let hello = ControlMsg::Hello {
            node: "b".into(),
            version: 1,
        };
        let mut p = Pair::new();
        p.b.subscribe("a", track("cam"), 1, LayerDemand::All, p.now);
        p.pump();
        assert_eq!(
            p.a.control_received("b", 1, &hello.encode(), p.now),
            Err(ProtocolError::Unexpected("second hello"))
        );
    }

    #[test]
    fn a_peer_pulling_too_many_tracks_is_refused_beyond_the_limit() {
        let mut p = Pair::new();
        let n = MAX_SERVED_PER_PEER as u64 + 1;
        for id in 0..n {
            p.a.publish(id, track(&format!("t{id}")), TrackKind::Audio, Vec::new());
        }
        let handles: Vec<RemoteTrackId> = (0..n)
            .map(|id| {
                p.b.subscribe("a", track(&format!("t{id}")), id, LayerDemand::All, p.now)
            })
            .collect();
        p.pump();
        assert_eq!(p.a.legs().0, MAX_SERVED_PER_PEER);
        let refused: Vec<_> = p
            .b_events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    RelayEvent::TrackEnded {
                        reason: EndReason::Refused,
                        ..
                    }
                )
            })
            .collect();
        assert_eq!(refused.len(), 1);
        assert!(handles.len() as u64 == n);
    }

    #[test]
    fn an_unused_link_is_closed_after_the_idle_time() {
        let mut p = Pair::new();
        p.a.publish(7, track("cam"), TrackKind::Video, Vec::new());
        p.b.subscribe("a", track("cam"), 1, LayerDemand::All, p.now);
        p.pump();
        p.b.unsubscribe(1, p.now);
        p.pump();
        p.now += IDLE_CLOSE;
        p.b.handle_timeout(p.now);
        assert!(matches!(
            p.b.poll_action(),
            Some(Action::Close { reason: "idle", .. })
        ));
    }
}
