//! A room split over two `satsuma-sfu` nodes joined by the QUIC relay, driven by native bots
//! over real UDP on 127.0.0.1 (issue 15). Each node's API is used directly, as the coordinator's
//! proxy does: a bot on node B pulls a track of a session on node A by A's session id, and B
//! pulls it over the relay (the session id names its node).
//!
//! Checked: every payload arrives byte-identical on both nodes (A → B and B → A); with five
//! subscribers on B the link carries each of A's packets once; a late subscriber on B gets a
//! keyframe through the relay within 1 s; loss between B and one subscriber is NACKed and
//! repaired from B's RTX cache, and no bot loses a packet; garbage on the relay ports and a
//! stranger with another CA's certificate are refused (counted) while the room carries on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use satsuma_bot::api::TrackStatus;
use satsuma_bot::harness::{APP_ID, APP_SECRET, Metrics, SfuProcess};
use satsuma_bot::participant::{PublishedStats, SubscribedStats};
use satsuma_bot::{Bot, BotConfig, BotStats, MediaKind, TrackSpec};
use satsuma_sfu::relay::driver::{Relay, RelayConfig};
use satsuma_sfu::relay::tls::{self, RelayIdentity};
use satsuma_sfu::relay::{LayerDemand, TrackRef};

const BIN: &str = env!("CARGO_BIN_EXE_satsuma-sfu");
const CONNECT: Duration = Duration::from_secs(15);

fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// Starts node `name` with its relay on `port`, trusting the cluster CA in `dir`, with `peer`.
fn node(dir: &Path, name: &str, port: u16, peer: (&str, u16)) -> SfuProcess {
    node_with(dir, name, port, peer, &[])
}

/// [`node`] with more flags.
fn node_with(dir: &Path, name: &str, port: u16, peer: (&str, u16), extra: &[&str]) -> SfuProcess {
    let file = |f: String| dir.join(f).to_str().unwrap().to_string();
    let mut args = vec![
        "--shards".to_string(),
        "2".into(),
        "--log".into(),
        "info,satsuma_sfu::relay=debug,satsuma_sfu::forward=debug".into(),
        "--node-name".into(),
        name.into(),
        "--relay-bind".into(),
        format!("127.0.0.1:{port}"),
        "--relay-cert".into(),
        file(format!("{name}.pem")),
        "--relay-key".into(),
        file(format!("{name}-key.pem")),
        "--relay-ca".into(),
        file("ca.pem".into()),
        "--relay-peer".into(),
        format!("{}=127.0.0.1:{}", peer.0, peer.1),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    SfuProcess::start(BIN, &args).expect("start satsuma-sfu")
}

fn config(sfu: &SfuProcess) -> BotConfig {
    BotConfig::new(&sfu.base_url(), APP_ID, APP_SECRET)
}

fn spec(name: &str, kind: MediaKind) -> TrackSpec {
    TrackSpec {
        name: name.into(),
        kind,
        simulcast: Vec::new(),
    }
}

fn published<'a>(s: &'a BotStats, name: &str) -> &'a PublishedStats {
    s.participant
        .published
        .iter()
        .find(|p| p.track_name == name)
        .unwrap_or_else(|| panic!("no published track {name} in {s:#?}"))
}

fn subscribed<'a>(s: &'a BotStats, session: &str, name: &str) -> &'a SubscribedStats {
    s.participant
        .subscribed
        .iter()
        .find(|p| p.track_name == name && p.remote_session_id == session)
        .unwrap_or_else(|| panic!("no subscribed track {session}/{name} in {s:#?}"))
}

/// Sum of the series of `name` whose labels include all of `labels`.
fn series(m: &Metrics, name: &str, labels: &[&str]) -> f64 {
    m.samples
        .iter()
        .filter(|(k, _)| {
            k.starts_with(&format!("{name}{{")) && labels.iter().all(|l| k.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Every packet of `publisher`'s track `name` reached `bot` exactly once, byte-identical, in
/// step with its RTP numbering, nothing lost.
async fn assert_complete(who: &str, bot: &Bot, publisher: &str, name: &str, sent: &PublishedStats) {
    let s = bot.stats().await.unwrap();
    let r = &subscribed(&s, publisher, name).received;
    assert_eq!(r.corrupt, 0, "{who} {name}: corrupt payloads: {r:?}");
    assert_eq!(r.foreign, 0, "{who} {name}: payloads of another track");
    assert_eq!(r.duplicates, 0, "{who} {name}: duplicates");
    assert_eq!(
        (r.first_seq, r.last_seq, r.unique),
        (sent.sent.first_seq, sent.sent.last_seq, sent.sent.packets),
        "{who} {name}: received {r:?}, sent {:?}",
        sent.sent
    );
    assert_eq!(r.lost, 0, "{who} {name}: lost packets");
    assert_eq!(r.rtp_seq_offset_changes, 0, "{who} {name}: RTP numbering");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_split_over_two_nodes() {
    let dir = std::env::temp_dir().join(format!("satsuma-relay-nodes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ca = tls::generate_ca("test").unwrap();
    std::fs::write(dir.join("ca.pem"), &ca.cert).unwrap();
    for name in ["sfu-a", "sfu-b"] {
        let c = tls::generate_node_cert(&ca, name, 1).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), &c.cert).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), &c.key).unwrap();
    }
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let a = node(&dir, "sfu-a", pa, ("sfu-b", pb));
    let b = node(&dir, "sfu-b", pb, ("sfu-a", pa));

    // Ann publishes audio and video on A (keyframes only at the start and on request, so the
    // late subscriber depends on the keyframe request crossing the relay); Bob publishes
    // audio on B.
    let mut ann_cfg = config(&a);
    ann_cfg.participant.send_on_publish = false;
    ann_cfg.participant.video.keyframe_interval = None;
    // About 1 Mbit/s of video (30 frames of 4 packets of 1,000 bytes per second), enough to
    // overflow the lossy subscriber's bottleneck below.
    ann_cfg.participant.video.fps = 30;
    ann_cfg.participant.video.delta_packets = 4;
    ann_cfg.participant.video.payload_len = 1000;
    let ann = Bot::connect_with(ann_cfg).await.unwrap();
    ann.publish(&[spec("mic", MediaKind::Audio), spec("cam", MediaKind::Video)])
        .await
        .unwrap();
    let mut bob_cfg = config(&b);
    bob_cfg.participant.send_on_publish = false;
    let bob = Bot::connect_with(bob_cfg).await.unwrap();
    bob.publish_audio("mic").await.unwrap();
    ann.wait_connected(CONNECT).await.unwrap();
    bob.wait_connected(CONNECT).await.unwrap();
    let (ann_id, bob_id) = (ann.session_id().to_owned(), bob.session_id().to_owned());

    // Cat on A pulls Ann (same node) and Bob (over the relay, B → A).
    let cat = Bot::connect_with(config(&a)).await.unwrap();
    let pulled = match cat
        .subscribe_many(&[
            (ann_id.clone(), "mic".into()),
            (ann_id.clone(), "cam".into()),
            (bob_id.clone(), "mic".into()),
        ])
        .await
    {
        Ok(p) => p,
        Err(e) => panic!(
            "Cat's pulls failed: {e}\n--- A:\n{}\n--- B:\n{}",
            a.stderr(),
            b.stderr()
        ),
    };
    assert_eq!(pulled.len(), 3, "Cat pulled {pulled:?}");
    cat.wait_connected(CONNECT).await.unwrap();
    // Five subscribers on B pull Ann's tracks over the relay (A → B). The last one, whose
    // link will lose packets, pulls only video: audio is not NACKed (Opus has its own FEC).
    let mut on_b = Vec::new();
    for i in 0..5 {
        let bot = Bot::connect_with(config(&b)).await.unwrap();
        let mut pulls = vec![(ann_id.clone(), "cam".to_string())];
        if i < 4 {
            pulls.push((ann_id.clone(), "mic".into()));
        }
        let pulled = bot.subscribe_many(&pulls).await.unwrap();
        assert_eq!(
            pulled.len(),
            pulls.len(),
            "subscriber {i} on B pulled {pulled:?}"
        );
        bot.wait_connected(CONNECT).await.unwrap();
        on_b.push(bot);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let link_before = series(
        &a.metrics().await.unwrap(),
        "satsuma_sfu_relay_packets_total",
        &["peer=\"sfu-b\"", "direction=\"out\""],
    );

    ann.set_sending(true).await.unwrap();
    bob.set_sending(true).await.unwrap();

    // Hostile input on both relay ports while the room runs: garbage datagrams (some shaped
    // like QUIC long headers), and a stranger that claims to be sfu-a with a certificate of
    // another CA and asks B for Ann's track. Both are refused; the room carries on.
    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..200u16 {
        let mut d = vec![(i % 251) as u8; 1 + usize::from(i) * 7 % 1300];
        d[0] = 0xc0 | (i as u8 & 0x3f);
        let port = if i % 2 == 0 { pa } else { pb };
        junk.send_to(&d, ("127.0.0.1", port)).await.unwrap();
    }
    let other_ca = tls::generate_ca("other").unwrap();
    let fake = tls::generate_node_cert(&other_ca, "sfu-a", 1).unwrap();
    let stranger_metrics = satsuma_sfu::Metrics::new();
    let stranger = Relay::bind(
        RelayConfig {
            identity: RelayIdentity::with_ca("sfu-a", &fake, &other_ca.cert).unwrap(),
            bind: "127.0.0.1:0".parse().unwrap(),
            peers: std::collections::HashMap::from([(
                "sfu-b".to_string(),
                format!("127.0.0.1:{pb}").parse().unwrap(),
            )]),
        },
        stranger_metrics.relay.clone(),
    )
    .unwrap();
    stranger
        .handle()
        .subscribe(
            "sfu-b",
            TrackRef::new(APP_ID, ann_id.clone(), "cam"),
            1,
            LayerDemand::All,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // Loss between B and its last subscriber: a 100 kbit/s bottleneck for 300 ms drops
    // packets (drop-tail, once its queue holds 16 kB), which the bot NACKs and B resends from
    // the leg's RTX cache.
    let lossy = &on_b[4];
    let nacks_before = b.metrics().await.unwrap().get("satsuma_sfu_nacks_total");
    lossy.set_ingress_limit(Some(100_000));
    tokio::time::sleep(Duration::from_millis(300)).await;
    lossy.set_ingress_limit(None);
    tokio::time::sleep(Duration::from_millis(700)).await;

    // A late subscriber on B, 2 s after the start: the last keyframe is long gone.
    let before = ann.stats().await.unwrap();
    let keyframes_before = published(&before, "cam").sent.keyframes;
    let late = Bot::connect_with(config(&b)).await.unwrap();
    let started = tokio::time::Instant::now();
    late.subscribe(&ann_id, "cam").await.unwrap();
    let deadline = started + Duration::from_secs(5);
    let late_received = loop {
        let s = late.stats().await.unwrap();
        let r = subscribed(&s, &ann_id, "cam").received.clone();
        if r.keyframes > 0 || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    ann.set_sending(false).await.unwrap();
    bob.set_sending(false).await.unwrap();
    // Let the last packets, repairs and the relay's per-second link counters land.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let ann_stats = ann.stats().await.unwrap();
    let bob_stats = bob.stats().await.unwrap();
    let (ann_mic, ann_cam) = (published(&ann_stats, "mic"), published(&ann_stats, "cam"));
    let bob_mic = published(&bob_stats, "mic");
    assert!(ann_cam.sent.packets > 50 && ann_mic.sent.packets > 50);
    assert!(bob_mic.sent.packets > 50);

    // Byte-identical on both sides.
    assert_complete("Cat on A", &cat, &ann_id, "mic", ann_mic).await;
    assert_complete("Cat on A", &cat, &ann_id, "cam", ann_cam).await;
    assert_complete("Cat on A (from B)", &cat, &bob_id, "mic", bob_mic).await;
    for (i, bot) in on_b.iter().enumerate() {
        if i < 4 {
            assert_complete(
                &format!("subscriber {i} on B"),
                bot,
                &ann_id,
                "mic",
                ann_mic,
            )
            .await;
        }
        assert_complete(
            &format!("subscriber {i} on B"),
            bot,
            &ann_id,
            "cam",
            ann_cam,
        )
        .await;
    }

    // The link carries each of Ann's packets once, not once per subscriber on B.
    let ma = a.metrics().await.unwrap();
    let mb = b.metrics().await.unwrap();
    let link_out = series(
        &ma,
        "satsuma_sfu_relay_packets_total",
        &["peer=\"sfu-b\"", "direction=\"out\""],
    ) - link_before;
    let link_in = series(
        &mb,
        "satsuma_sfu_relay_packets_total",
        &["peer=\"sfu-a\"", "direction=\"in\""],
    );
    let ann_sent = ann_mic.sent.packets + ann_cam.sent.packets;
    let resent = series(&ma, "satsuma_sfu_relay_repairs_total", &["kind=\"resent\""]);
    eprintln!(
        "link A→B: {link_out} datagrams out ({resent} resent), {link_in} in at B, for {ann_sent} \
         packets Ann sent to 5+1 subscribers on B ({:.3} per packet)",
        link_out / ann_sent as f64
    );
    assert!(
        link_out >= ann_sent as f64,
        "the link carried {link_out} datagrams for {ann_sent} packets"
    );
    assert!(
        link_out <= ann_sent as f64 * 1.1,
        "the link carried {link_out} datagrams for {ann_sent} packets: once per subscriber?"
    );
    assert!(
        mb.get("satsuma_sfu_forwarded_packets_total")
            >= (5 * ann_cam.sent.packets + 4 * ann_mic.sent.packets) as f64,
        "B forwarded {} packets",
        mb.get("satsuma_sfu_forwarded_packets_total")
    );

    // Every relay series the Grafana dashboard queries is exported by a node with a link
    // (the deploy test checks the others against a single SFU).
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/satsuma-sfu.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut queried = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("satsuma_sfu_relay_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                queried.insert(name);
            }
        }
    }
    assert!(queried.len() >= 8, "{queried:?}");
    for name in &queried {
        assert!(
            ma.samples
                .keys()
                .any(|k| k == name || k.starts_with(&format!("{name}{{"))),
            "the dashboard queries {name}, node A does not export it"
        );
    }

    // The stranger was refused in the TLS handshake and counted; both nodes are healthy.
    let refused = series(
        &mb,
        "satsuma_sfu_relay_refused_total",
        &["reason=\"handshake\""],
    );
    eprintln!(
        "hostile input: 200 garbage datagrams on the relay ports, a stranger with another CA's \
         certificate: {} failed dial(s), {refused} handshake(s) refused at B, both nodes up",
        stranger_metrics.relay.dial_failures.get()
    );
    assert!(refused >= 1.0, "nothing refused at B");
    assert!(
        stranger_metrics.relay.dial_failures.get() >= 1,
        "the stranger's dial did not fail"
    );
    stranger.shutdown().await;
    for (name, node) in [("A", &a), ("B", &b)] {
        let health = reqwest::get(format!("{}/healthz", node.base_url()))
            .await
            .unwrap()
            .status();
        assert_eq!(health, 200, "node {name} unhealthy");
    }

    // The late subscriber's keyframe came through the relay within 1 s.
    let ann_after = ann.stats().await.unwrap();
    let cam_after = published(&ann_after, "cam");
    eprintln!(
        "late subscriber on B: first packet {:?} ms, first keyframe {:?} ms after subscribing; \
         Ann's keyframe requests {}, keyframes {} (before {keyframes_before})",
        late_received.first_packet_ms,
        late_received.first_keyframe_ms,
        cam_after.sent.keyframe_requests,
        cam_after.sent.keyframes
    );
    let first_keyframe = late_received
        .first_keyframe_ms
        .unwrap_or_else(|| panic!("late subscriber got no keyframe: {late_received:?}"));
    assert!(
        first_keyframe <= 1000.0,
        "keyframe after {first_keyframe} ms"
    );
    assert!(
        cam_after.sent.keyframes > keyframes_before,
        "no new keyframe"
    );
    let s = late.stats().await.unwrap();
    let r = &subscribed(&s, &ann_id, "cam").received;
    assert_eq!(
        (r.corrupt, r.lost, r.rtp_seq_offset_changes),
        (0, 0, 0),
        "{r:?}"
    );

    // Loss on B's last mile was NACKed and repaired (the bot's stream above is complete).
    let nacks = mb.get("satsuma_sfu_nacks_total") - nacks_before;
    eprintln!("lossy subscriber on B: {nacks} NACKs answered at B, 0 packets lost after repair");
    assert!(nacks > 0.0, "B saw no NACK");

    // Ann's session ends on A: her tracks are withdrawn over the relay and the legs on B end.
    let deleted = reqwest::Client::new()
        .delete(format!(
            "{}/v1/apps/{APP_ID}/sessions/{ann_id}",
            a.base_url()
        ))
        .bearer_auth(APP_SECRET)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{deleted:?}");
    let watcher = &on_b[0];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let state = watcher.api().session(watcher.session_id()).await.unwrap();
        let ended = state
            .tracks
            .iter()
            .filter(|t| t.session_id.as_deref() == Some(ann_id.as_str()))
            .all(|t| t.status == TrackStatus::Inactive);
        if ended {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Ann's tracks still live on B: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while b
        .metrics()
        .await
        .unwrap()
        .get("satsuma_sfu_relay_legs{side=\"subscriber\"}")
        > 0.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B still pulls a track of A"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("Ann left A: her tracks ended on B and B pulls nothing from A any more");

    for bot in on_b {
        bot.shutdown().await.unwrap();
    }
    for bot in [late, cat, ann, bob] {
        bot.shutdown().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A simulcast track pulled over the relay: every layer crosses the link whole (each layer is
/// its own RTP stream with its own sequence numbers; the link once tracked arrival per track,
/// so the packets of whichever layers were numbered lower were dropped as duplicates and node
/// B's subscribers were stuck on the layers that got through), and an unconstrained subscriber
/// on B gets the top layer as one on A does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulcast_track_crosses_the_relay_with_every_layer() {
    use satsuma_bot::SimulcastLayer;
    const F: u8 = 2;
    let dir = std::env::temp_dir().join(format!("satsuma-relay-simulcast-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ca = tls::generate_ca("test").unwrap();
    std::fs::write(dir.join("ca.pem"), &ca.cert).unwrap();
    for name in ["sfu-a", "sfu-b"] {
        let c = tls::generate_node_cert(&ca, name, 1).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), &c.cert).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), &c.key).unwrap();
    }
    let (pa, pb) = (free_udp_port(), free_udp_port());
    // Without bandwidth estimation a subscriber takes the top layer that flows at once.
    let flags = ["--bwe-initial-kbps", "0"];
    let a = node_with(&dir, "sfu-a", pa, ("sfu-b", pb), &flags);
    let b = node_with(&dir, "sfu-b", pb, ("sfu-a", pa), &flags);

    let ann = Bot::connect_with(config(&a)).await.unwrap();
    ann.publish(&[TrackSpec::simulcast_video(
        "cam",
        SimulcastLayer::standard(),
    )])
    .await
    .unwrap();
    ann.wait_connected(CONNECT).await.unwrap();
    let ann_id = ann.session_id().to_owned();
    let dan = Bot::connect_with(config(&b)).await.unwrap();
    dan.subscribe(&ann_id, "cam").await.unwrap();
    dan.wait_connected(CONNECT).await.unwrap();

    // Dan on B reaches the top layer and holds it for 2 s.
    let start = tokio::time::Instant::now();
    let mut since: Option<tokio::time::Instant> = None;
    loop {
        let s = dan.stats().await.unwrap();
        let r = subscribed(&s, &ann_id, "cam").received.clone();
        if r.layer == Some(F) {
            if since
                .get_or_insert_with(tokio::time::Instant::now)
                .elapsed()
                >= Duration::from_secs(2)
            {
                break;
            }
        } else {
            since = None;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "Dan on B never held f: {r:#?}\n--- B:\n{}",
            b.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = dan.stats().await.unwrap();
    let r = subscribed(&s, &ann_id, "cam").received.clone();
    assert_eq!((r.corrupt, r.foreign, r.lost), (0, 0, 0), "Dan: {r:#?}");

    // Every layer's packets crossed the link and none was refused as a duplicate (the nodes
    // update the relay's series once a second).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mb = b.metrics().await.unwrap();
    let refused = series(
        &mb,
        "satsuma_sfu_relay_dropped_total",
        &["reason=\"unknown_track\""],
    );
    let received = series(
        &mb,
        "satsuma_sfu_relay_packets_total",
        &["peer=\"sfu-a\"", "direction=\"in\""],
    );
    let sent = series(
        &a.metrics().await.unwrap(),
        "satsuma_sfu_relay_packets_total",
        &["peer=\"sfu-b\"", "direction=\"out\""],
    );
    eprintln!("link: A sent {sent}, B accepted {received}, B refused {refused}");
    assert!(sent > 0.0, "nothing crossed the link");
    assert_eq!(refused, 0.0, "B refused packets of the link: {sent} sent");
    let _ = std::fs::remove_dir_all(&dir);
}
