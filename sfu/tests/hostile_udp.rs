//! Hostile UDP: while a publisher → subscriber session is live, spray the SFU's UDP port with garbage
//! and truncated or forged STUN, DTLS, RTP and RTCP from several fresh sockets and from the live
//! subscriber's own address. Media must keep flowing, the process must stay up, and the drop counters
//! on `/metrics` must rise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};
use satsuma_bot::harness::{APP_ID, APP_SECRET, SfuProcess};
use satsuma_bot::{Bot, BotConfig, BotStats};
use tokio::net::UdpSocket;

const CONNECT: Duration = Duration::from_secs(10);

fn received(s: &BotStats) -> (u64, u64) {
    let r = &s.participant.subscribed[0].received;
    (r.unique, r.corrupt)
}

/// One hostile datagram of kind `k`.
fn hostile_datagram(rng: &mut StdRng, k: usize) -> Vec<u8> {
    let mut random = |n: usize| (0..n).map(|_| rng.random::<u8>()).collect::<Vec<u8>>();
    match k % 12 {
        // Empty and one-byte datagrams.
        0 => Vec::new(),
        1 => vec![0x00],
        // Pure noise of random size up to a jumbo-ish 1500 bytes.
        2 => {
            let n = 1 + (random(2)[0] as usize * 6);
            random(n)
        }
        // Truncated STUN header (binding request type, magic cookie cut short).
        3 => vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12],
        // STUN binding request whose length field lies, with a USERNAME that matches nobody.
        4 => {
            let mut m = vec![0x00, 0x01, 0x00, 0x40, 0x21, 0x12, 0xa4, 0x42];
            m.extend(random(12));
            m.extend([0x00, 0x06, 0x00, 0x09]);
            m.extend(b"nobody:xy");
            m
        }
        // STUN with a huge attribute length.
        5 => {
            let mut m = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
            m.extend(random(12));
            m.extend([0x00, 0x06, 0xff, 0xff, 0x41, 0x41, 0x41, 0x41]);
            m
        }
        // Truncated DTLS record header (handshake, DTLS 1.2).
        6 => vec![0x16, 0xfe, 0xfd, 0x00, 0x00],
        // DTLS handshake record with a lying length and random body.
        7 => {
            let mut m = vec![0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 1, 0x3f, 0xff];
            m.extend(random(40));
            m
        }
        // RTP header cut short.
        8 => vec![0x80, 0x6f, 0x00],
        // RTP-looking packet with random SSRC and payload (fails SRTP auth or matches no stream).
        9 => {
            let mut m = vec![0x80, 0x60];
            m.extend(random(10));
            m.extend(random(100));
            m
        }
        // Truncated RTCP (sender report type, nothing after).
        10 => vec![0x80, 0xc8, 0x00],
        // RTCP-looking receiver report with lying length and random body.
        _ => {
            let mut m = vec![0x81, 0xc9, 0x00, 0xff];
            m.extend(random(28));
            m
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_packets_do_not_disturb_a_live_session() {
    let mut sfu = SfuProcess::start(env!("CARGO_BIN_EXE_satsuma-sfu"), &[]).unwrap();
    let cfg = BotConfig::new(&sfu.base_url(), APP_ID, APP_SECRET);
    let publisher = Bot::connect_with(cfg.clone()).await.unwrap();
    publisher.publish_video("cam").await.unwrap();
    publisher.wait_connected(CONNECT).await.unwrap();
    let sub = Bot::connect_with(cfg.clone()).await.unwrap();
    sub.subscribe(publisher.session_id(), "cam").await.unwrap();
    sub.wait_connected(CONNECT).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (before, _) = received(&sub.stats().await.unwrap());
    assert!(before > 10, "media must flow before the spray");
    let m0 = sfu.metrics().await.unwrap();

    let target: SocketAddr = sfu.udp_addr;
    let mut rng = StdRng::seed_from_u64(0x5a75_u64);
    let mut sockets = Vec::new();
    for _ in 0..4 {
        sockets.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    let mut sent = 0u64;
    let spray_until = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut round = 0usize;
    while tokio::time::Instant::now() < spray_until {
        for (i, s) in sockets.iter().enumerate() {
            for k in 0..12 {
                let d = hostile_datagram(&mut rng, k + i + round);
                if s.send_to(&d, target).await.is_ok() {
                    sent += 1;
                }
            }
        }
        // Also from the live subscriber's address: these reach its session by the fast path.
        for k in 0..12 {
            let d = hostile_datagram(&mut rng, k + round);
            sub.send_raw(target, d).await.unwrap();
            sent += 1;
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("sprayed {sent} hostile datagrams");

    // The session keeps flowing during and after the spray.
    let (during, corrupt) = received(&sub.stats().await.unwrap());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (after, corrupt_after) = received(&sub.stats().await.unwrap());
    assert!(
        during > before + 30,
        "media stalled during the spray: {before} -> {during}"
    );
    assert!(
        after > during + 15,
        "media stalled after the spray: {during} -> {after}"
    );
    assert_eq!(
        (corrupt, corrupt_after),
        (0, 0),
        "corrupt payloads reached the subscriber"
    );
    let ss = sub.stats().await.unwrap();
    assert_eq!(ss.participant.subscribed[0].received.lost, 0, "{ss:#?}");

    assert!(sfu.is_running(), "the SFU process died:\n{}", sfu.stderr());
    let m1 = sfu.metrics().await.unwrap();
    let dropped = m1.sum("satsuma_sfu_dropped_total") - m0.sum("satsuma_sfu_dropped_total");
    eprintln!("drop counters rose by {dropped}:");
    for (series, v) in &m1.samples {
        if series.starts_with("satsuma_sfu_dropped_total") {
            eprintln!("  {series} {v}");
        }
    }
    assert!(
        dropped >= (sent / 2) as f64,
        "drop counters rose by {dropped} for {sent} hostile datagrams"
    );
    assert_eq!(m1.get("satsuma_sfu_session_panics_total"), 0.0);
    assert!(!sfu.stderr().contains("panicked"), "{}", sfu.stderr());

    // A newcomer still gets served.
    let newcomer = Bot::connect_with(cfg).await.unwrap();
    newcomer
        .subscribe(publisher.session_id(), "cam")
        .await
        .unwrap();
    newcomer.wait_connected(CONNECT).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (n, c) = received(&newcomer.stats().await.unwrap());
    assert!(n > 10 && c == 0, "newcomer got {n} packets, {c} corrupt");
}
