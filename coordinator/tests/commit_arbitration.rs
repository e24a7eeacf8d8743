//! The coordinator names the group creator and lets exactly one commit per epoch through.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Client, Got, start_dev};
use satsuma_coordinator::mls_framing::{WireFormat, build};
use satsuma_coordinator::protocol::{
    ClientMessage, KIND_COMMIT, RoomEvent, ServerMessage, client_commit_frame,
    client_key_package_frame, split_commit_payload,
};

fn ready(epoch: u64, group_id: &str) -> ClientMessage {
    ClientMessage::Ready {
        epoch,
        group_id: Some(group_id.to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_commit_per_epoch_wins() {
    let server = start_dev().await;
    let mut alice = Client::join(&server, "mls", "alice").await;
    let creator = alice
        .until_event(|e| matches!(e, RoomEvent::Creator { .. }))
        .await;
    let RoomEvent::Creator { id, group_id } = creator.event else {
        unreachable!()
    };
    assert_eq!(id, alice.id);
    let gid = hex::decode(&group_id).unwrap();
    alice.send(ready(0, &group_id)).await;
    alice
        .until_event(|e| matches!(e, RoomEvent::Execute { epoch: 0 }))
        .await;

    // Bob joins and announces a KeyPackage; Alice adds him (commit + welcome as one entry).
    let mut bob = Client::join(&server, "mls", "bob").await;
    let mut carol = Client::join(&server, "mls", "carol").await;
    let kp = build::key_package_message(bob.id, b"bob-kp");
    bob.send_binary(client_key_package_frame(&kp)).await;
    let got = alice.until(|g| matches!(g, Got::Mls(_))).await;
    let Got::Mls(f) = got else { unreachable!() };
    assert_eq!((f.from, f.payload.clone()), (bob.id, kp.clone()));

    let commit0 = build::commit(&gid, 0, 0, alice.id, &[kp[4..].to_vec()], &[]);
    let welcome = build::message(WireFormat::Welcome, b"welcome bob");
    alice
        .send_binary(client_commit_frame(&commit0, &welcome))
        .await;
    // Bob processes the Welcome and reports ready for epoch 1.
    let got = bob
        .until(|g| matches!(g, Got::Mls(f) if f.kind == KIND_COMMIT))
        .await;
    let Got::Mls(f) = got else { unreachable!() };
    let (c, w) = split_commit_payload(&f.payload).unwrap();
    assert_eq!((c, w), (&commit0[..], &welcome[..]));
    bob.send(ready(1, &group_id)).await;
    alice.send(ready(1, &group_id)).await;
    bob.until_event(|e| matches!(e, RoomEvent::Execute { epoch: 1 }))
        .await;

    // Both members now commit for epoch 1 at the same time: exactly one is
    // delivered, the other is rejected.
    let from_alice = build::commit(&gid, 1, 0, alice.id, &[], &[]);
    let from_bob = build::commit(&gid, 1, 1, bob.id, &[], &[]);
    let (ra, rb) = tokio::join!(
        alice.send_binary(client_commit_frame(&from_alice, &[])),
        bob.send_binary(client_commit_frame(&from_bob, &[])),
    );
    let _ = (ra, rb);
    // Both get a definite answer: the commit in the log, or a rejection.
    for m in [&mut alice, &mut bob] {
        let id = m.id;
        let g = m
            .until(|g| {
                matches!(g, Got::Mls(f) if f.kind == KIND_COMMIT && f.from == id)
                    || matches!(g, Got::Direct(ServerMessage::CommitRejected { .. }))
            })
            .await;
        if let Got::Direct(ServerMessage::CommitRejected {
            epoch,
            current_epoch,
            reason,
            ..
        }) = g
        {
            assert_eq!(
                (epoch, current_epoch, reason.as_str()),
                (Some(1), Some(2), "stale_epoch")
            );
        }
        m.sync().await;
    }
    // Carol (an observer) sees exactly one commit per epoch, and all three logs agree.
    carol.sync().await;
    let end = alice.last_seq.max(bob.last_seq).max(carol.last_seq);
    for m in [&mut alice, &mut bob, &mut carol] {
        m.catch_up(end).await;
    }
    let commits = |m: &Client| -> Vec<(u64, u64)> {
        m.log
            .iter()
            .filter_map(|g| match g {
                Got::Mls(f) if f.kind == KIND_COMMIT => {
                    let (c, _) = split_commit_payload(&f.payload).unwrap();
                    let h = satsuma_coordinator::mls_framing::parse_commit(c).unwrap();
                    Some((h.epoch, f.seq))
                }
                _ => None,
            })
            .collect()
    };
    let seen = commits(&carol);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, 1]);
    let tail = |m: &Client| {
        m.log
            .iter()
            .filter(|g| g.seq().unwrap() > carol_first(&carol))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(tail(&alice), tail(&carol));
    assert_eq!(tail(&bob), tail(&carol));

    // A stale commit (epoch 0 again) and a foreign group are rejected too.
    alice
        .send_binary(client_commit_frame(
            &build::commit(&gid, 0, 0, alice.id, &[], &[]),
            &[],
        ))
        .await;
    assert!(
        matches!(alice.direct().await, ServerMessage::CommitRejected { reason, .. } if reason == "stale_epoch")
    );
    alice
        .send_binary(client_commit_frame(
            &build::commit(b"other", 2, 0, alice.id, &[], &[]),
            &[],
        ))
        .await;
    assert!(
        matches!(alice.direct().await, ServerMessage::CommitRejected { reason, .. } if reason == "wrong_group")
    );
    server.shutdown().await;
}

fn carol_first(carol: &Client) -> u64 {
    carol.log.first().and_then(Got::seq).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_creator_when_the_group_empties() {
    let server = start_dev().await;
    let mut alice = Client::join(&server, "mls2", "alice").await;
    let mut bob = Client::join(&server, "mls2", "bob").await;
    bob.sync().await;
    let first = alice
        .until_event(|e| matches!(e, RoomEvent::Creator { .. }))
        .await;
    alice.send(ClientMessage::Leave {}).await;
    let e = bob
        .until_event(|e| matches!(e, RoomEvent::Creator { .. }))
        .await;
    match (first.event, e.event) {
        (RoomEvent::Creator { group_id: g1, .. }, RoomEvent::Creator { id, group_id: g2 }) => {
            assert_eq!(id, bob.id);
            assert_ne!(g1, g2);
        }
        _ => unreachable!(),
    }
    server.shutdown().await;
}
