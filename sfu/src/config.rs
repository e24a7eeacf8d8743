//! Server configuration: the plain [`Config`] the library takes, and how the binary builds it from
//! a TOML file, `SATSUMA_SFU_*` environment variables and command-line flags (in that order of
//! increasing precedence).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// One application allowed to use the API: `/v1/apps/{id}/…` with `Authorization: Bearer {secret}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct App {
    /// The app id that appears in the URL path.
    pub id: String,
    /// The bearer secret that authenticates API calls for this app.
    pub secret: String,
}

impl std::str::FromStr for App {
    type Err = String;

    /// Parses `ID:SECRET`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, secret) = s
            .split_once(':')
            .ok_or_else(|| format!("app `{s}` must be written ID:SECRET"))?;
        if id.is_empty() || secret.is_empty() {
            return Err(format!("app `{s}` needs a non-empty id and secret"));
        }
        Ok(App {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }
}

/// A TURN key: calls `POST /v1/turn/keys/{id}/credentials/generate-ice-servers` with
/// `Authorization: Bearer {token}` (Cloudflare Realtime's TURN key id and API token).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurnKey {
    /// The key id that appears in the URL path (1-64 of `A-Z a-z 0-9 . _ -`).
    pub id: String,
    /// The bearer token (at least 16 characters).
    pub token: String,
}

impl std::fmt::Debug for TurnKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl std::str::FromStr for TurnKey {
    type Err = String;

    /// Parses `ID:TOKEN`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, token) = s
            .split_once(':')
            .ok_or_else(|| "a TURN key must be written ID:TOKEN".to_string())?;
        Ok(TurnKey {
            id: id.to_string(),
            token: token.to_string(),
        })
    }
}

impl TurnKey {
    fn validate(&self) -> Result<(), ConfigError> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !id_ok {
            return Err(ConfigError::Invalid(format!(
                "TURN key id {:?} must be 1-64 of A-Z a-z 0-9 . _ -",
                self.id
            )));
        }
        if self.token.chars().count() < 16 {
            return Err(ConfigError::Invalid(format!(
                "the token of TURN key {:?} must be at least 16 characters",
                self.id
            )));
        }
        Ok(())
    }
}

/// Builds the TURN servers from configured URLs and shared secret (see
/// [`satsuma_common::turn::TurnServers::from_config`]).
pub fn turn_servers(
    urls: Vec<String>,
    secret: Option<String>,
) -> Result<satsuma_common::turn::TurnServers, ConfigError> {
    satsuma_common::turn::TurnServers::from_config(urls, secret)
        .map_err(|e| ConfigError::Invalid(format!("TURN: {e}")))
}

/// Where ICE-TCP (passive TCP candidates, RFC 6544) listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TcpBind {
    /// The UDP bind address over TCP: same IP, same port number (UDP port 0: any free TCP
    /// port). The default.
    #[default]
    SameAsUdp,
    /// No ICE-TCP: no listener, no TCP candidates.
    Off,
    /// This address.
    At(SocketAddr),
}

impl std::str::FromStr for TcpBind {
    type Err = String;

    /// Parses `off`, `udp` (the UDP bind address) or an address like `0.0.0.0:7881`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "off" | "none" | "false" => Ok(TcpBind::Off),
            "udp" | "same" => Ok(TcpBind::SameAsUdp),
            other => other.parse().map(TcpBind::At).map_err(|_| {
                format!("ICE-TCP address `{s}` must be off, udp, or an address like 0.0.0.0:7881")
            }),
        }
    }
}

impl std::fmt::Display for TcpBind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TcpBind::SameAsUdp => f.write_str("udp"),
            TcpBind::Off => f.write_str("off"),
            TcpBind::At(a) => write!(f, "{a}"),
        }
    }
}

impl<'de> Deserialize<'de> for TcpBind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Initial egress bandwidth estimate of a session, kbit/s: bandwidth estimation is on by default.
/// A subscriber starts on layers that fit it (with the default 150 / 500 / 1,500 kbit/s layers:
/// the low layers of a few tiles) and str0m's first probes (3× and 6× of it) find the link within
/// about a second.
pub const DEFAULT_BWE_INITIAL_KBPS: u32 = 1000;

/// Everything the SFU needs to run. `Config::default()` is a working loopback setup with one app
/// (`satsuma` / `satsuma-secret`), meant for tests and local experiments.
#[derive(Debug, Clone)]
pub struct Config {
    /// Apps and their secrets.
    pub apps: Vec<App>,
    /// Where the HTTP API (and `/metrics`, `/healthz`) listens. Port 0 picks a free port.
    pub http_bind: SocketAddr,
    /// The single UDP socket all WebRTC traffic uses. Port 0 picks a free port.
    pub udp_bind: SocketAddr,
    /// IP addresses announced as ICE host candidates (with the bound UDP port). Empty: the bind
    /// address, or 127.0.0.1 when bound to an unspecified address.
    pub announce_ips: Vec<IpAddr>,
    /// The ICE-TCP listener: passive TCP host candidates on the announced IPs with its port,
    /// priority below UDP, for clients whose network blocks UDP. Default: the UDP address
    /// over TCP.
    pub tcp_bind: TcpBind,
    /// How long an ICE-TCP connection may take to be answered by its session, and may stay
    /// without a frame either way.
    pub tcp_timeouts: crate::ice_tcp::ConnTimeouts,
    /// A published track that receives no media for this long is collected.
    pub track_timeout: Duration,
    /// A session whose transport is not connected for this long is collected.
    pub session_timeout: Duration,
    /// Number of shards (worker threads owning sessions). At least 1; default: the core count.
    pub shards: usize,
    /// API requests allowed per session per second (429 beyond).
    pub session_requests_per_second: u32,
    /// Maximum number of tracks in one API request.
    pub max_tracks_per_request: usize,
    /// Initial egress bandwidth estimate of a session in kbit/s: str0m's send-side estimator
    /// (GCC over TWCC) refines it, and simulcast layers are chosen to fit the estimate. Default
    /// [`DEFAULT_BWE_INITIAL_KBPS`]; 0 turns bandwidth estimation off (legs then get their
    /// preferred or top layer). Its CPU cost and delay are measured in `benches/README.md`.
    pub bwe_initial_kbps: u32,
    /// With bandwidth estimation on: send simulcast video through str0m's pacer (at 1.1 × the
    /// estimate) instead of forwarding it at once. Off by default: layer choice keeps video
    /// within the estimate, and the pacer would hold whatever exceeds it (hundreds of ms while a
    /// switch down waits for a keyframe). Audio and single-layer video are never paced.
    pub bwe_pace_video: bool,
    /// Send a new subscriber leg its track's packets since the last keyframe at once (VP8; see
    /// [`crate::keyframe_cache`]) instead of asking the publisher for a keyframe. Off by default
    /// for now: in the browser join bench every replay found its cache empty and joins waited
    /// longer for their first keyframe than without it (benches/README.md, join time).
    pub keyframe_replay: bool,
    /// Quotas against abuse (see [`Limits`]).
    pub limits: Limits,
    /// Browser origins allowed to call the API cross-origin (CORS). Empty, the default: no CORS
    /// headers at all, so browsers refuse cross-origin calls (the coordinator proxies the API).
    pub cors_origins: Vec<String>,
    /// Bearer token `/metrics` requires (`Authorization: Bearer …`). `None`: no token.
    pub metrics_token: Option<String>,
    /// A separate listener for `/metrics` and `/healthz`. `None`: they are served on the API
    /// listener. When set, the API listener does not serve `/metrics`.
    pub metrics_bind: Option<SocketAddr>,
    /// How long `/healthz` answers 503 after a shard panicked and was restarted, so that probes
    /// and monitoring see it. A shard thread that died for good keeps it 503.
    pub shard_panic_hold: Duration,
    /// Test-only hooks (`POST /v1/test/shards/{n}/panic`). Never on in production.
    pub test_hooks: bool,
    /// TURN keys allowed to call the Realtime-compatible `generate-ice-servers` route. Empty,
    /// the default: the route answers 404 for every key.
    pub turn_keys: Vec<TurnKey>,
    /// The STUN/TURN URLs and coturn shared secret that route hands out credentials for.
    /// Needs TURN URLs when `turn_keys` is not empty.
    pub turn: satsuma_common::turn::TurnServers,
}

/// Quotas that bound what one app, session or publisher can make the SFU do. Every one is
/// settable from the TOML file, `SATSUMA_SFU_*` environment variables and flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// `sessions/new` calls per second per app (token bucket; the burst is the same number).
    pub app_new_sessions_per_second: u32,
    /// Live sessions per app; `sessions/new` beyond answers 429 `too_many_sessions`.
    pub app_max_sessions: usize,
    /// Tracks one session may publish (push) at once.
    pub session_max_publications: usize,
    /// Tracks one session may pull at once (legs, counted while negotiating or active).
    pub session_max_legs: usize,
    /// Times one session may pull the same remote track at once.
    pub session_max_pulls_per_track: usize,
    /// Media bitrate one session may publish, in kbit/s over all its tracks (RTP payload and
    /// headers after SRTP); packets beyond are dropped and counted
    /// (`satsuma_sfu_dropped_total{reason="ingress_bitrate"}`). 0: no limit.
    pub session_max_ingress_kbps: u32,
    /// ICE-TCP connections one source IP may hold open (many users behind one office NAT
    /// share an IP: each needs one or two).
    pub tcp_max_connections_per_ip: usize,
    /// ICE-TCP connections open in total (each is a file descriptor).
    pub tcp_max_connections: usize,
    /// Longest data channel message forwarded, in bytes; longer ones are dropped and counted
    /// (`satsuma_sfu_datachannel_dropped_total{reason="too_large"}`).
    pub datachannel_max_message_bytes: usize,
    /// Data channel messages one session may send per second over all its channels (burst as
    /// many); the excess is dropped and counted (`reason="rate_limited"`).
    pub session_datachannel_messages_per_second: u32,
    /// Data channels one session may hold at once (published and subscribed), and a quarter of
    /// those it may open over its life; more get the per-channel error `too_many_datachannels`.
    pub session_max_datachannels: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            app_new_sessions_per_second: 100,
            app_max_sessions: 2000,
            session_max_publications: 16,
            session_max_legs: 256,
            session_max_pulls_per_track: 2,
            session_max_ingress_kbps: 20_000,
            tcp_max_connections_per_ip: 64,
            tcp_max_connections: 4096,
            datachannel_max_message_bytes: 16 * 1024,
            session_datachannel_messages_per_second: 200,
            session_max_datachannels: 32,
        }
    }
}

impl Limits {
    /// Checks that every limit lets some work through.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            (
                "app_new_sessions_per_second",
                self.app_new_sessions_per_second as usize,
            ),
            ("app_max_sessions", self.app_max_sessions),
            ("session_max_publications", self.session_max_publications),
            ("session_max_legs", self.session_max_legs),
            (
                "session_max_pulls_per_track",
                self.session_max_pulls_per_track,
            ),
            (
                "tcp_max_connections_per_ip",
                self.tcp_max_connections_per_ip,
            ),
            ("tcp_max_connections", self.tcp_max_connections),
            (
                "datachannel_max_message_bytes",
                self.datachannel_max_message_bytes,
            ),
            (
                "session_datachannel_messages_per_second",
                self.session_datachannel_messages_per_second as usize,
            ),
            ("session_max_datachannels", self.session_max_datachannels),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        Ok(())
    }
}

/// The SFU's quotas as optional settings: one definition of their flags (`--session-max-legs`
/// …), environment variables (`SATSUMA_SFU_SESSION_MAX_LEGS` …) and TOML keys, shared by
/// `satsuma-sfu` and the all-in-one `satsuma` (its `[sfu]` table). Unset ones keep the
/// defaults of [`Limits`] and [`Config`].
#[derive(Debug, Default, Clone, PartialEq, Eq, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// API requests one session may make per second (burst as many); 429 `rate_limited`
    /// beyond. Default 50.
    #[arg(long, env = "SATSUMA_SFU_SESSION_REQUESTS_PER_SECOND")]
    pub session_requests_per_second: Option<u32>,

    /// Most tracks in one API request (tracks/new, close, update); 400 `too_many_tracks`
    /// beyond. Default 64.
    #[arg(long, env = "SATSUMA_SFU_MAX_TRACKS_PER_REQUEST")]
    pub max_tracks_per_request: Option<usize>,

    /// `sessions/new` calls one app may make per second (burst as many); 429 `rate_limited`
    /// beyond. Default 100.
    #[arg(long, env = "SATSUMA_SFU_APP_NEW_SESSIONS_PER_SECOND")]
    pub app_new_sessions_per_second: Option<u32>,

    /// Live sessions one app may hold; `sessions/new` beyond answers 429 `too_many_sessions`.
    /// Default 2000.
    #[arg(long, env = "SATSUMA_SFU_APP_MAX_SESSIONS")]
    pub app_max_sessions: Option<usize>,

    /// Tracks one session may publish at once; more get the per-track error
    /// `too_many_publications`. Default 16.
    #[arg(long, env = "SATSUMA_SFU_SESSION_MAX_PUBLICATIONS")]
    pub session_max_publications: Option<usize>,

    /// Tracks one session may pull at once (negotiating or active legs); more get the
    /// per-track error `too_many_legs`. Default 256.
    #[arg(long, env = "SATSUMA_SFU_SESSION_MAX_LEGS")]
    pub session_max_legs: Option<usize>,

    /// Times one session may pull the same remote track at once; more get the per-track error
    /// `too_many_pulls`. Default 2.
    #[arg(long, env = "SATSUMA_SFU_SESSION_MAX_PULLS_PER_TRACK")]
    pub session_max_pulls_per_track: Option<usize>,

    /// Media one session may publish in kbit/s, over all its tracks; packets beyond are dropped
    /// and counted (satsuma_sfu_dropped_total{reason="ingress_bitrate"}). 0: no limit.
    /// Default 20000.
    #[arg(long, env = "SATSUMA_SFU_SESSION_MAX_INGRESS_KBPS")]
    pub session_max_ingress_kbps: Option<u32>,

    /// ICE-TCP connections one source IP may hold open; more are refused at accept
    /// (satsuma_sfu_tcp_connections_refused_total{reason="per_ip"}). Users behind one NAT
    /// share an IP and need one or two each. Default 64.
    #[arg(long, env = "SATSUMA_SFU_TCP_MAX_CONNECTIONS_PER_IP")]
    pub tcp_max_connections_per_ip: Option<usize>,

    /// ICE-TCP connections open at once in total (each uses a file descriptor); more are
    /// refused at accept. Default 4096.
    #[arg(long, env = "SATSUMA_SFU_TCP_MAX_CONNECTIONS")]
    pub tcp_max_connections: Option<usize>,

    /// Longest data channel message forwarded, in bytes; longer ones are dropped and counted
    /// (satsuma_sfu_datachannel_dropped_total{reason="too_large"}). Default 16384 (the size
    /// every WebRTC stack interoperates at).
    #[arg(long, env = "SATSUMA_SFU_DATACHANNEL_MAX_MESSAGE_BYTES")]
    pub datachannel_max_message_bytes: Option<usize>,

    /// Data channel messages one session may send per second over all its channels (burst as
    /// many); the excess is dropped and counted (reason="rate_limited"). Default 200.
    #[arg(long, env = "SATSUMA_SFU_SESSION_DATACHANNEL_MESSAGES_PER_SECOND")]
    pub session_datachannel_messages_per_second: Option<u32>,

    /// Data channels one session may hold at once (published and subscribed; 4 times as many
    /// over its life); more get the per-channel error `too_many_datachannels`. Default 32.
    #[arg(long, env = "SATSUMA_SFU_SESSION_MAX_DATACHANNELS")]
    pub session_max_datachannels: Option<usize>,
}

impl LimitSettings {
    /// Each setting from `self`, else from `lower` (flags over environment over file).
    #[must_use]
    pub fn or(self, lower: LimitSettings) -> LimitSettings {
        LimitSettings {
            session_requests_per_second: self
                .session_requests_per_second
                .or(lower.session_requests_per_second),
            max_tracks_per_request: self.max_tracks_per_request.or(lower.max_tracks_per_request),
            app_new_sessions_per_second: self
                .app_new_sessions_per_second
                .or(lower.app_new_sessions_per_second),
            app_max_sessions: self.app_max_sessions.or(lower.app_max_sessions),
            session_max_publications: self
                .session_max_publications
                .or(lower.session_max_publications),
            session_max_legs: self.session_max_legs.or(lower.session_max_legs),
            session_max_pulls_per_track: self
                .session_max_pulls_per_track
                .or(lower.session_max_pulls_per_track),
            session_max_ingress_kbps: self
                .session_max_ingress_kbps
                .or(lower.session_max_ingress_kbps),
            tcp_max_connections_per_ip: self
                .tcp_max_connections_per_ip
                .or(lower.tcp_max_connections_per_ip),
            tcp_max_connections: self.tcp_max_connections.or(lower.tcp_max_connections),
            datachannel_max_message_bytes: self
                .datachannel_max_message_bytes
                .or(lower.datachannel_max_message_bytes),
            session_datachannel_messages_per_second: self
                .session_datachannel_messages_per_second
                .or(lower.session_datachannel_messages_per_second),
            session_max_datachannels: self
                .session_max_datachannels
                .or(lower.session_max_datachannels),
        }
    }

    /// Writes the settings that are set into `config`.
    pub fn apply(&self, config: &mut Config) {
        if let Some(v) = self.session_requests_per_second {
            config.session_requests_per_second = v;
        }
        if let Some(v) = self.max_tracks_per_request {
            config.max_tracks_per_request = v;
        }
        let l = &mut config.limits;
        if let Some(v) = self.app_new_sessions_per_second {
            l.app_new_sessions_per_second = v;
        }
        if let Some(v) = self.app_max_sessions {
            l.app_max_sessions = v;
        }
        if let Some(v) = self.session_max_publications {
            l.session_max_publications = v;
        }
        if let Some(v) = self.session_max_legs {
            l.session_max_legs = v;
        }
        if let Some(v) = self.session_max_pulls_per_track {
            l.session_max_pulls_per_track = v;
        }
        if let Some(v) = self.session_max_ingress_kbps {
            l.session_max_ingress_kbps = v;
        }
        if let Some(v) = self.tcp_max_connections_per_ip {
            l.tcp_max_connections_per_ip = v;
        }
        if let Some(v) = self.tcp_max_connections {
            l.tcp_max_connections = v;
        }
        if let Some(v) = self.datachannel_max_message_bytes {
            l.datachannel_max_message_bytes = v;
        }
        if let Some(v) = self.session_datachannel_messages_per_second {
            l.session_datachannel_messages_per_second = v;
        }
        if let Some(v) = self.session_max_datachannels {
            l.session_max_datachannels = v;
        }
    }
}

/// One shard per core the process may use.
pub fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            apps: vec![App {
                id: "satsuma".into(),
                secret: "satsuma-secret".into(),
            }],
            http_bind: SocketAddr::from(([127, 0, 0, 1], 7880)),
            udp_bind: SocketAddr::from(([127, 0, 0, 1], 7881)),
            announce_ips: Vec::new(),
            tcp_bind: TcpBind::default(),
            tcp_timeouts: crate::ice_tcp::ConnTimeouts::default(),
            track_timeout: Duration::from_secs(30),
            session_timeout: Duration::from_secs(30),
            shards: default_shards(),
            session_requests_per_second: 50,
            max_tracks_per_request: 64,
            bwe_initial_kbps: DEFAULT_BWE_INITIAL_KBPS,
            bwe_pace_video: false,
            keyframe_replay: false,
            limits: Limits::default(),
            cors_origins: Vec::new(),
            metrics_token: None,
            metrics_bind: None,
            shard_panic_hold: Duration::from_secs(30),
            test_hooks: false,
            turn_keys: Vec::new(),
            turn: satsuma_common::turn::TurnServers::default(),
        }
    }
}

/// The TOML file accepted by `--config`. Every key is optional; see the README for an example.
#[derive(Debug, Default, Deserialize)]
pub struct FileConfig {
    /// `[[apps]]` tables with `id` and `secret`.
    #[serde(default)]
    pub apps: Vec<App>,
    /// HTTP listen address.
    pub http_bind: Option<SocketAddr>,
    /// UDP listen address.
    pub udp_bind: Option<SocketAddr>,
    /// Announced IPs.
    pub announce_ips: Option<Vec<IpAddr>>,
    /// ICE-TCP listen address, `udp` or `off`.
    pub tcp_bind: Option<TcpBind>,
    /// Track inactivity timeout in seconds (fractions allowed).
    pub track_timeout_secs: Option<f64>,
    /// Session transport-gone timeout in seconds (fractions allowed).
    pub session_timeout_secs: Option<f64>,
    /// Most seconds a draining node waits for its sessions to move (`--drain-timeout`).
    pub drain_timeout_secs: Option<f64>,
    /// Shard count.
    pub shards: Option<usize>,
    /// Initial bandwidth estimate in kbit/s (0: no bandwidth estimation).
    pub bwe_initial_kbps: Option<u32>,
    /// Pace simulcast video (see [`Config::bwe_pace_video`]).
    pub bwe_pace_video: Option<bool>,
    /// Replay the cached keyframe to new legs (see [`Config::keyframe_replay`]).
    pub keyframe_replay: Option<bool>,
    /// Log filter, like `info` or `satsuma_sfu=debug`.
    pub log: Option<String>,
    /// The quotas, at the top level of the file (`session_max_legs = 64`, …).
    #[serde(flatten)]
    pub limits: LimitSettings,
    /// The relay between SFU nodes (`node_name`, `relay_bind`, `relay_cert`, `relay_key`,
    /// `relay_ca`, `relay_pins`, `relay_peers`), at the top level of the file.
    #[serde(flatten)]
    pub relay: crate::relay::settings::RelaySettings,
    /// Keys no field took: refused by [`FileConfig::load`] (a typo must not pass silently).
    #[serde(flatten)]
    pub unknown: std::collections::BTreeMap<String, toml::Value>,
    /// Origins allowed to call the API from a browser (CORS).
    pub cors_origins: Option<Vec<String>>,
    /// Bearer token for `/metrics`.
    pub metrics_token: Option<String>,
    /// Separate listener for `/metrics` and `/healthz`.
    pub metrics_bind: Option<SocketAddr>,
    /// Seconds `/healthz` stays 503 after a shard panic.
    pub shard_panic_hold_secs: Option<f64>,
    /// Test-only hooks.
    pub test_hooks: Option<bool>,
    /// `[[turn_keys]]` tables with `id` and `token`.
    #[serde(default)]
    pub turn_keys: Vec<TurnKey>,
    /// STUN/TURN URLs handed out by `generate-ice-servers`.
    pub turn_urls: Option<Vec<String>>,
    /// coturn's `static-auth-secret`.
    pub turn_secret: Option<String>,
}

/// Errors while building a [`Config`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for [`FileConfig`].
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// File path.
        path: PathBuf,
        /// Cause.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl FileConfig {
    /// Reads and parses a TOML config file.
    pub fn load(path: &std::path::Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses the text of a config file read from `path` (named in errors); unknown keys
    /// are refused.
    pub fn parse(text: &str, path: &std::path::Path) -> Result<FileConfig, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        if !file.unknown.is_empty() {
            let keys: Vec<&str> = file.unknown.keys().map(String::as_str).collect();
            return Err(ConfigError::Invalid(format!(
                "{}: unknown key(s) {}",
                path.display(),
                keys.join(", ")
            )));
        }
        Ok(file)
    }
}

/// Turns a number of seconds from a file or flag into a duration, refusing nonsense.
pub fn secs(value: f64, what: &str) -> Result<Duration, ConfigError> {
    if !value.is_finite() || value <= 0.0 || value > 86_400.0 {
        return Err(ConfigError::Invalid(format!(
            "{what} must be between 0 and 86400 seconds, got {value}"
        )));
    }
    Ok(Duration::from_secs_f64(value))
}

impl Config {
    /// Checks the invariants the server relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.apps.is_empty() {
            return Err(ConfigError::Invalid("at least one app is required".into()));
        }
        if self.shards == 0 || self.shards > 1024 {
            return Err(ConfigError::Invalid("shards must be 1..=1024".into()));
        }
        if self.session_requests_per_second == 0 {
            return Err(ConfigError::Invalid(
                "session_requests_per_second must be positive".into(),
            ));
        }
        if self.max_tracks_per_request == 0 {
            return Err(ConfigError::Invalid(
                "max_tracks_per_request must be positive".into(),
            ));
        }
        for origin in &self.cors_origins {
            let valid = (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.ends_with('/')
                && origin.bytes().all(|b| b.is_ascii_graphic());
            if !valid {
                return Err(ConfigError::Invalid(format!(
                    "CORS origin `{origin}` must look like https://host[:port] (no path, no \
                     trailing slash)"
                )));
            }
        }
        if self.metrics_token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(ConfigError::Invalid(
                "the metrics token must be at least 16 characters".into(),
            ));
        }
        let mut turn_ids = std::collections::HashSet::new();
        for key in &self.turn_keys {
            key.validate()?;
            if !turn_ids.insert(key.id.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "TURN key {:?} is configured twice",
                    key.id
                )));
            }
        }
        if !self.turn_keys.is_empty() && self.turn.urls().all(|u| u.starts_with("stun")) {
            return Err(ConfigError::Invalid(
                "TURN keys need TURN URLs (turn_urls) and the shared secret (turn_secret)".into(),
            ));
        }
        self.limits.validate()
    }

    /// Where the ICE-TCP listener binds, if anywhere.
    pub fn tcp_listen_addr(&self) -> Option<SocketAddr> {
        match self.tcp_bind {
            TcpBind::SameAsUdp => Some(self.udp_bind),
            TcpBind::Off => None,
            TcpBind::At(a) => Some(a),
        }
    }

    /// The IPs that go into ICE candidates for a socket bound at `bound`.
    pub fn effective_announce_ips(&self, bound: SocketAddr) -> Vec<IpAddr> {
        if !self.announce_ips.is_empty() {
            return self.announce_ips.clone();
        }
        if bound.ip().is_unspecified() {
            vec![IpAddr::from([127, 0, 0, 1])]
        } else {
            vec![bound.ip()]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_parses_id_and_secret() {
        let app: App = "a:b:c".parse().unwrap();
        assert_eq!(app.id, "a");
        assert_eq!(app.secret, "b:c");
        assert!("nocolon".parse::<App>().is_err());
        assert!(":x".parse::<App>().is_err());
    }

    #[test]
    fn file_config_parses_and_rejects_unknown_keys() {
        let f = FileConfig::parse(
            "http_bind = \"127.0.0.1:1\"\ntrack_timeout_secs = 2.5\ndrain_timeout_secs = 12\nsession_max_legs = 9\n[[apps]]\nid = \"x\"\nsecret = \"y\"\n",
            std::path::Path::new("sfu.toml"),
        )
        .unwrap();
        assert_eq!(f.limits.session_max_legs, Some(9));
        assert_eq!(f.apps.len(), 1);
        assert_eq!(f.track_timeout_secs, Some(2.5));
        assert_eq!(f.drain_timeout_secs, Some(12.0));
        let err = FileConfig::parse("bogus = 1", std::path::Path::new("sfu.toml")).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn turn_keys_need_turn_servers_and_good_ids_and_tokens() {
        let key: TurnKey = "k1:0123456789abcdef:x".parse().unwrap();
        assert_eq!(key.id, "k1");
        assert_eq!(key.token, "0123456789abcdef:x");
        assert!(!format!("{key:?}").contains("0123456789abcdef"));
        let mut c = Config {
            turn_keys: vec![key],
            ..Config::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("TURN URLs"), "{err}");
        c.turn = turn_servers(
            vec!["turn:turn.example:3478".into()],
            Some("shared-secret-0123456789".into()),
        )
        .unwrap();
        c.validate().unwrap();
        c.turn_keys
            .push("k1:another-token-0123456789".parse().unwrap());
        assert!(c.validate().unwrap_err().to_string().contains("twice"));
        c.turn_keys.truncate(1);
        c.turn_keys[0].token = "short".into();
        assert!(c.validate().is_err());
        c.turn_keys[0] = "bad/id:0123456789abcdef".parse().unwrap();
        assert!(c.validate().is_err());
        assert!(turn_servers(vec!["turn:t.example".into()], None).is_err());
        assert!(turn_servers(vec!["ftp://t.example".into()], Some("x".repeat(20))).is_err());
        let f = FileConfig::parse(
            "turn_urls = [\"turn:t.example:3478\"]\nturn_secret = \"s\"\n[[turn_keys]]\nid = \"k\"\ntoken = \"t\"\n",
            std::path::Path::new("sfu.toml"),
        )
        .unwrap();
        assert_eq!(f.turn_keys.len(), 1);
        assert_eq!(f.turn_urls.unwrap().len(), 1);
    }

    #[test]
    fn tcp_bind_parses_off_udp_and_addresses_and_defaults_to_the_udp_address() {
        assert_eq!("off".parse::<TcpBind>(), Ok(TcpBind::Off));
        assert_eq!("udp".parse::<TcpBind>(), Ok(TcpBind::SameAsUdp));
        let a: SocketAddr = "0.0.0.0:443".parse().unwrap();
        assert_eq!("0.0.0.0:443".parse::<TcpBind>(), Ok(TcpBind::At(a)));
        assert!("7881".parse::<TcpBind>().is_err());
        for b in [TcpBind::Off, TcpBind::SameAsUdp, TcpBind::At(a)] {
            assert_eq!(b.to_string().parse::<TcpBind>(), Ok(b));
        }
        let mut c = Config::default();
        assert_eq!(c.tcp_listen_addr(), Some(c.udp_bind));
        c.tcp_bind = TcpBind::Off;
        assert_eq!(c.tcp_listen_addr(), None);
        let f = FileConfig::parse(
            "tcp_bind = \"0.0.0.0:443\"\ntcp_max_connections_per_ip = 3\n",
            std::path::Path::new("sfu.toml"),
        )
        .unwrap();
        assert_eq!(f.tcp_bind, Some(TcpBind::At(a)));
        assert_eq!(f.limits.tcp_max_connections_per_ip, Some(3));
        assert!(FileConfig::parse("tcp_bind = \"nope\"", std::path::Path::new("x")).is_err());
        c.limits.tcp_max_connections = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn secs_refuses_nonsense() {
        assert!(secs(-1.0, "x").is_err());
        assert!(secs(f64::NAN, "x").is_err());
        assert_eq!(secs(2.0, "x").unwrap(), Duration::from_secs(2));
    }

    #[test]
    fn announce_defaults_to_loopback_for_unspecified_bind() {
        let c = Config::default();
        let ips = c.effective_announce_ips("0.0.0.0:5".parse().unwrap());
        assert_eq!(ips, vec![IpAddr::from([127, 0, 0, 1])]);
        let ips = c.effective_announce_ips("10.0.0.1:5".parse().unwrap());
        assert_eq!(ips, vec![IpAddr::from([10, 0, 0, 1])]);
    }
}
