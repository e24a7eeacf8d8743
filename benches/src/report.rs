//! Results: one [`ScenarioResult`] per (scenario, SFU), built from the worker reports and the SFU's
//! `/proc` readings, rendered as JSON and as a Markdown table.

use serde::{Deserialize, Serialize};

use crate::worker::{Counters, SubscriberDetail, TrackLatency, WorkerReport};

/// Which SFU a result is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SfuKind {
    /// Satsuma.
    Satsuma,
    /// Janus 1.1.2 VideoRoom.
    Janus,
}

impl SfuKind {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            SfuKind::Satsuma => "satsuma",
            SfuKind::Janus => "janus",
        }
    }
}

/// Satsuma's bandwidth estimation in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BweMode {
    /// On (`--bwe-initial-kbps` above 0; the SFU's default).
    On,
    /// Off (`--bwe-initial-kbps 0`).
    Off,
}

impl BweMode {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            BweMode::On => "on",
            BweMode::Off => "off",
        }
    }
}

/// Latency percentiles, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    /// Typical track's median.
    pub p50: f64,
    /// Typical track's 99th percentile.
    pub p99: f64,
    /// Worst track's 99th percentile.
    pub p99_worst: f64,
    /// Tracks with samples.
    pub tracks: usize,
}

/// Samples-weighted median of `values` (value, weight).
fn weighted_median(mut values: Vec<(f64, u64)>) -> f64 {
    values.retain(|(_, w)| *w > 0);
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: u64 = values.iter().map(|(_, w)| w).sum();
    let mut acc = 0;
    for (v, w) in &values {
        acc += w;
        if acc * 2 >= total {
            return *v;
        }
    }
    values.last().map(|(v, _)| *v).unwrap_or(0.0)
}

impl LatencyMs {
    /// Combine per-track summaries: samples-weighted medians of the per-track p50 and p99.
    pub fn of(tracks: &[TrackLatency]) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: weighted_median(tracks.iter().map(|t| (ms(t.p50_us), t.samples)).collect()),
            p99: weighted_median(tracks.iter().map(|t| (ms(t.p99_us), t.samples)).collect()),
            p99_worst: tracks.iter().map(|t| ms(t.p99_us)).fold(0.0, f64::max),
            tracks: tracks.iter().filter(|t| t.samples > 0).count(),
        }
    }
}

/// SFU process readings over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessReadings {
    /// Window length, s.
    pub window_s: f64,
    /// utime + stime of the SFU over the window, s.
    pub cpu_s: f64,
    /// Of it, stime: the kernel working for the SFU (system calls; on loopback also the
    /// delivery into the receivers' sockets, which runs in the sender's context), s.
    #[serde(default)]
    pub cpu_system_s: f64,
    /// RSS before any participant joined, MiB.
    pub rss_idle_mib: f64,
    /// RSS at the end of the window, MiB.
    pub rss_mib: f64,
    /// utime + stime of all bot workers over the window, s.
    pub bots_cpu_s: f64,
    /// 1-minute load average at the start of the window.
    pub loadavg: f64,
}

/// The outcome of one scenario against one SFU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// Scenario name.
    pub scenario: String,
    /// SFU.
    pub sfu: SfuKind,
    /// Satsuma's bandwidth estimation (`None`: Janus, or a Satsuma the harness did not start).
    #[serde(default)]
    pub bwe: Option<BweMode>,
    /// Participants (scenario's count).
    pub participants: usize,
    /// Publishers planned / connected.
    pub publishers: (usize, usize),
    /// Subscribers planned / connected.
    pub subscribers: (usize, usize),
    /// Nominal egress, packets/s.
    pub nominal_egress_pps: f64,
    /// Measured ingress (packets publishers sent), packets/s.
    pub ingress_pps: f64,
    /// Measured egress (RTP packets subscribers received), packets/s.
    pub egress_pps: f64,
    /// Egress, Mbit/s of RTP payload.
    pub egress_mbps: f64,
    /// SFU CPU, % of one core.
    pub sfu_cpu_pct: f64,
    /// SFU CPU per forwarded packet, µs.
    pub cpu_us_per_packet: Option<f64>,
    /// Loss, % of expected packets.
    pub loss_pct: f64,
    /// Corrupt or misrouted packets.
    pub corrupt: u64,
    /// One-way latency through the SFU.
    pub latency: LatencyMs,
    /// One-way latency of the direct baseline pairs.
    pub baseline_latency: LatencyMs,
    /// Server-added p50 (SFU path − baseline), ms.
    pub added_p50_ms: f64,
    /// Server-added p99 (typical track; SFU path − baseline), ms.
    pub added_p99_ms: f64,
    /// SFU RSS growth per participant, KiB.
    pub rss_per_participant_kib: f64,
    /// Raw readings.
    pub process: ProcessReadings,
    /// Summed worker counters over the window.
    pub counters: Counters,
    /// Per subscriber, where subscribers differ (`limited`).
    #[serde(default)]
    pub subscriber_details: Vec<SubscriberDetail>,
    /// Problems seen while setting up.
    pub notes: Vec<String>,
    /// The `relay` scenario's readings (one node, or two joined by the relay).
    #[serde(default)]
    pub relay: Option<RelayReadings>,
}

/// What a run of the `relay` scenario measured besides the usual figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RelayReadings {
    /// SFU nodes: 1 (everyone on one node) or 2 (publisher on A, subscribers on B).
    pub nodes: usize,
    /// utime + stime of each node over the window, s (node A first).
    pub node_cpu_s: Vec<f64>,
    /// Media datagrams/s node A sent to node B over the relay link (its
    /// `satsuma_sfu_relay_packets_total{direction="out"}`, between two updates of it); 0 on
    /// one node.
    pub link_pps: f64,
    /// Their bytes/s (relay framing included, QUIC not).
    pub link_bytes_ps: f64,
    /// UDP payload bytes/s of the link as QUIC counts them (acks, control, keep-alives
    /// included).
    pub link_udp_bytes_ps: f64,
}

/// One round of the `relay` scenario: the two-node run against the one-node run before it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RelayComparison {
    /// Round (1-based).
    pub round: usize,
    /// One node: CPU, % of a core.
    pub one_cpu_pct: f64,
    /// Two nodes: CPU of A and of B, % of a core.
    pub two_cpu_pct: (f64, f64),
    /// Egress packets/s (subscribers' receipts), one node and two.
    pub egress_pps: (f64, f64),
    /// Relay link datagrams/s (A → B).
    pub link_pps: f64,
    /// Link datagrams per packet the publishers sent (about 1.0: each packet crossed once,
    /// whatever the number of subscribers on B; all simulcast layers cross while B's legs may
    /// take any).
    pub link_copies: f64,
    /// Relay CPU per relayed packet, µs: (CPU/s of both nodes − CPU/s of one node) ÷ link
    /// datagrams/s.
    pub relay_us_per_packet: f64,
    /// The same with the one-node CPU scaled to the two-node run's egress (when the two runs
    /// forwarded different amounts, e.g. extra keyframes on B): (CPU/s two nodes − CPU/s one
    /// node × egress two ÷ egress one) ÷ link datagrams/s.
    #[serde(default)]
    pub relay_us_per_packet_scaled: f64,
    /// µs CPU per forwarded packet, one node and two (both nodes' CPU).
    pub us_per_fwd_packet: (f64, f64),
    /// Server-added p50 / p99 ms on one node.
    pub one_added_ms: (f64, f64),
    /// The same on two nodes (publisher → A → relay → B → subscriber).
    pub two_added_ms: (f64, f64),
    /// What the relay adds, p50 / p99 ms (two nodes − one).
    pub relay_added_ms: (f64, f64),
    /// Loss %, one node and two.
    pub loss_pct: (f64, f64),
    /// Load average at the start of each window (one node, two).
    pub loadavg: (f64, f64),
}

/// Inputs to [`ScenarioResult::build`] besides the worker reports.
#[derive(Debug, Clone)]
pub struct ScenarioMeta {
    /// Scenario name.
    pub scenario: String,
    /// SFU.
    pub sfu: SfuKind,
    /// Satsuma's bandwidth estimation.
    pub bwe: Option<BweMode>,
    /// Participants.
    pub participants: usize,
    /// Planned publishers.
    pub planned_publishers: usize,
    /// Planned subscribers.
    pub planned_subscribers: usize,
    /// Nominal egress pps.
    pub nominal_egress_pps: f64,
    /// Notes.
    pub notes: Vec<String>,
}

impl ScenarioResult {
    /// Aggregate.
    pub fn build(meta: ScenarioMeta, reports: &[WorkerReport], proc_: ProcessReadings) -> Self {
        let mut c = Counters::default();
        let mut lat = Vec::new();
        let mut base_lat = Vec::new();
        let mut subscriber_details = Vec::new();
        let (mut pubs, mut subs) = (0, 0);
        for r in reports {
            c = c.plus(&r.sfu);
            subscriber_details.extend(r.subscriber_details.iter().cloned());
            lat.extend_from_slice(&r.latency);
            base_lat.extend_from_slice(&r.baseline_latency);
            pubs += r.publishers;
            subs += r.subscribers;
        }
        let w = proc_.window_s.max(1e-3);
        let latency = LatencyMs::of(&lat);
        let baseline_latency = LatencyMs::of(&base_lat);
        let expected = c.recv_unique + c.lost;
        let rss_growth_kib = (proc_.rss_mib - proc_.rss_idle_mib) * 1024.0;
        Self {
            scenario: meta.scenario,
            sfu: meta.sfu,
            bwe: meta.bwe,
            participants: meta.participants,
            publishers: (meta.planned_publishers, pubs),
            subscribers: (meta.planned_subscribers, subs),
            nominal_egress_pps: meta.nominal_egress_pps,
            ingress_pps: c.sent_packets as f64 / w,
            egress_pps: c.recv_packets as f64 / w,
            egress_mbps: c.recv_bytes as f64 * 8.0 / w / 1e6,
            sfu_cpu_pct: proc_.cpu_s / w * 100.0,
            cpu_us_per_packet: (c.recv_packets > 0)
                .then(|| proc_.cpu_s * 1e6 / c.recv_packets as f64),
            loss_pct: if expected > 0 {
                c.lost as f64 * 100.0 / expected as f64
            } else {
                0.0
            },
            corrupt: c.corrupt + c.foreign,
            added_p50_ms: latency.p50 - baseline_latency.p50,
            added_p99_ms: latency.p99 - baseline_latency.p99,
            latency,
            baseline_latency,
            rss_per_participant_kib: rss_growth_kib / meta.participants.max(1) as f64,
            process: proc_,
            counters: c,
            subscriber_details,
            notes: meta.notes,
            relay: None,
        }
    }
}

impl ScenarioResult {
    /// The kernel's part of [`ScenarioResult::cpu_us_per_packet`] (the SFU's stime per
    /// forwarded packet) and its share of the SFU's CPU, when both are known.
    pub fn kernel_us_per_packet(&self) -> Option<(f64, f64)> {
        let us = self.cpu_us_per_packet?;
        let cpu = self.process.cpu_s;
        (cpu > 0.0).then(|| {
            let share = (self.process.cpu_system_s / cpu).clamp(0.0, 1.0);
            (us * share, share)
        })
    }

    /// The SFU with its estimation mode, e.g. `satsuma (bwe on)`.
    pub fn sfu_label(&self) -> String {
        if let Some(r) = &self.relay {
            return match r.nodes {
                1 => "satsuma, 1 node".to_owned(),
                n => format!("satsuma, {n} nodes (relay)"),
            };
        }
        match self.bwe {
            Some(b) => format!("{} (bwe {})", self.sfu.name(), b.name()),
            None => self.sfu.name().to_owned(),
        }
    }
}

/// Satsuma with estimation on against off in one scenario, over every run of each (runs
/// interleaved A/B/A/B, so that they share the machine's noise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BweComparison {
    /// Scenario.
    pub scenario: String,
    /// µs CPU per forwarded packet, estimation on, per run.
    pub on_us: Vec<f64>,
    /// The same, estimation off.
    pub off_us: Vec<f64>,
    /// Server-added p50 / p99 ms with estimation on, per run.
    pub on_added_ms: Vec<(f64, f64)>,
    /// The same, estimation off.
    pub off_added_ms: Vec<(f64, f64)>,
    /// Forwarded packets/s with estimation on, per run (fewer when subscribers are on lower
    /// layers).
    #[serde(default)]
    pub on_egress_pps: Vec<f64>,
    /// The same, estimation off.
    #[serde(default)]
    pub off_egress_pps: Vec<f64>,
    /// Load average at the start of each run's window, in run order (on and off interleaved).
    #[serde(default)]
    pub loadavg: Vec<f64>,
    /// Mean µs per packet on ÷ mean off.
    pub cpu_ratio: f64,
}

/// The median of `v` (the mean of the middle two for an even count; 0 when empty).
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Satsuma's CPU per packet over Janus's, per scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    /// Scenario.
    pub scenario: String,
    /// Satsuma µs per forwarded packet.
    pub satsuma_us: f64,
    /// Janus µs per forwarded packet.
    pub janus_us: f64,
    /// satsuma / janus.
    pub ratio: f64,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// UTC start time.
    pub started_utc: String,
    /// Command line.
    pub command: String,
    /// Machine notes (cores, load).
    pub machine: String,
    /// Media notes.
    pub media: String,
    /// Results.
    pub results: Vec<ScenarioResult>,
    /// Ratios, where both SFUs ran a scenario.
    pub ratios: Vec<Ratio>,
    /// Estimation on against off, where both ran a scenario.
    #[serde(default)]
    pub bwe: Vec<BweComparison>,
    /// The `relay` scenario, per round.
    #[serde(default)]
    pub relay: Vec<RelayComparison>,
    /// The `ramp` scenario, one per SFU (and estimation mode, round).
    #[serde(default)]
    pub ramps: Vec<RampResult>,
}

/// When a `ramp` step counts as sustained.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RampLimits {
    /// A window with more loss than this (% of expected packets) breaks the step.
    pub max_loss_pct: f64,
    /// A window whose server-added p99 (typical track, window only) is above this (ms) breaks
    /// the step.
    pub max_added_p99_ms: f64,
    /// A bot worker above this CPU (% of one core; a worker is one thread) may be what limits
    /// the step: the step is flagged `bots_limited`, not broken.
    pub bot_saturated_pct: f64,
    /// Publishers sending below this share of their nominal packets/s (starved bots) also flag
    /// the step `bots_limited`.
    pub min_ingress_share: f64,
}

impl Default for RampLimits {
    fn default() -> Self {
        Self {
            max_loss_pct: 1.0,
            max_added_p99_ms: 10.0,
            bot_saturated_pct: 85.0,
            min_ingress_share: 0.95,
        }
    }
}

/// Why a ramp stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RampStop {
    /// A step lost more than the limit.
    Loss,
    /// A step's server-added p99 was above the limit.
    Latency,
    /// A step delivered no media at all.
    NoMedia,
    /// Subscribers of a step failed to connect.
    JoinFailed,
    /// Every step held up to `--ramp-max`.
    MaxReached,
    /// The run failed (SFU, workers).
    Error,
}

/// One measuring window of a `ramp` step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RampStep {
    /// Subscribers the step has (planned; `result.subscribers` has planned / connected).
    pub subscribers: usize,
    /// Window at this size (1; 2 and on: a re-measurement after a break, `--ramp-retries`).
    pub attempt: usize,
    /// The window's figures (latency percentiles of this window only).
    pub result: ScenarioResult,
    /// CPU of each bot worker process over the window, % of one core.
    pub worker_cpu_pct: Vec<f64>,
    /// The whole machine's CPU use over the window (every process, the other users' too), %
    /// of one core (200: both cores of a 2-core machine busy).
    pub machine_cpu_pct: Option<f64>,
    /// Why the window broke (empty: it held).
    pub breaks: Vec<(RampStop, String)>,
    /// The bots may have limited this window (a worker near a full core, or the publisher
    /// sending short of its nominal rate).
    pub bots_limited: bool,
}

impl RampStep {
    /// Judge a window against `limits`; `nominal_ingress_pps`: what the publisher should send.
    pub fn judge(
        subscribers: usize,
        attempt: usize,
        result: ScenarioResult,
        worker_cpu_pct: Vec<f64>,
        machine_cpu_pct: Option<f64>,
        nominal_ingress_pps: f64,
        limits: &RampLimits,
    ) -> Self {
        let mut breaks = Vec::new();
        if result.egress_pps <= 0.0 || result.latency.tracks == 0 {
            breaks.push((
                RampStop::NoMedia,
                "the subscribers received nothing".to_owned(),
            ));
        }
        if result.loss_pct > limits.max_loss_pct {
            breaks.push((
                RampStop::Loss,
                format!("loss {:.2} % > {} %", result.loss_pct, limits.max_loss_pct),
            ));
        }
        if result.added_p99_ms > limits.max_added_p99_ms {
            breaks.push((
                RampStop::Latency,
                format!(
                    "server-added p99 {:.1} ms > {} ms",
                    result.added_p99_ms, limits.max_added_p99_ms
                ),
            ));
        }
        let starved = result.ingress_pps < nominal_ingress_pps * limits.min_ingress_share;
        let saturated = worker_cpu_pct
            .iter()
            .any(|&c| c >= limits.bot_saturated_pct);
        Self {
            subscribers,
            attempt,
            result,
            worker_cpu_pct,
            machine_cpu_pct,
            breaks,
            bots_limited: starved || saturated,
        }
    }

    /// The window held (no break).
    pub fn held(&self) -> bool {
        self.breaks.is_empty()
    }

    /// All bot workers together, % of one core.
    pub fn bots_cpu_pct(&self) -> f64 {
        self.worker_cpu_pct.iter().sum()
    }

    /// The busiest bot worker, % of one core.
    pub fn busiest_worker_pct(&self) -> f64 {
        self.worker_cpu_pct.iter().copied().fold(0.0, f64::max)
    }
}

/// The highest step of a ramp that held: the SFU's maximum sustained egress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RampMax {
    /// Subscribers.
    pub subscribers: usize,
    /// Egress, RTP packets/s the subscribers received.
    pub egress_pps: f64,
    /// Egress, Mbit/s of RTP payload.
    pub egress_mbps: f64,
    /// SFU CPU, % of one core.
    pub sfu_cpu_pct: f64,
    /// SFU CPU per forwarded packet, µs.
    pub cpu_us_per_packet: Option<f64>,
    /// Loss, %.
    pub loss_pct: f64,
    /// Server-added p50 / p99, ms (window only).
    pub added_ms: (f64, f64),
    /// Bot workers' CPU together, % of one core.
    pub bots_cpu_pct: f64,
    /// The busiest worker, % of one core.
    pub busiest_worker_pct: f64,
    /// Whole-machine CPU, % of one core.
    pub machine_cpu_pct: Option<f64>,
    /// The bots may have limited it.
    pub bots_limited: bool,
    /// Load average at the start of its window.
    pub loadavg: f64,
}

/// A whole `ramp` run against one SFU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RampResult {
    /// SFU.
    pub sfu: SfuKind,
    /// Satsuma's bandwidth estimation.
    pub bwe: Option<BweMode>,
    /// The limits the steps were judged by.
    pub limits: RampLimits,
    /// Every window, in order.
    pub steps: Vec<RampStep>,
    /// Why it stopped.
    pub stop: RampStop,
    /// The stopping step's subscribers (0: before any step).
    pub stopped_at: usize,
    /// What broke, in words.
    pub stop_detail: String,
    /// The highest step that held (`None`: not even the first).
    pub max: Option<RampMax>,
    /// Problems seen.
    pub notes: Vec<String>,
}

impl RampResult {
    /// Finish a ramp: the maximum is the last window that held before the stop (the steps
    /// grow, and the ramp stops at the first step none of whose windows held).
    pub fn finish(
        sfu: SfuKind,
        bwe: Option<BweMode>,
        limits: RampLimits,
        steps: Vec<RampStep>,
        stop: (RampStop, usize, String),
        notes: Vec<String>,
    ) -> Self {
        let max = steps.iter().rev().find(|s| s.held()).map(|s| RampMax {
            subscribers: s.subscribers,
            egress_pps: s.result.egress_pps,
            egress_mbps: s.result.egress_mbps,
            sfu_cpu_pct: s.result.sfu_cpu_pct,
            cpu_us_per_packet: s.result.cpu_us_per_packet,
            loss_pct: s.result.loss_pct,
            added_ms: (s.result.added_p50_ms, s.result.added_p99_ms),
            bots_cpu_pct: s.bots_cpu_pct(),
            busiest_worker_pct: s.busiest_worker_pct(),
            machine_cpu_pct: s.machine_cpu_pct,
            bots_limited: s.bots_limited,
            loadavg: s.result.process.loadavg,
        });
        Self {
            sfu,
            bwe,
            limits,
            steps,
            stop: stop.0,
            stopped_at: stop.1,
            stop_detail: stop.2,
            max,
            notes,
        }
    }

    /// The SFU with its estimation mode.
    pub fn sfu_label(&self) -> String {
        match self.bwe {
            Some(b) => format!("{} (bwe {})", self.sfu.name(), b.name()),
            None => self.sfu.name().to_owned(),
        }
    }
}

impl RunReport {
    /// Fill in the ratios from the results.
    pub fn compute_ratios(&mut self) {
        let mut ratios = Vec::new();
        for s in &self.results {
            if s.sfu != SfuKind::Satsuma {
                continue;
            }
            let Some(j) = self
                .results
                .iter()
                .find(|r| r.sfu == SfuKind::Janus && r.scenario == s.scenario)
            else {
                continue;
            };
            if let (Some(a), Some(b)) = (s.cpu_us_per_packet, j.cpu_us_per_packet)
                && b > 0.0
            {
                ratios.push(Ratio {
                    scenario: s.scenario.clone(),
                    satsuma_us: a,
                    janus_us: b,
                    ratio: a / b,
                });
            }
        }
        self.ratios = ratios;
        let mut bwe: Vec<BweComparison> = Vec::new();
        for r in self
            .results
            .iter()
            .filter(|r| r.cpu_us_per_packet.is_some() && r.relay.is_none())
        {
            let (Some(mode), Some(us)) = (r.bwe, r.cpu_us_per_packet) else {
                continue;
            };
            let i = match bwe.iter().position(|c| c.scenario == r.scenario) {
                Some(i) => i,
                None => {
                    bwe.push(BweComparison {
                        scenario: r.scenario.clone(),
                        on_us: Vec::new(),
                        off_us: Vec::new(),
                        on_added_ms: Vec::new(),
                        off_added_ms: Vec::new(),
                        on_egress_pps: Vec::new(),
                        off_egress_pps: Vec::new(),
                        loadavg: Vec::new(),
                        cpu_ratio: 0.0,
                    });
                    bwe.len() - 1
                }
            };
            let c = &mut bwe[i];
            let added = (r.added_p50_ms, r.added_p99_ms);
            c.loadavg.push(r.process.loadavg);
            match mode {
                BweMode::On => {
                    c.on_us.push(us);
                    c.on_added_ms.push(added);
                    c.on_egress_pps.push(r.egress_pps);
                }
                BweMode::Off => {
                    c.off_us.push(us);
                    c.off_added_ms.push(added);
                    c.off_egress_pps.push(r.egress_pps);
                }
            }
        }
        bwe.retain(|c| !c.on_us.is_empty() && !c.off_us.is_empty());
        for c in &mut bwe {
            c.cpu_ratio = mean(&c.on_us) / mean(&c.off_us).max(1e-9);
        }
        self.bwe = bwe;
        self.relay = self.relay_comparisons();
    }

    /// Pairs each two-node `relay` run with the one-node run before it.
    fn relay_comparisons(&self) -> Vec<RelayComparison> {
        let mut out = Vec::new();
        let mut one: Option<&ScenarioResult> = None;
        for r in &self.results {
            let Some(relay) = &r.relay else { continue };
            if r.cpu_us_per_packet.is_none() {
                continue;
            }
            if relay.nodes == 1 {
                one = Some(r);
                continue;
            }
            let Some(o) = one.take() else { continue };
            let pct = |cpu_s: f64, w: f64| cpu_s / w.max(1e-3) * 100.0;
            let w2 = r.process.window_s;
            let node = |i: usize| relay.node_cpu_s.get(i).copied().unwrap_or(0.0);
            let cpu_per_s_two = r.process.cpu_s / w2.max(1e-3);
            let cpu_per_s_one = o.process.cpu_s / o.process.window_s.max(1e-3);
            out.push(RelayComparison {
                round: out.len() + 1,
                one_cpu_pct: o.sfu_cpu_pct,
                two_cpu_pct: (pct(node(0), w2), pct(node(1), w2)),
                egress_pps: (o.egress_pps, r.egress_pps),
                link_pps: relay.link_pps,
                link_copies: if r.ingress_pps > 0.0 {
                    relay.link_pps / r.ingress_pps
                } else {
                    0.0
                },
                relay_us_per_packet: if relay.link_pps > 0.0 {
                    (cpu_per_s_two - cpu_per_s_one) * 1e6 / relay.link_pps
                } else {
                    0.0
                },
                relay_us_per_packet_scaled: if relay.link_pps > 0.0 && o.egress_pps > 0.0 {
                    (cpu_per_s_two - cpu_per_s_one * r.egress_pps / o.egress_pps) * 1e6
                        / relay.link_pps
                } else {
                    0.0
                },
                us_per_fwd_packet: (
                    o.cpu_us_per_packet.unwrap_or(0.0),
                    r.cpu_us_per_packet.unwrap_or(0.0),
                ),
                one_added_ms: (o.added_p50_ms, o.added_p99_ms),
                two_added_ms: (r.added_p50_ms, r.added_p99_ms),
                relay_added_ms: (
                    r.added_p50_ms - o.added_p50_ms,
                    r.added_p99_ms - o.added_p99_ms,
                ),
                loss_pct: (o.loss_pct, r.loss_pct),
                loadavg: (o.process.loadavg, r.process.loadavg),
            });
        }
        out
    }

    /// Markdown: the `relay` scenario, per round and the medians.
    fn relay_markdown(&self) -> String {
        if self.relay.is_empty() {
            return String::new();
        }
        let mut s = String::from(
            "\n| relay round | CPU % 1 node | CPU % 2 nodes (A + B) | egress pkt/s 1 / 2 nodes | \
             link pkt/s (per publisher packet) | µs CPU / fwd pkt 1 / 2 nodes | \
             **relay µs CPU / relayed pkt** (at equal egress) | server-added p50 / p99 ms, 1 node | \
             2 nodes | **relay-added p50 / p99 ms** | loss % 1 / 2 | load avg 1 / 2 |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for c in &self.relay {
            s.push_str(&format!(
                "| {} | {:.1} | {:.1} + {:.1} | {:.0} / {:.0} | {:.0} ({:.2}) | {:.1} / {:.1} | {:.1} ({:.1}) | \
                 {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.1} / {:.1} |\n",
                c.round,
                c.one_cpu_pct,
                c.two_cpu_pct.0,
                c.two_cpu_pct.1,
                c.egress_pps.0,
                c.egress_pps.1,
                c.link_pps,
                c.link_copies,
                c.us_per_fwd_packet.0,
                c.us_per_fwd_packet.1,
                c.relay_us_per_packet,
                c.relay_us_per_packet_scaled,
                c.one_added_ms.0,
                c.one_added_ms.1,
                c.two_added_ms.0,
                c.two_added_ms.1,
                c.relay_added_ms.0,
                c.relay_added_ms.1,
                c.loss_pct.0,
                c.loss_pct.1,
                c.loadavg.0,
                c.loadavg.1,
            ));
        }
        if self.relay.len() > 1 {
            let med =
                |f: &dyn Fn(&RelayComparison) -> f64| median(self.relay.iter().map(f).collect());
            s.push_str(&format!(
                "\nMedians over {} rounds: relay CPU {:.1} µs per relayed packet ({:.1} at equal \
                 egress); relay-added \
                 latency p50 {:.2} ms, p99 {:.2} ms; {:.2} link datagrams per packet the publisher \
                 sent.\n",
                self.relay.len(),
                med(&|c| c.relay_us_per_packet),
                med(&|c| c.relay_us_per_packet_scaled),
                med(&|c| c.relay_added_ms.0),
                med(&|c| c.relay_added_ms.1),
                med(&|c| c.link_copies),
            ));
        }
        s
    }

    /// Markdown: each ramp's steps, then the SFUs side by side.
    fn ramp_markdown(&self) -> String {
        let mut s = String::new();
        let opt = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
        };
        for r in &self.ramps {
            s.push_str(&format!(
                "\nRamp, {}: one audio + video publisher (top video layer only), subscribers \
                 added per step; a step holds with loss ≤ {} % and server-added p99 ≤ {} ms \
                 (window only)\n\n",
                r.sfu_label(),
                r.limits.max_loss_pct,
                r.limits.max_added_p99_ms
            ));
            s.push_str(if r.steps.is_empty() {
                "No window was measured.\n"
            } else {
                "| subscribers | window | egress pkt/s (nominal) | egress Mbit/s | loss % | \
                 server-added p50 / p99 ms | baseline p99 ms | SFU CPU % | µs CPU / fwd pkt | \
                 bots CPU % (busiest worker) | machine CPU % | load avg | held |\n\
                 |---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
            });
            for st in &r.steps {
                let x = &st.result;
                let held = if st.held() {
                    "yes".to_owned()
                } else {
                    format!(
                        "**no**: {}",
                        st.breaks
                            .iter()
                            .map(|(_, t)| t.as_str())
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                };
                s.push_str(&format!(
                    "| {}{} | {} | {:.0} ({:.0}) | {:.1} | {:.2} | {:.2} / {:.2} | {:.2} | {:.1} | {} | \
                     {:.0} ({:.0}){} | {} | {:.1} | {} |\n",
                    x.subscribers.1,
                    if x.subscribers.1 == st.subscribers {
                        String::new()
                    } else {
                        format!(" of {}", st.subscribers)
                    },
                    st.attempt,
                    x.egress_pps,
                    x.nominal_egress_pps,
                    x.egress_mbps,
                    x.loss_pct,
                    x.added_p50_ms,
                    x.added_p99_ms,
                    x.baseline_latency.p99,
                    x.sfu_cpu_pct,
                    opt(x.cpu_us_per_packet, 1),
                    st.bots_cpu_pct(),
                    st.busiest_worker_pct(),
                    if st.bots_limited { " ⚠ bots" } else { "" },
                    opt(st.machine_cpu_pct, 0),
                    x.process.loadavg,
                    held,
                ));
            }
            s.push_str(&format!(
                "\nStopped at {} subscribers: {}.\n",
                r.stopped_at, r.stop_detail
            ));
            for n in &r.notes {
                s.push_str(&format!("- {n}\n"));
            }
        }
        if self.ramps.is_empty() {
            return s;
        }
        s.push_str(
            "\n| SFU | max subscribers held | **max sustained egress pkt/s** | **Mbit/s** (RTP payload) | \
             SFU CPU % there | µs CPU / fwd pkt | loss % | server-added p50 / p99 ms | \
             bots CPU % (busiest worker) | machine CPU % | load avg | stopped at | because |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in &self.ramps {
            let because = &r.stop_detail;
            match &r.max {
                Some(m) => s.push_str(&format!(
                    "| {} | {} | {:.0} | {:.1} | {:.1} | {} | {:.2} | {:.2} / {:.2} | {:.0} ({:.0}){} | \
                     {} | {:.1} | {} | {} |\n",
                    r.sfu_label(),
                    m.subscribers,
                    m.egress_pps,
                    m.egress_mbps,
                    m.sfu_cpu_pct,
                    opt(m.cpu_us_per_packet, 2),
                    m.loss_pct,
                    m.added_ms.0,
                    m.added_ms.1,
                    m.bots_cpu_pct,
                    m.busiest_worker_pct,
                    if m.bots_limited { " ⚠ bots" } else { "" },
                    opt(m.machine_cpu_pct, 0),
                    m.loadavg,
                    r.stopped_at,
                    because,
                )),
                None => s.push_str(&format!(
                    "| {} | none held | – | – | – | – | – | – | – | – | – | {} | {} |\n",
                    r.sfu_label(),
                    r.stopped_at,
                    because
                )),
            }
        }
        s
    }

    /// Markdown: estimation on against off.
    fn bwe_markdown(&self) -> String {
        if self.bwe.is_empty() {
            return String::new();
        }
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let whole = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let added = |v: &[(f64, f64)]| {
            v.iter()
                .map(|(a, b)| format!("{a:.1} / {b:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut s = String::from(
            "\n| scenario | µs CPU / fwd pkt, bwe on (runs) | bwe off (runs) | on ÷ off (means) | \
             server-added p50 / p99 ms, bwe on | bwe off | egress pkt/s, bwe on | bwe off | \
             load average (runs in order) |\n|---|---|---|---|---|---|---|---|---|\n",
        );
        for c in &self.bwe {
            s.push_str(&format!(
                "| {} | {} | {} | {:.2} | {} | {} | {} | {} | {} |\n",
                c.scenario,
                list(&c.on_us),
                list(&c.off_us),
                c.cpu_ratio,
                added(&c.on_added_ms),
                added(&c.off_added_ms),
                whole(&c.on_egress_pps),
                whole(&c.off_egress_pps),
                list(&c.loadavg),
            ));
        }
        s
    }

    /// Markdown: per-subscriber details (the `limited` scenario).
    fn subscribers_markdown(&self) -> String {
        let mut s = String::new();
        for r in self
            .results
            .iter()
            .filter(|r| !r.subscriber_details.is_empty())
        {
            let w = r.process.window_s.max(1e-3);
            s.push_str(&format!(
                "\n{} / {}: per subscriber over the window\n\n\
                 | subscriber | downlink limit kbit/s | video packets per layer | layer at the end | \
                 layer switches | received kbit/s | loss % | shaper drops | longest freeze ms | \
                 audio latency p50 / p99 ms | video latency p50 / p99 ms |\n\
                 |---|---|---|---|---|---|---|---|---|---|---|\n",
                r.scenario,
                r.sfu_label()
            ));
            let mut details = r.subscriber_details.clone();
            details.sort_by(|a, b| a.name.cmp(&b.name));
            for d in &details {
                let layers = d
                    .video_layer_packets
                    .iter()
                    .map(|(l, n)| format!("{l}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let expected = d.recv_unique + d.lost;
                let ms = |us: u64| us as f64 / 1000.0;
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {:.0} | {:.2} | {} | {} | {:.1} / {:.1} | {:.1} / {:.1} |\n",
                    d.name,
                    d.limit_kbps.map_or_else(|| "–".to_owned(), |k| k.to_string()),
                    layers,
                    d.layer_now.as_deref().unwrap_or("–"),
                    d.layer_switches,
                    d.recv_bytes as f64 * 8.0 / w / 1000.0,
                    if expected > 0 {
                        d.lost as f64 * 100.0 / expected as f64
                    } else {
                        0.0
                    },
                    d.shaper_dropped,
                    d.longest_freeze_ms
                        .map_or_else(|| "–".to_owned(), |f| format!("{f:.0}")),
                    ms(d.audio_latency_us.0),
                    ms(d.audio_latency_us.1),
                    ms(d.video_latency_us.0),
                    ms(d.video_latency_us.1),
                ));
            }
        }
        s
    }

    /// Markdown: a results table and the ratios.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "Run {} — `{}`\n\nMachine: {}. Media: {}.\n\n",
            self.started_utc, self.command, self.machine, self.media
        ));
        if !self.results.is_empty() {
            s.push_str(
                "| scenario | SFU | pubs | subs | ingress pkt/s | egress pkt/s (nominal) | egress Mbit/s | \
                 SFU CPU % | µs CPU / fwd pkt | of it kernel µs (share) | loss % | latency p50 / p99 ms | \
                 baseline p50 / p99 ms | server-added p50 / p99 ms | RSS idle→load MiB | \
                 RSS / participant KiB | bots CPU % | load avg |\n",
            );
            s.push_str(
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
            );
        }
        for r in &self.results {
            let w = r.process.window_s.max(1e-3);
            s.push_str(&format!(
                "| {} | {} | {}/{} | {}/{} | {:.0} | {:.0} ({:.0}) | {:.1} | {:.1} | {} | {} | {:.2} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1}→{:.1} | {:.0} | {:.0} | {:.1} |\n",
                r.scenario,
                r.sfu_label(),
                r.publishers.1,
                r.publishers.0,
                r.subscribers.1,
                r.subscribers.0,
                r.ingress_pps,
                r.egress_pps,
                r.nominal_egress_pps,
                r.egress_mbps,
                r.sfu_cpu_pct,
                r.cpu_us_per_packet
                    .map_or_else(|| "–".to_owned(), |v| format!("{v:.1}")),
                r.kernel_us_per_packet()
                    .map_or_else(|| "–".to_owned(), |(us, share)| format!(
                        "{us:.1} ({:.0} %)",
                        share * 100.0
                    )),
                r.loss_pct,
                r.latency.p50,
                r.latency.p99,
                r.baseline_latency.p50,
                r.baseline_latency.p99,
                r.added_p50_ms,
                r.added_p99_ms,
                r.process.rss_idle_mib,
                r.process.rss_mib,
                r.rss_per_participant_kib,
                r.process.bots_cpu_s / w * 100.0,
                r.process.loadavg,
            ));
        }
        if !self.ratios.is_empty() {
            s.push_str("\n| scenario | Satsuma µs/pkt | Janus µs/pkt | Satsuma ÷ Janus |\n|---|---|---|---|\n");
            for r in &self.ratios {
                s.push_str(&format!(
                    "| {} | {:.2} | {:.2} | {:.3} |\n",
                    r.scenario, r.satsuma_us, r.janus_us, r.ratio
                ));
            }
        }
        s.push_str(&self.bwe_markdown());
        s.push_str(&self.relay_markdown());
        s.push_str(&self.ramp_markdown());
        s.push_str(&self.subscribers_markdown());
        let notes: Vec<String> = self
            .results
            .iter()
            .flat_map(|r| {
                r.notes
                    .iter()
                    .map(move |n| format!("- {} / {}: {n}", r.scenario, r.sfu_label()))
            })
            .collect();
        if !notes.is_empty() {
            s.push_str("\nNotes:\n");
            s.push_str(&notes.join("\n"));
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn report(recv: u64, lost: u64, lat: &[(u64, u64, u64)]) -> WorkerReport {
        WorkerReport {
            publishers: 1,
            subscribers: 2,
            sfu: Counters {
                sent_packets: 500,
                recv_packets: recv,
                recv_unique: recv,
                recv_bytes: recv * 100,
                lost,
                ..Counters::default()
            },
            baseline: Counters::default(),
            latency: lat
                .iter()
                .map(|&(samples, p50_us, p99_us)| TrackLatency {
                    samples,
                    p50_us,
                    p99_us,
                })
                .collect(),
            baseline_latency: vec![TrackLatency {
                samples: 10,
                p50_us: 200,
                p99_us: 900,
            }],
            subscriber_details: Vec::new(),
        }
    }

    fn meta(sfu: SfuKind) -> ScenarioMeta {
        ScenarioMeta {
            scenario: "audio".into(),
            sfu,
            bwe: None,
            participants: 4,
            planned_publishers: 2,
            planned_subscribers: 4,
            nominal_egress_pps: 2000.0,
            notes: vec![],
        }
    }

    #[test]
    fn aggregates_rates_cpu_loss_latency_and_memory() {
        let proc_ = ProcessReadings {
            window_s: 10.0,
            cpu_s: 0.5,
            cpu_system_s: 0.2,
            rss_idle_mib: 10.0,
            rss_mib: 12.0,
            bots_cpu_s: 1.0,
            loadavg: 1.0,
        };
        let r = ScenarioResult::build(
            meta(SfuKind::Satsuma),
            &[
                report(9_000, 100, &[(100, 1_000, 3_000)]),
                report(11_000, 0, &[(300, 2_000, 5_000), (50, 9_000, 20_000)]),
            ],
            proc_,
        );
        assert_eq!(r.publishers, (2, 2));
        assert_eq!(r.subscribers, (4, 4));
        assert_eq!(r.ingress_pps, 100.0);
        assert_eq!(r.egress_pps, 2_000.0);
        assert!((r.cpu_us_per_packet.unwrap() - 25.0).abs() < 1e-9);
        let (kernel_us, kernel_share) = r.kernel_us_per_packet().unwrap();
        assert!((kernel_us - 10.0).abs() < 1e-9, "{kernel_us}");
        assert!((kernel_share - 0.4).abs() < 1e-9);
        assert!((r.sfu_cpu_pct - 5.0).abs() < 1e-9);
        assert!((r.loss_pct - 100.0 * 100.0 / 20_100.0).abs() < 1e-9);
        assert_eq!(r.latency.p50, 2.0);
        assert_eq!(r.latency.p99, 5.0);
        assert_eq!(r.latency.p99_worst, 20.0);
        assert!((r.added_p50_ms - 1.8).abs() < 1e-9);
        assert!((r.added_p99_ms - 4.1).abs() < 1e-9);
        assert!((r.rss_per_participant_kib - 512.0).abs() < 1e-9);
    }

    #[test]
    fn ratio_pairs_scenarios_and_markdown_mentions_both() {
        let p = ProcessReadings {
            window_s: 1.0,
            cpu_s: 0.1,
            cpu_system_s: 0.025,
            ..ProcessReadings::default()
        };
        let a = ScenarioResult::build(meta(SfuKind::Satsuma), &[report(1_000, 0, &[])], p);
        let p2 = ProcessReadings {
            cpu_s: 0.4,
            cpu_system_s: 0.2,
            ..p
        };
        let b = ScenarioResult::build(meta(SfuKind::Janus), &[report(1_000, 0, &[])], p2);
        let mut run = RunReport {
            started_utc: "t".into(),
            command: "c".into(),
            machine: "m".into(),
            media: "x".into(),
            results: vec![a, b],
            ratios: vec![],
            bwe: vec![],
            relay: vec![],
            ramps: vec![],
        };
        run.compute_ratios();
        assert_eq!(run.ratios.len(), 1);
        assert!((run.ratios[0].ratio - 0.25).abs() < 1e-9);
        let md = run.markdown();
        assert!(md.contains("| audio | satsuma |"));
        assert!(md.contains("| audio | janus |"));
        assert!(md.contains("0.250"));
        // The kernel's part of each SFU's µs per packet, with its share.
        let us = |r: &ScenarioResult| r.cpu_us_per_packet.unwrap();
        let (sk, jk) = (us(&run.results[0]) * 0.25, us(&run.results[1]) * 0.5);
        assert!(md.contains(&format!("| {sk:.1} (25 %) |")), "{md}");
        assert!(md.contains(&format!("| {jk:.1} (50 %) |")), "{md}");
    }

    #[test]
    fn estimation_on_and_off_runs_are_compared_per_scenario() {
        let p = |cpu_s: f64| ProcessReadings {
            window_s: 1.0,
            cpu_s,
            ..ProcessReadings::default()
        };
        let run = |bwe, cpu_s| {
            ScenarioResult::build(
                ScenarioMeta {
                    bwe: Some(bwe),
                    ..meta(SfuKind::Satsuma)
                },
                &[report(1_000, 0, &[(10, 1_000, 2_000)])],
                p(cpu_s),
            )
        };
        let mut r = RunReport {
            started_utc: "t".into(),
            command: "c".into(),
            machine: "m".into(),
            media: "x".into(),
            results: vec![
                run(BweMode::On, 0.022),
                run(BweMode::Off, 0.020),
                run(BweMode::On, 0.026),
                run(BweMode::Off, 0.020),
            ],
            ratios: vec![],
            bwe: vec![],
            relay: vec![],
            ramps: vec![],
        };
        r.compute_ratios();
        assert_eq!(r.bwe.len(), 1);
        assert_eq!(r.bwe[0].on_us.len(), 2);
        assert!(
            (r.bwe[0].cpu_ratio - 1.2).abs() < 1e-9,
            "{}",
            r.bwe[0].cpu_ratio
        );
        let md = r.markdown();
        assert!(md.contains("satsuma (bwe on)"), "{md}");
        assert!(
            md.contains("| audio | 22.0, 26.0 | 20.0, 20.0 | 1.20 |"),
            "{md}"
        );
    }

    #[test]
    fn relay_runs_pair_one_node_with_two_and_charge_the_difference_to_the_link() {
        let run = |nodes: usize, cpu_s: Vec<f64>, added_us: u64, link_pps: f64| {
            let mut r = ScenarioResult::build(
                ScenarioMeta {
                    scenario: "relay".into(),
                    ..meta(SfuKind::Satsuma)
                },
                // 10 s window: the publisher sent 5,000 packets (500 pkt/s), 10 subscribers
                // received 50,000.
                &[WorkerReport {
                    sfu: Counters {
                        sent_packets: 5_000,
                        ..report(50_000, 0, &[]).sfu
                    },
                    ..report(50_000, 0, &[(1000, 1000 + added_us, 2000 + 2 * added_us)])
                }],
                ProcessReadings {
                    window_s: 10.0,
                    cpu_s: cpu_s.iter().sum(),
                    ..ProcessReadings::default()
                },
            );
            r.subscribers = (10, 10);
            r.relay = Some(RelayReadings {
                nodes,
                node_cpu_s: cpu_s,
                link_pps,
                ..RelayReadings::default()
            });
            r
        };
        let mut report = RunReport {
            started_utc: "t".into(),
            command: "c".into(),
            machine: "m".into(),
            media: "x".into(),
            results: vec![
                run(1, vec![1.0], 0, 0.0),
                // One node's CPU grew by 0.5 s/10 s = 0.05 s/s for 500 relayed pkt/s: 100 µs.
                run(2, vec![1.0, 0.5], 300, 500.0),
                run(1, vec![1.2], 0, 0.0),
                run(2, vec![1.0, 0.4], 500, 500.0),
                // A two-node run without its one-node run is not paired.
                run(2, vec![1.0, 0.4], 500, 500.0),
            ],
            ratios: vec![],
            bwe: vec![],
            relay: vec![],
            ramps: vec![],
        };
        report.compute_ratios();
        assert!(
            report.bwe.is_empty(),
            "relay runs are no estimation comparison"
        );
        assert_eq!(report.relay.len(), 2);
        let c = &report.relay[0];
        assert!((c.relay_us_per_packet - 100.0).abs() < 1e-6, "{c:?}");
        // Both runs forwarded the same: nothing to scale.
        assert!((c.relay_us_per_packet_scaled - 100.0).abs() < 1e-6, "{c:?}");
        assert!((c.link_copies - 1.0).abs() < 1e-9, "{c:?}");
        assert!((c.two_cpu_pct.0 - 10.0).abs() < 1e-9 && (c.two_cpu_pct.1 - 5.0).abs() < 1e-9);
        assert!((c.relay_added_ms.0 - 0.3).abs() < 1e-9, "{c:?}");
        assert!((c.relay_added_ms.1 - 0.6).abs() < 1e-9, "{c:?}");
        assert!((report.relay[1].relay_us_per_packet - 40.0).abs() < 1e-6);
        let md = report.markdown();
        assert!(md.contains("relay µs CPU / relayed pkt"), "{md}");
        assert!(md.contains("satsuma, 2 nodes (relay)"), "{md}");
        assert!(
            md.contains("Medians over 2 rounds: relay CPU 70.0 µs"),
            "{md}"
        );
        // Two nodes forwarding twice as much: the one-node CPU counts double.
        let mut twice = report.results.clone();
        twice[1].egress_pps *= 2.0;
        let scaled = RunReport {
            results: twice,
            ..report.clone()
        }
        .relay_comparisons();
        // (0.15 - 0.1 × 2) s/s is below zero: the relay cost nothing more than forwarding.
        assert!(
            (scaled[0].relay_us_per_packet_scaled + 100.0).abs() < 1e-6,
            "{scaled:?}"
        );
    }

    #[test]
    fn ramp_steps_break_on_loss_or_latency_and_the_maximum_is_the_last_that_held() {
        let limits = RampLimits::default();
        // 10 s windows; the publisher sends 250 pkt/s (2,500 packets).
        let window = |subs: usize, recv: u64, lost: u64, p99_us: u64| {
            let mut rep = report(recv, lost, &[(100, 1_000, p99_us)]);
            rep.sfu.sent_packets = 2_500;
            let mut r = ScenarioResult::build(
                ScenarioMeta {
                    scenario: "ramp".into(),
                    planned_subscribers: subs,
                    ..meta(SfuKind::Satsuma)
                },
                &[rep],
                ProcessReadings {
                    window_s: 10.0,
                    cpu_s: 1.0,
                    ..ProcessReadings::default()
                },
            );
            r.subscribers = (subs, subs);
            r
        };
        let judge = |subs, attempt, r, cpu: Vec<f64>| {
            RampStep::judge(subs, attempt, r, cpu, Some(120.0), 250.0, &limits)
        };
        // Baseline p99 is 0.9 ms: server-added p99 = p99 − 0.9.
        let s1 = judge(1, 1, window(1, 2_360, 0, 3_000), vec![5.0, 4.0]);
        assert!(s1.held() && !s1.bots_limited, "{s1:?}");
        let s20 = judge(20, 1, window(20, 47_200, 400, 5_000), vec![40.0, 50.0]);
        assert!(s20.held(), "0.84 % loss holds: {s20:?}");
        let s40a = judge(40, 1, window(40, 94_000, 0, 12_000), vec![60.0, 90.0]);
        assert_eq!(s40a.breaks.len(), 1);
        assert_eq!(s40a.breaks[0].0, RampStop::Latency);
        assert!(s40a.bots_limited, "a worker at 90 % of a core");
        let s40b = judge(40, 2, window(40, 93_000, 1_500, 9_000), vec![60.0, 70.0]);
        assert_eq!(s40b.breaks[0].0, RampStop::Loss, "{s40b:?}");
        assert!(s40b.breaks[0].1.contains("loss 1.59 %"), "{s40b:?}");
        let mut starved = window(60, 0, 0, 0);
        starved.ingress_pps = 200.0;
        let nothing = judge(60, 1, starved, vec![]);
        assert_eq!(nothing.breaks[0].0, RampStop::NoMedia);
        assert!(nothing.bots_limited, "the publisher sent 200 of 250 pkt/s");

        let r = RampResult::finish(
            SfuKind::Satsuma,
            Some(BweMode::On),
            limits,
            vec![s1, s20, s40a, s40b],
            (RampStop::Loss, 40, "loss 1.59 % > 1 %".into()),
            vec![],
        );
        let m = r.max.clone().unwrap();
        assert_eq!(m.subscribers, 20);
        assert!((m.egress_pps - 4_720.0).abs() < 1e-9, "{m:?}");
        assert!((m.bots_cpu_pct - 90.0).abs() < 1e-9 && (m.busiest_worker_pct - 50.0).abs() < 1e-9);
        let none = RampResult::finish(
            SfuKind::Janus,
            None,
            limits,
            vec![],
            (
                RampStop::JoinFailed,
                1,
                "1 of 1 new subscribers failed to connect".into(),
            ),
            vec![],
        );
        assert!(none.max.is_none());
        let run = RunReport {
            started_utc: "t".into(),
            command: "c".into(),
            machine: "m".into(),
            media: "x".into(),
            results: vec![],
            ratios: vec![],
            bwe: vec![],
            relay: vec![],
            ramps: vec![r, none],
        };
        let md = run.markdown();
        assert!(
            !md.contains("| scenario | SFU |"),
            "no scenario table: {md}"
        );
        assert!(md.contains("Ramp, satsuma (bwe on)"), "{md}");
        assert!(md.contains("| 40 | 2 | 9300 (2000) |"), "{md}");
        assert!(
            md.contains("**no**: server-added p99 11.1 ms > 10 ms"),
            "{md}"
        );
        assert!(
            md.contains("Stopped at 40 subscribers: loss 1.59 % > 1 %."),
            "{md}"
        );
        assert!(
            md.contains("| satsuma (bwe on) | 20 | 4720 | 3.8 | 10.0 |"),
            "side by side: {md}"
        );
        assert!(md.contains("| janus | none held |"), "{md}");
        let json = serde_json::to_string(&run).unwrap();
        assert!(json.contains("\"stop\":\"loss\""), "{json}");
        assert!(json.contains("\"stop\":\"join_failed\""), "{json}");
    }

    #[test]
    fn weighted_median_weighs_samples() {
        assert_eq!(weighted_median(vec![]), 0.0);
        assert_eq!(weighted_median(vec![(1.0, 1), (5.0, 10), (9.0, 1)]), 5.0);
        assert_eq!(weighted_median(vec![(1.0, 10), (5.0, 1)]), 1.0);
    }
}
