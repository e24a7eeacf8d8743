//! Measure the SFU's CPU time per forwarded packet in a bot run (not a benchmark, a quick figure).
//!
//! Starts the given `satsuma-sfu` binary on 127.0.0.1, one publisher (audio + video) and N subscribers
//! pulling both tracks, then reads the SFU process's utime+stime from `/proc/<pid>/stat` and
//! `satsuma_sfu_forwarded_packets_total` from `/metrics` before and after a measuring window.
//!
//! ```text
//! cargo run -p satsuma-bot --example cpu_per_packet -- --sfu target/debug/satsuma-sfu --subscribers 10 --seconds 10
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use satsuma_bot::harness::{APP_ID, APP_SECRET, SfuProcess};
use satsuma_bot::{Bot, BotConfig, MediaKind, TrackSpec};

/// Measure the SFU's CPU time per forwarded packet with bots.
#[derive(Debug, Parser)]
struct Args {
    /// Path of the satsuma-sfu binary to start.
    #[arg(long)]
    sfu: PathBuf,
    /// Number of subscribers, each pulling the audio and the video track.
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Length of the measuring window in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Packets per video delta frame.
    #[arg(long, default_value_t = 3)]
    delta_packets: u16,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let sfu = SfuProcess::start(&args.sfu, &[]).context("starting the SFU")?;
    let mut cfg = BotConfig::new(&sfu.base_url(), APP_ID, APP_SECRET);
    cfg.participant.video.fps = args.fps;
    cfg.participant.video.delta_packets = args.delta_packets;
    let publisher = Bot::connect_with(cfg.clone()).await?;
    publisher
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
        .await?;
    let mut subs = Vec::new();
    for _ in 0..args.subscribers {
        let b = Bot::connect_with(cfg.clone()).await?;
        b.subscribe_many(&[
            (publisher.session_id().to_owned(), "mic".to_owned()),
            (publisher.session_id().to_owned(), "cam".to_owned()),
        ])
        .await?;
        b.wait_connected(Duration::from_secs(10)).await?;
        subs.push(b);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let cpu0 = sfu.cpu_time()?;
    let fwd0 = sfu
        .metrics()
        .await?
        .get("satsuma_sfu_forwarded_packets_total");
    let in0 = sfu.metrics().await?.get("satsuma_sfu_packets_in_total");
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let cpu1 = sfu.cpu_time()?;
    let m1 = sfu.metrics().await?;
    let fwd = m1.get("satsuma_sfu_forwarded_packets_total") - fwd0;
    let datagrams_in = m1.get("satsuma_sfu_packets_in_total") - in0;
    let cpu = (cpu1 - cpu0).as_secs_f64();

    let mut lost = 0;
    let mut corrupt = 0;
    let mut received = 0;
    let mut p99_max = 0;
    for b in &subs {
        for s in b.stats().await?.participant.subscribed {
            lost += s.received.lost;
            corrupt += s.received.corrupt;
            received += s.received.unique;
            p99_max = p99_max.max(s.received.latency.p99_us);
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "subscribers": args.subscribers,
            "seconds": args.seconds,
            "sfu_cpu_seconds": cpu,
            "forwarded_packets": fwd,
            "forwarded_per_second": fwd / args.seconds as f64,
            "datagrams_in": datagrams_in,
            "cpu_us_per_forwarded_packet": if fwd > 0.0 { cpu * 1e6 / fwd } else { f64::NAN },
            "sfu_cpu_share": cpu / args.seconds as f64,
            "subscriber_packets_received": received,
            "subscriber_lost": lost,
            "subscriber_corrupt": corrupt,
            "subscriber_latency_p99_max_us": p99_max,
        })
    );
    for b in subs {
        b.shutdown().await?;
    }
    publisher.shutdown().await?;
    Ok(())
}
