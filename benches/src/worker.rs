//! A bot worker process: hosts many peers as tokio tasks and obeys the controller over stdin/stdout.
//!
//! The controller (the `satsuma-load` run) starts workers as `satsuma-load worker`, writes one JSON
//! [`WorkerCommand`] per line on their stdin and reads one JSON [`WorkerReply`] per line from their
//! stdout. Keeping bots out of the controller and the SFU lets `/proc/<pid>/stat` of the SFU measure
//! the SFU alone.
//!
//! Each worker also runs `baseline_pairs` direct peer-to-peer pairs (publisher → subscriber over
//! loopback, no SFU) with the same media: their one-way latency is what the bots and the kernel add
//! by themselves under the same load, and is subtracted to get the server-added latency.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use satsuma_bot::MediaKind;
use satsuma_bot::participant::{ParticipantStats, PullSpec};
use satsuma_bot::{SfuClient, TrackSpec};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::janus::JanusClient;
use crate::media::MediaProfile;
use crate::scenario::PublisherPlan;
use satsuma_bot::peer::Peer;

/// The SFU the worker's bots talk to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Target {
    /// Satsuma's HTTP API.
    Satsuma {
        /// Base URL.
        url: String,
        /// App id.
        app: String,
        /// App secret.
        secret: String,
    },
    /// Janus VideoRoom over HTTP.
    Janus {
        /// API URL (`.../janus`).
        url: String,
        /// Room id.
        room: u64,
    },
}

/// A published feed: its id at the SFU (Satsuma session id or Janus feed id) and its tracks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedRef {
    /// Session id (Satsuma) or feed id (Janus).
    pub id: String,
    /// Track names.
    pub tracks: Vec<String>,
}

/// A subscriber to create: the feeds it pulls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeSpec {
    /// Display name.
    pub name: String,
    /// Feeds to pull (all tracks).
    pub feeds: Vec<FeedRef>,
    /// Downlink limit, kbit/s (a shaper in front of the bot).
    #[serde(default)]
    pub limit_kbps: Option<u32>,
    /// Report this subscriber's own figures ([`SubscriberDetail`]).
    #[serde(default)]
    pub details: bool,
}

/// Controller → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum WorkerCommand {
    /// Configure the worker (first command).
    Init {
        /// The SFU.
        target: Target,
        /// Media every publisher sends.
        media: MediaProfile,
        /// Direct pairs for the latency baseline.
        baseline_pairs: usize,
        /// Concurrent signaling operations.
        concurrency: usize,
    },
    /// Create publishers.
    Publish {
        /// Publishers.
        publishers: Vec<PublisherPlan>,
    },
    /// Create subscribers.
    Subscribe {
        /// Subscribers.
        subscribers: Vec<SubscribeSpec>,
        /// Another SFU node the subscribers signal to (a Satsuma node joined to the publishers'
        /// by the relay: it pulls their tracks across); `None`: the init target.
        #[serde(default)]
        target: Option<Target>,
    },
    /// Start of the measurement window: snapshot counters.
    Mark {
        /// Also forget every received track's latency samples (SFU path and baseline), so the
        /// window's report has window-only percentiles (the `ramp` scenario's steps); without
        /// it they are cumulative since each pull.
        #[serde(default)]
        restart_latency: bool,
    },
    /// End of the window: report counters since the mark.
    Report,
    /// Shut everything down and exit.
    Stop,
}

/// Latency of one received track (cumulative since it was pulled).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrackLatency {
    /// Samples.
    pub samples: u64,
    /// Median, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
}

/// Counters of a group of peers (publishers or subscribers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// RTP packets sent by publishers.
    pub sent_packets: u64,
    /// Payload bytes sent by publishers.
    pub sent_bytes: u64,
    /// Keyframe requests publishers received.
    pub keyframe_requests: u64,
    /// RTP packets received by subscribers.
    pub recv_packets: u64,
    /// Distinct packets received.
    pub recv_unique: u64,
    /// Payload bytes received.
    pub recv_bytes: u64,
    /// Packets missing in sequence.
    pub lost: u64,
    /// Payloads that failed verification.
    pub corrupt: u64,
    /// Duplicates.
    pub duplicates: u64,
    /// Packets of another track on a mid.
    pub foreign: u64,
}

impl Counters {
    /// Add a participant's counters (publisher side and subscriber side).
    pub fn add(&mut self, s: &ParticipantStats) {
        for p in &s.published {
            self.sent_packets += p.sent.packets;
            self.sent_bytes += p.sent.bytes;
            self.keyframe_requests += p.sent.keyframe_requests;
        }
        for t in &s.subscribed {
            let r = &t.received;
            self.recv_packets += r.packets;
            self.recv_unique += r.unique;
            self.recv_bytes += r.bytes;
            self.lost += r.lost;
            self.corrupt += r.corrupt;
            self.duplicates += r.duplicates;
            self.foreign += r.foreign;
        }
    }

    /// `self - earlier`, saturating.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            sent_packets: self.sent_packets.saturating_sub(earlier.sent_packets),
            sent_bytes: self.sent_bytes.saturating_sub(earlier.sent_bytes),
            keyframe_requests: self
                .keyframe_requests
                .saturating_sub(earlier.keyframe_requests),
            recv_packets: self.recv_packets.saturating_sub(earlier.recv_packets),
            recv_unique: self.recv_unique.saturating_sub(earlier.recv_unique),
            recv_bytes: self.recv_bytes.saturating_sub(earlier.recv_bytes),
            lost: self.lost.saturating_sub(earlier.lost),
            corrupt: self.corrupt.saturating_sub(earlier.corrupt),
            duplicates: self.duplicates.saturating_sub(earlier.duplicates),
            foreign: self.foreign.saturating_sub(earlier.foreign),
        }
    }

    /// Sum.
    pub fn plus(&self, o: &Counters) -> Counters {
        Counters {
            sent_packets: self.sent_packets + o.sent_packets,
            sent_bytes: self.sent_bytes + o.sent_bytes,
            keyframe_requests: self.keyframe_requests + o.keyframe_requests,
            recv_packets: self.recv_packets + o.recv_packets,
            recv_unique: self.recv_unique + o.recv_unique,
            recv_bytes: self.recv_bytes + o.recv_bytes,
            lost: self.lost + o.lost,
            corrupt: self.corrupt + o.corrupt,
            duplicates: self.duplicates + o.duplicates,
            foreign: self.foreign + o.foreign,
        }
    }
}

/// What a worker measured over the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Publishers alive.
    pub publishers: usize,
    /// Subscribers alive.
    pub subscribers: usize,
    /// SFU-path counters over the window (publishers + subscribers).
    pub sfu: Counters,
    /// Baseline-pair counters over the window.
    pub baseline: Counters,
    /// Latency per received SFU-path track.
    pub latency: Vec<TrackLatency>,
    /// Latency per received baseline track.
    pub baseline_latency: Vec<TrackLatency>,
    /// Per subscriber, for scenarios where subscribers differ (`limited`).
    #[serde(default)]
    pub subscriber_details: Vec<SubscriberDetail>,
}

/// What one subscriber got over the window: which simulcast layers, how much, how smoothly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubscriberDetail {
    /// Display name.
    pub name: String,
    /// Its downlink limit, kbit/s.
    pub limit_kbps: Option<u32>,
    /// Video packets received per simulcast layer (rid) over the window.
    pub video_layer_packets: Vec<(String, u64)>,
    /// Layer (rid) of the last video packet.
    pub layer_now: Option<String>,
    /// Layer switches over the window.
    pub layer_switches: u64,
    /// Longest gap between two decoded video frames since the pull, ms.
    pub longest_freeze_ms: Option<f64>,
    /// RTP payload bytes received over the window (all tracks).
    pub recv_bytes: u64,
    /// Packets received (distinct) over the window.
    pub recv_unique: u64,
    /// Packets missing in sequence over the window.
    pub lost: u64,
    /// Datagrams its shaper dropped over the window.
    pub shaper_dropped: u64,
    /// Audio latency p50 / p99 since the pull, µs.
    pub audio_latency_us: (u64, u64),
    /// Video latency p50 / p99 since the pull, µs.
    pub video_latency_us: (u64, u64),
}

impl SubscriberDetail {
    /// The detail of a subscriber named `name` from its statistics now (`mark`: at the start of
    /// the window; window figures are the difference). `rids` names the layer indices the
    /// payloads carry (the publishers' layer order).
    pub fn of(
        name: &str,
        limit_kbps: Option<u32>,
        now: &ParticipantStats,
        mark: Option<&ParticipantStats>,
        rids: &[String],
    ) -> Self {
        let rid = |i: u8| {
            rids.get(usize::from(i))
                .cloned()
                .unwrap_or_else(|| i.to_string())
        };
        let layers = |s: &ParticipantStats| -> Vec<(u8, u64)> {
            s.subscribed
                .iter()
                .filter(|t| t.received.kind == Some(MediaKind::Video))
                .flat_map(|t| t.received.layers.iter().map(|l| (l.layer, l.unique)))
                .collect()
        };
        let sum = |s: &ParticipantStats, f: fn(&satsuma_bot::reception::ReceptionStats) -> u64| {
            s.subscribed.iter().map(|t| f(&t.received)).sum::<u64>()
        };
        let before = mark.map(layers).unwrap_or_default();
        let mut video_layer_packets: Vec<(u8, u64)> = Vec::new();
        for (layer, n) in layers(now) {
            let was: u64 = before
                .iter()
                .filter(|(l, _)| *l == layer)
                .map(|(_, n)| n)
                .sum();
            match video_layer_packets.iter_mut().find(|(l, _)| *l == layer) {
                Some((_, acc)) => *acc += n.saturating_sub(was),
                None => video_layer_packets.push((layer, n.saturating_sub(was))),
            }
        }
        video_layer_packets.sort_unstable();
        let video_layer_packets = video_layer_packets
            .into_iter()
            .map(|(l, n)| (rid(l), n))
            .collect();
        let delta = |f: fn(&satsuma_bot::reception::ReceptionStats) -> u64| {
            sum(now, f).saturating_sub(mark.map_or(0, |m| sum(m, f)))
        };
        let video = now
            .subscribed
            .iter()
            .find(|t| t.received.kind == Some(MediaKind::Video));
        let latency = |kind: MediaKind| {
            now.subscribed
                .iter()
                .find(|t| t.received.kind == Some(kind))
                .map_or((0, 0), |t| {
                    (t.received.latency.p50_us, t.received.latency.p99_us)
                })
        };
        Self {
            name: name.to_owned(),
            limit_kbps,
            video_layer_packets,
            layer_now: video.and_then(|t| t.received.layer).map(rid),
            layer_switches: delta(|r| r.layer_switches),
            longest_freeze_ms: video.and_then(|t| t.received.longest_freeze_ms),
            recv_bytes: delta(|r| r.bytes),
            recv_unique: delta(|r| r.unique),
            lost: delta(|r| r.lost),
            shaper_dropped: now
                .transport
                .ingress_dropped
                .saturating_sub(mark.map_or(0, |m| m.transport.ingress_dropped)),
            audio_latency_us: latency(MediaKind::Audio),
            video_latency_us: latency(MediaKind::Video),
        }
    }
}

/// Worker → controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum WorkerReply {
    /// Init done (baseline pairs connected or failed).
    Ready {
        /// Baseline pairs connected.
        baseline_pairs: usize,
    },
    /// Publishers created, in command order (`None`: failed).
    Published {
        /// Feeds.
        feeds: Vec<Option<FeedRef>>,
        /// First error, if any.
        error: Option<String>,
    },
    /// Subscribers created.
    Subscribed {
        /// Connected.
        connected: usize,
        /// Failed (signaling or connection).
        failed: usize,
        /// First error, if any.
        error: Option<String>,
    },
    /// Window started.
    Marked,
    /// Window report.
    Report(WorkerReport),
    /// Something failed.
    Error {
        /// What.
        message: String,
    },
}

enum Signaling {
    Satsuma(SfuClient),
    Janus { client: JanusClient, room: u64 },
}

struct Worker {
    signaling: Arc<Signaling>,
    media: MediaProfile,
    concurrency: usize,
    publishers: Vec<Peer>,
    subscribers: Vec<Peer>,
    /// Name, downlink limit and whether to report details, of each subscriber (same order as
    /// `subscribers`).
    subscriber_meta: Vec<(String, Option<u32>, bool)>,
    /// Each subscriber's statistics at the mark.
    subscriber_marks: Vec<Option<ParticipantStats>>,
    baseline: Vec<(Peer, Peer)>,
    mark_sfu: Counters,
    mark_baseline: Counters,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn track_specs(p: &PublisherPlan, media: &MediaProfile) -> Vec<TrackSpec> {
    let mut v = Vec::new();
    if p.audio {
        v.push(TrackSpec::audio("audio"));
    }
    if p.video {
        let layers = media.simulcast_layers();
        v.push(if layers.is_empty() {
            TrackSpec::video("video")
        } else {
            TrackSpec::simulcast_video("video", layers)
        });
    }
    v
}

async fn sum_counters<'a>(peers: impl Iterator<Item = &'a Peer>) -> (Counters, Vec<TrackLatency>) {
    let mut c = Counters::default();
    let mut lat = Vec::new();
    for p in peers {
        if let Ok(s) = p.stats().await {
            c.add(&s);
            for t in &s.subscribed {
                let l = t.received.latency;
                if l.samples > 0 {
                    lat.push(TrackLatency {
                        samples: l.samples,
                        p50_us: l.p50_us,
                        p99_us: l.p99_us,
                    });
                }
            }
        }
    }
    (c, lat)
}

/// A direct publisher → subscriber pair over loopback.
async fn baseline_pair(media: &MediaProfile) -> anyhow::Result<(Peer, Peer)> {
    let config = media.participant_config();
    let a = Peer::start(config, LOCALHOST)?;
    let b = Peer::start(config, LOCALHOST)?;
    // The direct pair has no SFU to pick a layer: it sends the top layer only.
    let tracks = track_specs(
        &PublisherPlan {
            name: "baseline".into(),
            audio: true,
            video: true,
        },
        &MediaProfile {
            simulcast: false,
            ..*media
        },
    );
    let (offer, mids) = a
        .with(move |p, now| p.create_push_offer(now, &tracks))
        .await??;
    let pulls: Vec<PullSpec> = mids
        .iter()
        .zip(["audio", "video"])
        .map(|(m, n)| PullSpec {
            mid: m.clone(),
            remote_session_id: "baseline".into(),
            track_name: n.into(),
        })
        .collect();
    let answer = b
        .with(move |p, now| p.accept_offer(now, &offer, &pulls))
        .await??;
    a.with(move |p, now| p.accept_answer(now, &answer))
        .await??;
    a.wait_connected(CONNECT_TIMEOUT).await?;
    b.wait_connected(CONNECT_TIMEOUT).await?;
    Ok((a, b))
}

impl Worker {
    async fn init(
        target: Target,
        media: MediaProfile,
        baseline_pairs: usize,
        concurrency: usize,
    ) -> anyhow::Result<(Self, usize)> {
        let signaling = match target {
            Target::Satsuma { url, app, secret } => {
                Signaling::Satsuma(SfuClient::new(&url, &app, &secret)?)
            }
            Target::Janus { url, room } => Signaling::Janus {
                client: JanusClient::connect(&url).await?,
                room,
            },
        };
        let mut baseline = Vec::new();
        for _ in 0..baseline_pairs {
            match baseline_pair(&media).await {
                Ok(pair) => baseline.push(pair),
                Err(e) => tracing::warn!("baseline pair: {e:#}"),
            }
        }
        let n = baseline.len();
        Ok((
            Self {
                signaling: Arc::new(signaling),
                media,
                concurrency: concurrency.max(1),
                publishers: Vec::new(),
                subscribers: Vec::new(),
                subscriber_meta: Vec::new(),
                subscriber_marks: Vec::new(),
                baseline,
                mark_sfu: Counters::default(),
                mark_baseline: Counters::default(),
            },
            n,
        ))
    }

    async fn publish(&mut self, plans: Vec<PublisherPlan>) -> WorkerReply {
        let gate = Arc::new(Semaphore::new(self.concurrency));
        let mut set = JoinSet::new();
        for (i, plan) in plans.into_iter().enumerate() {
            let sig = self.signaling.clone();
            let gate = gate.clone();
            let config = self.media.participant_config();
            let media = self.media;
            set.spawn(async move {
                let _permit = gate.acquire_owned().await;
                let r: anyhow::Result<(Peer, FeedRef)> = async {
                    let peer = Peer::start(config, LOCALHOST)?;
                    let tracks = track_specs(&plan, &media);
                    let id = match &*sig {
                        Signaling::Satsuma(c) => crate::satsuma::publish(c, &peer, tracks).await?,
                        Signaling::Janus { client, room } => client
                            .publish(&peer, *room, &plan.name, tracks)
                            .await?
                            .to_string(),
                    };
                    peer.wait_connected(CONNECT_TIMEOUT).await?;
                    Ok((
                        peer,
                        FeedRef {
                            id,
                            tracks: plan.track_names(),
                        },
                    ))
                }
                .await;
                (i, r)
            });
        }
        let mut feeds = Vec::new();
        let mut error = None;
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, Ok((peer, feed)))) => {
                    self.publishers.push(peer);
                    feeds.push((i, Some(feed)));
                }
                Ok((i, Err(e))) => {
                    error.get_or_insert_with(|| format!("{e:#}"));
                    feeds.push((i, None));
                }
                Err(e) => {
                    error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        feeds.sort_by_key(|(i, _)| *i);
        WorkerReply::Published {
            feeds: feeds.into_iter().map(|(_, f)| f).collect(),
            error,
        }
    }

    async fn subscribe(
        &mut self,
        specs: Vec<SubscribeSpec>,
        target: Option<Target>,
    ) -> WorkerReply {
        let signaling = match target {
            None => self.signaling.clone(),
            Some(Target::Satsuma { url, app, secret }) => match SfuClient::new(&url, &app, &secret)
            {
                Ok(c) => Arc::new(Signaling::Satsuma(c)),
                Err(e) => {
                    return WorkerReply::Subscribed {
                        connected: 0,
                        failed: specs.len(),
                        error: Some(format!("subscriber node: {e:#}")),
                    };
                }
            },
            Some(Target::Janus { .. }) => {
                return WorkerReply::Subscribed {
                    connected: 0,
                    failed: specs.len(),
                    error: Some("subscribers on another node: Satsuma only".into()),
                };
            }
        };
        let gate = Arc::new(Semaphore::new(self.concurrency));
        let mut set = JoinSet::new();
        for spec in specs {
            let sig = signaling.clone();
            let gate = gate.clone();
            let config = self.media.participant_config();
            let spec_name = format!("subscriber {}", spec.name);
            let meta = (spec.name.clone(), spec.limit_kbps, spec.details);
            let limit_bps = spec.limit_kbps.map(|k| u64::from(k) * 1000);
            set.spawn(async move {
                let _permit = gate.acquire_owned().await;
                let r: anyhow::Result<Peer> = async {
                    let peer = Peer::start_limited(config, LOCALHOST, limit_bps)?;
                    match &*sig {
                        Signaling::Satsuma(c) => {
                            let pulls: Vec<(String, String)> = spec
                                .feeds
                                .iter()
                                .flat_map(|f| f.tracks.iter().map(|t| (f.id.clone(), t.clone())))
                                .collect();
                            crate::satsuma::subscribe(c, &peer, &pulls).await?;
                        }
                        Signaling::Janus { client, room } => {
                            let feeds: Vec<u64> = spec
                                .feeds
                                .iter()
                                .filter_map(|f| f.id.parse().ok())
                                .collect();
                            client.subscribe(&peer, *room, &feeds).await?;
                        }
                    }
                    peer.wait_connected(CONNECT_TIMEOUT).await?;
                    Ok(peer)
                }
                .await;
                r.map(|p| (p, meta)).map_err(|e| e.context(spec_name))
            });
        }
        let (mut connected, mut failed, mut error) = (0, 0, None);
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(Ok((peer, meta))) => {
                    self.subscribers.push(peer);
                    self.subscriber_meta.push(meta);
                    connected += 1;
                }
                Ok(Err(e)) => {
                    failed += 1;
                    error.get_or_insert_with(|| format!("{e:#}"));
                }
                Err(e) => {
                    failed += 1;
                    error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        WorkerReply::Subscribed {
            connected,
            failed,
            error,
        }
    }

    async fn snapshot(&self) -> (Counters, Vec<TrackLatency>, Counters, Vec<TrackLatency>) {
        let (sfu, lat) = sum_counters(self.publishers.iter().chain(&self.subscribers)).await;
        let (base, base_lat) = sum_counters(self.baseline.iter().flat_map(|(a, b)| [a, b])).await;
        (sfu, lat, base, base_lat)
    }

    /// Whether any subscriber reports its own figures.
    fn wants_details(&self) -> bool {
        self.subscriber_meta.iter().any(|(_, _, d)| *d)
    }

    async fn mark(&mut self, restart_latency: bool) -> WorkerReply {
        if restart_latency {
            let baseline = self.baseline.iter().flat_map(|(a, b)| [a, b]);
            for p in self.subscribers.iter().chain(baseline) {
                // A peer that is gone has no samples to forget.
                let _ = p.with(|p, _| p.restart_latency()).await;
            }
        }
        let (sfu, _, base, _) = self.snapshot().await;
        self.mark_sfu = sfu;
        self.mark_baseline = base;
        self.subscriber_marks.clear();
        if self.wants_details() {
            for p in &self.subscribers {
                self.subscriber_marks.push(p.stats().await.ok());
            }
        }
        WorkerReply::Marked
    }

    async fn report(&self) -> WorkerReply {
        let (sfu, latency, base, baseline_latency) = self.snapshot().await;
        let mut subscriber_details = Vec::new();
        if self.wants_details() {
            let rids: Vec<String> = self
                .media
                .simulcast_layers()
                .into_iter()
                .map(|l| l.rid)
                .collect();
            let subscribers = self.subscribers.iter().zip(&self.subscriber_meta);
            for (i, (p, (name, limit, details))) in subscribers.enumerate() {
                if !details {
                    continue;
                }
                if let Ok(now) = p.stats().await {
                    let mark = self.subscriber_marks.get(i).and_then(Option::as_ref);
                    subscriber_details.push(SubscriberDetail::of(name, *limit, &now, mark, &rids));
                }
            }
        }
        WorkerReply::Report(WorkerReport {
            publishers: self.publishers.len(),
            subscribers: self.subscribers.len(),
            sfu: sfu.since(&self.mark_sfu),
            baseline: base.since(&self.mark_baseline),
            latency,
            baseline_latency,
            subscriber_details,
        })
    }

    async fn stop(self) {
        if let Signaling::Janus { client, .. } = &*self.signaling {
            client.destroy().await;
        }
        for p in self.subscribers.into_iter().chain(self.publishers) {
            p.shutdown().await;
        }
        for (a, b) in self.baseline {
            a.shutdown().await;
            b.shutdown().await;
        }
    }
}

/// Run the worker: read commands from stdin until `stop` or end of input.
pub async fn run_worker() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    let mut worker: Option<Worker> = None;
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<WorkerCommand>(&line) {
            Err(e) => WorkerReply::Error {
                message: format!("bad command: {e}"),
            },
            Ok(WorkerCommand::Init {
                target,
                media,
                baseline_pairs,
                concurrency,
            }) => match Worker::init(target, media, baseline_pairs, concurrency).await {
                Ok((w, n)) => {
                    worker = Some(w);
                    WorkerReply::Ready { baseline_pairs: n }
                }
                Err(e) => WorkerReply::Error {
                    message: format!("init: {e:#}"),
                },
            },
            Ok(WorkerCommand::Stop) => {
                if let Some(w) = worker.take() {
                    w.stop().await;
                }
                break;
            }
            Ok(cmd) => match worker.as_mut() {
                None => WorkerReply::Error {
                    message: "not initialised".into(),
                },
                Some(w) => match cmd {
                    WorkerCommand::Publish { publishers } => w.publish(publishers).await,
                    WorkerCommand::Subscribe {
                        subscribers,
                        target,
                    } => w.subscribe(subscribers, target).await,
                    WorkerCommand::Mark { restart_latency } => w.mark(restart_latency).await,
                    WorkerCommand::Report => w.report().await,
                    WorkerCommand::Init { .. } | WorkerCommand::Stop => WorkerReply::Error {
                        message: "unexpected".into(),
                    },
                },
            },
        };
        let mut text = serde_json::to_string(&reply)?;
        text.push('\n');
        out.write_all(text.as_bytes()).await?;
        out.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn commands_round_trip_as_json_lines() {
        let cmd = WorkerCommand::Init {
            target: Target::Janus {
                url: "http://127.0.0.1:1/janus".into(),
                room: 7,
            },
            media: MediaProfile::default(),
            baseline_pairs: 1,
            concurrency: 4,
        };
        let text = serde_json::to_string(&cmd).unwrap();
        assert!(text.contains("\"cmd\":\"init\""), "{text}");
        assert!(!text.contains('\n'));
        assert_eq!(serde_json::from_str::<WorkerCommand>(&text).unwrap(), cmd);
        let r: WorkerReply = serde_json::from_str("{\"reply\":\"marked\"}").unwrap();
        assert_eq!(r, WorkerReply::Marked);
        // A mark without the flag keeps cumulative latency.
        let m: WorkerCommand = serde_json::from_str("{\"cmd\":\"mark\"}").unwrap();
        assert_eq!(
            m,
            WorkerCommand::Mark {
                restart_latency: false
            }
        );
    }

    #[test]
    fn counters_subtract_and_add() {
        let a = Counters {
            sent_packets: 10,
            recv_packets: 100,
            lost: 2,
            ..Counters::default()
        };
        let b = Counters {
            sent_packets: 25,
            recv_packets: 160,
            lost: 1,
            ..Counters::default()
        };
        let d = b.since(&a);
        assert_eq!(d.sent_packets, 15);
        assert_eq!(d.recv_packets, 60);
        assert_eq!(d.lost, 0, "saturates");
        assert_eq!(d.plus(&a).recv_packets, 160);
    }
}
