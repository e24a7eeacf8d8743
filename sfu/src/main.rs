//! `satsuma-sfu`: runs the SFU. Configuration comes from a TOML file (`--config`), then
//! `SATSUMA_SFU_*` environment variables, then flags (highest precedence).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use satsuma_sfu::config::{FileConfig, LimitSettings, TcpBind, TurnKey, secs, turn_servers};
use satsuma_sfu::relay::settings::RelaySettings;
use satsuma_sfu::{App, Config, Server};

/// jemalloc (with background purging) instead of glibc malloc: the packet path allocates from
/// several threads (shards, the UDP and HTTP workers), and glibc keeps each thread arena at its
/// high-water mark, so RSS grew for minutes under churn and was not given back after the load
/// left (see benches/README.md, "Soak"). jemalloc's background threads return unused pages to the
/// kernel after a decay time.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Satsuma's selective forwarding unit: WebRTC media forwarding (str0m, RTP mode, one UDP port)
/// behind a Cloudflare-Realtime-compatible sessions/tracks HTTP API.
#[derive(Debug, Parser)]
#[command(name = "satsuma-sfu", version, about, long_about = None)]
struct Cli {
    /// TOML config file. Keys: apps = [{id, secret}], http_bind, udp_bind, tcp_bind, announce_ips,
    /// track_timeout_secs, session_timeout_secs, drain_timeout_secs, shards, bwe_initial_kbps, bwe_pace_video,
    /// keyframe_replay, log,
    /// session_requests_per_second, max_tracks_per_request, app_new_sessions_per_second,
    /// app_max_sessions, session_max_publications, session_max_legs,
    /// session_max_pulls_per_track, session_max_ingress_kbps, tcp_max_connections_per_ip,
    /// tcp_max_connections, cors_origins, metrics_token,
    /// metrics_bind, shard_panic_hold_secs, test_hooks, turn_keys = [{id, token}], turn_urls,
    /// turn_secret (each like the flag of the same name).
    /// Env overrides the file; flags override both.
    #[arg(long, env = "SATSUMA_SFU_CONFIG")]
    config: Option<PathBuf>,

    /// An app allowed to use the API, as ID:SECRET (repeatable; env: comma-separated). Clients
    /// call /v1/apps/ID/... with "Authorization: Bearer SECRET". Default: satsuma:satsuma-secret.
    #[arg(long = "app", env = "SATSUMA_SFU_APPS", value_delimiter = ',')]
    apps: Vec<App>,

    /// A TURN key as ID:TOKEN (repeatable; env: comma-separated): backends call
    /// POST /v1/turn/keys/ID/credentials/generate-ice-servers with "Authorization: Bearer
    /// TOKEN" (at least 16 characters) for short-lived TURN credentials, as with Cloudflare
    /// Realtime. Needs --turn-url and --turn-secret. Default: none (the route answers 404).
    #[arg(
        long = "turn-key",
        env = "SATSUMA_SFU_TURN_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    turn_keys: Vec<TurnKey>,

    /// A STUN or TURN URL that generate-ice-servers hands out (repeatable; env:
    /// comma-separated), e.g. turn:turn.example.com:3478?transport=udp,
    /// turn:turn.example.com:3478?transport=tcp, turns:turn.example.com:443?transport=tcp.
    #[arg(
        long = "turn-url",
        env = "SATSUMA_SFU_TURN_URLS",
        value_delimiter = ','
    )]
    turn_urls: Vec<String>,

    /// The TURN server's shared secret (coturn: use-auth-secret, static-auth-secret=...; at
    /// least 16 characters). Required with turn: and turns: URLs.
    #[arg(long, env = "SATSUMA_SFU_TURN_SECRET", hide_env_values = true)]
    turn_secret: Option<String>,

    /// Address of the HTTP API, /metrics and /healthz (port 0: any free port). Default 127.0.0.1:7880.
    #[arg(long, env = "SATSUMA_SFU_HTTP_BIND")]
    http_bind: Option<SocketAddr>,

    /// Address of the single UDP socket for all WebRTC traffic (port 0: any free port).
    /// Default 127.0.0.1:7881.
    #[arg(long, env = "SATSUMA_SFU_UDP_BIND")]
    udp_bind: Option<SocketAddr>,

    /// ICE-TCP for clients whose network blocks UDP: the TCP address of the passive TCP
    /// candidates (RFC 6544, RFC 4571 framing; priority below UDP, so clients use it only when
    /// UDP fails). `udp`: the UDP bind address over TCP (same IP, same port number); `off`: no
    /// ICE-TCP; or an address like 0.0.0.0:443. Open this TCP port in the firewall. Default:
    /// udp (on, 127.0.0.1:7881/tcp with the default UDP address).
    #[arg(long, env = "SATSUMA_SFU_TCP_BIND", value_name = "ADDR|udp|off")]
    tcp_bind: Option<TcpBind>,

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

    /// Initial egress bandwidth estimate of a session in kbit/s. Bandwidth estimation (str0m's
    /// GCC over TWCC) runs for every session and simulcast layers are chosen to fit each
    /// subscriber's estimate. 0 turns it off: legs then get their preferred or top layer.
    /// Audio and single-layer video are never held back by the estimate. Default 1000 (its CPU
    /// cost and delay are measured in benches/README.md).
    #[arg(long, env = "SATSUMA_SFU_BWE_INITIAL_KBPS")]
    bwe_initial_kbps: Option<u32>,

    /// With bandwidth estimation on, send simulcast video through str0m's pacer (at 1.1x the
    /// estimate) rather than forwarding it at once. Default off: the pacer holds video that
    /// exceeds the estimate (hundreds of ms while a switch down waits for a keyframe).
    #[arg(long, env = "SATSUMA_SFU_BWE_PACE_VIDEO", num_args = 0..=1, default_missing_value = "true")]
    bwe_pace_video: Option<bool>,

    /// Send a new subscriber leg its track's packets since the last keyframe at once (VP8, at
    /// most 600 packets / 1 MiB / 2 s per layer, kept in memory per published track) instead of
    /// asking the publisher for a keyframe and waiting for it. Default off (see the join time in
    /// benches/README.md); `--keyframe-replay` turns it on.
    #[arg(long, env = "SATSUMA_SFU_KEYFRAME_REPLAY", num_args = 0..=1, default_missing_value = "true")]
    keyframe_replay: Option<bool>,

    #[command(flatten)]
    limits: LimitSettings,

    /// Browser origin allowed to call the API cross-origin, like https://app.example.com
    /// (repeatable; env: comma-separated). Default: none, and no CORS headers are sent.
    #[arg(
        long = "cors-origin",
        env = "SATSUMA_SFU_CORS_ORIGINS",
        value_delimiter = ','
    )]
    cors_origins: Vec<String>,

    /// Bearer token that /metrics requires (at least 16 characters). Default: none.
    #[arg(long, env = "SATSUMA_SFU_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,

    /// Serve /metrics and /healthz on this separate address; the API address then serves no
    /// /metrics. Default: both on the API address.
    #[arg(long, env = "SATSUMA_SFU_METRICS_BIND")]
    metrics_bind: Option<SocketAddr>,

    /// Seconds /healthz answers 503 (naming the shard) after a shard thread panicked and was
    /// restarted with its sessions closed. Default 30.
    #[arg(long, env = "SATSUMA_SFU_SHARD_PANIC_HOLD")]
    shard_panic_hold: Option<f64>,

    /// Enable test-only hooks (POST /v1/test/shards/{n}/panic). Never in production.
    #[arg(long, env = "SATSUMA_SFU_TEST_HOOKS")]
    test_hooks: bool,

    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "satsuma_sfu=debug,str0m=warn".
    /// Default "info".
    #[arg(long, env = "SATSUMA_SFU_LOG")]
    log: Option<String>,

    #[command(flatten)]
    relay: RelaySettings,

    /// Seconds a draining node (after SIGTERM or `satsuma-sfu drain`) waits for its sessions
    /// to move to other nodes before it exits anyway. It exits 0 as soon as it holds no
    /// session. Give the supervisor's grace period (Kubernetes terminationGracePeriodSeconds,
    /// systemd TimeoutStopSec) a few seconds more. SIGINT, or a second SIGTERM, exits at once.
    /// TOML: drain_timeout_secs. Default 30.
    #[arg(long, env = "SATSUMA_SFU_DRAIN_TIMEOUT", value_name = "SECONDS")]
    drain_timeout: Option<f64>,

    #[command(subcommand)]
    command: Option<Command>,
}

/// Tools for a cluster of SFU nodes (without one, the SFU runs).
#[derive(Debug, Subcommand)]
enum Command {
    /// Drain a running node: it takes no new sessions (503 draining), reports "draining" on
    /// /healthz so the coordinator moves its participants to other nodes, and exits 0 once
    /// it holds no session or its --drain-timeout passes. Same as sending it SIGTERM, over its
    /// HTTP API (POST /v1/apps/ID/drain with the app's secret).
    Drain {
        /// The node's HTTP API, e.g. http://127.0.0.1:7880.
        #[arg(long, default_value = "http://127.0.0.1:7880")]
        url: String,
        /// An app of the node, as ID:SECRET (env: SATSUMA_SFU_DRAIN_APP). Default:
        /// satsuma:satsuma-secret.
        #[arg(
            long,
            env = "SATSUMA_SFU_DRAIN_APP",
            hide_env_values = true,
            default_value = "satsuma:satsuma-secret"
        )]
        app: App,
        /// Also wait until the node stops answering (it exited), at most this many seconds;
        /// fails if it still answers then.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<f64>,
    },
    /// Make a cluster CA for the relay between SFU nodes: writes ca.pem (give it to every
    /// node as --relay-ca) and ca-key.pem (keep it offline; it signs node certificates).
    ClusterCa {
        /// Directory to write ca.pem and ca-key.pem into (created if missing; existing files
        /// are not overwritten).
        #[arg(long)]
        out: PathBuf,
        /// A name for the cluster, in the CA's common name.
        #[arg(long, default_value = "satsuma")]
        cluster: String,
    },
    /// Make a node's relay certificate and key: NODE.pem and NODE-key.pem, signed by the
    /// cluster CA (--ca and --ca-key) or self-signed (--self-signed, for pinned keys). Prints
    /// the node's key pin (NODE=SHA256HEX, for --relay-pin on its peers).
    NodeCert {
        /// The node's name (a DNS label like sfu-0): its --node-name.
        #[arg(long)]
        name: String,
        /// Directory to write the files into (created if missing; existing files are not
        /// overwritten).
        #[arg(long)]
        out: PathBuf,
        /// The cluster CA certificate (ca.pem).
        #[arg(long, required_unless_present = "self_signed")]
        ca: Option<PathBuf>,
        /// The cluster CA key (ca-key.pem).
        #[arg(long, required_unless_present = "self_signed")]
        ca_key: Option<PathBuf>,
        /// Self-signed, for clusters that pin keys instead of using a CA.
        #[arg(long, conflicts_with_all = ["ca", "ca_key"])]
        self_signed: bool,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
}

/// Writes `text` to a new file (mode 0600 for keys); an existing file is an error.
fn write_new(path: &std::path::Path, text: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// `satsuma-sfu drain`: asks the node at `url` to drain; with `wait`, waits until it exited.
async fn drain_remote(url: &str, app: &App, wait: Option<f64>) -> anyhow::Result<()> {
    let base = url.trim_end_matches('/');
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .context("making the HTTP client")?;
    let resp = client
        .post(format!("{base}/v1/apps/{}/drain", app.id))
        .bearer_auth(&app.secret)
        .send()
        .await
        .with_context(|| format!("asking {base} to drain"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("{base} refused to drain: {status} {body}");
    }
    println!("{base} is draining: {}", body.trim());
    let Some(wait) = wait else {
        return Ok(());
    };
    let deadline = std::time::Instant::now() + secs(wait, "--wait")?;
    loop {
        let up = client
            .get(format!("{base}/healthz"))
            .timeout(std::time::Duration::from_secs(2))
            .send()
            .await
            .is_ok();
        if !up {
            println!("{base} has exited");
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!("{base} still answers after {wait} s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

fn run_command(command: Command) -> anyhow::Result<()> {
    use satsuma_sfu::relay::tls;
    match command {
        Command::Drain { .. } => anyhow::bail!("drain runs on the async runtime"),
        Command::ClusterCa { out, cluster } => {
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let ca = tls::generate_ca(&cluster)?;
            write_new(&out.join("ca.pem"), &ca.cert, false)?;
            write_new(&out.join("ca-key.pem"), &ca.key, true)?;
            println!(
                "wrote {} and {}",
                out.join("ca.pem").display(),
                out.join("ca-key.pem").display()
            );
        }
        Command::NodeCert {
            name,
            out,
            ca,
            ca_key,
            self_signed,
            days,
        } => {
            let pair = if self_signed {
                tls::generate_self_signed(&name, days)?
            } else {
                let (Some(ca), Some(ca_key)) = (ca, ca_key) else {
                    anyhow::bail!("--ca and --ca-key are required without --self-signed");
                };
                let read = |p: &PathBuf| {
                    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
                };
                let ca = tls::PemPair {
                    cert: read(&ca)?,
                    key: read(&ca_key)?,
                };
                tls::generate_node_cert(&ca, &name, days)?
            };
            let pin = satsuma_sfu::relay::tls::RelayIdentity::with_pins(
                &name,
                &pair,
                std::collections::HashMap::new(),
            )?
            .own_pin()?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            write_new(&out.join(format!("{name}.pem")), &pair.cert, false)?;
            write_new(&out.join(format!("{name}-key.pem")), &pair.key, true)?;
            println!("{name}={}", hex::encode(pin));
        }
    }
    Ok(())
}

/// The relay settings: flags, then environment (both in `cli`), then the file.
fn relay_settings(cli: &Cli) -> anyhow::Result<RelaySettings> {
    let file = match &cli.config {
        Some(path) => FileConfig::load(path)?.relay,
        None => RelaySettings::default(),
    };
    Ok(cli.relay.clone().or(file))
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
    config.tcp_bind = cli.tcp_bind.or(file.tcp_bind).unwrap_or(config.tcp_bind);
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
    config.bwe_pace_video = cli
        .bwe_pace_video
        .or(file.bwe_pace_video)
        .unwrap_or(config.bwe_pace_video);
    config.keyframe_replay = cli
        .keyframe_replay
        .or(file.keyframe_replay)
        .unwrap_or(config.keyframe_replay);
    cli.limits.or(file.limits).apply(&mut config);
    config.cors_origins = if cli.cors_origins.is_empty() {
        file.cors_origins.unwrap_or_default()
    } else {
        cli.cors_origins
    };
    config.metrics_token = cli.metrics_token.or(file.metrics_token);
    config.metrics_bind = cli.metrics_bind.or(file.metrics_bind);
    if let Some(t) = cli.shard_panic_hold.or(file.shard_panic_hold_secs) {
        config.shard_panic_hold = secs(t, "shard panic hold")?;
    }
    config.test_hooks = cli.test_hooks || file.test_hooks.unwrap_or(false);
    config.turn_keys = if cli.turn_keys.is_empty() {
        file.turn_keys
    } else {
        cli.turn_keys
    };
    let turn_urls = if cli.turn_urls.is_empty() {
        file.turn_urls.unwrap_or_default()
    } else {
        cli.turn_urls
    };
    config.turn = turn_servers(turn_urls, cli.turn_secret.or(file.turn_secret))?;
    config.validate()?;
    let log = cli.log.or(file.log).unwrap_or_else(|| "info".into());
    Ok((config, log))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    if let Some(command) = cli.command.take() {
        if let Command::Drain { url, app, wait } = &command {
            return drain_remote(url, app, *wait).await;
        }
        return run_command(command);
    }
    let file_drain_timeout = match &cli.config {
        Some(path) => FileConfig::load(path)?.drain_timeout_secs,
        None => None,
    };
    let drain_timeout = secs(
        cli.drain_timeout.or(file_drain_timeout).unwrap_or(30.0),
        "--drain-timeout",
    )?;
    let relay = relay_settings(&cli)?.build()?;
    let (config, log) = build_config(cli)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&log).context("invalid log filter")?,
        )
        .with_writer(std::io::stderr)
        .init();
    if config.test_hooks {
        tracing::warn!("test hooks are ON (--test-hooks): never run like this in production");
    }
    let mut server = Server::bind_with_relay(config, relay).await?;
    // Tests that spawn the binary read the ports from this line.
    println!(
        "satsuma-sfu listening http={} udp={} tcp={}",
        server.http_addr(),
        server.udp_addr(),
        server
            .tcp_addr()
            .map_or_else(|| "off".to_string(), |a| a.to_string())
    );
    // The relay between SFU nodes: tests read its port from this line.
    if let Some(addr) = server.relay_addr() {
        println!("satsuma-sfu relay listening {addr}");
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let drain = server.drain();
    tokio::select! {
        () = server.http_stopped() => return Ok(()),
        r = tokio::signal::ctrl_c() => {
            r.context("waiting for ctrl-c")?;
            tracing::info!("SIGINT: shutting down");
            return Ok(());
        }
        _ = terminate.recv() => {
            drain.start(std::time::Instant::now());
            tracing::info!(sessions = server.session_count(), "SIGTERM: draining (no new sessions)");
        }
        () = drain.started() => {}
    }
    drained(&mut server, &drain, drain_timeout, &mut terminate).await;
    // Whatever is left is closed; the HTTP server gets a moment for replies in flight.
    if tokio::time::timeout(std::time::Duration::from_secs(3), server.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown took more than 3 s: exiting anyway");
    }
    Ok(())
}

/// Waits while the node drains: until it holds no session, its deadline passes, or SIGINT or a
/// second SIGTERM asks it to stop now.
async fn drained(
    server: &mut satsuma_sfu::server::ServerHandle,
    drain: &satsuma_sfu::drain::Drain,
    deadline: std::time::Duration,
    terminate: &mut tokio::signal::unix::Signal,
) {
    use satsuma_sfu::drain::{DrainState, DrainStep};
    let started = drain.since().unwrap_or_else(std::time::Instant::now);
    let state = DrainState::new(started, deadline);
    let at_start = server.session_count();
    let metrics = server.metrics().clone();
    metrics.draining.set(1);
    metrics
        .drain_sessions_at_start
        .set(i64::try_from(at_start).unwrap_or(i64::MAX));
    tracing::info!(
        sessions = at_start,
        deadline_s = deadline.as_secs_f64(),
        "draining: waiting for the sessions to move to other nodes"
    );
    loop {
        let now = std::time::Instant::now();
        metrics
            .drain_ms
            .set(i64::try_from(state.elapsed(now).as_millis()).unwrap_or(i64::MAX));
        match state.poll(now, server.session_count()) {
            DrainStep::Wait => {}
            DrainStep::Empty => {
                tracing::info!(
                    sessions_moved = at_start,
                    drain_s = state.elapsed(now).as_secs_f64(),
                    "drained: no session left, exiting"
                );
                return;
            }
            DrainStep::Deadline(left) => {
                tracing::warn!(
                    sessions_left = left,
                    sessions_moved = at_start.saturating_sub(left),
                    drain_s = state.elapsed(now).as_secs_f64(),
                    "drain deadline passed: exiting with sessions left"
                );
                return;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            _ = terminate.recv() => {
                tracing::warn!("second SIGTERM while draining: exiting now");
                return;
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::warn!("SIGINT while draining: exiting now");
                return;
            }
            () = server.http_stopped() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("satsuma-sfu").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn every_limit_comes_from_the_file_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("satsuma-sfu-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sfu.toml");
        std::fs::write(
            &path,
            "session_requests_per_second = 7\nmax_tracks_per_request = 8\n\
             app_new_sessions_per_second = 9\napp_max_sessions = 10\n\
             session_max_publications = 11\nsession_max_legs = 12\n\
             session_max_pulls_per_track = 3\nsession_max_ingress_kbps = 14\n\
             tcp_max_connections_per_ip = 5\ntcp_max_connections = 6\ntcp_bind = \"off\"\n\
             datachannel_max_message_bytes = 1000\nsession_datachannel_messages_per_second = 15\n\
             session_max_datachannels = 4\n\
             cors_origins = [\"https://a.example\"]\nmetrics_token = \"0123456789abcdef\"\n\
             metrics_bind = \"127.0.0.1:9\"\nshard_panic_hold_secs = 2.5\ntest_hooks = true\n",
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let (c, _) = build_config(parse(&["--config", file])).unwrap();
        assert_eq!(c.session_requests_per_second, 7);
        assert_eq!(c.max_tracks_per_request, 8);
        assert_eq!(
            c.limits,
            satsuma_sfu::config::Limits {
                app_new_sessions_per_second: 9,
                app_max_sessions: 10,
                session_max_publications: 11,
                session_max_legs: 12,
                session_max_pulls_per_track: 3,
                session_max_ingress_kbps: 14,
                tcp_max_connections_per_ip: 5,
                tcp_max_connections: 6,
                datachannel_max_message_bytes: 1000,
                session_datachannel_messages_per_second: 15,
                session_max_datachannels: 4,
            }
        );
        assert_eq!(c.cors_origins, vec!["https://a.example".to_string()]);
        assert_eq!(c.metrics_token.as_deref(), Some("0123456789abcdef"));
        assert_eq!(c.metrics_bind, Some("127.0.0.1:9".parse().unwrap()));
        assert_eq!(c.shard_panic_hold, std::time::Duration::from_millis(2500));
        assert!(c.test_hooks);
        assert_eq!(c.tcp_bind, TcpBind::Off);

        let (c, _) = build_config(parse(&[
            "--config",
            file,
            "--session-max-legs",
            "99",
            "--session-max-pulls-per-track",
            "1",
            "--app-max-sessions",
            "5",
            "--cors-origin",
            "https://b.example",
            "--cors-origin",
            "http://c.example:8080",
        ]))
        .unwrap();
        assert_eq!(c.limits.session_max_legs, 99);
        assert_eq!(c.limits.session_max_pulls_per_track, 1);
        assert_eq!(c.limits.app_max_sessions, 5);
        assert_eq!(c.limits.session_max_publications, 11);
        assert_eq!(c.cors_origins.len(), 2);
        let (c, _) = build_config(parse(&["--config", file, "--tcp-bind", "127.0.0.1:9"])).unwrap();
        assert_eq!(c.tcp_bind, TcpBind::At("127.0.0.1:9".parse().unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn defaults_are_safe_and_nonsense_is_refused() {
        let (c, _) = build_config(parse(&[])).unwrap();
        assert!(c.cors_origins.is_empty());
        assert!(c.metrics_token.is_none());
        assert!(!c.test_hooks);
        assert_eq!(c.tcp_bind, TcpBind::SameAsUdp, "ICE-TCP is on by default");
        assert_eq!(c.tcp_listen_addr(), Some(c.udp_bind));
        assert_eq!(c.limits, satsuma_sfu::config::Limits::default());
        assert!(build_config(parse(&["--session-max-legs", "0"])).is_err());
        assert!(build_config(parse(&["--cors-origin", "*"])).is_err());
        assert!(build_config(parse(&["--cors-origin", "https://a.example/"])).is_err());
        assert!(build_config(parse(&["--metrics-token", "short"])).is_err());
    }

    #[test]
    fn turn_keys_come_with_urls_and_secret() {
        let (c, _) = build_config(parse(&[])).unwrap();
        assert!(c.turn_keys.is_empty() && c.turn.is_empty());
        let key = "k1:0123456789abcdef";
        assert!(build_config(parse(&["--turn-key", key])).is_err());
        assert!(
            build_config(parse(&[
                "--turn-key",
                key,
                "--turn-url",
                "turn:t.example:3478"
            ]))
            .is_err()
        );
        let (c, _) = build_config(parse(&[
            "--turn-key",
            key,
            "--turn-url",
            "stun:t.example:3478,turn:t.example:3478?transport=tcp",
            "--turn-secret",
            "coturn-shared-secret-1",
        ]))
        .unwrap();
        assert_eq!(c.turn_keys.len(), 1);
        assert_eq!(c.turn.urls().count(), 2);
    }

    #[test]
    fn cluster_tools_make_a_ca_and_node_certificates_the_relay_accepts() {
        let dir = std::env::temp_dir().join(format!("satsuma-sfu-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let d = dir.to_str().unwrap();
        let run = |args: &[&str]| run_command(parse(args).command.unwrap());
        run(&["cluster-ca", "--out", d, "--cluster", "test"]).unwrap();
        assert!(
            run(&["cluster-ca", "--out", d]).is_err(),
            "never overwrites"
        );
        let ca = format!("{d}/ca.pem");
        let ca_key = format!("{d}/ca-key.pem");
        run(&[
            "node-cert",
            "--name",
            "sfu-0",
            "--out",
            d,
            "--ca",
            &ca,
            "--ca-key",
            &ca_key,
        ])
        .unwrap();
        run(&["node-cert", "--name", "sfu-9", "--out", d, "--self-signed"]).unwrap();
        assert!(
            run(&[
                "node-cert",
                "--name",
                "Bad_Name",
                "--out",
                d,
                "--self-signed"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from(["satsuma-sfu", "node-cert", "--name", "x", "--out", d]).is_err()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(format!("{d}/sfu-0-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let cli = parse(&[
            "--node-name",
            "sfu-0",
            "--relay-bind",
            "127.0.0.1:0",
            "--relay-cert",
            &format!("{d}/sfu-0.pem"),
            "--relay-key",
            &format!("{d}/sfu-0-key.pem"),
            "--relay-ca",
            &ca,
            "--relay-peer",
            "sfu-1=127.0.0.1:9",
        ]);
        let relay = relay_settings(&cli).unwrap().build().unwrap().unwrap();
        assert_eq!(relay.identity.node(), "sfu-0");
        assert_eq!(relay.peers.len(), 1);
        build_config(cli).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn help_explains_every_flag() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let subcommands = cmd.get_subcommands().flat_map(|c| c.get_arguments());
        for arg in cmd.get_arguments().chain(subcommands) {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            assert!(help.len() > 20, "--{id} has no real help text: {help:?}");
        }
        for sub in cmd.get_subcommands() {
            assert!(sub.get_about().is_some(), "{} has no help", sub.get_name());
        }
    }
}
