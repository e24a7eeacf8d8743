//! Cloudflare Realtime's TURN credentials route:
//! `POST /v1/turn/keys/{keyId}/credentials/generate-ice-servers` with `{"ttl": seconds}` and
//! `Authorization: Bearer <key token>` → 201 `{"iceServers": [...]}`, credentials in the TURN
//! REST API scheme for the configured TURN server (coturn with `use-auth-secret`; see
//! [`satsuma_common::turn`]).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use satsuma_common::turn::MAX_TTL_SECS;
use satsuma_wire::realtime::api_error_code;
use serde_json::Value;

use super::error::ApiError;
use super::routes::{ApiState, bearer, same_secret};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads `ttl` from a `generate-ice-servers` body: a JSON object whose `ttl` is a whole number
/// of seconds from 1 to [`MAX_TTL_SECS`]. Other fields are ignored.
pub fn parse_ttl(body: &[u8]) -> Result<u64, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::decoding(
            "a JSON body {\"ttl\": seconds} is required",
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::decoding(format!("the request could not be decoded: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(ApiError::decoding(
            "the body must be a JSON object {\"ttl\": seconds}",
        ));
    };
    let range = || format!("ttl must be a whole number of seconds from 1 to {MAX_TTL_SECS}");
    match object.get("ttl") {
        None | Some(Value::Null) => Err(ApiError::invalid(format!("ttl is required: {}", range()))),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(ttl) if (1..=MAX_TTL_SECS).contains(&ttl) => Ok(ttl),
            _ => Err(ApiError::invalid(format!("{}, got {n}", range()))),
        },
        Some(_) => Err(ApiError::invalid(format!("{}, got a non-number", range()))),
    }
}

/// `POST /v1/turn/keys/{key_id}/credentials/generate-ice-servers`.
///
/// 401 `unauthorized` without a bearer token or with the wrong one, 404 `turn_key_not_found`
/// for a key that is not configured, 400 for a missing or bad `ttl`; 201 with the ICE servers
/// (STUN URLs in one entry, TURN URLs with `username` and `credential` in another).
pub(super) async fn generate_ice_servers(
    State(st): State<Arc<ApiState>>,
    Path(key_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            api_error_code::UNAUTHORIZED,
            "missing or wrong bearer token for this TURN key",
        )
    };
    let given = bearer(&headers).ok_or_else(unauthorized)?;
    let token = st.turn_keys.get(&key_id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            api_error_code::TURN_KEY_NOT_FOUND,
            "no such TURN key",
        )
    })?;
    if !same_secret(given.as_bytes(), token.as_bytes()) {
        return Err(unauthorized());
    }
    let ttl = parse_ttl(&body)?;
    // Key ids are checked at start (A-Z a-z 0-9 . _ -): the username names key and request.
    let id = format!("{key_id}.{}", hex::encode(rand::random::<[u8; 6]>()));
    let ice = st
        .turn
        .ice_servers(&id, unix_now(), ttl)
        .map_err(|e| ApiError::internal(format!("cannot mint TURN credentials: {e}")))?;
    let body = satsuma_wire::GenerateIceServersResponse {
        ice_servers: ice.servers,
    };
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ttl_bounds_and_shapes() {
        assert_eq!(parse_ttl(br#"{"ttl": 60}"#).unwrap(), 60);
        assert_eq!(parse_ttl(br#"{"ttl": 86400, "x": 1}"#).unwrap(), 86_400);
        for (body, code) in [
            ("", "decoding_error"),
            ("[1]", "decoding_error"),
            ("{", "decoding_error"),
            ("{}", "invalid_params"),
            (r#"{"ttl": null}"#, "invalid_params"),
            (r#"{"ttl": 0}"#, "invalid_params"),
            (r#"{"ttl": -5}"#, "invalid_params"),
            (r#"{"ttl": 1.5}"#, "invalid_params"),
            (r#"{"ttl": 86401}"#, "invalid_params"),
            (r#"{"ttl": 1e300}"#, "invalid_params"),
            (r#"{"ttl": "60"}"#, "invalid_params"),
        ] {
            let err = parse_ttl(body.as_bytes()).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert_eq!(err.code, code, "{body}");
        }
    }
}
