//! Track and session lifecycle through the real `satsuma-sfu` binary with native bots over UDP:
//! closing a track stops delivery and frees it; a session that vanishes is collected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use satsuma_bot::api::ApiError;
use satsuma_bot::harness::{APP_ID, APP_SECRET, SfuProcess};
use satsuma_bot::participant::SubscribedStats;
use satsuma_bot::{Bot, BotConfig, BotError, BotStats, MediaKind, SfuClient, TrackSpec};

const CONNECT: Duration = Duration::from_secs(10);

fn config(sfu: &SfuProcess) -> BotConfig {
    BotConfig::new(&sfu.base_url(), APP_ID, APP_SECRET)
}

fn subscribed<'a>(s: &'a BotStats, name: &str) -> &'a SubscribedStats {
    s.participant
        .subscribed
        .iter()
        .find(|p| p.track_name == name)
        .unwrap_or_else(|| panic!("no subscribed track {name} in {s:#?}"))
}

fn packets(s: &BotStats, name: &str) -> u64 {
    subscribed(s, name).received.packets
}

async fn poll_until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_track_stops_delivery_and_frees_it() {
    let sfu = SfuProcess::start(env!("CARGO_BIN_EXE_satsuma-sfu"), &[]).unwrap();
    let publisher = Bot::connect_with(config(&sfu)).await.unwrap();
    let tracks = publisher
        .publish(&[
            TrackSpec {
                name: "mic".into(),
                kind: MediaKind::Audio,
                simulcast: Vec::new(),
            },
            TrackSpec {
                name: "cam".into(),
                kind: MediaKind::Video,
                simulcast: Vec::new(),
            },
        ])
        .await
        .unwrap();
    let cam_mid = tracks
        .iter()
        .find(|t| t.track_name == "cam")
        .unwrap()
        .mid
        .clone();
    let sub = Bot::connect_with(config(&sfu)).await.unwrap();
    let pulls = sub
        .subscribe_many(&[
            (publisher.session_id().to_owned(), "mic".to_owned()),
            (publisher.session_id().to_owned(), "cam".to_owned()),
        ])
        .await
        .unwrap();
    sub.wait_connected(CONNECT).await.unwrap();
    poll_until(
        "media flows on both tracks",
        Duration::from_secs(5),
        || async {
            let s = sub.stats().await.unwrap();
            packets(&s, "mic") > 20 && packets(&s, "cam") > 20
        },
    )
    .await;
    let m0 = sfu.metrics().await.unwrap();
    assert_eq!(m0.get("satsuma_sfu_tracks"), 2.0, "two live tracks");
    assert_eq!(
        m0.get("satsuma_sfu_subscriptions"),
        2.0,
        "two live subscriptions"
    );

    // The publisher closes its video track.
    publisher.close_track(&cam_mid).await.unwrap();
    let state = publisher.session_state().await.unwrap();
    assert!(
        !state
            .tracks
            .iter()
            .any(|t| t.mid == cam_mid && t.status == satsuma_bot::api::TrackStatus::Active),
        "closed track still active: {state:?}"
    );
    // Give in-flight packets a moment, then delivery must have stopped for video only.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s1 = sub.stats().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s2 = sub.stats().await.unwrap();
    assert_eq!(
        packets(&s1, "cam"),
        packets(&s2, "cam"),
        "video still delivered after the publisher closed it"
    );
    assert!(
        packets(&s2, "mic") > packets(&s1, "mic") + 20,
        "audio must keep flowing"
    );
    assert_eq!(subscribed(&s2, "mic").received.corrupt, 0);
    let m1 = sfu.metrics().await.unwrap();
    assert_eq!(
        m1.get("satsuma_sfu_tracks"),
        1.0,
        "the closed track is freed"
    );

    // Nobody can pull the closed track any more.
    let late = Bot::connect_with(config(&sfu)).await.unwrap();
    match late.subscribe(publisher.session_id(), "cam").await {
        Err(BotError::Track { .. }) | Err(BotError::Api(ApiError::Status { .. })) => {}
        other => panic!("pulling a closed track must fail, got {other:?}"),
    }

    // The subscriber closes its audio pull: delivery stops, the subscription is freed.
    let mic_mid = pulls
        .iter()
        .find(|t| t.track_name == "mic")
        .unwrap()
        .mid
        .clone();
    sub.close_track(&mic_mid).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s3 = sub.stats().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s4 = sub.stats().await.unwrap();
    assert_eq!(
        packets(&s3, "mic"),
        packets(&s4, "mic"),
        "audio still delivered after closing the pull"
    );
    poll_until("subscriptions freed", Duration::from_secs(3), || async {
        sfu.metrics()
            .await
            .unwrap()
            .get("satsuma_sfu_subscriptions")
            == 0.0
    })
    .await;
    // The publisher is unaffected.
    let ps = publisher.stats().await.unwrap();
    assert!(
        ps.participant
            .published
            .iter()
            .any(|p| p.track_name == "mic" && p.sent.packets > 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_session_is_collected() {
    let sfu = SfuProcess::start(
        env!("CARGO_BIN_EXE_satsuma-sfu"),
        &["--session-timeout", "1", "--track-timeout", "1"],
    )
    .unwrap();
    let publisher = Bot::connect_with(config(&sfu)).await.unwrap();
    publisher.publish_audio("mic").await.unwrap();
    publisher.publish_video("cam").await.unwrap();
    publisher.wait_connected(CONNECT).await.unwrap();
    let sub = Bot::connect_with(config(&sfu)).await.unwrap();
    sub.subscribe(publisher.session_id(), "cam").await.unwrap();
    sub.wait_connected(CONNECT).await.unwrap();
    poll_until("video flows", Duration::from_secs(5), || async {
        packets(&sub.stats().await.unwrap(), "cam") > 10
    })
    .await;
    let m0 = sfu.metrics().await.unwrap();
    assert_eq!(m0.get("satsuma_sfu_sessions"), 2.0);

    let gone = publisher.session_id().to_owned();
    let api: SfuClient = publisher.api().clone();
    publisher.vanish();
    let vanished_at = tokio::time::Instant::now();

    // str0m's ICE-lite agent declares a silent peer disconnected after 15 s without binding requests;
    // the session timeout (1 s here) counts from then.
    poll_until("vanished session collected", Duration::from_secs(30), || async {
        matches!(api.session(&gone).await, Err(ApiError::Status { status, .. }) if status.as_u16() == 404)
    })
    .await;
    eprintln!(
        "vanished session collected after {:?}",
        vanished_at.elapsed()
    );
    let m1 = sfu.metrics().await.unwrap();
    assert!(
        m1.get("satsuma_sfu_sessions_collected_total") >= 1.0,
        "collection not counted"
    );
    assert_eq!(m1.get("satsuma_sfu_tracks"), 0.0, "its tracks are freed");
    // The subscriber's session is alive (its transport is up) and stops receiving.
    sub.session_state().await.unwrap();
    let s1 = sub.stats().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        packets(&s1, "cam"),
        packets(&sub.stats().await.unwrap(), "cam")
    );
    let _ = sub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_track_is_collected_while_its_session_lives() {
    // 2 s, not 1: a published track's silence clock starts at publish, and on a busy 2-core
    // machine the publisher's first packet can come more than 1 s later (ICE + DTLS), which
    // collected the track before the subscriber pulled it (seen once in a full suite run).
    let sfu =
        SfuProcess::start(env!("CARGO_BIN_EXE_satsuma-sfu"), &["--track-timeout", "2"]).unwrap();
    let publisher = Bot::connect_with(config(&sfu)).await.unwrap();
    publisher.publish_audio("mic").await.unwrap();
    publisher.wait_connected(CONNECT).await.unwrap();
    let sub = Bot::connect_with(config(&sfu)).await.unwrap();
    sub.subscribe(publisher.session_id(), "mic").await.unwrap();
    sub.wait_connected(CONNECT).await.unwrap();
    poll_until("audio flows", Duration::from_secs(5), || async {
        packets(&sub.stats().await.unwrap(), "mic") > 10
    })
    .await;
    assert_eq!(sfu.metrics().await.unwrap().get("satsuma_sfu_tracks"), 1.0);

    // The publisher stays connected but stops sending: only the track is collected.
    publisher.set_sending(false).await.unwrap();
    poll_until(
        "silent track collected",
        Duration::from_secs(10),
        || async { sfu.metrics().await.unwrap().get("satsuma_sfu_tracks") == 0.0 },
    )
    .await;
    let m = sfu.metrics().await.unwrap();
    assert!(m.get("satsuma_sfu_tracks_collected_total") >= 1.0);
    assert_eq!(m.get("satsuma_sfu_sessions"), 2.0, "both sessions live on");
    publisher.session_state().await.unwrap();
    let late = Bot::connect_with(config(&sfu)).await.unwrap();
    assert!(
        late.subscribe(publisher.session_id(), "mic").await.is_err(),
        "a collected track cannot be pulled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_track_name_can_be_published_and_pulled_again() {
    let sfu = SfuProcess::start(env!("CARGO_BIN_EXE_satsuma-sfu"), &[]).unwrap();
    let publisher = Bot::connect_with(config(&sfu)).await.unwrap();
    let first = publisher.publish_video("cam").await.unwrap();
    publisher.wait_connected(CONNECT).await.unwrap();
    publisher.close_track(&first.mid).await.unwrap();
    // Same name, new transceiver on the same PeerConnection.
    let second = publisher.publish_video("cam").await.unwrap();
    assert_ne!(first.mid, second.mid);
    let sub = Bot::connect_with(config(&sfu)).await.unwrap();
    sub.subscribe(publisher.session_id(), "cam").await.unwrap();
    sub.wait_connected(CONNECT).await.unwrap();
    poll_until(
        "republished video flows",
        Duration::from_secs(5),
        || async { packets(&sub.stats().await.unwrap(), "cam") > 20 },
    )
    .await;
    let s = sub.stats().await.unwrap();
    let r = &subscribed(&s, "cam").received;
    let ps = publisher.stats().await.unwrap();
    let sent = ps
        .participant
        .published
        .iter()
        .find(|p| p.mid == second.mid)
        .unwrap();
    assert_eq!(r.track_id, Some(sent.track_id), "payloads of the new track");
    assert_eq!((r.corrupt, r.foreign), (0, 0));
    assert_eq!(sfu.metrics().await.unwrap().get("satsuma_sfu_tracks"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_subscriber_does_not_disturb_the_others() {
    let sfu = SfuProcess::start(env!("CARGO_BIN_EXE_satsuma-sfu"), &[]).unwrap();
    let publisher = Bot::connect_with(config(&sfu)).await.unwrap();
    publisher.publish_audio("mic").await.unwrap();
    publisher.publish_video("cam").await.unwrap();
    let pulls = [
        (publisher.session_id().to_owned(), "mic".to_owned()),
        (publisher.session_id().to_owned(), "cam".to_owned()),
    ];
    let stays = Bot::connect_with(config(&sfu)).await.unwrap();
    stays.subscribe_many(&pulls).await.unwrap();
    let leaves = Bot::connect_with(config(&sfu)).await.unwrap();
    leaves.subscribe_many(&pulls).await.unwrap();
    stays.wait_connected(CONNECT).await.unwrap();
    leaves.wait_connected(CONNECT).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Its socket closes without a word; the SFU keeps sending to a dead port for a while.
    leaves.vanish();
    let s1 = stays.stats().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s2 = stays.stats().await.unwrap();
    for name in ["mic", "cam"] {
        let (r1, r2) = (
            &subscribed(&s1, name).received,
            &subscribed(&s2, name).received,
        );
        assert!(
            r2.unique > r1.unique + 50,
            "{name}: {} -> {}",
            r1.unique,
            r2.unique
        );
        assert_eq!(
            (r2.lost, r2.corrupt, r2.duplicates),
            (0, 0, 0),
            "{name}: {r2:?}"
        );
    }
}
