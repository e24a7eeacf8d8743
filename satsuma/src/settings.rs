//! The all-in-one server's settings: command-line flags (each also readable from a `SATSUMA_*`
//! environment variable) over an optional TOML file over built-in defaults.
//!
//! Resolution is a pure function ([`Settings::resolve`]) so the precedence rules are unit-tested
//! without touching the process environment.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use serde::Deserialize;

/// Default address of the web client, coordinator WebSocket and `/token` endpoint.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default address of the embedded SFU's HTTP API and `/metrics` (loopback only: browsers reach
/// the SFU API through the coordinator's proxy).
pub(crate) const DEFAULT_SFU_API: &str = "127.0.0.1:7880";
/// Default UDP socket for all WebRTC media.
pub(crate) const DEFAULT_MEDIA: &str = "0.0.0.0:7881";
/// Default app id shared by the embedded coordinator and SFU.
pub(crate) const DEFAULT_APP_ID: &str = "satsuma";

/// Satsuma all-in-one server: the coordinator, the SFU and the web client in one process.
///
/// Every option can also be given as an environment variable (shown in brackets) or as a key of
/// the same name (with `_` instead of `-`) in the TOML file given by `--config`. Precedence:
/// flag, then environment, then file, then the built-in default.
#[derive(Debug, Default, Parser)]
#[command(name = "satsuma", version, about, long_about)]
pub(crate) struct Cli {
    /// TOML configuration file. Keys: listen, public_url, sfu_api, media, media_tcp, announce_ips,
    /// detect_lan, web_dir, dev (alias dev_tokens), test_hooks, app_id, app_secret, token_secret,
    /// api_keys,
    /// drain_secs, log, log_format, tls_cert, tls_key, tls_self_signed, turn_urls, turn_secret,
    /// turn_ttl_secs, turn_keys.
    #[arg(long, env = "SATSUMA_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Address for the web client, the coordinator's WebSocket, `/token` and the SFU proxy
    /// (HTTP). Port 0 picks a free port. [default: 127.0.0.1:8080]
    #[arg(long, env = "SATSUMA_LISTEN", value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,

    /// URL printed for users to open (e.g. your reverse proxy's https:// address). Default:
    /// http://localhost:PORT/ for the bound web port.
    #[arg(long, env = "SATSUMA_PUBLIC_URL", value_name = "URL")]
    pub(crate) public_url: Option<String>,

    /// Address of the embedded SFU's HTTP API and Prometheus `/metrics`. Port 0 picks a free
    /// port. [default: 127.0.0.1:7880]
    #[arg(long, env = "SATSUMA_SFU_API", value_name = "ADDR")]
    pub(crate) sfu_api: Option<SocketAddr>,

    /// The one UDP socket that carries all WebRTC media (ICE, DTLS, SRTP). Port 0 picks a free
    /// port. [default: 0.0.0.0:7881]
    #[arg(long, env = "SATSUMA_MEDIA", value_name = "ADDR")]
    pub(crate) media: Option<SocketAddr>,

    /// ICE-TCP, for browsers whose network blocks UDP: the TCP address of the SFU's passive TCP
    /// candidates (priority below UDP, so browsers use it only when UDP fails). `udp`: the
    /// --media address over TCP (same IP and port number); `off`: no ICE-TCP; or an address.
    /// Open this TCP port in the firewall. [default: udp, i.e. 0.0.0.0:7881/tcp]
    #[arg(long, env = "SATSUMA_MEDIA_TCP", value_name = "ADDR|udp|off")]
    pub(crate) media_tcp: Option<satsuma_sfu::config::TcpBind>,

    /// Extra IP addresses announced to browsers as ICE candidates for the media port (repeat the
    /// flag, or separate with commas). Put your public IP here when serving the internet.
    #[arg(
        long = "announce-ip",
        env = "SATSUMA_ANNOUNCE_IPS",
        value_name = "IP",
        value_delimiter = ','
    )]
    pub(crate) announce_ips: Vec<IpAddr>,

    /// Also announce the machine's LAN addresses (private IPv4 of interfaces that are up), besides
    /// 127.0.0.1 and --announce-ip. Only used when the media socket is bound to 0.0.0.0.
    /// [default: true]
    #[arg(long, env = "SATSUMA_DETECT_LAN", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub(crate) detect_lan: Option<bool>,

    /// Directory of the web client's static files (index.html, pkg/ with the wasm). Default: the
    /// first that exists of ./client/web/public, <exe dir>/../share/satsuma/web, and the
    /// checkout this binary was built from.
    #[arg(long, env = "SATSUMA_WEB_DIR", value_name = "DIR")]
    pub(crate) web_dir: Option<PathBuf>,

    /// Dev mode, for trying Satsuma only: serve `POST /token`, which hands a join token for any
    /// room (host rights included) to anyone who asks, and start without a configured token
    /// secret (a random one). Without it, people join with a token (`satsuma token create`,
    /// `POST /api/v1/tokens` with an API key) or a host's invite link. `--dev-tokens` is an
    /// alias. [default: false]
    #[arg(
        long = "dev",
        visible_alias = "dev-tokens",
        overrides_with = "dev",
        env = "SATSUMA_DEV",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub(crate) dev: Option<bool>,

    /// Test hooks, for the test suites only: the web client honours its test URL parameters
    /// (`decrypt=0`, `keyless=1`, `test_visible_only_to`, ...) and drills, and the coordinator
    /// accepts test-only fields that make it behave like a hostile server. Never in production.
    /// [default: false]
    #[arg(long, env = "SATSUMA_TEST_HOOKS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub(crate) test_hooks: Option<bool>,

    /// App id under which the embedded coordinator talks to the embedded SFU.
    /// [default: satsuma]
    #[arg(long, env = "SATSUMA_APP_ID", value_name = "ID")]
    pub(crate) app_id: Option<String>,

    /// The SFU app secret shared by the embedded coordinator and SFU. Default: a random secret
    /// generated at each start (nothing else needs it in the all-in-one setup).
    #[arg(
        long,
        env = "SATSUMA_APP_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub(crate) app_secret: Option<String>,

    /// Secret (HS256, at least 32 bytes, e.g. `openssl rand -hex 32`) that signs and checks join
    /// tokens and invites; `satsuma token create` mints with it. Required unless --dev (then a
    /// random one at each start).
    #[arg(
        long,
        env = "SATSUMA_TOKEN_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub(crate) token_secret: Option<String>,

    /// API key of your app's backend as ID:SECRET (secret at least 32 bytes); it mints join
    /// tokens with `POST /api/v1/tokens` (HTTP Basic auth, or `Authorization: Bearer ID:SECRET`).
    /// Repeat the flag, or comma-separate in the environment variable.
    #[arg(
        long = "api-key",
        env = "SATSUMA_API_KEYS",
        value_name = "ID:SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub(crate) api_keys: Vec<String>,

    /// On SIGTERM/SIGINT, how long (seconds) to wait for connections to drain after clients were
    /// told to leave, before exiting anyway. [default: 5]
    #[arg(long, env = "SATSUMA_DRAIN_SECS", value_name = "SECONDS")]
    pub(crate) drain_secs: Option<f64>,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `satsuma_sfu=debug,info`.
    /// [default: info]
    #[arg(long, env = "SATSUMA_LOG", value_name = "FILTER")]
    pub(crate) log: Option<String>,

    /// Log output format: `text` or `json`. [default: text]
    #[arg(long, env = "SATSUMA_LOG_FORMAT", value_name = "FORMAT")]
    pub(crate) log_format: Option<LogFormat>,

    /// PEM certificate chain for serving the web port over HTTPS (built-in rustls); needs
    /// --tls-key. Browsers only allow camera and microphone on https:// (or localhost).
    #[arg(
        long,
        env = "SATSUMA_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub(crate) tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "SATSUMA_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub(crate) tls_key: Option<PathBuf>,

    /// Serve the web port over HTTPS with a certificate generated at start for localhost and the
    /// announced addresses. Browsers warn about it; accept the warning to try Satsuma from
    /// another machine on the LAN. [default: false]
    #[arg(long, env = "SATSUMA_TLS_SELF_SIGNED", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub(crate) tls_self_signed: Option<bool>,

    /// A STUN or TURN URL handed to every participant with short-lived TURN credentials, so
    /// browsers behind firewalls that block UDP can relay through your TURN server (coturn).
    /// Repeat the flag, or comma-separate in the environment variable, e.g.
    /// turn:turn.example.com:3478?transport=udp, turn:turn.example.com:3478?transport=tcp,
    /// turns:turn.example.com:443?transport=tcp. [default: none]
    #[arg(
        long = "turn-url",
        env = "SATSUMA_TURN_URLS",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub(crate) turn_urls: Vec<String>,

    /// The TURN server's shared secret (coturn: `use-auth-secret` and
    /// `static-auth-secret=SECRET`), at least 16 characters; required with turn: and turns:
    /// URLs.
    #[arg(
        long,
        env = "SATSUMA_TURN_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub(crate) turn_secret: Option<String>,

    /// Lifetime in seconds (1 to 86400) of the TURN credentials each participant gets; the web
    /// client fetches fresh ones before they expire. [default: 21600]
    #[arg(long, env = "SATSUMA_TURN_TTL_SECS", value_name = "SECONDS")]
    pub(crate) turn_ttl_secs: Option<u64>,

    /// A TURN key as ID:TOKEN (token at least 16 characters) for the embedded SFU's
    /// Cloudflare-Realtime-compatible route POST /v1/turn/keys/ID/credentials/generate-ice-servers
    /// (Authorization: Bearer TOKEN), which hands out credentials for the same TURN URLs. Repeat
    /// the flag, or comma-separate in the environment variable. [default: none]
    #[arg(
        long = "turn-key",
        env = "SATSUMA_TURN_KEYS",
        value_name = "ID:TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub(crate) turn_keys: Vec<String>,

    /// The embedded SFU's quotas: the same flags and SATSUMA_SFU_* environment variables as
    /// satsuma-sfu (file: the [sfu] table).
    #[command(flatten, next_help_heading = "Embedded SFU quotas")]
    pub(crate) sfu_limits: satsuma_sfu::config::LimitSettings,

    /// Only check the configuration (file, environment and flags): print the resolved settings
    /// (secrets shown only as set or not) and exit with status 0, or 2 if it is invalid.
    #[arg(long)]
    pub(crate) check_config: bool,

    /// Instead of serving, run a tool (see `satsuma help verify-client`, `satsuma help token`).
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

/// Tools of the `satsuma` binary besides the server.
#[derive(Debug, Clone, clap::Subcommand)]
pub(crate) enum Command {
    /// Check that a deployment serves exactly your local build of the web client.
    ///
    /// Fetches URL/manifest.json and every file it lists, hashes what was served (SHA-256) and
    /// compares each file with the local build (the web client's directory after
    /// scripts/build-web.sh; hashes are recomputed from the files). Prints one line per file
    /// (ok, DIFFERS, MANIFEST, MISSING, EXTRA, UNREACHABLE) and exits 1 naming every file that
    /// does not match, 0 when all match, 2 when the check could not run.
    ///
    /// It proves what this server served to this command, not to everyone: run it from where
    /// your users are, and compare the SHA-256 of index.html (which pins every module through
    /// its integrity hashes) over a channel you trust.
    VerifyClient(crate::verify::VerifyArgs),
    /// Join tokens: `satsuma token create` mints one with the configured token secret.
    #[command(subcommand)]
    Token(crate::token::TokenCommand),
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The `--config` TOML file. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileSettings {
    /// See `--listen`.
    pub(crate) listen: Option<SocketAddr>,
    /// See `--public-url`.
    pub(crate) public_url: Option<String>,
    /// See `--sfu-api`.
    pub(crate) sfu_api: Option<SocketAddr>,
    /// See `--media`.
    pub(crate) media: Option<SocketAddr>,
    /// See `--media-tcp`.
    pub(crate) media_tcp: Option<satsuma_sfu::config::TcpBind>,
    /// See `--announce-ip`.
    pub(crate) announce_ips: Option<Vec<IpAddr>>,
    /// See `--detect-lan`.
    pub(crate) detect_lan: Option<bool>,
    /// See `--web-dir`.
    pub(crate) web_dir: Option<PathBuf>,
    /// See `--dev` (`dev_tokens` is accepted too).
    #[serde(alias = "dev_tokens")]
    pub(crate) dev: Option<bool>,
    /// See `--test-hooks`.
    pub(crate) test_hooks: Option<bool>,
    /// See `--app-id`.
    pub(crate) app_id: Option<String>,
    /// See `--app-secret`.
    pub(crate) app_secret: Option<String>,
    /// See `--token-secret`.
    pub(crate) token_secret: Option<String>,
    /// See `--api-key`.
    pub(crate) api_keys: Option<Vec<String>>,
    /// See `--drain-secs`.
    pub(crate) drain_secs: Option<f64>,
    /// See `--log`.
    pub(crate) log: Option<String>,
    /// See `--log-format`.
    pub(crate) log_format: Option<LogFormat>,
    /// See `--tls-cert`.
    pub(crate) tls_cert: Option<PathBuf>,
    /// See `--tls-key`.
    pub(crate) tls_key: Option<PathBuf>,
    /// See `--tls-self-signed`.
    pub(crate) tls_self_signed: Option<bool>,
    /// See `--turn-url`.
    pub(crate) turn_urls: Option<Vec<String>>,
    /// See `--turn-secret`.
    pub(crate) turn_secret: Option<String>,
    /// See `--turn-ttl-secs`.
    pub(crate) turn_ttl_secs: Option<u64>,
    /// See `--turn-key`.
    pub(crate) turn_keys: Option<Vec<String>>,
    /// The `[sfu]` table: the embedded SFU's quotas, keys as in satsuma-sfu's file
    /// (`session_max_legs = 64`, …).
    pub(crate) sfu: Option<satsuma_sfu::config::LimitSettings>,
    /// The `[coordinator]` table: the embedded coordinator's budgets and timers, keys as in
    /// satsuma-coordinator's file (`max_key_package_bytes = 16384`, …).
    pub(crate) coordinator: Option<satsuma_coordinator::config::Cli>,
}

impl FileSettings {
    /// Reads and parses a TOML settings file.
    pub(crate) fn load(path: &Path) -> anyhow::Result<FileSettings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

/// Fully resolved settings. Secrets that were not configured are `None` here and generated when
/// the stack starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    /// The embedded SFU's quotas (unset: satsuma-sfu's defaults).
    pub(crate) sfu_limits: satsuma_sfu::config::LimitSettings,
    /// The embedded coordinator's budgets, limits and timers (from the `[coordinator]` table
    /// and `SATSUMA_COORD_*`); what the stack decides itself (addresses, secrets, dev mode,
    /// the SFU node) is set over it by `stack::coordinator_config`.
    pub(crate) coordinator: satsuma_coordinator::Config,
    /// Web / coordinator listen address.
    pub(crate) listen: SocketAddr,
    /// URL to print, if configured.
    pub(crate) public_url: Option<String>,
    /// Embedded SFU API address.
    pub(crate) sfu_api: SocketAddr,
    /// Media UDP address.
    pub(crate) media: SocketAddr,
    /// ICE-TCP listener of the embedded SFU.
    pub(crate) media_tcp: satsuma_sfu::config::TcpBind,
    /// Configured extra announce IPs.
    pub(crate) announce_ips: Vec<IpAddr>,
    /// Whether LAN addresses are detected and announced.
    pub(crate) detect_lan: bool,
    /// Configured web dir (None: search the default places).
    pub(crate) web_dir: Option<PathBuf>,
    /// Dev mode: `/token` on, random token secret allowed.
    pub(crate) dev: bool,
    /// Test hooks on (test suites only).
    pub(crate) test_hooks: bool,
    /// App id between coordinator and SFU.
    pub(crate) app_id: String,
    /// App secret, if configured.
    pub(crate) app_secret: Option<String>,
    /// Token signing secret, if configured.
    pub(crate) token_secret: Option<String>,
    /// API keys of app backends.
    pub(crate) api_keys: Vec<satsuma_coordinator::auth::ApiKey>,
    /// Drain time on shutdown.
    pub(crate) drain: Duration,
    /// Log filter.
    pub(crate) log: String,
    /// Log format.
    pub(crate) log_format: LogFormat,
    /// Built-in HTTPS on the web port.
    pub(crate) tls: Tls,
    /// STUN/TURN URLs and shared secret for participants (empty: none).
    pub(crate) turn: satsuma_common::turn::TurnServers,
    /// Lifetime of participants' TURN credentials, seconds.
    pub(crate) turn_ttl_secs: u64,
    /// TURN keys of the embedded SFU's `generate-ice-servers` route.
    pub(crate) turn_keys: Vec<satsuma_sfu::config::TurnKey>,
}

/// Whether and how the web port speaks HTTPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tls {
    /// Plain HTTP (behind a TLS reverse proxy in production).
    Off,
    /// Certificate chain and key from PEM files.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// A certificate generated at start.
    SelfSigned,
}

fn parse_default(addr: &str) -> SocketAddr {
    // The defaults are literals checked by a unit test; fall back to loopback rather than panic.
    addr.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// The embedded coordinator's configuration from `SATSUMA_COORD_*` over the `[coordinator]`
/// table (the same keys as satsuma-coordinator's file). Keys the stack sets itself are refused
/// there, naming the top-level setting to use instead.
fn embedded_coordinator(
    table: satsuma_coordinator::config::Cli,
) -> anyhow::Result<satsuma_coordinator::Config> {
    let env = satsuma_coordinator::config::Cli::try_parse_from(["satsuma"])
        .map_err(|e| anyhow::anyhow!("SATSUMA_COORD_* environment: {e}"))?;
    let mut c = env.over(table);
    let owned = [
        ("listen", c.listen.is_some(), "listen"),
        ("jwt_secret", c.jwt_secret.is_some(), "token_secret"),
        ("api_keys", c.api_keys.is_some(), "api_keys"),
        ("dev", c.dev.is_some(), "dev"),
        ("test_hooks", c.test_hooks.is_some(), "test_hooks"),
        ("web_dir", c.web_dir.is_some(), "web_dir"),
        ("sfu_nodes", c.sfu_nodes.is_some(), "sfu_api"),
        ("sfu_app_id", c.sfu_app_id.is_some(), "app_id"),
        ("sfu_app_secret", c.sfu_app_secret.is_some(), "app_secret"),
        ("public_url", c.public_url.is_some(), "public_url"),
        ("turn_urls", c.turn_urls.is_some(), "turn_urls"),
        ("turn_secret", c.turn_secret.is_some(), "turn_secret"),
        ("turn_ttl_s", c.turn_ttl_s.is_some(), "turn_ttl_secs"),
        ("log", c.log.is_some(), "log"),
        ("config", c.config.is_some(), "config"),
    ];
    if let Some((key, _, instead)) = owned.iter().find(|(_, set, _)| *set) {
        bail!(
            "[coordinator] {key} (or SATSUMA_COORD_{}) is set by satsuma itself: use its \
             top-level setting {instead}",
            key.to_uppercase()
        );
    }
    // Dev mode only to pass the secret check here: the stack sets the real secret and mode.
    c.dev = Some(true);
    // Host-started recording with only a directory: the satsuma-record installed next to
    // this binary.
    if c.recordings_dir.is_some() && c.recorder_command.is_none() {
        let exe = std::env::current_exe()
            .map_err(|e| anyhow::anyhow!("cannot find this executable's path: {e}"))?;
        let sibling = exe.with_file_name("satsuma-record");
        if !sibling.is_file() {
            bail!(
                "[coordinator] recordings_dir is set but there is no {}: set recorder_command \
                 (SATSUMA_COORD_RECORDER_COMMAND) to satsuma-record's path",
                sibling.display()
            );
        }
        c.recorder_command = Some(sibling);
    }
    c.resolve()
        .map_err(|e| anyhow::anyhow!("[coordinator]: {e}"))
}

impl Settings {
    /// Merges flags/environment (`cli`) over the file over the defaults, and checks the result.
    pub(crate) fn resolve(cli: Cli, file: FileSettings) -> anyhow::Result<Settings> {
        let drain_secs = cli.drain_secs.or(file.drain_secs).unwrap_or(5.0);
        if !drain_secs.is_finite() || !(0.0..=3600.0).contains(&drain_secs) {
            bail!("drain_secs must be between 0 and 3600, got {drain_secs}");
        }
        let app_id = cli
            .app_id
            .or(file.app_id)
            .unwrap_or_else(|| DEFAULT_APP_ID.to_string());
        if app_id.is_empty() || app_id.contains('/') || app_id.contains(':') {
            bail!("app_id must be non-empty and contain neither '/' nor ':', got {app_id:?}");
        }
        let app_secret = cli.app_secret.or(file.app_secret);
        let token_secret = cli.token_secret.or(file.token_secret);
        for (name, secret) in [("app_secret", &app_secret), ("token_secret", &token_secret)] {
            if let Some(s) = secret {
                satsuma_coordinator::auth::check_secret(name, s).map_err(anyhow::Error::msg)?;
            }
        }
        let api_key_strings = if cli.api_keys.is_empty() {
            file.api_keys.unwrap_or_default()
        } else {
            cli.api_keys
        };
        let mut api_keys = Vec::new();
        for k in &api_key_strings {
            let key: satsuma_coordinator::auth::ApiKey = k
                .parse()
                .map_err(|e: String| anyhow::anyhow!("api_keys: {e}"))?;
            satsuma_coordinator::auth::check_secret(
                &format!("the secret of API key {:?}", key.id),
                &key.secret,
            )
            .map_err(anyhow::Error::msg)?;
            if api_keys
                .iter()
                .any(|k: &satsuma_coordinator::auth::ApiKey| k.id == key.id)
            {
                bail!("API key {:?} is configured twice", key.id);
            }
            api_keys.push(key);
        }
        let public_url = cli.public_url.or(file.public_url);
        if let Some(url) = &public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bail!("public_url must start with http:// or https://, got {url:?}");
        }
        let announce_ips = if cli.announce_ips.is_empty() {
            file.announce_ips.unwrap_or_default()
        } else {
            cli.announce_ips
        };
        let tls_cert = cli.tls_cert.or(file.tls_cert);
        let tls_key = cli.tls_key.or(file.tls_key);
        let self_signed = cli
            .tls_self_signed
            .or(file.tls_self_signed)
            .unwrap_or(false);
        let tls = match (tls_cert, tls_key, self_signed) {
            (None, None, false) => Tls::Off,
            (None, None, true) => Tls::SelfSigned,
            (Some(cert), Some(key), false) => Tls::Files { cert, key },
            (Some(_), Some(_), true) => {
                bail!("tls_self_signed and tls_cert/tls_key exclude each other")
            }
            _ => bail!("tls_cert and tls_key must be given together"),
        };
        let coordinator = embedded_coordinator(file.coordinator.unwrap_or_default())?;
        let turn_urls = if cli.turn_urls.is_empty() {
            file.turn_urls.unwrap_or_default()
        } else {
            cli.turn_urls
        };
        let turn = satsuma_coordinator::config::turn_servers(
            turn_urls,
            cli.turn_secret.or(file.turn_secret),
        )?;
        let turn_ttl_secs = cli
            .turn_ttl_secs
            .or(file.turn_ttl_secs)
            .unwrap_or(satsuma_coordinator::config::DEFAULT_TURN_TTL_S);
        satsuma_common::turn::check_ttl(turn_ttl_secs)
            .map_err(|e| anyhow::anyhow!("turn_ttl_secs: {e}"))?;
        let turn_key_strings = if cli.turn_keys.is_empty() {
            file.turn_keys.unwrap_or_default()
        } else {
            cli.turn_keys
        };
        let turn_keys = turn_key_strings
            .iter()
            .map(|k| k.parse::<satsuma_sfu::config::TurnKey>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("turn_keys: {e}"))?;
        let sfu_limits = cli.sfu_limits.or(file.sfu.unwrap_or_default());
        let mut probe = satsuma_sfu::Config::default();
        sfu_limits.apply(&mut probe);
        probe
            .limits
            .validate()
            .map_err(|e| anyhow::anyhow!("[sfu] quotas: {e}"))?;
        probe.turn_keys = turn_keys.clone();
        probe.turn = turn.clone();
        probe.validate()?;
        Ok(Settings {
            coordinator,
            sfu_limits,
            tls,
            turn,
            turn_ttl_secs,
            turn_keys,
            listen: cli
                .listen
                .or(file.listen)
                .unwrap_or_else(|| parse_default(DEFAULT_LISTEN)),
            public_url,
            sfu_api: cli
                .sfu_api
                .or(file.sfu_api)
                .unwrap_or_else(|| parse_default(DEFAULT_SFU_API)),
            media: cli
                .media
                .or(file.media)
                .unwrap_or_else(|| parse_default(DEFAULT_MEDIA)),
            media_tcp: cli.media_tcp.or(file.media_tcp).unwrap_or_default(),
            announce_ips,
            detect_lan: cli.detect_lan.or(file.detect_lan).unwrap_or(true),
            web_dir: cli.web_dir.or(file.web_dir),
            dev: cli.dev.or(file.dev).unwrap_or(false),
            test_hooks: cli.test_hooks.or(file.test_hooks).unwrap_or(false),
            app_id,
            app_secret,
            token_secret,
            api_keys,
            drain: Duration::from_secs_f64(drain_secs),
            log: cli.log.or(file.log).unwrap_or_else(|| "info".to_string()),
            log_format: cli
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
        })
    }

    /// The resolved settings as `key = value` lines, secrets redacted.
    pub(crate) fn describe(&self) -> String {
        let secret = |s: &Option<String>| {
            if s.is_some() {
                "(set)"
            } else {
                "(random at each start)"
            }
        };
        let token_secret = match (&self.token_secret, self.dev) {
            (Some(_), _) => "(set)",
            (None, true) => "(random at each start: dev mode)",
            (None, false) => "(NOT SET: required to start without --dev)",
        };
        let key_ids: Vec<&str> = self.api_keys.iter().map(|k| k.id.as_str()).collect();
        let ips: Vec<String> = self.announce_ips.iter().map(ToString::to_string).collect();
        [
            format!("listen = {}", self.listen),
            format!(
                "public_url = {}",
                self.public_url
                    .as_deref()
                    .unwrap_or("(http://localhost:PORT/)")
            ),
            format!("sfu_api = {}", self.sfu_api),
            format!("media = {}", self.media),
            format!("media_tcp = {}", self.media_tcp),
            format!("announce_ips = [{}]", ips.join(", ")),
            format!("detect_lan = {}", self.detect_lan),
            format!(
                "web_dir = {}",
                self.web_dir
                    .as_ref()
                    .map_or("(search default places)".to_string(), |d| d
                        .display()
                        .to_string())
            ),
            format!("dev = {}", self.dev),
            format!("sfu = {:?}", self.sfu_limits),
            format!("test_hooks = {}", self.test_hooks),
            format!("app_id = {}", self.app_id),
            format!("app_secret = {}", secret(&self.app_secret)),
            format!("token_secret = {token_secret}"),
            format!("api_keys = [{}] (secrets not shown)", key_ids.join(", ")),
            format!("drain_secs = {}", self.drain.as_secs_f64()),
            format!("log = {}", self.log),
            format!("log_format = {:?}", self.log_format).to_lowercase(),
            format!(
                "turn_urls = [{}]",
                self.turn.urls().collect::<Vec<_>>().join(", ")
            ),
            format!(
                "turn_secret = {}",
                if self.turn.urls().any(|u| u.starts_with("turn")) {
                    "(set)"
                } else {
                    "(not set)"
                }
            ),
            format!("turn_ttl_secs = {}", self.turn_ttl_secs),
            format!(
                "turn_keys = [{}] (tokens not shown)",
                self.turn_keys
                    .iter()
                    .map(|k| k.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            match &self.tls {
                Tls::Off => "tls = off".to_string(),
                Tls::SelfSigned => "tls = self-signed".to_string(),
                Tls::Files { cert, key } => {
                    format!("tls = cert {} key {}", cert.display(), key.display())
                }
            },
        ]
        .join("\n")
    }

    /// Reads the file named by `--config` (if any) and resolves.
    pub(crate) fn from_cli(cli: Cli) -> anyhow::Result<Settings> {
        let file = match &cli.config {
            Some(path) => FileSettings::load(path)?,
            None => FileSettings::default(),
        };
        Settings::resolve(cli, file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_quick_start() {
        let s = Settings::resolve(Cli::default(), FileSettings::default()).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.sfu_api, "127.0.0.1:7880".parse().unwrap());
        assert_eq!(s.media, "0.0.0.0:7881".parse().unwrap());
        assert!(!s.dev, "dev mode must be asked for");
        assert!(!s.test_hooks);
        assert!(s.detect_lan);
        assert_eq!(s.app_id, "satsuma");
        assert_eq!(s.app_secret, None);
        assert_eq!(s.drain, Duration::from_secs(5));
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let file: FileSettings = toml::from_str(
            "listen = \"0.0.0.0:9000\"\nmedia = \"0.0.0.0:9001\"\ndev_tokens = false\n\
             announce_ips = [\"203.0.113.7\"]\nlog_format = \"json\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from(["satsuma", "--listen", "127.0.0.1:0", "--detect-lan=false"])
            .unwrap();
        let s = Settings::resolve(cli, file).unwrap();
        assert_eq!(s.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(s.media, "0.0.0.0:9001".parse().unwrap());
        assert!(!s.dev);
        assert!(!s.detect_lan);
        assert_eq!(
            s.announce_ips,
            vec!["203.0.113.7".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(s.log_format, LogFormat::Json);
    }

    #[test]
    fn sfu_quotas_come_from_the_sfu_table_and_flags_and_reach_the_embedded_sfu() {
        let file: FileSettings =
            toml::from_str("[sfu]\nsession_max_legs = 7\nsession_max_pulls_per_track = 3\n")
                .unwrap();
        let cli = Cli::try_parse_from(["satsuma", "--session-max-pulls-per-track", "1"]).unwrap();
        let s = Settings {
            dev: true,
            ..Settings::resolve(cli, file).unwrap()
        };
        let secrets = crate::stack::Secrets::from_settings(&s).unwrap();
        let sfu = crate::stack::sfu_config(&s, &secrets, Vec::new());
        assert_eq!(sfu.limits.session_max_legs, 7);
        assert_eq!(sfu.limits.session_max_pulls_per_track, 1, "the flag wins");
        assert_eq!(
            sfu.limits.app_max_sessions,
            satsuma_sfu::config::Limits::default().app_max_sessions
        );
        // Unknown keys in the table and quotas that let nothing through are refused.
        assert!(toml::from_str::<FileSettings>("[sfu]\nsession_max_lgs = 7\n").is_err());
        let zero: FileSettings = toml::from_str("[sfu]\nsession_max_legs = 0\n").unwrap();
        assert!(Settings::resolve(Cli::default(), zero).is_err());
    }

    #[test]
    fn ice_tcp_is_on_by_default_and_its_address_reaches_the_embedded_sfu() {
        use satsuma_sfu::config::TcpBind;
        let dev = |s: Settings| Settings { dev: true, ..s };
        let s = dev(Settings::resolve(Cli::default(), FileSettings::default()).unwrap());
        assert_eq!(s.media_tcp, TcpBind::SameAsUdp);
        let secrets = crate::stack::Secrets::from_settings(&s).unwrap();
        let sfu = crate::stack::sfu_config(&s, &secrets, Vec::new());
        assert_eq!(sfu.tcp_listen_addr(), Some(s.media));
        let file: FileSettings = toml::from_str("media_tcp = \"0.0.0.0:443\"\n").unwrap();
        let s = dev(Settings::resolve(Cli::default(), file).unwrap());
        let sfu = crate::stack::sfu_config(&s, &secrets, Vec::new());
        assert_eq!(sfu.tcp_listen_addr(), Some("0.0.0.0:443".parse().unwrap()));
        let file: FileSettings = toml::from_str("media_tcp = \"0.0.0.0:443\"\n").unwrap();
        let cli = Cli::try_parse_from(["satsuma", "--media-tcp", "off"]).unwrap();
        let s = dev(Settings::resolve(cli, file).unwrap());
        assert_eq!(s.media_tcp, TcpBind::Off, "the flag wins");
        let sfu = crate::stack::sfu_config(&s, &secrets, Vec::new());
        assert_eq!(sfu.tcp_listen_addr(), None);
        assert!(Cli::try_parse_from(["satsuma", "--media-tcp", "nonsense"]).is_err());
    }

    #[test]
    fn coordinator_budgets_come_from_the_coordinator_table() {
        let file: FileSettings = toml::from_str(
            "[coordinator]\nmax_key_package_bytes = 8192\nsend_budget_bytes = 524288\n\
             allowed_origins = [\"https://meet.example.org\"]\n",
        )
        .unwrap();
        let s = Settings {
            dev: true,
            ..Settings::resolve(Cli::default(), file).unwrap()
        };
        let secrets = crate::stack::Secrets::from_settings(&s).unwrap();
        let c = crate::stack::coordinator_config(
            &s,
            &secrets,
            PathBuf::from("web"),
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:7880".parse().unwrap(),
        );
        assert_eq!(c.budgets.max_key_package_bytes, 8192);
        assert_eq!(c.budgets.send_budget_bytes, 524_288);
        assert_eq!(
            c.budgets.allowed_origins,
            vec!["https://meet.example.org".to_owned()]
        );
        assert!(c.dev, "the stack's dev mode, not the table's");
        assert_eq!(c.jwt_secret, secrets.token_secret);
        // Unknown keys, and keys the stack owns, are refused with the setting to use.
        assert!(toml::from_str::<FileSettings>("[coordinator]\nmax_kp = 1\n").is_err());
        let owned: FileSettings =
            toml::from_str("[coordinator]\nlisten = \"0.0.0.0:1\"\n").unwrap();
        let err = Settings::resolve(Cli::default(), owned)
            .unwrap_err()
            .to_string();
        assert!(err.contains("top-level setting listen"), "{err}");
        let bad: FileSettings = toml::from_str("[coordinator]\nrate_per_second = 0\n").unwrap();
        assert!(Settings::resolve(Cli::default(), bad).is_err());
    }

    #[test]
    fn recording_comes_from_the_coordinator_table() {
        // An explicit recorder command is passed through to the embedded coordinator.
        let file: FileSettings = toml::from_str(
            "[coordinator]\nrecorder_command = \"/opt/satsuma/satsuma-record\"\n\
             recordings_dir = \"/srv/recordings\"\nrecorder_name = \"Minutes\"\n",
        )
        .unwrap();
        let s = Settings::resolve(Cli::default(), file).unwrap();
        let r = s.coordinator.recording.clone().unwrap();
        assert_eq!(r.command, PathBuf::from("/opt/satsuma/satsuma-record"));
        assert_eq!(r.dir, PathBuf::from("/srv/recordings"));
        assert_eq!(r.name, "Minutes");
        // Only a directory: the satsuma-record next to this executable, or a clear refusal
        // (the unit test binary has none beside it).
        let file: FileSettings =
            toml::from_str("[coordinator]\nrecordings_dir = \"/srv/recordings\"\n").unwrap();
        let exe = std::env::current_exe().unwrap();
        match Settings::resolve(Cli::default(), file) {
            Ok(s) => assert_eq!(
                s.coordinator.recording.unwrap().command,
                exe.with_file_name("satsuma-record")
            ),
            Err(e) => assert!(e.to_string().contains("recorder_command"), "{e}"),
        }
        // Without either, nobody may record.
        let s = Settings::resolve(Cli::default(), FileSettings::default()).unwrap();
        assert!(s.coordinator.recording.is_none());
    }

    #[test]
    fn announce_ips_accept_commas_and_repeats() {
        let cli = Cli::try_parse_from([
            "satsuma",
            "--announce-ip",
            "192.0.2.1,192.0.2.2",
            "--announce-ip",
            "2001:db8::1",
        ])
        .unwrap();
        assert_eq!(cli.announce_ips.len(), 3);
    }

    #[test]
    fn bare_boolean_flag_means_true() {
        let cli = Cli::try_parse_from(["satsuma", "--dev"]).unwrap();
        assert_eq!(cli.dev, Some(true));
        let cli = Cli::try_parse_from(["satsuma", "--dev-tokens"]).unwrap();
        assert_eq!(cli.dev, Some(true));
        let cli = Cli::try_parse_from(["satsuma", "--dev-tokens=false"]).unwrap();
        assert_eq!(cli.dev, Some(false));
        // scripts/run.sh passes --dev first; a later --dev=false wins.
        let cli = Cli::try_parse_from(["satsuma", "--dev", "--dev=false"]).unwrap();
        assert_eq!(cli.dev, Some(false));
        let file: FileSettings = toml::from_str("dev = true\n").unwrap();
        assert_eq!(file.dev, Some(true));
    }

    #[test]
    fn test_hooks_come_from_flag_or_file_and_are_off_by_default() {
        let cli = Cli::try_parse_from(["satsuma", "--test-hooks"]).unwrap();
        let s = Settings::resolve(cli, FileSettings::default()).unwrap();
        assert!(s.test_hooks);
        assert!(s.describe().contains("test_hooks = true"));
        let file: FileSettings = toml::from_str("test_hooks = true\n").unwrap();
        assert!(Settings::resolve(Cli::default(), file).unwrap().test_hooks);
        let file: FileSettings = toml::from_str("test_hooks = true\n").unwrap();
        let cli = Cli::try_parse_from(["satsuma", "--test-hooks=false"]).unwrap();
        assert!(!Settings::resolve(cli, file).unwrap().test_hooks);
        let s = Settings::resolve(Cli::default(), FileSettings::default()).unwrap();
        assert!(s.describe().contains("test_hooks = false"));
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(toml::from_str::<FileSettings>("bogus = 1").is_err());
        let short = Cli {
            app_secret: Some("short".into()),
            ..Cli::default()
        };
        assert!(Settings::resolve(short, FileSettings::default()).is_err());
        let drain = Cli {
            drain_secs: Some(f64::NAN),
            ..Cli::default()
        };
        assert!(Settings::resolve(drain, FileSettings::default()).is_err());
        let url = Cli {
            public_url: Some("localhost:8080".into()),
            ..Cli::default()
        };
        assert!(Settings::resolve(url, FileSettings::default()).is_err());
        let app = Cli {
            app_id: Some("a/b".into()),
            ..Cli::default()
        };
        assert!(Settings::resolve(app, FileSettings::default()).is_err());
    }

    #[test]
    fn secrets_and_api_keys_are_checked_naming_the_setting() {
        let good = "0123456789abcdef0123456789abcdef";
        for (cli, setting) in [
            (
                Cli {
                    token_secret: Some("short-secret".into()),
                    ..Cli::default()
                },
                "token_secret",
            ),
            (
                Cli {
                    token_secret: Some("REPLACE-WITH-another-openssl-rand-hex-32".into()),
                    ..Cli::default()
                },
                "token_secret",
            ),
            (
                Cli {
                    app_secret: Some("REPLACE-WITH-openssl-rand-hex-32".into()),
                    ..Cli::default()
                },
                "app_secret",
            ),
            (
                Cli {
                    api_keys: vec!["app:short".into()],
                    ..Cli::default()
                },
                "API key \"app\"",
            ),
        ] {
            let e = Settings::resolve(cli, FileSettings::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(setting), "{setting}: {e}");
        }
        let cli = Cli::try_parse_from([
            "satsuma",
            "--token-secret",
            good,
            "--api-key",
            &format!("app:{good}"),
        ])
        .unwrap();
        let s = Settings::resolve(cli, FileSettings::default()).unwrap();
        assert_eq!(s.api_keys.len(), 1);
        assert!(s.describe().contains("api_keys = [app]"));
        assert!(!s.describe().contains(good));
    }

    #[test]
    fn tls_options_must_be_consistent() {
        let s = Settings::resolve(Cli::default(), FileSettings::default()).unwrap();
        assert_eq!(s.tls, Tls::Off);
        let cli = Cli::try_parse_from(["satsuma", "--tls-self-signed"]).unwrap();
        let s = Settings::resolve(cli, FileSettings::default()).unwrap();
        assert_eq!(s.tls, Tls::SelfSigned);
        let file: FileSettings =
            toml::from_str("tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n").unwrap();
        let s = Settings::resolve(Cli::default(), file).unwrap();
        assert_eq!(
            s.tls,
            Tls::Files {
                cert: "c.pem".into(),
                key: "k.pem".into()
            }
        );
        assert!(Cli::try_parse_from(["satsuma", "--tls-cert", "c.pem"]).is_err());
        let half: FileSettings = toml::from_str("tls_cert = \"c.pem\"\n").unwrap();
        assert!(Settings::resolve(Cli::default(), half).is_err());
        let both: FileSettings =
            toml::from_str("tls_cert = \"c\"\ntls_key = \"k\"\ntls_self_signed = true\n").unwrap();
        assert!(Settings::resolve(Cli::default(), both).is_err());
    }

    #[test]
    fn describe_never_shows_secrets() {
        let cli = Cli {
            app_secret: Some("very-secret-app-secret-0123456789abcdef".into()),
            ..Cli::default()
        };
        let text = Settings::resolve(cli, FileSettings::default())
            .unwrap()
            .describe();
        assert!(!text.contains("very-secret-app-secret-0123456789abcdef"));
        assert!(text.contains("app_secret = (set)"));
        assert!(text.contains("token_secret = (NOT SET"), "{text}");
        assert!(text.contains("log_format = text"));
    }

    #[test]
    fn turn_comes_from_flags_env_or_file_and_is_checked() {
        let s = Settings::resolve(Cli::default(), FileSettings::default()).unwrap();
        assert!(s.turn.is_empty() && s.turn_keys.is_empty());
        assert_eq!(s.turn_ttl_secs, 21_600);
        let file: FileSettings = toml::from_str(
            "turn_urls = [\"stun:turn.example.com:3478\", \"turn:turn.example.com:3478?transport=udp\", \
             \"turns:turn.example.com:443?transport=tcp\"]\n\
             turn_secret = \"coturn-secret-0123456789\"\nturn_ttl_secs = 3600\n\
             turn_keys = [\"k1:turn-key-token-0123456789\"]\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from(["satsuma", "--turn-ttl-secs", "600"]).unwrap();
        let s = Settings::resolve(cli, file).unwrap();
        assert_eq!(s.turn.urls().count(), 3);
        assert_eq!(s.turn_ttl_secs, 600);
        assert_eq!(s.turn_keys.len(), 1);
        let text = s.describe();
        assert!(!text.contains("coturn-secret-0123456789"), "{text}");
        assert!(!text.contains("turn-key-token"), "{text}");
        assert!(text.contains("turn_secret = (set)"), "{text}");
        assert!(text.contains("turn_keys = [k1]"), "{text}");
        let secrets = crate::stack::Secrets {
            app_secret: "a".repeat(32),
            token_secret: "t".repeat(32),
        };
        let coord = crate::stack::coordinator_config(
            &s,
            &secrets,
            PathBuf::from("web"),
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:7880".parse().unwrap(),
        );
        assert_eq!(coord.turn, s.turn);
        assert_eq!(coord.turn_ttl_s, 600);
        let sfu = crate::stack::sfu_config(&s, &secrets, Vec::new());
        assert_eq!(sfu.turn, s.turn);
        assert_eq!(sfu.turn_keys, s.turn_keys);

        let bad = |args: &[&str]| {
            let mut all = vec!["satsuma"];
            all.extend_from_slice(args);
            Settings::resolve(Cli::try_parse_from(all).unwrap(), FileSettings::default())
                .unwrap_err()
                .to_string()
        };
        assert!(bad(&["--turn-url", "turn:t.example"]).contains("secret"));
        assert!(bad(&["--turn-url", "udp://t.example"]).contains("URL"));
        assert!(bad(&["--turn-ttl-secs", "0"]).contains("turn_ttl_secs"));
        assert!(bad(&["--turn-ttl-secs", "90000"]).contains("turn_ttl_secs"));
        assert!(bad(&["--turn-key", "k1:turn-key-token-0123456789"]).contains("TURN URLs"));
        // The embedded coordinator's TURN keys belong to the top-level settings.
        let table: FileSettings =
            toml::from_str("[coordinator]\nturn_secret = \"coturn-secret-0123456789\"\n").unwrap();
        let e = Settings::resolve(Cli::default(), table)
            .unwrap_err()
            .to_string();
        assert!(e.contains("top-level setting turn_secret"), "{e}");
    }

    #[test]
    fn every_option_is_documented() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.len() > 20, "option {id} lacks help text");
        }
        let verify = cmd
            .find_subcommand("verify-client")
            .expect("verify-client subcommand");
        assert!(verify.get_about().is_some());
        for arg in verify.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" {
                continue;
            }
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.len() > 20, "verify-client option {id} lacks help text");
        }
    }

    #[test]
    fn verify_client_takes_a_url_and_a_web_dir() {
        let cli = Cli::try_parse_from([
            "satsuma",
            "verify-client",
            "http://127.0.0.1:8080/",
            "--web-dir",
            "/tmp/web",
        ])
        .unwrap();
        let Some(Command::VerifyClient(args)) = cli.command else {
            panic!("no subcommand");
        };
        assert_eq!(args.url, "http://127.0.0.1:8080/");
        assert_eq!(args.web_dir, Some(PathBuf::from("/tmp/web")));
        assert!(Cli::try_parse_from(["satsuma", "verify-client"]).is_err());
    }
}
