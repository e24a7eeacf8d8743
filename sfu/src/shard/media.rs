//! The packet path of the core: datagrams into str0m, str0m's output out (datagrams to the
//! egress, publishers' packets to the forwarder, feedback to the layer selector), forwarded
//! packets into subscribers' str0m streams, keyframe requests to publishers.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::{Bitrate, BweKind};
use str0m::format::Codec;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Rid};
use str0m::net::{DatagramRecv, Protocol, Receive, Transmit};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, StreamTx};
use str0m::{Event, IceConnectionState, Input, Output, PacerReason, Reason};

use super::core::{Action, Core, Datagram, PeerMsg};
use crate::config::Config;
use crate::egress::Egress;
use crate::forward::{KeyframeTarget, LegKey, LegWrite, MediaPacket};
use crate::ids::{SessionId, ShardId, TrackId};
use crate::metrics::{Metrics, PacketDrop};
use crate::routes::Routes;
use crate::session::{LegState, Session, is_keyframe};
use crate::udp::UdpControl;
use crate::vp8::Vp8Packet;

/// Timeouts one drain of a session handles itself (see [`drain_session`]) before it leaves the
/// rest to the shard loop, so that one session cannot hold the shard.
pub(crate) const PACER_ROUNDS: usize = 512;
/// A str0m timeout this close is handled at once rather than through the shard's timer.
const PACER_SLACK: Duration = Duration::from_micros(50);
/// How long the pacer's bookkeeping timeout after the last forwarded packet of a drain may wait
/// (see [`defers_bookkeeping`]); below str0m's 40 ms pacer period, so the pacer still runs at
/// least as often as it would on its own.
pub(crate) const PACER_BOOKKEEPING_DEFER: Duration = Duration::from_millis(20);

/// What draining a session produced, handled once the session is no longer borrowed.
#[derive(Debug)]
pub(crate) enum SessionEvent {
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
    /// About one of the session's data channels.
    Channel(super::channel::ChannelEvent),
}

impl Core {
    pub(super) fn datagram<D: AsRef<[u8]>>(&mut self, d: Datagram<D>) {
        let ctx = Arc::clone(&self.ctx);
        let metrics = &ctx.metrics;
        let Some(session) = self.sessions.get_mut(&d.session) else {
            metrics.drop(PacketDrop::UnknownSession);
            return;
        };
        let Ok(contents) = DatagramRecv::try_from(d.data.as_ref()) else {
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

    /// Polls a session until str0m reports its next timeout, queueing its datagrams and turning
    /// its events into [`SessionEvent`]s, then acts on those.
    pub(super) fn drain(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        #[cfg(test)]
        {
            self.drains += 1;
        }
        let now = self.now;
        let mut events = std::mem::take(&mut self.events);
        let mut out = Drain {
            shard: self.id,
            metrics: &self.ctx.metrics,
            egress: &mut self.egress,
            actions: &mut self.actions,
            events: &mut events,
        };
        let result = catch_unwind(AssertUnwindSafe(|| drain_session(session, now, &mut out)));
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
            self.session_event(id, ev);
        }
        self.events = events;
    }

    fn session_event(&mut self, id: SessionId, ev: SessionEvent) {
        let now = self.now;
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
                    let msg = PeerMsg::KeyframeRequest {
                        track,
                        rid,
                        kind,
                        fresh,
                    };
                    self.send_to_shard(home, msg);
                }
            }
            SessionEvent::Estimate(bps) => {
                self.ctx.metrics.bandwidth_estimate.observe(bps as f64);
                if self.forwarder.note_estimate(id, bps, now) {
                    self.select_layers(Some(id));
                }
            }
            SessionEvent::PeerReport(estimate, loss) => {
                if self.forwarder.note_peer_report(id, estimate, loss, now) {
                    self.select_layers(Some(id));
                }
            }
            SessionEvent::EgressReport(loss, rtt) => {
                if self.forwarder.note_egress_report(id, loss, rtt, now) {
                    self.select_layers(Some(id));
                }
            }
            SessionEvent::Connected if self.ctx.config.keyframe_replay => {
                self.replay_on_connect(id)
            }
            SessionEvent::Connected => self.request_keyframes_for(id),
            SessionEvent::IceReconnected => self.ice_reconnected(id),
            SessionEvent::Channel(ev) => self.channel_event(id, ev),
            SessionEvent::Failed(reason) => {
                tracing::info!(session = %id, "session failed: {reason}");
                self.remove_session(id, "rtc_error");
            }
        }
    }

    pub(super) fn fanout(&mut self, track: TrackId, pkt: Arc<MediaPacket>) {
        self.note_audio_level(track, &pkt);
        if self.ctx.config.keyframe_replay
            && let Some(dropped) = self.forwarder.cache_packet(track, &pkt)
        {
            self.ctx
                .metrics
                .keyframe_cache_drops
                .with_label_values(&[dropped.as_str()])
                .inc();
        }
        if pkt.keyframe {
            self.forwarder.note_keyframe(track, pkt.rid);
        }
        let Some(shards) = self.forwarder.note_media(track, pkt.rid, pkt.arrival) else {
            self.dropped(PacketDrop::UnpublishedTrack);
            return;
        };
        self.fanout.clear();
        self.fanout.extend(shards.iter().map(|(s, _)| *s));
        for i in 0..self.fanout.len() {
            let shard = self.fanout[i];
            if shard == self.id {
                self.forward_local(track, &pkt);
            } else {
                let packet = Arc::clone(&pkt);
                self.send_to_shard(shard, PeerMsg::Media { track, packet });
            }
        }
    }

    /// Feeds the active-speaker detector (once per packet and shard, not per leg).
    pub(super) fn note_audio_level(&mut self, track: TrackId, pkt: &MediaPacket) {
        if let Some(level) = pkt.ext.audio_level {
            self.ctx.metrics.audio_level_packets.inc();
            self.speakers
                .observe(track, level, pkt.ext.voice_activity, pkt.arrival);
        }
    }

    /// Updates every session's active speaker and the speaking-tracks gauge.
    pub(super) fn update_speakers(&mut self) {
        let now = self.now;
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

    pub(super) fn forward_local(&mut self, track: TrackId, pkt: &MediaPacket) {
        let mut writes = std::mem::take(&mut self.writes);
        let outcome = self.forwarder.forward(track, pkt, &mut writes);
        for reason in &outcome.dropped {
            self.dropped((*reason).into());
        }
        self.ctx.metrics.count_layer_outcome(&outcome);
        if let Some((home, rid, fresh)) = outcome.wants_keyframe {
            self.request_pli(home, track, rid, fresh);
        }
        if let Some((home, rid)) = outcome.repeat_keyframe {
            self.request_pli(home, track, rid, true);
        }
        let paced = paced(&self.ctx.config, pkt.rid.is_some());
        for w in writes.drain(..) {
            self.write_leg(w, paced);
        }
        self.writes = writes;
    }

    /// Simulcast layer selection for every subscriber session here (or only `only`); tells
    /// str0m what each session would like to send so that its BWE probes for it.
    pub(super) fn select_layers(&mut self, only: Option<SessionId>) {
        for (id, plan) in self.forwarder.select_layers(self.now, only) {
            // A leg that changes layer needs a keyframe of its new layer: asked for now, not at
            // the new layer's next packet (a frame interval later, 100 ms at 10 frames/s; the
            // forwarder asks again from there while it waits, within the same throttle).
            for c in &plan.changes {
                if let Some((track, home, _)) = self.forwarder.leg_source(c.leg) {
                    self.request_pli(home, track, Some(c.rid), c.urgent);
                }
            }
            // Legs that stop their layer now (an urgent switch down, or a pause) forget what they
            // sent: their receiver can no longer use it, and resending it on NACK would take the
            // capacity the link lacks (see `LegWrite::restart`). A fresh RTX cache is an empty one.
            for mid in plan
                .changes
                .iter()
                .filter(|c| c.urgent)
                .map(|c| c.leg.mid)
                .chain(plan.pauses.iter().filter(|(_, p)| *p).map(|(l, _)| l.mid))
            {
                self.size_leg_rtx_cache(id, mid, MediaKind::Video);
            }
            let Some(session) = self.sessions.get_mut(&id) else {
                continue;
            };
            session.pads = plan.minimum_bps > plan.allocated_bps;
            if let Some(estimate) = plan.restart_estimate {
                self.ctx.metrics.bwe_restarts.inc();
                let restarted = catch_unwind(AssertUnwindSafe(|| {
                    session.rtc.bwe().reset(Bitrate::bps(estimate));
                }));
                if restarted.is_err() {
                    self.session_panicked(id);
                    continue;
                }
                self.mark_dirty(id);
            }
            let Some(session) = self.sessions.get_mut(&id) else {
                continue;
            };
            if !self
                .forwarder
                .bitrate_changed(id, plan.minimum_bps, plan.desired_bps)
            {
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

    pub(super) fn write_leg(&mut self, w: LegWrite, paced: bool) {
        let id = w.leg.session;
        let Some(session) = self.sessions.get_mut(&id) else {
            self.dropped(PacketDrop::NoSubscriberSession);
            return;
        };
        let (now, shard) = (self.now, self.id);
        let (egress, actions) = (&mut self.egress, &mut self.actions);
        let written = catch_unwind(AssertUnwindSafe(|| {
            let mut api = session.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(w.leg.mid, None) else {
                return Written::NoStream;
            };
            tx.set_unpaced(!paced);
            if w.restart {
                // A keyframe of the leg's new layer: nothing sent before it is worth resending.
                set_rtx_cache(tx, MediaKind::Video);
            }
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
            // Unpaced media leaves at once (the vendored str0m's change 7), without the drain's
            // send-path timeout and pacer round: the session is drained only for its other
            // work. Not while it pads: its padding and probes leave from the pacer's timeout,
            // which the drain after a write handles (see `defers_bookkeeping`).
            let mut sent = false;
            if !paced && !session.pads {
                while let Some(t) = api.poll_unpaced_now(w.leg.mid, None, now) {
                    sent = true;
                    queue_transmit(session.id, &mut session.routes, t, shard, egress, actions);
                }
            }
            if sent {
                return Written::Sent;
            }
            session.writes_pending = session.writes_pending.saturating_add(1);
            Written::Queued
        }));
        match written {
            Ok(Written::Sent) => self.ctx.metrics.forwarded.inc(),
            Ok(Written::Queued) => {
                self.ctx.metrics.forwarded.inc();
                self.mark_dirty(id);
            }
            Ok(Written::NoStream) => self.dropped(PacketDrop::NoSendStream),
            Err(_) => self.session_panicked(id),
        }
    }

    /// Sizes the RTX cache of a subscriber leg's send stream to what NACK repair needs (see
    /// [`rtx_cache_for`]). The cache starts empty: for an existing leg this also forgets what
    /// it sent, and its resend ratio starts afresh (the vendored str0m's change 6: the resend
    /// storm of a layer an urgent switch left no longer holds back the new layer's resends).
    pub(super) fn size_leg_rtx_cache(&mut self, id: SessionId, mid: Mid, kind: MediaKind) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let sized = catch_unwind(AssertUnwindSafe(|| {
            let mut api = session.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(mid, None) else {
                return false;
            };
            set_rtx_cache(tx, kind);
            true
        }));
        match sized {
            Ok(true) => {}
            Ok(false) => tracing::debug!(session = %id, %mid, "no send stream to size yet"),
            Err(_) => self.session_panicked(id),
        }
    }

    pub(super) fn keyframe_to_publisher(
        &mut self,
        track: TrackId,
        rid: Option<Rid>,
        kind: KeyframeRequestKind,
        fresh: bool,
    ) {
        if self.relay_keyframe(track, rid, kind, fresh) {
            return;
        }
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
        let Some(target) = self.forwarder.keyframe_request(track, rid, fresh, self.now) else {
            return;
        };
        self.send_keyframe_request(target, kind);
    }

    /// Keyframe requests the throttle held back and now lets through (see
    /// [`crate::forward::Forwarder::owed_keyframe_requests`]); those of a publisher whose
    /// transport is down are dropped, as in [`Core::keyframe_to_publisher`].
    pub(super) fn send_owed_keyframe_requests(&mut self) {
        for (track, target) in self.forwarder.owed_keyframe_requests(self.now) {
            if self.relay_owed_keyframe(track, &target) {
                continue;
            }
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
    pub(super) fn send_keyframe_request(
        &mut self,
        target: KeyframeTarget,
        kind: KeyframeRequestKind,
    ) {
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
                tracing::debug!(session = %target.session, mid = %target.mid, rid = ?target.rid, ?kind, "keyframe request to publisher");
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
    pub(super) fn request_keyframes_for(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        let wanted: Vec<(TrackId, ShardId, Option<Rid>)> = session
            .subscriptions
            .iter()
            .filter(|(_, s)| s.state == LegState::Active && s.kind == MediaKind::Video)
            .filter_map(|(mid, s)| {
                let leg = LegKey {
                    session: id,
                    mid: *mid,
                };
                Some((s.track, s.home, self.forwarder.leg_preference(leg)?))
            })
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
        for track in published {
            self.keyframe_to_publisher(track, None, KeyframeRequestKind::Pli, false);
        }
    }
}

/// Whether a forwarded packet goes through str0m's pacer (only with bandwidth estimation on).
/// Only simulcast video can adapt to a subscriber's estimate (by layer), and only with
/// [`Config::bwe_pace_video`]; audio and single-layer video never wait in the pacer, since
/// holding them back cannot make them fit. Unpaced media is still counted by the estimator.
pub(crate) fn paced(config: &Config, simulcast: bool) -> bool {
    config.bwe_pace_video && simulcast
}

/// Share of a video leg's bytes over the last second above which str0m drops the resends it
/// has queued (`rtx_ratio_cap`: resent / (resent + sent)). str0m's default, 0.15, starves a leg
/// on a thin lossy link: a 320x180 layer sends ~12 kB a second, so two or three lost packets of
/// one keyframe (a bottleneck's queue overflowing) put it over 0.15, and from then on its
/// receiver's NACKs went unanswered; the picture stayed broken until the receiver's own keyframe
/// request, about 3 s later (shaped test: 300 kbit/s with 3 % loss; NACKs sent 30 -> 52 while
/// resends received 147 -> 159 over the 3.3 s freeze). libwebrtc's own sender bounds resends by
/// rate (up to its target bitrate), not by such a share. Half the bytes still stops a resend
/// storm on a link that loses most of what it gets (the layer selector moves such a leg down,
/// and its urgent switches forget the old layer's packets, see `LegWrite::restart`).
pub(crate) const VIDEO_RESEND_RATIO_CAP: f32 = 0.5;

/// The RTX cache of a subscriber leg (str0m's `StreamTx::set_rtx_cache`: packets, age, resend
/// ratio cap). Video: up to 512 packets (a second of a 1.5 Mbit/s layer with keyframes) and two
/// seconds, resends capped at [`VIDEO_RESEND_RATIO_CAP`] of the bytes. A receiver asks again for
/// a packet whose resend was lost one round trip later; behind a bottleneck's full queue a round
/// trip is 300-400 ms, so a packet lost twice is asked for a third time about a second after it
/// was sent. With a one-second cache that NACK found nothing, and the receiver's picture stayed
/// broken until its own keyframe request (shaped test: a 1.0 s freeze on q, mid-shaping, after
/// a NACK for a packet no longer cached; libwebrtc's sender keeps max(1 s, 3 RTT)). The packet
/// bound keeps the memory where it was. Audio is never resent (forwarded as not nackable), so it gets a one-packet cache and
/// no resend ratio: str0m then keeps no per-packet byte history for the stream either.
pub(crate) fn rtx_cache_for(kind: MediaKind) -> (usize, Duration, Option<f32>) {
    match kind {
        MediaKind::Video => (512, Duration::from_secs(2), Some(VIDEO_RESEND_RATIO_CAP)),
        MediaKind::Audio => (1, Duration::from_millis(100), None),
    }
}

/// Gives a leg's send stream a fresh RTX cache of [`rtx_cache_for`]`(kind)` (str0m replaces the
/// cache, so what was sent before is no longer resent).
fn set_rtx_cache(tx: &mut StreamTx, kind: MediaKind) {
    let (packets, age, ratio_cap) = rtx_cache_for(kind);
    tx.set_rtx_cache(packets, age, ratio_cap);
}

/// Whether a drain handles str0m's timeout `t` itself rather than leaving it to the shard's
/// timer (see [`drain_session`]).
pub(crate) fn timeout_due(t: Instant, now: Instant, rounds: usize) -> bool {
    rounds < PACER_ROUNDS && t <= now + PACER_SLACK
}

/// The initial bandwidth estimate in bit/s, when bandwidth estimation is on.
pub(crate) fn initial_estimate_bps(config: &Config) -> Option<u64> {
    (config.bwe_initial_kbps > 0).then(|| u64::from(config.bwe_initial_kbps) * 1000)
}

/// Where a drain puts what it produced (disjoint parts of the [`Core`], borrowed beside the
/// session being drained).
struct Drain<'a> {
    shard: ShardId,
    metrics: &'a Metrics,
    egress: &'a mut Egress,
    actions: &'a mut VecDeque<Action>,
    events: &'a mut Vec<SessionEvent>,
}

/// Polls one session until its next timeout (see [`Core::drain`]).
fn drain_session(session: &mut Session, now: Instant, out: &mut Drain<'_>) -> Result<(), String> {
    let mut reconnected = false;
    let mut rounds = 0;
    let mut rtp_sent = 0u32;
    let result = loop {
        let output = session.rtc.poll_output().map_err(|e| e.to_string())?;
        match output {
            Output::Timeout(mut t) => {
                // With bandwidth estimation on, str0m's pacer asks for a timeout 1 µs after
                // it hands out packets (unpaced ones: all of its snapshot, see
                // vendor/str0m/PATCHES.md; paced ones: one). Handling it here sends everything
                // the pacer allows in one drain, instead of one packet per shard wake-up (the
                // shard's timer has 1 ms granularity: packets would wait for it).
                let bookkeeping = defers_bookkeeping(
                    session.rtc.last_timeout_reason(),
                    session.writes_pending,
                    rtp_sent,
                    session.pads,
                );
                if bookkeeping {
                    t = t.max(now + PACER_BOOKKEEPING_DEFER);
                } else if timeout_due(t, now, rounds) {
                    rounds += 1;
                    session
                        .rtc
                        .handle_input(Input::Timeout(now.max(t)))
                        .map_err(|e| e.to_string())?;
                    continue;
                }
                session.next_timeout = t;
                if reconnected {
                    forget_stale_routes(session, out.actions);
                    out.events.push(SessionEvent::IceReconnected);
                }
                break Ok(());
            }
            Output::Transmit(t) => {
                rtp_sent += u32::from(is_rtp(&t.contents));
                queue_transmit(
                    session.id,
                    &mut session.routes,
                    t,
                    out.shard,
                    out.egress,
                    out.actions,
                );
            }
            Output::Event(event) => reconnected |= session_output(session, event, now, out),
        }
    };
    session.writes_pending = 0;
    result
}

/// What [`Core::write_leg`] did with a packet.
enum Written {
    /// Sent at once (unpaced, see `DirectApi::poll_unpaced_now`).
    Sent,
    /// Queued in the leg's send stream, for the session's next drain.
    Queued,
    /// The leg has no send stream.
    NoStream,
}

/// Queues one of session `id`'s datagrams for the socket: UDP ones in the egress batch (and,
/// the first time one goes to an address, a route from it to the session for the receiver),
/// TCP ones for the driver's ICE-TCP side.
fn queue_transmit(
    id: SessionId,
    routes: &mut Routes,
    t: Transmit,
    shard: ShardId,
    egress: &mut Egress,
    actions: &mut VecDeque<Action>,
) {
    if t.proto != Protocol::Udp {
        actions.push_back(Action::TcpTransmit {
            destination: t.destination,
            data: t.contents.into(),
        });
        return;
    }
    egress.push(t.destination, t.contents);
    if routes.sent_to(t.destination) {
        actions.push_back(Action::Routing(UdpControl::Route {
            addr: t.destination,
            session: id,
            shard,
        }));
    }
}

/// Whether a drain leaves str0m's due timeout for later (up to [`PACER_BOOKKEEPING_DEFER`])
/// instead of handling it at once: when it is only the pacer's bookkeeping after a send
/// (`Immediate`: with estimation on, the leaky-bucket pacer asks for a full `Rtc` timeout after
/// it hands out packets; with the vendored str0m's patch, after the whole snapshot of unpaced
/// packets, see `vendor/str0m/PATCHES.md`) and every packet written since the last drain has
/// gone out. Forwarded media is unpaced, so nothing waits for that timeout; handling it at once
/// cost one more pass over the whole `Rtc` (ICE, DTLS, SCTP, every stream, the estimator) per
/// drain. The next write, datagram or timer runs it.
///
/// Not while the session pads (`pads`: the layer selector asked str0m for more than its media,
/// see `Session::pads`): padding and probes leave only from that timeout, and each write pushed
/// it another 20 ms out, so with media every few ms it never came. Measured (livestream, 20
/// subscribers starting on q, release, load 4-5, interleaved): egress 2,756 and 3,370 of 4,720
/// packets/s with the deferral for padding sessions, 4,572 and 4,721 without: the estimate
/// cannot climb without padding (GCC stays within 1.5x of what it sees acknowledged).
pub(crate) fn defers_bookkeeping(
    reason: Reason,
    writes_pending: u32,
    rtp_sent: u32,
    pads: bool,
) -> bool {
    !pads
        && writes_pending > 0
        && rtp_sent >= writes_pending
        && reason == Reason::Pacer(PacerReason::Immediate)
}

/// Whether an outgoing datagram is (S)RTP rather than RTCP, STUN or DTLS (RFC 7983, RFC 5761:
/// version 2, and a second byte outside RTCP's packet types 192–223).
fn is_rtp(datagram: &[u8]) -> bool {
    datagram.len() >= 12 && datagram[0] >> 6 == 2 && !(192..=223).contains(&datagram[1])
}

/// One of str0m's events for a session; true when its transport is connected again after an ICE
/// restart.
fn session_output(session: &mut Session, event: Event, now: Instant, out: &mut Drain<'_>) -> bool {
    let events = &mut *out.events;
    match event {
        Event::RtpPacket(pkt) => match media_event(session, pkt) {
            Ok(ev) => events.push(ev),
            Err(reason) => out.metrics.drop(reason),
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
                return session.routes.is_restarting();
            }
            IceConnectionState::Disconnected => {
                session.transport_lost_since.get_or_insert(now);
            }
            IceConnectionState::New | IceConnectionState::Checking => {}
        },
        Event::Connected => events.push(SessionEvent::Connected),
        Event::ChannelData(cd) => {
            use super::channel::{ChannelEvent, ChannelMessage};
            if let Some(stream) = session.rtc.direct_api().sctp_stream_id_by_channel_id(cd.id) {
                events.push(SessionEvent::Channel(ChannelEvent::Data {
                    stream,
                    message: ChannelMessage {
                        binary: cd.binary,
                        data: cd.data,
                    },
                }));
            }
        }
        Event::ChannelClose(handle) => events.push(SessionEvent::Channel(
            super::channel::ChannelEvent::Closed { handle },
        )),
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
            out.metrics.nacks.inc_by(nacks);
            if s.loss.is_some() || s.rtt.is_some() {
                events.push(SessionEvent::EgressReport(s.loss, s.rtt));
            }
        }
        _ => {}
    }
    false
}

/// Forgets the routes of before an ICE restart that the session did not use again, now that
/// its transport is connected on the new path.
fn forget_stale_routes(session: &mut Session, actions: &mut VecDeque<Action>) {
    for addr in session.routes.connected() {
        actions.push_back(Action::Routing(UdpControl::Unroute {
            addr,
            session: session.id,
        }));
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn only_the_pacers_bookkeeping_after_every_written_packet_waits() {
        let immediate = Reason::Pacer(PacerReason::Immediate);
        assert!(defers_bookkeeping(immediate, 1, 1, false));
        assert!(
            defers_bookkeeping(immediate, 3, 4, false),
            "padding or RTX counted too"
        );
        // Packets still waiting in str0m: the next one needs the timeout now.
        assert!(!defers_bookkeeping(immediate, 3, 2, false));
        // A drain for anything but forwarded packets (a datagram, a timer) handles it.
        assert!(!defers_bookkeeping(immediate, 0, 0, false));
        // A session that pads towards a higher layer: its padding leaves only from it.
        assert!(!defers_bookkeeping(immediate, 1, 1, true));
        // Anything else str0m wants (feedback, the estimator, paced media, probes) runs now.
        assert!(!defers_bookkeeping(
            Reason::Pacer(PacerReason::Paced),
            1,
            1,
            false
        ));
        assert!(!defers_bookkeeping(
            Reason::Pacer(PacerReason::Probe1),
            1,
            1,
            false
        ));
        assert!(!defers_bookkeeping(Reason::Feedback, 1, 1, false));
        assert!(PACER_BOOKKEEPING_DEFER < Duration::from_millis(40));
    }

    #[test]
    fn rtx_caches_are_sized_for_nack_and_audio_keeps_no_resend_history() {
        let (packets, age, cap) = rtx_cache_for(MediaKind::Video);
        assert!(packets >= 180, "a second of video");
        assert!(
            age >= Duration::from_millis(1500),
            "three NACK rounds behind a bottleneck's full queue"
        );
        assert!(
            packets < 1024 && age < Duration::from_secs(3),
            "below str0m's default"
        );
        assert_eq!(cap, Some(VIDEO_RESEND_RATIO_CAP));
        let (packets, _, cap) = rtx_cache_for(MediaKind::Audio);
        assert!(packets <= 1);
        assert_eq!(cap, None);
    }

    #[test]
    fn rtp_is_told_from_rtcp_stun_and_dtls() {
        let mut rtp = vec![0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        assert!(is_rtp(&rtp));
        rtp[1] = 0x80 | 111; // marker set, PT 111
        assert!(is_rtp(&rtp));
        let mut rtcp = rtp.clone();
        for pt in [200u8, 201, 205, 206] {
            rtcp[1] = pt;
            assert!(!is_rtp(&rtcp), "RTCP {pt}");
        }
        assert!(
            !is_rtp(&[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0]),
            "STUN"
        );
        assert!(
            !is_rtp(&[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            "DTLS"
        );
        assert!(!is_rtp(&[0x80, 96]), "too short");
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
}
