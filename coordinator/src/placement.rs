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
}
