//! Quotas and exposure against a real SFU on 127.0.0.1 over real HTTP: pulls of one track and
//! legs per session (with per-track errors in the Cloudflare-compatible tracks/new response),
//! publications per session, `sessions/new` rate and live sessions per app, CORS only for the
//! configured origins, `/metrics` behind a bearer token or on its own listener. Offers and
//! answers come from a str0m client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use reqwest::{Method, StatusCode};
use satsuma_bot::harness::{Metrics, fetch_metrics};
use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, Rtc};

const APP: &str = "satsuma";
const SECRET: &str = "satsuma-secret";

struct Sfu {
    handle: satsuma_sfu::ServerHandle,
    http: reqwest::Client,
}

impl Sfu {
    async fn start(adjust: impl FnOnce(&mut satsuma_sfu::Config)) -> Sfu {
        let mut config = satsuma_sfu::Config {
            http_bind: "127.0.0.1:0".parse().unwrap(),
            udp_bind: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        };
        adjust(&mut config);
        Sfu {
            handle: satsuma_sfu::Server::bind(config).await.unwrap(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.handle.http_addr())
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, self.url(&format!("/v1/apps/{APP}/{path}")))
            .bearer_auth(SECRET);
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn new_session(&self) -> String {
        let (status, body) = self.call(Method::POST, "sessions/new", None).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["sessionId"].as_str().unwrap().to_string()
    }

    async fn metrics(&self) -> Metrics {
        fetch_metrics(&self.url("")).await.unwrap()
    }
}

fn client() -> Rtc {
    let mut rtc = Rtc::builder().set_rtp_mode(true).build(Instant::now());
    rtc.add_local_candidate(Candidate::host("127.0.0.1:40000".parse().unwrap(), "udp").unwrap());
    rtc
}

/// A session publishing `n` audio tracks named `t0`, `t1`, …; returns its id and the
/// per-track results of the push.
async fn publisher(sfu: &Sfu, n: usize) -> (String, Vec<Value>) {
    let id = sfu.new_session().await;
    let mut rtc = client();
    let mut change = rtc.sdp_api();
    let mids: Vec<_> = (0..n)
        .map(|_| change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None))
        .collect();
    let (offer, pending) = change.apply().unwrap();
    let tracks: Vec<Value> = mids
        .iter()
        .enumerate()
        .map(|(i, m)| json!({"location": "local", "mid": m.to_string(), "trackName": format!("t{i}")}))
        .collect();
    let (status, body) = sfu
        .call(
            Method::POST,
            &format!("sessions/{id}/tracks/new"),
            Some(json!({
                "sessionDescription": {"type": "offer", "sdp": offer.to_sdp_string()},
                "tracks": tracks,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer =
        SdpAnswer::from_sdp_string(body["sessionDescription"]["sdp"].as_str().unwrap()).unwrap();
    rtc.sdp_api().accept_answer(pending, answer).unwrap();
    (id, body["tracks"].as_array().unwrap().clone())
}

/// Pulls `(session, track)` pairs in one tracks/new call and answers the SFU's offer; returns
/// the per-track results.
async fn pull(sfu: &Sfu, rtc: &mut Rtc, sub: &str, wanted: &[(&str, &str)]) -> Vec<Value> {
    let tracks: Vec<Value> = wanted
        .iter()
        .map(|(s, t)| json!({"location": "remote", "sessionId": s, "trackName": t}))
        .collect();
    let (status, body) = sfu
        .call(
            Method::POST,
            &format!("sessions/{sub}/tracks/new"),
            Some(json!({ "tracks": tracks })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["tracks"].as_array().unwrap().clone();
    if body["requiresImmediateRenegotiation"] == true {
        let offer =
            SdpOffer::from_sdp_string(body["sessionDescription"]["sdp"].as_str().unwrap()).unwrap();
        let answer = rtc.sdp_api().accept_offer(offer).unwrap();
        let (status, body) = sfu
            .call(
                Method::PUT,
                &format!("sessions/{sub}/renegotiate"),
                Some(json!({"sessionDescription": {"type": "answer", "sdp": answer.to_sdp_string()}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    results
}

fn accepted(results: &[Value]) -> usize {
    results
        .iter()
        .filter(|r| r.get("errorCode").is_none())
        .count()
}

fn refused_with<'a>(results: &'a [Value], code: &str) -> Vec<&'a Value> {
    let refused: Vec<&Value> = results
        .iter()
        .filter(|r| r.get("errorCode").is_some())
        .collect();
    for r in &refused {
        assert_eq!(r["errorCode"], code, "{r}");
        assert!(
            r["errorDescription"].as_str().is_some_and(|d| d.len() > 10),
            "{r}"
        );
        if r.get("sessionId").is_some() {
            assert!(r.get("mid").is_none(), "a refused pull got an m-line: {r}");
        }
    }
    refused
}

/// The attack from issue 11: one session pulls the same track 320 times (5 requests of 64,
/// each answered). Before the quota every pull was accepted (320 legs on one track); now
/// `session_max_pulls_per_track` (default 2) are, and every other entry carries the per-track
/// error `too_many_pulls`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_cannot_pull_the_same_track_hundreds_of_times() {
    let sfu = Sfu::start(|_| {}).await;
    let (pub_id, _) = publisher(&sfu, 1).await;
    let sub = sfu.new_session().await;
    let mut rtc = client();
    let mut total = 0;
    let mut refused = 0;
    for _ in 0..5 {
        let wanted = vec![(pub_id.as_str(), "t0"); 64];
        let results = pull(&sfu, &mut rtc, &sub, &wanted).await;
        assert_eq!(results.len(), 64);
        total += accepted(&results);
        refused += refused_with(&results, "too_many_pulls").len();
    }
    eprintln!("pulls of one track accepted for one session: {total} of 320");
    let max = satsuma_sfu::Limits::default().session_max_pulls_per_track;
    assert_eq!(total, max);
    assert_eq!(refused, 320 - max);
    let m = sfu.metrics().await;
    assert_eq!(m.get("satsuma_sfu_subscriptions"), max as f64);
    assert_eq!(
        m.get("satsuma_sfu_quota_refusals_total{quota=\"session_pulls_per_track\"}"),
        (320 - max) as f64
    );

    // Closing a pull gives its place back.
    let (_, state) = sfu
        .call(Method::GET, &format!("sessions/{sub}"), None)
        .await;
    let mid = state["tracks"][0]["mid"].as_str().unwrap().to_string();
    let (status, body) = sfu
        .call(
            Method::PUT,
            &format!("sessions/{sub}/tracks/close"),
            Some(json!({"tracks": [{"mid": mid}], "force": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = pull(&sfu, &mut rtc, &sub, &[(&pub_id, "t0"), (&pub_id, "t0")]).await;
    assert_eq!(accepted(&results), 1, "{results:?}");
    assert_eq!(refused_with(&results, "too_many_pulls").len(), 1);
}

/// Legs per session are capped over all tracks, and publications per session too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legs_and_publications_per_session_are_capped() {
    let sfu = Sfu::start(|c| {
        c.limits.session_max_legs = 5;
        c.limits.session_max_pulls_per_track = 1;
        c.limits.session_max_publications = 4;
    })
    .await;
    // A publisher asking for 6 tracks gets 4.
    let (pub_id, pushed) = publisher(&sfu, 6).await;
    assert_eq!(accepted(&pushed), 4, "{pushed:?}");
    assert_eq!(refused_with(&pushed, "too_many_publications").len(), 2);
    let (other_id, _) = publisher(&sfu, 4).await;

    let sub = sfu.new_session().await;
    let mut rtc = client();
    let wanted: Vec<(&str, &str)> = ["t0", "t1", "t2"]
        .iter()
        .map(|t| (pub_id.as_str(), *t))
        .collect();
    assert_eq!(accepted(&pull(&sfu, &mut rtc, &sub, &wanted).await), 3);
    let wanted: Vec<(&str, &str)> = ["t0", "t1", "t2", "t3"]
        .iter()
        .map(|t| (other_id.as_str(), *t))
        .collect();
    let results = pull(&sfu, &mut rtc, &sub, &wanted).await;
    assert_eq!(accepted(&results), 2, "{results:?}");
    assert_eq!(refused_with(&results, "too_many_legs").len(), 2);
    let m = sfu.metrics().await;
    assert_eq!(m.get("satsuma_sfu_subscriptions"), 5.0);
    assert_eq!(
        m.get("satsuma_sfu_quota_refusals_total{quota=\"session_legs\"}"),
        2.0
    );

    // Pulling and closing in a loop cannot grow the session's SDP without end: over its life a
    // session may pull 4 x session_max_legs tracks (20 here; it has used 5).
    let mut pulled = 5;
    'churn: for _ in 0..10 {
        let (_, state) = sfu
            .call(Method::GET, &format!("sessions/{sub}"), None)
            .await;
        let mids: Vec<Value> = state["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["location"] == "remote" && t["status"] != "inactive")
            .map(|t| json!({"mid": t["mid"]}))
            .collect();
        let (status, body) = sfu
            .call(
                Method::PUT,
                &format!("sessions/{sub}/tracks/close"),
                Some(json!({"tracks": mids, "force": true})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let results = pull(&sfu, &mut rtc, &sub, &wanted).await;
        for r in &results {
            if r.get("errorCode").is_some() {
                assert_eq!(r["errorCode"], "too_many_legs", "{r}");
                break 'churn;
            }
            pulled += 1;
        }
    }
    assert_eq!(pulled, 20);
}

/// Live sessions per app, and the `sessions/new` rate per app; another app is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_app_are_capped_and_rate_limited() {
    let sfu = Sfu::start(|c| {
        c.limits.app_max_sessions = 3;
        c.limits.app_new_sessions_per_second = 1000;
    })
    .await;
    let ids = [
        sfu.new_session().await,
        sfu.new_session().await,
        sfu.new_session().await,
    ];
    let (status, body) = sfu.call(Method::POST, "sessions/new", None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["errorCode"], "too_many_sessions");
    let (status, _) = sfu
        .call(Method::DELETE, &format!("sessions/{}", ids[0]), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // A creation that fails (a bad offer) gives its place back.
    for _ in 0..3 {
        let (status, body) = sfu
            .call(
                Method::POST,
                "sessions/new",
                Some(json!({"sessionDescription": {"type": "offer", "sdp": "v=0\r\ngarbage"}})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    sfu.new_session().await;

    // 300 concurrent creates against a rate of 20/s (burst 20): about 20 get through.
    let sfu = Sfu::start(|c| {
        c.limits.app_new_sessions_per_second = 20;
        c.apps.push(satsuma_sfu::App {
            id: "other".into(),
            secret: "other-secret".into(),
        });
    })
    .await;
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let http = sfu.http.clone();
        let url = sfu.url(&format!("/v1/apps/{APP}/sessions/new"));
        calls.spawn(async move {
            let resp = http.post(url).bearer_auth(SECRET).send().await.unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap())
        });
    }
    let results = calls.join_all().await;
    let elapsed = started.elapsed().as_secs_f64();
    let created = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    for (s, b) in &results {
        if *s != StatusCode::CREATED {
            assert_eq!(*s, StatusCode::TOO_MANY_REQUESTS, "{b}");
            assert_eq!(b["errorCode"], "rate_limited", "{b}");
        }
    }
    eprintln!("300 concurrent sessions/new at 20/s: {created} created in {elapsed:.2} s");
    assert!(created >= 20, "{created}");
    assert!(
        created as f64 <= 20.0 + 20.0 * elapsed + 1.0,
        "{created} in {elapsed} s"
    );
    let m = sfu.metrics().await;
    assert_eq!(m.get("satsuma_sfu_sessions"), created as f64);
    // The other app still gets sessions.
    let resp = sfu
        .http
        .post(sfu.url("/v1/apps/other/sessions/new"))
        .bearer_auth("other-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
}

async fn preflight(sfu: &Sfu, origin: &str) -> reqwest::Response {
    sfu.http
        .request(
            Method::OPTIONS,
            sfu.url(&format!("/v1/apps/{APP}/sessions/new")),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap()
}

/// CORS is off unless origins are configured, and then only for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_off_unless_configured() {
    let sfu = Sfu::start(|_| {}).await;
    let resp = preflight(&sfu, "https://evil.example").await;
    assert!(
        !resp.headers().contains_key("access-control-allow-origin"),
        "{:?}",
        resp.headers()
    );
    let resp = sfu
        .http
        .get(sfu.url("/healthz"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!resp.headers().contains_key("access-control-allow-origin"));

    let sfu = Sfu::start(|c| c.cors_origins = vec!["https://app.example".into()]).await;
    let resp = preflight(&sfu, "https://app.example").await;
    assert!(resp.status().is_success());
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let resp = preflight(&sfu, "https://evil.example").await;
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
}

/// `/metrics` behind a bearer token; or on its own listener, and then not on the API's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_token_or_move_to_their_own_listener() {
    let token = "metrics-token-0123456789";
    let sfu = Sfu::start(|c| c.metrics_token = Some(token.into())).await;
    let resp = sfu.http.get(sfu.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = sfu
        .http
        .get(sfu.url("/metrics"))
        .bearer_auth("wrong-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = sfu
        .http
        .get(sfu.url("/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.text().await.unwrap().contains("satsuma_sfu_sessions"));
    // /healthz needs no token.
    let resp = sfu.http.get(sfu.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let sfu = Sfu::start(|c| c.metrics_bind = Some("127.0.0.1:0".parse().unwrap())).await;
    let ops = sfu.handle.metrics_addr().unwrap();
    assert_ne!(ops, sfu.handle.http_addr());
    let resp = sfu.http.get(sfu.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let m = fetch_metrics(&format!("http://{ops}")).await.unwrap();
    assert_eq!(m.get("satsuma_sfu_sessions"), 0.0);
    let resp = sfu
        .http
        .get(format!("http://{ops}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The API is not on the metrics listener.
    let resp = sfu
        .http
        .post(format!("http://{ops}/v1/apps/{APP}/sessions/new"))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}
