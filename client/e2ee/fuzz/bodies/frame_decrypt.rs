//! Decryption of arbitrary bytes from a sender whose keys are installed, and
//! encrypt → decrypt round trips of arbitrary frames for every codec.
//! First input byte: codec selector and mode.
//!
//! Shared by the cargo-fuzz target `frame_decrypt` and by `tests/fuzz_corpus.rs`, which
//! replays every file of `fuzz/corpus/frame_decrypt/` through it.

use std::time::Duration;

use satsuma_e2ee::frame::{BaseSecret, Codec, Decryptor, DecryptorConfig, Encryptor, FrameLayout};

const CODECS: [Codec; 7] = [
    Codec::Opus,
    Codec::Vp8,
    Codec::Vp9,
    Codec::H264,
    Codec::H265,
    Codec::Av1,
    Codec::Unknown,
];

/// A receiver of sender 1 holding epoch 1 (`[0x24; 16]`) and epoch 2.
fn decryptor(selector: u8) -> Decryptor {
    let mut decryptor = Decryptor::new(DecryptorConfig {
        opus_silence_passthrough: selector & 0x80 != 0,
        ..DecryptorConfig::default()
    });
    decryptor.install_key(1, 1, &BaseSecret::new([0x24; 16]), Duration::ZERO);
    decryptor.install_key(1, 2, &BaseSecret::new([0x42; 16]), Duration::from_secs(1));
    decryptor
}

pub(crate) fn run(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    // Within the superseded key's lifetime (30 s after epoch 2 arrives).
    let now = Duration::from_millis(u64::from(selector) * 100);

    // Hostile bytes: any outcome but a panic is fine; nothing unauthenticated
    // may come out as "encrypted". (A corpus input may be an authentic frame.)
    let _ = decryptor(selector).decrypt(1, body, now);

    // Round trip, on a receiver that has seen nothing else.
    let mut decryptor = decryptor(selector);
    let codec = CODECS[usize::from(selector) % CODECS.len()];
    let mut encryptor = Encryptor::new();
    encryptor.set_key(1, &BaseSecret::new([0x24; 16]));
    if let Ok(sealed) = encryptor.encrypt(codec, body) {
        let mut layout = FrameLayout::default();
        layout.build(codec, body);
        let opened = decryptor
            .decrypt(1, &sealed, now)
            .expect("own frame decrypts");
        assert_eq!(opened.frame, layout.bytes);
        assert!(
            decryptor.decrypt(1, &sealed, now).is_err(),
            "replay accepted"
        );
    }
}
