//! The soak worker process (`satsuma-load soak-worker`): rooms of meeting-style members with
//! churn, driven by the controller over JSON lines on stdin/stdout.
//!
//! A member is two bot sessions, as the meeting scenario and the web client's publish/pull split:
//! a publisher (audio + video in three simulcast layers) and a subscriber that pulls the audio and
//! video of every other member of its room. A join creates both sessions and makes every other
//! member's subscriber pull the newcomer (`tracks/new` remote → SFU offer → `renegotiate`). A
//! leave closes the publisher's tracks (`tracks/close` with an offer), deletes both sessions
//! (`DELETE /sessions/{id}`), and every other subscriber closes its pulls of the leaver's tracks.
//! Every failed step is counted as an error with its message.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use anyhow::Context;
use satsuma_bot::{Bot, BotConfig, BotError, BotStats, SubscribedTrack, TrackSpec};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{BotLoss, RoomPlan, SoakCommand, SoakReply, SoakTarget, WorkerSample};
use crate::media::MediaProfile;
use crate::worker::Counters;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const MAX_MESSAGES: usize = 20;

/// Counters of members that left, and everything counted so far.
#[derive(Debug, Default)]
struct Tally {
    retired: Counters,
    retired_bad: Vec<BotLoss>,
    joins: u64,
    leaves: u64,
    sessions_created: u64,
    sessions_deleted: u64,
    tracks_closed: u64,
    tracks_pulled: u64,
    pulls_already_closed: u64,
    errors: u64,
    messages: Vec<String>,
}

struct Ctx {
    target: SoakTarget,
    media: MediaProfile,
    http: reqwest::Client,
    tally: StdMutex<Tally>,
}

impl Ctx {
    fn tally(&self, f: impl FnOnce(&mut Tally)) {
        if let Ok(mut t) = self.tally.lock() {
            f(&mut t);
        }
    }

    fn error(&self, what: String) {
        tracing::warn!("{what}");
        self.tally(|t| {
            t.errors += 1;
            if t.messages.len() < MAX_MESSAGES {
                t.messages.push(what);
            }
        });
    }

    fn bot_config(&self) -> BotConfig {
        let mut c = BotConfig::new(&self.target.url, &self.target.app, &self.target.secret);
        c.participant = self.media.participant_config();
        c
    }

    fn tracks(&self) -> Vec<TrackSpec> {
        let layers = self.media.simulcast_layers();
        vec![
            TrackSpec::audio("audio"),
            if layers.is_empty() {
                TrackSpec::video("video")
            } else {
                TrackSpec::simulcast_video("video", layers)
            },
        ]
    }

    async fn connect(&self) -> anyhow::Result<Bot> {
        let bot = Bot::connect_with(self.bot_config())
            .await
            .context("sessions/new")?;
        self.tally(|t| t.sessions_created += 1);
        Ok(bot)
    }

    /// `DELETE /sessions/{id}`.
    async fn delete_session(&self, bot: &Bot) -> anyhow::Result<()> {
        let url = format!("{}/sessions/{}", bot.api().app_base(), bot.session_id());
        let resp = self
            .http
            .delete(&url)
            .bearer_auth(&self.target.secret)
            .send()
            .await
            .context("DELETE session")?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            anyhow::bail!("DELETE session {}: {status}: {body}", bot.session_id());
        }
        self.tally(|t| t.sessions_deleted += 1);
        Ok(())
    }

    /// Delete the session and stop the bot; errors are counted.
    async fn dispose(&self, who: &str, bot: Bot) {
        if let Err(e) = self.delete_session(&bot).await {
            self.error(format!("{who}: {e:#}"));
        }
        let _ = bot.shutdown().await;
    }
}

struct Member {
    name: String,
    publisher: Bot,
    subscriber: Bot,
    /// Mids of the publisher's tracks.
    published_mids: Vec<String>,
    /// What the subscriber pulls, by the publishing member's name.
    pulls: BTreeMap<String, Vec<SubscribedTrack>>,
}

impl Member {
    fn pull_list(&self) -> Vec<(String, String)> {
        ["audio", "video"]
            .iter()
            .map(|t| (self.publisher.session_id().to_owned(), (*t).to_owned()))
            .collect()
    }
}

fn loss_of(name: &str, s: &BotStats) -> BotLoss {
    let mut l = BotLoss {
        name: name.to_owned(),
        ..BotLoss::default()
    };
    for t in &s.participant.subscribed {
        l.lost += t.received.lost;
        l.corrupt += t.received.corrupt;
        l.foreign += t.received.foreign;
        l.received += t.received.packets;
    }
    l
}

struct Room {
    plan: RoomPlan,
    members: VecDeque<Member>,
    next_id: u64,
}

impl Room {
    /// A new member joins: two sessions, and every other member pulls its tracks.
    async fn join(&mut self, ctx: &Ctx) -> anyhow::Result<()> {
        let name = format!("{}-m{}", self.plan.name, self.next_id);
        self.next_id += 1;
        let publisher = ctx.connect().await.context("publisher")?;
        let published = match async {
            let p = publisher.publish(&ctx.tracks()).await.context("publish")?;
            publisher
                .wait_connected(CONNECT_TIMEOUT)
                .await
                .context("publisher connect")?;
            anyhow::Ok(p)
        }
        .await
        {
            Ok(p) => p,
            Err(e) => {
                ctx.dispose(&name, publisher).await;
                return Err(e.context(name));
            }
        };
        let subscriber = match ctx.connect().await {
            Ok(s) => s,
            Err(e) => {
                ctx.dispose(&name, publisher).await;
                return Err(e.context(format!("{name} subscriber")));
            }
        };
        let mut member = Member {
            name: name.clone(),
            publisher,
            subscriber,
            published_mids: published.into_iter().map(|t| t.mid).collect(),
            pulls: BTreeMap::new(),
        };
        if !self.members.is_empty() {
            let wanted: Vec<(String, String)> =
                self.members.iter().flat_map(Member::pull_list).collect();
            let owner: HashMap<String, String> = self
                .members
                .iter()
                .map(|m| (m.publisher.session_id().to_owned(), m.name.clone()))
                .collect();
            let r = async {
                let got = member
                    .subscriber
                    .subscribe_many(&wanted)
                    .await
                    .context("pull the room")?;
                member
                    .subscriber
                    .wait_connected(CONNECT_TIMEOUT)
                    .await
                    .context("subscriber connect")?;
                anyhow::Ok(got)
            }
            .await;
            match r {
                Ok(got) => {
                    ctx.tally(|t| t.tracks_pulled += got.len() as u64);
                    for s in got {
                        if let Some(o) = owner.get(&s.session_id) {
                            member.pulls.entry(o.clone()).or_default().push(s);
                        }
                    }
                }
                Err(e) => {
                    ctx.dispose(&name, member.publisher).await;
                    ctx.dispose(&name, member.subscriber).await;
                    return Err(e.context(name));
                }
            }
        }
        // Everyone else pulls the newcomer.
        let newcomer = member.pull_list();
        for m in &mut self.members {
            match m.subscriber.subscribe_many(&newcomer).await {
                Ok(got) => {
                    ctx.tally(|t| t.tracks_pulled += got.len() as u64);
                    m.pulls.insert(name.clone(), got);
                }
                Err(e) => ctx.error(format!("{} pulls {name}: {e:#}", m.name)),
            }
        }
        self.members.push_back(member);
        ctx.tally(|t| t.joins += 1);
        Ok(())
    }

    /// The oldest member leaves cleanly.
    async fn leave_oldest(&mut self, ctx: &Ctx) {
        let Some(m) = self.members.pop_front() else {
            return;
        };
        // Its counters from now on are the retired ones.
        let (p, s) = (m.publisher.stats().await, m.subscriber.stats().await);
        ctx.tally(|t| {
            if let Ok(p) = &p {
                t.retired.add(&p.participant);
            }
            if let Ok(s) = &s {
                t.retired.add(&s.participant);
                let l = loss_of(&m.name, s);
                if l.is_bad() {
                    t.retired_bad.push(l);
                }
            }
        });
        if let Err(e) = m.publisher.close_tracks(&m.published_mids).await {
            ctx.error(format!("{} closes its tracks: {e:#}", m.name));
        } else {
            ctx.tally(|t| t.tracks_closed += m.published_mids.len() as u64);
        }
        ctx.dispose(&m.name, m.publisher).await;
        ctx.dispose(&m.name, m.subscriber).await;
        for other in &mut self.members {
            let Some(tracks) = other.pulls.remove(&m.name) else {
                continue;
            };
            let mids: Vec<String> = tracks.into_iter().map(|t| t.mid).collect();
            match other.subscriber.close_tracks(&mids).await {
                Ok(()) => ctx.tally(|t| t.tracks_closed += mids.len() as u64),
                // The SFU ends a subscriber's legs when their publisher unpublishes, so closing
                // them after the leaver is gone gets this per-track answer (after the SDP
                // exchange that stops the transceivers). The web client ignores it the same way.
                Err(BotError::Track { code, .. }) if code == "close_track_error" => {
                    ctx.tally(|t| {
                        t.tracks_closed += mids.len() as u64;
                        t.pulls_already_closed += 1;
                    });
                }
                Err(e) => ctx.error(format!(
                    "{} closes its pulls of {}: {e:#}",
                    other.name, m.name
                )),
            }
        }
        ctx.tally(|t| t.leaves += 1);
    }

    /// One churn step: the oldest member leaves (if the room is full) and a new one joins.
    async fn churn(&mut self, ctx: &Ctx) {
        if self.members.len() >= self.plan.size {
            self.leave_oldest(ctx).await;
        }
        if self.members.len() < self.plan.size
            && let Err(e) = self.join(ctx).await
        {
            ctx.error(format!("join: {e:#}"));
        }
    }
}

async fn churn_loop(
    room: Arc<Mutex<Room>>,
    ctx: Arc<Ctx>,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) {
    let (offset, period) = {
        let r = room.lock().await;
        (r.plan.churn_offset_ms, r.plan.churn_period_ms)
    };
    if period == 0 {
        return;
    }
    let mut next = start + Duration::from_millis(offset);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        room.lock().await.churn(&ctx).await;
        next += Duration::from_millis(period);
        // A slow step must not make the steps pile up.
        let now = Instant::now();
        while next < now {
            next += Duration::from_millis(period);
        }
    }
}

/// What one room held at its last sample.
#[derive(Debug, Default)]
struct RoomSnap {
    members: usize,
    counters: Counters,
    bad: Vec<BotLoss>,
    /// Packets received per (member, mid) of active pulls, for stall detection.
    packets: HashMap<(String, String), u64>,
}

struct Worker {
    ctx: Arc<Ctx>,
    rooms: Vec<Arc<Mutex<Room>>>,
    stop: watch::Sender<bool>,
    churn: Vec<JoinHandle<()>>,
    /// Each room's last snapshot.
    cache: Vec<RoomSnap>,
    /// When the last sample was taken.
    last_sample: Instant,
}

/// A pulled track that receives nothing for this long between two samples has stalled.
const STALL_AFTER: Duration = Duration::from_secs(3);

impl Worker {
    async fn start(
        target: SoakTarget,
        media: MediaProfile,
        plans: Vec<RoomPlan>,
        concurrency: usize,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()?;
        let ctx = Arc::new(Ctx {
            target,
            media,
            http,
            tally: StdMutex::new(Tally::default()),
        });
        let gate = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut builds = Vec::new();
        let mut rooms = Vec::new();
        for plan in plans {
            let room = Arc::new(Mutex::new(Room {
                plan,
                members: VecDeque::new(),
                next_id: 0,
            }));
            rooms.push(room.clone());
            let (ctx, gate) = (ctx.clone(), gate.clone());
            builds.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await;
                let mut r = room.lock().await;
                while r.members.len() < r.plan.size {
                    if let Err(e) = r.join(&ctx).await {
                        ctx.error(format!("initial join: {e:#}"));
                        break;
                    }
                }
            }));
        }
        for b in builds {
            b.await?;
        }
        let (stop, stop_rx) = watch::channel(false);
        let start = Instant::now();
        let churn = rooms
            .iter()
            .map(|r| tokio::spawn(churn_loop(r.clone(), ctx.clone(), start, stop_rx.clone())))
            .collect();
        Ok(Self {
            ctx,
            rooms,
            stop,
            churn,
            cache: Vec::new(),
            last_sample: Instant::now(),
        })
    }

    /// Cumulative state. A room in the middle of a churn step is not waited for (that can take
    /// seconds on a loaded machine): its previous snapshot stands in, unless `exact`.
    async fn sample_with(&mut self, exact: bool) -> WorkerSample {
        let check_stalls = self.last_sample.elapsed() >= STALL_AFTER;
        self.last_sample = Instant::now();
        let mut stalled = Vec::new();
        self.cache.resize_with(self.rooms.len(), RoomSnap::default);
        for (room, cached) in self.rooms.iter().zip(self.cache.iter_mut()) {
            let r = if exact {
                room.lock().await
            } else {
                match room.try_lock() {
                    Ok(r) => r,
                    Err(_) => continue,
                }
            };
            let mut snap = RoomSnap::default();
            for m in &r.members {
                snap.members += 1;
                if let Ok(p) = m.publisher.stats().await {
                    snap.counters.add(&p.participant);
                }
                match m.subscriber.stats().await {
                    Ok(s) => {
                        snap.counters.add(&s.participant);
                        let l = loss_of(&m.name, &s);
                        if l.is_bad() {
                            snap.bad.push(l);
                        }
                        for t in s.participant.subscribed.iter().filter(|t| t.active) {
                            let key = (m.name.clone(), t.mid.clone());
                            let now = t.received.packets;
                            if check_stalls
                                && let Some(&before) = cached.packets.get(&key)
                                && now <= before
                            {
                                stalled.push(format!(
                                    "{} {}/{} (mid {}): {now} packets, none since the last \
                                     sample",
                                    m.name, t.remote_session_id, t.track_name, t.mid
                                ));
                            }
                            snap.packets.insert(key, now);
                        }
                    }
                    Err(e) => self.ctx.error(format!("{} stats: {e:#}", m.name)),
                }
            }
            *cached = snap;
        }
        let mut counters = Counters::default();
        let mut bad = Vec::new();
        let mut members = 0;
        for c in &self.cache {
            counters = counters.plus(&c.counters);
            bad.extend(c.bad.iter().cloned());
            members += c.members;
        }
        for s in &stalled {
            self.ctx.error(format!("stalled: {s}"));
        }
        let t = self.ctx.tally.lock().map(|t| {
            let mut bad_all = t.retired_bad.clone();
            bad_all.extend(bad);
            WorkerSample {
                members,
                joins: t.joins,
                leaves: t.leaves,
                sessions_created: t.sessions_created,
                sessions_deleted: t.sessions_deleted,
                tracks_closed: t.tracks_closed,
                tracks_pulled: t.tracks_pulled,
                pulls_already_closed: t.pulls_already_closed,
                counters: counters.plus(&t.retired),
                bad_bots: bad_all,
                stalled: stalled.clone(),
                errors: t.errors,
                error_messages: t.messages.clone(),
            }
        });
        t.unwrap_or_default()
    }

    /// Stop the churn and let everyone leave.
    async fn stop(&mut self) -> WorkerSample {
        let _ = self.stop.send(true);
        for h in self.churn.drain(..) {
            let _ = h.await;
        }
        // The final sample before the teardown (stall check included), then the teardown.
        let _ = self.sample_with(true).await;
        for room in &self.rooms {
            let mut r = room.lock().await;
            while !r.members.is_empty() {
                r.leave_oldest(&self.ctx).await;
            }
        }
        self.sample_with(true).await
    }
}

/// Run the soak worker: read commands from stdin until `stop` or end of input.
pub async fn run_soak_worker() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    let mut worker: Option<Worker> = None;
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let mut done = false;
        let reply = match serde_json::from_str::<SoakCommand>(&line) {
            Err(e) => SoakReply::Error {
                message: format!("bad command: {e}"),
            },
            Ok(SoakCommand::Start {
                target,
                media,
                rooms,
                concurrency,
            }) => match Worker::start(target, media, rooms, concurrency).await {
                Ok(mut w) => {
                    let s = w.sample_with(true).await;
                    worker = Some(w);
                    SoakReply::Started(s)
                }
                Err(e) => SoakReply::Error {
                    message: format!("start: {e:#}"),
                },
            },
            Ok(SoakCommand::Sample) => match worker.as_mut() {
                Some(w) => SoakReply::Sample(w.sample_with(false).await),
                None => SoakReply::Error {
                    message: "not started".into(),
                },
            },
            Ok(SoakCommand::Stop) => {
                done = true;
                match worker.as_mut() {
                    Some(w) => SoakReply::Stopped(w.stop().await),
                    None => SoakReply::Stopped(WorkerSample::default()),
                }
            }
        };
        let mut text = serde_json::to_string(&reply)?;
        text.push('\n');
        out.write_all(text.as_bytes()).await?;
        out.flush().await?;
        if done {
            break;
        }
    }
    Ok(())
}
