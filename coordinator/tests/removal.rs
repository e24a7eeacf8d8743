//! Removal is immediate: when a participant leaves for any reason, the coordinator
//! deletes its SFU sessions at the SFU at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Client, Got, start};
use satsuma_coordinator::Config;
use satsuma_coordinator::protocol::{ClientMessage, LeaveReason, RoomEvent, close};
use serde_json::Value;

struct Stack {
    sfu_url: String,
    app_id: String,
    app_secret: String,
    http: reqwest::Client,
}

impl Stack {
    async fn new_session(
        &self,
        server: &satsuma_coordinator::ServerHandle,
        bearer: &str,
    ) -> String {
        let resp = self
            .http
            .post(format!("{}/sfu/sessions/new", server.http_url()))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        let body: Value = resp.json().await.unwrap();
        body["sessionId"].as_str().unwrap().to_owned()
    }

    /// `GET` of a session straight at the SFU: its HTTP status.
    async fn sfu_status(&self, sid: &str) -> u16 {
        self.http
            .get(format!(
                "{}/v1/apps/{}/sessions/{sid}",
                self.sfu_url, self.app_id
            ))
            .bearer_auth(&self.app_secret)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Waits until every session in `sids` answers 404 at the SFU; returns how long it took.
    async fn until_gone(&self, sids: &[String], since: Instant) -> Duration {
        loop {
            let mut gone = true;
            for sid in sids {
                gone &= self.sfu_status(sid).await == 404;
            }
            if gone {
                return since.elapsed();
            }
            assert!(
                since.elapsed() < Duration::from_secs(5),
                "sessions still open at the SFU"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_and_departed_participants_lose_their_sfu_sessions_at_once() {
    let sfu_config = satsuma_sfu::Config {
        http_bind: "127.0.0.1:0".parse().unwrap(),
        udp_bind: "127.0.0.1:0".parse().unwrap(),
        ..satsuma_sfu::Config::default()
    };
    let app = sfu_config.apps[0].clone();
    let sfu = satsuma_sfu::Server::bind(sfu_config).await.unwrap();
    let stack = Stack {
        sfu_url: format!("http://{}", sfu.http_addr()),
        app_id: app.id.clone(),
        app_secret: app.secret.clone(),
        http: reqwest::Client::new(),
    };
    let server = start(Config {
        sfu_nodes: vec![stack.sfu_url.clone()],
        sfu_app_id: app.id.clone(),
        sfu_app_secret: app.secret.clone(),
        ..Config::dev()
    })
    .await;
    let room = "removal";
    let mut host = Client::join(&server, room, "host").await;
    let mut bob = Client::join(&server, room, "bob").await;
    let mut carol = Client::join(&server, room, "carol").await;
    let bob_sessions = vec![
        stack.new_session(&server, &bob.resume_token).await,
        stack.new_session(&server, &bob.resume_token).await,
    ];
    let carol_session = stack.new_session(&server, &carol.resume_token).await;
    let host_session = stack.new_session(&server, &host.resume_token).await;
    for sid in bob_sessions.iter().chain([&carol_session, &host_session]) {
        assert_eq!(stack.sfu_status(sid).await, 200);
    }

    // The host removes Bob: both his sessions are gone within a second.
    bob.sync().await;
    let t0 = Instant::now();
    host.send(ClientMessage::Remove { target: bob.id }).await;
    let took = stack.until_gone(&bob_sessions, t0).await;
    println!("removed participant's SFU sessions gone after {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let (code, _) = common::expect_close(&mut bob.ws).await;
    assert_eq!(code, close::REMOVED);
    host.until_event(
        |e| matches!(e, RoomEvent::Left { id, reason: LeaveReason::Removed } if *id == bob.id),
    )
    .await;

    // Carol leaves: hers too. The host's session stays.
    let t0 = Instant::now();
    carol.send(ClientMessage::Leave {}).await;
    let took = stack
        .until_gone(std::slice::from_ref(&carol_session), t0)
        .await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(stack.sfu_status(&host_session).await, 200);
    // The closer counts a close when the SFU's DELETE answer arrives, which can be a moment
    // after the session is already gone from the SFU's view.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = stack
            .http
            .get(format!("{}/metrics", server.http_url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let closed = metric(
            &text,
            "satsuma_coord_sfu_session_closes_total{result=\"closed\"}",
        );
        if closed == 3.0 {
            break;
        }
        assert!(
            closed < 3.0 && Instant::now() < deadline,
            "closes counted: {closed}, want 3\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // With the SFU down, a departure still completes; the failed close is counted.
    let mut dave = Client::join(&server, room, "dave").await;
    let dave_session = stack.new_session(&server, &dave.resume_token).await;
    assert!(!dave_session.is_empty());
    sfu.shutdown().await;
    dave.send(ClientMessage::Leave {}).await;
    assert!(matches!(
        common::expect_close(&mut dave.ws).await,
        (1000, _)
    ));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = stack
            .http
            .get(format!("{}/metrics", server.http_url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metric(
            &text,
            "satsuma_coord_sfu_session_closes_total{result=\"failed\"}",
        ) == 1.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    host.sync().await;
    assert!(host.log.iter().any(|g| matches!(g, Got::Event(e) if matches!(e.event, RoomEvent::Left { id, .. } if id == dave.id))));
    server.shutdown().await;
}
