//! The shard's sans-IO core: every session of one shard, its [`Forwarder`], and the rules that
//! tie them together. It owns no socket, channel or timer and reads no clock: the driver
//! ([`super::driver`]) feeds it datagrams, API commands, messages from other shards and timeouts,
//! each with the time `now`, and collects what it wants done: UDP datagrams (in its [`Egress`]),
//! [`Action`]s (messages to other shards, routing changes, ICE-TCP datagrams), API replies (the
//! return value of [`Core::handle_api`]) and the time it next needs to be woken
//! ([`Core::poll_timeout`]).
//!
//! The packet path is in [`super::media`], the API commands in [`super::commands`], session and
//! leg lifecycle here.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHashSet};
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Rid};
use str0m::net::Protocol;

use crate::config::Config;
use crate::directory::Directory;
use crate::egress::Egress;
use crate::forward::{Forwarder, LegKey, LegWrite, MediaPacket};
use crate::ids::{SessionId, ShardId, TrackId};
use crate::metrics::{Metrics, PacketDrop};
use crate::session::{LegState, Session};
use crate::speaker::SpeakerDetector;
use crate::udp::UdpControl;

use super::channel::{ChannelLimits, ChannelPeerMsg, ChannelRouter};
use super::media::SessionEvent;
use super::relay_leg::{RelayAction, RelayedTracks};

/// Keyframe requests reach a publisher at most this often per track and layer.
pub(crate) const KEYFRAME_INTERVAL: Duration = Duration::from_secs(1);
/// How often sessions and tracks are checked for collection.
pub(crate) const HOUSEKEEPING: Duration = Duration::from_millis(250);
/// str0m timeouts due this soon are handled in the same wake-up of the shard (the shard's timer
/// has 1 ms granularity: each distinct millisecond would otherwise be a wake-up of its own).
pub(crate) const TIMER_COALESCE: Duration = Duration::from_millis(1);

/// A datagram routed to a session. `D` holds its bytes: its own `Vec` (ICE-TCP, tests), a
/// slice of a [`DatagramBatch`](crate::udp::DatagramBatch)'s buffer, or where they are in it.
#[derive(Debug, Clone)]
pub struct Datagram<D = Vec<u8>> {
    /// Owning session.
    pub session: SessionId,
    /// Remote address.
    pub source: SocketAddr,
    /// Our address it was sent to (one of the host candidates).
    pub destination: SocketAddr,
    /// The bytes.
    pub data: D,
    /// Arrival time.
    pub received: Instant,
    /// UDP, or TCP for a frame of an ICE-TCP connection ([`crate::tcp`]).
    pub proto: Protocol,
}

impl<D> Datagram<D> {
    /// The same datagram with its bytes held by `data`.
    pub fn with_data<E>(&self, data: E) -> Datagram<E> {
        Datagram {
            session: self.session,
            source: self.source,
            destination: self.destination,
            data,
            received: self.received,
            proto: self.proto,
        }
    }
}

/// A message from one shard's core to another's.
#[derive(Debug)]
pub enum PeerMsg {
    /// A packet of a track some of the receiver's sessions subscribe to.
    Media {
        /// Track.
        track: TrackId,
        /// Packet (shared).
        packet: Arc<MediaPacket>,
    },
    /// Shard `shard` gained a leg on the receiver's track.
    Subscribe {
        /// Track.
        track: TrackId,
        /// Subscriber shard.
        shard: ShardId,
    },
    /// Shard `shard` lost a leg on the receiver's track.
    Unsubscribe {
        /// Track.
        track: TrackId,
        /// Subscriber shard.
        shard: ShardId,
    },
    /// A subscriber wants a keyframe of the receiver's track.
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
    /// A new leg on shard `shard` asks the receiver (the track's home) for the packets cached
    /// since the track's last keyframe (see `keyframe_replay.rs`). Answered with [`PeerMsg::Replay`].
    ReplayRequest {
        /// Track.
        track: TrackId,
        /// The new leg.
        leg: LegKey,
        /// The layer it would like.
        rid: Option<Rid>,
        /// Its shard.
        shard: ShardId,
    },
    /// The answer to [`PeerMsg::ReplayRequest`]: one layer's packets from a keyframe on (shared,
    /// never copied), or none.
    Replay {
        /// Track.
        track: TrackId,
        /// The new leg.
        leg: LegKey,
        /// The packets, in arrival order.
        packets: Vec<Arc<MediaPacket>>,
    },
    /// A track the receiver's legs carried is gone.
    TrackEnded {
        /// Track.
        track: TrackId,
    },
    /// About data channels (see [`super::channel`]).
    Channel(ChannelPeerMsg),
    /// Shard `shard` panicked and was reset: forget it as a subscriber of our tracks and end
    /// our legs on its tracks.
    ShardReset {
        /// The reset shard.
        shard: ShardId,
        /// Tracks from this id on were published after the reset: their legs stay.
        before: TrackId,
    },
}

impl PeerMsg {
    /// Whether losing this message on a full inbox is acceptable (media: NACK/RTX and keyframe
    /// requests repair it; a lost control message would leave a leg silent for good).
    pub(crate) fn is_lossy(&self) -> bool {
        matches!(self, PeerMsg::Media { .. })
    }
}

/// What the core asks its driver to do, besides sending the UDP datagrams in its
/// [`Egress`]. (Inputs and actions of the QUIC relay will join these.)
#[derive(Debug)]
pub enum Action {
    /// Deliver a message to another shard.
    ToShard(ShardId, PeerMsg),
    /// A routing change for the UDP and ICE-TCP drivers.
    Routing(UdpControl),
    /// Send a datagram on the ICE-TCP connection of `destination`.
    TcpTransmit {
        /// The peer.
        destination: SocketAddr,
        /// The datagram (unframed).
        data: Vec<u8>,
    },
    /// Something for the relay between SFU nodes (see `shard/relay_leg.rs`).
    Relay(RelayAction),
}

/// What a core needs to know that is not its own state: configuration, the shared
/// session/track directory, metrics and the addresses it announces.
#[derive(Debug)]
pub struct CoreContext {
    /// Server configuration.
    pub config: Config,
    /// Session/track directory.
    pub directory: Arc<Directory>,
    /// Metrics.
    pub metrics: Metrics,
    /// Our ICE host candidate addresses (UDP).
    pub candidates: Vec<SocketAddr>,
    /// Our passive ICE-TCP candidates (empty: ICE-TCP is off).
    pub tcp_candidates: Vec<SocketAddr>,
}

/// See the module docs.
pub struct Core {
    pub(super) id: ShardId,
    /// Number of shards (ids `0..shards`).
    pub(super) shards: usize,
    pub(super) ctx: Arc<CoreContext>,
    /// By session id. Session ids are random and ours, so they take a fast hasher (Fx): the
    /// packet path looks a session up twice per forwarded packet and leg.
    pub(super) sessions: FxHashMap<SessionId, Session>,
    pub(super) forwarder: Forwarder,
    /// Tracks of other nodes relayed here whose home is this shard.
    pub(super) relayed: RelayedTracks,
    /// The data channels of this shard's sessions.
    pub(super) channels: ChannelRouter<str0m::channel::ChannelId>,
    /// Messages to this shard itself, handled before the current input returns.
    local: VecDeque<PeerMsg>,
    dirty: Vec<SessionId>,
    dirty_set: FxHashSet<SessionId>,
    /// How many times a session was drained (for the tests of what needs a drain).
    #[cfg(test)]
    pub(super) drains: usize,
    pub(super) writes: Vec<LegWrite>,
    pub(super) fanout: Vec<ShardId>,
    pub(super) events: Vec<SessionEvent>,
    /// Between [`Core::begin_batch`] and [`Core::end_batch`]: datagrams and peer messages leave
    /// the sessions their packets were written to for one drain at the batch's end.
    batching: bool,
    next_housekeeping: Instant,
    pub(super) speakers: SpeakerDetector,
    pub(super) egress: Egress,
    pub(super) actions: VecDeque<Action>,
    /// The time of the input being handled.
    pub(super) now: Instant,
}

impl Core {
    /// The core of shard `id` of `shards`.
    pub fn new(id: ShardId, shards: usize, ctx: Arc<CoreContext>, now: Instant) -> Core {
        let channels = ChannelRouter::new(ChannelLimits::from(&ctx.config.limits));
        Core {
            id,
            shards,
            ctx,
            sessions: FxHashMap::default(),
            forwarder: Forwarder::new(KEYFRAME_INTERVAL),
            relayed: RelayedTracks::default(),
            channels,
            local: VecDeque::new(),
            dirty: Vec::new(),
            dirty_set: FxHashSet::default(),
            #[cfg(test)]
            drains: 0,
            writes: Vec::new(),
            fanout: Vec::new(),
            events: Vec::new(),
            batching: false,
            next_housekeeping: now,
            speakers: SpeakerDetector::default(),
            egress: Egress::default(),
            actions: VecDeque::new(),
            now,
        }
    }

    /// Sessions on this shard.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The UDP datagrams to send: flush it (see [`Egress::flush`]) after a batch of inputs.
    pub fn egress(&mut self) -> &mut Egress {
        &mut self.egress
    }

    /// When [`Core::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Instant {
        self.sessions
            .values()
            .map(|s| s.next_timeout)
            .fold(self.next_housekeeping, Instant::min)
    }

    /// A message from another shard.
    pub fn handle_peer(&mut self, now: Instant, msg: PeerMsg) {
        self.handle_peers(now, [msg]);
    }

    /// The messages of one wake-up of a peer shard, in order, as [`Core::handle_peer`] each.
    pub fn handle_peers(&mut self, now: Instant, msgs: impl IntoIterator<Item = PeerMsg>) {
        self.now = now;
        for msg in msgs {
            self.handle_one(msg);
        }
        self.settle_unless_batching();
    }

    /// A datagram for one of this shard's sessions.
    pub fn handle_datagram<D: AsRef<[u8]>>(&mut self, now: Instant, d: Datagram<D>) {
        self.now = now;
        self.receive(d);
        self.settle_unless_batching();
    }

    /// A batch of datagrams (one `recvmmsg` round), as [`Core::handle_datagram`] each.
    pub fn handle_datagrams<D: AsRef<[u8]>>(
        &mut self,
        now: Instant,
        batch: impl IntoIterator<Item = Datagram<D>>,
    ) {
        self.now = now;
        for d in batch {
            self.receive(d);
        }
        self.settle_unless_batching();
    }

    /// Starts a batch of inputs (the driver's wake-up): until [`Core::end_batch`], datagrams and
    /// peer messages drain only the session a datagram is for (str0m wants its output polled
    /// after every input), and the sessions the forwarded packets were written to wait for one
    /// drain at the end. A subscriber so gets all of the batch's packets for it in one drain,
    /// which costs one `Rtc` timeout whatever their number with the vendored str0m's pacer
    /// (`vendor/str0m/PATCHES.md`); a drain per input cost one per packet. API commands and
    /// timeouts still settle everything at once.
    pub fn begin_batch(&mut self) {
        self.batching = true;
    }

    /// Ends a batch: drains what it left (see [`Core::begin_batch`]).
    pub fn end_batch(&mut self) {
        self.batching = false;
        self.settle();
    }

    /// A datagram into its session's str0m, which is drained at once.
    fn receive<D: AsRef<[u8]>>(&mut self, d: Datagram<D>) {
        let id = d.session;
        self.datagram(d);
        if self.dirty_set.remove(&id) {
            // Left in `dirty`: `settle` skips ids no longer in the set.
            self.drain(id);
        }
    }

    fn settle_unless_batching(&mut self) {
        if !self.batching {
            self.settle();
        }
    }

    /// Runs str0m's due timeouts, and the periodic work (collection, active speakers, layer
    /// selection) when it is due.
    ///
    /// Timeouts due within [`TIMER_COALESCE`] are handled now too, at their own time, so that
    /// sessions whose timers fall close together share one wake-up of the shard.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        let horizon = now + TIMER_COALESCE;
        let due: Vec<(SessionId, Instant)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.next_timeout <= horizon)
            .map(|(id, s)| (*id, now.max(s.next_timeout)))
            .collect();
        for (id, at) in due {
            let Some(session) = self.sessions.get_mut(&id) else {
                continue;
            };
            match catch_unwind(AssertUnwindSafe(|| {
                session.rtc.handle_input(str0m::Input::Timeout(at))
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
            self.housekeeping();
            self.select_layers(None);
            self.settle();
        }
    }

    /// Closes every session (shutdown).
    pub fn close_all(&mut self, now: Instant) {
        self.now = now;
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.remove_session(id, "shutdown");
        }
    }

    /// After a panic escaped the core: close every session the normal way (as far as the state
    /// allows), forget this shard's sessions everywhere, tell the other shards, and start over.
    pub fn reset_after_panic(&mut self, now: Instant) {
        self.now = now;
        tracing::error!(
            shard = self.id,
            sessions = self.sessions.len(),
            "shard panicked: closing its sessions and restarting it"
        );
        self.batching = false;
        self.local.clear();
        self.dirty.clear();
        self.dirty_set.clear();
        self.writes.clear();
        self.events.clear();
        // The state may be what made the shard panic: a panic here only cuts the clean-up short.
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
            self.routing(UdpControl::Unregister { session: id });
        }
        let me = self.id;
        for shard in (0..self.shards).filter(|s| *s != me) {
            let before = self.ctx.directory.next_track_id();
            self.send_to_shard(
                shard,
                PeerMsg::ShardReset {
                    shard: self.id,
                    before,
                },
            );
        }
        self.sessions = FxHashMap::default();
        self.relay_reset();
        self.forwarder = Forwarder::new(KEYFRAME_INTERVAL);
        self.channels = ChannelRouter::new(self.channels.limits().clone());
        self.ctx.directory.channels.remove_shard(self.id);
        self.local.clear();
        self.speakers = SpeakerDetector::default();
        self.egress = Egress::default();
        self.next_housekeeping = now;
    }

    fn handle_one(&mut self, msg: PeerMsg) {
        match msg {
            PeerMsg::Media { track, packet } => {
                self.note_audio_level(track, &packet);
                self.forward_local(track, &packet);
            }
            PeerMsg::Subscribe { track, shard } => {
                if !self.forwarder.add_subscriber_shard(track, shard) {
                    self.send_to_shard(shard, PeerMsg::TrackEnded { track });
                }
            }
            PeerMsg::Unsubscribe { track, shard } => {
                self.forwarder.remove_subscriber_shard(track, shard);
            }
            PeerMsg::KeyframeRequest {
                track,
                rid,
                kind,
                fresh,
            } => self.keyframe_to_publisher(track, rid, kind, fresh),
            PeerMsg::ReplayRequest {
                track,
                leg,
                rid,
                shard,
            } => self.replay_request(track, leg, rid, shard),
            PeerMsg::Replay {
                track,
                leg,
                packets,
            } => self.replay_answer(track, leg, packets),
            PeerMsg::TrackEnded { track } => self.end_local_legs(track),
            PeerMsg::Channel(msg) => self.handle_channel_peer(msg),
            PeerMsg::ShardReset { shard, before } => {
                self.channels_forget_shard(shard, before);
                for track in self.forwarder.forget_shard(shard, before) {
                    self.end_local_legs(track);
                }
            }
        }
    }

    /// Drains dirty sessions and local messages until nothing is left.
    pub(super) fn settle(&mut self) {
        loop {
            if let Some(id) = self.dirty.pop() {
                // Not in the set: drained already (see `Core::receive`).
                if self.dirty_set.remove(&id) {
                    self.drain(id);
                }
                continue;
            }
            if let Some(msg) = self.local.pop_front() {
                self.handle_one(msg);
                continue;
            }
            break;
        }
    }

    pub(super) fn mark_dirty(&mut self, id: SessionId) {
        if self.dirty_set.insert(id) {
            self.dirty.push(id);
        }
    }

    pub(super) fn send_to_shard(&mut self, shard: ShardId, msg: PeerMsg) {
        if shard == self.id {
            self.local.push_back(msg);
        } else {
            self.actions.push_back(Action::ToShard(shard, msg));
        }
    }

    pub(super) fn routing(&mut self, ctl: UdpControl) {
        self.actions.push_back(Action::Routing(ctl));
    }

    /// Asks the publisher's shard `home` for a keyframe (PLI) of `track`'s layer `rid`; `fresh`
    /// when the leg asking has not received a keyframe yet.
    pub(super) fn request_pli(
        &mut self,
        home: ShardId,
        track: TrackId,
        rid: Option<Rid>,
        fresh: bool,
    ) {
        self.send_to_shard(
            home,
            PeerMsg::KeyframeRequest {
                track,
                rid,
                kind: KeyframeRequestKind::Pli,
                fresh,
            },
        );
    }

    // ---- lifecycle --------------------------------------------------------------------------

    fn housekeeping(&mut self) {
        let now = self.now;
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
        self.update_speakers();
        let (cached, _) = self.forwarder.expire_caches(now);
        self.ctx
            .metrics
            .keyframe_cache_bytes
            .with_label_values(&[&self.id.to_string()])
            .set(cached as i64);
        self.start_pending_replays();
        self.send_owed_keyframe_requests();
        self.relay_housekeeping();
    }

    pub(super) fn session_panicked(&mut self, id: SessionId) {
        tracing::error!(session = %id, "session handling panicked; tearing the session down");
        self.ctx.metrics.session_panics.inc();
        self.remove_session(id, "panic");
    }

    pub(super) fn remove_session(&mut self, id: SessionId, why: &str) {
        let existed = match self.sessions.remove(&id) {
            Some(mut s) => {
                // A panic may have left the Rtc inconsistent: never let a second one escape.
                let _ = catch_unwind(AssertUnwindSafe(|| s.rtc.disconnect()));
                true
            }
            None => false,
        };
        self.channels_session_removed(id);
        let removed = self.forwarder.remove_session(id);
        for (track, shards) in removed.publications {
            self.ctx.metrics.tracks.dec();
            for shard in shards {
                self.send_to_shard(shard, PeerMsg::TrackEnded { track });
            }
        }
        for (_, track, home) in removed.legs {
            self.ctx.metrics.subscriptions.dec();
            let shard = self.id;
            self.send_to_shard(home, PeerMsg::Unsubscribe { track, shard });
        }
        self.ctx.directory.remove_session(id);
        self.routing(UdpControl::Unregister { session: id });
        if existed {
            self.ctx.metrics.sessions.dec();
            tracing::debug!(session = %id, why, "session removed");
        }
    }

    pub(super) fn unpublish(&mut self, track: TrackId) {
        if self.release_relayed(track) {
            return;
        }
        let Some((session_id, mid)) = self.forwarder.publication_owner(track) else {
            return;
        };
        let shards = self.forwarder.unpublish(track);
        self.speakers.forget(track);
        self.ctx.metrics.tracks.dec();
        for shard in shards {
            self.send_to_shard(shard, PeerMsg::TrackEnded { track });
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

    pub(super) fn end_local_legs(&mut self, track: TrackId) {
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

    pub(super) fn activate_leg(&mut self, id: SessionId, mid: Mid) {
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
        self.size_leg_rtx_cache(id, mid, kind);
        let leg = LegKey { session: id, mid };
        let seq_start = rand::random_range(1..16_384u64);
        self.forwarder
            .subscribe(track, home, leg, pt_map, rid, seq_start, rand::random());
        self.ctx.metrics.subscriptions.inc();
        let shard = self.id;
        self.send_to_shard(home, PeerMsg::Subscribe { track, shard });
        // A new leg needs a keyframe: the packets cached since the track's last one, at once
        // (`keyframe_replay.rs`; the answer falls back to a request when nothing is cached), or
        // a request. Before the subscriber's transport is up a request would be lost, and it
        // would hold back the one `Connected` makes: that one asks then (and the replay waits
        // for it too).
        let connected = self.sessions.get(&id).is_some_and(Session::is_connected);
        if kind == MediaKind::Video && self.ctx.config.keyframe_replay {
            self.start_replay(leg, track, home, rid, connected);
        } else if kind == MediaKind::Video && connected {
            self.request_pli(home, track, rid, true);
        }
    }

    pub(super) fn deactivate_leg(&mut self, id: SessionId, mid: Mid) {
        if let Some((track, home)) = self.forwarder.unsubscribe(LegKey { session: id, mid }) {
            self.ctx.metrics.subscriptions.dec();
            let shard = self.id;
            self.send_to_shard(home, PeerMsg::Unsubscribe { track, shard });
        }
        if let Some(sub) = self
            .sessions
            .get_mut(&id)
            .and_then(|s| s.subscriptions.get_mut(&mid))
        {
            sub.state = LegState::Inactive;
        }
    }

    /// Counts a drop.
    pub(super) fn dropped(&self, reason: PacketDrop) {
        self.ctx.metrics.drop(reason);
    }
}
