//! Hostile datagrams from unknown addresses: random bytes, truncated and malformed STUN, STUN
//! for unknown ufrags, DTLS- and RTP-looking junk. The SFU must stay up, keep serving its API,
//! and count every one as a drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::UdpSocket;
use std::time::Duration;

use rand::Rng;
use satsuma_bot::harness::{Metrics, fetch_metrics};

fn stun_binding(username: &[u8], declared_len: Option<u16>) -> Vec<u8> {
    let mut attr = Vec::new();
    attr.extend_from_slice(&6u16.to_be_bytes());
    attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attr.extend_from_slice(username);
    while attr.len() % 4 != 0 {
        attr.push(0);
    }
    let mut m = vec![0, 1];
    m.extend_from_slice(&declared_len.unwrap_or(attr.len() as u16).to_be_bytes());
    m.extend_from_slice(&0x2112_A442u32.to_be_bytes());
    m.extend_from_slice(&[9; 12]);
    m.extend_from_slice(&attr);
    m
}

async fn metrics(base: &str) -> Metrics {
    fetch_metrics(base).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_unknown_addresses_is_counted_and_harmless() {
    let config = satsuma_sfu::Config {
        http_bind: "127.0.0.1:0".parse().unwrap(),
        udp_bind: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let sfu = satsuma_sfu::Server::bind(config).await.unwrap();
    let target = sfu.udp_addr();
    let base = format!("http://{}", sfu.http_addr());
    let http = reqwest::Client::new();

    // A real session exists, so its ufrag is routable; the garbage must not reach it.
    let resp = http
        .post(format!("{base}/v1/apps/satsuma/sessions/new"))
        .bearer_auth("satsuma-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    let mut rng = rand::rng();
    let mut sent = 0u64;
    for _ in 0..8 {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..100 {
            let len = rng.random_range(0..1400);
            let mut junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            match i % 6 {
                0 => {}
                1 if !junk.is_empty() => junk[0] = 0x80 | (junk[0] & 0x3f), // RTP/RTCP-looking
                2 if !junk.is_empty() => junk[0] = 22, // DTLS handshake-looking
                3 => junk = stun_binding(b"nosuchufrag:peer", None),
                4 => {
                    let full = stun_binding(b"abc:def", None);
                    junk = full[..rng.random_range(0..full.len())].to_vec();
                }
                _ => junk = stun_binding(b"abc:def", Some(400)),
            }
            sock.send_to(&junk, target).unwrap();
            sent += 1;
        }
    }
    // Let the receiver catch up.
    let mut dropped = 0.0;
    for _ in 0..50 {
        dropped = metrics(&base).await.sum("satsuma_sfu_dropped_total");
        if dropped >= (sent as f64) * 0.9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        dropped >= (sent as f64) * 0.9,
        "only {dropped} of {sent} counted"
    );
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in ["unknown_source", "unknown_ufrag", "malformed_stun"] {
        assert!(
            text.contains(&format!("satsuma_sfu_dropped_total{{reason=\"{reason}\"}}")),
            "no {reason} drops in {text}"
        );
    }
    assert_eq!(
        metrics(&base).await.get("satsuma_sfu_session_panics_total"),
        0.0
    );
    // Still serving.
    let resp = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(metrics(&base).await.get("satsuma_sfu_sessions"), 1.0);
    sfu.shutdown().await;
}
