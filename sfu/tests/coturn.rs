//! The TURN credentials of `generate-ice-servers` against a real coturn (Debian package `coturn`,
//! `use-auth-secret` with the same shared secret) on 127.0.0.1: coturn's own client
//! (`turnutils_uclient`) allocates a relay with them and sends through it; a tampered credential
//! is refused. Skipped, with the reason printed, when coturn is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const SHARED: &str = "coturn-static-auth-secret-for-tests";
const TOKEN: &str = "turn-key-token-0123456789";

fn find(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/bin", "/usr/sbin"])
        .map(|d| PathBuf::from(d).join(bin))
        .find(|p| p.is_file())
}

/// A port free for both UDP and TCP on 127.0.0.1 (released again; coturn binds it next).
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `turnutils_uclient` through the relay: true if it allocated and relayed.
async fn relay_works(uclient: &PathBuf, port: u16, username: &str, credential: &str) -> bool {
    let mut cmd = tokio::process::Command::new(uclient);
    cmd.args(["-p", &port.to_string(), "-u", username, "-w", credential])
        .args(["-n", "2", "-m", "1", "-y", "-e", "127.0.0.1", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let status = tokio::time::timeout(Duration::from_secs(30), cmd.status())
        .await
        .expect("turnutils_uclient did not finish in 30 s")
        .unwrap();
    status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_accepts_generated_credentials_and_refuses_tampered_ones() {
    let (Some(turnserver), Some(uclient)) = (find("turnserver"), find("turnutils_uclient")) else {
        eprintln!(
            "skipped: coturn is not installed (turnserver, turnutils_uclient; apt-get install coturn)"
        );
        return;
    };
    let port = free_port();
    let relay_base = 50_000 + (port % 100) * 100;
    let coturn = Kill(
        Command::new(turnserver)
            .args(["-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
            .arg(format!("--listening-port={port}"))
            .arg(format!("--min-port={relay_base}"))
            .arg(format!("--max-port={}", relay_base + 99))
            .args(["--use-auth-secret", "--realm=satsuma.test", "--fingerprint"])
            .arg(format!("--static-auth-secret={SHARED}"))
            .args([
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--allow-loopback-peers",
            ])
            .args(["--log-file=stdout", "--simple-log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "coturn did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut config = satsuma_sfu::Config {
        http_bind: "127.0.0.1:0".parse().unwrap(),
        udp_bind: "127.0.0.1:0".parse().unwrap(),
        shards: 1,
        ..Default::default()
    };
    config.turn_keys = vec![satsuma_sfu::config::TurnKey {
        id: "k1".into(),
        token: TOKEN.into(),
    }];
    config.turn = satsuma_sfu::config::turn_servers(
        vec![format!("turn:127.0.0.1:{port}?transport=udp")],
        Some(SHARED.into()),
    )
    .unwrap();
    let sfu = satsuma_sfu::Server::bind(config).await.unwrap();
    let resp = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/turn/keys/k1/credentials/generate-ice-servers",
            sfu.http_addr()
        ))
        .bearer_auth(TOKEN)
        .body(r#"{"ttl": 300}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
    let body: Value = resp.json().await.unwrap();
    let turn = &body["iceServers"][0];
    let username = turn["username"].as_str().unwrap();
    let credential = turn["credential"].as_str().unwrap();

    assert!(
        relay_works(&uclient, port, username, credential).await,
        "coturn refused the generated credential {username}"
    );
    let tampered = format!("x{credential}");
    assert!(
        !relay_works(&uclient, port, username, &tampered).await,
        "coturn accepted a tampered credential"
    );
    // The expiry is part of what the HMAC covers: a later expiry with the same credential fails.
    let (expiry, id) = username.split_once(':').unwrap();
    let extended = format!("{}:{id}", expiry.parse::<u64>().unwrap() + 3600);
    assert!(
        !relay_works(&uclient, port, &extended, credential).await,
        "coturn accepted an extended username"
    );
    drop(coturn);
    sfu.shutdown().await;
}
