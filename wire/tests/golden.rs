//! Golden JSON of every message: each value serializes to exactly the bytes the browser
//! client and older peers see today, and those bytes parse back to the same value.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;

use satsuma_wire::IceServer;
use satsuma_wire::realtime::*;
use satsuma_wire::relay::Entry;
use satsuma_wire::room::*;

fn golden<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: T, json: &str) {
    assert_eq!(serde_json::to_string(&value).unwrap(), json, "{value:?}");
    assert_eq!(serde_json::from_str::<T>(json).unwrap(), value, "{json}");
}

fn limits() -> Limits {
    Limits {
        heartbeat_interval_ms: 5000,
        presence_timeout_ms: 15000,
        max_text_bytes: 4096,
        max_binary_bytes: 262144,
        messages_per_second: 20,
        replay_window: 1024,
        max_key_package_bytes: 16384,
        bytes_per_second: 65536,
    }
}

const LIMITS: &str = r#"{"heartbeat_interval_ms":5000,"presence_timeout_ms":15000,"max_text_bytes":4096,"max_binary_bytes":262144,"messages_per_second":20,"replay_window":1024,"max_key_package_bytes":16384,"bytes_per_second":65536}"#;

#[test]
fn client_messages() {
    let cases: Vec<(ClientMessage, &str)> = vec![
        (
            ClientMessage::Hello {
                v: 1,
                token: Some("jwt".into()),
                resume: None,
                test_visible_only_to: None,
            },
            r#"{"type":"hello","v":1,"token":"jwt"}"#,
        ),
        (
            ClientMessage::Hello {
                v: 1,
                token: None,
                resume: Some(Resume {
                    participant_id: 3,
                    resume_token: "rt".into(),
                    last_seq: 9,
                }),
                test_visible_only_to: Some(1),
            },
            r#"{"type":"hello","v":1,"resume":{"participant_id":3,"resume_token":"rt","last_seq":9},"test_visible_only_to":1}"#,
        ),
        (
            ClientMessage::Ping { t: Some(5) },
            r#"{"type":"ping","t":5}"#,
        ),
        (ClientMessage::Ping { t: None }, r#"{"type":"ping"}"#),
        (ClientMessage::Leave {}, r#"{"type":"leave"}"#),
        (
            ClientMessage::Publish {
                session_id: "s".into(),
                track_name: "cam".into(),
                kind: TrackKind::Video,
                enabled: true,
            },
            r#"{"type":"publish","session_id":"s","track_name":"cam","kind":"video","enabled":true}"#,
        ),
        (
            ClientMessage::Unpublish {
                track_name: "cam".into(),
            },
            r#"{"type":"unpublish","track_name":"cam"}"#,
        ),
        (
            ClientMessage::SetTrack {
                track_name: "mic".into(),
                enabled: false,
            },
            r#"{"type":"set_track","track_name":"mic","enabled":false}"#,
        ),
        (
            ClientMessage::Hand { raised: true },
            r#"{"type":"hand","raised":true}"#,
        ),
        (
            ClientMessage::Speaking { speaking: false },
            r#"{"type":"speaking","speaking":false}"#,
        ),
        (
            ClientMessage::Codecs {
                video: vec!["vp8".into(), "h264".into()],
                sending: Some("vp8".into()),
            },
            r#"{"type":"codecs","video":["vp8","h264"],"sending":"vp8"}"#,
        ),
        (
            ClientMessage::Mute {
                target: 2,
                kind: TrackKind::Screenshare,
            },
            r#"{"type":"mute","target":2,"kind":"screenshare"}"#,
        ),
        (
            ClientMessage::Remove { target: 2 },
            r#"{"type":"remove","target":2}"#,
        ),
        (
            ClientMessage::Lock { locked: true },
            r#"{"type":"lock","locked":true}"#,
        ),
        (
            ClientMessage::Record {
                action: RecordAction::Start,
            },
            r#"{"type":"record","action":"start"}"#,
        ),
        (
            ClientMessage::Record {
                action: RecordAction::Stop,
            },
            r#"{"type":"record","action":"stop"}"#,
        ),
        (
            ClientMessage::SetCap {
                max_participants: Some(8),
            },
            r#"{"type":"set_cap","max_participants":8}"#,
        ),
        (
            ClientMessage::SetCap {
                max_participants: None,
            },
            r#"{"type":"set_cap","max_participants":null}"#,
        ),
        (
            ClientMessage::Ready {
                epoch: 4,
                group_id: Some("0a0b".into()),
            },
            r#"{"type":"ready","epoch":4,"group_id":"0a0b"}"#,
        ),
        (
            ClientMessage::CommitFailed { epoch: 4 },
            r#"{"type":"commit_failed","epoch":4}"#,
        ),
    ];
    let mut seen: Vec<&str> = Vec::new();
    for (m, json) in cases {
        seen.push(m.type_name());
        assert_eq!(ClientMessage::decode(json), Ok(m.clone()));
        golden(m, json);
    }
    for t in ClientMessage::TYPES {
        assert!(seen.contains(t), "no golden JSON for client message {t}");
    }
    // Defaults the web client relies on.
    assert_eq!(
        ClientMessage::decode(
            r#"{"type":"publish","session_id":"s","track_name":"a","kind":"audio"}"#
        ),
        Ok(ClientMessage::Publish {
            session_id: "s".into(),
            track_name: "a".into(),
            kind: TrackKind::Audio,
            enabled: true
        })
    );
    // The web client's resume hello carries the room name too; it is ignored.
    assert!(matches!(
        ClientMessage::decode(
            r#"{"type":"hello","v":1,"resume":{"room":"r","participant_id":1,"resume_token":"t","last_seq":0}}"#
        ),
        Ok(ClientMessage::Hello {
            resume: Some(_),
            ..
        })
    ));
}

#[test]
fn direct_replies() {
    let participant = ParticipantInfo {
        id: 1,
        name: "Ann".into(),
        joined_at_ms: 7,
        host: true,
        sfu_sessions: vec!["s".into()],
        tracks: vec![TrackInfo {
            track_name: "cam".into(),
            session_id: "s".into(),
            kind: TrackKind::Video,
            enabled: true,
        }],
        hand_raised: false,
        speaking: false,
        codecs: Some(vec!["vp8".into()]),
        sending: None,
        away: false,
        recorder: false,
    };
    let cases: Vec<(ServerMessage, String)> = vec![
        (
            ServerMessage::Welcome {
                v: 1,
                room: "r".into(),
                participant_id: 1,
                resume_token: "rt".into(),
                seq: 3,
                snapshot: Snapshot {
                    participants: vec![participant],
                    locked: false,
                    max_participants: 50,
                    group: Some(GroupInfo {
                        group_id: "0a".into(),
                        epoch: 2,
                        creator: 1,
                    }),
                },
                limits: limits(),
                ice_servers: vec![IceServer {
                    urls: vec!["turn:h:3478".into()],
                    username: Some("u".into()),
                    credential: Some("c".into()),
                }],
                ice_expires_at: Some(99),
            },
            format!(
                r#"{{"type":"welcome","v":1,"room":"r","participant_id":1,"resume_token":"rt","seq":3,"snapshot":{{"participants":[{{"id":1,"name":"Ann","joined_at_ms":7,"host":true,"sfu_sessions":["s"],"tracks":[{{"track_name":"cam","session_id":"s","kind":"video","enabled":true}}],"hand_raised":false,"speaking":false,"codecs":["vp8"],"away":false}}],"locked":false,"max_participants":50,"group":{{"group_id":"0a","epoch":2,"creator":1}}}},"limits":{LIMITS},"ice_servers":[{{"urls":["turn:h:3478"],"username":"u","credential":"c"}}],"ice_expires_at":99}}"#
            ),
        ),
        (
            ServerMessage::Resumed {
                participant_id: 1,
                from_seq: 3,
                seq: 5,
                limits: limits(),
                ice_servers: vec![],
                ice_expires_at: None,
            },
            format!(
                r#"{{"type":"resumed","participant_id":1,"from_seq":3,"seq":5,"limits":{LIMITS},"ice_servers":[]}}"#
            ),
        ),
        (
            ServerMessage::Pong { t: Some(2) },
            r#"{"type":"pong","t":2}"#.into(),
        ),
        (
            ServerMessage::Error {
                code: error_code::NOT_MEMBER.into(),
                message: "m".into(),
                refused: Some("commit_failed".into()),
            },
            r#"{"type":"error","code":"not_member","message":"m","refused":"commit_failed"}"#
                .into(),
        ),
        (
            ServerMessage::CommitRejected {
                epoch: Some(1),
                current_epoch: None,
                reason: commit_rejected::STALE_EPOCH.into(),
                detail: None,
            },
            r#"{"type":"commit_rejected","epoch":1,"current_epoch":null,"reason":"stale_epoch"}"#
                .into(),
        ),
        (
            ServerMessage::Layers {
                session_id: "s".into(),
                track_name: "cam".into(),
                max_rid: Some("h".into()),
            },
            r#"{"type":"layers","session_id":"s","track_name":"cam","max_rid":"h"}"#.into(),
        ),
        (
            ServerMessage::Move {
                sessions: vec!["s".into()],
                reason: move_reason::DRAINING.into(),
            },
            r#"{"type":"move","sessions":["s"],"reason":"draining"}"#.into(),
        ),
    ];
    let mut seen = Vec::new();
    for (m, json) in cases {
        seen.push(m.type_name());
        assert_eq!(
            ServerText::decode(&json).unwrap(),
            ServerText::Direct(m.clone())
        );
        golden(m, &json);
    }
    assert_eq!(
        seen,
        ServerMessage::TYPES,
        "one golden per direct reply, in order"
    );
}

#[test]
fn log_entries() {
    let track = TrackInfo {
        track_name: "mic".into(),
        session_id: "s".into(),
        kind: TrackKind::Audio,
        enabled: false,
    };
    let cases: Vec<(RoomEvent, &str)> = vec![
        (
            RoomEvent::Joined {
                id: 2,
                name: "Bo".into(),
                joined_at_ms: 8,
                host: false,
                recorder: false,
            },
            r#""type":"joined","id":2,"name":"Bo","joined_at_ms":8,"host":false"#,
        ),
        (
            RoomEvent::Left {
                id: 2,
                reason: LeaveReason::ResumeFailed,
            },
            r#""type":"left","id":2,"reason":"resume_failed""#,
        ),
        (RoomEvent::Away { id: 2 }, r#""type":"away","id":2"#),
        (
            RoomEvent::Back { id: 2, from_seq: 4 },
            r#""type":"back","id":2,"from_seq":4"#,
        ),
        (
            RoomEvent::Creator {
                id: 1,
                group_id: "0a".into(),
            },
            r#""type":"creator","id":1,"group_id":"0a""#,
        ),
        (
            RoomEvent::Execute { epoch: 3 },
            r#""type":"execute","epoch":3"#,
        ),
        (
            RoomEvent::CommitVoid { epoch: 3, from: 2 },
            r#""type":"commit_void","epoch":3,"from":2"#,
        ),
        (
            RoomEvent::Session {
                id: 1,
                session_id: "s".into(),
            },
            r#""type":"session","id":1,"session_id":"s""#,
        ),
        (
            RoomEvent::Published {
                id: 1,
                track: track.clone(),
            },
            r#""type":"published","id":1,"track":{"track_name":"mic","session_id":"s","kind":"audio","enabled":false}"#,
        ),
        (
            RoomEvent::Unpublished {
                id: 1,
                track_name: "mic".into(),
            },
            r#""type":"unpublished","id":1,"track_name":"mic""#,
        ),
        (
            RoomEvent::TrackEnabled {
                id: 1,
                track_name: "mic".into(),
                enabled: true,
            },
            r#""type":"track_enabled","id":1,"track_name":"mic","enabled":true"#,
        ),
        (
            RoomEvent::Muted {
                id: 2,
                by: 1,
                kind: TrackKind::Audio,
            },
            r#""type":"muted","id":2,"by":1,"kind":"audio""#,
        ),
        (
            RoomEvent::Hand {
                id: 2,
                raised: true,
            },
            r#""type":"hand","id":2,"raised":true"#,
        ),
        (
            RoomEvent::Speaking {
                id: 2,
                speaking: true,
            },
            r#""type":"speaking","id":2,"speaking":true"#,
        ),
        (
            RoomEvent::Codecs {
                id: 2,
                video: vec!["vp9".into()],
                sending: None,
            },
            r#""type":"codecs","id":2,"video":["vp9"]"#,
        ),
        (RoomEvent::Host { id: 2 }, r#""type":"host","id":2"#),
        (
            RoomEvent::Locked {
                locked: true,
                by: 1,
            },
            r#""type":"locked","locked":true,"by":1"#,
        ),
        (
            RoomEvent::Cap {
                max_participants: 4,
                by: 1,
            },
            r#""type":"cap","max_participants":4,"by":1"#,
        ),
    ];
    let mut seen = Vec::new();
    for (event, body) in cases {
        seen.push(event.type_name());
        // The E2EE core reads exactly the entries of `Entry::JSON_TYPES`.
        assert_eq!(
            Entry::from_event(12, &event).unwrap().is_some(),
            Entry::JSON_TYPES.contains(&event.type_name()),
            "{event:?}"
        );
        let frame = EventFrame { seq: 12, event };
        let text = format!(r#"{{"seq":12,{body}}}"#);
        assert_eq!(
            Entry::parse_json(&text).unwrap(),
            Entry::from_event(12, &frame.event).unwrap()
        );
        let json = format!(r#"{{"seq":12,{body}}}"#);
        assert_eq!(
            ServerText::decode(&json).unwrap(),
            ServerText::Event(frame.clone())
        );
        golden(frame, &json);
    }
    assert_eq!(seen, RoomEvent::TYPES, "one golden per log entry, in order");
}

#[test]
fn realtime_bodies() {
    golden(
        TracksRequest {
            session_description: Some(SessionDescription::offer("v=0")),
            tracks: vec![TrackObject::local("0", "cam")],
        },
        r#"{"sessionDescription":{"type":"offer","sdp":"v=0"},"tracks":[{"location":"local","mid":"0","trackName":"cam"}]}"#,
    );
    let mut pull = TrackObject::remote("s", "cam");
    pull.simulcast = Some(Simulcast {
        preferred_rid: Some("h".into()),
        ..Simulcast::default()
    });
    golden(
        TracksRequest {
            session_description: None,
            tracks: vec![pull],
        },
        r#"{"tracks":[{"location":"remote","trackName":"cam","sessionId":"s","simulcast":{"preferredRid":"h"}}]}"#,
    );
    golden(
        NewSessionResponse {
            session_id: "abc".into(),
            session_description: None,
        },
        r#"{"sessionId":"abc"}"#,
    );
    golden(
        TracksResponse {
            requires_immediate_renegotiation: true,
            session_description: Some(SessionDescription::answer("a")),
            tracks: vec![
                TrackResult {
                    track_name: Some("cam".into()),
                    mid: Some("0".into()),
                    ..TrackResult::default()
                },
                TrackResult {
                    track_name: Some("x".into()),
                    ..TrackResult::default()
                }
                .with_error("not_found", "no such track"),
            ],
        },
        r#"{"requiresImmediateRenegotiation":true,"sessionDescription":{"type":"answer","sdp":"a"},"tracks":[{"trackName":"cam","mid":"0"},{"trackName":"x","errorCode":"not_found","errorDescription":"no such track"}]}"#,
    );
    golden(
        RenegotiateRequest {
            session_description: SessionDescription::answer("a"),
        },
        r#"{"sessionDescription":{"type":"answer","sdp":"a"}}"#,
    );
    golden(RenegotiateResponse::default(), "{}");
    golden(
        CloseTracksRequest {
            tracks: vec![CloseTrackObject::by_mid("2")],
            session_description: None,
            force: true,
        },
        r#"{"tracks":[{"mid":"2"}],"force":true}"#,
    );
    golden(
        CloseTracksResponse {
            session_description: None,
            tracks: vec![TrackResult {
                mid: Some("2".into()),
                ..TrackResult::default()
            }],
            requires_immediate_renegotiation: false,
        },
        r#"{"tracks":[{"mid":"2"}],"requiresImmediateRenegotiation":false}"#,
    );
    golden(
        UpdateTracksResponse {
            requires_immediate_renegotiation: false,
            tracks: vec![],
        },
        r#"{"requiresImmediateRenegotiation":false,"tracks":[]}"#,
    );
    golden(
        SessionState {
            tracks: vec![TrackState {
                location: Location::Remote,
                mid: "1".into(),
                track_name: "mic".into(),
                session_id: Some("p".into()),
                status: TrackStatus::Active,
                audio_level: Some(-40),
                speaking: Some(true),
            }],
            active_speaker: Some(ActiveSpeaker {
                session_id: "p".into(),
                track_name: "mic".into(),
            }),
            data_channels: vec![],
        },
        r#"{"tracks":[{"location":"remote","mid":"1","trackName":"mic","sessionId":"p","status":"active","audioLevel":-40,"speaking":true}],"activeSpeaker":{"sessionId":"p","trackName":"mic"}}"#,
    );
    golden(
        SessionState {
            tracks: vec![],
            active_speaker: None,
            data_channels: vec![DataChannelState {
                location: Location::Remote,
                data_channel_name: "chat".into(),
                session_id: Some("p".into()),
                id: 3,
                status: TrackStatus::Initializing,
            }],
        },
        r#"{"tracks":[],"dataChannels":[{"location":"remote","dataChannelName":"chat","sessionId":"p","id":3,"status":"initializing"}]}"#,
    );
    golden(
        DataChannelsRequest {
            data_channels: vec![
                DataChannelObject::local("chat"),
                DataChannelObject::remote("p", "chat"),
            ],
        },
        r#"{"dataChannels":[{"location":"local","dataChannelName":"chat"},{"location":"remote","dataChannelName":"chat","sessionId":"p"}]}"#,
    );
    golden(
        DataChannelsResponse {
            data_channels: vec![
                DataChannelResult {
                    location: Some(Location::Local),
                    data_channel_name: Some("chat".into()),
                    id: Some(1),
                    ..Default::default()
                },
                DataChannelResult {
                    location: Some(Location::Remote),
                    data_channel_name: Some("x".into()),
                    session_id: Some("p".into()),
                    ..Default::default()
                }
                .with_error("not_found", "no"),
            ],
        },
        r#"{"dataChannels":[{"location":"local","dataChannelName":"chat","id":1},{"location":"remote","dataChannelName":"x","sessionId":"p","errorCode":"not_found","errorDescription":"no"}]}"#,
    );
    golden(
        ErrorBody {
            error_code: "bad_request".into(),
            error_description: "no".into(),
        },
        r#"{"errorCode":"bad_request","errorDescription":"no"}"#,
    );
}

#[test]
fn realtime_bodies_are_read_leniently() {
    let r: TracksResponse = serde_json::from_str(
        r#"{"requiresImmediateRenegotiation":true,"sessionDescription":{"type":"offer","sdp":"x"},
            "tracks":[{"sessionId":"s","trackName":"a","mid":"1","extra":5}],"other":1}"#,
    )
    .unwrap();
    assert!(r.requires_immediate_renegotiation);
    assert_eq!(r.tracks[0].mid.as_deref(), Some("1"));
    let r: TracksResponse = serde_json::from_str("{}").unwrap();
    assert!(r.tracks.is_empty() && r.session_description.is_none());
    // Only a body with `errorCode` is an error body.
    assert!(serde_json::from_str::<ErrorBody>(r#"{"sessionId":"abc"}"#).is_err());
    assert_eq!(
        serde_json::from_str::<ErrorBody>(r#"{"errorCode":"x"}"#).unwrap(),
        ErrorBody {
            error_code: "x".into(),
            error_description: String::new()
        }
    );
    // Requests: a location other than local/remote is refused.
    assert!(serde_json::from_str::<TracksRequest>(r#"{"tracks":[{"location":"x"}]}"#).is_err());
}
