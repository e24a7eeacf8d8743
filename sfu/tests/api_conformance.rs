//! API conformance: every endpoint of the Cloudflare-Realtime-compatible API, with valid and
//! invalid input, against a real server on 127.0.0.1 (status codes and error bodies checked).
//! Valid offers and answers come from a str0m client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::api::{APP, SECRET, Sfu};
use reqwest::{Method, StatusCode};
use satsuma_bot::harness::{Metrics, fetch_metrics};
use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::{Candidate, Rtc};

impl Sfu {
    async fn new_session(&self) -> String {
        let (status, body) = self.call(Method::POST, "sessions/new", None).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["sessionId"].as_str().unwrap().to_string()
    }

    async fn metrics(&self) -> Metrics {
        fetch_metrics(&self.url("")).await.unwrap()
    }
}

fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["errorCode"], want_code, "{body}");
    assert!(
        body["errorDescription"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{body}"
    );
}

/// A str0m client with sendonly audio and video m-lines, as a browser pushing mic and camera.
fn pushing_client() -> (Rtc, SdpPendingOffer, String, Mid, Mid) {
    let mut rtc = Rtc::builder().set_rtp_mode(true).build(Instant::now());
    rtc.add_local_candidate(Candidate::host("127.0.0.1:40000".parse().unwrap(), "udp").unwrap());
    let mut change = rtc.sdp_api();
    let a = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let v = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    (rtc, pending, offer.to_sdp_string(), a, v)
}

/// Creates a session that pushes "mic" and "cam"; returns its id and the two mids.
async fn publisher(sfu: &Sfu) -> (String, String, String) {
    let id = sfu.new_session().await;
    let (mut rtc, pending, offer, a, v) = pushing_client();
    let (status, body) = sfu
        .call(
            Method::POST,
            &format!("sessions/{id}/tracks/new"),
            Some(json!({
                "sessionDescription": {"type": "offer", "sdp": offer},
                "tracks": [
                    {"location": "local", "mid": a.to_string(), "trackName": "mic"},
                    {"location": "local", "mid": v.to_string(), "trackName": "cam"},
                ]
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer =
        SdpAnswer::from_sdp_string(body["sessionDescription"]["sdp"].as_str().unwrap()).unwrap();
    rtc.sdp_api().accept_answer(pending, answer).unwrap();
    (id, a.to_string(), v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_cors_and_unknown_routes() {
    let sfu = Sfu::start(|_| {}).await;
    let resp = sfu.http.get(sfu.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The CPU readings the coordinator's placement divides (CPU seconds so far, cores).
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("/healthz without {name}"))
            .to_owned()
    };
    let cpu: f64 = header("satsuma-cpu-seconds").parse().unwrap();
    let cores: u32 = header("satsuma-cpu-cores").parse().unwrap();
    // A fresh test process may not have used a 10 ms tick yet: a number, not negative.
    assert!(cpu >= 0.0 && cores >= 1, "cpu {cpu} s, {cores} cores");
    let resp = sfu.http.get(sfu.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    for name in [
        "process_cpu_seconds_total",
        "satsuma_sfu_sessions",
        "satsuma_sfu_tracks",
        "satsuma_sfu_subscriptions",
        "satsuma_sfu_packets_in_total",
        "satsuma_sfu_forwarded_packets_total",
        "satsuma_sfu_nacks_total",
    ] {
        assert!(text.contains(name), "{name} missing from {text}");
    }

    let (status, body) = sfu.raw(Method::GET, "/nope", None, None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = sfu
        .raw(
            Method::DELETE,
            &format!("/v1/apps/{APP}/sessions/new"),
            Some(SECRET),
            None,
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );

    // CORS is off by default (tests/quotas.rs checks a configured allow-list): a browser
    // preflight from another origin gets no CORS headers.
    let resp = sfu
        .http
        .request(
            Method::OPTIONS,
            sfu.url(&format!("/v1/apps/{APP}/sessions/new")),
        )
        .header("origin", "https://example.org")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(!resp.headers().contains_key("access-control-allow-origin"));

    // API requests are counted by route and status.
    assert!(
        sfu.metrics()
            .await
            .get("satsuma_sfu_api_requests_total{route=\"unmatched\",status=\"404\"}")
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_new_with_and_without_offer_and_bad_input() {
    let sfu = Sfu::start(|_| {}).await;
    // No body.
    let (status, body) = sfu.call(Method::POST, "sessions/new", None).await;
    assert_eq!(status, StatusCode::CREATED);
    let sid = body["sessionId"].as_str().unwrap();
    assert_eq!(sid.len(), 32);
    assert!(sid.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(body.get("sessionDescription").is_none());

    // With an offer: the answer is ICE-lite and the client accepts it.
    let (mut rtc, pending, offer, _, _) = pushing_client();
    let (status, body) = sfu
        .call(
            Method::POST,
            "sessions/new",
            Some(json!({"sessionDescription": {"type": "offer", "sdp": offer}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["sessionDescription"]["type"], "answer");
    let sdp = body["sessionDescription"]["sdp"].as_str().unwrap();
    assert!(sdp.contains("a=ice-lite"), "{sdp}");
    assert!(sdp.contains("a=candidate"), "{sdp}");
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(sdp).unwrap())
        .unwrap();

    // Authentication.
    let path = format!("/v1/apps/{APP}/sessions/new");
    let (status, body) = sfu.raw(Method::POST, &path, None, None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = sfu.raw(Method::POST, &path, Some("wrong"), None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = sfu
        .raw(
            Method::POST,
            "/v1/apps/nosuchapp/sessions/new",
            Some(SECRET),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = sfu
        .raw(Method::POST, &path, Some("other-secret"), None)
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");

    // Malformed bodies.
    let (status, body) = sfu
        .raw(Method::POST, &path, Some(SECRET), Some("{not json".into()))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "decoding_error");
    let (status, body) = sfu
        .call(
            Method::POST,
            "sessions/new",
            Some(json!({"sessionDescription": {"type": "answer", "sdp": "v=0"}})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_params");
    let (status, body) = sfu
        .call(
            Method::POST,
            "sessions/new",
            Some(json!({"sessionDescription": {"type": "offer", "sdp": "v=0\r\ngarbage"}})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_sdp");
    let (status, body) = sfu
        .call(
            Method::POST,
            "sessions/new",
            Some(json!({"sessionDescription": {"type": "pranswer", "sdp": ""}})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "decoding_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracks_new_push_and_pull_then_renegotiate() {
    let sfu = Sfu::start(|_| {}).await;
    let (pub_id, _, _) = publisher(&sfu).await;

    // Pull both tracks plus one that does not exist.
    let sub_id = sfu.new_session().await;
    let (status, body) = sfu
        .call(
            Method::POST,
            &format!("sessions/{sub_id}/tracks/new"),
            Some(json!({"tracks": [
                {"location": "remote", "sessionId": pub_id, "trackName": "mic"},
                {"location": "remote", "sessionId": pub_id, "trackName": "cam",
                 "simulcast": {"preferredRid": "h"}},
                {"location": "remote", "sessionId": pub_id, "trackName": "nope"},
            ]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["requiresImmediateRenegotiation"], true);
    assert_eq!(body["sessionDescription"]["type"], "offer");
    let tracks = body["tracks"].as_array().unwrap();
    assert_eq!(tracks.len(), 3);
    assert_eq!(tracks[0]["sessionId"], pub_id.as_str());
    assert_eq!(tracks[0]["trackName"], "mic");
    assert!(tracks[0]["mid"].is_string());
    assert!(tracks[0].get("errorCode").is_none());
    assert!(tracks[1]["mid"].is_string());
    assert_ne!(tracks[0]["mid"], tracks[1]["mid"]);
    assert_eq!(tracks[2]["errorCode"], "not_found");
    assert!(tracks[2].get("mid").is_none());

    // Before answering, the pulled tracks are initializing.
    let (status, state) = sfu
        .call(Method::GET, &format!("sessions/{sub_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        state["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"] == "initializing")
    );

    // Pulling more before answering is refused per track.
    let (status, body2) = sfu
        .call(
            Method::POST,
            &format!("sessions/{sub_id}/tracks/new"),
            Some(json!({"tracks": [{"location": "remote", "sessionId": pub_id, "trackName": "mic"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body2["tracks"][0]["errorCode"], "renegotiation_pending");

    // The client answers.
    let mut client = Rtc::builder().set_rtp_mode(true).build(Instant::now());
    let offer =
        SdpOffer::from_sdp_string(body["sessionDescription"]["sdp"].as_str().unwrap()).unwrap();
    let answer = client.sdp_api().accept_offer(offer).unwrap();
    let path = format!("sessions/{sub_id}/renegotiate");
    let (status, body) = sfu
        .call(
            Method::PUT,
            &path,
            Some(json!({"sessionDescription": {"type": "answer", "sdp": answer.to_sdp_string()}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));

    // Now active, with the publisher's session id.
    let (_, state) = sfu
        .call(Method::GET, &format!("sessions/{sub_id}"), None)
        .await;
    let tracks = state["tracks"].as_array().unwrap();
    assert_eq!(tracks.len(), 2, "{state}");
    for t in tracks {
        assert_eq!(t["location"], "remote");
        assert_eq!(t["status"], "active");
        assert_eq!(t["sessionId"], pub_id.as_str());
    }
    let (_, state) = sfu
        .call(Method::GET, &format!("sessions/{pub_id}"), None)
        .await;
    let names: Vec<&str> = state["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["location"], "local");
            assert_eq!(t["status"], "active");
            t["trackName"].as_str().unwrap()
        })
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"mic") && names.contains(&"cam"));
    assert_eq!(sfu.metrics().await.get("satsuma_sfu_subscriptions"), 2.0);
    assert_eq!(sfu.metrics().await.get("satsuma_sfu_tracks"), 2.0);

    // Renegotiate errors.
    let (status, body) = sfu
        .call(
            Method::PUT,
            &path,
            Some(json!({"sessionDescription": {"type": "answer", "sdp": answer.to_sdp_string()}})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "no_pending_offer");
    let (status, body) = sfu
        .call(
            Method::PUT,
            &path,
            Some(json!({"sessionDescription": {"type": "answer", "sdp": "nonsense"}})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_sdp");
    let (status, body) = sfu.call(Method::PUT, &path, None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "decoding_error");
    let (status, body) = sfu.call(Method::PUT, &path, Some(json!({"x": 1}))).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "decoding_error");
    let (status, body) = sfu
        .call(
            Method::PUT,
            "sessions/00000000000000000000000000000000/renegotiate",
            Some(json!({})),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "session_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracks_new_rejects_bad_requests() {
    let sfu = Sfu::start(|_| {}).await;
    let id = sfu.new_session().await;
    let path = format!("sessions/{id}/tracks/new");

    // Unknown and malformed session ids.
    for bad in ["0123456789abcdef0123456789abcdef", "not-a-session", "%20"] {
        let (status, body) = sfu
            .call(
                Method::POST,
                &format!("sessions/{bad}/tracks/new"),
                Some(json!({"tracks": []})),
            )
            .await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "session_not_found");
    }
    // Sessions are per app.
    let (status, body) = sfu
        .raw(
            Method::POST,
            &format!("/v1/apps/other/sessions/{id}/tracks/new"),
            Some("other-secret"),
            Some("{\"tracks\":[]}".into()),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "session_not_found");

    // Bodies.
    let (status, body) = sfu.call(Method::POST, &path, None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "decoding_error");
    let (status, body) = sfu
        .call(Method::POST, &path, Some(json!({"tracks": "x"})))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "decoding_error");
    let (status, body) = sfu
        .call(Method::POST, &path, Some(json!({"tracks": []})))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_params");
    let many: Vec<Value> = (0..65)
        .map(|i| json!({"location": "remote", "sessionId": id, "trackName": format!("t{i}")}))
        .collect();
    let (status, body) = sfu
        .call(Method::POST, &path, Some(json!({"tracks": many})))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "too_many_tracks");
    let (status, body) = sfu
        .call(
            Method::POST,
            &path,
            Some(
                json!({"sessionDescription": {"type": "offer", "sdp": "bogus"},
                        "tracks": [{"location": "local", "mid": "0", "trackName": "a"}]}),
            ),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_sdp");
    let (status, body) = sfu
        .call(
            Method::POST,
            &path,
            Some(
                json!({"sessionDescription": {"type": "answer", "sdp": "v=0"},
                        "tracks": []}),
            ),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_params");

    // Per-track errors, with a valid offer.
    let (_rtc, _pending, offer, a, v) = pushing_client();
    let (status, body) = sfu
        .call(
            Method::POST,
            &path,
            Some(json!({
                "sessionDescription": {"type": "offer", "sdp": offer},
                "tracks": [
                    {"location": "local", "mid": a.to_string(), "trackName": "mic"},
                    {"location": "local", "mid": v.to_string(), "trackName": "mic"},
                    {"location": "local", "mid": "nosuchmid", "trackName": "x"},
                    {"location": "local", "trackName": "no-mid"},
                    {"mid": a.to_string(), "trackName": "no-location"},
                    {"location": "remote", "sessionId": id, "trackName": "mic"},
                ]
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sessionDescription"]["type"], "answer");
    let t = body["tracks"].as_array().unwrap();
    assert_eq!(t.len(), 6);
    assert!(t[0].get("errorCode").is_none(), "{body}");
    assert_eq!(t[0]["mid"], a.to_string());
    assert_eq!(t[1]["errorCode"], "duplicate_track_name");
    assert_eq!(t[2]["errorCode"], "invalid_params");
    assert_eq!(t[3]["errorCode"], "invalid_params");
    assert_eq!(t[4]["errorCode"], "invalid_params");
    // A remote track together with an offer needs a mid in that offer.
    assert_eq!(t[5]["errorCode"], "invalid_params");

    // Pushing without an offer is a per-track error.
    let (status, body) = sfu
        .call(
            Method::POST,
            &path,
            Some(json!({"tracks": [{"location": "local", "mid": "1", "trackName": "cam"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["tracks"][0]["errorCode"], "invalid_params");
    assert_eq!(body["requiresImmediateRenegotiation"], false);
    // Remote entries need sessionId and trackName.
    let (_, body) = sfu
        .call(
            Method::POST,
            &path,
            Some(json!({"tracks": [{"location": "remote", "trackName": "x"}]})),
        )
        .await;
    assert_eq!(body["tracks"][0]["errorCode"], "invalid_params");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracks_update_and_close() {
    let sfu = Sfu::start(|_| {}).await;
    let (pub_id, pub_audio, _) = publisher(&sfu).await;
    let (pub2, _, _) = publisher(&sfu).await;
    let sub_id = sfu.new_session().await;
    let (_, body) = sfu
        .call(
            Method::POST,
            &format!("sessions/{sub_id}/tracks/new"),
            Some(json!({"tracks": [
                {"location": "remote", "sessionId": pub_id, "trackName": "mic"},
                {"location": "remote", "sessionId": pub_id, "trackName": "cam"},
            ]})),
        )
        .await;
    let audio_mid = body["tracks"][0]["mid"].as_str().unwrap().to_string();
    let video_mid = body["tracks"][1]["mid"].as_str().unwrap().to_string();
    let mut client = Rtc::builder().set_rtp_mode(true).build(Instant::now());
    let offer =
        SdpOffer::from_sdp_string(body["sessionDescription"]["sdp"].as_str().unwrap()).unwrap();
    let answer = client.sdp_api().accept_offer(offer).unwrap();
    let (status, _) = sfu
        .call(
            Method::PUT,
            &format!("sessions/{sub_id}/renegotiate"),
            Some(json!({"sessionDescription": {"type": "answer", "sdp": answer.to_sdp_string()}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Update: a new simulcast preference, a switch to another publisher's track of the same kind,
    // and bad entries.
    let upath = format!("sessions/{sub_id}/tracks/update");
    let (status, body) = sfu
        .call(
            Method::PUT,
            &upath,
            Some(json!({"tracks": [
                {"location": "remote", "sessionId": pub_id, "trackName": "cam", "mid": video_mid,
                 "simulcast": {"preferredRid": "l"}},
                {"location": "remote", "sessionId": pub2, "trackName": "mic", "mid": audio_mid},
                {"location": "remote", "sessionId": pub2, "trackName": "cam", "mid": audio_mid},
                {"location": "remote", "sessionId": pub_id, "trackName": "mic", "mid": "99"},
                {"location": "local", "trackName": "mic", "mid": audio_mid},
                {"location": "remote", "sessionId": pub_id, "trackName": "gone", "mid": audio_mid},
            ]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["requiresImmediateRenegotiation"], false);
    let t = body["tracks"].as_array().unwrap();
    assert!(t[0].get("errorCode").is_none(), "{body}");
    assert!(t[1].get("errorCode").is_none(), "{body}");
    assert_eq!(t[2]["errorCode"], "invalid_params", "kind mismatch: {body}");
    assert_eq!(t[3]["errorCode"], "not_found");
    assert_eq!(t[4]["errorCode"], "invalid_params");
    assert_eq!(t[5]["errorCode"], "not_found");
    let (_, state) = sfu
        .call(Method::GET, &format!("sessions/{sub_id}"), None)
        .await;
    let audio = state["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["mid"] == audio_mid.as_str())
        .unwrap()
        .clone();
    assert_eq!(audio["sessionId"], pub2.as_str(), "{state}");
    assert_eq!(audio["status"], "active");
    let (status, body) = sfu
        .call(Method::PUT, &upath, Some(json!({"tracks": []})))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_params");
    let (status, body) = sfu.call(Method::PUT, &upath, Some(json!([1, 2]))).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "decoding_error");

    // Close: a forced close of a pulled track, then closing it again, then an unknown mid.
    let cpath = format!("sessions/{sub_id}/tracks/close");
    let (status, body) = sfu
        .call(
            Method::PUT,
            &cpath,
            Some(json!({"tracks": [{"mid": video_mid}], "force": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["requiresImmediateRenegotiation"], false);
    assert!(body["tracks"][0].get("errorCode").is_none());
    assert!(body.get("sessionDescription").is_none());
    let (_, body) = sfu
        .call(
            Method::PUT,
            &cpath,
            Some(json!({"tracks": [{"mid": video_mid}, {"mid": "77"}, {}], "force": true})),
        )
        .await;
    assert_eq!(body["tracks"][0]["errorCode"], "close_track_error");
    assert_eq!(body["tracks"][1]["errorCode"], "close_track_error");
    assert_eq!(body["tracks"][2]["errorCode"], "invalid_params");
    let (_, state) = sfu
        .call(Method::GET, &format!("sessions/{sub_id}"), None)
        .await;
    let video = state["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["mid"] == video_mid.as_str())
        .unwrap()
        .clone();
    assert_eq!(video["status"], "inactive");

    // Closing the publisher's track without an offer (not forced): the SFU offers the change.
    let (status, body) = sfu
        .call(
            Method::PUT,
            &format!("sessions/{pub_id}/tracks/close"),
            Some(json!({"tracks": [{"mid": pub_audio}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["tracks"][0].get("errorCode").is_none(), "{body}");
    assert_eq!(body["requiresImmediateRenegotiation"], true);
    assert_eq!(body["sessionDescription"]["type"], "offer");
    // The published name is gone: pulling it fails.
    let other = sfu.new_session().await;
    let (_, body) = sfu
        .call(
            Method::POST,
            &format!("sessions/{other}/tracks/new"),
            Some(json!({"tracks": [{"location": "remote", "sessionId": pub_id, "trackName": "mic"}]})),
        )
        .await;
    assert_eq!(body["tracks"][0]["errorCode"], "not_found", "{body}");

    let (status, body) = sfu
        .call(Method::PUT, &cpath, Some(json!({"tracks": []})))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_params");
    let (status, body) = sfu
        .call(
            Method::PUT,
            &cpath,
            Some(json!({"tracks": [{"mid": "0"}], "sessionDescription": {"type": "answer", "sdp": "v=0"}})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_params");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_session_and_rate_limit() {
    let sfu = Sfu::start(|c| c.session_requests_per_second = 50).await;
    let id = sfu.new_session().await;
    let (status, body) = sfu.call(Method::GET, &format!("sessions/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"tracks": []}));
    let (status, body) = sfu
        .call(
            Method::GET,
            "sessions/ffffffffffffffffffffffffffffffff",
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "session_not_found");
    let (status, body) = sfu
        .raw(
            Method::GET,
            &format!("/v1/apps/{APP}/sessions/{id}"),
            Some("bad"),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");

    // A burst well above 50/s on one session gets 429s; another session is unaffected.
    let mut limited = 0;
    for _ in 0..80 {
        let (status, body) = sfu.call(Method::GET, &format!("sessions/{id}"), None).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(body["errorCode"], "rate_limited");
            limited += 1;
        }
    }
    assert!(limited >= 20, "only {limited} of 80 requests were limited");
    let other = sfu.new_session().await;
    let (status, _) = sfu
        .call(Method::GET, &format!("sessions/{other}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tracks_and_unconnected_sessions_are_collected() {
    let sfu = Sfu::start(|c| {
        c.track_timeout = Duration::from_millis(800);
        c.session_timeout = Duration::from_millis(2500);
    })
    .await;
    let (pub_id, _, _) = publisher(&sfu).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The tracks got no media: collected, the session is still there.
    let (status, state) = sfu
        .call(Method::GET, &format!("sessions/{pub_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let tracks = state["tracks"].as_array().unwrap();
    assert_eq!(tracks.len(), 2);
    assert!(tracks.iter().all(|t| t["status"] == "inactive"), "{state}");
    assert!(
        sfu.metrics()
            .await
            .get("satsuma_sfu_tracks_collected_total")
            >= 2.0
    );
    let other = sfu.new_session().await;
    let (_, body) = sfu
        .call(
            Method::POST,
            &format!("sessions/{other}/tracks/new"),
            Some(json!({"tracks": [{"location": "remote", "sessionId": pub_id, "trackName": "cam"}]})),
        )
        .await;
    assert_eq!(body["tracks"][0]["errorCode"], "not_found");

    // No transport ever connected: the session is collected.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (status, body) = sfu
        .call(Method::GET, &format!("sessions/{pub_id}"), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "session_not_found");
    assert!(
        sfu.metrics()
            .await
            .get("satsuma_sfu_sessions_collected_total")
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_session_closes_it_and_ends_its_tracks() {
    let sfu = Sfu::start(|_| {}).await;
    let (pub_id, _, _) = publisher(&sfu).await;
    let sub_id = sfu.new_session().await;
    let (status, body) = sfu
        .call(
            Method::POST,
            &format!("sessions/{sub_id}/tracks/new"),
            Some(json!({"tracks": [
                {"location": "remote", "sessionId": pub_id, "trackName": "mic"},
                {"location": "remote", "sessionId": pub_id, "trackName": "cam"},
            ]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut client = Rtc::builder().set_rtp_mode(true).build(Instant::now());
    let offer =
        SdpOffer::from_sdp_string(body["sessionDescription"]["sdp"].as_str().unwrap()).unwrap();
    let answer = client.sdp_api().accept_offer(offer).unwrap();
    let (status, body) = sfu
        .call(
            Method::PUT,
            &format!("sessions/{sub_id}/renegotiate"),
            Some(json!({"sessionDescription": {"type": "answer", "sdp": answer.to_sdp_string()}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, state) = sfu
        .call(Method::GET, &format!("sessions/{sub_id}"), None)
        .await;
    assert!(
        state["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"] == "active"),
        "{state}"
    );

    // Wrong secret, unknown and malformed ids: refused, nothing deleted.
    let (status, body) = sfu
        .raw(
            Method::DELETE,
            &format!("/v1/apps/{APP}/sessions/{pub_id}"),
            Some("bad"),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = sfu
        .raw(
            Method::DELETE,
            &format!("/v1/apps/other/sessions/{pub_id}"),
            Some("other-secret"),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "session_not_found");
    for unknown in ["ffffffffffffffffffffffffffffffff", "not-a-session"] {
        let (status, body) = sfu
            .call(Method::DELETE, &format!("sessions/{unknown}"), None)
            .await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "session_not_found");
    }
    let (status, _) = sfu
        .call(Method::GET, &format!("sessions/{pub_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let before = sfu.metrics().await.get("satsuma_sfu_sessions");

    // The owner's app deletes it: gone at once, its tracks end for the subscriber.
    let (status, body) = sfu
        .call(Method::DELETE, &format!("sessions/{pub_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
    let (status, body) = sfu
        .call(Method::GET, &format!("sessions/{pub_id}"), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "session_not_found");
    let (status, body) = sfu
        .call(Method::DELETE, &format!("sessions/{pub_id}"), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "session_not_found");
    assert_eq!(
        sfu.metrics().await.get("satsuma_sfu_sessions"),
        before - 1.0
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, state) = sfu
            .call(Method::GET, &format!("sessions/{sub_id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        let tracks = state["tracks"].as_array().unwrap();
        assert_eq!(tracks.len(), 2, "{state}");
        if tracks.iter().all(|t| t["status"] == "inactive") {
            break;
        }
        assert!(Instant::now() < deadline, "subscriber legs still {state}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its tracks cannot be pulled any more.
    let (_, body) = sfu
        .call(
            Method::POST,
            &format!("sessions/{sub_id}/tracks/new"),
            Some(json!({"tracks": [{"location": "remote", "sessionId": pub_id, "trackName": "cam"}]})),
        )
        .await;
    assert_eq!(body["tracks"][0]["errorCode"], "not_found", "{body}");
    assert!(
        sfu.metrics().await.get(
            "satsuma_sfu_api_requests_total{route=\"/v1/apps/{app_id}/sessions/{session_id}\",status=\"200\"}"
        ) >= 1.0
    );
}
