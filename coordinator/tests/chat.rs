//! End-to-end encrypted chat through a real coordinator (`docs/chat.md`): real
//! `satsuma_e2ee` members on WebSockets form the group, exchange chat messages and all show
//! them in the room's order; a keyless observer in the same room sees every chat frame
//! and no plaintext; the coordinator enforces the chat limits (non-member, size, rate,
//! framing) with `error` replies that name `chat`, counted in `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Client, Got, e2ee_entry, start_dev};
use satsuma_coordinator::protocol::{
    ClientMessage, KIND_APPLICATION, RoomEvent, ServerMessage, client_application_frame, error_code,
};
use satsuma_coordinator::room::chat::{CHAT_BURST, MAX_CHAT_FRAME};
use satsuma_e2ee::chat::ChatEvent;
use satsuma_e2ee::identity::Identity;
use satsuma_e2ee::member::{Member, MemberConfig, Outbound};

const ROOM: &str = "chat-room";
const MARKER: &str = "PLAINTEXT-MARKER-7f3a";

struct Peer {
    c: Client,
    m: Member,
    /// (seq, from, text) shown, in order.
    shown: Vec<(u64, u64, String)>,
    dropped: usize,
    errors: Vec<ServerMessage>,
}

async fn metric(server: &satsuma_coordinator::ServerHandle, series: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", server.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

impl Peer {
    async fn join(
        server: &satsuma_coordinator::ServerHandle,
        sub: &str,
        t0: Instant,
        live: &[u64],
    ) -> Peer {
        let c = Client::join(server, ROOM, sub).await;
        let mut seed = [0x21u8; 32];
        seed[..sub.len()].copy_from_slice(sub.as_bytes());
        let mut m = Member::new(
            c.id,
            Identity::from_seed(seed, &sub.to_uppercase()),
            MemberConfig::default(),
        )
        .unwrap();
        m.handle_welcome(t0.elapsed(), c.last_seq, live);
        Peer {
            c,
            m,
            shown: Vec::new(),
            dropped: 0,
            errors: Vec::new(),
        }
    }

    /// Sends what the member wants sent, then feeds it what arrives within `wait`.
    async fn pump(&mut self, t0: Instant, wait: Duration) {
        while let Some(o) = self.m.poll_outbound() {
            match o {
                Outbound::Binary(b) => self.c.send_binary(b).await,
                Outbound::Ready { epoch } => {
                    let group_id = self.m.group_id().map(hex::encode);
                    self.c.send(ClientMessage::Ready { epoch, group_id }).await;
                }
                Outbound::CommitFailed { epoch } => {
                    self.c.send(ClientMessage::CommitFailed { epoch }).await;
                }
            }
        }
        while let Ok(g) = tokio::time::timeout(wait, self.c.recv()).await {
            match g {
                Got::Event(e) => {
                    if let Some(entry) = e2ee_entry(e.seq, &e.event) {
                        self.m.handle_entry(t0.elapsed(), entry);
                    }
                }
                Got::Mls(f) => self.m.handle_binary(t0.elapsed(), &f.encode()).unwrap(),
                Got::Direct(d @ ServerMessage::Error { .. }) => self.errors.push(d),
                Got::Direct(_) => {}
                Got::Close(code, why) => panic!("{} closed {code} {why}", self.c.id),
            }
        }
        self.m.tick(t0.elapsed());
        while let Some(e) = self.m.poll_chat() {
            match e {
                ChatEvent::Message(msg) => self.shown.push((msg.seq, msg.from, msg.text)),
                ChatEvent::Dropped { .. } => self.dropped += 1,
            }
        }
    }
}

/// The next error reply `p` gets (entries meanwhile go to its member).
async fn next_error(p: &mut Peer, t0: Instant) -> ServerMessage {
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.errors.is_empty() {
        assert!(Instant::now() < deadline, "no error reply");
        p.pump(t0, Duration::from_millis(20)).await;
    }
    p.errors.remove(0)
}

async fn settle(peers: &mut [Peer], t0: Instant, until: impl Fn(&[Peer]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !until(peers) {
        assert!(Instant::now() < deadline, "did not settle");
        for p in peers.iter_mut() {
            p.pump(t0, Duration::from_millis(20)).await;
        }
    }
}

fn converged(peers: &[Peer]) -> bool {
    let ids: Vec<u64> = peers.iter().map(|p| p.c.id).collect();
    let first = peers[0].m.safety_number().cloned();
    first.is_some()
        && peers.iter().all(|p| {
            p.m.members() == ids.as_slice()
                && p.m.safety_number().cloned() == first
                && p.m.send_epoch().is_some()
        })
}

#[tokio::test]
async fn members_see_chat_in_room_order_and_an_observer_sees_no_plaintext() {
    let server = start_dev().await;
    let t0 = Instant::now();
    let mut peers = Vec::new();
    for sub in ["ann", "ben", "cy"] {
        let live: Vec<u64> = peers.iter().map(|p: &Peer| p.c.id).collect();
        peers.push(Peer::join(&server, sub, t0, &live).await);
        settle(&mut peers, t0, converged).await;
    }
    // A keyless observer: in the room, not in the group; it records everything.
    let mut observer = Client::join(&server, ROOM, "observer").await;

    let mut sent = 0;
    for round in 0..3 {
        for p in peers.iter_mut() {
            p.m.send_chat(&format!("{MARKER} {round} from {}", p.c.id))
                .unwrap();
            sent += 1;
        }
        // Sent back to back: the coordinator's order decides.
        for p in peers.iter_mut() {
            p.pump(t0, Duration::from_millis(1)).await;
        }
    }
    settle(&mut peers, t0, |ps| {
        ps.iter().all(|p| p.shown.len() == sent)
    })
    .await;
    let order = peers[0].shown.clone();
    for p in &peers {
        assert_eq!(p.shown, order, "participant {} order", p.c.id);
        assert_eq!(p.dropped, 0);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
    }
    assert!(order.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(order.iter().all(|(_, _, t)| t.starts_with(MARKER)));

    // The observer got every chat frame, in the same positions, and no plaintext.
    let last = order.last().unwrap().0;
    observer.catch_up(last).await;
    let chat: Vec<(u64, u64)> = observer
        .log
        .iter()
        .filter_map(|g| match g {
            Got::Mls(f) if f.kind == KIND_APPLICATION => Some((f.seq, f.from)),
            _ => None,
        })
        .collect();
    let expected: Vec<(u64, u64)> = order.iter().map(|(s, f, _)| (*s, *f)).collect();
    assert_eq!(chat, expected);
    for g in &observer.log {
        let bytes = match g {
            Got::Mls(f) => f.encode(),
            Got::Event(e) => serde_json::to_vec(e).unwrap(),
            _ => continue,
        };
        assert!(
            !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "plaintext in the coordinator's traffic"
        );
    }
    assert_eq!(
        metric(&server, "satsuma_coord_entries_total{type=\"chat\"}").await,
        sent as u64
    );

    // A late joiner sees messages from its join on.
    let live: Vec<u64> = peers.iter().map(|p| p.c.id).collect();
    let mut dee = Peer::join(&server, "dee", t0, &live).await;
    dee.pump(t0, Duration::from_millis(20)).await;
    peers.push(dee);
    settle(&mut peers, t0, converged).await;
    peers[1].m.send_chat("welcome dee").unwrap();
    settle(&mut peers, t0, |ps| {
        ps.iter()
            .all(|p| p.shown.last().is_some_and(|(_, _, t)| t == "welcome dee"))
    })
    .await;
    let dee = &peers[3];
    assert_eq!(
        dee.shown.len(),
        1,
        "the joiner sees only messages after its join"
    );
}

#[tokio::test]
async fn the_coordinator_enforces_chat_limits() {
    let server = start_dev().await;
    let t0 = Instant::now();
    let mut peers = vec![Peer::join(&server, "ann", t0, &[]).await];
    settle(&mut peers, t0, |ps| ps[0].m.send_epoch().is_some()).await;
    let mut outsider = Client::join(&server, ROOM, "outsider").await;
    let ann = &mut peers[0];
    // Until the room is quiet (a creator may be named again after the first KeyPackage).
    for _ in 0..10 {
        ann.pump(t0, Duration::from_millis(50)).await;
    }
    assert!(ann.m.send_epoch().is_some());

    // Not a group member: refused.
    outsider
        .send_binary(client_application_frame(&[0, 1, 0, 2, 0]))
        .await;
    match outsider.direct().await {
        ServerMessage::Error { code, refused, .. } => {
            assert_eq!(code, error_code::NOT_MEMBER);
            assert_eq!(refused.as_deref(), Some("chat"));
        }
        other => panic!("{other:?}"),
    }

    // Too large.
    ann.c
        .send_binary(client_application_frame(&vec![0u8; MAX_CHAT_FRAME]))
        .await;
    let e = next_error(ann, t0).await;
    assert!(
        matches!(&e, ServerMessage::Error { code, refused: Some(r), .. } if code == error_code::TOO_LARGE && r == "chat"),
        "{e:?}"
    );

    // Not an application PrivateMessage: a KeyPackage in the chat kind.
    let mut key_package = vec![KIND_APPLICATION];
    key_package.extend_from_slice(&[0, 1, 0, 5, 0, 0]);
    ann.c.send_binary(key_package).await;
    let e = next_error(ann, t0).await;
    assert!(
        matches!(&e, ServerMessage::Error { code, .. } if code == error_code::MLS_FRAMING),
        "{e:?}"
    );

    // Rate: a burst beyond CHAT_BURST (the refused framing above took one token, refill
    // may add one); the rest is refused with rate_limited.
    let burst = CHAT_BURST as usize + 4;
    for i in 0..burst {
        ann.m.send_chat(&format!("burst {i}")).unwrap();
    }
    ann.pump(t0, Duration::from_millis(1)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ann.shown.len() + ann.errors.len() < burst {
        assert!(Instant::now() < deadline, "shown {:?}", ann.shown);
        ann.pump(t0, Duration::from_millis(50)).await;
    }
    let limited = ann
        .errors
        .iter()
        .filter(|e| matches!(e, ServerMessage::Error { code, refused: Some(r), .. } if code == error_code::RATE_LIMITED && r == "chat"))
        .count();
    assert!(
        (CHAT_BURST as usize - 1..=CHAT_BURST as usize + 1).contains(&ann.shown.len()),
        "logged {}: {:?}",
        ann.shown.len(),
        ann.errors
    );
    assert_eq!(limited, burst - ann.shown.len());
    // Logged in order, each once.
    let texts: Vec<String> = ann.shown.iter().map(|(_, _, t)| t.clone()).collect();
    let want: Vec<String> = (0..ann.shown.len()).map(|i| format!("burst {i}")).collect();
    assert_eq!(texts, want);
    assert!(
        metric(&server, "satsuma_coord_errors_total{code=\"rate_limited\"}").await
            >= limited as u64
    );
    assert!(metric(&server, "satsuma_coord_errors_total{code=\"not_member\"}").await >= 1);
    assert!(metric(&server, "satsuma_coord_errors_total{code=\"too_large\"}").await >= 1);

    // The outsider, still in the room, received the logged chat frames but cannot read them.
    outsider.sync().await;
    let frames = outsider
        .log
        .iter()
        .filter(|g| matches!(g, Got::Mls(f) if f.kind == KIND_APPLICATION))
        .count();
    assert_eq!(frames, ann.shown.len());
    assert!(
        outsider
            .log
            .iter()
            .all(|g| !matches!(g, Got::Event(e) if matches!(e.event, RoomEvent::Left { .. })))
    );
}
