//! `RTCConfiguration.iceServers` entries, as the coordinator hands them out (`welcome`,
//! `resumed`, `POST /sfu/ice-servers`).

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
