//! Join tokens: HS256 JWTs carrying room, identity, display name, permissions and expiry.
//!
//! ```json
//! {"sub":"alice@example.org","room":"standup","name":"Alice",
//!  "perms":["publish","subscribe"],"exp":1767225600,"iat":1767222000}
//! ```
//!
//! `perms` names: `publish`, `subscribe`, `host` (unknown names are ignored; a
//! missing claim means `publish` + `subscribe`).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::protocol::Permissions;

/// Longest accepted display name (in characters; longer names are cut).
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;

/// Claims of a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Identity of the participant.
    pub sub: String,
    /// Room the token admits to.
    pub room: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Permission names.
    #[serde(default = "default_perms")]
    pub perms: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

fn default_perms() -> Vec<String> {
    vec!["publish".to_owned(), "subscribe".to_owned()]
}

impl Claims {
    /// The permissions these claims grant.
    pub fn permissions(&self) -> Permissions {
        Permissions::from_names(&self.perms)
    }

    /// Display name, defaulting to the subject, cut to [`MAX_DISPLAY_NAME_CHARS`].
    pub fn display_name(&self) -> String {
        let name = if self.name.trim().is_empty() {
            &self.sub
        } else {
            &self.name
        };
        name.chars().take(MAX_DISPLAY_NAME_CHARS).collect()
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// Signature, algorithm or encoding is wrong.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token is for another room.
    #[error("token is for room {token_room:?}, not {room:?}")]
    WrongRoom {
        /// Room claim.
        token_room: String,
        /// Room requested.
        room: String,
    },
    /// Signing failed.
    #[error("cannot sign token: {0}")]
    Signing(String),
}

/// Signs and verifies join tokens with one shared secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

impl TokenKeys {
    /// Keys for `secret`, accepting `leeway_s` seconds of clock skew on `exp`.
    pub fn new(secret: &[u8], leeway_s: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway_s;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Signs `claims`.
    pub fn mint(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| AuthError::Signing(e.to_string()))
    }

    /// Verifies `token` and that it admits to `room`.
    pub fn verify(&self, token: &str, room: &str) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })?;
        if data.claims.room != room {
            return Err(AuthError::WrongRoom {
                token_room: data.claims.room,
                room: room.to_owned(),
            });
        }
        Ok(data.claims)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn claims(room: &str, exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            room: room.into(),
            name: "Alice".into(),
            perms: vec!["publish".into(), "host".into(), "bogus".into()],
            exp,
            iat: None,
        }
    }

    #[test]
    fn round_trip_and_room_binding() {
        let keys = TokenKeys::new(b"secret", 0);
        let t = keys.mint(&claims("a", unix_now() + 60)).unwrap();
        let c = keys.verify(&t, "a").unwrap();
        assert_eq!(
            c.permissions(),
            Permissions {
                publish: true,
                subscribe: false,
                host: true
            }
        );
        assert!(matches!(
            keys.verify(&t, "b"),
            Err(AuthError::WrongRoom { .. })
        ));
    }

    #[test]
    fn expired_and_foreign_tokens_are_refused() {
        let keys = TokenKeys::new(b"secret", 0);
        let t = keys.mint(&claims("a", unix_now() - 10)).unwrap();
        assert_eq!(keys.verify(&t, "a"), Err(AuthError::Expired));
        let other = TokenKeys::new(b"other", 0);
        let t = other.mint(&claims("a", unix_now() + 60)).unwrap();
        assert!(matches!(keys.verify(&t, "a"), Err(AuthError::Invalid(_))));
        assert!(matches!(
            keys.verify("garbage", "a"),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn default_perms_and_names() {
        let c: Claims = serde_json::from_str(r#"{"sub":"bob","room":"r","exp":1}"#).unwrap();
        assert_eq!(
            c.permissions(),
            Permissions {
                publish: true,
                subscribe: true,
                host: false
            }
        );
        assert_eq!(c.display_name(), "bob");
    }
}
