//! `satsuma-load`: load harness for Satsuma's SFU, run side by side with Janus.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use satsuma_bench::janus_server::JanusSettings;
use satsuma_bench::media::MediaProfile;
use satsuma_bench::report::SfuKind;
use satsuma_bench::run::{RunOptions, SatsumaSource, run_all};
use satsuma_bench::scenario::ScenarioKind;
use tracing_subscriber::EnvFilter;

/// Load harness: publishes synthetic audio/video from native str0m bots (in separate worker
/// processes) through Satsuma's SFU and Janus's VideoRoom, and reports packets/s, SFU CPU µs per
/// forwarded packet, loss, server-added latency and memory per participant (JSON + Markdown).
#[derive(Debug, Parser)]
#[command(name = "satsuma-load", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,

    /// SFUs to measure, in order (comma-separated).
    #[arg(
        long,
        env = "SATSUMA_LOAD_SFUS",
        value_delimiter = ',',
        default_value = "satsuma,janus"
    )]
    sfus: Vec<SfuArg>,

    /// Scenarios to run, in order (comma-separated).
    #[arg(
        long,
        env = "SATSUMA_LOAD_SCENARIOS",
        value_delimiter = ',',
        default_value = "audio,meeting,livestream"
    )]
    scenarios: Vec<ScenarioKind>,

    /// The satsuma-sfu binary to start per scenario. Default: `satsuma-sfu` next to this executable.
    #[arg(long, env = "SATSUMA_LOAD_SFU_BIN")]
    sfu_bin: Option<PathBuf>,

    /// Extra argument for satsuma-sfu (repeatable), e.g. `--sfu-arg=--shards --sfu-arg=2`.
    #[arg(long = "sfu-arg", allow_hyphen_values = true, default_values_t = ["--log".to_owned(), "warn".to_owned()])]
    sfu_args: Vec<String>,

    /// Use a running Satsuma SFU at this base URL instead of starting one.
    #[arg(long, env = "SATSUMA_LOAD_SFU_URL")]
    sfu_url: Option<String>,

    /// App id for --sfu-url.
    #[arg(long, env = "SATSUMA_LOAD_APP", default_value = "satsuma")]
    app: String,

    /// App secret for --sfu-url.
    #[arg(long, env = "SATSUMA_LOAD_SECRET", default_value = "satsuma-secret")]
    secret: String,

    /// Pid of the running SFU (--sfu-url), for CPU and memory readings.
    #[arg(long)]
    sfu_pid: Option<u32>,

    /// The janus executable (Debian package `janus`, 1.1.2).
    #[arg(long, env = "SATSUMA_LOAD_JANUS_BIN", default_value = "janus")]
    janus_bin: PathBuf,

    /// Janus `event_loops` (0: Janus's default of one thread per handle). Default: the core count.
    #[arg(long)]
    janus_event_loops: Option<usize>,

    /// Janus log level (0-7).
    #[arg(long, default_value_t = 3)]
    janus_log_level: u8,

    /// Audio scenario: publishers.
    #[arg(long, default_value_t = 10)]
    audio_publishers: usize,

    /// Audio scenario: subscribers (each pulls every publisher).
    #[arg(long, default_value_t = 20)]
    audio_subscribers: usize,

    /// Meeting scenario: participants (each publishes audio + video and pulls all others).
    #[arg(long, default_value_t = 5)]
    meeting_size: usize,

    /// Livestream scenario: subscribers of the one audio + video publisher.
    #[arg(long, default_value_t = 20)]
    livestream_subscribers: usize,

    /// Bot worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,

    /// Direct bot-to-bot pairs per worker for the latency baseline.
    #[arg(long, default_value_t = 1)]
    baseline_pairs: usize,

    /// Concurrent signaling operations per worker.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,

    /// Seconds to wait after everyone connected before measuring.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,

    /// Measurement window, seconds.
    #[arg(long, default_value_t = 15.0)]
    duration: f64,

    /// Video bitrate, kbit/s, of the top simulcast layer (the others send a third and a tenth).
    #[arg(long, default_value_t = 1500)]
    video_kbps: u32,

    /// Publish video as three simulcast layers (q, h, f); `--simulcast false` sends the top
    /// layer only.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    simulcast: bool,

    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,

    /// Seconds between keyframes.
    #[arg(long, default_value_t = 3.0)]
    keyframe_secs: f64,

    /// Audio payload bytes per 20 ms packet.
    #[arg(long, default_value_t = 100)]
    audio_payload: u16,

    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Write the Markdown table here (it is always printed too).
    #[arg(long)]
    markdown: Option<PathBuf>,

    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "SATSUMA_LOAD_LOG", default_value = "info")]
    log: String,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SfuArg {
    /// Satsuma's satsuma-sfu.
    Satsuma,
    /// Janus 1.1.2 VideoRoom.
    Janus,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Internal: a bot worker process driven over stdin/stdout by the controller.
    Worker,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let worker = matches!(cli.command, Some(Sub::Worker));
    let filter = if worker {
        "warn".to_owned()
    } else {
        cli.log.clone()
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(if worker { 1 } else { 2 })
        .enable_all()
        .build()?;
    if worker {
        return rt.block_on(satsuma_bench::worker::run_worker());
    }
    let satsuma = match &cli.sfu_url {
        Some(url) => SatsumaSource::Running {
            url: url.clone(),
            app: cli.app.clone(),
            secret: cli.secret.clone(),
            pid: cli.sfu_pid,
        },
        None => {
            let path = match &cli.sfu_bin {
                Some(p) => p.clone(),
                None => std::env::current_exe()?
                    .parent()
                    .context("executable has no folder")?
                    .join("satsuma-sfu"),
            };
            SatsumaSource::Binary {
                path,
                args: cli.sfu_args.clone(),
            }
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let opts = RunOptions {
        sfus: cli
            .sfus
            .iter()
            .map(|s| match s {
                SfuArg::Satsuma => SfuKind::Satsuma,
                SfuArg::Janus => SfuKind::Janus,
            })
            .collect(),
        scenarios: cli.scenarios.clone(),
        satsuma,
        janus: JanusSettings {
            binary: cli.janus_bin.clone(),
            event_loops: cli.janus_event_loops.unwrap_or(cores),
            rtp_port_range: "20000-40000".into(),
            log_level: cli.janus_log_level,
        },
        audio_publishers: cli.audio_publishers,
        audio_subscribers: cli.audio_subscribers,
        meeting_size: cli.meeting_size,
        livestream_subscribers: cli.livestream_subscribers,
        workers: cli.workers,
        baseline_pairs: cli.baseline_pairs,
        concurrency: cli.concurrency,
        warmup: Duration::from_secs_f64(cli.warmup.max(0.0)),
        duration: Duration::from_secs_f64(cli.duration.max(0.5)),
        media: MediaProfile {
            audio_payload: cli.audio_payload,
            video_kbps: cli.video_kbps,
            fps: cli.fps,
            keyframe_secs: cli.keyframe_secs,
            simulcast: cli.simulcast,
            ..MediaProfile::default()
        },
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = rt.block_on(run_all(&opts));
    let md = report.markdown();
    println!("{md}");
    if let Some(p) = &cli.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", p.display()))?;
    }
    if let Some(p) = &cli.markdown {
        std::fs::write(p, &md).with_context(|| format!("write {}", p.display()))?;
    }
    Ok(())
}
