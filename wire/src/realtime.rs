//! JSON bodies of the Cloudflare-Realtime-compatible API (v1), camelCase on the wire:
//! what the SFU serves, the coordinator's `/sfu` proxy checks and the bot sends.
//!
//! Requests serialize without absent optional fields; every body deserializes leniently
//! (unknown fields are ignored, optional fields and lists may be missing), so a client
//! built on these types also talks to anything else that speaks the same API.

use serde::{Deserialize, Serialize};

/// `errorCode` values: of an error response ([`ErrorBody`]) and of a failed entry of a
/// `tracks/*` or `datachannels/*` reply ([`TrackResult`], [`DataChannelResult`]). The SFU
/// and the coordinator's `/sfu` proxy answer with these and nothing else; the web client's
/// `API_ERROR_CODE` object in `wire.js` is generated from [`api_error_code::ALL`].
pub mod api_error_code {
    /// The body is not the JSON the route expects.
    pub const DECODING_ERROR: &str = "decoding_error";
    /// A field is missing, out of range or inconsistent.
    pub const INVALID_PARAMS: &str = "invalid_params";
    /// The SDP does not parse or does not match the request.
    pub const INVALID_SDP: &str = "invalid_sdp";
    /// No such session for this app.
    pub const SESSION_NOT_FOUND: &str = "session_not_found";
    /// No such route, shard, track, mid or data channel.
    pub const NOT_FOUND: &str = "not_found";
    /// The route exists but not with this method.
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// Missing or wrong bearer token.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// The caller may not do this (the coordinator's `/sfu` proxy).
    pub const FORBIDDEN: &str = "forbidden";
    /// `renegotiate` without an offer of the SFU's waiting for an answer.
    pub const NO_PENDING_OFFER: &str = "no_pending_offer";
    /// The session still waits for the answer to the SFU's offer.
    pub const RENEGOTIATION_PENDING: &str = "renegotiation_pending";
    /// The session's transport is not connected (yet).
    pub const NOT_CONNECTED: &str = "not_connected";
    /// Asked again too soon, or over a rate limit.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// Over the number of tracks one request or session may carry.
    pub const TOO_MANY_TRACKS: &str = "too_many_tracks";
    /// Over the number of sessions.
    pub const TOO_MANY_SESSIONS: &str = "too_many_sessions";
    /// Over the number of data channels of a session.
    pub const TOO_MANY_DATACHANNELS: &str = "too_many_datachannels";
    /// Over the number of tracks a session may publish.
    pub const TOO_MANY_PUBLICATIONS: &str = "too_many_publications";
    /// Over the number of subscribers of one track.
    pub const TOO_MANY_LEGS: &str = "too_many_legs";
    /// Over the number of tracks a session may pull.
    pub const TOO_MANY_PULLS: &str = "too_many_pulls";
    /// The session already publishes a track of that name.
    pub const DUPLICATE_TRACK_NAME: &str = "duplicate_track_name";
    /// The session already has a data channel of that name.
    pub const DUPLICATE_DATACHANNEL_NAME: &str = "duplicate_datachannel_name";
    /// A track could not be closed.
    pub const CLOSE_TRACK_ERROR: &str = "close_track_error";
    /// `turn/keys/{id}/credentials/generate` for an unknown key.
    pub const TURN_KEY_NOT_FOUND: &str = "turn_key_not_found";
    /// A fault of the server's.
    pub const INTERNAL_ERROR: &str = "internal_error";
    /// The SFU node is draining: it takes no new sessions (`503`).
    pub const DRAINING: &str = "draining";
    /// The coordinator's `/sfu` proxy: the request is not one it forwards.
    pub const BAD_REQUEST: &str = "bad_request";
    /// The coordinator's `/sfu` proxy: no SFU node is configured.
    pub const NO_SFU: &str = "no_sfu";
    /// The coordinator's `/sfu` proxy: the SFU did not answer.
    pub const SFU_UNREACHABLE: &str = "sfu_unreachable";
    /// The coordinator's `/sfu` proxy: the replica that serves the room cannot be reached.
    pub const OWNER_UNREACHABLE: &str = "owner_unreachable";

    /// Every code above by its Rust name.
    pub const ALL: &[(&str, &str)] = &[
        ("DECODING_ERROR", DECODING_ERROR),
        ("INVALID_PARAMS", INVALID_PARAMS),
        ("INVALID_SDP", INVALID_SDP),
        ("SESSION_NOT_FOUND", SESSION_NOT_FOUND),
        ("NOT_FOUND", NOT_FOUND),
        ("METHOD_NOT_ALLOWED", METHOD_NOT_ALLOWED),
        ("UNAUTHORIZED", UNAUTHORIZED),
        ("FORBIDDEN", FORBIDDEN),
        ("NO_PENDING_OFFER", NO_PENDING_OFFER),
        ("RENEGOTIATION_PENDING", RENEGOTIATION_PENDING),
        ("NOT_CONNECTED", NOT_CONNECTED),
        ("RATE_LIMITED", RATE_LIMITED),
        ("TOO_MANY_TRACKS", TOO_MANY_TRACKS),
        ("TOO_MANY_SESSIONS", TOO_MANY_SESSIONS),
        ("TOO_MANY_DATACHANNELS", TOO_MANY_DATACHANNELS),
        ("TOO_MANY_PUBLICATIONS", TOO_MANY_PUBLICATIONS),
        ("TOO_MANY_LEGS", TOO_MANY_LEGS),
        ("TOO_MANY_PULLS", TOO_MANY_PULLS),
        ("DUPLICATE_TRACK_NAME", DUPLICATE_TRACK_NAME),
        ("DUPLICATE_DATACHANNEL_NAME", DUPLICATE_DATACHANNEL_NAME),
        ("CLOSE_TRACK_ERROR", CLOSE_TRACK_ERROR),
        ("TURN_KEY_NOT_FOUND", TURN_KEY_NOT_FOUND),
        ("INTERNAL_ERROR", INTERNAL_ERROR),
        ("DRAINING", DRAINING),
        ("BAD_REQUEST", BAD_REQUEST),
        ("NO_SFU", NO_SFU),
        ("SFU_UNREACHABLE", SFU_UNREACHABLE),
        ("OWNER_UNREACHABLE", OWNER_UNREACHABLE),
    ];
}

/// `offer` or `answer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SdpType {
    /// An SDP offer.
    Offer,
    /// An SDP answer.
    Answer,
}

/// `{type, sdp}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDescription {
    /// Offer or answer.
    #[serde(rename = "type")]
    pub kind: SdpType,
    /// The SDP text.
    pub sdp: String,
}

impl SessionDescription {
    /// An offer.
    pub fn offer(sdp: impl Into<String>) -> Self {
        Self {
            kind: SdpType::Offer,
            sdp: sdp.into(),
        }
    }

    /// An answer.
    pub fn answer(sdp: impl Into<String>) -> Self {
        Self {
            kind: SdpType::Answer,
            sdp: sdp.into(),
        }
    }

    /// Is this an offer?
    pub fn is_offer(&self) -> bool {
        self.kind == SdpType::Offer
    }

    /// Is this an answer?
    pub fn is_answer(&self) -> bool {
        self.kind == SdpType::Answer
    }
}

/// Where a track lives relative to the session in the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Location {
    /// Pushed by this session.
    Local,
    /// Pulled from another session.
    Remote,
}

/// Simulcast preferences of a pulled track.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Simulcast {
    /// The layer (rid) the subscriber wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_rid: Option<String>,
    /// Accepted and echoed, not interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_ordering: Option<String>,
    /// Accepted and echoed, not interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid_not_available: Option<String>,
}

/// `POST sessions/new` body (optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSessionRequest {
    /// An initial offer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_description: Option<SessionDescription>,
}

/// `POST sessions/new` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSessionResponse {
    /// The new session's id.
    pub session_id: String,
    /// The answer, when the request carried an offer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_description: Option<SessionDescription>,
}

/// A track entry in requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackObject {
    /// `local` (push) or `remote` (pull).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// The m-line id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid: Option<String>,
    /// The track name (push: chosen by the client; pull: the publisher's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_name: Option<String>,
    /// Pull: the publishing session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Pull: simulcast preferences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulcast: Option<Simulcast>,
}

impl TrackObject {
    /// A track to push, announced at `mid`.
    pub fn local(mid: impl Into<String>, track_name: impl Into<String>) -> Self {
        Self {
            location: Some(Location::Local),
            mid: Some(mid.into()),
            track_name: Some(track_name.into()),
            ..Self::default()
        }
    }

    /// A track to pull from another session.
    pub fn remote(session_id: impl Into<String>, track_name: impl Into<String>) -> Self {
        Self {
            location: Some(Location::Remote),
            session_id: Some(session_id.into()),
            track_name: Some(track_name.into()),
            ..Self::default()
        }
    }
}

/// `POST sessions/{id}/tracks/new` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracksRequest {
    /// An offer (push).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_description: Option<SessionDescription>,
    /// The tracks.
    #[serde(default)]
    pub tracks: Vec<TrackObject>,
}

/// A track entry in responses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackResult {
    /// Pull: the publishing session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The track name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_name: Option<String>,
    /// The m-line id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid: Option<String>,
    /// Per-track error code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Per-track error text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

impl TrackResult {
    /// Marks this entry failed.
    pub fn with_error(mut self, code: &str, description: impl Into<String>) -> TrackResult {
        self.error_code = Some(code.to_string());
        self.error_description = Some(description.into());
        self
    }
}

/// `tracks/new` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracksResponse {
    /// True when the response carries an SFU offer the client must answer (`renegotiate`).
    #[serde(default)]
    pub requires_immediate_renegotiation: bool,
    /// Answer (push) or offer (pull).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_description: Option<SessionDescription>,
    /// One entry per requested track, in request order.
    #[serde(default)]
    pub tracks: Vec<TrackResult>,
}

/// `PUT renegotiate` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenegotiateRequest {
    /// The client's answer (or a new offer).
    pub session_description: SessionDescription,
}

/// `PUT renegotiate` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenegotiateResponse {
    /// An answer, when the client sent an offer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_description: Option<SessionDescription>,
}

/// A track to close.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseTrackObject {
    /// The m-line id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid: Option<String>,
}

impl CloseTrackObject {
    /// The track at `mid`.
    pub fn by_mid(mid: impl Into<String>) -> Self {
        Self {
            mid: Some(mid.into()),
        }
    }
}

/// `PUT tracks/close` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseTracksRequest {
    /// The tracks.
    #[serde(default)]
    pub tracks: Vec<CloseTrackObject>,
    /// The client's offer (after stopping its transceivers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_description: Option<SessionDescription>,
    /// Close without any SDP exchange.
    #[serde(default)]
    pub force: bool,
}

/// `PUT tracks/close` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseTracksResponse {
    /// Answer to the client's offer, or an SFU offer when no offer was given and `force` was
    /// false (then `requiresImmediateRenegotiation` is true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_description: Option<SessionDescription>,
    /// Per-track results.
    #[serde(default)]
    pub tracks: Vec<TrackResult>,
    /// See `session_description`.
    #[serde(default)]
    pub requires_immediate_renegotiation: bool,
}

/// `PUT tracks/update` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateTracksRequest {
    /// The tracks.
    #[serde(default)]
    pub tracks: Vec<TrackObject>,
}

/// `PUT tracks/update` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateTracksResponse {
    /// Always false: updates never need SDP.
    #[serde(default)]
    pub requires_immediate_renegotiation: bool,
    /// Per-track results.
    #[serde(default)]
    pub tracks: Vec<TrackResult>,
}

/// `POST tracks/keyframe` body (Satsuma extension): tracks this session publishes, by
/// `trackName`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyframeTracksRequest {
    /// The tracks.
    #[serde(default)]
    pub tracks: Vec<TrackObject>,
}

/// `POST tracks/keyframe` response: one entry per requested track, in request order, with
/// `trackName` and (when a keyframe was requested) `mid`, or a per-track error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyframeTracksResponse {
    /// Per-track results.
    #[serde(default)]
    pub tracks: Vec<TrackResult>,
}

/// Status of a track in `GET sessions/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackStatus {
    /// Flowing or able to flow.
    Active,
    /// Closed, collected or its source is gone.
    Inactive,
    /// Waiting for the client's answer.
    Initializing,
}

/// A track in `GET sessions/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackState {
    /// Local (pushed) or remote (pulled).
    pub location: Location,
    /// The m-line id.
    pub mid: String,
    /// The track name.
    pub track_name: String,
    /// Remote tracks: the publishing session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Status.
    pub status: TrackStatus,
    /// Audio tracks: the last packet's level in -dBov (0 loudest, -127 silence), from the
    /// `ssrc-audio-level` header extension. Absent when no level has been received lately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_level: Option<i8>,
    /// Audio tracks: whether the track is speaking now (smoothed, with hysteresis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaking: Option<bool>,
}

/// The active speaker among the audio tracks a session pulls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveSpeaker {
    /// The publishing session.
    pub session_id: String,
    /// Its track name.
    pub track_name: String,
}

/// `GET sessions/{id}` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionState {
    /// The session's tracks.
    #[serde(default)]
    pub tracks: Vec<TrackState>,
    /// Of the audio tracks this session pulls, the one speaking now (most active, and sticky
    /// while several talk at once); absent when nobody speaks (so the body stays what
    /// Cloudflare's API returns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_speaker: Option<ActiveSpeaker>,
    /// The session's data channels (absent when it has none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_channels: Vec<DataChannelState>,
}

/// Error body (an error status, or a 2xx body that reports a failure, as `renegotiate`
/// may). A body parses as one only if it carries `errorCode`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Machine-readable code.
    pub error_code: String,
    /// Human-readable text.
    #[serde(default)]
    pub error_description: String,
}

/// A data channel entry in `datachannels/new` and `datachannels/close` requests.
///
/// `datachannels/new`: `{"location": "local", "dataChannelName": "chat"}` publishes a channel
/// (the client then opens it with `negotiated: true` and the `id` of the response);
/// `{"location": "remote", "sessionId": <publisher>, "dataChannelName": "chat"}` subscribes to
/// one. `datachannels/close` (Satsuma extension) names a channel of the session by `id`, or by
/// `location` and `dataChannelName` (and `sessionId` for a remote one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataChannelObject {
    /// `local` (publish) or `remote` (subscribe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// The channel's name (remote: the publisher's name for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_channel_name: Option<String>,
    /// Remote: the publishing session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// `datachannels/close`: the channel's SCTP stream id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u16>,
}

impl DataChannelObject {
    /// A channel to publish.
    pub fn local(name: impl Into<String>) -> Self {
        Self {
            location: Some(Location::Local),
            data_channel_name: Some(name.into()),
            ..Self::default()
        }
    }

    /// A channel of another session to subscribe to.
    pub fn remote(session_id: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            location: Some(Location::Remote),
            session_id: Some(session_id.into()),
            data_channel_name: Some(name.into()),
            ..Self::default()
        }
    }
}

/// `POST sessions/{id}/datachannels/new` and `PUT sessions/{id}/datachannels/close` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataChannelsRequest {
    /// The channels.
    #[serde(default)]
    pub data_channels: Vec<DataChannelObject>,
}

/// A data channel entry in responses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataChannelResult {
    /// As requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// As requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_channel_name: Option<String>,
    /// Remote: the publishing session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The SCTP stream id: the client opens the channel with `negotiated: true, id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u16>,
    /// Per-channel error code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Per-channel error text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

impl DataChannelResult {
    /// Marks this entry failed.
    pub fn with_error(mut self, code: &str, description: impl Into<String>) -> DataChannelResult {
        self.error_code = Some(code.to_string());
        self.error_description = Some(description.into());
        self
    }
}

/// `datachannels/new` and `datachannels/close` response: one entry per requested channel, in
/// request order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataChannelsResponse {
    /// The channels.
    #[serde(default)]
    pub data_channels: Vec<DataChannelResult>,
}

/// A data channel in `GET sessions/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataChannelState {
    /// Local (published) or remote (subscribed).
    pub location: Location,
    /// The channel's name.
    pub data_channel_name: String,
    /// Remote channels: the publishing session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The SCTP stream id.
    pub id: u16,
    /// `active` once the SCTP stream is open, `initializing` before, `inactive` when the
    /// publisher closed it or went away.
    pub status: TrackStatus,
}

#[cfg(test)]
mod tests {
    use super::api_error_code as error_code;

    /// Each code is listed once, under the name the generated `API_ERROR_CODE` uses.
    #[test]
    fn error_codes_are_named_after_their_values() {
        let mut seen = std::collections::BTreeSet::new();
        for (name, code) in error_code::ALL {
            assert_eq!(*name, code.to_uppercase(), "{code}");
            assert!(seen.insert(*code), "{code} listed twice");
        }
    }
}
