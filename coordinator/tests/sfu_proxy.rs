//! `/sfu/...`: sessions are bound to the participant that created them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post, put};
use common::{Client, start};
use parking_lot::Mutex;
use satsuma_coordinator::Config;
use satsuma_coordinator::protocol::{ClientMessage, RoomEvent, ServerMessage, TrackKind};
use serde_json::{Value, json};

struct Http {
    base: String,
    client: reqwest::Client,
}

impl Http {
    fn new(server: &satsuma_coordinator::ServerHandle) -> Self {
        Self {
            base: server.http_url(),
            client: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(bearer);
        if let Some(b) = body {
            // Browsers send text/plain to avoid a preflight; the proxy must not care.
            req = req
                .header("content-type", "text/plain;charset=UTF-8")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn new_session(&self, bearer: &str) -> String {
        let (status, body) = self
            .call(reqwest::Method::POST, "/sfu/sessions/new", bearer, None)
            .await;
        assert!((200..300).contains(&status), "{status} {body}");
        body["sessionId"].as_str().unwrap().to_owned()
    }
}

fn forbidden(r: &(u16, Value)) -> bool {
    r.0 == 403 && r.1["errorCode"] == "forbidden"
}

// ---------------------------------------------------------------------------
// A stub SFU that records what reaches it.

#[derive(Default)]
struct Stub {
    calls: Mutex<Vec<(String, String, Option<String>)>>, // method path, auth, body
    next: Mutex<u32>,
}

fn stub_router(stub: Arc<Stub>, healthy: bool) -> Router {
    async fn record(stub: &Stub, what: String, headers: &HeaderMap, body: Option<String>) {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        stub.calls.lock().push((what, auth, body));
    }
    let mut r = Router::new()
        .route(
            "/v1/apps/{app}/sessions/new",
            post(
                |State(s): State<Arc<Stub>>, Path(app): Path<String>, h: HeaderMap| async move {
                    record(&s, format!("POST {app} sessions/new"), &h, None).await;
                    let n = {
                        let mut n = s.next.lock();
                        *n += 1;
                        *n
                    };
                    axum::Json(json!({"sessionId": format!("stub-{n}")}))
                },
            ),
        )
        .route(
            "/v1/apps/{app}/sessions/{sid}/renegotiate",
            put(
                |State(s): State<Arc<Stub>>,
                 Path((app, sid)): Path<(String, String)>,
                 h: HeaderMap,
                 body: String| async move {
                    record(&s, format!("PUT {app} {sid}/renegotiate"), &h, Some(body)).await;
                    axum::Json(json!({}))
                },
            ),
        )
        .route(
            "/v1/apps/{app}/sessions/{sid}",
            get(
                |State(s): State<Arc<Stub>>,
                 Path((app, sid)): Path<(String, String)>,
                 h: HeaderMap| async move {
                    record(&s, format!("GET {app} {sid}"), &h, None).await;
                    axum::Json(json!({"tracks": []}))
                },
            ),
        );
    if healthy {
        r = r.route("/healthz", get(|| async { "ok" }));
    }
    r.with_state(stub)
}

async fn serve_stub(stub: Arc<Stub>, healthy: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, stub_router(stub, healthy))
            .await
            .unwrap()
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_adds_the_secret_and_picks_a_healthy_node() {
    let dead = Arc::new(Stub::default());
    let live = Arc::new(Stub::default());
    let dead_url = serve_stub(dead.clone(), false).await;
    let live_url = serve_stub(live.clone(), true).await;
    let config = Config {
        sfu_nodes: vec![dead_url, live_url],
        sfu_app_id: "app1".into(),
        sfu_app_secret: "s3cret".into(),
        ..Config::dev()
    };
    let server = start(config).await;
    let http = Http::new(&server);
    let mut alice = Client::join(&server, "stub", "alice").await;
    let sid = http.new_session(&alice.resume_token).await;
    assert_eq!(sid, "stub-1");
    // The room learns about the session.
    let e = alice
        .until_event(|e| matches!(e, RoomEvent::Session { .. }))
        .await;
    assert_eq!(
        e.event,
        RoomEvent::Session {
            id: alice.id,
            session_id: sid.clone()
        }
    );
    let r = http
        .call(
            reqwest::Method::PUT,
            &format!("/sfu/sessions/{sid}/renegotiate?x=1"),
            &alice.resume_token,
            Some(json!({"sessionDescription": {"type": "answer", "sdp": "v=0"}})),
        )
        .await;
    assert_eq!(r.0, 200, "{r:?}");
    let calls = live.calls.lock().clone();
    assert!(dead.calls.lock().is_empty(), "the unhealthy node got calls");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].0, "POST app1 sessions/new");
    assert_eq!(calls[0].1, "Bearer s3cret");
    assert_eq!(calls[1].0, "PUT app1 stub-1/renegotiate");
    assert_eq!(
        calls[1].2.as_deref(),
        Some(r#"{"sessionDescription":{"sdp":"v=0","type":"answer"}}"#)
    );
    // Unauthenticated calls never reach the SFU.
    let r = http
        .call(reqwest::Method::POST, "/sfu/sessions/new", "nope", None)
        .await;
    assert_eq!(r.0, 401);
    assert_eq!(live.calls.lock().len(), 2);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// Against a real satsuma-sfu.

fn offer_sdp() -> (String, String) {
    use str0m::media::{Direction, MediaKind};
    let mut rtc = str0m::Rtc::builder().build(Instant::now());
    let mut api = rtc.sdp_api();
    let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, _pending) = api.apply().unwrap();
    (offer.to_sdp_string(), mid.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_bound_to_their_creator_on_a_real_sfu() {
    let sfu_config = satsuma_sfu::Config {
        http_bind: "127.0.0.1:0".parse().unwrap(),
        udp_bind: "127.0.0.1:0".parse().unwrap(),
        ..satsuma_sfu::Config::default()
    };
    let app = sfu_config.apps[0].clone();
    let sfu = satsuma_sfu::Server::bind(sfu_config).await.unwrap();
    let config = Config {
        sfu_nodes: vec![format!("http://{}", sfu.http_addr())],
        sfu_app_id: app.id.clone(),
        sfu_app_secret: app.secret.clone(),
        ..Config::dev()
    };
    let server = start(config).await;
    let http = Http::new(&server);
    let mut alice = Client::join(&server, "real", "alice").await;
    let mut bob = Client::join(&server, "real", "bob").await;
    let carol = Client::join(&server, "elsewhere", "carol").await;

    let sa = http.new_session(&alice.resume_token).await;
    let sb = http.new_session(&bob.resume_token).await;
    let sc = http.new_session(&carol.resume_token).await;

    // Alice pushes an audio track on her session.
    let (sdp, mid) = offer_sdp();
    let push = json!({
        "sessionDescription": {"type": "offer", "sdp": sdp},
        "tracks": [{"location": "local", "mid": mid, "trackName": "mic"}],
    });
    let r = http
        .call(
            reqwest::Method::POST,
            &format!("/sfu/sessions/{sa}/tracks/new"),
            &alice.resume_token,
            Some(push.clone()),
        )
        .await;
    assert_eq!(r.0, 200, "{r:?}");
    assert_eq!(r.1["sessionDescription"]["type"], "answer", "{r:?}");
    alice
        .send(ClientMessage::Publish {
            session_id: sa.clone(),
            track_name: "mic".into(),
            kind: TrackKind::Audio,
            enabled: true,
        })
        .await;
    let e = bob
        .until_event(|e| matches!(e, RoomEvent::Published { .. }))
        .await;
    assert!(
        matches!(e.event, RoomEvent::Published { id, ref track } if id == alice.id && track.session_id == sa)
    );

    // Bob cannot act on Alice's session through the proxy.
    let answer = json!({"sessionDescription": {"type": "answer", "sdp": "v=0"}});
    assert!(forbidden(
        &http
            .call(
                reqwest::Method::PUT,
                &format!("/sfu/sessions/{sa}/renegotiate"),
                &bob.resume_token,
                Some(answer)
            )
            .await
    ));
    assert!(forbidden(
        &http
            .call(
                reqwest::Method::PUT,
                &format!("/sfu/sessions/{sa}/tracks/close"),
                &bob.resume_token,
                Some(json!({"tracks": [{"mid": mid}], "force": true}))
            )
            .await
    ));
    assert!(forbidden(
        &http
            .call(
                reqwest::Method::GET,
                &format!("/sfu/sessions/{sa}"),
                &bob.resume_token,
                None
            )
            .await
    ));
    assert!(forbidden(
        &http
            .call(
                reqwest::Method::POST,
                &format!("/sfu/sessions/{sa}/tracks/new"),
                &bob.resume_token,
                Some(push)
            )
            .await
    ));
    // Nor announce a track on it.
    bob.send(ClientMessage::Publish {
        session_id: sa.clone(),
        track_name: "fake".into(),
        kind: TrackKind::Video,
        enabled: true,
    })
    .await;
    assert!(matches!(bob.direct().await, ServerMessage::Error { code, .. } if code == "forbidden"));

    // Bob may pull Alice's track into his own session (same room) ...
    let pull = json!({"tracks": [{"location": "remote", "sessionId": sa, "trackName": "mic"}]});
    let r = http
        .call(
            reqwest::Method::POST,
            &format!("/sfu/sessions/{sb}/tracks/new"),
            &bob.resume_token,
            Some(pull.clone()),
        )
        .await;
    assert_eq!(r.0, 200, "{r:?}");
    assert_eq!(r.1["requiresImmediateRenegotiation"], true, "{r:?}");
    assert_eq!(r.1["sessionDescription"]["type"], "offer", "{r:?}");
    assert!(r.1["tracks"][0]["mid"].is_string(), "{r:?}");
    // ... but Carol, in another room, may not, not even into her own session.
    assert!(forbidden(
        &http
            .call(
                reqwest::Method::POST,
                &format!("/sfu/sessions/{sc}/tracks/new"),
                &carol.resume_token,
                Some(pull)
            )
            .await
    ));

    // Alice can read her own session from the real SFU.
    let r = http
        .call(
            reqwest::Method::GET,
            &format!("/sfu/sessions/{sa}"),
            &alice.resume_token,
            None,
        )
        .await;
    assert_eq!(r.0, 200, "{r:?}");
    assert_eq!(r.1["tracks"][0]["trackName"], "mic", "{r:?}");

    // After Alice leaves, her credential no longer works.
    let token = alice.resume_token.clone();
    alice.send(ClientMessage::Leave {}).await;
    bob.until_event(|e| matches!(e, RoomEvent::Left { .. }))
        .await;
    assert_eq!(
        http.call(
            reqwest::Method::GET,
            &format!("/sfu/sessions/{sa}"),
            &token,
            None
        )
        .await
        .0,
        401
    );
    server.shutdown().await;
    sfu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyframe_requests_go_to_the_callers_own_session_only() {
    let sfu_config = satsuma_sfu::Config {
        http_bind: "127.0.0.1:0".parse().unwrap(),
        udp_bind: "127.0.0.1:0".parse().unwrap(),
        ..satsuma_sfu::Config::default()
    };
    let app = sfu_config.apps[0].clone();
    let sfu = satsuma_sfu::Server::bind(sfu_config).await.unwrap();
    let max_body = 16 * 1024;
    let config = Config {
        sfu_nodes: vec![format!("http://{}", sfu.http_addr())],
        sfu_app_id: app.id.clone(),
        sfu_app_secret: app.secret.clone(),
        sfu_max_body_bytes: max_body,
        ..Config::dev()
    };
    let server = start(config).await;
    let http = Http::new(&server);
    let alice = Client::join(&server, "kf", "alice").await;
    let bob = Client::join(&server, "kf", "bob").await;
    let viewer_token = server
        .mint_token(&common::claims("kf", "dave", &["subscribe"]))
        .unwrap();
    let dave = Client::join_with_token(&server, "kf", &viewer_token).await;

    let sa = http.new_session(&alice.resume_token).await;
    let sb = http.new_session(&bob.resume_token).await;
    let sd = http.new_session(&dave.resume_token).await;
    let (sdp, mid) = offer_sdp();
    let r = http
        .call(
            reqwest::Method::POST,
            &format!("/sfu/sessions/{sa}/tracks/new"),
            &alice.resume_token,
            Some(json!({
                "sessionDescription": {"type": "offer", "sdp": sdp},
                "tracks": [{"location": "local", "mid": mid, "trackName": "mic"}],
            })),
        )
        .await;
    assert_eq!(r.0, 200, "{r:?}");

    // Alice's request reaches the SFU's route for her session: per-track results come back
    // (her only track is audio, which never gets a keyframe request).
    let ask = json!({"tracks": [{"trackName": "mic"}, {"trackName": "cam"}]});
    let path = format!("/sfu/sessions/{sa}/tracks/keyframe");
    let r = http
        .call(
            reqwest::Method::POST,
            &path,
            &alice.resume_token,
            Some(ask.clone()),
        )
        .await;
    assert_eq!(r.0, 200, "{r:?}");
    assert_eq!(r.1["tracks"][0]["trackName"], "mic", "{r:?}");
    assert_eq!(r.1["tracks"][0]["errorCode"], "invalid_params", "{r:?}");
    assert_eq!(r.1["tracks"][1]["errorCode"], "not_found", "{r:?}");

    // Bob may not ask on Alice's session, nor anyone on a session nobody created.
    assert!(forbidden(
        &http
            .call(
                reqwest::Method::POST,
                &path,
                &bob.resume_token,
                Some(ask.clone())
            )
            .await
    ));
    assert!(forbidden(
        &http
            .call(
                reqwest::Method::POST,
                "/sfu/sessions/0123456789abcdef0123456789abcdef/tracks/keyframe",
                &alice.resume_token,
                Some(ask.clone())
            )
            .await
    ));
    // On his own session it reaches the SFU (which publishes nothing there).
    let r = http
        .call(
            reqwest::Method::POST,
            &format!("/sfu/sessions/{sb}/tracks/keyframe"),
            &bob.resume_token,
            Some(ask.clone()),
        )
        .await;
    assert_eq!(r.0, 200, "{r:?}");
    assert_eq!(r.1["tracks"][0]["errorCode"], "not_found", "{r:?}");
    // A participant without publish permission publishes nothing to ask for.
    assert!(forbidden(
        &http
            .call(
                reqwest::Method::POST,
                &format!("/sfu/sessions/{sd}/tracks/keyframe"),
                &dave.resume_token,
                Some(ask.clone())
            )
            .await
    ));
    // Bad bodies are refused by the proxy with a JSON error; so is an unknown credential.
    for bad in [json!("x"), json!({"tracks": 3}), json!({})] {
        let r = http
            .call(reqwest::Method::POST, &path, &alice.resume_token, Some(bad))
            .await;
        assert_eq!(r.0, 400, "{r:?}");
        assert_eq!(r.1["errorCode"], "bad_request", "{r:?}");
    }
    let many: Vec<Value> = (0..65).map(|_| json!({"trackName": "mic"})).collect();
    let r = http
        .call(
            reqwest::Method::POST,
            &path,
            &alice.resume_token,
            Some(json!({ "tracks": many })),
        )
        .await;
    assert_eq!(r.0, 400, "{r:?}");
    let r = http
        .call(reqwest::Method::POST, &path, "nope", Some(ask.clone()))
        .await;
    assert_eq!(r.0, 401, "{r:?}");
    // The same body limit as the other session routes.
    let huge = json!({"tracks": [{"trackName": "x".repeat(max_body)}]});
    let r = http
        .call(
            reqwest::Method::POST,
            &path,
            &alice.resume_token,
            Some(huge),
        )
        .await;
    assert_eq!(r.0, 413, "{r:?}");
    server.shutdown().await;
    sfu.shutdown().await;
}

/// An offer with only a data channel (`m=application`), as a browser's with a placeholder
/// channel.
fn data_offer_sdp() -> String {
    let mut rtc = str0m::Rtc::builder().build(Instant::now());
    let mut api = rtc.sdp_api();
    api.add_channel("placeholder".into());
    let (offer, _pending) = api.apply().unwrap();
    offer.to_sdp_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datachannels_go_to_the_callers_own_session_from_room_members_only() {
    let sfu_config = satsuma_sfu::Config {
        http_bind: "127.0.0.1:0".parse().unwrap(),
        udp_bind: "127.0.0.1:0".parse().unwrap(),
        ..satsuma_sfu::Config::default()
    };
    let app = sfu_config.apps[0].clone();
    let sfu = satsuma_sfu::Server::bind(sfu_config).await.unwrap();
    let config = Config {
        sfu_nodes: vec![format!("http://{}", sfu.http_addr())],
        sfu_app_id: app.id.clone(),
        sfu_app_secret: app.secret.clone(),
        ..Config::dev()
    };
    let server = start(config).await;
    let http = Http::new(&server);
    let alice = Client::join(&server, "dc", "alice").await;
    let bob = Client::join(&server, "dc", "bob").await;
    let carol = Client::join(&server, "elsewhere", "carol").await;
    let viewer_token = server
        .mint_token(&common::claims("dc", "dave", &["subscribe"]))
        .unwrap();
    let dave = Client::join_with_token(&server, "dc", &viewer_token).await;
    let data_session = |token: String| {
        let http = &http;
        async move {
            let r = http
                .call(
                    reqwest::Method::POST,
                    "/sfu/sessions/new",
                    &token,
                    Some(json!({"sessionDescription": {"type": "offer", "sdp": data_offer_sdp()}})),
                )
                .await;
            assert_eq!(r.0, 201, "{r:?}");
            r.1["sessionId"].as_str().unwrap().to_owned()
        }
    };
    let sa = data_session(alice.resume_token.clone()).await;
    let sb = data_session(bob.resume_token.clone()).await;
    let sc = data_session(carol.resume_token.clone()).await;
    let sd = data_session(dave.resume_token.clone()).await;
    let new = |sid: &str| format!("/sfu/sessions/{sid}/datachannels/new");
    let publish = json!({"dataChannels": [{"location": "local", "dataChannelName": "chat"}]});
    let subscribe = json!({"dataChannels": [{"location": "remote", "sessionId": sa, "dataChannelName": "chat"}]});

    // Alice publishes on her own session; the SFU's result (the stream id) comes back.
    let r = http
        .call(
            reqwest::Method::POST,
            &new(&sa),
            &alice.resume_token,
            Some(publish.clone()),
        )
        .await;
    assert_eq!(r.0, 200, "{r:?}");
    let id = r.1["dataChannels"][0]["id"].as_u64().unwrap();
    // Not on Bob's session, and Bob not on hers.
    assert!(forbidden(
        &http
            .call(
                reqwest::Method::POST,
                &new(&sb),
                &alice.resume_token,
                Some(publish.clone())
            )
            .await
    ));
    assert!(forbidden(
        &http
            .call(
                reqwest::Method::POST,
                &new(&sa),
                &bob.resume_token,
                Some(subscribe.clone())
            )
            .await
    ));
    // Dave may subscribe but not publish.
    assert!(forbidden(
        &http
            .call(
                reqwest::Method::POST,
                &new(&sd),
                &dave.resume_token,
                Some(publish.clone())
            )
            .await
    ));
    let r = http
        .call(
            reqwest::Method::POST,
            &new(&sd),
            &dave.resume_token,
            Some(subscribe.clone()),
        )
        .await;
    assert_eq!(r.0, 200, "{r:?}");
    assert!(r.1["dataChannels"][0]["id"].is_u64(), "{r:?}");
    // Bob subscribes from his own session; Carol, in another room, may not.
    let r = http
        .call(
            reqwest::Method::POST,
            &new(&sb),
            &bob.resume_token,
            Some(subscribe.clone()),
        )
        .await;
    assert_eq!(r.0, 200, "{r:?}");
    assert!(forbidden(
        &http
            .call(
                reqwest::Method::POST,
                &new(&sc),
                &carol.resume_token,
                Some(subscribe.clone())
            )
            .await
    ));
    // Bodies the SFU would not read are refused at the proxy.
    for bad in [
        json!({"dataChannels": "chat"}),
        json!({"dataChannels": [{"dataChannelName": "chat"}]}),
        json!({"dataChannels": (0..65).map(|i| json!({"location": "local", "dataChannelName": format!("c{i}")})).collect::<Vec<_>>()}),
    ] {
        let r = http
            .call(
                reqwest::Method::POST,
                &new(&sa),
                &alice.resume_token,
                Some(bad),
            )
            .await;
        assert_eq!(r.0, 400, "{r:?}");
    }
    // GET lists Bob's subscription; closing goes to the caller's own session only.
    let r = http
        .call(
            reqwest::Method::GET,
            &format!("/sfu/sessions/{sb}"),
            &bob.resume_token,
            None,
        )
        .await;
    assert_eq!(r.1["dataChannels"][0]["dataChannelName"], "chat", "{r:?}");
    let close = json!({"dataChannels": [{"id": id}]});
    let path = format!("/sfu/sessions/{sa}/datachannels/close");
    assert!(forbidden(
        &http
            .call(
                reqwest::Method::PUT,
                &path,
                &bob.resume_token,
                Some(close.clone())
            )
            .await
    ));
    let r = http
        .call(
            reqwest::Method::PUT,
            &path,
            &alice.resume_token,
            Some(close),
        )
        .await;
    assert_eq!(r.0, 200, "{r:?}");
    assert_eq!(r.1["dataChannels"][0]["id"], id, "{r:?}");
    server.shutdown().await;
    sfu.shutdown().await;
}
