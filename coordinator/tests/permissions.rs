//! Tokens and host rights are enforced per message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Client, Got, claims, expect_close, raw, send_json, start_dev};
use satsuma_coordinator::auth::{Claims, TokenKeys, unix_now};
use satsuma_coordinator::protocol::{
    ClientMessage, LeaveReason, PROTOCOL_VERSION, RoomEvent, ServerMessage, TrackKind, close,
    error_code,
};

async fn hello_close(
    server: &satsuma_coordinator::ServerHandle,
    room: &str,
    token: &str,
) -> (u16, String) {
    let mut ws = raw(server, room).await;
    send_json(
        &mut ws,
        &ClientMessage::Hello {
            v: PROTOCOL_VERSION,
            token: Some(token.to_owned()),
            resume: None,
            test_visible_only_to: None,
        },
    )
    .await;
    expect_close(&mut ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked() {
    let server = start_dev().await;
    // A token for room A is refused in room B.
    let t = common::token(&server, "room-a", "alice");
    let (code, reason) = hello_close(&server, "room-b", &t).await;
    assert_eq!(code, close::UNAUTHORIZED);
    assert!(reason.contains("another room"), "{reason}");
    // Expired.
    let expired = Claims {
        exp: unix_now() - 3600,
        ..claims("room-a", "alice", &["publish"])
    };
    let (code, reason) =
        hello_close(&server, "room-a", &server.mint_token(&expired).unwrap()).await;
    assert_eq!(
        (code, reason.as_str()),
        (close::UNAUTHORIZED, "token expired")
    );
    // Signed with another secret.
    let forged = TokenKeys::new(b"not-the-secret", 0)
        .mint(&claims("room-a", "mallory", &["host"]))
        .unwrap();
    let (code, reason) = hello_close(&server, "room-a", &forged).await;
    assert_eq!(
        (code, reason.as_str()),
        (close::UNAUTHORIZED, "invalid token")
    );
    // Garbage and wrong versions.
    let (code, _) = hello_close(&server, "room-a", "not.a.jwt").await;
    assert_eq!(code, close::UNAUTHORIZED);
    let mut ws = raw(&server, "room-a").await;
    send_json(
        &mut ws,
        &ClientMessage::Hello {
            v: 99,
            token: Some(t.clone()),
            resume: None,
            test_visible_only_to: None,
        },
    )
    .await;
    assert_eq!(expect_close(&mut ws).await.0, close::UNSUPPORTED_VERSION);
    let mut ws = raw(&server, "room-a").await;
    send_json(&mut ws, &ClientMessage::Ping { t: None }).await;
    assert_eq!(expect_close(&mut ws).await.0, close::BAD_HELLO);
    // None of this created a room or a participant: the right token still works and is first.
    let alice = Client::join_with_token(&server, "room-a", &t).await;
    assert_eq!(alice.id, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_hosts_moderate() {
    let server = start_dev().await;
    let mut host = Client::join(&server, "mod", "host").await; // first joiner is host
    let mut bob = Client::join(&server, "mod", "bob").await;
    let mut carol = Client::join(&server, "mod", "carol").await;
    carol.sync().await;
    bob.sync().await;

    // A non-host cannot mute, remove, lock or cap.
    for m in [
        ClientMessage::Mute {
            target: carol.id,
            kind: TrackKind::Audio,
        },
        ClientMessage::Remove { target: carol.id },
        ClientMessage::Lock { locked: true },
        ClientMessage::SetCap {
            max_participants: Some(2),
        },
    ] {
        bob.send(m).await;
        match bob.direct().await {
            ServerMessage::Error { code, .. } => assert_eq!(code, error_code::FORBIDDEN),
            other => panic!("{other:?}"),
        }
    }
    // The host can mute Carol; everyone sees it.
    host.send(ClientMessage::Mute {
        target: carol.id,
        kind: TrackKind::Audio,
    })
    .await;
    let e = carol
        .until_event(|e| matches!(e, RoomEvent::Muted { .. }))
        .await;
    assert_eq!(
        e.event,
        RoomEvent::Muted {
            id: carol.id,
            by: host.id,
            kind: TrackKind::Audio
        }
    );
    // Bob's refused messages left no trace in the log.
    assert!(!bob.log.iter().any(|g| matches!(g, Got::Event(e) if matches!(e.event, RoomEvent::Muted { by, .. } if by == bob.id))));

    // The host removes Carol: she is closed and cannot come back.
    host.send(ClientMessage::Remove { target: carol.id }).await;
    let carol_id = carol.id;
    bob.until_event(
        |e| matches!(e, RoomEvent::Left { id, reason: LeaveReason::Removed } if *id == carol_id),
    )
    .await;
    assert_eq!(expect_close(&mut carol.ws).await.0, close::REMOVED);
    let (code, _) = hello_close(&server, "mod", &common::token(&server, "mod", "carol")).await;
    assert_eq!(code, close::REMOVED);

    // Locked: a newcomer is refused, a host-token holder is not.
    host.send(ClientMessage::Lock { locked: true }).await;
    bob.until_event(|e| matches!(e, RoomEvent::Locked { locked: true, .. }))
        .await;
    let (code, _) = hello_close(&server, "mod", &common::token(&server, "mod", "dave")).await;
    assert_eq!(code, close::ROOM_LOCKED);
    let host_token = server
        .mint_token(&claims("mod", "erin", &["host"]))
        .unwrap();
    let erin = Client::join_with_token(&server, "mod", &host_token).await;
    assert!(erin.id > carol_id);
    server.shutdown().await;
}
