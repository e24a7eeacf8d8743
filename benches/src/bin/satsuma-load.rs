//! `satsuma-load`: load harness for Satsuma's SFU, run side by side with Janus.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use satsuma_bench::janus_server::JanusSettings;
use satsuma_bench::media::MediaProfile;
use satsuma_bench::report::{BweMode, RampLimits, SfuKind};
use satsuma_bench::run::{RampOptions, RunOptions, SatsumaSource, run_all};
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

    /// Limited scenario: subscribers of the one audio + video publisher; the first one's
    /// downlink is limited to --limited-kbps.
    #[arg(long, default_value_t = 4)]
    limited_subscribers: usize,

    /// Limited scenario: the limited subscriber's downlink in kbit/s (a token-bucket shaper with
    /// a 200 ms queue in front of the bot).
    #[arg(long, default_value_t = satsuma_bench::scenario::DEFAULT_LIMIT_KBPS)]
    limited_kbps: u32,

    /// Relay scenario (`--scenarios relay`, Satsuma only): subscribers of the one audio + video
    /// publisher. Each round runs it on one satsuma-sfu node, then on two nodes joined by the
    /// relay (cluster CA and node certificates made with `satsuma-sfu cluster-ca` / `node-cert`
    /// in a temporary folder; publisher on node A, subscribers on node B), and reports the
    /// relay's CPU per relayed packet and the latency it adds (p50 / p99).
    #[arg(long, default_value_t = 10)]
    relay_subscribers: usize,

    /// Ramp scenario (`--scenarios ramp`): subscribers of the first step. The ramp starts one SFU,
    /// one publisher of audio (50 pkt/s) and video (the top layer only, whatever --simulcast
    /// says, so that Satsuma and Janus forward the same packets), then adds subscribers (each
    /// pulls both tracks) step by step: --ramp-start, then every multiple of --ramp-step up to
    /// --ramp-max. After each step: --ramp-warmup, then a --ramp-step-seconds window with its own
    /// latency percentiles. A window breaks with loss above --ramp-max-loss or server-added p99
    /// above --ramp-max-p99-ms; the ramp stops at the first step that breaks (after
    /// --ramp-retries re-measurements) or whose subscribers fail to join, and reports the last
    /// step that held: the maximum sustained egress (packets/s, Mbit/s of RTP payload), with
    /// the SFU's CPU and the bots' CPU per worker process. With --sfus satsuma,janus each SFU
    /// gets its own ramp, one after the other.
    #[arg(long, default_value_t = 1)]
    ramp_start: usize,

    /// Ramp: subscribers added per step (the steps after the first are its multiples).
    #[arg(long, default_value_t = 20)]
    ramp_step: usize,

    /// Ramp: the most subscribers (the last step; "max reached" when it holds).
    #[arg(long, default_value_t = 1000)]
    ramp_max: usize,

    /// Ramp: seconds to wait after a step's new subscribers connected, before its window.
    #[arg(long, default_value_t = 2.0)]
    ramp_warmup: f64,

    /// Ramp: each step's measuring window, seconds.
    #[arg(long, default_value_t = 5.0)]
    ramp_step_seconds: f64,

    /// Ramp: windows measured again at the same size after one breaks, before the ramp stops
    /// there (a shared machine's passing spikes); 0 stops at the first broken window.
    #[arg(long, default_value_t = 1)]
    ramp_retries: usize,

    /// Ramp: a window with more loss than this, % of expected packets, breaks the step.
    #[arg(long, default_value_t = 1.0)]
    ramp_max_loss: f64,

    /// Ramp: a window whose server-added p99 (SFU path minus the direct bot-to-bot baseline,
    /// typical track, this window only) is above this many ms breaks the step.
    #[arg(long, default_value_t = 10.0)]
    ramp_max_p99_ms: f64,

    /// Ramp: bot worker processes (instead of --workers). Each worker runs its bots on one
    /// thread, so it tops out at one core: more workers than cores keep a single worker from
    /// being the limit. A window where a worker used 85 % of a core or more, or the publisher
    /// sent under 95 % of its packets, is flagged "bots" in the table.
    #[arg(long, default_value_t = 4)]
    ramp_workers: usize,

    /// Satsuma's bandwidth estimation: `on` (its default), `off` (--bwe-initial-kbps 0), or both
    /// (`on,off`: each scenario runs once per mode, in this order, with a fresh SFU each time).
    /// Ignored for Janus and with --sfu-url.
    #[arg(
        long,
        env = "SATSUMA_LOAD_BWE",
        value_delimiter = ',',
        default_value = "on"
    )]
    bwe: Vec<BweMode>,

    /// Initial bandwidth estimate Satsuma gets when estimation is on, kbit/s. Default: the SFU's.
    #[arg(long)]
    bwe_initial_kbps: Option<u32>,

    /// Run every (scenario, SFU, estimation mode) this many times, interleaved per scenario
    /// (with --bwe on,off --repeat 2: on, off, on, off), so that modes compared with each other
    /// share the machine's noise.
    #[arg(long, default_value_t = 1)]
    repeat: usize,

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
    #[command(hide = true)]
    Worker,
    /// Internal: a soak worker process (rooms with churn) driven by `soak`.
    #[command(hide = true)]
    SoakWorker,
    /// Soak: a long realistic mixed load with churn against one satsuma-sfu (a benchmark, not
    /// in CI). Exits non-zero on any SFU-caused loss, SFU RSS growth ≥ 5 % between minute 2 and
    /// the end (runs of 3 minutes or more), or any error.
    Soak(SoakArgs),
}

/// `satsuma-load soak` flags.
///
/// Several rooms of meeting-style members (each member: one session publishing audio and
/// simulcast video, one session pulling every other member's audio and video) run for
/// `--minutes`, while every `--churn-secs` one member of one room (rooms in turn) leaves (closes
/// its tracks, deletes its sessions; the others close their pulls) and a new one joins (two new
/// sessions; the others renegotiate to pull it). Bots run in `--workers` separate processes so
/// the SFU's and the bots' CPU are measured apart (from /proc). Every `--sample-secs` the
/// controller reads the SFU's RSS and CPU, its /metrics (packets forwarded, drops by reason,
/// sessions, API statuses), the kernel's per-socket UDP drops, and the workers' counters (loss,
/// corruption, misrouting, stalled tracks, errors).
#[derive(Debug, clap::Args)]
struct SoakArgs {
    /// Minutes to run after every room is up. Runs shorter than 3 minutes report the RSS growth
    /// (from the half-way sample) without enforcing it.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,

    /// Rooms (the load size). 12 is sized for about 70 % of the 2-core machine (14 rooms measured
    /// 1.62–1.68 CPU-s per s for SFU + bots on 2026-12-06, i.e. 81–84 %); see benches/README.md
    /// "Soak".
    #[arg(long, env = "SATSUMA_LOAD_SOAK_ROOMS", default_value_t = 12)]
    rooms: usize,

    /// Members per room (at least 2). Each publishes audio + video and pulls the others.
    #[arg(long, default_value_t = 4)]
    room_size: usize,

    /// Seconds between churn steps (one leave + one join, rooms in turn); 0 disables churn.
    #[arg(long, default_value_t = 3.0)]
    churn_secs: f64,

    /// Seconds between samples.
    #[arg(long, default_value_t = 10.0)]
    sample_secs: f64,

    /// Soak worker processes hosting the bots (rooms are dealt out round-robin).
    #[arg(long, default_value_t = 2)]
    workers: usize,

    /// Rooms built at once per worker at the start.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,

    /// CPU share (SFU + bots, percent of all cores) the size is meant to reach; only reported
    /// against the measurement (a warning when more than 15 points off).
    #[arg(long, default_value_t = 70.0)]
    target_cpu: f64,

    /// The satsuma-sfu binary. Default: `satsuma-sfu` next to this executable.
    #[arg(long, env = "SATSUMA_LOAD_SFU_BIN")]
    sfu_bin: Option<PathBuf>,

    /// Extra argument for satsuma-sfu (repeatable), e.g. `--sfu-arg=--shards --sfu-arg=2`.
    #[arg(long = "sfu-arg", allow_hyphen_values = true, default_values_t = ["--log".to_owned(), "warn".to_owned()])]
    sfu_args: Vec<String>,

    /// Video bitrate, kbit/s, of the top simulcast layer (the others send a third and a tenth).
    #[arg(long, default_value_t = 1500)]
    video_kbps: u32,

    /// Publish video as three simulcast layers; `--simulcast false` sends the top layer only.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    simulcast: bool,

    /// Write the JSON report (samples included) here.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Write the Markdown summary here (it is always printed too).
    #[arg(long)]
    markdown: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let worker = matches!(cli.command, Some(Sub::Worker | Sub::SoakWorker));
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
    match &cli.command {
        Some(Sub::Worker) => return rt.block_on(satsuma_bench::worker::run_worker()),
        Some(Sub::SoakWorker) => {
            return rt.block_on(satsuma_bench::soak::worker::run_soak_worker());
        }
        Some(Sub::Soak(args)) => return soak(&rt, args),
        None => {}
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
        limited_subscribers: cli.limited_subscribers,
        limited_kbps: cli.limited_kbps,
        relay_subscribers: cli.relay_subscribers,
        bwe: cli.bwe.clone(),
        bwe_initial_kbps: cli.bwe_initial_kbps,
        repeat: cli.repeat.max(1),
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
        ramp: RampOptions {
            start: cli.ramp_start,
            step: cli.ramp_step,
            max: cli.ramp_max,
            warmup: Duration::from_secs_f64(cli.ramp_warmup.max(0.0)),
            window: Duration::from_secs_f64(cli.ramp_step_seconds.max(0.5)),
            retries: cli.ramp_retries,
            workers: cli.ramp_workers.max(1),
            limits: RampLimits {
                max_loss_pct: cli.ramp_max_loss,
                max_added_p99_ms: cli.ramp_max_p99_ms,
                ..RampLimits::default()
            },
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

fn soak(rt: &tokio::runtime::Runtime, a: &SoakArgs) -> anyhow::Result<()> {
    use satsuma_bench::soak::controller::{SoakOptions, check_cpu_target, run_soak};
    let sfu_bin = match &a.sfu_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable has no folder")?
            .join("satsuma-sfu"),
    };
    let opts = SoakOptions {
        duration: Duration::from_secs_f64((a.minutes * 60.0).max(10.0)),
        rooms: a.rooms,
        room_size: a.room_size,
        churn_every: Duration::from_secs_f64(a.churn_secs.max(0.0)),
        workers: a.workers,
        sample_every: Duration::from_secs_f64(a.sample_secs.max(1.0)),
        sfu_bin,
        sfu_args: a.sfu_args.clone(),
        media: MediaProfile {
            video_kbps: a.video_kbps,
            simulcast: a.simulcast,
            ..MediaProfile::default()
        },
        concurrency: a.concurrency,
        target_cpu_pct: a.target_cpu,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = rt.block_on(run_soak(&opts))?;
    let md = report.markdown(a.target_cpu);
    println!("{md}");
    check_cpu_target(&report, a.target_cpu);
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", p.display()))?;
    }
    if let Some(p) = &a.markdown {
        std::fs::write(p, &md).with_context(|| format!("write {}", p.display()))?;
    }
    if !report.verdict.failures.is_empty() {
        // Not an `Err`: its backtrace (symbolised from this binary's debug info) takes minutes.
        eprintln!("soak failed: {}", report.verdict.failures.join("; "));
        std::process::exit(1);
    }
    Ok(())
}
