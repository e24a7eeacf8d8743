//! The Member facade against an in-memory coordinator: group creation, joins with
//! Welcome, ready → execute, leaves, safety numbers and frame encryption.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sim_support;

use satsuma_e2ee::frame::Codec;
use satsuma_e2ee::member::{MemberConfig, MemberEvent, Outbound};
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

/// Every client's refusal counter and alarm events.
fn alarms(room: &Room) -> Vec<(u64, u64, usize)> {
    room.clients
        .iter()
        .map(|(id, c)| {
            let events = c
                .events
                .iter()
                .filter(|e| matches!(e, MemberEvent::Alarm { .. }))
                .count();
            (*id, c.member.stats().refused_epochs, events)
        })
        .filter(|(_, refused, events)| *refused > 0 || *events > 0)
        .collect()
}

#[test]
fn a_member_refuses_a_commit_adding_somebody_it_never_saw_join() {
    let mut room = Room::new(MemberConfig::default());
    let a = room.join();
    let b = room.join();
    room.settle(100);
    assert!(room.converged());
    let before = room.clients[&b].member.safety_number().cloned().unwrap();
    // A hostile coordinator shows the ghost to the committer only.
    let g = room.join_hidden(a);
    room.settle(100);
    // The committer saw it join and added it; b refused the epoch.
    assert_eq!(room.clients[&a].member.members(), &[a, b, g]);
    assert_eq!(room.clients[&g].member.members(), &[a, b, g]);
    let bm = &room.clients[&b].member;
    assert_eq!(bm.stats().refused_epochs, 1);
    assert_eq!(bm.epoch(), None, "b dropped the group");
    assert_eq!(bm.safety_number(), None);
    assert_eq!(bm.send_epoch(), None, "b sends nothing");
    assert!(matches!(
        bm.committer().phase(),
        satsuma_e2ee::committer::Phase::Refused { unknown } if unknown == &vec![g]
    ));
    let alarm = bm.alarm().expect("an alarm");
    assert_eq!(alarm.len(), 1);
    assert_eq!(alarm[0].id, g);
    assert_eq!(alarm[0].name, format!("P{g}"));
    assert_eq!(
        alarm[0].fingerprint,
        satsuma_e2ee::identity::Identity::from_seed(sim_support::seed(g), "")
            .fingerprint()
            .to_string()
    );
    // a lists the ghost with the same name and fingerprint.
    let listed = room.clients[&a].member.member_identities();
    assert!(listed.contains(&alarm[0]), "{listed:?}");
    assert!(
        room.clients[&b].events.iter().any(
            |e| matches!(e, MemberEvent::Alarm { unknown } if unknown.iter().any(|m| m.id == g))
        )
    );
    // b holds no key for anybody: a frame of the new epoch (or any) is dropped.
    let f = opus(9);
    let enc = room
        .clients
        .get_mut(&a)
        .unwrap()
        .member
        .encrypt(Codec::Opus, &f)
        .unwrap();
    let now = room.now;
    assert!(
        room.clients
            .get_mut(&b)
            .unwrap()
            .member
            .decrypt(a, &enc, now)
            .is_err()
    );
    assert_ne!(Some(&before), room.clients[&a].member.safety_number());
    // Refused is terminal: b never announces a KeyPackage again.
    let log_len = room.coord.log.len();
    room.settle(100);
    let b_frames_after = room.coord.log[log_len..]
        .iter()
        .filter(|l| match l {
            Logged::Binary(bytes) => {
                satsuma_e2ee::relay::ServerFrame::decode(bytes).is_ok_and(|f| f.from == b)
            }
            _ => false,
        })
        .count();
    assert_eq!(b_frames_after, 0);
    // Only b alarmed.
    assert_eq!(alarms(&room), vec![(b, 1, 1)]);
}

#[test]
fn a_joiner_refuses_a_welcome_into_a_group_with_a_hidden_member() {
    let mut room = Room::new(MemberConfig::default());
    let a = room.join();
    let g = room.join_hidden(a);
    room.settle(100);
    assert_eq!(room.clients[&a].member.members(), &[a, g]);
    // c sees a only; the Welcome it gets contains g.
    let c = room.join();
    room.settle(100);
    let cm = &room.clients[&c].member;
    assert_eq!(cm.epoch(), None);
    assert_eq!(cm.alarm().map(|x| x[0].id), Some(g));
    assert_eq!(alarms(&room), vec![(c, 1, 1)]);
}

#[test]
fn churn_interleavings_never_alarm() {
    // Leaves and joins in every order around the committer's commits: a joiner
    // arriving right after somebody left must not be welcomed into a group that
    // still holds the departed member.
    let mut room = Room::new(MemberConfig::default());
    let a = room.join();
    let b = room.join();
    let c = room.join();
    room.settle(100);
    // c leaves and d joins before anybody processes anything.
    room.leave(c);
    let d = room.join();
    room.settle(200);
    assert!(room.converged());
    // The committer leaves, and a joiner arrives before the successor acts.
    room.leave(a);
    let e = room.join();
    room.settle(200);
    assert!(room.converged());
    // A member crashes (its `left` comes late), somebody joins meanwhile, then the
    // crashed one expires and another joins.
    room.crash(d, false);
    let f = room.join();
    room.settle(20);
    room.expire(d);
    let g = room.join();
    room.settle(300);
    assert!(room.converged(), "not converged");
    assert_eq!(room.clients[&b].member.members(), &[b, e, f, g]);
    // Joins and leaves with partial deliveries in between.
    for round in 0..6u64 {
        let j = room.join();
        room.deliver(b, 3);
        room.flush(b, 1);
        let ids: Vec<u64> = room.clients.keys().copied().collect();
        let victim = ids[(round as usize * 7) % ids.len()];
        if victim != j {
            room.leave(victim);
        }
        room.deliver(j, usize::MAX);
        room.flush(j, usize::MAX);
    }
    room.settle(500);
    assert!(room.converged(), "not converged after interleaved churn");
    assert_eq!(alarms(&room), vec![], "false alarm");
    for c in room.clients.values() {
        assert_eq!(c.member.stats().reported_commits, 0);
    }
}

#[test]
fn an_unprocessable_commit_is_reported_and_voided_without_resetting_the_room() {
    let mut room = Room::new(MemberConfig::default());
    let a = room.join();
    let b = room.join();
    let c = room.join();
    room.settle(200);
    assert!(room.converged());
    let epoch = room.clients[&a].member.epoch().unwrap();
    let number = room.clients[&a].member.safety_number().cloned().unwrap();
    // A commit for the current epoch with the right group id, signed by a leaf of
    // a look-alike group: nobody can process it. The coordinator accepts it as c's
    // (c is a member, the framing says group and epoch are right).
    let group_id = room.clients[&a].member.group_id().unwrap();
    let mut fake = satsuma_e2ee::group::Group::new(
        99,
        satsuma_e2ee::identity::Identity::from_seed([9; 32], "fake"),
    )
    .unwrap();
    fake.create(&group_id).unwrap();
    let everyone: std::collections::BTreeSet<u64> = (0..200).collect();
    while fake.epoch() < Some(epoch) {
        let (commit, welcome) = fake.commit(None, &[]).unwrap();
        fake.process_commit(99, &commit, &welcome, &everyone);
    }
    let (commit, _) = fake.commit(None, &[]).unwrap();
    let now = room.now;
    room.coord.receive(
        c,
        Outbound::Binary(
            satsuma_e2ee::relay::Handshake::Commit {
                commit,
                welcome: vec![],
            }
            .encode_client_frame(),
        ),
        None,
        now,
    );
    assert_eq!(room.coord.epoch(), Some(epoch + 1), "accepted");
    room.settle(300);
    assert!(room.converged(), "not converged");
    assert_eq!(room.coord.voids, 1, "the commit was voided");
    // a and b never reset: they reported, the coordinator voided, they carried on.
    // c, named as the sender of a commit it cannot merge, reset and was re-added.
    for id in [a, b] {
        let s = room.clients[&id].member.stats();
        assert_eq!(s.resets, 0, "{id} reset");
        assert_eq!(s.reported_commits, 1, "{id} reported");
    }
    assert_eq!(room.clients[&c].member.stats().resets, 1);
    assert_eq!(room.clients[&a].member.members(), &[a, b, c]);
    assert_ne!(room.clients[&a].member.safety_number(), Some(&number));
    assert_eq!(alarms(&room), vec![]);
}

#[test]
fn a_commit_the_others_applied_stands_and_the_reporter_rejoins() {
    let mut room = Room::new(MemberConfig::default());
    let a = room.join();
    let b = room.join();
    let c = room.join();
    room.settle(200);
    assert!(room.converged());
    // d joins; a commits its add; a and b apply it and report ready.
    let d = room.join();
    room.deliver(d, usize::MAX);
    room.flush(d, usize::MAX);
    room.deliver(a, usize::MAX);
    room.flush(a, usize::MAX);
    let commit_at = room.coord.log.len() - 1;
    for id in [a, b, d] {
        room.deliver(id, usize::MAX);
        room.flush(id, usize::MAX);
    }
    // c gets the commit damaged in transit: it cannot process it and reports.
    while room.clients[&c].cursor < commit_at {
        room.deliver(c, 1);
    }
    assert!(room.deliver_corrupted(c), "the commit entry");
    assert_eq!(room.clients[&c].member.stats().reported_commits, 1);
    room.flush(c, usize::MAX);
    // b already applied it: the commit stands, c is told so and rejoins at once.
    assert_eq!(room.coord.voids, 0);
    assert_eq!(room.coord.refused_reports, 1);
    assert_eq!(room.clients[&c].member.stats().resets, 1);
    room.settle(300);
    assert!(room.converged(), "not converged");
    assert_eq!(room.clients[&a].member.members(), &[a, b, c, d]);
    for id in [a, b, d] {
        assert_eq!(room.clients[&id].member.stats().resets, 0, "{id} reset");
    }
    assert_eq!(alarms(&room), vec![]);
}
