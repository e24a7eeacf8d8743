//! Malformed, oversized and flooding input hurts only the connection that sends it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Client, Got, expect_close, start};
use futures_util::SinkExt;
use satsuma_coordinator::Config;
use satsuma_coordinator::mls_framing::{WireFormat, build};
use satsuma_coordinator::protocol::{
    ClientMessage, RoomEvent, ServerMessage, client_key_package_frame, close, error_code,
};
use tokio_tungstenite::tungstenite::Message;

async fn error_code_of(c: &mut Client) -> String {
    match c.direct().await {
        ServerMessage::Error { code, .. } => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_get_errors_and_the_room_carries_on() {
    let config = Config {
        max_text_bytes: 1024,
        max_binary_bytes: 4096,
        ..Config::dev()
    };
    let server = start(config).await;
    let mut good = Client::join(&server, "bad", "good").await;
    let mut bad = Client::join(&server, "bad", "bad").await;
    good.sync().await;
    bad.sync().await;

    let cases: Vec<(Message, &str)> = vec![
        (Message::Text("{not json".into()), error_code::MALFORMED),
        (Message::Text("[1,2,3]".into()), error_code::MALFORMED),
        (
            Message::Text(r#"{"type":"teleport","to":"mars"}"#.into()),
            error_code::UNKNOWN_TYPE,
        ),
        (
            Message::Text(r#"{"type":"hand"}"#.into()),
            error_code::MALFORMED,
        ),
        (
            Message::Text(r#"{"type":"hand","raised":"yes"}"#.into()),
            error_code::MALFORMED,
        ),
        (
            Message::Text(r#"{"type":"mute","target":-1}"#.into()),
            error_code::MALFORMED,
        ),
        (
            Message::Text(r#"{"type":"mute","target":999}"#.into()),
            error_code::FORBIDDEN,
        ),
        (
            Message::Text(r#"{"type":"unpublish","track_name":"nope"}"#.into()),
            error_code::NOT_FOUND,
        ),
        (
            Message::Text(r#"{"type":"hello","v":1,"token":"x"}"#.into()),
            error_code::ALREADY_JOINED,
        ),
        (
            Message::Text(
                format!(
                    r#"{{"type":"hand","raised":true,"pad":"{}"}}"#,
                    "x".repeat(2000)
                )
                .into(),
            ),
            error_code::TOO_LARGE,
        ),
        (Message::Binary(vec![].into()), error_code::MALFORMED),
        (
            Message::Binary(vec![7, 1, 2].into()),
            error_code::UNKNOWN_TYPE,
        ),
        (
            Message::Binary(vec![1, 0, 1, 0, 2].into()),
            error_code::MLS_FRAMING,
        ),
        (Message::Binary(vec![1; 5000].into()), error_code::TOO_LARGE),
    ];
    for (msg, expected) in cases {
        let shown = format!("{msg:?}").chars().take(60).collect::<String>();
        bad.ws.send(msg).await.unwrap();
        assert_eq!(error_code_of(&mut bad).await, expected, "for {shown}");
    }
    // A commit frame from a non-member: `commit_rejected`, whatever its bytes.
    bad.ws
        .send(Message::Binary(vec![2, 0xff, 0xff, 0xff, 0xff].into()))
        .await
        .unwrap();
    assert!(matches!(
        bad.direct().await,
        ServerMessage::CommitRejected { epoch: None, reason, .. } if reason == "not_member"
    ));
    // Still connected, and its valid messages still count.
    bad.send(ClientMessage::Hand { raised: true }).await;
    let bad_id = bad.id;
    good.until_event(|e| matches!(e, RoomEvent::Hand { id, raised: true } if *id == bad_id))
        .await;
    // Nothing from the bad input reached the log.
    assert!(good.log.iter().all(|g| match g {
        Got::Event(e) => matches!(
            e.event,
            RoomEvent::Hand { .. } | RoomEvent::Joined { .. } | RoomEvent::Creator { .. }
        ),
        _ => false,
    }));

    // A frame beyond the transport's hard limit closes that connection only.
    let huge = vec![1u8; 1 << 20];
    let _ = bad.ws.send(Message::Binary(huge.into())).await;
    let (code, _) = expect_close(&mut bad.ws).await;
    assert_eq!(code, close::MESSAGE_TOO_BIG);
    good.send(ClientMessage::Hand { raised: false }).await;
    good.sync().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_cut_off() {
    let config = Config {
        rate_per_second: 20,
        rate_burst: 20,
        flood_close_after: 50,
        ..Config::dev()
    };
    let server = start(config).await;
    let mut good = Client::join(&server, "flood", "good").await;
    let mut flooder = Client::join(&server, "flood", "flooder").await;
    good.sync().await;
    flooder.sync().await;
    // Pipeline a flood of numbered KeyPackages without reading.
    for i in 0..200u32 {
        let kp = build::message(WireFormat::KeyPackage, &i.to_be_bytes());
        let _ = flooder
            .ws
            .send(Message::Binary(client_key_package_frame(&kp).into()))
            .await;
    }
    let mut rate_limited = false;
    let code = loop {
        match common::recv(&mut flooder.ws).await {
            Got::Direct(ServerMessage::Error { code, .. }) if code == error_code::RATE_LIMITED => {
                rate_limited = true
            }
            Got::Close(code, _) => break code,
            _ => {}
        }
    };
    assert!(
        rate_limited,
        "closed with {code} before any rate_limited notice"
    );
    assert_eq!(code, close::FLOOD);
    // Everything accepted before the cut-off reached the others, in order; the room carries on.
    good.send(ClientMessage::Hand { raised: true }).await;
    let good_id = good.id;
    good.until_event(|e| matches!(e, RoomEvent::Hand { id, raised: true } if *id == good_id))
        .await;
    let accepted: Vec<u32> = good
        .log
        .iter()
        .filter_map(|g| match g {
            Got::Mls(f) if f.from == flooder.id => {
                Some(u32::from_be_bytes(f.payload[4..8].try_into().unwrap()))
            }
            _ => None,
        })
        .collect();
    // The bucket held 20 tokens; the ping of sync() took one.
    assert!(
        accepted.len() >= 19,
        "the burst is accepted, got {}",
        accepted.len()
    );
    assert!(accepted.len() < 200, "the flood was limited");
    assert_eq!(&accepted[..19], &(0..19).collect::<Vec<u32>>()[..]);
    assert!(
        accepted.windows(2).all(|w| w[0] < w[1]),
        "accepted messages keep their order"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_gets_no_room() {
    let config = Config {
        hello_timeout: std::time::Duration::from_millis(300),
        ..Config::dev()
    };
    let server = start(config).await;
    let mut ws = common::raw(&server, "quiet").await;
    assert_eq!(expect_close(&mut ws).await.0, close::BAD_HELLO);
    let mut ws = common::raw(&server, "quiet").await;
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(expect_close(&mut ws).await.0, close::BAD_HELLO);
    // Invalid room names are refused at the HTTP upgrade.
    let url = format!("ws://{}/ws/{}", server.local_addr(), "bad%20name");
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_refuses_upgrades() {
    let config = Config {
        max_connections: 2,
        ..Config::dev()
    };
    let server = start(config).await;
    let mut alice = Client::join(&server, "cap", "alice").await;
    let _bob = Client::join(&server, "cap", "bob").await;
    let refused = tokio_tungstenite::connect_async(server.ws_url("cap")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503)
        }
        other => panic!("expected HTTP 503, got {:?}", other.map(|_| ())),
    }
    alice.sync().await;
    server.shutdown().await;
}
