//! The relay's metrics (`satsuma_sfu_relay_*`), registered in the SFU's registry
//! ([`crate::Metrics::relay`]).

use prometheus::core::Collector;
use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::core::LinkStats;

/// Every relay metric. Per-link series are labelled with the peer node's name.
#[derive(Clone)]
pub struct RelayMetrics {
    /// Links up.
    pub links: IntGauge,
    /// Relay legs by side: `origin` (a local track a peer pulls), `subscriber` (a remote track
    /// pulled here).
    pub legs: IntGaugeVec,
    /// Relay legs per link, by peer and side (as `legs`).
    pub link_legs: IntGaugeVec,
    /// Media datagrams by peer and direction (`out`, `in`; resends included).
    pub packets: IntCounterVec,
    /// Their bytes (relay header included, QUIC overhead not).
    pub bytes: IntCounterVec,
    /// Round-trip time of each link (QUIC's estimate), seconds.
    pub rtt: GaugeVec,
    /// Media packets lost on a link for good, by peer and direction (`in`: never arrived here
    /// despite NACKs; `out`: the peer reported them missing).
    pub lost: IntCounterVec,
    /// QUIC packets the transport declared lost, by peer.
    pub quic_lost: IntCounterVec,
    /// UDP datagrams of each link as QUIC counts them (media, control, acks, keep-alives), by
    /// peer and direction.
    pub udp_datagrams: IntCounterVec,
    /// Their bytes (QUIC and UDP payload, IP/UDP headers not): against `bytes`, the transport's
    /// overhead.
    pub udp_bytes: IntCounterVec,
    /// Packets NACKed to the peer (`nacked`), resent on its NACKs (`resent`), or NACKed by it
    /// but gone from the resend buffer (`missed`).
    pub repairs: IntCounterVec,
    /// Connections refused at accept, by reason (`handshake`: TLS failed, e.g. a certificate
    /// from another CA; `hello`, `version`, `identity`, `timeout`; `busy`: too many handshakes
    /// at once).
    pub refused_by: IntCounterVec,
    /// Dials that failed.
    pub dial_failures: IntCounter,
    /// Datagrams too large for the path, sent on a stream instead.
    pub oversize: IntCounter,
    /// Things dropped, by reason (`malformed_datagram`, `malformed_control`, `unknown_track`,
    /// `media_queue_full`, `event_queue_full`, `inbound_queue_full`, `send_failed`,
    /// `unknown_peer`).
    pub dropped: IntCounterVec,
}

impl std::fmt::Debug for RelayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayMetrics")
    }
}

fn register<M: Collector + Clone + 'static>(
    r: &Registry,
    built: prometheus::Result<M>,
) -> Option<M> {
    let m = built.ok()?;
    // A second registration of the same name (two relays on one registry) keeps the metric
    // working but unexported; the names are constants, checked by the test below.
    let _ = r.register(Box::new(m.clone()));
    Some(m)
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("satsuma_sfu")
}

impl RelayMetrics {
    /// Creates the metrics and registers them in `r`.
    #[allow(clippy::expect_used)] // constant names and labels: the unit test covers them
    pub fn new(r: &Registry) -> RelayMetrics {
        let cv = |name: &str, help: &str, labels: &[&str]| {
            register(r, IntCounterVec::new(opts(name, help), labels)).expect("valid relay metric")
        };
        let c = |name: &str, help: &str| {
            register(r, IntCounter::with_opts(opts(name, help))).expect("valid relay metric")
        };
        let m = RelayMetrics {
            links: register(
                r,
                IntGauge::with_opts(opts("relay_links", "Relay links up")),
            )
            .expect("valid relay metric"),
            legs: register(
                r,
                IntGaugeVec::new(
                    opts("relay_legs", "Relay legs by side (origin, subscriber)"),
                    &["side"],
                ),
            )
            .expect("valid relay metric"),
            link_legs: register(
                r,
                IntGaugeVec::new(
                    opts(
                        "relay_link_legs",
                        "Relay legs per link by peer node and side (origin, subscriber)",
                    ),
                    &["peer", "side"],
                ),
            )
            .expect("valid relay metric"),
            packets: cv(
                "relay_packets_total",
                "Relay media datagrams by peer node and direction",
                &["peer", "direction"],
            ),
            bytes: cv(
                "relay_bytes_total",
                "Relay media bytes by peer node and direction",
                &["peer", "direction"],
            ),
            rtt: register(
                r,
                GaugeVec::new(
                    opts("relay_rtt_seconds", "Round-trip time of each relay link"),
                    &["peer"],
                ),
            )
            .expect("valid relay metric"),
            lost: cv(
                "relay_lost_packets_total",
                "Relay media packets lost for good, by peer node and direction",
                &["peer", "direction"],
            ),
            quic_lost: cv(
                "relay_quic_lost_packets_total",
                "QUIC packets lost on each relay link",
                &["peer"],
            ),
            udp_datagrams: cv(
                "relay_udp_datagrams_total",
                "UDP datagrams of each relay link (QUIC: media, control, acks), by peer node and direction",
                &["peer", "direction"],
            ),
            udp_bytes: cv(
                "relay_udp_bytes_total",
                "UDP payload bytes of each relay link (QUIC), by peer node and direction",
                &["peer", "direction"],
            ),
            repairs: cv(
                "relay_repairs_total",
                "Relay loss repair by peer node: nacked, resent, missed",
                &["peer", "kind"],
            ),
            refused_by: cv(
                "relay_refused_total",
                "Relay connections refused at accept, by reason",
                &["reason"],
            ),
            dial_failures: c("relay_dial_failures_total", "Relay dials that failed"),
            oversize: c(
                "relay_oversize_total",
                "Relay datagrams too large for the path, sent on a stream",
            ),
            dropped: cv(
                "relay_dropped_total",
                "Relay packets or messages dropped, by reason",
                &["reason"],
            ),
        };
        for reason in [
            "handshake",
            "hello",
            "version",
            "identity",
            "timeout",
            "busy",
        ] {
            m.refused_by.with_label_values(&[reason]);
        }
        for reason in [
            "malformed_datagram",
            "malformed_control",
            "media_queue_full",
            "event_queue_full",
            "inbound_queue_full",
            "send_failed",
            "unknown_peer",
        ] {
            m.dropped.with_label_values(&[reason]);
        }
        for side in ["origin", "subscriber"] {
            m.legs.with_label_values(&[side]);
        }
        m
    }

    /// Counts one drop.
    pub fn drop(&self, reason: &str) {
        self.dropped.with_label_values(&[reason]).inc();
    }

    /// Counts one refused connection.
    pub fn refused(&self, reason: &str) {
        self.refused_by.with_label_values(&[reason]).inc();
    }

    /// Sets a link's legs (`served` to the peer, `pulled` from it).
    pub fn set_link_legs(&self, peer: &str, served: usize, pulled: usize) {
        let g = |side: &str, n: usize| {
            self.link_legs
                .with_label_values(&[peer, side])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        g("origin", served);
        g("subscriber", pulled);
    }

    /// Adds a link's QUIC datagram counters between two samples
    /// (`[datagrams out, bytes out, datagrams in, bytes in]`).
    pub fn count_udp(&self, peer: &str, before: [u64; 4], now: [u64; 4]) {
        let series = [
            (&self.udp_datagrams, "out"),
            (&self.udp_bytes, "out"),
            (&self.udp_datagrams, "in"),
            (&self.udp_bytes, "in"),
        ];
        for ((v, direction), (a, b)) in series.into_iter().zip(before.into_iter().zip(now)) {
            v.with_label_values(&[peer, direction])
                .inc_by(b.saturating_sub(a));
        }
    }

    /// Adds what a link did between two samples of its counters. Every series of the link is
    /// exported from its first sample on (at 0 until something happens), so dashboards see it.
    pub fn count_link(&self, peer: &str, before: &LinkStats, now: &LinkStats) {
        let d = |a: u64, b: u64| b.saturating_sub(a);
        let add = |v: &IntCounterVec, labels: &[&str], n: u64| {
            v.with_label_values(labels).inc_by(n);
        };
        add(
            &self.packets,
            &[peer, "out"],
            d(before.datagrams_out, now.datagrams_out),
        );
        add(
            &self.packets,
            &[peer, "in"],
            d(before.datagrams_in, now.datagrams_in),
        );
        add(
            &self.bytes,
            &[peer, "out"],
            d(before.bytes_out, now.bytes_out),
        );
        add(&self.bytes, &[peer, "in"], d(before.bytes_in, now.bytes_in));
        add(&self.lost, &[peer, "in"], d(before.lost_in, now.lost_in));
        add(&self.lost, &[peer, "out"], d(before.lost_out, now.lost_out));
        add(
            &self.repairs,
            &[peer, "nacked"],
            d(before.nacked, now.nacked),
        );
        add(
            &self.repairs,
            &[peer, "resent"],
            d(before.resent, now.resent),
        );
        add(
            &self.repairs,
            &[peer, "missed"],
            d(before.resend_misses, now.resend_misses),
        );
        let stray = d(before.dropped_in, now.dropped_in);
        if stray > 0 {
            self.dropped
                .with_label_values(&["unknown_track"])
                .inc_by(stray);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn relay_series_are_exported_and_count_link_deltas() {
        let r = Registry::new();
        let m = RelayMetrics::new(&r);
        let before = LinkStats::default();
        let now = LinkStats {
            datagrams_out: 10,
            bytes_out: 1000,
            lost_in: 2,
            ..LinkStats::default()
        };
        m.count_link("sfu-b", &before, &now);
        m.count_link("sfu-b", &now, &now);
        m.set_link_legs("sfu-b", 3, 1);
        m.count_udp("sfu-b", [0; 4], [12, 1500, 4, 200]);
        m.count_udp("sfu-b", [12, 1500, 4, 200], [13, 1600, 4, 200]);
        let mut buf = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut buf)
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(
            text.contains("satsuma_sfu_relay_packets_total{direction=\"out\",peer=\"sfu-b\"} 10")
        );
        assert!(
            text.contains(
                "satsuma_sfu_relay_lost_packets_total{direction=\"in\",peer=\"sfu-b\"} 2"
            )
        );
        assert!(text.contains("satsuma_sfu_relay_refused_total{reason=\"handshake\"} 0"));
        assert!(text.contains("satsuma_sfu_relay_link_legs{peer=\"sfu-b\",side=\"origin\"} 3"));
        assert!(
            text.contains(
                "satsuma_sfu_relay_udp_bytes_total{direction=\"out\",peer=\"sfu-b\"} 1600"
            )
        );
        assert!(
            text.contains(
                "satsuma_sfu_relay_udp_datagrams_total{direction=\"in\",peer=\"sfu-b\"} 4"
            )
        );
        assert!(text.contains("satsuma_sfu_relay_links 0"));
        // A link's series exist from its first sample, at 0 until something happens.
        assert!(text.contains("satsuma_sfu_relay_repairs_total{kind=\"missed\",peer=\"sfu-b\"} 0"));
        assert!(
            text.contains(
                "satsuma_sfu_relay_lost_packets_total{direction=\"out\",peer=\"sfu-b\"} 0"
            )
        );
    }
}
