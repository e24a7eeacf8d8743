//! The hostile-coordinator test hook `hello.test_visible_only_to` (contract C5): only
//! with `--test-hooks`; then a participant's entries reach only itself and one other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Client, Got, Ws, expect_close, raw, recv, send_json, start, token};
use satsuma_coordinator::Config;
use satsuma_coordinator::protocol::{
    ClientMessage, PROTOCOL_VERSION, RoomEvent, ServerMessage, close,
};

fn hello(token: String, visible_only_to: Option<u64>) -> ClientMessage {
    ClientMessage::Hello {
        v: PROTOCOL_VERSION,
        token: Some(token),
        resume: None,
        test_visible_only_to: visible_only_to,
    }
}

/// Reads frames until the pong for `t`; returns the sequenced entries seen on the way.
async fn entries_until_pong(ws: &mut Ws, t: u64) -> Vec<Got> {
    send_json(ws, &ClientMessage::Ping { t: Some(t) }).await;
    let mut got = Vec::new();
    loop {
        match recv(ws).await {
            Got::Direct(ServerMessage::Pong { t: Some(x) }) if x == t => return got,
            g @ (Got::Event(_) | Got::Mls(_)) => got.push(g),
            Got::Close(code, reason) => panic!("closed: {code} {reason}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_field_is_refused_without_test_hooks() {
    let server = start(Config::dev()).await;
    let mut ws = raw(&server, "hooks-off").await;
    send_json(
        &mut ws,
        &hello(token(&server, "hooks-off", "ghost"), Some(1)),
    )
    .await;
    let (code, _) = expect_close(&mut ws).await;
    assert_eq!(code, close::BAD_HELLO);
    // The same hello without the field is fine.
    let mut ws = raw(&server, "hooks-off").await;
    send_json(&mut ws, &hello(token(&server, "hooks-off", "ghost"), None)).await;
    assert!(matches!(
        recv(&mut ws).await,
        Got::Direct(ServerMessage::Welcome { .. })
    ));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ghost_is_announced_only_to_the_participant_it_is_visible_to() {
    let server = start(Config {
        test_hooks: true,
        ..Config::dev()
    })
    .await;
    let room = "hooks-on";
    let mut alice = Client::join(&server, room, "alice").await;
    let mut bob = raw(&server, room).await;
    send_json(&mut bob, &hello(token(&server, room, "bob"), None)).await;
    let Got::Direct(ServerMessage::Welcome { seq: bob_start, .. }) = recv(&mut bob).await else {
        panic!("no welcome")
    };
    let before = entries_until_pong(&mut bob, 1).await;

    // The ghost joins, visible to Alice only, raises its hand and leaves.
    let mut ghost = raw(&server, room).await;
    send_json(
        &mut ghost,
        &hello(token(&server, room, "ghost"), Some(alice.id)),
    )
    .await;
    let Got::Direct(ServerMessage::Welcome {
        participant_id: ghost_id,
        snapshot,
        ..
    }) = recv(&mut ghost).await
    else {
        panic!("no welcome")
    };
    assert_eq!(snapshot.participants.len(), 2);
    send_json(&mut ghost, &ClientMessage::Hand { raised: true }).await;
    let joined = alice
        .until_event(|e| matches!(e, RoomEvent::Joined { id, .. } if *id == ghost_id))
        .await;
    alice
        .until_event(|e| matches!(e, RoomEvent::Hand { id, .. } if *id == ghost_id))
        .await;
    // A fourth participant joining now does not see the ghost in its snapshot.
    let mut carol = raw(&server, room).await;
    send_json(&mut carol, &hello(token(&server, room, "carol"), None)).await;
    let Got::Direct(ServerMessage::Welcome { snapshot, .. }) = recv(&mut carol).await else {
        panic!("no welcome")
    };
    assert!(snapshot.participants.iter().all(|p| p.id != ghost_id));
    assert_eq!(snapshot.participants.len(), 2);
    send_json(&mut ghost, &ClientMessage::Leave {}).await;
    alice
        .until_event(|e| matches!(e, RoomEvent::Left { id, .. } if *id == ghost_id))
        .await;
    alice.send(ClientMessage::Hand { raised: true }).await;
    let alice_id = alice.id;
    let alice_hand = alice
        .until_event(|e| matches!(e, RoomEvent::Hand { id, .. } if *id == alice_id))
        .await;

    // Bob saw nothing of the ghost: a gap in his seqs where its entries were, then
    // Carol's join and Alice's hand.
    let mut seen = before;
    seen.extend(entries_until_pong(&mut bob, 2).await);
    let mut last = bob_start;
    let mut gaps = 0;
    for g in &seen {
        let seq = g.seq().unwrap();
        assert!(seq > last);
        gaps += seq - last - 1;
        last = seq;
        if let Got::Event(e) = g {
            let about_ghost = match e.event {
                RoomEvent::Joined { id, .. }
                | RoomEvent::Left { id, .. }
                | RoomEvent::Hand { id, .. } => id == ghost_id,
                _ => false,
            };
            assert!(!about_ghost, "bob saw {e:?}");
        }
    }
    assert!(
        seen.iter()
            .any(|g| g.seq() == Some(joined.seq + 2) || g.seq() > Some(joined.seq))
    );
    assert_eq!(last, alice_hand.seq);
    assert_eq!(gaps, 3, "joined, hand and left of the ghost: {seen:?}");
    server.shutdown().await;
}
