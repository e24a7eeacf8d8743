//! `satsuma-bot`: publish and/or pull tracks through a Satsuma SFU from the command line and print
//! statistics as JSON lines.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use satsuma_bot::{
    AudioSettings, Bot, BotConfig, MediaKind, SimulcastLayer, TrackSpec, VideoSettings,
};
use serde::Deserialize;

/// A headless WebRTC participant for Satsuma's SFU: pushes synthetic Opus-like audio and VP8-like video,
/// pulls tracks of other sessions, verifies every received payload byte for byte, and prints statistics
/// (loss, duplicates, corruption, one-way latency, keyframe timing) as JSON lines on stdout.
///
/// Settings come from flags, then environment variables, then the TOML file given with --config (same
/// keys as the long flags, with underscores), then defaults.
#[derive(Debug, Parser)]
#[command(name = "satsuma-bot", version)]
struct Cli {
    /// TOML file with default settings (keys as the long flags, e.g. `url`, `app_id`, `publish_video`).
    #[arg(long, env = "SATSUMA_BOT_CONFIG")]
    config: Option<PathBuf>,
    /// SFU base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "SATSUMA_BOT_URL")]
    url: Option<String>,
    /// App id (the `{appId}` in /v1/apps/{appId}).
    #[arg(long, env = "SATSUMA_BOT_APP_ID")]
    app_id: Option<String>,
    /// App secret, sent as `Authorization: Bearer <secret>`.
    #[arg(long, env = "SATSUMA_BOT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// IP address for the bot's UDP socket and ICE host candidate.
    #[arg(long, env = "SATSUMA_BOT_BIND_IP")]
    bind_ip: Option<IpAddr>,
    /// Publish an audio track with this name (repeatable).
    #[arg(long, value_name = "NAME")]
    publish_audio: Vec<String>,
    /// Publish a video track with this name (repeatable).
    #[arg(long, value_name = "NAME")]
    publish_video: Vec<String>,
    /// Publish a simulcast video track with this name (repeatable): layers q/h/f of about
    /// 150/500/1500 kbit/s, 30 fps, a keyframe every 3 s per layer.
    #[arg(long, value_name = "NAME")]
    publish_simulcast: Vec<String>,
    /// Shape incoming media to this many kbit/s (a token bucket with a 200 ms queue in front of
    /// the bot, like a bottleneck link). Default: no limit.
    #[arg(long, env = "SATSUMA_BOT_INGRESS_LIMIT_KBPS")]
    ingress_limit_kbps: Option<u64>,
    /// Pull a track, given as SESSION_ID/TRACK_NAME (repeatable).
    #[arg(long, value_name = "SESSION/TRACK")]
    subscribe: Vec<String>,
    /// How long to run, in seconds, before printing final statistics and exiting.
    #[arg(long, env = "SATSUMA_BOT_DURATION")]
    duration: Option<f64>,
    /// Print intermediate statistics every this many seconds (0: only at the end).
    #[arg(long, env = "SATSUMA_BOT_STATS_INTERVAL")]
    stats_interval: Option<f64>,
    /// Audio payload size in bytes.
    #[arg(long)]
    audio_payload: Option<u16>,
    /// Video frames per second.
    #[arg(long)]
    video_fps: Option<u32>,
    /// Video payload size per packet in bytes.
    #[arg(long)]
    video_payload: Option<u16>,
    /// Packets per video delta frame.
    #[arg(long)]
    video_delta_packets: Option<u16>,
    /// Packets per video keyframe.
    #[arg(long)]
    video_keyframe_packets: Option<u16>,
    /// Seconds between periodic keyframes (0: only at start and on PLI/FIR).
    #[arg(long)]
    keyframe_interval: Option<f64>,
    /// Do not send PLI when video arrives before a keyframe.
    #[arg(long)]
    no_keyframe_requests: bool,
}

/// The TOML file: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    url: Option<String>,
    app_id: Option<String>,
    secret: Option<String>,
    bind_ip: Option<IpAddr>,
    #[serde(default)]
    publish_audio: Vec<String>,
    #[serde(default)]
    publish_video: Vec<String>,
    #[serde(default)]
    publish_simulcast: Vec<String>,
    ingress_limit_kbps: Option<u64>,
    #[serde(default)]
    subscribe: Vec<String>,
    duration: Option<f64>,
    stats_interval: Option<f64>,
    audio_payload: Option<u16>,
    video_fps: Option<u32>,
    video_payload: Option<u16>,
    video_delta_packets: Option<u16>,
    video_keyframe_packets: Option<u16>,
    keyframe_interval: Option<f64>,
}

fn or_vec(a: Vec<String>, b: Vec<String>) -> Vec<String> {
    if a.is_empty() { b } else { a }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let file: FileConfig = match &cli.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {p:?}"))?;
            toml::from_str(&text).with_context(|| format!("parsing {p:?}"))?
        }
        None => FileConfig::default(),
    };
    let url = cli.url.or(file.url).context("--url is required")?;
    let app_id = cli.app_id.or(file.app_id).context("--app-id is required")?;
    let secret = cli.secret.or(file.secret).context("--secret is required")?;
    let publish_audio = or_vec(cli.publish_audio, file.publish_audio);
    let publish_video = or_vec(cli.publish_video, file.publish_video);
    let publish_simulcast = or_vec(cli.publish_simulcast, file.publish_simulcast);
    let subscribe = or_vec(cli.subscribe, file.subscribe);
    let duration = cli.duration.or(file.duration).unwrap_or(10.0);
    let stats_interval = cli.stats_interval.or(file.stats_interval).unwrap_or(0.0);

    let mut config = BotConfig::new(&url, &app_id, &secret);
    if let Some(ip) = cli.bind_ip.or(file.bind_ip) {
        config.bind_ip = ip;
    }
    config.ingress_limit_bps = cli
        .ingress_limit_kbps
        .or(file.ingress_limit_kbps)
        .map(|k| k.saturating_mul(1000));
    let audio = &mut config.participant.audio;
    *audio = AudioSettings {
        payload_len: cli
            .audio_payload
            .or(file.audio_payload)
            .unwrap_or(audio.payload_len),
        ..*audio
    };
    let v = config.participant.video;
    let keyframe_interval = match cli.keyframe_interval.or(file.keyframe_interval) {
        Some(s) if s <= 0.0 => None,
        Some(s) => Some(Duration::try_from_secs_f64(s).context("--keyframe-interval")?),
        None => v.keyframe_interval,
    };
    config.participant.video = VideoSettings {
        fps: cli.video_fps.or(file.video_fps).unwrap_or(v.fps),
        payload_len: cli
            .video_payload
            .or(file.video_payload)
            .unwrap_or(v.payload_len),
        delta_packets: cli
            .video_delta_packets
            .or(file.video_delta_packets)
            .unwrap_or(v.delta_packets),
        keyframe_packets: cli
            .video_keyframe_packets
            .or(file.video_keyframe_packets)
            .unwrap_or(v.keyframe_packets),
        keyframe_interval,
    };
    config.participant.request_keyframes = !cli.no_keyframe_requests;

    let mut pulls = Vec::new();
    for s in &subscribe {
        let Some((sid, name)) = s.split_once('/') else {
            bail!("--subscribe wants SESSION_ID/TRACK_NAME, got {s:?}");
        };
        pulls.push((sid.to_owned(), name.to_owned()));
    }

    let bot = Bot::connect_with(config).await.context("connecting")?;
    println!(
        "{}",
        serde_json::json!({"event": "session", "sessionId": bot.session_id(),
                           "localAddr": bot.local_addr().to_string()})
    );
    let mut specs: Vec<TrackSpec> = publish_audio
        .into_iter()
        .map(|name| TrackSpec {
            name,
            kind: MediaKind::Audio,
            simulcast: Vec::new(),
        })
        .collect();
    specs.extend(publish_video.into_iter().map(|name| TrackSpec {
        name,
        kind: MediaKind::Video,
        simulcast: Vec::new(),
    }));
    specs.extend(
        publish_simulcast
            .iter()
            .map(|name| TrackSpec::simulcast_video(name, SimulcastLayer::standard())),
    );
    if !specs.is_empty() {
        let published = bot.publish(&specs).await.context("publishing")?;
        for t in published {
            println!(
                "{}",
                serde_json::json!({"event": "published", "trackName": t.track_name, "mid": t.mid})
            );
        }
    }
    if !pulls.is_empty() {
        let subs = bot.subscribe_many(&pulls).await.context("subscribing")?;
        for t in subs {
            println!(
                "{}",
                serde_json::json!({"event": "subscribed", "sessionId": t.session_id,
                                   "trackName": t.track_name, "mid": t.mid})
            );
        }
    }

    let end = tokio::time::Instant::now() + Duration::try_from_secs_f64(duration.max(0.0))?;
    if stats_interval > 0.0 {
        let every = Duration::try_from_secs_f64(stats_interval)?;
        loop {
            let next = tokio::time::Instant::now() + every;
            if next >= end {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = tokio::signal::ctrl_c() => break,
            }
            let s = bot.stats().await?;
            println!("{}", serde_json::json!({"event": "stats", "stats": s}));
        }
    }
    tokio::select! {
        _ = tokio::time::sleep_until(end) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let s = bot.shutdown().await?;
    println!("{}", serde_json::json!({"event": "final", "stats": s}));
    Ok(())
}
