//! Issue 15, draining and node failure: two `satsuma-sfu` nodes joined by the QUIC relay and a
//! `satsuma-coordinator` configured with both (`sfu-b` first with capacity 2, so the room
//! starts there and its third and fourth participants overflow to `sfu-a`). Four native
//! participants, each an MLS member (`RoomMember`, the shipping E2EE core) with a media bot
//! acting for it through the coordinator's `/sfu` proxy: it publishes audio and video sealed
//! with the member's keys, announces them (`publish`), and pulls every other participant's
//! tracks from the session the room's log names (pulling again when a publisher's tracks move
//! to another session), opening them with the sender's keys.
//!
//! Each participant runs the client side of a move, make before break: on the coordinator's
//! `move` for its session it makes a new session through the proxy (placed on a live node),
//! publishes the same tracks there and announces them (`unpublish` + `publish`; the others pull
//! from the new session while the old one still sends), pulls on the new session what it pulls
//! and waits until it receives everyone there (not when the node is down: nothing to keep),
//! and only then uses the new session; it shuts the old bot and deletes the old session
//! [`OLD_SESSION_GRACE`] later. Its MLS member is never touched.
//!
//! - `drain_moves_participants_and_the_node_exits_0`: `satsuma-sfu drain` on `sfu-b` during the
//!   call: its two participants move to `sfu-a`; every receiver's longest gap in packets from
//!   every sender is ≤ 2 s; nothing corrupt; no MLS rejoin (same participant ids, same epoch and
//!   safety number, no reset); `sfu-b` exits 0; the coordinator counts 2 sessions moved.
//! - `killed_node_participants_are_back_within_5_s`: `kill -9` of `sfu-b`: the coordinator
//!   notices, its participants move, and everyone receives everyone again within 5 s of the
//!   kill (longest gap ≤ 5 s), with no MLS rejoin.
//!
//! The two tests run one after the other (a lock): each starts three processes and four bots.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{Coordinator, Nodes, sfu_binary};
use satsuma_bot::harness::{APP_ID, APP_SECRET, SfuProcess, fetch_metrics};
use satsuma_bot::room::{MemberView, RoomMember};
use satsuma_bot::{AudioSettings, Bot, BotConfig, ParticipantConfig, TrackSpec, VideoSettings};
use satsuma_coordinator::auth::{TokenKeys, unix_now};
use satsuma_wire::room::{ClientMessage, TrackKind};

/// `sfu-b` is configured first: the room starts there.
const NODES: [&str; 2] = ["sfu-b", "sfu-a"];
const B: usize = 0;
const A: usize = 1;
const PEERS: usize = 4;
/// Generous waits for steps that normally take well under a second (a loaded machine).
const PATIENCE: Duration = Duration::from_secs(30);
const TRACKS: [(&str, TrackKind); 2] = [("mic", TrackKind::Audio), ("cam", TrackKind::Video)];

/// The sampler's interval (audio sends every 20 ms, so ~30-40 ms is a gap-free call's figure).
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// How long a moving participant's new session may take to receive everyone before it takes
/// over anyway.
const MAKE_BEFORE_BREAK: Duration = Duration::from_secs(3);
/// How long a moved participant keeps its old session after announcing the new one.
const OLD_SESSION_GRACE: Duration = Duration::from_secs(1);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The node (index into [`NODES`]) whose tag starts session id `sid`.
fn node_of(sid: &str) -> usize {
    cluster::node_of(&NODES, sid)
}

/// Media light enough for four bots on a loaded 2-core machine: Opus-like audio at 50
/// packets/s, VP8-like video at 15 fps, one packet per frame (each frame sealed whole).
fn media() -> ParticipantConfig {
    ParticipantConfig {
        audio: AudioSettings::default(),
        video: VideoSettings {
            fps: 15,
            delta_packets: 1,
            keyframe_packets: 1,
            payload_len: 400,
            keyframe_interval: Some(Duration::from_secs(2)),
        },
        ..ParticipantConfig::default()
    }
}

/// One participant: its MLS member and the media bot acting for it now.
struct Peer {
    name: String,
    id: u64,
    member: RoomMember,
    bot: Mutex<Arc<Bot>>,
    /// Every session it ever had (its receivers count packets from any of them).
    sessions: Mutex<Vec<String>>,
    /// Per publisher: the session its tracks are pulled from and their mids, in the current bot.
    pulls: Mutex<BTreeMap<u64, (String, Vec<String>)>>,
    /// `move` orders handled.
    handled: Mutex<usize>,
    /// Moves made: (order received, new session publishing and announced).
    moves: Mutex<Vec<(Instant, Instant)>>,
}

impl Peer {
    fn bot(&self) -> Arc<Bot> {
        self.bot.lock().unwrap().clone()
    }
}

/// Everything the test runs.
struct Cluster {
    _dir: PathBuf,
    sfus: Vec<SfuProcess>,
    coordinator: Coordinator,
    peers: Vec<Arc<Peer>>,
    http: reqwest::Client,
}

impl Cluster {
    async fn start(label: &str) -> Cluster {
        let files = format!("sfu-drain-{label}");
        let Nodes { dir, sfus } = Nodes::start(&files, &NODES, &["--drain-timeout", "20"]);
        // sfu-b holds 2 sessions; sfu-a room for everyone plus the moves.
        let capacity = [2, 8];
        let specs: Vec<String> = sfus
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!(
                    "{};capacity={};name={}",
                    s.base_url(),
                    capacity[i],
                    NODES[i]
                )
            })
            .collect();
        let coordinator = Coordinator::start(&files, &specs, &["--sfu-health-interval-ms", "1000"]);
        // Let the first health check pass so placement knows both nodes.
        tokio::time::sleep(Duration::from_millis(1500)).await;

        let keys = TokenKeys::new(satsuma_coordinator::Config::dev().jwt_secret.as_bytes(), 5);
        let room = format!("drain-{label}");
        let mut peers = Vec::new();
        for i in 0..PEERS {
            let name = format!("peer-{i}");
            let mut claims = common::claims(&room, &name, &["publish", "subscribe"]);
            claims.exp = unix_now() + 600;
            let url = format!("ws://{}/ws/{room}", coordinator.addr);
            let member = RoomMember::join(&url, &keys.mint(&claims).unwrap(), &name)
                .await
                .expect("join");
            let id = member.view().participant_id;
            let bot = new_bot(&coordinator, &member).await;
            announce(&member, bot.session_id(), None);
            peers.push(Arc::new(Peer {
                name,
                id,
                sessions: Mutex::new(vec![bot.session_id().to_owned()]),
                member,
                bot: Mutex::new(Arc::new(bot)),
                pulls: Mutex::new(BTreeMap::new()),
                handled: Mutex::new(0),
                moves: Mutex::new(Vec::new()),
            }));
        }
        Cluster {
            _dir: dir,
            sfus,
            coordinator,
            peers,
            http: reqwest::Client::new(),
        }
    }

    fn proxy(&self) -> String {
        format!("http://{}/sfu", self.coordinator.addr)
    }

    /// Everyone in one MLS group of the four, sending in its epoch: (epoch, safety number).
    async fn agreed(&self) -> (u64, String) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let views: Vec<MemberView> = self.peers.iter().map(|p| p.member.view()).collect();
            let first = &views[0];
            let ok = views.iter().all(|v| {
                v.phase == "member"
                    && v.epoch.is_some()
                    && v.epoch == first.epoch
                    && v.send_epoch == first.epoch
                    && v.safety_number == first.safety_number
                    && v.members.len() == PEERS
            });
            if ok {
                return (first.epoch.unwrap(), first.safety_number.clone().unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "no agreement: {:?}",
                views
                    .iter()
                    .map(|v| (&v.phase, v.epoch, v.send_epoch, v.members.len()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn new_bot(coordinator: &Coordinator, member: &RoomMember) -> Bot {
    let mut config = BotConfig::new("http://unused", "unused", &member.view().resume_token);
    config.api_base = Some(format!("http://{}/sfu", coordinator.addr));
    config.participant = media();
    let bot = Bot::connect_with(config)
        .await
        .expect("bot through the proxy");
    bot.set_media_crypto(Some(Box::new(member.media_crypto())))
        .await
        .unwrap();
    bot.publish(&TRACKS.map(|(name, kind)| match kind {
        TrackKind::Audio => TrackSpec::audio(name),
        _ => TrackSpec::video(name),
    }))
    .await
    .expect("publish");
    bot
}

/// Announces the tracks of `session` in the room (withdrawing the old ones first, if any).
fn announce(member: &RoomMember, session: &str, old: Option<()>) {
    for (name, kind) in TRACKS {
        if old.is_some() {
            member.send(ClientMessage::Unpublish {
                track_name: name.into(),
            });
        }
        member.send(ClientMessage::Publish {
            session_id: session.into(),
            track_name: name.into(),
            kind,
            enabled: true,
        });
    }
}

/// The client side of one participant, every 50 ms: follow a `move` order for its current
/// session; pull each other participant's tracks from the session the room's log names (again
/// when they moved), closing the old pulls.
async fn agent(peer: Arc<Peer>, proxy: String, http: reqwest::Client, stop: Arc<Mutex<bool>>) {
    while !*stop.lock().unwrap() {
        let view = peer.member.view();
        let order = {
            let mut handled = peer.handled.lock().unwrap();
            let next = view.move_orders.get(*handled).cloned();
            if next.is_some() {
                *handled += 1;
            }
            next
        };
        let current = peer.bot();
        if let Some(order) = order
            && order.sessions.iter().any(|s| s == current.session_id())
        {
            match current
                .relocate(Some(Box::new(peer.member.media_crypto())))
                .await
            {
                Ok(bot) => {
                    // Make before break: the new session publishes and is announced (the
                    // others pull from it while the old one still sends), pulls what the old
                    // one pulls and receives it, and only then becomes this participant's.
                    let sid = bot.session_id().to_owned();
                    announce(&peer.member, &sid, Some(()));
                    peer.moves.lock().unwrap().push((order.at, Instant::now()));
                    peer.sessions.lock().unwrap().push(sid.clone());
                    // (A node that is down carries nothing more: no reason to wait.)
                    let pulls = Mutex::new(BTreeMap::new());
                    let deadline = Instant::now() + MAKE_BEFORE_BREAK;
                    let before_break = order.reason != "down";
                    if before_break {
                        let _ = bot.wait_connected(MAKE_BEFORE_BREAK).await;
                    }
                    while before_break && Instant::now() < deadline {
                        pull_current(&bot, peer.id, &peer.member.view(), &pulls).await;
                        if receives_all(&bot, &pulls).await {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    *peer.bot.lock().unwrap() = Arc::new(bot);
                    *peer.pulls.lock().unwrap() = pulls.into_inner().unwrap();
                    println!(
                        "{} moved ({}) from {} to {} in {} ms",
                        peer.name,
                        order.reason,
                        NODES[node_of(current.session_id())],
                        NODES[node_of(&sid)],
                        order.at.elapsed().as_millis()
                    );
                    // The old bot goes once the others had time to pull from the new session
                    // (they follow the announcement within ~0.1 s), then its session.
                    let old = current.clone();
                    let (http, proxy) = (http.clone(), proxy.clone());
                    let token = view.resume_token.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(OLD_SESSION_GRACE).await;
                        let old_sid = old.session_id().to_owned();
                        drop(old);
                        let _ = http
                            .delete(format!("{proxy}/sessions/{old_sid}"))
                            .bearer_auth(token)
                            .timeout(Duration::from_secs(5))
                            .send()
                            .await;
                    });
                }
                Err(e) => {
                    println!("{}: move failed ({e}); the next order retries", peer.name);
                }
            }
            continue;
        }
        // Pull from where the log says each other participant publishes now.
        pull_current(&peer.bot(), peer.id, &view, &peer.pulls).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pulls on `bot` every other participant's tracks from the session the room's log (`view`)
/// names, where `pulls` has them from another session or not at all; closes the pulls replaced.
async fn pull_current(
    bot: &Bot,
    me: u64,
    view: &MemberView,
    pulls: &Mutex<BTreeMap<u64, (String, Vec<String>)>>,
) {
    for (pid, info) in &view.roster.participants {
        if *pid == me {
            continue;
        }
        let Some(sid) = info
            .tracks
            .iter()
            .find(|t| t.track_name == "mic")
            .map(|t| t.session_id.clone())
        else {
            continue;
        };
        if !info.tracks.iter().all(|t| t.session_id == sid) || info.tracks.len() < 2 {
            continue; // its announcement is half way
        }
        let old = pulls.lock().unwrap().get(pid).cloned();
        if old.as_ref().is_some_and(|(s, _)| *s == sid) {
            continue;
        }
        let wanted: Vec<(String, String)> = TRACKS
            .iter()
            .map(|(n, _)| (sid.clone(), (*n).to_owned()))
            .collect();
        match bot.subscribe_many(&wanted).await {
            Ok(subs) if subs.len() == wanted.len() => {
                let mids = subs.iter().map(|s| s.mid.clone()).collect();
                pulls.lock().unwrap().insert(*pid, (sid, mids));
                if let Some((_, mids)) = old {
                    let _ = bot.close_tracks(&mids).await;
                }
            }
            Ok(_) | Err(_) => {} // retried on the next round
        }
    }
}

/// `bot` pulls a track of every other participant and has received packets on each of them.
async fn receives_all(bot: &Bot, pulls: &Mutex<BTreeMap<u64, (String, Vec<String>)>>) -> bool {
    let wanted: Vec<String> = pulls
        .lock()
        .unwrap()
        .values()
        .map(|(sid, _)| sid.clone())
        .collect();
    if wanted.len() < PEERS - 1 {
        return false;
    }
    let Ok(stats) = bot.stats().await else {
        return false;
    };
    wanted.iter().all(|sid| {
        stats
            .participant
            .subscribed
            .iter()
            .any(|t| &t.remote_session_id == sid && t.received.unique > 0)
    })
}

/// Per receiver and sender: the longest time without a new packet (sampled every [`SAMPLE_EVERY`]).
#[derive(Debug, Default)]
struct Gaps {
    /// (receiver, sender) → (receiver's bot session, packets so far, last increase, longest gap).
    pairs: BTreeMap<(usize, usize), (String, u64, Instant, Duration)>,
}

async fn sample(peers: &[Arc<Peer>], gaps: &Mutex<Gaps>) {
    let now = Instant::now();
    for (r, rx) in peers.iter().enumerate() {
        let bot = rx.bot();
        let Ok(stats) = bot.stats().await else {
            continue;
        };
        for (s, tx) in peers.iter().enumerate().filter(|(s, _)| *s != r) {
            let sessions: BTreeSet<String> = tx.sessions.lock().unwrap().iter().cloned().collect();
            let total: u64 = stats
                .participant
                .subscribed
                .iter()
                .filter(|t| sessions.contains(&t.remote_session_id))
                .map(|t| t.received.unique)
                .sum();
            let mut g = gaps.lock().unwrap();
            let e = g
                .pairs
                .entry((r, s))
                .or_insert_with(|| (stats.session_id.clone(), total, now, Duration::ZERO));
            if e.0 != stats.session_id {
                // The receiver moved: its new bot counts from 0.
                e.0 = stats.session_id.clone();
                e.1 = 0;
            }
            if total > e.1 {
                e.3 = e.3.max(now.saturating_duration_since(e.2));
                e.2 = now;
            }
            e.1 = total;
        }
    }
}

/// Runs the agents and the sampler until `until` says done (or PATIENCE passes); returns the
/// gaps (the time since the last packet counts at the end too).
async fn call<F: Fn() -> bool>(
    c: &Cluster,
    settle: impl std::future::Future<Output = ()>,
    until: F,
) -> BTreeMap<(usize, usize), Duration> {
    let stop = Arc::new(Mutex::new(false));
    let agents: Vec<_> = c
        .peers
        .iter()
        .map(|p| tokio::spawn(agent(p.clone(), c.proxy(), c.http.clone(), stop.clone())))
        .collect();
    // Everyone receives everyone before the sampler starts.
    let deadline = Instant::now() + PATIENCE;
    let warm = Mutex::new(Gaps::default());
    loop {
        sample(&c.peers, &warm).await;
        let ready = warm.lock().unwrap().pairs.len() == PEERS * (PEERS - 1)
            && warm.lock().unwrap().pairs.values().all(|e| e.1 > 20);
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not everyone receives everyone: {:?}",
            warm.lock().unwrap().pairs
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gaps = Mutex::new(Gaps::default());
    let sampler = async {
        let deadline = Instant::now() + PATIENCE;
        while !until() && Instant::now() < deadline {
            sample(&c.peers, &gaps).await;
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        // Two more seconds of call after the event.
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end {
            sample(&c.peers, &gaps).await;
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    };
    let ((), ()) = tokio::join!(sampler, settle);
    *stop.lock().unwrap() = true;
    for a in agents {
        let _ = a.await;
    }
    let now = Instant::now();
    let g = gaps.lock().unwrap();
    g.pairs
        .iter()
        .map(|(k, e)| (*k, e.3.max(now.saturating_duration_since(e.2))))
        .collect()
}

fn report(c: &Cluster, gaps: &BTreeMap<(usize, usize), Duration>) -> Duration {
    let mut longest = Duration::ZERO;
    for ((r, s), g) in gaps {
        println!(
            "  {} <- {}: longest gap {} ms",
            c.peers[*r].name,
            c.peers[*s].name,
            g.as_millis()
        );
        longest = longest.max(*g);
    }
    println!("  longest gap of all pairs: {} ms", longest.as_millis());
    longest
}

/// No MLS rejoin: same participant ids, same epoch and safety number, no reset.
fn same_group(c: &Cluster, before: &(u64, String)) {
    for p in &c.peers {
        let v = p.member.view();
        assert_eq!(v.participant_id, p.id, "{}", p.name);
        assert_eq!(v.resets, 0, "{} reset its MLS state", p.name);
        assert_eq!(v.phase, "member", "{}", p.name);
        assert_eq!(v.epoch, Some(before.0), "{}: epoch", p.name);
        assert_eq!(v.safety_number.as_ref(), Some(&before.1), "{}", p.name);
        assert_eq!(v.resumes, 0, "{} lost its room connection", p.name);
    }
}

fn on_node(c: &Cluster, n: usize) -> Vec<usize> {
    (0..PEERS)
        .filter(|i| node_of(c.peers[*i].bot().session_id()) == n)
        .collect()
}

/// The move check both cases share: one second into the call, `event` happens to sfu-b
/// (`what`: "drain", "kill -9"); the call goes on until both participants on sfu-b were told
/// to move, and 2 s more. Then everyone is on sfu-a, no receiver's longest gap in packets from
/// any sender is above `bar`, and nobody rejoined the MLS group; the gaps and when each mover
/// was told and publishing again are printed. Returns when `event` began.
async fn assert_moved(
    c: &Cluster,
    group: &(u64, String),
    what: &str,
    bar: Duration,
    event: impl std::future::Future<Output = ()>,
) -> Instant {
    let at = Mutex::new(None::<Instant>);
    let settle = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        *at.lock().unwrap() = Some(Instant::now());
        event.await;
    };
    let movers = &c.peers[..2];
    let gaps = call(c, settle, || {
        movers.iter().all(|p| !p.moves.lock().unwrap().is_empty())
    })
    .await;
    println!("{what} of sfu-b:");
    let longest = report(c, &gaps);
    let at = at.lock().unwrap().expect("the event ran");
    for p in movers {
        let (told, moved) = p.moves.lock().unwrap()[0];
        println!(
            "  {}: told {} ms after the {what}, publishing on sfu-a {} ms later",
            p.name,
            told.saturating_duration_since(at).as_millis(),
            moved.saturating_duration_since(told).as_millis()
        );
    }
    assert_eq!(on_node(c, A), [0, 1, 2, 3], "everyone on sfu-a");
    assert!(
        longest <= bar,
        "longest gap {} ms (at most {} ms)",
        longest.as_millis(),
        bar.as_millis()
    );
    same_group(c, group);
    at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_participants_and_the_node_exits_0() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let mut c = Cluster::start("drain").await;
    assert_eq!(on_node(&c, B), [0, 1], "the room starts on sfu-b");
    assert_eq!(on_node(&c, A), [2, 3]);
    let group = c.agreed().await;

    let b_url = c.sfus[B].base_url();
    let drain = async move {
        let out = tokio::process::Command::new(sfu_binary())
            .args(["drain", "--url", &b_url, "--app"])
            .arg(format!("{APP_ID}:{APP_SECRET}"))
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "satsuma-sfu drain: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let drained_at = assert_moved(&c, &group, "drain", Duration::from_secs(2), drain).await;
    // Nothing corrupt or misrouted in what the bots hold now.
    for p in &c.peers {
        let stats = p.bot().stats().await.unwrap();
        for s in &stats.participant.subscribed {
            let r = &s.received;
            assert_eq!(
                (r.corrupt, r.foreign, r.duplicates),
                (0, 0, 0),
                "{}: {r:?}",
                p.name
            );
        }
    }
    // sfu-b exits 0 once its sessions are gone.
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(s) = c.sfus[B].exit_status() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "sfu-b still runs:\n{}",
            c.sfus[B].stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "sfu-b exited {status} {} ms after the drain",
        drained_at.elapsed().as_millis()
    );
    assert!(status.success(), "sfu-b: {status}\n{}", c.sfus[B].stderr());
    let m = fetch_metrics(&format!("http://{}", c.coordinator.addr))
        .await
        .unwrap();
    assert_eq!(
        m.get("satsuma_coord_sfu_moves_total{reason=\"draining\"}"),
        2.0
    );
    println!("{} s in all", started.elapsed().as_secs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_participants_are_back_within_5_s() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let c = Cluster::start("kill").await;
    assert_eq!(on_node(&c, B), [0, 1], "the room starts on sfu-b");
    let group = c.agreed().await;
    let pid = c.sfus[B].pid();
    let kill = async move {
        let status = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    assert_moved(&c, &group, "kill -9", Duration::from_secs(5), kill).await;
    let m = fetch_metrics(&format!("http://{}", c.coordinator.addr))
        .await
        .unwrap();
    assert_eq!(m.get("satsuma_coord_sfu_moves_total{reason=\"down\"}"), 2.0);
    println!("{} s in all", started.elapsed().as_secs());
}
