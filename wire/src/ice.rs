//! `RTCConfiguration.iceServers` entries, as the coordinator hands them out (`welcome`,
//! `resumed`, `POST /sfu/ice-servers`), and the bodies of the routes that hand them out.

use serde::{Deserialize, Serialize};

/// One entry of `RTCConfiguration.iceServers` (the shape browsers and Cloudflare's
/// `generate-ice-servers` use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:`/`turn:`/`turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username (absent for STUN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN credential (absent for STUN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The body of the coordinator's `POST /sfu/ice-servers` (201): fresh servers for the caller,
/// `{"iceServers": [...], "expiresAt": unix seconds | null}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceServersResponse {
    /// The list for `RTCConfiguration.iceServers` (empty: host candidates only).
    #[serde(default)]
    pub ice_servers: Vec<IceServer>,
    /// Unix seconds when the TURN credentials expire; `null` when there are none.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

/// The body of Cloudflare's `POST /v1/turn/keys/{keyId}/credentials/generate-ice-servers`
/// (201), as the SFU serves it: `{"iceServers": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateIceServersResponse {
    /// STUN URLs in one entry, TURN URLs with `username` and `credential` in another.
    #[serde(default)]
    pub ice_servers: Vec<IceServer>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn response_bodies_keep_their_wire_shape() {
        let stun = IceServer {
            urls: vec!["stun:a:3478".into()],
            username: None,
            credential: None,
        };
        let none = IceServersResponse::default();
        assert_eq!(
            serde_json::to_string(&none).unwrap(),
            r#"{"iceServers":[],"expiresAt":null}"#
        );
        let some = IceServersResponse {
            ice_servers: vec![stun.clone()],
            expires_at: Some(7),
        };
        let text = serde_json::to_string(&some).unwrap();
        assert_eq!(
            text,
            r#"{"iceServers":[{"urls":["stun:a:3478"]}],"expiresAt":7}"#
        );
        assert_eq!(
            serde_json::from_str::<IceServersResponse>(&text).unwrap(),
            some
        );
        let cf = GenerateIceServersResponse {
            ice_servers: vec![stun],
        };
        assert_eq!(
            serde_json::to_string(&cf).unwrap(),
            r#"{"iceServers":[{"urls":["stun:a:3478"]}]}"#
        );
    }
}
