//! A session: one str0m `Rtc` (one peer connection, BUNDLE, push and pull) and what it carries —
//! the tracks it publishes and the legs it subscribes. Owned by exactly one shard.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::change::SdpPendingOffer;
use str0m::format::{Codec, PayloadParams};
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid};
use str0m::net::TcpType;
use str0m::rtp::Ssrc;
use str0m::{Candidate, Rtc, RtcConfig};

use satsuma_common::TokenBucket;

use crate::ids::{SessionId, ShardId, TrackId};
use crate::routes::Routes;

/// A track this session publishes.
#[derive(Debug, Clone)]
pub struct Publication {
    /// Internal id.
    pub track: TrackId,
    /// The name other sessions pull it by.
    pub name: String,
    /// Audio or video.
    pub kind: MediaKind,
    /// Negotiated codecs (publisher PTs).
    pub params: Vec<PayloadParams>,
    /// False once closed or collected (kept for `GET`).
    pub active: bool,
}

/// State of a subscriber leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegState {
    /// Offered to the client; waiting for its answer.
    Negotiating,
    /// Forwarding.
    Active,
    /// Closed, or the source went away.
    Inactive,
}

/// A track this session pulls.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The source track.
    pub track: TrackId,
    /// Shard of the source.
    pub home: ShardId,
    /// Publishing session.
    pub source: SessionId,
    /// Its track name.
    pub name: String,
    /// Audio or video.
    pub kind: MediaKind,
    /// The publisher's codecs.
    pub source_params: Vec<PayloadParams>,
    /// The simulcast layer asked for when the track was pulled or last updated while the leg
    /// was not active. Once active, the leg's preference and layers live in the forwarder
    /// ([`crate::forward::Forwarder::leg_preference`]), with the rest of the simulcast state.
    pub preferred_rid: Option<Rid>,
    /// State.
    pub state: LegState,
}

/// One peer connection and its tracks.
pub struct Session {
    /// Id.
    pub id: SessionId,
    /// Owning app.
    pub app: Arc<str>,
    /// The str0m state machine.
    pub rtc: Rtc,
    /// Our ICE ufrag (how new flows find this session).
    pub ufrag: String,
    /// Published tracks by mid.
    pub publications: HashMap<Mid, Publication>,
    /// Pulled tracks by mid.
    pub subscriptions: HashMap<Mid, Subscription>,
    /// An SFU offer awaiting the client's answer.
    pub pending: Option<SdpPendingOffer>,
    /// When the transport went away (or the session was created without one).
    pub transport_lost_since: Option<Instant>,
    /// When the session was created (a keyframe cached before it may be under an older E2EE
    /// epoch than its participant can read: see `shard/keyframe_replay.rs`).
    pub created: Instant,
    /// When str0m last accepted a datagram for this session. ICE-lite only reports
    /// `Disconnected` 15 s after the last binding request, so silence is measured here too.
    pub last_received: Instant,
    /// When str0m next wants a timeout.
    pub next_timeout: Instant,
    /// Forwarded packets written into this session's send streams since its last drain (see
    /// `shard::media::drain_session`: it skips the pacer's bookkeeping timeout once they are out).
    pub writes_pending: u32,
    /// The layer selector wants str0m to pad this session up to more than its media (a leg
    /// below its cap, or a paused leg): str0m's pacer then needs its timeouts on time (see
    /// `shard::media::defers_bookkeeping`).
    pub pads: bool,
    /// Remote addresses we have sent to and told the UDP driver about (see [`Routes`]).
    pub routes: Routes,
    /// Of the audio tracks this session pulls, the one speaking now (see [`crate::speaker`]).
    pub active_speaker: Option<TrackId>,
    /// The publisher's ingress byte budget (`None`: no limit). See
    /// [`crate::config::Limits::session_max_ingress_kbps`].
    pub ingress: Option<TokenBucket>,
    /// Whether an offer of the client had an `m=application` section (an SCTP association
    /// for data channels, see [`crate::shard`]'s `datachannels/new`).
    pub data_offered: bool,
    ssrc_mids: HashMap<Ssrc, (Mid, Option<Rid>)>,
    egress_counts: HashMap<(Mid, Option<Rid>), (u64, u64)>,
}

/// An ingress budget of `kbps` kbit/s (`None` for 0: no limit), in bytes, with a burst of one
/// second's worth (at least 64 KiB, so that a large keyframe of a low-rate publisher passes).
pub fn ingress_budget(kbps: u32, now: Instant) -> Option<TokenBucket> {
    (kbps > 0).then(|| {
        let bytes_per_second = f64::from(kbps) * 1000.0 / 8.0;
        TokenBucket::new(bytes_per_second, bytes_per_second.max(65_536.0), now)
    })
}

/// Limit on addresses one session can register for routing.
pub const MAX_ROUTED_ADDRS: usize = 8;

/// How often str0m reports a session's statistics: its transport-wide egress loss (over the
/// last second, from transport-wide feedback) and its latest bandwidth estimate, which the layer
/// selection acts on (see [`crate::layer`]). Measured on the shaped test (a subscriber's link cut
/// to 300 kbit/s with 3 % loss): with reports once a second, the first one showing the loss
/// (45 %) came 1.56 s after the shaping began, the viewer's f stream had stopped decoding 1 s
/// before, and that switch was its longest freeze (1.3-1.6 s, bar 1 s). Four times a second
/// the loss shows within about 250 ms; the loss window stays one second.
pub const STATS_INTERVAL: Duration = Duration::from_millis(250);

impl Session {
    /// A new session with an ICE-lite, RTP-mode `Rtc` whose host candidates are `candidates`.
    /// `bwe_initial_kbps` > 0 enables str0m's bandwidth estimation (GCC over TWCC, which str0m
    /// negotiates by default) starting from that estimate.
    pub fn new(
        id: SessionId,
        app: Arc<str>,
        candidates: &[SocketAddr],
        bwe_initial_kbps: u32,
        now: Instant,
    ) -> Session {
        let bwe = (bwe_initial_kbps > 0).then(|| Bitrate::kbps(u64::from(bwe_initial_kbps)));
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .set_ice_lite(true)
            .set_stats_interval(Some(STATS_INTERVAL))
            .enable_bwe(bwe)
            .build(now);
        for addr in candidates {
            match Candidate::host(*addr, "udp") {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => tracing::warn!(%addr, "cannot use host candidate: {e}"),
            }
        }
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        Session {
            id,
            app,
            rtc,
            ufrag,
            publications: HashMap::new(),
            subscriptions: HashMap::new(),
            pending: None,
            transport_lost_since: Some(now),
            created: now,
            last_received: now,
            next_timeout: now,
            writes_pending: 0,
            pads: false,
            routes: Routes::default(),
            active_speaker: None,
            ingress: None,
            data_offered: false,
            ssrc_mids: HashMap::new(),
            egress_counts: HashMap::new(),
        }
    }

    /// Adds passive TCP host candidates (ICE-TCP, RFC 6544) at `addrs`. Their priority is
    /// below the UDP host candidates' (str0m's type preference 90 against 126), so clients
    /// pick TCP only when UDP does not get through. Call before the first answer.
    pub fn add_tcp_candidates(&mut self, addrs: &[SocketAddr]) {
        for addr in addrs {
            let built = Candidate::builder()
                .tcp()
                .host(*addr)
                .tcptype(TcpType::Passive)
                .build();
            match built {
                Ok(c) => {
                    self.rtc.add_local_candidate(c);
                }
                Err(e) => tracing::warn!(%addr, "cannot use TCP host candidate: {e}"),
            }
        }
    }

    /// The (mid, rid) an incoming SSRC belongs to.
    pub fn mid_of_ssrc(&mut self, ssrc: Ssrc) -> Option<(Mid, Option<Rid>)> {
        if let Some(v) = self.ssrc_mids.get(&ssrc) {
            return Some(*v);
        }
        let mut api = self.rtc.direct_api();
        let rx = api.stream_rx(&ssrc)?;
        let v = (rx.mid(), rx.rid());
        if self.ssrc_mids.len() < 4096 {
            self.ssrc_mids.insert(ssrc, v);
        }
        Some(v)
    }

    /// Forgets cached SSRC mappings (after renegotiation).
    pub fn clear_ssrc_cache(&mut self) {
        self.ssrc_mids.clear();
    }

    /// Updates cumulative egress NACK/PLI counts; returns the increase in (nacks, keyframe requests).
    pub fn egress_delta(&mut self, mid: Mid, rid: Option<Rid>, nacks: u64, kfr: u64) -> (u64, u64) {
        let e = self.egress_counts.entry((mid, rid)).or_insert((0, 0));
        let d = (nacks.saturating_sub(e.0), kfr.saturating_sub(e.1));
        *e = (nacks.max(e.0), kfr.max(e.1));
        d
    }

    /// Whether the client side sends on this m-line (it can be published).
    pub fn receives_on(&self, mid: Mid) -> Option<MediaKind> {
        let m = self.rtc.media(mid)?;
        matches!(m.direction(), Direction::RecvOnly | Direction::SendRecv).then(|| m.kind())
    }

    /// Whether we can send on this m-line (it can carry a pulled track).
    pub fn sends_on(&self, mid: Mid) -> Option<MediaKind> {
        let m = self.rtc.media(mid)?;
        matches!(m.direction(), Direction::SendOnly | Direction::SendRecv).then(|| m.kind())
    }

    /// The codecs negotiated on an m-line.
    pub fn negotiated_params(&self, mid: Mid) -> Vec<PayloadParams> {
        let Some(m) = self.rtc.media(mid) else {
            return Vec::new();
        };
        let pts = m.remote_pts();
        self.rtc
            .codec_config()
            .params()
            .iter()
            .filter(|p| pts.contains(&p.pt()))
            .cloned()
            .collect()
    }

    /// Maps each of a publisher's PTs to the PT this session negotiated for the same codec on
    /// `mid`.
    pub fn pt_map(&self, mid: Mid, source: &[PayloadParams]) -> Vec<(Pt, Pt)> {
        let ours = self.negotiated_params(mid);
        source
            .iter()
            .filter_map(|p| {
                let spec = p.spec();
                let best = ours
                    .iter()
                    .filter(|q| {
                        let s = q.spec();
                        s.codec == spec.codec
                            && s.clock_rate == spec.clock_rate
                            && s.channels == spec.channels
                    })
                    .max_by_key(|q| fmtp_affinity(p, q))?;
                Some((p.pt(), best.pt()))
            })
            .collect()
    }

    /// Whether media is flowing in or out (ICE connected).
    pub fn is_connected(&self) -> bool {
        self.transport_lost_since.is_none()
    }
}

/// How well two payload params' format parameters agree (H.264 profile/packetization, VP9
/// profile): higher is better.
fn fmtp_affinity(a: &PayloadParams, b: &PayloadParams) -> u8 {
    let (fa, fb) = (a.spec().format, b.spec().format);
    let mut score = 0;
    if fa.profile_level_id == fb.profile_level_id {
        score += 2;
    }
    if fa.packetization_mode == fb.packetization_mode {
        score += 2;
    }
    if fa.profile_id == fb.profile_id {
        score += 1;
    }
    score
}

/// Whether a packet of `codec` starts a keyframe (used for simulcast switching only).
pub fn is_keyframe(codec: Codec, payload: &[u8]) -> bool {
    use str0m::format::{
        detect_av1_keyframe, detect_h264_keyframe, detect_vp8_keyframe, detect_vp9_keyframe,
    };
    match codec {
        Codec::Vp8 => detect_vp8_keyframe(payload),
        Codec::Vp9 => detect_vp9_keyframe(payload),
        Codec::H264 => detect_h264_keyframe(payload),
        Codec::Av1 => detect_av1_keyframe(payload),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::change::SdpOffer;

    /// `(proto, priority, line)` of every candidate line in `sdp`.
    fn candidates(sdp: &str) -> Vec<(String, u32, String)> {
        sdp.lines()
            .filter_map(|l| l.strip_prefix("a=candidate:"))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[2].to_lowercase(), f[3].parse().unwrap(), l.to_string())
            })
            .collect()
    }

    #[test]
    fn the_answer_offers_passive_tcp_below_udp() {
        let now = Instant::now();
        let udp: SocketAddr = "192.0.2.1:7881".parse().unwrap();
        let tcp: SocketAddr = "192.0.2.1:7881".parse().unwrap();
        let mut session = Session::new(SessionId([1; 16]), Arc::from("app"), &[udp], 0, now);
        session.add_tcp_candidates(&[tcp]);
        let mut client = Rtc::builder().set_rtp_mode(true).build(now);
        let mut change = client.sdp_api();
        change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let (offer, _) = change.apply().unwrap();
        let answer = session
            .rtc
            .sdp_api()
            .accept_offer(SdpOffer::from_sdp_string(&offer.to_sdp_string()).unwrap())
            .unwrap()
            .to_sdp_string();
        let c = candidates(&answer);
        let (_, udp_prio, _) = c.iter().find(|(p, ..)| p == "udp").unwrap();
        let (_, tcp_prio, line) = c.iter().find(|(p, ..)| p == "tcp").unwrap();
        assert!(
            line.contains("192.0.2.1 7881 typ host tcptype passive"),
            "{line}"
        );
        assert!(tcp_prio < udp_prio, "{answer}");
    }
}
