//! Client for the SFU's Cloudflare-Realtime-compatible sessions/tracks API (v1).
//!
//! Base `{base_url}/v1/apps/{appId}`, `Authorization: Bearer <app secret>`, JSON bodies. The wire types
//! here follow Cloudflare Realtime's names (camelCase) and are deliberately lenient on input: unknown
//! fields are ignored and optional fields may be missing, so the bot can talk to our SFU and to anything
//! else that speaks the same API.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// An SDP offer or answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDescription {
    /// `offer` or `answer`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The SDP text.
    pub sdp: String,
}

impl SessionDescription {
    /// An offer.
    pub fn offer(sdp: impl Into<String>) -> Self {
        Self {
            kind: "offer".into(),
            sdp: sdp.into(),
        }
    }

    /// An answer.
    pub fn answer(sdp: impl Into<String>) -> Self {
        Self {
            kind: "answer".into(),
            sdp: sdp.into(),
        }
    }
}

/// Simulcast preference of a pulled track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Simulcast {
    /// Preferred RTP stream id (layer).
    pub preferred_rid: String,
}

/// A track entry, in requests and responses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackObject {
    /// `local` (push) or `remote` (pull).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Media id in this session's SDP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mid: Option<String>,
    /// Name of the track.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track_name: Option<String>,
    /// Session that publishes the track (pull).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Simulcast preference (pull).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simulcast: Option<Simulcast>,
    /// Track status (GET session).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Per-track error code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Per-track error description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
    /// Audio tracks (GET session): last level in -dBov.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_level: Option<i8>,
    /// Audio tracks (GET session): speaking now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speaking: Option<bool>,
}

/// The active speaker among the audio tracks a session pulls (GET session).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveSpeaker {
    /// Publishing session.
    pub session_id: String,
    /// Its track name.
    pub track_name: String,
}

impl TrackObject {
    /// A track to push, announced at `mid`.
    pub fn local(mid: impl Into<String>, track_name: impl Into<String>) -> Self {
        Self {
            location: Some("local".into()),
            mid: Some(mid.into()),
            track_name: Some(track_name.into()),
            ..Self::default()
        }
    }

    /// A track to pull from another session.
    pub fn remote(session_id: impl Into<String>, track_name: impl Into<String>) -> Self {
        Self {
            location: Some("remote".into()),
            session_id: Some(session_id.into()),
            track_name: Some(track_name.into()),
            ..Self::default()
        }
    }

    /// A track identified only by its mid (close).
    pub fn by_mid(mid: impl Into<String>) -> Self {
        Self {
            mid: Some(mid.into()),
            ..Self::default()
        }
    }
}

/// Body of `tracks/new`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracksRequest {
    /// Offer (push) or none (pull).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_description: Option<SessionDescription>,
    /// The tracks.
    pub tracks: Vec<TrackObject>,
}

/// Response of `sessions/new`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSessionResponse {
    /// The new session's id.
    pub session_id: String,
    /// Answer, if the request carried an offer.
    #[serde(default)]
    pub session_description: Option<SessionDescription>,
}

/// Response of `tracks/new`, `tracks/close` and `tracks/update`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracksResponse {
    /// When true the client must answer `session_description` via `renegotiate`.
    #[serde(default)]
    pub requires_immediate_renegotiation: bool,
    /// Answer (push, close with offer) or offer (pull).
    #[serde(default)]
    pub session_description: Option<SessionDescription>,
    /// Per-track results.
    #[serde(default)]
    pub tracks: Vec<TrackObject>,
}

/// Body of `renegotiate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenegotiateRequest {
    /// The client's answer.
    pub session_description: SessionDescription,
}

/// Body of `tracks/close`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseTracksRequest {
    /// Tracks to close, by mid.
    pub tracks: Vec<TrackObject>,
    /// Offer reflecting the closed transceivers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_description: Option<SessionDescription>,
    /// Close without renegotiation.
    pub force: bool,
}

/// Response of `GET /sessions/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionState {
    /// The session's tracks.
    #[serde(default)]
    pub tracks: Vec<TrackObject>,
    /// Who speaks now among the pulled audio tracks.
    #[serde(default)]
    pub active_speaker: Option<ActiveSpeaker>,
}

/// Error body `{errorCode, errorDescription}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Machine-readable code.
    #[serde(default)]
    pub error_code: Option<String>,
    /// Human-readable description.
    #[serde(default)]
    pub error_description: Option<String>,
}

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
            return Err(ApiError::Status {
                status,
                code: err.error_code.unwrap_or_default(),
                description: err.error_description.unwrap_or(text),
            });
        }
        if let Ok(ErrorBody {
            error_code: Some(code),
            error_description,
        }) = serde_json::from_str::<ErrorBody>(&text)
        {
            return Err(ApiError::InBody {
                code,
                description: error_description.unwrap_or_default(),
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
    ) -> Result<TracksResponse, ApiError> {
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
        req: &TracksRequest,
    ) -> Result<TracksResponse, ApiError> {
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
    fn wire_names_match_cloudflare() {
        let req = TracksRequest {
            session_description: Some(SessionDescription::offer("v=0")),
            tracks: vec![TrackObject::local("0", "cam")],
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "sessionDescription": {"type": "offer", "sdp": "v=0"},
                "tracks": [{"location": "local", "mid": "0", "trackName": "cam"}]
            })
        );
        let close = CloseTracksRequest {
            tracks: vec![TrackObject::by_mid("2")],
            session_description: None,
            force: true,
        };
        assert_eq!(
            serde_json::to_value(&close).unwrap(),
            serde_json::json!({"tracks": [{"mid": "2"}], "force": true})
        );
    }

    #[test]
    fn responses_are_read_leniently() {
        let r: TracksResponse = serde_json::from_str(
            r#"{"requiresImmediateRenegotiation":true,"sessionDescription":{"type":"offer","sdp":"x"},
                "tracks":[{"sessionId":"s","trackName":"a","mid":"1","extra":5}],"other":1}"#,
        )
        .unwrap();
        assert!(r.requires_immediate_renegotiation);
        assert_eq!(r.tracks[0].mid.as_deref(), Some("1"));
        let r: TracksResponse = serde_json::from_str("{}").unwrap();
        assert!(r.tracks.is_empty() && r.session_description.is_none());
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
