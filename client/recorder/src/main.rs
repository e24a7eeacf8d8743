//! `satsuma-record`: join a room as a visible recorder and write one WebM file per track.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use satsuma_recorder::{Options, record};

/// Records a Satsuma call as a visible member of the room.
///
/// Every participant sees "● Recording by <name>" while it runs, and it is a member of the
/// room's MLS group (it shows in every verified roster): it decrypts every track with the
/// group's keys and stores plaintext media in --out, on this machine only. Leaving (the
/// duration, Ctrl-C, or a host removing it) ends the recording.
#[derive(Debug, Parser)]
#[command(name = "satsuma-record", version)]
struct Cli {
    /// The coordinator's base URL (what browsers open), e.g. http://127.0.0.1:8080.
    #[arg(long, env = "SATSUMA_RECORD_COORDINATOR", value_name = "URL")]
    coordinator: String,
    /// The room to record.
    #[arg(long, value_name = "ROOM")]
    room: String,
    /// A join token for the room that grants `recorder` (e.g. `satsuma token create
    /// --recorder`). Read from the environment rather than the command line where others
    /// can see process arguments.
    #[arg(
        long,
        env = "SATSUMA_RECORD_TOKEN",
        hide_env_values = true,
        value_name = "JWT"
    )]
    token: String,
    /// The name of the recorder's MLS credential (members see the display name the token
    /// carries).
    #[arg(long, default_value = "Recorder", value_name = "NAME")]
    name: String,
    /// Directory for the WebM files and manifest.json (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Stop after this many seconds of recording (default: until Ctrl-C or SIGTERM).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Give up if the group's keys have not arrived this many seconds after joining.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    join_timeout: f64,
    /// Also stop (and finish the files) when standard input reaches its end. The coordinator
    /// runs the recorders hosts start this way: closing the pipe stops one, and they end
    /// cleanly with the coordinator even if it dies.
    #[arg(long)]
    stop_on_stdin_close: bool,
}

fn seconds(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("{what} must be a positive number of seconds"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let opts = Options {
        coordinator: cli.coordinator,
        room: cli.room,
        token: cli.token,
        name: cli.name,
        out: cli.out,
        duration: cli.duration.map(|d| seconds(d, "--duration")).transpose()?,
        join_timeout: seconds(cli.join_timeout, "--join-timeout")?,
    };
    let stop_on_stdin_close = cli.stop_on_stdin_close;
    // A plain thread reads stdin: a blocking read on tokio's pool would hold up the
    // runtime's shutdown when the recording ends for another reason.
    let (stdin_tx, stdin_rx) = tokio::sync::oneshot::channel::<()>();
    if stop_on_stdin_close {
        std::thread::spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 256];
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            let _ = stdin_tx.send(());
        });
    }
    let stdin_closed = async move {
        if !stop_on_stdin_close || stdin_rx.await.is_err() {
            return std::future::pending::<()>().await;
        }
        tracing::info!("standard input closed: stopping");
    };
    let stop = async {
        tokio::pin!(stdin_closed);
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        () = &mut stdin_closed => {}
                    }
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            () = &mut stdin_closed => {}
        }
    };
    let manifest = record(&opts, stop).await?;
    println!("{}", serde_json::to_string(&manifest)?);
    Ok(())
}
