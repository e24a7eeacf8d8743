//! Fuzz body: the relay framing of MLS handshake messages (binary WebSocket frames),
//! on both sides of the wire, and a room fed with hostile binary frames.
//!
//! Shared by the cargo-fuzz target `relay_framing` and by `tests/fuzz_corpus.rs`, which
//! replays every file of `fuzz/corpus/relay_framing/` through it.
//!
//! 1. Codec: the whole input as a client → server frame and as a server → client frame,
//!    through the coordinator's codec (`protocol`) and the client's
//!    (`satsuma_e2ee::relay`). They must agree, and what decodes re-encodes to the
//!    same bytes.
//! 2. Room: the input as a sequence of operations by three participants of a real
//!    [`Room`] (hostile binary frames, well-formed KeyPackages and commits for the
//!    room's current group and epoch, `ready`, `commit_failed`, JSON text, time).
//!    Every output is checked: log entries are numbered without gaps, every relayed
//!    binary frame decodes identically with both codecs (so clients accept whatever the
//!    coordinator relays), a relayed commit is a full member commit for the group's
//!    current epoch and moves it on by one, and every JSON entry and reply decodes back
//!    to itself.

use std::time::{Duration, Instant};

use bytes::Bytes;
use satsuma_coordinator::mls_framing::{self, WireFormat, build};
use satsuma_coordinator::protocol::{
    self, ClientMessage, KIND_COMMIT, KIND_KEY_PACKAGE, MlsFrame, RoomEvent, ServerText,
};
use satsuma_coordinator::room::{EntryBody, Input, JoinRequest, Output, Room, RoomConfig, Wire};
use satsuma_e2ee::relay::{Handshake, RelayError, ServerFrame};

pub(crate) fn run(data: &[u8]) {
    codec(data);
    room(data);
}

/// Both codecs on the raw bytes.
fn codec(data: &[u8]) {
    // Client → server.
    match Handshake::decode_client_frame(data) {
        Ok(hs) => {
            assert_eq!(hs.encode_client_frame(), data);
            match &hs {
                Handshake::KeyPackage(kp) => {
                    assert_eq!(protocol::client_key_package_frame(kp), data);
                }
                Handshake::Commit { commit, welcome } => {
                    assert_eq!(
                        protocol::split_commit_payload(&data[1..]),
                        Some((&commit[..], &welcome[..]))
                    );
                    assert_eq!(protocol::client_commit_frame(commit, welcome), data);
                }
            }
        }
        Err(RelayError::BadCommitLength { .. }) => {
            assert_eq!(protocol::split_commit_payload(&data[1..]), None);
        }
        Err(RelayError::TooShort(_)) => {
            assert!(data.is_empty() || protocol::split_commit_payload(&data[1..]).is_none());
        }
        Err(RelayError::Empty) => {
            assert!(
                data == [KIND_KEY_PACKAGE]
                    || protocol::split_commit_payload(&data[1..])
                        .is_some_and(|(c, _)| c.is_empty())
            );
        }
        Err(RelayError::TooLarge(n)) => assert!(n > satsuma_e2ee::relay::MAX_PAYLOAD),
        Err(RelayError::UnknownKind(k)) => {
            assert_eq!(Some(&k), data.first());
            assert!(k != KIND_KEY_PACKAGE && k != KIND_COMMIT);
        }
    }

    // Server → client.
    let ours = MlsFrame::decode(data);
    if let Some(f) = &ours {
        assert_eq!(f.encode(), data);
    } else {
        assert!(data.len() < MlsFrame::HEADER_LEN);
    }
    match ServerFrame::decode(data) {
        Ok(sf) => {
            assert_eq!(sf.encode(), data);
            let Some(f) = ours else {
                panic!("the client decodes a frame the coordinator cannot")
            };
            assert_eq!(
                (f.seq, f.kind, f.from),
                (sf.seq, sf.handshake.kind(), sf.from)
            );
            let mut payload = Vec::new();
            match &sf.handshake {
                Handshake::KeyPackage(kp) => payload.extend_from_slice(kp),
                Handshake::Commit { commit, welcome } => {
                    payload = protocol::client_commit_frame(commit, welcome)[1..].to_vec();
                }
            }
            assert_eq!(f.payload, payload);
        }
        Err(RelayError::TooShort(n)) => match data.len().checked_sub(MlsFrame::HEADER_LEN) {
            None => assert_eq!(n, data.len()),
            Some(payload) => {
                assert_eq!(data[8], KIND_COMMIT);
                assert!(n == payload && payload < 4);
            }
        },
        Err(_) => {}
    }
}

const PEOPLE: usize = 3;

struct Harness {
    room: Room,
    now: Instant,
    ids: [u64; PEOPLE],
    joins: u64,
    seq: u64,
}

impl Harness {
    fn join(&mut self) -> u64 {
        self.joins += 1;
        let req = JoinRequest {
            subject: format!("fuzz-{}", self.joins),
            name: format!("Fuzz {}", self.joins),
            permissions: protocol::Permissions {
                publish: true,
                subscribe: true,
                // Hosts, so that a locked or capped room still takes the replacements.
                host: true,
            },
            resume_token: format!("token-{}", self.joins),
            wall_ms: 1_700_000_000_000,
            visible_only_to: None,
            recorder: false,
        };
        match self.room.join(self.now, req) {
            Ok(id) => id,
            Err(e) => panic!("join refused: {e}"),
        }
    }

    fn group(&self) -> Option<(Vec<u8>, u64)> {
        self.room.group_epoch().map(|(g, e)| (g.to_vec(), e))
    }

    /// Drains the room's outputs, checking each; returns the commits and voids logged.
    fn drain(&mut self) -> (Vec<mls_framing::PublicCommit>, Vec<u64>) {
        let mut commits = Vec::new();
        let mut voids = Vec::new();
        while let Some(out) = self.room.poll_output() {
            match out {
                Output::Broadcast(entry) => {
                    assert_eq!(entry.seq, self.seq + 1, "log entries are numbered in order");
                    self.seq = entry.seq;
                    match (&entry.body, &entry.wire) {
                        (EntryBody::Mls { kind, from }, Wire::Binary(w)) => {
                            if let Some(c) = relayed(entry.seq, *kind, *from, w) {
                                commits.push(c);
                            }
                        }
                        (EntryBody::Event(event), Wire::Text(t)) => {
                            let text = std::str::from_utf8(t).unwrap_or_else(|e| panic!("{e}"));
                            match ServerText::decode(text) {
                                Ok(ServerText::Event(f)) => {
                                    assert_eq!(f.seq, entry.seq);
                                    assert_eq!(&f.event, event);
                                }
                                other => panic!("entry {text} decodes as {other:?}"),
                            }
                            if let RoomEvent::CommitVoid { epoch, .. } = event {
                                voids.push(*epoch);
                            }
                        }
                        (body, wire) => panic!("{body:?} sent as {wire:?}"),
                    }
                }
                Output::Reply { msg, .. } => {
                    let text = serde_json::to_string(&msg).unwrap_or_else(|e| panic!("{e}"));
                    match ServerText::decode(&text) {
                        Ok(ServerText::Direct(back)) => assert_eq!(back, msg),
                        other => panic!("reply {text} decodes as {other:?}"),
                    }
                }
                Output::Deliver { .. } => panic!("nobody resumed, yet an entry was replayed"),
                Output::Gone { .. } | Output::SfuClose { .. } | Output::Recorder(_) => {}
            }
        }
        assert_eq!(self.room.seq(), self.seq);
        (commits, voids)
    }
}

/// Checks a relayed binary entry with both codecs; returns the commit it carries.
fn relayed(seq: u64, kind: u8, from: u64, wire: &[u8]) -> Option<mls_framing::PublicCommit> {
    let Some(ours) = MlsFrame::decode(wire) else {
        panic!("a relayed frame the coordinator's codec cannot read")
    };
    assert_eq!((ours.seq, ours.kind, ours.from), (seq, kind, from));
    let theirs = match ServerFrame::decode(wire) {
        Ok(f) => f,
        Err(e) => panic!("clients refuse a relayed frame: {e}"),
    };
    assert_eq!(theirs.encode(), wire);
    assert_eq!(
        (theirs.seq, theirs.from, theirs.handshake.kind()),
        (seq, from, kind)
    );
    match theirs.handshake {
        Handshake::KeyPackage(kp) => {
            assert!(mls_framing::expect_wire_format(&kp, WireFormat::KeyPackage).is_ok());
            None
        }
        Handshake::Commit { commit, welcome } => {
            let c = match mls_framing::parse_public_commit(&commit) {
                Ok(c) => c,
                Err(e) => panic!("a relayed commit does not parse: {e}"),
            };
            assert_eq!(welcome.is_empty(), c.adds.is_empty());
            if !welcome.is_empty() {
                assert!(mls_framing::expect_wire_format(&welcome, WireFormat::Welcome).is_ok());
            }
            Some(c)
        }
    }
}

fn u16_at(d: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([
        d.get(i).copied().unwrap_or(0),
        d.get(i + 1).copied().unwrap_or(0),
    ])
}

/// Part 2; returns how many commits the room logged (the seeds test checks that its
/// seeds reach accepted commits).
pub(crate) fn room(data: &[u8]) -> usize {
    let config = RoomConfig::default();
    let presence = config.presence_timeout;
    let mut h = Harness {
        room: Room::new("fuzz", config, 0x5a75_0fa2),
        now: Instant::now(),
        ids: [0; PEOPLE],
        joins: 0,
        seq: 0,
    };
    for i in 0..PEOPLE {
        h.ids[i] = h.join();
    }
    h.drain();

    let mut rest = data;
    let mut ops = 0;
    let mut logged = 0;
    // Each op: 1 byte (high nibble: who, low nibble: what), 2 bytes LE length, body.
    while rest.len() >= 3 && ops < 256 {
        ops += 1;
        let op = rest[0];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]]));
        let end = (3 + len).min(rest.len());
        let body = &rest[3..end];
        rest = &rest[end..];
        let slot = usize::from(op >> 4) % PEOPLE;
        // Whoever timed out or left is replaced.
        for i in 0..PEOPLE {
            if !h.room.contains(h.ids[i]) {
                h.ids[i] = h.join();
            }
        }
        h.drain();
        let who = h.ids[slot];
        let before = h.group();
        let input = match op & 0x0f {
            0 => Some(Input::Binary(Bytes::copy_from_slice(body))),
            1 => Some(Input::Binary(Bytes::from(
                protocol::client_key_package_frame(body),
            ))),
            2 => {
                let cut = usize::from(body.first().copied().unwrap_or(0)).min(body.len());
                Some(Input::Binary(Bytes::from(protocol::client_commit_frame(
                    &body[..cut],
                    &body[cut..],
                ))))
            }
            3 => {
                let kp = build::key_package_message(who, body);
                Some(Input::Binary(Bytes::from(
                    protocol::client_key_package_frame(&kp),
                )))
            }
            4 | 5 => {
                // A well-formed commit for the current group and epoch (op 5: the epoch
                // is off by the first body byte); body[1] picks whom it adds (with
                // KeyPackage filler body[2..4]), then removes of leaves body[4..].
                let (gid, epoch) = before.clone().unwrap_or((b"nogroup".to_vec(), 0));
                let epoch = if op & 0x0f == 5 {
                    epoch.wrapping_add(u64::from(body.first().copied().unwrap_or(1)))
                } else {
                    epoch
                };
                let mask = body.get(1).copied().unwrap_or(0);
                let filler = body.get(2..4).unwrap_or(&[]);
                let adds: Vec<Vec<u8>> = (0..PEOPLE)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| build::key_package(h.ids[i], filler))
                    .collect();
                let removes: Vec<u32> = body
                    .get(4..)
                    .unwrap_or(&[])
                    .iter()
                    .take(8)
                    .map(|b| u32::from(*b))
                    .collect();
                let commit = build::commit(&gid, epoch, slot as u32, who, &adds, &removes);
                let welcome = if adds.is_empty() || mask & 0x80 != 0 {
                    Vec::new()
                } else {
                    build::message(WireFormat::Welcome, b"welcome")
                };
                Some(Input::Binary(Bytes::from(protocol::client_commit_frame(
                    &commit, &welcome,
                ))))
            }
            6 => before.as_ref().map(|(gid, epoch)| {
                Input::Message(ClientMessage::Ready {
                    epoch: epoch.wrapping_add(u64::from(body.first().copied().unwrap_or(0))),
                    group_id: (body.get(1) != Some(&0)).then(|| hex::encode(gid)),
                })
            }),
            7 => before.as_ref().map(|(_, epoch)| {
                Input::Message(ClientMessage::CommitFailed {
                    epoch: epoch.wrapping_sub(u64::from(body.first().copied().unwrap_or(0))),
                })
            }),
            8 => std::str::from_utf8(body)
                .ok()
                .and_then(|t| ClientMessage::decode(t).ok())
                .filter(|m| !matches!(m, ClientMessage::Hello { .. }))
                .map(Input::Message),
            9 => Some(Input::Message(ClientMessage::Leave {})),
            _ => {
                let step = Duration::from_millis(u64::from(u16_at(body, 0)) * 4);
                h.now += step.min(presence + Duration::from_secs(1));
                h.room.handle_timeout(h.now);
                None
            }
        };
        if let Some(input) = input {
            h.room.handle(h.now, who, input);
        }
        let (commits, voids) = h.drain();
        let after = h.group();

        // Epochs move only by logged commits and voids.
        assert!(
            commits.len() <= 1,
            "one input logged {} commits",
            commits.len()
        );
        logged += commits.len();
        match (&before, &after) {
            (Some((g0, e0)), Some((g1, e1))) if g0 == g1 => {
                if let Some(c) = commits.first() {
                    assert_eq!((&c.group_id, c.epoch), (g0, *e0));
                    assert_eq!(*e1, e0 + 1);
                } else if let Some(v) = voids.last() {
                    assert_eq!(e1, v);
                } else {
                    assert_eq!(e1, e0);
                }
            }
            _ => assert!(
                commits.is_empty(),
                "a commit logged while the group changed"
            ),
        }
    }
    logged
}
