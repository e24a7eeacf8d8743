//! The bot's sans-IO core: one str0m `Rtc` plus the tracks it pushes and pulls.
//!
//! [`Participant`] does no I/O and reads no clock. Every method takes `now`, applies one mutation
//! (a datagram, a timeout, an SDP step, due media) and then drains str0m's output until it reports a
//! timeout, as str0m requires. Datagrams to send pile up in an outbox the driver empties
//! ([`Participant::take_outbox`]); [`Participant::next_wakeup`] says when to call
//! [`Participant::handle_timeout`] next (str0m timers and media clocks combined).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, KeyframeRequestKind, Mid, Pt, Rid, Simulcast};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcError};
use thiserror::Error;
use tracing::{debug, warn};

use crate::payload::{MediaKind, Vp8Descriptor};
use crate::reception::{Reception, ReceptionAction, ReceptionStats};
use crate::source::{AudioSettings, MediaSource, SimulcastLayer, SourceCounters, VideoSettings};

mod tap;
pub use tap::TappedRtp;

/// Errors of SDP and setup steps.
#[derive(Debug, Error)]
pub enum SignalingError {
    /// The remote SDP does not parse.
    #[error("remote SDP does not parse: {0}")]
    BadSdp(String),
    /// str0m refused an SDP step.
    #[error("str0m: {0}")]
    Rtc(#[from] RtcError),
    /// An answer arrived but no offer is outstanding.
    #[error("no offer outstanding")]
    NoPendingOffer,
    /// Nothing to offer (no changes).
    #[error("nothing to negotiate")]
    NothingToOffer,
    /// The local address cannot be used as an ICE candidate.
    #[error("unusable local address {0}")]
    BadLocalAddress(SocketAddr),
}

/// End-to-end encryption of the media frames a participant sends and receives, as a
/// browser's encoded-frame transform does: every RTP payload the participant sends is one
/// frame (or a part of one) and is sealed before it goes out; every payload of a pulled
/// track is opened before it is verified. The VP8 payload descriptor stays clear (the
/// packetizer adds it after the transform); Opus payloads are sealed whole.
///
/// Opening may be deferred (a frame waits for its key): [`MediaCrypto::open`] only takes a
/// frame, and verdicts come out of [`MediaCrypto::next_verdict`] in order, also after
/// [`MediaCrypto::poll`]. Implemented for a room member's MLS keys by
/// [`crate::media_e2ee::RoomMediaCrypto`].
pub trait MediaCrypto: Send {
    /// Seals one outbound frame of `kind` (`frame_start`: it starts a video frame, so it
    /// begins with the codec's payload header); `None`: drop it, never send it in the clear.
    fn seal(&mut self, kind: MediaKind, frame_start: bool, frame: &[u8]) -> Option<Vec<u8>>;
    /// One inbound frame, named `id`, of the pulled track at `mid` that SFU session
    /// `remote_session_id` publishes.
    fn open(
        &mut self,
        now: Instant,
        mid: &str,
        remote_session_id: &str,
        kind: MediaKind,
        id: u32,
        frame: &[u8],
    );
    /// Time passed: retry frames waiting for a key, give up on those that waited too long.
    fn poll(&mut self, now: Instant);
    /// The next verdict due, in order: the frame's id and its plaintext, or `None` (drop it).
    fn next_verdict(&mut self) -> Option<(u32, Option<Vec<u8>>)>;
}

/// A received frame handed to the [`MediaCrypto`], until its verdict.
#[derive(Debug)]
struct Opening {
    mid: Mid,
    /// What stays clear in front of the frame (the VP8 payload descriptor).
    prefix: Vec<u8>,
    rtp_seq: u64,
}

/// How often frames waiting for their key are retried.
const CRYPTO_POLL: Duration = Duration::from_millis(50);
/// Frames waiting for a verdict at most (a crypto that never answers cannot grow memory).
const MAX_OPENING: usize = 4096;

/// A track this participant publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackSpec {
    /// Track name in the API.
    pub name: String,
    /// Audio or video.
    pub kind: MediaKind,
    /// Simulcast layers of a video track, lowest first (rid-based simulcast, one RTP stream per
    /// layer). Empty: one stream with the participant's video settings.
    pub simulcast: Vec<SimulcastLayer>,
}

impl TrackSpec {
    /// An audio track.
    pub fn audio(name: &str) -> Self {
        Self {
            name: name.into(),
            kind: MediaKind::Audio,
            simulcast: Vec::new(),
        }
    }

    /// A video track without simulcast.
    pub fn video(name: &str) -> Self {
        Self {
            name: name.into(),
            kind: MediaKind::Video,
            simulcast: Vec::new(),
        }
    }

    /// A simulcast video track with `layers`, lowest first.
    pub fn simulcast_video(name: &str, layers: Vec<SimulcastLayer>) -> Self {
        Self {
            name: name.into(),
            kind: MediaKind::Video,
            simulcast: layers,
        }
    }
}

/// What one simulcast layer of a published track has sent.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LayerSent {
    /// The layer's rid.
    pub rid: String,
    /// Layer index carried in the payloads (0 is the lowest).
    pub layer: u8,
    /// What it has sent.
    pub sent: SourceCounters,
}

/// Statistics of one published track.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PublishedStats {
    /// Track name.
    pub track_name: String,
    /// Mid in this session.
    pub mid: String,
    /// Audio or video.
    pub kind: MediaKind,
    /// Track id carried in the payloads.
    pub track_id: u64,
    /// Whether media is currently being sent.
    pub sending: bool,
    /// Negotiated payload type, once known.
    pub pt: Option<u8>,
    /// What has been sent (all layers together; sequence numbers are those of the first layer).
    pub sent: SourceCounters,
    /// Per simulcast layer (empty without simulcast).
    pub layers: Vec<LayerSent>,
}

/// Statistics of one pulled track.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SubscribedStats {
    /// Session that publishes the track.
    pub remote_session_id: String,
    /// Track name.
    pub track_name: String,
    /// Mid in this session.
    pub mid: String,
    /// Still subscribed (not closed).
    pub active: bool,
    /// What has arrived.
    pub received: ReceptionStats,
}

/// Transport-level counters.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TransportStats {
    /// Local UDP address.
    pub local_addr: Option<String>,
    /// Latest ICE connection state.
    pub ice_state: String,
    /// DTLS/SRTP is up.
    pub connected: bool,
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Datagrams that were neither STUN, DTLS, RTP nor RTCP, or that str0m did not accept.
    pub dropped_datagrams: u64,
    /// Errors str0m returned while handling input.
    pub rtc_errors: u64,
    /// Datagrams the socket refused to send (buffer full, unreachable…).
    pub send_errors: u64,
    /// RTP packets on a mid the participant did not subscribe to.
    pub unexpected_rtp: u64,
    /// Keyframe requests received for unknown mids.
    pub unexpected_keyframe_requests: u64,
    /// Datagrams the ingress limit (shaper) dropped before they reached the participant.
    pub ingress_dropped: u64,
}

/// All statistics of a participant.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ParticipantStats {
    /// Transport counters.
    pub transport: TransportStats,
    /// Published tracks.
    pub published: Vec<PublishedStats>,
    /// Pulled tracks.
    pub subscribed: Vec<SubscribedStats>,
}

#[derive(Debug)]
struct Published {
    name: String,
    kind: MediaKind,
    /// One source per RTP stream: `(None, source)` without simulcast, else one per rid.
    sources: Vec<(Option<Rid>, MediaSource)>,
    pt: Option<Pt>,
    sending: bool,
}

impl Published {
    fn track_id(&self) -> u64 {
        self.sources.first().map_or(0, |(_, s)| s.track_id())
    }

    fn next_due(&self) -> Option<Instant> {
        self.sources.iter().map(|(_, s)| s.next_due()).min()
    }

    fn counters(&self) -> SourceCounters {
        let mut total = self
            .sources
            .first()
            .map(|(_, s)| s.counters())
            .unwrap_or_default();
        for (_, s) in self.sources.iter().skip(1) {
            let c = s.counters();
            total.packets += c.packets;
            total.bytes += c.bytes;
            total.frames += c.frames;
            total.keyframes += c.keyframes;
            total.keyframe_requests += c.keyframe_requests;
        }
        total
    }
}

#[derive(Debug)]
struct Subscribed {
    remote_session_id: String,
    track_name: String,
    reception: Reception,
    active: bool,
}

/// A remote track being pulled, as announced by the SFU for the mid it chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSpec {
    /// Mid the SFU's offer uses for the track.
    pub mid: String,
    /// Publishing session.
    pub remote_session_id: String,
    /// Track name.
    pub track_name: String,
}

/// Construction settings of a participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParticipantConfig {
    /// Audio track settings.
    pub audio: AudioSettings,
    /// Video track settings.
    pub video: VideoSettings,
    /// Request a keyframe when video arrives before any keyframe (like browsers do).
    pub request_keyframes: bool,
    /// Start sending as soon as a track is negotiated.
    pub send_on_publish: bool,
    /// Also negotiate VP9 and H.264 (the bot itself sends VP8 only): a participant that
    /// receives browsers' video in whatever codec they publish (the recorder).
    pub receive_vp9_h264: bool,
}

impl Default for ParticipantConfig {
    fn default() -> Self {
        Self {
            audio: AudioSettings::default(),
            video: VideoSettings::default(),
            request_keyframes: true,
            send_on_publish: true,
            receive_vp9_h264: false,
        }
    }
}

struct PendingOffer {
    pending: SdpPendingOffer,
    new_tracks: Vec<(Mid, TrackSpec)>,
}

/// The sans-IO core of a bot.
pub struct Participant {
    rtc: Rtc,
    config: ParticipantConfig,
    local_addr: SocketAddr,
    clock_anchor: (Instant, u64),
    outbox: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    rtc_timeout: Instant,
    published: BTreeMap<Mid, Published>,
    subscribed: BTreeMap<Mid, Subscribed>,
    pending: Option<PendingOffer>,
    transport: TransportStats,
    sending: bool,
    next_track_id: u64,
    remote_ufrag: Option<String>,
    crypto: Option<Box<dyn MediaCrypto>>,
    opening: BTreeMap<u32, Opening>,
    next_frame_id: u32,
    /// When to poll the crypto for held frames next.
    crypto_due: Instant,
    /// Where pulled RTP packets go instead of the reception checks ([`Participant::set_rtp_tap`]).
    rtp_tap: Option<tap::RtpTap>,
}

impl std::fmt::Debug for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Participant")
            .field("local_addr", &self.local_addr)
            .field("published", &self.published.len())
            .field("subscribed", &self.subscribed.len())
            .finish()
    }
}

impl Participant {
    /// A participant whose UDP socket is `local_addr`.
    ///
    /// `now_unix_us` is `now` in microseconds since the Unix epoch: payload send times and latencies are
    /// computed from it, so participants that share a host clock can compare times.
    pub fn new(
        config: ParticipantConfig,
        local_addr: SocketAddr,
        now: Instant,
        now_unix_us: u64,
        track_id_seed: u64,
    ) -> Result<Self, SignalingError> {
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_vp9(config.receive_vp9_h264)
            .enable_h264(config.receive_vp9_h264)
            .set_stats_interval(Some(Duration::from_secs(1)))
            .build(now);
        let candidate = Candidate::host(local_addr, "udp")
            .map_err(|_| SignalingError::BadLocalAddress(local_addr))?;
        rtc.add_local_candidate(candidate);
        let mut p = Self {
            rtc,
            config,
            local_addr,
            clock_anchor: (now, now_unix_us),
            outbox: VecDeque::new(),
            rtc_timeout: now,
            published: BTreeMap::new(),
            subscribed: BTreeMap::new(),
            pending: None,
            transport: TransportStats {
                local_addr: Some(local_addr.to_string()),
                ice_state: "new".into(),
                ..TransportStats::default()
            },
            sending: config.send_on_publish,
            next_track_id: track_id_seed,
            remote_ufrag: None,
            crypto: None,
            opening: BTreeMap::new(),
            next_frame_id: 0,
            crypto_due: now,
            rtp_tap: None,
        };
        p.drain(now);
        Ok(p)
    }

    /// Seal what this participant sends and open what it pulls with `crypto` from now on
    /// (`None`: media in the clear again).
    pub fn set_media_crypto(&mut self, crypto: Option<Box<dyn MediaCrypto>>) {
        self.crypto = crypto;
        self.opening.clear();
    }

    /// Microseconds since the Unix epoch at `t`.
    pub fn unix_us(&self, t: Instant) -> u64 {
        let (anchor, us) = self.clock_anchor;
        if t >= anchor {
            us + t.duration_since(anchor).as_micros() as u64
        } else {
            us.saturating_sub(anchor.duration_since(t).as_micros() as u64)
        }
    }

    /// The local UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// DTLS is up and media can flow.
    pub fn is_connected(&self) -> bool {
        self.transport.connected
    }

    /// The `Rtc` is still alive.
    pub fn is_alive(&self) -> bool {
        self.rtc.is_alive()
    }

    /// Datagrams to send: `(source, destination, bytes)`.
    pub fn take_outbox(&mut self) -> impl Iterator<Item = (SocketAddr, SocketAddr, Vec<u8>)> + '_ {
        self.outbox.drain(..)
    }

    /// When to call [`Participant::handle_timeout`] next.
    pub fn next_wakeup(&self) -> Instant {
        let mut t = self.rtc_timeout;
        if !self.opening.is_empty() {
            // Frames wait for their keys: look again soon.
            t = t.min(self.crypto_due);
        }
        if self.sending && self.transport.connected {
            for p in self.published.values() {
                if p.sending
                    && p.pt.is_some()
                    && let Some(due) = p.next_due()
                {
                    t = t.min(due);
                }
            }
        }
        t
    }

    /// A datagram arrived from `source`.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, bytes: &[u8]) {
        self.handle_datagram_at(now, now, source, bytes);
    }

    /// A datagram from `source` that arrived at `arrived` (the kernel's receive time) and is
    /// handled at `now`. str0m gets `arrived`: it is the arrival time the transport-wide feedback
    /// reports to the sender, whose bandwidth estimator reads delay growth from it; what the bot
    /// measures itself (latency, freezes) uses `now`, as before. `arrived` must not be earlier
    /// than any time str0m was given before (the caller keeps it monotonic).
    pub fn handle_datagram_at(
        &mut self,
        arrived: Instant,
        now: Instant,
        source: SocketAddr,
        bytes: &[u8],
    ) {
        self.transport.datagrams_in += 1;
        self.transport.bytes_in += bytes.len() as u64;
        let Ok(contents) = bytes.try_into() else {
            self.transport.dropped_datagrams += 1;
            return;
        };
        let input = Input::Receive(
            arrived,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local_addr,
                contents,
            },
        );
        if !self.rtc.accepts(&input) {
            self.transport.dropped_datagrams += 1;
            return;
        }
        if let Err(e) = self.rtc.handle_input(input) {
            debug!("str0m rejected a datagram: {e}");
            self.transport.rtc_errors += 1;
        }
        self.drain(now);
    }

    /// Time passed: run str0m's timers and send due media.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.rtc_timeout {
            if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
                debug!("str0m timeout error: {e}");
                self.transport.rtc_errors += 1;
            }
            self.drain(now);
        }
        if let Some(crypto) = self.crypto.as_mut()
            && !self.opening.is_empty()
            && now >= self.crypto_due
        {
            crypto.poll(now);
            self.take_verdicts(now);
            self.crypto_due = now + CRYPTO_POLL;
        }
        self.send_due_media(now);
    }

    /// Feeds the verdicts the crypto has due to the receptions of their tracks.
    fn take_verdicts(&mut self, now: Instant) {
        let now_us = self.unix_us(now);
        let mut keyframes = Vec::new();
        while let Some((id, plain)) = self.crypto.as_mut().and_then(|c| c.next_verdict()) {
            let Some(opening) = self.opening.remove(&id) else {
                continue;
            };
            let (Some(plain), Some(sub)) = (plain, self.subscribed.get_mut(&opening.mid)) else {
                continue;
            };
            let mut payload = opening.prefix;
            payload.extend_from_slice(&plain);
            let action = sub
                .reception
                .on_packet(&payload, Some(opening.rtp_seq), now, now_us);
            if action == ReceptionAction::RequestKeyframe && self.config.request_keyframes {
                keyframes.push(opening.mid);
            }
        }
        for mid in keyframes {
            if let Some(rx) = self.rtc.direct_api().stream_rx_by_mid(mid, None) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
            }
        }
    }

    fn send_due_media(&mut self, now: Instant) {
        if !self.sending || !self.transport.connected {
            return;
        }
        let anchor = self.clock_anchor;
        let wall = move |t: Instant| {
            if t >= anchor.0 {
                anchor.1 + t.duration_since(anchor.0).as_micros() as u64
            } else {
                anchor.1
            }
        };
        let mut wrote = false;
        let audio_level = self.config.audio.level_dbov;
        for (mid, p) in self.published.iter_mut() {
            let Some(pt) = p.pt else { continue };
            if !p.sending {
                continue;
            }
            let ext = ExtensionValues {
                audio_level: audio_level.filter(|_| p.kind == MediaKind::Audio),
                // The extension carries both or nothing; the V bit says "voice" like a VAD.
                voice_activity: audio_level.map(|l| l > -127),
                ..Default::default()
            };
            for (rid, source) in p.sources.iter_mut() {
                if source.next_due() > now {
                    continue;
                }
                let packets = source.poll(now, wall);
                let mut api = self.rtc.direct_api();
                let Some(stream) = api.stream_tx_by_mid(*mid, *rid) else {
                    warn!("no send stream for mid {mid} rid {rid:?}");
                    continue;
                };
                for pkt in packets {
                    let payload = match self.crypto.as_mut() {
                        None => pkt.payload,
                        Some(crypto) => match seal(crypto.as_mut(), p.kind, pkt.payload) {
                            Some(sealed) => sealed,
                            None => continue,
                        },
                    };
                    stream.write_rtp(
                        RtpWrite::new(pt, pkt.rtp_seq.into(), pkt.rtp_time, now, payload)
                            .marker(pkt.marker)
                            .nackable(pkt.nackable)
                            .ext_vals(ext.clone()),
                    );
                    wrote = true;
                }
            }
        }
        if wrote {
            self.drain(now);
        }
    }

    /// Start or stop sending media on all published tracks.
    pub fn set_sending(&mut self, now: Instant, sending: bool) {
        if sending && !self.sending {
            for p in self.published.values_mut() {
                for (_, s) in p.sources.iter_mut() {
                    s.resume(now);
                }
            }
        }
        self.sending = sending;
    }

    /// Create an offer that adds sendonly transceivers for `tracks`. Returns the SDP and the mids.
    pub fn create_push_offer(
        &mut self,
        now: Instant,
        tracks: &[TrackSpec],
    ) -> Result<(String, Vec<String>), SignalingError> {
        self.pending = None;
        let mut api = self.rtc.sdp_api();
        let mut new_tracks = Vec::new();
        for t in tracks {
            let kind = match t.kind {
                MediaKind::Audio => str0m::media::MediaKind::Audio,
                MediaKind::Video => str0m::media::MediaKind::Video,
            };
            let simulcast = (t.kind == MediaKind::Video && !t.simulcast.is_empty()).then(|| {
                let mut s = Simulcast::new();
                for layer in &t.simulcast {
                    s.add_send_layer(str0m::media::SimulcastLayer::new(&layer.rid));
                }
                s
            });
            let mid = api.add_media(
                kind,
                Direction::SendOnly,
                Some("satsuma-bot".into()),
                Some(t.name.clone()),
                simulcast,
            );
            new_tracks.push((mid, t.clone()));
        }
        let Some((offer, pending)) = api.apply() else {
            return Err(SignalingError::NothingToOffer);
        };
        let mids = new_tracks.iter().map(|(m, _)| m.to_string()).collect();
        self.pending = Some(PendingOffer {
            pending,
            new_tracks,
        });
        self.drain(now);
        Ok((offer.to_sdp_string(), mids))
    }

    /// Create an offer that stops the transceivers at `mids` (and stops sending on them).
    pub fn create_close_offer(
        &mut self,
        now: Instant,
        mids: &[String],
    ) -> Result<String, SignalingError> {
        self.pending = None;
        let mut api = self.rtc.sdp_api();
        for m in mids {
            api.stop_media(Mid::from(m.as_str()));
        }
        let Some((offer, pending)) = api.apply() else {
            return Err(SignalingError::NothingToOffer);
        };
        self.pending = Some(PendingOffer {
            pending,
            new_tracks: Vec::new(),
        });
        self.drain(now);
        Ok(offer.to_sdp_string())
    }

    /// Forget closed tracks locally (after `tracks/close`, with or without renegotiation).
    pub fn forget_tracks(&mut self, mids: &[String]) {
        for m in mids {
            let mid = Mid::from(m.as_str());
            self.published.remove(&mid);
            if let Some(s) = self.subscribed.get_mut(&mid) {
                s.active = false;
            }
        }
    }

    /// Drop the outstanding offer (the server refused it).
    pub fn rollback(&mut self) {
        self.pending = None;
    }

    /// The server answered our outstanding offer.
    pub fn accept_answer(&mut self, now: Instant, sdp: &str) -> Result<(), SignalingError> {
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| SignalingError::BadSdp(e.to_string()))?;
        let Some(PendingOffer {
            pending,
            new_tracks,
        }) = self.pending.take()
        else {
            return Err(SignalingError::NoPendingOffer);
        };
        let r = self.rtc.sdp_api().accept_answer(pending, answer);
        self.drain(now);
        r?;
        self.note_remote_ufrag(sdp);
        for (mid, spec) in new_tracks {
            self.next_track_id = self.next_track_id.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let track_id = self.next_track_id;
            let rtp_base = || -> (u16, u32) { (rand::random(), rand::random()) };
            let sources = match spec.kind {
                MediaKind::Audio => vec![(
                    None,
                    MediaSource::audio(track_id, self.config.audio, now, rtp_base()),
                )],
                MediaKind::Video if spec.simulcast.is_empty() => vec![(
                    None,
                    MediaSource::video(track_id, self.config.video, now, rtp_base()),
                )],
                MediaKind::Video => spec
                    .simulcast
                    .iter()
                    .zip(0u8..)
                    .map(|(layer, i)| {
                        let s = MediaSource::video(track_id, layer.video, now, rtp_base())
                            .with_layer(i);
                        (Some(Rid::from(layer.rid.as_str())), s)
                    })
                    .collect(),
            };
            let pt = self.negotiated_pt(mid, spec.kind);
            if pt.is_none() {
                warn!("no negotiated payload type for mid {mid}");
            }
            self.published.insert(
                mid,
                Published {
                    name: spec.name,
                    kind: spec.kind,
                    sources,
                    pt,
                    sending: true,
                },
            );
        }
        Ok(())
    }

    fn negotiated_pt(&self, mid: Mid, kind: MediaKind) -> Option<Pt> {
        let codec = match kind {
            MediaKind::Audio => Codec::Opus,
            MediaKind::Video => Codec::Vp8,
        };
        let media = self.rtc.media(mid)?;
        let remote = media.remote_pts();
        self.rtc
            .codec_config()
            .params()
            .iter()
            .filter(|p| p.spec().codec == codec)
            .map(|p| p.pt())
            .find(|pt| remote.is_empty() || remote.contains(pt))
    }

    /// The server offered (pulled tracks); returns our answer. `pulls` names the new pulled tracks.
    pub fn accept_offer(
        &mut self,
        now: Instant,
        sdp: &str,
        pulls: &[PullSpec],
    ) -> Result<String, SignalingError> {
        let offer =
            SdpOffer::from_sdp_string(sdp).map_err(|e| SignalingError::BadSdp(e.to_string()))?;
        self.pending = None;
        let r = self.rtc.sdp_api().accept_offer(offer);
        self.drain(now);
        let answer = r?;
        self.note_remote_ufrag(sdp);
        for p in pulls {
            self.subscribed.insert(
                Mid::from(p.mid.as_str()),
                Subscribed {
                    remote_session_id: p.remote_session_id.clone(),
                    track_name: p.track_name.clone(),
                    reception: Reception::new(now),
                    active: true,
                },
            );
        }
        Ok(answer.to_sdp_string())
    }

    /// The driver could not send a datagram.
    pub fn note_send_error(&mut self) {
        self.transport.send_errors += 1;
    }

    /// The ingress limit dropped a datagram addressed to this participant.
    pub fn note_ingress_drop(&mut self) {
        self.transport.ingress_dropped += 1;
    }

    /// Queue arbitrary bytes to `destination` from this participant's address (a test hook for
    /// hostile-input tests; str0m never sees them).
    pub fn send_raw(&mut self, destination: SocketAddr, bytes: Vec<u8>) {
        self.outbox.push_back((self.local_addr, destination, bytes));
    }

    fn note_remote_ufrag(&mut self, sdp: &str) {
        if let Some(u) = sdp
            .lines()
            .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        {
            self.remote_ufrag = Some(u.to_owned());
        }
    }

    /// ICE usernames: ours, and the peer's from its last SDP (for tests that forge STUN).
    pub fn ice_ufrags(&mut self) -> (String, Option<String>) {
        (
            self.rtc.direct_api().local_ice_credentials().ufrag,
            self.remote_ufrag.clone(),
        )
    }

    /// Stop the `Rtc` (no more output).
    pub fn close(&mut self) {
        self.rtc.disconnect();
    }

    /// Forgets every pulled track's latency samples so far (see
    /// [`Reception::restart_latency`]): latency percentiles then cover a window only.
    pub fn restart_latency(&mut self) {
        for s in self.subscribed.values_mut() {
            s.reception.restart_latency();
        }
    }

    /// Statistics so far.
    pub fn stats(&self) -> ParticipantStats {
        ParticipantStats {
            transport: self.transport.clone(),
            published: self
                .published
                .iter()
                .map(|(mid, p)| PublishedStats {
                    track_name: p.name.clone(),
                    mid: mid.to_string(),
                    kind: p.kind,
                    track_id: p.track_id(),
                    sending: p.sending && self.sending,
                    pt: p.pt.map(|pt| *pt),
                    sent: p.counters(),
                    layers: p
                        .sources
                        .iter()
                        .filter_map(|(rid, s)| {
                            Some(LayerSent {
                                rid: rid.as_ref()?.to_string(),
                                layer: s.layer(),
                                sent: s.counters(),
                            })
                        })
                        .collect(),
                })
                .collect(),
            subscribed: self
                .subscribed
                .iter()
                .map(|(mid, s)| SubscribedStats {
                    remote_session_id: s.remote_session_id.clone(),
                    track_name: s.track_name.clone(),
                    mid: mid.to_string(),
                    active: s.active,
                    received: s.reception.stats(),
                })
                .collect(),
        }
    }

    /// Drain str0m until it asks for a timeout (the str0m run-loop contract).
    fn drain(&mut self, now: Instant) {
        // A safety bound: str0m always ends with a timeout, but never spin forever on a bug.
        for _ in 0..100_000 {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.rtc_timeout = t;
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    self.transport.datagrams_out += 1;
                    self.transport.bytes_out += t.contents.len() as u64;
                    self.outbox
                        .push_back((t.source, t.destination, t.contents.into()));
                }
                Ok(Output::Event(e)) => {
                    if let Some(e) = self.tap_rtp(now, e) {
                        self.on_event(now, e);
                    }
                }
                Err(e) => {
                    debug!("str0m poll_output error: {e}");
                    self.transport.rtc_errors += 1;
                    self.rtc_timeout = now + Duration::from_millis(10);
                    return;
                }
            }
        }
        self.rtc_timeout = now + Duration::from_millis(1);
    }

    fn on_event(&mut self, now: Instant, e: Event) {
        match e {
            Event::IceConnectionStateChange(s) => {
                self.transport.ice_state = match s {
                    IceConnectionState::New => "new",
                    IceConnectionState::Checking => "checking",
                    IceConnectionState::Connected => "connected",
                    IceConnectionState::Completed => "completed",
                    IceConnectionState::Disconnected => "disconnected",
                }
                .into();
            }
            Event::Connected => self.transport.connected = true,
            Event::KeyframeRequest(r) => match self.published.get_mut(&r.mid) {
                Some(p) => {
                    // A request for one layer goes to that layer; without a rid, to all.
                    let mut any = false;
                    for (rid, s) in p.sources.iter_mut() {
                        if r.rid.is_none() || *rid == r.rid {
                            s.request_keyframe();
                            any = true;
                        }
                    }
                    if !any {
                        self.transport.unexpected_keyframe_requests += 1;
                    }
                }
                None => self.transport.unexpected_keyframe_requests += 1,
            },
            Event::RtpPacket(pkt) => {
                let ssrc = pkt.header.ssrc;
                let mid = self
                    .rtc
                    .direct_api()
                    .stream_rx(&ssrc)
                    .map(|s| s.mid())
                    .or(pkt.header.ext_vals.mid);
                let now_us = self.unix_us(now);
                let Some((mid, sub)) = mid.and_then(|m| Some(m).zip(self.subscribed.get_mut(&m)))
                else {
                    self.transport.unexpected_rtp += 1;
                    return;
                };
                if let Some(crypto) = self.crypto.as_mut() {
                    let video = self
                        .rtc
                        .media(mid)
                        .is_some_and(|m| m.kind() == str0m::media::MediaKind::Video);
                    let (kind, clear) = if video {
                        let clear = Vp8Descriptor::parse(&pkt.payload).map_or(0, |d| d.len);
                        (MediaKind::Video, clear)
                    } else {
                        (MediaKind::Audio, 0)
                    };
                    if self.opening.len() >= MAX_OPENING {
                        self.opening.pop_first();
                    }
                    self.next_frame_id = self.next_frame_id.wrapping_add(1);
                    let id = self.next_frame_id;
                    let (prefix, frame) = pkt.payload.split_at(clear.min(pkt.payload.len()));
                    self.opening.insert(
                        id,
                        Opening {
                            mid,
                            prefix: prefix.to_vec(),
                            rtp_seq: *pkt.seq_no,
                        },
                    );
                    let session = sub.remote_session_id.clone();
                    crypto.open(now, &mid.to_string(), &session, kind, id, frame);
                    if self.opening.len() == 1 {
                        self.crypto_due = now + CRYPTO_POLL;
                    }
                    self.take_verdicts(now);
                    return;
                }
                let action = sub
                    .reception
                    .on_packet(&pkt.payload, Some(*pkt.seq_no), now, now_us);
                if action == ReceptionAction::RequestKeyframe
                    && self.config.request_keyframes
                    && let Some(rx) = self.rtc.direct_api().stream_rx(&ssrc)
                {
                    rx.request_keyframe(KeyframeRequestKind::Pli);
                }
            }
            Event::MediaAdded(m) => debug!("media added: {:?} {:?}", m.mid, m.direction),
            _ => {}
        }
    }
}

/// Seals one payload: Opus whole, VP8 after its payload descriptor (a payload whose
/// descriptor does not parse is not sent).
fn seal(crypto: &mut dyn MediaCrypto, kind: MediaKind, payload: Vec<u8>) -> Option<Vec<u8>> {
    match kind {
        MediaKind::Audio => crypto.seal(kind, true, &payload),
        MediaKind::Video => {
            let d = Vp8Descriptor::parse(&payload).ok()?;
            let (prefix, frame) = payload.split_at(d.len.min(payload.len()));
            let sealed = crypto.seal(kind, d.start && d.partition == 0, frame)?;
            let mut out = prefix.to_vec();
            out.extend_from_slice(&sealed);
            Some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Two participants wired back to back in memory with simulated time: A pushes, B answers the
    /// offer as if it were the SFU relaying A's tracks to itself.
    fn link(a: &mut Participant, b: &mut Participant, now: Instant) {
        let mut moved = true;
        while moved {
            moved = false;
            let out: Vec<_> = a.take_outbox().collect();
            for (src, dst, bytes) in out {
                assert_eq!(dst, b.local_addr());
                b.handle_datagram(now, src, &bytes);
                moved = true;
            }
            let out: Vec<_> = b.take_outbox().collect();
            for (src, dst, bytes) in out {
                assert_eq!(dst, a.local_addr());
                a.handle_datagram(now, src, &bytes);
                moved = true;
            }
        }
    }

    #[test]
    fn peer_to_peer_media_arrives_byte_identical() {
        let t0 = Instant::now();
        let cfg = ParticipantConfig {
            video: VideoSettings {
                keyframe_interval: None,
                ..VideoSettings::default()
            },
            ..ParticipantConfig::default()
        };
        let mut a =
            Participant::new(cfg, "127.0.0.1:10001".parse().unwrap(), t0, 1_000_000, 1).unwrap();
        let mut b =
            Participant::new(cfg, "127.0.0.1:10002".parse().unwrap(), t0, 1_000_000, 2).unwrap();
        let tracks = [TrackSpec::audio("mic"), TrackSpec::video("cam")];
        let (offer, mids) = a.create_push_offer(t0, &tracks).unwrap();
        assert_eq!(mids.len(), 2);
        let pulls: Vec<_> = mids
            .iter()
            .zip(["mic", "cam"])
            .map(|(m, n)| PullSpec {
                mid: m.clone(),
                remote_session_id: "a".into(),
                track_name: n.into(),
            })
            .collect();
        let answer = b.accept_offer(t0, &offer, &pulls).unwrap();
        a.accept_answer(t0, &answer).unwrap();
        let (a_local, a_remote) = a.ice_ufrags();
        let (b_local, b_remote) = b.ice_ufrags();
        assert_eq!(a_remote.as_deref(), Some(b_local.as_str()));
        assert_eq!(b_remote.as_deref(), Some(a_local.as_str()));

        let mut now = t0;
        let step = Duration::from_millis(5);
        while now < t0 + Duration::from_secs(3) {
            now += step;
            a.handle_timeout(now);
            b.handle_timeout(now);
            link(&mut a, &mut b, now);
        }
        // Stop and let everything in flight arrive.
        a.set_sending(now, false);
        for _ in 0..100 {
            now += step;
            a.handle_timeout(now);
            b.handle_timeout(now);
            link(&mut a, &mut b, now);
        }
        assert!(a.is_connected() && b.is_connected());
        let sa = a.stats();
        let sb = b.stats();
        assert_eq!(sa.published.len(), 2);
        assert_eq!(sb.subscribed.len(), 2);
        for s in &sb.subscribed {
            let r = &s.received;
            let sent = sa.published.iter().find(|p| p.mid == s.mid).unwrap().sent;
            assert!(r.unique > 10, "{s:?}");
            assert_eq!(r.corrupt, 0);
            assert_eq!(r.duplicates, 0);
            assert_eq!(r.lost, 0);
            assert_eq!(r.rtp_seq_offset_changes, 0);
            assert_eq!(r.unique, sent.packets, "{s:?} vs {sent:?}");
            // Simulated time only moves between steps: latency is the step granularity.
            assert!(r.latency.max_us <= 20_000, "{:?}", r.latency);
        }
        let video = sa
            .published
            .iter()
            .find(|p| p.kind == MediaKind::Video)
            .unwrap();
        let rv = &sb
            .subscribed
            .iter()
            .find(|s| s.received.kind == Some(MediaKind::Video))
            .unwrap()
            .received;
        assert_eq!(
            video.sent.keyframes, 1,
            "only the initial keyframe without requests: {rv:#?}"
        );
    }

    /// A toy crypto: seals by appending a tag byte and flipping every bit; holds every
    /// other inbound frame until the next poll; counts what it saw. Shared counters so the
    /// test can read them after handing it over.
    #[derive(Default)]
    struct Toy {
        held: Vec<(u32, Vec<u8>)>,
        verdicts: VecDeque<(u32, Option<Vec<u8>>)>,
        counts: std::sync::Arc<std::sync::Mutex<(u64, u64, u64)>>, // (sealed, opened, refused)
        flip: bool,
    }

    impl MediaCrypto for Toy {
        fn seal(&mut self, _: MediaKind, _: bool, frame: &[u8]) -> Option<Vec<u8>> {
            self.counts.lock().unwrap().0 += 1;
            let mut out: Vec<u8> = frame.iter().map(|b| !b).collect();
            out.push(0xE2);
            Some(out)
        }

        fn open(&mut self, _: Instant, _: &str, session: &str, _: MediaKind, id: u32, f: &[u8]) {
            assert_eq!(session, "a");
            let plain = match f.split_last() {
                Some((0xE2, body)) => Some(body.iter().map(|b| !b).collect::<Vec<u8>>()),
                _ => None,
            };
            let Some(plain) = plain else {
                self.counts.lock().unwrap().2 += 1;
                self.verdicts.push_back((id, None));
                return;
            };
            self.flip = !self.flip;
            if self.flip {
                self.held.push((id, plain));
            } else {
                self.counts.lock().unwrap().1 += 1;
                self.verdicts.push_back((id, Some(plain)));
            }
        }

        fn poll(&mut self, _: Instant) {
            for (id, plain) in self.held.drain(..) {
                self.counts.lock().unwrap().1 += 1;
                self.verdicts.push_back((id, Some(plain)));
            }
        }

        fn next_verdict(&mut self) -> Option<(u32, Option<Vec<u8>>)> {
            self.verdicts.pop_front()
        }
    }

    /// Sealed media crosses a link sealed (a receiver without the crypto verifies nothing),
    /// and a receiver with it gets every payload back byte for byte, also those whose
    /// verdict came only at a later poll.
    #[test]
    fn media_crypto_seals_and_opens_every_payload() {
        let t0 = Instant::now();
        let cfg = ParticipantConfig::default();
        let run = |b_crypto: bool| {
            let mut a = Participant::new(cfg, "127.0.0.1:10011".parse().unwrap(), t0, 1_000_000, 1)
                .unwrap();
            let mut b = Participant::new(cfg, "127.0.0.1:10012".parse().unwrap(), t0, 1_000_000, 2)
                .unwrap();
            let sealer = Toy::default();
            let sealed = sealer.counts.clone();
            a.set_media_crypto(Some(Box::new(sealer)));
            let opener = Toy::default();
            let opened = opener.counts.clone();
            if b_crypto {
                b.set_media_crypto(Some(Box::new(opener)));
            }
            let tracks = [TrackSpec::audio("mic"), TrackSpec::video("cam")];
            let (offer, mids) = a.create_push_offer(t0, &tracks).unwrap();
            let pulls: Vec<_> = mids
                .iter()
                .zip(["mic", "cam"])
                .map(|(m, n)| PullSpec {
                    mid: m.clone(),
                    remote_session_id: "a".into(),
                    track_name: n.into(),
                })
                .collect();
            let answer = b.accept_offer(t0, &offer, &pulls).unwrap();
            a.accept_answer(t0, &answer).unwrap();
            let mut now = t0;
            let step = Duration::from_millis(5);
            while now < t0 + Duration::from_secs(2) {
                now += step;
                a.handle_timeout(now);
                b.handle_timeout(now);
                link(&mut a, &mut b, now);
            }
            a.set_sending(now, false);
            for _ in 0..100 {
                now += step;
                a.handle_timeout(now);
                b.handle_timeout(now);
                link(&mut a, &mut b, now);
            }
            let sealed = sealed.lock().unwrap().0;
            let opened = *opened.lock().unwrap();
            (a.stats(), b.stats(), sealed, opened)
        };

        let (sa, sb, sealed, (_, opened, refused)) = run(true);
        let sent: u64 = sa.published.iter().map(|p| p.sent.packets).sum();
        assert_eq!(sealed, sent, "every payload sealed");
        assert_eq!(refused, 0);
        let mut unique = 0;
        for s in &sb.subscribed {
            let r = &s.received;
            assert!(r.unique > 10, "{s:?}");
            assert_eq!((r.corrupt, r.lost), (0, 0), "{s:?}");
            unique += r.unique;
        }
        assert_eq!(unique, sent);
        assert_eq!(opened, sent, "half of them after a poll");
        let video = sb
            .subscribed
            .iter()
            .find(|s| s.received.kind == Some(MediaKind::Video))
            .unwrap();
        assert!(video.received.keyframes >= 1, "keyframe flag readable");

        // Without the crypto, nothing verifies: the payloads went out sealed.
        let (_, sb, _, _) = run(false);
        for s in &sb.subscribed {
            assert!(s.received.packets > 10, "{s:?}");
            assert_eq!(s.received.unique, 0, "{s:?}");
            assert_eq!(s.received.corrupt, s.received.packets, "{s:?}");
        }
    }
}
