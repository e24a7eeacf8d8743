//! Prometheus metrics (`satsuma_sfu_*`), one registry per server instance so several servers can
//! run in one process (tests). All counters are atomics: safe to bump on the hot path.

use prometheus::core::Collector;
use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Why a datagram or packet was dropped: one fixed `reason` label per variant, and one counter
/// per variant registered up front, so counting a drop is an array index and an atomic add (no
/// label lookup, no allocation on the packet path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketDrop {
    /// A datagram from an address no session sent to, and not a STUN request.
    UnknownSource,
    /// A STUN request whose ufrag no session owns.
    UnknownUfrag,
    /// A STUN message too short or without USERNAME.
    MalformedStun,
    /// A STUN message that is not a binding request.
    UnexpectedStun,
    /// A shard's inbox was full.
    ShardQueueFull,
    /// A message for a shard that does not exist.
    UnknownShard,
    /// A datagram for a session that is gone.
    UnknownSession,
    /// A datagram str0m cannot classify (not STUN, DTLS, RTP or RTCP).
    Unclassified,
    /// A datagram str0m did not accept for the session.
    NotAccepted,
    /// str0m refused a datagram.
    RtcInputError,
    /// RTP on a track that is not (any more) published.
    UnpublishedTrack,
    /// RTP on an m-line that publishes no active track.
    UnpublishedMid,
    /// A packet for a subscriber session that is gone.
    NoSubscriberSession,
    /// A subscriber leg without a send stream.
    NoSendStream,
    /// A publisher above its ingress bitrate limit.
    IngressBitrate,
    /// The subscriber did not negotiate the publisher's codec.
    NoPtMapping,
    /// Older than the first packet the leg forwarded.
    TooOld,
    /// From a simulcast layer the leg is not on.
    OtherLayer,
    /// Waiting for a keyframe before starting or switching a layer.
    AwaitingKeyframe,
    /// A new leg waiting for the replay of its track's cached keyframe (the packet is in it).
    AwaitingReplay,
    /// The socket refused a send (buffer full).
    SendFailed,
    /// An ICE-TCP frame that is empty, too long, or not STUN, DTLS, RTP or RTCP (its connection
    /// is closed).
    TcpBadFrame,
    /// A non-STUN frame on an ICE-TCP connection its session has not answered yet.
    TcpUnverified,
    /// A packet for an ICE-TCP peer without an open connection.
    TcpNoConnection,
    /// An ICE-TCP connection's send queue was full (the peer does not read fast enough).
    TcpQueueFull,
}

impl PacketDrop {
    /// Every variant, in label order.
    pub const ALL: [PacketDrop; 25] = [
        PacketDrop::UnknownSource,
        PacketDrop::UnknownUfrag,
        PacketDrop::MalformedStun,
        PacketDrop::UnexpectedStun,
        PacketDrop::ShardQueueFull,
        PacketDrop::UnknownShard,
        PacketDrop::UnknownSession,
        PacketDrop::Unclassified,
        PacketDrop::NotAccepted,
        PacketDrop::RtcInputError,
        PacketDrop::UnpublishedTrack,
        PacketDrop::UnpublishedMid,
        PacketDrop::NoSubscriberSession,
        PacketDrop::NoSendStream,
        PacketDrop::IngressBitrate,
        PacketDrop::NoPtMapping,
        PacketDrop::TooOld,
        PacketDrop::OtherLayer,
        PacketDrop::AwaitingKeyframe,
        PacketDrop::AwaitingReplay,
        PacketDrop::SendFailed,
        PacketDrop::TcpBadFrame,
        PacketDrop::TcpUnverified,
        PacketDrop::TcpNoConnection,
        PacketDrop::TcpQueueFull,
    ];

    /// The `reason` label.
    pub const fn label(self) -> &'static str {
        match self {
            PacketDrop::UnknownSource => "unknown_source",
            PacketDrop::UnknownUfrag => "unknown_ufrag",
            PacketDrop::MalformedStun => "malformed_stun",
            PacketDrop::UnexpectedStun => "unexpected_stun",
            PacketDrop::ShardQueueFull => "shard_queue_full",
            PacketDrop::UnknownShard => "unknown_shard",
            PacketDrop::UnknownSession => "unknown_session",
            PacketDrop::Unclassified => "unclassified",
            PacketDrop::NotAccepted => "not_accepted",
            PacketDrop::RtcInputError => "rtc_input_error",
            PacketDrop::UnpublishedTrack => "unpublished_track",
            PacketDrop::UnpublishedMid => "unpublished_mid",
            PacketDrop::NoSubscriberSession => "no_subscriber_session",
            PacketDrop::NoSendStream => "no_send_stream",
            PacketDrop::IngressBitrate => "ingress_bitrate",
            PacketDrop::NoPtMapping => "no_pt_mapping",
            PacketDrop::TooOld => "too_old",
            PacketDrop::OtherLayer => "other_layer",
            PacketDrop::AwaitingKeyframe => "awaiting_keyframe",
            PacketDrop::AwaitingReplay => "awaiting_replay",
            PacketDrop::SendFailed => "send_failed",
            PacketDrop::TcpBadFrame => "tcp_bad_frame",
            PacketDrop::TcpUnverified => "tcp_unverified",
            PacketDrop::TcpNoConnection => "tcp_no_connection",
            PacketDrop::TcpQueueFull => "tcp_queue_full",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl From<crate::forward::DropReason> for PacketDrop {
    fn from(r: crate::forward::DropReason) -> Self {
        use crate::forward::DropReason;
        match r {
            DropReason::NoPtMapping => PacketDrop::NoPtMapping,
            DropReason::TooOld => PacketDrop::TooOld,
            DropReason::OtherLayer => PacketDrop::OtherLayer,
            DropReason::AwaitingKeyframe => PacketDrop::AwaitingKeyframe,
            DropReason::AwaitingReplay => PacketDrop::AwaitingReplay,
        }
    }
}

/// Every metric the SFU exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Live sessions.
    pub sessions: IntGauge,
    /// 1 while the node drains (issue 15, [`crate::drain`]), else 0.
    pub draining: IntGauge,
    /// Milliseconds the node has been draining (0 when not draining).
    pub drain_ms: IntGauge,
    /// Sessions the node held when its drain started.
    pub drain_sessions_at_start: IntGauge,
    /// Live published tracks.
    pub tracks: IntGauge,
    /// Live subscriptions (legs).
    pub subscriptions: IntGauge,
    /// UDP datagrams received.
    pub packets_in: IntCounter,
    /// UDP bytes received.
    pub bytes_in: IntCounter,
    /// UDP datagrams sent.
    pub packets_out: IntCounter,
    /// UDP bytes sent.
    pub bytes_out: IntCounter,
    /// Socket send calls (one call carries several datagrams with GSO).
    pub send_calls: IntCounter,
    /// RTP packets received from publishers (after SRTP).
    pub rtp_in: IntCounter,
    /// RTP packets handed to subscriber legs.
    pub forwarded: IntCounter,
    /// Datagrams or packets dropped, by reason (count with [`Metrics::drop`]).
    pub dropped: IntCounterVec,
    /// `dropped` per [`PacketDrop`], resolved once.
    dropped_by: Vec<IntCounter>,
    /// Shard threads that panicked, by shard (each one's sessions were closed and the shard
    /// restarted).
    pub shard_panics: IntCounterVec,
    /// API requests refused by a quota, by quota.
    pub quota_refusals: IntCounterVec,
    /// NACKs received from subscribers (str0m answers them from its RTX cache).
    pub nacks: IntCounter,
    /// Keyframe requests by direction (`from_subscriber`; `publisher_asked`: a publisher asked
    /// for one of its own track through `tracks/keyframe`; `to_publisher`: PLI/FIR sent).
    pub keyframe_requests: IntCounterVec,
    /// API requests by route and status.
    pub api_requests: IntCounterVec,
    /// Sessions torn down because their str0m handling panicked.
    pub session_panics: IntCounter,
    /// Sessions collected by timeout or transport loss.
    pub sessions_collected: IntCounter,
    /// ICE restarts accepted (an offer with new ICE credentials on an existing session).
    pub ice_restarts: IntCounter,
    /// Tracks collected for lack of media.
    pub tracks_collected: IntCounter,
    /// Egress bandwidth estimates of subscriber sessions (str0m GCC), in bits/s.
    pub bandwidth_estimate: Histogram,
    /// Restarts of a subscriber session's stuck bandwidth estimator (see `crate::layer`).
    pub bwe_restarts: IntCounter,
    /// Simulcast layer switches of subscriber legs, by direction (`up`, `down`).
    pub layer_switches: IntCounterVec,
    /// Simulcast packets no leg took because no leg is on (or switching to) their layer, counted
    /// by every shard that has legs on the track.
    pub unused_layer_packets: IntCounter,
    /// Replays of a track's cached keyframe to a new leg, by result (`replayed`;
    /// `replayed_old`: the keyframe predates the subscriber's session, likely under an E2EE epoch
    /// a joiner cannot read; `empty`: nothing cached; `refused`: the leg could not take it), see
    /// [`crate::keyframe_cache`].
    pub keyframe_replays: IntCounterVec,
    /// Packets sent to new legs by keyframe replays.
    pub keyframe_replay_packets: IntCounter,
    /// Keyframe caches emptied before their layer's next keyframe, by bound (`packets`, `bytes`,
    /// `age`, `codec`).
    pub keyframe_cache_drops: IntCounterVec,
    /// Payload bytes held by the keyframe caches, by the publishers' shard (updated 4 times a
    /// second).
    pub keyframe_cache_bytes: IntGaugeVec,
    /// Seconds each shard spent working (not waiting), by shard index.
    pub shard_busy_seconds: CounterVec,
    /// Sessions owned by each shard.
    pub shard_sessions: IntGaugeVec,
    /// Messages sent from one shard to another (media, keyframe requests, leg bookkeeping).
    pub cross_shard_messages: IntCounter,
    /// Audio packets that carried an `ssrc-audio-level` value.
    pub audio_level_packets: IntCounter,
    /// Published audio tracks speaking now, by the shard that owns the publisher.
    pub speaking_tracks: IntGaugeVec,
    /// Times a session's active speaker changed.
    pub active_speaker_changes: IntCounter,
    /// Open ICE-TCP connections.
    pub tcp_connections: IntGauge,
    /// ICE-TCP connections accepted.
    pub tcp_accepted: IntCounter,
    /// ICE-TCP connections refused at accept, by reason (`per_ip`, `total`).
    pub tcp_refused: IntCounterVec,
    /// ICE-TCP connections closed, by reason (see [`crate::ice_tcp::CloseReason`]).
    pub tcp_closed: IntCounterVec,
    /// ICE-TCP frames received (each one STUN, DTLS, RTP or RTCP packet).
    pub tcp_frames_in: IntCounter,
    /// ICE-TCP bytes received (with framing).
    pub tcp_bytes_in: IntCounter,
    /// ICE-TCP frames sent.
    pub tcp_frames_out: IntCounter,
    /// ICE-TCP bytes sent (with framing).
    pub tcp_bytes_out: IntCounter,
    /// The relay between SFU nodes (`satsuma_sfu_relay_*`: packets, bytes, RTT, loss per link).
    pub relay: crate::relay::metrics::RelayMetrics,
    /// Data channels (`satsuma_sfu_datachannel*`: channels, messages, drops by reason).
    pub datachannels: crate::shard::ChannelMetrics,
}

/// Registers a freshly built metric (`built` is its constructor's result) and returns it.
fn register<M: Collector + Clone + 'static>(
    registry: &Registry,
    name: &str,
    built: prometheus::Result<M>,
) -> M {
    let m = built.unwrap_or_else(|e| unreachable_metric(name, &e));
    if let Err(e) = registry.register(Box::new(m.clone())) {
        unreachable_metric(name, &e);
    }
    m
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("satsuma_sfu")
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, name, IntCounter::with_opts(opts(name, help)))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, name, IntGauge::with_opts(opts(name, help)))
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let o = HistogramOpts::new(name, help)
        .namespace("satsuma_sfu")
        .buckets(buckets);
    register(registry, name, Histogram::with_opts(o))
}

fn float_counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> CounterVec {
    register(registry, name, CounterVec::new(opts(name, help), labels))
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, name, IntGaugeVec::new(opts(name, help), labels))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, name, IntCounterVec::new(opts(name, help), labels))
}

/// Metric names and labels are compile-time constants: a failure here is a programming error
/// caught by the unit test below, never something a peer can trigger.
#[allow(clippy::panic)]
fn unreachable_metric(name: &str, e: &prometheus::Error) -> ! {
    panic!("metric {name} is malformed: {e}")
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let mut m = Metrics {
            sessions: gauge(&r, "sessions", "Live sessions"),
            draining: gauge(
                &r,
                "draining",
                "1 while the node drains (SIGTERM or satsuma-sfu drain): no new sessions",
            ),
            drain_ms: gauge(&r, "drain_ms", "Milliseconds the node has been draining"),
            drain_sessions_at_start: gauge(
                &r,
                "drain_sessions_at_start",
                "Sessions the node held when its drain started",
            ),
            tracks: gauge(&r, "tracks", "Live published tracks"),
            subscriptions: gauge(&r, "subscriptions", "Live subscriptions (subscriber legs)"),
            packets_in: counter(&r, "packets_in_total", "UDP datagrams received"),
            bytes_in: counter(&r, "bytes_in_total", "UDP bytes received"),
            packets_out: counter(&r, "packets_out_total", "UDP datagrams sent"),
            bytes_out: counter(&r, "bytes_out_total", "UDP bytes sent"),
            send_calls: counter(
                &r,
                "udp_send_calls_total",
                "UDP send system calls (with GSO one call carries several datagrams)",
            ),
            rtp_in: counter(
                &r,
                "rtp_packets_in_total",
                "RTP packets received from publishers",
            ),
            forwarded: counter(
                &r,
                "forwarded_packets_total",
                "RTP packets forwarded to subscriber legs",
            ),
            dropped: counter_vec(
                &r,
                "dropped_total",
                "Datagrams or packets dropped, by reason",
                &["reason"],
            ),
            dropped_by: Vec::new(),
            shard_panics: counter_vec(
                &r,
                "shard_panics_total",
                "Shard threads that panicked (sessions closed, shard restarted), by shard",
                &["shard"],
            ),
            quota_refusals: counter_vec(
                &r,
                "quota_refusals_total",
                "API requests or tracks refused by a quota, by quota",
                &["quota"],
            ),
            nacks: counter(&r, "nacks_total", "NACKs received from subscribers"),
            keyframe_requests: counter_vec(
                &r,
                "keyframe_requests_total",
                "Keyframe requests (PLI/FIR) by direction",
                &["direction"],
            ),
            api_requests: counter_vec(
                &r,
                "api_requests_total",
                "HTTP API requests by route and status",
                &["route", "status"],
            ),
            session_panics: counter(
                &r,
                "session_panics_total",
                "Sessions torn down after a panic in their handling",
            ),
            sessions_collected: counter(
                &r,
                "sessions_collected_total",
                "Sessions collected after their transport was gone",
            ),
            ice_restarts: counter(
                &r,
                "ice_restarts_total",
                "ICE restarts accepted on existing sessions",
            ),
            tracks_collected: counter(
                &r,
                "tracks_collected_total",
                "Tracks collected after receiving no media",
            ),
            bwe_restarts: counter(
                &r,
                "bwe_restarts_total",
                "Restarts of a subscriber session's bandwidth estimator that had stopped moving",
            ),
            bandwidth_estimate: histogram(
                &r,
                "bandwidth_estimate_bps",
                "Egress bandwidth estimates of subscriber sessions in bits/s (str0m GCC)",
                vec![
                    50e3, 100e3, 200e3, 300e3, 500e3, 750e3, 1e6, 1.5e6, 2e6, 3e6, 5e6, 10e6, 20e6,
                    50e6,
                ],
            ),
            layer_switches: counter_vec(
                &r,
                "layer_switches_total",
                "Simulcast layer switches of subscriber legs by direction",
                &["direction"],
            ),
            unused_layer_packets: counter(
                &r,
                "unused_layer_packets_total",
                "Simulcast packets not forwarded because no leg takes their layer (per shard with legs on the track)",
            ),
            keyframe_replays: counter_vec(
                &r,
                "keyframe_replays_total",
                "Replays of a track's cached keyframe to a new subscriber leg, by result",
                &["result"],
            ),
            keyframe_replay_packets: counter(
                &r,
                "keyframe_replay_packets_total",
                "Packets sent to new subscriber legs by keyframe replays",
            ),
            keyframe_cache_drops: counter_vec(
                &r,
                "keyframe_cache_drops_total",
                "Keyframe caches emptied before the next keyframe, by bound",
                &["bound"],
            ),
            keyframe_cache_bytes: gauge_vec(
                &r,
                "keyframe_cache_bytes",
                "Payload bytes held by the keyframe caches, by the publishers' shard",
                &["shard"],
            ),
            shard_busy_seconds: float_counter_vec(
                &r,
                "shard_busy_seconds_total",
                "Seconds each shard thread spent working rather than waiting",
                &["shard"],
            ),
            shard_sessions: gauge_vec(
                &r,
                "shard_sessions",
                "Sessions owned by each shard",
                &["shard"],
            ),
            cross_shard_messages: counter(
                &r,
                "cross_shard_messages_total",
                "Messages passed between shards (media, keyframe requests, leg bookkeeping)",
            ),
            audio_level_packets: counter(
                &r,
                "audio_level_packets_total",
                "Audio packets carrying an ssrc-audio-level header extension",
            ),
            speaking_tracks: gauge_vec(
                &r,
                "speaking_tracks",
                "Published audio tracks speaking now, by the publisher's shard",
                &["shard"],
            ),
            active_speaker_changes: counter(
                &r,
                "active_speaker_changes_total",
                "Times the active speaker of a subscribing session changed",
            ),
            tcp_connections: gauge(&r, "tcp_connections", "Open ICE-TCP connections"),
            tcp_accepted: counter(
                &r,
                "tcp_connections_accepted_total",
                "ICE-TCP connections accepted",
            ),
            tcp_refused: counter_vec(
                &r,
                "tcp_connections_refused_total",
                "ICE-TCP connections refused at accept, by reason (per_ip, total)",
                &["reason"],
            ),
            tcp_closed: counter_vec(
                &r,
                "tcp_connections_closed_total",
                "ICE-TCP connections closed, by reason",
                &["reason"],
            ),
            tcp_frames_in: counter(
                &r,
                "tcp_frames_in_total",
                "ICE-TCP frames (STUN, DTLS, RTP or RTCP packets) received",
            ),
            tcp_bytes_in: counter(
                &r,
                "tcp_bytes_in_total",
                "ICE-TCP bytes received, framing included",
            ),
            tcp_frames_out: counter(&r, "tcp_frames_out_total", "ICE-TCP frames sent"),
            tcp_bytes_out: counter(
                &r,
                "tcp_bytes_out_total",
                "ICE-TCP bytes sent, framing included",
            ),
            relay: crate::relay::metrics::RelayMetrics::new(&r),
            datachannels: crate::shard::ChannelMetrics::new(&r),
            registry: r,
        };
        // The standard `process_cpu_seconds_total`, read from /proc when scraped (Grafana's
        // "CPU per forwarded packet" divides its rate by the forwarded packets'). Not on Linux:
        // not exported.
        if process_cpu_seconds().is_some()
            && let Ok(c) = ProcessCpu::new()
        {
            let _ = m.registry.register(Box::new(c));
        }
        // Label values known up front are exported from the start (at 0), so dashboards and
        // alerts see the series before the first switch.
        for direction in ["up", "down"] {
            m.layer_switches.with_label_values(&[direction]);
        }
        // Keyframe requests: a new leg served from the keyframe cache asks for none, so a node
        // may go a long time without one; the series exist from the start.
        for direction in ["from_subscriber", "publisher_asked", "to_publisher"] {
            m.keyframe_requests.with_label_values(&[direction]);
        }
        for result in ["replayed", "replayed_old", "empty", "refused"] {
            m.keyframe_replays.with_label_values(&[result]);
        }
        m.dropped_by = PacketDrop::ALL
            .iter()
            .map(|d| m.dropped.with_label_values(&[d.label()]))
            .collect();
        for quota in Quota::ALL {
            m.quota_refusals.with_label_values(&[quota.label()]);
        }
        for refusal in crate::ice_tcp::Refusal::ALL {
            m.tcp_refused.with_label_values(&[refusal.label()]);
        }
        for reason in crate::ice_tcp::CloseReason::ALL {
            m.tcp_closed.with_label_values(&[reason.label()]);
        }
        m
    }

    /// Counts what a forwarding decision did to simulcast layers.
    pub fn count_layer_outcome(&self, outcome: &crate::forward::ForwardOutcome) {
        if outcome.switched_up > 0 {
            self.layer_switches
                .with_label_values(&["up"])
                .inc_by(u64::from(outcome.switched_up));
        }
        if outcome.switched_down > 0 {
            self.layer_switches
                .with_label_values(&["down"])
                .inc_by(u64::from(outcome.switched_down));
        }
        if outcome.unused_layer {
            self.unused_layer_packets.inc();
        }
    }

    /// Counts one drop.
    #[inline]
    pub fn drop(&self, reason: PacketDrop) {
        self.drop_n(reason, 1);
    }

    /// Counts `n` drops of one reason.
    #[inline]
    pub fn drop_n(&self, reason: PacketDrop, n: u64) {
        if let Some(c) = self.dropped_by.get(reason.index()) {
            c.inc_by(n);
        }
    }

    /// Counts one refusal by a quota.
    pub fn refused(&self, quota: Quota) {
        self.quota_refusals
            .with_label_values(&[quota.label()])
            .inc();
    }

    /// Exports a shard's panic counter (at 0) before any panic.
    pub fn register_shard(&self, shard: usize) {
        self.shard_panics.with_label_values(&[&shard.to_string()]);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// CPU time (user + system, all threads) this process used since it started, in seconds, from
/// `/proc/self/stat` (10 ms resolution); `None` where that file does not exist or does not parse.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_proc_stat_cpu(&stat)
}

/// utime + stime (fields 14 and 15, in clock ticks of 1/100 s) of a `/proc/<pid>/stat` line.
fn parse_proc_stat_cpu(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces and parentheses itself:
    // the fields after it start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime.saturating_add(stime) as f64 / 100.0)
}

/// `process_cpu_seconds_total`, brought up to date from `/proc` whenever it is scraped (nothing
/// on the packet path).
#[derive(Debug)]
struct ProcessCpu {
    counter: prometheus::Counter,
    update: std::sync::Mutex<()>,
}

impl ProcessCpu {
    fn new() -> prometheus::Result<ProcessCpu> {
        Ok(ProcessCpu {
            counter: prometheus::Counter::with_opts(Opts::new(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds",
            ))?,
            update: std::sync::Mutex::new(()),
        })
    }
}

impl Collector for ProcessCpu {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        // One update at a time, so two concurrent scrapes do not both add the same delta.
        let _guard = self.update.lock();
        if let Some(now) = process_cpu_seconds() {
            let delta = now - self.counter.get();
            if delta > 0.0 {
                self.counter.inc_by(delta);
            }
        }
        self.counter.collect()
    }
}

/// The quotas of [`crate::config::Limits`], as `quota` labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// `sessions/new` rate per app.
    AppNewSessionRate,
    /// Live sessions per app.
    AppSessions,
    /// Publications per session.
    SessionPublications,
    /// Legs per session.
    SessionLegs,
    /// Pulls of one track per session.
    SessionPullsPerTrack,
    /// API requests per session.
    SessionRequestRate,
}

impl Quota {
    /// Every quota.
    pub const ALL: [Quota; 6] = [
        Quota::AppNewSessionRate,
        Quota::AppSessions,
        Quota::SessionPublications,
        Quota::SessionLegs,
        Quota::SessionPullsPerTrack,
        Quota::SessionRequestRate,
    ];

    /// The `quota` label.
    pub const fn label(self) -> &'static str {
        match self {
            Quota::AppNewSessionRate => "app_new_session_rate",
            Quota::AppSessions => "app_sessions",
            Quota::SessionPublications => "session_publications",
            Quota::SessionLegs => "session_legs",
            Quota::SessionPullsPerTrack => "session_pulls_per_track",
            Quota::SessionRequestRate => "session_request_rate",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_reason_is_exported_at_zero_under_its_own_label() {
        let m = Metrics::new();
        let text = m.render();
        let mut labels = std::collections::HashSet::new();
        for (i, d) in PacketDrop::ALL.iter().enumerate() {
            assert_eq!(d.index(), i, "{d:?} is out of order in ALL");
            assert!(labels.insert(d.label()), "duplicate label {}", d.label());
            let series = format!("satsuma_sfu_dropped_total{{reason=\"{}\"}} 0", d.label());
            assert!(text.contains(&series), "{series} missing");
        }
        m.drop(PacketDrop::IngressBitrate);
        m.drop_n(PacketDrop::SendFailed, 3);
        let text = m.render();
        assert!(text.contains("satsuma_sfu_dropped_total{reason=\"ingress_bitrate\"} 1"));
        assert!(text.contains("satsuma_sfu_dropped_total{reason=\"send_failed\"} 3"));
        assert!(text.contains("satsuma_sfu_quota_refusals_total{quota=\"session_legs\"} 0"));
    }

    #[test]
    fn process_cpu_is_read_from_proc_stat_and_exported() {
        // A command name with spaces and parentheses, then state, ppid, ... utime=250 stime=50.
        let line = "4242 (sfu (x) y) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(parse_proc_stat_cpu(line), Some(3.0));
        assert_eq!(parse_proc_stat_cpu("4242 (sfu) S 1"), None);
        assert_eq!(parse_proc_stat_cpu("garbage"), None);
        if process_cpu_seconds().is_some() {
            // Burn a little CPU so the counter is above zero.
            let mut x = 0u64;
            for i in 0..20_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            assert_ne!(std::hint::black_box(x), 1);
            let text = Metrics::new().render();
            let line = text
                .lines()
                .find(|l| l.starts_with("process_cpu_seconds_total "))
                .unwrap_or_else(|| panic!("process_cpu_seconds_total missing:\n{text}"));
            let v: f64 = line["process_cpu_seconds_total ".len()..]
                .parse()
                .unwrap_or(-1.0);
            assert!(v > 0.0, "{line}");
        }
    }

    #[test]
    fn renders_prefixed_metrics() {
        let m = Metrics::new();
        m.drop(PacketDrop::UnknownSource);
        m.api_requests.with_label_values(&["x", "200"]).inc();
        let text = m.render();
        assert!(text.contains("satsuma_sfu_dropped_total{reason=\"unknown_source\"} 1"));
        assert!(text.contains("satsuma_sfu_sessions 0"));
        assert!(text.contains("satsuma_sfu_api_requests_total{route=\"x\",status=\"200\"} 1"));
        m.bandwidth_estimate.observe(400e3);
        m.layer_switches.with_label_values(&["down"]).inc();
        let text = m.render();
        assert!(text.contains("satsuma_sfu_bandwidth_estimate_bps_bucket{le=\"500000\"} 1"));
        assert!(text.contains("satsuma_sfu_bandwidth_estimate_bps_bucket{le=\"300000\"} 0"));
        assert!(text.contains("satsuma_sfu_layer_switches_total{direction=\"down\"} 1"));
        assert!(text.contains("satsuma_sfu_unused_layer_packets_total 0"));
        assert!(text.contains("satsuma_sfu_keyframe_requests_total{direction=\"to_publisher\"} 0"));
    }
}
