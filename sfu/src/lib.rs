//! Satsuma SFU: forwards RTP between WebRTC sessions without touching payloads.
