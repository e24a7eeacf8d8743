//! Tokens for real deployments, against a real coordinator on 127.0.0.1: the token API of app
//! backends (API key + secret), the JWT checks (`exp`, `nbf`, `iss`, `aud`), `/token` only in
//! dev mode, host-made invites that work until revoked or expired, and secrets checked at start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Client, expect_close, raw, send_json, start};
use satsuma_coordinator::auth::{Claims, unix_now};
use satsuma_coordinator::protocol::{ClientMessage, PROTOCOL_VERSION, close};
use satsuma_coordinator::{Config, Server, ServerHandle};
use serde_json::{Value, json};

const KEY_ID: &str = "backend";
const KEY_SECRET: &str = "backend-secret-0123456789abcdef0123";

fn prod_config() -> Config {
    Config {
        dev: false,
        jwt_secret: "a-production-secret-0123456789abcdef".into(),
        jwt_leeway_s: 0,
        api_keys: vec![format!("{KEY_ID}:{KEY_SECRET}").parse().unwrap()],
        ..Config::dev()
    }
}

async fn hello_close(server: &ServerHandle, room: &str, token: &str) -> (u16, String) {
    let mut ws = raw(server, room).await;
    send_json(
        &mut ws,
        &ClientMessage::Hello {
            v: PROTOCOL_VERSION,
            token: Some(token.to_owned()),
            resume: None,
            test_visible_only_to: None,
        },
    )
    .await;
    expect_close(&mut ws).await
}

async fn post(server: &ServerHandle, path: &str, auth: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", server.http_url()))
        .body(body.to_string());
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn basic(id: &str, secret: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_minted_tokens_join_and_wrong_secrets_get_401() {
    let server = start(prod_config()).await;
    let auth = basic(KEY_ID, KEY_SECRET);
    let (status, body) = post(
        &server,
        "/api/v1/tokens",
        Some(&auth),
        &json!({"room": "standup", "identity": "alice@example.org", "name": "Alice",
                "grants": {"publish": true, "subscribe": true, "host": true}, "ttl_s": 600}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().unwrap();
    let expires_at = body["expires_at"].as_u64().unwrap();
    let now = unix_now();
    assert!((now + 590..=now + 610).contains(&expires_at), "{body}");
    assert_eq!(body["path"], format!("/#token={token}"));
    // The token joins (hello → welcome).
    let alice = Client::join_with_token(&server, "standup", token).await;
    assert_eq!(alice.id, 1);
    // ... and only that room.
    let (code, reason) = hello_close(&server, "other", token).await;
    assert_eq!(
        (code, reason.as_str()),
        (close::UNAUTHORIZED, "token is for another room")
    );

    // Bearer ID:SECRET works too; the default TTL is 6 h.
    let (status, body) = post(
        &server,
        "/api/v1/tokens",
        Some(&format!("Bearer {KEY_ID}:{KEY_SECRET}")),
        &json!({"room": "standup", "identity": "bob"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["expires_at"].as_u64().unwrap() >= now + 6 * 3600 - 5);
    Client::join_with_token(&server, "standup", body["token"].as_str().unwrap()).await;

    // Wrong secret, unknown key, no credentials, a join token as credentials: 401 JSON.
    let good_body = json!({"room": "standup", "identity": "mallory"});
    for auth in [
        Some(basic(KEY_ID, "backend-secret-0123456789abcdef0124")),
        Some(basic(KEY_ID, "")),
        Some(basic("nobody", KEY_SECRET)),
        Some(format!("Bearer {KEY_ID}:wrong")),
        Some(format!("Bearer {token}")),
        Some("Digest abc".to_owned()),
        Some("Basic !!!".to_owned()),
        None,
    ] {
        let (status, body) = post(&server, "/api/v1/tokens", auth.as_deref(), &good_body).await;
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert_eq!(body["error"], "unauthorized", "{auth:?}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(body.get("token").is_none());
    }
    // Backends get a Basic challenge with the 401.
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/tokens", server.http_url()))
        .body(good_body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Basic realm=\"satsuma\"")
    );
    // Without a public URL the reply has no url; with one, the link is under it.
    assert_eq!(body["url"], Value::Null);
    let public = start(Config {
        budgets: satsuma_coordinator::config::Budgets {
            public_url: Some("https://meet.example.com/".into()),
            ..prod_config().budgets
        },
        ..prod_config()
    })
    .await;
    let (status, minted) = post(
        &public,
        "/api/v1/tokens",
        Some(&auth),
        &json!({"room": "standup", "identity": "carol"}),
    )
    .await;
    assert_eq!(status, 200, "{minted}");
    assert_eq!(
        minted["url"],
        format!(
            "https://meet.example.com/#token={}",
            minted["token"].as_str().unwrap()
        )
    );
    public.shutdown().await;
    // Bad bodies: 400 JSON.
    for bad in [
        json!({"identity": "x"}),
        json!({"room": "standup"}),
        json!({"room": "bad room", "identity": "x"}),
        json!({"room": "standup", "identity": "x", "ttl_s": 0}),
        json!({"room": "standup", "identity": "x", "ttl_s": 24 * 3600 + 1}),
        json!({"room": "standup", "identity": "x", "grants": {"admin": true}}),
        json!({"room": "standup", "identity": "x", "perms": ["host"]}),
        json!({"room": "standup", "identity": "", "name": "x"}),
        json!({"room": "standup", "identity": "x", "name": "n".repeat(65)}),
        json!("not an object"),
    ] {
        let (status, body) = post(&server, "/api/v1/tokens", Some(&auth), &bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "bad_request", "{bad}: {body}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_not_yet_valid_and_foreign_tokens_are_refused_distinctly() {
    let server = start(prod_config()).await;
    let now = unix_now();
    let base = Claims {
        sub: "alice".into(),
        room: "r".into(),
        exp: now + 600,
        ..Claims::default()
    };
    let valid = server.mint_token(&base).unwrap();
    Client::join_with_token(&server, "r", &valid).await;
    let cases = [
        (
            Claims {
                exp: now - 60,
                ..base.clone()
            },
            "token expired",
        ),
        (
            Claims {
                nbf: Some(now + 600),
                ..base.clone()
            },
            "token not yet valid",
        ),
        (
            Claims {
                aud: Some("another-app".into()),
                ..base.clone()
            },
            "token is for another audience",
        ),
        (
            Claims {
                iss: Some("someone-else".into()),
                ..base.clone()
            },
            "token has an unknown issuer",
        ),
    ];
    for (claims, reason) in cases {
        let t = server.mint_token(&claims).unwrap();
        let (code, got) = hello_close(&server, "r", &t).await;
        assert_eq!(
            (code, got.as_str()),
            (close::UNAUTHORIZED, reason),
            "{claims:?}"
        );
    }
    // Over HTTP (a host's token making an invite) the same causes are 401 JSON with distinct codes.
    let host = |c: Claims| Claims {
        perms: vec!["host".into()],
        ..c
    };
    for (claims, code) in [
        (
            Claims {
                exp: now - 60,
                ..base.clone()
            },
            "token_expired",
        ),
        (
            Claims {
                nbf: Some(now + 600),
                ..base.clone()
            },
            "token_not_yet_valid",
        ),
        (
            Claims {
                aud: Some("another-app".into()),
                ..base.clone()
            },
            "wrong_audience",
        ),
    ] {
        let t = server.mint_token(&host(claims)).unwrap();
        let (status, body) = post(
            &server,
            "/api/v1/invites",
            Some(&format!("Bearer {t}")),
            &json!({}),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some(code)),
            "{body}"
        );
    }
    let t = server.mint_token(&host(base.clone())).unwrap();
    let (status, body) = post(
        &server,
        "/api/v1/invites",
        Some(&format!("Bearer {t}")),
        &json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // A configured audience and issuer are what the server mints and requires.
    let custom = start(Config {
        jwt_audience: "meet".into(),
        ..prod_config()
    })
    .await;
    let t = custom.mint_token(&base).unwrap();
    Client::join_with_token(&custom, "r", &t).await;
    let (code, got) = hello_close(&server, "r", &t).await;
    assert_eq!(
        (code, got.as_str()),
        (close::UNAUTHORIZED, "token is for another audience")
    );
    let other_issuer = start(Config {
        jwt_issuer: "meet.example.com".into(),
        ..prod_config()
    })
    .await;
    let (code, got) = hello_close(&other_issuer, "r", &valid).await;
    assert_eq!(
        (code, got.as_str()),
        (close::UNAUTHORIZED, "token has an unknown issuer")
    );
    let t = other_issuer.mint_token(&base).unwrap();
    Client::join_with_token(&other_issuer, "r", &t).await;
    other_issuer.shutdown().await;
    // A default-audience token signed with the same secret is for another audience there.
    let (code, got) = hello_close(&custom, "r", &valid).await;
    assert_eq!(
        (code, got.as_str()),
        (close::UNAUTHORIZED, "token is for another audience")
    );
    custom.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_token_endpoint_exists_only_in_dev_mode() {
    let body = json!({"room": "a"});
    let server = start(prod_config()).await;
    let (status, reply) = post(&server, "/token", None, &body).await;
    assert_eq!(status, 404, "POST /token must not exist without --dev");
    assert_eq!(reply["error"], "not_found");
    let status = reqwest::get(format!("{}/token", server.http_url()))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
    let config: Value = reqwest::get(format!("{}/client-config.json", server.http_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["dev"], false);
    server.shutdown().await;

    let dev = start(Config::dev()).await;
    let (status, reply) = post(&dev, "/token", None, &body).await;
    assert_eq!(status, 200);
    Client::join_with_token(&dev, "a", reply["token"].as_str().unwrap()).await;
    let config: Value = reqwest::get(format!("{}/client-config.json", dev.http_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["dev"], true);
    dev.shutdown().await;
}

fn host_token(server: &ServerHandle, room: &str) -> String {
    server
        .mint_token(&Claims {
            sub: "host".into(),
            room: room.into(),
            perms: vec!["publish".into(), "subscribe".into(), "host".into()],
            exp: unix_now() + 600,
            ..Claims::default()
        })
        .unwrap()
}

async fn redeem(server: &ServerHandle, invite: &str, name: &str) -> (u16, Value) {
    post(
        server,
        "/api/v1/invites/redeem",
        None,
        &json!({"invite": invite, "name": name}),
    )
    .await
}

async fn revoke(server: &ServerHandle, id: &str, auth: &str) -> u16 {
    reqwest::Client::new()
        .delete(format!("{}/api/v1/invites/{id}", server.http_url()))
        .header("authorization", auth)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_works_until_it_is_revoked() {
    let server = start(prod_config()).await;
    let host_jwt = host_token(&server, "team");
    let host = format!("Bearer {host_jwt}");
    // The host is in the room first (so the guests below are not first-joiner hosts).
    let _host_client = Client::join_with_token(&server, "team", &host_jwt).await;
    let (status, inv) = post(
        &server,
        "/api/v1/invites",
        Some(&host),
        &json!({"ttl_s": 3600}),
    )
    .await;
    assert_eq!(status, 200, "{inv}");
    let id = inv["invite_id"].as_str().unwrap().to_owned();
    let invite = inv["invite"].as_str().unwrap().to_owned();
    assert_eq!(inv["room"], "team");
    assert_eq!(inv["path"], format!("/#invite={invite}"));
    assert_eq!(
        inv["grants"],
        json!({"publish": true, "subscribe": true, "host": false})
    );
    // The invite is not a join token.
    let (code, reason) = hello_close(&server, "team", &invite).await;
    assert_eq!(
        (code, reason.as_str()),
        (close::UNAUTHORIZED, "token is for another audience")
    );

    // Redeemed twice (two guests); both join, without host rights.
    let (status, a) = redeem(&server, &invite, "Guest A").await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["room"], "team");
    let guest = Client::join_with_token(&server, "team", a["token"].as_str().unwrap()).await;
    let (status, b) = redeem(&server, &invite, "Guest B").await;
    assert_eq!(status, 200, "{b}");
    let unused = b["token"].as_str().unwrap().to_owned();

    // A guest cannot make invites or revoke this one (403), with either credential.
    let guest_cred = format!("Bearer {}", guest.resume_token);
    let (status, body) = post(&server, "/api/v1/invites", Some(&guest_cred), &json!({})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(revoke(&server, &id, &guest_cred).await, 403);
    let guest_token = format!("Bearer {}", a["token"].as_str().unwrap());
    assert_eq!(revoke(&server, &id, &guest_token).await, 403);
    // A host of another room revokes only in its own room: this invite keeps working.
    let other_host = format!("Bearer {}", host_token(&server, "elsewhere"));
    assert_eq!(revoke(&server, &id, &other_host).await, 200);
    assert_eq!(redeem(&server, &invite, "Guest C").await.0, 200);
    // ... and cannot make invites for this room.
    let (status, _) = post(
        &server,
        "/api/v1/invites",
        Some(&other_host),
        &json!({"room": "team"}),
    )
    .await;
    assert_eq!(status, 403);

    // The host revokes it: no more redemptions, and a token redeemed before but not yet used
    // no longer joins. The guest already in the room stays.
    assert_eq!(revoke(&server, &id, &host).await, 200);
    let (status, body) = redeem(&server, &invite, "Guest D").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invite_revoked");
    let (code, reason) = hello_close(&server, "team", &unused).await;
    assert_eq!(
        (code, reason.as_str()),
        (close::UNAUTHORIZED, "invite revoked")
    );
    drop(guest);

    // A host invite (role host) made by an app backend with its API key gives host rights.
    let key = basic(KEY_ID, KEY_SECRET);
    let (status, inv) = post(
        &server,
        "/api/v1/invites",
        Some(&key),
        &json!({"room": "team", "role": "host"}),
    )
    .await;
    assert_eq!(status, 200, "{inv}");
    assert_eq!(inv["grants"]["host"], true);
    let (_, t) = redeem(&server, inv["invite"].as_str().unwrap(), "Co-host").await;
    let cohost = Client::join_with_token(&server, "team", t["token"].as_str().unwrap()).await;
    // A live host's participant credential (what the web client holds) makes invites too.
    let (status, body) = post(
        &server,
        "/api/v1/invites",
        Some(&format!("Bearer {}", cohost.resume_token)),
        &json!({"grants": {"publish": false}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["grants"],
        json!({"publish": false, "subscribe": true, "host": false})
    );

    // Host only as a first joiner (no host grant in its token): no invites.
    let first = Client::join(&server, "fresh-room", "first").await;
    let (status, body) = post(
        &server,
        "/api/v1/invites",
        Some(&format!("Bearer {}", first.resume_token)),
        &json!({}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("host grant"),
        "{body}"
    );

    // Garbage is refused with JSON errors. The invite routes, which browsers call, never send a
    // Basic challenge (a browser would show a login prompt and leave the request pending).
    assert_eq!(redeem(&server, "garbage", "x").await.0, 401);
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/invites/redeem", server.http_url()))
        .body(json!({"invite": invite}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("www-authenticate").is_none());
    assert_eq!(
        post(
            &server,
            "/api/v1/invites/redeem",
            None,
            &json!({"name": "x"})
        )
        .await
        .0,
        400
    );
    let (status, _) = post(
        &server,
        "/api/v1/invites",
        Some(&host),
        &json!({"ttl_s": 8 * 86_400}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = post(
        &server,
        "/api/v1/invites",
        Some(&host),
        &json!({"role": "owner"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(revoke(&server, "not-an-id", &host).await, 400);
    let (status, _) = post(&server, "/api/v1/invites", None, &json!({})).await;
    assert_eq!(status, 401);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_works_until_it_expires() {
    let server = start(prod_config()).await;
    let host = format!("Bearer {}", host_token(&server, "brief"));
    let (status, inv) = post(
        &server,
        "/api/v1/invites",
        Some(&host),
        &json!({"ttl_s": 2}),
    )
    .await;
    assert_eq!(status, 200, "{inv}");
    let invite = inv["invite"].as_str().unwrap().to_owned();
    let expires_at = inv["expires_at"].as_u64().unwrap();
    assert!(expires_at <= unix_now() + 2);
    // Before its expiry it works (and its token joins).
    let (status, t) = redeem(&server, &invite, "Early").await;
    assert_eq!(status, 200, "{t}");
    Client::join_with_token(&server, "brief", t["token"].as_str().unwrap()).await;
    // Wait for the wall clock to pass the expiry (leeway 0 in this config).
    tokio::time::timeout(Duration::from_secs(10), async {
        while unix_now() <= expires_at {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap();
    let (status, body) = redeem(&server, &invite, "Late").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invite_expired");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_and_placeholder_secrets_are_refused_at_start() {
    for (config, setting) in [
        (
            Config {
                jwt_secret: "too-short".into(),
                ..prod_config()
            },
            "jwt_secret",
        ),
        (
            Config {
                jwt_secret: "REPLACE-WITH-openssl-rand-hex-32".into(),
                ..prod_config()
            },
            "jwt_secret",
        ),
        (
            Config {
                api_keys: vec!["k:short".parse().unwrap()],
                ..prod_config()
            },
            "API key \"k\"",
        ),
        (
            Config {
                sfu_nodes: vec!["http://127.0.0.1:9".into()],
                sfu_app_secret: "REPLACE-WITH-another-openssl-rand-hex-32".into(),
                ..prod_config()
            },
            "sfu_app_secret",
        ),
    ] {
        let e = Server::bind(config).await.unwrap_err().to_string();
        assert!(e.contains(setting), "{setting}: {e}");
    }
    // The binary says so and exits non-zero, naming the setting (not the value).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_satsuma-coordinator"))
        .args(["--listen", "127.0.0.1:0", "--web-dir", "/nonexistent"])
        .env(
            "SATSUMA_COORD_JWT_SECRET",
            "REPLACE-WITH-openssl-rand-hex-32",
        )
        .env_remove("SATSUMA_COORD_DEV")
        .env_remove("SATSUMA_COORD_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("jwt_secret") && err.contains("placeholder"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_mints_tokens_the_server_accepts() {
    let config = prod_config();
    let server = start(config.clone()).await;
    let mint = |secret: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_satsuma-coordinator"))
            .args(["token", "create", "--room", "cli", "--identity", "ada"])
            .args(["--name", "Ada", "--ttl", "5m", "--json"])
            .env("SATSUMA_COORD_JWT_SECRET", secret)
            .env_remove("SATSUMA_COORD_CONFIG")
            .env_remove("SATSUMA_COORD_JWT_ISSUER")
            .env_remove("SATSUMA_COORD_JWT_AUDIENCE")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["token"].as_str().unwrap().to_owned()
    };
    let token = mint(&config.jwt_secret);
    let ada = Client::join_with_token(&server, "cli", &token).await;
    assert_eq!(ada.id, 1);
    let forged = mint("another-secret-0123456789abcdef-0123");
    let (code, reason) = hello_close(&server, "cli", &forged).await;
    assert_eq!(
        (code, reason.as_str()),
        (close::UNAUTHORIZED, "invalid token")
    );
    server.shutdown().await;
}
