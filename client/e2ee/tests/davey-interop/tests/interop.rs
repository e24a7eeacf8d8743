//! Live interop with `davey` 0.2.0: two davey `DaveSession`s form a real DAVE
//! MLS group (this test plays the voice gateway's external sender); the
//! per-sender base secrets are exported from that group and handed to
//! satsuma's frame crypto. Frames go both ways, and for identical inputs the
//! two encryptors must produce identical bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::num::NonZeroU16;
use std::time::Duration;

use davey::{Codec as DaveCodec, DaveSession, MediaType, ProposalsOperationType};
use openmls::prelude::tls_codec::{Serialize as _, VLBytes};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider;
use satsuma_davey_interop::frame::{
    BaseSecret, Codec, Decryptor, EXPORTER_LABEL, Encryptor, FrameLayout, FrameOrigin,
    exporter_context,
};

const CHANNEL: u64 = 0x5A75_0000_0000_0001;
const ALICE: u64 = 158_049_329_150_427_136;
const BOB: u64 = 2002;

/// The voice gateway: the group's single external sender.
struct Gateway {
    signer: SignatureKeyPair,
    sender: ExternalSender,
}

impl Gateway {
    fn new() -> Self {
        let signer = SignatureKeyPair::new(SignatureScheme::ECDSA_SECP256R1_SHA256).unwrap();
        let credential = BasicCredential::new(b"satsuma-test-gateway".to_vec());
        let sender = ExternalSender::new(signer.public().into(), credential.into());
        Self { signer, sender }
    }

    fn external_sender(&self) -> Vec<u8> {
        self.sender.tls_serialize_detached().unwrap()
    }

    /// An opcode-27 "append" payload adding `key_package` at `epoch`.
    fn propose_add(&self, epoch: u64, key_package: &[u8]) -> Vec<u8> {
        let provider = OpenMlsRustCrypto::default();
        let key_package = KeyPackageIn::tls_deserialize_exact_bytes(key_package)
            .unwrap()
            .validate(provider.crypto(), ProtocolVersion::Mls10)
            .unwrap();
        let message = ExternalProposal::new_add::<OpenMlsRustCrypto>(
            key_package,
            GroupId::from_slice(&CHANNEL.to_be_bytes()),
            GroupEpoch::from(epoch),
            &self.signer,
            SenderExtensionIndex::new(0),
        )
        .unwrap();
        VLBytes::new(message.tls_serialize_detached().unwrap())
            .tls_serialize_detached()
            .unwrap()
    }
}

/// Alice creates the group and adds Bob; both execute the transition to
/// protocol version 1 so their encryptors and decryptors are keyed.
fn established_pair() -> (DaveSession, DaveSession) {
    let gateway = Gateway::new();
    let version = NonZeroU16::new(1).unwrap();
    let mut alice = DaveSession::new(version, ALICE, CHANNEL, None).unwrap();
    let mut bob = DaveSession::new(version, BOB, CHANNEL, None).unwrap();
    alice
        .set_external_sender(&gateway.external_sender())
        .unwrap();
    bob.set_external_sender(&gateway.external_sender()).unwrap();
    alice.create_key_package().unwrap();
    let bob_key_package = bob.create_key_package().unwrap();
    let proposals = gateway.propose_add(0, &bob_key_package);
    let commit_welcome = alice
        .process_proposals(ProposalsOperationType::APPEND, &proposals, Some(&[BOB]))
        .unwrap()
        .expect("a commit");
    assert!(alice.process_commit(&commit_welcome.commit).unwrap());
    bob.process_welcome(
        commit_welcome.welcome.as_deref().expect("a welcome"),
        Some(&[ALICE, BOB]),
    )
    .unwrap();
    alice.prepare_transition(0, 1).unwrap();
    bob.prepare_transition(0, 1).unwrap();
    assert!(alice.can_encrypt() && bob.can_encrypt());
    (alice, bob)
}

fn base_secret(session: &DaveSession, sender: u64) -> BaseSecret {
    let provider = OpenMlsRustCrypto::default();
    let bytes = session
        .group()
        .unwrap()
        .export_secret(
            provider.crypto(),
            EXPORTER_LABEL,
            &exporter_context(sender),
            16,
        )
        .unwrap();
    BaseSecret::try_from(bytes.as_slice()).unwrap()
}

/// Deterministic filler bytes without `00 00` runs (so H.26x bodies need no
/// emulation prevention).
fn filler(seed: u32, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            ((state >> 16) as u8) | 0x10
        })
        .collect()
}

/// One frame per codec, as a browser encoder would hand them over.
pub fn sample_frames() -> Vec<(Codec, Vec<u8>)> {
    let opus = filler(1, 100);
    let mut vp8_key = vec![0x50, 0x2A, 0x01, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0xE0, 0x01];
    vp8_key.extend(filler(2, 1190));
    let mut vp8_delta = vec![0x31];
    vp8_delta.extend(filler(3, 1199));
    let vp9 = filler(4, 800);
    // SPS, PPS, IDR slice (clear prefix from libdave's vector) plus a body.
    let mut h264 =
        hex::decode("000000016742c00d8c8d40d0fbc900f08846a00000000168ce3c800000000165b8").unwrap();
    h264.extend(filler(5, 600));
    // Two slices with 3-byte start codes (rewritten to 4-byte ones).
    let mut h264_slices = vec![0, 0, 1, 0x41, 0xE0];
    h264_slices.extend(filler(6, 300));
    h264_slices.extend([0, 0, 1, 0x41, 0xE0]);
    h264_slices.extend(filler(7, 300));
    let mut h265 =
        hex::decode("000000014001 0c01ffff016000000300b0000003000003005d1702 40".replace(' ', ""))
            .unwrap();
    h265.extend([0, 0, 0, 1, 0x26, 0x01]);
    h265.extend(filler(8, 500));
    // Temporal delimiter, sequence header with a padded size, frame OBU.
    let mut av1 = vec![0x12, 0x00, 0x0A, 0x85, 0x00];
    av1.extend(filler(9, 5));
    av1.extend([0x32, 0xC8, 0x01]);
    av1.extend(filler(10, 200));
    vec![
        (Codec::Opus, opus),
        (Codec::Vp8, vp8_key),
        (Codec::Vp8, vp8_delta),
        (Codec::Vp9, vp9),
        (Codec::H264, h264),
        (Codec::H264, h264_slices),
        (Codec::H265, h265),
        (Codec::Av1, av1),
    ]
}

fn davey_codec(codec: Codec) -> (MediaType, DaveCodec) {
    match codec {
        Codec::Opus => (MediaType::AUDIO, DaveCodec::OPUS),
        Codec::Vp8 => (MediaType::VIDEO, DaveCodec::VP8),
        Codec::Vp9 => (MediaType::VIDEO, DaveCodec::VP9),
        Codec::H264 => (MediaType::VIDEO, DaveCodec::H264),
        Codec::H265 => (MediaType::VIDEO, DaveCodec::H265),
        Codec::Av1 => (MediaType::VIDEO, DaveCodec::AV1),
        Codec::Unknown => (MediaType::VIDEO, DaveCodec::UNKNOWN),
    }
}

fn layout(codec: Codec, frame: &[u8]) -> Vec<u8> {
    let mut layout = FrameLayout::default();
    assert!(layout.build(codec, frame), "{codec:?} sample must parse");
    layout.bytes
}

#[test]
fn both_members_export_the_same_base_secrets() {
    let (alice, bob) = established_pair();
    for sender in [ALICE, BOB] {
        assert_eq!(base_secret(&alice, sender), base_secret(&bob, sender));
    }
    assert_ne!(base_secret(&alice, ALICE), base_secret(&alice, BOB));
}

#[test]
fn davey_frames_decrypt_with_satsuma() {
    let (mut alice, mut bob) = established_pair();
    let mut decryptor = Decryptor::default();
    decryptor.install_key(ALICE, 1, &base_secret(&bob, ALICE), Duration::ZERO);
    for (index, (codec, frame)) in sample_frames().into_iter().enumerate() {
        let (media, dave_codec) = davey_codec(codec);
        let sealed = alice
            .encrypt(media, dave_codec, &frame)
            .unwrap()
            .into_owned();
        let ours = decryptor
            .decrypt(ALICE, &sealed, Duration::from_millis(20 * index as u64))
            .unwrap_or_else(|e| panic!("{codec:?}: {e}"));
        assert!(matches!(
            ours.origin,
            FrameOrigin::Encrypted { epoch: 1, .. }
        ));
        let theirs = bob.decrypt(ALICE, media, &sealed).unwrap();
        assert_eq!(ours.frame, theirs, "{codec:?}: satsuma and davey disagree");
        assert_eq!(ours.frame, layout(codec, &frame), "{codec:?}");
    }
}

#[test]
fn satsuma_frames_decrypt_with_davey() {
    let (mut alice, _bob) = established_pair();
    let mut encryptor = Encryptor::new();
    encryptor.set_key(1, &base_secret(&alice, BOB));
    for (codec, frame) in sample_frames() {
        let (media, _) = davey_codec(codec);
        let sealed = encryptor.encrypt(codec, &frame).unwrap();
        let theirs = alice
            .decrypt(BOB, media, &sealed)
            .unwrap_or_else(|e| panic!("{codec:?}: davey refused: {e:?}"));
        assert_eq!(theirs, layout(codec, &frame), "{codec:?}");
    }
}

#[test]
fn identical_inputs_give_identical_frames() {
    let (mut alice, _bob) = established_pair();
    let mut encryptor = Encryptor::new();
    encryptor.set_key(1, &base_secret(&alice, ALICE));
    let mut vectors = Vec::new();
    for (codec, frame) in sample_frames() {
        let (media, dave_codec) = davey_codec(codec);
        let theirs = alice
            .encrypt(media, dave_codec, &frame)
            .unwrap()
            .into_owned();
        let ours = encryptor.encrypt(codec, &frame).unwrap();
        assert_eq!(hex::encode(&ours), hex::encode(&theirs), "{codec:?}");
        vectors.push(serde_json::json!({
            "codec": format!("{codec:?}").to_lowercase(),
            "frame_hex": hex::encode(&frame),
            "decrypted_hex": hex::encode(layout(codec, &frame)),
            "davey_hex": hex::encode(&theirs),
        }));
    }
    if std::env::var_os("DAVEY_WRITE_VECTORS").is_some() {
        let document = serde_json::json!({
            "source": "generated by client/e2ee/tests/davey-interop (tests/interop.rs) with davey 0.2.0 (MIT, crates.io): frames encrypted in order by davey's DaveSession::encrypt for sender_id, first nonce 1",
            "sender_id": ALICE,
            "base_secret_hex": hex::encode(base_secret(&alice, ALICE).as_bytes()),
            "frames": vectors,
        });
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../vectors/davey/frames.json");
        std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/../vectors/davey")).unwrap();
        std::fs::write(
            path,
            serde_json::to_string_pretty(&document).unwrap() + "\n",
        )
        .unwrap();
    }
}
