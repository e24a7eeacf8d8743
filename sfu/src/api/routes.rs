//! Routes and handlers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use parking_lot::Mutex;
use satsuma_common::TokenBucket;
use satsuma_wire::realtime::api_error_code;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::error::ApiError;
use super::types::{
    CloseTracksRequest, DataChannelsRequest, KeyframeTracksRequest, NewSessionRequest,
    NewSessionResponse, RenegotiateRequest, SdpType, SessionDescription, TracksRequest,
    UpdateTracksRequest,
};
use crate::config::Limits;
use crate::directory::Directory;
use crate::health::ShardHealth;
use crate::ids::{SessionId, ShardId};
use crate::metrics::{Metrics, Quota};
use crate::shard::{ApiCommand, ApiReply, ShardMsg};

/// Shared state of the API handlers.
#[derive(Debug)]
pub struct ApiState {
    /// App id → secret.
    pub apps: HashMap<String, String>,
    /// Session directory.
    pub directory: Arc<Directory>,
    /// Shard inboxes.
    pub shards: Vec<mpsc::Sender<ShardMsg>>,
    /// Metrics.
    pub metrics: Metrics,
    /// Round-robin counter for placing new sessions.
    pub next_shard: AtomicUsize,
    /// Tracks allowed per request.
    pub max_tracks: usize,
    /// `sessions/new` rate limit of each app.
    pub app_new_sessions: HashMap<String, Mutex<TokenBucket>>,
    /// Shard health, for `/healthz` and session placement.
    pub health: Arc<ShardHealth>,
    /// Quotas.
    pub limits: Limits,
    /// API requests per session per second (for the 429 message).
    pub session_requests_per_second: u32,
    /// How long `/healthz` reports a restarted shard.
    pub shard_panic_hold: Duration,
    /// Whether the test-only routes exist.
    pub test_hooks: bool,
    /// Origins allowed cross-origin (CORS); empty: no CORS.
    pub cors_origins: Vec<String>,
    /// Bearer token `/metrics` requires, if any.
    pub metrics_token: Option<String>,
    /// Whether the API listener serves `/metrics` (false with a separate metrics listener).
    pub metrics_on_api: bool,
    /// TURN key id → bearer token (`generate-ice-servers`).
    pub turn_keys: HashMap<String, String>,
    /// The STUN/TURN servers `generate-ice-servers` hands out.
    pub turn: satsuma_common::turn::TurnServers,
    /// The relay between SFU nodes (`None`: off): pulls of sessions on other nodes.
    pub relay: Option<crate::relay::bridge::BridgeHandle>,
    /// Draining (issue 15, [`crate::drain`]): no new sessions, `/healthz` answers `draining`.
    pub drain: Arc<crate::drain::Drain>,
}

type Shared = State<Arc<ApiState>>;

/// The API router.
pub fn router(state: Arc<ApiState>) -> Router {
    let mut r = Router::new()
        .route("/v1/apps/{app_id}/sessions/new", post(new_session))
        .route(
            "/v1/apps/{app_id}/sessions/{session_id}/tracks/new",
            post(tracks_new),
        )
        .route(
            "/v1/apps/{app_id}/sessions/{session_id}/renegotiate",
            put(renegotiate),
        )
        .route(
            "/v1/apps/{app_id}/sessions/{session_id}/tracks/close",
            put(tracks_close),
        )
        .route(
            "/v1/apps/{app_id}/sessions/{session_id}/tracks/update",
            put(tracks_update),
        )
        .route(
            "/v1/apps/{app_id}/sessions/{session_id}/tracks/keyframe",
            post(tracks_keyframe),
        )
        .route(
            "/v1/apps/{app_id}/sessions/{session_id}/datachannels/new",
            post(datachannels_new),
        )
        .route(
            "/v1/apps/{app_id}/sessions/{session_id}/datachannels/close",
            put(datachannels_close),
        )
        .route(
            "/v1/apps/{app_id}/sessions/{session_id}",
            get(get_session).delete(delete_session),
        )
        .route(
            "/v1/turn/keys/{key_id}/credentials/generate-ice-servers",
            post(super::turn::generate_ice_servers),
        )
        .route("/v1/apps/{app_id}/drain", post(super::drain::drain_node))
        .route("/healthz", get(healthz))
        .route("/livez", get(livez));
    if state.metrics_on_api {
        r = r.route("/metrics", get(metrics));
    }
    if state.test_hooks {
        r = r.route("/v1/test/shards/{shard}/panic", post(test_panic_shard));
    }
    let r = r
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            super::drain::gate,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            count_requests,
        ));
    let r = match cors(&state.cors_origins) {
        Some(layer) => r.layer(layer),
        None => r,
    };
    r.with_state(state)
}

/// The router of the separate metrics listener (`Config::metrics_bind`): `/metrics`, `/healthz`,
/// `/livez`.
pub fn ops_router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            super::drain::gate,
        ))
        .with_state(state)
}

/// CORS for the configured origins only; `None` (no CORS headers, so browsers refuse
/// cross-origin calls) when none are configured. Origins that do not parse as header values were
/// refused by `Config::validate`.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allowed: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(allowed))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(Duration::from_secs(600)),
    )
}

async fn count_requests(State(st): Shared, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = next.run(req).await;
    st.metrics
        .api_requests
        .with_label_values(&[&route, response.status().as_str()])
        .inc();
    response
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        api_error_code::NOT_FOUND,
        "no such route",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        api_error_code::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

/// `GET /healthz`: 200 `ok` (with the CPU headers, [`CPU_SECONDS_HEADER`]) while every shard is
/// healthy; 503 with a JSON body naming the
/// shards that are dead or panicked within `Config::shard_panic_hold`.
async fn healthz(State(st): Shared) -> Response {
    let problems = st.health.problems(Instant::now(), st.shard_panic_hold);
    if problems.is_empty() {
        return (cpu_headers(), "ok\n").into_response();
    }
    let body = serde_json::json!({
        "status": "unhealthy",
        "shards": problems,
    });
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// `GET /livez`, for a liveness probe: 200 `ok` while the process serves, draining or not (a
/// drain may outlast any probe's tolerance, and killing a draining node cuts the calls it is
/// moving); 503 with a JSON body naming the dead shards once a shard thread died for good, which
/// only a restart mends. A shard that panicked and was restarted is no liveness problem (it takes
/// work again): readiness (`/healthz`) reports it.
async fn livez(State(st): Shared) -> Response {
    let dead: Vec<_> = st
        .health
        .problems(Instant::now(), st.shard_panic_hold)
        .into_iter()
        .filter(|p| p.state == "dead")
        .collect();
    if dead.is_empty() {
        return "ok\n".into_response();
    }
    let body = serde_json::json!({
        "status": "dead",
        "shards": dead,
    });
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// Header of `/healthz` with the process's CPU seconds so far (user + system, all threads):
/// the coordinator divides two readings' difference by the time between them and
/// [`CPU_CORES_HEADER`] for the node's CPU share (placement counts a node above its configured
/// share as full).
pub const CPU_SECONDS_HEADER: &str = "satsuma-cpu-seconds";
/// Header of `/healthz` with the cores this process may use.
pub const CPU_CORES_HEADER: &str = "satsuma-cpu-cores";

fn cpu_headers() -> [(&'static str, String); 2] {
    let cpu = crate::metrics::process_cpu_seconds().map_or_else(String::new, |s| format!("{s:.2}"));
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    [
        (CPU_SECONDS_HEADER, cpu),
        (CPU_CORES_HEADER, cores.to_string()),
    ]
}

/// `POST /v1/test/shards/{n}/panic` (only with `Config::test_hooks`): makes shard `n` panic.
async fn test_panic_shard(
    State(st): Shared,
    Path(shard): Path<usize>,
) -> Result<Response, ApiError> {
    let inbox = st.shards.get(shard).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            api_error_code::NOT_FOUND,
            "no such shard",
        )
    })?;
    inbox
        .send(ShardMsg::InjectPanic)
        .await
        .map_err(|_| ApiError::internal("the shard is gone"))?;
    tracing::warn!(shard, "test hook: panic injected");
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"shard": shard})),
    )
        .into_response())
}

async fn metrics(State(st): Shared, headers: HeaderMap) -> Response {
    if let Some(token) = &st.metrics_token
        && !bearer(&headers).is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes()))
    {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required for /metrics\n",
        )
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

/// Constant-time byte comparison (the secret length is not hidden).
pub(super) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer <token>` header.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
}

/// Checks `Authorization: Bearer <secret>` for `app_id`.
pub(super) fn authenticate(
    st: &ApiState,
    app_id: &str,
    headers: &HeaderMap,
) -> Result<Arc<str>, ApiError> {
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            api_error_code::UNAUTHORIZED,
            "missing or wrong bearer secret for this app",
        )
    };
    let given = bearer(headers).ok_or_else(unauthorized)?;
    let secret = st.apps.get(app_id).ok_or_else(unauthorized)?;
    if !same_secret(given.as_bytes(), secret.as_bytes()) {
        return Err(unauthorized());
    }
    Ok(Arc::from(app_id))
}

/// Finds a session of this app, and takes a token from its rate limit.
fn locate(st: &ApiState, app: &str, session_id: &str) -> Result<(SessionId, ShardId), ApiError> {
    let id = SessionId::parse(session_id).ok_or_else(ApiError::no_session)?;
    let shard = st
        .directory
        .session_shard(app, id)
        .ok_or_else(ApiError::no_session)?;
    match st.directory.take_request_token(app, id, Instant::now()) {
        Some(true) => Ok((id, shard)),
        Some(false) => {
            st.metrics.refused(Quota::SessionRequestRate);
            Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                api_error_code::RATE_LIMITED,
                format!(
                    "too many requests for this session (limit: {} per second)",
                    st.session_requests_per_second
                ),
            ))
        }
        None => Err(ApiError::no_session()),
    }
}

/// Decodes a JSON body whatever the Content-Type; an empty body is `T::default()` when allowed.
/// Public for the fuzz target `api_json` (`sfu/fuzz`).
pub fn decode<T: DeserializeOwned + Default>(body: &Bytes, optional: bool) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return if optional {
            Ok(T::default())
        } else {
            Err(ApiError::decoding("a JSON body is required"))
        };
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::decoding(format!("the request could not be decoded: {e}")))
}

/// Sends a command to a shard and waits for its reply.
async fn dispatch(
    st: &ApiState,
    shard: ShardId,
    command: ApiCommand,
) -> Result<ApiReply, ApiError> {
    let (reply, rx) = oneshot::channel();
    let inbox = st
        .shards
        .get(shard)
        .ok_or_else(|| ApiError::internal("session's shard is missing"))?;
    inbox
        .send(ShardMsg::Api { command, reply })
        .await
        .map_err(|_| ApiError::internal("the shard is shutting down"))?;
    Ok(rx
        .await
        .map_err(|_| ApiError::internal("the shard dropped the request"))??)
}

/// A reply that does not belong to the command (a bug).
fn mismatched(reply: &ApiReply) -> ApiError {
    tracing::error!(?reply, "a shard answered with the reply of another command");
    ApiError::internal("the shard answered another command")
}

/// The shard for a new session: round robin over the shards whose thread is alive.
fn place(st: &ApiState) -> ShardId {
    let n = st.shards.len().max(1);
    for _ in 0..n {
        let shard = st.next_shard.fetch_add(1, Ordering::Relaxed) % n;
        if st.health.is_alive(shard) {
            return shard;
        }
    }
    st.next_shard.fetch_add(1, Ordering::Relaxed) % n
}

fn too_many(st: &ApiState, n: usize) -> Result<(), ApiError> {
    if n > st.max_tracks {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            api_error_code::TOO_MANY_TRACKS,
            format!("at most {} tracks per request, got {n}", st.max_tracks),
        ));
    }
    Ok(())
}

async fn new_session(
    State(st): Shared,
    Path(app_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let app = authenticate(&st, &app_id, &headers)?;
    let request: NewSessionRequest = decode(&body, true)?;
    let offer = match request.session_description {
        Some(SessionDescription {
            kind: SdpType::Offer,
            sdp,
        }) => Some(sdp),
        Some(_) => return Err(ApiError::invalid("sessions/new takes an offer")),
        None => None,
    };
    let allowed = st
        .app_new_sessions
        .get(&*app)
        .is_some_and(|b| b.lock().try_take(Instant::now()));
    if !allowed {
        st.metrics.refused(Quota::AppNewSessionRate);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            api_error_code::RATE_LIMITED,
            format!(
                "too many new sessions for this app (limit: {} per second)",
                st.limits.app_new_sessions_per_second
            ),
        ));
    }
    let Some(slot) = st
        .directory
        .reserve_session(&app, st.limits.app_max_sessions)
    else {
        st.metrics.refused(Quota::AppSessions);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            api_error_code::TOO_MANY_SESSIONS,
            format!(
                "this app holds its limit of {} live sessions",
                st.limits.app_max_sessions
            ),
        ));
    };
    let shard = place(&st);
    let id = match &st.relay {
        Some(relay) => SessionId::tagged(relay.tag()),
        None => SessionId::random(),
    };
    // The place travels with the command: the shard commits it to the session it creates, and
    // it is given back if the command is dropped unprocessed or the creation fails.
    let command = ApiCommand::Create {
        id,
        app,
        offer,
        slot,
    };
    let answer = match dispatch(&st, shard, command).await? {
        ApiReply::Created(answer) => answer,
        other => return Err(mismatched(&other)),
    };
    let body = NewSessionResponse {
        session_id: id.to_string(),
        session_description: answer.map(|sdp| SessionDescription {
            kind: SdpType::Answer,
            sdp,
        }),
    };
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// Decodes a `datachannels/*` body: 1 to `max_tracks` channels.
fn datachannels_body(st: &ApiState, body: &Bytes) -> Result<DataChannelsRequest, ApiError> {
    let request: DataChannelsRequest = decode(body, false)?;
    let n = request.data_channels.len();
    if n == 0 {
        return Err(ApiError::invalid(
            "dataChannels must name at least one channel",
        ));
    }
    if n > st.max_tracks {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            api_error_code::TOO_MANY_DATACHANNELS,
            format!(
                "at most {} data channels per request, got {n}",
                st.max_tracks
            ),
        ));
    }
    Ok(request)
}

/// `POST sessions/{id}/datachannels/new`: publish (`local`) or subscribe to (`remote`) data
/// channels; each result carries the SCTP stream `id` to open the channel with (`negotiated`).
async fn datachannels_new(
    State(st): Shared,
    Path((app_id, session_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let app = authenticate(&st, &app_id, &headers)?;
    let (id, shard) = locate(&st, &app, &session_id)?;
    let request = datachannels_body(&st, &body)?;
    let r = match dispatch(&st, shard, ApiCommand::DataChannelsNew { id, request }).await? {
        ApiReply::DataChannels(r) => r,
        other => return Err(mismatched(&other)),
    };
    Ok(axum::Json(r).into_response())
}

/// `PUT sessions/{id}/datachannels/close` (Satsuma extension): close data channels of the
/// session, named by `id` or by `location` and `dataChannelName`.
async fn datachannels_close(
    State(st): Shared,
    Path((app_id, session_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let app = authenticate(&st, &app_id, &headers)?;
    let (id, shard) = locate(&st, &app, &session_id)?;
    let request = datachannels_body(&st, &body)?;
    let r = match dispatch(&st, shard, ApiCommand::DataChannelsClose { id, request }).await? {
        ApiReply::DataChannels(r) => r,
        other => return Err(mismatched(&other)),
    };
    Ok(axum::Json(r).into_response())
}

async fn tracks_new(
    State(st): Shared,
    Path((app_id, session_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let app = authenticate(&st, &app_id, &headers)?;
    let (id, shard) = locate(&st, &app, &session_id)?;
    let request: TracksRequest = decode(&body, false)?;
    too_many(&st, request.tracks.len())?;
    if request.tracks.is_empty() && request.session_description.is_none() {
        return Err(ApiError::invalid(
            "give tracks to push or pull (and an offer to push)",
        ));
    }
    if let Some(relay) = &st.relay {
        relay
            .resolve_tracks(&st.directory, &app, shard, &request.tracks)
            .await;
    }
    let r = match dispatch(&st, shard, ApiCommand::TracksNew { id, request }).await? {
        ApiReply::Tracks(r) => r,
        other => return Err(mismatched(&other)),
    };
    Ok(axum::Json(r).into_response())
}

async fn renegotiate(
    State(st): Shared,
    Path((app_id, session_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let app = authenticate(&st, &app_id, &headers)?;
    let (id, shard) = locate(&st, &app, &session_id)?;
    let request: Option<RenegotiateRequest> = decode(&body, false)?;
    let Some(request) = request else {
        return Err(ApiError::decoding("a JSON body is required"));
    };
    let description = request.session_description;
    let r = match dispatch(&st, shard, ApiCommand::Renegotiate { id, description }).await? {
        ApiReply::Renegotiated(r) => r,
        other => return Err(mismatched(&other)),
    };
    Ok(axum::Json(r).into_response())
}

async fn tracks_close(
    State(st): Shared,
    Path((app_id, session_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let app = authenticate(&st, &app_id, &headers)?;
    let (id, shard) = locate(&st, &app, &session_id)?;
    let request: CloseTracksRequest = decode(&body, false)?;
    too_many(&st, request.tracks.len())?;
    let r = match dispatch(&st, shard, ApiCommand::Close { id, request }).await? {
        ApiReply::Closed(r) => r,
        other => return Err(mismatched(&other)),
    };
    Ok(axum::Json(r).into_response())
}

async fn tracks_update(
    State(st): Shared,
    Path((app_id, session_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let app = authenticate(&st, &app_id, &headers)?;
    let (id, shard) = locate(&st, &app, &session_id)?;
    let request: UpdateTracksRequest = decode(&body, false)?;
    too_many(&st, request.tracks.len())?;
    if request.tracks.is_empty() {
        return Err(ApiError::invalid("tracks must not be empty"));
    }
    if let Some(relay) = &st.relay {
        relay
            .resolve_tracks(&st.directory, &app, shard, &request.tracks)
            .await;
    }
    let r = match dispatch(&st, shard, ApiCommand::Update { id, request }).await? {
        ApiReply::Updated(r) => r,
        other => return Err(mismatched(&other)),
    };
    Ok(axum::Json(r).into_response())
}

/// `POST tracks/keyframe` (Satsuma extension, not in Cloudflare's API): the session asks for a
/// keyframe (PLI, every simulcast layer) of video tracks it publishes, e.g. because its sending
/// key changed. Body `{"tracks": [{"trackName": ...}]}`; 200 with one result per track (per-track
/// errors: `not_found`, `invalid_params`, `not_connected`, `rate_limited` within 250 ms of the
/// track's last one).
async fn tracks_keyframe(
    State(st): Shared,
    Path((app_id, session_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let app = authenticate(&st, &app_id, &headers)?;
    let (id, shard) = locate(&st, &app, &session_id)?;
    let request: KeyframeTracksRequest = decode(&body, false)?;
    too_many(&st, request.tracks.len())?;
    if request.tracks.is_empty() {
        return Err(ApiError::invalid("tracks must not be empty"));
    }
    let r = match dispatch(&st, shard, ApiCommand::Keyframe { id, request }).await? {
        ApiReply::Keyframe(r) => r,
        other => return Err(mismatched(&other)),
    };
    Ok(axum::Json(r).into_response())
}

async fn get_session(
    State(st): Shared,
    Path((app_id, session_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let app = authenticate(&st, &app_id, &headers)?;
    let (id, shard) = locate(&st, &app, &session_id)?;
    let r = match dispatch(&st, shard, ApiCommand::Get { id }).await? {
        ApiReply::State(r) => r,
        other => return Err(mismatched(&other)),
    };
    Ok(axum::Json(r).into_response())
}

/// `DELETE sessions/{id}` (Satsuma extension, not in Cloudflare's API): closes the session's
/// transport and ends every track it published for its subscribers. 200 `{}`; 404
/// `session_not_found` if there is no such session (any more).
async fn delete_session(
    State(st): Shared,
    Path((app_id, session_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let app = authenticate(&st, &app_id, &headers)?;
    let (id, shard) = locate(&st, &app, &session_id)?;
    match dispatch(&st, shard, ApiCommand::Delete { id }).await? {
        ApiReply::Deleted => {}
        other => return Err(mismatched(&other)),
    }
    Ok(axum::Json(serde_json::json!({})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }

    #[test]
    fn empty_bodies_are_defaults_only_when_optional() {
        let empty = Bytes::from_static(b"  ");
        assert!(decode::<NewSessionRequest>(&empty, true).is_ok());
        assert_eq!(
            decode::<TracksRequest>(&empty, false).unwrap_err().code,
            "decoding_error"
        );
        let bad = Bytes::from_static(b"{\"tracks\": 3}");
        assert_eq!(
            decode::<TracksRequest>(&bad, false).unwrap_err().code,
            "decoding_error"
        );
    }
}
