//! Draining a node (issue 15), on the `satsuma-sfu` binary: `satsuma-sfu drain` (the API's
//! `POST /v1/apps/{app}/drain`) and `SIGTERM` make it refuse new sessions with 503
//! `draining`, answer `/healthz` with 503 `{"status": "draining"}`, keep serving the sessions
//! it holds, and exit 0 once it holds none, or when `--drain-timeout` passes. `/livez` (the
//! liveness probe's) answers 200 all along, on the API and on the metrics listener.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use satsuma_bot::harness::{APP_ID, APP_SECRET, SfuProcess, fetch_metrics};
use serde_json::Value;

fn start(drain_timeout: &str, extra: &[&str]) -> SfuProcess {
    let mut args = vec!["--shards", "1", "--drain-timeout", drain_timeout];
    args.extend_from_slice(extra);
    SfuProcess::start(env!("CARGO_BIN_EXE_satsuma-sfu"), &args).expect("start satsuma-sfu")
}

/// A loopback port free a moment ago, for `--metrics-bind` (the binary does not print it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Status and body of `GET {base}{path}`.
async fn get(http: &reqwest::Client, base: &str, path: &str) -> (u16, String) {
    let r = http.get(format!("{base}{path}")).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

async fn new_session(http: &reqwest::Client, sfu: &SfuProcess) -> (u16, Value) {
    let r = http
        .post(format!("{}/v1/apps/{APP_ID}/sessions/new", sfu.base_url()))
        .bearer_auth(APP_SECRET)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Waits for the process to exit (at most `within`); its exit status and when.
async fn exited(sfu: &mut SfuProcess, within: Duration) -> (std::process::ExitStatus, Instant) {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = sfu.exit_status() {
            return (s, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "still running after {within:?}:\n{}",
            sfu.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn drain_refuses_new_sessions_keeps_old_ones_and_exits_0_when_empty() {
    let ops = format!("127.0.0.1:{}", free_port());
    let mut sfu = start("30", &["--metrics-bind", &ops]);
    let ops = format!("http://{ops}");
    let http = reqwest::Client::new();
    for base in [sfu.base_url(), ops.clone()] {
        assert_eq!(get(&http, &base, "/livez").await, (200, "ok\n".into()));
        assert_eq!(get(&http, &base, "/healthz").await.0, 200, "{base}");
    }
    let (status, body) = new_session(&http, &sfu).await;
    assert_eq!(status, 201, "{body}");
    let sid = body["sessionId"].as_str().unwrap().to_owned();

    // The drain route wants the app's secret.
    let r = http
        .post(format!("{}/v1/apps/{APP_ID}/drain", sfu.base_url()))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (status, body) = new_session(&http, &sfu).await;
    assert_eq!(status, 201, "not draining yet: {body}");
    let sid2 = body["sessionId"].as_str().unwrap().to_owned();

    // satsuma-sfu drain, as an operator runs it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_satsuma-sfu"))
        .args(["drain", "--url", &sfu.base_url(), "--app"])
        .arg(format!("{APP_ID}:{APP_SECRET}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("is draining"));

    let r = http
        .get(format!("{}/healthz", sfu.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let health: Value = r.json().await.unwrap();
    assert_eq!(health["status"], "draining", "{health}");
    assert_eq!(health["sessions"], 2, "{health}");
    // Not ready, but alive: the liveness probe must not kill a node while it drains.
    for base in [sfu.base_url(), ops.clone()] {
        assert_eq!(get(&http, &base, "/healthz").await.0, 503, "{base}");
        assert_eq!(get(&http, &base, "/livez").await, (200, "ok\n".into()));
    }
    let (status, body) = new_session(&http, &sfu).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errorCode"], "draining", "{body}");
    // The sessions it holds still answer.
    let r = http
        .get(format!(
            "{}/v1/apps/{APP_ID}/sessions/{sid}",
            sfu.base_url()
        ))
        .bearer_auth(APP_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sfu.is_running(), "exited with sessions left");
    let m = fetch_metrics(&ops).await.unwrap();
    assert_eq!(m.get("satsuma_sfu_draining"), 1.0);
    assert_eq!(m.get("satsuma_sfu_drain_sessions_at_start"), 2.0);
    assert!(
        m.get("satsuma_sfu_drain_ms") >= 400.0,
        "{:?}",
        m.get("satsuma_sfu_drain_ms")
    );

    // Once the last session is gone, it exits 0.
    let m = fetch_metrics(&ops).await.unwrap();
    assert_eq!(m.get("satsuma_sfu_sessions"), 2.0);
    for s in [&sid, &sid2] {
        let r = http
            .delete(format!("{}/v1/apps/{APP_ID}/sessions/{s}", sfu.base_url()))
            .bearer_auth(APP_SECRET)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "delete {s}: {}", r.status());
    }
    let deleted = Instant::now();
    let (status, at) = exited(&mut sfu, Duration::from_secs(10)).await;
    println!(
        "exited {status} {} ms after its last session went",
        at.saturating_duration_since(deleted).as_millis()
    );
    assert!(status.success(), "{status}\n{}", sfu.stderr());
    assert!(
        sfu.stderr().contains("drained: no session left"),
        "{}",
        sfu.stderr()
    );
}

#[tokio::test]
async fn sigterm_drains_until_the_deadline_then_exits_0() {
    let mut sfu = start("1.5", &[]);
    let http = reqwest::Client::new();
    assert_eq!(new_session(&http, &sfu).await.0, 201);
    let term = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &sfu.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Draining at once: no new session.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = new_session(&http, &sfu).await;
        if status == 503 {
            assert_eq!(body["errorCode"], "draining", "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "still placing sessions: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&http, &sfu.base_url(), "/livez").await.0, 200);
    // The session never moves: the deadline ends the drain, exit 0.
    let (status, at) = exited(&mut sfu, Duration::from_secs(15)).await;
    let took = at.saturating_duration_since(term);
    println!("exited {status} {} ms after SIGTERM", took.as_millis());
    assert!(status.success(), "{status}\n{}", sfu.stderr());
    assert!(
        took >= Duration::from_millis(1400),
        "left before its deadline: {took:?}"
    );
    assert!(
        sfu.stderr().contains("drain deadline passed"),
        "{}",
        sfu.stderr()
    );
}
