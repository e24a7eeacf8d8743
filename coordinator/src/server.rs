//! The HTTP server: routes, background tasks, and the embeddable [`Server`] entry point.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Path, State, WebSocketUpgrade};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::access::{self, Access};
use crate::auth::{Claims, TokenKeys, unix_now};
use crate::config::{Config, ConfigError};
use crate::connection;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::Permissions;
use crate::sfu_proxy::{self, SfuPool};

/// Longest accepted room name.
pub const MAX_ROOM_NAME_LEN: usize = 64;

/// Shared state of one running coordinator.
#[derive(Debug)]
pub(crate) struct App {
    pub(crate) config: Config,
    pub(crate) keys: TokenKeys,
    pub(crate) access: Access,
    pub(crate) hub: Hub,
    pub(crate) sfu: SfuPool,
    pub(crate) metrics: Metrics,
    /// Clients served through another replica ([`crate::forward`]): told to go on shutdown.
    pub(crate) pipes: crate::forward::Pipes,
}

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The room store could not be opened.
    #[error("room store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Metrics registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The coordinator server.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Validates `config`, binds the listener and starts serving in the background.
    pub async fn bind(config: Config) -> Result<ServerHandle, ServerError> {
        config.validate()?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let metrics = Metrics::new()?;
        let store = config.store.open()?;
        let (recorder_tx, recorder_rx) = tokio::sync::mpsc::channel(crate::recording::QUEUE);
        let mut hub = Hub::new(config.room_config(), config.max_rooms, metrics.clone())
            .with_ice(crate::ice::IceIssuer::new(
                config.turn.clone(),
                config.turn_ttl_s,
            ))
            .with_store(store);
        if config.recording.is_some() {
            hub = hub.with_recorders(recorder_tx);
        }
        let app = Arc::new(App {
            keys: TokenKeys::with_names(
                config.jwt_secret.as_bytes(),
                config.jwt_leeway_s,
                &config.jwt_issuer,
                &config.jwt_audience,
            ),
            access: Access::new(config.api_keys.clone(), config.jwt_leeway_s),
            hub,
            sfu: SfuPool::new(
                &config.sfu_nodes,
                &config.sfu_app_id,
                &config.sfu_app_secret,
                config.sfu_timeout,
            ),
            metrics,
            pipes: crate::forward::Pipes::default(),
            config,
        });
        app.sfu.check_health().await;

        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(timer_loop(app.clone(), stop_rx.clone())));
        // The recorders join through this origin: it passes the Host/Origin check.
        let mut budgets = app.config.budgets.clone();
        if let Some(rec) = app.config.recording.clone() {
            let url = rec.coordinator_url.clone().unwrap_or_else(|| {
                let ip = match addr.ip() {
                    ip if ip.is_unspecified() && ip.is_ipv4() => {
                        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
                    }
                    ip if ip.is_unspecified() => {
                        std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
                    }
                    ip => ip,
                };
                format!("http://{}", SocketAddr::new(ip, addr.port()))
            });
            budgets.allowed_origins.push(url.clone());
            tracing::info!(
                command = %rec.command.display(),
                dir = %rec.dir.display(),
                coordinator = %url,
                "hosts may start recording"
            );
            // The task holds the app weakly. A recorder's stdin is a pipe held by its
            // watcher: when this process ends, the recorder finishes its files and exits.
            tasks.push(tokio::spawn(crate::recording::run(
                Arc::downgrade(&app),
                rec,
                url,
                recorder_rx,
            )));
        }
        if let Some(closes) = app.hub.take_sfu_closes() {
            tasks.push(tokio::spawn(sfu_proxy::close_sessions(app.clone(), closes)));
        }
        if !app.sfu.nodes.is_empty() {
            tasks.push(tokio::spawn(health_loop(app.clone(), stop_rx.clone())));
            if app.hub.store().durable() {
                tasks.push(tokio::spawn(crate::placement::placement_loop(
                    app.clone(),
                    stop_rx.clone(),
                )));
            }
        }
        let guard = crate::access_control::Guard {
            allow: Arc::new(crate::access_control::AllowList::new(
                app.config.budgets.public_url.as_deref(),
                &budgets,
                addr,
            )),
            metrics: app.metrics.clone(),
        };
        let router = router(app.clone())
            .layer(axum::middleware::from_fn_with_state(
                guard,
                crate::access_control::check,
            ))
            .into_make_service_with_connect_info::<SocketAddr>();
        let mut stop = stop_rx.clone();
        let serve = tokio::spawn(async move {
            let result = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "server stopped");
            }
        });
        if app.config.test_hooks {
            tracing::warn!(
                "test hooks on: the web client honours its test parameters and drills; \
                 for test suites only, never in production"
            );
        }
        tracing::info!(%addr, "coordinator listening");
        Ok(ServerHandle {
            addr,
            app,
            stop: stop_tx,
            serve: Some(serve),
            tasks,
        })
    }
}

/// A running coordinator. Dropping the handle stops it too (abruptly).
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    app: Arc<App>,
    stop: watch::Sender<bool>,
    serve: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(s) = &self.serve {
            s.abort();
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl ServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://addr/ws/{room}`.
    pub fn ws_url(&self, room: &str) -> String {
        format!("ws://{}/ws/{room}", self.addr)
    }

    /// Signs a join token with the server's secret (for embedders and tests).
    pub fn mint_token(&self, claims: &Claims) -> Result<String, crate::auth::AuthError> {
        self.app.keys.mint(claims)
    }

    /// Write counters of the room store (writes and bytes so far).
    pub fn store_writes(&self) -> (u64, u64) {
        self.app.hub.store().stats().totals()
    }

    /// Closes every connection (1001) and stops the server. With a durable room store the
    /// rooms stay in it and this replica's leases are released first, so another replica
    /// takes them at once.
    pub async fn shutdown(mut self) {
        self.app.hub.close_all();
        self.app.pipes.close_all();
        let _ = self.stop.send(true);
        // The close frames (1001) are queued; let the connections' writers put them on the wire
        // before the process exits, or a client sees a reset instead of "resume elsewhere"
        // (seen under load: the forwarding test's SIGTERM'd replica). Each connection gives up
        // on a dead peer within its own grace, so this wait is bounded.
        let flushed = tokio::time::Instant::now() + SHUTDOWN_FLUSH;
        while self.app.hub.open_connections() > 0 && tokio::time::Instant::now() < flushed {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(mut serve) = self.serve.take()
            && tokio::time::timeout(std::time::Duration::from_secs(5), &mut serve)
                .await
                .is_err()
        {
            serve.abort();
        }
    }

    /// Waits until the server stops on its own (it normally does not).
    pub async fn wait(&mut self) {
        if let Some(serve) = self.serve.as_mut() {
            let _ = serve.await;
        }
        self.serve = None;
    }
}

/// How long a shutdown waits for its connections to flush their close frames.
const SHUTDOWN_FLUSH: std::time::Duration = std::time::Duration::from_secs(3);

async fn timer_loop(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(app.config.timer_tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => app.hub.tick(),
            _ = stop.changed() => return,
        }
    }
}

async fn health_loop(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut moves = crate::sfu_moves::Moves::new(app.sfu.nodes.len());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(app.config.sfu_health_interval) => {
                app.sfu.check_health().await;
                moves.run(&app).await;
            }
            _ = stop.changed() => return,
        }
    }
}

fn router(app: Arc<App>) -> Router {
    let web = &app.config.web_dir;
    let statics = ServeDir::new(web).fallback(ServeFile::new(web.join("index.html")));
    let mut r = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/client-config.json", get(client_config))
        .route("/ws/{room}", get(ws_upgrade))
        .merge(sfu_proxy::routes(app.config.sfu_max_body_bytes).layer(
            axum::middleware::from_fn_with_state(app.clone(), crate::forward::sfu_middleware),
        ))
        .merge(access::routes());
    if app.config.dev {
        r = r.route("/token", post(dev_token));
    } else {
        // Not a static file either: 404 whatever the method.
        r = r.route("/token", any(no_dev_token));
    }
    let csp = Arc::new(ContentSecurityPolicy::new(web.join("index.html")));
    let mut r =
        r.fallback_service(statics)
            .with_state(app)
            .layer(SetResponseHeaderLayer::overriding(
                header::CONTENT_SECURITY_POLICY,
                move |_: &Response| Some(csp.header()),
            ));
    for (name, value) in SECURITY_HEADERS {
        r = r.layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        ));
    }
    // Revalidate every time (ETag/Last-Modified make that a 304): after an upgrade the page and
    // the integrity hashes in it must never mix with cached older files.
    r.layer(SetResponseHeaderLayer::if_not_present(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    ))
}

/// Headers on every HTTP response besides the Content-Security-Policy (lower-case names).
pub(crate) const SECURITY_HEADERS: [(&str, &str); 6] = [
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    (
        "permissions-policy",
        "camera=(self), microphone=(self), display-capture=(self), geolocation=(), payment=(), usb=()",
    ),
];

/// The Content-Security-Policy of every response: only same-origin files, no inline script, no
/// `eval`, WebAssembly compilation allowed, not embeddable in frames. `script-src` and
/// `worker-src` also allow `blob:`: the page starts the E2EE worker from the worker's source
/// after checking it against its integrity hash (a worker loaded by URL cannot be checked), and
/// only page code can make a blob URL. Besides, `script-src` allows exactly the inline import
/// maps of `index.html`, by their SHA-256: they are data, not code (they carry the integrity
/// hashes of every module).
pub(crate) fn content_security_policy(import_map_hashes: &[String]) -> String {
    let mut script = String::from("'self' 'wasm-unsafe-eval'");
    for h in import_map_hashes {
        script.push_str(&format!(" 'sha256-{h}'"));
    }
    format!(
        "default-src 'self'; script-src {script} blob:; worker-src 'self' blob:; \
         style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; \
         connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'"
    )
}

/// The base64 SHA-256 of the text of every `<script type="importmap">` element of `html`, as
/// a browser hashes it for a CSP hash source.
pub(crate) fn import_map_hashes(html: &str) -> Vec<String> {
    // Tag names are case-insensitive; ASCII lower-casing keeps every byte offset.
    let lower = html.to_ascii_lowercase();
    let mut hashes = Vec::new();
    let mut pos = 0;
    while let Some(found) = lower[pos..].find("<script") {
        let start = pos + found;
        let Some(tag_len) = lower[start..].find('>') else {
            break;
        };
        let body = start + tag_len + 1;
        let Some(body_len) = lower[body..].find("</script") else {
            break;
        };
        let tag: String = lower[start..body]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if ["type=\"importmap\"", "type='importmap'", "type=importmap"]
            .iter()
            .any(|t| tag.contains(t))
        {
            let digest = Sha256::digest(&html.as_bytes()[body..body + body_len]);
            hashes.push(base64::engine::general_purpose::STANDARD.encode(digest));
        }
        pos = body + body_len;
    }
    hashes
}

/// What identifies a version of `index.html` on disk: modification time and size (`None`: no
/// file).
type FileStamp = Option<(SystemTime, u64)>;

/// The CSP header value, recomputed when `index.html` changes on disk (a rebuild of the web
/// client while the server runs).
#[derive(Debug)]
struct ContentSecurityPolicy {
    index: PathBuf,
    cached: parking_lot::Mutex<Option<(FileStamp, HeaderValue)>>,
}

impl ContentSecurityPolicy {
    fn new(index: PathBuf) -> Self {
        Self {
            index,
            cached: parking_lot::Mutex::new(None),
        }
    }

    fn header(&self) -> HeaderValue {
        let stamp = std::fs::metadata(&self.index)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        let mut cached = self.cached.lock();
        if let Some((seen, value)) = cached.as_ref()
            && *seen == stamp
        {
            return value.clone();
        }
        let hashes = std::fs::read_to_string(&self.index)
            .map(|html| import_map_hashes(&html))
            .unwrap_or_default();
        let value = HeaderValue::from_str(&content_security_policy(&hashes))
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
        *cached = Some((stamp, value.clone()));
        value
    }
}

/// Readiness: 200 while the room store is usable (always with the memory store), else 503
/// (an etcd replica without its lease must get no new clients).
async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.hub.store().ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "room store unavailable").into_response()
    }
}

/// `GET /client-config.json`: what the web client may do on this server. `test_hooks`: honour
/// the test-only URL parameters and drills (only with `--test-hooks`); `dev`: `POST /token`
/// hands out join tokens (only with `--dev`; otherwise the page needs a `#token=` or an
/// `#invite=` link); `recording`: a host's `record` can start a recorder (the coordinator has
/// a recorder command and a recordings directory), so the page offers hosts a Record button.
async fn client_config(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({
            "test_hooks": app.config.test_hooks,
            "dev": app.config.dev,
            "recording": app.config.recording.is_some(),
        })),
    )
        .into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

/// Room names: 1–64 of `A-Z a-z 0-9 . _ -`.
pub fn valid_room_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ROOM_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

async fn ws_upgrade(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !valid_room_name(&room) {
        return (StatusCode::BAD_REQUEST, "invalid room name").into_response();
    }
    let open = usize::try_from(app.metrics.connections.get()).unwrap_or(0);
    if open >= app.config.max_connections {
        app.metrics.error("too_many_connections");
        app.metrics.close(crate::metrics::CloseReason::ServerCap);
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    }
    // A client another replica forwards here (it owns the room) counts under its own address.
    let forwarded =
        crate::forward::forwarded_client(app.config.jwt_secret.as_bytes(), &room, &headers);
    let ip = forwarded
        .unwrap_or_else(|| client_ip(peer, &headers, app.config.budgets.trust_forwarded_for));
    let Some(ip_slot) = app
        .hub
        .ip_slot(ip, app.config.budgets.max_connections_per_ip)
    else {
        app.metrics.close(crate::metrics::CloseReason::PerIpCap);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({
                "error": "too_many_connections_from_ip",
                "message": format!(
                    "at most {} connections from one address",
                    app.config.budgets.max_connections_per_ip
                ),
            })),
        )
            .into_response();
    };
    let hard = app.config.max_text_bytes.max(app.config.max_binary_bytes) + (64 << 10);
    ws.max_message_size(hard)
        .max_frame_size(hard)
        .on_upgrade(move |socket| {
            connection::serve(socket, room, app, ip_slot, ip, forwarded.is_some())
        })
}

/// The client's address: the TCP peer, or (only when trusted, behind a reverse proxy) the
/// last `X-Forwarded-For` entry, the one that proxy appended.
pub(crate) fn client_ip(
    peer: SocketAddr,
    headers: &axum::http::HeaderMap,
    trust_forwarded_for: bool,
) -> std::net::IpAddr {
    if trust_forwarded_for
        && let Some(ip) = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse::<std::net::IpAddr>().ok())
            .next_back()
    {
        return ip;
    }
    peer.ip()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    room: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    perms: Option<Vec<String>>,
    #[serde(default)]
    ttl_s: Option<u64>,
}

/// `/token` without dev mode: 404 with a hint.
async fn no_dev_token() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({
            "error": "not_found",
            "message": "POST /token exists only in dev mode (--dev); get a join token from \
                        POST /api/v1/tokens (API key) or an invite"
        })),
    )
        .into_response()
}

/// `POST /token` (dev mode only): mints a join token.
async fn dev_token(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Response {
    let req: TokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": e.to_string()})),
            )
                .into_response();
        }
    };
    if !valid_room_name(&req.room) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid room name"})),
        )
            .into_response();
    }
    let now = unix_now();
    let exp = now
        + req
            .ttl_s
            .unwrap_or(app.config.dev_token_ttl_s)
            .min(86_400 * 30);
    let subject = req
        .subject
        .unwrap_or_else(|| format!("dev-{}", hex::encode(rand::random::<[u8; 8]>())));
    let claims = Claims {
        name: req.name.unwrap_or_else(|| subject.clone()),
        sub: subject,
        room: req.room,
        perms: req.perms.unwrap_or_else(|| {
            Permissions {
                publish: true,
                subscribe: true,
                host: false,
            }
            .to_names()
        }),
        exp,
        iat: Some(now),
        ..Claims::default()
    };
    match app.keys.mint(&claims) {
        Ok(token) => axum::Json(json!({"token": token, "exp": exp})).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_client_address_comes_from_x_forwarded_for_only_when_trusted() {
        let peer: SocketAddr = "10.0.0.2:5555".parse().unwrap();
        let mut h = axum::http::HeaderMap::new();
        h.append(
            "x-forwarded-for",
            "198.51.100.9, 203.0.113.4".parse().unwrap(),
        );
        assert_eq!(client_ip(peer, &h, false), peer.ip());
        // The last entry is the one the trusted proxy appended (the first is the client's say).
        assert_eq!(
            client_ip(peer, &h, true),
            "203.0.113.4".parse::<std::net::IpAddr>().unwrap()
        );
        let mut junk = axum::http::HeaderMap::new();
        junk.append("x-forwarded-for", "nonsense".parse().unwrap());
        assert_eq!(client_ip(peer, &junk, true), peer.ip());
        assert_eq!(
            client_ip(peer, &axum::http::HeaderMap::new(), true),
            peer.ip()
        );
    }

    #[test]
    fn import_maps_are_hashed_and_nothing_else() {
        let html = "<head><script type=\"importmap\">{\"integrity\":{}}</script>\n\
                    <script type=\"module\" src=\"app.js\"></script>\n\
                    <script>alert(1)</script><SCRIPT TYPE='importmap'>{}</SCRIPT></head>";
        let hashes = import_map_hashes(html);
        // base64(sha256("{\"integrity\":{}}")) and base64(sha256("{}")).
        let expect = |s: &str| base64::engine::general_purpose::STANDARD.encode(Sha256::digest(s));
        assert_eq!(hashes, vec![expect("{\"integrity\":{}}"), expect("{}")]);
        assert_eq!(expect("{}"), "RBNvo1WzZ4oRRq0W9+hknpT7T8If536DEMBg9hyq/4o=");
        assert!(import_map_hashes("<p>no scripts</p><script").is_empty());
        assert!(import_map_hashes("<script type=\"importmap\">{} no close").is_empty());
    }

    #[test]
    fn the_policy_is_strict_and_allows_only_the_import_maps_inline() {
        let csp = content_security_policy(&["abc=".to_string()]);
        for part in [
            "default-src 'self'",
            "script-src 'self' 'wasm-unsafe-eval' 'sha256-abc=' blob:",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(part), "{part} missing in {csp}");
        }
        assert!(!csp.contains("unsafe-inline") && !csp.contains("'unsafe-eval'"));
        assert!(HeaderValue::from_str(&csp).is_ok());
    }

    #[test]
    fn the_policy_follows_index_html_on_disk() {
        let dir = std::env::temp_dir().join(format!("satsuma-csp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let index = dir.join("index.html");
        let csp = ContentSecurityPolicy::new(index.clone());
        let none = csp.header();
        assert!(!none.to_str().unwrap().contains("sha256-"));
        std::fs::write(&index, "<script type=\"importmap\">{}</script>").unwrap();
        let one = csp.header();
        assert!(
            one.to_str()
                .unwrap()
                .contains("'sha256-RBNvo1WzZ4oRRq0W9+hknpT7T8If536DEMBg9hyq/4o='")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
