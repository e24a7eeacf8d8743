#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::mls_framing::build;
use crate::protocol::{ServerMessage, client_commit_frame, client_key_package_frame};
use proptest::prelude::*;

fn req(subject: &str) -> JoinRequest {
    req_with(
        subject,
        Permissions {
            publish: true,
            subscribe: true,
            host: false,
        },
    )
}

fn req_with(subject: &str, permissions: Permissions) -> JoinRequest {
    JoinRequest {
        subject: subject.to_owned(),
        name: subject.to_uppercase(),
        permissions,
        resume_token: format!("tok-{subject}"),
        wall_ms: 1_700_000_000_000,
        visible_only_to: None,
        recorder: false,
    }
}

fn drain(room: &mut Room) -> Vec<Output> {
    std::iter::from_fn(|| room.poll_output()).collect()
}

fn events(outputs: &[Output]) -> Vec<(u64, RoomEvent)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Broadcast(e) => match &e.body {
                EntryBody::Event(ev) => Some((e.seq, ev.clone())),
                EntryBody::Mls { .. } => None,
            },
            _ => None,
        })
        .collect()
}

fn replies(outputs: &[Output], to: u64) -> Vec<ServerMessage> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Reply { to: t, msg } if *t == to => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

fn error_codes(outputs: &[Output], to: u64) -> Vec<String> {
    replies(outputs, to)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::Error { code, .. } => Some(code),
            _ => None,
        })
        .collect()
}

fn msg(room: &mut Room, now: Instant, from: u64, m: ClientMessage) -> Vec<Output> {
    room.handle(now, from, Input::Message(m));
    drain(room)
}

fn bin(room: &mut Room, now: Instant, from: u64, bytes: Vec<u8>) -> Vec<Output> {
    room.handle(now, from, Input::Binary(Bytes::from(bytes)));
    drain(room)
}

fn group_id(room: &Room) -> Vec<u8> {
    room.group_epoch().unwrap().0.to_vec()
}

/// A structurally valid commit without adds (an update, or removals of `removes`).
fn commit_frame(gid: &[u8], epoch: u64) -> Vec<u8> {
    client_commit_frame(&build::commit(gid, epoch, 0, 1, &[], &[1]), &[])
}

/// A KeyPackage of participant `id` as it logs it (binary kind 1 frame).
fn kp_frame(id: u64, tag: &[u8]) -> Vec<u8> {
    client_key_package_frame(&build::key_package_message(id, tag))
}

/// A commit at `epoch` adding the KeyPackages of `adds` (`(id, tag)` as given to [`kp_frame`]).
fn add_frame(gid: &[u8], epoch: u64, adds: &[(u64, &[u8])]) -> Vec<u8> {
    let kps: Vec<Vec<u8>> = adds
        .iter()
        .map(|(id, tag)| build::key_package(*id, tag))
        .collect();
    client_commit_frame(
        &build::commit(gid, epoch, 0, 1, &kps, &[]),
        &build::message(WireFormat::Welcome, b"welcome-body"),
    )
}

/// `id` logs a KeyPackage and `committer` adds it at the room's current epoch.
fn add_member(room: &mut Room, now: Instant, committer: u64, id: u64) -> Vec<Output> {
    bin(room, now, id, kp_frame(id, b"kp"));
    let (gid, epoch) = room.group_epoch().map(|(g, e)| (g.to_vec(), e)).unwrap();
    bin(room, now, committer, add_frame(&gid, epoch, &[(id, b"kp")]))
}

fn rejected(out: &[Output], to: u64) -> Vec<String> {
    replies(out, to)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::CommitRejected { reason, .. } => Some(reason),
            _ => None,
        })
        .collect()
}

fn is_member(room: &Room, id: u64) -> bool {
    room.group.as_ref().is_some_and(|g| g.members.contains(&id))
}

fn ready(epoch: u64) -> ClientMessage {
    ClientMessage::Ready {
        epoch,
        group_id: None,
    }
}

#[test]
fn first_joiner_gets_welcome_then_joined_then_creator() {
    let now = Instant::now();
    let mut room = Room::new("r", RoomConfig::default(), 7);
    let id = room.join(now, req("alice")).unwrap();
    assert_eq!(id, 1);
    let out = drain(&mut room);
    match &out[0] {
        Output::Reply {
            to: 1,
            msg:
                ServerMessage::Welcome {
                    seq,
                    snapshot,
                    participant_id,
                    ..
                },
        } => {
            assert_eq!(*seq, 0);
            assert_eq!(*participant_id, 1);
            assert!(snapshot.participants.is_empty());
            assert!(snapshot.group.is_none());
        }
        other => panic!("expected welcome, got {other:?}"),
    }
    let ev = events(&out);
    assert_eq!(ev.len(), 2);
    assert!(matches!(
        ev[0],
        (
            1,
            RoomEvent::Joined {
                id: 1,
                host: true,
                ..
            }
        )
    ));
    let (2, RoomEvent::Creator { id: 1, group_id }) = &ev[1] else {
        panic!("{ev:?}")
    };
    assert_eq!(group_id, &hex::encode(group_id_bytes(7, 1)));
}

fn group_id_bytes(seed: u64, n: u64) -> Vec<u8> {
    let mut v = seed.to_be_bytes().to_vec();
    v.extend_from_slice(&n.to_be_bytes());
    v
}

#[test]
fn second_joiner_sees_snapshot_and_no_new_creator() {
    let now = Instant::now();
    let mut room = Room::new("r", RoomConfig::default(), 1);
    room.join(now, req("alice")).unwrap();
    drain(&mut room);
    let id = room.join(now, req("bob")).unwrap();
    assert_eq!(id, 2);
    let out = drain(&mut room);
    let ServerMessage::Welcome { seq, snapshot, .. } = &replies(&out, 2)[0] else {
        panic!()
    };
    assert_eq!(*seq, 2);
    assert_eq!(snapshot.participants.len(), 1);
    assert_eq!(snapshot.group.as_ref().unwrap().creator, 1);
    let ev = events(&out);
    assert_eq!(ev.len(), 1);
    assert!(matches!(
        ev[0],
        (
            3,
            RoomEvent::Joined {
                id: 2,
                host: false,
                ..
            }
        )
    ));
}

#[test]
fn commit_arbitration_first_in_order_wins() {
    let now = Instant::now();
    let mut room = Room::new("r", RoomConfig::default(), 1);
    room.join(now, req("alice")).unwrap();
    room.join(now, req("bob")).unwrap();
    room.join(now, req("carol")).unwrap();
    drain(&mut room);
    let gid = group_id(&room);

    // A KeyPackage is relayed verbatim.
    let kp = build::key_package_message(2, b"kp");
    let out = bin(&mut room, now, 2, client_key_package_frame(&kp));
    let Output::Broadcast(e) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(
        e.body,
        EntryBody::Mls {
            kind: KIND_KEY_PACKAGE,
            from: 2
        }
    );
    let Wire::Binary(w) = &e.wire else { panic!() };
    let f = protocol::MlsFrame::decode(w).unwrap();
    assert_eq!((f.seq, f.kind, f.from, f.payload), (e.seq, 1, 2, kp));
    assert!(!is_member(&room, 2));

    // Creator commits at epoch 0, adding Bob: accepted, Bob is a member.
    let frame = add_frame(&gid, 0, &[(2, b"kp")]);
    let out = bin(&mut room, now, 1, frame.clone());
    let Output::Broadcast(e) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(
        e.body,
        EntryBody::Mls {
            kind: KIND_COMMIT,
            from: 1
        }
    );
    let Wire::Binary(w) = &e.wire else { panic!() };
    assert_eq!(&w[17..], &frame[1..]);
    assert_eq!(room.group_epoch().unwrap().1, 1);
    assert!(is_member(&room, 2));

    // A second commit for epoch 0: rejected, not logged.
    let seq_before = room.seq();
    let out = bin(&mut room, now, 1, commit_frame(&gid, 0));
    assert_eq!(room.seq(), seq_before);
    assert_eq!(
        replies(&out, 1),
        vec![ServerMessage::CommitRejected {
            epoch: Some(0),
            current_epoch: Some(1),
            reason: "stale_epoch".into(),
            detail: None,
        }]
    );
    // Carol was never added: rejected, whatever she sends.
    let out = bin(&mut room, now, 3, commit_frame(&gid, 1));
    assert_eq!(rejected(&out, 3), vec!["not_member"]);
    // Other group: rejected.
    let out = bin(&mut room, now, 1, commit_frame(b"other", 1));
    assert_eq!(rejected(&out, 1), vec!["wrong_group"]);
    // Bob, added by the accepted commit, may commit the next epoch.
    msg(&mut room, now, 2, ready(1));
    let out = bin(&mut room, now, 2, commit_frame(&gid, 1));
    assert!(
        matches!(&out[0], Output::Broadcast(e) if e.body == EntryBody::Mls { kind: KIND_COMMIT, from: 2 })
    );
    assert_eq!(room.group_epoch().unwrap().1, 2);
    assert_eq!(room.seq(), seq_before + 1);
}

#[test]
fn only_commits_adding_logged_key_packages_are_accepted() {
    let now = Instant::now();
    let mut room = Room::new("r", RoomConfig::default(), 1);
    room.join(now, req("alice")).unwrap();
    room.join(now, req("bob")).unwrap();
    room.join(now, req("carol")).unwrap();
    drain(&mut room);
    let gid = group_id(&room);
    bin(&mut room, now, 2, kp_frame(2, b"bob-1"));
    let seq = room.seq();
    // A ghost (id 9, never joined), a KeyPackage Bob never logged, and Bob's
    // KeyPackage claimed by Carol's id: all refused.
    for adds in [
        vec![(9u64, &b"ghost"[..])],
        vec![(2, &b"bob-2"[..])],
        vec![(3, &b"bob-1"[..])],
        vec![(2, &b"bob-1"[..]), (9, &b"ghost"[..])],
    ] {
        let out = bin(&mut room, now, 1, add_frame(&gid, 0, &adds));
        assert_eq!(rejected(&out, 1), vec!["unknown_key_package"], "{adds:?}");
    }
    // An add without the Welcome, a Welcome without an add.
    let kp = build::key_package(2, b"bob-1");
    let out = bin(
        &mut room,
        now,
        1,
        client_commit_frame(&build::commit(&gid, 0, 0, 1, &[kp], &[]), &[]),
    );
    assert_eq!(rejected(&out, 1), vec!["malformed"]);
    let out = bin(
        &mut room,
        now,
        1,
        client_commit_frame(
            &build::commit(&gid, 0, 0, 1, &[], &[]),
            &build::message(WireFormat::Welcome, b"w"),
        ),
    );
    assert_eq!(rejected(&out, 1), vec!["malformed"]);
    assert_eq!(room.seq(), seq);
    assert_eq!(room.group_epoch().unwrap().1, 0);
    // Bob's own KeyPackage: accepted. Carol is still not a member.
    let out = bin(&mut room, now, 1, add_frame(&gid, 0, &[(2, b"bob-1")]));
    assert!(rejected(&out, 1).is_empty());
    assert!(is_member(&room, 2));
    assert!(!is_member(&room, 3));
    // A member that logs a new KeyPackage stops being a member.
    bin(&mut room, now, 2, kp_frame(2, b"bob-2"));
    assert!(!is_member(&room, 2));
    let out = msg(&mut room, now, 2, ready(1));
    assert_eq!(error_codes(&out, 2), vec![error_code::NOT_MEMBER]);
}

#[test]
fn non_members_cannot_report_ready_or_commit() {
    let now = Instant::now();
    let mut room = Room::new("r", RoomConfig::default(), 1);
    room.join(now, req("alice")).unwrap();
    room.join(now, req("mallory")).unwrap();
    drain(&mut room);
    let gid = group_id(&room);
    let seq = room.seq();
    let out = msg(&mut room, now, 2, ready(0));
    assert_eq!(error_codes(&out, 2), vec![error_code::NOT_MEMBER]);
    assert!(!is_member(&room, 2));
    // A ready naming another group is refused too (not silently counted).
    let out = msg(
        &mut room,
        now,
        2,
        ClientMessage::Ready {
            epoch: 0,
            group_id: Some("00".into()),
        },
    );
    assert_eq!(error_codes(&out, 2), vec![error_code::NOT_MEMBER]);
    // Commits from Mallory: a well-formed one, garbage, and a truncated header.
    for frame in [
        commit_frame(&gid, 0),
        vec![2, 0, 0, 0, 3, 1, 2, 3],
        client_commit_frame(b"\x00\x01", &[]),
    ] {
        let out = bin(&mut room, now, 2, frame);
        assert_eq!(rejected(&out, 2), vec!["not_member"]);
    }
    let out = bin(&mut room, now, 2, commit_frame(&gid, 0));
    assert!(matches!(
        &replies(&out, 2)[..],
        [ServerMessage::CommitRejected {
            epoch: Some(0),
            current_epoch: Some(0),
            ..
        }]
    ));
    assert_eq!(room.seq(), seq);
    assert_eq!(room.group_epoch().unwrap(), (&gid[..], 0));
}

#[test]
fn private_message_commits_are_refused() {
    let now = Instant::now();
    let mut room = Room::new("r", RoomConfig::default(), 1);
    room.join(now, req("alice")).unwrap();
    drain(&mut room);
    let gid = group_id(&room);
    let commit = build::private_message(&gid, 0, 3, b"sealed");
    let out = bin(&mut room, now, 1, client_commit_frame(&commit, &[]));
    assert!(matches!(
        &replies(&out, 1)[..],
        [ServerMessage::CommitRejected { epoch: Some(0), reason, detail: Some(_), .. }] if reason == "malformed"
    ));
    assert_eq!(room.group_epoch().unwrap().1, 0);
}

#[test]
fn ready_from_all_members_executes_else_timeout_does() {
    let t0 = Instant::now();
    let mut room = Room::new("r", RoomConfig::default(), 1);
    room.join(t0, req("alice")).unwrap();
    room.join(t0, req("bob")).unwrap();
    drain(&mut room);
    // Creator reports ready for epoch 0: execute {0}.
    let out = msg(&mut room, t0, 1, ready(0));
    assert!(matches!(
        events(&out)[..],
        [(_, RoomEvent::Execute { epoch: 0 })]
    ));
    let gid = group_id(&room);
    add_member(&mut room, t0, 1, 2);
    // Bob was added and reports for epoch 1; alice not yet: no execute.
    let out = msg(&mut room, t0, 2, ready(1));
    assert!(events(&out).is_empty());
    let out = msg(&mut room, t0, 1, ready(1));
    assert!(matches!(
        events(&out)[..],
        [(_, RoomEvent::Execute { epoch: 1 })]
    ));

    // Next commit: only alice reports; the 2 s timeout executes.
    let t1 = t0 + Duration::from_millis(100);
    bin(&mut room, t1, 1, commit_frame(&gid, 1));
    msg(&mut room, t1, 1, ready(2));
    assert_eq!(room.poll_timeout(), Some(t1 + Duration::from_secs(2)));
    room.handle_timeout(t1 + Duration::from_millis(1999));
    assert!(events(&drain(&mut room)).is_empty());
    room.handle_timeout(t1 + Duration::from_secs(2));
    assert!(matches!(
        events(&drain(&mut room))[..],
        [(_, RoomEvent::Execute { epoch: 2 })]
    ));
    // Ready ahead of the group is an error.
    let out = msg(&mut room, t1, 2, ready(9));
    assert_eq!(error_codes(&out, 2), vec![error_code::INVALID]);
}

#[test]
fn leaving_unready_member_triggers_execute() {
    let t0 = Instant::now();
    let (mut room, gid) = three_members(t0);
    // Alice commits at epoch 2; Bob was a member before it and is waited for ...
    bin(&mut room, t0, 1, commit_frame(&gid, 2));
    msg(&mut room, t0, 1, ready(3));
    assert!(execute_in(&msg(&mut room, t0, 3, ready(3))).is_none());
    // ... until he leaves without reporting.
    let out = msg(&mut room, t0, 2, ClientMessage::Leave {});
    let ev = events(&out);
    assert!(matches!(
        ev[0],
        (
            _,
            RoomEvent::Left {
                id: 2,
                reason: LeaveReason::Left
            }
        )
    ));
    assert!(matches!(ev[1], (_, RoomEvent::Execute { epoch: 3 })));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Gone {
            id: 2,
            code: close::NORMAL,
            ..
        }
    )));
}

#[test]
fn execute_does_not_wait_for_the_joiners_the_commit_added() {
    let t0 = Instant::now();
    let mut room = Room::new("r", RoomConfig::default(), 1);
    for who in ["alice", "bob", "carol"] {
        room.join(t0, req(who)).unwrap();
    }
    msg(&mut room, t0, 1, ready(0));
    // Alice adds Bob: she alone was in the group, so her ready executes epoch 1 before Bob
    // processed his Welcome (his frames under epoch 1 wait in his holdback until then).
    add_member(&mut room, t0, 1, 2);
    assert_eq!(execute_in(&msg(&mut room, t0, 1, ready(1))), Some(1));
    assert!(execute_in(&msg(&mut room, t0, 2, ready(1))).is_none());
    // Alice adds Carol: Bob is an existing member now and is waited for; Carol is not.
    add_member(&mut room, t0, 1, 3);
    assert!(execute_in(&msg(&mut room, t0, 1, ready(2))).is_none());
    assert!(execute_in(&msg(&mut room, t0, 3, ready(2))).is_none());
    assert_eq!(execute_in(&msg(&mut room, t0, 2, ready(2))), Some(2));
}

/// The epoch of the first `execute` among `out`, if any.
fn execute_in(out: &[Output]) -> Option<u64> {
    events(out).iter().find_map(|(_, e)| match e {
        RoomEvent::Execute { epoch } => Some(*epoch),
        _ => None,
    })
}

#[test]
fn a_member_whose_socket_dropped_is_not_waited_for() {
    let t0 = Instant::now();
    let (mut room, gid) = three_members(t0);
    // Carol's socket drops: she stays in the room (resume window); `away` is logged.
    room.disconnect(t0, 3);
    assert_eq!(
        events(&drain(&mut room))
            .into_iter()
            .map(|(_, e)| e)
            .collect::<Vec<_>>(),
        vec![RoomEvent::Away { id: 3 }]
    );
    assert!(room.contains(3) && !room.is_connected(3) && is_member(&room, 3));
    // A commit: Alice and Bob report ready; Carol is not waited for.
    let t1 = t0 + Duration::from_millis(100);
    bin(&mut room, t1, 1, commit_frame(&gid, 2));
    assert!(execute_in(&msg(&mut room, t1, 1, ready(3))).is_none());
    let t2 = t1 + Duration::from_millis(30);
    assert_eq!(execute_in(&msg(&mut room, t2, 2, ready(3))), Some(3));
    assert_eq!(room.group.as_ref().unwrap().executed, Some(3));

    // A socket that drops while the others wait completes the set at that moment.
    let (mut room, gid) = three_members(t0);
    bin(&mut room, t1, 1, commit_frame(&gid, 2));
    msg(&mut room, t1, 1, ready(3));
    msg(&mut room, t1, 2, ready(3));
    room.disconnect(t2, 3);
    assert_eq!(execute_in(&drain(&mut room)), Some(3));
    // A second disconnect of the same participant changes nothing.
    room.disconnect(t2, 3);
    assert!(drain(&mut room).is_empty());
    // Unknown participants are ignored.
    room.disconnect(t2, 99);
    assert!(drain(&mut room).is_empty());
}

/// The `away`/`back` entries of participant `id` among `out`'s broadcasts.
fn presence(out: &[Output]) -> Vec<RoomEvent> {
    events(out)
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| matches!(e, RoomEvent::Away { .. } | RoomEvent::Back { .. }))
        .collect()
}

#[test]
fn away_and_back_are_logged_in_order_and_in_the_snapshot() {
    let t0 = Instant::now();
    let (mut room, _) = three_members(t0);
    let carol_seen = room.seq();
    room.disconnect(t0, 3);
    let out = drain(&mut room);
    assert_eq!(presence(&out), vec![RoomEvent::Away { id: 3 }]);
    // A joiner's snapshot says who is away now, agreeing with the log it follows.
    let snap = room.snapshot();
    let away: Vec<(u64, bool)> = snap.participants.iter().map(|p| (p.id, p.away)).collect();
    assert_eq!(away, vec![(1, false), (2, false), (3, true)]);
    let json = serde_json::to_value(&snap).unwrap();
    assert_eq!(json["participants"][2]["away"], serde_json::json!(true));
    assert_eq!(json["participants"][0]["away"], serde_json::json!(false));
    room.join(t0, req("dave")).unwrap();
    let out = drain(&mut room);
    match &out[0] {
        Output::Reply {
            msg: ServerMessage::Welcome { snapshot, .. },
            ..
        } => assert!(snapshot.participants.iter().any(|p| p.id == 3 && p.away)),
        other => panic!("expected welcome, got {other:?}"),
    }
    // Carol resumes: `back` (with her resume point) is logged after her replay, so her
    // new connection gets it after the entries she missed, like everybody else.
    let t1 = t0 + Duration::from_secs(3);
    room.resume(t1, 3, "tok-carol", carol_seen).unwrap();
    let out = drain(&mut room);
    let back = out
        .iter()
        .position(|o| {
            matches!(o, Output::Broadcast(e)
                if matches!(e.body, EntryBody::Event(RoomEvent::Back { id: 3, from_seq }) if from_seq == carol_seen))
        })
        .expect("back is logged");
    let last_replayed = out
        .iter()
        .rposition(|o| matches!(o, Output::Deliver { to: 3, .. }))
        .expect("a replay");
    assert!(last_replayed < back, "{out:?}");
    assert!(!room.snapshot().participants.iter().any(|p| p.away));
    // A resume that replaces a connection the room still held (it never saw the old
    // one end) logs nothing; nor does a second disconnect.
    room.resume(t1, 3, "tok-carol", room.seq()).unwrap();
    assert!(presence(&drain(&mut room)).is_empty());
    room.disconnect(t1, 2);
    room.disconnect(t1, 2);
    assert_eq!(presence(&drain(&mut room)), vec![RoomEvent::Away { id: 2 }]);
    // A presence timeout while away: `left` as before, and the snapshot forgets it.
    room.handle_timeout(t1 + Duration::from_secs(15));
    let out = drain(&mut room);
    assert!(
        events(&out)
            .iter()
            .any(|(_, e)| matches!(e, RoomEvent::Left { id: 2, .. }))
    );
    assert!(!room.contains(2));
}

#[test]
fn a_flapping_connection_logs_a_bounded_number_of_presence_entries() {
    let t0 = Instant::now();
    let (mut room, _) = three_members(t0);
    drain(&mut room);
    // Carol reconnects in a loop: at most AWAY_ENTRIES_PER_WINDOW away/back pairs per window.
    for i in 0..40u64 {
        let t = t0 + Duration::from_millis(i * 10);
        room.disconnect(t, 3);
        room.resume(t, 3, "tok-carol", room.seq()).unwrap();
    }
    let logged = presence(&drain(&mut room));
    assert_eq!(logged.len(), 2 * AWAY_ENTRIES_PER_WINDOW, "{logged:?}");
    assert!(matches!(logged.last(), Some(RoomEvent::Back { id: 3, .. })));
    // An unlogged disconnect: the snapshot does not call her away (it agrees with the
    // log), but execute still does not wait for her.
    let t1 = t0 + Duration::from_secs(1);
    room.disconnect(t1, 3);
    assert!(presence(&drain(&mut room)).is_empty());
    assert!(!room.is_connected(3));
    assert!(!room.snapshot().participants.iter().any(|p| p.away));
    room.resume(t1, 3, "tok-carol", room.seq()).unwrap();
    assert!(presence(&drain(&mut room)).is_empty());
    // A window later, away is logged again.
    let t2 = t0 + AWAY_WINDOW + Duration::from_secs(1);
    room.disconnect(t2, 3);
    assert_eq!(presence(&drain(&mut room)), vec![RoomEvent::Away { id: 3 }]);
    // The presence entries supersede each other: once the log is full only the latest
    // stays (the compaction drops the others first).
    let retained = room
        .log
        .iter()
        .filter(|e| {
            matches!(
                e.body,
                EntryBody::Event(RoomEvent::Away { .. } | RoomEvent::Back { .. })
            )
        })
        .count();
    assert_eq!(room.superseded.len(), retained - 1);
}

#[test]
fn execute_still_waits_for_a_live_member_up_to_the_timeout() {
    let t0 = Instant::now();
    let (mut room, gid) = three_members(t0);
    // Carol is connected but slow: execute waits for her ready up to the 2 s timeout.
    let t1 = t0 + Duration::from_millis(100);
    bin(&mut room, t1, 1, commit_frame(&gid, 2));
    msg(&mut room, t1, 1, ready(3));
    msg(&mut room, t1, 2, ready(3));
    assert_eq!(room.poll_timeout(), Some(t1 + Duration::from_secs(2)));
    room.handle_timeout(t1 + Duration::from_millis(1999));
    assert!(execute_in(&drain(&mut room)).is_none());
    room.handle_timeout(t1 + Duration::from_secs(2));
    assert_eq!(execute_in(&drain(&mut room)), Some(3));

    // A member that resumed is live again and waited for again.
    let (mut room, gid) = three_members(t0);
    room.disconnect(t0, 3);
    room.resume(t0, 3, "tok-carol", room.seq()).unwrap();
    drain(&mut room);
    assert!(room.is_connected(3));
    bin(&mut room, t1, 1, commit_frame(&gid, 2));
    msg(&mut room, t1, 1, ready(3));
    assert!(execute_in(&msg(&mut room, t1, 2, ready(3))).is_none());
    assert_eq!(execute_in(&msg(&mut room, t1, 3, ready(3))), Some(3));
}

#[test]
fn a_resumed_member_catches_up_from_the_log() {
    let t0 = Instant::now();
    let (mut room, gid) = three_members(t0);
    let carol_seen = room.seq();
    room.disconnect(t0, 3);
    // While Carol is away: Dave joins, Alice adds him, everyone live is ready: execute.
    let t1 = t0 + Duration::from_secs(1);
    room.join(t1, req("dave")).unwrap();
    drain(&mut room);
    bin(&mut room, t1, 4, kp_frame(4, b"kp"));
    bin(&mut room, t1, 1, add_frame(&gid, 2, &[(4, b"kp")]));
    msg(&mut room, t1, 1, ready(3));
    // Dave, whom the commit added, is not waited for: Bob's ready completes it.
    assert_eq!(execute_in(&msg(&mut room, t1, 2, ready(3))), Some(3));
    assert!(execute_in(&msg(&mut room, t1, 4, ready(3))).is_none());
    // Carol resumes within her presence window: the replay holds the commit that added
    // Dave and then the execute, in log order.
    let t2 = t0 + Duration::from_secs(5);
    room.resume(t2, 3, "tok-carol", carol_seen).unwrap();
    let out = drain(&mut room);
    let replay: Vec<&Entry> = out
        .iter()
        .filter_map(|o| match o {
            Output::Deliver { to: 3, entry } => Some(entry.as_ref()),
            _ => None,
        })
        .collect();
    let commit = replay
        .iter()
        .position(|e| {
            matches!(
                e.body,
                EntryBody::Mls {
                    kind: KIND_COMMIT,
                    from: 1
                }
            )
        })
        .expect("the commit is replayed");
    let execute = replay
        .iter()
        .position(|e| matches!(e.body, EntryBody::Event(RoomEvent::Execute { epoch: 3 })))
        .expect("the execute is replayed");
    assert!(commit < execute);
    assert!(room.is_connected(3) && is_member(&room, 3));
    // Her late ready for the executed epoch is accepted and changes nothing.
    let out = msg(&mut room, t2, 3, ready(3));
    assert!(out.is_empty(), "{out:?}");
    // Not resuming within the presence timeout: she leaves as before.
    let (mut room, _) = three_members(t0);
    room.disconnect(t0, 3);
    room.handle_timeout(t0 + Duration::from_secs(15));
    assert!(!room.contains(3));
}

/// Join → execute in the case issue 18 measured: a participant closed its page (its
/// socket dropped, it is in its resume window) and somebody joins. Returns the time
/// from the commit that adds the joiner to its `execute`, when every live member
/// reports `ready` `ready_after` after the commit. `tell_room`: whether the room learns
/// that the socket dropped (the driver's `disconnect`; before issue 18 it did not).
fn join_after_departure(tell_room: bool, ready_after: Duration) -> Duration {
    let t0 = Instant::now();
    let mut room = Room::new("r", RoomConfig::default(), 1);
    for who in ["alice", "bob"] {
        room.join(t0, req(who)).unwrap();
    }
    msg(&mut room, t0, 1, ready(0));
    add_member(&mut room, t0, 1, 2);
    msg(&mut room, t0, 1, ready(1));
    msg(&mut room, t0, 2, ready(1));
    drain(&mut room);
    let gid = group_id(&room);
    // Bob closes his page.
    let left = t0 + Duration::from_secs(10);
    if tell_room {
        room.disconnect(left, 2);
    }
    // Carol joins 3 s later (well within Bob's 15 s presence window).
    let t1 = left + Duration::from_secs(3);
    room.join(t1, req("carol")).unwrap();
    bin(&mut room, t1, 3, kp_frame(3, b"kp"));
    let out = bin(&mut room, t1, 1, add_frame(&gid, 1, &[(3, b"kp")]));
    assert!(rejected(&out, 1).is_empty());
    let committed = t1;
    let t2 = committed + ready_after;
    let mut out = msg(&mut room, t2, 1, ready(2));
    out.extend(msg(&mut room, t2, 3, ready(2)));
    if execute_in(&out) == Some(2) {
        return t2 - committed;
    }
    loop {
        let t = room.poll_timeout().expect("a timer is pending");
        room.handle_timeout(t);
        if execute_in(&drain(&mut room)) == Some(2) {
            return t - committed;
        }
    }
}

#[test]
fn a_join_right_after_a_departure_executes_without_waiting_for_the_departed() {
    let ready_after = Duration::from_millis(40);
    let before = join_after_departure(false, ready_after);
    let after = join_after_departure(true, ready_after);
    println!(
        "join -> execute after a departure (live members ready {} ms after the commit): \
         room unaware of the dropped socket {} ms, aware {} ms",
        ready_after.as_millis(),
        before.as_millis(),
        after.as_millis()
    );
    // Unaware, the room waits for the departed member until the execute timeout.
    assert_eq!(before, RoomConfig::default().execute_timeout);
    // Aware, it executes the moment the live members are ready.
    assert_eq!(after, ready_after);
}

#[test]
fn a_connected_participant_is_named_creator_before_one_in_its_resume_window() {
    let t0 = Instant::now();
    let mut room = Room::new("r", RoomConfig::default(), 1);
    for who in ["alice", "bob", "carol"] {
        room.join(t0, req(who)).unwrap();
    }
    drain(&mut room);
    // Bob's socket drops; Alice (the only group member) leaves: Carol, not Bob, creates.
    room.disconnect(t0, 2);
    let out = msg(&mut room, t0, 1, ClientMessage::Leave {});
    let creators: Vec<u64> = events(&out)
        .into_iter()
        .filter_map(|(_, e)| match e {
            RoomEvent::Creator { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(creators, vec![3]);
    // Nobody connected: the oldest is named as before.
    let mut room = Room::new("r", RoomConfig::default(), 1);
    for who in ["alice", "bob", "carol"] {
        room.join(t0, req(who)).unwrap();
    }
    room.disconnect(t0, 2);
    room.disconnect(t0, 3);
    drain(&mut room);
    let out = msg(&mut room, t0, 1, ClientMessage::Leave {});
    assert!(
        events(&out)
            .iter()
            .any(|(_, e)| matches!(e, RoomEvent::Creator { id: 2, .. }))
    );
}

#[test]
fn creator_renamed_when_all_group_members_leave() {
    let t0 = Instant::now();
    let mut room = Room::new("r", RoomConfig::default(), 1);
    room.join(t0, req("alice")).unwrap();
    room.join(t0, req("bob")).unwrap();
    room.join(t0, req("carol")).unwrap();
    drain(&mut room);
    let first = group_id(&room);
    let out = msg(&mut room, t0, 1, ClientMessage::Leave {});
    let ev = events(&out);
    assert!(matches!(ev[0], (_, RoomEvent::Left { id: 1, .. })));
    assert!(matches!(ev[1], (_, RoomEvent::Host { id: 2 })));
    let (_, RoomEvent::Creator { id: 2, group_id }) = &ev[2] else {
        panic!("{ev:?}")
    };
    assert_ne!(hex::decode(group_id).unwrap(), first);
    assert_eq!(room.group_epoch().unwrap().1, 0);
}

#[test]
fn presence_timeout_announces_leave() {
    let t0 = Instant::now();
    let cfg = RoomConfig {
        presence_timeout: Duration::from_secs(15),
        ..RoomConfig::default()
    };
    let mut room = Room::new("r", cfg, 1);
    room.join(t0, req("alice")).unwrap();
    room.join(t0, req("bob")).unwrap();
    drain(&mut room);
    // The creator's epoch-0 execute comes after 2 s without a ready.
    room.handle_timeout(t0 + Duration::from_secs(2));
    assert!(matches!(
        events(&drain(&mut room))[..],
        [(_, RoomEvent::Execute { epoch: 0 })]
    ));
    let t10 = t0 + Duration::from_secs(10);
    msg(&mut room, t10, 1, ClientMessage::Ping { t: Some(5) });
    room.handle_timeout(t0 + Duration::from_secs(14));
    assert!(drain(&mut room).is_empty());
    assert_eq!(room.poll_timeout(), Some(t0 + Duration::from_secs(15)));
    room.handle_timeout(t0 + Duration::from_secs(15));
    let out = drain(&mut room);
    assert!(matches!(
        out[0],
        Output::Gone {
            id: 2,
            code: close::PRESENCE_TIMEOUT,
            ..
        }
    ));
    assert!(matches!(
        events(&out)[0],
        (
            _,
            RoomEvent::Left {
                id: 2,
                reason: LeaveReason::Timeout
            }
        )
    ));
    assert!(room.contains(1));
    room.touch(t0 + Duration::from_secs(20), 1);
    room.handle_timeout(t0 + Duration::from_secs(34));
    assert!(room.contains(1));
    room.handle_timeout(t0 + Duration::from_secs(35));
    assert!(room.is_empty());
}

#[test]
fn resume_replays_missed_entries() {
    let t0 = Instant::now();
    let mut room = Room::new("r", RoomConfig::default(), 1);
    room.join(t0, req("alice")).unwrap();
    room.join(t0, req("bob")).unwrap();
    drain(&mut room);
    let seen = room.seq();
    msg(&mut room, t0, 1, ClientMessage::Hand { raised: true });
    // Bob (not yet in the MLS group) announces a KeyPackage.
    bin(
        &mut room,
        t0,
        2,
        client_key_package_frame(&build::message(WireFormat::KeyPackage, b"x")),
    );
    assert_eq!(
        room.resume(t0, 2, "wrong", seen),
        Err(ResumeError::BadToken)
    );
    assert_eq!(
        room.resume(t0, 9, "tok-bob", seen),
        Err(ResumeError::UnknownParticipant)
    );
    assert!(matches!(
        room.resume(t0, 2, "tok-bob", 99),
        Err(ResumeError::FutureSeq { .. })
    ));
    room.resume(t0, 2, "tok-bob", seen).unwrap();
    let out = drain(&mut room);
    assert!(
        matches!(&out[0], Output::Reply { to: 2, msg: ServerMessage::Resumed { from_seq, seq, .. } } if *from_seq == seen && *seq == seen + 2)
    );
    let delivered: Vec<u64> = out
        .iter()
        .filter_map(|o| match o {
            Output::Deliver { to: 2, entry } => Some(entry.seq),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, vec![seen + 1, seen + 2]);
}

#[test]
fn resume_beyond_window_fails_and_removes() {
    let t0 = Instant::now();
    let cfg = RoomConfig {
        replay_max_entries: 4,
        ..RoomConfig::default()
    };
    let mut room = Room::new("r", cfg, 1);
    room.join(t0, req("alice")).unwrap();
    room.join(t0, req("bob")).unwrap();
    drain(&mut room);
    // Later than the presence timeout: the old entries are nobody's resume window any more,
    // so even a member over its share trims them.
    let t1 = t0 + Duration::from_secs(20);
    for i in 0..6 {
        // `session` entries: every resume needs them (hand toggles would supersede each other).
        assert!(room.bind_sfu_session(t1, 1, &format!("s{i}")));
    }
    drain(&mut room);
    let err = room.resume(t1, 2, "tok-bob", 1).unwrap_err();
    assert!(matches!(err, ResumeError::Gap { last_seq: 1, .. }));
    assert!(!room.contains(2));
    let out = drain(&mut room);
    assert!(matches!(
        out[0],
        Output::Gone {
            id: 2,
            code: close::RESUME_FAILED,
            ..
        }
    ));
    assert!(matches!(
        events(&out)[0],
        (
            _,
            RoomEvent::Left {
                id: 2,
                reason: LeaveReason::ResumeFailed
            }
        )
    ));
}

#[test]
fn log_is_bounded_by_bytes() {
    let t0 = Instant::now();
    let cfg = RoomConfig {
        replay_max_bytes: 3000,
        ..RoomConfig::default()
    };
    let mut room = Room::new("r", cfg, 1);
    for p in 1..=10u64 {
        room.join(t0, req(&format!("p{p}"))).unwrap();
    }
    // One KeyPackage each (KeyPackages of one member supersede each other), spaced beyond
    // the presence timeout so trimming is plain aging.
    for p in 1..=10u64 {
        let at = t0 + Duration::from_secs(20 * p);
        bin(
            &mut room,
            at,
            p,
            client_key_package_frame(&build::message(WireFormat::KeyPackage, &[0; 1000])),
        );
    }
    assert!(room.log_bytes <= 3000);
    assert!(room.log.len() >= 2);
    let seqs: Vec<u64> = room.log.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(*seqs.last().unwrap(), room.seq());
}

#[test]
fn host_permissions() {
    let t0 = Instant::now();
    let mut room = Room::new("r", RoomConfig::default(), 1);
    room.join(t0, req("alice")).unwrap(); // host: first joiner
    room.join(t0, req("bob")).unwrap();
    room.join(t0, req("carol")).unwrap();
    drain(&mut room);
    // A non-host cannot mute, remove, lock or cap.
    for m in [
        ClientMessage::Mute {
            target: 1,
            kind: TrackKind::Audio,
        },
        ClientMessage::Remove { target: 3 },
        ClientMessage::Lock { locked: true },
        ClientMessage::SetCap {
            max_participants: Some(2),
        },
    ] {
        let out = msg(&mut room, t0, 2, m);
        assert_eq!(error_codes(&out, 2), vec![error_code::FORBIDDEN]);
        assert!(events(&out).is_empty());
    }
    // Self-mute is fine.
    let out = msg(
        &mut room,
        t0,
        2,
        ClientMessage::Mute {
            target: 2,
            kind: TrackKind::Audio,
        },
    );
    assert!(matches!(
        events(&out)[0],
        (_, RoomEvent::Muted { id: 2, by: 2, .. })
    ));
    // The host can.
    let out = msg(
        &mut room,
        t0,
        1,
        ClientMessage::Mute {
            target: 2,
            kind: TrackKind::Video,
        },
    );
    assert!(matches!(
        events(&out)[0],
        (
            _,
            RoomEvent::Muted {
                id: 2,
                by: 1,
                kind: TrackKind::Video
            }
        )
    ));
    let out = msg(
        &mut room,
        t0,
        1,
        ClientMessage::Mute {
            target: 42,
            kind: TrackKind::Audio,
        },
    );
    assert_eq!(error_codes(&out, 1), vec![error_code::NOT_FOUND]);
    let out = msg(&mut room, t0, 1, ClientMessage::Remove { target: 3 });
    assert!(matches!(
        out[0],
        Output::Gone {
            id: 3,
            code: close::REMOVED,
            ..
        }
    ));
    assert_eq!(room.join(t0, req("carol")), Err(JoinError::Removed));
    msg(&mut room, t0, 1, ClientMessage::Lock { locked: true });
    assert_eq!(room.join(t0, req("dave")), Err(JoinError::Locked));
    let host = Permissions {
        host: true,
        ..Permissions::default()
    };
    assert_eq!(room.join(t0, req_with("erin", host)), Ok(4));
    msg(&mut room, t0, 1, ClientMessage::Lock { locked: false });
    let out = msg(
        &mut room,
        t0,
        1,
        ClientMessage::SetCap {
            max_participants: Some(3),
        },
    );
    assert!(matches!(
        events(&out)[0],
        (
            _,
            RoomEvent::Cap {
                max_participants: 3,
                by: 1
            }
        )
    ));
    assert_eq!(room.join(t0, req("frank")), Err(JoinError::Full));
    let out = msg(
        &mut room,
        t0,
        1,
        ClientMessage::SetCap {
            max_participants: Some(0),
        },
    );
    assert_eq!(error_codes(&out, 1), vec![error_code::INVALID]);
    // Hosts cannot remove hosts.
    let out = msg(&mut room, t0, 1, ClientMessage::Remove { target: 4 });
    assert_eq!(error_codes(&out, 1), vec![error_code::FORBIDDEN]);
}

#[test]
fn tracks_need_an_own_sfu_session_and_publish_permission() {
    let t0 = Instant::now();
    let mut room = Room::new("r", RoomConfig::default(), 1);
    room.join(t0, req("alice")).unwrap();
    let viewer = Permissions {
        subscribe: true,
        ..Permissions::default()
    };
    room.join(t0, req_with("bob", viewer)).unwrap();
    drain(&mut room);
    let publish = |s: &str, t: &str| ClientMessage::Publish {
        session_id: s.into(),
        track_name: t.into(),
        kind: TrackKind::Audio,
        enabled: true,
    };
    let out = msg(&mut room, t0, 1, publish("s1", "mic"));
    assert_eq!(error_codes(&out, 1), vec![error_code::FORBIDDEN]);
    assert!(room.bind_sfu_session(t0, 1, "s1"));
    assert!(room.bind_sfu_session(t0, 2, "s2"));
    assert_eq!(room.sfu_session_owner("s1"), Some(1));
    let out = drain(&mut room);
    assert!(
        matches!(&events(&out)[0], (_, RoomEvent::Session { id: 1, session_id }) if session_id == "s1")
    );
    let out = msg(&mut room, t0, 1, publish("s2", "mic"));
    assert_eq!(error_codes(&out, 1), vec![error_code::FORBIDDEN]);
    let out = msg(&mut room, t0, 2, publish("s2", "mic"));
    assert_eq!(error_codes(&out, 2), vec![error_code::FORBIDDEN]);
    let out = msg(&mut room, t0, 1, publish("s1", "mic"));
    assert!(matches!(
        &events(&out)[0],
        (_, RoomEvent::Published { id: 1, .. })
    ));
    let out = msg(&mut room, t0, 1, publish("s1", "mic"));
    assert_eq!(error_codes(&out, 1), vec![error_code::INVALID]);
    // Host mute disables the track in server state.
    room.join(
        t0,
        req_with(
            "host",
            Permissions {
                host: true,
                ..Permissions::default()
            },
        ),
    )
    .unwrap();
    msg(
        &mut room,
        t0,
        3,
        ClientMessage::Mute {
            target: 1,
            kind: TrackKind::Audio,
        },
    );
    assert!(!room.snapshot().participants[0].tracks[0].enabled);
    let out = msg(
        &mut room,
        t0,
        1,
        ClientMessage::SetTrack {
            track_name: "mic".into(),
            enabled: true,
        },
    );
    assert!(matches!(
        &events(&out)[0],
        (
            _,
            RoomEvent::TrackEnabled {
                id: 1,
                enabled: true,
                ..
            }
        )
    ));
    let out = msg(
        &mut room,
        t0,
        1,
        ClientMessage::Unpublish {
            track_name: "mic".into(),
        },
    );
    assert!(matches!(
        &events(&out)[0],
        (_, RoomEvent::Unpublished { id: 1, .. })
    ));
    let out = msg(&mut room, t0, 2, ClientMessage::Speaking { speaking: true });
    assert_eq!(error_codes(&out, 2), vec![error_code::FORBIDDEN]);
}

#[test]
fn bad_binary_frames_are_refused_without_logging() {
    let t0 = Instant::now();
    let mut room = Room::new("r", RoomConfig::default(), 1);
    room.join(t0, req("alice")).unwrap();
    drain(&mut room);
    let seq = room.seq();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], error_code::MALFORMED),
        (vec![9, 1, 2], error_code::UNKNOWN_TYPE),
        (vec![1, 0, 1, 0, 1], error_code::MLS_FRAMING), // PublicMessage, not a KeyPackage
    ];
    for (frame, code) in cases {
        let out = bin(&mut room, t0, 1, frame);
        assert_eq!(error_codes(&out, 1), vec![code]);
    }
    assert_eq!(room.seq(), seq);
    // Commits that are not well-formed PublicMessage commits: `commit_rejected`, `malformed`.
    room.join(t0, req("bob")).unwrap();
    bin(&mut room, t0, 2, kp_frame(2, b"b"));
    drain(&mut room);
    let gid = group_id(&room);
    let seq = room.seq();
    let mut trailing = build::commit(&gid, 0, 0, 1, &[], &[]);
    trailing.push(0);
    let commits: Vec<Vec<u8>> = vec![
        vec![2, 0, 0, 0, 50, 1],   // length beyond frame
        vec![2, 0, 0, 0, 2, 0, 1], // truncated commit
        client_commit_frame(&build::public_commit(&gid, 0, 0, b"filler"), &[]), // header only
        client_commit_frame(&trailing, &[]),
        client_commit_frame(
            &build::commit(&gid, 0, 0, 1, &[build::key_package(2, b"b")], &[]),
            b"\x00\x01\x00\x05kp",
        ), // "welcome" is a KeyPackage
    ];
    for frame in commits {
        let out = bin(&mut room, t0, 1, frame);
        assert_eq!(rejected(&out, 1), vec!["malformed"]);
        assert!(error_codes(&out, 1).is_empty());
    }
    assert_eq!(room.seq(), seq);
    assert_eq!(room.group_epoch().unwrap().1, 0);
    let out = msg(
        &mut room,
        t0,
        1,
        ClientMessage::Hello {
            v: 1,
            token: None,
            resume: None,
            test_visible_only_to: None,
        },
    );
    assert_eq!(error_codes(&out, 1), vec![error_code::ALREADY_JOINED]);
}

#[test]
fn a_removed_member_is_cut_off_and_not_waited_for() {
    let t0 = Instant::now();
    let (mut room, gid) = three_members(t0);
    assert!(room.bind_sfu_session(t0, 3, "carol-cam"));
    assert!(room.bind_sfu_session(t0, 3, "carol-screen"));
    drain(&mut room);
    // The host removes Carol: her SFU sessions go out with her departure.
    let out = msg(&mut room, t0, 1, ClientMessage::Remove { target: 3 });
    let gone: Vec<&Output> = out
        .iter()
        .filter(|o| matches!(o, Output::Gone { .. }))
        .collect();
    assert!(matches!(
        gone[..],
        [Output::Gone { id: 3, code: close::REMOVED, sfu_sessions, .. }]
            if sfu_sessions == &vec!["carol-cam".to_owned(), "carol-screen".to_owned()]
    ));
    assert!(!is_member(&room, 3));
    // The committer's removal commit executes as soon as the remaining members are
    // ready, without waiting for Carol.
    let t1 = t0 + Duration::from_millis(50);
    bin(&mut room, t1, 1, commit_frame(&gid, 2));
    msg(&mut room, t1, 1, ready(3));
    let out = msg(&mut room, t1, 2, ready(3));
    assert!(matches!(
        events(&out)[..],
        [(_, RoomEvent::Execute { epoch: 3 })]
    ));
    // A remaining member that is slow is waited for `execute_timeout` at most.
    bin(&mut room, t1, 2, commit_frame(&gid, 3));
    msg(&mut room, t1, 2, ready(4));
    assert_eq!(
        room.poll_timeout(),
        Some(t1 + RoomConfig::default().execute_timeout)
    );
    room.handle_timeout(t1 + RoomConfig::default().execute_timeout);
    assert!(matches!(
        events(&drain(&mut room))[..],
        [(_, RoomEvent::Execute { epoch: 4 })]
    ));
}

// ---------------------------------------------------------------------------
// C5: the hostile-coordinator test hook.

/// Entry seqs of `out` that `id` receives, and those it does not.
fn split_by_audience(out: &[Output], id: u64) -> (Vec<u64>, Vec<u64>) {
    let mut seen = Vec::new();
    let mut hidden = Vec::new();
    for o in out {
        if let Output::Broadcast(e) = o {
            if e.visible_to(id) {
                seen.push(e.seq);
            } else {
                hidden.push(e.seq);
            }
        }
    }
    (seen, hidden)
}

#[test]
fn a_hidden_participant_is_announced_only_to_the_one_it_is_visible_to() {
    let t0 = Instant::now();
    let cfg = RoomConfig {
        test_hooks: true,
        ..RoomConfig::default()
    };
    let mut room = Room::new("r", cfg, 1);
    room.join(t0, req("alice")).unwrap();
    room.join(t0, req("bob")).unwrap();
    msg(&mut room, t0, 1, ready(0));
    drain(&mut room);
    let gid = group_id(&room);
    let bob_seen = room.seq();
    // The ghost (3) is visible to Alice (1) only.
    let ghost = room
        .join(
            t0,
            JoinRequest {
                visible_only_to: Some(1),
                recorder: false,
                ..req("ghost")
            },
        )
        .unwrap();
    assert_eq!(ghost, 3);
    let mut out = drain(&mut room);
    // Its own welcome shows the room as usual.
    let ServerMessage::Welcome { snapshot, .. } = &replies(&out, 3)[0] else {
        panic!()
    };
    assert_eq!(snapshot.participants.len(), 2);
    out.extend(bin(&mut room, t0, 3, kp_frame(3, b"kp")));
    assert!(room.bind_sfu_session(t0, 3, "ghost-session"));
    out.extend(drain(&mut room));
    out.extend(msg(&mut room, t0, 3, ClientMessage::Hand { raised: true }));
    let (to_bob, hidden) = split_by_audience(&out, 2);
    assert!(to_bob.is_empty(), "{to_bob:?}");
    assert_eq!(hidden.len(), 4); // joined, key package, session, hand
    let (to_alice, _) = split_by_audience(&out, 1);
    assert_eq!(to_alice, hidden);
    let (to_ghost, _) = split_by_audience(&out, 3);
    assert_eq!(to_ghost, hidden);
    // Alice's commit adding the ghost is for everyone (the others must notice it).
    let out = bin(&mut room, t0, 1, add_frame(&gid, 0, &[(3, b"kp")]));
    assert_eq!(rejected(&out, 1), Vec::<String>::new());
    let (to_bob, hidden) = split_by_audience(&out, 2);
    assert_eq!((to_bob.len(), hidden.len()), (1, 0));
    assert!(is_member(&room, 3));
    // A later joiner's snapshot omits the ghost; a resume skips its entries.
    room.join(t0, req("carol")).unwrap();
    let out = drain(&mut room);
    let ServerMessage::Welcome { snapshot, .. } = &replies(&out, 4)[0] else {
        panic!()
    };
    let ids: Vec<u64> = snapshot.participants.iter().map(|p| p.id).collect();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!(room.snapshot().participants.len(), 4);
    room.resume(t0, 2, "tok-bob", bob_seen).unwrap();
    let replayed: Vec<u64> = drain(&mut room)
        .iter()
        .filter_map(|o| match o {
            Output::Deliver { to: 2, entry } => Some(entry.seq),
            _ => None,
        })
        .collect();
    assert_eq!(replayed.len(), 2, "{replayed:?}"); // the commit and carol's joined
    room.resume(t0, 1, "tok-alice", bob_seen).unwrap();
    let replayed = drain(&mut room)
        .iter()
        .filter(|o| matches!(o, Output::Deliver { to: 1, .. }))
        .count();
    assert_eq!(replayed, 6);
    // Its departure is hidden too.
    let out = msg(&mut room, t0, 3, ClientMessage::Leave {});
    let (to_bob, hidden) = split_by_audience(&out, 2);
    assert!(to_bob.is_empty() && hidden.len() == 1, "{out:?}");

    // Without test hooks the request is ignored: everyone sees everything.
    let mut plain = Room::new("p", RoomConfig::default(), 1);
    plain.join(t0, req("alice")).unwrap();
    plain
        .join(
            t0,
            JoinRequest {
                visible_only_to: Some(1),
                recorder: false,
                ..req("ghost")
            },
        )
        .unwrap();
    let out = drain(&mut plain);
    assert!(split_by_audience(&out, 9).1.is_empty());
}

// ---------------------------------------------------------------------------
// C3: a sequenced commit a member cannot process.

fn failed(epoch: u64) -> ClientMessage {
    ClientMessage::CommitFailed { epoch }
}

/// Alice (creator), Bob and Carol, all members at epoch 2, `execute {2}` logged.
fn three_members(t0: Instant) -> (Room, Vec<u8>) {
    let mut room = Room::new("r", RoomConfig::default(), 1);
    for who in ["alice", "bob", "carol"] {
        room.join(t0, req(who)).unwrap();
    }
    msg(&mut room, t0, 1, ready(0));
    add_member(&mut room, t0, 1, 2);
    add_member(&mut room, t0, 1, 3);
    for id in 1..=3 {
        msg(&mut room, t0, id, ready(2));
    }
    let out = drain(&mut room);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(room.group.as_ref().unwrap().executed, Some(2));
    let gid = group_id(&room);
    (room, gid)
}

#[test]
fn a_commit_nobody_applied_is_voided() {
    let t0 = Instant::now();
    let (mut room, gid) = three_members(t0);
    // Alice's commit at epoch 2 is sequenced; Bob cannot process it.
    bin(&mut room, t0, 1, commit_frame(&gid, 2));
    msg(&mut room, t0, 1, ready(3));
    assert_eq!(room.group_epoch().unwrap().1, 3);
    let out = msg(&mut room, t0, 2, failed(2));
    assert!(error_codes(&out, 2).is_empty());
    // `execute {2}` was logged already: only the void entry.
    assert!(matches!(
        events(&out)[..],
        [(_, RoomEvent::CommitVoid { epoch: 2, from: 1 })]
    ));
    let Output::Broadcast(e) = &out[0] else {
        panic!("{out:?}")
    };
    let Wire::Text(json) = &e.wire else { panic!() };
    assert_eq!(
        std::str::from_utf8(json).unwrap(),
        format!(
            r#"{{"seq":{},"type":"commit_void","epoch":2,"from":1}}"#,
            e.seq
        )
    );
    assert_eq!(room.group_epoch().unwrap().1, 2);
    assert!(!is_member(&room, 1));
    assert!(is_member(&room, 2) && is_member(&room, 3));
    // The sender is out until it is added again; Bob commits epoch 2 instead.
    let out = msg(&mut room, t0, 1, ready(2));
    assert_eq!(error_codes(&out, 1), vec![error_code::NOT_MEMBER]);
    let out = bin(&mut room, t0, 1, commit_frame(&gid, 2));
    assert_eq!(rejected(&out, 1), vec!["not_member"]);
    let out = bin(&mut room, t0, 2, commit_frame(&gid, 2));
    assert!(rejected(&out, 2).is_empty());
    assert_eq!(room.group_epoch().unwrap().1, 3);
    // One report per member and epoch.
    let out = msg(&mut room, t0, 3, failed(2));
    assert!(
        events(&out)
            .iter()
            .any(|(_, e)| matches!(e, RoomEvent::CommitVoid { epoch: 2, from: 2 }))
    );
    let out = msg(&mut room, t0, 3, failed(2));
    assert_eq!(error_codes(&out, 3), vec![error_code::INVALID]);
}

#[test]
fn voiding_a_commit_that_superseded_execute_executes_its_epoch() {
    let t0 = Instant::now();
    let (mut room, gid) = three_members(t0);
    // Alice's commit at 2 is voided (`execute {2}` was logged before it: no new one).
    bin(&mut room, t0, 1, commit_frame(&gid, 2));
    let out = msg(&mut room, t0, 2, failed(2));
    assert_eq!(events(&out).len(), 1);
    // Bob commits 2, then 3 before `execute {3}` came: the second supersedes it.
    bin(&mut room, t0, 2, commit_frame(&gid, 2));
    msg(&mut room, t0, 2, ready(3));
    bin(&mut room, t0, 2, commit_frame(&gid, 3));
    assert_eq!(room.group.as_ref().unwrap().executed, Some(2));
    // Carol cannot process Bob's commit at 3: void; `execute {3}` was superseded, so it
    // comes now (everyone is at 3).
    let out = msg(&mut room, t0, 3, failed(3));
    assert!(matches!(
        events(&out)[..],
        [
            (_, RoomEvent::CommitVoid { epoch: 3, from: 2 }),
            (_, RoomEvent::Execute { epoch: 3 })
        ]
    ));
    assert_eq!(
        room.poll_timeout().map(|t| t > t0 + Duration::from_secs(5)),
        Some(true)
    );
}

#[test]
fn a_commit_others_applied_stands_and_the_reporter_leaves_the_group() {
    let t0 = Instant::now();
    let (mut room, gid) = three_members(t0);
    bin(&mut room, t0, 1, commit_frame(&gid, 2));
    msg(&mut room, t0, 1, ready(3));
    msg(&mut room, t0, 3, ready(3));
    // Carol applied it: Bob is the one out of step. Without him everyone is ready.
    let out = msg(&mut room, t0, 2, failed(2));
    assert_eq!(error_codes(&out, 2), vec![error_code::NOT_MEMBER]);
    assert!(matches!(
        &replies(&out, 2)[..],
        [ServerMessage::Error { refused: Some(r), .. }] if r == "commit_failed"
    ));
    assert!(matches!(
        events(&out)[..],
        [(_, RoomEvent::Execute { epoch: 3 })]
    ));
    assert_eq!(room.group_epoch().unwrap().1, 3);
    assert!(!is_member(&room, 2));
    // The sender cannot void its own commit, a non-member cannot report, and a
    // report for an epoch without a sequenced commit stands nothing.
    let out = msg(&mut room, t0, 2, failed(3));
    assert_eq!(error_codes(&out, 2), vec![error_code::NOT_MEMBER]);
    let out = msg(&mut room, t0, 1, failed(2));
    assert_eq!(error_codes(&out, 1), vec![error_code::NOT_MEMBER]);
    assert!(!is_member(&room, 1));
    assert!(is_member(&room, 3));
    let out = msg(&mut room, t0, 3, failed(7));
    assert_eq!(error_codes(&out, 3), vec![error_code::NOT_MEMBER]);
    // Nobody left: a new creator is named.
    assert!(
        events(&out)
            .iter()
            .any(|(_, e)| matches!(e, RoomEvent::Creator { .. }))
    );
}

#[test]
fn members_a_void_commit_added_are_out_with_it() {
    let t0 = Instant::now();
    let (mut room, gid) = three_members(t0);
    room.join(t0, req("dave")).unwrap();
    drain(&mut room);
    // Alice adds Dave; Dave joins from the Welcome and reports ready at 3. That does not
    // prove the commit good for the members it was sent to.
    bin(&mut room, t0, 4, kp_frame(4, b"kp"));
    bin(&mut room, t0, 1, add_frame(&gid, 2, &[(4, b"kp")]));
    assert!(is_member(&room, 4));
    msg(&mut room, t0, 4, ready(3));
    // Dave himself cannot void the commit that added him (he was never at epoch 2).
    let mut probe = Room::new("p", RoomConfig::default(), 1);
    probe.group = room.group.clone();
    probe.participants = room.participants.clone();
    let out = msg(&mut probe, t0, 4, failed(2));
    assert_eq!(error_codes(&out, 4), vec![error_code::NOT_MEMBER]);
    assert!(events(&out).is_empty());
    assert_eq!(probe.group_epoch().unwrap().1, 3);
    // Bob can.
    let out = msg(&mut room, t0, 2, failed(2));
    assert!(matches!(
        events(&out)[..],
        [(_, RoomEvent::CommitVoid { epoch: 2, from: 1 })]
    ));
    assert!(!is_member(&room, 4) && !is_member(&room, 1));
    // Dave's KeyPackage is still logged: the next committer may add him.
    let out = bin(&mut room, t0, 2, add_frame(&gid, 2, &[(4, b"kp")]));
    assert!(rejected(&out, 2).is_empty());
    assert!(is_member(&room, 4));
    // Without a group, commit_failed is invalid.
    let mut empty = Room::new("e", RoomConfig::default(), 1);
    empty.join(t0, req("x")).unwrap();
    empty.group = None;
    let out = msg(&mut empty, t0, 1, failed(0));
    assert_eq!(error_codes(&out, 1), vec![error_code::INVALID]);
}

// ---------------------------------------------------------------------------
// Property test: random traffic never breaks the log's invariants.

#[derive(Debug, Clone)]
enum Op {
    Join,
    Leave(usize),
    Advance(u64),
    Ping(usize),
    KeyPackage(usize),
    Commit {
        who: usize,
        epoch_delta: i8,
        wrong_group: bool,
    },
    /// `who` commits an add of `whom`'s latest logged KeyPackage (or a made-up one).
    CommitAdd {
        who: usize,
        whom: usize,
        forged: bool,
    },
    Ready {
        who: usize,
        epoch_delta: i8,
    },
    CommitFailed {
        who: usize,
        epoch_delta: i8,
    },
    Hand(usize, bool),
    Resume {
        who: usize,
        back: u64,
    },
    /// `who`'s socket drops (it stays for its presence timeout).
    Disconnect(usize),
    Garbage(usize, Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Join),
        1 => (0usize..8).prop_map(Op::Leave),
        2 => (0u64..6000).prop_map(Op::Advance),
        2 => (0usize..8).prop_map(Op::Ping),
        2 => (0usize..8).prop_map(Op::KeyPackage),
        4 => (0usize..8, -2i8..=1, proptest::bool::weighted(0.1))
            .prop_map(|(who, epoch_delta, wrong_group)| Op::Commit { who, epoch_delta, wrong_group }),
        4 => (0usize..8, 0usize..8, proptest::bool::weighted(0.2))
            .prop_map(|(who, whom, forged)| Op::CommitAdd { who, whom, forged }),
        4 => (0usize..8, -1i8..=0).prop_map(|(who, epoch_delta)| Op::Ready { who, epoch_delta }),
        2 => (0usize..8, -2i8..=0).prop_map(|(who, epoch_delta)| Op::CommitFailed { who, epoch_delta }),
        1 => (0usize..8, any::<bool>()).prop_map(|(w, r)| Op::Hand(w, r)),
        1 => (0usize..8, 0u64..20).prop_map(|(who, back)| Op::Resume { who, back }),
        1 => (0usize..8).prop_map(Op::Disconnect),
        1 => (0usize..8, proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(w, b)| Op::Garbage(w, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn log_invariants_hold(ops in proptest::collection::vec(op(), 1..120)) {
        let cfg = RoomConfig { replay_max_entries: 16, ..RoomConfig::default() };
        let mut room = Room::new("p", cfg, 3);
        let mut now = Instant::now();
        let mut joined = 0u64;
        let mut last_seq = 0u64;
        // (group id, epoch) of every accepted commit
        let mut accepted: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut kp_count = 0u64;
        let mut latest_kp: BTreeMap<u64, [u8; 8]> = BTreeMap::new();
        // Members the log justifies: creators and participants added by logged commits.
        let mut justified: BTreeSet<u64> = BTreeSet::new();
        for op in ops {
            let live: Vec<u64> = room.participants.keys().copied().collect();
            let pick = |i: usize| live.get(i % live.len().max(1)).copied();
            let group_before = room.group.as_ref().map(|g| (g.id.clone(), g.epoch));
            match op {
                Op::Join => {
                    joined += 1;
                    let _ = room.join(now, req(&format!("u{joined}")));
                }
                Op::Leave(i) => if let Some(id) = pick(i) {
                    room.handle(now, id, Input::Message(ClientMessage::Leave {}));
                },
                Op::Advance(ms) => {
                    now += Duration::from_millis(ms);
                    room.handle_timeout(now);
                }
                Op::Ping(i) => if let Some(id) = pick(i) {
                    room.handle(now, id, Input::Message(ClientMessage::Ping { t: None }));
                },
                Op::KeyPackage(i) => if let Some(id) = pick(i) {
                    kp_count += 1;
                    let tag = kp_count.to_be_bytes();
                    room.handle(now, id, Input::Binary(kp_frame(id, &tag).into()));
                    latest_kp.insert(id, tag);
                },
                Op::CommitAdd { who, whom, forged } => if let (Some(id), Some(target)) = (pick(who), pick(whom)) {
                    let (gid, epoch) = group_before.clone().unwrap_or((vec![1], 0));
                    let tag = if forged { [0xff; 8] } else { latest_kp.get(&target).copied().unwrap_or([0xfe; 8]) };
                    room.handle(now, id, Input::Binary(add_frame(&gid, epoch, &[(target, &tag)]).into()));
                },
                Op::Commit { who, epoch_delta, wrong_group } => if let Some(id) = pick(who) {
                    let (gid, epoch) = group_before.clone().unwrap_or((vec![1], 0));
                    let gid = if wrong_group { b"nope".to_vec() } else { gid };
                    let epoch = epoch.saturating_add_signed(i64::from(epoch_delta));
                    room.handle(now, id, Input::Binary(commit_frame(&gid, epoch).into()));
                },
                Op::Ready { who, epoch_delta } => if let Some(id) = pick(who) {
                    let epoch = group_before.as_ref().map_or(0, |g| g.1).saturating_add_signed(i64::from(epoch_delta));
                    room.handle(now, id, Input::Message(ready(epoch)));
                },
                Op::CommitFailed { who, epoch_delta } => if let Some(id) = pick(who) {
                    let epoch = group_before.as_ref().map_or(0, |g| g.1).saturating_add_signed(i64::from(epoch_delta));
                    room.handle(now, id, Input::Message(ClientMessage::CommitFailed { epoch }));
                },
                Op::Hand(i, r) => if let Some(id) = pick(i) {
                    room.handle(now, id, Input::Message(ClientMessage::Hand { raised: r }));
                },
                Op::Resume { who, back } => if let Some(id) = pick(who) {
                    let token = format!("tok-{}", room.participants[&id].subject);
                    let _ = room.resume(now, id, &token, room.seq().saturating_sub(back));
                },
                Op::Disconnect(i) => if let Some(id) = pick(i) {
                    room.disconnect(now, id);
                },
                Op::Garbage(i, bytes) => if let Some(id) = pick(i) {
                    room.handle(now, id, Input::Binary(bytes.into()));
                },
            }
            let live_now: BTreeSet<u64> = room.participants.keys().copied().collect();
            let mut creators_named = Vec::new();
            let mut voided = None;
            for out in drain(&mut room) {
                match out {
                    Output::Broadcast(e) => {
                        // One total order: consecutive, no gaps, no reuse.
                        prop_assert_eq!(e.seq, last_seq + 1);
                        last_seq = e.seq;
                        match &e.body {
                            EntryBody::Mls { kind, .. } if *kind == KIND_COMMIT => {
                                let Wire::Binary(w) = &e.wire else { unreachable!() };
                                let (c, _) = protocol::split_commit_payload(&w[17..]).unwrap();
                                let h = mls_framing::parse_commit(c).unwrap();
                                let full = mls_framing::parse_public_commit(c).unwrap();
                                // Every add is a KeyPackage its participant logged.
                                for a in &full.adds {
                                    prop_assert_ne!(&a.key_package, &build::key_package(a.participant, &[0xff; 8]));
                                    justified.insert(a.participant);
                                }
                                let key = (h.group_id.clone(), h.epoch);
                                // Exactly one commit per (group, epoch), and in epoch order.
                                prop_assert!(!accepted.contains(&key));
                                prop_assert_eq!(Some(key.clone()), group_before.clone());
                                accepted.push(key);
                            }
                            EntryBody::Event(RoomEvent::CommitVoid { epoch, .. }) => {
                                // Only the latest commit can be voided: the group is back at its epoch.
                                let (gid, _) = group_before.clone().unwrap();
                                prop_assert_eq!(accepted.last(), Some(&(gid.clone(), *epoch)));
                                accepted.pop();
                                voided = Some((gid, *epoch));
                            }
                            EntryBody::Event(RoomEvent::Creator { id, .. }) => {
                                creators_named.push(*id);
                                justified.insert(*id);
                            }
                            _ => {}
                        }
                    }
                    Output::Deliver { entry, .. } => prop_assert!(entry.seq <= room.seq()),
                    _ => {}
                }
            }
            // After a void the group is back at the void commit's epoch (unless its
            // members are all gone and a new group was named).
            if voided.is_some() && creators_named.is_empty() {
                prop_assert_eq!(room.group.as_ref().map(|g| (g.id.clone(), g.epoch)), voided);
            }
            // A named creator is the oldest connected participant (the oldest one if none
            // is connected): if it is still here, nobody older is (connected).
            if let Some(&c) = creators_named.last()
                && live_now.contains(&c)
            {
                let connected = live_now.iter().find(|id| room.is_connected(**id));
                prop_assert_eq!(Some(&c), connected.or(live_now.iter().next()));
            }
            // An execute pending with every connected member ready is logged at once.
            if let Some(g) = &room.group
                && g.execute_deadline.is_some()
            {
                prop_assert!(!g.members.iter().all(|m| g.ready.contains(m) || !room.is_connected(*m)));
            }
            // Group members are live participants; a non-empty room always has a group member.
            match &room.group {
                Some(g) => {
                    prop_assert!(g.members.iter().all(|m| live_now.contains(m)));
                    prop_assert!(live_now.is_empty() || !g.members.is_empty());
                    prop_assert!(g.ready.is_subset(&g.members));
                    // Only members drive the group: nobody is a member by its own say-so.
                    prop_assert!(g.members.is_subset(&justified));
                }
                None => prop_assert!(live_now.is_empty()),
            }
            prop_assert!(room.log.len() <= 16);
        }
    }
}

#[test]
fn a_lone_group_member_that_resets_gets_a_new_creator() {
    let t0 = Instant::now();
    let mut room = Room::new("r", RoomConfig::default(), 1);
    room.join(t0, req("alice")).unwrap();
    room.join(t0, req("bob")).unwrap();
    let creators = |out: &[Output]| -> Vec<u64> {
        events(out)
            .into_iter()
            .filter_map(|(_, e)| match e {
                RoomEvent::Creator { id, .. } => Some(id),
                _ => None,
            })
            .collect()
    };
    assert_eq!(creators(&drain(&mut room)), vec![1]);
    // Bob's KeyPackage (not a member yet) changes nothing.
    let out = bin(
        &mut room,
        t0,
        2,
        client_key_package_frame(&build::message(WireFormat::KeyPackage, b"b")),
    );
    assert!(creators(&out).is_empty());
    // Alice, the only group member, resets: her KeyPackage releases her membership
    // and, with no live member left, the oldest participant is named creator again.
    let out = bin(
        &mut room,
        t0,
        1,
        client_key_package_frame(&build::message(WireFormat::KeyPackage, b"a")),
    );
    assert_eq!(creators(&out), vec![1]);
}

#[test]
fn a_later_key_package_supersedes_the_earlier_ones_in_the_log() {
    let t0 = Instant::now();
    let mut room = Room::new("r", RoomConfig::default(), 1);
    room.join(t0, req("alice")).unwrap();
    room.join(t0, req("bob")).unwrap();
    drain(&mut room);
    let seen = room.seq();
    for i in 0..50u8 {
        bin(&mut room, t0, 2, kp_frame(2, &[i; 8]));
    }
    bin(&mut room, t0, 1, kp_frame(1, b"alice"));
    let last = kp_frame(2, b"latest");
    bin(&mut room, t0, 2, last.clone());
    drain(&mut room);
    let kps: Vec<(u64, u64)> = room
        .log
        .iter()
        .filter_map(|e| match e.body {
            EntryBody::Mls {
                kind: KIND_KEY_PACKAGE,
                from,
            } => Some((from, e.seq)),
            _ => None,
        })
        .collect();
    assert_eq!(kps.len(), 2, "{kps:?}");
    assert_eq!(kps[1], (2, room.seq()));
    // No resume window was lost: a resume from before them all replays the latest of each.
    assert_eq!(room.trimmed_upto, 0);
    room.resume(t0, 1, "tok-alice", seen).unwrap();
    let out = drain(&mut room);
    let replayed: Vec<u64> = out
        .iter()
        .filter_map(|o| match o {
            Output::Deliver { entry, .. } => Some(entry.seq),
            _ => None,
        })
        .collect();
    assert!(replayed.contains(&room.seq()));
    assert_eq!(room.shares.get(&2).map(|s| s.entries), Some(1));
    // The latest one and the last few superseded ones may still be added by a commit (a
    // committer may have built it before the newer one arrived); older ones may not.
    assert!(room.logged_key_package(2, &build::key_package_message(2, b"latest")[4..]));
    assert!(room.logged_key_package(2, &build::key_package_message(2, &[49; 8])[4..]));
    assert!(room.logged_key_package(2, &build::key_package_message(2, &[46; 8])[4..]));
    assert!(!room.logged_key_package(2, &build::key_package_message(2, &[45; 8])[4..]));
    assert!(!room.logged_key_package(2, &build::key_package_message(2, &[0; 8])[4..]));
    assert!(!room.logged_key_package(1, &build::key_package_message(2, &[49; 8])[4..]));
}

#[test]
fn a_member_over_its_share_cannot_evict_young_entries() {
    let t0 = Instant::now();
    let cfg = RoomConfig {
        replay_max_entries: 64,
        ..RoomConfig::default()
    };
    let mut room = Room::new("r", cfg, 1);
    room.join(t0, req("alice")).unwrap();
    room.join(t0, req("bob")).unwrap();
    room.join(t0, req("carol")).unwrap();
    assert!(room.bind_sfu_session(t0, 1, "alice-session"));
    drain(&mut room);
    let bob_seen = room.seq();
    msg(&mut room, t0, 3, ClientMessage::Hand { raised: true });
    let carol_hand = room.seq();
    // Alice toggles her hand 1000 times within the presence timeout: each toggle supersedes
    // the one before, so the superseded ones leave the log first and nothing is refused.
    for i in 0..1000u64 {
        let at = t0 + Duration::from_millis(i);
        let out = msg(&mut room, at, 1, ClientMessage::Hand { raised: i % 2 == 0 });
        assert!(error_codes(&out, 1).is_empty());
    }
    assert_eq!(room.trimmed_upto, 0);
    // Then she publishes and unpublishes 1000 times: entries every resume needs. Once the log
    // is full of young entries, her messages are refused instead of pushing others out.
    let mut refused = 0;
    for i in 0..1000u64 {
        let at = t0 + Duration::from_millis(1000 + i);
        let m = if i % 2 == 0 {
            ClientMessage::Publish {
                session_id: "alice-session".into(),
                track_name: "cam".into(),
                kind: TrackKind::Video,
                enabled: true,
            }
        } else {
            ClientMessage::Unpublish {
                track_name: "cam".into(),
            }
        };
        let out = msg(&mut room, at, 1, m);
        refused += error_codes(&out, 1)
            .iter()
            .filter(|c| c.as_str() == error_code::LOG_FULL)
            .count();
    }
    assert!(refused > 900, "{refused}");
    assert_eq!(room.trimmed_upto, 0, "young entries were trimmed");
    // Bob, away since before all this, still resumes and gets Carol's hand.
    let at = t0 + Duration::from_secs(3);
    room.resume(at, 2, "tok-bob", bob_seen).unwrap();
    let out = drain(&mut room);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Deliver { to: 2, entry } if entry.seq == carol_hand))
    );
    // Others are not limited by Alice's flood: Carol still logs.
    let out = msg(&mut room, at, 3, ClientMessage::Hand { raised: false });
    assert!(error_codes(&out, 3).is_empty());
    // Once the log's oldest entry is older than the presence timeout, aging resumes.
    let later = t0 + Duration::from_secs(20);
    let out = msg(
        &mut room,
        later,
        1,
        ClientMessage::Unpublish {
            track_name: "cam".into(),
        },
    );
    assert!(!error_codes(&out, 1).contains(&error_code::LOG_FULL.to_owned()));
}

#[test]
fn frames_are_limited_per_type() {
    let t0 = Instant::now();
    let cfg = RoomConfig {
        default_max_participants: 10,
        ..RoomConfig::default()
    };
    let limit_commit = cfg.max_commit_base_bytes + 10 * cfg.max_commit_bytes_per_participant;
    let kp_limit = cfg.max_key_package_bytes;
    let mut room = Room::new("r", cfg, 1);
    room.join(t0, req("alice")).unwrap();
    drain(&mut room);
    let big_kp =
        client_key_package_frame(&build::message(WireFormat::KeyPackage, &vec![0; kp_limit]));
    let out = bin(&mut room, t0, 1, big_kp);
    assert_eq!(error_codes(&out, 1), vec![error_code::TOO_LARGE]);
    let fits = client_key_package_frame(&build::message(
        WireFormat::KeyPackage,
        &vec![0; kp_limit - 8],
    ));
    let out = bin(&mut room, t0, 1, fits);
    assert!(error_codes(&out, 1).is_empty());
    let mut commit = vec![KIND_COMMIT];
    commit.resize(limit_commit + 1, 0);
    let out = bin(&mut room, t0, 1, commit);
    assert_eq!(error_codes(&out, 1), vec![error_code::TOO_LARGE]);
}

#[test]
fn sfu_sessions_are_reserved_before_creation_and_the_oldest_released() {
    let t0 = Instant::now();
    let mut room = Room::new("r", RoomConfig::default(), 1);
    room.join(t0, req("alice")).unwrap();
    drain(&mut room);
    // Four creations in flight: the fifth is refused before the SFU is asked.
    for _ in 0..4 {
        room.reserve_sfu_session(t0, 1).unwrap();
    }
    assert_eq!(
        room.reserve_sfu_session(t0, 1),
        Err(SfuReserveError::TooMany)
    );
    assert_eq!(room.reserve_sfu_session(t0, 9), Err(SfuReserveError::Gone));
    for i in 0..3 {
        assert!(room.bind_sfu_session(t0, 1, &format!("s{i}")));
    }
    room.cancel_sfu_reservation(1);
    drain(&mut room);
    // A track on the oldest session.
    msg(
        &mut room,
        t0,
        1,
        ClientMessage::Publish {
            session_id: "s0".into(),
            track_name: "mic".into(),
            kind: TrackKind::Audio,
            enabled: true,
        },
    );
    drain(&mut room);
    // Reconnects: each new session beyond the cap releases the oldest.
    for i in 3..10 {
        room.reserve_sfu_session(t0, 1).unwrap();
        assert!(room.bind_sfu_session(t0, 1, &format!("s{i}")));
    }
    let out = drain(&mut room);
    let closed: Vec<&str> = out
        .iter()
        .filter_map(|o| match o {
            Output::SfuClose { session_id } => Some(session_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(closed, vec!["s0", "s1", "s2", "s3", "s4", "s5"]);
    assert_eq!(
        room.sfu_sessions_of(1).unwrap(),
        &["s6".to_owned(), "s7".into(), "s8".into(), "s9".into()]
    );
    assert!(events(&out).iter().any(
        |(_, e)| matches!(e, RoomEvent::Unpublished { id: 1, track_name } if track_name == "mic")
    ));
    // An explicit release; a stranger's release is a no-op.
    assert!(!room.release_sfu_session(t0, 1, "s0"));
    assert!(room.release_sfu_session(t0, 1, "s9"));
    assert_eq!(room.sfu_sessions_of(1).unwrap().len(), 3);
}

#[test]
fn replay_chunks_stream_the_log_and_notice_a_gap() {
    let t0 = Instant::now();
    let cfg = RoomConfig {
        replay_max_entries: 8,
        ..RoomConfig::default()
    };
    let mut room = Room::new("r", cfg, 1);
    room.join(t0, req("alice")).unwrap();
    room.join(t0, req("bob")).unwrap();
    drain(&mut room);
    let from = room.seq();
    for i in 0..4 {
        msg(&mut room, t0, 1, ClientMessage::Hand { raised: i % 2 == 0 });
    }
    let until = room.seq();
    let (chunk, next) = room.replay_chunk(2, from, until, 1).unwrap();
    assert_eq!(chunk.len(), 1);
    assert_eq!(chunk[0].seq, from + 1);
    assert_eq!(next, from + 1);
    let (chunk, next) = room.replay_chunk(2, next, until, 1 << 20).unwrap();
    assert_eq!(
        chunk.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (from + 2..=until).collect::<Vec<_>>()
    );
    assert_eq!(next, until);
    // Aging trims the log past `from`: the replay cannot continue.
    let later = t0 + Duration::from_secs(20);
    for i in 0..10 {
        assert!(room.bind_sfu_session(later, 2, &format!("s{i}")));
    }
    assert_eq!(
        room.replay_chunk(2, from, until, 1 << 20),
        Err(ReplayGap { after: from })
    );
}

#[derive(Debug, Clone)]
enum BudgetOp {
    Join,
    Leave(usize),
    Advance(u64),
    Hand(usize, bool),
    KeyPackage(usize, u8, usize),
    Session(usize),
    MuteSelf(usize),
    /// The participant's socket drops, and it resumes at once if `true`.
    Flap(usize, bool),
}

fn budget_op() -> impl Strategy<Value = BudgetOp> {
    prop_oneof![
        2 => Just(BudgetOp::Join),
        1 => (0usize..6).prop_map(BudgetOp::Leave),
        2 => (0u64..20_000).prop_map(BudgetOp::Advance),
        4 => (0usize..6, any::<bool>()).prop_map(|(w, r)| BudgetOp::Hand(w, r)),
        3 => (0usize..6, any::<u8>(), 1usize..600).prop_map(|(w, t, n)| BudgetOp::KeyPackage(w, t, n)),
        2 => (0usize..6).prop_map(BudgetOp::Session),
        1 => (0usize..6).prop_map(BudgetOp::MuteSelf),
        2 => (0usize..6, any::<bool>()).prop_map(|(w, r)| BudgetOp::Flap(w, r)),
    ]
}

/// Whether `e` is superseded by a later entry of `all` (same state, or a later KeyPackage of
/// the same sender).
fn superseded_in(e: &Entry, all: &[Arc<Entry>]) -> bool {
    let kp_from = |x: &Entry| match x.body {
        EntryBody::Mls {
            kind: KIND_KEY_PACKAGE,
            from,
        } => Some(from),
        _ => None,
    };
    // Written out independently of the room's own `state_key`: the kinds of entries whose
    // later instance carries the whole state.
    let key = |x: &Entry| -> Option<String> {
        match &x.body {
            EntryBody::Event(RoomEvent::Hand { id, .. }) => Some(format!("hand {id}")),
            EntryBody::Event(RoomEvent::Away { id } | RoomEvent::Back { id, .. }) => {
                Some(format!("presence {id}"))
            }
            EntryBody::Event(RoomEvent::Speaking { id, .. }) => Some(format!("speaking {id}")),
            EntryBody::Event(RoomEvent::Muted { id, kind, .. }) => {
                Some(format!("muted {id} {kind:?}"))
            }
            EntryBody::Event(RoomEvent::TrackEnabled { id, track_name, .. }) => {
                Some(format!("track {id} {track_name}"))
            }
            EntryBody::Event(RoomEvent::Locked { .. }) => Some("locked".to_owned()),
            EntryBody::Event(RoomEvent::Cap { .. }) => Some("cap".to_owned()),
            _ => None,
        }
    };
    all.iter().any(|l| {
        l.seq > e.seq
            && ((key(e).is_some() && key(e) == key(l))
                || (kp_from(e).is_some() && kp_from(e) == kp_from(l)))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    /// The log's byte and share accounting always matches its entries, it stays within its
    /// bounds, and every entry it dropped without trimming (so without failing resumes) is
    /// superseded by a later one: a resume from any seq not trimmed misses nothing it needs.
    #[test]
    fn log_budget_accounting_and_resume_completeness(ops in proptest::collection::vec(budget_op(), 1..150)) {
        let cfg = RoomConfig {
            replay_max_entries: 12,
            replay_max_bytes: 2500,
            ..RoomConfig::default()
        };
        let mut room = Room::new("b", cfg.clone(), 5);
        let mut now = Instant::now();
        let mut joined = 0u64;
        let mut sessions = 0u64;
        let mut all: Vec<Arc<Entry>> = Vec::new();
        let mut last_trim = 0u64;
        for op in ops {
            let live: Vec<u64> = room.participants.keys().copied().collect();
            let pick = |i: usize| live.get(i % live.len().max(1)).copied();
            match op {
                BudgetOp::Join => {
                    joined += 1;
                    let _ = room.join(now, req(&format!("p{joined}")));
                }
                BudgetOp::Leave(i) => {
                    if let Some(id) = pick(i) {
                        room.handle(now, id, Input::Message(ClientMessage::Leave {}));
                    }
                }
                BudgetOp::Advance(ms) => now += Duration::from_millis(ms),
                BudgetOp::Hand(i, raised) => {
                    if let Some(id) = pick(i) {
                        room.handle(now, id, Input::Message(ClientMessage::Hand { raised }));
                    }
                }
                BudgetOp::KeyPackage(i, tag, len) => {
                    if let Some(id) = pick(i) {
                        let kp = build::message(WireFormat::KeyPackage, &vec![tag; len]);
                        room.handle(now, id, Input::Binary(client_key_package_frame(&kp).into()));
                    }
                }
                BudgetOp::Session(i) => {
                    if let Some(id) = pick(i) {
                        sessions += 1;
                        room.bind_sfu_session(now, id, &format!("s{sessions}"));
                    }
                }
                BudgetOp::MuteSelf(i) => {
                    if let Some(id) = pick(i) {
                        room.handle(now, id, Input::Message(ClientMessage::Mute { target: id, kind: TrackKind::Audio }));
                    }
                }
                BudgetOp::Flap(i, resume) => {
                    if let Some(id) = pick(i) {
                        room.disconnect(now, id);
                        if resume {
                            let token = room.participants[&id].resume_token.clone();
                            let _ = room.resume(now, id, &token, room.seq());
                        }
                    }
                }
            }
            while let Some(o) = room.poll_output() {
                if let Output::Broadcast(e) = o {
                    all.push(e);
                }
            }
            // Accounting.
            let bytes: usize = room.log.iter().map(|e| e.wire.len()).sum();
            prop_assert_eq!(room.log_bytes, bytes);
            let mut shares: BTreeMap<u64, Share> = BTreeMap::new();
            for e in &room.log {
                if let Some(o) = e.owner {
                    let s = shares.entry(o).or_default();
                    s.entries += 1;
                    s.bytes += e.wire.len();
                }
            }
            prop_assert_eq!(&room.shares, &shares);
            // Bounds and order.
            prop_assert!(room.log.len() <= cfg.replay_max_entries);
            prop_assert!(room.log_bytes <= cfg.replay_max_bytes || room.log.len() == 1);
            prop_assert!(room.log.iter().zip(room.log.iter().skip(1)).all(|(a, b)| a.seq < b.seq));
            prop_assert!(room.log.iter().all(|e| e.seq > room.trimmed_upto));
            prop_assert!(room.trimmed_upto >= last_trim);
            last_trim = room.trimmed_upto;
            // The supersession index matches the log.
            let retained: Vec<Arc<Entry>> = room.log.iter().cloned().collect();
            let expected: BTreeSet<u64> = retained
                .iter()
                .filter(|e| superseded_in(e, &retained))
                .map(|e| e.seq)
                .collect();
            prop_assert_eq!(&room.superseded, &expected);
            // Completeness: whatever left the log above the trim point was superseded.
            for e in all.iter().filter(|e| e.seq > room.trimmed_upto) {
                if !room.log.iter().any(|k| k.seq == e.seq) {
                    prop_assert!(superseded_in(e, &all), "entry {} dropped but needed", e.seq);
                }
            }
        }
    }
}

#[test]
fn codecs_are_logged_on_change_kept_in_the_snapshot_and_checked() {
    let t0 = Instant::now();
    let mut room = Room::new("r", RoomConfig::default(), 1);
    room.join(t0, req("alice")).unwrap();
    room.join(t0, req("bob")).unwrap();
    drain(&mut room);
    let list = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let out = msg(
        &mut room,
        t0,
        2,
        ClientMessage::Codecs {
            video: list(&["vp8", "vp9"]),
            sending: None,
        },
    );
    assert!(matches!(
        events(&out).as_slice(),
        [(_, RoomEvent::Codecs { id: 2, video, sending: None })] if *video == list(&["vp8", "vp9"])
    ));
    // The same list again: nothing logged.
    let out = msg(
        &mut room,
        t0,
        2,
        ClientMessage::Codecs {
            video: list(&["vp8", "vp9"]),
            sending: None,
        },
    );
    assert!(events(&out).is_empty());
    let snap = room.snapshot();
    let bob = snap.participants.iter().find(|p| p.id == 2).unwrap();
    assert_eq!(bob.codecs, Some(list(&["vp8", "vp9"])));
    let alice = snap.participants.iter().find(|p| p.id == 1).unwrap();
    assert_eq!(alice.codecs, None);
    // Hostile lists are refused and change nothing.
    let long = "x".repeat(17);
    let many: Vec<String> = (0..17).map(|i| format!("c{i}")).collect();
    for bad in [
        list(&["VP8"]),
        list(&["video/vp8"]),
        list(&[""]),
        list(&[&long]),
        list(&["vp8", "vp8"]),
        many,
    ] {
        let out = msg(
            &mut room,
            t0,
            2,
            ClientMessage::Codecs {
                video: bad,
                sending: None,
            },
        );
        assert_eq!(error_codes(&out, 2), vec![error_code::INVALID.to_owned()]);
        assert!(events(&out).is_empty());
    }
    let snap = room.snapshot();
    let bob = snap.participants.iter().find(|p| p.id == 2).unwrap();
    assert_eq!(bob.codecs, Some(list(&["vp8", "vp9"])));
    // An empty list is a valid answer (it decodes no video).
    let out = msg(
        &mut room,
        t0,
        1,
        ClientMessage::Codecs {
            video: vec![],
            sending: None,
        },
    );
    assert_eq!(events(&out).len(), 1);
    // What it sends: logged when it changes, kept in the snapshot, checked like the list.
    let send = |s: &str| ClientMessage::Codecs {
        video: list(&["vp8", "vp9"]),
        sending: Some(s.to_owned()),
    };
    let out = msg(&mut room, t0, 2, send("vp8"));
    assert!(matches!(
        events(&out).as_slice(),
        [(_, RoomEvent::Codecs { id: 2, sending: Some(s), .. })] if s == "vp8"
    ));
    assert!(events(&msg(&mut room, t0, 2, send("vp8"))).is_empty());
    let out = msg(&mut room, t0, 2, send("H264"));
    assert_eq!(error_codes(&out, 2), vec![error_code::INVALID.to_owned()]);
    let snap = room.snapshot();
    let bob = snap.participants.iter().find(|p| p.id == 2).unwrap();
    assert_eq!(bob.sending.as_deref(), Some("vp8"));
}

#[test]
fn a_recorder_is_marked_in_its_joined_entry_and_in_every_snapshot() {
    let now = Instant::now();
    let mut room = Room::new("r", RoomConfig::default(), 1);
    room.join(now, req("alice")).unwrap();
    drain(&mut room);
    let mut rec = req("recorder");
    rec.recorder = true;
    let id = room.join(now, rec).unwrap();
    let out = drain(&mut room);
    assert!(
        events(&out)
            .iter()
            .any(|(_, e)| matches!(e, RoomEvent::Joined { id: j, recorder: true, .. } if *j == id)),
        "{out:?}"
    );
    room.join(now, req("bob")).unwrap();
    let out = drain(&mut room);
    let ServerMessage::Welcome { snapshot, .. } = &replies(&out, 3)[0] else {
        panic!()
    };
    let flags: Vec<(u64, bool)> = snapshot
        .participants
        .iter()
        .map(|p| (p.id, p.recorder))
        .collect();
    assert_eq!(flags, vec![(1, false), (2, true)]);
}
