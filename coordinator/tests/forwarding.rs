//! Issue 16: a client that reaches a replica which does not own its room is served through
//! the owner. A real etcd and two real coordinator replicas (the binary, each with
//! `--replica-url`); a stand-in SFU records what the proxy sends it. Skipped, saying so,
//! without an etcd binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod etcd_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use common::{Client, Got, expect_close, recv, send_json};
use etcd_support::{Etcd, Replica};
use satsuma_coordinator::auth::{TokenKeys, unix_now};
use satsuma_coordinator::protocol::{
    ClientMessage, PROTOCOL_VERSION, Resume, RoomEvent, ServerMessage,
};
use serde_json::{Value, json};

fn token(room: &str, sub: &str) -> String {
    let keys = TokenKeys::new(satsuma_coordinator::Config::dev().jwt_secret.as_bytes(), 5);
    let mut c = common::claims(room, sub, &["publish", "subscribe"]);
    c.exp = unix_now() + 600;
    keys.mint(&c).unwrap()
}

/// A stand-in SFU: answers `sessions/new` with a fresh id and a session read; counts calls.
async fn fake_sfu() -> (String, Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/v1/apps/{app}/sessions/new",
            post(move || {
                let n = c.fetch_add(1, Ordering::Relaxed) + 1;
                async move { axum::Json(json!({ "sessionId": format!("sess-{n}") })) }
            }),
        )
        .route(
            "/v1/apps/{app}/sessions/{sid}",
            get(|| async { axum::Json(json!({ "tracks": [] })) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

async fn sfu_call(
    http: &reqwest::Client,
    replica: &Replica,
    method: reqwest::Method,
    path: &str,
    credential: &str,
) -> (u16, Value) {
    let r = http
        .request(method, format!("{}{path}", replica.http_url()))
        .bearer_auth(credential)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn resume_hello(url: &str, id: u64, resume_token: &str, last_seq: u64) -> common::Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    send_json(
        &mut ws,
        &ClientMessage::Hello {
            v: PROTOCOL_VERSION,
            token: None,
            resume: Some(Resume {
                participant_id: id,
                resume_token: resume_token.to_owned(),
                last_seq,
            }),
            test_visible_only_to: None,
        },
    )
    .await;
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_at_a_non_owner_is_served_through_the_owner() {
    let Some(etcd) = Etcd::start(1) else {
        return;
    };
    let (sfu, sfu_calls) = fake_sfu().await;
    let extra = ["--sfu-node", sfu.as_str()];
    let mut a = Replica::start_reachable("a", &etcd.endpoints(), &extra);
    let b = Replica::start_reachable("b", &etcd.endpoints(), &extra);
    let room = "fwd.room-1";

    // Alice makes a the owner; Bob reaches b, which serves him through a.
    let mut alice = Client::join_url(&a.ws_url(room), &token(room, "alice")).await;
    let mut bob = Client::join_url(&b.ws_url(room), &token(room, "bob")).await;
    assert!(
        bob.resume_token.starts_with(&format!("{room}.")),
        "a credential names its room: {}",
        bob.resume_token
    );
    alice
        .until_event(|e| matches!(e, RoomEvent::Joined { id, .. } if *id == bob.id))
        .await;
    // Both ways, in the one order: Bob's hand reaches Alice, Alice's reaches Bob.
    bob.send(ClientMessage::Hand { raised: true }).await;
    let bob_id = bob.id;
    let seen_by_alice = alice
        .until_event(|e| matches!(e, RoomEvent::Hand { id, raised: true } if *id == bob_id))
        .await
        .seq;
    let seen_by_bob = bob
        .until_event(|e| matches!(e, RoomEvent::Hand { id, raised: true } if *id == bob_id))
        .await
        .seq;
    assert_eq!(seen_by_alice, seen_by_bob);
    alice.send(ClientMessage::Hand { raised: true }).await;
    let alice_id = alice.id;
    bob.until_event(|e| matches!(e, RoomEvent::Hand { id, raised: true } if *id == alice_id))
        .await;
    // Pings through the pipe are answered by the owner.
    bob.sync().await;

    // SFU calls at b with a credential of a's room go to a, which binds the session to Bob.
    let http = reqwest::Client::new();
    let (status, body) = sfu_call(
        &http,
        &b,
        reqwest::Method::POST,
        "/sfu/sessions/new",
        &bob.resume_token,
    )
    .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let sid = body["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(sfu_calls.load(Ordering::Relaxed), 1);
    let (status, _) = sfu_call(
        &http,
        &b,
        reqwest::Method::GET,
        &format!("/sfu/sessions/{sid}"),
        &bob.resume_token,
    )
    .await;
    assert_eq!(status, 200);
    // The owner checked it: Alice may not read Bob's session, through b or at a.
    for r in [&b, &a] {
        let (status, body) = sfu_call(
            &http,
            r,
            reqwest::Method::GET,
            &format!("/sfu/sessions/{sid}"),
            &alice.resume_token,
        )
        .await;
        assert_eq!(status, 403, "{body}");
    }
    // A made-up credential of that room is refused, as at the owner.
    let fake = format!("{room}.{}", "ab".repeat(24));
    let (status, _) = sfu_call(&http, &b, reqwest::Method::POST, "/sfu/sessions/new", &fake).await;
    assert_eq!(status, 401);
    assert_eq!(sfu_calls.load(Ordering::Relaxed), 1);

    // The owner's refusals reach the client as the owner closed: a bad resume token at b.
    let mut forged = resume_hello(&b.ws_url(room), bob.id, &fake, bob.last_seq).await;
    let (code, reason) = expect_close(&mut forged).await;
    assert_eq!(code, 4410, "{reason}");
    assert!(reason.contains("bad resume token"), "{reason}");
    // Bob's piped connection was not disturbed.
    bob.sync().await;

    // A replica that pipes a client and gets SIGTERM closes the client with 1001 (it resumes
    // through another replica) before it exits.
    let mut c = Replica::start_reachable("c", &etcd.endpoints(), &extra);
    let mut carol = Client::join_url(&c.ws_url(room), &token(room, "carol")).await;
    carol.sync().await;
    assert!(c.terminate().success());
    let (code, reason) = expect_close(&mut carol.ws).await;
    assert_eq!(code, 1001, "{reason}");
    assert!(reason.contains("shutting down"), "{reason}");
    let mut ws = resume_hello(
        &b.ws_url(room),
        carol.id,
        &carol.resume_token,
        carol.last_seq,
    )
    .await;
    assert!(
        matches!(
            recv(&mut ws).await,
            Got::Direct(ServerMessage::Resumed { .. })
        ),
        "Carol resumes through b"
    );
    drop(ws);

    // The owner dies: b closes the piped connection (1001) and becomes the owner on the
    // resume (after the lease lapses), with nothing lost.
    a.kill();
    let killed = Instant::now();
    let (code, reason) = expect_close(&mut bob.ws).await;
    assert_eq!(code, 1001, "{reason}");
    let mut bob_resumed = None;
    while bob_resumed.is_none() {
        assert!(killed.elapsed() < Duration::from_secs(10), "no takeover");
        let mut ws = resume_hello(&b.ws_url(room), bob.id, &bob.resume_token, bob.last_seq).await;
        match recv(&mut ws).await {
            Got::Direct(ServerMessage::Resumed { from_seq, .. }) => {
                assert_eq!(from_seq, bob.last_seq);
                bob.ws = ws;
                bob_resumed = Some(killed.elapsed());
            }
            Got::Close(1013, _) => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("resume at b: {other:?}"),
        }
    }
    println!(
        "forwarding: b served Bob's resume {} ms after the owner's kill -9",
        bob_resumed.unwrap().as_millis()
    );
    // The rebuilt room goes on after the seq ceiling the old owner reserved (a gap clients
    // accept), so read raw frames here.
    bob.send(ClientMessage::Hand { raised: false }).await;
    loop {
        match recv(&mut bob.ws).await {
            Got::Event(e) if matches!(e.event, RoomEvent::Hand { id, raised: false } if id == bob_id) =>
            {
                assert!(e.seq > bob.last_seq);
                break;
            }
            Got::Close(code, reason) => panic!("closed {code} {reason}"),
            _ => {}
        }
    }
    // Bob's credential now works at b itself (b owns the room).
    let (status, _) = sfu_call(
        &http,
        &b,
        reqwest::Method::GET,
        &format!("/sfu/sessions/{sid}"),
        &bob.resume_token,
    )
    .await;
    assert_eq!(status, 200);
    drop(etcd);
}
