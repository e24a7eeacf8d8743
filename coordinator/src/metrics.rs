//! Prometheus metrics (`GET /metrics`), one registry per server.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// Why the coordinator closed a connection or refused one at the door (a typed label of
/// `satsuma_coord_closes_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum CloseReason {
    /// It held its send budget: it stopped reading (close 4430).
    SendBudget,
    /// Message flood (close 4429).
    Flood,
    /// Too many refused messages in a row (close 4002).
    Refusals,
    /// A frame beyond the hard size limit (close 1009).
    FrameTooBig,
    /// The WebSocket upgrade was refused: its IP address holds its connection cap (HTTP 429).
    PerIpCap,
    /// The WebSocket upgrade was refused: the server holds `max_connections` (HTTP 503).
    ServerCap,
    /// A request with a `Host` or `Origin` outside the allow-list (HTTP 403).
    Origin,
}

impl CloseReason {
    /// Every reason (for tests and pre-registration).
    pub const ALL: [CloseReason; 7] = [
        CloseReason::SendBudget,
        CloseReason::Flood,
        CloseReason::Refusals,
        CloseReason::FrameTooBig,
        CloseReason::PerIpCap,
        CloseReason::ServerCap,
        CloseReason::Origin,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::SendBudget => "send_budget",
            CloseReason::Flood => "flood",
            CloseReason::Refusals => "refusals",
            CloseReason::FrameTooBig => "frame_too_big",
            CloseReason::PerIpCap => "per_ip_cap",
            CloseReason::ServerCap => "server_cap",
            CloseReason::Origin => "origin",
        }
    }
}

/// Why an incoming message was dropped before the room saw it (a typed label of
/// `satsuma_coord_drops_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Over the message rate.
    MessageRate,
    /// Over the byte rate.
    ByteRate,
    /// A WebSocket ping or pong over either rate.
    Ping,
}

impl DropReason {
    /// Every reason.
    pub const ALL: [DropReason; 3] = [
        DropReason::MessageRate,
        DropReason::ByteRate,
        DropReason::Ping,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::MessageRate => "message_rate",
            DropReason::ByteRate => "byte_rate",
            DropReason::Ping => "ping",
        }
    }
}

/// The coordinator's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Live rooms.
    pub rooms: IntGauge,
    /// Participants in all rooms (connected or within their presence grace).
    pub participants: IntGauge,
    /// Open WebSocket connections.
    pub connections: IntGauge,
    /// Messages received, by type.
    pub messages_in: IntCounterVec,
    /// Log entries appended, by type.
    pub entries: IntCounterVec,
    /// Errors and refusals, by code.
    pub errors: IntCounterVec,
    /// Proxied SFU calls, by route and HTTP status.
    pub sfu_calls: IntCounterVec,
    /// SFU sessions of departed participants closed at the SFU, by result
    /// (`closed`, `gone`: the SFU no longer had it, `failed`, `dropped`: queue full).
    pub sfu_session_closes: IntCounterVec,
    /// Connections closed or refused by the coordinator's limits, by [`CloseReason`].
    pub closes: IntCounterVec,
    /// Incoming messages dropped by the connection's rate limits, by [`DropReason`].
    pub drops: IntCounterVec,
    /// SFU sessions released while their owner stays (a newer one beyond the cap, an explicit
    /// close, or created for a participant that left meanwhile).
    pub sfu_sessions_released: IntCounter,
    /// SFU sessions whose owners were told to move off a node (issue 15), by why (`draining`,
    /// `down`); each session counts once.
    pub sfu_moves: IntCounterVec,
    /// Seconds from a node's first move order until this replica held no session on it.
    pub sfu_evacuation_seconds: prometheus::Histogram,
    /// Host-started recorder processes, by event (`started`, `failed`: could not start,
    /// `exited`).
    pub recordings: IntCounterVec,
    /// `closes` resolved per reason once (no label lookup per event), in [`CloseReason::ALL`] order.
    close_counters: Vec<IntCounter>,
    /// `drops` resolved per reason once, in [`DropReason::ALL`] order.
    drop_counters: Vec<IntCounter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let rooms = IntGauge::new("satsuma_coord_rooms", "Live rooms")?;
        let participants = IntGauge::new(
            "satsuma_coord_participants",
            "Participants in all rooms, including those within their presence grace period",
        )?;
        let connections = IntGauge::new("satsuma_coord_connections", "Open WebSocket connections")?;
        let messages_in = IntCounterVec::new(
            Opts::new(
                "satsuma_coord_messages_total",
                "Client messages received, by type",
            ),
            &["type"],
        )?;
        let entries = IntCounterVec::new(
            Opts::new(
                "satsuma_coord_entries_total",
                "Room log entries appended, by type",
            ),
            &["type"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "satsuma_coord_errors_total",
                "Refused messages and closed connections, by code",
            ),
            &["code"],
        )?;
        let sfu_calls = IntCounterVec::new(
            Opts::new("satsuma_coord_sfu_calls_total", "Proxied SFU API calls"),
            &["route", "status"],
        )?;
        registry.register(Box::new(rooms.clone()))?;
        registry.register(Box::new(participants.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(messages_in.clone()))?;
        registry.register(Box::new(entries.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        let sfu_session_closes = IntCounterVec::new(
            Opts::new(
                "satsuma_coord_sfu_session_closes_total",
                "SFU sessions of departed participants deleted at the SFU, by result",
            ),
            &["result"],
        )?;
        registry.register(Box::new(sfu_calls.clone()))?;
        registry.register(Box::new(sfu_session_closes.clone()))?;
        let closes = IntCounterVec::new(
            Opts::new(
                "satsuma_coord_closes_total",
                "Connections closed or refused by the coordinator's limits, by reason",
            ),
            &["reason"],
        )?;
        let drops = IntCounterVec::new(
            Opts::new(
                "satsuma_coord_drops_total",
                "Incoming messages dropped by a connection's rate limits, by reason",
            ),
            &["reason"],
        )?;
        let sfu_sessions_released = IntCounter::new(
            "satsuma_coord_sfu_sessions_released_total",
            "SFU sessions released while their owner stays in the room",
        )?;
        let close_counters = CloseReason::ALL
            .iter()
            .map(|r| closes.with_label_values(&[r.label()]))
            .collect();
        let drop_counters = DropReason::ALL
            .iter()
            .map(|r| drops.with_label_values(&[r.label()]))
            .collect();
        registry.register(Box::new(closes.clone()))?;
        registry.register(Box::new(drops.clone()))?;
        registry.register(Box::new(sfu_sessions_released.clone()))?;
        let recordings = IntCounterVec::new(
            Opts::new(
                "satsuma_coord_recordings_total",
                "Host-started recorder processes, by event (started, failed, exited)",
            ),
            &["event"],
        )?;
        registry.register(Box::new(recordings.clone()))?;
        let sfu_moves = IntCounterVec::new(
            Opts::new(
                "satsuma_coord_sfu_moves_total",
                "SFU sessions whose owners were told to move off a draining or dead node, by reason",
            ),
            &["reason"],
        )?;
        for reason in ["draining", "down"] {
            sfu_moves.with_label_values(&[reason]);
        }
        registry.register(Box::new(sfu_moves.clone()))?;
        let sfu_evacuation_seconds = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "satsuma_coord_sfu_evacuation_seconds",
                "Seconds from a node's first move order (draining or down) until none of this \
                 replica's sessions was left on it",
            )
            .buckets(vec![0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0]),
        )?;
        registry.register(Box::new(sfu_evacuation_seconds.clone()))?;
        Ok(Self {
            registry,
            rooms,
            participants,
            connections,
            messages_in,
            entries,
            errors,
            sfu_calls,
            sfu_session_closes,
            closes,
            drops,
            sfu_sessions_released,
            recordings,
            sfu_moves,
            sfu_evacuation_seconds,
            close_counters,
            drop_counters,
        })
    }

    /// Counts a connection closed or refused by a limit.
    pub fn close(&self, reason: CloseReason) {
        if let Some(c) = self.close_counters.get(reason as usize) {
            c.inc();
        }
    }

    /// Counts a dropped message.
    pub fn drop_message(&self, reason: DropReason) {
        if let Some(c) = self.drop_counters.get(reason as usize) {
            c.inc();
        }
    }

    /// Counts an error by code.
    pub fn error(&self, code: &str) {
        self.errors.with_label_values(&[code]).inc();
    }

    /// The text exposition.
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn typed_reasons_land_on_their_own_series() {
        let m = Metrics::new().unwrap();
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        m.close(CloseReason::SendBudget);
        m.close(CloseReason::SendBudget);
        m.drop_message(DropReason::Ping);
        let text = m.render();
        assert!(
            text.contains("satsuma_coord_closes_total{reason=\"send_budget\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("satsuma_coord_closes_total{reason=\"flood\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("satsuma_coord_drops_total{reason=\"ping\"} 1"),
            "{text}"
        );
    }
}
