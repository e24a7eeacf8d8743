//! The relay between SFU nodes over real QUIC on 127.0.0.1: mutual TLS from a cluster CA (and
//! pinned keys), a track published on one node and pulled from another arrives byte-identical,
//! keyframe requests travel back, one link per node pair, strangers are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use satsuma_sfu::Metrics;
use satsuma_sfu::relay::driver::{PeerAddr, Relay, RelayConfig};
use satsuma_sfu::relay::tls::{self, PemPair, RelayIdentity};
use satsuma_sfu::relay::wire::RelayExt;
use satsuma_sfu::relay::{KeyframeKind, LayerDemand, RelayEvent, RelayMedia, TrackKind, TrackRef};

const WAIT: Duration = Duration::from_secs(10);

fn identity(node: &str, ca: &PemPair) -> RelayIdentity {
    let cert = tls::generate_node_cert(ca, node, 1).unwrap();
    RelayIdentity::with_ca(node, &cert, &ca.cert).unwrap()
}

fn start(identity: RelayIdentity) -> (Relay, Metrics) {
    let metrics = Metrics::new();
    let relay = Relay::bind(
        RelayConfig {
            identity,
            bind: "127.0.0.1:0".parse().unwrap(),
            peers: HashMap::new(),
        },
        metrics.relay.clone(),
    )
    .unwrap();
    (relay, metrics)
}

fn track(name: &str) -> TrackRef {
    TrackRef::new("app", "0123456789abcdef0123456789abcdef", name)
}

/// The next event that `pick` accepts (others are skipped), or a panic after [`WAIT`].
async fn wait_for<T>(
    relay: &mut Relay,
    what: &str,
    mut pick: impl FnMut(RelayEvent) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, relay.events().recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("relay stopped");
        if let Some(t) = pick(event) {
            return t;
        }
    }
}

/// Polls `check` every 50 ms until it holds, or panics after [`WAIT`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn packet(id: u64, seq: u64, len: usize) -> RelayMedia {
    let payload: Vec<u8> = (0..len).map(|i| (i as u64 * 31 + seq * 7) as u8).collect();
    RelayMedia {
        track: id,
        pt: 96,
        clock_rate: 90_000,
        seq,
        timestamp: (seq * 3000) as u32,
        marker: seq % 5 == 4,
        keyframe: seq == 0,
        nackable: true,
        vp8: false,
        rid: None,
        ext: RelayExt {
            video_orientation: Some(0),
            ..RelayExt::default()
        },
        payload: Bytes::from(payload),
    }
}

#[tokio::test]
async fn a_track_pulled_across_nodes_arrives_byte_identical_over_one_link() {
    let ca = tls::generate_ca("test").unwrap();
    let (mut a, a_metrics) = start(identity("sfu-a", &ca));
    let (mut b, b_metrics) = start(identity("sfu-b", &ca));
    b.handle().add_peer("sfu-a", a.local_addr());
    a.handle().add_peer("sfu-b", b.local_addr());
    a.handle()
        .publish(1, track("cam"), TrackKind::Video, Vec::new());
    a.handle()
        .publish(2, track("mic"), TrackKind::Audio, Vec::new());

    // Three subscribers on B pull the same track: one remote track, one subscription.
    let bh = b.handle();
    let mut handles = Vec::new();
    for sub in 1..=3 {
        handles.push(
            bh.subscribe("sfu-a", track("cam"), sub, LayerDemand::All)
                .await
                .unwrap(),
        );
    }
    assert!(handles.iter().all(|h| *h == handles[0]));
    let cam = handles[0];
    wait_for(&mut b, "cam ready", |e| match e {
        RelayEvent::TrackReady { remote, kind, .. } if remote == cam => Some(kind),
        _ => None,
    })
    .await;
    wait_for(&mut a, "cam wanted", |e| match e {
        RelayEvent::LocalTrackWanted { id: 1, .. } => Some(()),
        _ => None,
    })
    .await;

    // Full-size packets (an MTU's worth of encrypted frame) and tiny ones.
    let sent: Vec<RelayMedia> = (0..200)
        .map(|seq| packet(1, seq, if seq % 2 == 0 { 1200 } else { 40 }))
        .collect();
    for p in &sent {
        a.handle().local_media(p.clone());
    }
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let m = wait_for(&mut b, "cam media", |e| match e {
            RelayEvent::Media { remote, media } if remote == cam => Some(media),
            _ => None,
        })
        .await;
        got.push(m);
    }
    got.sort_by_key(|m| m.seq);
    for (s, g) in sent.iter().zip(&got) {
        assert_eq!(g.payload, s.payload, "payload of {} byte-identical", s.seq);
        assert_eq!(
            (g.seq, g.timestamp, g.marker, g.keyframe, g.pt, g.ext),
            (s.seq, s.timestamp, s.marker, s.keyframe, s.pt, s.ext)
        );
    }

    // Each packet crossed the link once, not once per subscriber.
    let a_link = a.handle().link_stats("sfu-b").await.unwrap();
    assert_eq!(a_link.datagrams_out - a_link.resent, sent.len() as u64);

    // A packet too large for any datagram (a hypothetical jumbo RTP packet) still arrives,
    // on a stream of its own.
    let jumbo = packet(1, 200, 3000);
    a.handle().local_media(jumbo.clone());
    let got_jumbo = wait_for(&mut b, "jumbo packet", |e| match e {
        RelayEvent::Media { remote, media } if remote == cam => Some(media),
        _ => None,
    })
    .await;
    assert_eq!(got_jumbo.payload, jumbo.payload);
    assert_eq!(a_metrics.relay.oversize.get(), 1);

    // A keyframe request from B reaches the publisher's node.
    bh.request_keyframe(cam, Some("f".into()), KeyframeKind::Pli, false);
    let (rid, kind) = wait_for(&mut a, "keyframe request", |e| match e {
        RelayEvent::KeyframeRequest {
            id: 1, rid, kind, ..
        } => Some((rid, kind)),
        _ => None,
    })
    .await;
    assert_eq!((rid.as_deref(), kind), (Some("f"), KeyframeKind::Pli));

    // A second track rides the same link.
    let mic = bh
        .subscribe("sfu-a", track("mic"), 4, LayerDemand::All)
        .await
        .unwrap();
    assert_ne!(mic, cam);
    wait_for(&mut b, "mic ready", |e| match e {
        RelayEvent::TrackReady { remote, kind, .. } if remote == mic => Some(kind),
        _ => None,
    })
    .await;
    assert_eq!(bh.link_stats("sfu-a").await.unwrap().connects, 1);
    assert_eq!(a.handle().link_stats("sfu-b").await.unwrap().connects, 1);

    // A track nobody publishes ends the subscription with a reason.
    let ghost = bh
        .subscribe("sfu-a", track("ghost"), 5, LayerDemand::All)
        .await
        .unwrap();
    wait_for(&mut b, "ghost ended", |e| match e {
        RelayEvent::TrackEnded { remote, .. } if remote == ghost => Some(()),
        _ => None,
    })
    .await;

    // The metrics show the link (sampled once a second): what the links counted (201 packets,
    // plus resends of any lost on loopback).
    let out = a.handle().link_stats("sfu-b").await.unwrap();
    let inn = bh.link_stats("sfu-a").await.unwrap();
    assert!(out.datagrams_out - out.resent >= 201 && inn.datagrams_in >= 201);
    let a_out = format!(
        "satsuma_sfu_relay_packets_total{{direction=\"out\",peer=\"sfu-b\"}} {}",
        out.datagrams_out
    );
    let b_in = format!(
        "satsuma_sfu_relay_packets_total{{direction=\"in\",peer=\"sfu-a\"}} {}",
        inn.datagrams_in
    );
    eventually("relay metrics on A", || a_metrics.render().contains(&a_out)).await;
    eventually("relay metrics on B", || {
        let text = b_metrics.render();
        text.contains(&b_in)
            && text.contains("satsuma_sfu_relay_links 1")
            && text.contains("satsuma_sfu_relay_rtt_seconds{peer=\"sfu-a\"}")
    })
    .await;

    // Unsubscribing everyone tells A nobody wants the track any more.
    for sub in 1..=3 {
        bh.unsubscribe(sub);
    }
    wait_for(&mut a, "cam unwanted", |e| match e {
        RelayEvent::LocalTrackUnwanted { id: 1 } => Some(()),
        _ => None,
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn strangers_are_refused_and_the_node_stays_up() {
    let ca = tls::generate_ca("prod").unwrap();
    let other_ca = tls::generate_ca("evil").unwrap();
    let (mut a, a_metrics) = start(identity("sfu-a", &ca));
    a.handle()
        .publish(1, track("cam"), TrackKind::Video, Vec::new());

    // Garbage datagrams on the relay port.
    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..50u8 {
        let len = 1 + usize::from(i) * 23;
        junk.send_to(&vec![i; len], a.local_addr()).await.unwrap();
    }

    // A node whose certificate comes from another CA, even with the right name.
    let (c, c_metrics) = start(identity("sfu-b", &other_ca));
    c.handle().add_peer("sfu-a", a.local_addr());
    c.handle()
        .subscribe("sfu-a", track("cam"), 1, LayerDemand::All)
        .await
        .unwrap();
    eventually("C's dial fails", || {
        c_metrics
            .render()
            .contains("satsuma_sfu_relay_dial_failures_total 1")
    })
    .await;
    eventually("A refuses C", || {
        a_metrics
            .render()
            .contains("satsuma_sfu_relay_refused_total{reason=\"handshake\"} 1")
    })
    .await;

    // A node of the right CA that claims another node's name in its hello.
    let liar = {
        let cert = tls::generate_node_cert(&ca, "sfu-x", 1).unwrap();
        RelayIdentity::with_ca("sfu-y", &cert, &ca.cert).unwrap()
    };
    let (l, _) = start(liar);
    l.handle().add_peer("sfu-a", a.local_addr());
    l.handle()
        .subscribe("sfu-a", track("cam"), 1, LayerDemand::All)
        .await
        .unwrap();
    eventually("A refuses the liar", || {
        a_metrics
            .render()
            .contains("satsuma_sfu_relay_refused_total{reason=\"identity\"} 1")
    })
    .await;
    c.shutdown().await;
    l.shutdown().await;

    // A is still up and serves a proper peer.
    let (mut b, _) = start(identity("sfu-b", &ca));
    b.handle().add_peer("sfu-a", a.local_addr());
    let h = b
        .handle()
        .subscribe("sfu-a", track("cam"), 1, LayerDemand::All)
        .await
        .unwrap();
    wait_for(&mut b, "ready after the strangers", |e| match e {
        RelayEvent::TrackReady { remote, .. } if remote == h => Some(()),
        _ => None,
    })
    .await;
    wait_for(&mut a, "wanted", |e| match e {
        RelayEvent::LocalTrackWanted { id: 1, .. } => Some(()),
        _ => None,
    })
    .await;
    a.handle().local_media(packet(1, 0, 500));
    let m = wait_for(&mut b, "media", |e| match e {
        RelayEvent::Media { media, .. } => Some(media),
        _ => None,
    })
    .await;
    assert_eq!(m.payload, packet(1, 0, 500).payload);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn pinned_keys_admit_exactly_the_pinned_nodes() {
    let a_cert = tls::generate_self_signed("sfu-a", 1).unwrap();
    let b_cert = tls::generate_self_signed("sfu-b", 1).unwrap();
    let pin = |p: &PemPair, node: &str| {
        RelayIdentity::with_pins(node, p, HashMap::new())
            .unwrap()
            .own_pin()
            .unwrap()
    };
    let (a_pin, b_pin) = (pin(&a_cert, "sfu-a"), pin(&b_cert, "sfu-b"));
    let pins = HashMap::from([("sfu-a".to_string(), a_pin), ("sfu-b".to_string(), b_pin)]);
    let (mut a, a_metrics) =
        start(RelayIdentity::with_pins("sfu-a", &a_cert, pins.clone()).unwrap());
    let (mut b, _) = start(RelayIdentity::with_pins("sfu-b", &b_cert, pins.clone()).unwrap());
    b.handle().add_peer("sfu-a", a.local_addr());
    a.handle()
        .publish(1, track("cam"), TrackKind::Video, Vec::new());
    let h = b
        .handle()
        .subscribe("sfu-a", track("cam"), 1, LayerDemand::All)
        .await
        .unwrap();
    wait_for(&mut b, "ready", |e| match e {
        RelayEvent::TrackReady { remote, .. } if remote == h => Some(()),
        _ => None,
    })
    .await;
    wait_for(&mut a, "wanted", |e| match e {
        RelayEvent::LocalTrackWanted { id: 1, .. } => Some(()),
        _ => None,
    })
    .await;

    // Same name, another key: refused in the handshake.
    let impostor = tls::generate_self_signed("sfu-b", 1).unwrap();
    let (c, _) = start(RelayIdentity::with_pins("sfu-b", &impostor, pins).unwrap());
    c.handle().add_peer("sfu-a", a.local_addr());
    c.handle()
        .subscribe("sfu-a", track("cam"), 1, LayerDemand::All)
        .await
        .unwrap();
    eventually("A refuses the impostor", || {
        a_metrics
            .render()
            .contains("satsuma_sfu_relay_refused_total{reason=\"handshake\"} 1")
    })
    .await;
    c.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// A peer that authenticates properly and then sends garbage: its garbage datagrams are dropped
/// and counted, a garbage control frame closes its link, and the node serves others afterwards.
#[tokio::test]
async fn an_authenticated_peer_sending_garbage_is_cut_off() {
    use satsuma_sfu::relay::ControlMsg;
    use std::sync::Arc;

    let ca = tls::generate_ca("prod").unwrap();
    let (a, a_metrics) = start(identity("sfu-a", &ca));
    a.handle()
        .publish(1, track("cam"), TrackKind::Video, Vec::new());

    // A hand-made peer "sfu-b" with a good certificate, speaking raw QUIC.
    let me = identity("sfu-b", &ca);
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(me.client_config().unwrap()).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = endpoint
        .connect(a.local_addr(), "sfu-a")
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello = ControlMsg::Hello {
        node: "sfu-b".into(),
        version: 1,
    };
    send.write_all(&hello.encode()).await.unwrap();
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    recv.read_exact(&mut body).await.unwrap();
    assert_eq!(
        ControlMsg::decode(&body).unwrap(),
        ControlMsg::Hello {
            node: "sfu-a".into(),
            version: 1
        }
    );

    for i in 0..20u8 {
        conn.send_datagram(Bytes::from(vec![0xff, i, 1, 2, 3]))
            .unwrap();
    }
    eventually("garbage datagrams counted", || {
        a_metrics
            .render()
            .contains("satsuma_sfu_relay_dropped_total{reason=\"malformed_datagram\"} 20")
    })
    .await;

    send.write_all(b"\x00\x00\x00\x05nope!").await.unwrap();
    let closed = tokio::time::timeout(WAIT, conn.closed()).await;
    assert!(
        closed.is_ok(),
        "A closes the link after a garbage control frame"
    );
    assert!(
        a_metrics
            .render()
            .contains("satsuma_sfu_relay_dropped_total{reason=\"malformed_control\"} 1")
    );

    // A still serves a proper peer.
    let (mut b, _) = start(identity("sfu-b", &ca));
    b.handle().add_peer("sfu-a", a.local_addr());
    let h = b
        .handle()
        .subscribe("sfu-a", track("cam"), 1, LayerDemand::All)
        .await
        .unwrap();
    wait_for(&mut b, "ready after the garbage", |e| match e {
        RelayEvent::TrackReady { remote, .. } if remote == h => Some(()),
        _ => None,
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_peer_named_by_dns_is_resolved_when_dialled() {
    let ca = tls::generate_ca("test").unwrap();
    let (a, _a_metrics) = start(identity("sfu-a", &ca));
    let (mut b, b_metrics) = start(identity("sfu-b", &ca));
    // As a StatefulSet's headless Service names its pods: a DNS name, resolved at each dial.
    b.handle().add_peer(
        "sfu-a",
        PeerAddr::Host {
            host: "localhost".into(),
            port: a.local_addr().port(),
        },
    );
    // A name that does not resolve fails the dial (counted), nothing else.
    b.handle().add_peer(
        "sfu-c",
        PeerAddr::Host {
            host: "sfu-c.invalid".into(),
            port: 7882,
        },
    );
    a.handle()
        .publish(1, track("cam"), TrackKind::Video, Vec::new());
    let bh = b.handle();
    let cam = bh
        .subscribe("sfu-a", track("cam"), 1, LayerDemand::All)
        .await
        .unwrap();
    wait_for(&mut b, "cam ready over the resolved link", |e| match e {
        RelayEvent::TrackReady { remote, .. } if remote == cam => Some(()),
        _ => None,
    })
    .await;
    bh.subscribe("sfu-c", track("cam"), 2, LayerDemand::All)
        .await
        .unwrap();
    eventually("the unresolvable dial is counted", || {
        b_metrics.relay.dial_failures.get() >= 1
    })
    .await;
    // The links gauge is updated every second: the one link up is the resolved one.
    eventually("one link up (to sfu-a)", || {
        b_metrics.relay.links.get() == 1
    })
    .await;
}
