//! Property tests: encrypt → decrypt round trips for arbitrary frames and
//! codecs, and tampering with any single byte (payload or trailer) makes the
//! receiver drop the frame.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use proptest::prelude::*;
use satsuma_e2ee::frame::{
    BaseSecret, Codec, Decryptor, DecryptorConfig, DropReason, Encryptor, FrameLayout, FrameOrigin,
    ProtocolFrame,
};

const SENDER: u64 = 42;
const NOW: Duration = Duration::from_secs(5);

fn codec_strategy() -> impl Strategy<Value = Codec> {
    prop_oneof![
        Just(Codec::Opus),
        Just(Codec::Vp8),
        Just(Codec::Vp9),
        Just(Codec::H264),
        Just(Codec::H265),
        Just(Codec::Av1),
        Just(Codec::Unknown),
    ]
}

/// Inserts emulation-prevention bytes so the body contains no `00 00 0x`
/// (x ≤ 3), as an encoder's output would.
fn escape(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    let mut zeros = 0;
    for &b in body {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    // A NAL must not end in a zero byte (it would merge into the next start code).
    if out.last() == Some(&0) {
        out.push(0x80);
    }
    out
}

/// A well-formed Annex-B access unit: NALs of random types and bodies, with
/// 3- or 4-byte start codes.
fn annex_b_strategy(h265: bool) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (
            any::<bool>(),
            any::<u8>(),
            prop::collection::vec(any::<u8>(), 2..200),
        ),
        1..6,
    )
    .prop_map(move |nals| {
        let mut frame = Vec::new();
        for (long, header, body) in nals {
            if long {
                frame.push(0);
            }
            frame.extend_from_slice(&[0, 0, 1]);
            // Forbidden-zero bit clear; for H.265 a second header byte with
            // a non-zero temporal id.
            frame.push(header & 0x7F);
            if h265 {
                frame.push(1);
            }
            frame.extend_from_slice(&escape(&body));
        }
        frame
    })
}

fn frame_strategy() -> impl Strategy<Value = (Codec, Vec<u8>)> {
    prop_oneof![
        (
            codec_strategy(),
            prop::collection::vec(any::<u8>(), 0..1500)
        ),
        annex_b_strategy(false).prop_map(|f| (Codec::H264, f)),
        annex_b_strategy(true).prop_map(|f| (Codec::H265, f)),
    ]
}

fn pair() -> (Encryptor, Decryptor) {
    let secret = BaseSecret::new([0x5Au8; 16]);
    let mut enc = Encryptor::new();
    enc.set_key(7, &secret);
    let mut dec = Decryptor::new(DecryptorConfig::default());
    dec.install_key(SENDER, 7, &secret, Duration::ZERO);
    (enc, dec)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_trip((codec, frame) in frame_strategy()) {
        let (mut enc, mut dec) = pair();
        let sealed = match enc.encrypt(codec, &frame) {
            Ok(sealed) => sealed,
            // Too many NALs for a one-byte trailer size is a legitimate refusal.
            Err(satsuma_e2ee::frame::EncryptError::TooManyClearRanges) => return Ok(()),
            Err(e) => return Err(TestCaseError::fail(format!("encrypt: {e}"))),
        };
        let mut expected = FrameLayout::default();
        expected.build(codec, &frame);
        let opened = dec.decrypt(SENDER, &sealed, NOW).unwrap();
        prop_assert_eq!(&opened.frame, &expected.bytes);
        let origin_ok = matches!(
            opened.origin,
            FrameOrigin::Encrypted { epoch: 7, generation: 0, nonce } if nonce >= 1
        );
        prop_assert!(origin_ok, "origin {:?}", opened.origin);
        if matches!(codec, Codec::Opus | Codec::Vp8 | Codec::Vp9 | Codec::Unknown) {
            prop_assert_eq!(&opened.frame, &frame);
        }
        // Every byte outside the clear ranges changed form: the clear bytes are
        // exactly the layout's clear ranges.
        let parsed = ProtocolFrame::parse(&sealed).unwrap();
        prop_assert_eq!(parsed.ranges.iter().collect::<Vec<_>>(), expected.clear.clone());
        // Replaying the same frame is refused.
        let replay = dec.decrypt(SENDER, &sealed, NOW);
        prop_assert!(
            matches!(replay, Err(DropReason::Replay { .. })),
            "replay gave {:?}",
            replay
        );
    }

    #[test]
    fn tampering_any_byte_fails(
        (codec, frame) in frame_strategy(),
        position in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let (mut enc, mut dec) = pair();
        let Ok(mut sealed) = enc.encrypt(codec, &frame) else { return Ok(()) };
        let index = position.index(sealed.len());
        sealed[index] ^= flip;
        let result = dec.decrypt(SENDER, &sealed, NOW);
        prop_assert!(result.is_err(), "tampered byte {} of {} accepted", index, sealed.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let (_, mut dec) = pair();
        let _ = dec.decrypt(SENDER, &bytes, NOW);
        let _ = ProtocolFrame::parse(&bytes);
        for codec in [Codec::H264, Codec::H265, Codec::Av1, Codec::Vp8] {
            let mut layout = FrameLayout::default();
            layout.build(codec, &bytes);
        }
    }
}

#[test]
fn out_of_order_frames_within_window_decrypt() {
    let (mut enc, mut dec) = pair();
    let frames: Vec<Vec<u8>> = (0..50)
        .map(|i| enc.encrypt(Codec::Opus, &[i as u8; 40]).unwrap())
        .collect();
    for i in (0..50).rev() {
        let opened = dec.decrypt(SENDER, &frames[i], NOW).unwrap();
        assert_eq!(opened.frame, vec![i as u8; 40]);
    }
}
