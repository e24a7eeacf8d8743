//! A shard: one task that owns a set of sessions and the [`Forwarder`] for them.
//!
//! Everything a session does happens on its shard: datagrams routed to it by the UDP driver, API
//! commands, timeouts. Shards talk to each other only by message: a publisher's shard sends each
//! packet once (as an `Arc<MediaPacket>`, payload shared, never copied) to every shard that holds
//! legs on the track; keyframe requests and (un)subscriptions travel the other way. No lock is
//! taken on the packet path.
//!
//! Every call into a session's str0m state is wrapped in `catch_unwind`: a panicking session is
//! torn down and counted, and the shard carries on with the others.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Rid};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};
use str0m::{Event, IceConnectionState, Input, Output};
use tokio::sync::{mpsc, oneshot};

use crate::api::error::ApiError;
use crate::api::types::{
    ActiveSpeaker, CloseTracksRequest, CloseTracksResponse, Location, RenegotiateResponse, SdpType,
    SessionDescription, SessionState, TrackObject, TrackResult, TrackState, TrackStatus,
    TracksRequest, TracksResponse, UpdateTracksRequest, UpdateTracksResponse,
};
use crate::api::types::{KeyframeTracksRequest, KeyframeTracksResponse};
use crate::config::Config;
use crate::directory::{Directory, PublishedTrack, SessionSlot};
use crate::egress::Egress;
use crate::forward::{Forwarder, KeyframeTarget, LegKey, LegWrite, MediaPacket};
use crate::health::ShardHealth;
use crate::ids::{SessionId, ShardId, TrackId};
use crate::metrics::Quota;
use crate::metrics::{Metrics, PacketDrop};
use crate::session::{LegState, Publication, Session, Subscription, ingress_budget, is_keyframe};
use crate::speaker::SpeakerDetector;
use crate::udp::UdpControl;
use crate::udp::UdpIo;
use crate::vp8::Vp8Packet;

mod publisher_keyframe;

/// Keyframe requests reach a publisher at most this often per track and layer.
const KEYFRAME_INTERVAL: Duration = Duration::from_secs(1);
/// How often sessions and tracks are checked for collection.
const HOUSEKEEPING: Duration = Duration::from_millis(250);
/// Messages handled before the shard looks at timeouts again.
const BATCH: usize = 256;
/// Timeouts one drain of a session handles itself (see [`drain_session`]) before it leaves the
/// rest to the shard loop, so that one session cannot hold the shard.
const PACER_ROUNDS: usize = 512;
/// A str0m timeout this close is handled at once rather than through the shard's timer.
const PACER_SLACK: Duration = Duration::from_micros(50);

/// A datagram routed to a session.
#[derive(Debug)]
pub struct Datagram {
    /// Owning session.
    pub session: SessionId,
    /// Remote address.
    pub source: SocketAddr,
    /// Our address it was sent to (one of the host candidates).
    pub destination: SocketAddr,
    /// The bytes.
    pub data: Vec<u8>,
    /// Arrival time.
    pub received: Instant,
    /// UDP, or TCP for a frame of an ICE-TCP connection ([`crate::tcp`]).
    pub proto: Protocol,
}

/// Reply channel of an API command.
pub type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

/// API commands executed by the shard that owns the session.
#[derive(Debug)]
pub enum ApiCommand {
    /// `POST sessions/new`.
    Create {
        /// New id.
        id: SessionId,
        /// App.
        app: Arc<str>,
        /// Optional offer SDP.
        offer: Option<String>,
        /// The app's reserved place for the session.
        slot: SessionSlot,
        /// Answer SDP, if an offer was given.
        reply: Reply<Option<String>>,
    },
    /// `POST tracks/new`.
    TracksNew {
        /// Session.
        id: SessionId,
        /// Body.
        request: TracksRequest,
        /// Result.
        reply: Reply<TracksResponse>,
    },
    /// `PUT renegotiate`.
    Renegotiate {
        /// Session.
        id: SessionId,
        /// The client's SDP.
        description: SessionDescription,
        /// Result.
        reply: Reply<RenegotiateResponse>,
    },
    /// `PUT tracks/close`.
    Close {
        /// Session.
        id: SessionId,
        /// Body.
        request: CloseTracksRequest,
        /// Result.
        reply: Reply<CloseTracksResponse>,
    },
    /// `PUT tracks/update`.
    Update {
        /// Session.
        id: SessionId,
        /// Body.
        request: UpdateTracksRequest,
        /// Result.
        reply: Reply<UpdateTracksResponse>,
    },
    /// `POST tracks/keyframe` (Satsuma extension): PLIs to the session's own video tracks.
    Keyframe {
        /// Session.
        id: SessionId,
        /// Body.
        request: KeyframeTracksRequest,
        /// Result.
        reply: Reply<KeyframeTracksResponse>,
    },
    /// `GET sessions/{id}`.
    Get {
        /// Session.
        id: SessionId,
        /// Result.
        reply: Reply<SessionState>,
    },
    /// `DELETE sessions/{id}` (Satsuma extension): close the session and end its tracks.
    Delete {
        /// Session.
        id: SessionId,
        /// `Ok` once it is gone, 404 if there was no such session.
        reply: Reply<()>,
    },
}

/// Everything a shard can be told.
#[derive(Debug)]
pub enum ShardMsg {
    /// An API command.
    Api(ApiCommand),
    /// A datagram for one of our sessions.
    Datagram(Datagram),
    /// A packet of a track some of our sessions subscribe to.
    Media {
        /// Track.
        track: TrackId,
        /// Packet (shared).
        packet: Arc<MediaPacket>,
    },
    /// Shard `shard` gained a leg on our track.
    Subscribe {
        /// Track.
        track: TrackId,
        /// Subscriber shard.
        shard: ShardId,
    },
    /// Shard `shard` lost a leg on our track.
    Unsubscribe {
        /// Track.
        track: TrackId,
        /// Subscriber shard.
        shard: ShardId,
    },
    /// A subscriber wants a keyframe of our track.
    KeyframeRequest {
        /// Track.
        track: TrackId,
        /// Layer.
        rid: Option<Rid>,
        /// PLI or FIR.
        kind: KeyframeRequestKind,
        /// The leg asking has not received a keyframe yet (see [`Forwarder::keyframe_request`]).
        fresh: bool,
    },
    /// A track our legs carried is gone.
    TrackEnded {
        /// Track.
        track: TrackId,
    },
    /// Shard `shard` panicked and was reset: forget it as a subscriber of our tracks and end
    /// our legs on its tracks.
    ShardReset {
        /// The reset shard.
        shard: ShardId,
        /// Tracks from this id on were published after the reset: their legs stay.
        before: TrackId,
    },
    /// Test hook (only routed with `Config::test_hooks`): panic on the shard's thread.
    InjectPanic,
}

/// What every shard shares: configuration, directory, metrics, the socket, its peers.
#[derive(Debug)]
pub struct ShardContext {
    /// Server configuration.
    pub config: Config,
    /// Session/track directory.
    pub directory: Arc<Directory>,
    /// Metrics.
    pub metrics: Metrics,
    /// The one UDP socket, with batched I/O.
    pub udp: Arc<UdpIo>,
    /// Our ICE host candidate addresses.
    pub candidates: Vec<SocketAddr>,
    /// Control channel of the UDP driver (the ICE-TCP driver gets the same messages).
    pub udp_control: mpsc::UnboundedSender<UdpControl>,
    /// The ICE-TCP driver's send side and candidates (`None`: ICE-TCP is off).
    pub tcp: Option<Arc<crate::tcp::TcpShared>>,
    /// What `/healthz` reports.
    pub health: Arc<ShardHealth>,
}

/// What draining a session produced, handled once the session is no longer borrowed.
enum SessionEvent {
    Media(TrackId, Arc<MediaPacket>),
    KeyframeFromLeg(LegKey, KeyframeRequestKind),
    Estimate(u64),
    /// Fraction lost and round-trip time on one leg, from the subscriber's latest receiver report.
    EgressReport(Option<f32>, Option<Duration>),
    /// Once a second: str0m's latest (unsmoothed) egress estimate and the egress loss over the
    /// last second from transport-wide feedback.
    PeerReport(Option<u64>, Option<f32>),
    Connected,
    /// The transport is connected again after an ICE restart.
    IceReconnected,
    Failed(String),
}

/// Messages this shard sends to one peer shard. Media and datagrams may be dropped when the
/// peer's inbox is full (counted as `shard_queue_full`): loss is what UDP media tolerates, and
/// NACK/RTX and keyframe requests repair it. Control messages (subscribe, unsubscribe, track
/// ended, keyframe request, shard reset) must not be lost, or a leg would stay silent for good:
/// they wait here, in order, and go out as soon as the peer has room.
#[derive(Debug, Default)]
struct PeerOutbox {
    deferred: VecDeque<ShardMsg>,
}

/// Control messages kept for one peer at most; beyond, the peer is stuck and they are dropped
/// (counted and logged).
const MAX_DEFERRED: usize = 65_536;

/// What [`PeerOutbox::send`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Delivered,
    Deferred,
    Dropped,
    PeerGone,
}

impl ShardMsg {
    /// Whether losing this message on a full inbox is acceptable.
    fn is_lossy(&self) -> bool {
        matches!(self, ShardMsg::Media { .. } | ShardMsg::Datagram(_))
    }
}

impl PeerOutbox {
    fn send(&mut self, tx: &mpsc::Sender<ShardMsg>, msg: ShardMsg) -> Sent {
        let lossy = msg.is_lossy();
        if !lossy && !self.deferred.is_empty() {
            return self.defer(msg);
        }
        match tx.try_send(msg) {
            Ok(()) => Sent::Delivered,
            Err(mpsc::error::TrySendError::Full(msg)) if !lossy => self.defer(msg),
            Err(mpsc::error::TrySendError::Full(_)) => Sent::Dropped,
            Err(mpsc::error::TrySendError::Closed(_)) => Sent::PeerGone,
        }
    }

    fn defer(&mut self, msg: ShardMsg) -> Sent {
        if self.deferred.len() >= MAX_DEFERRED {
            return Sent::Dropped;
        }
        self.deferred.push_back(msg);
        Sent::Deferred
    }

    /// Sends deferred messages while the peer has room; returns how many went out.
    fn retry(&mut self, tx: &mpsc::Sender<ShardMsg>) -> usize {
        let mut sent = 0;
        while let Some(msg) = self.deferred.pop_front() {
            match tx.try_send(msg) {
                Ok(()) => sent += 1,
                Err(mpsc::error::TrySendError::Full(msg)) => {
                    self.deferred.push_front(msg);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.deferred.clear();
                    break;
                }
            }
        }
        sent
    }
}

/// See the module docs.
pub struct Shard {
    id: ShardId,
    ctx: Arc<ShardContext>,
    peers: Vec<mpsc::Sender<ShardMsg>>,
    outboxes: Vec<PeerOutbox>,
    sessions: HashMap<SessionId, Session>,
    forwarder: Forwarder,
    local: VecDeque<ShardMsg>,
    dirty: Vec<SessionId>,
    dirty_set: HashSet<SessionId>,
    writes: Vec<LegWrite>,
    fanout: Vec<ShardId>,
    events: Vec<SessionEvent>,
    next_housekeeping: Instant,
    speakers: SpeakerDetector,
    egress: Egress,
}

impl Shard {
    /// A shard with index `id`; `peers[i]` reaches shard `i` (including this one).
    pub fn new(id: ShardId, ctx: Arc<ShardContext>, peers: Vec<mpsc::Sender<ShardMsg>>) -> Shard {
        let outboxes = peers.iter().map(|_| PeerOutbox::default()).collect();
        Shard {
            id,
            ctx,
            peers,
            outboxes,
            sessions: HashMap::new(),
            forwarder: Forwarder::new(KEYFRAME_INTERVAL),
            local: VecDeque::new(),
            dirty: Vec::new(),
            dirty_set: HashSet::new(),
            writes: Vec::new(),
            fanout: Vec::new(),
            events: Vec::new(),
            next_housekeeping: Instant::now(),
            speakers: SpeakerDetector::default(),
            egress: Egress::default(),
        }
    }

    /// Runs until the channel closes or `stop` fires (or its sender is dropped); then closes
    /// every session. Time spent handling work (not waiting) is added to the shard's busy-time
    /// counter, so `rate(satsuma_sfu_shard_busy_seconds_total)` is the shard's utilisation.
    ///
    /// Each batch of work runs under `catch_unwind`. A panic that escapes the per-session guards
    /// (a bug in the shard itself) is counted (`satsuma_sfu_shard_panics_total`), reported by
    /// `/healthz`, and survived: every session of this shard is closed (their API calls answer
    /// 404, their clients reconnect), the shard's state is reset, the other shards are told,
    /// and the shard takes new work. No lock or allocation is added to the packet path.
    pub async fn run(
        mut self,
        rx: &mut mpsc::Receiver<ShardMsg>,
        stop: &mut oneshot::Receiver<()>,
    ) {
        let shard_label = self.id.to_string();
        let busy = self
            .ctx
            .metrics
            .shard_busy_seconds
            .with_label_values(&[&shard_label]);
        let sessions_gauge = self
            .ctx
            .metrics
            .shard_sessions
            .with_label_values(&[&shard_label]);
        loop {
            let deadline = self.next_deadline();
            let first = tokio::select! {
                biased;
                _ = &mut *stop => break,
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    Some(msg)
                }
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => None,
            };
            let started = Instant::now();
            let worked = catch_unwind(AssertUnwindSafe(|| {
                if let Some(msg) = first {
                    self.handle(msg);
                    for _ in 0..BATCH {
                        match rx.try_recv() {
                            Ok(msg) => self.handle(msg),
                            Err(_) => break,
                        }
                    }
                    self.handle_timeouts(Instant::now());
                } else {
                    self.handle_timeouts(started);
                }
                self.retry_deferred();
                self.flush();
            }));
            if worked.is_err() {
                self.recover_from_panic();
            }
            busy.inc_by(started.elapsed().as_secs_f64());
            sessions_gauge.set(i64::try_from(self.sessions.len()).unwrap_or(i64::MAX));
        }
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.remove_session(id, "shutdown");
        }
        self.flush();
        sessions_gauge.set(0);
    }

    /// After a panic escaped a batch of work: close every session of this shard, reset its
    /// state, and tell the UDP driver, the directory and the other shards.
    fn recover_from_panic(&mut self) {
        let now = Instant::now();
        tracing::error!(
            shard = self.id,
            sessions = self.sessions.len(),
            "shard panicked: closing its sessions and restarting it"
        );
        self.ctx
            .metrics
            .shard_panics
            .with_label_values(&[&self.id.to_string()])
            .inc();
        self.ctx.health.note_panic(self.id, now);
        self.local.clear();
        self.dirty.clear();
        self.dirty_set.clear();
        self.writes.clear();
        self.events.clear();
        // Close each session the normal way (its tracks end for subscribers elsewhere, its legs
        // are given back, the directory and the UDP driver forget it). The state may be what
        // made the shard panic: a panic here only cuts the clean-up short.
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        let cleaned = catch_unwind(AssertUnwindSafe(|| {
            for id in ids {
                self.remove_session(id, "shard panic");
            }
        }));
        if cleaned.is_err() {
            tracing::error!(
                shard = self.id,
                "clean-up after the shard panic panicked too"
            );
        }
        // Whatever the clean-up missed: forget this shard's sessions everywhere.
        for id in self.ctx.directory.remove_shard(self.id) {
            self.ctx.metrics.sessions.dec();
            let _ = self
                .ctx
                .udp_control
                .send(UdpControl::Unregister { session: id });
        }
        for shard in 0..self.peers.len() {
            if shard != self.id {
                let before = self.ctx.directory.next_track_id();
                self.send_to_shard(
                    shard,
                    ShardMsg::ShardReset {
                        shard: self.id,
                        before,
                    },
                );
            }
        }
        self.sessions = HashMap::new();
        self.forwarder = Forwarder::new(KEYFRAME_INTERVAL);
        self.local.clear();
        self.speakers = SpeakerDetector::default();
        self.egress = Egress::default();
        self.next_housekeeping = now;
    }

    /// Sends what the last batch of work produced (see [`crate::egress`]).
    pub fn flush(&mut self) {
        self.ctx.udp.flush(&mut self.egress, &self.ctx.metrics);
    }

    fn next_deadline(&self) -> Instant {
        let deadline = self
            .sessions
            .values()
            .map(|s| s.next_timeout)
            .fold(self.next_housekeeping, Instant::min);
        if self.has_deferred() {
            // Control messages wait for a peer's room: look again soon.
            return deadline.min(Instant::now() + Duration::from_millis(1));
        }
        deadline
    }

    /// Handles one message and everything it causes locally.
    pub fn handle(&mut self, msg: ShardMsg) {
        self.handle_one(msg);
        self.settle();
    }

    fn handle_one(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Api(cmd) => self.handle_api(cmd),
            ShardMsg::Datagram(d) => self.handle_datagram(d),
            ShardMsg::Media { track, packet } => {
                self.note_audio_level(track, &packet);
                self.forward_local(track, &packet);
            }
            ShardMsg::Subscribe { track, shard } => {
                if !self.forwarder.add_subscriber_shard(track, shard) {
                    self.send_to_shard(shard, ShardMsg::TrackEnded { track });
                }
            }
            ShardMsg::Unsubscribe { track, shard } => {
                self.forwarder.remove_subscriber_shard(track, shard);
            }
            ShardMsg::KeyframeRequest {
                track,
                rid,
                kind,
                fresh,
            } => {
                self.keyframe_to_publisher(track, rid, kind, fresh, Instant::now());
            }
            ShardMsg::TrackEnded { track } => self.end_local_legs(track),
            ShardMsg::ShardReset { shard, before } => {
                for track in self.forwarder.forget_shard(shard, before) {
                    self.end_local_legs(track);
                }
            }
            ShardMsg::InjectPanic => injected_panic(self.id),
        }
    }

    /// Drains dirty sessions and local messages until nothing is left.
    fn settle(&mut self) {
        loop {
            if let Some(id) = self.dirty.pop() {
                self.dirty_set.remove(&id);
                self.drain(id);
                continue;
            }
            if let Some(msg) = self.local.pop_front() {
                self.handle_one(msg);
                continue;
            }
            break;
        }
    }

    fn mark_dirty(&mut self, id: SessionId) {
        if self.dirty_set.insert(id) {
            self.dirty.push(id);
        }
    }

    /// Asks the publisher's shard `home` for a keyframe (PLI) of `track`'s layer `rid`; `fresh`
    /// when the leg asking has not received a keyframe yet.
    fn request_pli(&mut self, home: ShardId, track: TrackId, rid: Option<Rid>, fresh: bool) {
        self.send_to_shard(
            home,
            ShardMsg::KeyframeRequest {
                track,
                rid,
                kind: KeyframeRequestKind::Pli,
                fresh,
            },
        );
    }

    fn send_to_shard(&mut self, shard: ShardId, msg: ShardMsg) {
        if shard == self.id {
            self.local.push_back(msg);
            return;
        }
        let (Some(tx), Some(outbox)) = (self.peers.get(shard), self.outboxes.get_mut(shard)) else {
            self.ctx.metrics.drop(PacketDrop::UnknownShard);
            return;
        };
        match outbox.send(tx, msg) {
            Sent::Delivered => self.ctx.metrics.cross_shard_messages.inc(),
            Sent::Deferred => {}
            Sent::Dropped => self.ctx.metrics.drop(PacketDrop::ShardQueueFull),
            Sent::PeerGone => self.ctx.metrics.drop(PacketDrop::UnknownShard),
        }
    }

    /// Sends the control messages that waited for room in a peer's inbox.
    fn retry_deferred(&mut self) {
        for (tx, outbox) in self.peers.iter().zip(self.outboxes.iter_mut()) {
            let sent = outbox.retry(tx);
            self.ctx.metrics.cross_shard_messages.inc_by(sent as u64);
        }
    }

    fn has_deferred(&self) -> bool {
        self.outboxes.iter().any(|o| !o.deferred.is_empty())
    }

    // ---- the packet path --------------------------------------------------------------------

    fn handle_datagram(&mut self, d: Datagram) {
        let ctx = Arc::clone(&self.ctx);
        let metrics = &ctx.metrics;
        let Some(session) = self.sessions.get_mut(&d.session) else {
            metrics.drop(PacketDrop::UnknownSession);
            return;
        };
        let Ok(contents) = DatagramRecv::try_from(d.data.as_slice()) else {
            metrics.drop(PacketDrop::Unclassified);
            return;
        };
        let input = Input::Receive(
            d.received,
            Receive {
                proto: d.proto,
                source: d.source,
                destination: d.destination,
                contents,
            },
        );
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if !session.rtc.accepts(&input) {
                return Ok(false);
            }
            session.rtc.handle_input(input).map(|()| true)
        }));
        match outcome {
            Ok(Ok(true)) => {
                session.last_received = session.last_received.max(d.received);
                self.mark_dirty(d.session);
            }
            Ok(Ok(false)) => metrics.drop(PacketDrop::NotAccepted),
            Ok(Err(e)) => {
                tracing::debug!(session = %d.session, "input refused: {e}");
                metrics.drop(PacketDrop::RtcInputError);
                self.mark_dirty(d.session);
            }
            Err(_) => self.session_panicked(d.session),
        }
    }

    fn handle_timeouts(&mut self, now: Instant) {
        let due: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.next_timeout <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(session) = self.sessions.get_mut(&id) else {
                continue;
            };
            match catch_unwind(AssertUnwindSafe(|| {
                session.rtc.handle_input(Input::Timeout(now))
            })) {
                Ok(Ok(())) => self.mark_dirty(id),
                Ok(Err(e)) => {
                    tracing::debug!(session = %id, "timeout handling failed: {e}");
                    self.remove_session(id, "rtc_error");
                }
                Err(_) => self.session_panicked(id),
            }
        }
        self.settle();
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING;
            self.housekeeping(now);
            self.select_layers(now, None);
            self.settle();
        }
    }

    /// Polls a session until str0m reports its next timeout, sending its datagrams and turning
    /// its events into [`SessionEvent`]s.
    fn drain(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let ctx = &self.ctx;
        let shard = self.id;
        let mut events = std::mem::take(&mut self.events);
        let egress = &mut self.egress;
        let result = catch_unwind(AssertUnwindSafe(|| {
            drain_session(session, ctx, shard, &mut events, egress)
        }));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => events.push(SessionEvent::Failed(e)),
            Err(_) => {
                events.clear();
                self.events = events;
                self.session_panicked(id);
                return;
            }
        }
        for ev in events.drain(..) {
            match ev {
                SessionEvent::Media(track, pkt) => {
                    self.ctx.metrics.rtp_in.inc();
                    self.fanout(track, pkt);
                }
                SessionEvent::KeyframeFromLeg(leg, kind) => {
                    self.ctx
                        .metrics
                        .keyframe_requests
                        .with_label_values(&["from_subscriber"])
                        .inc();
                    if let Some((track, home, rid)) = self.forwarder.leg_source(leg) {
                        let fresh = !self.forwarder.leg_has_keyframe(leg);
                        self.send_to_shard(
                            home,
                            ShardMsg::KeyframeRequest {
                                track,
                                rid,
                                kind,
                                fresh,
                            },
                        );
                    }
                }
                SessionEvent::Estimate(bps) => {
                    self.ctx.metrics.bandwidth_estimate.observe(bps as f64);
                    let now = Instant::now();
                    if self.forwarder.note_estimate(id, bps, now) {
                        self.select_layers(now, Some(id));
                    }
                }
                SessionEvent::PeerReport(estimate, loss) => {
                    let now = Instant::now();
                    if self.forwarder.note_peer_report(id, estimate, loss, now) {
                        self.select_layers(now, Some(id));
                    }
                }
                SessionEvent::EgressReport(loss, rtt) => {
                    let now = Instant::now();
                    if self.forwarder.note_egress_report(id, loss, rtt, now) {
                        self.select_layers(now, Some(id));
                    }
                }
                SessionEvent::Connected => self.request_keyframes_for(id),
                SessionEvent::IceReconnected => self.ice_reconnected(id),
                SessionEvent::Failed(reason) => {
                    tracing::info!(session = %id, "session failed: {reason}");
                    self.remove_session(id, "rtc_error");
                }
            }
        }
        self.events = events;
    }

    fn fanout(&mut self, track: TrackId, pkt: Arc<MediaPacket>) {
        self.note_audio_level(track, &pkt);
        if pkt.keyframe {
            self.forwarder.note_keyframe(track, pkt.rid);
        }
        let Some(shards) = self.forwarder.note_media(track, pkt.rid, pkt.arrival) else {
            self.ctx.metrics.drop(PacketDrop::UnpublishedTrack);
            return;
        };
        self.fanout.clear();
        self.fanout.extend(shards.iter().map(|(s, _)| *s));
        for i in 0..self.fanout.len() {
            let shard = self.fanout[i];
            if shard == self.id {
                self.forward_local(track, &pkt);
            } else {
                self.send_to_shard(
                    shard,
                    ShardMsg::Media {
                        track,
                        packet: Arc::clone(&pkt),
                    },
                );
            }
        }
    }

    /// Feeds the active-speaker detector (once per packet and shard, not per leg).
    fn note_audio_level(&mut self, track: TrackId, pkt: &MediaPacket) {
        if let Some(level) = pkt.ext.audio_level {
            self.ctx.metrics.audio_level_packets.inc();
            self.speakers
                .observe(track, level, pkt.ext.voice_activity, pkt.arrival);
        }
    }

    /// Updates every session's active speaker and the speaking-tracks gauge.
    fn update_speakers(&mut self, now: Instant) {
        self.speakers.expire(now);
        let mut speaking = 0i64;
        let mut changes = 0u64;
        for session in self.sessions.values_mut() {
            speaking += session
                .publications
                .values()
                .filter(|p| p.active && p.kind == MediaKind::Audio)
                .filter(|p| {
                    self.speakers
                        .level(p.track, now)
                        .is_some_and(|l| l.speaking)
                })
                .count() as i64;
            let candidates = session
                .subscriptions
                .values()
                .filter(|s| s.kind == MediaKind::Audio && s.state == LegState::Active)
                .map(|s| s.track);
            let chosen = self
                .speakers
                .choose(candidates, session.active_speaker, now);
            if chosen != session.active_speaker {
                if chosen.is_some() {
                    changes += 1;
                }
                session.active_speaker = chosen;
            }
        }
        let metrics = &self.ctx.metrics;
        metrics.active_speaker_changes.inc_by(changes);
        metrics
            .speaking_tracks
            .with_label_values(&[&self.id.to_string()])
            .set(speaking);
    }

    fn forward_local(&mut self, track: TrackId, pkt: &MediaPacket) {
        let mut writes = std::mem::take(&mut self.writes);
        let outcome = self.forwarder.forward(track, pkt, &mut writes);
        for reason in &outcome.dropped {
            self.ctx.metrics.drop((*reason).into());
        }
        self.ctx.metrics.count_layer_outcome(&outcome);
        if let Some((home, rid)) = outcome.wants_keyframe {
            self.request_pli(home, track, rid, false);
        }
        let paced = paced(&self.ctx.config, pkt.rid.is_some());
        for w in writes.drain(..) {
            self.write_leg(w, paced);
        }
        self.writes = writes;
    }

    /// Simulcast layer selection for every subscriber session here; tells str0m what each
    /// session would like to send so that its BWE probes for it.
    fn select_layers(&mut self, now: Instant, only: Option<SessionId>) {
        for (id, plan) in self.forwarder.select_layers(now, only) {
            let Some(session) = self.sessions.get_mut(&id) else {
                continue;
            };
            if !session.wants_bitrate(plan.minimum_bps, plan.desired_bps) {
                continue;
            }
            match catch_unwind(AssertUnwindSafe(|| {
                session.rtc.bwe().set_bitrate(
                    Bitrate::bps(plan.minimum_bps),
                    Bitrate::bps(plan.desired_bps),
                );
            })) {
                Ok(()) => self.mark_dirty(id),
                Err(_) => self.session_panicked(id),
            }
        }
    }

    fn write_leg(&mut self, w: LegWrite, paced: bool) {
        let id = w.leg.session;
        let Some(session) = self.sessions.get_mut(&id) else {
            self.ctx.metrics.drop(PacketDrop::NoSubscriberSession);
            return;
        };
        let written = catch_unwind(AssertUnwindSafe(|| {
            let mut api = session.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(w.leg.mid, None) else {
                return false;
            };
            tx.set_unpaced(!paced);
            let mut write = RtpWrite::new(w.pt, w.seq.into(), w.timestamp, w.wallclock, w.payload)
                .marker(w.marker)
                .nackable(w.nackable)
                .ext_vals(w.ext);
            // The only bytes of a payload the SFU may change: the VP8 descriptor's PictureID
            // and TL0PICIDX (see `crate::vp8`), patched as str0m serialises the packet.
            if let Some(patch) = w.vp8_patch {
                write = write.vp8_patch(patch);
            }
            tx.write_rtp(write);
            true
        }));
        match written {
            Ok(true) => {
                self.ctx.metrics.forwarded.inc();
                self.mark_dirty(id);
            }
            Ok(false) => self.ctx.metrics.drop(PacketDrop::NoSendStream),
            Err(_) => self.session_panicked(id),
        }
    }

    fn keyframe_to_publisher(
        &mut self,
        track: TrackId,
        rid: Option<Rid>,
        kind: KeyframeRequestKind,
        fresh: bool,
        now: Instant,
    ) {
        // A request to a publisher whose transport is not up would be lost; do not let it use
        // up the throttle.
        let publisher_up = self
            .forwarder
            .publication_owner(track)
            .and_then(|(s, _)| self.sessions.get(&s))
            .is_some_and(Session::is_connected);
        if !publisher_up {
            return;
        }
        let Some(target) = self.forwarder.keyframe_request(track, rid, fresh, now) else {
            return;
        };
        self.send_keyframe_request(target, kind);
    }

    /// Keyframe requests the throttle held back and now lets through (see
    /// [`Forwarder::owed_keyframe_requests`]); those of a publisher whose transport is down are
    /// dropped, as in [`Shard::keyframe_to_publisher`].
    fn send_owed_keyframe_requests(&mut self, now: Instant) {
        for (_, target) in self.forwarder.owed_keyframe_requests(now) {
            if self
                .sessions
                .get(&target.session)
                .is_some_and(Session::is_connected)
            {
                self.send_keyframe_request(target, KeyframeRequestKind::Pli);
            }
        }
    }

    /// Asks a local publisher for a keyframe (the throttle already passed it).
    fn send_keyframe_request(&mut self, target: KeyframeTarget, kind: KeyframeRequestKind) {
        let Some(session) = self.sessions.get_mut(&target.session) else {
            return;
        };
        let sent = catch_unwind(AssertUnwindSafe(|| {
            let mut api = session.rtc.direct_api();
            let rx = match api.stream_rx_by_mid(target.mid, target.rid) {
                Some(rx) => Some(rx),
                None => api.stream_rx_by_mid(target.mid, None),
            };
            rx.map(|rx| rx.request_keyframe(kind)).is_some()
        }));
        match sent {
            Ok(true) => {
                self.ctx
                    .metrics
                    .keyframe_requests
                    .with_label_values(&["to_publisher"])
                    .inc();
                self.mark_dirty(target.session);
            }
            Ok(false) => {}
            Err(_) => self.session_panicked(target.session),
        }
    }

    /// A subscriber's transport came up (first time, or again after an ICE restart): ask for
    /// keyframes on all its video legs. These requests are fresh: whatever keyframe came before
    /// did not reach this transport.
    fn request_keyframes_for(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        let wanted: Vec<(TrackId, ShardId, Option<Rid>)> = session
            .subscriptions
            .values()
            .filter(|s| s.state == LegState::Active && s.kind == MediaKind::Video)
            .map(|s| (s.track, s.home, s.preferred_rid))
            .collect();
        for (track, home, rid) in wanted {
            self.request_pli(home, track, rid, true);
        }
    }

    /// A session's transport is connected again after an ICE restart: media was lost while the
    /// path was down, so ask for keyframes of what it pulls and of the video it publishes.
    fn ice_reconnected(&mut self, id: SessionId) {
        self.request_keyframes_for(id);
        let published: Vec<TrackId> = self
            .sessions
            .get(&id)
            .map(|s| {
                s.publications
                    .values()
                    .filter(|p| p.active && p.kind == MediaKind::Video)
                    .map(|p| p.track)
                    .collect()
            })
            .unwrap_or_default();
        let now = Instant::now();
        for track in published {
            self.keyframe_to_publisher(track, None, KeyframeRequestKind::Pli, false, now);
        }
    }

    // ---- lifecycle --------------------------------------------------------------------------

    fn housekeeping(&mut self, now: Instant) {
        let session_timeout = self.ctx.config.session_timeout;
        let gone: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                !s.rtc.is_alive()
                    || s.transport_lost_since
                        .is_some_and(|t| now.saturating_duration_since(t) >= session_timeout)
                    || now.saturating_duration_since(s.last_received) >= session_timeout
            })
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            tracing::info!(session = %id, "collecting session: transport gone");
            self.ctx.metrics.sessions_collected.inc();
            self.remove_session(id, "collected");
        }
        for track in self
            .forwarder
            .silent_publications(now, self.ctx.config.track_timeout)
        {
            tracing::info!(?track, "collecting track: no media");
            self.ctx.metrics.tracks_collected.inc();
            self.unpublish(track);
        }
        self.update_speakers(now);
        self.send_owed_keyframe_requests(now);
    }

    fn session_panicked(&mut self, id: SessionId) {
        tracing::error!(session = %id, "session handling panicked; tearing the session down");
        self.ctx.metrics.session_panics.inc();
        self.remove_session(id, "panic");
    }

    fn remove_session(&mut self, id: SessionId, why: &str) {
        let existed = match self.sessions.remove(&id) {
            Some(mut s) => {
                // A panic may have left the Rtc inconsistent: never let a second one escape.
                let _ = catch_unwind(AssertUnwindSafe(|| s.rtc.disconnect()));
                true
            }
            None => false,
        };
        let removed = self.forwarder.remove_session(id);
        for (track, shards) in removed.publications {
            self.ctx.metrics.tracks.dec();
            for shard in shards {
                self.send_to_shard(shard, ShardMsg::TrackEnded { track });
            }
        }
        for (_, track, home) in removed.legs {
            self.ctx.metrics.subscriptions.dec();
            self.send_to_shard(
                home,
                ShardMsg::Unsubscribe {
                    track,
                    shard: self.id,
                },
            );
        }
        self.ctx.directory.remove_session(id);
        let _ = self
            .ctx
            .udp_control
            .send(UdpControl::Unregister { session: id });
        if existed {
            self.ctx.metrics.sessions.dec();
            tracing::debug!(session = %id, why, "session removed");
        }
    }

    fn unpublish(&mut self, track: TrackId) {
        let Some((session_id, mid)) = self.forwarder.publication_owner(track) else {
            return;
        };
        let shards = self.forwarder.unpublish(track);
        self.speakers.forget(track);
        self.ctx.metrics.tracks.dec();
        for shard in shards {
            self.send_to_shard(shard, ShardMsg::TrackEnded { track });
        }
        if let Some(p) = self
            .sessions
            .get_mut(&session_id)
            .and_then(|s| s.publications.get_mut(&mid))
        {
            p.active = false;
            self.ctx.directory.unpublish(session_id, &p.name, track);
        }
    }

    fn end_local_legs(&mut self, track: TrackId) {
        for leg in self.forwarder.end_track(track) {
            self.ctx.metrics.subscriptions.dec();
            if let Some(sub) = self
                .sessions
                .get_mut(&leg.session)
                .and_then(|s| s.subscriptions.get_mut(&leg.mid))
            {
                sub.state = LegState::Inactive;
            }
        }
        // Legs still negotiating on that track will never get media either.
        for s in self.sessions.values_mut() {
            for sub in s.subscriptions.values_mut() {
                if sub.track == track && sub.state == LegState::Negotiating {
                    sub.state = LegState::Inactive;
                }
            }
        }
    }

    fn activate_leg(&mut self, id: SessionId, mid: Mid) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(sub) = session.subscriptions.get(&mid) else {
            return;
        };
        if sub.state != LegState::Negotiating {
            return;
        }
        let (track, home, rid, kind) = (sub.track, sub.home, sub.preferred_rid, sub.kind);
        let pt_map = session.pt_map(mid, &sub.source_params);
        if let Some(sub) = session.subscriptions.get_mut(&mid) {
            sub.state = LegState::Active;
        }
        let leg = LegKey { session: id, mid };
        let seq_start = rand::random_range(1..16_384u64);
        self.forwarder
            .subscribe(track, home, leg, pt_map, rid, seq_start, rand::random());
        self.ctx.metrics.subscriptions.inc();
        self.send_to_shard(
            home,
            ShardMsg::Subscribe {
                track,
                shard: self.id,
            },
        );
        // A new leg needs a keyframe. Before the subscriber's transport is up one would be
        // lost, and the request would hold back the one `Connected` makes: that one asks then.
        let connected = self.sessions.get(&id).is_some_and(Session::is_connected);
        if kind == MediaKind::Video && connected {
            self.request_pli(home, track, rid, true);
        }
    }

    fn deactivate_leg(&mut self, id: SessionId, mid: Mid) {
        if let Some((track, home)) = self.forwarder.unsubscribe(LegKey { session: id, mid }) {
            self.ctx.metrics.subscriptions.dec();
            self.send_to_shard(
                home,
                ShardMsg::Unsubscribe {
                    track,
                    shard: self.id,
                },
            );
        }
        if let Some(sub) = self
            .sessions
            .get_mut(&id)
            .and_then(|s| s.subscriptions.get_mut(&mid))
        {
            sub.state = LegState::Inactive;
        }
    }

    // ---- API --------------------------------------------------------------------------------

    fn handle_api(&mut self, cmd: ApiCommand) {
        match cmd {
            ApiCommand::Create {
                id,
                app,
                offer,
                slot,
                reply,
            } => {
                let r = self.guarded(id, |s| s.create(id, app, offer, slot));
                let _ = reply.send(r);
            }
            ApiCommand::TracksNew { id, request, reply } => {
                let r = self.guarded(id, |s| s.tracks_new(id, request));
                let _ = reply.send(r);
            }
            ApiCommand::Renegotiate {
                id,
                description,
                reply,
            } => {
                let r = self.guarded(id, |s| s.renegotiate(id, description));
                let _ = reply.send(r);
            }
            ApiCommand::Close { id, request, reply } => {
                let r = self.guarded(id, |s| s.close(id, request));
                let _ = reply.send(r);
            }
            ApiCommand::Update { id, request, reply } => {
                let r = self.guarded(id, |s| s.update(id, request));
                let _ = reply.send(r);
            }
            ApiCommand::Keyframe { id, request, reply } => {
                let r = self.guarded(id, |s| s.publisher_keyframe(id, request));
                let _ = reply.send(r);
            }
            ApiCommand::Get { id, reply } => {
                let r = self.guarded(id, |s| s.get(id));
                let _ = reply.send(r);
            }
            ApiCommand::Delete { id, reply } => {
                let r = if self.sessions.contains_key(&id) {
                    self.remove_session(id, "deleted through the API");
                    Ok(())
                } else {
                    Err(ApiError::no_session())
                };
                let _ = reply.send(r);
            }
        }
    }

    /// Runs an API operation; a panic inside tears the session down and becomes a 500.
    fn guarded<T>(
        &mut self,
        id: SessionId,
        op: impl FnOnce(&mut Shard) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        match catch_unwind(AssertUnwindSafe(|| op(self))) {
            Ok(r) => {
                self.mark_dirty(id);
                r
            }
            Err(_) => {
                self.session_panicked(id);
                Err(ApiError::internal("session failed and was closed"))
            }
        }
    }

    fn session_mut(&mut self, id: SessionId) -> Result<&mut Session, ApiError> {
        self.sessions.get_mut(&id).ok_or_else(ApiError::no_session)
    }

    fn create(
        &mut self,
        id: SessionId,
        app: Arc<str>,
        offer: Option<String>,
        slot: SessionSlot,
    ) -> Result<Option<String>, ApiError> {
        let now = Instant::now();
        let mut session = Session::new(
            id,
            Arc::clone(&app),
            &self.ctx.candidates,
            self.ctx.config.bwe_initial_kbps,
            now,
        );
        session.ingress = ingress_budget(self.ctx.config.limits.session_max_ingress_kbps, now);
        if let Some(tcp) = &self.ctx.tcp {
            session.add_tcp_candidates(tcp.candidates());
        }
        let answer = match offer {
            Some(sdp) => Some(accept_offer(&mut session, &sdp, &self.ctx, self.id)?),
            None => None,
        };
        let _ = self.ctx.udp_control.send(UdpControl::Register {
            ufrag: session.ufrag.clone(),
            session: id,
            shard: self.id,
        });
        self.ctx.directory.add_session(
            id,
            app,
            self.id,
            self.ctx.config.session_requests_per_second,
        );
        slot.commit();
        self.ctx.metrics.sessions.inc();
        self.sessions.insert(id, session);
        if let Some(bps) = initial_estimate_bps(&self.ctx.config) {
            // Until str0m's first estimate, layers are chosen to fit the initial one: a leg
            // that started on the top layer would overfill the pacer before the estimate came.
            self.forwarder.note_estimate(id, bps, now);
        }
        Ok(answer)
    }

    fn tracks_new(
        &mut self,
        id: SessionId,
        request: TracksRequest,
    ) -> Result<TracksResponse, ApiError> {
        let now = Instant::now();
        let shard = self.id;
        let ctx = Arc::clone(&self.ctx);
        let directory = &ctx.directory;
        let limits = &ctx.config.limits;
        let session = self.session_mut(id)?;
        let app = Arc::clone(&session.app);

        let answer = match &request.session_description {
            Some(sd) if sd.kind == SdpType::Offer => {
                Some(accept_offer(session, &sd.sdp, &ctx, shard)?)
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "tracks/new takes an offer; answers go to renegotiate",
                ));
            }
            None => None,
        };

        let mut results = Vec::with_capacity(request.tracks.len());
        let mut published = Vec::new();
        let mut bound = Vec::new();
        let mut to_offer: Vec<(usize, Subscription)> = Vec::new();

        for t in &request.tracks {
            let i = results.len();
            match t.location {
                Some(Location::Local) => {
                    let r = TrackResult {
                        track_name: t.track_name.clone(),
                        mid: t.mid.clone(),
                        ..Default::default()
                    };
                    let live = session.publications.values().filter(|p| p.active).count();
                    if live >= limits.session_max_publications {
                        ctx.metrics.refused(Quota::SessionPublications);
                        results.push(r.with_error(
                            "too_many_publications",
                            format!(
                                "a session may publish at most {} tracks at once",
                                limits.session_max_publications
                            ),
                        ));
                        continue;
                    }
                    match push_track(session, t, answer.is_some(), directory, shard, now) {
                        Ok((mid, track, kind)) => {
                            published.push((track, mid, kind));
                            results.push(r);
                        }
                        Err((code, text)) => results.push(r.with_error(code, text)),
                    }
                }
                Some(Location::Remote) => {
                    let r = TrackResult {
                        session_id: t.session_id.clone(),
                        track_name: t.track_name.clone(),
                        mid: t.mid.clone(),
                        ..Default::default()
                    };
                    let pulls = resolve_remote(directory, &app, t).and_then(|sub| {
                        check_pull_quota(session, &to_offer, sub.track, limits)
                            .map_err(|(quota, code, text)| {
                                ctx.metrics.refused(quota);
                                (code, text)
                            })
                            .map(|()| sub)
                    });
                    match pulls {
                        Err((code, text)) => results.push(r.with_error(code, text)),
                        Ok(sub) => match (&t.mid, answer.is_some()) {
                            (Some(mid), true) => {
                                let mid = Mid::from(mid.as_str());
                                match session.sends_on(mid) {
                                    Some(kind) if kind == sub.kind => {
                                        if session.subscriptions.contains_key(&mid)
                                            || session.publications.contains_key(&mid)
                                        {
                                            results.push(r.with_error(
                                                "invalid_params",
                                                "that mid already carries a track",
                                            ));
                                        } else {
                                            session.subscriptions.insert(mid, sub);
                                            bound.push(mid);
                                            results.push(r);
                                        }
                                    }
                                    _ => results.push(r.with_error(
                                        "invalid_params",
                                        "the offer has no receiving m-line of that kind with this mid",
                                    )),
                                }
                            }
                            (_, true) => results.push(r.with_error(
                                "invalid_params",
                                "with an offer, a remote track needs the mid of a receiving transceiver in that offer",
                            )),
                            (_, false) => {
                                to_offer.push((i, sub));
                                results.push(r);
                            }
                        },
                    }
                }
                None => results.push(
                    TrackResult {
                        mid: t.mid.clone(),
                        track_name: t.track_name.clone(),
                        session_id: t.session_id.clone(),
                        ..Default::default()
                    }
                    .with_error("invalid_params", "location must be local or remote"),
                ),
            }
        }

        let mut offer = None;
        if !to_offer.is_empty() {
            if session.pending.is_some() {
                for (i, _) in &to_offer {
                    if let Some(r) = results.get_mut(*i) {
                        *r = std::mem::take(r).with_error(
                            "renegotiation_pending",
                            "answer the previous SFU offer (renegotiate) before pulling more tracks",
                        );
                    }
                }
            } else {
                let mut api = session.rtc.sdp_api();
                let mut mids = Vec::new();
                for (i, sub) in &to_offer {
                    let mid = api.add_media(
                        sub.kind,
                        Direction::SendOnly,
                        Some(sub.source.to_string()),
                        Some(sub.name.clone()),
                        None,
                    );
                    mids.push((*i, mid));
                }
                match api.apply() {
                    Some((sdp, pending)) => {
                        session.pending = Some(pending);
                        offer = Some(sdp.to_sdp_string());
                        for ((i, sub), (_, mid)) in to_offer.into_iter().zip(mids) {
                            if let Some(r) = results.get_mut(i) {
                                r.mid = Some(mid.to_string());
                            }
                            session.subscriptions.insert(mid, sub);
                        }
                    }
                    None => return Err(ApiError::internal("could not create an offer")),
                }
            }
        }

        for (track, mid, kind) in published {
            self.forwarder.publish(track, id, mid, kind, now);
            self.ctx.metrics.tracks.inc();
        }
        for mid in bound {
            self.activate_leg(id, mid);
        }

        let (requires, description) = match (offer, answer) {
            (Some(sdp), _) => (
                true,
                Some(SessionDescription {
                    kind: SdpType::Offer,
                    sdp,
                }),
            ),
            (None, Some(sdp)) => (
                false,
                Some(SessionDescription {
                    kind: SdpType::Answer,
                    sdp,
                }),
            ),
            (None, None) => (false, None),
        };
        Ok(TracksResponse {
            requires_immediate_renegotiation: requires,
            session_description: description,
            tracks: results,
        })
    }

    fn renegotiate(
        &mut self,
        id: SessionId,
        description: SessionDescription,
    ) -> Result<RenegotiateResponse, ApiError> {
        let ctx = Arc::clone(&self.ctx);
        let shard = self.id;
        let session = self.session_mut(id)?;
        match description.kind {
            SdpType::Offer => {
                let answer = accept_offer(session, &description.sdp, &ctx, shard)?;
                Ok(RenegotiateResponse {
                    session_description: Some(SessionDescription {
                        kind: SdpType::Answer,
                        sdp: answer,
                    }),
                })
            }
            SdpType::Answer => {
                let answer = SdpAnswer::from_sdp_string(&description.sdp)
                    .map_err(|e| ApiError::sdp(format!("cannot parse the answer: {e}")))?;
                let Some(pending) = session.pending.take() else {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "no_pending_offer",
                        "there is no SFU offer waiting for an answer",
                    ));
                };
                if let Err(e) = session.rtc.sdp_api().accept_answer(pending, answer) {
                    cancel_negotiating(session);
                    return Err(ApiError::sdp(format!("answer rejected: {e}")));
                }
                session.clear_ssrc_cache();
                let negotiating: Vec<Mid> = session
                    .subscriptions
                    .iter()
                    .filter(|(_, s)| s.state == LegState::Negotiating)
                    .map(|(m, _)| *m)
                    .collect();
                for mid in negotiating {
                    self.activate_leg(id, mid);
                }
                Ok(RenegotiateResponse::default())
            }
        }
    }

    fn close(
        &mut self,
        id: SessionId,
        request: CloseTracksRequest,
    ) -> Result<CloseTracksResponse, ApiError> {
        if request.tracks.is_empty() {
            return Err(ApiError::invalid("tracks must list at least one mid"));
        }
        if let Some(sd) = &request.session_description
            && sd.kind != SdpType::Offer
        {
            return Err(ApiError::invalid("tracks/close takes an offer"));
        }
        self.session_mut(id)?;
        let mut results = Vec::new();
        let mut closed = Vec::new();
        for t in &request.tracks {
            let r = TrackResult {
                mid: t.mid.clone(),
                ..Default::default()
            };
            let Some(mid_text) = &t.mid else {
                results.push(r.with_error("invalid_params", "mid is required"));
                continue;
            };
            let mid = Mid::from(mid_text.as_str());
            let (publication, subscription) = match self.sessions.get(&id) {
                Some(s) => (
                    s.publications
                        .get(&mid)
                        .filter(|p| p.active)
                        .map(|p| p.track),
                    s.subscriptions
                        .get(&mid)
                        .filter(|s| s.state != LegState::Inactive)
                        .is_some(),
                ),
                None => return Err(ApiError::no_session()),
            };
            if let Some(track) = publication {
                self.unpublish(track);
                closed.push(mid);
                results.push(r);
            } else if subscription {
                self.deactivate_leg(id, mid);
                closed.push(mid);
                results.push(r);
            } else {
                results.push(r.with_error(
                    "close_track_error",
                    "Track doesn't exist or was already closed",
                ));
            }
        }
        let ctx = Arc::clone(&self.ctx);
        let shard = self.id;
        let session = self.session_mut(id)?;
        let mut requires = false;
        let description = if let Some(sd) = request.session_description {
            Some(SessionDescription {
                kind: SdpType::Answer,
                sdp: accept_offer(session, &sd.sdp, &ctx, shard)?,
            })
        } else if !request.force && !closed.is_empty() && session.pending.is_none() {
            let mut api = session.rtc.sdp_api();
            for mid in &closed {
                api.stop_media(*mid);
            }
            match api.apply() {
                Some((offer, pending)) => {
                    session.pending = Some(pending);
                    requires = true;
                    Some(SessionDescription {
                        kind: SdpType::Offer,
                        sdp: offer.to_sdp_string(),
                    })
                }
                None => None,
            }
        } else {
            None
        };
        Ok(CloseTracksResponse {
            session_description: description,
            tracks: results,
            requires_immediate_renegotiation: requires,
        })
    }

    fn update(
        &mut self,
        id: SessionId,
        request: UpdateTracksRequest,
    ) -> Result<UpdateTracksResponse, ApiError> {
        let ctx = Arc::clone(&self.ctx);
        let directory = &ctx.directory;
        let app = Arc::clone(&self.session_mut(id)?.app);
        let mut results = Vec::new();
        for t in &request.tracks {
            let r = TrackResult {
                mid: t.mid.clone(),
                session_id: t.session_id.clone(),
                track_name: t.track_name.clone(),
                ..Default::default()
            };
            if t.location != Some(Location::Remote) {
                results.push(r.with_error("invalid_params", "only remote tracks can be updated"));
                continue;
            }
            let Some(mid_text) = &t.mid else {
                results.push(r.with_error("invalid_params", "mid is required"));
                continue;
            };
            let mid = Mid::from(mid_text.as_str());
            let Some(current) = self
                .sessions
                .get(&id)
                .and_then(|s| s.subscriptions.get(&mid))
                .cloned()
            else {
                results.push(r.with_error("not_found", "no pulled track on that mid"));
                continue;
            };
            let new = match resolve_remote(directory, &app, t) {
                Ok(new) => new,
                Err((code, text)) => {
                    results.push(r.with_error(code, text));
                    continue;
                }
            };
            if new.track != current.track
                && let Some(session) = self.sessions.get(&id)
                && let Err((quota, code, text)) =
                    check_track_pulls(session, &[], new.track, &ctx.config.limits)
            {
                ctx.metrics.refused(quota);
                results.push(r.with_error(code, text));
                continue;
            }
            if new.kind != current.kind {
                results.push(r.with_error(
                    "invalid_params",
                    "the new track is not of the same kind as the transceiver",
                ));
                continue;
            }
            if new.track == current.track && current.state == LegState::Active {
                self.forwarder
                    .set_preferred_rid(LegKey { session: id, mid }, new.preferred_rid);
                self.select_layers(Instant::now(), Some(id));
                if let Some(s) = self
                    .sessions
                    .get_mut(&id)
                    .and_then(|s| s.subscriptions.get_mut(&mid))
                {
                    s.preferred_rid = new.preferred_rid;
                }
                results.push(r);
                continue;
            }
            let was_active = current.state == LegState::Active;
            self.deactivate_leg(id, mid);
            if let Some(s) = self.sessions.get_mut(&id) {
                let mut sub = new;
                sub.state = if was_active || current.state == LegState::Inactive {
                    LegState::Negotiating
                } else {
                    current.state
                };
                let activate = was_active || current.state == LegState::Inactive;
                s.subscriptions.insert(mid, sub);
                if activate {
                    self.activate_leg(id, mid);
                }
            }
            results.push(r);
        }
        Ok(UpdateTracksResponse {
            requires_immediate_renegotiation: false,
            tracks: results,
        })
    }

    fn get(&mut self, id: SessionId) -> Result<SessionState, ApiError> {
        let now = Instant::now();
        let speakers = &self.speakers;
        let session = self.sessions.get(&id).ok_or_else(ApiError::no_session)?;
        let level = |track: TrackId, kind: MediaKind| {
            (kind == MediaKind::Audio)
                .then(|| speakers.level(track, now))
                .flatten()
        };
        let mut tracks: Vec<TrackState> = session
            .publications
            .iter()
            .map(|(mid, p)| {
                let l = level(p.track, p.kind);
                TrackState {
                    location: Location::Local,
                    mid: mid.to_string(),
                    track_name: p.name.clone(),
                    session_id: None,
                    status: if p.active {
                        TrackStatus::Active
                    } else {
                        TrackStatus::Inactive
                    },
                    audio_level: l.map(|l| l.last_dbov),
                    speaking: l.map(|l| l.speaking),
                }
            })
            .chain(session.subscriptions.iter().map(|(mid, s)| {
                let l = level(s.track, s.kind);
                TrackState {
                    location: Location::Remote,
                    mid: mid.to_string(),
                    track_name: s.name.clone(),
                    session_id: Some(s.source.to_string()),
                    status: match s.state {
                        LegState::Active => TrackStatus::Active,
                        LegState::Negotiating => TrackStatus::Initializing,
                        LegState::Inactive => TrackStatus::Inactive,
                    },
                    audio_level: l.map(|l| l.last_dbov),
                    speaking: l.map(|l| l.speaking),
                }
            }))
            .collect();
        tracks.sort_by(|a, b| a.mid.cmp(&b.mid));
        let active_speaker = session.active_speaker.and_then(|track| {
            session
                .subscriptions
                .values()
                .find(|s| s.track == track)
                .map(|s| ActiveSpeaker {
                    session_id: s.source.to_string(),
                    track_name: s.name.clone(),
                })
        });
        Ok(SessionState {
            tracks,
            active_speaker,
        })
    }
}

/// The test hook's panic (see [`ShardMsg::InjectPanic`]).
#[allow(clippy::panic)]
fn injected_panic(shard: ShardId) -> ! {
    panic!("test hook: injected panic on shard {shard}")
}

/// Whether a forwarded packet goes through str0m's pacer (only with bandwidth estimation on).
/// Only simulcast video can adapt to a subscriber's estimate (by layer), and only with
/// [`Config::bwe_pace_video`]; audio and single-layer video never wait in the pacer, since
/// holding them back cannot make them fit. Unpaced media is still counted by the estimator.
fn paced(config: &Config, simulcast: bool) -> bool {
    config.bwe_pace_video && simulcast
}

/// Whether a drain handles str0m's timeout `t` itself rather than leaving it to the shard's
/// timer (see [`drain_session`]).
fn timeout_due(t: Instant, now: Instant, rounds: usize) -> bool {
    rounds < PACER_ROUNDS && t <= now + PACER_SLACK
}

/// The initial bandwidth estimate in bit/s, when bandwidth estimation is on.
fn initial_estimate_bps(config: &Config) -> Option<u64> {
    (config.bwe_initial_kbps > 0).then(|| u64::from(config.bwe_initial_kbps) * 1000)
}

/// Sends a session's packet on its ICE-TCP connection (str0m chose a TCP candidate pair).
fn transmit_tcp(ctx: &ShardContext, destination: SocketAddr, packet: &[u8]) {
    match &ctx.tcp {
        Some(tcp) => tcp.transmit(destination, packet),
        None => ctx.metrics.drop(PacketDrop::TcpNoConnection),
    }
}

/// Polls one session until its next timeout (see [`Shard::drain`]).
fn drain_session(
    session: &mut Session,
    ctx: &ShardContext,
    shard: ShardId,
    events: &mut Vec<SessionEvent>,
    egress: &mut Egress,
) -> Result<(), String> {
    let mut reconnected = false;
    let mut rounds = 0;
    loop {
        let output = session.rtc.poll_output().map_err(|e| e.to_string())?;
        match output {
            Output::Timeout(t) => {
                // With bandwidth estimation on, str0m's pacer releases one packet per timeout
                // and asks for the next timeout 1 µs later. Handling it here sends everything
                // the pacer allows in one drain, instead of one packet per shard wake-up (the
                // shard's timer has 1 ms granularity: packets would wait for it).
                let now = Instant::now();
                if timeout_due(t, now, rounds) {
                    rounds += 1;
                    session
                        .rtc
                        .handle_input(Input::Timeout(now.max(t)))
                        .map_err(|e| e.to_string())?;
                    continue;
                }
                session.next_timeout = t;
                if reconnected {
                    forget_stale_routes(session, ctx);
                    events.push(SessionEvent::IceReconnected);
                }
                return Ok(());
            }
            Output::Transmit(t) => {
                if t.proto != Protocol::Udp {
                    transmit_tcp(ctx, t.destination, &t.contents);
                    continue;
                }
                egress.push(t.destination, &t.contents);
                if session.routes.sent_to(t.destination) {
                    let _ = ctx.udp_control.send(UdpControl::Route {
                        addr: t.destination,
                        session: session.id,
                        shard,
                    });
                }
            }
            Output::Event(event) => match event {
                Event::RtpPacket(pkt) => match media_event(session, pkt) {
                    Ok(ev) => events.push(ev),
                    Err(reason) => ctx.metrics.drop(reason),
                },
                Event::KeyframeRequest(req) => events.push(SessionEvent::KeyframeFromLeg(
                    LegKey {
                        session: session.id,
                        mid: req.mid,
                    },
                    req.kind,
                )),
                Event::IceConnectionStateChange(state) => match state {
                    IceConnectionState::Connected | IceConnectionState::Completed => {
                        session.transport_lost_since = None;
                        // Forgotten once this drain is done (after the datagrams it sent).
                        reconnected |= session.routes.is_restarting();
                    }
                    IceConnectionState::Disconnected => {
                        session.transport_lost_since.get_or_insert(Instant::now());
                    }
                    IceConnectionState::New | IceConnectionState::Checking => {}
                },
                Event::Connected => events.push(SessionEvent::Connected),
                Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                    events.push(SessionEvent::Estimate(estimate.as_u64()));
                }
                Event::PeerStats(s) => {
                    events.push(SessionEvent::PeerReport(
                        s.bwe_tx.map(|b| b.as_u64()),
                        s.egress_loss_fraction,
                    ));
                }
                Event::MediaEgressStats(s) => {
                    let (nacks, _) = session.egress_delta(s.mid, s.rid, s.nacks, s.plis + s.firs);
                    ctx.metrics.nacks.inc_by(nacks);
                    if s.loss.is_some() || s.rtt.is_some() {
                        events.push(SessionEvent::EgressReport(s.loss, s.rtt));
                    }
                }
                _ => {}
            },
        }
    }
}

/// Turns a publisher's RTP packet into a forwardable [`MediaPacket`] for its track, within the
/// session's ingress budget.
fn media_event(session: &mut Session, pkt: RtpPacket) -> Result<SessionEvent, PacketDrop> {
    let (mid, rid) = session
        .mid_of_ssrc(pkt.header.ssrc)
        .ok_or(PacketDrop::UnpublishedMid)?;
    if let Some(budget) = &mut session.ingress {
        let bytes = (pkt.payload.len() + pkt.header.header_len) as u64;
        if !budget.try_take_n(pkt.timestamp, bytes) {
            return Err(PacketDrop::IngressBitrate);
        }
    }
    let publication = session
        .publications
        .get(&mid)
        .filter(|p| p.active)
        .ok_or(PacketDrop::UnpublishedMid)?;
    let params = publication
        .params
        .iter()
        .find(|p| p.pt() == pkt.header.payload_type);
    let (codec, clock_rate) = params
        .map(|p| (p.spec().codec, p.spec().clock_rate.get()))
        .unwrap_or((Codec::Null, 90_000));
    // Every video keyframe is marked: simulcast legs switch layers on them, and each one
    // answers the keyframe requests of its layer (see `Forwarder::note_keyframe`).
    let keyframe = publication.kind == MediaKind::Video && is_keyframe(codec, &pkt.payload);
    let src = &pkt.header.ext_vals;
    let ext = ExtensionValues {
        audio_level: src.audio_level,
        voice_activity: src.voice_activity,
        video_orientation: src.video_orientation,
        video_content_type: src.video_content_type,
        ..Default::default()
    };
    let packet = MediaPacket {
        pt: pkt.header.payload_type,
        clock_rate,
        seq: *pkt.seq_no,
        timestamp: pkt.header.timestamp,
        marker: pkt.header.marker,
        rid,
        keyframe,
        ext,
        vp8: if codec == Codec::Vp8 {
            Vp8Packet::parse(&pkt.payload)
        } else {
            None
        },
        payload: pkt.payload,
        arrival: pkt.timestamp,
        nackable: publication.kind == MediaKind::Video,
    };
    Ok(SessionEvent::Media(publication.track, Arc::new(packet)))
}

/// Accepts a client offer; an SFU offer still waiting for its answer is abandoned. An offer
/// with new ICE credentials restarts ICE (see [`note_ice_restart`]).
fn accept_offer(
    session: &mut Session,
    sdp: &str,
    ctx: &ShardContext,
    shard: ShardId,
) -> Result<String, ApiError> {
    let offer = SdpOffer::from_sdp_string(sdp)
        .map_err(|e| ApiError::sdp(format!("cannot parse the offer: {e}")))?;
    if session.pending.take().is_some() {
        cancel_negotiating(session);
    }
    let accepted = session.rtc.sdp_api().accept_offer(offer);
    // str0m takes new ICE credentials before it checks the rest of the offer: even a refused
    // offer may have restarted ICE.
    note_ice_restart(session, ctx, shard);
    let answer = accepted.map_err(|e| ApiError::sdp(format!("offer rejected: {e}")))?;
    session.clear_ssrc_cache();
    Ok(answer.to_sdp_string())
}

/// After an accepted offer: if it restarted ICE (the client sent new ICE credentials, str0m
/// answered with new local ones), STUN checks for the new ufrag must reach the session, and the
/// routes of the old path must not keep the new one from being learnt (see
/// [`crate::routes::Routes`]). The session, its tracks and its DTLS state stay as they are.
fn note_ice_restart(session: &mut Session, ctx: &ShardContext, shard: ShardId) {
    let ufrag = session.rtc.direct_api().local_ice_credentials().ufrag;
    if ufrag == session.ufrag {
        return;
    }
    tracing::debug!(session = %session.id, "ICE restart");
    ctx.metrics.ice_restarts.inc();
    session.ufrag = ufrag.clone();
    let _ = ctx.udp_control.send(UdpControl::ReplaceUfrag {
        ufrag,
        session: session.id,
        shard,
    });
    for addr in session.routes.restarted() {
        let _ = ctx.udp_control.send(UdpControl::Unroute {
            addr,
            session: session.id,
        });
    }
}

/// Forgets the routes of before an ICE restart that the session did not use again, now that
/// its transport is connected on the new path.
fn forget_stale_routes(session: &mut Session, ctx: &ShardContext) {
    for addr in session.routes.connected() {
        let _ = ctx.udp_control.send(UdpControl::Unroute {
            addr,
            session: session.id,
        });
    }
}

/// Forgets legs whose m-lines were only in an abandoned SFU offer.
fn cancel_negotiating(session: &mut Session) {
    session
        .subscriptions
        .retain(|_, s| s.state != LegState::Negotiating);
}

/// Validates and registers one pushed track; returns (mid, track id, kind).
fn push_track(
    session: &mut Session,
    t: &TrackObject,
    have_offer: bool,
    directory: &Directory,
    shard: ShardId,
    now: Instant,
) -> Result<(Mid, TrackId, MediaKind), (&'static str, String)> {
    let _ = now;
    let (Some(mid_text), Some(name)) = (&t.mid, &t.track_name) else {
        return Err((
            "invalid_params",
            "a local track needs mid and trackName".into(),
        ));
    };
    if name.is_empty() || name.len() > 256 {
        return Err((
            "invalid_params",
            "trackName must be 1 to 256 characters".into(),
        ));
    }
    if !have_offer {
        return Err((
            "invalid_params",
            "pushing a track needs an offer (sessionDescription)".into(),
        ));
    }
    let mid = Mid::from(mid_text.as_str());
    if mid.to_string() != *mid_text {
        return Err((
            "invalid_params",
            "mid must be up to 16 letters or digits".into(),
        ));
    }
    let Some(kind) = session.receives_on(mid) else {
        return Err((
            "invalid_params",
            format!("the offer has no m-line {mid_text} that sends media"),
        ));
    };
    if let Some(p) = session.publications.get(&mid)
        && p.active
    {
        return Err((
            "invalid_params",
            format!("mid {mid_text} already carries track {}", p.name),
        ));
    }
    let params = session.negotiated_params(mid);
    let track = directory.next_track_id();
    let entry = PublishedTrack {
        track,
        shard,
        kind,
        params: params.clone(),
    };
    if !directory.publish(session.id, name, entry) {
        return Err((
            "duplicate_track_name",
            format!("this session already publishes a track named {name}"),
        ));
    }
    session.publications.insert(
        mid,
        Publication {
            track,
            name: name.clone(),
            kind,
            params,
            active: true,
        },
    );
    Ok((mid, track, kind))
}

/// Pulls a session may make over its life, as a multiple of `Limits::session_max_legs`.
const MLINES_PER_LEG: usize = 4;

/// A quota refusal: the quota, the per-track `errorCode` and its description.
type QuotaError = (Quota, &'static str, String);

/// Whether `session` may pull one more leg, on `track`, given the pulls of this request not yet
/// in its subscriptions (`pending`).
fn check_pull_quota(
    session: &Session,
    pending: &[(usize, Subscription)],
    track: TrackId,
    limits: &crate::config::Limits,
) -> Result<(), QuotaError> {
    let live = session
        .subscriptions
        .values()
        .filter(|s| s.state != LegState::Inactive)
        .count()
        + pending.len();
    if live >= limits.session_max_legs {
        return Err((
            Quota::SessionLegs,
            "too_many_legs",
            format!(
                "a session may pull at most {} tracks at once",
                limits.session_max_legs
            ),
        ));
    }
    // Closed legs keep their (stopped) m-line in the session's SDP: pulling and closing in a
    // loop would grow it without end. A session may have used 4 times its live-leg limit.
    let used = session.subscriptions.len() + pending.len();
    if used >= limits.session_max_legs.saturating_mul(MLINES_PER_LEG) {
        return Err((
            Quota::SessionLegs,
            "too_many_legs",
            format!(
                "this session has pulled {used} tracks over its life (limit {}); start a new session",
                limits.session_max_legs.saturating_mul(MLINES_PER_LEG)
            ),
        ));
    }
    check_track_pulls(session, pending, track, limits)
}

/// Whether `session` may pull `track` once more.
fn check_track_pulls(
    session: &Session,
    pending: &[(usize, Subscription)],
    track: TrackId,
    limits: &crate::config::Limits,
) -> Result<(), QuotaError> {
    let same = session
        .subscriptions
        .values()
        .filter(|s| s.state != LegState::Inactive && s.track == track)
        .count()
        + pending.iter().filter(|(_, s)| s.track == track).count();
    if same >= limits.session_max_pulls_per_track {
        return Err((
            Quota::SessionPullsPerTrack,
            "too_many_pulls",
            format!(
                "a session may pull the same track at most {} times at once",
                limits.session_max_pulls_per_track
            ),
        ));
    }
    Ok(())
}

/// Finds the published track a remote track entry names.
fn resolve_remote(
    directory: &Directory,
    app: &str,
    t: &TrackObject,
) -> Result<Subscription, (&'static str, String)> {
    let (Some(sid), Some(name)) = (&t.session_id, &t.track_name) else {
        return Err((
            "invalid_params",
            "a remote track needs sessionId and trackName".into(),
        ));
    };
    let Some(source) = SessionId::parse(sid) else {
        return Err(("not_found", format!("no session {sid}")));
    };
    let Some(info) = directory.lookup(app, source, name) else {
        return Err((
            "not_found",
            format!("session {sid} publishes no track named {name}"),
        ));
    };
    let preferred_rid = t
        .simulcast
        .as_ref()
        .and_then(|s| s.preferred_rid.as_deref())
        .filter(|r| !r.is_empty())
        .map(Rid::from);
    Ok(Subscription {
        track: info.track,
        home: info.shard,
        source,
        name: name.clone(),
        kind: info.kind,
        source_params: info.params,
        preferred_rid,
        state: LegState::Negotiating,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram() -> ShardMsg {
        ShardMsg::Datagram(Datagram {
            session: SessionId([7; 16]),
            source: SocketAddr::from(([127, 0, 0, 1], 1)),
            destination: SocketAddr::from(([127, 0, 0, 1], 2)),
            data: vec![0; 10],
            received: Instant::now(),
            proto: Protocol::Udp,
        })
    }

    fn ended(id: u64) -> ShardMsg {
        ShardMsg::TrackEnded { track: TrackId(id) }
    }

    fn ended_id(msg: &ShardMsg) -> Option<u64> {
        match msg {
            ShardMsg::TrackEnded { track } => Some(track.0),
            _ => None,
        }
    }

    #[test]
    fn only_simulcast_video_is_paced_and_only_when_asked() {
        let mut config = Config::default();
        assert!(config.bwe_initial_kbps > 0, "estimation is on by default");
        assert!(!paced(&config, true), "not paced by default");
        assert!(!paced(&config, false));
        config.bwe_pace_video = true;
        assert!(paced(&config, true));
        assert!(!paced(&config, false), "audio and single-layer video never");
    }

    #[test]
    fn a_drain_handles_the_pacers_next_timeout_itself_within_bounds() {
        let now = Instant::now();
        // The pacer's "again in 1 µs" and anything already due: handled in the drain.
        assert!(timeout_due(now + Duration::from_micros(1), now, 0));
        assert!(timeout_due(now - Duration::from_millis(3), now, 0));
        // A real wait (pacing debt, the next frame, RTCP): left to the shard's timer.
        assert!(!timeout_due(now + Duration::from_millis(2), now, 0));
        // One session cannot keep the shard forever.
        assert!(!timeout_due(now, now, PACER_ROUNDS));
        assert_eq!(
            initial_estimate_bps(&Config::default()),
            Some(u64::from(crate::config::DEFAULT_BWE_INITIAL_KBPS) * 1000)
        );
        let off = Config {
            bwe_initial_kbps: 0,
            ..Config::default()
        };
        assert_eq!(initial_estimate_bps(&off), None);
    }

    #[test]
    fn a_full_peer_loses_media_but_never_control_messages() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut outbox = PeerOutbox::default();
        assert_eq!(outbox.send(&tx, datagram()), Sent::Delivered);
        assert_eq!(outbox.send(&tx, ended(1)), Sent::Delivered);
        // The inbox is full: media is dropped, control waits.
        assert_eq!(outbox.send(&tx, datagram()), Sent::Dropped);
        assert_eq!(outbox.send(&tx, ended(2)), Sent::Deferred);
        // Room for one: a later control message still queues behind the deferred one.
        assert!(rx.try_recv().is_ok());
        assert_eq!(outbox.send(&tx, ended(3)), Sent::Deferred);
        assert_eq!(outbox.retry(&tx), 1);
        assert_eq!(outbox.deferred.len(), 1);
        while rx.try_recv().is_ok() {}
        assert_eq!(outbox.retry(&tx), 1);
        assert!(outbox.deferred.is_empty());
        // Control messages arrive in the order they were sent.
        let mut order = Vec::new();
        while let Ok(msg) = rx.try_recv() {
            order.extend(ended_id(&msg));
        }
        assert_eq!(order, vec![3]);
    }

    #[test]
    fn control_messages_keep_their_order_through_the_outbox() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut outbox = PeerOutbox::default();
        for id in 0..5 {
            outbox.send(&tx, ended(id));
        }
        let mut order = Vec::new();
        for _ in 0..10 {
            while let Ok(msg) = rx.try_recv() {
                order.extend(ended_id(&msg));
            }
            outbox.retry(&tx);
        }
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
        drop(rx);
        assert_eq!(outbox.send(&tx, ended(9)), Sent::PeerGone);
    }
}
