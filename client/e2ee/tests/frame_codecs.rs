//! Codec-specific sender behaviour end to end: H.26x start-code avoidance
//! (re-encryption with a fresh nonce), clear bytes left untouched on the wire.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use satsuma_e2ee::frame::{
    BaseSecret, Codec, Decryptor, Encryptor, FrameLayout, FrameOrigin, ProtocolFrame,
};

/// An IDR access unit with a large slice body free of `00 00` runs.
fn h264_frame(body_len: usize) -> Vec<u8> {
    let mut frame = vec![0, 0, 0, 1, 0x67, 0x42, 0xC0, 0x0D, 0, 0, 0, 1, 0x65, 0xB8];
    frame.extend((0..body_len).map(|i| (i % 251) as u8 | 0x01));
    frame
}

/// `true` when `00 00 01` appears anywhere except as one of the frame's own
/// clear start codes.
fn has_stray_start_code(sealed: &[u8], clear_start_codes: &[usize]) -> bool {
    sealed
        .windows(3)
        .enumerate()
        .any(|(i, w)| w == [0, 0, 1] && !clear_start_codes.contains(&i))
}

#[test]
fn start_code_in_ciphertext_forces_a_fresh_nonce() {
    let frame = h264_frame(16_000);
    let mut layout = FrameLayout::default();
    assert!(layout.build(Codec::H264, &frame));
    // The two clear start codes `00 00 00 01` at 0 and 8: `00 00 01` at 1 and 9.
    let own = [1usize, 9];

    // Seeds 0..=685 encrypt this frame on the first attempt; with seed 686
    // the first ciphertext contains a start code (found by searching upwards
    // from 0 with this test's frame), so nonce 1 is discarded and nonce 2 used.
    let mut found = None;
    for (seed, expected_nonce) in [(685u32, 1u32), (686, 2)] {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&seed.to_le_bytes());
        let secret = BaseSecret::new(bytes);
        let mut enc = Encryptor::new();
        enc.set_key(1, &secret);
        let sealed = enc.encrypt(Codec::H264, &frame).unwrap();
        let nonce = ProtocolFrame::parse(&sealed).unwrap().nonce;
        assert_eq!(nonce, expected_nonce, "seed {seed}");
        assert!(!has_stray_start_code(&sealed, &own), "seed {seed}");
        found = Some((secret, sealed, nonce));
    }
    let (secret, sealed, nonce) = found.expect("seed 686 ran");
    let mut dec = Decryptor::default();
    dec.install_key(5, 1, &secret, Duration::ZERO);
    let opened = dec.decrypt(5, &sealed, Duration::from_secs(1)).unwrap();
    assert_eq!(opened.frame, layout.bytes);
    assert!(matches!(opened.origin, FrameOrigin::Encrypted { nonce: n, .. } if n == nonce));
}

#[test]
fn clear_bytes_are_untouched_on_the_wire() {
    let mut enc = Encryptor::new();
    enc.set_key(1, &BaseSecret::new([1; 16]));
    let mut keyframe = vec![0x50, 0x2A, 0x01, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0xE0, 0x01];
    keyframe.extend([0xAB; 200]);
    let sealed = enc.encrypt(Codec::Vp8, &keyframe).unwrap();
    assert_eq!(sealed[..10], keyframe[..10]);
    assert_ne!(sealed[10..210], keyframe[10..]);

    let mut delta = vec![0x31];
    delta.extend([0xAB; 200]);
    let sealed = enc.encrypt(Codec::Vp8, &delta).unwrap();
    assert_eq!(sealed[0], 0x31);
    assert_ne!(sealed[1..201], delta[1..]);

    let opus = [0x78u8; 100];
    let sealed = enc.encrypt(Codec::Opus, &opus).unwrap();
    assert!(ProtocolFrame::parse(&sealed).unwrap().ranges.is_empty());
    assert_ne!(sealed[..100], opus[..]);
}
