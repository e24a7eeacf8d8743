//! Replays every fuzz corpus input (`fuzz/corpus/<target>/*`, kept in the repository)
//! through the same body the cargo-fuzz target runs (`fuzz/bodies/<target>.rs`), so CI
//! re-checks every input a fuzzing run ever kept, on stable and without libFuzzer.
//!
//! The seeds are built here from real requests (offers and answers of real str0m peers,
//! the bodies the API tests send) and replayed too; `SATSUMA_FUZZ_WRITE_SEEDS=1` also
//! writes them into the corpus directory (what `scripts/fuzz.sh` starts from).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/bodies/api_json.rs"]
mod api_json;
#[path = "../fuzz/bodies/tcp_deframe.rs"]
mod tcp_deframe;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use satsuma_sfu::ids::SessionId;
use satsuma_sfu::session::Session;
use serde_json::json;
use str0m::Candidate;
use str0m::Rtc;
use str0m::change::SdpOffer;
use str0m::media::{Direction, MediaKind};

type Body = fn(&[u8]);

const TARGETS: [(&str, Body); 2] = [
    ("api_json", api_json::run),
    ("tcp_deframe", tcp_deframe::run),
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

/// A real offer of a client pushing audio and video, and the SFU session's answer.
fn real_offer_and_answer() -> (String, String) {
    let now = Instant::now();
    let mut client = Rtc::builder().set_rtp_mode(true).build(now);
    client.add_local_candidate(Candidate::host("127.0.0.1:40000".parse().unwrap(), "udp").unwrap());
    let mut change = client.sdp_api();
    change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, _pending) = change.apply().unwrap();
    let offer = offer.to_sdp_string();
    let mut sfu = Session::new(SessionId([1; 16]), Arc::from("app"), &[], 0, now);
    let answer = sfu
        .rtc
        .sdp_api()
        .accept_offer(SdpOffer::from_sdp_string(&offer).unwrap())
        .unwrap();
    (offer, answer.to_sdp_string())
}

fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let (offer, answer) = real_offer_and_answer();
    let session = "0123456789abcdef0123456789abcdef";
    let bodies = [
        (
            "sessions-new-offer",
            json!({"sessionDescription": {"type": "offer", "sdp": offer}}),
        ),
        ("sessions-new-empty", json!({})),
        (
            "tracks-new-push",
            json!({
                "sessionDescription": {"type": "offer", "sdp": offer},
                "tracks": [
                    {"location": "local", "mid": "0", "trackName": "mic"},
                    {"location": "local", "mid": "1", "trackName": "cam"}
                ]
            }),
        ),
        (
            "tracks-new-pull",
            json!({"tracks": [
                {"location": "remote", "sessionId": session, "trackName": "cam",
                 "simulcast": {"preferredRid": "h", "priorityOrdering": "asciibetical",
                               "ridNotAvailable": "asciibetical"}}
            ]}),
        ),
        (
            "renegotiate-answer",
            json!({"sessionDescription": {"type": "answer", "sdp": answer}}),
        ),
        (
            "tracks-close",
            json!({"tracks": [{"mid": "0"}, {"mid": "1"}], "force": true}),
        ),
        (
            "tracks-close-offer",
            json!({"tracks": [{"mid": "1"}], "sessionDescription": {"type": "offer", "sdp": offer}}),
        ),
        (
            "tracks-update",
            json!({"tracks": [{"mid": "2", "simulcast": {"preferredRid": "l"}}]}),
        ),
        (
            "datachannels-new",
            json!({"dataChannels": [
                {"location": "local", "dataChannelName": "chat"},
                {"location": "remote", "sessionId": session, "dataChannelName": "chat"}
            ]}),
        ),
        (
            "datachannels-close",
            json!({"dataChannels": [{"id": 1}, {"location": "local", "dataChannelName": "chat"}]}),
        ),
    ];
    let mut out: Vec<(&'static str, String, Vec<u8>)> = bodies
        .into_iter()
        .map(|(name, v)| ("api_json", name.to_owned(), v.to_string().into_bytes()))
        .collect();
    out.push(("api_json", "blank".into(), b" \n".to_vec()));
    out.push(("api_json", "null".into(), b"null".to_vec()));
    out.push((
        "api_json",
        "wrong-type".into(),
        br#"{"tracks": 3}"#.to_vec(),
    ));
    out.extend(tcp_seeds());
    out
}

/// ICE-TCP streams: `[max frame selector, read size selector, stream…]` (see the body).
fn tcp_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let user = b"fuzz:peer";
    let mut stun = vec![0, 1, 0, 16, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[3; 12]);
    stun.extend_from_slice(&[0, 6, 0, user.len() as u8]);
    stun.extend_from_slice(user);
    stun.extend_from_slice(&[0; 3]);
    let frame = |packets: &[&[u8]]| {
        let mut out = Vec::new();
        for p in packets {
            satsuma_sfu::ice_tcp::frame_into(&mut out, p).unwrap();
        }
        out
    };
    let dtls = [22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4];
    let rtp = [0x80u8, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 0xf8, 0xff];
    let session = frame(&[&stun, &dtls, &rtp, &stun]);
    let with = |max: u8, chunk: u8, stream: &[u8]| {
        let mut v = vec![max, chunk];
        v.extend_from_slice(stream);
        v
    };
    let mut garbage = frame(&[&stun]);
    garbage.extend_from_slice(b"\x00\x10GET / HTTP/1.1\r\n");
    vec![
        (
            "tcp_deframe",
            "session-answered".into(),
            with(255, 0, &session),
        ),
        (
            "tcp_deframe",
            "session-unanswered".into(),
            with(255, 1, &session),
        ),
        ("tcp_deframe", "split-reads".into(), with(100, 6, &session)),
        ("tcp_deframe", "garbage".into(), with(255, 62, &garbage)),
        (
            "tcp_deframe",
            "oversize".into(),
            with(2, 10, &[0xff, 0xff, 0, 1]),
        ),
        (
            "tcp_deframe",
            "empty-frame".into(),
            with(9, 3, &[0, 0, 1, 2]),
        ),
        (
            "tcp_deframe",
            "rtp-first".into(),
            with(9, 3, &frame(&[&rtp])),
        ),
    ]
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
}
