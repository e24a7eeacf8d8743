//! TURN credentials for participants, against a real coordinator on 127.0.0.1: `welcome` and
//! `resumed` carry the configured STUN/TURN URLs with the participant's own short-lived TURN
//! credentials (which a TURN server holding the shared secret accepts until now + ttl), and
//! `POST /sfu/ice-servers` mints fresh ones for a participant.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use satsuma_common::turn::{IceServer, TurnSecret, verify};
use satsuma_coordinator::Config;
use satsuma_coordinator::auth::unix_now;
use satsuma_coordinator::protocol::{ClientMessage, PROTOCOL_VERSION, ServerMessage};
use satsuma_wire::IceServersResponse;
use serde_json::Value;

const SECRET: &str = "coturn-static-auth-secret";
const TTL: u64 = 900;

fn config() -> Config {
    let mut c = Config::dev();
    c.turn = satsuma_coordinator::config::turn_servers(
        vec![
            "stun:turn.example.test:3478".into(),
            "turn:turn.example.test:3478?transport=udp".into(),
            "turn:turn.example.test:3478?transport=tcp".into(),
            "turns:turn.example.test:443?transport=tcp".into(),
        ],
        Some(SECRET.into()),
    )
    .unwrap();
    c.turn_ttl_s = TTL;
    c
}

/// Checks one `ice_servers` list: STUN apart, the three TURN URLs with a credential for
/// participant `id` that verifies and expires at now + TTL. Returns the username.
fn check_servers(servers: &[IceServer], expires_at: Option<u64>, id: u64) -> String {
    let now = unix_now();
    assert_eq!(servers.len(), 2, "{servers:?}");
    assert_eq!(servers[0].urls, vec!["stun:turn.example.test:3478"]);
    assert!(servers[0].username.is_none() && servers[0].credential.is_none());
    let turn = &servers[1];
    assert_eq!(
        turn.urls,
        vec![
            "turn:turn.example.test:3478?transport=udp",
            "turn:turn.example.test:3478?transport=tcp",
            "turns:turn.example.test:443?transport=tcp",
        ]
    );
    let username = turn.username.clone().unwrap();
    let credential = turn.credential.clone().unwrap();
    let expiry = expires_at.expect("ice_expires_at");
    assert!(
        (now + TTL - 5..=now + TTL).contains(&expiry),
        "expiry {expiry}, now {now}"
    );
    assert!(
        username.starts_with(&format!("{expiry}:p{id}-")),
        "{username}"
    );
    let secret = TurnSecret::new(SECRET).unwrap();
    assert_eq!(verify(&secret, &username, &credential, now), Ok(expiry));
    assert!(verify(&secret, &username, &credential, expiry + 1).is_err());
    username
}

async fn hello(ws: &mut Ws, token: &str) -> ServerMessage {
    send_json(
        ws,
        &ClientMessage::Hello {
            v: PROTOCOL_VERSION,
            token: Some(token.to_owned()),
            resume: None,
            test_visible_only_to: None,
        },
    )
    .await;
    match recv(ws).await {
        Got::Direct(m) => m,
        other => panic!("expected welcome, got {other:?}"),
    }
}

#[tokio::test]
async fn participants_get_their_own_turn_credentials_on_join_resume_and_refresh() {
    let server = start(config()).await;
    let mut ws = raw(&server, "turnroom").await;
    let welcome = hello(&mut ws, &token(&server, "turnroom", "alice")).await;
    let ServerMessage::Welcome {
        participant_id,
        resume_token,
        seq,
        ice_servers,
        ice_expires_at,
        ..
    } = welcome.clone()
    else {
        panic!("expected welcome, got {welcome:?}");
    };
    let first = check_servers(&ice_servers, ice_expires_at, participant_id);

    // A second participant gets other credentials.
    let mut ws2 = raw(&server, "turnroom").await;
    let ServerMessage::Welcome {
        participant_id: bob,
        ice_servers,
        ice_expires_at,
        ..
    } = hello(&mut ws2, &token(&server, "turnroom", "bob")).await
    else {
        panic!("expected welcome");
    };
    assert_ne!(bob, participant_id);
    let bobs = check_servers(&ice_servers, ice_expires_at, bob);
    assert_ne!(bobs, first);

    // Resume: fresh credentials.
    let mut alice = Client {
        ws,
        id: participant_id,
        resume_token: resume_token.clone(),
        last_seq: seq,
        log: Vec::new(),
    };
    alice.ws.close(None).await.unwrap();
    match alice.resume(&server, "turnroom").await {
        Got::Direct(ServerMessage::Resumed {
            ice_servers,
            ice_expires_at,
            ..
        }) => {
            let resumed = check_servers(&ice_servers, ice_expires_at, participant_id);
            assert_ne!(resumed, first);
        }
        other => panic!("expected resumed, got {other:?}"),
    }

    // Refresh over HTTP with the participant credential.
    let http = reqwest::Client::new();
    let url = format!("{}/sfu/ice-servers", server.http_url());
    let resp = http
        .post(&url)
        .bearer_auth(&resume_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
    let body: IceServersResponse = resp.json().await.unwrap();
    check_servers(&body.ice_servers, body.expires_at, participant_id);

    // No credential, or a wrong one: 401 in the SFU API's error shape.
    for auth in [None, Some("not-a-resume-token")] {
        let mut req = http.post(&url);
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::UNAUTHORIZED);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["errorCode"], "unauthorized", "{body}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn without_turn_configuration_ice_servers_are_empty() {
    let server = start(Config::dev()).await;
    let mut ws = raw(&server, "plain").await;
    let welcome = hello(&mut ws, &token(&server, "plain", "alice")).await;
    let ServerMessage::Welcome {
        ice_servers,
        ice_expires_at,
        resume_token,
        ..
    } = welcome.clone()
    else {
        panic!("expected welcome, got {welcome:?}");
    };
    assert!(ice_servers.is_empty());
    assert_eq!(ice_expires_at, None);
    let resp = reqwest::Client::new()
        .post(format!("{}/sfu/ice-servers", server.http_url()))
        .bearer_auth(&resume_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"iceServers": [], "expiresAt": null})
    );
    server.shutdown().await;
}
