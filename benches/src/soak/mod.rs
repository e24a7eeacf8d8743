//! `satsuma-load soak`: a long mixed load with churn against one real `satsuma-sfu`, sampled
//! periodically, with a pass/fail verdict on loss, memory growth and errors.
//!
//! - [`worker`]: the `soak-worker` process. It hosts whole rooms of meeting-style members (each
//!   member is two sessions: one publishing audio + simulcast video, one pulling every other
//!   member's tracks) built from the bot crate's [`satsuma_bot::Bot`], and runs the churn: every
//!   few seconds one member of one room leaves (closes its published tracks, deletes both its
//!   sessions; the others close their pulls of its tracks) and a new one joins (two new sessions;
//!   the others renegotiate to pull its tracks).
//! - [`controller`]: starts the SFU and the workers, samples `/proc`, `/metrics` and the workers
//!   every `--sample-secs`, tears everything down and prints the summary and the verdict.
//!
//! This module holds the JSON-lines protocol between the two and the pure pieces (drop-reason
//! classification, `/proc/net/udp` parsing, the verdict), unit-tested here.

pub mod controller;
pub mod worker;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::media::MediaProfile;
use crate::worker::Counters;

/// The SFU the soak workers talk to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoakTarget {
    /// SFU base URL.
    pub url: String,
    /// App id.
    pub app: String,
    /// App secret.
    pub secret: String,
}

/// One room a worker hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomPlan {
    /// Room name (also the prefix of its members' names).
    pub name: String,
    /// Members at any time (between churn steps).
    pub size: usize,
    /// First churn step, milliseconds after the start.
    pub churn_offset_ms: u64,
    /// Milliseconds between this room's churn steps (0: no churn).
    pub churn_period_ms: u64,
}

/// Controller → soak worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum SoakCommand {
    /// Build the rooms (first command); the churn starts when every room is up.
    Start {
        /// The SFU.
        target: SoakTarget,
        /// Media every publisher sends.
        media: MediaProfile,
        /// Rooms this worker hosts.
        rooms: Vec<RoomPlan>,
        /// Rooms built at once.
        concurrency: usize,
    },
    /// Report cumulative counters now.
    Sample,
    /// Stop the churn, let every member leave cleanly, report, exit.
    Stop,
}

/// Loss seen by one member (its subscriber session, over every track it pulled).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BotLoss {
    /// Member name.
    pub name: String,
    /// Packets missing in sequence.
    pub lost: u64,
    /// Payloads that failed verification.
    pub corrupt: u64,
    /// Payloads of another track.
    pub foreign: u64,
    /// RTP packets received.
    pub received: u64,
}

impl BotLoss {
    /// Any loss, corruption or misrouting.
    pub fn is_bad(&self) -> bool {
        self.lost + self.corrupt + self.foreign > 0
    }
}

/// Cumulative state of a soak worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerSample {
    /// Members in the rooms now.
    pub members: usize,
    /// Members that joined (initial ones included).
    pub joins: u64,
    /// Members that left.
    pub leaves: u64,
    /// Sessions created (`sessions/new`).
    pub sessions_created: u64,
    /// Sessions deleted (`DELETE /sessions/{id}`).
    pub sessions_deleted: u64,
    /// Tracks closed through `tracks/close` (pushed and pulled).
    pub tracks_closed: u64,
    /// Tracks pulled through `tracks/new` (remote).
    pub tracks_pulled: u64,
    /// `tracks/close` calls for a leaver's tracks that the SFU answered "already closed" (it
    /// ends subscriber legs when their publisher unpublishes): expected, not an error.
    pub pulls_already_closed: u64,
    /// Media counters of every member, live and gone (publishers' sent, subscribers' received).
    pub counters: Counters,
    /// Members (live and gone) with loss, corruption or misrouting.
    pub bad_bots: Vec<BotLoss>,
    /// Live members whose subscriber received nothing in the last sample period although it
    /// pulls tracks (stalled media).
    pub stalled: Vec<String>,
    /// Errors so far (API calls, connections, renegotiations).
    pub errors: u64,
    /// The first error messages (at most 20).
    pub error_messages: Vec<String>,
}

/// Soak worker → controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum SoakReply {
    /// Every room is built; the churn has started.
    Started(WorkerSample),
    /// Cumulative state.
    Sample(WorkerSample),
    /// Every member left; final state.
    Stopped(WorkerSample),
    /// Something failed.
    Error {
        /// What.
        message: String,
    },
}

/// How the soak treats an SFU drop reason (`satsuma_sfu_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropClass {
    /// Media from a live publisher for a live subscriber that the SFU discarded: loss.
    Loss,
    /// Selective forwarding by design (a layer nobody is on, waiting for a keyframe, older than
    /// the leg's start): not loss.
    ByDesign,
    /// Datagrams for sessions or tracks that are gone or not negotiated yet, stray STUN: expected
    /// around churn, not media of a live leg.
    Churn,
}

/// Classify a drop reason label. Unknown labels count as loss (a new reason must be looked at).
pub fn classify_drop(reason: &str) -> DropClass {
    match reason {
        "other_layer" | "awaiting_keyframe" | "too_old" => DropClass::ByDesign,
        "unknown_source"
        | "unknown_ufrag"
        | "malformed_stun"
        | "unexpected_stun"
        | "unknown_session"
        | "unclassified"
        | "not_accepted"
        | "unpublished_track"
        | "unpublished_mid"
        | "no_subscriber_session" => DropClass::Churn,
        // shard_queue_full, unknown_shard, rtc_input_error, no_send_stream, ingress_bitrate,
        // no_pt_mapping, send_failed and anything new.
        _ => DropClass::Loss,
    }
}

/// Prometheus text → `series → value` (comments skipped).
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((series, value)) = line.rsplit_once(' ')
            && let Ok(v) = value.parse::<f64>()
        {
            out.insert(series.to_owned(), v);
        }
    }
    out
}

/// Value of the label `label` in a series name such as `name{a="x",b="y"}`.
pub fn label_value<'a>(series: &'a str, label: &str) -> Option<&'a str> {
    let (_, labels) = series.split_once('{')?;
    let labels = labels.strip_suffix('}')?;
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == label).then(|| v.trim().trim_matches('"'))
    })
}

/// Series of metric `name` (exact name, with or without labels).
pub fn series_of<'a>(
    m: &'a BTreeMap<String, f64>,
    name: &'a str,
) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    m.iter()
        .filter(move |(k, _)| {
            k.as_str() == name || k.strip_prefix(name).is_some_and(|r| r.starts_with('{'))
        })
        .map(|(k, v)| (k.as_str(), *v))
}

/// `inode → drops` of the sockets in a `/proc/net/udp` (or `udp6`) table.
pub fn parse_proc_net_udp(text: &str) -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        if f.len() < 13 {
            continue;
        }
        if let (Ok(inode), Ok(drops)) = (f[9].parse::<u64>(), f[12].parse::<u64>()) {
            out.insert(inode, drops);
        }
    }
    out
}

/// Socket inodes a process holds (`/proc/<pid>/fd/* -> socket:[inode]`).
pub fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// Receive-buffer drops the kernel counted per UDP socket, accumulated over sockets that come and
/// go: each sample records every socket's counter (the highest seen), so a socket closed between
/// two samples keeps what the last sample saw.
#[derive(Debug, Clone, Default)]
pub struct SocketDrops {
    seen: BTreeMap<u64, u64>,
}

impl SocketDrops {
    /// Record the current counters of `pids`' UDP sockets given the `/proc/net/udp{,6}` tables.
    pub fn record(&mut self, table: &BTreeMap<u64, u64>, pids: &[u32]) {
        for &pid in pids {
            for inode in socket_inodes(pid) {
                if let Some(&d) = table.get(&inode) {
                    let e = self.seen.entry(inode).or_default();
                    *e = (*e).max(d);
                }
            }
        }
    }

    /// Drops over every socket seen.
    pub fn total(&self) -> u64 {
        self.seen.values().sum()
    }
}

/// Seconds the threads of `pid` have spent runnable but waiting for a CPU (second field of
/// `/proc/<pid>/task/*/schedstat`, summed over the live threads): how much the machine starved it.
pub fn runqueue_wait_s(pid: u32) -> f64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|ns| ns as f64 / 1e9)
        .sum()
}

/// Both `/proc/net/udp` tables of this network namespace.
pub fn udp_tables() -> BTreeMap<u64, u64> {
    let mut t = BTreeMap::new();
    for path in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            t.extend(parse_proc_net_udp(&text));
        }
    }
    t
}

/// Inputs of the verdict.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerdictInputs {
    /// SFU drops classified [`DropClass::Loss`].
    pub sfu_loss_drops: u64,
    /// Kernel receive-buffer drops on the SFU's own UDP socket(s).
    pub sfu_socket_drops: u64,
    /// Packets the bots found missing in sequence.
    pub bot_lost: u64,
    /// Payloads that failed verification.
    pub bot_corrupt: u64,
    /// Payloads on the wrong track.
    pub bot_foreign: u64,
    /// Kernel receive-buffer drops on the bots' UDP sockets.
    pub bot_socket_drops: u64,
    /// RSS growth between the baseline sample and the end, percent.
    pub rss_growth_pct: f64,
    /// Whether the RSS criterion is enforced (run long enough).
    pub rss_enforced: bool,
    /// Errors of every kind.
    pub errors: u64,
}

/// The verdict: SFU-caused loss and the failures, each with a reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Packets attributed to the SFU (see [`verdict`]).
    pub sfu_caused_loss: u64,
    /// Bot-observed loss explained by the bots' own sockets overflowing (harness, not SFU).
    pub harness_loss: u64,
    /// Why the run failed (empty: passed).
    pub failures: Vec<String>,
}

/// SFU-caused loss = SFU drops of live media (loss-class reasons) + kernel drops at the SFU's
/// socket + corrupt + foreign payloads + the part of the bots' sequence gaps that the kernel drops
/// at the bots' own sockets do not explain. Bot-socket drops are the receiving bot not reading in
/// time (harness overload), so they are reported as harness loss, not SFU loss.
pub fn verdict(v: &VerdictInputs) -> Verdict {
    let unexplained = v.bot_lost.saturating_sub(v.bot_socket_drops);
    let harness_loss = v.bot_lost - unexplained;
    let sfu_caused_loss =
        v.sfu_loss_drops + v.sfu_socket_drops + v.bot_corrupt + v.bot_foreign + unexplained;
    let mut failures = Vec::new();
    if sfu_caused_loss > 0 {
        failures.push(format!(
            "SFU-caused loss {sfu_caused_loss} (SFU loss drops {}, SFU socket drops {}, bot gaps \
             not explained by bot socket drops {unexplained}, corrupt {}, foreign {})",
            v.sfu_loss_drops, v.sfu_socket_drops, v.bot_corrupt, v.bot_foreign
        ));
    }
    if v.rss_enforced && v.rss_growth_pct >= 5.0 {
        failures.push(format!(
            "SFU RSS grew {:.2} % (limit: < 5 %)",
            v.rss_growth_pct
        ));
    }
    if v.errors > 0 {
        failures.push(format!("{} errors", v.errors));
    }
    Verdict {
        sfu_caused_loss,
        harness_loss,
        failures,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn drop_reasons_are_classified() {
        assert_eq!(classify_drop("awaiting_keyframe"), DropClass::ByDesign);
        assert_eq!(classify_drop("other_layer"), DropClass::ByDesign);
        assert_eq!(classify_drop("unknown_source"), DropClass::Churn);
        assert_eq!(classify_drop("no_subscriber_session"), DropClass::Churn);
        assert_eq!(classify_drop("send_failed"), DropClass::Loss);
        assert_eq!(classify_drop("shard_queue_full"), DropClass::Loss);
        assert_eq!(classify_drop("something_new"), DropClass::Loss);
    }

    #[test]
    fn metrics_text_and_labels() {
        let m = parse_metrics(
            "# HELP x\nsatsuma_sfu_dropped_total{reason=\"send_failed\"} 3\n\
             satsuma_sfu_dropped_total{reason=\"too_old\"} 7\nsatsuma_sfu_sessions 4\n\
             satsuma_sfu_dropped_totalx 1\n",
        );
        let drops: Vec<_> = series_of(&m, "satsuma_sfu_dropped_total")
            .map(|(s, v)| (label_value(s, "reason").unwrap().to_owned(), v))
            .collect();
        assert_eq!(
            drops,
            vec![("send_failed".to_owned(), 3.0), ("too_old".to_owned(), 7.0)]
        );
        assert_eq!(m["satsuma_sfu_sessions"], 4.0);
        assert_eq!(
            label_value("a{route=\"x\",status=\"404\"}", "status"),
            Some("404")
        );
        assert_eq!(label_value("a", "status"), None);
    }

    #[test]
    fn reads_own_runqueue_wait() {
        let w = runqueue_wait_s(std::process::id());
        assert!(w >= 0.0 && w.is_finite());
        assert_eq!(runqueue_wait_s(u32::MAX), 0.0);
    }

    #[test]
    fn proc_net_udp_drops() {
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  3936: 0100007F:D786 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 823213 2 000000001d1fe594 0\n\
  3937: 0100007F:D787 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 823214 2 000000001d1fe595 17\n";
        let t = parse_proc_net_udp(text);
        assert_eq!(t.get(&823213), Some(&0));
        assert_eq!(t.get(&823214), Some(&17));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn socket_drops_keep_the_highest_per_socket() {
        let me = std::process::id();
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let inodes = socket_inodes(me);
        assert!(
            !inodes.is_empty(),
            "own UDP socket visible in /proc/self/fd"
        );
        let mut d = SocketDrops::default();
        let mut table: BTreeMap<u64, u64> = inodes.iter().map(|&i| (i, 5)).collect();
        d.record(&table, &[me]);
        let n = inodes.len() as u64;
        assert_eq!(d.total(), 5 * n);
        table.values_mut().for_each(|v| *v = 2);
        d.record(&table, &[me]);
        assert_eq!(
            d.total(),
            5 * n,
            "a lower reading does not reduce the total"
        );
        drop(sock);
    }

    #[test]
    fn verdict_attributes_loss() {
        let clean = VerdictInputs {
            rss_growth_pct: 1.0,
            rss_enforced: true,
            ..VerdictInputs::default()
        };
        assert!(verdict(&clean).failures.is_empty());

        // Gaps fully explained by the bots' own socket drops: harness loss, not SFU loss.
        let harness = VerdictInputs {
            bot_lost: 10,
            bot_socket_drops: 12,
            ..clean.clone()
        };
        let v = verdict(&harness);
        assert_eq!((v.sfu_caused_loss, v.harness_loss), (0, 10));
        assert!(v.failures.is_empty());

        let sfu = VerdictInputs {
            bot_lost: 10,
            bot_socket_drops: 4,
            sfu_loss_drops: 1,
            ..clean.clone()
        };
        let v = verdict(&sfu);
        assert_eq!((v.sfu_caused_loss, v.harness_loss), (7, 4));
        assert_eq!(v.failures.len(), 1);

        let rss = VerdictInputs {
            rss_growth_pct: 5.0,
            ..clean.clone()
        };
        assert_eq!(verdict(&rss).failures.len(), 1);
        let smoke = VerdictInputs {
            rss_enforced: false,
            ..rss
        };
        assert!(verdict(&smoke).failures.is_empty(), "not enforced");
        let errs = VerdictInputs { errors: 1, ..clean };
        assert_eq!(verdict(&errs).failures.len(), 1);
    }
}
