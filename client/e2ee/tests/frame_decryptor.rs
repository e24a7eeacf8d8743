//! Receiver behaviour across epochs: newest key first, retention of previous
//! epochs with injected time, replay refusal, typed drop reasons, passthrough
//! rules and keyframe-request advice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use satsuma_e2ee::frame::{
    BaseSecret, Codec, Decryptor, DecryptorConfig, DropReason, Encryptor, FrameOrigin,
    KeyframeRequester, OPUS_SILENCE, TrailerError,
};

const ALICE: u64 = 0x0102_0304_0506_0708;
const BOB: u64 = 9;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn secret(byte: u8) -> BaseSecret {
    BaseSecret::new([byte; 16])
}

fn epoch_of(origin: FrameOrigin) -> u64 {
    match origin {
        FrameOrigin::Encrypted { epoch, .. } => epoch,
        other => panic!("not encrypted: {other:?}"),
    }
}

#[test]
fn previous_epoch_kept_until_retention_after_switch() {
    let mut dec = Decryptor::default();
    let mut alice = Encryptor::new();
    alice.set_key(1, &secret(1));
    dec.install_key(ALICE, 1, &secret(1), secs(0));
    let old: Vec<Vec<u8>> = (0..4)
        .map(|i| alice.encrypt(Codec::Vp8, &[0x11, i, 2, 3]).unwrap())
        .collect();
    assert_eq!(
        epoch_of(dec.decrypt(ALICE, &old[0], secs(1)).unwrap().origin),
        1
    );

    // Epoch 2 is installed (prepare) before Alice switches (execute).
    dec.install_key(ALICE, 2, &secret(2), secs(2));
    assert_eq!(dec.epochs(ALICE), vec![2, 1]);
    assert_eq!(
        epoch_of(dec.decrypt(ALICE, &old[1], secs(3)).unwrap().origin),
        1
    );

    assert!(
        alice.set_key(2, &secret(2)),
        "key change → force a keyframe"
    );
    let new = alice.encrypt(Codec::Vp8, &[0x10; 20]).unwrap();
    assert_eq!(
        epoch_of(dec.decrypt(ALICE, &new, secs(5)).unwrap().origin),
        2
    );

    // In-flight old frames decrypt for 10 s after the switch…
    let late = dec.decrypt(ALICE, &old[2], secs(14)).unwrap();
    assert_eq!(late.frame, vec![0x11, 2, 2, 3]);
    assert_eq!(epoch_of(late.origin), 1);
    // …then the old key is gone.
    assert_eq!(
        dec.decrypt(ALICE, &old[3], secs(15)),
        Err(DropReason::AuthenticationFailed)
    );
    assert_eq!(dec.epochs(ALICE), vec![2]);
}

#[test]
fn superseded_key_has_a_hard_lifetime_if_sender_never_switches() {
    let config = DecryptorConfig::default();
    let limit = config.superseded_epoch_max_lifetime;
    let mut dec = Decryptor::new(config);
    let mut alice = Encryptor::new();
    alice.set_key(1, &secret(1));
    dec.install_key(ALICE, 1, &secret(1), secs(0));
    dec.install_key(ALICE, 2, &secret(2), secs(10));
    let a = alice.encrypt(Codec::Opus, b"a").unwrap();
    let b = alice.encrypt(Codec::Opus, b"b").unwrap();
    assert!(dec.decrypt(ALICE, &a, secs(10) + limit - secs(1)).is_ok());
    assert_eq!(
        dec.decrypt(ALICE, &b, secs(10) + limit),
        Err(DropReason::AuthenticationFailed)
    );
}

#[test]
fn newest_key_tried_first_and_same_epoch_label_with_new_secret_is_a_new_key() {
    let mut dec = Decryptor::default();
    dec.install_key(ALICE, 1, &secret(1), secs(0));
    assert!(
        !dec.install_key(ALICE, 1, &secret(1), secs(0)),
        "idempotent"
    );
    // The group was reset: epoch 1 again, different secret.
    assert!(dec.install_key(ALICE, 1, &secret(7), secs(1)));
    let mut alice = Encryptor::new();
    alice.set_key(1, &secret(7));
    let f = alice.encrypt(Codec::Opus, b"after reset").unwrap();
    assert_eq!(
        dec.decrypt(ALICE, &f, secs(2)).unwrap().frame,
        b"after reset"
    );
}

#[test]
fn replay_is_refused_even_across_epochs() {
    let mut dec = Decryptor::default();
    let mut alice = Encryptor::new();
    alice.set_key(1, &secret(1));
    dec.install_key(ALICE, 1, &secret(1), secs(0));
    let f = alice.encrypt(Codec::Opus, b"once").unwrap();
    assert!(dec.decrypt(ALICE, &f, secs(1)).is_ok());
    dec.install_key(ALICE, 2, &secret(2), secs(1));
    assert_eq!(
        dec.decrypt(ALICE, &f, secs(1)),
        Err(DropReason::Replay { epoch: 1, nonce: 1 })
    );
}

#[test]
fn frames_far_behind_the_replay_window_are_refused() {
    let mut dec = Decryptor::default();
    let mut alice = Encryptor::new();
    alice.set_key(1, &secret(1));
    dec.install_key(ALICE, 1, &secret(1), secs(0));
    let first = alice.encrypt(Codec::Opus, b"first").unwrap();
    let mut last = Vec::new();
    for _ in 0..satsuma_e2ee::frame::REPLAY_WINDOW {
        last = alice.encrypt(Codec::Opus, b"x").unwrap();
    }
    assert!(dec.decrypt(ALICE, &last, secs(1)).is_ok());
    assert!(matches!(
        dec.decrypt(ALICE, &first, secs(1)),
        Err(DropReason::Replay { epoch: 1, nonce: 1 })
    ));
}

#[test]
fn typed_drop_reasons() {
    let mut dec = Decryptor::default();
    let mut alice = Encryptor::new();
    alice.set_key(1, &secret(1));
    let f = alice.encrypt(Codec::Opus, b"hi").unwrap();

    assert_eq!(
        dec.decrypt(ALICE, &f, secs(0)),
        Err(DropReason::UnknownSender(ALICE))
    );
    assert_eq!(
        dec.decrypt(ALICE, b"plain opus frame", secs(0)),
        Err(DropReason::NotProtocolFrame(TrailerError::NoMarker))
    );
    // Bob's key does not open Alice's frame.
    dec.install_key(BOB, 1, &secret(1), secs(0));
    dec.install_key(ALICE, 1, &secret(2), secs(0));
    assert_eq!(
        dec.decrypt(ALICE, &f, secs(0)),
        Err(DropReason::AuthenticationFailed)
    );
    // A frame authenticated under Bob's identical secret is still Bob's only
    // if it arrives on Bob's id: keys are per sender id.
    assert_eq!(dec.decrypt(BOB, &f, secs(0)).unwrap().frame, b"hi");

    // A member that left: in-flight frames for 10 s, then EpochExpired.
    dec.install_key(ALICE, 1, &secret(1), secs(0));
    dec.retire_sender(ALICE, secs(100));
    let g = alice.encrypt(Codec::Opus, b"bye").unwrap();
    assert_eq!(dec.decrypt(ALICE, &g, secs(105)).unwrap().frame, b"bye");
    let h = alice.encrypt(Codec::Opus, b"gone").unwrap();
    assert_eq!(
        dec.decrypt(ALICE, &h, secs(110)),
        Err(DropReason::EpochExpired(ALICE))
    );
    dec.remove_sender(ALICE);
    assert_eq!(
        dec.decrypt(ALICE, &h, secs(110)),
        Err(DropReason::UnknownSender(ALICE))
    );
    assert_eq!(dec.senders().collect::<Vec<_>>(), vec![BOB]);
}

#[test]
fn opus_silence_and_passthrough_only_when_configured() {
    let mut strict = Decryptor::default();
    strict.install_key(ALICE, 1, &secret(1), secs(0));
    assert!(matches!(
        strict.decrypt(ALICE, &OPUS_SILENCE, secs(0)),
        Err(DropReason::NotProtocolFrame(_))
    ));

    let mut lenient = Decryptor::new(DecryptorConfig {
        opus_silence_passthrough: true,
        ..DecryptorConfig::default()
    });
    let silence = lenient.decrypt(ALICE, &OPUS_SILENCE, secs(0)).unwrap();
    assert_eq!(silence.origin, FrameOrigin::OpusSilence);
    assert_eq!(silence.frame, OPUS_SILENCE);
    assert!(lenient.decrypt(ALICE, b"plain", secs(0)).is_err());

    // Passthrough (downgrade) accepts non-protocol frames but still decrypts
    // protocol frames.
    lenient.set_passthrough(true);
    let plain = lenient.decrypt(ALICE, b"plain", secs(0)).unwrap();
    assert_eq!(
        (plain.frame.as_slice(), plain.origin),
        (&b"plain"[..], FrameOrigin::Passthrough)
    );
    lenient.install_key(ALICE, 1, &secret(1), secs(0));
    let mut alice = Encryptor::new();
    alice.set_key(1, &secret(1));
    let f = alice.encrypt(Codec::Opus, b"enc").unwrap();
    assert_eq!(lenient.decrypt(ALICE, &f, secs(0)).unwrap().frame, b"enc");
}

#[test]
fn keyframe_requested_after_key_change_and_after_failures() {
    let mut dec = Decryptor::default();
    let mut alice = Encryptor::new();
    let mut track = KeyframeRequester::new(Duration::from_secs(1), 5);
    alice.set_key(1, &secret(1));
    dec.install_key(ALICE, 1, &secret(1), secs(0));

    let mut requests = Vec::new();
    let mut now = Duration::ZERO;
    for i in 0..120u32 {
        now += Duration::from_millis(33);
        if i == 15 {
            // Prepare: the receiver gets epoch 2 before Alice switches.
            dec.install_key(ALICE, 2, &secret(2), now);
        }
        if i == 40 {
            alice.set_key(2, &secret(2));
        }
        if i == 80 {
            // Alice moves to a key this receiver never gets.
            alice.set_key(3, &secret(3));
        }
        let f = alice.encrypt(Codec::Vp8, &[0x11, 0, 0, 0]).unwrap();
        let ask = match dec.decrypt(ALICE, &f, now) {
            Ok(d) => track.on_decrypted(&d.origin, now),
            Err(reason) => track.on_dropped(&reason, now),
        };
        if ask {
            requests.push(i);
        }
    }
    // First frame, first frame under epoch 2, the 5th consecutive failure,
    // and again no sooner than 1 s later while failures continue (frame 115
    // is the first one 1 s after frame 84 at 33 ms per frame).
    assert_eq!(requests, vec![0, 40, 84, 115]);

    // Requests are throttled: a second epoch change 100 ms later waits.
    let mut track = KeyframeRequester::new(Duration::from_secs(1), 5);
    let e = |epoch| FrameOrigin::Encrypted {
        epoch,
        generation: 0,
        nonce: 1,
    };
    assert!(track.on_decrypted(&e(1), secs(10)));
    assert!(!track.on_decrypted(&e(2), secs(10) + Duration::from_millis(100)));
    assert!(track.poll(secs(11)));
}
