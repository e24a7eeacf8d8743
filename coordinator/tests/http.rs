//! Plain HTTP: health, metrics, dev tokens, static files, and the binary's start-up line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{Client, start};
use satsuma_coordinator::Config;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_token_and_static_files() {
    let dir = std::env::temp_dir().join(format!("coord-web-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "<h1>satsuma</h1>").unwrap();
    std::fs::write(dir.join("app.js"), "console.log(1)").unwrap();
    let server = start(Config {
        web_dir: dir.clone(),
        ..Config::dev()
    })
    .await;
    let base = server.http_url();
    let http = reqwest::Client::new();

    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    assert_eq!(
        reqwest::get(format!("{base}/app.js"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "console.log(1)"
    );
    // Unknown paths fall back to index.html (client-side routing).
    let r = reqwest::get(format!("{base}/room/standup")).await.unwrap();
    assert_eq!(r.text().await.unwrap(), "<h1>satsuma</h1>");

    // Dev mode mints tokens that the WebSocket accepts (text/plain body, as browsers send).
    let r: Value = http
        .post(format!("{base}/token"))
        .header("content-type", "text/plain")
        .body(
            json!({"room": "standup", "name": "Alice", "perms": ["publish", "subscribe", "host"]})
                .to_string(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = r["token"].as_str().unwrap();
    let alice = Client::join_with_token(&server, "standup", token).await;
    assert_eq!(alice.id, 1);
    let r = http
        .post(format!("{base}/token"))
        .body(r#"{"room":"bad room"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("satsuma_coord_rooms 1"), "{metrics}");
    assert!(
        metrics.contains("satsuma_coord_participants 1"),
        "{metrics}"
    );
    assert!(metrics.contains("satsuma_coord_connections 1"), "{metrics}");
    assert!(
        metrics.contains(r#"satsuma_coord_messages_total{type="hello"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"satsuma_coord_entries_total{type="joined"} 1"#),
        "{metrics}"
    );
    server.shutdown().await;

    // Without dev mode there is no /token.
    let server = start(Config {
        dev: false,
        jwt_secret: "a-production-secret-0123456789abcdef".into(),
        web_dir: dir,
        ..Config::dev()
    })
    .await;
    let r = http
        .post(format!("{}/token", server.http_url()))
        .body(r#"{"room":"a"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    server.shutdown().await;
}

#[test]
fn binary_prints_its_address_and_serves() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_satsuma-coordinator"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--dev",
            "--web-dir",
            "/nonexistent",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("satsuma-coordinator listening http=")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let body = rt.block_on(async {
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert_eq!(body, "ok");
    child.kill().unwrap();
    child.wait().unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_satsuma-coordinator"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--jwt-secret",
        "--sfu-node",
        "--presence-timeout-ms",
        "--web-dir",
        "--config",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}
