//! Only members drive the group: a participant that was never added cannot report
//! `ready` or get a commit sequenced, and a flood of such attempts ends in close 4002.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Client, Got, start_dev};
use satsuma_coordinator::mls_framing::{WireFormat, build};
use satsuma_coordinator::protocol::{
    ClientMessage, KIND_COMMIT, RoomEvent, ServerMessage, client_commit_frame,
    client_key_package_frame,
};

fn ready(epoch: u64, group_id: &str) -> ClientMessage {
    ClientMessage::Ready {
        epoch,
        group_id: Some(group_id.to_owned()),
    }
}

/// Garbage commit number `i`: well-formed commits at the current epoch, commits that add
/// the attacker, header-only commits, PrivateMessage commits and random bytes.
fn garbage(i: usize, gid: &[u8], epoch: u64, me: u64) -> Vec<u8> {
    match i % 5 {
        0 => client_commit_frame(&build::commit(gid, epoch, 2, me, &[], &[0, 1]), &[]),
        1 => client_commit_frame(
            &build::commit(gid, epoch, 2, me, &[build::key_package(me, b"m")], &[]),
            &build::message(WireFormat::Welcome, b"w"),
        ),
        2 => client_commit_frame(&build::public_commit(gid, epoch, 0, b"junk"), &[]),
        3 => client_commit_frame(&build::private_message(gid, epoch, 3, b"sealed"), &[]),
        _ => {
            let mut v = vec![KIND_COMMIT];
            v.extend((0..40).map(|k| (k * 31 + i * 7) as u8));
            v
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_a_hundred_garbage_commits_do_not_touch_the_group() {
    let server = start_dev().await;
    let room = "members-only";
    let mut alice = Client::join(&server, room, "alice").await;
    let RoomEvent::Creator { group_id, .. } = alice
        .until_event(|e| matches!(e, RoomEvent::Creator { .. }))
        .await
        .event
    else {
        unreachable!()
    };
    let gid = hex::decode(&group_id).unwrap();
    alice.send(ready(0, &group_id)).await;
    alice
        .until_event(|e| matches!(e, RoomEvent::Execute { epoch: 0 }))
        .await;

    // Bob logs a KeyPackage and Alice adds him: he is a member.
    let mut bob = Client::join(&server, room, "bob").await;
    let kp = build::key_package_message(bob.id, b"bob");
    bob.send_binary(client_key_package_frame(&kp)).await;
    alice.until(|g| matches!(g, Got::Mls(_))).await;
    alice
        .send_binary(client_commit_frame(
            &build::commit(&gid, 0, 0, alice.id, &[kp[4..].to_vec()], &[]),
            &build::message(WireFormat::Welcome, b"welcome bob"),
        ))
        .await;
    bob.until(|g| matches!(g, Got::Mls(f) if f.kind == KIND_COMMIT))
        .await;
    alice.send(ready(1, &group_id)).await;
    bob.send(ready(1, &group_id)).await;
    let executed = bob
        .until_event(|e| matches!(e, RoomEvent::Execute { epoch: 1 }))
        .await;
    alice.catch_up(executed.seq).await;

    // Mallory joins and tries: ready, then 100 commits of every shape.
    let mut mallory = Client::join(&server, room, "mallory").await;
    mallory.sync().await;
    mallory.send(ready(1, &group_id)).await;
    for i in 0..100 {
        mallory.send_binary(garbage(i, &gid, 1, mallory.id)).await;
    }
    let mut errors = Vec::new();
    let mut rejected = Vec::new();
    let close = loop {
        match mallory.recv().await {
            Got::Direct(ServerMessage::Error { code, refused, .. }) => errors.push((code, refused)),
            Got::Direct(ServerMessage::CommitRejected {
                reason,
                current_epoch,
                ..
            }) => {
                assert_eq!(current_epoch, Some(1));
                rejected.push(reason);
            }
            Got::Close(code, reason) => break (code, reason),
            _ => {}
        }
    };
    assert_eq!(
        errors,
        vec![("not_member".to_owned(), Some("ready".to_owned()))]
    );
    // 1 refused ready + 99 refused commits = 100 refusals in a row: closed.
    assert_eq!(rejected.len(), 99, "{rejected:?}");
    assert!(rejected.iter().all(|r| r == "not_member"), "{rejected:?}");
    assert_eq!(close.0, 4002, "{close:?}");

    // Nothing was sequenced for her: the members' logs hold no commit after epoch 1,
    // and a newcomer's snapshot shows the same group at the same epoch.
    alice.sync().await;
    bob.sync().await;
    for m in [&alice, &bob] {
        let late_commits = m
            .log
            .iter()
            .filter(|g| matches!(g, Got::Mls(f) if f.kind == KIND_COMMIT && f.seq > executed.seq))
            .count();
        assert_eq!(late_commits, 0);
    }
    let token = common::token(&server, room, "observer");
    let mut ws = common::raw(&server, room).await;
    common::send_json(
        &mut ws,
        &ClientMessage::Hello {
            v: 1,
            token: Some(token),
            resume: None,
            test_visible_only_to: None,
        },
    )
    .await;
    match common::recv(&mut ws).await {
        Got::Direct(ServerMessage::Welcome { snapshot, .. }) => {
            let g = snapshot.group.unwrap();
            assert_eq!((g.group_id.as_str(), g.epoch), (group_id.as_str(), 1));
        }
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}
