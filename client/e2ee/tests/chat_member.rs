//! End-to-end encrypted chat through the Member facade and an in-memory coordinator:
//! every member shows every message in the log's order, senders see their own messages at
//! their log position, a late joiner sees messages from its join on, and messages sent
//! while a commit is in flight still reach everyone who was a member.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sim_support;

use satsuma_e2ee::chat::{ChatError, ChatEvent};
use satsuma_e2ee::member::MemberConfig;
use sim_support::Room;

/// (seq, from, text, mine) of every message `id` shows, and the number of drops.
fn shown(room: &mut Room, id: u64) -> (Vec<(u64, u64, String)>, usize) {
    let m = &mut room.clients.get_mut(&id).unwrap().member;
    let mut out = Vec::new();
    let mut dropped = 0;
    while let Some(e) = m.poll_chat() {
        match e {
            ChatEvent::Message(msg) => {
                assert_eq!(msg.mine, msg.from == id);
                assert_eq!(msg.name, format!("P{}", msg.from), "verified name");
                out.push((msg.seq, msg.from, msg.text));
            }
            ChatEvent::Dropped { .. } => dropped += 1,
        }
    }
    (out, dropped)
}

fn send(room: &mut Room, id: u64, text: &str) {
    room.clients
        .get_mut(&id)
        .unwrap()
        .member
        .send_chat(text)
        .unwrap();
    let c = room.clients.get_mut(&id).unwrap();
    while let Some(o) = c.member.poll_outbound() {
        c.outbox.push_back((o, c.member.group_id()));
    }
}

#[test]
fn members_show_every_message_in_log_order() {
    let mut room = Room::new(MemberConfig::default());
    let a = room.join();
    let b = room.join();
    let c = room.join();
    room.settle(100);
    assert!(room.converged());
    // Interleaved sends: the coordinator's order decides, not the send order.
    send(&mut room, a, "a1");
    send(&mut room, b, "b1");
    send(&mut room, c, "c1");
    send(&mut room, a, "a2");
    room.flush(c, usize::MAX);
    room.flush(b, usize::MAX);
    room.flush(a, usize::MAX);
    room.settle(100);
    let (va, da) = shown(&mut room, a);
    let (vb, db) = shown(&mut room, b);
    let (vc, dc) = shown(&mut room, c);
    assert_eq!((da, db, dc), (0, 0, 0));
    assert_eq!(va.len(), 4);
    assert_eq!(va, vb);
    assert_eq!(va, vc);
    let texts: Vec<&str> = va.iter().map(|(_, _, t)| t.as_str()).collect();
    assert_eq!(texts, ["c1", "b1", "a1", "a2"]);
    assert!(va.windows(2).all(|w| w[0].0 < w[1].0), "log order");
    assert_eq!(room.clients[&a].member.chat_stats().sent, 2);
}

#[test]
fn a_late_joiner_sees_messages_from_its_join_on() {
    let mut room = Room::new(MemberConfig::default());
    let a = room.join();
    let b = room.join();
    room.settle(100);
    send(&mut room, a, "before d");
    room.settle(100);
    let d = room.join();
    room.settle(100);
    assert!(room.converged());
    send(&mut room, b, "after d");
    room.settle(100);
    let (vd, _) = shown(&mut room, d);
    let texts: Vec<&str> = vd.iter().map(|(_, _, t)| t.as_str()).collect();
    assert_eq!(texts, ["after d"]);
    let (va, _) = shown(&mut room, a);
    assert_eq!(va.len(), 2);
}

#[test]
fn a_message_sent_before_a_commit_reached_its_sender_still_opens() {
    let mut room = Room::new(MemberConfig::default());
    let a = room.join();
    let b = room.join();
    room.settle(100);
    let c = room.join();
    // a (the committer) learns of c and commits; the commit is logged, but b has not
    // processed it when it sends: its message is at the old epoch, logged after the commit.
    room.deliver(a, usize::MAX);
    room.flush(a, usize::MAX);
    send(&mut room, b, "from the old epoch");
    room.flush(b, usize::MAX);
    room.settle(100);
    assert!(room.converged());
    let (va, da) = shown(&mut room, a);
    assert_eq!(
        (va.len(), da),
        (1, 0),
        "a keeps the previous epoch's secrets"
    );
    let (vb, _) = shown(&mut room, b);
    assert_eq!(vb, va);
    // c was added by that commit: the old epoch is not its to read.
    let (vc, dc) = shown(&mut room, c);
    assert_eq!((vc.len(), dc), (0, 1));
}

#[test]
fn no_chat_before_the_group_exists() {
    let mut room = Room::new(MemberConfig::default());
    let a = room.join();
    assert_eq!(
        room.clients
            .get_mut(&a)
            .unwrap()
            .member
            .send_chat("too early"),
        Err(ChatError::NoGroup)
    );
    room.settle(50);
    assert!(
        room.clients
            .get_mut(&a)
            .unwrap()
            .member
            .send_chat("  ")
            .is_err()
    );
}
