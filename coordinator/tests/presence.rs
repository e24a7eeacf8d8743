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

/// Issue 18: a member whose socket dropped (page closed, no `leave`) stays in the room for
/// its presence window, but `execute` no longer waits for its `ready`: a joiner's epoch is
/// executed as soon as the connected members are ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_does_not_wait_for_a_member_whose_socket_dropped() {
    use satsuma_coordinator::mls_framing::{WireFormat, build};
    use satsuma_coordinator::protocol::{client_commit_frame, client_key_package_frame};

    let execute_timeout = Duration::from_secs(10);
    let config = Config {
        execute_timeout,
        ..Config::dev()
    };
    let server = start(config).await;
    let room = "drop";
    let mut alice = Client::join(&server, room, "alice").await;
    let RoomEvent::Creator { group_id, .. } = alice
        .until_event(|e| matches!(e, RoomEvent::Creator { .. }))
        .await
        .event
    else {
        unreachable!()
    };
    let gid = hex::decode(&group_id).unwrap();
    let ready = |epoch| ClientMessage::Ready {
        epoch,
        group_id: Some(group_id.clone()),
    };
    alice.send(ready(0)).await;
    alice
        .until_event(|e| matches!(e, RoomEvent::Execute { epoch: 0 }))
        .await;
    // Alice adds `who` at `epoch`; `members` (Alice first) report ready; returns when
    // Alice sees the execute, and how long after the last ready it came.
    async fn add(
        alice: &mut Client,
        who: &mut Client,
        gid: &[u8],
        epoch: u64,
        ready: &dyn Fn(u64) -> ClientMessage,
        others: &mut [&mut Client],
    ) -> Duration {
        let kp = build::key_package_message(who.id, b"kp");
        who.send_binary(client_key_package_frame(&kp)).await;
        let joiner = who.id;
        alice
            .until(|g| matches!(g, Got::Mls(f) if f.from == joiner))
            .await;
        let commit = build::commit(gid, epoch, 0, alice.id, &[kp[4..].to_vec()], &[]);
        let welcome = build::message(WireFormat::Welcome, b"welcome");
        alice
            .send_binary(client_commit_frame(&commit, &welcome))
            .await;
        let me = alice.id;
        alice
            .until(|g| matches!(g, Got::Mls(f) if f.from == me))
            .await;
        alice.send(ready(epoch + 1)).await;
        who.send(ready(epoch + 1)).await;
        for o in others.iter_mut() {
            o.send(ready(epoch + 1)).await;
        }
        let sent = Instant::now();
        alice
            .until_event(|e| matches!(e, RoomEvent::Execute { epoch: x } if *x == epoch + 1))
            .await;
        sent.elapsed()
    }
    let mut bob = Client::join(&server, room, "bob").await;
    add(&mut alice, &mut bob, &gid, 0, &ready, &mut []).await;
    let mut carol = Client::join(&server, room, "carol").await;
    add(&mut alice, &mut carol, &gid, 1, &ready, &mut [&mut bob]).await;
    // Carol's page closes: her socket goes, without a leave.
    drop(carol);
    let mut dave = Client::join(&server, room, "dave").await;
    let wait = add(&mut alice, &mut dave, &gid, 2, &ready, &mut [&mut bob]).await;
    println!(
        "execute {} ms after the live members' ready (execute timeout {} ms)",
        wait.as_millis(),
        execute_timeout.as_millis()
    );
    assert!(
        wait < execute_timeout / 2,
        "execute waited {wait:?} for the member whose socket dropped"
    );
    server.shutdown().await;
}
