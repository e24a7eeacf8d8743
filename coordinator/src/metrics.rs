//! Prometheus metrics (`GET /metrics`), one registry per server.

use prometheus::{Encoder, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

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
        })
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
