//! Issue 18 ("Fast join") on real MLS: the coordinator's sans-IO [`Room`] with injected
//! time, driven by real [`Member`]s (openmls, frame encryption) that receive the room's
//! entries in order. A member whose socket dropped is in its resume window: the room
//! is told ([`Room::disconnect`]) and delivers it nothing until it resumes.
//!
//! Checked: a join right after somebody closed its page executes as soon as the live
//! members are ready (not after the 2 s timeout), the joiner decrypts the others' frames
//! from that `execute` on, and the member that was away catches up from the resume replay
//! (the commit it missed, then the `execute`): same epoch, same safety number, frames
//! both ways.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::e2ee_entry;
use satsuma_coordinator::protocol::{ClientMessage, Permissions, RoomEvent, ServerMessage};
use satsuma_coordinator::room::{EntryBody, Input, JoinRequest, Output, Room, RoomConfig, Wire};
use satsuma_e2ee::frame::Codec;
use satsuma_e2ee::identity::Identity;
use satsuma_e2ee::member::{Member, MemberConfig, Outbound};

struct Sim {
    room: Room,
    t0: Instant,
    now: Instant,
    members: BTreeMap<u64, Member>,
    /// Participants whose connection is up (entries reach only them).
    connected: BTreeSet<u64>,
    /// Participants whose messages are held back (not sent yet).
    held: BTreeSet<u64>,
    /// When each `execute {epoch}` was logged.
    executes: Vec<(u64, Instant)>,
    /// When the latest commit was logged.
    last_commit: Option<Instant>,
}

fn req(subject: &str) -> JoinRequest {
    JoinRequest {
        subject: subject.to_owned(),
        name: subject.to_owned(),
        permissions: Permissions {
            publish: true,
            subscribe: true,
            host: false,
        },
        resume_token: format!("tok-{subject}"),
        wall_ms: 0,
        visible_only_to: None,
        recorder: false,
    }
}

fn seed(id: u64) -> [u8; 32] {
    let mut s = [0x33u8; 32];
    s[..8].copy_from_slice(&id.to_be_bytes());
    s
}

impl Sim {
    fn new() -> Self {
        let t0 = Instant::now();
        Self {
            room: Room::new("fast-join", RoomConfig::default(), 18),
            t0,
            now: t0,
            members: BTreeMap::new(),
            connected: BTreeSet::new(),
            held: BTreeSet::new(),
            executes: Vec::new(),
            last_commit: None,
        }
    }

    fn since(&self) -> Duration {
        self.now - self.t0
    }

    fn feed(&mut self, to: u64, entry: &satsuma_coordinator::room::Entry) {
        let now = self.since();
        let Some(m) = self.members.get_mut(&to) else {
            return;
        };
        match (&entry.body, &entry.wire) {
            (EntryBody::Mls { .. }, Wire::Binary(b)) => m.handle_binary(now, b).unwrap(),
            (EntryBody::Event(e), _) => {
                if let Some(e) = e2ee_entry(entry.seq, e) {
                    m.handle_entry(now, e);
                }
            }
            _ => unreachable!(),
        }
    }

    /// Delivers everything until nothing moves: room outputs to connected members,
    /// connected members' messages to the room.
    fn pump(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            while let Some(out) = self.room.poll_output() {
                moved = true;
                match out {
                    Output::Broadcast(e) => {
                        match &e.body {
                            EntryBody::Event(RoomEvent::Execute { epoch }) => {
                                self.executes.push((*epoch, self.now));
                            }
                            EntryBody::Mls { kind: 2, .. } => self.last_commit = Some(self.now),
                            _ => {}
                        }
                        for id in self.connected.clone() {
                            self.feed(id, &e);
                        }
                    }
                    Output::Deliver { to, entry } => self.feed(to, &entry),
                    Output::Reply {
                        to,
                        msg: ServerMessage::Welcome { seq, snapshot, .. },
                    } => {
                        let live: Vec<u64> = snapshot.participants.iter().map(|p| p.id).collect();
                        let now = self.since();
                        self.members
                            .get_mut(&to)
                            .unwrap()
                            .handle_welcome(now, seq, &live);
                    }
                    Output::Reply {
                        to,
                        msg: ServerMessage::Error { code, message, .. },
                    } => panic!("error to {to}: {code} {message}"),
                    _ => {}
                }
            }
            for id in self.connected.clone() {
                if self.held.contains(&id) {
                    continue;
                }
                let m = self.members.get_mut(&id).unwrap();
                let gid = m.group_id().map(hex::encode);
                let mut msgs = Vec::new();
                while let Some(o) = m.poll_outbound() {
                    msgs.push(o);
                }
                for o in msgs {
                    moved = true;
                    let input = match o {
                        Outbound::Binary(b) => Input::Binary(b.into()),
                        Outbound::Ready { epoch } => Input::Message(ClientMessage::Ready {
                            epoch,
                            group_id: gid.clone(),
                        }),
                        Outbound::CommitFailed { epoch } => {
                            Input::Message(ClientMessage::CommitFailed { epoch })
                        }
                    };
                    self.room.handle(self.now, id, input);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("did not settle");
    }

    fn join(&mut self) -> u64 {
        // The id the room will assign: one more than the last.
        let id = self.members.keys().max().map_or(1, |m| m + 1);
        let name = &subject(id);
        let identity = Identity::from_seed(seed(id), name);
        self.members.insert(
            id,
            Member::new(id, identity, MemberConfig::default()).unwrap(),
        );
        self.connected.insert(id);
        assert_eq!(self.room.join(self.now, req(name)).unwrap(), id);
        self.pump();
        id
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        let now = self.since();
        for m in self.members.values_mut() {
            m.tick(now);
        }
        if self.room.poll_timeout().is_some_and(|t| t <= self.now) {
            self.room.handle_timeout(self.now);
        }
        self.pump();
    }

    fn drop_socket(&mut self, id: u64) {
        self.connected.remove(&id);
        self.room.disconnect(self.now, id);
        self.pump();
    }

    /// `id` leaves the room (`leave`); what it had not sent yet is lost.
    fn leave(&mut self, id: u64) {
        self.room
            .handle(self.now, id, Input::Message(ClientMessage::Leave {}));
        self.connected.remove(&id);
        self.members.remove(&id);
        self.pump();
    }

    fn resume(&mut self, id: u64) {
        let last_seq = self.members[&id].last_seq();
        self.connected.insert(id);
        self.room
            .resume(self.now, id, &format!("tok-{}", subject(id)), last_seq)
            .unwrap();
        self.pump();
    }

    /// `from` sends one frame; whether `to` decrypts it.
    fn frame_reaches(&mut self, from: u64, to: u64) -> bool {
        let payload = format!("frame from {from}").into_bytes();
        let Ok(ct) = self
            .members
            .get_mut(&from)
            .unwrap()
            .encrypt(Codec::Opus, &payload)
        else {
            return false;
        };
        let now = self.since();
        self.members
            .get_mut(&to)
            .unwrap()
            .decrypt(from, &ct, now)
            .is_ok_and(|d| d.frame == payload)
    }

    fn epoch_of(&self, id: u64) -> Option<u64> {
        self.members[&id].epoch()
    }
}

fn subject(id: u64) -> String {
    format!("p{id}")
}

#[test]
fn a_join_right_after_a_page_closed_executes_at_once_and_the_away_member_catches_up() {
    let mut sim = Sim::new();
    let alice = sim.join();
    let bob = sim.join();
    let carol = sim.join();
    sim.advance(Duration::from_millis(10));
    let e = sim.epoch_of(alice).unwrap();
    assert!([bob, carol].iter().all(|m| sim.epoch_of(*m) == Some(e)));
    assert_eq!(sim.executes.last().map(|x| x.0), Some(e));
    for (a, b) in [(alice, bob), (bob, carol), (carol, alice)] {
        assert!(sim.frame_reaches(a, b) && sim.frame_reaches(b, a));
    }

    // Carol's socket drops (her page closed, or her network blinked).
    sim.advance(Duration::from_secs(1));
    sim.drop_socket(carol);
    // Dave joins 3 s later, well inside Carol's 15 s presence window. Everything is
    // delivered at once here, so the commit and every live `ready` share an instant.
    sim.advance(Duration::from_secs(3));
    let dave = sim.join();
    let committed = sim.last_commit.expect("Dave's add was committed");
    let (epoch, executed) = *sim.executes.last().unwrap();
    assert_eq!(Some(epoch), sim.epoch_of(dave), "Dave's epoch is executed");
    let wait = executed - committed;
    println!(
        "join -> execute with a member in its resume window: {} ms (the execute timeout is {} ms)",
        wait.as_millis(),
        RoomConfig::default().execute_timeout.as_millis()
    );
    assert_eq!(wait, Duration::ZERO, "execute did not wait for Carol");
    // Dave decrypts Alice's and Bob's frames now, and they his.
    for m in [alice, bob] {
        assert_eq!(sim.members[&m].send_epoch(), Some(epoch));
        assert!(sim.frame_reaches(m, dave), "{m} -> dave");
        assert!(sim.frame_reaches(dave, m), "dave -> {m}");
    }
    // Carol missed it all: still at the old epoch, she cannot read Dave yet.
    assert_eq!(sim.epoch_of(carol), Some(e));
    assert!(!sim.frame_reaches(dave, carol));

    // Carol resumes 2 s later: the replay holds the commit and the execute.
    sim.advance(Duration::from_secs(2));
    sim.resume(carol);
    assert_eq!(sim.epoch_of(carol), Some(epoch));
    assert_eq!(sim.members[&carol].send_epoch(), Some(epoch));
    let safety = sim.members[&alice].safety_number().cloned();
    assert!(safety.is_some());
    for m in [bob, carol, dave] {
        assert_eq!(sim.members[&m].safety_number().cloned(), safety, "{m}");
    }
    for m in [alice, bob, dave] {
        assert!(sim.frame_reaches(m, carol), "{m} -> carol");
        assert!(sim.frame_reaches(carol, m), "carol -> {m}");
    }
    // Nothing is left to commit: everybody is in the group.
    sim.advance(Duration::from_secs(3));
    assert_eq!(sim.members[&alice].members(), &[alice, bob, carol, dave]);
}

#[test]
fn a_member_that_never_resumes_is_removed_after_its_presence_timeout() {
    let mut sim = Sim::new();
    let alice = sim.join();
    let bob = sim.join();
    let carol = sim.join();
    sim.advance(Duration::from_millis(10));
    // Bob's page closes and he never resumes: 15 s later his `left` is logged and Alice
    // removes him.
    sim.drop_socket(bob);
    let before = sim.epoch_of(alice).unwrap();
    for _ in 0..15 {
        sim.advance(Duration::from_secs(1));
        sim.room.touch(sim.now, alice);
        sim.room.touch(sim.now, carol);
    }
    assert!(!sim.room.contains(bob));
    let epoch = sim.epoch_of(alice).unwrap();
    assert_eq!(epoch, before + 1);
    assert_eq!(sim.members[&alice].members(), &[alice, carol]);
    assert_eq!(sim.epoch_of(carol), Some(epoch));
    assert_eq!(sim.executes.last().map(|x| x.0), Some(epoch));
    assert!(sim.frame_reaches(alice, carol) && sim.frame_reaches(carol, alice));
}

#[test]
fn one_commit_adds_the_joiners_that_came_together_and_removes_the_departed() {
    let mut sim = Sim::new();
    let alice = sim.join();
    let bob = sim.join();
    let carol = sim.join();
    sim.advance(Duration::from_millis(10));
    let e = sim.epoch_of(alice).unwrap();
    // Dave joins and announces; Alice (the committer) builds his add but has not sent it
    // when she leaves: Bob takes over and commits Dave's add and Alice's removal in ONE
    // commit (no removal commit first).
    sim.held.insert(alice);
    let dave = sim.join();
    sim.leave(alice);
    assert_eq!(sim.epoch_of(bob), Some(e + 1));
    assert_eq!(sim.members[&bob].members(), &[bob, carol, dave]);
    for m in [carol, dave] {
        assert_eq!(sim.epoch_of(m), Some(e + 1));
        assert_eq!(
            sim.members[&m].safety_number(),
            sim.members[&bob].safety_number()
        );
    }
    assert_eq!(sim.executes.last().map(|x| x.0), Some(e + 1));
    assert!(sim.frame_reaches(bob, dave) && sim.frame_reaches(dave, carol));

    // Three more join while Bob's commit for the first of them is held back: the first
    // is committed at once, the two that came meanwhile together in the next commit.
    sim.held.insert(bob);
    let eve = sim.join();
    let frank = sim.join();
    let grace = sim.join();
    sim.held.remove(&bob);
    sim.pump();
    assert_eq!(
        sim.epoch_of(bob),
        Some(e + 3),
        "two commits for three joiners"
    );
    assert_eq!(
        sim.members[&bob].members(),
        &[bob, carol, dave, eve, frank, grace]
    );
    for m in [carol, dave, eve, frank, grace] {
        assert_eq!(sim.epoch_of(m), Some(e + 3), "{m}");
    }
    assert!(sim.frame_reaches(grace, eve) && sim.frame_reaches(bob, frank));
}
