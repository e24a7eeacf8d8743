//! The Member facade against an in-memory coordinator: group creation, joins with
//! Welcome, ready → execute, leaves, safety numbers and frame encryption.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sim_support;

use satsuma_e2ee::frame::Codec;
use satsuma_e2ee::member::{MemberConfig, MemberEvent};
use satsuma_e2ee::relay::Entry;
use sim_support::{Logged, Room};

fn opus(i: u8) -> Vec<u8> {
    (0..100).map(|b| b ^ i).collect()
}

#[test]
fn three_members_converge_and_exchange_frames() {
    let mut room = Room::new(MemberConfig::default());
    let a = room.join();
    room.settle(50);
    assert_eq!(room.clients[&a].member.epoch(), Some(0));
    assert!(room.clients[&a].member.is_committer());
    let b = room.join();
    let c = room.join();
    room.settle(100);
    assert!(room.converged(), "not converged");
    // One add per commit: creation at 0, then +b, +c.
    assert_eq!(room.clients[&a].member.epoch(), Some(2));
    let sn = room.clients[&a].member.safety_number().cloned().unwrap();
    assert_eq!(sn.digits().len(), 30);
    for id in [a, b, c] {
        assert_eq!(
            room.clients[&id].member.send_epoch(),
            Some(2),
            "{id} executed"
        );
    }
    // Every member decrypts every other member's frames.
    for s in [a, b, c] {
        let f = opus(s as u8);
        let enc = room
            .clients
            .get_mut(&s)
            .unwrap()
            .member
            .encrypt(Codec::Opus, &f)
            .unwrap();
        for r in [a, b, c] {
            if r != s {
                let now = room.now;
                let d = room
                    .clients
                    .get_mut(&r)
                    .unwrap()
                    .member
                    .decrypt(s, &enc, now)
                    .unwrap();
                assert_eq!(d.frame, f);
            }
        }
    }
    // Each execute was logged after the commit it belongs to.
    let executes = room
        .coord
        .log
        .iter()
        .filter(|l| matches!(l, Logged::Json(Entry::Execute { .. })))
        .count();
    assert_eq!(executes, 2);

    // b leaves: a removes it; the safety number changes.
    room.leave(b);
    room.settle(100);
    assert!(room.converged());
    assert_eq!(room.clients[&a].member.members(), &[a, c]);
    assert_ne!(
        room.clients[&a].member.safety_number().cloned().unwrap(),
        sn
    );

    // The committer leaves: c takes over, alone.
    room.leave(a);
    room.settle(100);
    assert!(room.converged());
    assert!(room.clients[&c].member.is_committer());
    let d = room.join();
    room.settle(100);
    assert!(room.converged());
    assert_eq!(room.clients[&d].member.members(), &[c, d]);
}

#[test]
fn sender_keeps_old_key_until_execute() {
    let mut room = Room::new(MemberConfig::default());
    let a = room.join();
    let b = room.join();
    room.settle(100);
    assert_eq!(room.clients[&a].member.send_epoch(), Some(1));
    let c = room.join();
    // Let a process c's KeyPackage and commit; a and b process the commit, but hold
    // back b's ready so no execute yet.
    for _ in 0..10 {
        room.deliver(a, usize::MAX);
        room.flush(a, usize::MAX);
        room.deliver(c, usize::MAX);
        room.flush(c, usize::MAX);
        room.deliver(b, usize::MAX);
    }
    assert_eq!(room.clients[&a].member.epoch(), Some(2));
    assert_eq!(room.clients[&b].member.epoch(), Some(2));
    assert_eq!(
        room.clients[&a].member.send_epoch(),
        Some(1),
        "prepare: old key"
    );
    // Old-epoch frames from a still decrypt at b, which already holds epoch 2 keys.
    let f = opus(1);
    let enc = room
        .clients
        .get_mut(&a)
        .unwrap()
        .member
        .encrypt(Codec::Opus, &f)
        .unwrap();
    let now = room.now;
    assert_eq!(
        room.clients
            .get_mut(&b)
            .unwrap()
            .member
            .decrypt(a, &enc, now)
            .unwrap()
            .frame,
        f
    );
    // b reports ready → execute → a switches.
    room.settle(100);
    assert_eq!(room.clients[&a].member.send_epoch(), Some(2));
    assert!(
        room.clients[&a]
            .events
            .iter()
            .any(|e| matches!(e, MemberEvent::SendKeyChanged { epoch: 2 }))
    );
    let enc = room
        .clients
        .get_mut(&a)
        .unwrap()
        .member
        .encrypt(Codec::Opus, &f)
        .unwrap();
    let now = room.now;
    assert_eq!(
        room.clients
            .get_mut(&c)
            .unwrap()
            .member
            .decrypt(a, &enc, now)
            .unwrap()
            .frame,
        f
    );
}

#[test]
fn committer_crash_before_commit_is_logged_is_recovered() {
    let mut room = Room::new(MemberConfig::default());
    let a = room.join();
    let b = room.join();
    room.settle(100);
    let c = room.join();
    // a sees c's KeyPackage and builds the commit, then crashes with it unsent.
    room.deliver(c, usize::MAX);
    room.flush(c, usize::MAX);
    room.deliver(a, usize::MAX);
    assert!(!room.clients[&a].outbox.is_empty());
    room.crash(a, false);
    room.settle(20);
    assert!(!room.converged(), "a is still in the room");
    room.expire(a);
    room.settle(200);
    assert!(room.converged());
    assert_eq!(room.clients[&b].member.members(), &[b, c]);
}

#[test]
fn own_leave_asks_to_rejoin_and_a_reset_member_is_readded() {
    let mut room = Room::new(MemberConfig::default());
    let a = room.join();
    let b = room.join();
    let c = room.join();
    room.settle(100);
    // The coordinator times b out while b still runs.
    room.coord.leave(b);
    room.settle(100);
    assert!(
        room.clients[&b]
            .events
            .iter()
            .any(|e| matches!(e, MemberEvent::RejoinRoom))
    );
    room.clients.remove(&b);
    room.settle(100);
    assert!(room.converged());
    assert_eq!(room.clients[&a].member.members(), &[a, c]);

    // c hits an MLS error: it resets under a fresh key and is removed + re-added
    // by one commit of the committer.
    let key_before = room.clients[&c].member.committer().key();
    let now = room.now;
    room.clients.get_mut(&c).unwrap().member.reset(now);
    assert_eq!(room.clients[&c].member.epoch(), None);
    room.settle(100);
    assert!(room.converged());
    assert_ne!(room.clients[&c].member.committer().key(), key_before);
    assert_eq!(room.clients[&c].member.members(), &[a, c]);
}

#[test]
fn a_commit_nobody_can_process_recovers_with_the_reset_refinement() {
    let mut room = Room::new(MemberConfig::default());
    room.coord.reset_releases_membership = true;
    let a = room.join();
    let b = room.join();
    room.settle(100);
    // A commit with a valid-looking header but garbage inside, accepted by the
    // coordinator for the current epoch: every member fails on it and resets.
    let seq = room.coord.log.len() as u64 + 1;
    let bogus = satsuma_e2ee::relay::ServerFrame {
        seq,
        from: b,
        handshake: satsuma_e2ee::relay::Handshake::Commit {
            commit: vec![0, 1, 0, 1, 0, 0],
            welcome: vec![],
        },
    };
    room.coord.log.push(Logged::Binary(bogus.encode()));
    room.settle(200);
    assert!(room.converged());
    assert_eq!(room.clients[&a].member.members(), &[a, b]);
    assert!(room.clients[&a].member.stats().failed_commits >= 1);
    assert!(
        room.coord
            .log
            .iter()
            .filter(|l| matches!(l, Logged::Json(Entry::Creator { .. })))
            .count()
            >= 2
    );
}
