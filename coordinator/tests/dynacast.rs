//! Dynacast through the SFU proxy: a publisher hears (`layers`) which layers of its track
//! subscribers take, from the pulls, layer asks and closes the proxy forwards to a stub SFU.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Path;
use axum::routing::{post, put};
use common::{Client, Got, start};
use parking_lot::Mutex;
use satsuma_coordinator::Config;
use satsuma_coordinator::protocol::{ClientMessage, ServerMessage, TrackKind};
use serde_json::{Value, json};

/// A stub SFU: sessions `stub-N`; pulls get mids `m1`, `m2`, ...; a track named `refused`
/// gets a per-track error; updates and closes succeed per track.
fn stub() -> Router {
    let next = Arc::new(Mutex::new(0u32));
    let mids = Arc::new(Mutex::new(0u32));
    let n = next.clone();
    Router::new()
        .route(
            "/v1/apps/{app}/sessions/new",
            post(move || {
                let n = n.clone();
                async move {
                    let id = {
                        let mut n = n.lock();
                        *n += 1;
                        *n
                    };
                    axum::Json(json!({"sessionId": format!("stub-{id}")}))
                }
            }),
        )
        .route(
            "/v1/apps/{app}/sessions/{sid}/tracks/new",
            post(move |body: String| {
                let mids = mids.clone();
                async move {
                    let v: Value = serde_json::from_str(&body).unwrap();
                    let tracks: Vec<Value> = v["tracks"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| {
                            if t["trackName"] == "refused" {
                                return json!({"trackName": "refused", "errorCode": "not_found", "errorDescription": "no"});
                            }
                            let m = {
                                let mut m = mids.lock();
                                *m += 1;
                                *m
                            };
                            json!({"trackName": t["trackName"], "sessionId": t["sessionId"], "mid": format!("m{m}")})
                        })
                        .collect();
                    axum::Json(json!({"requiresImmediateRenegotiation": false, "tracks": tracks}))
                }
            }),
        )
        .route(
            "/v1/apps/{app}/sessions/{sid}/tracks/update",
            put(|Path((_app, _sid)): Path<(String, String)>, body: String| async move {
                let v: Value = serde_json::from_str(&body).unwrap();
                let tracks: Vec<Value> = v["tracks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| json!({"mid": t["mid"]}))
                    .collect();
                axum::Json(json!({"requiresImmediateRenegotiation": false, "tracks": tracks}))
            }),
        )
        .route(
            "/v1/apps/{app}/sessions/{sid}/tracks/close",
            put(|body: String| async move {
                let v: Value = serde_json::from_str(&body).unwrap();
                let tracks: Vec<Value> = v["tracks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| json!({"mid": t["mid"]}))
                    .collect();
                axum::Json(json!({"requiresImmediateRenegotiation": false, "tracks": tracks}))
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
}

async fn call(base: &str, method: reqwest::Method, path: &str, bearer: &str, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(bearer)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.unwrap()
}

/// The next `layers` message to `c` (skipping entries), and when it came.
async fn layers(c: &mut Client) -> (Option<String>, Instant) {
    match c
        .until(|g| matches!(g, Got::Direct(ServerMessage::Layers { .. })))
        .await
    {
        Got::Direct(ServerMessage::Layers {
            track_name,
            max_rid,
            ..
        }) => {
            assert_eq!(track_name, "cam");
            (max_rid, Instant::now())
        }
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_hears_the_highest_layer_a_subscriber_takes() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sfu = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, stub()).await.unwrap() });
    let server = start(Config {
        sfu_nodes: vec![sfu],
        ..Config::dev()
    })
    .await;
    let base = server.http_url();
    let post = reqwest::Method::POST;
    let put = reqwest::Method::PUT;

    let mut alice = Client::join(&server, "dyn", "alice").await;
    let a_sid = call(
        &base,
        post.clone(),
        "/sfu/sessions/new",
        &alice.resume_token,
        json!({}),
    )
    .await["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    alice
        .send(ClientMessage::Publish {
            session_id: a_sid.clone(),
            track_name: "cam".into(),
            kind: TrackKind::Video,
            enabled: true,
        })
        .await;
    let published = Instant::now();
    // Nobody pulls: after the hold, only the lowest layer.
    let (rid, at) = layers(&mut alice).await;
    assert_eq!(rid, None);
    assert!(
        at - published >= Duration::from_millis(900),
        "{:?}",
        at - published
    );

    let bob = Client::join(&server, "dyn", "bob").await;
    let b_sid = call(
        &base,
        post.clone(),
        "/sfu/sessions/new",
        &bob.resume_token,
        json!({}),
    )
    .await["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    // A refused pull counts for nothing; the accepted one asks q: a rise, at once.
    let asked = Instant::now();
    let r = call(
        &base,
        post.clone(),
        &format!("/sfu/sessions/{b_sid}/tracks/new"),
        &bob.resume_token,
        json!({"tracks": [
            {"location": "remote", "sessionId": a_sid, "trackName": "refused", "simulcast": {"preferredRid": "f"}},
            {"location": "remote", "sessionId": a_sid, "trackName": "cam", "simulcast": {"preferredRid": "q"}},
        ]}),
    )
    .await;
    let mid = r["tracks"][1]["mid"].as_str().unwrap().to_owned();
    let (rid, at) = layers(&mut alice).await;
    assert_eq!(rid.as_deref(), Some("q"));
    assert!(at - asked < Duration::from_millis(800), "{:?}", at - asked);

    // Bob's tile grows: f at once.
    let asked = Instant::now();
    call(
        &base,
        put.clone(),
        &format!("/sfu/sessions/{b_sid}/tracks/update"),
        &bob.resume_token,
        json!({"tracks": [{"location": "remote", "mid": mid, "sessionId": a_sid, "trackName": "cam", "simulcast": {"preferredRid": "f"}}]}),
    )
    .await;
    let (rid, at) = layers(&mut alice).await;
    assert_eq!(rid.as_deref(), Some("f"));
    assert!(at - asked < Duration::from_millis(800));

    // A resume gets the current state again.
    alice.resume(&server, "dyn").await;
    let (rid, _) = layers(&mut alice).await;
    assert_eq!(rid.as_deref(), Some("f"));

    // Bob shrinks it (h), then closes the pull before the hold is over: one message, null.
    call(
        &base,
        put.clone(),
        &format!("/sfu/sessions/{b_sid}/tracks/update"),
        &bob.resume_token,
        json!({"tracks": [{"location": "remote", "mid": mid, "sessionId": a_sid, "trackName": "cam", "simulcast": {"preferredRid": "h"}}]}),
    )
    .await;
    let closed = Instant::now();
    call(
        &base,
        put,
        &format!("/sfu/sessions/{b_sid}/tracks/close"),
        &bob.resume_token,
        json!({"tracks": [{"mid": mid}], "force": true}),
    )
    .await;
    let (rid, at) = layers(&mut alice).await;
    assert_eq!(rid, None);
    assert!(at - closed < Duration::from_millis(1500));
    server.shutdown().await;
}
