//! The soak controller: start `satsuma-sfu` and the soak workers, sample every `sample_every`,
//! tear down, print the per-sample table and the summary, and decide pass/fail.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use satsuma_bot::harness::{APP_ID, APP_SECRET, SfuProcess};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tracing::{info, warn};

use super::{
    BotLoss, DropClass, RoomPlan, SoakCommand, SoakReply, SoakTarget, SocketDrops, Verdict,
    VerdictInputs, WorkerSample, classify_drop, label_value, parse_metrics, series_of, udp_tables,
    verdict,
};
use crate::media::MediaProfile;
use crate::process;
use crate::worker::Counters;

/// Everything a soak run needs.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Run length after the rooms are up.
    pub duration: Duration,
    /// Rooms.
    pub rooms: usize,
    /// Members per room.
    pub room_size: usize,
    /// One churn step (a leave and a join in one room, rooms in turn) every this long; zero: none.
    pub churn_every: Duration,
    /// Soak worker processes (rooms are dealt out round-robin).
    pub workers: usize,
    /// Sampling period.
    pub sample_every: Duration,
    /// The `satsuma-sfu` binary.
    pub sfu_bin: PathBuf,
    /// Extra flags for it.
    pub sfu_args: Vec<String>,
    /// Media.
    pub media: MediaProfile,
    /// Rooms built at once per worker.
    pub concurrency: usize,
    /// CPU share the run is sized for, percent of all cores (reported against the measurement).
    pub target_cpu_pct: f64,
    /// The command line, for the report.
    pub command: String,
}

/// One sample.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since the rooms were up.
    pub t_s: f64,
    /// SFU `VmRSS`, MiB.
    pub rss_mib: f64,
    /// SFU CPU over the last period, percent of one core.
    pub sfu_cpu_pct: f64,
    /// Bots (all workers) CPU over the last period, percent of one core.
    pub bots_cpu_pct: f64,
    /// Milliseconds per second the SFU's threads waited, runnable, for a CPU (summed over
    /// threads; from schedstat): how much the rest of the machine starved it.
    pub sfu_runq_ms_per_s: f64,
    /// RTP packets the SFU handed to subscriber legs per second over the last period.
    pub forwarded_pps: f64,
    /// `satsuma_sfu_sessions`.
    pub sessions: f64,
    /// `satsuma_sfu_subscriptions`.
    pub legs: f64,
    /// Members in the rooms.
    pub members: usize,
    /// Joins and leaves so far.
    pub joins: u64,
    /// Leaves so far.
    pub leaves: u64,
    /// Bots' lost packets so far.
    pub bot_lost: u64,
    /// SFU loss-class drops so far.
    pub sfu_loss_drops: u64,
    /// Errors so far (workers' + SFU-side).
    pub errors: u64,
    /// 1-minute load average.
    pub loadavg: f64,
}

/// The soak's outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakReport {
    /// Start time.
    pub started_utc: String,
    /// Command line.
    pub command: String,
    /// Machine.
    pub machine: String,
    /// Rooms × size, churn, media.
    pub load: String,
    /// Load average (1 min) before the SFU started and at the end.
    pub loadavg_before: f64,
    /// At the end.
    pub loadavg_after: f64,
    /// Seconds from "rooms up" to the last sample.
    pub wall_s: f64,
    /// SFU CPU-seconds per wall second over that time (1.0 = one core).
    pub sfu_cores: f64,
    /// Bots' CPU-seconds per wall second.
    pub bots_cores: f64,
    /// The controller's own CPU-seconds per wall second.
    pub controller_cores: f64,
    /// (SFU + bots) ÷ (wall × cores), percent.
    pub cpu_share_pct: f64,
    /// Milliseconds per wall second the SFU's threads waited for a CPU (starvation).
    pub sfu_runq_ms_per_s: f64,
    /// RSS at the baseline sample (minute 2, or half-way in runs shorter than 3 minutes).
    pub rss_baseline_mib: f64,
    /// Time of the baseline sample.
    pub rss_baseline_t_s: f64,
    /// RSS at the last sample.
    pub rss_end_mib: f64,
    /// Highest RSS sampled.
    pub rss_peak_mib: f64,
    /// RSS after every member left.
    pub rss_after_teardown_mib: f64,
    /// Growth baseline → end, percent.
    pub rss_growth_pct: f64,
    /// Whether the RSS criterion was enforced.
    pub rss_enforced: bool,
    /// Packets forwarded (`forwarded_packets_total`) from rooms-up to the last sample.
    pub forwarded: u64,
    /// RTP packets received by the SFU over that time.
    pub rtp_in: u64,
    /// SFU CPU µs per forwarded packet over that time.
    pub cpu_us_per_forwarded: f64,
    /// Bot media counters (whole run, teardown included).
    pub bots: Counters,
    /// Members with loss, corruption or misrouting.
    pub bad_bots: Vec<BotLoss>,
    /// SFU drops by reason (whole SFU lifetime), with the soak's class.
    pub sfu_drops: BTreeMap<String, (u64, String)>,
    /// Kernel drops at the SFU's and the bots' UDP sockets.
    pub sfu_socket_drops: u64,
    /// Kernel drops at the bots' sockets.
    pub bot_socket_drops: u64,
    /// Joins, leaves, sessions created/deleted, tracks pulled/closed.
    pub churn: WorkerSample,
    /// SFU API requests answered ≥ 400, by `route status`.
    pub api_failures: BTreeMap<String, u64>,
    /// Quota refusals, shard and session panics.
    pub sfu_refusals_and_panics: u64,
    /// `sessions / tracks / legs` gauges after the teardown (all should be 0).
    pub after_teardown: (f64, f64, f64),
    /// Sessions and tracks the SFU collected by timeout (clean leaves should leave none).
    pub collected: (f64, f64),
    /// Error messages (workers' first ones and the controller's).
    pub errors: Vec<String>,
    /// Error count.
    pub error_count: u64,
    /// The verdict.
    pub verdict: Verdict,
    /// Samples.
    pub samples: Vec<Sample>,
}

struct WorkerProc {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

impl WorkerProc {
    fn spawn() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("own executable")?;
        let mut child = Command::new(exe)
            .arg("soak-worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawn soak worker")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        Ok(Self {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        })
    }

    async fn send(&mut self, cmd: &SoakCommand) -> anyhow::Result<()> {
        let mut text = serde_json::to_string(cmd)?;
        text.push('\n');
        self.stdin.write_all(text.as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<SoakReply> {
        let line = tokio::time::timeout(REPLY_TIMEOUT, self.stdout.next_line())
            .await
            .context("soak worker reply timed out")??
            .context("soak worker exited")?;
        Ok(serde_json::from_str(&line)?)
    }
}

/// Everything one reading of the SFU gives.
#[derive(Debug, Clone, Default)]
struct SfuReading {
    at: Option<Instant>,
    cpu_s: f64,
    bots_cpu_s: f64,
    own_cpu_s: f64,
    runq_s: f64,
    rss_mib: f64,
    metrics: BTreeMap<String, f64>,
}

impl SfuReading {
    fn m(&self, series: &str) -> f64 {
        self.metrics.get(series).copied().unwrap_or(0.0)
    }
}

async fn fetch_metrics(
    http: &reqwest::Client,
    base: &str,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(parse_metrics(&text))
}

fn cpu_s(pid: u32) -> f64 {
    process::cpu_time(pid).map_or(0.0, |d| d.as_secs_f64())
}

fn merge(samples: &[WorkerSample]) -> WorkerSample {
    let mut m = WorkerSample::default();
    for s in samples {
        m.members += s.members;
        m.joins += s.joins;
        m.leaves += s.leaves;
        m.sessions_created += s.sessions_created;
        m.sessions_deleted += s.sessions_deleted;
        m.tracks_closed += s.tracks_closed;
        m.tracks_pulled += s.tracks_pulled;
        m.pulls_already_closed += s.pulls_already_closed;
        m.counters = m.counters.plus(&s.counters);
        m.bad_bots.extend(s.bad_bots.iter().cloned());
        m.stalled.extend(s.stalled.iter().cloned());
        m.errors += s.errors;
        m.error_messages.extend(s.error_messages.iter().cloned());
    }
    m
}

/// SFU-side counts: loss-class drops, failures by `route status`, refusals and panics.
fn sfu_side(metrics: &BTreeMap<String, f64>) -> (u64, BTreeMap<String, u64>, u64) {
    let loss: f64 = series_of(metrics, "satsuma_sfu_dropped_total")
        .filter(|(s, _)| {
            label_value(s, "reason").is_some_and(|r| classify_drop(r) == DropClass::Loss)
        })
        .map(|(_, v)| v)
        .sum();
    let mut api = BTreeMap::new();
    for (s, v) in series_of(metrics, "satsuma_sfu_api_requests_total") {
        let status = label_value(s, "status").unwrap_or("");
        if status.parse::<u16>().is_ok_and(|c| c >= 400) && v > 0.0 {
            let route = label_value(s, "route").unwrap_or("?");
            api.insert(format!("{route} {status}"), v as u64);
        }
    }
    let bad: f64 = [
        "satsuma_sfu_quota_refusals_total",
        "satsuma_sfu_shard_panics_total",
    ]
    .iter()
    .map(|n| series_of(metrics, n).map(|(_, v)| v).sum::<f64>())
    .sum::<f64>()
        + metrics
            .get("satsuma_sfu_session_panics_total")
            .copied()
            .unwrap_or(0.0);
    (loss as u64, api, bad as u64)
}

/// Run the soak. Returns the report; the caller decides the exit code from its verdict.
pub async fn run_soak(opts: &SoakOptions) -> anyhow::Result<SoakReport> {
    if opts.room_size < 2 {
        bail!("--room-size must be at least 2");
    }
    if opts.rooms == 0 {
        bail!("--rooms must be at least 1");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started_utc = crate::run::utc_now();
    let loadavg_before = process::loadavg();
    let args: Vec<&str> = opts.sfu_args.iter().map(String::as_str).collect();
    let mut sfu = SfuProcess::start(&opts.sfu_bin, &args)
        .with_context(|| format!("start {}", opts.sfu_bin.display()))?;
    let sfu_pid = sfu.pid();
    let base = sfu.base_url();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()?;
    info!(
        "soak: satsuma-sfu pid {sfu_pid} at {base}; {} rooms × {}, churn every {:?}, {:?}",
        opts.rooms, opts.room_size, opts.churn_every, opts.duration
    );

    // Rooms dealt out to workers; room i churns at (i+1)·E, then every rooms·E.
    let n_workers = opts.workers.clamp(1, opts.rooms);
    let every_ms = opts.churn_every.as_millis() as u64;
    let mut plans: Vec<Vec<RoomPlan>> = vec![Vec::new(); n_workers];
    for i in 0..opts.rooms {
        plans[i % n_workers].push(RoomPlan {
            name: format!("r{i}"),
            size: opts.room_size,
            churn_offset_ms: every_ms * (i as u64 + 1),
            churn_period_ms: every_ms * opts.rooms as u64,
        });
    }
    let mut workers = Vec::new();
    for _ in 0..n_workers {
        workers.push(WorkerProc::spawn()?);
    }
    let worker_pids: Vec<u32> = workers.iter().filter_map(|w| w.child.id()).collect();
    let target = SoakTarget {
        url: base.clone(),
        app: APP_ID.into(),
        secret: APP_SECRET.into(),
    };
    for (w, rooms) in workers.iter_mut().zip(plans) {
        w.send(&SoakCommand::Start {
            target: target.clone(),
            media: opts.media,
            rooms,
            concurrency: opts.concurrency,
        })
        .await?;
    }
    let mut controller_errors = Vec::new();
    for w in &mut workers {
        match w.recv().await? {
            SoakReply::Started(s) => info!("worker up: {} members", s.members),
            other => bail!("soak worker start: {other:?}"),
        }
    }

    let own_pid = std::process::id();
    let read = |metrics: BTreeMap<String, f64>| SfuReading {
        at: Some(Instant::now()),
        cpu_s: cpu_s(sfu_pid),
        bots_cpu_s: worker_pids.iter().map(|&p| cpu_s(p)).sum(),
        own_cpu_s: cpu_s(own_pid),
        runq_s: super::runqueue_wait_s(sfu_pid),
        rss_mib: process::rss_mib(sfu_pid).unwrap_or(0.0),
        metrics,
    };
    let mut socket_drops_sfu = SocketDrops::default();
    let mut socket_drops_bots = SocketDrops::default();
    let t0 = Instant::now();
    let first = read(fetch_metrics(&http, &base).await.unwrap_or_default());
    let mut prev = first.clone();
    let mut samples = Vec::new();
    let mut last_worker = WorkerSample::default();
    let mut last = first.clone();
    eprintln!(
        "{:>6} {:>9} {:>7} {:>7} {:>7} {:>9} {:>8} {:>5} {:>7} {:>6} {:>6} {:>6} {:>5}",
        "t s",
        "RSS MiB",
        "SFU %",
        "bots %",
        "runq ms",
        "fwd pkt/s",
        "sessions",
        "legs",
        "members",
        "joins",
        "lost",
        "errors",
        "load"
    );
    let end = t0 + opts.duration;
    let mut next = t0 + opts.sample_every;
    while next <= end + Duration::from_millis(10) {
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
        // A late sample (an overloaded machine, a worker busy in a churn step) moves the next
        // one: samples are never taken back to back, so per-period rates stay meaningful.
        next = (next + opts.sample_every).max(Instant::now() + opts.sample_every / 2);
        if !sfu.is_running() {
            controller_errors.push(format!(
                "satsuma-sfu exited during the soak; stderr tail: {}",
                tail(&sfu.stderr(), 20)
            ));
            break;
        }
        let metrics = match fetch_metrics(&http, &base).await {
            Ok(m) => m,
            Err(e) => {
                controller_errors.push(format!("/metrics: {e:#}"));
                prev.metrics.clone()
            }
        };
        let now = read(metrics);
        let table = udp_tables();
        socket_drops_sfu.record(&table, &[sfu_pid]);
        socket_drops_bots.record(&table, &worker_pids);
        let mut ws = Vec::new();
        for w in &mut workers {
            w.send(&SoakCommand::Sample).await?;
        }
        for w in &mut workers {
            match w.recv().await? {
                SoakReply::Sample(s) => ws.push(s),
                other => controller_errors.push(format!("worker sample: {other:?}")),
            }
        }
        let wsum = merge(&ws);
        let dt = now
            .at
            .zip(prev.at)
            .map_or(1.0, |(a, b)| (a - b).as_secs_f64().max(1e-3));
        let (loss_drops, api, bad) = sfu_side(&now.metrics);
        let s = Sample {
            t_s: t0.elapsed().as_secs_f64(),
            rss_mib: now.rss_mib,
            sfu_cpu_pct: (now.cpu_s - prev.cpu_s) / dt * 100.0,
            bots_cpu_pct: (now.bots_cpu_s - prev.bots_cpu_s) / dt * 100.0,
            sfu_runq_ms_per_s: (now.runq_s - prev.runq_s).max(0.0) / dt * 1000.0,
            forwarded_pps: (now.m("satsuma_sfu_forwarded_packets_total")
                - prev.m("satsuma_sfu_forwarded_packets_total"))
                / dt,
            sessions: now.m("satsuma_sfu_sessions"),
            legs: now.m("satsuma_sfu_subscriptions"),
            members: wsum.members,
            joins: wsum.joins,
            leaves: wsum.leaves,
            bot_lost: wsum.counters.lost,
            sfu_loss_drops: loss_drops,
            errors: wsum.errors + api.values().sum::<u64>() + bad + controller_errors.len() as u64,
            loadavg: process::loadavg(),
        };
        eprintln!(
            "{:>6.0} {:>9.1} {:>7.1} {:>7.1} {:>7.0} {:>9.0} {:>8.0} {:>5.0} {:>7} {:>6} {:>6} {:>6} {:>5.2}",
            s.t_s,
            s.rss_mib,
            s.sfu_cpu_pct,
            s.bots_cpu_pct,
            s.sfu_runq_ms_per_s,
            s.forwarded_pps,
            s.sessions,
            s.legs,
            s.members,
            s.joins,
            s.bot_lost,
            s.errors,
            s.loadavg
        );
        samples.push(s);
        prev = now.clone();
        last = now;
        last_worker = wsum;
    }

    // Teardown: every member leaves cleanly; the SFU must end with nothing.
    for w in &mut workers {
        w.send(&SoakCommand::Stop).await?;
    }
    let mut finals = Vec::new();
    for w in &mut workers {
        match w.recv().await {
            Ok(SoakReply::Stopped(s)) => finals.push(s),
            Ok(other) => controller_errors.push(format!("worker stop: {other:?}")),
            Err(e) => controller_errors.push(format!("worker stop: {e:#}")),
        }
    }
    let table = udp_tables();
    socket_drops_sfu.record(&table, &[sfu_pid]);
    for w in &mut workers {
        if tokio::time::timeout(Duration::from_secs(10), w.child.wait())
            .await
            .is_err()
        {
            let _ = w.child.kill().await;
        }
    }
    // Let the shards finish the deletes and free what they held.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = fetch_metrics(&http, &base).await.unwrap_or_else(|e| {
        controller_errors.push(format!("/metrics after teardown: {e:#}"));
        BTreeMap::new()
    });
    let rss_after = process::rss_mib(sfu_pid).unwrap_or(0.0);
    let gauge = |n: &str| after.get(n).copied().unwrap_or(0.0);
    let after_teardown = (
        gauge("satsuma_sfu_sessions"),
        gauge("satsuma_sfu_tracks"),
        gauge("satsuma_sfu_subscriptions"),
    );
    if after_teardown != (0.0, 0.0, 0.0) {
        controller_errors.push(format!(
            "after every member left the SFU still holds sessions/tracks/legs {after_teardown:?}"
        ));
    }
    let fin = if finals.len() == workers.len() {
        merge(&finals)
    } else {
        last_worker.clone()
    };
    if fin.sessions_created != fin.sessions_deleted {
        controller_errors.push(format!(
            "sessions created {} but deleted {}",
            fin.sessions_created, fin.sessions_deleted
        ));
    }
    drop(sfu);

    // Summary.
    let wall = last
        .at
        .zip(first.at)
        .map_or(0.0, |(a, b)| (a - b).as_secs_f64());
    let per_wall = |x: f64| if wall > 0.0 { x / wall } else { 0.0 };
    let sfu_cores = per_wall(last.cpu_s - first.cpu_s);
    let bots_cores = per_wall(last.bots_cpu_s - first.bots_cpu_s);
    let controller_cores = per_wall(last.own_cpu_s - first.own_cpu_s);
    let forwarded = (last.m("satsuma_sfu_forwarded_packets_total")
        - first.m("satsuma_sfu_forwarded_packets_total")) as u64;
    let rtp_in = (last.m("satsuma_sfu_rtp_packets_in_total")
        - first.m("satsuma_sfu_rtp_packets_in_total")) as u64;
    let rss_enforced = opts.duration >= Duration::from_secs(180);
    let baseline_t = if rss_enforced {
        120.0
    } else {
        opts.duration.as_secs_f64() / 2.0
    };
    let baseline = samples
        .iter()
        .find(|s| s.t_s >= baseline_t - 1.0)
        .or(samples.first());
    let rss_baseline = baseline.map_or(0.0, |s| s.rss_mib);
    let rss_end = samples.last().map_or(0.0, |s| s.rss_mib);
    let rss_growth_pct = if rss_baseline > 0.0 {
        (rss_end - rss_baseline) / rss_baseline * 100.0
    } else {
        0.0
    };
    let final_metrics = if after.is_empty() {
        &last.metrics
    } else {
        &after
    };
    let (loss_drops, api_failures, refusals) = sfu_side(final_metrics);
    let mut sfu_drops = BTreeMap::new();
    for (s, v) in series_of(final_metrics, "satsuma_sfu_dropped_total") {
        if let Some(r) = label_value(s, "reason")
            && v > 0.0
        {
            let class = match classify_drop(r) {
                DropClass::Loss => "loss",
                DropClass::ByDesign => "by design",
                DropClass::Churn => "churn",
            };
            sfu_drops.insert(r.to_owned(), (v as u64, class.to_owned()));
        }
    }
    let mut errors: Vec<String> = fin.error_messages.clone();
    errors.extend(controller_errors.iter().cloned());
    for (k, v) in &api_failures {
        errors.push(format!("SFU answered {v} × {k}"));
    }
    if refusals > 0 {
        errors.push(format!("{refusals} quota refusals or panics at the SFU"));
    }
    let error_count =
        fin.errors + controller_errors.len() as u64 + api_failures.values().sum::<u64>() + refusals;
    let inputs = VerdictInputs {
        sfu_loss_drops: loss_drops,
        sfu_socket_drops: socket_drops_sfu.total(),
        bot_lost: fin.counters.lost,
        bot_corrupt: fin.counters.corrupt,
        bot_foreign: fin.counters.foreign,
        bot_socket_drops: socket_drops_bots.total(),
        rss_growth_pct,
        rss_enforced,
        errors: error_count,
    };
    let v = verdict(&inputs);
    let m = &opts.media;
    Ok(SoakReport {
        started_utc,
        command: opts.command.clone(),
        machine: format!("{cores} cores"),
        load: format!(
            "{} rooms × {} members (each: 1 session publishing audio + {} kbit/s video{}, 1 \
             session pulling the other {}'s audio + video), one leave + join every {:?} (rooms in \
             turn), {} worker processes",
            opts.rooms,
            opts.room_size,
            m.video_kbps,
            if m.simulcast {
                " in 3 simulcast layers"
            } else {
                ""
            },
            opts.room_size - 1,
            opts.churn_every,
            n_workers
        ),
        loadavg_before,
        loadavg_after: process::loadavg(),
        wall_s: wall,
        sfu_cores,
        bots_cores,
        controller_cores,
        cpu_share_pct: (sfu_cores + bots_cores) / cores as f64 * 100.0,
        sfu_runq_ms_per_s: per_wall(last.runq_s - first.runq_s) * 1000.0,
        rss_baseline_mib: rss_baseline,
        rss_baseline_t_s: baseline.map_or(0.0, |s| s.t_s),
        rss_end_mib: rss_end,
        rss_peak_mib: samples.iter().map(|s| s.rss_mib).fold(0.0, f64::max),
        rss_after_teardown_mib: rss_after,
        rss_growth_pct,
        rss_enforced,
        forwarded,
        rtp_in,
        cpu_us_per_forwarded: if forwarded > 0 {
            (last.cpu_s - first.cpu_s) * 1e6 / forwarded as f64
        } else {
            0.0
        },
        bots: fin.counters,
        bad_bots: fin.bad_bots.clone(),
        sfu_drops,
        sfu_socket_drops: socket_drops_sfu.total(),
        bot_socket_drops: socket_drops_bots.total(),
        churn: WorkerSample {
            bad_bots: Vec::new(),
            error_messages: Vec::new(),
            stalled: Vec::new(),
            ..fin
        },
        api_failures,
        sfu_refusals_and_panics: refusals,
        after_teardown,
        collected: (
            final_metrics
                .get("satsuma_sfu_sessions_collected_total")
                .copied()
                .unwrap_or(0.0),
            final_metrics
                .get("satsuma_sfu_tracks_collected_total")
                .copied()
                .unwrap_or(0.0),
        ),
        errors,
        error_count,
        verdict: v,
        samples,
    })
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl SoakReport {
    /// The summary as Markdown.
    pub fn markdown(&self, target_cpu_pct: f64) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "Soak {} — `{}`\n\nMachine: {}; load average {:.2} before, {:.2} after. Load: {}.\n\n",
            self.started_utc,
            self.command,
            self.machine,
            self.loadavg_before,
            self.loadavg_after,
            self.load
        ));
        s.push_str("| t s | RSS MiB | SFU CPU % | bots CPU % | SFU run-queue wait ms/s | fwd pkt/s | sessions | legs | members | joins | bot lost | SFU loss drops | errors | load |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for x in &self.samples {
            s.push_str(&format!(
                "| {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {:.2} |\n",
                x.t_s,
                x.rss_mib,
                x.sfu_cpu_pct,
                x.bots_cpu_pct,
                x.sfu_runq_ms_per_s,
                x.forwarded_pps,
                x.sessions,
                x.legs,
                x.members,
                x.joins,
                x.bot_lost,
                x.sfu_loss_drops,
                x.errors,
                x.loadavg
            ));
        }
        let b = &self.bots;
        let c = &self.churn;
        let rows: Vec<(String, String)> = vec![
            ("wall time (rooms up → last sample)".into(), format!("{:.0} s", self.wall_s)),
            (
                "CPU share (SFU + bots) of all cores".into(),
                format!(
                    "{:.1} % (target {:.0} %): SFU {:.3} + bots {:.3} CPU-s per wall s; controller {:.3}",
                    self.cpu_share_pct, target_cpu_pct, self.sfu_cores, self.bots_cores, self.controller_cores
                ),
            ),
            (
                format!(
                    "SFU RSS at {:.0} s → end (growth){}",
                    self.rss_baseline_t_s,
                    if self.rss_enforced { "" } else { " — not enforced (run < 3 min)" }
                ),
                format!(
                    "{:.1} → {:.1} MiB ({:+.2} %); peak {:.1}; after teardown {:.1}",
                    self.rss_baseline_mib, self.rss_end_mib, self.rss_growth_pct, self.rss_peak_mib,
                    self.rss_after_teardown_mib
                ),
            ),
            (
                "packets forwarded / RTP in (rooms up → last sample)".into(),
                format!("{} / {}", self.forwarded, self.rtp_in),
            ),
            ("SFU CPU per forwarded packet".into(), format!("{:.1} µs", self.cpu_us_per_forwarded)),
            (
                "SFU threads waiting for a CPU (run queue)".into(),
                format!("{:.0} ms per wall second", self.sfu_runq_ms_per_s),
            ),
            (
                "bots: sent / received / lost / corrupt / foreign / duplicates".into(),
                format!(
                    "{} / {} / {} / {} / {} / {}",
                    b.sent_packets, b.recv_packets, b.lost, b.corrupt, b.foreign, b.duplicates
                ),
            ),
            (
                "kernel socket drops: SFU / bots".into(),
                format!("{} / {}", self.sfu_socket_drops, self.bot_socket_drops),
            ),
            (
                "SFU drops by reason (class)".into(),
                if self.sfu_drops.is_empty() {
                    "none".into()
                } else {
                    self.sfu_drops
                        .iter()
                        .map(|(r, (n, c))| format!("{r} {n} ({c})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ),
            (
                "SFU-caused loss / harness loss".into(),
                format!("{} / {}", self.verdict.sfu_caused_loss, self.verdict.harness_loss),
            ),
            (
                "members with loss".into(),
                if self.bad_bots.is_empty() {
                    "none".into()
                } else {
                    self.bad_bots
                        .iter()
                        .take(10)
                        .map(|l| format!("{} lost {} of {} (corrupt {}, foreign {})", l.name, l.lost, l.received + l.lost, l.corrupt, l.foreign))
                        .collect::<Vec<_>>()
                        .join("; ")
                },
            ),
            (
                "churn: joins / leaves / sessions created / deleted / tracks pulled / closed (pull closes the SFU had done already)".into(),
                format!(
                    "{} / {} / {} / {} / {} / {} ({})",
                    c.joins, c.leaves, c.sessions_created, c.sessions_deleted, c.tracks_pulled, c.tracks_closed, c.pulls_already_closed
                ),
            ),
            (
                "SFU after teardown: sessions / tracks / legs; collected by timeout".into(),
                format!(
                    "{} / {} / {}; {} sessions, {} tracks",
                    self.after_teardown.0, self.after_teardown.1, self.after_teardown.2,
                    self.collected.0, self.collected.1
                ),
            ),
            ("errors".into(), self.error_count.to_string()),
            (
                "verdict".into(),
                if self.verdict.failures.is_empty() {
                    "PASS".into()
                } else {
                    format!("FAIL: {}", self.verdict.failures.join("; "))
                },
            ),
        ];
        s.push_str("\n| | |\n|---|---|\n");
        for (k, v) in rows {
            s.push_str(&format!("| {k} | {v} |\n"));
        }
        if !self.errors.is_empty() {
            s.push_str("\nErrors (first ones):\n");
            for e in self.errors.iter().take(30) {
                s.push_str(&format!("- {e}\n"));
            }
        }
        s
    }
}

/// Print a warning when the measured CPU share is far from the target.
pub fn check_cpu_target(report: &SoakReport, target: f64) {
    if (report.cpu_share_pct - target).abs() > 15.0 {
        warn!(
            "CPU share {:.1} % is far from the {:.0} % target: resize with --rooms",
            report.cpu_share_pct, target
        );
    }
}
