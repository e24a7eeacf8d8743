//! Replays every fuzz corpus input (`fuzz/corpus/<target>/*`, kept in the repository)
//! through the same body the cargo-fuzz target runs (`fuzz/bodies/<target>.rs`), so CI
//! re-checks every input a fuzzing run ever kept, on stable and without libFuzzer.
//!
//! The seeds are built here from real messages (MLS messages of two real
//! `satsuma_e2ee::Member`s, `mls_framing::build` commits and KeyPackages, the protocol's
//! JSON messages) and replayed too; `SATSUMA_FUZZ_WRITE_SEEDS=1` also writes them into
//! the corpus directories (what `scripts/fuzz.sh` starts from).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/bodies/client_json.rs"]
mod client_json;
#[path = "../fuzz/bodies/mls_framing.rs"]
mod mls_framing;
#[path = "../fuzz/bodies/relay_framing.rs"]
mod relay_framing;

use std::path::PathBuf;
use std::time::Duration;

use satsuma_coordinator::mls_framing::{WireFormat, build};
use satsuma_coordinator::protocol::{
    self, ClientMessage, EventFrame, LeaveReason, RoomEvent, ServerMessage,
};
use satsuma_e2ee::member::{Member, MemberConfig, Outbound};
use satsuma_e2ee::relay::{Entry, Handshake, ServerFrame};

type Body = fn(&[u8]);

const TARGETS: [(&str, Body); 3] = [
    ("mls_framing", mls_framing::run),
    ("relay_framing", relay_framing::run),
    ("client_json", client_json::run),
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

/// Real client → server frames of two e2ee members forming a group: member 2's
/// KeyPackage, member 1's commit adding it with its Welcome.
fn real_client_frames() -> Vec<Vec<u8>> {
    let identity = |i: u8| satsuma_e2ee::identity::Identity::from_seed([i; 32], "seed");
    let mut members = [
        Member::new(1, identity(1), MemberConfig::default()).unwrap(),
        Member::new(2, identity(2), MemberConfig::default()).unwrap(),
    ];
    let mut now = Duration::from_secs(1);
    for m in &mut members {
        m.handle_welcome(now, 0, &[1, 2]);
    }
    let mut seq = 1;
    let creator = Entry::Creator {
        seq,
        id: 1,
        group_id: b"fuzz-seed-group".to_vec(),
    };
    for m in &mut members {
        m.handle_entry(now, creator.clone());
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
            let hs = Handshake::decode_client_frame(&frame).unwrap();
            seq += 1;
            let server = ServerFrame {
                seq,
                from,
                handshake: hs,
            };
            for m in &mut members {
                m.handle_entry(now, server.clone().into_entry());
            }
            frames.push(frame);
        }
        if frames.iter().any(|f| f[0] == protocol::KIND_COMMIT) {
            break;
        }
    }
    assert!(
        frames.iter().any(|f| f[0] == protocol::KIND_KEY_PACKAGE)
            && frames.iter().any(|f| f[0] == protocol::KIND_COMMIT),
        "the members sent no KeyPackage and commit"
    );
    frames
}

/// Seed inputs per target.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let real = real_client_frames();

    // mls_framing: real MLS messages, built ones, edge cases.
    let mut mls: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, f) in real.iter().enumerate() {
        match Handshake::decode_client_frame(f).unwrap() {
            Handshake::KeyPackage(kp) => mls.push((format!("real-key-package-{i}"), kp)),
            Handshake::Commit { commit, welcome } => {
                mls.push((format!("real-commit-{i}"), commit));
                if !welcome.is_empty() {
                    mls.push((format!("real-welcome-{i}"), welcome));
                }
            }
        }
    }
    let kp7 = build::key_package(7, b"binding");
    mls.push((
        "built-commit".into(),
        build::commit(b"gid", 4, 2, 3, &[kp7, build::key_package(9, b"")], &[5, 1]),
    ));
    mls.push((
        "built-key-package".into(),
        build::key_package_message(7, b"x"),
    ));
    mls.push((
        "private-commit".into(),
        build::private_message(&[9; 32], 3, 3, &[0xaa; 40]),
    ));
    mls.push((
        "public-commit-long-gid".into(),
        build::public_commit(&[7; 200], 1, 0, &[]),
    ));
    mls.push((
        "welcome-header".into(),
        build::message(WireFormat::Welcome, b"w"),
    ));
    for (name, bytes) in mls {
        out.push(("mls_framing", name, bytes));
    }

    // relay_framing: real client frames and the server frames relaying them, then
    // room operation sequences (see the body: op byte, u16 LE length, body).
    let mut relay: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, f) in real.iter().enumerate() {
        relay.push((format!("real-client-frame-{i}"), f.clone()));
        let server = ServerFrame {
            seq: 10 + i as u64,
            from: 1,
            handshake: Handshake::decode_client_frame(f).unwrap(),
        };
        relay.push((format!("real-server-frame-{i}"), server.encode()));
    }
    let op = |code: u8, body: &[u8]| {
        let mut v = vec![code];
        v.extend_from_slice(&(body.len() as u16).to_le_bytes());
        v.extend_from_slice(body);
        v
    };
    // participant 2 logs a KeyPackage, the creator commits adding it, all ready, time.
    // (The KeyPackage filler, [0, 0], is what the commit op puts in the KeyPackage it adds.)
    let mut add = op(0x13, &[0, 0]);
    add.extend(op(0x04, &[0, 0b010, 0, 0]));
    add.extend(op(0x06, &[0, 1]));
    add.extend(op(0x16, &[0, 1]));
    add.extend(op(0x0a, &[0xe8, 0x03]));
    assert_eq!(
        relay_framing::room(&add),
        1,
        "the add-member seed logs its commit"
    );
    relay.push(("room-add-member".into(), add.clone()));
    // ... then member 2 reports the commit failed (a void), a stale commit, a leave.
    let mut void = add.clone();
    void.extend(op(0x17, &[1]));
    void.extend(op(0x05, &[3, 0, 0, 0, 1]));
    void.extend(op(0x29, b""));
    relay.push(("room-void-and-leave".into(), void));
    // hostile frames through the room: raw KeyPackage bytes, a cut commit, JSON.
    let mut hostile = op(0x01, &build::key_package_message(1, b"")[..40]);
    hostile.extend(op(0x02, &[4, 1, 2, 3, 4, 5]));
    hostile.extend(op(0x00, &[9, 9]));
    hostile.extend(op(0x08, br#"{"type":"hand","raised":true}"#));
    relay.push(("room-hostile".into(), hostile));
    for (name, bytes) in relay {
        out.push(("relay_framing", name, bytes));
    }

    // client_json: every client message type, server replies and entries, refusals.
    let mut json: Vec<(String, String)> = vec![
        ("hello".into(), r#"{"type":"hello","v":1,"token":"eyJ0eXAiOiJKV1QifQ.e30.sig"}"#.into()),
        (
            "hello-resume".into(),
            r#"{"type":"hello","v":1,"resume":{"participant_id":3,"resume_token":"ab12","last_seq":41}}"#.into(),
        ),
        ("ping".into(), r#"{"type":"ping","t":1234}"#.into()),
        ("leave".into(), r#"{"type":"leave"}"#.into()),
        (
            "publish".into(),
            r#"{"type":"publish","session_id":"0123abcd","track_name":"cam","kind":"video","enabled":false}"#.into(),
        ),
        ("unpublish".into(), r#"{"type":"unpublish","track_name":"cam"}"#.into()),
        ("set-track".into(), r#"{"type":"set_track","track_name":"mic","enabled":true}"#.into()),
        ("hand".into(), r#"{"type":"hand","raised":true}"#.into()),
        ("speaking".into(), r#"{"type":"speaking","speaking":false}"#.into()),
        ("mute".into(), r#"{"type":"mute","target":2,"kind":"screenshare"}"#.into()),
        ("remove".into(), r#"{"type":"remove","target":5}"#.into()),
        ("lock".into(), r#"{"type":"lock","locked":true}"#.into()),
        ("set-cap".into(), r#"{"type":"set_cap","max_participants":null}"#.into()),
        ("ready".into(), r#"{"type":"ready","epoch":3,"group_id":"00ff"}"#.into()),
        ("commit-failed".into(), r#"{"type":"commit_failed","epoch":2}"#.into()),
        ("unknown-type".into(), r#"{"type":"teleport","to":"mars"}"#.into()),
        ("unknown-field".into(), r#"{"type":"hand","raised":true,"x":1}"#.into()),
        ("not-an-object".into(), "[1,2,3]".into()),
        ("escapes".into(), r#"{"type":"unpublish","track_name":"\u00e9\ud83d\ude00\n"}"#.into()),
    ];
    let welcome = ServerMessage::Welcome {
        v: 1,
        room: "room".into(),
        participant_id: 1,
        resume_token: "t".into(),
        seq: 3,
        snapshot: satsuma_coordinator::room::Room::new(
            "room",
            satsuma_coordinator::room::RoomConfig::default(),
            1,
        )
        .snapshot(),
        limits: satsuma_coordinator::room::RoomConfig::default().limits,
        ice_servers: Vec::new(),
        ice_expires_at: None,
    };
    json.push((
        "server-welcome".into(),
        serde_json::to_string(&welcome).unwrap(),
    ));
    json.push((
        "server-commit-rejected".into(),
        serde_json::to_string(&ServerMessage::CommitRejected {
            epoch: Some(1),
            current_epoch: Some(2),
            reason: "stale_epoch".into(),
            detail: None,
        })
        .unwrap(),
    ));
    json.push((
        "server-left".into(),
        serde_json::to_string(&EventFrame {
            seq: 9,
            event: RoomEvent::Left {
                id: 4,
                reason: LeaveReason::Timeout,
            },
        })
        .unwrap(),
    ));
    // Every seed message decodes as the coordinator expects it to.
    for (name, text) in &json {
        let ok = !matches!(
            name.as_str(),
            "unknown-type" | "unknown-field" | "not-an-object"
        ) && !name.starts_with("server-");
        assert_eq!(ClientMessage::decode(text).is_ok(), ok, "{name}");
    }
    for (name, text) in json {
        out.push(("client_json", name, text.into_bytes()));
    }
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
