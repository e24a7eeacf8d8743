//! Issue 18 ("Fast join") with real processes: a coordinator on 127.0.0.1 and real
//! openmls [`Member`]s speaking its WebSocket protocol. The designated committer (the
//! oldest member) crashes: its socket ends without a `leave`, so it stays in the room for
//! its 15 s presence window. The coordinator logs `away {id}`; the next oldest member
//! commits a joiner's KeyPackage at once instead of everybody waiting for the away
//! committer's presence timeout. The crashed member then resumes and catches up from the
//! log: same epoch and safety number as everybody.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Client, Got, e2ee_entry, start_dev};
use satsuma_coordinator::ServerHandle;
use satsuma_coordinator::protocol::{ClientMessage, ServerMessage};
use satsuma_e2ee::frame::Codec;
use satsuma_e2ee::identity::Identity;
use satsuma_e2ee::member::{Member, MemberConfig, Outbound};
use satsuma_e2ee::relay::ServerFrame;

const ROOM: &str = "away-committer";

/// One participant: its WebSocket client and its MLS member.
struct Peer {
    client: Client,
    member: Member,
    /// Whether its socket is up (a crashed one reads and sends nothing).
    up: bool,
}

struct World {
    server: ServerHandle,
    t0: Instant,
    peers: Vec<Peer>,
}

fn seed(n: u8) -> [u8; 32] {
    [n; 32]
}

impl World {
    async fn new() -> Self {
        Self {
            server: start_dev().await,
            t0: Instant::now(),
            peers: Vec::new(),
        }
    }

    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// A fresh participant joins (its member gets the welcome's snapshot).
    async fn join(&mut self, n: u8) -> usize {
        let sub = format!("p{n}");
        let token = common::token(&self.server, ROOM, &sub);
        let mut ws = common::raw(&self.server, ROOM).await;
        common::send_json(
            &mut ws,
            &ClientMessage::Hello {
                v: satsuma_coordinator::protocol::PROTOCOL_VERSION,
                token: Some(token),
                resume: None,
                test_visible_only_to: None,
            },
        )
        .await;
        let Got::Direct(ServerMessage::Welcome {
            participant_id,
            resume_token,
            seq,
            snapshot,
            ..
        }) = common::recv(&mut ws).await
        else {
            panic!("expected welcome");
        };
        let mut member = Member::new(
            participant_id,
            Identity::from_seed(seed(n), &sub),
            MemberConfig::default(),
        )
        .unwrap();
        let live: Vec<u64> = snapshot.participants.iter().map(|p| p.id).collect();
        let away: Vec<u64> = snapshot
            .participants
            .iter()
            .filter(|p| p.away)
            .map(|p| p.id)
            .collect();
        member.handle_snapshot(self.now(), seq, &live, &away);
        self.peers.push(Peer {
            client: Client {
                ws,
                id: participant_id,
                resume_token,
                last_seq: seq,
                log: Vec::new(),
            },
            member,
            up: true,
        });
        self.peers.len() - 1
    }

    /// Reads what arrived, feeds the members, sends what they want sent, until
    /// `done` holds; panics after `limit`.
    async fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&World) -> bool) {
        let start = Instant::now();
        loop {
            if done(self) {
                return;
            }
            assert!(start.elapsed() < limit, "not done within {limit:?}");
            let now = self.now();
            for p in self.peers.iter_mut().filter(|p| p.up) {
                p.member.tick(now);
                while let Ok(got) =
                    tokio::time::timeout(Duration::from_millis(2), p.client.recv()).await
                {
                    match got {
                        Got::Event(e) => {
                            if let Some(entry) = e2ee_entry(e.seq, &e.event) {
                                p.member.handle_entry(now, entry);
                            }
                        }
                        Got::Mls(m) => {
                            let frame = ServerFrame::decode(&m.encode()).unwrap();
                            p.member.handle_entry(now, frame.into_entry());
                        }
                        Got::Direct(ServerMessage::Pong { .. }) => {}
                        Got::Direct(d) => panic!("{}: unexpected {d:?}", p.client.id),
                        Got::Close(code, why) => panic!("{}: closed {code} {why}", p.client.id),
                    }
                }
                let gid = p.member.group_id().map(hex::encode);
                while let Some(o) = p.member.poll_outbound() {
                    match o {
                        Outbound::Binary(b) => p.client.send_binary(b).await,
                        Outbound::Ready { epoch } => {
                            p.client
                                .send(ClientMessage::Ready {
                                    epoch,
                                    group_id: gid.clone(),
                                })
                                .await;
                        }
                        Outbound::CommitFailed { epoch } => {
                            p.client.send(ClientMessage::CommitFailed { epoch }).await;
                        }
                    }
                }
            }
        }
    }

    /// Everybody up is a member at one epoch with `n` members.
    fn settled(&self, n: usize) -> bool {
        let up: Vec<&Peer> = self.peers.iter().filter(|p| p.up).collect();
        let e = up[0].member.epoch();
        e.is_some()
            && up.iter().all(|p| {
                p.member.epoch() == e && p.member.members().len() == n && p.member.send_epoch() == e
            })
    }

    fn frame_reaches(&mut self, from: usize, to: usize) -> bool {
        let payload = format!("frame from {from}").into_bytes();
        let Ok(ct) = self.peers[from].member.encrypt(Codec::Opus, &payload) else {
            return false;
        };
        let now = self.now();
        let sender = self.peers[from].client.id;
        self.peers[to]
            .member
            .decrypt(sender, &ct, now)
            .is_ok_and(|d| d.frame == payload)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_committer_does_not_hold_up_a_join() {
    let mut w = World::new().await;
    let alice = w.join(1).await;
    w.run_until(Duration::from_secs(20), |w| w.settled(1)).await;
    let bob = w.join(2).await;
    w.run_until(Duration::from_secs(20), |w| w.settled(2)).await;
    let carol = w.join(3).await;
    w.run_until(Duration::from_secs(20), |w| w.settled(3)).await;
    assert!(w.peers[alice].member.is_committer());
    assert!(!w.peers[bob].member.is_committer());

    // Alice's page crashes: her socket ends without a leave. She stays in the room for
    // her 15 s presence window.
    w.peers[alice].up = false;
    let alice_ws = std::mem::replace(
        &mut w.peers[alice].client.ws,
        common::raw(&w.server, "elsewhere").await,
    );
    drop(alice_ws);
    let alice_id = w.peers[alice].client.id;
    w.run_until(Duration::from_secs(5), |w| {
        w.peers[bob].member.committer().away().contains(&alice_id)
    })
    .await;
    assert!(w.peers[bob].member.is_committer(), "Bob takes over");
    assert!(!w.peers[carol].member.is_committer());

    // Dave joins: Bob commits his KeyPackage at once.
    let before = w.peers[bob].member.epoch().unwrap();
    let t = Instant::now();
    let dave = w.join(4).await;
    w.run_until(Duration::from_secs(10), |w| {
        w.peers[dave].member.epoch().is_some() && w.peers[dave].member.send_epoch().is_some()
    })
    .await;
    let welcomed = t.elapsed();
    println!(
        "join -> welcomed and sending with the designated committer crashed: {} ms",
        welcomed.as_millis()
    );
    assert!(
        welcomed < Duration::from_secs(3),
        "the join waited for the crashed committer ({welcomed:?})"
    );
    assert_eq!(w.peers[dave].member.epoch(), Some(before + 1));
    assert!(
        w.peers[dave].member.members().contains(&alice_id),
        "Alice is not removed"
    );
    w.run_until(Duration::from_secs(5), |w| w.settled(4)).await;
    assert!(w.frame_reaches(bob, dave) && w.frame_reaches(dave, carol));

    // Alice resumes (within her presence window) and catches up from the log.
    let reply = w.peers[alice].client.resume(&w.server, ROOM).await;
    assert!(
        matches!(reply, Got::Direct(ServerMessage::Resumed { .. })),
        "{reply:?}"
    );
    w.peers[alice].up = true;
    w.run_until(Duration::from_secs(10), |w| {
        w.settled(4) && w.peers[alice].member.committer().away().is_empty()
    })
    .await;
    let safety = w.peers[bob].member.safety_number().cloned();
    assert!(safety.is_some());
    for p in &w.peers {
        assert_eq!(p.member.epoch(), Some(before + 1));
        assert_eq!(p.member.safety_number().cloned(), safety, "{}", p.client.id);
    }
    assert!(w.peers[alice].member.is_committer(), "Alice commits again");
    assert!(!w.peers[bob].member.is_committer());
    for other in [bob, carol, dave] {
        assert!(w.frame_reaches(alice, other) && w.frame_reaches(other, alice));
    }
    w.server.shutdown().await;
}
