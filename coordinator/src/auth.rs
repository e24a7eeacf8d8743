//! Join tokens and invites: HS256 JWTs signed with the coordinator's token secret.
//!
//! A join token carries room, identity, display name, permissions and a validity window, and
//! names who issued it and for whom it is meant:
//!
//! ```json
//! {"sub":"alice@example.org","room":"standup","name":"Alice",
//!  "perms":["publish","subscribe"],"iss":"satsuma","aud":"satsuma",
//!  "exp":1767225600,"nbf":1767222000,"iat":1767222000}
//! ```
//!
//! `perms` names: `publish`, `subscribe`, `host` (unknown names are ignored; a missing claim
//! means `publish` + `subscribe`). `iss` and `aud` must equal the configured issuer and audience
//! (both `satsuma` by default); `nbf` is optional and checked when present; `exp` is required.
//! `inv` names the invite a token was redeemed from (its revocation also refuses the token).
//!
//! An invite is a signed capability for one room and a set of permissions, meant for another
//! audience (`<audience>:invite`) so that it can never be used as a join token; it is redeemed
//! for a join token (`POST /api/v1/invites/redeem`).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::protocol::Permissions;

/// Longest accepted display name (in characters; longer names are cut).
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;

/// Shortest accepted secret (token secret, API key secrets), in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// The `perms` name that makes a participant a visible recorder ([`Claims::is_recorder`]).
pub const RECORDER_PERM: &str = "recorder";

/// Default issuer (`iss`) of tokens this coordinator mints and accepts.
pub const DEFAULT_ISSUER: &str = "satsuma";

/// Default audience (`aud`) of join tokens.
pub const DEFAULT_AUDIENCE: &str = "satsuma";

/// Placeholder fragments of the example secrets in `deploy/` and common stand-ins: a secret
/// containing one of them (case-insensitive) was never replaced and is refused at start.
pub const PLACEHOLDER_SECRETS: [&str; 6] = [
    "replace-with",
    "change-me",
    "changeme",
    "openssl-rand",
    "your-secret",
    "secret-here",
];

/// Checks that `value`, the secret configured as `setting`, is usable: at least
/// [`MIN_SECRET_BYTES`] bytes and not a placeholder copied from the examples in `deploy/`.
/// The error message names the setting, never the value.
pub fn check_secret(setting: &str, value: &str) -> Result<(), String> {
    let lower = value.to_ascii_lowercase();
    if let Some(p) = PLACEHOLDER_SECRETS.iter().find(|p| lower.contains(*p)) {
        return Err(format!(
            "{setting} is still a placeholder (it contains {p:?}): replace it with a random \
             secret, e.g. the output of `openssl rand -hex 32`"
        ));
    }
    if value.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "{setting} is too short ({} bytes): use at least {MIN_SECRET_BYTES} random bytes, \
             e.g. the output of `openssl rand -hex 32`",
            value.len()
        ));
    }
    Ok(())
}

/// An API key of an app backend: `POST /api/v1/tokens` with this id and secret mints join
/// tokens (configured as `ID:SECRET`).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Key id (sent in the clear, like a user name).
    pub id: String,
    /// Secret (at least [`MIN_SECRET_BYTES`] bytes).
    pub secret: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl std::str::FromStr for ApiKey {
    type Err = String;

    /// Parses `ID:SECRET`; the id is 1-64 of `A-Z a-z 0-9 . _ -`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, secret) = s
            .split_once(':')
            .ok_or_else(|| "an API key is ID:SECRET".to_owned())?;
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(format!(
                "API key id {id:?} must be 1-64 of A-Z a-z 0-9 . _ -"
            ));
        }
        Ok(ApiKey {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

/// Claims of a join token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Not valid before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issuer; [`TokenKeys::mint`] fills in the configured issuer when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience; [`TokenKeys::mint`] fills in the configured audience when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Id of the invite this token was redeemed from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inv: Option<String>,
}

fn default_perms() -> Vec<String> {
    vec!["publish".to_owned(), "subscribe".to_owned()]
}

impl Claims {
    /// The permissions these claims grant.
    pub fn permissions(&self) -> Permissions {
        Permissions::from_names(&self.perms)
    }

    /// Whether the token grants `recorder` (in `perms`): the holder joins as a visible
    /// recorder. Only whoever mints tokens (an app backend's API key, the token CLI) can
    /// grant it; the participant is marked as a recorder for every member.
    pub fn is_recorder(&self) -> bool {
        self.perms.iter().any(|p| p == RECORDER_PERM)
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

/// Claims of an invite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteClaims {
    /// Invite id (random; what a revocation names).
    pub jti: String,
    /// Identity of the host who made it.
    pub sub: String,
    /// Room the invite admits to.
    pub room: String,
    /// Permission names the redeemed join token gets.
    pub perms: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Issuer; filled in by [`TokenKeys::mint_invite`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience (`<audience>:invite`); filled in by [`TokenKeys::mint_invite`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `aud` is missing or not this coordinator's audience.
    #[error("token is for another audience")]
    WrongAudience,
    /// `iss` is missing or not this coordinator's issuer.
    #[error("token has an unknown issuer")]
    WrongIssuer,
    /// Signature, algorithm or encoding is wrong, or a required claim is missing.
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
    /// The invite (or the invite the token was redeemed from) was revoked.
    #[error("invite revoked")]
    Revoked,
    /// Signing failed.
    #[error("cannot sign token: {0}")]
    Signing(String),
}

impl AuthError {
    /// The reason sent with close code 4401 (or in an HTTP 401 body): distinct per cause,
    /// never echoing the token.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid",
            AuthError::WrongAudience => "token is for another audience",
            AuthError::WrongIssuer => "token has an unknown issuer",
            AuthError::WrongRoom { .. } => "token is for another room",
            AuthError::Revoked => "invite revoked",
            AuthError::Invalid(_) | AuthError::Signing(_) => "invalid token",
        }
    }

    /// A short machine-readable code for HTTP error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongRoom { .. } => "wrong_room",
            AuthError::Revoked => "revoked",
            AuthError::Invalid(_) | AuthError::Signing(_) => "invalid_token",
        }
    }
}

fn map_jwt_error(e: &jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => AuthError::WrongIssuer,
        _ => AuthError::Invalid(e.to_string()),
    }
}

/// Signs and verifies join tokens and invites with one shared secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    issuer: String,
    audience: String,
    validation: Validation,
    invite_validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

fn validation(leeway_s: u64, issuer: &str, audience: &str) -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = leeway_s;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v.set_audience(&[audience]);
    v.set_issuer(&[issuer]);
    v.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
    v
}

impl TokenKeys {
    /// Keys for `secret` with the default issuer and audience, accepting `leeway_s` seconds of
    /// clock skew on `exp` and `nbf`.
    pub fn new(secret: &[u8], leeway_s: u64) -> Self {
        Self::with_names(secret, leeway_s, DEFAULT_ISSUER, DEFAULT_AUDIENCE)
    }

    /// Keys for `secret` that mint and accept only tokens of `issuer` for `audience`.
    pub fn with_names(secret: &[u8], leeway_s: u64, issuer: &str, audience: &str) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            validation: validation(leeway_s, issuer, audience),
            invite_validation: validation(leeway_s, issuer, &invite_audience(audience)),
        }
    }

    /// The issuer these keys put into tokens and require.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audience these keys put into join tokens and require.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Signs `claims`, filling in the issuer and audience where they are `None`.
    pub fn mint(&self, claims: &Claims) -> Result<String, AuthError> {
        let mut c = claims.clone();
        c.iss.get_or_insert_with(|| self.issuer.clone());
        c.aud.get_or_insert_with(|| self.audience.clone());
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &c, &self.encoding)
            .map_err(|e| AuthError::Signing(e.to_string()))
    }

    /// Verifies `token` (signature, `exp`, `nbf`, `iss`, `aud`) and that it admits to `room`.
    pub fn verify(&self, token: &str, room: &str) -> Result<Claims, AuthError> {
        let claims = self.verify_any_room(token)?;
        if claims.room != room {
            return Err(AuthError::WrongRoom {
                token_room: claims.room,
                room: room.to_owned(),
            });
        }
        Ok(claims)
    }

    /// Verifies `token` (signature, `exp`, `nbf`, `iss`, `aud`) whatever its room.
    pub fn verify_any_room(&self, token: &str) -> Result<Claims, AuthError> {
        self.decode(token, &self.validation)
    }

    /// Checks signature and spec claims first, then reads the claims as `T` (so a token of the
    /// wrong kind is refused for its audience, not for a missing field).
    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        validation: &Validation,
    ) -> Result<T, AuthError> {
        let value = jsonwebtoken::decode::<serde_json::Value>(token, &self.decoding, validation)
            .map_err(|e| map_jwt_error(&e))?
            .claims;
        serde_json::from_value(value).map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// Signs an invite, filling in the issuer and the invite audience.
    pub fn mint_invite(&self, claims: &InviteClaims) -> Result<String, AuthError> {
        let mut c = claims.clone();
        c.iss = Some(self.issuer.clone());
        c.aud = Some(invite_audience(&self.audience));
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &c, &self.encoding)
            .map_err(|e| AuthError::Signing(e.to_string()))
    }

    /// Verifies an invite (signature, expiry, issuer, invite audience).
    pub fn verify_invite(&self, invite: &str) -> Result<InviteClaims, AuthError> {
        self.decode(invite, &self.invite_validation)
    }
}

/// The audience of invites made by a coordinator whose join tokens are for `audience`.
pub fn invite_audience(audience: &str) -> String {
    format!("{audience}:invite")
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

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims(room: &str, exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            room: room.into(),
            name: "Alice".into(),
            perms: vec!["publish".into(), "host".into(), "bogus".into()],
            exp,
            ..Claims::default()
        }
    }

    #[test]
    fn round_trip_and_room_binding() {
        let keys = TokenKeys::new(SECRET, 0);
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
        assert_eq!(c.iss.as_deref(), Some(DEFAULT_ISSUER));
        assert_eq!(c.aud.as_deref(), Some(DEFAULT_AUDIENCE));
        let e = keys.verify(&t, "b").unwrap_err();
        assert!(matches!(e, AuthError::WrongRoom { .. }));
        assert_eq!(e.reason(), "token is for another room");
    }

    #[test]
    fn expired_and_foreign_tokens_are_refused() {
        let keys = TokenKeys::new(SECRET, 0);
        let t = keys.mint(&claims("a", unix_now() - 10)).unwrap();
        assert_eq!(keys.verify(&t, "a"), Err(AuthError::Expired));
        let other = TokenKeys::new(b"another-secret-another-secret-xx", 0);
        let t = other.mint(&claims("a", unix_now() + 60)).unwrap();
        assert!(matches!(keys.verify(&t, "a"), Err(AuthError::Invalid(_))));
        assert!(matches!(
            keys.verify("garbage", "a"),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn not_before_is_checked_with_leeway() {
        let keys = TokenKeys::new(SECRET, 5);
        let now = unix_now();
        let future = Claims {
            nbf: Some(now + 120),
            ..claims("a", now + 600)
        };
        let t = keys.mint(&future).unwrap();
        let e = keys.verify(&t, "a").unwrap_err();
        assert_eq!(e, AuthError::NotYetValid);
        assert_eq!(e.reason(), "token not yet valid");
        // Within the leeway it is fine, and so is an nbf in the past.
        for nbf in [now + 3, now - 100] {
            let t = keys
                .mint(&Claims {
                    nbf: Some(nbf),
                    ..claims("a", now + 600)
                })
                .unwrap();
            assert!(keys.verify(&t, "a").is_ok(), "nbf {nbf} now {now}");
        }
    }

    #[test]
    fn audience_and_issuer_must_match() {
        let keys = TokenKeys::with_names(SECRET, 0, "meet.example", "satsuma");
        let now = unix_now();
        let good = keys.mint(&claims("a", now + 60)).unwrap();
        assert!(keys.verify(&good, "a").is_ok());
        // Same secret, other audience.
        let other_aud = TokenKeys::with_names(SECRET, 0, "meet.example", "other-app")
            .mint(&claims("a", now + 60))
            .unwrap();
        let e = keys.verify(&other_aud, "a").unwrap_err();
        assert_eq!(e, AuthError::WrongAudience);
        assert_eq!(e.reason(), "token is for another audience");
        // Same secret, other issuer.
        let other_iss = TokenKeys::with_names(SECRET, 0, "elsewhere", "satsuma")
            .mint(&claims("a", now + 60))
            .unwrap();
        assert_eq!(keys.verify(&other_iss, "a"), Err(AuthError::WrongIssuer));
        // No aud / no iss at all (signed by hand, as an old app would): refused.
        let raw = |v: serde_json::Value| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &v,
                &EncodingKey::from_secret(SECRET),
            )
            .unwrap()
        };
        let no_aud =
            raw(serde_json::json!({"sub":"x","room":"a","exp":now+60,"iss":"meet.example"}));
        assert_eq!(keys.verify(&no_aud, "a"), Err(AuthError::WrongAudience));
        let no_iss = raw(serde_json::json!({"sub":"x","room":"a","exp":now+60,"aud":"satsuma"}));
        assert_eq!(keys.verify(&no_iss, "a"), Err(AuthError::WrongIssuer));
        let no_exp =
            raw(serde_json::json!({"sub":"x","room":"a","iss":"meet.example","aud":"satsuma"}));
        assert!(matches!(
            keys.verify(&no_exp, "a"),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn invites_and_join_tokens_do_not_mix() {
        let keys = TokenKeys::new(SECRET, 0);
        let now = unix_now();
        let invite = InviteClaims {
            jti: "abc".into(),
            sub: "host".into(),
            room: "a".into(),
            perms: vec!["publish".into(), "subscribe".into()],
            exp: now + 60,
            iat: now,
            iss: None,
            aud: None,
        };
        let inv = keys.mint_invite(&invite).unwrap();
        let back = keys.verify_invite(&inv).unwrap();
        assert_eq!(back.jti, "abc");
        assert_eq!(back.aud.as_deref(), Some("satsuma:invite"));
        // An invite is not a join token, and a join token is not an invite.
        assert_eq!(keys.verify(&inv, "a"), Err(AuthError::WrongAudience));
        let join = keys.mint(&claims("a", now + 60)).unwrap();
        assert_eq!(keys.verify_invite(&join), Err(AuthError::WrongAudience));
        let expired = keys
            .mint_invite(&InviteClaims {
                exp: now - 10,
                ..invite
            })
            .unwrap();
        assert_eq!(keys.verify_invite(&expired), Err(AuthError::Expired));
    }

    #[test]
    fn secrets_must_be_long_and_not_placeholders() {
        assert!(check_secret("token_secret", &"a".repeat(32)).is_ok());
        let e = check_secret("token_secret", "abcde").unwrap_err();
        assert!(e.contains("token_secret") && e.contains("too short"), "{e}");
        assert!(!e.contains("abcde"), "must not echo the value: {e}");
        for placeholder in [
            "REPLACE-WITH-openssl-rand-hex-32",
            "REPLACE-WITH-another-openssl-rand-hex-32",
            "please-change-me-please-change-me-please",
            "changeme-changeme-changeme-changeme",
        ] {
            let e = check_secret("jwt_secret", placeholder).unwrap_err();
            assert!(e.contains("jwt_secret") && e.contains("placeholder"), "{e}");
        }
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
