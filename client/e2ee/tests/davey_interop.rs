//! Interop with `davey` 0.2.0, an independent DAVE implementation, inside the
//! workspace: `vectors/davey/frames.json` holds frames that davey's
//! `DaveSession::encrypt` produced (in order, from the first nonce) for one
//! sender and its MLS-exported base secret. Our decryptor must open every one
//! of them, and our encryptor, given the same secret and frames, must
//! produce the very same bytes.
//!
//! davey cannot be a dev-dependency of this crate (its openmls_rust_crypto
//! 0.5 and our 0.6 pin incompatible `hax-lib` versions), so the live
//! two-way test against davey — which also writes this file — is the
//! separate workspace `tests/davey-interop/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use satsuma_e2ee::frame::{BaseSecret, Codec, Decryptor, Encryptor, FrameOrigin};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/davey/frames.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn hex_field(v: &Value, key: &str) -> Vec<u8> {
    hex::decode(v[key].as_str().unwrap()).unwrap()
}

fn codec(name: &str) -> Codec {
    match name {
        "opus" => Codec::Opus,
        "vp8" => Codec::Vp8,
        "vp9" => Codec::Vp9,
        "h264" => Codec::H264,
        "h265" => Codec::H265,
        "av1" => Codec::Av1,
        other => panic!("codec {other}"),
    }
}

#[test]
fn davey_frames_decrypt() {
    let v = vectors();
    let sender = v["sender_id"].as_u64().unwrap();
    let secret = BaseSecret::try_from(hex_field(&v, "base_secret_hex").as_slice()).unwrap();
    let mut decryptor = Decryptor::default();
    decryptor.install_key(sender, 1, &secret, Duration::ZERO);
    let frames = v["frames"].as_array().unwrap();
    assert!(frames.len() >= 6);
    for (i, f) in frames.iter().enumerate() {
        let opened = decryptor
            .decrypt(
                sender,
                &hex_field(f, "davey_hex"),
                Duration::from_millis(i as u64),
            )
            .unwrap_or_else(|e| panic!("frame {i} ({}): {e}", f["codec"]));
        assert_eq!(opened.frame, hex_field(f, "decrypted_hex"), "frame {i}");
        assert!(matches!(
            opened.origin,
            FrameOrigin::Encrypted { nonce, .. } if nonce == i as u32 + 1
        ));
    }
}

#[test]
fn our_frames_are_byte_identical_to_davey() {
    let v = vectors();
    let secret = BaseSecret::try_from(hex_field(&v, "base_secret_hex").as_slice()).unwrap();
    let mut encryptor = Encryptor::new();
    encryptor.set_key(1, &secret);
    for (i, f) in v["frames"].as_array().unwrap().iter().enumerate() {
        let ours = encryptor
            .encrypt(
                codec(f["codec"].as_str().unwrap()),
                &hex_field(f, "frame_hex"),
            )
            .unwrap();
        assert_eq!(
            hex::encode(ours),
            f["davey_hex"].as_str().unwrap(),
            "frame {i}"
        );
    }
}
