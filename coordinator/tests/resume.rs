//! Reconnect and resume: same participant id, missed entries replayed, nothing lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Client, Got, expect_close, start};
use satsuma_coordinator::Config;
use satsuma_coordinator::protocol::{ClientMessage, LeaveReason, RoomEvent, ServerMessage, close};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_missed_entries() {
    let server = start(Config::dev()).await;
    let mut alice = Client::join(&server, "resume", "alice").await;
    let mut bob = Client::join(&server, "resume", "bob").await;
    let bob_id = bob.id;
    bob.until_event(|e| matches!(e, RoomEvent::Joined { id, .. } if *id == bob_id))
        .await;
    bob.sync().await;
    let seen = bob.last_seq;

    // Bob's connection drops.
    bob.ws.close(None).await.unwrap();
    drop(std::mem::replace(
        &mut bob.ws,
        common::raw(&server, "resume").await,
    ));

    // Alice keeps talking.
    for i in 0..10 {
        alice.send(ClientMessage::Hand { raised: i % 2 == 0 }).await;
    }
    alice.sync().await;
    let sent_until = alice.last_seq;
    assert!(sent_until >= seen + 10);

    // Bob resumes with the same id and gets exactly what he missed, in order.
    let reply = bob.resume(&server, "resume").await;
    match reply {
        Got::Direct(ServerMessage::Resumed {
            participant_id,
            from_seq,
            seq,
            ..
        }) => {
            assert_eq!(participant_id, bob_id);
            assert_eq!(from_seq, seen);
            assert!(seq >= sent_until);
        }
        other => panic!("expected resumed, got {other:?}"),
    }
    bob.catch_up(sent_until).await;
    let hands: Vec<bool> = bob
        .log
        .iter()
        .filter_map(|g| match g {
            Got::Event(e) if e.seq > seen => match e.event {
                RoomEvent::Hand { id, raised } if id == alice.id => Some(raised),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(hands, (0..10).map(|i| i % 2 == 0).collect::<Vec<_>>());

    // Nobody saw Bob leave; he keeps working on the new connection.
    assert!(
        !alice
            .log
            .iter()
            .any(|g| matches!(g, Got::Event(e) if matches!(e.event, RoomEvent::Left { .. })))
    );
    bob.send(ClientMessage::Hand { raised: true }).await;
    alice
        .until_event(|e| matches!(e, RoomEvent::Hand { id, raised: true } if *id == bob_id))
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_a_second_connection_replaces_the_first() {
    let server = start(Config::dev()).await;
    let mut alice = Client::join(&server, "replace", "alice").await;
    alice.sync().await;
    let mut old = std::mem::replace(&mut alice.ws, common::raw(&server, "replace").await);
    let reply = alice.resume(&server, "replace").await;
    assert!(matches!(reply, Got::Direct(ServerMessage::Resumed { .. })));
    let (code, _) = expect_close(&mut old).await;
    assert_eq!(code, close::REPLACED);
    alice.sync().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_beyond_the_window_is_refused_and_announced() {
    let config = Config {
        replay_window: 8,
        ..Config::dev()
    };
    let server = start(config).await;
    let mut alice = Client::join(&server, "window", "alice").await;
    let mut bob = Client::join(&server, "window", "bob").await;
    bob.sync().await;
    let bob_id = bob.id;
    let mut old = std::mem::replace(&mut bob.ws, common::raw(&server, "window").await);
    old.close(None).await.unwrap();
    // Twelve joins (entries every resume needs) push Bob's missed entries out of the
    // 8-entry window. (One member's hand toggles would not: a later toggle supersedes the
    // earlier ones, and a member cannot push young entries out beyond its share.)
    let mut others = Vec::new();
    for i in 0..12 {
        others.push(Client::join(&server, "window", &format!("carol{i}")).await);
    }
    alice.sync().await;
    let reply = bob.resume(&server, "window").await;
    match reply {
        Got::Close(code, reason) => {
            assert_eq!(code, close::RESUME_FAILED);
            assert!(reason.contains("join fresh"), "{reason}");
        }
        other => panic!("expected close, got {other:?}"),
    }
    // Others see Bob leave, so his fresh join is a clean new participant.
    alice
        .until_event(|e| matches!(e, RoomEvent::Left { id, reason: LeaveReason::ResumeFailed } if *id == bob_id))
        .await;
    let bob2 = Client::join(&server, "window", "bob").await;
    assert_ne!(bob2.id, bob_id);
    // A bad resume token is refused without touching the participant.
    let mut forged = Client {
        resume_token: "00".repeat(24),
        ..bob2
    };
    let reply = forged.resume(&server, "window").await;
    assert!(matches!(reply, Got::Close(code, _) if code == close::RESUME_FAILED));
    server.shutdown().await;
}
