//! What a load bot publishes: audio at 50 packets/s and VP8-shaped video at a target bitrate.
//!
//! The bot crate's sources are shaped by packet counts and sizes; [`MediaProfile::participant_config`]
//! turns a bitrate, a frame rate and a keyframe interval into those numbers. With simulcast (the
//! default) a video publisher sends three rid layers, `q`, `h` and `f`, at a tenth, a third and
//! all of the target bitrate (150 / 500 / 1,500 kbit/s by default), each with its own keyframes.

use std::time::Duration;

use satsuma_bot::{AudioSettings, ParticipantConfig, SimulcastLayer, VideoSettings};
use serde::{Deserialize, Serialize};

/// Largest RTP payload the bots send (keeps datagrams under a 1,200-byte path MTU with SRTP).
pub const MAX_PAYLOAD: u32 = 1_100;

/// Media every bot of a run publishes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MediaProfile {
    /// Audio payload bytes per 20 ms packet.
    pub audio_payload: u16,
    /// Video target bitrate in kbit/s (payload, delta frames).
    pub video_kbps: u32,
    /// Video frames per second.
    pub fps: u32,
    /// Seconds between periodic keyframes.
    pub keyframe_secs: f64,
    /// A keyframe is this many times larger than a delta frame.
    pub keyframe_scale: u16,
    /// Publish video as three simulcast layers (the top one at `video_kbps`).
    #[serde(default)]
    pub simulcast: bool,
}

/// Simulcast layers, lowest first: rid and share of the top bitrate (tenths).
pub const LAYERS: [(&str, u32); 3] = [("q", 1), ("h", 3), ("f", 10)];

impl Default for MediaProfile {
    fn default() -> Self {
        Self {
            audio_payload: 100,
            video_kbps: 1_500,
            fps: 30,
            keyframe_secs: 3.0,
            keyframe_scale: 4,
            simulcast: true,
        }
    }
}

impl MediaProfile {
    /// Bot settings that produce this profile.
    pub fn participant_config(&self) -> ParticipantConfig {
        ParticipantConfig {
            audio: AudioSettings {
                payload_len: self.audio_payload.max(48),
                interval: Duration::from_millis(20),
                // Browsers put a level on every Opus packet; the SFU reads it (active speaker).
                level_dbov: Some(-35),
            },
            video: self.video_settings(self.video_kbps),
            request_keyframes: true,
            send_on_publish: true,
            receive_vp9_h264: false,
        }
    }

    /// The simulcast layers a video publisher sends (empty without simulcast).
    pub fn simulcast_layers(&self) -> Vec<SimulcastLayer> {
        if !self.simulcast {
            return Vec::new();
        }
        // Highest first in the SDP (`a=simulcast:send f;h;q`): Janus maps the first rid to its
        // top substream, which its subscribers get by default; Satsuma orders layers by their
        // measured bitrate and does not care.
        LAYERS
            .iter()
            .rev()
            .map(|(rid, tenths)| SimulcastLayer {
                rid: (*rid).to_owned(),
                video: self.video_settings((self.video_kbps * tenths / 10).max(16)),
            })
            .collect()
    }

    /// Video settings for a stream of `kbps` kbit/s of payload.
    fn video_settings(&self, kbps: u32) -> VideoSettings {
        let fps = self.fps.clamp(1, 120);
        let frame_bytes = (u64::from(kbps) * 1000 / 8 / u64::from(fps)).max(64);
        let packets = frame_bytes.div_ceil(u64::from(MAX_PAYLOAD)).clamp(1, 256) as u16;
        let payload_len =
            (frame_bytes / u64::from(packets)).clamp(64, u64::from(MAX_PAYLOAD)) as u16;
        let keyframe_interval = if self.keyframe_secs > 0.0 {
            Some(Duration::from_secs_f64(self.keyframe_secs))
        } else {
            None
        };
        VideoSettings {
            fps,
            delta_packets: packets,
            keyframe_packets: packets.saturating_mul(self.keyframe_scale.max(1)),
            payload_len,
            keyframe_interval,
        }
    }

    /// Nominal video packets per second a subscriber of the top layer receives (keyframes
    /// included).
    pub fn video_pps(&self) -> f64 {
        self.stream_pps(&self.participant_config().video)
    }

    /// Nominal video packets per second a publisher sends: every layer with simulcast.
    pub fn video_ingress_pps(&self) -> f64 {
        if !self.simulcast {
            return self.video_pps();
        }
        self.simulcast_layers()
            .iter()
            .map(|l| self.stream_pps(&l.video))
            .sum()
    }

    fn stream_pps(&self, v: &VideoSettings) -> f64 {
        let frames_per_keyframe = (self.keyframe_secs * f64::from(v.fps)).max(1.0);
        let extra = f64::from(v.keyframe_packets - v.delta_packets) / frames_per_keyframe;
        f64::from(v.fps) * (f64::from(v.delta_packets) + extra)
    }

    /// Audio packets per second.
    pub fn audio_pps(&self) -> f64 {
        50.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn top_layer_is_about_one_and_a_half_megabits() {
        let p = MediaProfile::default();
        let c = p.participant_config();
        assert_eq!(c.video.fps, 30);
        assert_eq!(c.video.delta_packets, 6);
        assert_eq!(c.video.keyframe_packets, 24);
        let kbps =
            f64::from(c.video.delta_packets) * f64::from(c.video.payload_len) * 8.0 * 30.0 / 1000.0;
        assert!((1_450.0..=1_550.0).contains(&kbps), "{kbps}");
        assert_eq!(c.video.keyframe_interval, Some(Duration::from_secs(3)));
        assert_eq!(c.audio.interval, Duration::from_millis(20));
        // 180 delta packets/s plus 18 extra keyframe packets every 90 frames.
        assert!((p.video_pps() - 186.0).abs() < 0.01, "{}", p.video_pps());
    }

    #[test]
    fn low_layer_fits_one_packet_per_frame() {
        let p = MediaProfile {
            video_kbps: 150,
            ..MediaProfile::default()
        };
        let c = p.participant_config();
        assert_eq!(c.video.delta_packets, 1);
        assert_eq!(c.video.payload_len, 625);
    }
}
