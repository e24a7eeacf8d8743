//! Keyframe replay over real UDP (issue 18): a subscriber that pulls a video track gets the
//! packets the SFU cached since the track's last keyframe at once, and the publisher is not asked
//! for a keyframe. The publisher's keyframe interval is 10 s (the bot's default) and the test runs
//! within its first seconds, so a fast keyframe at the late subscriber that the publisher neither
//! was asked for nor sent can only be the replay; the same join with the replay off
//! (`--keyframe-replay=false`) needs the publisher's answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use satsuma_bot::harness::{APP_ID, APP_SECRET, SfuProcess};
use satsuma_bot::participant::{PublishedStats, SubscribedStats};
use satsuma_bot::{Bot, BotConfig, BotStats, MediaKind, TrackSpec};

const CONNECT: Duration = Duration::from_secs(10);

fn config(sfu: &SfuProcess) -> BotConfig {
    BotConfig::new(&sfu.base_url(), APP_ID, APP_SECRET)
}

fn published<'a>(s: &'a BotStats, name: &str) -> &'a PublishedStats {
    s.participant
        .published
        .iter()
        .find(|p| p.track_name == name)
        .unwrap_or_else(|| panic!("no published track {name} in {s:#?}"))
}

fn subscribed<'a>(s: &'a BotStats, name: &str) -> Option<&'a SubscribedStats> {
    s.participant
        .subscribed
        .iter()
        .find(|p| p.track_name == name)
}

/// What one late join measured.
#[derive(Debug)]
struct Join {
    /// From the subscribe call to the first keyframe the subscriber received.
    first_keyframe: Duration,
    /// Keyframe requests the publisher received during the join.
    requests: u64,
    /// Keyframes the publisher sent during the join.
    keyframes: u64,
}

/// A subscriber whose transport is already up (it publishes a microphone) pulls the camera of a
/// publisher that started half a second before; returns the join's figures once the subscriber
/// has a keyframe, after checking its stream has no gap or corruption.
async fn late_join(sfu: &SfuProcess) -> Join {
    let late = Bot::connect_with(config(sfu)).await.unwrap();
    late.publish(&[TrackSpec {
        name: "mic".into(),
        kind: MediaKind::Audio,
        simulcast: Vec::new(),
    }])
    .await
    .unwrap();
    late.wait_connected(CONNECT).await.unwrap();
    let mut pub_cfg = config(sfu);
    pub_cfg.participant.video.keyframe_interval = Some(Duration::from_secs(10));
    let publisher = Bot::connect_with(pub_cfg).await.unwrap();
    publisher.publish_video("cam").await.unwrap();
    publisher.wait_connected(CONNECT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = published(&publisher.stats().await.unwrap(), "cam").sent;
    assert!(
        before.keyframes >= 1,
        "the publisher's first frame: {before:?}"
    );

    let started = tokio::time::Instant::now();
    late.subscribe(publisher.session_id(), "cam").await.unwrap();
    let first_keyframe = loop {
        let s = late.stats().await.unwrap();
        if subscribed(&s, "cam").is_some_and(|r| r.received.keyframes > 0) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no keyframe at the late subscriber: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let after = published(&publisher.stats().await.unwrap(), "cam").sent;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let s = late.stats().await.unwrap();
    let r = &subscribed(&s, "cam").unwrap().received;
    assert_eq!(r.corrupt, 0, "{r:?}");
    assert!(r.packets > 10, "{r:?}");
    assert_eq!(
        (r.lost, r.rtp_seq_offset_changes),
        (0, 0),
        "the late subscriber's stream has gaps or renumbering: {r:?}"
    );
    Join {
        first_keyframe,
        requests: after.keyframe_requests - before.keyframe_requests,
        keyframes: after.keyframes - before.keyframes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_subscriber_gets_the_cached_keyframe_without_a_request_to_the_publisher() {
    let sfu = SfuProcess::start(
        env!("CARGO_BIN_EXE_satsuma-sfu"),
        &["--keyframe-replay=true"],
    )
    .expect("start the SFU");
    let join = late_join(&sfu).await;
    eprintln!("keyframe replay on: {join:?}");
    assert_eq!(
        (join.requests, join.keyframes),
        (0, 0),
        "the publisher was asked for, or sent, a keyframe: {join:?}"
    );
    // Generous for a loaded machine: the join is one API round trip and a renegotiation.
    assert!(join.first_keyframe < Duration::from_secs(3), "{join:?}");
    let m = sfu.metrics().await.unwrap();
    assert_eq!(
        m.get("satsuma_sfu_keyframe_replays_total{result=\"replayed\"}"),
        1.0
    );
    assert!(m.get("satsuma_sfu_keyframe_replay_packets_total") > 1.0);
    assert!(m.sum("satsuma_sfu_keyframe_cache_bytes") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_replay_the_late_subscriber_waits_for_the_publishers_answer() {
    let sfu = SfuProcess::start(
        env!("CARGO_BIN_EXE_satsuma-sfu"),
        &["--keyframe-replay=false"],
    )
    .expect("start the SFU");
    let join = late_join(&sfu).await;
    eprintln!("keyframe replay off: {join:?}");
    assert!(
        join.requests >= 1 && join.keyframes >= 1,
        "the keyframe must have come from the publisher: {join:?}"
    );
    let m = sfu.metrics().await.unwrap();
    assert_eq!(m.sum("satsuma_sfu_keyframe_replays_total"), 0.0);
}
