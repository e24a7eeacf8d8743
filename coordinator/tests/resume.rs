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

/// A resume whose missed entries are four times the send budget is replayed in full: the
/// replay streams from the log as the socket drains instead of filling the queue (which would
/// close the resuming client with 4430).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_larger_than_the_send_budget_streams() {
    let budget = 256 << 10;
    let server = start(Config {
        budgets: satsuma_coordinator::config::Budgets {
            send_budget_bytes: budget,
            ..Default::default()
        },
        ..Config::dev()
    })
    .await;
    let mut bob = Client::join(&server, "big", "bob").await;
    bob.sync().await;
    let mut old = std::mem::replace(&mut bob.ws, common::raw(&server, "big").await);
    old.close(None).await.unwrap();
    // 64 members each log a 16 KiB KeyPackage while Bob is away: 1 MiB of missed entries.
    let mut senders = Vec::new();
    for i in 0..64u8 {
        let mut c = Client::join(&server, "big", &format!("m{i}")).await;
        let mut kp = vec![satsuma_coordinator::protocol::KIND_KEY_PACKAGE, 0, 1, 0, 5];
        kp.resize(16 << 10, i);
        c.send_binary(kp).await;
        c.sync().await;
        senders.push(c);
    }
    let until = senders.last_mut().unwrap().last_seq;
    let reply = bob.resume(&server, "big").await;
    assert!(
        matches!(reply, Got::Direct(ServerMessage::Resumed { .. })),
        "{reply:?}"
    );
    let mut bytes = 0usize;
    while bob.last_seq < until {
        if let Got::Mls(m) = bob.recv().await {
            bytes += m.payload.len();
        }
    }
    // All 64 KeyPackages (just under 4 x the budget).
    assert_eq!(bytes, 64 * ((16 << 10) - 1), "replayed {bytes} bytes");
    assert!(bytes > 3 * budget);
    // Still connected and in step.
    bob.sync().await;
    server.shutdown().await;
}
