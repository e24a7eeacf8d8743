//! Bot churn (issue 17): eight native E2EE bots join and leave at random for 60 s through a
//! real stack (the `satsuma` binary: coordinator, SFU and the coordinator's SFU proxy on
//! loopback). Each bot is a room member running the shipping E2EE core
//! (`satsuma_bot::room::RoomMember`, an MLS member) plus a media bot acting for it through
//! the proxy, which publishes audio and video sealed with the member's keys and pulls every
//! other present bot's tracks, opening them with the keys of the sender the room's log
//! names for the SFU session.
//!
//! Asserted:
//! - no fork at any time: two present members never report the same epoch with different
//!   safety numbers (sampled every 100 ms throughout), and at the end all agree on one
//!   epoch, one safety number and one member list, which is exactly the present bots;
//! - everyone converges within 5 s of the last membership change (measured and printed);
//! - afterwards every bot decrypts frames from every other bot (per sender, counted by its
//!   crypto, and verified byte for byte by its receptions after decryption), with no frame
//!   from a present sender failing to decrypt after convergence.
//!
//! `SATSUMA_BOT_CHURN_SEED` replays a run (the seed is printed); `SATSUMA_BOT_CHURN_SECS`
//! sets the churn time (default 60) for longer soaks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::Stack;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use satsuma_bot::media_e2ee::MediaStats;
use satsuma_bot::room::{MemberView, RoomMember};
use satsuma_bot::{AudioSettings, Bot, BotConfig, ParticipantConfig, TrackSpec, VideoSettings};
use serde_json::{Value, json};

/// A hang detector for steps that normally take well under a second.
const PATIENCE: Duration = Duration::from_secs(60);
/// The bar: everyone agrees within this long after the last membership change.
const CONVERGENCE_BAR: Duration = Duration::from_secs(5);
/// Bots (slots) in the pool.
const BOTS: usize = 8;
/// Present bots at least and at most during the churn.
const MIN_PRESENT: usize = 3;
/// Frames every receiver must decrypt from every sender after convergence.
const FRAMES_AFTER: u64 = 20;
const ROOM: &str = "bot-churn";

impl Stack {
    async fn member(&self, name: &str) -> RoomMember {
        let r = reqwest::Client::new()
            .post(format!("{}/token", self.base()))
            .json(&json!({"room": ROOM, "name": name}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "dev token: {}", r.status());
        let v: Value = r.json().await.unwrap();
        let token = v["token"].as_str().unwrap();
        RoomMember::join(&self.ws(ROOM), token, name)
            .await
            .expect("join")
    }
}

/// One present bot: the room member and the media bot acting for it.
struct Peer {
    slot: usize,
    name: String,
    id: u64,
    member: RoomMember,
    bot: Bot,
    /// Publishers (participant ids) whose tracks this bot pulls.
    pulls: Mutex<BTreeSet<u64>>,
}

/// Media small enough for eight bots on a loaded 2-core machine: Opus-like audio at 50
/// packets/s, VP8-like video at 15 fps, one packet per frame (each frame is sealed whole).
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

/// The media bot for `member`: a session through the coordinator's proxy, sealing with the
/// member's keys, publishing `mic` and `cam`.
async fn media_bot(stack: &Stack, member: &RoomMember) -> Bot {
    let mut config = BotConfig::new(&stack.base(), "unused", &member.view().resume_token);
    config.api_base = Some(format!("{}/sfu", stack.base()));
    config.participant = media();
    let bot = Bot::connect_with(config)
        .await
        .expect("bot through the proxy");
    bot.set_media_crypto(Some(Box::new(member.media_crypto())))
        .await
        .unwrap();
    bot.publish(&[TrackSpec::audio("mic"), TrackSpec::video("cam")])
        .await
        .expect("publish");
    bot
}

/// `sub` pulls `publisher`'s tracks; false if the SFU refused (e.g. it left meanwhile).
async fn pull(sub: &Peer, publisher: &Peer) -> bool {
    if sub.pulls.lock().unwrap().contains(&publisher.id) {
        return true;
    }
    let sid = publisher.bot.session_id().to_owned();
    let tracks = [(sid.clone(), "mic".to_owned()), (sid, "cam".to_owned())];
    match sub.bot.subscribe_many(&tracks).await {
        Ok(subs) if subs.len() == 2 => {
            sub.pulls.lock().unwrap().insert(publisher.id);
            true
        }
        Ok(subs) => {
            println!(
                "{} pulled {} of {}'s tracks",
                sub.name,
                subs.len(),
                publisher.name
            );
            false
        }
        Err(e) => {
            println!("{} cannot pull {}: {e}", sub.name, publisher.name);
            false
        }
    }
}

/// Every present bot pulls every other's tracks (those not pulled yet), all bots at once;
/// returns the pairs that failed.
async fn pull_all(present: &[Peer]) -> usize {
    let jobs = present.iter().map(|sub| async move {
        let mut failed = 0;
        for publisher in present.iter().filter(|p| p.id != sub.id) {
            if !pull(sub, publisher).await {
                failed += 1;
            }
        }
        failed
    });
    futures_util::future::join_all(jobs).await.into_iter().sum()
}

/// Everyone in one group made of exactly the present bots: one epoch (also the one they
/// send in), one safety number, one member list.
fn agreed(views: &[MemberView]) -> Option<(u64, String)> {
    let first = views.first()?;
    let epoch = first.epoch?;
    let number = first.safety_number.clone()?;
    let ids: BTreeSet<u64> = views.iter().map(|v| v.participant_id).collect();
    views
        .iter()
        .all(|v| {
            v.phase == "member"
                && v.closed.is_none()
                && v.epoch == Some(epoch)
                && v.send_epoch == Some(epoch)
                && v.safety_number.as_deref() == Some(number.as_str())
                && v.members.iter().copied().collect::<BTreeSet<_>>() == ids
        })
        .then_some((epoch, number))
}

/// Forks among `views`: pairs that report the same epoch with different safety numbers.
fn forks(views: &[MemberView]) -> Vec<String> {
    let mut by_epoch: BTreeMap<u64, BTreeMap<String, Vec<u64>>> = BTreeMap::new();
    for v in views {
        if let (Some(e), Some(n)) = (v.epoch, v.safety_number.clone()) {
            by_epoch
                .entry(e)
                .or_default()
                .entry(n)
                .or_default()
                .push(v.participant_id);
        }
    }
    by_epoch
        .into_iter()
        .filter(|(_, numbers)| numbers.len() > 1)
        .map(|(e, numbers)| format!("epoch {e}: {numbers:?}"))
        .collect()
}

/// What the run saw while waiting.
#[derive(Default)]
struct Watch {
    forks: Vec<String>,
    samples: u64,
}

impl Watch {
    /// Samples `members` every 100 ms for `wait`, recording forks.
    async fn sample_for(&mut self, members: &[&RoomMember], wait: Duration) {
        let until = Instant::now() + wait;
        loop {
            self.sample(members);
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(Duration::from_millis(100))).await;
        }
    }

    fn sample(&mut self, members: &[&RoomMember]) -> Vec<MemberView> {
        let views: Vec<MemberView> = members.iter().map(|m| m.view()).collect();
        self.samples += 1;
        for f in forks(&views) {
            println!("FORK: {f}");
            self.forks.push(f);
        }
        views
    }

    /// Samples every 20 ms until the members agree; the time it took from `since`.
    async fn until_agreed(
        &mut self,
        members: &[&RoomMember],
        since: Instant,
    ) -> (Duration, u64, String) {
        loop {
            let views = self.sample(members);
            if let Some((epoch, number)) = agreed(&views) {
                return (since.elapsed(), epoch, number);
            }
            assert!(
                since.elapsed() < PATIENCE,
                "no common group {PATIENCE:?} after the last change: {views:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_e2ee_bots_churn_converge_and_decrypt_each_other() {
    let seed = std::env::var("SATSUMA_BOT_CHURN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    let churn = Duration::from_secs(
        std::env::var("SATSUMA_BOT_CHURN_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    println!(
        "SATSUMA_BOT_CHURN_SEED={seed} SATSUMA_BOT_CHURN_SECS={}",
        churn.as_secs()
    );
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let stack = Stack::start();
    let mut watch = Watch::default();
    let mut present: Vec<Peer> = Vec::new();
    let mut generation = [0u32; BOTS];

    // Six bots to begin with, in one group, pulling each other.
    for slot in 0..6 {
        let name = format!("bot{slot}.0");
        let member = stack.member(&name).await;
        let bot = media_bot(&stack, &member).await;
        present.push(Peer {
            slot,
            id: member.view().participant_id,
            name,
            member,
            bot,
            pulls: Mutex::default(),
        });
    }
    let members: Vec<&RoomMember> = present.iter().map(|p| &p.member).collect();
    let (_, first_epoch, _) = watch.until_agreed(&members, Instant::now()).await;
    assert_eq!(pull_all(&present).await, 0, "pulls among the first six");

    // Churn: at random moments a random free slot joins or a random present bot leaves,
    // while the group still reacts to the previous changes.
    let (mut joins, mut leaves, mut doubles, mut failed_pulls) = (0usize, 0usize, 0usize, 0usize);
    let started = Instant::now();
    let mut last_change;
    let agreement = loop {
        // The first change after the churn time is the last; convergence is measured from
        // it, while its media is set up.
        let is_last = started.elapsed() >= churn;
        // Mostly one change at a time; one in four times two at once (two joins, two
        // leaves, or one of each), which the committer must fold into its commits.
        let mut plan = Vec::new();
        let mut count = present.len();
        for _ in 0..if rng.random_bool(0.25) { 2 } else { 1 } {
            let join = match count {
                BOTS => false,
                MIN_PRESENT => true,
                _ => rng.random_bool(0.5),
            };
            count = if join { count + 1 } else { count - 1 };
            plan.push(join);
        }
        let mut leaving = Vec::new();
        for _ in plan.iter().filter(|j| !**j) {
            leaving.push(present.swap_remove(rng.random_range(0..present.len())));
        }
        let mut names = Vec::new();
        for _ in plan.iter().filter(|j| **j) {
            let free: Vec<usize> = (0..BOTS)
                // A slot leaving now may come back at once as a new member.
                .filter(|s| present.iter().all(|p| p.slot != *s))
                .filter(|s| names.iter().all(|(slot, _)| slot != s))
                .collect();
            let slot = free[rng.random_range(0..free.len())];
            generation[slot] += 1;
            names.push((slot, format!("bot{slot}.{}", generation[slot])));
        }
        let (members, gone_bots) = tokio::join!(
            futures_util::future::join_all(names.iter().map(|(_, n)| stack.member(n))),
            futures_util::future::join_all(leaving.into_iter().map(|p| async move {
                p.member.leave().await;
                p.bot
            })),
        );
        last_change = Instant::now();
        doubles += usize::from(plan.len() == 2);
        joins += members.len();
        leaves += gone_bots.len();
        let mut agreement = None;
        let refs: Vec<&RoomMember> = present
            .iter()
            .map(|p| &p.member)
            .chain(members.iter())
            .collect();
        let watching = async {
            if is_last {
                agreement = Some(watch.until_agreed(&refs, last_change).await);
            }
        };
        let setup = async {
            for bot in gone_bots {
                let _ = bot.shutdown().await;
            }
            futures_util::future::join_all(members.iter().map(|m| media_bot(&stack, m))).await
        };
        let (bots, ()) = tokio::join!(setup, watching);
        drop(refs);
        for (((slot, name), member), bot) in names.into_iter().zip(members).zip(bots) {
            present.push(Peer {
                slot,
                id: member.view().participant_id,
                name,
                member,
                bot,
                pulls: Mutex::default(),
            });
        }
        if !plan.iter().all(|j| !*j) {
            failed_pulls += pull_all(&present).await;
        }
        if let Some(a) = agreement {
            break a;
        }
        // The next change comes at a random point of the group's reaction to this one.
        let pause = Duration::from_millis(rng.random_range(0..2500));
        let wait = pause.saturating_sub(last_change.elapsed());
        let members: Vec<&RoomMember> = present.iter().map(|p| &p.member).collect();
        watch.sample_for(&members, wait).await;
    };
    let (convergence, epoch, number) = agreement;
    let names: Vec<&str> = present.iter().map(|p| p.name.as_str()).collect();
    println!(
        "churn {:?}: {joins} joins, {leaves} leaves ({doubles} times two at once); {} present {names:?}; epochs {first_epoch} -> {epoch} \
         ({} commits); converged {convergence:?} after the last change (safety number {number}); \
         {} samples, {} forks; {failed_pulls} pulls refused during the churn",
        started.elapsed(),
        present.len(),
        epoch - first_epoch,
        watch.samples,
        watch.forks.len()
    );
    for p in &present {
        let v = p.member.view();
        assert_eq!(v.resets, 0, "{} lost its group: {v:?}", p.name);
    }

    // Every bot decrypts every other's frames afterwards, and nothing from a present sender
    // fails to decrypt any more.
    assert_eq!(pull_all(&present).await, 0, "pulls after convergence");
    let before: Vec<MediaStats> = present.iter().map(|p| p.member.media_stats()).collect();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let short: Vec<String> = present
            .iter()
            .zip(&before)
            .flat_map(|(r, b)| {
                let now = r.member.media_stats();
                present
                    .iter()
                    .filter(|s| s.id != r.id)
                    .filter(move |s| {
                        now.decrypted_from(s.id) < b.decrypted_from(s.id) + FRAMES_AFTER
                    })
                    .map(move |s| format!("{} <- {}", r.name, s.name))
                    .collect::<Vec<_>>()
            })
            .collect();
        if short.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not decrypting (seed {seed}): {short:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut decrypted, mut sealed, mut unsealed, mut churn_failures, mut unattributed) =
        (0, 0, 0, 0, 0);
    for (r, b) in present.iter().zip(&before) {
        let now = r.member.media_stats();
        sealed += now.sealed;
        unsealed += now.unsealed;
        churn_failures += b.failed();
        unattributed += now.unattributed;
        for s in present.iter().filter(|s| s.id != r.id) {
            let (was, is) = (
                b.from.get(&s.id).cloned().unwrap_or_default(),
                now.from.get(&s.id).cloned().unwrap_or_default(),
            );
            decrypted += is.decrypted - was.decrypted;
            assert_eq!(
                is.failed, was.failed,
                "{} failed to decrypt {}'s frames after convergence (seed {seed}): {is:?}",
                r.name, s.name
            );
        }
        // What was decrypted is byte for byte what was sent.
        let stats = r.bot.stats().await.unwrap();
        for t in &stats.participant.subscribed {
            assert_eq!(
                t.received.corrupt, 0,
                "{} got corrupt frames (seed {seed}): {t:?}",
                r.name
            );
        }
    }
    println!(
        "after convergence: {decrypted} frames decrypted across {} sender/receiver pairs, 0 failures; \
         the present bots sealed {sealed} frames and dropped {unsealed} unsent (no key yet); \
         during the churn {churn_failures} frames failed to decrypt (no key yet or expired) and \
         {unattributed} arrived on sessions the room had not attributed yet",
        present.len() * (present.len() - 1)
    );
    assert!(
        watch.forks.is_empty(),
        "forks (seed {seed}): {:?}",
        watch.forks
    );
    assert!(
        convergence <= CONVERGENCE_BAR,
        "converged {convergence:?} after the last change, over the {CONVERGENCE_BAR:?} bar (seed {seed})"
    );
    for p in present {
        p.member.leave().await;
        let _ = p.bot.shutdown().await;
    }
}
