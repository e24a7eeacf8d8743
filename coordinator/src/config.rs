//! Configuration: defaults, then a TOML file, then `SATSUMA_COORD_*` environment
//! variables, then command-line flags (later wins).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use thiserror::Error;

use crate::protocol::Limits;
use crate::room::RoomConfig;

/// Everything the coordinator needs to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// HTTP/WebSocket listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// HS256 secret for join tokens.
    pub jwt_secret: String,
    /// Accepted clock skew on token expiry, seconds.
    pub jwt_leeway_s: u64,
    /// Issuer (`iss`) of the tokens this coordinator mints and accepts.
    pub jwt_issuer: String,
    /// Audience (`aud`) of join tokens (invites use `<audience>:invite`).
    pub jwt_audience: String,
    /// API keys of app backends (`POST /api/v1/tokens`).
    pub api_keys: Vec<crate::auth::ApiKey>,
    /// Dev mode: enables `POST /token`.
    pub dev: bool,
    /// Lifetime of tokens minted by `POST /token`, seconds.
    pub dev_token_ttl_s: u64,
    /// Test hooks: the web client may honour its test query parameters (`decrypt=0`,
    /// `keyless=1`, drills) and `hello` may carry test-only fields that make this
    /// coordinator behave like a hostile one. Only for the test suites; never in
    /// production.
    pub test_hooks: bool,
    /// Directory of the web client's static files.
    pub web_dir: PathBuf,
    /// SFU nodes: base URLs (e.g. `http://10.0.0.5:8787`; the API lives under
    /// `/v1/apps/{app_id}`), each optionally followed by `;capacity=N` (most sessions placed on
    /// it), `;cpu=SHARE` (it is full at or above this share of its cores, measured between
    /// health checks), `;region=LABEL` and `;name=NODE` (its relay node name), e.g.
    /// `http://10.0.0.5:8787;capacity=200;region=eu-west;name=sfu-0` (issue 15, placement).
    pub sfu_nodes: Vec<String>,
    /// SFU app id.
    pub sfu_app_id: String,
    /// SFU app secret (sent as `Authorization: Bearer`).
    pub sfu_app_secret: String,
    /// Interval between SFU health checks.
    pub sfu_health_interval: Duration,
    /// Timeout of one SFU API call.
    pub sfu_timeout: Duration,
    /// Largest proxied request body.
    pub sfu_max_body_bytes: usize,
    /// Silence after which a participant is announced as left.
    pub presence_timeout: Duration,
    /// Heartbeat interval advertised to clients.
    pub heartbeat_interval: Duration,
    /// Wait for missing `ready`s before `execute`.
    pub execute_timeout: Duration,
    /// Time a new connection has to send `hello`.
    pub hello_timeout: Duration,
    /// Log entries kept per room for resume.
    pub replay_window: usize,
    /// Log bytes kept per room for resume.
    pub replay_window_bytes: usize,
    /// Largest accepted text frame.
    pub max_text_bytes: usize,
    /// Largest accepted binary frame.
    pub max_binary_bytes: usize,
    /// Sustained messages per second per connection.
    pub rate_per_second: u32,
    /// Burst allowance per connection.
    pub rate_burst: u32,
    /// Dropped (rate-limited) messages in a row before the connection is closed.
    pub flood_close_after: u32,
    /// Refused messages in a row before the connection is closed.
    pub max_consecutive_errors: u32,
    /// Cap of a new room.
    pub default_max_participants: u32,
    /// Highest cap a host may set.
    pub hard_max_participants: u32,
    /// First joiner of an empty room becomes host.
    pub first_joiner_is_host: bool,
    /// Most rooms at once.
    pub max_rooms: usize,
    /// Most WebSocket connections at once (more: HTTP 503 at the upgrade).
    pub max_connections: usize,
    /// Budgets in bytes and per peer (issue 11; `docs/operations.md`, "Coordinator").
    pub budgets: Budgets,
    /// How often room timers are checked.
    pub timer_tick: Duration,
    /// STUN/TURN URLs and the TURN shared secret (coturn `static-auth-secret`) handed to every
    /// participant in `welcome`/`resumed` (`ice_servers`, with short-lived TURN credentials).
    /// Empty, the default: `ice_servers` is empty.
    pub turn: satsuma_common::turn::TurnServers,
    /// Lifetime of the TURN credentials handed out, seconds (1 to 86400).
    pub turn_ttl_s: u64,
    /// Where rooms live: memory (default) or etcd (issue 16, `docs/room-store.md`).
    pub store: crate::store::StoreConfig,
    /// Host-controlled recording (`record` messages); `None`, the default: refused with
    /// `recording_unavailable`. See `docs/recording.md`.
    pub recording: Option<RecordingConfig>,
}

/// How the coordinator runs a recorder when a host starts recording.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordingConfig {
    /// The `satsuma-record` executable.
    pub command: PathBuf,
    /// Each recording goes into a new subdirectory of this directory.
    pub dir: PathBuf,
    /// The coordinator URL the recorder joins through; `None`: this coordinator's bound
    /// address over plain HTTP (loopback when it listens on all addresses).
    pub coordinator_url: Option<String>,
    /// The recorder's display name (members see "● Recording by <name>").
    pub name: String,
    /// A recording stops by itself after this long.
    pub max_duration: Duration,
}

impl RecordingConfig {
    /// A recorder run from `command` writing under `dir`, with the default name and limit.
    pub fn new(command: PathBuf, dir: PathBuf) -> Self {
        Self {
            command,
            dir,
            coordinator_url: None,
            name: DEFAULT_RECORDER_NAME.to_owned(),
            max_duration: Duration::from_secs(DEFAULT_RECORDING_MAX_S),
        }
    }
}

/// The display name of the coordinator's recorders.
pub const DEFAULT_RECORDER_NAME: &str = "Recorder";
/// Longest recording by default: 4 hours.
pub const DEFAULT_RECORDING_MAX_S: u64 = 4 * 3600;

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            jwt_secret: String::new(),
            jwt_leeway_s: 5,
            jwt_issuer: crate::auth::DEFAULT_ISSUER.to_owned(),
            jwt_audience: crate::auth::DEFAULT_AUDIENCE.to_owned(),
            api_keys: Vec::new(),
            dev: false,
            dev_token_ttl_s: 3600,
            test_hooks: false,
            web_dir: PathBuf::from("client/web/dist"),
            sfu_nodes: Vec::new(),
            sfu_app_id: "satsuma".to_owned(),
            sfu_app_secret: String::new(),
            // Often enough that a dead node's participants move within ~2 s (issue 15).
            sfu_health_interval: Duration::from_secs(1),
            sfu_timeout: Duration::from_secs(10),
            sfu_max_body_bytes: 1 << 20,
            presence_timeout: Duration::from_secs(15),
            heartbeat_interval: Duration::from_secs(5),
            execute_timeout: Duration::from_secs(2),
            hello_timeout: Duration::from_secs(10),
            replay_window: 4096,
            replay_window_bytes: 16 << 20,
            max_text_bytes: 16 << 10,
            max_binary_bytes: 1 << 20,
            rate_per_second: 50,
            rate_burst: 200,
            flood_close_after: 200,
            max_consecutive_errors: 100,
            default_max_participants: 100,
            hard_max_participants: 1000,
            first_joiner_is_host: true,
            max_rooms: 10_000,
            max_connections: 20_000,
            budgets: Budgets::default(),
            timer_tick: Duration::from_millis(20),
            turn: satsuma_common::turn::TurnServers::default(),
            turn_ttl_s: DEFAULT_TURN_TTL_S,
            store: crate::store::StoreConfig::default(),
            recording: None,
        }
    }
}

/// Default lifetime of the TURN credentials a participant gets: 6 hours (clients fetch fresh
/// ones before they expire: `POST /sfu/ice-servers`).
pub const DEFAULT_TURN_TTL_S: u64 = 6 * 3600;

/// Builds the STUN/TURN servers from configured URLs and secret (see
/// [`satsuma_common::turn::TurnServers::from_config`]).
pub fn turn_servers(
    urls: Vec<String>,
    secret: Option<String>,
) -> Result<satsuma_common::turn::TurnServers, ConfigError> {
    satsuma_common::turn::TurnServers::from_config(urls, secret)
        .map_err(|e| ConfigError::Invalid(format!("TURN: {e}")))
}

impl Config {
    /// A dev-mode config on 127.0.0.1 port 0 with a fixed secret (tests, quick start).
    pub fn dev() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            jwt_secret: "satsuma-dev-secret-never-use-in-production".to_owned(),
            dev: true,
            ..Self::default()
        }
    }

    /// The room settings derived from this config.
    pub fn room_config(&self) -> RoomConfig {
        RoomConfig {
            presence_timeout: self.presence_timeout,
            execute_timeout: self.execute_timeout,
            replay_max_entries: self.replay_window,
            replay_max_bytes: self.replay_window_bytes,
            default_max_participants: self.default_max_participants,
            hard_max_participants: self.hard_max_participants,
            first_joiner_is_host: self.first_joiner_is_host,
            max_tracks_per_participant: 16,
            max_sfu_sessions_per_participant: self.budgets.max_sfu_sessions_per_participant,
            max_key_package_bytes: self.budgets.max_key_package_bytes,
            max_commit_base_bytes: self.budgets.max_commit_base_bytes,
            max_commit_bytes_per_participant: self.budgets.max_commit_bytes_per_participant,
            max_binary_bytes: self.max_binary_bytes,
            test_hooks: self.test_hooks,
            recording: self.recording.is_some(),
            limits: Limits {
                heartbeat_interval_ms: millis(self.heartbeat_interval),
                presence_timeout_ms: millis(self.presence_timeout),
                max_text_bytes: self.max_text_bytes,
                max_binary_bytes: self.max_binary_bytes,
                messages_per_second: self.rate_per_second,
                replay_window: self.replay_window,
                max_key_package_bytes: self.budgets.max_key_package_bytes,
                bytes_per_second: self.budgets.byte_rate_per_second,
            },
        }
    }

    /// Checks consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.jwt_secret.is_empty() {
            return Err(ConfigError::Invalid(
                "jwt_secret is required (or run with --dev)".to_owned(),
            ));
        }
        if !self.store.etcd_endpoints.is_empty() && self.store.lease_ttl < Duration::from_secs(2) {
            return Err(ConfigError::Invalid(
                "store_lease_ttl_ms must be at least 2000 (etcd's shortest lease)".to_owned(),
            ));
        }
        self.validate_access()?;
        self.validate_sfu_nodes()?;
        if self.rate_per_second == 0 || self.rate_burst == 0 {
            return Err(ConfigError::Invalid("rate limits must be > 0".to_owned()));
        }
        if self.default_max_participants == 0
            || self.default_max_participants > self.hard_max_participants
        {
            return Err(ConfigError::Invalid(
                "need 0 < default_max_participants <= hard_max_participants".to_owned(),
            ));
        }
        if self.replay_window == 0 {
            return Err(ConfigError::Invalid("replay_window must be > 0".to_owned()));
        }
        if let Some(url) = &self.budgets.public_url {
            crate::access_control::origin_of(url)
                .map_err(|e| ConfigError::Invalid(format!("public_url: {e}")))?;
        }
        self.budgets
            .validate(self.max_text_bytes, self.max_binary_bytes)?;
        satsuma_common::turn::check_ttl(self.turn_ttl_s)
            .map_err(|e| ConfigError::Invalid(format!("turn_ttl_s: {e}")))?;
        if let Some(r) = &self.recording {
            if r.name.trim().is_empty() || r.name.chars().count() > 64 {
                return Err(ConfigError::Invalid(
                    "recorder_name must be 1-64 characters".to_owned(),
                ));
            }
            if r.max_duration.is_zero() {
                return Err(ConfigError::Invalid(
                    "recording_max_s must be > 0".to_owned(),
                ));
            }
            if let Some(url) = &r.coordinator_url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(ConfigError::Invalid(
                    "recorder_coordinator_url must be an http:// or https:// URL".to_owned(),
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    /// Checks the `sfu_node` settings: each parses, no URL or relay name twice.
    fn validate_sfu_nodes(&self) -> Result<(), ConfigError> {
        let mut urls = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for s in &self.sfu_nodes {
            let spec = s
                .parse::<crate::placement::NodeSpec>()
                .map_err(ConfigError::Invalid)?;
            if !urls.insert(spec.url.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "SFU node {} is configured twice",
                    spec.url
                )));
            }
            if let Some(name) = spec.name
                && !names.insert(name.clone())
            {
                return Err(ConfigError::Invalid(format!(
                    "two SFU nodes are named {name}"
                )));
            }
        }
        Ok(())
    }

    /// Checks the secrets, API keys, issuer and audience (see `docs/operations.md`, "Tokens and
    /// access").
    fn validate_access(&self) -> Result<(), ConfigError> {
        crate::auth::check_secret("jwt_secret", &self.jwt_secret).map_err(ConfigError::Invalid)?;
        let mut ids = std::collections::HashSet::new();
        for key in &self.api_keys {
            crate::auth::check_secret(&format!("the secret of API key {:?}", key.id), &key.secret)
                .map_err(ConfigError::Invalid)?;
            if !ids.insert(key.id.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "API key {:?} is configured twice",
                    key.id
                )));
            }
        }
        // Outside dev mode the SFU app secret guards the media servers: same rules.
        if !self.dev && !self.sfu_nodes.is_empty() {
            crate::auth::check_secret("sfu_app_secret", &self.sfu_app_secret)
                .map_err(ConfigError::Invalid)?;
        }
        for (name, value) in [
            ("jwt_issuer", &self.jwt_issuer),
            ("jwt_audience", &self.jwt_audience),
        ] {
            if value.trim().is_empty() || value.len() > 256 {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be 1-256 characters"
                )));
            }
        }
        Ok(())
    }
}

/// Budgets in bytes and per peer. Every field is settable from a flag, an environment variable
/// and the TOML file (the flag name with `_` for `-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budgets {
    /// Largest KeyPackage frame (kind 1), bytes.
    pub max_key_package_bytes: usize,
    /// Commit frames (kind 2, with the Welcome) may have this many bytes ...
    pub max_commit_base_bytes: usize,
    /// ... plus this many per participant of the room's cap (never more than `max_binary_bytes`).
    pub max_commit_bytes_per_participant: usize,
    /// Sustained bytes per second one connection may send.
    pub byte_rate_per_second: u64,
    /// Burst above the byte rate.
    pub byte_rate_burst: u64,
    /// Bytes queued for one connection before it is closed with 4430.
    pub send_budget_bytes: usize,
    /// Most WebSocket connections at once from one IP address (0: unlimited).
    pub max_connections_per_ip: usize,
    /// The client address is the last `X-Forwarded-For` entry (behind a trusted reverse proxy).
    pub trust_forwarded_for: bool,
    /// SFU sessions one participant holds at most; a new one beyond releases the oldest.
    pub max_sfu_sessions_per_participant: usize,
    /// The URL users open (e.g. `https://meet.example.com/`): links are made under it, and its
    /// origin is the default `Host`/`Origin` allow-list.
    pub public_url: Option<String>,
    /// More allowed origins (`scheme://host[:port]`).
    pub allowed_origins: Vec<String>,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            max_key_package_bytes: 16 << 10,
            max_commit_base_bytes: 64 << 10,
            max_commit_bytes_per_participant: 4 << 10,
            byte_rate_per_second: 128 << 10,
            byte_rate_burst: 1 << 20,
            send_budget_bytes: 1 << 20,
            max_connections_per_ip: 128,
            trust_forwarded_for: false,
            max_sfu_sessions_per_participant: 4,
            public_url: None,
            allowed_origins: Vec::new(),
        }
    }
}

impl Budgets {
    fn validate(&self, max_text_bytes: usize, max_binary_bytes: usize) -> Result<(), ConfigError> {
        let largest = max_text_bytes.max(max_binary_bytes) as u64;
        if self.byte_rate_per_second == 0 || self.byte_rate_burst < largest {
            return Err(ConfigError::Invalid(format!(
                "byte_rate_per_second must be > 0 and byte_rate_burst at least the largest frame ({largest} bytes)"
            )));
        }
        if self.max_key_package_bytes == 0 || self.send_budget_bytes < 64 << 10 {
            return Err(ConfigError::Invalid(
                "max_key_package_bytes must be > 0 and send_budget_bytes at least 64 KiB"
                    .to_owned(),
            ));
        }
        if self.max_sfu_sessions_per_participant == 0 {
            return Err(ConfigError::Invalid(
                "max_sfu_sessions_per_participant must be > 0".to_owned(),
            ));
        }
        for o in &self.allowed_origins {
            crate::access_control::origin_of(o).map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A configuration problem.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this config.
    #[error("bad config file {path}: {source}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Cause.
        source: Box<toml::de::Error>,
    },
    /// Inconsistent values.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Command line (each flag also reads `SATSUMA_COORD_<FLAG>`).
#[derive(Debug, Clone, Default, Parser, Deserialize)]
#[command(
    name = "satsuma-coordinator",
    version,
    about = "Satsuma coordinator: rooms, ordered E2EE handshake relay, join tokens, SFU access",
    after_help = "Tool: `satsuma-coordinator token create --room R --identity I [--host] [--ttl 1h]` \
                  mints a join token with this configuration's JWT secret (see `token create --help`)."
)]
#[serde(deny_unknown_fields, default)]
pub struct Cli {
    /// TOML config file; its keys are the long flag names with `_` for `-`.
    #[arg(long, env = "SATSUMA_COORD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// HTTP/WebSocket listen address, e.g. 0.0.0.0:8080 (port 0 picks a free port).
    #[arg(long, env = "SATSUMA_COORD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// HS256 secret for join tokens (required unless --dev).
    #[arg(long, env = "SATSUMA_COORD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Accepted clock skew on token expiry, in seconds.
    #[arg(long, env = "SATSUMA_COORD_JWT_LEEWAY_S")]
    pub jwt_leeway_s: Option<u64>,
    /// Issuer (iss) put into and required in every token [default: satsuma].
    #[arg(long, env = "SATSUMA_COORD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Audience (aud) put into and required in every join token [default: satsuma].
    #[arg(long, env = "SATSUMA_COORD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// API key of an app backend as ID:SECRET (secret at least 32 bytes); it mints join tokens
    /// with POST /api/v1/tokens. Repeat the flag, or comma-separate in the env variable.
    #[arg(
        long = "api-key",
        env = "SATSUMA_COORD_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Option<Vec<String>>,
    /// Dev mode: enables POST /token and a default secret. Never in production.
    #[arg(long, env = "SATSUMA_COORD_DEV", num_args = 0..=1, default_missing_value = "true")]
    pub dev: Option<bool>,
    /// Lifetime of tokens minted by POST /token, in seconds.
    #[arg(long, env = "SATSUMA_COORD_DEV_TOKEN_TTL_S")]
    pub dev_token_ttl_s: Option<u64>,
    /// Test hooks for the test suites (client test parameters, hostile-coordinator
    /// behaviour on request). Never in production.
    #[arg(long, env = "SATSUMA_COORD_TEST_HOOKS", num_args = 0..=1, default_missing_value = "true")]
    pub test_hooks: Option<bool>,
    /// Directory with the web client's static files.
    #[arg(long, env = "SATSUMA_COORD_WEB_DIR")]
    pub web_dir: Option<PathBuf>,
    /// SFU node as URL[;capacity=N][;cpu=SHARE][;region=LABEL][;name=NODE] (repeat, or
    /// comma-separate in the env variable). capacity: most sessions placed on the node (default:
    /// no limit; a room's sessions go to its first session's node until it is full, then to the
    /// least-loaded node in the participant's region hint or the room's region); cpu: the node
    /// is full as well while its process used at least this share (0-1] of its cores between
    /// the last two health checks (default: no limit); region: its
    /// region label; name: its relay node name (--node-name of satsuma-sfu), so calls on a
    /// session reach the node that made it even after a coordinator failover.
    #[arg(
        long = "sfu-node",
        env = "SATSUMA_COORD_SFU_NODES",
        value_delimiter = ','
    )]
    pub sfu_nodes: Option<Vec<String>>,
    /// SFU app id (path segment /v1/apps/{app_id}).
    #[arg(long, env = "SATSUMA_COORD_SFU_APP_ID")]
    pub sfu_app_id: Option<String>,
    /// SFU app secret, sent as Authorization: Bearer.
    #[arg(long, env = "SATSUMA_COORD_SFU_APP_SECRET", hide_env_values = true)]
    pub sfu_app_secret: Option<String>,
    /// Interval between SFU health checks (GET /healthz), in milliseconds.
    #[arg(long, env = "SATSUMA_COORD_SFU_HEALTH_INTERVAL_MS")]
    pub sfu_health_interval_ms: Option<u64>,
    /// Timeout of one proxied SFU call, in milliseconds.
    #[arg(long, env = "SATSUMA_COORD_SFU_TIMEOUT_MS")]
    pub sfu_timeout_ms: Option<u64>,
    /// Silence (no message at all) after which a participant is announced as left, in milliseconds.
    #[arg(long, env = "SATSUMA_COORD_PRESENCE_TIMEOUT_MS")]
    pub presence_timeout_ms: Option<u64>,
    /// Heartbeat interval advertised to clients, in milliseconds.
    #[arg(long, env = "SATSUMA_COORD_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// How long `execute` waits for missing `ready`s after a commit, in milliseconds.
    #[arg(long, env = "SATSUMA_COORD_EXECUTE_TIMEOUT_MS")]
    pub execute_timeout_ms: Option<u64>,
    /// Time a new connection has to send `hello`, in milliseconds.
    #[arg(long, env = "SATSUMA_COORD_HELLO_TIMEOUT_MS")]
    pub hello_timeout_ms: Option<u64>,
    /// Log entries kept per room for resume.
    #[arg(long, env = "SATSUMA_COORD_REPLAY_WINDOW")]
    pub replay_window: Option<usize>,
    /// Log bytes kept per room for resume.
    #[arg(long, env = "SATSUMA_COORD_REPLAY_WINDOW_BYTES")]
    pub replay_window_bytes: Option<usize>,
    /// Largest accepted text (JSON) frame, in bytes.
    #[arg(long, env = "SATSUMA_COORD_MAX_TEXT_BYTES")]
    pub max_text_bytes: Option<usize>,
    /// Largest accepted binary (MLS) frame, in bytes.
    #[arg(long, env = "SATSUMA_COORD_MAX_BINARY_BYTES")]
    pub max_binary_bytes: Option<usize>,
    /// Sustained messages per second per connection.
    #[arg(long, env = "SATSUMA_COORD_RATE_PER_SECOND")]
    pub rate_per_second: Option<u32>,
    /// Burst of messages allowed above the sustained rate.
    #[arg(long, env = "SATSUMA_COORD_RATE_BURST")]
    pub rate_burst: Option<u32>,
    /// Rate-limited messages in a row before the connection is closed (4429).
    #[arg(long, env = "SATSUMA_COORD_FLOOD_CLOSE_AFTER")]
    pub flood_close_after: Option<u32>,
    /// Refused messages in a row before the connection is closed (4002).
    #[arg(long, env = "SATSUMA_COORD_MAX_CONSECUTIVE_ERRORS")]
    pub max_consecutive_errors: Option<u32>,
    /// Participant cap of a new room.
    #[arg(long, env = "SATSUMA_COORD_DEFAULT_MAX_PARTICIPANTS")]
    pub default_max_participants: Option<u32>,
    /// Highest participant cap a host may set.
    #[arg(long, env = "SATSUMA_COORD_HARD_MAX_PARTICIPANTS")]
    pub hard_max_participants: Option<u32>,
    /// Whether the first joiner of an empty room becomes host.
    #[arg(long, env = "SATSUMA_COORD_FIRST_JOINER_IS_HOST", num_args = 0..=1, default_missing_value = "true")]
    pub first_joiner_is_host: Option<bool>,
    /// Most rooms at once.
    #[arg(long, env = "SATSUMA_COORD_MAX_ROOMS")]
    pub max_rooms: Option<usize>,
    /// Most WebSocket connections at once (more are refused with HTTP 503).
    #[arg(long, env = "SATSUMA_COORD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Largest KeyPackage frame, in bytes (larger: error too_large).
    #[arg(long, env = "SATSUMA_COORD_MAX_KEY_PACKAGE_BYTES")]
    pub max_key_package_bytes: Option<usize>,
    /// Largest commit frame (with its Welcome) in a room of one participant cap, in bytes; the
    /// limit is this plus --max-commit-bytes-per-participant times the room's cap.
    #[arg(long, env = "SATSUMA_COORD_MAX_COMMIT_BASE_BYTES")]
    pub max_commit_base_bytes: Option<usize>,
    /// Commit frame bytes allowed per participant of the room's cap.
    #[arg(long, env = "SATSUMA_COORD_MAX_COMMIT_BYTES_PER_PARTICIPANT")]
    pub max_commit_bytes_per_participant: Option<usize>,
    /// Sustained bytes per second a connection may send (text, binary and pings).
    #[arg(long, env = "SATSUMA_COORD_BYTE_RATE_PER_SECOND")]
    pub byte_rate_per_second: Option<u64>,
    /// Burst of bytes above the sustained byte rate (at least max_binary_bytes).
    #[arg(long, env = "SATSUMA_COORD_BYTE_RATE_BURST")]
    pub byte_rate_burst: Option<u64>,
    /// Bytes queued for one connection before it is closed with 4430 (it stopped reading).
    #[arg(long, env = "SATSUMA_COORD_SEND_BUDGET_BYTES")]
    pub send_budget_bytes: Option<usize>,
    /// Most WebSocket connections at once from one IP address (0: no limit).
    #[arg(long, env = "SATSUMA_COORD_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Take the client address from the last X-Forwarded-For entry (only behind a reverse proxy
    /// that sets it).
    #[arg(long, env = "SATSUMA_COORD_TRUST_FORWARDED_FOR", num_args = 0..=1, default_missing_value = "true")]
    pub trust_forwarded_for: Option<bool>,
    /// SFU sessions one participant may hold; a new one beyond it releases the oldest.
    #[arg(long, env = "SATSUMA_COORD_MAX_SFU_SESSIONS_PER_PARTICIPANT")]
    pub max_sfu_sessions_per_participant: Option<usize>,
    /// The URL users open (e.g. https://meet.example.com/): its origin is allowed in Host and
    /// Origin headers.
    #[arg(long, env = "SATSUMA_COORD_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// More origins allowed in Host and Origin headers (scheme://host[:port]; repeat, or
    /// comma-separate in the env variable).
    #[arg(
        long = "allowed-origin",
        env = "SATSUMA_COORD_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Option<Vec<String>>,
    /// A STUN or TURN URL handed to every participant for its media connection (repeat, or
    /// comma-separate in the env variable), e.g. turn:turn.example.com:3478?transport=udp,
    /// turn:turn.example.com:3478?transport=tcp, turns:turn.example.com:443?transport=tcp.
    #[arg(
        long = "turn-url",
        env = "SATSUMA_COORD_TURN_URLS",
        value_delimiter = ','
    )]
    pub turn_urls: Option<Vec<String>>,
    /// The TURN server's shared secret (coturn: use-auth-secret, static-auth-secret=...; at
    /// least 16 characters); required with turn: and turns: URLs.
    #[arg(long, env = "SATSUMA_COORD_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,
    /// Lifetime of the TURN credentials a participant gets, in seconds (1 to 86400; clients
    /// fetch fresh ones before they expire) [default: 21600].
    #[arg(long, env = "SATSUMA_COORD_TURN_TTL_S")]
    pub turn_ttl_s: Option<u64>,
    /// Log filter (tracing EnvFilter syntax), e.g. info or satsuma_coordinator=debug.
    #[arg(long, env = "SATSUMA_COORD_LOG")]
    pub log: Option<String>,
    /// etcd client URL of the room store (repeat, or comma-separate in the env variable);
    /// none: rooms live in this process's memory.
    #[arg(
        long = "etcd-endpoint",
        env = "SATSUMA_COORD_ETCD_ENDPOINTS",
        value_delimiter = ','
    )]
    pub etcd_endpoints: Option<Vec<String>>,
    /// Key prefix of the room store in etcd [default: /satsuma/].
    #[arg(long, env = "SATSUMA_COORD_ETCD_PREFIX")]
    pub etcd_prefix: Option<String>,
    /// This coordinator replica's id (unique per replica, e.g. the pod name) [default: random].
    #[arg(long, env = "SATSUMA_COORD_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// The URL other replicas reach this one at (e.g. http://<pod IP>:8080), stored with the rooms
    /// it owns: a replica that does not own a room serves its clients through the owner there
    /// (without it they are told to retry, 1013).
    #[arg(long, env = "SATSUMA_COORD_REPLICA_URL")]
    pub replica_url: Option<String>,
    /// Room lease TTL in ms: a dead replica's rooms are taken over after it [default: 3000].
    #[arg(long, env = "SATSUMA_COORD_STORE_LEASE_TTL_MS")]
    pub store_lease_ttl_ms: Option<u64>,
    /// Host-controlled recording: the satsuma-record executable the coordinator starts when a
    /// host presses Record (with --recordings-dir). It joins the room as a visible member and
    /// stores decrypted media on this machine. Unset: hosts' record requests are refused.
    #[arg(long, env = "SATSUMA_COORD_RECORDER_COMMAND", value_name = "PATH")]
    pub recorder_command: Option<PathBuf>,
    /// Directory for host-started recordings (one new subdirectory per recording, named
    /// <room>-<unix ms>-<run>). Required with --recorder-command; created if missing.
    #[arg(long, env = "SATSUMA_COORD_RECORDINGS_DIR", value_name = "DIR")]
    pub recordings_dir: Option<PathBuf>,
    /// The URL the recorder joins through [default: this coordinator's own address over plain
    /// HTTP, 127.0.0.1 when it listens on all addresses].
    #[arg(
        long,
        env = "SATSUMA_COORD_RECORDER_COORDINATOR_URL",
        value_name = "URL"
    )]
    pub recorder_coordinator_url: Option<String>,
    /// The display name of host-started recorders: everyone sees "● Recording by <name>"
    /// [default: Recorder].
    #[arg(long, env = "SATSUMA_COORD_RECORDER_NAME")]
    pub recorder_name: Option<String>,
    /// A host-started recording stops by itself after this many seconds [default: 14400].
    #[arg(long, env = "SATSUMA_COORD_RECORDING_MAX_S")]
    pub recording_max_s: Option<u64>,
}

impl Cli {
    /// Reads the file named by `--config` (if any) beneath the flags and env.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<Cli>(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source: Box::new(source),
                })?
            }
            None => Cli::default(),
        };
        let c = self.over(file);
        let base = Config::default();
        let dev = c.dev.unwrap_or(false);
        let jwt_secret = match c.jwt_secret {
            Some(s) => s,
            None if dev => Config::dev().jwt_secret,
            None => String::new(),
        };
        let ms = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_millis);
        let api_keys = c
            .api_keys
            .unwrap_or_default()
            .iter()
            .map(|k| k.parse::<crate::auth::ApiKey>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConfigError::Invalid)?;
        let turn = turn_servers(c.turn_urls.unwrap_or_default(), c.turn_secret)?;
        let recording = match (c.recorder_command, c.recordings_dir) {
            (None, None) => {
                if c.recorder_coordinator_url.is_some()
                    || c.recorder_name.is_some()
                    || c.recording_max_s.is_some()
                {
                    return Err(ConfigError::Invalid(
                        "recorder settings without recorder_command and recordings_dir".to_owned(),
                    ));
                }
                None
            }
            (Some(command), Some(dir)) => Some(RecordingConfig {
                coordinator_url: c.recorder_coordinator_url,
                name: c
                    .recorder_name
                    .unwrap_or_else(|| DEFAULT_RECORDER_NAME.to_owned()),
                max_duration: Duration::from_secs(
                    c.recording_max_s.unwrap_or(DEFAULT_RECORDING_MAX_S),
                ),
                ..RecordingConfig::new(command, dir)
            }),
            _ => {
                return Err(ConfigError::Invalid(
                    "recorder_command and recordings_dir go together".to_owned(),
                ));
            }
        };
        let config = Config {
            recording,
            turn,
            turn_ttl_s: c.turn_ttl_s.unwrap_or(base.turn_ttl_s),
            store: crate::store::StoreConfig {
                etcd_endpoints: c.etcd_endpoints.unwrap_or_default(),
                etcd_prefix: c.etcd_prefix.unwrap_or(base.store.etcd_prefix.clone()),
                replica_id: c.replica_id,
                replica_url: c.replica_url,
                lease_ttl: ms(c.store_lease_ttl_ms, base.store.lease_ttl),
                timeout: base.store.timeout,
            },
            listen: c.listen.unwrap_or(base.listen),
            jwt_secret,
            jwt_leeway_s: c.jwt_leeway_s.unwrap_or(base.jwt_leeway_s),
            jwt_issuer: c.jwt_issuer.unwrap_or(base.jwt_issuer),
            jwt_audience: c.jwt_audience.unwrap_or(base.jwt_audience),
            api_keys,
            dev,
            dev_token_ttl_s: c.dev_token_ttl_s.unwrap_or(base.dev_token_ttl_s),
            test_hooks: c.test_hooks.unwrap_or(false),
            web_dir: c.web_dir.unwrap_or(base.web_dir),
            sfu_nodes: c.sfu_nodes.unwrap_or(base.sfu_nodes),
            sfu_app_id: c.sfu_app_id.unwrap_or(base.sfu_app_id),
            sfu_app_secret: c.sfu_app_secret.unwrap_or(base.sfu_app_secret),
            sfu_health_interval: ms(c.sfu_health_interval_ms, base.sfu_health_interval),
            sfu_timeout: ms(c.sfu_timeout_ms, base.sfu_timeout),
            sfu_max_body_bytes: base.sfu_max_body_bytes,
            presence_timeout: ms(c.presence_timeout_ms, base.presence_timeout),
            heartbeat_interval: ms(c.heartbeat_interval_ms, base.heartbeat_interval),
            execute_timeout: ms(c.execute_timeout_ms, base.execute_timeout),
            hello_timeout: ms(c.hello_timeout_ms, base.hello_timeout),
            replay_window: c.replay_window.unwrap_or(base.replay_window),
            replay_window_bytes: c.replay_window_bytes.unwrap_or(base.replay_window_bytes),
            max_text_bytes: c.max_text_bytes.unwrap_or(base.max_text_bytes),
            max_binary_bytes: c.max_binary_bytes.unwrap_or(base.max_binary_bytes),
            rate_per_second: c.rate_per_second.unwrap_or(base.rate_per_second),
            rate_burst: c.rate_burst.unwrap_or(base.rate_burst),
            flood_close_after: c.flood_close_after.unwrap_or(base.flood_close_after),
            max_consecutive_errors: c
                .max_consecutive_errors
                .unwrap_or(base.max_consecutive_errors),
            default_max_participants: c
                .default_max_participants
                .unwrap_or(base.default_max_participants),
            hard_max_participants: c
                .hard_max_participants
                .unwrap_or(base.hard_max_participants),
            first_joiner_is_host: c.first_joiner_is_host.unwrap_or(base.first_joiner_is_host),
            max_rooms: c.max_rooms.unwrap_or(base.max_rooms),
            max_connections: c.max_connections.unwrap_or(base.max_connections),
            budgets: Budgets {
                public_url: c.public_url,
                max_key_package_bytes: c
                    .max_key_package_bytes
                    .unwrap_or(base.budgets.max_key_package_bytes),
                max_commit_base_bytes: c
                    .max_commit_base_bytes
                    .unwrap_or(base.budgets.max_commit_base_bytes),
                max_commit_bytes_per_participant: c
                    .max_commit_bytes_per_participant
                    .unwrap_or(base.budgets.max_commit_bytes_per_participant),
                byte_rate_per_second: c
                    .byte_rate_per_second
                    .unwrap_or(base.budgets.byte_rate_per_second),
                byte_rate_burst: c.byte_rate_burst.unwrap_or(base.budgets.byte_rate_burst),
                send_budget_bytes: c
                    .send_budget_bytes
                    .unwrap_or(base.budgets.send_budget_bytes),
                max_connections_per_ip: c
                    .max_connections_per_ip
                    .unwrap_or(base.budgets.max_connections_per_ip),
                trust_forwarded_for: c
                    .trust_forwarded_for
                    .unwrap_or(base.budgets.trust_forwarded_for),
                max_sfu_sessions_per_participant: c
                    .max_sfu_sessions_per_participant
                    .unwrap_or(base.budgets.max_sfu_sessions_per_participant),
                allowed_origins: c.allowed_origins.unwrap_or(base.budgets.allowed_origins),
            },
            timer_tick: base.timer_tick,
        };
        config.validate()?;
        Ok(config)
    }

    /// `self` where set, else `file`.
    #[must_use]
    pub fn over(self, file: Cli) -> Cli {
        macro_rules! pick {
            ($($f:ident),*) => { Cli { config: self.config, $($f: self.$f.or(file.$f)),* } };
        }
        pick!(
            listen,
            jwt_secret,
            jwt_leeway_s,
            jwt_issuer,
            jwt_audience,
            api_keys,
            dev,
            dev_token_ttl_s,
            test_hooks,
            web_dir,
            sfu_nodes,
            sfu_app_id,
            sfu_app_secret,
            sfu_health_interval_ms,
            sfu_timeout_ms,
            presence_timeout_ms,
            heartbeat_interval_ms,
            execute_timeout_ms,
            hello_timeout_ms,
            replay_window,
            replay_window_bytes,
            max_text_bytes,
            max_binary_bytes,
            rate_per_second,
            rate_burst,
            flood_close_after,
            max_consecutive_errors,
            default_max_participants,
            hard_max_participants,
            first_joiner_is_host,
            max_rooms,
            max_connections,
            max_key_package_bytes,
            max_commit_base_bytes,
            max_commit_bytes_per_participant,
            byte_rate_per_second,
            byte_rate_burst,
            send_budget_bytes,
            max_connections_per_ip,
            trust_forwarded_for,
            max_sfu_sessions_per_participant,
            public_url,
            allowed_origins,
            turn_urls,
            turn_secret,
            turn_ttl_s,
            log,
            etcd_endpoints,
            etcd_prefix,
            replica_id,
            replica_url,
            store_lease_ttl_ms,
            recorder_command,
            recordings_dir,
            recorder_coordinator_url,
            recorder_name,
            recording_max_s
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn flags_override_file_override_defaults() {
        let dir = std::env::temp_dir().join(format!("coord-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "jwt_secret = \"file-secret-file-secret-file-secret\"\nsfu_app_secret = \"sfu-secret-sfu-secret-sfu-secret!\"\npresence_timeout_ms = 1000\nsfu_nodes = [\"http://a\", \"http://b\"]\nrate_per_second = 7\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "x",
            "--config",
            path.to_str().unwrap(),
            "--rate-per-second",
            "9",
            "--listen",
            "127.0.0.1:0",
        ])
        .unwrap();
        let c = cli.resolve().unwrap();
        assert_eq!(c.jwt_secret, "file-secret-file-secret-file-secret");
        assert_eq!(c.presence_timeout, Duration::from_secs(1));
        assert_eq!(c.sfu_nodes, vec!["http://a", "http://b"]);
        assert_eq!(c.rate_per_second, 9);
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.execute_timeout, Duration::from_secs(2));
    }

    #[test]
    fn secret_required_outside_dev() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert!(cli.resolve().is_err());
        let cli = Cli::try_parse_from(["x", "--dev"]).unwrap();
        assert!(cli.resolve().unwrap().dev);
    }

    #[test]
    fn short_and_placeholder_secrets_are_refused_naming_the_setting() {
        let err = |args: &[&str]| {
            let mut all = vec!["x"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all)
                .unwrap()
                .resolve()
                .unwrap_err()
                .to_string()
        };
        let e = err(&["--jwt-secret", "too-short"]);
        assert!(e.contains("jwt_secret") && e.contains("too short"), "{e}");
        let e = err(&["--jwt-secret", "REPLACE-WITH-openssl-rand-hex-32"]);
        assert!(e.contains("jwt_secret") && e.contains("placeholder"), "{e}");
        let good = "0123456789abcdef0123456789abcdef";
        let e = err(&["--jwt-secret", good, "--api-key", "app:short"]);
        assert!(
            e.contains("API key \"app\"") && e.contains("too short"),
            "{e}"
        );
        let e = err(&["--jwt-secret", good, "--api-key", "bad id:x"]);
        assert!(e.contains("API key id"), "{e}");
        let e = err(&[
            "--jwt-secret",
            good,
            "--sfu-node",
            "http://a",
            "--sfu-app-secret",
            "REPLACE-WITH-another-openssl-rand-hex-32",
        ]);
        assert!(e.contains("sfu_app_secret"), "{e}");
        // Even in dev mode an explicitly configured short token secret is refused.
        let e = err(&["--dev", "--jwt-secret", "dev"]);
        assert!(e.contains("jwt_secret"), "{e}");
        let key = format!("app:{good}");
        let c = Cli::try_parse_from(["x", "--jwt-secret", good, "--api-key", &key])
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(c.api_keys.len(), 1);
        assert_eq!(c.api_keys[0].id, "app");
        assert!(!format!("{:?}", c.api_keys).contains(good));
    }

    #[test]
    fn budgets_come_from_file_env_and_flags() {
        let dir = std::env::temp_dir().join(format!("coord-budgets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "send_budget_bytes = 2097152\nmax_connections_per_ip = 7\nallowed_origins = [\"https://a.example\"]\npublic_url = \"https://meet.example.com/\"\nmax_key_package_bytes = 4096\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "x",
            "--dev",
            "--config",
            path.to_str().unwrap(),
            "--max-connections-per-ip",
            "9",
            "--byte-rate-per-second",
            "1000",
            "--trust-forwarded-for",
        ])
        .unwrap();
        let c = cli.resolve().unwrap();
        let d = Budgets::default();
        assert_eq!(c.budgets.send_budget_bytes, 2 << 20);
        assert_eq!(c.budgets.max_connections_per_ip, 9);
        assert_eq!(c.budgets.byte_rate_per_second, 1000);
        assert_eq!(c.budgets.byte_rate_burst, d.byte_rate_burst);
        assert!(c.budgets.trust_forwarded_for);
        assert_eq!(c.budgets.allowed_origins, vec!["https://a.example"]);
        assert_eq!(
            c.budgets.public_url.as_deref(),
            Some("https://meet.example.com/")
        );
        assert_eq!(c.room_config().max_key_package_bytes, 4096);
        // Nonsense is refused at start.
        let bad = Cli::try_parse_from(["x", "--dev", "--byte-rate-burst", "10"]).unwrap();
        assert!(bad.resolve().is_err());
        let bad = Cli::try_parse_from(["x", "--dev", "--allowed-origin", "ftp://x"]).unwrap();
        assert!(bad.resolve().is_err());
    }

    #[test]
    fn turn_comes_from_file_and_flags_and_is_checked() {
        let c = Cli::try_parse_from(["x", "--dev"])
            .unwrap()
            .resolve()
            .unwrap();
        assert!(c.turn.is_empty());
        assert_eq!(c.turn_ttl_s, DEFAULT_TURN_TTL_S);
        let file: Cli = toml::from_str(
            "turn_urls = [\"stun:t.example:3478\", \"turn:t.example:3478?transport=tcp\"]\n\
             turn_secret = \"coturn-shared-secret\"\nturn_ttl_s = 600\n",
        )
        .unwrap();
        let flags = Cli::try_parse_from(["x", "--dev", "--turn-ttl-s", "900"]).unwrap();
        let c = flags.over(file).resolve().unwrap();
        assert_eq!(c.turn.urls().count(), 2);
        assert_eq!(c.turn_ttl_s, 900);
        assert!(!format!("{c:?}").contains("coturn-shared-secret"));
        let err = |args: &[&str]| {
            let mut all = vec!["x", "--dev"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all)
                .unwrap()
                .resolve()
                .unwrap_err()
                .to_string()
        };
        assert!(err(&["--turn-ttl-s", "0"]).contains("turn_ttl_s"));
        assert!(err(&["--turn-ttl-s", "86401"]).contains("turn_ttl_s"));
        assert!(err(&["--turn-url", "turn:t.example"]).contains("secret"));
        assert!(err(&["--turn-url", "http://t.example"]).contains("URL"));
        let e = err(&["--turn-url", "turn:t.example", "--turn-secret", "short"]);
        assert!(e.contains("16"), "{e}");
    }

    #[test]
    fn recording_comes_from_file_and_flags_and_is_checked() {
        let c = Cli::try_parse_from(["x", "--dev"])
            .unwrap()
            .resolve()
            .unwrap();
        assert!(c.recording.is_none());
        assert!(!c.room_config().recording);
        let file: Cli = toml::from_str(
            "recorder_command = \"/usr/bin/satsuma-record\"\nrecordings_dir = \"/srv/rec\"\n\
             recorder_name = \"Minutes\"\n",
        )
        .unwrap();
        let flags = Cli::try_parse_from(["x", "--dev", "--recording-max-s", "60"]).unwrap();
        let c = flags.over(file).resolve().unwrap();
        let r = c.recording.clone().unwrap();
        assert_eq!(r.command, PathBuf::from("/usr/bin/satsuma-record"));
        assert_eq!(r.dir, PathBuf::from("/srv/rec"));
        assert_eq!(r.name, "Minutes");
        assert_eq!(r.max_duration, Duration::from_secs(60));
        assert!(c.room_config().recording);
        let err = |args: &[&str]| {
            let mut all = vec!["x", "--dev"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all)
                .unwrap()
                .resolve()
                .unwrap_err()
                .to_string()
        };
        assert!(err(&["--recorder-command", "/bin/rec"]).contains("go together"));
        assert!(err(&["--recorder-name", "x"]).contains("recorder_command"));
        let both = [
            "--recorder-command",
            "/bin/rec",
            "--recordings-dir",
            "/tmp/r",
        ];
        let mut args = both.to_vec();
        args.extend(["--recording-max-s", "0"]);
        assert!(err(&args).contains("recording_max_s"));
        let mut args = both.to_vec();
        args.extend(["--recorder-coordinator-url", "ws://x"]);
        assert!(err(&args).contains("recorder_coordinator_url"));
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        assert!(toml::from_str::<Cli>("nope = 1").is_err());
    }

    #[test]
    fn sfu_nodes_carry_capacity_region_and_name_and_are_checked() {
        let file: Cli = toml::from_str(
            "sfu_nodes = [\"http://a:8787;capacity=4;region=eu;name=sfu-a\", \"http://b:8787\"]\n",
        )
        .unwrap();
        let c = Cli::try_parse_from(["x", "--dev"])
            .unwrap()
            .over(file)
            .resolve()
            .unwrap();
        assert_eq!(c.sfu_nodes.len(), 2);
        let err = |nodes: &str| {
            Cli::try_parse_from(["x", "--dev", "--sfu-node", nodes])
                .unwrap()
                .resolve()
                .unwrap_err()
                .to_string()
        };
        assert!(err("http://a;capacity=0").contains("capacity"));
        assert!(err("http://a;weight=2").contains("unknown key"));
        assert!(err("http://a,http://a/").contains("twice"));
        assert!(err("http://a;name=n,http://b;name=n").contains("named n"));
        assert!(err("a:8787").contains("http"));
    }
}
