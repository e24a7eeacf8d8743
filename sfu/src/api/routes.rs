//! Routes and handlers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tower_http::cors::CorsLayer;

use super::error::ApiError;
use super::types::{
    CloseTracksRequest, NewSessionRequest, NewSessionResponse, RenegotiateRequest, SdpType,
    SessionDescription, TracksRequest, UpdateTracksRequest,
};
use crate::directory::Directory;
use crate::ids::{SessionId, ShardId};
use crate::metrics::Metrics;
use crate::shard::{ApiCommand, Reply, ShardMsg};

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
}

type Shared = State<Arc<ApiState>>;

/// The API router.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
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
            "/v1/apps/{app_id}/sessions/{session_id}",
            get(get_session).delete(delete_session),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            count_requests,
        ))
        .layer(CorsLayer::permissive())
        .with_state(state)
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
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(st): Shared) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

/// Constant-time byte comparison (the secret length is not hidden).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks `Authorization: Bearer <secret>` for `app_id`.
fn authenticate(st: &ApiState, app_id: &str, headers: &HeaderMap) -> Result<Arc<str>, ApiError> {
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer secret for this app",
        )
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or_else(unauthorized)?;
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
        Some(false) => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests for this session (limit: 50 per second)",
        )),
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
async fn dispatch<T>(
    st: &ApiState,
    shard: ShardId,
    make: impl FnOnce(Reply<T>) -> ApiCommand,
) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    let inbox = st
        .shards
        .get(shard)
        .ok_or_else(|| ApiError::internal("session's shard is missing"))?;
    inbox
        .send(ShardMsg::Api(make(tx)))
        .await
        .map_err(|_| ApiError::internal("the shard is shutting down"))?;
    rx.await
        .map_err(|_| ApiError::internal("the shard dropped the request"))?
}

fn too_many(st: &ApiState, n: usize) -> Result<(), ApiError> {
    if n > st.max_tracks {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_many_tracks",
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
    let shard = st.next_shard.fetch_add(1, Ordering::Relaxed) % st.shards.len().max(1);
    let id = SessionId::random();
    let answer = dispatch(&st, shard, |reply| ApiCommand::Create {
        id,
        app,
        offer,
        reply,
    })
    .await?;
    let body = NewSessionResponse {
        session_id: id.to_string(),
        session_description: answer.map(|sdp| SessionDescription {
            kind: SdpType::Answer,
            sdp,
        }),
    };
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
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
    let r = dispatch(&st, shard, |reply| ApiCommand::TracksNew {
        id,
        request,
        reply,
    })
    .await?;
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
    let r = dispatch(&st, shard, |reply| ApiCommand::Renegotiate {
        id,
        description,
        reply,
    })
    .await?;
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
    let r = dispatch(&st, shard, |reply| ApiCommand::Close { id, request, reply }).await?;
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
    let r = dispatch(&st, shard, |reply| ApiCommand::Update {
        id,
        request,
        reply,
    })
    .await?;
    Ok(axum::Json(r).into_response())
}

async fn get_session(
    State(st): Shared,
    Path((app_id, session_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let app = authenticate(&st, &app_id, &headers)?;
    let (id, shard) = locate(&st, &app, &session_id)?;
    let r = dispatch(&st, shard, |reply| ApiCommand::Get { id, reply }).await?;
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
    dispatch(&st, shard, |reply| ApiCommand::Delete { id, reply }).await?;
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
