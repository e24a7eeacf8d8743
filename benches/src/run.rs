//! The controller: start each SFU, spawn bot workers, run the scenarios, measure, report.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use satsuma_bot::harness::{APP_ID, APP_SECRET, SfuProcess};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tracing::{info, warn};

use crate::janus::JanusClient;
use crate::janus_server::{JanusProcess, JanusSettings};
use crate::media::MediaProfile;
use crate::process;
use crate::report::{
    BweMode, ProcessReadings, RampLimits, RampResult, RampStep, RampStop, RelayReadings, RunReport,
    ScenarioMeta, ScenarioResult, SfuKind,
};
use crate::scenario::{Plan, ScenarioKind, ramp_counts};
use crate::worker::{FeedRef, SubscribeSpec, Target, WorkerCommand, WorkerReply, WorkerReport};

/// Where Satsuma comes from.
#[derive(Debug, Clone)]
pub enum SatsumaSource {
    /// Start this binary per scenario.
    Binary {
        /// Path of `satsuma-sfu`.
        path: PathBuf,
        /// Extra flags.
        args: Vec<String>,
    },
    /// Use a running SFU.
    Running {
        /// Base URL.
        url: String,
        /// App id.
        app: String,
        /// App secret.
        secret: String,
        /// Its pid, for CPU and memory.
        pid: Option<u32>,
    },
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// SFUs to measure, in order.
    pub sfus: Vec<SfuKind>,
    /// Scenarios, in order.
    pub scenarios: Vec<ScenarioKind>,
    /// Satsuma.
    pub satsuma: SatsumaSource,
    /// Janus.
    pub janus: JanusSettings,
    /// Audio scenario: publishers.
    pub audio_publishers: usize,
    /// Audio scenario: subscribers.
    pub audio_subscribers: usize,
    /// Meeting: participants.
    pub meeting_size: usize,
    /// Livestream: subscribers.
    pub livestream_subscribers: usize,
    /// Limited: subscribers (the first one limited).
    pub limited_subscribers: usize,
    /// Limited: the limited subscriber's downlink, kbit/s.
    pub limited_kbps: u32,
    /// Relay: subscribers (on node B) of the one publisher (on node A).
    pub relay_subscribers: usize,
    /// Satsuma's bandwidth estimation, each mode a separate run per scenario, in this order.
    pub bwe: Vec<BweMode>,
    /// Initial estimate Satsuma gets when estimation is on (`None`: its default).
    pub bwe_initial_kbps: Option<u32>,
    /// Times every (scenario, SFU, estimation mode) runs, interleaved (A/B/A/B).
    pub repeat: usize,
    /// Bot worker processes.
    pub workers: usize,
    /// Direct baseline pairs per worker.
    pub baseline_pairs: usize,
    /// Concurrent signaling operations per worker.
    pub concurrency: usize,
    /// Seconds between the last subscriber connecting and the window.
    pub warmup: Duration,
    /// Measurement window.
    pub duration: Duration,
    /// Media.
    pub media: MediaProfile,
    /// The `ramp` scenario.
    pub ramp: RampOptions,
    /// The command line, for the report.
    pub command: String,
}

struct WorkerProc {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

impl WorkerProc {
    fn spawn() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("own executable")?;
        let mut child = Command::new(exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawn worker")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        Ok(Self {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn send(&mut self, cmd: &WorkerCommand) -> anyhow::Result<()> {
        let mut text = serde_json::to_string(cmd)?;
        text.push('\n');
        self.stdin.write_all(text.as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<WorkerReply> {
        let line = tokio::time::timeout(REPLY_TIMEOUT, self.stdout.next_line())
            .await
            .context("worker reply timed out")??
            .context("worker exited")?;
        Ok(serde_json::from_str(&line)?)
    }

    async fn stop(mut self) {
        let _ = self.send(&WorkerCommand::Stop).await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Send one command to every worker (each its own), then collect the replies in order.
async fn broadcast(
    workers: &mut [WorkerProc],
    cmds: Vec<WorkerCommand>,
) -> anyhow::Result<Vec<WorkerReply>> {
    for (w, c) in workers.iter_mut().zip(&cmds) {
        w.send(c).await?;
    }
    let mut out = Vec::new();
    for w in workers.iter_mut() {
        out.push(w.recv().await?);
    }
    Ok(out)
}

enum Sfu {
    Satsuma(
        #[allow(dead_code, reason = "held so the process is killed on drop")] Option<SfuProcess>,
        Target,
        Option<u32>,
    ),
    Janus(JanusProcess, Target),
    /// Two Satsuma nodes joined by the relay: publishers on `nodes[0]` (A), subscribers on
    /// `nodes[1]` (B).
    SatsumaPair {
        nodes: [SfuProcess; 2],
        #[allow(dead_code, reason = "held so the certificates are removed on drop")]
        certs: CertDir,
    },
}

/// A temporary folder with the relay's cluster CA and node certificates, removed on drop.
struct CertDir(PathBuf);

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The relay node names of the `relay` scenario.
const RELAY_NODES: [&str; 2] = ["sfu-a", "sfu-b"];

fn satsuma_target(p: &SfuProcess) -> Target {
    Target::Satsuma {
        url: p.base_url(),
        app: APP_ID.into(),
        secret: APP_SECRET.into(),
    }
}

fn free_udp_port() -> anyhow::Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").context("bind a UDP port")?;
    Ok(s.local_addr()?.port())
}

/// Runs `satsuma-sfu` once (its certificate subcommands), failing with its stderr.
fn sfu_command(path: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new(path)
        .args(args)
        .output()
        .with_context(|| format!("run {}", path.display()))?;
    if !out.status.success() {
        bail!(
            "{} {}: {}",
            path.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Starts two `satsuma-sfu` nodes on 127.0.0.1 joined by the relay: a cluster CA and one
/// certificate per node made with `satsuma-sfu cluster-ca` / `node-cert` in a temporary folder,
/// each node with the other as its relay peer.
fn start_pair(path: &std::path::Path, args: &[String]) -> anyhow::Result<Sfu> {
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "satsuma-load-relay-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let certs = CertDir(dir.clone());
    let d = dir.to_str().context("temp dir path")?;
    sfu_command(
        path,
        &["cluster-ca", "--out", d, "--cluster", "satsuma-load"],
    )?;
    let (ca, ca_key) = (format!("{d}/ca.pem"), format!("{d}/ca-key.pem"));
    for name in RELAY_NODES {
        sfu_command(
            path,
            &[
                "node-cert",
                "--name",
                name,
                "--out",
                d,
                "--ca",
                &ca,
                "--ca-key",
                &ca_key,
            ],
        )?;
    }
    let ports = [free_udp_port()?, free_udp_port()?];
    let start = |i: usize| -> anyhow::Result<SfuProcess> {
        let (me, peer) = (RELAY_NODES[i], RELAY_NODES[1 - i]);
        let mut a: Vec<String> = args.to_vec();
        a.extend([
            "--node-name".to_owned(),
            me.to_owned(),
            "--relay-bind".to_owned(),
            format!("127.0.0.1:{}", ports[i]),
            "--relay-cert".to_owned(),
            format!("{d}/{me}.pem"),
            "--relay-key".to_owned(),
            format!("{d}/{me}-key.pem"),
            "--relay-ca".to_owned(),
            ca.clone(),
            "--relay-peer".to_owned(),
            format!("{peer}=127.0.0.1:{}", ports[1 - i]),
        ]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        SfuProcess::start(path, &a).with_context(|| format!("start {} as {me}", path.display()))
    };
    let nodes = [start(0)?, start(1)?];
    Ok(Sfu::SatsumaPair { nodes, certs })
}

/// The relay link counters of `base`'s `/metrics` (datagrams, bytes, QUIC UDP bytes sent to
/// peers), read just after the node updated them (it does once a second), with the time.
async fn link_counters(base: &str) -> (Instant, [f64; 3]) {
    let read = || async {
        let m = satsuma_bot::harness::fetch_metrics(base).await.ok()?;
        let out = |name: &str| {
            m.samples
                .iter()
                .filter(|(k, _)| {
                    k.strip_prefix(name).is_some_and(|r| r.starts_with('{'))
                        && k.contains("direction=\"out\"")
                })
                .map(|(_, v)| v)
                .sum::<f64>()
        };
        Some([
            out("satsuma_sfu_relay_packets_total"),
            out("satsuma_sfu_relay_bytes_total"),
            out("satsuma_sfu_relay_udp_bytes_total"),
        ])
    };
    let first = read().await.unwrap_or_default();
    let deadline = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = Instant::now();
        if let Some(v) = read().await
            && v[0] != first[0]
        {
            return (now, v);
        }
    }
    (Instant::now(), first)
}

impl Sfu {
    async fn start(
        kind: SfuKind,
        bwe: Option<BweMode>,
        nodes: usize,
        opts: &RunOptions,
        plan: &Plan,
    ) -> anyhow::Result<Self> {
        if nodes > 1 {
            let SatsumaSource::Binary { path, args } = &opts.satsuma else {
                bail!("two relay nodes: only with a satsuma-sfu binary the harness starts");
            };
            if kind != SfuKind::Satsuma {
                bail!("two relay nodes: Satsuma only");
            }
            let mut args = args.clone();
            args.extend(bwe_args(bwe, opts.bwe_initial_kbps));
            return start_pair(path, &args);
        }
        match kind {
            SfuKind::Satsuma => match &opts.satsuma {
                SatsumaSource::Binary { path, args } => {
                    let mut args: Vec<String> = args.clone();
                    args.extend(bwe_args(bwe, opts.bwe_initial_kbps));
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let p = SfuProcess::start(path, &args)
                        .with_context(|| format!("start {}", path.display()))?;
                    let target = Target::Satsuma {
                        url: p.base_url(),
                        app: APP_ID.into(),
                        secret: APP_SECRET.into(),
                    };
                    let pid = Some(p.pid());
                    Ok(Sfu::Satsuma(Some(p), target, pid))
                }
                SatsumaSource::Running {
                    url,
                    app,
                    secret,
                    pid,
                } => Ok(Sfu::Satsuma(
                    None,
                    Target::Satsuma {
                        url: url.clone(),
                        app: app.clone(),
                        secret: secret.clone(),
                    },
                    *pid,
                )),
            },
            SfuKind::Janus => {
                let mut j = JanusProcess::start(&opts.janus)?;
                j.wait_ready(Duration::from_secs(30)).await?;
                let room = u64::from(rand::random::<u32>() | 1);
                let client = JanusClient::connect(&j.api_url).await?;
                client
                    .create_room(room, (plan.publishers.len() + 4) as u32)
                    .await
                    .context("create VideoRoom room")?;
                client.destroy().await;
                let target = Target::Janus {
                    url: j.api_url.clone(),
                    room,
                };
                Ok(Sfu::Janus(j, target))
            }
        }
    }

    /// Where publishers (and, on one node, everyone) signal.
    fn target(&self) -> Target {
        match self {
            Sfu::Satsuma(_, t, _) | Sfu::Janus(_, t) => t.clone(),
            Sfu::SatsumaPair { nodes, .. } => satsuma_target(&nodes[0]),
        }
    }

    /// Where subscribers signal when not at [`Sfu::target`].
    fn subscriber_target(&self) -> Option<Target> {
        match self {
            Sfu::SatsumaPair { nodes, .. } => Some(satsuma_target(&nodes[1])),
            _ => None,
        }
    }

    /// The SFU processes (two relay nodes: A first); empty when unknown.
    fn pids(&self) -> Vec<u32> {
        match self {
            Sfu::Satsuma(_, _, pid) => pid.iter().copied().collect(),
            Sfu::Janus(j, _) => vec![j.pid()],
            Sfu::SatsumaPair { nodes, .. } => nodes.iter().map(SfuProcess::pid).collect(),
        }
    }
}

/// The `satsuma-sfu` flags for an estimation mode (none: its own default).
pub fn bwe_args(bwe: Option<BweMode>, initial_kbps: Option<u32>) -> Vec<String> {
    let kbps = match bwe {
        None => return Vec::new(),
        Some(BweMode::Off) => 0,
        Some(BweMode::On) => match initial_kbps {
            Some(k) if k > 0 => k,
            // The SFU's default is on.
            _ => return Vec::new(),
        },
    };
    vec!["--bwe-initial-kbps".to_owned(), kbps.to_string()]
}

fn plan_for(kind: ScenarioKind, opts: &RunOptions) -> Plan {
    match kind {
        ScenarioKind::Audio => Plan::new(kind, opts.audio_subscribers, opts.audio_publishers),
        ScenarioKind::Meeting => Plan::new(kind, opts.meeting_size, 0),
        ScenarioKind::Livestream => Plan::new(kind, opts.livestream_subscribers, 0),
        ScenarioKind::Limited => Plan::limited(opts.limited_subscribers, opts.limited_kbps),
        ScenarioKind::Relay => Plan::new(kind, opts.relay_subscribers, 0),
        ScenarioKind::Ramp => Plan::new(kind, opts.ramp.max, 0),
    }
}

/// Run one scenario against one SFU (Satsuma: in estimation mode `bwe`, `None` when it is
/// not started by the harness).
pub async fn run_scenario(
    kind: ScenarioKind,
    sfu_kind: SfuKind,
    bwe: Option<BweMode>,
    opts: &RunOptions,
) -> anyhow::Result<ScenarioResult> {
    run_scenario_on(kind, sfu_kind, bwe, 1, opts).await
}

/// [`run_scenario`] on `nodes` SFU nodes (2: Satsuma nodes joined by the relay, publishers on
/// the first, subscribers on the second). The `relay` scenario's results carry
/// [`RelayReadings`].
pub async fn run_scenario_on(
    kind: ScenarioKind,
    sfu_kind: SfuKind,
    bwe: Option<BweMode>,
    nodes: usize,
    opts: &RunOptions,
) -> anyhow::Result<ScenarioResult> {
    let plan = plan_for(kind, opts);
    let mut notes = Vec::new();
    let sfu = Sfu::start(sfu_kind, bwe, nodes, opts, &plan).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = sfu.pids().into_iter().filter_map(process::rss_mib).sum();

    let n_workers = opts.workers.max(1);
    let mut workers = Vec::new();
    for _ in 0..n_workers {
        workers.push(WorkerProc::spawn()?);
    }
    let result = drive(&plan, &sfu, opts, &mut workers, &mut notes, rss_idle).await;
    for w in workers {
        w.stop().await;
    }
    drop(sfu);
    let (reports, readings, relay) = result?;
    let mut result = ScenarioResult::build(
        ScenarioMeta {
            scenario: kind.name().into(),
            sfu: sfu_kind,
            bwe,
            participants: plan.participants,
            planned_publishers: plan.publishers.len(),
            planned_subscribers: plan.subscribers.len(),
            nominal_egress_pps: plan.egress_pps(&opts.media),
            notes,
        },
        &reports,
        readings,
    );
    if kind == ScenarioKind::Relay {
        result.relay = Some(relay);
    }
    Ok(result)
}

async fn drive(
    plan: &Plan,
    sfu: &Sfu,
    opts: &RunOptions,
    workers: &mut [WorkerProc],
    notes: &mut Vec<String>,
    rss_idle: f64,
) -> anyhow::Result<(Vec<WorkerReport>, ProcessReadings, RelayReadings)> {
    init_workers(workers, sfu.target(), opts.media, opts, notes).await?;
    let feeds = start_publishers(workers, plan, notes).await?;
    let all: Vec<usize> = (0..plan.subscribers.len()).collect();
    let (connected, _) = start_subscribers(workers, sfu, plan, &all, &feeds, notes).await?;
    info!("{connected}/{} subscribers up", plan.subscribers.len());
    tokio::time::sleep(opts.warmup).await;
    let w = measure_window(workers, sfu, opts.duration, false, rss_idle, notes).await?;
    Ok((w.reports, w.readings, w.relay))
}

/// Sends `Init` (SFU `target`, `media`, the baseline pairs) to every worker.
async fn init_workers(
    workers: &mut [WorkerProc],
    target: Target,
    media: MediaProfile,
    opts: &RunOptions,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let init = (0..workers.len())
        .map(|_| WorkerCommand::Init {
            target: target.clone(),
            media,
            baseline_pairs: opts.baseline_pairs,
            concurrency: opts.concurrency,
        })
        .collect();
    for r in broadcast(workers, init).await? {
        match r {
            WorkerReply::Ready { baseline_pairs } if baseline_pairs < opts.baseline_pairs => {
                notes.push(format!(
                    "only {baseline_pairs}/{} baseline pairs connected",
                    opts.baseline_pairs
                ));
            }
            WorkerReply::Ready { .. } => {}
            other => bail!("worker init: {other:?}"),
        }
    }
    Ok(())
}

/// Starts `plan`'s publishers, dealt round-robin to the workers; their feeds by publisher index
/// (`None`: failed). Fails when none connected.
async fn start_publishers(
    workers: &mut [WorkerProc],
    plan: &Plan,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Option<FeedRef>>> {
    let pub_split = Plan::split(plan.publishers.len(), workers.len());
    let cmds = pub_split
        .iter()
        .map(|idx| WorkerCommand::Publish {
            publishers: idx.iter().map(|&i| plan.publishers[i].clone()).collect(),
        })
        .collect();
    let mut feeds: Vec<Option<FeedRef>> = vec![None; plan.publishers.len()];
    for (idx, r) in pub_split.iter().zip(broadcast(workers, cmds).await?) {
        match r {
            WorkerReply::Published { feeds: got, error } => {
                if let Some(e) = error {
                    notes.push(format!("publisher failed: {e}"));
                }
                for (&i, f) in idx.iter().zip(got) {
                    feeds[i] = f;
                }
            }
            other => bail!("publish: {other:?}"),
        }
    }
    let published = feeds.iter().filter(|f| f.is_some()).count();
    info!("{published}/{} publishers up", plan.publishers.len());
    if published == 0 {
        bail!("no publisher connected: {notes:?}");
    }
    Ok(feeds)
}

/// Starts the subscribers `indices` of `plan` (subscriber `i` on worker `i % workers`, so
/// subscribers added in steps stay spread evenly); (connected, failed).
async fn start_subscribers(
    workers: &mut [WorkerProc],
    sfu: &Sfu,
    plan: &Plan,
    indices: &[usize],
    feeds: &[Option<FeedRef>],
    notes: &mut Vec<String>,
) -> anyhow::Result<(usize, usize)> {
    let n = workers.len().max(1);
    let cmds = (0..workers.len())
        .map(|w| WorkerCommand::Subscribe {
            target: sfu.subscriber_target(),
            subscribers: indices
                .iter()
                .filter(|&&i| i % n == w)
                .filter_map(|&i| plan.subscribers.get(i))
                .map(|s| SubscribeSpec {
                    name: s.name.clone(),
                    limit_kbps: s.limit_kbps,
                    // Show each subscriber where they differ (limited) or are on another node (relay).
                    details: matches!(plan.kind, ScenarioKind::Limited | ScenarioKind::Relay),
                    feeds: s
                        .publishers
                        .iter()
                        .filter_map(|&p| feeds.get(p).cloned().flatten())
                        .collect(),
                })
                .collect(),
        })
        .collect();
    let (mut connected, mut failed) = (0, 0);
    for r in broadcast(workers, cmds).await? {
        match r {
            WorkerReply::Subscribed {
                connected: c,
                failed: f,
                error,
            } => {
                connected += c;
                failed += f;
                if f > 0 {
                    notes.push(format!(
                        "{f} subscribers failed: {}",
                        error.unwrap_or_default()
                    ));
                }
            }
            other => bail!("subscribe: {other:?}"),
        }
    }
    Ok((connected, failed))
}

/// What one measuring window gave.
struct Window {
    reports: Vec<WorkerReport>,
    readings: ProcessReadings,
    relay: RelayReadings,
    /// CPU of each worker process over the window, s.
    worker_cpu_s: Vec<f64>,
    /// Cores the whole machine kept busy over the window.
    machine_busy_cores: Option<f64>,
}

/// One measuring window of `duration`: mark the workers (with `restart_latency`, the latency
/// percentiles cover this window only), read the SFU's and the workers' CPU from `/proc` at both
/// ends, collect the workers' reports.
async fn measure_window(
    workers: &mut [WorkerProc],
    sfu: &Sfu,
    duration: Duration,
    restart_latency: bool,
    rss_idle: f64,
    notes: &mut Vec<String>,
) -> anyhow::Result<Window> {
    let n = workers.len();
    // Two relay nodes: node A's link counters, read just after an update at both ends. Read
    // outside the bots' window (before the mark, after the report): waiting for an update
    // takes up to a second, and inside the window it lengthened what the bots counted (mark
    // to report) but not `window_s`, which overstated every bot rate of the two-node run by
    // ~8 % (as if the publisher sent ~20 packets/s more than the link carried).
    let link_node = match sfu {
        Sfu::SatsumaPair { nodes, .. } => Some(nodes[0].base_url()),
        _ => None,
    };
    let link0 = match &link_node {
        Some(base) => Some(link_counters(base).await),
        None => None,
    };
    let marks = (0..n)
        .map(|_| WorkerCommand::Mark { restart_latency })
        .collect();
    for r in broadcast(workers, marks).await? {
        if r != WorkerReply::Marked {
            bail!("mark: {r:?}");
        }
    }
    let pids = sfu.pids();
    let worker_pids: Vec<Option<u32>> = workers.iter().map(WorkerProc::pid).collect();
    let workers_cpu = |pids: &[Option<u32>]| -> Vec<f64> {
        pids.iter()
            .map(|p| {
                p.and_then(process::cpu_time)
                    .map_or(0.0, |d| d.as_secs_f64())
            })
            .collect()
    };
    let loadavg = process::loadavg();
    let t0 = Instant::now();
    let machine0 = process::machine_ticks();
    let cpu0: Vec<Option<(Duration, Duration)>> =
        pids.iter().map(|&p| process::cpu_times(p)).collect();
    let bots0 = workers_cpu(&worker_pids);
    tokio::time::sleep(duration).await;
    let cpu1: Vec<Option<(Duration, Duration)>> =
        pids.iter().map(|&p| process::cpu_times(p)).collect();
    let bots1 = workers_cpu(&worker_pids);
    let machine1 = process::machine_ticks();
    let window_s = t0.elapsed().as_secs_f64();
    let reports_cmd = (0..n).map(|_| WorkerCommand::Report).collect();
    let mut reports = Vec::new();
    for r in broadcast(workers, reports_cmd).await? {
        match r {
            WorkerReply::Report(rep) => reports.push(rep),
            other => bail!("report: {other:?}"),
        }
    }
    let link1 = match &link_node {
        Some(base) => Some(link_counters(base).await),
        None => None,
    };
    let rss = pids.iter().filter_map(|&p| process::rss_mib(p)).sum();
    // Per node: (user, system) seconds over the window.
    let node_times: Vec<(f64, f64)> = cpu0
        .iter()
        .zip(&cpu1)
        .map(|(a, b)| match (a, b) {
            (Some((ua, sa)), Some((ub, sb))) => (
                ub.saturating_sub(*ua).as_secs_f64(),
                sb.saturating_sub(*sa).as_secs_f64(),
            ),
            _ => (0.0, 0.0),
        })
        .collect();
    let node_cpu_s: Vec<f64> = node_times.iter().map(|(u, s)| u + s).collect();
    let cpu_system_s = node_times.iter().map(|(_, s)| s).sum();
    if pids.is_empty() || cpu0.iter().chain(&cpu1).any(Option::is_none) {
        notes.push("SFU pid unknown: no CPU or memory figures".into());
    }
    let cpu_s = node_cpu_s.iter().sum();
    let mut relay = RelayReadings {
        nodes: pids.len().max(1),
        node_cpu_s,
        ..RelayReadings::default()
    };
    if let (Some((ta, a)), Some((tb, b))) = (link0, link1) {
        let secs = tb.saturating_duration_since(ta).as_secs_f64().max(1e-3);
        relay.link_pps = (b[0] - a[0]) / secs;
        relay.link_bytes_ps = (b[1] - a[1]) / secs;
        relay.link_udp_bytes_ps = (b[2] - a[2]) / secs;
        if relay.link_pps <= 0.0 {
            notes.push("the relay link counter did not move".into());
        }
    }
    let worker_cpu_s: Vec<f64> = bots1.iter().zip(&bots0).map(|(b, a)| b - a).collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(Window {
        reports,
        readings: ProcessReadings {
            window_s,
            cpu_s,
            cpu_system_s,
            rss_idle_mib: rss_idle,
            rss_mib: rss,
            bots_cpu_s: worker_cpu_s.iter().sum(),
            loadavg,
        },
        relay,
        worker_cpu_s,
        machine_busy_cores: machine0
            .zip(machine1)
            .and_then(|(a, b)| process::machine_busy_cores(a, b, cores)),
    })
}

/// The `ramp` scenario's settings.
#[derive(Debug, Clone)]
pub struct RampOptions {
    /// Subscribers of the first step.
    pub start: usize,
    /// Subscribers added per step (the steps are the multiples of it).
    pub step: usize,
    /// Subscribers at most.
    pub max: usize,
    /// Wait after a step's subscribers connected, before its window.
    pub warmup: Duration,
    /// Each step's measuring window.
    pub window: Duration,
    /// Windows measured again at the same size after one breaks, before the ramp stops.
    pub retries: usize,
    /// Bot worker processes (the ramp's own count: `--ramp-workers`).
    pub workers: usize,
    /// When a step holds.
    pub limits: RampLimits,
}

impl Default for RampOptions {
    fn default() -> Self {
        Self {
            start: 1,
            step: 20,
            max: 1000,
            warmup: Duration::from_secs(2),
            window: Duration::from_secs(5),
            retries: 1,
            workers: 4,
            limits: RampLimits::default(),
        }
    }
}

/// The `ramp` scenario against every SFU (every estimation mode, every round), one after the
/// other.
async fn run_ramps(opts: &RunOptions, ramps: &mut Vec<RampResult>) {
    for round in 0..opts.repeat.max(1) {
        for &sfu in &opts.sfus {
            for bwe in bwe_modes(sfu, opts) {
                let label = bwe.map_or(String::new(), |b| format!(", estimation {}", b.name()));
                info!("ramp on {}{label} (round {})", sfu.name(), round + 1);
                ramps.push(run_ramp(sfu, bwe, opts).await);
            }
        }
    }
}

/// One ramp: one audio + video publisher (the top video layer only, so that both SFUs forward
/// the same packets), then subscribers added in steps ([`ramp_counts`]); after each step a
/// warm-up and a measuring window (latency percentiles of that window only), judged by
/// [`RampStep::judge`]. A step that breaks is measured again up to `retries` times; the ramp
/// stops at the first step none of whose windows held, or when subscribers fail to join, or at
/// the maximum.
pub async fn run_ramp(sfu_kind: SfuKind, bwe: Option<BweMode>, opts: &RunOptions) -> RampResult {
    let r = &opts.ramp;
    let mut notes = vec![format!(
        "{} bot worker processes, {} baseline pair(s) each; warm-up {:.1} s and a {:.1} s window \
         per step, {} re-measurement(s) of a breaking step",
        r.workers.max(1),
        opts.baseline_pairs,
        r.warmup.as_secs_f64(),
        r.window.as_secs_f64(),
        r.retries
    )];
    let mut steps = Vec::new();
    let stop = match ramp_steps(sfu_kind, bwe, opts, &mut steps, &mut notes).await {
        Ok(stop) => stop,
        Err(e) => {
            warn!("ramp on {} failed: {e:#}", sfu_kind.name());
            let at = steps.last().map_or(0, |s: &RampStep| s.subscribers);
            (RampStop::Error, at, format!("{e:#}"))
        }
    };
    RampResult::finish(sfu_kind, bwe, r.limits, steps, stop, notes)
}

async fn ramp_steps(
    sfu_kind: SfuKind,
    bwe: Option<BweMode>,
    opts: &RunOptions,
    steps: &mut Vec<RampStep>,
    notes: &mut Vec<String>,
) -> anyhow::Result<(RampStop, usize, String)> {
    let r = &opts.ramp;
    let media = MediaProfile {
        simulcast: false,
        ..opts.media
    };
    let counts = ramp_counts(r.start, r.step, r.max);
    let plan = Plan::new(ScenarioKind::Ramp, counts.last().copied().unwrap_or(1), 0);
    let sfu = Sfu::start(sfu_kind, bwe, 1, opts, &plan).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = sfu.pids().into_iter().filter_map(process::rss_mib).sum();
    let mut workers = Vec::new();
    for _ in 0..r.workers.max(1) {
        workers.push(WorkerProc::spawn()?);
    }
    let result = ramp_drive(
        (sfu_kind, bwe),
        &plan,
        &counts,
        &sfu,
        media,
        opts,
        &mut workers,
        steps,
        notes,
        rss_idle,
    )
    .await;
    for w in workers {
        w.stop().await;
    }
    drop(sfu);
    result
}

#[allow(clippy::too_many_arguments, reason = "one private step of run_ramp")]
async fn ramp_drive(
    (sfu_kind, bwe): (SfuKind, Option<BweMode>),
    plan: &Plan,
    counts: &[usize],
    sfu: &Sfu,
    media: MediaProfile,
    opts: &RunOptions,
    workers: &mut [WorkerProc],
    steps: &mut Vec<RampStep>,
    notes: &mut Vec<String>,
    rss_idle: f64,
) -> anyhow::Result<(RampStop, usize, String)> {
    let r = &opts.ramp;
    init_workers(workers, sfu.target(), media, opts, notes).await?;
    let feeds = start_publishers(workers, plan, notes).await?;
    let nominal_ingress = plan.ingress_pps(&media);
    let mut have = 0;
    for &n in counts {
        let new: Vec<usize> = (have..n).collect();
        let (connected, failed) =
            start_subscribers(workers, sfu, plan, &new, &feeds, notes).await?;
        have = n;
        info!("ramp: {n} subscribers ({connected} new connected, {failed} failed)");
        if failed > 0 {
            return Ok((
                RampStop::JoinFailed,
                n,
                format!(
                    "{failed} of {} new subscribers failed to connect",
                    new.len()
                ),
            ));
        }
        tokio::time::sleep(r.warmup).await;
        let sub_plan = Plan::new(ScenarioKind::Ramp, n, 0);
        let mut last_breaks = Vec::new();
        for attempt in 1..=r.retries + 1 {
            let mut window_notes = Vec::new();
            let w =
                measure_window(workers, sfu, r.window, true, rss_idle, &mut window_notes).await?;
            let secs = w.readings.window_s.max(1e-3);
            let result = ScenarioResult::build(
                ScenarioMeta {
                    scenario: ScenarioKind::Ramp.name().into(),
                    sfu: sfu_kind,
                    bwe,
                    participants: sub_plan.participants,
                    planned_publishers: sub_plan.publishers.len(),
                    planned_subscribers: n,
                    nominal_egress_pps: sub_plan.egress_pps(&media),
                    notes: window_notes,
                },
                &w.reports,
                w.readings,
            );
            let step = RampStep::judge(
                n,
                attempt,
                result,
                w.worker_cpu_s.iter().map(|c| c / secs * 100.0).collect(),
                w.machine_busy_cores.map(|c| c * 100.0),
                nominal_ingress,
                &r.limits,
            );
            info!(
                "ramp: {n} subscribers, window {attempt}: egress {:.0} pkt/s, loss {:.2} %, \
                 server-added p99 {:.2} ms, SFU CPU {:.0} %, bots {:.0} %{}",
                step.result.egress_pps,
                step.result.loss_pct,
                step.result.added_p99_ms,
                step.result.sfu_cpu_pct,
                step.bots_cpu_pct(),
                if step.held() { "" } else { ": breaks" }
            );
            last_breaks = step.breaks.clone();
            let held = step.held();
            steps.push(step);
            if held {
                break;
            }
        }
        if let Some((reason, _)) = last_breaks.first() {
            let detail = last_breaks
                .iter()
                .map(|(_, t)| t.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            return Ok((*reason, n, detail));
        }
    }
    Ok((
        RampStop::MaxReached,
        have,
        format!("every step held up to {have} subscribers"),
    ))
}

/// Run every scenario against every SFU; failures become notes, not aborts.
pub async fn run_all(opts: &RunOptions) -> RunReport {
    let started_utc = utc_now();
    let mut results = Vec::new();
    let mut ramps = Vec::new();
    for &kind in &opts.scenarios {
        if kind == ScenarioKind::Relay {
            run_relay(opts, &mut results).await;
            continue;
        }
        if kind == ScenarioKind::Ramp {
            run_ramps(opts, &mut ramps).await;
            continue;
        }
        for round in 0..opts.repeat.max(1) {
            for &sfu in &opts.sfus {
                for bwe in bwe_modes(sfu, opts) {
                    let label = bwe.map_or(String::new(), |b| format!(", estimation {}", b.name()));
                    info!(
                        "scenario {} on {}{label} (round {})",
                        kind.name(),
                        sfu.name(),
                        round + 1
                    );
                    match run_scenario(kind, sfu, bwe, opts).await {
                        Ok(r) => results.push(r),
                        Err(e) => {
                            warn!(
                                "scenario {} on {}{label} failed: {e:#}",
                                kind.name(),
                                sfu.name()
                            );
                            let plan = plan_for(kind, opts);
                            results.push(ScenarioResult::build(
                                ScenarioMeta {
                                    scenario: kind.name().into(),
                                    sfu,
                                    bwe,
                                    participants: plan.participants,
                                    planned_publishers: plan.publishers.len(),
                                    planned_subscribers: plan.subscribers.len(),
                                    nominal_egress_pps: plan.egress_pps(&opts.media),
                                    notes: vec![format!("FAILED: {e:#}")],
                                },
                                &[],
                                ProcessReadings::default(),
                            ));
                        }
                    }
                }
            }
        }
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let m = &opts.media;
    let v = m.participant_config().video;
    let mut report = RunReport {
        started_utc,
        command: opts.command.clone(),
        machine: format!(
            "{cores} cores, load average {:.1} at the end",
            process::loadavg()
        ),
        media: format!(
            "audio 50 pkt/s × {} B; video {} kbit/s at {} fps ({} × {} B per frame, keyframe every {} s \
             × {}), {}",
            m.audio_payload,
            m.video_kbps,
            v.fps,
            v.delta_packets,
            v.payload_len,
            m.keyframe_secs,
            m.keyframe_scale,
            if m.simulcast {
                "in 3 simulcast layers q/h/f at 1/10, 1/3 and all of that bitrate (subscribers are \
                 nominally on f)"
            } else {
                "top layer only (no simulcast)"
            }
        ) + if opts.scenarios.contains(&ScenarioKind::Ramp) && m.simulcast {
            "; the ramp publishes the top layer only"
        } else {
            ""
        },
        results,
        ratios: Vec::new(),
        bwe: Vec::new(),
        relay: Vec::new(),
        ramps,
    };
    report.compute_ratios();
    report
}

/// The `relay` scenario: per round, one node then two nodes joined by the relay (Satsuma only,
/// in the first estimation mode).
async fn run_relay(opts: &RunOptions, results: &mut Vec<ScenarioResult>) {
    let kind = ScenarioKind::Relay;
    let bwe = bwe_modes(SfuKind::Satsuma, opts).first().copied().flatten();
    for round in 0..opts.repeat.max(1) {
        for nodes in [1, 2] {
            info!(
                "scenario relay on {nodes} satsuma node(s) (round {})",
                round + 1
            );
            match run_scenario_on(kind, SfuKind::Satsuma, bwe, nodes, opts).await {
                Ok(r) => results.push(r),
                Err(e) => {
                    warn!("scenario relay on {nodes} node(s) failed: {e:#}");
                    let plan = plan_for(kind, opts);
                    let mut r = ScenarioResult::build(
                        ScenarioMeta {
                            scenario: kind.name().into(),
                            sfu: SfuKind::Satsuma,
                            bwe,
                            participants: plan.participants,
                            planned_publishers: plan.publishers.len(),
                            planned_subscribers: plan.subscribers.len(),
                            nominal_egress_pps: plan.egress_pps(&opts.media),
                            notes: vec![format!("FAILED: {e:#}")],
                        },
                        &[],
                        ProcessReadings::default(),
                    );
                    r.relay = Some(RelayReadings {
                        nodes,
                        ..RelayReadings::default()
                    });
                    results.push(r);
                }
            }
        }
    }
}

/// The estimation modes an SFU runs in: Janus has none of Satsuma's; a Satsuma the harness does
/// not start runs as it was started.
fn bwe_modes(sfu: SfuKind, opts: &RunOptions) -> Vec<Option<BweMode>> {
    match (sfu, &opts.satsuma) {
        (SfuKind::Satsuma, SatsumaSource::Binary { .. }) if !opts.bwe.is_empty() => {
            opts.bwe.iter().copied().map(Some).collect()
        }
        _ => vec![None],
    }
}

/// Now as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, mo, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimation_modes_become_sfu_flags() {
        assert!(bwe_args(None, Some(500)).is_empty());
        assert_eq!(
            bwe_args(Some(BweMode::Off), None),
            ["--bwe-initial-kbps", "0"]
        );
        assert!(
            bwe_args(Some(BweMode::On), None).is_empty(),
            "the SFU's default is on"
        );
        assert_eq!(
            bwe_args(Some(BweMode::On), Some(800)),
            ["--bwe-initial-kbps", "800"]
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
