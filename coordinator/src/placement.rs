//! SFU placement from any replica (issue 16).
//!
//! Each replica checks the SFU nodes' health itself and places a room's sessions on a healthy
//! node with the fewest rooms ([`crate::sfu_proxy`]). With several replicas each would see only
//! its own rooms and its own probes, so every replica also publishes its view in the room store
//! ([`RoomStore::report_sfu_nodes`]: per node, healthy or not and how many of its rooms use it;
//! with etcd under its lease, so a dead replica's view goes with it) and reads the other
//! replicas' ([`RoomStore::sfu_nodes`]) once a [`PERIOD`]. Placement then counts the rooms of
//! every replica, and takes a node as healthy if this replica's check passed or another live
//! replica's did (a replica that cannot reach a node, or has not checked it yet, still places
//! rooms where the others can).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::server::App;
use crate::store::{RoomStore, SfuNodeReport};

/// How often a replica publishes its view and reads the others'.
pub(crate) const PERIOD: Duration = Duration::from_secs(1);

/// What the other replicas say about one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Others {
    /// Some other live replica's health check of it passed.
    pub(crate) healthy: bool,
    /// Rooms the other replicas placed on it.
    pub(crate) rooms: usize,
}

/// The other replicas' view of the configured nodes, by node index (empty: nothing known).
#[derive(Debug, Default)]
pub(crate) struct ClusterView {
    nodes: Mutex<Vec<Others>>,
}

impl ClusterView {
    /// What the others say about node `i` (nothing known: unhealthy, no rooms).
    pub(crate) fn others(&self, i: usize) -> Others {
        self.nodes.lock().get(i).copied().unwrap_or_default()
    }

    fn set(&self, view: Vec<Others>) {
        *self.nodes.lock() = view;
    }
}

/// Merges the other replicas' reports onto the configured nodes (matched by URL, ignoring a
/// trailing `/`); reports of nodes this replica does not know are ignored.
pub(crate) fn merge(urls: &[&str], reports: &[(String, Vec<SfuNodeReport>)]) -> Vec<Others> {
    let norm = |u: &str| u.trim_end_matches('/').to_owned();
    urls.iter()
        .map(|url| {
            let url = norm(url);
            let mut o = Others::default();
            for r in reports.iter().flat_map(|(_, nodes)| nodes) {
                if norm(&r.url) == url {
                    o.healthy |= r.healthy;
                    o.rooms = o
                        .rooms
                        .saturating_add(usize::try_from(r.rooms).unwrap_or(usize::MAX));
                }
            }
            o
        })
        .collect()
}

/// This replica's view: per configured node, its health check and its rooms on it.
fn local_reports(app: &App) -> Vec<SfuNodeReport> {
    app.sfu
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| SfuNodeReport {
            url: n.url.clone(),
            healthy: n.healthy.load(std::sync::atomic::Ordering::Relaxed),
            rooms: u64::try_from(app.hub.rooms_on_node(i)).unwrap_or(u64::MAX),
        })
        .collect()
}

/// One exchange: publish this replica's view, read the others'.
async fn exchange(app: &Arc<App>) {
    let reports = local_reports(app);
    let store: Arc<dyn RoomStore> = app.hub.store().clone();
    let got = tokio::task::spawn_blocking(move || {
        store.report_sfu_nodes(&reports)?;
        store.sfu_nodes()
    })
    .await;
    match got {
        Ok(Ok(others)) => {
            let urls: Vec<&str> = app.sfu.nodes.iter().map(|n| n.url.as_str()).collect();
            app.sfu.cluster.set(merge(&urls, &others));
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "SFU placement view not exchanged"),
        Err(e) => tracing::debug!(error = %e, "SFU placement exchange failed"),
    }
}

/// Publishes and reads the placement view every [`PERIOD`] (only with a durable store and SFU
/// nodes).
pub(crate) async fn placement_loop(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    loop {
        exchange(&app).await;
        tokio::select! {
            _ = tokio::time::sleep(PERIOD) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One configured SFU node: `URL[;capacity=N][;cpu=SHARE][;region=LABEL][;name=NODE]` (the
/// `sfu_node` setting). `capacity` is the most sessions the coordinator places on it (none: no
/// limit); `cpu` the share of its cores (0 < SHARE ≤ 1, e.g. 0.8) at or above which it takes no
/// new sessions either (measured between health checks, see [`CpuMeter`]; none: no limit);
/// `region` its region label; `name` its relay node name (`satsuma-sfu --node-name`; only for a
/// node that runs the relay, whose session ids carry its tag), from which
/// the coordinator knows which node made a session (a session id's first two bytes are the tag
/// of its node's name, see `sfu/src/relay/bridge.rs`), so calls on a session go to its node even
/// in a room this replica rebuilt from the store.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NodeSpec {
    pub(crate) url: String,
    pub(crate) capacity: Option<usize>,
    pub(crate) region: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) cpu: Option<f64>,
}

impl std::str::FromStr for NodeSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(';').map(str::trim);
        let url = parts.next().unwrap_or_default().trim_end_matches('/');
        let host = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .unwrap_or_default();
        if host.is_empty() {
            return Err(format!(
                "SFU node {s:?}: expected http(s)://HOST[:PORT] followed by optional \
                 ;capacity=N ;cpu=SHARE ;region=LABEL ;name=NODE"
            ));
        }
        let mut spec = NodeSpec {
            url: url.to_owned(),
            capacity: None,
            region: None,
            name: None,
            cpu: None,
        };
        for part in parts.filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| format!("SFU node {s:?}: {part:?} is not KEY=VALUE"))?;
            let label = |v: &str| {
                let ok = !v.is_empty()
                    && v.len() <= 63
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
                ok.then(|| v.to_owned())
                    .ok_or_else(|| format!("SFU node {s:?}: {key} must be 1-63 of [A-Za-z0-9._-]"))
            };
            match key {
                "capacity" => {
                    let n = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("SFU node {s:?}: capacity must be a number > 0"))?;
                    spec.capacity = Some(n);
                }
                "cpu" => {
                    let share = value
                        .parse::<f64>()
                        .ok()
                        .filter(|c| *c > 0.0 && *c <= 1.0)
                        .ok_or_else(|| {
                            format!("SFU node {s:?}: cpu must be a share of its cores in (0, 1]")
                        })?;
                    spec.cpu = Some(share);
                }
                "region" => spec.region = Some(label(value)?),
                "name" => spec.name = Some(label(value)?),
                _ => {
                    return Err(format!(
                        "SFU node {s:?}: unknown key {key:?} (capacity, cpu, region, name)"
                    ));
                }
            }
        }
        Ok(spec)
    }
}

/// The tag a node named `name` puts at the start of its session ids (the first two bytes of the
/// SHA-256 of the name, as `satsuma_sfu::relay::bridge::node_tag`).
pub(crate) fn node_tag(name: &str) -> [u8; 2] {
    use sha2::Digest;
    let h = sha2::Sha256::digest(name.as_bytes());
    [h[0], h[1]]
}

/// The tag of a session id (32 hex characters), or `None` if it is not one.
pub(crate) fn session_tag(session_id: &str) -> Option<[u8; 2]> {
    if session_id.len() != 32 {
        return None;
    }
    let bytes = hex::decode(session_id.get(..4)?).ok()?;
    Some([*bytes.first()?, *bytes.get(1)?])
}

/// A node's CPU share from its `/healthz` answers: each carries the process's CPU seconds so
/// far (`satsuma-cpu-seconds`) and its cores (`satsuma-cpu-cores`); the share is the CPU used
/// between two answers ÷ (the time between them × cores). Sans-IO: times are given.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct CpuMeter {
    last: Option<(std::time::Instant, f64)>,
    share: Option<f64>,
}

/// Readings closer together than this are not divided (too coarse: /proc counts 10 ms ticks).
const CPU_MIN_INTERVAL: Duration = Duration::from_millis(500);
/// A share older than this (no reading since) is not used: the node is judged by sessions only.
const CPU_MAX_AGE: Duration = Duration::from_secs(60);

impl CpuMeter {
    /// Header names of the SFU's `/healthz` (`satsuma_sfu::api::routes`).
    pub(crate) const SECONDS_HEADER: &'static str = "satsuma-cpu-seconds";
    pub(crate) const CORES_HEADER: &'static str = "satsuma-cpu-cores";

    /// A health answer at `now` with these header values (absent or malformed: no reading; a
    /// counter that went back, e.g. a restarted node, starts over).
    pub(crate) fn reading(
        &mut self,
        now: std::time::Instant,
        seconds: Option<&str>,
        cores: Option<&str>,
    ) {
        let seconds = seconds
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0);
        let cores = cores
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|c| *c > 0);
        let (Some(seconds), Some(cores)) = (seconds, cores) else {
            return;
        };
        match self.last {
            Some((at, before)) if seconds >= before => {
                let wall = now.saturating_duration_since(at);
                if wall < CPU_MIN_INTERVAL {
                    return;
                }
                self.share = Some((seconds - before) / (wall.as_secs_f64() * f64::from(cores)));
            }
            _ => self.share = None,
        }
        self.last = Some((now, seconds));
    }

    /// The share of its cores the node used between its last two readings (none yet, or the
    /// last reading older than a minute).
    pub(crate) fn share(&self, now: std::time::Instant) -> Option<f64> {
        let (at, _) = self.last?;
        (now.saturating_duration_since(at) <= CPU_MAX_AGE)
            .then_some(self.share)
            .flatten()
    }
}

/// What placement knows about one node when a session is to be made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct NodeLoad<'a> {
    /// This replica's or another live replica's health check passed.
    pub(crate) healthy: bool,
    /// Sessions placed on it (made, or being made).
    pub(crate) sessions: usize,
    /// Rooms that started on it.
    pub(crate) rooms: usize,
    /// Most sessions (none: no limit).
    pub(crate) capacity: Option<usize>,
    pub(crate) region: Option<&'a str>,
    /// The share of its cores it used lately ([`CpuMeter`]; none: not known).
    pub(crate) cpu: Option<f64>,
    /// At or above this CPU share it is full (none: no limit).
    pub(crate) cpu_capacity: Option<f64>,
}

impl NodeLoad<'_> {
    fn has_room(&self) -> bool {
        let cpu_full = matches!((self.cpu, self.cpu_capacity), (Some(c), Some(max)) if c >= max);
        self.capacity.is_none_or(|c| self.sessions < c) && !cpu_full
    }
}

/// Where a new session goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// On this node.
    Node(usize),
    /// Every healthy node is at its capacity.
    Full,
    /// No node configured.
    NoNode,
}

/// Places one new session of a room (issue 15, "Placement in the coordinator").
///
/// * A node is a candidate if it is healthy and below its capacity: fewer sessions than its
///   `capacity` and, with a `cpu` limit, a CPU share below it.
/// * The room's node (`room_node`, where its first session went) if it is a candidate.
/// * Otherwise the least-loaded candidate, preferring the participant's region (`hint`), then
///   the region of the room's node, then any region. A room's first session goes to the
///   candidate with the fewest rooms (rooms spread over nodes); a session that overflows its
///   room's node to the one with the fewest sessions. Ties: the first configured.
/// * No candidate but a healthy node: [`Placement::Full`]. Nothing known healthy (no check
///   has passed yet): the room's node, else the first node below capacity, as before health
///   checks existed.
pub(crate) fn place(
    nodes: &[NodeLoad<'_>],
    room_node: Option<usize>,
    hint: Option<&str>,
) -> Placement {
    if nodes.is_empty() {
        return Placement::NoNode;
    }
    let room_node = room_node.filter(|&i| i < nodes.len());
    let candidate = |i: &usize| nodes[*i].healthy && nodes[*i].has_room();
    if let Some(i) = room_node.filter(candidate) {
        return Placement::Node(i);
    }
    let room_region = room_node.and_then(|i| nodes[i].region);
    let tiers = [hint, room_region];
    let pick = |in_tier: &dyn Fn(usize) -> bool| {
        (0..nodes.len())
            .filter(candidate)
            .filter(|&i| in_tier(i))
            .min_by_key(|&i| {
                let n = &nodes[i];
                if room_node.is_some() {
                    (n.sessions, n.rooms)
                } else {
                    (n.rooms, n.sessions)
                }
            })
    };
    for region in tiers.into_iter().flatten() {
        if let Some(i) = pick(&|i| nodes[i].region == Some(region)) {
            return Placement::Node(i);
        }
    }
    if let Some(i) = pick(&|_| true) {
        return Placement::Node(i);
    }
    if nodes.iter().any(|n| n.healthy) {
        return Placement::Full;
    }
    match room_node.or_else(|| (0..nodes.len()).find(|&i| nodes[i].has_room())) {
        Some(i) => Placement::Node(i),
        None => Placement::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(url: &str, healthy: bool, rooms: u64) -> SfuNodeReport {
        SfuNodeReport {
            url: url.to_owned(),
            healthy,
            rooms,
        }
    }

    #[test]
    fn the_others_views_add_up_per_node() {
        let urls = ["http://n1:8080", "http://n2:8080/", "http://n3"];
        let reports = vec![
            (
                "b".to_owned(),
                vec![
                    report("http://n1:8080/", true, 2),
                    report("http://n2:8080", false, 1),
                    report("http://elsewhere", true, 9),
                ],
            ),
            (
                "c".to_owned(),
                vec![
                    report("http://n1:8080", false, 3),
                    report("http://n2:8080", false, 0),
                ],
            ),
        ];
        let view = merge(&urls, &reports);
        assert_eq!(
            view,
            vec![
                Others {
                    healthy: true,
                    rooms: 5
                },
                Others {
                    healthy: false,
                    rooms: 1
                },
                Others::default(),
            ]
        );
        let cluster = ClusterView::default();
        assert_eq!(cluster.others(0), Others::default());
        cluster.set(view);
        assert_eq!(cluster.others(0).rooms, 5);
        assert_eq!(cluster.others(7), Others::default());
    }

    fn load(healthy: bool, sessions: usize, capacity: Option<usize>, region: &str) -> NodeLoad<'_> {
        NodeLoad {
            healthy,
            sessions,
            rooms: 0,
            capacity,
            region: (!region.is_empty()).then_some(region),
            cpu: None,
            cpu_capacity: None,
        }
    }

    #[test]
    fn node_specs_parse_with_capacity_region_and_name() {
        let s: NodeSpec = "http://10.0.0.5:8787/".parse().unwrap();
        assert_eq!(
            s,
            NodeSpec {
                url: "http://10.0.0.5:8787".into(),
                capacity: None,
                region: None,
                name: None,
                cpu: None,
            }
        );
        let s: NodeSpec = "https://sfu-1:8787; capacity=4 ;region=eu-west;name=sfu-1"
            .parse()
            .unwrap();
        assert_eq!(s.url, "https://sfu-1:8787");
        assert_eq!(s.capacity, Some(4));
        assert_eq!(s.region.as_deref(), Some("eu-west"));
        assert_eq!(s.name.as_deref(), Some("sfu-1"));
        assert_eq!(s.cpu, None);
        let s: NodeSpec = "http://a;cpu=0.75;capacity=9".parse().unwrap();
        assert_eq!((s.cpu, s.capacity), (Some(0.75), Some(9)));
        for bad in [
            "",
            "sfu-1:8787",
            "http://",
            "http://a;capacity=0",
            "http://a;capacity=-1",
            "http://a;capacity",
            "http://a;colour=red",
            "http://a;region=",
            "http://a;region=eu west",
            "http://a;name=a/b",
            "http://a;cpu=0",
            "http://a;cpu=1.5",
            "http://a;cpu=NaN",
            "http://a;cpu=most",
        ] {
            assert!(bad.parse::<NodeSpec>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn session_ids_name_their_node_by_tag() {
        let tag = node_tag("sfu-a");
        assert_ne!(tag, node_tag("sfu-b"));
        // The SFU's own tag of the name.
        assert_eq!(tag, satsuma_sfu::relay::bridge::node_tag("sfu-a"));
        let sid = format!("{}{}", hex::encode(tag), "0".repeat(28));
        assert_eq!(session_tag(&sid), Some(tag));
        assert_eq!(session_tag("abcd"), None);
        assert_eq!(session_tag(&"z".repeat(32)), None);
        assert_eq!(session_tag(&format!("é{}", "0".repeat(30))), None);
    }

    #[test]
    fn a_room_stays_on_its_node_until_it_is_full() {
        let mut nodes = [load(true, 0, Some(2), ""), load(true, 0, Some(2), "")];
        assert_eq!(place(&nodes, None, None), Placement::Node(0));
        nodes[0].sessions = 1;
        assert_eq!(place(&nodes, Some(0), None), Placement::Node(0));
        nodes[0].sessions = 2;
        assert_eq!(place(&nodes, Some(0), None), Placement::Node(1));
        nodes[1].sessions = 2;
        assert_eq!(place(&nodes, Some(0), None), Placement::Full);
        // No capacity: the room's node, however many.
        let nodes = [load(true, 0, None, ""), load(true, 90, None, "")];
        assert_eq!(place(&nodes, Some(1), None), Placement::Node(1));
    }

    #[test]
    fn overflow_goes_to_the_least_loaded_node_in_the_region() {
        let nodes = [
            load(true, 4, Some(4), "eu"),
            load(true, 3, Some(4), "us"),
            load(true, 2, Some(4), "eu"),
            load(true, 1, Some(4), "us"),
            load(true, 0, Some(4), "ap"),
        ];
        // The room's region first, least sessions in it.
        assert_eq!(place(&nodes, Some(0), None), Placement::Node(2));
        // The participant's hint before the room's region.
        assert_eq!(place(&nodes, Some(0), Some("us")), Placement::Node(3));
        // A hint no node has: the room's region.
        assert_eq!(place(&nodes, Some(0), Some("sa")), Placement::Node(2));
        // The region full: least loaded anywhere.
        let mut full = nodes;
        full[2].sessions = 4;
        assert_eq!(place(&full, Some(0), None), Placement::Node(4));
        // Ties: the first configured.
        let even = [
            load(true, 4, Some(4), ""),
            load(true, 1, None, ""),
            load(true, 1, None, ""),
        ];
        assert_eq!(place(&even, Some(0), None), Placement::Node(1));
    }

    #[test]
    fn a_new_room_goes_to_the_hinted_region_with_fewest_rooms() {
        let mut nodes = [
            load(true, 0, None, "eu"),
            load(true, 9, None, "us"),
            load(true, 0, None, "us"),
        ];
        nodes[0].rooms = 0;
        nodes[1].rooms = 1;
        nodes[2].rooms = 3;
        assert_eq!(place(&nodes, None, None), Placement::Node(0));
        assert_eq!(place(&nodes, None, Some("us")), Placement::Node(1));
    }

    #[test]
    fn a_node_at_its_cpu_share_counts_as_full() {
        let mut nodes = [load(true, 1, Some(10), "eu"), load(true, 5, None, "eu")];
        nodes[0].cpu_capacity = Some(0.8);
        nodes[0].cpu = Some(0.5);
        assert_eq!(place(&nodes, Some(0), None), Placement::Node(0));
        // At the share: the room overflows as when its sessions reach capacity.
        nodes[0].cpu = Some(0.8);
        assert_eq!(place(&nodes, Some(0), None), Placement::Node(1));
        nodes[0].cpu = Some(0.95);
        assert_eq!(place(&nodes, None, None), Placement::Node(1));
        // Both full (the other by CPU too): 503.
        nodes[1].cpu_capacity = Some(0.5);
        nodes[1].cpu = Some(0.6);
        assert_eq!(place(&nodes, Some(0), None), Placement::Full);
        // CPU not known (no reading yet): judged by sessions only.
        nodes[0].cpu = None;
        assert_eq!(place(&nodes, Some(0), None), Placement::Node(0));
        // A CPU reading without a configured share changes nothing.
        let nodes = [load(true, 0, None, ""), load(true, 0, None, "")];
        let busy = [
            NodeLoad {
                cpu: Some(1.0),
                ..nodes[0]
            },
            nodes[1],
        ];
        assert_eq!(place(&busy, Some(0), None), Placement::Node(0));
    }

    #[test]
    fn the_cpu_meter_divides_cpu_time_by_wall_time_and_cores() {
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut m = CpuMeter::default();
        assert_eq!(m.share(t0), None);
        m.reading(at(0), Some("10.00"), Some("2"));
        assert_eq!(m.share(at(0)), None, "one reading is no share");
        // 3 CPU seconds in 5 s on 2 cores: 30 %.
        m.reading(at(5_000), Some("13.00"), Some("2"));
        assert!((m.share(at(5_000)).unwrap() - 0.3).abs() < 1e-9);
        // Too soon after the last: ignored (the share stays).
        m.reading(at(5_100), Some("13.09"), Some("2"));
        assert!((m.share(at(5_100)).unwrap() - 0.3).abs() < 1e-9);
        // Fully busy.
        m.reading(at(10_000), Some("23.00"), Some("2"));
        assert!((m.share(at(10_000)).unwrap() - 1.0).abs() < 1e-9);
        // Missing or hostile headers: no reading, nothing changes.
        for (s, c) in [
            (None, Some("2")),
            (Some("12"), None),
            (Some("x"), Some("2")),
            (Some("-1"), Some("2")),
            (Some("inf"), Some("2")),
            (Some("30"), Some("0")),
            (Some("30"), Some("-2")),
        ] {
            m.reading(at(15_000), s, c);
            assert!(
                (m.share(at(15_000)).unwrap() - 1.0).abs() < 1e-9,
                "{s:?} {c:?}"
            );
        }
        // The counter went back (the node restarted): starts over.
        m.reading(at(20_000), Some("1.00"), Some("2"));
        assert_eq!(m.share(at(20_000)), None);
        m.reading(at(21_000), Some("1.50"), Some("2"));
        assert!((m.share(at(21_000)).unwrap() - 0.25).abs() < 1e-9);
        // No reading for over a minute: no longer used.
        assert_eq!(m.share(at(21_000 + 61_000)), None);
    }

    #[test]
    fn unhealthy_nodes_are_skipped_and_nothing_healthy_keeps_the_old_fallback() {
        let mut nodes = [
            load(false, 0, Some(4), "eu"),
            load(true, 3, Some(4), "eu"),
            load(true, 0, Some(4), "us"),
        ];
        // The room's node is down: the next in its region.
        assert_eq!(place(&nodes, Some(0), None), Placement::Node(1));
        nodes[1].healthy = false;
        assert_eq!(place(&nodes, Some(0), None), Placement::Node(2));
        // Nothing known healthy: the room's node, else the first with room.
        nodes[2].healthy = false;
        assert_eq!(place(&nodes, Some(1), None), Placement::Node(1));
        nodes[0].sessions = 4;
        assert_eq!(place(&nodes, None, None), Placement::Node(1));
        // Index out of range is ignored; no nodes at all.
        assert_eq!(place(&nodes, Some(7), None), Placement::Node(1));
        assert_eq!(place(&[], None, None), Placement::NoNode);
    }
}
