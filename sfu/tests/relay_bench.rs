//! A first measurement of the relay on loopback (ignored by default; run with
//! `cargo test -p satsuma-sfu --test relay_bench -- --ignored --nocapture`): two relay drivers in
//! one process, a paced stream of full-size packets from A to B, and what it costs: the process's
//! CPU time per relayed packet (both ends, the test's own work included) and the latency from
//! `local_media` on A to the event on B (p50/p99). Every packet must arrive.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use satsuma_sfu::Metrics;
use satsuma_sfu::relay::driver::{Relay, RelayConfig};
use satsuma_sfu::relay::tls::{self, RelayIdentity};
use satsuma_sfu::relay::wire::RelayExt;
use satsuma_sfu::relay::{LayerDemand, RelayEvent, RelayMedia, TrackKind, TrackRef};

fn cpu_seconds() -> f64 {
    // utime and stime of this process, in clock ticks (fields 14 and 15 of /proc/self/stat).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand with --ignored --nocapture"]
async fn relay_loopback_cost_and_latency() {
    const PPS: u64 = 2000;
    const SECONDS: u64 = 5;
    const SIZE: usize = 1100;
    let ca = tls::generate_ca("bench").unwrap();
    let start = |node: &str| {
        let cert = tls::generate_node_cert(&ca, node, 1).unwrap();
        Relay::bind(
            RelayConfig {
                identity: RelayIdentity::with_ca(node, &cert, &ca.cert).unwrap(),
                bind: "127.0.0.1:0".parse().unwrap(),
                peers: HashMap::new(),
            },
            Metrics::new().relay,
        )
        .unwrap()
    };
    let mut a = start("sfu-a");
    let mut b = start("sfu-b");
    b.handle().add_peer("sfu-a", a.local_addr());
    let track = TrackRef::new("app", "0123456789abcdef0123456789abcdef", "cam");
    a.handle()
        .publish(1, track.clone(), TrackKind::Video, Vec::new());
    b.handle()
        .subscribe("sfu-a", track, 1, LayerDemand::All)
        .await
        .unwrap();
    loop {
        if let Some(RelayEvent::LocalTrackWanted { .. }) = a.events().recv().await {
            break;
        }
    }
    let base = Instant::now();
    let total = PPS * SECONDS;
    let ah = a.handle();
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / PPS));
        for seq in 0..total {
            tick.tick().await;
            let mut payload = vec![0u8; SIZE];
            let sent = base.elapsed().as_nanos() as u64;
            payload[..8].copy_from_slice(&sent.to_be_bytes());
            ah.local_media(RelayMedia {
                track: 1,
                pt: 96,
                clock_rate: 90_000,
                seq,
                timestamp: (seq * 3000) as u32,
                marker: false,
                keyframe: false,
                nackable: true,
                vp8: false,
                rid: None,
                ext: RelayExt::default(),
                payload: Bytes::from(payload),
            });
        }
    });
    let cpu_before = cpu_seconds();
    let wall = Instant::now();
    let mut latencies = Vec::with_capacity(total as usize);
    while (latencies.len() as u64) < total {
        let event = tokio::time::timeout(Duration::from_secs(10), b.events().recv())
            .await
            .expect("packets stopped arriving")
            .unwrap();
        if let RelayEvent::Media { media, .. } = event {
            let sent = u64::from_be_bytes(media.payload[..8].try_into().unwrap());
            latencies.push(base.elapsed().as_nanos() as u64 - sent);
        }
    }
    let cpu = cpu_seconds() - cpu_before;
    let wall = wall.elapsed();
    sender.await.unwrap();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize] as f64 / 1e3;
    let stats = b.handle().link_stats("sfu-a").await.unwrap();
    println!(
        "relay loopback: {total} packets of {SIZE} B at {PPS}/s in {:.2} s; CPU {:.1} us/packet \
         (both ends, one process); latency p50 {:.0} us, p99 {:.0} us, max {:.0} us; \
         NACKed {}, lost {}",
        wall.as_secs_f64(),
        cpu / total as f64 * 1e6,
        pct(0.5),
        pct(0.99),
        pct(1.0),
        stats.nacked,
        stats.lost_in
    );
    assert_eq!(stats.lost_in, 0);
    a.shutdown().await;
    b.shutdown().await;
}
