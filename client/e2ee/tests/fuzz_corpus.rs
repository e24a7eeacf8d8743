//! Replays every fuzz corpus input (`fuzz/corpus/<target>/*`, kept in the repository)
//! through the same body the cargo-fuzz target runs (`fuzz/bodies/<target>.rs`), so CI
//! re-checks every input a fuzzing run ever kept, on stable and without libFuzzer.
//!
//! The seeds are built here from real data (the libdave and davey vectors in
//! `tests/vectors/`, frames sealed by the `Encryptor`, MLS messages of two real
//! `Member`s) and replayed too; `SATSUMA_FUZZ_WRITE_SEEDS=1` also writes them into the
//! corpus directories (what `scripts/fuzz.sh` starts from).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/bodies/frame_decrypt.rs"]
mod frame_decrypt;
#[path = "../fuzz/bodies/frame_trailer.rs"]
mod frame_trailer;
#[path = "../fuzz/bodies/handshake.rs"]
mod handshake;

use std::path::PathBuf;
use std::time::Duration;

use satsuma_e2ee::frame::{BaseSecret, Codec, Encryptor};
use satsuma_e2ee::member::{Member, MemberConfig, Outbound};
use satsuma_e2ee::relay::{Entry, Handshake, ServerFrame};
use serde_json::Value;

type Body = fn(&[u8]);

const TARGETS: [(&str, Body); 3] = [
    ("frame_trailer", frame_trailer::run),
    ("frame_decrypt", frame_decrypt::run),
    ("handshake", handshake::run),
];

fn corpus_dir(target: &str) -> PathBuf {
    satsuma_common::corpus::corpus_dir(env!("CARGO_MANIFEST_DIR"), target)
}

#[test]
fn every_corpus_input_passes_its_fuzz_body() {
    // Each corpus holds at least its seeds: fewer means a lost directory.
    let counts = satsuma_common::corpus::replay_targets(env!("CARGO_MANIFEST_DIR"), &TARGETS, 5)
        .unwrap_or_else(|e| panic!("{e}"));
    for (target, n) in counts {
        eprintln!("{target}: {n} corpus inputs replayed");
    }
}

fn vectors(path: &str) -> Value {
    let full = format!("{}/tests/vectors/{path}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(full).unwrap()).unwrap()
}

fn hex_of(v: &Value, key: &str) -> Vec<u8> {
    hex::decode(v[key].as_str().unwrap()).unwrap()
}

/// Real client → server frames of two members forming a group ("fuzz-room", as in the
/// handshake body): member 2's KeyPackage, member 1's commit adding it with its Welcome.
fn real_frames() -> Vec<ServerFrame> {
    let identity = |i: u8| satsuma_e2ee::identity::Identity::from_seed([i; 32], "fuzz");
    let mut members = [
        Member::new(1, identity(1), MemberConfig::default()).unwrap(),
        Member::new(2, identity(2), MemberConfig::default()).unwrap(),
    ];
    let mut now = Duration::from_secs(1);
    for m in &mut members {
        m.handle_welcome(now, 0, &[1, 2]);
    }
    let mut seq = 1;
    for m in &mut members {
        m.handle_entry(
            now,
            Entry::Creator {
                seq,
                id: 1,
                group_id: b"fuzz-room".to_vec(),
            },
        );
    }
    let mut frames = Vec::new();
    for _ in 0..20 {
        now += Duration::from_millis(500);
        let mut sent = Vec::new();
        for (i, m) in members.iter_mut().enumerate() {
            m.tick(now);
            while let Some(o) = m.poll_outbound() {
                if let Outbound::Binary(b) = o {
                    sent.push((i as u64 + 1, b));
                }
            }
            while m.poll_event().is_some() {}
        }
        for (from, frame) in sent {
            seq += 1;
            let server = ServerFrame {
                seq,
                from,
                handshake: Handshake::decode_client_frame(&frame).unwrap(),
            };
            for m in &mut members {
                m.handle_entry(now, server.clone().into_entry());
            }
            frames.push(server);
        }
        if frames
            .iter()
            .any(|f| matches!(f.handshake, Handshake::Commit { .. }))
        {
            break;
        }
    }
    assert!(
        frames.len() >= 2,
        "the members sent no KeyPackage and commit"
    );
    frames
}

/// A handshake-body op: opcode, u16 LE length, body.
fn op(code: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![code];
    v.extend_from_slice(&(body.len() as u16).to_le_bytes());
    v.extend_from_slice(body);
    v
}

fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();

    // Frames: the libdave clear-range cases (plaintext media), davey's encrypted frames,
    // the libdave trailer vector, and our own sealed frames of each codec.
    let codec_of = |name: &str| match name {
        "opus" => Codec::Opus,
        "vp8" => Codec::Vp8,
        "vp9" => Codec::Vp9,
        "h264" => Codec::H264,
        "h265" => Codec::H265,
        "av1" => Codec::Av1,
        _ => Codec::Unknown,
    };
    let codecs = [
        Codec::Opus,
        Codec::Vp8,
        Codec::Vp9,
        Codec::H264,
        Codec::H265,
        Codec::Av1,
        Codec::Unknown,
    ];
    let mut encryptor = Encryptor::new();
    encryptor.set_key(1, &BaseSecret::new([0x24; 16]));
    for case in vectors("dave/codec-clear-ranges.json")["cases"]
        .as_array()
        .unwrap()
    {
        let name = case["name"].as_str().unwrap();
        let frame = hex_of(case, "frame_hex");
        let codec = codec_of(case["codec"].as_str().unwrap());
        out.push(("frame_trailer", format!("clear-{name}"), frame.clone()));
        // frame_decrypt: selector (codec index, mode) ‖ frame; the body seals it too.
        let index = codecs.iter().position(|c| *c == codec).unwrap() as u8;
        let mut plain = vec![index];
        plain.extend_from_slice(&frame);
        out.push(("frame_decrypt", format!("plain-{name}"), plain));
        if let Ok(sealed) = encryptor.encrypt(codec, &frame) {
            out.push(("frame_trailer", format!("sealed-{name}"), sealed.clone()));
            let mut sealed_input = vec![index];
            sealed_input.extend_from_slice(&sealed);
            out.push(("frame_decrypt", format!("sealed-{name}"), sealed_input));
        }
    }
    for (i, f) in vectors("davey/frames.json")["frames"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        out.push((
            "frame_trailer",
            format!("davey-{i}"),
            hex_of(f, "frame_hex"),
        ));
    }
    out.push((
        "frame_trailer",
        "libdave-trailer".into(),
        hex_of(&vectors("dave/trailer.json"), "frame_hex"),
    ));

    // Handshake: real MLS traffic as relay entries and as binary server frames.
    let frames = real_frames();
    let mut as_entries = Vec::new();
    let mut as_binary = Vec::new();
    for f in &frames {
        as_binary.extend(op(0x00, &f.encode()));
        if let Handshake::KeyPackage(kp) = &f.handshake {
            as_entries.extend(op(((f.from as u8) << 4) | 1, kp));
        }
    }
    as_entries.extend(op(0x08, &1500u64.to_le_bytes()));
    out.push(("handshake", "real-key-package-entries".into(), as_entries));
    let mut binary = as_binary.clone();
    binary.extend(op(0x07, &1u64.to_le_bytes())); // execute epoch 1
    binary.extend(op(0x08, &3000u64.to_le_bytes()));
    out.push(("handshake", "real-server-frames".into(), binary));
    let mut churn = op(0x34, b""); // joined 3
    churn.extend(op(0x25, b"")); // left 2
    churn.extend(op(0x16, b"another-group")); // creator 1
    churn.extend(op(0x08, &20_000u64.to_le_bytes()));
    out.push(("handshake", "roster-churn".into(), churn));
    let mut garbage_commit = op(0x12, &[3, 0, 1, 0, 1, 0xff]);
    garbage_commit.extend(op(0x13, &[0]));
    out.push(("handshake", "garbage-commits".into(), garbage_commit));
    out.push((
        "handshake",
        "short-binary".into(),
        op(0x00, &[0, 0, 0, 0, 0, 0, 0, 9, 2, 0, 0, 0, 0, 0, 0, 0, 1]),
    ));
    out
}

#[test]
fn seeds_pass_their_fuzz_bodies() {
    let seeds = seeds();
    let write = std::env::var_os("SATSUMA_FUZZ_WRITE_SEEDS").is_some();
    for (target, name, bytes) in &seeds {
        let body = TARGETS.iter().find(|(t, _)| t == target).unwrap().1;
        body(bytes);
        if write {
            let dir = corpus_dir(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
    }
    for (target, _) in TARGETS {
        assert!(seeds.iter().filter(|s| s.0 == target).count() >= 5);
    }
}
