//! Issue 16, the failover "Done when": two coordinator replicas (the binary) on a 3-member etcd,
//! one SFU, native bots (`satsuma-bot`: MLS members through the coordinator, media through
//! the SFU) in two rooms. The clients reach the replicas through a front that spreads
//! connections over the live replicas, as a Kubernetes Service does: some land on the owner
//! of their room, some on the other replica, which serves them through the owner.
//!
//! `kill -9` of room 1's owner mid-call: the other replica serves room 1 within 5 s; every
//! member resumes (no MLS rejoin: same epoch, same safety number, frames still cross); no
//! member was delivered an entry twice (the bot's [`satsuma_bot::log_audit`] counts an entry
//! whose `seq` it had processed; a resume's replay starts after the member's `last_seq`, so
//! the protocol re-sends none by design) and none is missing (every member processed the same
//! `seq`s with the same bytes as every other member over the part of the log both were in the
//! room for, and every entry the store holds; the `seq` jumps a rebuilt room makes are holes no
//! member and not the store has). The bots' media loses nothing throughout. Room 2, owned by
//! the surviving replica: its owner key (and fence) never changed, B1 (connected to the owner
//! directly) never disconnected, B2 (piped through the killed replica) resumed at once, no
//! member rejoined or reset MLS, none lost or was delivered twice an entry. Skipped, saying so,
//! without an etcd binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod etcd_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use etcd_support::{Etcd, Replica};
use satsuma_bot::room::{MemberView, RoomMember};
use satsuma_bot::{Bot, BotConfig};
use satsuma_coordinator::auth::{TokenKeys, unix_now};

const PATIENCE: Duration = Duration::from_secs(30);

/// A TCP front over the replicas (what a Service is to the pods): each connection goes to the
/// preferred backend, or the next one that accepts.
struct Front {
    addr: SocketAddr,
    prefer: Arc<AtomicUsize>,
}

impl Front {
    async fn start(backends: Vec<SocketAddr>) -> Front {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let prefer = Arc::new(AtomicUsize::new(0));
        let p = prefer.clone();
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let first = p.load(Ordering::Relaxed);
                let backends = backends.clone();
                tokio::spawn(async move {
                    for k in 0..backends.len() {
                        let to = backends[(first + k) % backends.len()];
                        let Ok(Ok(mut up)) = tokio::time::timeout(
                            Duration::from_millis(500),
                            tokio::net::TcpStream::connect(to),
                        )
                        .await
                        else {
                            continue;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                        return;
                    }
                });
            }
        });
        Front { addr, prefer }
    }

    fn prefer(&self, i: usize) {
        self.prefer.store(i, Ordering::Relaxed);
    }

    fn ws(&self, room: &str) -> String {
        format!("ws://{}/ws/{room}", self.addr)
    }
}

async fn member(front: &Front, room: &str, name: &str) -> RoomMember {
    let keys = TokenKeys::new(satsuma_coordinator::Config::dev().jwt_secret.as_bytes(), 5);
    let mut c = common::claims(room, &name.to_lowercase(), &["publish", "subscribe"]);
    c.name = name.to_owned();
    c.exp = unix_now() + 600;
    RoomMember::join(&front.ws(room), &keys.mint(&c).unwrap(), name)
        .await
        .unwrap()
}

/// All in one group at one epoch with one safety number; returns them.
async fn converged(members: &[&RoomMember]) -> (u64, String) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let views: Vec<MemberView> = members.iter().map(|m| m.view()).collect();
        let first = &views[0];
        if let (Some(epoch), Some(number)) = (first.epoch, first.safety_number.clone())
            && views.iter().all(|v| {
                v.phase == "member"
                    && v.epoch == first.epoch
                    && v.send_epoch == first.epoch
                    && v.safety_number == first.safety_number
                    && v.members.len() == members.len()
            })
        {
            return (epoch, number);
        }
        assert!(Instant::now() < deadline, "no common group: {views:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every member has processed the same last entry; returns it.
async fn same_last_seq(members: &[&RoomMember]) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seqs: Vec<u64> = members.iter().map(|m| m.view().last_seq).collect();
        if seqs.iter().all(|s| *s == seqs[0]) {
            // And stays so for a moment (nothing in flight).
            tokio::time::sleep(Duration::from_millis(300)).await;
            if members.iter().all(|m| m.view().last_seq == seqs[0]) {
                return seqs[0];
            }
            continue;
        }
        assert!(Instant::now() < deadline, "last seqs differ: {seqs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The keys under `key` (a prefix when `prefix`) in etcd, through its JSON gateway:
/// `(key, value, create_revision)`.
async fn etcd_range(endpoint: &str, key: &str, prefix: bool) -> Vec<(String, String, i64)> {
    let mut body = serde_json::json!({ "key": B64.encode(key) });
    if prefix {
        let mut end = key.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        body["range_end"] = B64.encode(end).into();
    }
    let v: serde_json::Value = reqwest::Client::new()
        .post(format!("{endpoint}/v3/kv/range"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Log values are binary: lossy text is enough (only keys and the owner's JSON are read).
    let text = |v: &serde_json::Value| {
        String::from_utf8_lossy(&B64.decode(v.as_str().unwrap_or_default()).unwrap()).into_owned()
    };
    v["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| {
                    (
                        text(&kv["key"]),
                        text(&kv["value"]),
                        kv["create_revision"]
                            .as_str()
                            .and_then(|r| r.parse().ok())
                            .unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The room's owner key: `(replica, fencing token)`.
async fn owner(endpoint: &str, room: &str) -> Option<(String, i64)> {
    let kvs = etcd_range(endpoint, &format!("/satsuma/rooms/{room}/owner"), false).await;
    kvs.into_iter().next().map(|(_, v, rev)| {
        let held: serde_json::Value = serde_json::from_str(&v).unwrap();
        (held["replica"].as_str().unwrap().to_owned(), rev)
    })
}

/// The `seq`s of the room's log in the store.
async fn stored_seqs(endpoint: &str, room: &str) -> Vec<u64> {
    let prefix = format!("/satsuma/rooms/{room}/log/");
    etcd_range(endpoint, &prefix, true)
        .await
        .iter()
        .map(|(k, _, _)| k[prefix.len()..].parse().unwrap())
        .collect()
}

/// No entry delivered twice or out of order, none missing: every member processed the same
/// entries (`seq` and bytes) as every other over the log both were in the room for, and every
/// entry the store holds for the room. Returns per member `(gaps, skipped seqs)`.
async fn logs_complete(endpoint: &str, room: &str, members: &[&RoomMember]) -> Vec<(u64, u64)> {
    let stored = stored_seqs(endpoint, room).await;
    assert!(!stored.is_empty(), "room {room}: nothing in the store");
    for m in members {
        let v = m.view();
        assert_eq!(
            (v.duplicates, v.out_of_order),
            (0, 0),
            "{}: entries delivered twice / out of order: {v:?}",
            v.participant_id
        );
        let log = m.log_audit();
        let had: std::collections::BTreeSet<u64> =
            log.entries(log.base()).iter().map(|e| e.0).collect();
        let missing: Vec<u64> = stored
            .iter()
            .filter(|s| **s > log.base() && !had.contains(s))
            .copied()
            .collect();
        assert!(
            missing.is_empty(),
            "{}: stored entries it never processed: {missing:?}",
            v.participant_id
        );
    }
    for x in members {
        for y in members {
            let (lx, ly) = (x.log_audit(), y.log_audit());
            let from = lx.base().max(ly.base());
            assert_eq!(
                lx.entries(from),
                ly.entries(from),
                "members {} and {} processed different entries after seq {from}",
                x.view().participant_id,
                y.view().participant_id
            );
        }
    }
    members
        .iter()
        .map(|m| {
            let v = m.view();
            (v.gaps, v.skipped_seqs)
        })
        .collect()
}

const VP8_KEYFRAME: [u8; 18] = [
    0x10, 2, 0, 0x9d, 1, 0x2a, 0x80, 2, 0xe0, 1, 5, 6, 7, 8, 9, 10, 11, 12,
];

/// `from` encrypts a frame and every member of `to` decrypts it.
async fn frames_cross(from: &RoomMember, to: &[&RoomMember]) {
    let deadline = Instant::now() + PATIENCE;
    let mut plain = VP8_KEYFRAME.to_vec();
    plain.push(rand::random());
    let sealed = loop {
        if let Some(s) = from.encrypt("video/VP8", plain.clone()).await {
            break s;
        }
        assert!(Instant::now() < deadline, "no send key: {:?}", from.view());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sender = from.view().participant_id;
    for m in to {
        let open = m.decrypt(sender, true, sealed.clone()).await;
        assert_eq!(open.as_deref(), Some(&plain[..]), "{:?}", m.view());
    }
}

/// A bot acting for `m`: its SFU session is made through the coordinator (the front) with
/// the member's credential; it publishes `mic` and `cam`.
async fn media_bot(front: &Front, m: &RoomMember) -> Bot {
    let mut cfg = BotConfig::new("http://unused", "unused", &m.view().resume_token);
    cfg.api_base = Some(format!("http://{}/sfu", front.addr));
    let bot = Bot::connect_with(cfg).await.unwrap();
    bot.publish_audio("mic").await.unwrap();
    bot.publish_video("cam").await.unwrap();
    bot
}

/// One pulled track: `(track, unique, lost, duplicates, corrupt)`.
type Pulled = (String, u64, u64, u64, u64);

/// Per pulled track: what arrived.
async fn reception(bot: &Bot) -> Vec<Pulled> {
    let stats = bot.stats().await.unwrap();
    stats
        .participant
        .subscribed
        .iter()
        .map(|s| {
            let r = &s.received;
            (
                format!("{}/{}", s.remote_session_id, s.track_name),
                r.unique,
                r.lost,
                r.duplicates,
                r.corrupt,
            )
        })
        .collect()
}

/// Waits until every pulled track of every bot has received more than `floor[i]` packets.
async fn media_flows(bots: &[&Bot], floor: &[Vec<Pulled>]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut all = true;
        for (i, b) in bots.iter().enumerate() {
            for (j, t) in reception(b).await.iter().enumerate() {
                let before = floor.get(i).and_then(|f| f.get(j)).map_or(0, |f| f.1);
                all &= t.1 > before + 20;
            }
        }
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "media does not flow");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_room_owner_with_bots_in_two_rooms() {
    let Some(etcd) = Etcd::start(3) else {
        return;
    };
    let sfu_config = satsuma_sfu::Config {
        http_bind: "127.0.0.1:0".parse().unwrap(),
        udp_bind: "127.0.0.1:0".parse().unwrap(),
        ..satsuma_sfu::Config::default()
    };
    let app = sfu_config.apps[0].clone();
    let sfu = satsuma_sfu::Server::bind(sfu_config).await.unwrap();
    let sfu_url = format!("http://{}", sfu.http_addr());
    let extra = [
        "--sfu-node",
        sfu_url.as_str(),
        "--sfu-app-id",
        app.id.as_str(),
        "--sfu-app-secret",
        app.secret.as_str(),
    ];
    let mut a = Replica::start_reachable("a", &etcd.endpoints(), &extra);
    let b = Replica::start_reachable("b", &etcd.endpoints(), &extra);
    let front = Front::start(vec![a.addr, b.addr]).await;

    // Room 1's first member reaches a (a owns room 1), room 2's reaches b; the others land
    // on either replica.
    front.prefer(0);
    let a1 = member(&front, "ha-1", "A1").await;
    front.prefer(1);
    let b1 = member(&front, "ha-2", "B1").await;
    let a2 = member(&front, "ha-1", "A2").await; // through b to a
    front.prefer(0);
    let b2 = member(&front, "ha-2", "B2").await; // through a to b
    let a3 = member(&front, "ha-1", "A3").await;
    let room1 = [&a1, &a2, &a3];
    let room2 = [&b1, &b2];
    let (epoch1, number1) = converged(&room1).await;
    let (epoch2, number2) = converged(&room2).await;

    // Media: every member has a bot publishing audio and video; each pulls the others'.
    front.prefer(1);
    let mut bots1 = Vec::new();
    for m in room1 {
        bots1.push(media_bot(&front, m).await);
    }
    let mut bots2 = Vec::new();
    for m in room2 {
        bots2.push(media_bot(&front, m).await);
    }
    for group in [&bots1, &bots2] {
        for (i, bot) in group.iter().enumerate() {
            let pulls: Vec<(String, String)> = group
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .flat_map(|(_, o)| {
                    [
                        (o.session_id().to_owned(), "mic".to_owned()),
                        (o.session_id().to_owned(), "cam".to_owned()),
                    ]
                })
                .collect();
            bot.subscribe_many(&pulls).await.unwrap();
        }
    }
    let all_bots: Vec<&Bot> = bots1.iter().chain(&bots2).collect();
    media_flows(&all_bots, &[]).await;
    frames_cross(&a1, &[&a2, &a3]).await;
    let seq_before = same_last_seq(&room1).await;
    let entries_before: Vec<u64> = room1.iter().map(|m| m.view().entries).collect();
    let mut at_kill = Vec::new();
    for bot in &all_bots {
        at_kill.push(reception(bot).await);
    }
    let etcd0 = etcd.endpoints()[0].clone();
    let owner1 = owner(&etcd0, "ha-1").await.unwrap();
    let owner2 = owner(&etcd0, "ha-2").await.unwrap();
    assert_eq!((owner1.0.as_str(), owner2.0.as_str()), ("a", "b"));

    // kill -9 the owner of room 1 mid-call.
    a.kill();
    let killed = Instant::now();
    // B2 of room 2 was put through a by the front: it resumes at b, which owns room 2.
    b2.wait_for(Duration::from_secs(5), |v| {
        v.resumes == 1 && v.closed.is_none()
    })
    .await
    .unwrap_or_else(|v| panic!("{v:?}"));
    let b2_back = killed.elapsed();
    let mut resumed_in = Vec::new();
    for m in room1 {
        let v = m
            .wait_for(Duration::from_secs(10), |v| {
                v.resumes >= 1 && v.closed.is_none()
            })
            .await
            .unwrap_or_else(|v| panic!("{v:?} did not resume"));
        resumed_in.push((v.participant_id, killed.elapsed()));
    }
    let first = resumed_in.iter().map(|r| r.1).min().unwrap();
    let last = resumed_in.iter().map(|r| r.1).max().unwrap();
    println!(
        "room 1: first member resumed at the new owner {} ms after the kill -9, the last {} ms; \
         room 2: B2 (piped through a) resumed at b after {} ms",
        first.as_millis(),
        last.as_millis(),
        b2_back.as_millis()
    );
    assert!(first <= Duration::from_secs(5), "new owner after {first:?}");
    // No MLS rejoin: the same group, epoch and safety number; frames still cross.
    assert_eq!(converged(&room1).await, (epoch1, number1.clone()));
    frames_cross(&a2, &[&a1, &a3]).await;
    // Media never paused for the coordinator: more arrived, nothing lost.
    media_flows(&all_bots, &at_kill).await;

    // The group goes on at the new owner: a fourth member joins.
    let a4 = member(&front, "ha-1", "A4").await;
    let room1_4 = [&a1, &a2, &a3, &a4];
    let (epoch1b, number1b) = converged(&room1_4).await;
    assert_eq!(epoch1b, epoch1 + 1);
    assert_ne!(number1b, number1);
    frames_cross(&a4, &[&a1, &a2, &a3]).await;
    // Every member of room 1 processed the same entries since before the kill: none lost.
    let seq_after = same_last_seq(&room1_4).await;
    assert!(seq_after > seq_before);
    let deltas: Vec<u64> = room1
        .iter()
        .zip(&entries_before)
        .map(|(m, e)| m.view().entries - e)
        .collect();
    assert!(
        deltas.iter().all(|d| *d == deltas[0] && *d > 0),
        "entries since the kill differ: {deltas:?}"
    );
    // b owns room 1 now, under a new fence.
    let owner1b = owner(&etcd0, "ha-1").await.unwrap();
    assert_eq!(owner1b.0, "b");
    assert!(owner1b.1 > owner1.1, "{owner1:?} -> {owner1b:?}");
    // No entry delivered twice, none missing (against each other and the store); no reset.
    let holes1 = logs_complete(&etcd0, "ha-1", &room1_4).await;
    for m in room1_4 {
        assert_eq!(m.view().resets, 0, "{:?}", m.view());
    }

    // Room 2 (owned by b) was not disturbed:
    // - its owner never changed: the same replica holds the same owner key (same fence);
    assert_eq!(owner(&etcd0, "ha-2").await, Some(owner2.clone()));
    // - B1, connected to b directly (the front preferred b when it joined), never saw a
    //   disconnect: no resume, no close, at any point (a close would have made it resume);
    let v = b1.view();
    assert_eq!(
        (v.resumes, v.closed.clone(), v.last_disconnect.clone()),
        (0, None, None),
        "{v:?}"
    );
    // - B2, whose connection the front had put through a, lost it with a and resumed at b
    //   (b owns the room: no lease to wait for), once;
    let v = b2
        .wait_for(Duration::from_secs(5), |v| {
            v.resumes == 1 && v.closed.is_none()
        })
        .await
        .unwrap_or_else(|v| panic!("{v:?}"));
    assert_eq!(v.resumes, 1);
    let b2_cut = v.last_disconnect.clone();
    // - no MLS rejoin or reset: the same epoch and safety number, frames cross;
    for m in room2 {
        assert_eq!(m.view().resets, 0, "{:?}", m.view());
    }
    assert_eq!(converged(&room2).await, (epoch2, number2));
    frames_cross(&b2, &[&b1]).await;
    // - no entry lost or delivered twice.
    same_last_seq(&room2).await;
    let holes2 = logs_complete(&etcd0, "ha-2", &room2).await;
    println!(
        "room logs: no entry delivered twice or missing; seq jumps (gaps, seqs skipped) per \
         member: room 1 {holes1:?} (the rebuilt room continues after the old owner's seq \
         ceiling), room 2 {holes2:?}"
    );
    println!(
        "room 2: owner {} (fence {}) unchanged; B1 (direct to the owner) 0 disconnects; \
         B2 (piped through the killed replica, cut with {b2_cut:?}) back in {} ms (50 ms \
         polling); room 1 cut with {:?}",
        owner2.0,
        owner2.1,
        b2_back.as_millis(),
        room1
            .iter()
            .map(|m| m.view().last_disconnect)
            .collect::<Vec<_>>()
    );

    // The bots' media lost nothing throughout (two seconds more after the takeover).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut packets, mut tracks) = ([0, 0], [0, 0]);
    for (i, bot) in all_bots.iter().enumerate() {
        let room = usize::from(i >= bots1.len());
        for (track, unique, lost, dups, corrupt) in reception(bot).await {
            assert_eq!((lost, dups, corrupt), (0, 0, 0), "{track}");
            packets[room] += unique;
            tracks[room] += 1;
        }
    }
    assert_eq!(tracks, [3 * 4, 2 * 2]);
    println!(
        "media: room 1 {} packets over {} pulled tracks, room 2 {} packets over {} pulled \
         tracks; 0 lost, 0 duplicated, 0 corrupt",
        packets[0], tracks[0], packets[1], tracks[1]
    );
    drop(etcd);
}
