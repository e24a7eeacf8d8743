//! Shard failures and publisher budgets against the real `satsuma-sfu` binary over real UDP on
//! 127.0.0.1, driven by native bots (`satsuma-bot`).
//!
//! * A panic injected into one shard (test hook, `--test-hooks`) turns `/healthz` to 503 within
//!   1 s, naming the shard, bumps `satsuma_sfu_shard_panics_total`, closes that shard's sessions
//!   (their API calls answer 404), and a call on the other shard goes on receiving every packet.
//!   After the hold period `/healthz` is 200 again and the restarted shard forwards new sessions.
//! * A publisher above `--session-max-ingress-kbps` is cut to its budget (drops counted under
//!   `ingress_bitrate`), while a publisher within its budget loses nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use satsuma_bot::harness::{APP_ID, APP_SECRET, SfuProcess, fetch_metrics};
use satsuma_bot::participant::SubscribedStats;
use satsuma_bot::{Bot, BotConfig, BotStats, MediaKind, TrackSpec};
use serde_json::Value;

const CONNECT: Duration = Duration::from_secs(10);

fn config(sfu: &SfuProcess) -> BotConfig {
    BotConfig::new(&sfu.base_url(), APP_ID, APP_SECRET)
}

fn track(name: &str, kind: MediaKind) -> Vec<TrackSpec> {
    vec![TrackSpec {
        name: name.into(),
        kind,
        simulcast: Vec::new(),
    }]
}

fn subscribed<'a>(s: &'a BotStats, name: &str) -> &'a SubscribedStats {
    s.participant
        .subscribed
        .iter()
        .find(|p| p.track_name == name)
        .unwrap_or_else(|| panic!("no subscribed track {name} in {s:#?}"))
}

async fn shard_sessions(sfu: &SfuProcess) -> (f64, f64) {
    let m = fetch_metrics(&sfu.base_url()).await.unwrap();
    (
        m.get("satsuma_sfu_shard_sessions{shard=\"0\"}"),
        m.get("satsuma_sfu_shard_sessions{shard=\"1\"}"),
    )
}

/// Waits until the shard gauges read `want` (they are updated after each batch of work).
async fn until_shards(sfu: &SfuProcess, want: (f64, f64)) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let got = shard_sessions(sfu).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < end,
            "shard sessions {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A publisher of `name` and a connected subscriber pulling it; the publisher's session is
/// created first. Returns (publisher, subscriber).
async fn pair(sfu: &SfuProcess, name: &str, publisher_cfg: BotConfig) -> (Bot, Bot) {
    let publisher = Bot::connect_with(publisher_cfg).await.unwrap();
    publisher
        .publish(&track(name, MediaKind::Audio))
        .await
        .unwrap();
    let subscriber = Bot::connect_with(config(sfu)).await.unwrap();
    subscriber
        .subscribe_many(&[(publisher.session_id().to_owned(), name.to_owned())])
        .await
        .unwrap();
    publisher.wait_connected(CONNECT).await.unwrap();
    subscriber.wait_connected(CONNECT).await.unwrap();
    (publisher, subscriber)
}

async fn received(bot: &Bot, name: &str) -> (u64, u64) {
    let s = bot.stats().await.unwrap();
    let r = &subscribed(&s, name).received;
    (r.unique, r.lost)
}

async fn until_received(bot: &Bot, name: &str, packets: u64) {
    let end = Instant::now() + Duration::from_secs(10);
    while received(bot, name).await.0 < packets {
        assert!(Instant::now() < end, "{name}: fewer than {packets} packets");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get_session(http: &reqwest::Client, sfu: &SfuProcess, id: &str) -> reqwest::StatusCode {
    http.get(format!("{}/v1/apps/{APP_ID}/sessions/{id}", sfu.base_url()))
        .bearer_auth(APP_SECRET)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_shard_fails_healthz_and_the_other_shard_keeps_forwarding() {
    let mut sfu = SfuProcess::start(
        env!("CARGO_BIN_EXE_satsuma-sfu"),
        &["--shards", "2", "--test-hooks", "--shard-panic-hold", "3"],
    )
    .expect("start satsuma-sfu");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = sfu.base_url();

    // Sessions are placed round robin: the bystander pair on shard 1 (created 2nd and 4th),
    // the victim pair on shard 0 (1st and 3rd). Create them in that order and check.
    let victim_pub = Bot::connect_with(config(&sfu)).await.unwrap();
    until_shards(&sfu, (1.0, 0.0)).await;
    let bystander_pub = Bot::connect_with(config(&sfu)).await.unwrap();
    until_shards(&sfu, (1.0, 1.0)).await;
    victim_pub
        .publish(&track("vmic", MediaKind::Audio))
        .await
        .unwrap();
    bystander_pub
        .publish(&track("bmic", MediaKind::Audio))
        .await
        .unwrap();
    let victim_sub = Bot::connect_with(config(&sfu)).await.unwrap();
    until_shards(&sfu, (2.0, 1.0)).await;
    let bystander_sub = Bot::connect_with(config(&sfu)).await.unwrap();
    until_shards(&sfu, (2.0, 2.0)).await;
    victim_sub
        .subscribe_many(&[(victim_pub.session_id().to_owned(), "vmic".to_owned())])
        .await
        .unwrap();
    bystander_sub
        .subscribe_many(&[(bystander_pub.session_id().to_owned(), "bmic".to_owned())])
        .await
        .unwrap();
    for bot in [&victim_pub, &bystander_pub, &victim_sub, &bystander_sub] {
        bot.wait_connected(CONNECT).await.unwrap();
    }
    until_received(&bystander_sub, "bmic", 25).await;
    until_received(&victim_sub, "vmic", 25).await;
    let resp = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    // The hook exists only with --test-hooks (checked below on a server without it).
    let (before, lost_before) = received(&bystander_sub, "bmic").await;
    assert_eq!(lost_before, 0);
    let injected = Instant::now();
    let resp = http
        .post(format!("{base}/v1/test/shards/0/panic"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = loop {
        let resp = http.get(format!("{base}/healthz")).send().await.unwrap();
        if resp.status() == 503 {
            break resp.json().await.unwrap();
        }
        assert!(
            injected.elapsed() < Duration::from_secs(1),
            "/healthz still {} 1 s after the panic",
            resp.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let visible_after = injected.elapsed();
    eprintln!("/healthz 503 {visible_after:?} after the injected panic: {body}");
    assert!(visible_after < Duration::from_secs(1));
    assert_eq!(body["status"], "unhealthy");
    let shards = body["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 1, "{body}");
    assert_eq!(shards[0]["shard"], 0);
    assert_eq!(shards[0]["state"], "restarted");
    assert_eq!(shards[0]["panics"], 1);

    let m = fetch_metrics(&base).await.unwrap();
    assert_eq!(m.get("satsuma_sfu_shard_panics_total{shard=\"0\"}"), 1.0);
    assert_eq!(m.get("satsuma_sfu_shard_panics_total{shard=\"1\"}"), 0.0);
    // The victims' sessions are closed; the bystanders' are not.
    assert_eq!(get_session(&http, &sfu, victim_pub.session_id()).await, 404);
    assert_eq!(get_session(&http, &sfu, victim_sub.session_id()).await, 404);
    assert_eq!(
        get_session(&http, &sfu, bystander_pub.session_id()).await,
        200
    );
    assert_eq!(
        get_session(&http, &sfu, bystander_sub.session_id()).await,
        200
    );
    until_shards(&sfu, (0.0, 2.0)).await;
    assert_eq!(m.get("satsuma_sfu_sessions"), 2.0);

    // The bystander call keeps flowing: 2 s more of 50 packets/s, nothing lost.
    let (victim_at_panic, _) = received(&victim_sub, "vmic").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after, lost_after) = received(&bystander_sub, "bmic").await;
    eprintln!(
        "bystander: {} packets in the 2 s after the panic, lost {lost_after}",
        after - before
    );
    assert!(
        after - before >= 80,
        "bystander got {} packets",
        after - before
    );
    assert_eq!(lost_after, 0, "the bystander lost packets");
    let (victim_later, _) = received(&victim_sub, "vmic").await;
    assert!(
        victim_later <= victim_at_panic + 5,
        "the victim's closed call still got media: {victim_at_panic} -> {victim_later}"
    );

    // After the hold period /healthz is healthy again, and the restarted shard takes a new
    // call (publisher on shard 0, subscriber on shard 1: round robin goes on at 0).
    let hold_end = injected + Duration::from_secs(3);
    tokio::time::sleep_until(tokio::time::Instant::from_std(hold_end)).await;
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let status = http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < end,
            "/healthz still {status} after the hold"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (new_pub, new_sub) = pair(&sfu, "nmic", config(&sfu)).await;
    until_shards(&sfu, (1.0, 3.0)).await;
    until_received(&new_sub, "nmic", 25).await;
    assert_eq!(received(&new_sub, "nmic").await.1, 0);
    assert!(sfu.is_running());

    for bot in [
        new_sub,
        new_pub,
        bystander_sub,
        bystander_pub,
        victim_sub,
        victim_pub,
    ] {
        bot.vanish();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_panic_hook_does_not_exist_without_test_hooks() {
    let sfu = SfuProcess::start(env!("CARGO_BIN_EXE_satsuma-sfu"), &["--shards", "2"])
        .expect("start satsuma-sfu");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = http
        .post(format!("{}/v1/test/shards/0/panic", sfu.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = http
        .get(format!("{}/healthz", sfu.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let m = fetch_metrics(&sfu.base_url()).await.unwrap();
    assert_eq!(m.get("satsuma_sfu_shard_panics_total{shard=\"0\"}"), 0.0);
}

/// A video publisher sending about 1.2 Mbit/s against a budget of 200 kbit/s is cut to the
/// budget (plus its one-second burst); an audio publisher well within the same budget loses
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_above_its_ingress_budget_is_cut_to_it() {
    let sfu = SfuProcess::start(
        env!("CARGO_BIN_EXE_satsuma-sfu"),
        &["--session-max-ingress-kbps", "200"],
    )
    .expect("start satsuma-sfu");
    // Audio: 50 packets/s of 100 bytes, ~50 kbit/s with headers: within the budget.
    let (audio_pub, audio_sub) = pair(&sfu, "mic", config(&sfu)).await;
    // Video: 30 fps, 5 packets of 1000 bytes per frame: ~1.2 Mbit/s.
    let mut video_cfg = config(&sfu);
    video_cfg.participant.video.delta_packets = 5;
    video_cfg.participant.video.keyframe_packets = 5;
    video_cfg.participant.video.payload_len = 1000;
    let video_pub = Bot::connect_with(video_cfg).await.unwrap();
    video_pub
        .publish(&track("cam", MediaKind::Video))
        .await
        .unwrap();
    let video_sub = Bot::connect_with(config(&sfu)).await.unwrap();
    video_sub
        .subscribe_many(&[(video_pub.session_id().to_owned(), "cam".to_owned())])
        .await
        .unwrap();
    video_pub.wait_connected(CONNECT).await.unwrap();
    video_sub.wait_connected(CONNECT).await.unwrap();
    until_received(&video_sub, "cam", 10).await;

    let s0 = video_sub.stats().await.unwrap();
    let bytes0 = subscribed(&s0, "cam").received.bytes;
    let sent0 = video_pub.stats().await.unwrap().participant.published[0]
        .sent
        .bytes;
    let window = Duration::from_secs(4);
    tokio::time::sleep(window).await;
    let s1 = video_sub.stats().await.unwrap();
    let bytes1 = subscribed(&s1, "cam").received.bytes;
    let sent1 = video_pub.stats().await.unwrap().participant.published[0]
        .sent
        .bytes;
    let sent_kbps = (sent1 - sent0) as f64 * 8.0 / window.as_secs_f64() / 1000.0;
    let got_kbps = (bytes1 - bytes0) as f64 * 8.0 / window.as_secs_f64() / 1000.0;
    eprintln!(
        "video publisher sent {sent_kbps:.0} kbit/s, its subscriber got {got_kbps:.0} kbit/s (budget 200)"
    );
    assert!(
        sent_kbps > 800.0,
        "the publisher sent only {sent_kbps} kbit/s"
    );
    // The budget counts RTP headers too, and the first second's burst may fall in the window.
    assert!(
        got_kbps < 200.0 + 64.0 * 8.0 / 4.0 + 20.0,
        "{got_kbps} kbit/s got through"
    );
    assert!(got_kbps > 100.0, "only {got_kbps} kbit/s got through");
    let m = fetch_metrics(&sfu.base_url()).await.unwrap();
    let dropped = m.get("satsuma_sfu_dropped_total{reason=\"ingress_bitrate\"}");
    eprintln!("dropped for ingress_bitrate: {dropped}");
    assert!(dropped > 100.0, "{dropped}");

    let (packets, lost) = received(&audio_sub, "mic").await;
    assert!(packets > 150, "{packets}");
    assert_eq!(
        lost, 0,
        "the audio publisher within its budget lost packets"
    );
    for bot in [video_sub, video_pub, audio_sub, audio_pub] {
        bot.vanish();
    }
}
