//! API errors: an HTTP status plus `{errorCode, errorDescription}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::types::ErrorBody;
use crate::shard::CoreError;
use satsuma_wire::realtime::api_error_code;

/// A request-level API error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {description}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// `errorCode`.
    pub code: &'static str,
    /// `errorDescription`.
    pub description: String,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            description: description.into(),
        }
    }

    /// 400 `decoding_error`: the body is not the JSON we expect.
    pub fn decoding(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            api_error_code::DECODING_ERROR,
            description,
        )
    }

    /// 400 `invalid_params`.
    pub fn invalid(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            api_error_code::INVALID_PARAMS,
            description,
        )
    }

    /// 400 `invalid_sdp`.
    pub fn sdp(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            api_error_code::INVALID_SDP,
            description,
        )
    }

    /// 404 `session_not_found`.
    pub fn no_session() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            api_error_code::SESSION_NOT_FOUND,
            "no such session for this app",
        )
    }

    /// 500 `internal_error`.
    pub fn internal(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            api_error_code::INTERNAL_ERROR,
            description,
        )
    }
}

impl From<CoreError> for ApiError {
    /// The HTTP status and `errorCode` of a core's refusal.
    fn from(e: CoreError) -> Self {
        let description = e.to_string();
        match e {
            CoreError::NoSession => ApiError::no_session(),
            CoreError::InvalidParams(_) => ApiError::invalid(description),
            CoreError::InvalidSdp(_) => ApiError::sdp(description),
            CoreError::NoPendingOffer => ApiError::new(
                StatusCode::BAD_REQUEST,
                api_error_code::NO_PENDING_OFFER,
                description,
            ),
            CoreError::Internal(_) => ApiError::internal(description),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error_code: self.code.to_string(),
            error_description: self.description,
        };
        (self.status, axum::Json(body)).into_response()
    }
}
