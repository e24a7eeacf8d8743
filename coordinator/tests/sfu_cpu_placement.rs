//! Issue 15, placement by CPU: an SFU node given `;cpu=SHARE` is full while its process used at
//! least that share of its cores between the coordinator's last two health checks, read from
//! the `Satsuma-Cpu-Seconds` / `Satsuma-Cpu-Cores` headers of its `/healthz` (as
//! `satsuma-sfu` sends them). A real coordinator and two stand-in SFU nodes whose reported
//! CPU the test drives: a room stays on its node while that node is idle, overflows to the
//! other node while it is busy, and comes back once it is idle again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use common::{Client, start};
use parking_lot::Mutex;
use satsuma_coordinator::Config;
use serde_json::json;

/// A stand-in SFU node with two cores: while `busy`, its CPU seconds grow by 2 per second of
/// wall time (a share of 1.0), otherwise they stay put (0.0).
struct Node {
    url: String,
    sessions: Arc<AtomicU64>,
    busy: Arc<AtomicBool>,
}

async fn node() -> Node {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let sessions = Arc::new(AtomicU64::new(0));
    let busy = Arc::new(AtomicBool::new(false));
    // CPU seconds so far, and when they were last brought up to date.
    let cpu = Arc::new(Mutex::new((10.0_f64, Instant::now())));
    let (s, b) = (sessions.clone(), busy.clone());
    let app = Router::new()
        .route(
            "/healthz",
            get(move || {
                let mut c = cpu.lock();
                let now = Instant::now();
                if b.load(Ordering::Relaxed) {
                    c.0 += 2.0 * now.duration_since(c.1).as_secs_f64();
                }
                c.1 = now;
                let seconds = format!("{:.2}", c.0);
                async move {
                    (
                        [
                            ("satsuma-cpu-seconds", seconds),
                            ("satsuma-cpu-cores", "2".to_owned()),
                        ],
                        "ok\n",
                    )
                }
            }),
        )
        .route(
            "/v1/apps/{app}/sessions/new",
            post(move || {
                let n = s.fetch_add(1, Ordering::Relaxed) + 1;
                async move { axum::Json(json!({ "sessionId": format!("sess-{n}") })) }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Node {
        url,
        sessions,
        busy,
    }
}

/// `sub` joins `room` and makes one SFU session through the coordinator.
async fn session(server: &satsuma_coordinator::ServerHandle, room: &str, sub: &str) -> Client {
    let c = Client::join(server, room, sub).await;
    let r = reqwest::Client::new()
        .post(format!("http://{}/sfu/sessions/new", server.local_addr()))
        .bearer_auth(&c.resume_token)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_at_its_cpu_share_takes_no_new_sessions_until_it_is_idle_again() {
    let (n1, n2) = (node().await, node().await);
    let config = Config {
        sfu_nodes: vec![format!("{};cpu=0.8", n1.url), format!("{};cpu=0.8", n2.url)],
        sfu_health_interval: Duration::from_millis(200),
        ..Config::dev()
    };
    let server = start(config).await;
    let counts = || {
        (
            n1.sessions.load(Ordering::Relaxed),
            n2.sessions.load(Ordering::Relaxed),
        )
    };
    // Both idle: the room starts on n1 and its second participant joins it there.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _a = session(&server, "cpu", "a").await;
    let _b = session(&server, "cpu", "b").await;
    assert_eq!(counts(), (2, 0));

    // n1 busy (a share of 1.0 between health checks): the room overflows to n2, as when a node
    // holds its session capacity.
    n1.busy.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _c = session(&server, "cpu", "c").await;
    assert_eq!(counts(), (2, 1), "n1 is at its CPU share");

    // Idle again: the room's node takes its sessions again.
    n1.busy.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _d = session(&server, "cpu", "d").await;
    assert_eq!(counts(), (3, 1), "n1 is idle again");

    // Both busy: every node is full.
    n1.busy.store(true, Ordering::Relaxed);
    n2.busy.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let e = Client::join(&server, "cpu", "e").await;
    let r = reqwest::Client::new()
        .post(format!("http://{}/sfu/sessions/new", server.local_addr()))
        .bearer_auth(&e.resume_token)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "every node at its CPU share");
    assert_eq!(counts(), (3, 1));
}
