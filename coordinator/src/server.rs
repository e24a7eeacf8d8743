//! The HTTP server: routes, background tasks, and the embeddable [`Server`] entry point.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower_http::services::{ServeDir, ServeFile};

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
    pub(crate) hub: Hub,
    pub(crate) sfu: SfuPool,
    pub(crate) metrics: Metrics,
}

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServerError {
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
        let app = Arc::new(App {
            keys: TokenKeys::new(config.jwt_secret.as_bytes(), config.jwt_leeway_s),
            hub: Hub::new(config.room_config(), config.max_rooms, metrics.clone()),
            sfu: SfuPool::new(
                &config.sfu_nodes,
                &config.sfu_app_id,
                &config.sfu_app_secret,
                config.sfu_timeout,
            ),
            metrics,
            config,
        });
        app.sfu.check_health().await;

        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(timer_loop(app.clone(), stop_rx.clone())));
        if !app.sfu.nodes.is_empty() {
            tasks.push(tokio::spawn(health_loop(app.clone(), stop_rx.clone())));
        }
        let router = router(app.clone());
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

    /// Closes every connection (1001) and stops the server.
    pub async fn shutdown(mut self) {
        self.app.hub.close_all();
        let _ = self.stop.send(true);
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
    loop {
        tokio::select! {
            _ = tokio::time::sleep(app.config.sfu_health_interval) => app.sfu.check_health().await,
            _ = stop.changed() => return,
        }
    }
}

fn router(app: Arc<App>) -> Router {
    let web = &app.config.web_dir;
    let statics = ServeDir::new(web).fallback(ServeFile::new(web.join("index.html")));
    let mut r = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/ws/{room}", get(ws_upgrade))
        .merge(sfu_proxy::routes(app.config.sfu_max_body_bytes));
    if app.config.dev {
        r = r.route("/token", post(dev_token));
    }
    r.fallback_service(statics).with_state(app)
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
    ws: WebSocketUpgrade,
) -> Response {
    if !valid_room_name(&room) {
        return (StatusCode::BAD_REQUEST, "invalid room name").into_response();
    }
    let open = usize::try_from(app.metrics.connections.get()).unwrap_or(0);
    if open >= app.config.max_connections {
        app.metrics.error("too_many_connections");
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    }
    let hard = app.config.max_text_bytes.max(app.config.max_binary_bytes) + (64 << 10);
    ws.max_message_size(hard)
        .max_frame_size(hard)
        .on_upgrade(move |socket| connection::serve(socket, room, app))
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
