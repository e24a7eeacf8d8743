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

/// CRC-32 (IEEE), for STUN FINGERPRINT.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A STUN Binding Request as an ICE controlling agent would send it, with a forged (random)
/// MESSAGE-INTEGRITY when `integrity` is set, and a correct FINGERPRINT.
fn forged_binding_request(rng: &mut StdRng, username: &str, integrity: bool) -> Vec<u8> {
    let mut attrs = Vec::new();
    let mut attr = |t: u16, v: &[u8]| {
        attrs.extend_from_slice(&t.to_be_bytes());
        attrs.extend_from_slice(&(v.len() as u16).to_be_bytes());
        attrs.extend_from_slice(v);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
    };
    attr(0x0006, username.as_bytes()); // USERNAME
    attr(0x0024, &0x6e7f_1effu32.to_be_bytes()); // PRIORITY
    attr(0x802a, &rng.random::<u64>().to_be_bytes()); // ICE-CONTROLLING
    attr(0x0025, &[]); // USE-CANDIDATE: asks an ICE-lite agent to switch to this path
    if integrity {
        let mac: Vec<u8> = (0..20).map(|_| rng.random::<u8>()).collect();
        attr(0x0008, &mac); // MESSAGE-INTEGRITY (wrong: we do not know the password)
    }
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&((attrs.len() + 8) as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    m.extend((0..12).map(|_| rng.random::<u8>()));
    m.extend_from_slice(&attrs);
    let fp = crc32(&m) ^ 0x5354_554e;
    m.extend_from_slice(&[0x80, 0x28, 0x00, 0x04]);
    m.extend_from_slice(&fp.to_be_bytes());
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stun_with_a_live_sessions_username_does_not_hijack_its_path() {
    let mut sfu = SfuProcess::start(env!("CARGO_BIN_EXE_satsuma-sfu"), &[]).unwrap();
    let cfg = BotConfig::new(&sfu.base_url(), APP_ID, APP_SECRET);
    let publisher = Bot::connect_with(cfg.clone()).await.unwrap();
    publisher.publish_audio("mic").await.unwrap();
    publisher.wait_connected(CONNECT).await.unwrap();
    let sub = Bot::connect_with(cfg).await.unwrap();
    sub.subscribe(publisher.session_id(), "mic").await.unwrap();
    sub.wait_connected(CONNECT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (bot_ufrag, sfu_ufrag) = sub.ice_ufrags().await.unwrap();
    let username = format!("{}:{bot_ufrag}", sfu_ufrag.expect("SFU ufrag from its SDP"));
    let (before, _) = received(&sub.stats().await.unwrap());

    let mut rng = StdRng::seed_from_u64(7);
    let mut attackers = Vec::new();
    for _ in 0..4 {
        attackers.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut sent = 0;
    while tokio::time::Instant::now() < until {
        for (i, a) in attackers.iter().enumerate() {
            let m = forged_binding_request(&mut rng, &username, i % 2 == 0);
            a.send_to(&m, sfu.udp_addr).await.unwrap();
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Nothing but (at most) STUN error responses may reach the attackers: no media.
    let mut buf = [0u8; 2048];
    for a in &attackers {
        while let Ok((n, _)) = a.try_recv_from(&mut buf) {
            assert!(
                n < 20 || buf[0] >> 6 != 2,
                "an attacker received RTP/RTCP ({n} bytes): the session's path was hijacked"
            );
        }
    }
    let (after, corrupt) = received(&sub.stats().await.unwrap());
    eprintln!("sent {sent} forged binding requests; subscriber {before} -> {after} packets");
    assert!(
        after > before + 100,
        "media to the real subscriber stopped: {before} -> {after}"
    );
    assert_eq!(corrupt, 0);
    let ss = sub.stats().await.unwrap();
    assert_eq!(ss.participant.subscribed[0].received.lost, 0, "{ss:#?}");
    assert!(sfu.is_running());
}
