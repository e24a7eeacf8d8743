//! Synthetic media sources: when to send which packet.
//!
//! A source is a clock-driven generator with no I/O: ask it for the packets that are due at `now`
//! ([`MediaSource::poll`]) and when it wants to be asked again ([`MediaSource::next_due`]). Audio is
//! Opus-like (one 20 ms packet, 50 packets/s, 48 kHz RTP clock). Video is VP8-like (a frame every
//! `1/fps` s on a 90 kHz RTP clock, split into packets, the last one carrying the marker bit; a
//! keyframe at start, every `keyframe_interval`, and on request).

use std::time::{Duration, Instant};

use crate::payload::{self, MediaKind, PayloadFields};

/// Settings for a synthetic audio track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioSettings {
    /// Payload size in bytes (codec header included).
    pub payload_len: u16,
    /// Packet interval (20 ms for Opus' default framing).
    pub interval: Duration,
    /// Level written into each packet's `ssrc-audio-level` header extension, in -dBov (0 is
    /// the loudest, -127 silence), as browsers do; `None` sends no level.
    pub level_dbov: Option<i8>,
}

impl Default for AudioSettings {
    fn default() -> Self {
        Self {
            payload_len: 100,
            interval: Duration::from_millis(20),
            level_dbov: None,
        }
    }
}

/// Settings for a synthetic video track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoSettings {
    /// Frames per second.
    pub fps: u32,
    /// Packets per delta frame.
    pub delta_packets: u16,
    /// Packets per keyframe.
    pub keyframe_packets: u16,
    /// Payload size of every packet in bytes (codec header included).
    pub payload_len: u16,
    /// Periodic keyframe interval; `None` sends keyframes only at start and on request.
    pub keyframe_interval: Option<Duration>,
}

impl Default for VideoSettings {
    fn default() -> Self {
        Self {
            fps: 30,
            delta_packets: 1,
            keyframe_packets: 4,
            payload_len: 1000,
            keyframe_interval: Some(Duration::from_secs(10)),
        }
    }
}

/// One simulcast layer of a synthetic video track: its RTP stream id and its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulcastLayer {
    /// The rid (RTP stream id) the layer is sent with.
    pub rid: String,
    /// Frame rate, packets and sizes of this layer.
    pub video: VideoSettings,
}

impl SimulcastLayer {
    /// Three layers `q`, `h`, `f` of about 150, 500 and 1500 kbit/s on the wire (30 fps,
    /// a keyframe every 3 s per layer and on request), lowest first.
    pub fn standard() -> Vec<SimulcastLayer> {
        let layer = |rid: &str, delta_packets, keyframe_packets, payload_len| SimulcastLayer {
            rid: rid.into(),
            video: VideoSettings {
                fps: 30,
                delta_packets,
                keyframe_packets,
                payload_len,
                keyframe_interval: Some(Duration::from_secs(3)),
            },
        };
        vec![
            layer("q", 1, 3, 560),
            layer("h", 2, 5, 1000),
            layer("f", 6, 12, 1000),
        ]
    }

    /// Approximate bitrate on the wire in bits/s (payloads, keyframes and ~60 bytes of
    /// RTP/SRTP/UDP/IP overhead per packet).
    pub fn approx_bps(&self) -> u64 {
        let v = &self.video;
        let per_packet = u64::from(v.payload_len) + 60;
        let fps = u64::from(v.fps.max(1));
        let delta = u64::from(v.delta_packets.max(1)) * per_packet * fps;
        let extra_key = match v.keyframe_interval {
            Some(iv) if !iv.is_zero() => {
                let extra = u64::from(v.keyframe_packets.saturating_sub(v.delta_packets));
                (extra * per_packet) as f64 / iv.as_secs_f64()
            }
            _ => 0.0,
        };
        (delta as f64 * 8.0 + extra_key * 8.0) as u64
    }
}

/// One packet ready to be written to an RTP stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingPacket {
    /// RTP sequence number (extended; starts below 2^16 so the SRTP ROC is 0).
    pub rtp_seq: u64,
    /// RTP timestamp.
    pub rtp_time: u32,
    /// RTP marker bit.
    pub marker: bool,
    /// Whether the packet may be resent on NACK.
    pub nackable: bool,
    /// The fields the payload was built from.
    pub fields: PayloadFields,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Audio(AudioSettings),
    Video(VideoSettings),
}

/// A synthetic media source for one track.
#[derive(Debug)]
pub struct MediaSource {
    shape: Shape,
    track_id: u64,
    next_due: Instant,
    started: Instant,
    seq: u64,
    frame: u32,
    rtp_seq_base: u64,
    rtp_time_base: u32,
    keyframe_pending: bool,
    last_keyframe: Option<Instant>,
    counters: SourceCounters,
    layer: u8,
}

/// What a source has sent so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SourceCounters {
    /// Packets produced.
    pub packets: u64,
    /// Payload bytes produced.
    pub bytes: u64,
    /// Frames produced.
    pub frames: u64,
    /// Keyframes produced (video).
    pub keyframes: u64,
    /// Keyframe requests (PLI/FIR) seen.
    pub keyframe_requests: u64,
    /// Sequence number of the first packet produced.
    pub first_seq: Option<u64>,
    /// Sequence number of the last packet produced.
    pub last_seq: Option<u64>,
}

impl MediaSource {
    /// A new audio source starting at `now`.
    pub fn audio(
        track_id: u64,
        settings: AudioSettings,
        now: Instant,
        rtp_base: (u16, u32),
    ) -> Self {
        Self::new(Shape::Audio(settings), track_id, now, rtp_base)
    }

    /// A new video source starting at `now`; its first frame is a keyframe.
    pub fn video(
        track_id: u64,
        settings: VideoSettings,
        now: Instant,
        rtp_base: (u16, u32),
    ) -> Self {
        Self::new(Shape::Video(settings), track_id, now, rtp_base)
    }

    fn new(shape: Shape, track_id: u64, now: Instant, rtp_base: (u16, u32)) -> Self {
        Self {
            shape,
            track_id,
            next_due: now,
            started: now,
            seq: 0,
            frame: 0,
            // Keep the first extended seq below 2^15 so many packets fit before the ROC moves.
            rtp_seq_base: u64::from(rtp_base.0 & 0x7fff),
            rtp_time_base: rtp_base.1,
            keyframe_pending: true,
            last_keyframe: None,
            counters: SourceCounters::default(),
            layer: 0,
        }
    }

    /// Marks every payload of this source as simulcast layer `layer` (0 is the lowest).
    pub fn with_layer(mut self, layer: u8) -> Self {
        self.layer = layer;
        self
    }

    /// The simulcast layer index carried in the payloads.
    pub fn layer(&self) -> u8 {
        self.layer
    }

    /// Kind of media this source produces.
    pub fn kind(&self) -> MediaKind {
        match self.shape {
            Shape::Audio(_) => MediaKind::Audio,
            Shape::Video(_) => MediaKind::Video,
        }
    }

    /// The track id carried in every payload.
    pub fn track_id(&self) -> u64 {
        self.track_id
    }

    /// Counters so far.
    pub fn counters(&self) -> SourceCounters {
        self.counters
    }

    /// When the next packet is due.
    pub fn next_due(&self) -> Instant {
        self.next_due
    }

    /// Restart the clock at `now` (after a pause), without sending the missed packets.
    pub fn resume(&mut self, now: Instant) {
        if self.next_due < now {
            self.next_due = now;
        }
        self.keyframe_pending = true;
    }

    /// A keyframe request (PLI/FIR) arrived: the next video frame is a keyframe.
    pub fn request_keyframe(&mut self) {
        self.counters.keyframe_requests += 1;
        if matches!(self.shape, Shape::Video(_)) {
            self.keyframe_pending = true;
        }
    }

    /// Packets due at `now`; `wall_us` converts an instant to microseconds since the Unix epoch.
    pub fn poll(&mut self, now: Instant, wall_us: impl Fn(Instant) -> u64) -> Vec<OutgoingPacket> {
        let mut out = Vec::new();
        // Never emit a burst of more than one second of catch-up.
        if now.saturating_duration_since(self.next_due) > Duration::from_secs(1) {
            self.next_due = now;
        }
        while self.next_due <= now {
            let due = self.next_due;
            match self.shape {
                Shape::Audio(s) => {
                    out.push(self.audio_packet(s, due, &wall_us));
                    self.next_due = due + s.interval.max(Duration::from_millis(1));
                }
                Shape::Video(s) => {
                    self.video_frame(s, due, &wall_us, &mut out);
                    let fps = s.fps.clamp(1, 1000);
                    self.next_due = due + Duration::from_secs(1) / fps;
                }
            }
        }
        out
    }

    fn media_elapsed(&self, at: Instant, rate: u64) -> u32 {
        let us = at.saturating_duration_since(self.started).as_micros() as u64;
        self.rtp_time_base
            .wrapping_add((us.saturating_mul(rate) / 1_000_000) as u32)
    }

    fn next_fields(&mut self, kind: MediaKind, at_us: u64, len: u16) -> PayloadFields {
        let f = PayloadFields {
            kind,
            track_id: self.track_id,
            seq: self.seq,
            sent_at_us: at_us,
            frame: self.frame,
            keyframe: false,
            frame_start: true,
            frame_end: true,
            len,
            layer: self.layer,
        };
        self.seq += 1;
        f
    }

    fn account(&mut self, p: &OutgoingPacket) {
        self.counters.packets += 1;
        self.counters.bytes += p.payload.len() as u64;
        self.counters.first_seq.get_or_insert(p.fields.seq);
        self.counters.last_seq = Some(p.fields.seq);
    }

    fn audio_packet(
        &mut self,
        s: AudioSettings,
        due: Instant,
        wall_us: &impl Fn(Instant) -> u64,
    ) -> OutgoingPacket {
        let rtp_seq = self.rtp_seq_base + self.seq;
        let rtp_time = self.media_elapsed(due, 48_000);
        let fields = self.next_fields(MediaKind::Audio, wall_us(due), s.payload_len);
        self.frame = self.frame.wrapping_add(1);
        self.counters.frames += 1;
        let p = OutgoingPacket {
            rtp_seq,
            rtp_time,
            marker: false,
            nackable: false,
            payload: payload::build(&fields),
            fields,
        };
        self.account(&p);
        p
    }

    fn video_frame(
        &mut self,
        s: VideoSettings,
        due: Instant,
        wall_us: &impl Fn(Instant) -> u64,
        out: &mut Vec<OutgoingPacket>,
    ) {
        let periodic = match (s.keyframe_interval, self.last_keyframe) {
            (Some(iv), Some(last)) => due.saturating_duration_since(last) >= iv,
            _ => false,
        };
        let keyframe = self.keyframe_pending || periodic;
        if keyframe {
            self.keyframe_pending = false;
            self.last_keyframe = Some(due);
            self.counters.keyframes += 1;
        }
        let n = if keyframe {
            s.keyframe_packets.max(1)
        } else {
            s.delta_packets.max(1)
        };
        let rtp_time = self.media_elapsed(due, 90_000);
        let at_us = wall_us(due);
        for i in 0..n {
            let rtp_seq = self.rtp_seq_base + self.seq;
            let mut fields = self.next_fields(MediaKind::Video, at_us, s.payload_len);
            fields.keyframe = keyframe;
            fields.frame_start = i == 0;
            fields.frame_end = i + 1 == n;
            let p = OutgoingPacket {
                rtp_seq,
                rtp_time,
                marker: fields.frame_end,
                nackable: true,
                payload: payload::build(&fields),
                fields,
            };
            self.account(&p);
            out.push(p);
        }
        self.frame = self.frame.wrapping_add(1);
        self.counters.frames += 1;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::payload::verify;

    fn wall(start: Instant) -> impl Fn(Instant) -> u64 {
        move |t: Instant| 1_000_000 + t.saturating_duration_since(start).as_micros() as u64
    }

    #[test]
    fn audio_is_fifty_packets_per_second() {
        let t0 = Instant::now();
        let mut a = MediaSource::audio(1, AudioSettings::default(), t0, (100, 5));
        let mut all = Vec::new();
        let mut t = t0;
        while t < t0 + Duration::from_millis(1000) {
            all.extend(a.poll(t, wall(t0)));
            t += Duration::from_millis(5);
        }
        assert_eq!(all.len(), 50);
        for (i, p) in all.iter().enumerate() {
            assert_eq!(p.fields.seq, i as u64);
            assert_eq!(p.rtp_seq, 100 + i as u64);
            assert_eq!(p.rtp_time, 5 + 960 * i as u32);
            assert_eq!(verify(&p.payload).unwrap().fields, p.fields);
            assert_eq!(p.payload.len(), 100);
        }
    }

    #[test]
    fn video_keyframes_at_start_on_request_and_periodically() {
        let t0 = Instant::now();
        let s = VideoSettings {
            fps: 10,
            keyframe_interval: Some(Duration::from_secs(1)),
            ..VideoSettings::default()
        };
        let mut v = MediaSource::video(2, s, t0, (0, 0));
        let first = v.poll(t0, wall(t0));
        assert_eq!(first.len(), 4);
        assert!(first.iter().all(|p| p.fields.keyframe));
        assert!(first[3].marker && !first[0].marker);
        assert!(first[0].fields.frame_start && !first[1].fields.frame_start);
        let second = v.poll(t0 + Duration::from_millis(100), wall(t0));
        assert_eq!(second.len(), 1);
        assert!(!second[0].fields.keyframe && second[0].marker);
        assert_eq!(second[0].rtp_time, 9000);
        v.request_keyframe();
        let third = v.poll(t0 + Duration::from_millis(200), wall(t0));
        assert!(third[0].fields.keyframe);
        assert_eq!(v.counters().keyframe_requests, 1);
        let mut t = t0 + Duration::from_millis(300);
        let mut keyframes = 0;
        while t <= t0 + Duration::from_millis(1250) {
            keyframes += v
                .poll(t, wall(t0))
                .iter()
                .filter(|p| p.fields.keyframe && p.fields.frame_start)
                .count();
            t += Duration::from_millis(100);
        }
        assert_eq!(
            keyframes, 1,
            "one periodic keyframe one second after the requested one"
        );
        for p in first.iter().chain(&second).chain(&third) {
            assert_eq!(verify(&p.payload).unwrap().fields, p.fields);
        }
    }

    #[test]
    fn long_gaps_do_not_burst() {
        let t0 = Instant::now();
        let mut a = MediaSource::audio(1, AudioSettings::default(), t0, (0, 0));
        let n = a.poll(t0 + Duration::from_secs(10), wall(t0)).len();
        assert_eq!(n, 1);
    }
}
