//! The RTP tap: a participant that records real media (a browser's, not the bot's synthetic
//! payloads) takes the pulled tracks' RTP packets as they arrive instead of checking them.

use std::time::Instant;

use str0m::Event;
use str0m::media::{KeyframeRequestKind, Mid};
use tokio::sync::mpsc::UnboundedSender;

use super::Participant;

/// Where tapped packets go.
pub(super) type RtpTap = UnboundedSender<TappedRtp>;

/// One RTP packet of a pulled track, as it arrived (SRTP removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TappedRtp {
    /// Mid of the pulled track in this session.
    pub mid: String,
    /// The SFU session that publishes it.
    pub remote_session_id: String,
    /// Its track name.
    pub track_name: String,
    /// Whether the m-line is video.
    pub video: bool,
    /// RTP payload type.
    pub pt: u8,
    /// The codec negotiated for `pt` as str0m names it (`VP8`, `VP9`, `H264`, `opus`, ...);
    /// empty if `pt` is not one this session negotiated.
    pub codec: String,
    /// Extended (rollover-counted) RTP sequence number.
    pub seq: u64,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Marker bit (the last packet of a video frame).
    pub marker: bool,
    /// The payload (for E2EE media: the codec's payload header, then sealed frame bytes).
    pub payload: Vec<u8>,
    /// When it arrived.
    pub arrived: Instant,
}

impl Participant {
    /// From now on, the RTP packets of pulled tracks go to `tap` instead of the reception
    /// checks and the media crypto (their statistics stay at zero); `None` stops it.
    pub fn set_rtp_tap(&mut self, tap: Option<UnboundedSender<TappedRtp>>) {
        self.rtp_tap = tap;
    }

    /// Asks the sender of pulled track `mid` for a keyframe (PLI); `false` if there is no
    /// receive stream for it yet.
    pub fn request_keyframe(&mut self, mid: &str) -> bool {
        let mid = Mid::from(mid);
        match self.rtc.direct_api().stream_rx_by_mid(mid, None) {
            Some(rx) => {
                rx.request_keyframe(KeyframeRequestKind::Pli);
                true
            }
            None => false,
        }
    }

    /// Takes an RTP packet of a pulled track when a tap is set (`None`: consumed); every
    /// other event is handed back.
    pub(super) fn tap_rtp(&mut self, now: Instant, e: Event) -> Option<Event> {
        let Event::RtpPacket(pkt) = e else {
            return Some(e);
        };
        let Some(tap) = self.rtp_tap.as_ref() else {
            return Some(Event::RtpPacket(pkt));
        };
        let mid = self
            .rtc
            .direct_api()
            .stream_rx(&pkt.header.ssrc)
            .map(|s| s.mid())
            .or(pkt.header.ext_vals.mid);
        let Some((mid, sub)) = mid.and_then(|m| Some(m).zip(self.subscribed.get(&m))) else {
            self.transport.unexpected_rtp += 1;
            return None;
        };
        let video = self
            .rtc
            .media(mid)
            .is_some_and(|m| m.kind() == str0m::media::MediaKind::Video);
        let codec = self
            .rtc
            .codec_config()
            .find(|p| p.pt() == pkt.header.payload_type)
            .map(|p| p.spec().codec.to_string())
            .unwrap_or_default();
        let tapped = TappedRtp {
            mid: mid.to_string(),
            remote_session_id: sub.remote_session_id.clone(),
            track_name: sub.track_name.clone(),
            video,
            pt: *pkt.header.payload_type,
            codec,
            seq: *pkt.seq_no,
            timestamp: pkt.header.timestamp,
            marker: pkt.header.marker,
            payload: pkt.payload.to_vec(),
            arrived: now,
        };
        if tap.send(tapped).is_err() {
            // The reader is gone: stop tapping.
            self.rtp_tap = None;
        }
        None
    }
}
