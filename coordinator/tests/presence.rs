//! A silent participant is announced as left after the presence timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Client, Got, expect_close, start};
use satsuma_coordinator::Config;
use satsuma_coordinator::protocol::{ClientMessage, LeaveReason, RoomEvent, close};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_participant_times_out() {
    let config = Config {
        presence_timeout: Duration::from_millis(600),
        ..Config::dev()
    };
    let server = start(config).await;
    let mut alice = Client::join(&server, "presence", "alice").await;
    // Bob's last sign of life (his hello) is after this instant.
    let started = Instant::now();
    let mut bob = Client::join(&server, "presence", "bob").await;
    let bob_id = bob.id;

    // Alice heartbeats; Bob's socket stays open but he says nothing.
    let left = heartbeat_until_left(&mut alice).await;
    assert_eq!(left, (bob_id, LeaveReason::Timeout));
    assert!(started.elapsed() >= Duration::from_millis(600));
    // Bob's connection is closed with the presence code, and he cannot resume.
    let (code, _) = expect_close(&mut bob.ws).await;
    assert_eq!(code, close::PRESENCE_TIMEOUT);
    let reply = bob.resume(&server, "presence").await;
    assert!(matches!(reply, Got::Close(c, _) if c == close::RESUME_FAILED));
    // Alice, who kept sending, is still in.
    alice.sync().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnected_participant_times_out_unless_it_resumes() {
    let config = Config {
        presence_timeout: Duration::from_millis(500),
        ..Config::dev()
    };
    let server = start(config).await;
    let mut alice = Client::join(&server, "grace", "alice").await;
    let carol = Client::join(&server, "grace", "carol").await;
    let carol_id = carol.id;
    drop(carol); // socket gone without a leave
    let left = heartbeat_until_left(&mut alice).await;
    assert_eq!(left, (carol_id, LeaveReason::Timeout));
    server.shutdown().await;
}

/// Pings every 100 ms until a `left` arrives.
async fn heartbeat_until_left(alice: &mut Client) -> (u64, LeaveReason) {
    let started = Instant::now();
    loop {
        alice.send(ClientMessage::Ping { t: None }).await;
        let deadline = tokio::time::sleep(Duration::from_millis(100));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                g = alice.recv() => {
                    if let Got::Event(e) = &g
                        && let RoomEvent::Left { id, reason } = e.event
                    {
                        return (id, reason);
                    }
                    assert!(!matches!(g, Got::Close(..)), "alice was closed: {g:?}");
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no leave announced"
        );
    }
}
