//! Abuse reproductions (issue 11), each against a real coordinator on 127.0.0.1 with real
//! WebSockets and HTTP, each asserting the fix (the non-reading socket is in
//! `abuse_flood.rs`, alone in its process so its RSS is the coordinator's):
//! - 300 concurrent `sessions/new` of one participant through the proxy leave no orphan SFU
//!   session;
//! - a participant can create media sessions 10 times in a row (reconnects): the oldest are
//!   released at the SFU, the newest works;
//! - a member flooding KeyPackages (or any entries) cannot push others' resume window out of
//!   the log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{delete, post};
use common::{Client, Got, start};
use parking_lot::Mutex;
use satsuma_coordinator::Config;
use satsuma_coordinator::config::Budgets;
use satsuma_coordinator::protocol::{ClientMessage, KIND_KEY_PACKAGE, RoomEvent, ServerMessage};
use serde_json::{Value, json};

/// A KeyPackage frame (`kind 1 ‖ MLSMessage`) of `len` payload bytes: a valid
/// `mls_key_package` header and filler.
fn key_package(len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![KIND_KEY_PACKAGE, 0, 1, 0, 5];
    f.resize(len + 1, fill);
    f
}

// ---------------------------------------------------------------------------
// A stub SFU that counts sessions created and deleted.

#[derive(Default)]
struct Stub {
    next: Mutex<u32>,
    live: Mutex<std::collections::BTreeSet<String>>,
    created: AtomicUsize,
    deleted: AtomicUsize,
}

async fn serve_stub(stub: Arc<Stub>) -> String {
    let r = Router::new()
        .route(
            "/v1/apps/{app}/sessions/new",
            post(|State(s): State<Arc<Stub>>| async move {
                // Slow enough that concurrent creates overlap.
                tokio::time::sleep(Duration::from_millis(30)).await;
                let sid = {
                    let mut n = s.next.lock();
                    *n += 1;
                    format!("stub-{n}")
                };
                s.live.lock().insert(sid.clone());
                s.created.fetch_add(1, Ordering::Relaxed);
                axum::Json(json!({"sessionId": sid}))
            }),
        )
        .route(
            "/v1/apps/{app}/sessions/{sid}",
            delete(
                |State(s): State<Arc<Stub>>, Path((_app, sid)): Path<(String, String)>| async move {
                    if s.live.lock().remove(&sid) {
                        s.deleted.fetch_add(1, Ordering::Relaxed);
                        (axum::http::StatusCode::OK, axum::Json(json!({})))
                    } else {
                        (
                            axum::http::StatusCode::NOT_FOUND,
                            axum::Json(json!({"errorCode": "session_not_found"})),
                        )
                    }
                },
            ),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state(stub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, r).await.unwrap() });
    format!("http://{addr}")
}

async fn new_session(base: &str, bearer: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/sfu/sessions/new"))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// Waits (polling the stub, at most 10 s) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// 2. 300 concurrent sessions/new.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_session_creates_leave_no_orphan() {
    let stub = Arc::new(Stub::default());
    let url = serve_stub(stub.clone()).await;
    let server = start(Config {
        sfu_nodes: vec![url],
        ..Config::dev()
    })
    .await;
    let alice = Client::join(&server, "orphans", "alice").await;
    let base = server.http_url();
    let calls = (0..300).map(|_| {
        let base = base.clone();
        let bearer = alice.resume_token.clone();
        tokio::spawn(async move { new_session(&base, &bearer).await })
    });
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|r| matches!(r, Ok((200, _)))).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Ok((429, b)) if b["errorCode"] == "too_many_sessions"))
        .count();
    assert_eq!(ok + refused, 300, "{results:?}");
    // Whatever the SFU created is either the participant's (at most 4) or deleted again.
    eventually(
        "every session created at the SFU is bound or deleted",
        || stub.live.lock().len() <= 4,
    )
    .await;
    let created = stub.created.load(Ordering::Relaxed);
    let deleted = stub.deleted.load(Ordering::Relaxed);
    let live = stub.live.lock().len();
    println!(
        "300 concurrent creates: {ok} ok, {refused} refused; SFU created {created}, deleted {deleted}, live {live}"
    );
    assert!(live <= 4, "{live} sessions live at the SFU");
    assert!(created <= 300);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// 3. Media reconnects: a new session beyond the cap releases the oldest.

fn offer_sdp() -> (String, String) {
    use str0m::media::{Direction, MediaKind};
    let mut rtc = str0m::Rtc::builder().build(Instant::now());
    let mut api = rtc.sdp_api();
    let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, _pending) = api.apply().unwrap();
    (offer.to_sdp_string(), mid.to_string())
}

async fn call(
    method: reqwest::Method,
    url: String,
    bearer: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(bearer);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json::<Value>().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_media_reconnects_in_a_row_still_get_media() {
    let sfu_config = satsuma_sfu::Config {
        http_bind: "127.0.0.1:0".parse().unwrap(),
        udp_bind: "127.0.0.1:0".parse().unwrap(),
        ..satsuma_sfu::Config::default()
    };
    let app = sfu_config.apps[0].clone();
    let sfu = satsuma_sfu::Server::bind(sfu_config).await.unwrap();
    let sfu_base = format!("http://{}/v1/apps/{}", sfu.http_addr(), app.id);
    let server = start(Config {
        sfu_nodes: vec![format!("http://{}", sfu.http_addr())],
        sfu_app_id: app.id.clone(),
        sfu_app_secret: app.secret.clone(),
        ..Config::dev()
    })
    .await;
    let base = server.http_url();
    let mut alice = Client::join(&server, "reconnect", "alice").await;
    let mut bob = Client::join(&server, "reconnect", "bob").await;
    let mut sessions = Vec::new();
    for round in 0..10 {
        // A fresh peer connection: a new session, a pushed track, announced.
        let (status, body) = new_session(&base, &alice.resume_token).await;
        assert!(
            (200..300).contains(&status),
            "round {round}: {status} {body}"
        );
        let sid = body["sessionId"].as_str().unwrap().to_owned();
        let (sdp, mid) = offer_sdp();
        let name = format!("mic-{round}");
        let (status, body) = call(
            reqwest::Method::POST,
            format!("{base}/sfu/sessions/{sid}/tracks/new"),
            &alice.resume_token,
            Some(json!({
                "sessionDescription": {"type": "offer", "sdp": sdp},
                "tracks": [{"location": "local", "mid": mid, "trackName": name}],
            })),
        )
        .await;
        assert_eq!(status, 200, "round {round}: {body}");
        alice
            .send(ClientMessage::Publish {
                session_id: sid.clone(),
                track_name: name.clone(),
                kind: satsuma_coordinator::protocol::TrackKind::Audio,
                enabled: true,
            })
            .await;
        bob.until_event(
            |e| matches!(e, RoomEvent::Published { track, .. } if track.track_name == name),
        )
        .await;
        // Bob (reconnecting too) pulls the newest track: media reaches him again.
        let (status, bob_session) = new_session(&base, &bob.resume_token).await;
        assert!(
            (200..300).contains(&status),
            "round {round}: {status} {bob_session}"
        );
        let bob_sid = bob_session["sessionId"].as_str().unwrap().to_owned();
        let (status, body) = call(
            reqwest::Method::POST,
            format!("{base}/sfu/sessions/{bob_sid}/tracks/new"),
            &bob.resume_token,
            Some(json!({"tracks": [{"location": "remote", "sessionId": sid, "trackName": name}]})),
        )
        .await;
        assert_eq!(status, 200, "round {round}: {body}");
        assert!(
            body["tracks"][0]["errorCode"].is_null(),
            "round {round}: {body}"
        );
        sessions.push(sid);
    }
    // Only the newest 4 sessions exist at the SFU; the older ones were released.
    for (i, sid) in sessions.iter().enumerate() {
        let (status, _) = call(
            reqwest::Method::GET,
            format!("{sfu_base}/sessions/{sid}"),
            &app.secret,
            None,
        )
        .await;
        if i < sessions.len() - 4 {
            let t0 = Instant::now();
            let mut status = status;
            while status != 404 && t0.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                status = call(
                    reqwest::Method::GET,
                    format!("{sfu_base}/sessions/{sid}"),
                    &app.secret,
                    None,
                )
                .await
                .0;
            }
            assert_eq!(status, 404, "session {i} was not released");
        } else {
            assert_eq!(status, 200, "session {i} is gone");
        }
    }
    // Others learnt that the released sessions' tracks are gone.
    bob.sync().await;
    let gone: Vec<String> = bob
        .log
        .iter()
        .filter_map(|g| match g {
            Got::Event(e) => match &e.event {
                RoomEvent::Unpublished { id, track_name } if *id == alice.id => {
                    Some(track_name.clone())
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(gone, (0..6).map(|i| format!("mic-{i}")).collect::<Vec<_>>());
    server.shutdown().await;
    sfu.shutdown().await;
}

// ---------------------------------------------------------------------------
// 4. One member's KeyPackages cannot flush the others' resume window.

async fn disconnect(client: &mut Client, server: &satsuma_coordinator::ServerHandle, room: &str) {
    client.sync().await;
    client.ws.close(None).await.ok();
    drop(std::mem::replace(
        &mut client.ws,
        common::raw(server, room).await,
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_from_one_member_do_not_flush_the_resume_log() {
    let server = start(Config {
        rate_per_second: 100_000,
        rate_burst: 100_000,
        budgets: Budgets {
            byte_rate_per_second: 1 << 30,
            byte_rate_burst: 1 << 30,
            ..Budgets::default()
        },
        ..Config::dev()
    })
    .await;
    let mut alice = Client::join(&server, "kp", "alice").await;
    let mut bob = Client::join(&server, "kp", "bob").await;
    alice.sync().await;
    disconnect(&mut bob, &server, "kp").await;
    // 17 maximal KeyPackages, then 2000 of the largest accepted size (31 MiB in all).
    for i in 0..17u8 {
        alice.send_binary(key_package((1 << 20) - 1, i)).await;
    }
    let big = (16 << 10) - 1;
    for i in 0..2000u32 {
        alice.send_binary(key_package(big, (i % 251) as u8)).await;
        if i % 32 == 31 {
            // Alice reads what comes back (her own KeyPackages) like any client.
            alice.sync().await;
        }
    }
    let last = key_package(big, 0xAB);
    alice.send_binary(last.clone()).await;
    alice.sync().await;
    // Bob resumes and gets Alice's latest KeyPackage.
    let reply = bob.resume(&server, "kp").await;
    assert!(
        matches!(reply, Got::Direct(ServerMessage::Resumed { .. })),
        "resume failed: {reply:?}"
    );
    let mut latest = None;
    loop {
        match common::recv(&mut bob.ws).await {
            Got::Mls(m) if m.from == alice.id => latest = Some(m),
            Got::Direct(ServerMessage::Pong { .. }) => break,
            Got::Close(c, r) => panic!("closed {c} {r}"),
            _ => {}
        }
        if latest.as_ref().is_some_and(|m| m.payload == last[1..]) {
            break;
        }
    }
    assert_eq!(latest.unwrap().payload, last[1..].to_vec());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_flooding_entries_cannot_evict_the_others_resume_window() {
    let server = start(Config {
        rate_per_second: 100_000,
        rate_burst: 100_000,
        budgets: Budgets {
            byte_rate_per_second: 1 << 30,
            byte_rate_burst: 1 << 30,
            ..Budgets::default()
        },
        replay_window: 256,
        ..Config::dev()
    })
    .await;
    let mut alice = Client::join(&server, "share", "alice").await;
    let mut bob = Client::join(&server, "share", "bob").await;
    let mut carol = Client::join(&server, "share", "carol").await;
    alice.sync().await;
    carol.sync().await;
    disconnect(&mut bob, &server, "share").await;
    // Carol raises her hand while Bob is away: Bob must see it after resuming.
    carol.send(ClientMessage::Hand { raised: true }).await;
    carol.sync().await;
    // Alice toggles her hand 2000 times (each toggle is an entry), 8 times the log's
    // 256 entries, all within the presence timeout.
    for i in 0..2000 {
        alice.send(ClientMessage::Hand { raised: i % 2 == 0 }).await;
    }
    alice.sync().await;
    let reply = bob.resume(&server, "share").await;
    assert!(
        matches!(reply, Got::Direct(ServerMessage::Resumed { .. })),
        "resume failed: {reply:?}"
    );
    let carol_id = carol.id;
    // The replay may skip seqs: Bob's own `away` is superseded by his `back` (logged on the
    // resume) and, the log being full, compacted away first (PROTOCOL.md §6).
    loop {
        match common::recv(&mut bob.ws).await {
            Got::Event(e) if matches!(e.event, RoomEvent::Hand { id, raised: true } if id == carol_id) =>
            {
                break;
            }
            Got::Close(code, why) => panic!("closed {code} {why}"),
            _ => {}
        }
    }
    server.shutdown().await;
}
