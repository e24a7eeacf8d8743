//! Issue 16: SFU nodes and their health live in the room store, so placement works from any
//! replica. A real etcd, two real coordinator replicas and two stand-in SFU nodes. Replica b
//! never sees a node healthy itself (its only health check ran before the nodes answered, and
//! its next one is an hour away); replica a checks every 200 ms. Both publish their view in the
//! store: b places rooms by a's health checks and by the rooms of both replicas. Skipped,
//! saying so, without an etcd binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod etcd_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use common::Client;
use etcd_support::{Etcd, Replica};
use satsuma_coordinator::auth::{TokenKeys, unix_now};
use serde_json::json;

fn token(room: &str, sub: &str) -> String {
    let keys = TokenKeys::new(satsuma_coordinator::Config::dev().jwt_secret.as_bytes(), 5);
    let mut c = common::claims(room, sub, &["publish", "subscribe"]);
    c.exp = unix_now() + 600;
    keys.mint(&c).unwrap()
}

/// A stand-in SFU node: counts the sessions made on it; `down` makes it answer 503.
struct Node {
    url: String,
    sessions: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
    listener: Option<tokio::net::TcpListener>,
}

impl Node {
    /// Bound, but not answering until [`Node::serve`].
    async fn bind() -> Node {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Node {
            url: format!("http://{}", listener.local_addr().unwrap()),
            sessions: Arc::new(AtomicU64::new(0)),
            down: Arc::new(AtomicBool::new(false)),
            listener: Some(listener),
        }
    }

    fn serve(&mut self) {
        let (sessions, down) = (self.sessions.clone(), self.down.clone());
        let d = down.clone();
        let app = Router::new()
            .route(
                "/healthz",
                get(move || {
                    let up = !d.load(Ordering::Relaxed);
                    async move {
                        if up {
                            (StatusCode::OK, "ok").into_response()
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "down").into_response()
                        }
                    }
                }),
            )
            .route(
                "/v1/apps/{app}/sessions/new",
                post(move || {
                    let n = sessions.fetch_add(1, Ordering::Relaxed) + 1;
                    async move { axum::Json(json!({ "sessionId": format!("sess-{n}") })) }
                }),
            );
        let listener = self.listener.take().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
    }

    fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }
}

/// A participant of `room` at `replica` makes an SFU session there.
async fn session_at(replica: &Replica, room: &str) -> Client {
    let c = Client::join_url(&replica.ws_url(room), &token(room, "p")).await;
    let r = reqwest::Client::new()
        .post(format!("{}/sfu/sessions/new", replica.http_url()))
        .bearer_auth(&c.resume_token)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    c
}

/// Waits until `f` holds (replicas exchange their views once a second).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_uses_every_replicas_health_checks_and_rooms() {
    let Some(etcd) = Etcd::start(1) else {
        return;
    };
    let mut n1 = Node::bind().await;
    let mut n2 = Node::bind().await;
    let (u1, u2) = (n1.url.clone(), n2.url.clone());
    let nodes = ["--sfu-node", u1.as_str(), "--sfu-node", u2.as_str()];
    // b checks the nodes once at start, while they do not answer (its check times out), and
    // then not for an hour: it knows no healthy node by itself.
    let mut b_args = nodes.to_vec();
    b_args.extend(["--sfu-health-interval-ms", "3600000"]);
    let b = Replica::start_reachable("b", &etcd.endpoints(), &b_args);
    n1.serve();
    n2.serve();
    let mut a_args = nodes.to_vec();
    a_args.extend(["--sfu-health-interval-ms", "200"]);
    let a = Replica::start_reachable("a", &etcd.endpoints(), &a_args);

    // A room at a goes to n1 (both healthy, no rooms yet: the first).
    let _r1 = session_at(&a, "place-1").await;
    assert_eq!((n1.sessions(), n2.sessions()), (1, 0));
    // b learns a's view (n1: healthy, 1 room; n2: healthy, none) within its next exchange; its
    // room goes to n2. (Alone, b would know nothing healthy and fall back to the first node.)
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let _r2 = session_at(&b, "place-2").await;
    assert_eq!(
        (n1.sessions(), n2.sessions()),
        (1, 1),
        "b placed by a's view"
    );

    // n1 fails a's health checks: b, which cannot check, stops placing rooms there although
    // n1 and n2 now carry one room each (a tie it would break towards n1).
    n1.down.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let _r3 = session_at(&b, "place-3").await;
    eventually("a session on n2", || n2.sessions() == 2).await;
    assert_eq!(n1.sessions(), 1, "b placed a room on a node a saw down");
    drop(etcd);
}
