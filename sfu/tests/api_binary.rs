//! The `satsuma-sfu` binary: `--help` documents every flag, and a process started on ephemeral
//! ports prints its bound addresses and serves the API with config from flags, env and a file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_satsuma-sfu");

#[test]
fn help_explains_every_flag() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--config",
        "--app",
        "--http-bind",
        "--udp-bind",
        "--announce-ip",
        "--track-timeout",
        "--session-timeout",
        "--shards",
        "--log",
        "SATSUMA_SFU_APPS",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help:\n{text}");
    }
}

#[test]
fn bad_configuration_is_refused() {
    let out = Command::new(BIN)
        .args(["--app", "nocolon", "--http-bind", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = Command::new(BIN)
        .args([
            "--track-timeout",
            "-3",
            "--http-bind",
            "127.0.0.1:0",
            "--udp-bind",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/satsuma.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_binary_reports_ports_and_serves() {
    let dir = std::env::temp_dir().join(format!("satsuma-sfu-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sfu.toml");
    std::fs::write(
        &file,
        "http_bind = \"127.0.0.1:0\"\nudp_bind = \"127.0.0.1:0\"\nlog = \"warn\"\n\
         [[apps]]\nid = \"fromfile\"\nsecret = \"s1\"\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&file)
        .env("SATSUMA_SFU_SHARDS", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let line = line.trim().to_string();
    let rest = line.strip_prefix("satsuma-sfu listening ").expect(&line);
    let mut http = None;
    let mut udp = None;
    for part in rest.split(' ') {
        if let Some(v) = part.strip_prefix("http=") {
            http = Some(v.to_string());
        }
        if let Some(v) = part.strip_prefix("udp=") {
            udp = Some(v.to_string());
        }
    }
    let http = http.unwrap();
    let udp: std::net::SocketAddr = udp.unwrap().parse().unwrap();
    assert_ne!(udp.port(), 0);

    let client = reqwest::Client::new();
    let resp = client
        .get(format!("http://{http}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The app from the file works; the default app was replaced.
    let resp = client
        .post(format!("http://{http}/v1/apps/fromfile/sessions/new"))
        .bearer_auth("s1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = client
        .post(format!("http://{http}/v1/apps/satsuma/sessions/new"))
        .bearer_auth("satsuma-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
