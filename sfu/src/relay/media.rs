//! Between the forwarder's [`MediaPacket`] and the relay's [`RelayMedia`]: what the shard of a
//! publisher hands to the relay, and what the receiving node's shard feeds to its forwarder.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use str0m::media::{Pt, Rid};
use str0m::rtp::{ExtensionValues, VideoOrientation};

use super::wire::{RelayExt, RelayMedia};
use crate::forward::MediaPacket;
use crate::vp8::Vp8Packet;

/// A publisher's packet of local track `track`, for the relay (the payload is copied once into
/// the datagram when it is encoded, never changed).
pub fn to_relay(track: u64, p: &MediaPacket) -> RelayMedia {
    RelayMedia {
        track,
        pt: *p.pt,
        clock_rate: p.clock_rate,
        seq: p.seq,
        timestamp: p.timestamp,
        marker: p.marker,
        keyframe: p.keyframe,
        nackable: p.nackable,
        vp8: p.vp8.is_some(),
        rid: p.rid.map(|r| r.to_string()),
        ext: RelayExt {
            audio_level: p.ext.audio_level,
            voice_activity: p.ext.voice_activity,
            video_orientation: p.ext.video_orientation.map(|o| o as u8),
            video_content_type: p.ext.video_content_type,
        },
        payload: Bytes::copy_from_slice(&p.payload),
    }
}

/// A packet that came over the relay, as if a local publisher had sent it at `arrival`.
pub fn from_relay(m: &RelayMedia, arrival: Instant) -> MediaPacket {
    let payload: Arc<[u8]> = Arc::from(&m.payload[..]);
    MediaPacket {
        pt: Pt::from(m.pt),
        clock_rate: m.clock_rate,
        seq: m.seq,
        timestamp: m.timestamp,
        marker: m.marker,
        rid: m.rid.as_deref().map(Rid::from),
        keyframe: m.keyframe,
        ext: ExtensionValues {
            audio_level: m.ext.audio_level,
            voice_activity: m.ext.voice_activity,
            video_orientation: m.ext.video_orientation.map(VideoOrientation::from),
            video_content_type: m.ext.video_content_type,
            ..Default::default()
        },
        vp8: if m.vp8 {
            Vp8Packet::parse(&payload)
        } else {
            None
        },
        payload,
        arrival,
        nackable: m.nackable,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_packet_survives_the_relay_with_its_payload_untouched() {
        // VP8 descriptor (X, I, 15-bit PictureID) then "encrypted" bytes.
        let payload: Arc<[u8]> = Arc::from(&b"\x90\x80\x81\x23\xde\xad\xbe\xef"[..]);
        let p = MediaPacket {
            pt: Pt::from(96),
            clock_rate: 90_000,
            seq: 70_000,
            timestamp: 1234,
            marker: true,
            rid: Some(Rid::from("h")),
            keyframe: true,
            ext: ExtensionValues {
                video_orientation: Some(VideoOrientation::Deg90),
                ..Default::default()
            },
            vp8: Vp8Packet::parse(&payload),
            payload: payload.clone(),
            arrival: Instant::now(),
            nackable: true,
        };
        assert!(p.vp8.is_some());
        let wire = to_relay(5, &p).encode();
        let back = from_relay(&RelayMedia::decode(&wire).unwrap(), Instant::now());
        assert_eq!(back.payload, payload);
        assert_eq!(
            (back.seq, back.timestamp, back.marker),
            (70_000, 1234, true)
        );
        assert_eq!(back.rid, Some(Rid::from("h")));
        assert_eq!(back.ext.video_orientation, Some(VideoOrientation::Deg90));
        assert_eq!(format!("{:?}", back.vp8), format!("{:?}", p.vp8));
        assert!(back.keyframe && back.nackable);
    }
}
