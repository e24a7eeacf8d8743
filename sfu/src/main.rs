//! `satsuma-sfu`: runs the SFU. Configuration comes from a TOML file (`--config`), then
//! `SATSUMA_SFU_*` environment variables, then flags (highest precedence).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use satsuma_sfu::config::{FileConfig, secs};
use satsuma_sfu::{App, Config, Server};

/// Satsuma's selective forwarding unit: WebRTC media forwarding (str0m, RTP mode, one UDP port)
/// behind a Cloudflare-Realtime-compatible sessions/tracks HTTP API.
#[derive(Debug, Parser)]
#[command(name = "satsuma-sfu", version, about, long_about = None)]
struct Cli {
    /// TOML config file (keys: apps = [{id, secret}], http_bind, udp_bind, announce_ips,
    /// track_timeout_secs, session_timeout_secs, shards, bwe_initial_kbps, log). Flags and env
    /// override it.
    #[arg(long, env = "SATSUMA_SFU_CONFIG")]
    config: Option<PathBuf>,

    /// An app allowed to use the API, as ID:SECRET (repeatable; env: comma-separated). Clients
    /// call /v1/apps/ID/... with "Authorization: Bearer SECRET". Default: satsuma:satsuma-secret.
    #[arg(long = "app", env = "SATSUMA_SFU_APPS", value_delimiter = ',')]
    apps: Vec<App>,

    /// Address of the HTTP API, /metrics and /healthz (port 0: any free port). Default 127.0.0.1:7880.
    #[arg(long, env = "SATSUMA_SFU_HTTP_BIND")]
    http_bind: Option<SocketAddr>,

    /// Address of the single UDP socket for all WebRTC traffic (port 0: any free port).
    /// Default 127.0.0.1:7881.
    #[arg(long, env = "SATSUMA_SFU_UDP_BIND")]
    udp_bind: Option<SocketAddr>,

    /// IP announced to clients as ICE host candidate, with the UDP port (repeatable; env:
    /// comma-separated). Default: the UDP bind IP, or 127.0.0.1 if it is unspecified.
    #[arg(
        long = "announce-ip",
        env = "SATSUMA_SFU_ANNOUNCE_IPS",
        value_delimiter = ','
    )]
    announce_ips: Vec<IpAddr>,

    /// Seconds without media after which a published track is collected. Default 30.
    #[arg(long, env = "SATSUMA_SFU_TRACK_TIMEOUT")]
    track_timeout: Option<f64>,

    /// Seconds a session may stay without a connected transport before it is collected. Default 30.
    #[arg(long, env = "SATSUMA_SFU_SESSION_TIMEOUT")]
    session_timeout: Option<f64>,

    /// Number of shards: worker threads that each own a set of sessions (one per core is best).
    /// Default: the number of cores this process may use.
    #[arg(long, env = "SATSUMA_SFU_SHARDS")]
    shards: Option<usize>,

    /// Initial egress bandwidth estimate of a session in kbit/s. Above 0 it turns on str0m's
    /// GCC bandwidth estimator and pacer for every session, and simulcast layers are chosen to fit
    /// the estimate. Default 0 (off): legs get their preferred or top layer. Costs when on
    /// (measured, see benches/README.md): about 1.4-2x CPU per forwarded packet, and media of
    /// a subscriber above its estimate waits in the pacer (tens to hundreds of ms) until the
    /// estimate grows.
    #[arg(long, env = "SATSUMA_SFU_BWE_INITIAL_KBPS")]
    bwe_initial_kbps: Option<u32>,

    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "satsuma_sfu=debug,str0m=warn".
    /// Default "info".
    #[arg(long, env = "SATSUMA_SFU_LOG")]
    log: Option<String>,
}

fn build_config(cli: Cli) -> anyhow::Result<(Config, String)> {
    let file = match &cli.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let mut config = Config::default();
    if !file.apps.is_empty() {
        config.apps = file.apps;
    }
    if !cli.apps.is_empty() {
        config.apps = cli.apps;
    }
    config.http_bind = cli.http_bind.or(file.http_bind).unwrap_or(config.http_bind);
    config.udp_bind = cli.udp_bind.or(file.udp_bind).unwrap_or(config.udp_bind);
    config.announce_ips = if cli.announce_ips.is_empty() {
        file.announce_ips.unwrap_or_default()
    } else {
        cli.announce_ips
    };
    if let Some(t) = cli.track_timeout.or(file.track_timeout_secs) {
        config.track_timeout = secs(t, "track timeout")?;
    }
    if let Some(t) = cli.session_timeout.or(file.session_timeout_secs) {
        config.session_timeout = secs(t, "session timeout")?;
    }
    config.shards = cli.shards.or(file.shards).unwrap_or(config.shards);
    config.bwe_initial_kbps = cli
        .bwe_initial_kbps
        .or(file.bwe_initial_kbps)
        .unwrap_or(config.bwe_initial_kbps);
    config.validate()?;
    let log = cli.log.or(file.log).unwrap_or_else(|| "info".into());
    Ok((config, log))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (config, log) = build_config(cli)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&log).context("invalid log filter")?,
        )
        .with_writer(std::io::stderr)
        .init();
    let server = Server::bind(config).await?;
    // Tests that spawn the binary read the ports from this line.
    println!(
        "satsuma-sfu listening http={} udp={}",
        server.http_addr(),
        server.udp_addr()
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        () = server.wait() => {}
        r = tokio::signal::ctrl_c() => {
            r.context("waiting for ctrl-c")?;
            tracing::info!("SIGINT: shutting down");
        }
        _ = terminate.recv() => {
            tracing::info!("SIGTERM: shutting down");
        }
    }
    Ok(())
}
