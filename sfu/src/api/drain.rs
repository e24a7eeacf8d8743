//! The HTTP side of draining ([`crate::drain`]): `POST /v1/apps/{appId}/drain` starts it (the
//! app's secret as bearer, like every API call; `satsuma-sfu drain` calls it), and a gate in
//! front of the routes answers for a draining node: `POST .../sessions/new` gets 503
//! `{"errorCode": "draining"}`, `GET /healthz` gets 503 `{"status": "draining", ...}` (so the
//! coordinator's health check takes the node out of placement and moves its participants), while
//! `GET /livez` (the liveness probe's) goes on answering 200: a draining node is alive.
//! Every other call (on sessions the node holds) goes through while they move.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use satsuma_wire::realtime::api_error_code;

use super::error::ApiError;
use super::routes::{ApiState, authenticate};

/// `POST /v1/apps/{appId}/drain`: the node starts draining (again: nothing changes). 202
/// `{"draining": true, "sessions": N, "since_ms": ms}`.
pub(super) async fn drain_node(
    State(st): State<Arc<ApiState>>,
    Path(app_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authenticate(&st, &app_id, &headers)?;
    let now = Instant::now();
    if st.drain.start(now) {
        tracing::info!(
            app = %app_id,
            sessions = st.directory.session_count(),
            "drain requested through the API: no new sessions from now on"
        );
    }
    Ok((StatusCode::ACCEPTED, axum::Json(status(&st, now))).into_response())
}

/// The drain state as `/healthz` and the drain route report it.
fn status(st: &ApiState, now: Instant) -> serde_json::Value {
    let since_ms = st.drain.since().map_or(0, |s| {
        u64::try_from(now.saturating_duration_since(s).as_millis()).unwrap_or(u64::MAX)
    });
    serde_json::json!({
        "status": "draining",
        "draining": true,
        "sessions": st.directory.session_count(),
        "since_ms": since_ms,
    })
}

/// The gate in front of the routes of a draining node (see the module docs).
pub(super) async fn gate(State(st): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    if !st.drain.is_draining() {
        return next.run(req).await;
    }
    let path = req.uri().path();
    if req.method() == Method::GET && path == "/healthz" {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(status(&st, Instant::now())),
        )
            .into_response();
    }
    if req.method() == Method::POST
        && path.starts_with("/v1/apps/")
        && path.ends_with("/sessions/new")
    {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            api_error_code::DRAINING,
            "this SFU node is draining: it takes no new sessions (create the session on another node)",
        )
        .into_response();
    }
    next.run(req).await
}
