//! Simulcast with bandwidth adaptation through the real `satsuma-sfu` binary over real UDP on
//! 127.0.0.1: a native bot publishes three layers (`q`/`h`/`f`, about 150/500/1500 kbit/s); the
//! SFU's per-session bandwidth estimate (str0m GCC over TWCC) picks each subscriber's layer. A
//! subscriber behind a real token-bucket shaper (the bot's ingress limit) drops to a lower layer and
//! recovers once the limit is lifted, without a freeze longer than one keyframe interval and with
//! every payload byte-identical; `tracks/update` with a `preferredRid` moves a subscriber.
//!
//! The bot's layers number their VP8 pictures from far-apart starts (PictureID and TL0PICIDX), as
//! real encoders' layers do: across every switch a subscriber must still see both run on without
//! a jump (the SFU rewrites them per leg), and nothing but those descriptor bytes may differ from
//! what the publisher sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use satsuma_bot::harness::{APP_ID, APP_SECRET, SfuProcess};
use satsuma_bot::reception::ReceptionStats;
use satsuma_bot::{Bot, BotConfig, SimulcastLayer, SubscribedTrack, TrackSpec};

const CONNECT: Duration = Duration::from_secs(10);
/// The publisher's keyframe interval per layer: no freeze may be longer.
const KEYFRAME_INTERVAL_MS: f64 = 3000.0;
/// Layer indices as the payloads carry them.
const Q: u8 = 0;
const H: u8 = 1;
const F: u8 = 2;

fn sfu() -> SfuProcess {
    SfuProcess::start(
        env!("CARGO_BIN_EXE_satsuma-sfu"),
        &[
            "--log",
            "info,satsuma_sfu::forward=trace",
            "--bwe-initial-kbps",
            "1000",
        ],
    )
    .expect("start satsuma-sfu")
}

fn config(sfu: &SfuProcess) -> BotConfig {
    BotConfig::new(&sfu.base_url(), APP_ID, APP_SECRET)
}

async fn publisher(sfu: &SfuProcess) -> Bot {
    let bot = Bot::connect_with(config(sfu)).await.unwrap();
    bot.publish(&[TrackSpec::simulcast_video(
        "cam",
        SimulcastLayer::standard(),
    )])
    .await
    .unwrap();
    bot.wait_connected(CONNECT).await.unwrap();
    bot
}

async fn subscriber(sfu: &SfuProcess, publisher: &Bot) -> (Bot, SubscribedTrack) {
    let bot = Bot::connect_with(config(sfu)).await.unwrap();
    let track = bot.subscribe(publisher.session_id(), "cam").await.unwrap();
    bot.wait_connected(CONNECT).await.unwrap();
    (bot, track)
}

async fn reception(bot: &Bot) -> ReceptionStats {
    let s = bot.stats().await.unwrap();
    s.participant.subscribed[0].received.clone()
}

/// Polls until the decoded layer satisfies `want`; returns how long that took. On timeout the
/// SFU's recent log (layer decisions and estimates at debug/trace level) goes to stderr.
async fn wait_layer(
    bot: &Bot,
    sfu: &SfuProcess,
    what: &str,
    timeout: Duration,
    want: impl Fn(u8) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let r = reception(bot).await;
        if r.layer.is_some_and(&want) {
            return start.elapsed();
        }
        if start.elapsed() >= timeout {
            let log = sfu.stderr();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("{}", lines[lines.len().saturating_sub(150)..].join("\n"));
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: not reached within {timeout:?}; reception: {r:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until the decoded layer has been `layer` for `hold` without interruption.
async fn wait_stable(bot: &Bot, what: &str, timeout: Duration, layer: u8, hold: Duration) {
    let start = Instant::now();
    let mut since: Option<Instant> = None;
    loop {
        let r = reception(bot).await;
        if r.layer == Some(layer) {
            let s = *since.get_or_insert_with(Instant::now);
            if s.elapsed() >= hold {
                return;
            }
        } else {
            since = None;
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: not reached within {timeout:?}; reception: {r:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every payload verified (byte-identical but for the VP8 PictureID and TL0PICIDX), nothing
/// foreign, VP8 numbering continuous across switches, no freeze longer than a keyframe interval.
fn assert_clean(who: &str, r: &ReceptionStats) {
    assert_eq!(r.corrupt, 0, "{who}: corrupt payloads: {r:#?}");
    assert_eq!(
        (r.picture_id_jumps, r.tl0_pic_idx_jumps),
        (0, 0),
        "{who}: VP8 numbering jumped: {r:#?}"
    );
    if r.layer_switches > 0 {
        assert!(
            r.picture_id_rewritten > 0,
            "{who}: switched layers, yet nothing renumbered: {r:#?}"
        );
    }
    assert_eq!(r.foreign, 0, "{who}: foreign payloads: {r:#?}");
    assert!(r.frames_decoded > 100, "{who}: too few frames: {r:#?}");
    let freeze = r.longest_freeze_ms.unwrap();
    assert!(
        freeze <= KEYFRAME_INTERVAL_MS,
        "{who}: froze for {freeze} ms: {r:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_subscriber_drops_to_a_lower_layer_and_recovers_without_freezing() {
    let sfu = sfu();
    let publisher = publisher(&sfu).await;
    let (a, _) = subscriber(&sfu, &publisher).await;
    let b_start = Instant::now();
    let (b, _) = subscriber(&sfu, &publisher).await;

    // Both unconstrained: the estimate grows until both get the top layer. (A new leg starts on
    // the first keyframe of any layer and the selector then decides: wait for f to hold.)
    let t = Instant::now();
    wait_stable(
        &a,
        "A on f",
        Duration::from_secs(25),
        F,
        Duration::from_secs(2),
    )
    .await;
    wait_stable(
        &b,
        "B on f",
        Duration::from_secs(25),
        F,
        Duration::from_secs(2),
    )
    .await;
    eprintln!(
        "unconstrained: A and B steadily on f after {:?}",
        t.elapsed()
    );

    // B's link shrinks to 400 kbit/s: its estimate falls and the SFU moves it down.
    eprintln!("limit at {:?} into B", b_start.elapsed());
    b.set_ingress_limit(Some(400_000));
    let down = wait_layer(&b, &sfu, "B below f", Duration::from_secs(15), |l| l < F).await;
    let settled = wait_layer(&b, &sfu, "B on q", Duration::from_secs(15), |l| l == Q).await;
    eprintln!("limited to 400 kbit/s: B below f after {down:?}, on q after a further {settled:?}");
    // It stays down while the limit holds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = reception(&b).await;
    assert!(
        r.layer.is_some_and(|l| l < H),
        "B went up behind the limit: {r:#?}"
    );

    // The limit is lifted: B recovers to the top layer.
    eprintln!("lift at {:?} into B", b_start.elapsed());
    b.set_ingress_limit(None);
    let up = wait_layer(&b, &sfu, "B back on f", Duration::from_secs(40), |l| l == F).await;
    eprintln!("limit lifted: B back on f after {up:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let ra = reception(&a).await;
    let rb = reception(&b).await;
    eprintln!("A: {ra:#?}\nB: {rb:#?}");
    eprintln!("{}", sfu.stderr());
    assert_clean("A", &ra);
    assert_clean("B", &rb);
    assert_eq!(ra.layer, Some(F));
    assert_eq!(rb.layer, Some(F));
    // A never lost anything: its layer switches (if any) are not counted as loss.
    assert_eq!(ra.lost, 0, "A lost packets: {ra:#?}");
    // B went down and up again, each time on a keyframe of the new layer.
    assert!(rb.layer_switches >= 2, "B: {rb:#?}");
    let b_layers: Vec<u8> = rb
        .layers
        .iter()
        .filter(|l| l.frames_decoded > 0)
        .map(|l| l.layer)
        .collect();
    assert!(b_layers.contains(&Q) && b_layers.contains(&F), "B: {rb:#?}");

    let m = sfu.metrics().await.unwrap();
    let down_switches = m.get("satsuma_sfu_layer_switches_total{direction=\"down\"}");
    let up_switches = m.get("satsuma_sfu_layer_switches_total{direction=\"up\"}");
    eprintln!(
        "metrics: switches down={down_switches} up={up_switches}, estimates={}, unused layer packets={}",
        m.get("satsuma_sfu_bandwidth_estimate_bps_count"),
        m.get("satsuma_sfu_unused_layer_packets_total"),
    );
    assert!(down_switches >= 1.0, "{m:#?}");
    assert!(up_switches >= 1.0, "{m:#?}");
    assert!(m.get("satsuma_sfu_bandwidth_estimate_bps_count") > 0.0);
    // While every subscriber is on f, nobody takes q and h: those packets are not forwarded.
    assert!(m.get("satsuma_sfu_unused_layer_packets_total") > 0.0);

    for bot in [a, b, publisher] {
        bot.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_rid_moves_an_unconstrained_subscriber_to_that_layer() {
    let sfu = sfu();
    let publisher = publisher(&sfu).await;
    let (sub, track) = subscriber(&sfu, &publisher).await;
    wait_stable(
        &sub,
        "on f",
        Duration::from_secs(25),
        F,
        Duration::from_secs(2),
    )
    .await;

    sub.set_preferred_rid(&track, Some("q")).await.unwrap();
    let t = wait_layer(&sub, &sfu, "on q", Duration::from_secs(10), |l| l == Q).await;
    eprintln!("preferredRid q: on q after {t:?}");
    // It stays there although the bandwidth would allow more.
    wait_stable(
        &sub,
        "stays on q",
        Duration::from_secs(5),
        Q,
        Duration::from_secs(3),
    )
    .await;

    sub.set_preferred_rid(&track, Some("h")).await.unwrap();
    let t = wait_layer(&sub, &sfu, "on h", Duration::from_secs(20), |l| l == H).await;
    eprintln!("preferredRid h: on h after {t:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let r = reception(&sub).await;
    assert_eq!(r.layer, Some(H), "{r:#?}");
    assert_clean("subscriber", &r);
    assert_eq!(r.lost, 0, "{r:#?}");
    assert!(r.layer_switches >= 2, "{r:#?}");
    sub.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
}
