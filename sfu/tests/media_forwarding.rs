//! Media forwarding through the real `satsuma-sfu` binary over real UDP on 127.0.0.1, driven by
//! native bots (`satsuma-bot`): fan-out with byte-identical payloads, a late joiner's keyframe (PLI
//! path), two sessions that push and pull each other at the same moment, and a publisher whose
//! subscribers sit on other shards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use satsuma_bot::harness::{APP_ID, APP_SECRET, SfuProcess};
use satsuma_bot::participant::{PublishedStats, SubscribedStats};
use satsuma_bot::{Bot, BotConfig, BotStats, MediaKind, TrackSpec};

fn sfu() -> SfuProcess {
    SfuProcess::start(env!("CARGO_BIN_EXE_satsuma-sfu"), &[]).expect("start satsuma-sfu")
}

fn config(sfu: &SfuProcess) -> BotConfig {
    BotConfig::new(&sfu.base_url(), APP_ID, APP_SECRET)
}

fn av() -> Vec<TrackSpec> {
    vec![
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
    ]
}

fn published<'a>(s: &'a BotStats, name: &str) -> &'a PublishedStats {
    s.participant
        .published
        .iter()
        .find(|p| p.track_name == name)
        .unwrap_or_else(|| panic!("no published track {name} in {s:#?}"))
}

fn subscribed<'a>(s: &'a BotStats, name: &str) -> &'a SubscribedStats {
    s.participant
        .subscribed
        .iter()
        .find(|p| p.track_name == name)
        .unwrap_or_else(|| panic!("no subscribed track {name} in {s:#?}"))
}

const CONNECT: Duration = Duration::from_secs(10);

/// A publisher of "mic" and "cam" (not sending yet) and five connected subscribers pulling both.
async fn publisher_and_five_subscribers(sfu: &SfuProcess) -> (Bot, Vec<Bot>) {
    let mut pub_cfg = config(sfu);
    pub_cfg.participant.send_on_publish = false;
    let publisher = Bot::connect_with(pub_cfg).await.unwrap();
    publisher.publish(&av()).await.unwrap();
    publisher.wait_connected(CONNECT).await.unwrap();
    let mut subscribers = Vec::new();
    for _ in 0..5 {
        let bot = Bot::connect_with(config(sfu)).await.unwrap();
        let pulls = [
            (publisher.session_id().to_owned(), "mic".to_owned()),
            (publisher.session_id().to_owned(), "cam".to_owned()),
        ];
        let subs = bot.subscribe_many(&pulls).await.unwrap();
        assert_eq!(subs.len(), 2);
        bot.wait_connected(CONNECT).await.unwrap();
        subscribers.push(bot);
    }
    (publisher, subscribers)
}

async fn shutdown_all(publisher: Bot, subscribers: Vec<Bot>) {
    for bot in subscribers {
        bot.shutdown().await.unwrap();
    }
    publisher.shutdown().await.unwrap();
}

/// Every subscriber got every packet of "mic" and "cam" exactly once, byte-identical, with RTP
/// numbering in step with the payloads.
async fn assert_every_payload_arrived(ps: &BotStats, subscribers: &[Bot]) {
    for name in ["mic", "cam"] {
        let sent = published(ps, name).sent;
        assert!(
            sent.packets > 50,
            "{name}: only {} packets sent",
            sent.packets
        );
        for (i, bot) in subscribers.iter().enumerate() {
            let s = bot.stats().await.unwrap();
            let r = &subscribed(&s, name).received;
            assert_eq!(
                r.corrupt, 0,
                "subscriber {i} {name}: corrupt payloads: {r:?}"
            );
            assert_eq!(
                r.foreign, 0,
                "subscriber {i} {name}: payloads of another track"
            );
            assert_eq!(r.duplicates, 0, "subscriber {i} {name}: duplicates");
            assert_eq!(
                (r.first_seq, r.last_seq, r.unique),
                (sent.first_seq, sent.last_seq, sent.packets),
                "subscriber {i} {name}: received {r:?}, sent {sent:?}"
            );
            assert_eq!(r.lost, 0);
            assert_eq!(
                r.rtp_seq_offset_changes, 0,
                "subscriber {i} {name}: RTP numbering out of step with the payloads"
            );
            assert_eq!(
                r.kind,
                Some(if name == "mic" {
                    MediaKind::Audio
                } else {
                    MediaKind::Video
                })
            );
            eprintln!(
                "subscriber {i} {name}: {} packets, latency p50 {} us p99 {} us max {} us, pid rewritten {}",
                r.unique,
                r.latency.p50_us,
                r.latency.p99_us,
                r.latency.max_us,
                r.picture_id_rewritten
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publisher_five_subscribers_receive_every_payload_byte_identical() {
    let sfu = sfu();
    let (publisher, subscribers) = publisher_and_five_subscribers(&sfu).await;
    // Let the SFU side of every leg finish its handshake before the first packet.
    tokio::time::sleep(Duration::from_millis(500)).await;

    publisher.set_sending(true).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    publisher.set_sending(false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;

    let ps = publisher.stats().await.unwrap();
    assert_every_payload_arrived(&ps, &subscribers).await;
    let m = sfu.metrics().await.unwrap();
    let sent_total: u64 = ps
        .participant
        .published
        .iter()
        .map(|p| p.sent.packets)
        .sum();
    assert!(
        m.get("satsuma_sfu_forwarded_packets_total") >= (5 * sent_total) as f64,
        "forwarded counter {} below 5 x {sent_total}",
        m.get("satsuma_sfu_forwarded_packets_total")
    );
    shutdown_all(publisher, subscribers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_subscriber_gets_a_keyframe_within_one_second() {
    let sfu = sfu();
    let mut pub_cfg = config(&sfu);
    // Keyframes only at start and on request: a late joiner depends on the PLI path.
    pub_cfg.participant.video.keyframe_interval = None;
    let publisher = Bot::connect_with(pub_cfg).await.unwrap();
    publisher.publish_video("cam").await.unwrap();
    publisher.wait_connected(CONNECT).await.unwrap();
    // An early subscriber keeps the track busy; the initial keyframe is long gone when the late one joins.
    let early = Bot::connect_with(config(&sfu)).await.unwrap();
    early
        .subscribe(publisher.session_id(), "cam")
        .await
        .unwrap();
    early.wait_connected(CONNECT).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = publisher.stats().await.unwrap();
    let keyframes_before = published(&before, "cam").sent.keyframes;

    let late = Bot::connect_with(config(&sfu)).await.unwrap();
    let started = tokio::time::Instant::now();
    late.subscribe(publisher.session_id(), "cam").await.unwrap();
    let deadline = started + Duration::from_secs(3);
    let received = loop {
        let s = late.stats().await.unwrap();
        let r = subscribed(&s, "cam").received.clone();
        if r.keyframes > 0 || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let waited = started.elapsed();
    let after = publisher.stats().await.unwrap();
    let sent = published(&after, "cam").sent;
    eprintln!(
        "late joiner: first packet {:?} ms, first keyframe {:?} ms after subscribing ({waited:?} incl. API); \
         publisher keyframe requests {} keyframes {} (before {keyframes_before})",
        received.first_packet_ms,
        received.first_keyframe_ms,
        sent.keyframe_requests,
        sent.keyframes
    );
    let first_keyframe = received
        .first_keyframe_ms
        .unwrap_or_else(|| panic!("late subscriber got no keyframe: {received:?}"));
    assert!(
        first_keyframe <= 1000.0,
        "keyframe after {first_keyframe} ms"
    );
    assert!(sent.keyframe_requests >= 1, "the publisher saw no PLI/FIR");
    assert!(
        sent.keyframes > keyframes_before,
        "no new keyframe was sent"
    );
    assert_eq!(received.corrupt, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = late.stats().await.unwrap();
    let r = &subscribed(&s, "cam").received;
    assert_eq!(
        (r.lost, r.rtp_seq_offset_changes),
        (0, 0),
        "late joiner's stream has gaps or renumbering: {r:?}"
    );
    let m = sfu.metrics().await.unwrap();
    assert!(m.sum("satsuma_sfu_keyframe_requests_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_push_and_pull_each_other_at_the_same_moment() {
    let sfu = sfu();
    let a = Bot::connect_with(config(&sfu)).await.unwrap();
    let b = Bot::connect_with(config(&sfu)).await.unwrap();
    // Both push at once, then both pull the other's tracks at once: one PeerConnection per session
    // carries its own tracks out and the other's in.
    let tracks = av();
    let (ra, rb) = tokio::join!(a.publish(&tracks), b.publish(&tracks));
    ra.unwrap();
    rb.unwrap();
    let pulls_of = |bot: &Bot| {
        vec![
            (bot.session_id().to_owned(), "mic".to_owned()),
            (bot.session_id().to_owned(), "cam".to_owned()),
        ]
    };
    let (from_b, from_a) = (pulls_of(&b), pulls_of(&a));
    let (pa, pb) = tokio::join!(a.subscribe_many(&from_b), b.subscribe_many(&from_a));
    pa.unwrap();
    pb.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let first = [a.stats().await.unwrap(), b.stats().await.unwrap()];
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = [a.stats().await.unwrap(), b.stats().await.unwrap()];
    for (who, (s1, s2)) in ["a", "b"].iter().zip(first.iter().zip(second.iter())) {
        for name in ["mic", "cam"] {
            let r1 = &subscribed(s1, name).received;
            let r2 = &subscribed(s2, name).received;
            assert!(
                r1.unique > 10,
                "{who} {name}: only {} packets: {r1:?}",
                r1.unique
            );
            assert!(r2.unique > r1.unique + 10, "{who} {name}: media stopped");
            assert_eq!(r2.corrupt, 0, "{who} {name}: {r2:?}");
            assert_eq!(r2.foreign, 0);
            assert_eq!(r2.duplicates, 0);
            assert_eq!(r2.lost, 0, "{who} {name}: {r2:?}");
            assert_eq!(r2.rtp_seq_offset_changes, 0, "{who} {name}: {r2:?}");
            assert!(published(s2, name).sent.packets > 0);
        }
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tracks_in_one_request_are_routed_to_the_right_mids() {
    let sfu = sfu();
    let publisher = Bot::connect_with(config(&sfu)).await.unwrap();
    let mut specs = Vec::new();
    for i in 0..4 {
        specs.push(TrackSpec {
            name: format!("mic{i}"),
            kind: MediaKind::Audio,
            simulcast: Vec::new(),
        });
        specs.push(TrackSpec {
            name: format!("cam{i}"),
            kind: MediaKind::Video,
            simulcast: Vec::new(),
        });
    }
    publisher.publish(&specs).await.unwrap();
    let sub = Bot::connect_with(config(&sfu)).await.unwrap();
    let pulls: Vec<(String, String)> = specs
        .iter()
        .map(|t| (publisher.session_id().to_owned(), t.name.clone()))
        .collect();
    let subs = sub.subscribe_many(&pulls).await.unwrap();
    assert_eq!(subs.len(), 8);
    sub.wait_connected(CONNECT).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ps = publisher.stats().await.unwrap();
    let ss = sub.stats().await.unwrap();
    for t in &specs {
        let sent = published(&ps, &t.name);
        let r = &subscribed(&ss, &t.name).received;
        assert_eq!(
            r.track_id,
            Some(sent.track_id),
            "{}: payloads of another track arrived on its mid",
            t.name
        );
        assert!(r.unique > 20, "{}: {r:?}", t.name);
        assert_eq!(
            (r.corrupt, r.foreign, r.duplicates, r.lost),
            (0, 0, 0, 0),
            "{}: {r:?}",
            t.name
        );
    }
}

/// Sessions are placed on shards round-robin: with three shards the publisher sits on shard 0 and
/// its five subscribers on shards 1, 2, 0, 1, 2. Packets reach the other shards as shared
/// buffers (one message per shard, not per subscriber), and every subscriber still gets every
/// payload byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_and_subscribers_on_different_shards() {
    let sfu = SfuProcess::start(env!("CARGO_BIN_EXE_satsuma-sfu"), &["--shards", "3"])
        .expect("start satsuma-sfu");
    let (publisher, subscribers) = publisher_and_five_subscribers(&sfu).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = sfu.metrics().await.unwrap();
    for shard in 0..3 {
        assert_eq!(
            m.get(&format!("satsuma_sfu_shard_sessions{{shard=\"{shard}\"}}")),
            2.0,
            "shard {shard} should own two of the six sessions"
        );
    }
    let cross_before = m.get("satsuma_sfu_cross_shard_messages_total");

    publisher.set_sending(true).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    publisher.set_sending(false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;

    let ps = publisher.stats().await.unwrap();
    assert_every_payload_arrived(&ps, &subscribers).await;
    for (i, bot) in subscribers.iter().enumerate() {
        let s = bot.stats().await.unwrap();
        assert!(
            subscribed(&s, "cam").received.keyframes >= 1,
            "subscriber {i} (shard {}) never got a keyframe",
            (i + 1) % 3
        );
    }

    let m = sfu.metrics().await.unwrap();
    let sent_total: u64 = ps
        .participant
        .published
        .iter()
        .map(|p| p.sent.packets)
        .sum();
    let cross = m.get("satsuma_sfu_cross_shard_messages_total") - cross_before;
    eprintln!(
        "datagrams out {} in {} send calls (GSO batching), {cross} cross-shard messages for {sent_total} packets",
        m.get("satsuma_sfu_packets_out_total"),
        m.get("satsuma_sfu_udp_send_calls_total"),
    );
    // Two other shards hold subscribers: each packet crosses to each of them exactly once,
    // however many subscribers that shard has.
    assert!(
        cross >= (2 * sent_total) as f64,
        "only {cross} cross-shard messages for {sent_total} packets"
    );
    assert!(
        cross < (4 * sent_total) as f64,
        "{cross} cross-shard messages for {sent_total} packets: sent per subscriber, not per shard?"
    );
    assert!(m.get("satsuma_sfu_forwarded_packets_total") >= (5 * sent_total) as f64);
    for shard in 0..3 {
        assert!(
            m.get(&format!(
                "satsuma_sfu_shard_busy_seconds_total{{shard=\"{shard}\"}}"
            )) > 0.0,
            "shard {shard} reports no busy time"
        );
    }
    shutdown_all(publisher, subscribers).await;
}

/// Audio levels ride in the `ssrc-audio-level` header extension; the SFU reads them (never the
/// payload) and names each subscriber's active speaker in `GET /sessions/{id}`: the louder of
/// two talkers takes over, and when they stop the quieter one is the speaker again, then nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_speaker_follows_audio_levels() {
    let sfu = sfu();
    let talker = |dbov: i8| {
        let mut c = config(&sfu);
        c.participant.audio.level_dbov = Some(dbov);
        c.participant.send_on_publish = false;
        c
    };
    let quiet = Bot::connect_with(talker(-40)).await.unwrap();
    let loud = Bot::connect_with(talker(-10)).await.unwrap();
    for bot in [&quiet, &loud] {
        bot.publish_audio("mic").await.unwrap();
        bot.wait_connected(CONNECT).await.unwrap();
    }
    let listener = Bot::connect_with(config(&sfu)).await.unwrap();
    listener
        .subscribe_many(&[
            (quiet.session_id().to_owned(), "mic".to_owned()),
            (loud.session_id().to_owned(), "mic".to_owned()),
        ])
        .await
        .unwrap();
    listener.wait_connected(CONNECT).await.unwrap();

    let speaker_of = |want: Option<&str>| {
        let listener = &listener;
        let want = want.map(str::to_owned);
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                let state = listener.api().session(listener.session_id()).await.unwrap();
                let now = state.active_speaker.as_ref().map(|s| s.session_id.clone());
                if now == want {
                    return state;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "active speaker {now:?}, expected {want:?}: {state:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    speaker_of(None).await;
    quiet.set_sending(true).await.unwrap();
    let state = speaker_of(Some(quiet.session_id())).await;
    let quiet_track = state
        .tracks
        .iter()
        .find(|t| t.session_id.as_deref() == Some(quiet.session_id()))
        .unwrap();
    assert_eq!(quiet_track.audio_level, Some(-40));
    assert_eq!(quiet_track.speaking, Some(true));

    loud.set_sending(true).await.unwrap();
    speaker_of(Some(loud.session_id())).await;
    // The publisher's own view of its track carries the level too.
    let own = loud.api().session(loud.session_id()).await.unwrap();
    assert_eq!(own.tracks[0].audio_level, Some(-10));
    assert_eq!(own.tracks[0].speaking, Some(true));

    loud.set_sending(false).await.unwrap();
    speaker_of(Some(quiet.session_id())).await;
    quiet.set_sending(false).await.unwrap();
    speaker_of(None).await;

    let m = sfu.metrics().await.unwrap();
    assert!(m.get("satsuma_sfu_audio_level_packets_total") > 50.0);
    assert!(m.get("satsuma_sfu_active_speaker_changes_total") >= 2.0);
    for bot in [listener, quiet, loud] {
        bot.shutdown().await.unwrap();
    }
}
