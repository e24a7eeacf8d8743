//! The relay in the `satsuma-sfu` binary: `cluster-ca` and `node-cert` make the certificates, a
//! node started with them listens on its relay port, answers an authenticated peer, refuses a
//! stranger and garbage (counted in /metrics) and stays healthy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use satsuma_sfu::Metrics;
use satsuma_sfu::relay::driver::{Relay, RelayConfig};
use satsuma_sfu::relay::tls::{self, RelayIdentity};
use satsuma_sfu::relay::{LayerDemand, RelayEvent, TrackRef};

const BIN: &str = env!("CARGO_BIN_EXE_satsuma-sfu");

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Kills the child when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_relay_flags_serves_peers_and_refuses_strangers() {
    let dir = std::env::temp_dir().join(format!("satsuma-relay-bin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap().to_string();
    let help = run(&["--help"]);
    for flag in [
        "--node-name",
        "--relay-bind",
        "--relay-ca",
        "--relay-pin",
        "cluster-ca",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    run(&["cluster-ca", "--out", &d]);
    let ca_pem = format!("{d}/ca.pem");
    let ca_key = format!("{d}/ca-key.pem");
    let pin_line = run(&[
        "node-cert",
        "--name",
        "sfu-0",
        "--out",
        &d,
        "--ca",
        &ca_pem,
        "--ca-key",
        &ca_key,
    ]);
    assert!(pin_line.starts_with("sfu-0=") && pin_line.trim().len() == 6 + 64);

    let child = Command::new(BIN)
        .args([
            "--http-bind",
            "127.0.0.1:0",
            "--udp-bind",
            "127.0.0.1:0",
            "--tcp-bind",
            "off",
            "--shards",
            "1",
            "--log",
            "warn",
            "--node-name",
            "sfu-0",
            "--relay-bind",
            "127.0.0.1:0",
            "--relay-cert",
            &format!("{d}/sfu-0.pem"),
            "--relay-key",
            &format!("{d}/sfu-0-key.pem"),
            "--relay-ca",
            &ca_pem,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Child(child);
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let http = first
        .split(' ')
        .find_map(|p| p.strip_prefix("http="))
        .expect(&first)
        .to_string();
    let second = lines.next().unwrap().unwrap();
    let relay_addr: std::net::SocketAddr = second
        .strip_prefix("satsuma-sfu relay listening ")
        .expect(&second)
        .parse()
        .unwrap();

    // Garbage on the relay port, some of it shaped like QUIC long headers.
    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..100u8 {
        let mut d = vec![i; 1 + usize::from(i) * 13];
        d[0] = 0xc0 | (i & 0x3f);
        junk.send_to(&d, relay_addr).await.unwrap();
    }

    // A stranger (another CA) is refused.
    let other_ca = tls::generate_ca("other").unwrap();
    let stranger_cert = tls::generate_node_cert(&other_ca, "sfu-1", 1).unwrap();
    let stranger = RelayIdentity::with_ca("sfu-1", &stranger_cert, &other_ca.cert).unwrap();
    let relay = |identity| {
        Relay::bind(
            RelayConfig {
                identity,
                bind: "127.0.0.1:0".parse().unwrap(),
                peers: HashMap::from([("sfu-0".to_string(), relay_addr.into())]),
            },
            Metrics::new().relay,
        )
        .unwrap()
    };
    let track = TrackRef::new("app", "0123456789abcdef0123456789abcdef", "cam");
    let s = relay(stranger);
    s.handle()
        .subscribe("sfu-0", track.clone(), 1, LayerDemand::All)
        .await
        .unwrap();

    // A peer of the cluster gets an answer (nothing is published there: not found).
    let ca = tls::PemPair {
        cert: std::fs::read_to_string(&ca_pem).unwrap(),
        key: std::fs::read_to_string(&ca_key).unwrap(),
    };
    let peer_cert = tls::generate_node_cert(&ca, "sfu-1", 1).unwrap();
    let mut peer = relay(RelayIdentity::with_ca("sfu-1", &peer_cert, &ca.cert).unwrap());
    let h = peer
        .handle()
        .subscribe("sfu-0", track, 1, LayerDemand::All)
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match peer.events().recv().await {
                Some(RelayEvent::TrackEnded { remote, reason }) if remote == h => break reason,
                Some(_) => {}
                None => panic!("relay stopped"),
            }
        }
    })
    .await
    .expect("the node answers the subscription");
    assert_eq!(ended, satsuma_sfu::relay::wire::EndReason::NotFound);

    // The node counted the stranger, holds the link, and is healthy.
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = client
            .get(format!("http://{http}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("satsuma_sfu_relay_refused_total{reason=\"handshake\"} 1")
            && text.contains("satsuma_sfu_relay_links 1")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay metrics missing:\n{}",
            text.lines()
                .filter(|l| l.contains("relay"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = client
        .get(format!("http://{http}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(child.0.try_wait().unwrap().is_none(), "the node is up");
    s.shutdown().await;
    peer.shutdown().await;
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}
