//! Issue 15, placement: three `satsuma-sfu` nodes joined by the QUIC relay, each with a
//! capacity of 4 sessions, and a `satsuma-coordinator` configured with the three. Ten native
//! bots, each a room member making its SFU session through the coordinator's `/sfu` proxy,
//! publish audio and video and pull everyone else's.
//!
//! Checked: the coordinator keeps the room on its first node until it holds 4 sessions, then
//! spreads the rest over the least-loaded nodes (4, 3, 3: none over its capacity; each node's
//! own session count agrees with the node its session ids name); every bot's later calls
//! (publish, pulls, renegotiation) reach the node that owns its session; every bot receives
//! every other bot's packets, byte-identical (the bot checks each payload against what the
//! sender generates), none lost, duplicated or foreign, across the relay where the two are on
//! different nodes; once every node holds 4 sessions, the next participant's session is
//! refused (503 `no_sfu`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::time::{Duration, Instant};

use cluster::{Coordinator, Nodes};
use common::Client;
use satsuma_bot::{Bot, BotConfig, BotStats, MediaKind, TrackSpec};
use satsuma_coordinator::auth::{TokenKeys, unix_now};

const NODES: [&str; 3] = ["sfu-a", "sfu-b", "sfu-c"];
const CAPACITY: usize = 4;
const BOTS: usize = 10;
const CONNECT: Duration = Duration::from_secs(20);
const ROOM: &str = "cluster";

fn spec(name: &str, kind: MediaKind) -> TrackSpec {
    TrackSpec {
        name: name.into(),
        kind,
        simulcast: Vec::new(),
    }
}

/// The node (index into [`NODES`]) whose tag starts session id `sid`.
fn node_of(sid: &str) -> usize {
    cluster::node_of(&NODES, sid)
}

/// Every packet `from` sent on each of its tracks reached `to`, byte-identical (the bot checks
/// each payload against what the sender generates), once, nothing lost; else what is missing.
fn complete(to: &BotStats, from: &BotStats) -> Result<(), String> {
    for sent in &from.participant.published {
        let Some(got) =
            to.participant.subscribed.iter().find(|s| {
                s.remote_session_id == from.session_id && s.track_name == sent.track_name
            })
        else {
            return Err(format!(
                "no pull of {}/{}",
                from.session_id, sent.track_name
            ));
        };
        let r = &got.received;
        if r.corrupt != 0 || r.foreign != 0 || r.duplicates != 0 {
            return Err(format!("bad payloads on {}: {r:?}", sent.track_name));
        }
        if (r.first_seq, r.last_seq, r.unique, r.lost)
            != (
                sent.sent.first_seq,
                sent.sent.last_seq,
                sent.sent.packets,
                0,
            )
        {
            return Err(format!(
                "{}: received {r:?}, sent {:?}",
                sent.track_name, sent.sent
            ));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_participants_spread_over_three_nodes_of_capacity_four() {
    let started = Instant::now();
    let Nodes { dir: _dir, sfus } = Nodes::start("sfu-cluster", &NODES, &[]);
    let specs: Vec<String> = sfus
        .iter()
        .zip(NODES)
        .map(|(s, name)| {
            format!(
                "{};capacity={CAPACITY};region=test;name={name}",
                s.base_url()
            )
        })
        .collect();
    // The members below send no heartbeats: they must not be timed out meanwhile.
    let coordinator =
        Coordinator::start("sfu-cluster", &specs, &["--presence-timeout-ms", "300000"]);

    // Ten members of one room; each makes one SFU session through the proxy, one after the
    // other, and publishes audio and video (sending starts once everyone pulls everyone).
    let keys = TokenKeys::new(satsuma_coordinator::Config::dev().jwt_secret.as_bytes(), 5);
    let mut members = Vec::new();
    let mut bots = Vec::new();
    for i in 0..BOTS {
        let mut claims = common::claims(ROOM, &format!("bot-{i}"), &["publish", "subscribe"]);
        claims.exp = unix_now() + 600;
        let url = format!("ws://{}/ws/{ROOM}", coordinator.addr);
        let member = Client::join_url(&url, &keys.mint(&claims).unwrap()).await;
        let mut cfg = BotConfig::new("http://unused", "unused", &member.resume_token);
        cfg.api_base = Some(format!("http://{}/sfu", coordinator.addr));
        cfg.participant.send_on_publish = false;
        cfg.participant.video.fps = 15;
        let bot = Bot::connect_with(cfg)
            .await
            .unwrap_or_else(|e| panic!("bot {i}: no session through the coordinator: {e}"));
        bot.publish(&[spec("mic", MediaKind::Audio), spec("cam", MediaKind::Video)])
            .await
            .unwrap_or_else(|e| panic!("bot {i} on {}: publish: {e}", node_of(bot.session_id())));
        members.push(member);
        bots.push(bot);
    }

    // Placement: the room's first 4 sessions on its node (the first), then the least-loaded
    // node each time: 4, 3, 3; none over the capacity. Each node counts what it was given.
    let placed: Vec<usize> = bots.iter().map(|b| node_of(b.session_id())).collect();
    let mut per_node = [0usize; 3];
    for n in &placed {
        per_node[*n] += 1;
    }
    println!("placement by session: {placed:?}, sessions per node {per_node:?}");
    assert_eq!(
        &placed[..CAPACITY],
        &[0; CAPACITY],
        "the room starts on one node"
    );
    assert!(per_node.iter().all(|n| *n <= CAPACITY), "{per_node:?}");
    // Overflow goes to the node with the fewest sessions (ties: the first configured).
    assert_eq!(&placed[CAPACITY..], &[1, 2, 1, 2, 1, 2], "{placed:?}");
    assert_eq!(per_node, [4, 3, 3]);
    for (i, sfu) in sfus.iter().enumerate() {
        let m = sfu.metrics().await.unwrap();
        let live = m
            .samples
            .get("satsuma_sfu_sessions")
            .copied()
            .unwrap_or(-1.0);
        assert_eq!(live, per_node[i] as f64, "sessions on {}", NODES[i]);
    }
    for (i, bot) in bots.iter().enumerate() {
        bot.wait_connected(CONNECT)
            .await
            .unwrap_or_else(|e| panic!("bot {i} on {}: {e}", NODES[placed[i]]));
    }

    // Everyone pulls everyone (through the relay where the publisher is on another node).
    for (i, bot) in bots.iter().enumerate() {
        let pulls: Vec<(String, String)> = bots
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, o)| ["mic", "cam"].map(|t| (o.session_id().to_owned(), t.to_owned())))
            .collect();
        let pulled = bot.subscribe_many(&pulls).await.unwrap_or_else(|e| {
            panic!(
                "bot {i} on {}: pulls: {e}\n--- {}:\n{}",
                NODES[placed[i]],
                NODES[placed[i]],
                sfus[placed[i]].stderr()
            )
        });
        assert_eq!(pulled.len(), pulls.len(), "bot {i} pulled {pulled:?}");
    }
    for (i, bot) in bots.iter().enumerate() {
        bot.wait_connected(CONNECT)
            .await
            .unwrap_or_else(|e| panic!("bot {i} after its pulls: {e}"));
    }
    // The relay legs are set up when the pulls are answered; a moment for the links.
    tokio::time::sleep(Duration::from_secs(1)).await;

    for bot in &bots {
        bot.set_sending(true).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    for bot in &bots {
        bot.set_sending(false).await.unwrap();
    }

    // Everything sent arrives (repairs included) within a generous wait.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (packets, pairs, sent_per_node) = loop {
        let mut stats = Vec::new();
        for bot in &bots {
            stats.push(bot.stats().await.unwrap());
        }
        let mut missing = Vec::new();
        let (mut packets, mut pairs, mut across) = (0, 0, 0);
        for (i, to) in stats.iter().enumerate() {
            for (j, from) in stats.iter().enumerate().filter(|(j, _)| *j != i) {
                match complete(to, from) {
                    Ok(()) => {
                        pairs += 1;
                        across += usize::from(placed[i] != placed[j]);
                        packets += from
                            .participant
                            .published
                            .iter()
                            .map(|p| p.sent.packets)
                            .sum::<u64>();
                    }
                    Err(e) => missing.push(format!(
                        "bot {i} ({}) from bot {j} ({}): {e}",
                        NODES[placed[i]], NODES[placed[j]]
                    )),
                }
            }
        }
        if missing.is_empty() {
            println!("{pairs} sender/receiver pairs complete, {across} of them across nodes");
            let mut sent_per_node = [0u64; 3];
            for (j, from) in stats.iter().enumerate() {
                sent_per_node[placed[j]] += from
                    .participant
                    .published
                    .iter()
                    .map(|p| p.sent.packets)
                    .sum::<u64>();
            }
            break (packets, pairs, sent_per_node);
        }
        assert!(
            Instant::now() < deadline,
            "not everyone received everyone:\n{}",
            missing.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(pairs, BOTS * (BOTS - 1));
    assert!(packets > 0);
    // Each node's packets crossed each of its two links once (whatever the number of pullers
    // behind a link), plus the few resent on the relay's own NACKs. The nodes add their link
    // counts to the metrics periodically: wait for them.
    let once: Vec<f64> = sent_per_node
        .iter()
        .map(|sent| (*sent * (NODES.len() as u64 - 1)) as f64)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let relayed = loop {
        let mut relayed = Vec::new();
        for sfu in &sfus {
            let m = sfu.metrics().await.unwrap();
            relayed.push(
                m.samples
                    .iter()
                    .filter(|(k, _)| {
                        k.starts_with("satsuma_sfu_relay_packets_total{")
                            && k.contains("direction=\"out\"")
                    })
                    .map(|(_, v)| *v)
                    .sum::<f64>(),
            );
        }
        if relayed.iter().zip(&once).all(|(r, o)| r >= o) || Instant::now() > deadline {
            break relayed;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for (n, (r, o)) in relayed.iter().zip(&once).enumerate() {
        assert!(
            *r >= *o && *r <= *o * 1.05 + 10.0,
            "{}: {r} relay packets out for {} packets sent by its bots",
            NODES[n],
            sent_per_node[n]
        );
    }
    println!(
        "{packets} packets received byte-identical; packets sent by the bots of each node \
         {sent_per_node:?}, relay packets out per node {relayed:?}; {} s in all",
        started.elapsed().as_secs()
    );

    // Two more participants fill the cluster (4, 4, 4); the next one is refused with 503
    // no_sfu, before any node is asked.
    let http = reqwest::Client::new();
    let mut extra = Vec::new();
    for i in BOTS..BOTS + 3 {
        let mut claims = common::claims(ROOM, &format!("bot-{i}"), &["publish", "subscribe"]);
        claims.exp = unix_now() + 600;
        let url = format!("ws://{}/ws/{ROOM}", coordinator.addr);
        let member = Client::join_url(&url, &keys.mint(&claims).unwrap()).await;
        let r = http
            .post(format!("http://{}/sfu/sessions/new", coordinator.addr))
            .bearer_auth(&member.resume_token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        extra.push((status, body));
        members.push(member);
    }
    let nodes: Vec<usize> = extra[..2]
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 201, "{body}");
            node_of(body["sessionId"].as_str().unwrap())
        })
        .collect();
    assert_eq!(nodes, [1, 2]);
    assert_eq!(extra[2].0, 503, "{}", extra[2].1);
    assert_eq!(extra[2].1["errorCode"], "no_sfu");
    for (i, sfu) in sfus.iter().enumerate() {
        let m = sfu.metrics().await.unwrap();
        let live = m
            .samples
            .get("satsuma_sfu_sessions")
            .copied()
            .unwrap_or(-1.0);
        assert_eq!(live, CAPACITY as f64, "sessions on {} when full", NODES[i]);
    }
    drop(members);
    drop(coordinator);
}
