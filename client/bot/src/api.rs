//! Client for the SFU's Cloudflare-Realtime-compatible sessions/tracks API (v1).
//!
//! Base `{base_url}/v1/apps/{appId}`, `Authorization: Bearer <app secret>`, JSON bodies. The wire types
//! are `satsuma_wire::realtime`'s (the SFU serves the same ones), re-exported here: Cloudflare
//! Realtime's names (camelCase), lenient on input (unknown fields are ignored and optional fields may be
//! missing), so the bot can talk to our SFU and to anything else that speaks the same API.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use satsuma_wire::realtime::{
    ActiveSpeaker, CloseTrackObject, CloseTracksRequest, CloseTracksResponse, ErrorBody, Location,
    NewSessionResponse, RenegotiateRequest, SdpType, SessionDescription, SessionState, Simulcast,
    TrackObject, TrackResult, TrackState, TrackStatus, TracksRequest, TracksResponse,
    UpdateTracksRequest, UpdateTracksResponse,
};

/// Errors of the API client.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The request did not complete (connection refused, timeout…).
    #[error("HTTP transport error: {0}")]
    Transport(#[from] reqwest::Error),
    /// The server answered with an error status.
    #[error("HTTP {status}: {code}: {description}")]
    Status {
        /// HTTP status.
        status: StatusCode,
        /// `errorCode` from the body (empty if none).
        code: String,
        /// `errorDescription` from the body, or the raw body.
        description: String,
    },
    /// A 2xx body that is not the expected JSON.
    #[error("unexpected response body: {0}")]
    Decode(String),
    /// A 2xx body that carries `errorCode` (renegotiate reports failures this way).
    #[error("API error {code}: {description}")]
    InBody {
        /// `errorCode`.
        code: String,
        /// `errorDescription`.
        description: String,
    },
}

/// HTTP client bound to one app of one SFU.
#[derive(Debug, Clone)]
pub struct SfuClient {
    http: reqwest::Client,
    app_base: String,
    secret: String,
}

impl SfuClient {
    /// A client for `{base_url}/v1/apps/{app_id}` with the app secret.
    pub fn new(base_url: &str, app_id: &str, secret: &str) -> Result<Self, ApiError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()?;
        Ok(Self {
            http,
            app_base: format!("{}/v1/apps/{}", base_url.trim_end_matches('/'), app_id),
            secret: secret.to_owned(),
        })
    }

    /// A client for an API mounted at `app_base` (the part before `/sessions/…`) with the
    /// bearer credential `bearer`: e.g. the coordinator's proxy, `http://host/sfu` with a
    /// participant's `resume_token`.
    pub fn with_app_base(app_base: &str, bearer: &str) -> Result<Self, ApiError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()?;
        Ok(Self {
            http,
            app_base: app_base.trim_end_matches('/').to_owned(),
            secret: bearer.to_owned(),
        })
    }

    /// The app's base URL (`…/v1/apps/{appId}`).
    pub fn app_base(&self) -> &str {
        &self.app_base
    }

    async fn call<B: Serialize, R: for<'de> Deserialize<'de>>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, ApiError> {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.app_base, path))
            .bearer_auth(&self.secret);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            let err: ErrorBody = serde_json::from_str(&text).unwrap_or_default();
            let description = if err.error_description.is_empty() {
                text
            } else {
                err.error_description
            };
            return Err(ApiError::Status {
                status,
                code: err.error_code,
                description,
            });
        }
        if let Ok(ErrorBody {
            error_code,
            error_description,
        }) = serde_json::from_str::<ErrorBody>(&text)
        {
            return Err(ApiError::InBody {
                code: error_code,
                description: error_description,
            });
        }
        let text = if text.trim().is_empty() { "{}" } else { &text };
        serde_json::from_str(text).map_err(|e| ApiError::Decode(format!("{e}: {text}")))
    }

    /// `POST /sessions/new` without an offer.
    pub async fn new_session(&self) -> Result<NewSessionResponse, ApiError> {
        self.call::<(), _>(Method::POST, "/sessions/new", None)
            .await
    }

    /// `POST /sessions/{sid}/tracks/new`.
    pub async fn new_tracks(
        &self,
        sid: &str,
        req: &TracksRequest,
    ) -> Result<TracksResponse, ApiError> {
        self.call(
            Method::POST,
            &format!("/sessions/{sid}/tracks/new"),
            Some(req),
        )
        .await
    }

    /// `PUT /sessions/{sid}/renegotiate`.
    pub async fn renegotiate(&self, sid: &str, answer: SessionDescription) -> Result<(), ApiError> {
        let req = RenegotiateRequest {
            session_description: answer,
        };
        let _: serde_json::Value = self
            .call(
                Method::PUT,
                &format!("/sessions/{sid}/renegotiate"),
                Some(&req),
            )
            .await?;
        Ok(())
    }

    /// `PUT /sessions/{sid}/tracks/close`.
    pub async fn close_tracks(
        &self,
        sid: &str,
        req: &CloseTracksRequest,
    ) -> Result<CloseTracksResponse, ApiError> {
        self.call(
            Method::PUT,
            &format!("/sessions/{sid}/tracks/close"),
            Some(req),
        )
        .await
    }

    /// `PUT /sessions/{sid}/tracks/update`.
    pub async fn update_tracks(
        &self,
        sid: &str,
        req: &UpdateTracksRequest,
    ) -> Result<UpdateTracksResponse, ApiError> {
        self.call(
            Method::PUT,
            &format!("/sessions/{sid}/tracks/update"),
            Some(req),
        )
        .await
    }

    /// `GET /sessions/{sid}`.
    pub async fn session(&self, sid: &str) -> Result<SessionState, ApiError> {
        self.call::<(), _>(Method::GET, &format!("/sessions/{sid}"), None)
            .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn requests_are_compact() {
        // Golden JSON of every body is in satsuma-wire; here only what this client relies on.
        let close = CloseTracksRequest {
            tracks: vec![CloseTrackObject::by_mid("2")],
            session_description: None,
            force: true,
        };
        assert_eq!(
            serde_json::to_value(&close).unwrap(),
            serde_json::json!({"tracks": [{"mid": "2"}], "force": true})
        );
    }

    /// A canned server: checks the bearer secret and answers per route like an SFU would.
    async fn mock_server() -> String {
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::{get, post, put};
        async fn new_session(headers: HeaderMap) -> (StatusCode, String) {
            if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer s3cret") {
                return (
                    StatusCode::UNAUTHORIZED,
                    r#"{"errorCode":"unauthorized","errorDescription":"bad secret"}"#.into(),
                );
            }
            (StatusCode::CREATED, r#"{"sessionId":"abc"}"#.into())
        }
        let app = axum::Router::new()
            .route("/v1/apps/app/sessions/new", post(new_session))
            .route(
                "/v1/apps/app/sessions/abc/renegotiate",
                put(|| async { r#"{"errorCode":"bad_sdp","errorDescription":"no"}"# }),
            )
            .route("/v1/apps/app/sessions/abc", get(|| async { "not json" }))
            .route(
                "/v1/apps/app/sessions/abc/tracks/new",
                post(|body: String| async move {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let name = v["tracks"][0]["trackName"].as_str().unwrap_or("").to_owned();
                    format!(
                        r#"{{"requiresImmediateRenegotiation":true,"sessionDescription":{{"type":"offer","sdp":"o"}},"tracks":[{{"trackName":"{name}","mid":"7"}}]}}"#
                    )
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn client_maps_statuses_and_error_bodies() {
        let base = mock_server().await;
        let good = SfuClient::new(&base, "app", "s3cret").unwrap();
        assert_eq!(good.new_session().await.unwrap().session_id, "abc");
        let bad = SfuClient::new(&base, "app", "wrong").unwrap();
        match bad.new_session().await {
            Err(ApiError::Status { status, code, .. }) => {
                assert_eq!(status.as_u16(), 401);
                assert_eq!(code, "unauthorized");
            }
            other => panic!("expected 401, got {other:?}"),
        }
        match good
            .renegotiate("abc", SessionDescription::answer("a"))
            .await
        {
            Err(ApiError::InBody { code, .. }) => assert_eq!(code, "bad_sdp"),
            other => panic!("expected an in-body error, got {other:?}"),
        }
        assert!(matches!(
            good.session("abc").await,
            Err(ApiError::Decode(_))
        ));
        match good.session("nope").await {
            Err(ApiError::Status { status, .. }) => assert_eq!(status.as_u16(), 404),
            other => panic!("expected 404, got {other:?}"),
        }
        let req = TracksRequest {
            session_description: None,
            tracks: vec![TrackObject::remote("x", "cam")],
        };
        let r = good.new_tracks("abc", &req).await.unwrap();
        assert!(r.requires_immediate_renegotiation);
        assert_eq!(r.tracks[0].track_name.as_deref(), Some("cam"));
        assert_eq!(r.tracks[0].mid.as_deref(), Some("7"));
    }
}
