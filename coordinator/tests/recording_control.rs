//! Host-controlled recording through a real coordinator: only hosts may `record`, only when a
//! recorder is configured, one recorder per room; the coordinator runs the recorder command
//! with a recorder token it mints, the recorder it started leaves on `stop`, and a recorder
//! that dies before joining is reported to the host.
//!
//! The recorder command is a shell script standing in for `satsuma-record`: it writes its
//! arguments and the token it was given, then waits for its stdin to close (as
//! `--stop-on-stdin-close` does). The test joins the room with that token itself, as the
//! recorder would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Client, Got, WAIT, start};
use satsuma_coordinator::Config;
use satsuma_coordinator::config::RecordingConfig;
use satsuma_coordinator::protocol::{
    ClientMessage, RecordAction, RoomEvent, ServerMessage, close, error_code,
};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coord-rec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fake recorder that keeps `body` after writing its args and token into `dir`.
fn fake_recorder(dir: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("fake-record.sh");
    let d = dir.display();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{d}/args'\nprintf '%s' \"$SATSUMA_RECORD_TOKEN\" > '{d}/token.tmp'\nmv '{d}/token.tmp' '{d}/token'\n{body}\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn config(script: &Path, out: &Path) -> Config {
    Config {
        recording: Some(RecordingConfig::new(script.to_owned(), out.to_owned())),
        ..Config::dev()
    }
}

/// Sends `record` and returns the error code it got (None: accepted).
async fn record(c: &mut Client, action: RecordAction) -> Option<String> {
    c.send(ClientMessage::Record { action }).await;
    c.send(ClientMessage::Ping { t: Some(77) }).await;
    let mut code = None;
    loop {
        match c.recv().await {
            Got::Direct(ServerMessage::Error {
                code: e, refused, ..
            }) => {
                assert_eq!(refused.as_deref(), Some("record"));
                code = Some(e);
            }
            Got::Direct(ServerMessage::Pong { t: Some(77) }) => return code,
            Got::Close(code, reason) => panic!("closed: {code} {reason}"),
            _ => {}
        }
    }
}

/// What `GET /client-config.json` tells the page about recording (it shows hosts a usable
/// Record button only when this is true).
async fn page_may_record(server: &satsuma_coordinator::ServerHandle) -> serde_json::Value {
    let config: serde_json::Value =
        reqwest::get(format!("{}/client-config.json", server.http_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    config["recording"].clone()
}

/// Waits for the fake recorder's token file (and removes it for the next run).
async fn token(dir: &Path) -> (String, Vec<String>) {
    let end = Instant::now() + WAIT;
    loop {
        if let Ok(t) = std::fs::read_to_string(dir.join("token")) {
            let args = std::fs::read_to_string(dir.join("args")).unwrap();
            std::fs::remove_file(dir.join("token")).unwrap();
            return (t, args.lines().map(str::to_owned).collect());
        }
        assert!(Instant::now() < end, "the recorder command did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Retries `start` until the previous run's exit has reached the room.
async fn start_when_idle(c: &mut Client) {
    let end = Instant::now() + WAIT;
    loop {
        match record(c, RecordAction::Start).await {
            None => return,
            Some(code) if code == error_code::RECORDING_STATE && Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(code) => panic!("start refused: {code}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_hosts_record_one_recorder_per_room_and_stop_makes_it_leave() {
    let dir = scratch("main");
    let out = dir.join("recordings");
    let script = fake_recorder(&dir, "cat > /dev/null\necho '{\"fake\":true}'");
    let server = start(config(&script, &out)).await;
    assert_eq!(page_may_record(&server).await, true);
    let room = "rec.room";
    let mut host = Client::join(&server, room, "host").await; // first joiner is host
    let mut guest = Client::join(&server, room, "guest").await;

    // Not a host: refused, nothing runs.
    assert_eq!(
        record(&mut guest, RecordAction::Start).await.as_deref(),
        Some(error_code::FORBIDDEN)
    );
    assert_eq!(
        record(&mut guest, RecordAction::Stop).await.as_deref(),
        Some(error_code::FORBIDDEN)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !dir.join("args").exists(),
        "a non-host's request ran the recorder"
    );
    assert_eq!(
        record(&mut host, RecordAction::Stop).await.as_deref(),
        Some(error_code::RECORDING_STATE),
        "nothing to stop"
    );

    // The host starts: the coordinator runs the command with a token of its own.
    assert_eq!(record(&mut host, RecordAction::Start).await, None);
    let (tok, args) = token(&dir).await;
    let arg = |name: &str| {
        let i = args.iter().position(|a| a == name).unwrap();
        args[i + 1].clone()
    };
    assert_eq!(arg("--room"), room);
    assert!(arg("--coordinator").starts_with("http://127.0.0.1:"));
    let rec_dir = PathBuf::from(arg("--out"));
    assert_eq!(rec_dir.parent(), Some(out.as_path()));
    assert!(
        rec_dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("rec_room-")
    );
    assert!(rec_dir.is_dir());
    assert!(args.iter().any(|a| a == "--stop-on-stdin-close"));
    // One per room, also while it is starting.
    assert_eq!(
        record(&mut host, RecordAction::Start).await.as_deref(),
        Some(error_code::RECORDING_STATE)
    );

    // The recorder joins with that token: marked as a recorder for everyone.
    let mut recorder = Client::join_with_token(&server, room, &tok).await;
    let joined = host
        .until_event(|e| matches!(e, RoomEvent::Joined { id, .. } if *id == recorder.id))
        .await;
    assert!(matches!(
        joined.event,
        RoomEvent::Joined { recorder: true, .. }
    ));
    assert_eq!(
        record(&mut host, RecordAction::Start).await.as_deref(),
        Some(error_code::RECORDING_STATE)
    );

    // Stop: the recorder is told to leave (1000) and everyone sees it go.
    assert_eq!(record(&mut host, RecordAction::Stop).await, None);
    let got = recorder.until(|g| matches!(g, Got::Close(..))).await;
    assert!(
        matches!(got, Got::Close(c, _) if c == close::NORMAL),
        "{got:?}"
    );
    let rid = recorder.id;
    guest
        .until_event(|e| matches!(e, RoomEvent::Left { id, .. } if *id == rid))
        .await;

    // Its process ended (stdin closed): a new recording can start, and a stop while it is
    // still starting ends it at once.
    start_when_idle(&mut host).await;
    token(&dir).await;
    assert_eq!(record(&mut host, RecordAction::Stop).await, None);
    start_when_idle(&mut host).await;
    token(&dir).await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfigured_servers_refuse_and_a_recorder_that_dies_is_reported() {
    let server = start(Config::dev()).await;
    assert_eq!(page_may_record(&server).await, false);
    let mut host = Client::join(&server, "plain", "host").await;
    assert_eq!(
        record(&mut host, RecordAction::Start).await.as_deref(),
        Some(error_code::RECORDING_UNAVAILABLE)
    );
    server.shutdown().await;

    let dir = scratch("dies");
    let script = fake_recorder(&dir, "echo 'cannot reach the coordinator' >&2\nexit 3");
    let server = start(config(&script, &dir.join("recordings"))).await;
    let mut host = Client::join(&server, "r", "host").await;
    assert_eq!(record(&mut host, RecordAction::Start).await, None);
    let reply = tokio::time::timeout(WAIT, host.direct()).await.unwrap();
    let ServerMessage::Error {
        code,
        message,
        refused,
    } = reply
    else {
        panic!("{reply:?}");
    };
    assert_eq!(code, error_code::RECORDING_FAILED);
    assert_eq!(refused.as_deref(), Some("record"));
    assert!(message.contains("exit status: 3"), "{message}");
    server.shutdown().await;

    // A command that does not exist fails the same way.
    let server = start(config(&dir.join("nope"), &dir.join("recordings"))).await;
    let mut host = Client::join(&server, "r", "host").await;
    assert_eq!(record(&mut host, RecordAction::Start).await, None);
    let reply = tokio::time::timeout(WAIT, host.direct()).await.unwrap();
    assert!(
        matches!(&reply, ServerMessage::Error { code, .. } if code == error_code::RECORDING_FAILED),
        "{reply:?}"
    );
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
