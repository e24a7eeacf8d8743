//! API conformance of Cloudflare Realtime's TURN credentials route,
//! `POST /v1/turn/keys/{keyId}/credentials/generate-ice-servers`, against a real server on
//! 127.0.0.1: authentication, TTL bounds, error bodies, and credentials that a TURN server with
//! the shared secret (coturn `use-auth-secret`) accepts until now + ttl.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use satsuma_common::turn::{TurnSecret, verify};
use serde_json::{Value, json};

const KEY: &str = "turnkey1";
const TOKEN: &str = "turn-key-token-0123456789";
const SHARED: &str = "coturn-static-auth-secret";

struct Sfu {
    handle: satsuma_sfu::ServerHandle,
    http: reqwest::Client,
}

impl Sfu {
    async fn start(adjust: impl FnOnce(&mut satsuma_sfu::Config)) -> Sfu {
        let mut config = satsuma_sfu::Config {
            http_bind: "127.0.0.1:0".parse().unwrap(),
            udp_bind: "127.0.0.1:0".parse().unwrap(),
            shards: 1,
            ..Default::default()
        };
        config.turn_keys = vec![satsuma_sfu::config::TurnKey {
            id: KEY.into(),
            token: TOKEN.into(),
        }];
        config.turn = satsuma_sfu::config::turn_servers(
            vec![
                "stun:turn.example.test:3478".into(),
                "turn:turn.example.test:3478?transport=udp".into(),
                "turn:turn.example.test:3478?transport=tcp".into(),
                "turns:turn.example.test:443?transport=tcp".into(),
            ],
            Some(SHARED.into()),
        )
        .unwrap();
        adjust(&mut config);
        Sfu {
            handle: satsuma_sfu::Server::bind(config).await.unwrap(),
            http: reqwest::Client::new(),
        }
    }

    /// `POST …/generate-ice-servers` for `key` with `token` (if any) and a raw body.
    async fn generate(
        &self,
        key: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let url = format!(
            "http://{}/v1/turn/keys/{key}/credentials/generate-ice-servers",
            self.handle.http_addr()
        );
        let mut req = self.http.post(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_requests_get_credentials_that_verify_until_now_plus_ttl() {
    let sfu = Sfu::start(|_| {}).await;
    for ttl in [1u64, 600, 86_400] {
        let before = unix_now();
        let (status, body) = sfu
            .generate(KEY, Some(TOKEN), Some(&json!({ "ttl": ttl }).to_string()))
            .await;
        let after = unix_now();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let servers = body["iceServers"].as_array().expect("iceServers array");
        assert_eq!(servers.len(), 2, "{body}");
        assert_eq!(servers[0], json!({"urls": ["stun:turn.example.test:3478"]}));
        let turn = &servers[1];
        assert_eq!(
            turn["urls"],
            json!([
                "turn:turn.example.test:3478?transport=udp",
                "turn:turn.example.test:3478?transport=tcp",
                "turns:turn.example.test:443?transport=tcp",
            ])
        );
        let username = turn["username"].as_str().unwrap();
        let credential = turn["credential"].as_str().unwrap();
        let (expiry, id) = username.split_once(':').unwrap();
        let expiry: u64 = expiry.parse().unwrap();
        assert!(
            (before + ttl..=after + ttl).contains(&expiry),
            "expiry {expiry} is not now + {ttl} (now {before}..{after})"
        );
        assert!(id.starts_with(&format!("{KEY}.")), "{username}");
        // What coturn does with use-auth-secret: HMAC-SHA1 over the username, and the expiry.
        let secret = TurnSecret::new(SHARED).unwrap();
        assert_eq!(verify(&secret, username, credential, after), Ok(expiry));
        assert!(verify(&secret, username, credential, expiry + 1).is_err());
        let other = TurnSecret::new("not-the-shared-secret").unwrap();
        assert!(verify(&other, username, credential, after).is_err());
    }
    // Two calls give two different usernames (each request its own credential).
    let (_, a) = sfu.generate(KEY, Some(TOKEN), Some(r#"{"ttl":60}"#)).await;
    let (_, b) = sfu.generate(KEY, Some(TOKEN), Some(r#"{"ttl":60}"#)).await;
    assert_ne!(
        a["iceServers"][1]["username"],
        b["iceServers"][1]["username"]
    );
    sfu.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_and_unknown_keys() {
    let sfu = Sfu::start(|_| {}).await;
    let body = Some(r#"{"ttl": 60}"#);
    let (s, b) = sfu.generate(KEY, None, body).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, b) = sfu.generate(KEY, Some("wrong-token"), body).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    // An app secret is not a TURN key token.
    let (s, b) = sfu.generate(KEY, Some("satsuma-secret"), body).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, b) = sfu.generate("nokey", Some(TOKEN), body).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "turn_key_not_found");
    // A TURN key token does not open the apps API.
    let resp = sfu
        .http
        .post(format!(
            "http://{}/v1/apps/{KEY}/sessions/new",
            sfu.handle.http_addr()
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Other methods on the route.
    let resp = sfu
        .http
        .get(format!(
            "http://{}/v1/turn/keys/{KEY}/credentials/generate-ice-servers",
            sfu.handle.http_addr()
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    sfu.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_must_be_a_whole_number_of_seconds_up_to_a_day() {
    let sfu = Sfu::start(|_| {}).await;
    for (body, code, mentions) in [
        (None, "decoding_error", "required"),
        (Some(""), "decoding_error", "required"),
        (Some("{not json"), "decoding_error", "decoded"),
        (Some("[60]"), "decoding_error", "object"),
        (Some("{}"), "invalid_params", "ttl is required"),
        (Some(r#"{"ttl": 0}"#), "invalid_params", "from 1 to 86400"),
        (Some(r#"{"ttl": -60}"#), "invalid_params", "from 1 to 86400"),
        (
            Some(r#"{"ttl": 86401}"#),
            "invalid_params",
            "from 1 to 86400",
        ),
        (
            Some(r#"{"ttl": 172800}"#),
            "invalid_params",
            "from 1 to 86400",
        ),
        (Some(r#"{"ttl": 2.5}"#), "invalid_params", "whole number"),
        (Some(r#"{"ttl": "60"}"#), "invalid_params", "non-number"),
        (Some(r#"{"ttl": true}"#), "invalid_params", "non-number"),
    ] {
        let (s, b) = sfu.generate(KEY, Some(TOKEN), body).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, code);
        let description = b["errorDescription"].as_str().unwrap();
        assert!(
            description.contains(mentions),
            "{body:?}: {description:?} should mention {mentions:?}"
        );
    }
    // The auth check comes first: a bad body with a bad token is a 401.
    let (s, b) = sfu.generate(KEY, Some("wrong"), Some("{}")).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    sfu.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_turn_keys_every_key_is_unknown() {
    let sfu = Sfu::start(|c| {
        c.turn_keys.clear();
        c.turn = Default::default();
    })
    .await;
    let (s, b) = sfu.generate(KEY, Some(TOKEN), Some(r#"{"ttl":60}"#)).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "turn_key_not_found");
    sfu.handle.shutdown().await;
}
