//! The recorder driver: runs `satsuma-record` for the rooms whose hosts started recording.
//!
//! The decisions (who may start and stop, one recorder per room, what an exit means) are the
//! room's ([`crate::room::recording`]); this module only carries them out. On
//! [`RecorderCommand::Start`] it mints a join token with the `recorder` grant for the run's
//! subject and starts the recorder with it (token in its environment, output in a new
//! subdirectory, its stderr and stdout logged through tracing). On
//! [`RecorderCommand::Stop`] it closes the recorder's stdin (`--stop-on-stdin-close`: it
//! finalizes its files and exits; the room has made it leave already) and kills it if it is
//! still running after the grace. Whenever a process
//! ends, or cannot be started, the room hears of it ([`crate::room::Room::recorder_exited`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};

use crate::auth::{Claims, RECORDER_PERM, unix_now};
use crate::config::RecordingConfig;
use crate::room::recording::RecorderCommand;
use crate::server::App;

/// Most recorder commands waiting for the driver task.
pub(crate) const QUEUE: usize = 1024;

/// A command for one room's recorder, as the hub queues it.
#[derive(Debug)]
pub(crate) struct RoomCommand {
    pub(crate) room: String,
    pub(crate) command: RecorderCommand,
}

/// Processes under way: (room, run) → the sender that ends it after a grace.
type Running = Arc<Mutex<HashMap<(String, u64), oneshot::Sender<Duration>>>>;

/// Carries out the rooms' recorder commands until the queue closes.
pub(crate) async fn run(
    app: Weak<App>,
    config: RecordingConfig,
    coordinator_url: String,
    mut commands: mpsc::Receiver<RoomCommand>,
) {
    let running: Running = Arc::default();
    while let Some(RoomCommand { room, command }) = commands.recv().await {
        match command {
            RecorderCommand::Start { run, subject, by } => {
                let Some(strong) = app.upgrade() else {
                    return;
                };
                tracing::info!(room = %room, run, host = by, "a host started recording");
                match start(&strong, &config, &coordinator_url, &room, run, &subject) {
                    Ok((child, out)) => {
                        strong
                            .metrics
                            .recordings
                            .with_label_values(&["started"])
                            .inc();
                        tracing::info!(room = %room, run, out = %out.display(), "recorder started");
                        let (stop_tx, stop_rx) = oneshot::channel();
                        running.lock().insert((room.clone(), run), stop_tx);
                        tokio::spawn(watch(
                            app.clone(),
                            running.clone(),
                            room,
                            run,
                            child,
                            stop_rx,
                        ));
                    }
                    Err(e) => {
                        strong
                            .metrics
                            .recordings
                            .with_label_values(&["failed"])
                            .inc();
                        tracing::warn!(room = %room, run, error = %e, "recorder could not start");
                        exited(&strong, &room, run, &format!("{e:#}"));
                    }
                }
            }
            RecorderCommand::Stop { run, grace } => {
                if let Some(stop) = running.lock().remove(&(room.clone(), run)) {
                    let _ = stop.send(grace);
                }
            }
        }
    }
}

/// Starts the recorder for `room`'s run `run`; returns the child and its output directory.
fn start(
    app: &App,
    config: &RecordingConfig,
    coordinator_url: &str,
    room: &str,
    run: u64,
    subject: &str,
) -> anyhow::Result<(tokio::process::Child, PathBuf)> {
    use anyhow::Context;
    let now = unix_now();
    let max = config.max_duration.as_secs().max(1);
    let token = app.keys.mint(&Claims {
        sub: subject.to_owned(),
        room: room.to_owned(),
        name: config.name.clone(),
        perms: vec!["subscribe".to_owned(), RECORDER_PERM.to_owned()],
        // Joining takes moments; a resume uses the resume token, not this.
        exp: now + 600,
        iat: Some(now),
        ..Claims::default()
    })?;
    let out = output_dir(&config.dir, room, run, now_ms());
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create the recording directory {}", out.display()))?;
    let child = Command::new(&config.command)
        .arg("--coordinator")
        .arg(coordinator_url)
        .arg("--room")
        .arg(room)
        .arg("--name")
        .arg(&config.name)
        .arg("--out")
        .arg(&out)
        .arg("--duration")
        .arg(max.to_string())
        // Its stdin is a pipe only we hold: closing it stops the recorder cleanly, also
        // when this process ends (no kill on drop: it finishes its files instead).
        .arg("--stop-on-stdin-close")
        .env("SATSUMA_RECORD_TOKEN", token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", config.command.display()))?;
    Ok((child, out))
}

/// `<dir>/<room>-<unix ms>-<run>`; room names are `[A-Za-z0-9._-]` (checked at the door), and
/// anything else is replaced so the name stays one path component.
pub(crate) fn output_dir(dir: &Path, room: &str, run: u64, unix_ms: u64) -> PathBuf {
    let safe: String = room
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{safe}-{unix_ms}-{run}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Logs the recorder's output, ends it when told (after the grace), and tells the room when
/// it exited.
async fn watch(
    app: Weak<App>,
    running: Running,
    room: String,
    run: u64,
    mut child: tokio::process::Child,
    stop: oneshot::Receiver<Duration>,
) {
    if let Some(stderr) = child.stderr.take() {
        let room = room.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "satsuma_coordinator::recorder", room = %room, run, "{line}");
            }
        });
    }
    if let Some(stdout) = child.stdout.take() {
        let room = room.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // The manifest, printed when the recording ends.
                tracing::info!(target: "satsuma_coordinator::recorder", room = %room, run, manifest = %line, "recording finished");
            }
        });
    }
    let mut stdin = child.stdin.take();
    let status = tokio::select! {
        status = child.wait() => status,
        grace = stop => {
            // Ask it to stop (it finishes its files), then give it the grace.
            drop(stdin.take());
            let grace = grace.unwrap_or(Duration::ZERO);
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    tracing::warn!(room = %room, run, ?grace, "recorder did not exit after it was stopped; killing it");
                    let _ = child.start_kill();
                    child.wait().await
                }
            }
        }
    };
    drop(stdin);
    running.lock().remove(&(room.clone(), run));
    let detail = match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("cannot wait for it: {e}"),
    };
    tracing::info!(room = %room, run, status = %detail, "recorder exited");
    if let Some(app) = app.upgrade() {
        app.metrics.recordings.with_label_values(&["exited"]).inc();
        exited(&app, &room, run, &detail);
    }
}

/// Tells `room` that run `run`'s process is over.
fn exited(app: &App, room: &str, run: u64, detail: &str) {
    if let Some(slot) = app.hub.room(room) {
        app.hub.with_room(&slot, |s| {
            s.room.recorder_exited(Instant::now(), run, detail)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_dirs_stay_inside_the_recordings_dir() {
        let d = output_dir(Path::new("/srv/rec"), "standup", 3, 1_700_000_000_000);
        assert_eq!(d, PathBuf::from("/srv/rec/standup-1700000000000-3"));
        let d = output_dir(Path::new("/srv/rec"), "../..", 1, 5);
        assert_eq!(d, PathBuf::from("/srv/rec/_____-5-1"));
        assert_eq!(d.parent(), Some(Path::new("/srv/rec")));
    }
}
