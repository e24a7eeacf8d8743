//! TURN credentials in the TURN REST API scheme (draft-uberti-behave-turn-rest, coturn's
//! `use-auth-secret` / `static-auth-secret`): the TURN server and the service that hands out
//! credentials share one secret, and a credential is
//!
//! ```text
//! username   = "<unix expiry>:<id>"
//! credential = base64(HMAC-SHA1(secret, username))
//! ```
//!
//! The TURN server recomputes the HMAC from the username and refuses a username whose expiry
//! has passed, so nothing is stored and credentials cannot be revoked (keep the lifetime short:
//! at most [`MAX_TTL_SECS`]).
//!
//! Sans-IO: the caller passes the current Unix time. Used by the SFU's Realtime-compatible
//! `generate-ice-servers` route and by the coordinator, which hands every participant its
//! own credentials.

use std::fmt;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;

/// Longest credential lifetime handed out: 24 hours.
pub const MAX_TTL_SECS: u64 = 86_400;
/// Most ICE server URLs one configuration may list.
pub const MAX_URLS: usize = 16;
/// Longest accepted ICE server URL.
pub const MAX_URL_LEN: usize = 512;
/// Longest accepted `<id>` part of a username.
pub const MAX_ID_LEN: usize = 128;
/// Shortest accepted shared secret (coturn takes any string; a short one is guessable).
pub const MIN_SECRET_LEN: usize = 16;

/// A TURN configuration or request that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TurnError {
    /// The lifetime is zero or longer than [`MAX_TTL_SECS`].
    #[error("ttl must be between 1 and {MAX_TTL_SECS} seconds, got {0}")]
    Ttl(u64),
    /// The expiry does not fit a Unix time.
    #[error("now + ttl overflows")]
    Overflow,
    /// The `<id>` part of the username is empty, too long or has characters other than
    /// `A-Z a-z 0-9 . _ -`.
    #[error("credential id must be 1-{MAX_ID_LEN} of A-Z a-z 0-9 . _ -, got {0:?}")]
    Id(String),
    /// A URL is not a `stun:`, `stuns:`, `turn:` or `turns:` URL of printable ASCII.
    #[error(
        "ICE server URL {0:?} must start with stun:, stuns:, turn: or turns: and be at most \
         {MAX_URL_LEN} printable ASCII characters"
    )]
    Url(String),
    /// More than [`MAX_URLS`] URLs.
    #[error("at most {MAX_URLS} ICE server URLs, got {0}")]
    TooManyUrls(usize),
    /// `turn:`/`turns:` URLs without a shared secret, or a secret without any TURN URL.
    #[error("{0}")]
    Inconsistent(&'static str),
    /// The shared secret is shorter than [`MIN_SECRET_LEN`].
    #[error("the TURN shared secret must be at least {MIN_SECRET_LEN} characters")]
    ShortSecret,
    /// A username is not `<expiry>:<id>`, or its credential does not match (see [`verify`]).
    #[error("invalid TURN credential")]
    Invalid,
    /// The username's expiry has passed.
    #[error("TURN credential expired at {0}")]
    Expired(u64),
}

/// The secret shared with the TURN server (coturn `static-auth-secret`). Its `Debug` output
/// never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnSecret(String);

impl TurnSecret {
    /// A secret of at least [`MIN_SECRET_LEN`] characters.
    pub fn new(secret: impl Into<String>) -> Result<TurnSecret, TurnError> {
        let secret = secret.into();
        if secret.chars().count() < MIN_SECRET_LEN {
            return Err(TurnError::ShortSecret);
        }
        Ok(TurnSecret(secret))
    }

    fn mac(&self, username: &str) -> Hmac<Sha1> {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = match Hmac::<Sha1>::new_from_slice(self.0.as_bytes()) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(username.as_bytes());
        mac
    }
}

impl fmt::Debug for TurnSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TurnSecret(..)")
    }
}

/// One short-lived TURN credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// `<unix expiry>:<id>`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub credential: String,
    /// Unix seconds after which the TURN server refuses it.
    pub expires_at: u64,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks a lifetime: 1 to [`MAX_TTL_SECS`] seconds.
pub fn check_ttl(ttl_secs: u64) -> Result<u64, TurnError> {
    if ttl_secs == 0 || ttl_secs > MAX_TTL_SECS {
        return Err(TurnError::Ttl(ttl_secs));
    }
    Ok(ttl_secs)
}

/// The credential for `id`, valid from `now_unix` for `ttl_secs` seconds.
pub fn credential(
    secret: &TurnSecret,
    id: &str,
    now_unix: u64,
    ttl_secs: u64,
) -> Result<Credential, TurnError> {
    check_ttl(ttl_secs)?;
    if !valid_id(id) {
        return Err(TurnError::Id(id.chars().take(MAX_ID_LEN).collect()));
    }
    let expires_at = now_unix.checked_add(ttl_secs).ok_or(TurnError::Overflow)?;
    let username = format!("{expires_at}:{id}");
    let tag = secret.mac(&username).finalize().into_bytes();
    Ok(Credential {
        credential: base64::engine::general_purpose::STANDARD.encode(tag),
        username,
        expires_at,
    })
}

/// What a TURN server does with a credential: checks the HMAC (in constant time) and the
/// expiry. Returns the expiry.
pub fn verify(
    secret: &TurnSecret,
    username: &str,
    credential: &str,
    now_unix: u64,
) -> Result<u64, TurnError> {
    let (expiry, _id) = username.split_once(':').ok_or(TurnError::Invalid)?;
    let expires_at: u64 = expiry.parse().map_err(|_| TurnError::Invalid)?;
    let tag = base64::engine::general_purpose::STANDARD
        .decode(credential)
        .map_err(|_| TurnError::Invalid)?;
    secret
        .mac(username)
        .verify_slice(&tag)
        .map_err(|_| TurnError::Invalid)?;
    if now_unix > expires_at {
        return Err(TurnError::Expired(expires_at));
    }
    Ok(expires_at)
}

/// One entry of `RTCConfiguration.iceServers` (its wire type lives in `satsuma-wire`).
pub use satsuma_wire::IceServer;

/// ICE servers with credentials, and when the credentials expire (`None`: there are none,
/// only STUN or nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IceServers {
    /// The list for `RTCConfiguration.iceServers`; empty without a configuration.
    pub servers: Vec<IceServer>,
    /// Unix seconds when the TURN credentials expire.
    pub expires_at: Option<u64>,
}

/// Configured STUN/TURN URLs and the shared secret: a checked configuration that mints
/// [`IceServers`]. The default has no servers (and mints an empty list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TurnServers {
    stun: Vec<String>,
    turn: Vec<String>,
    secret: Option<TurnSecret>,
}

fn is_turn(url: &str) -> bool {
    url.starts_with("turn:") || url.starts_with("turns:")
}

fn check_url(url: &str) -> Result<(), TurnError> {
    let rest = ["stun:", "stuns:", "turn:", "turns:"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme));
    let ok = rest.is_some_and(|r| !r.is_empty())
        && url.len() <= MAX_URL_LEN
        && url.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(TurnError::Url(url.chars().take(MAX_URL_LEN).collect()))
    }
}

impl TurnServers {
    /// [`TurnServers::new`] from configuration as read: the secret as a plain string (checked by
    /// [`TurnSecret::new`]).
    pub fn from_config(
        urls: Vec<String>,
        secret: Option<String>,
    ) -> Result<TurnServers, TurnError> {
        let secret = secret.map(TurnSecret::new).transpose()?;
        TurnServers::new(urls, secret)
    }

    /// Checks the URLs (`stun:`, `stuns:`, `turn:`, `turns:`; at most [`MAX_URLS`]) and that
    /// a secret is given exactly when there are TURN URLs.
    pub fn new(urls: Vec<String>, secret: Option<TurnSecret>) -> Result<TurnServers, TurnError> {
        if urls.len() > MAX_URLS {
            return Err(TurnError::TooManyUrls(urls.len()));
        }
        for url in &urls {
            check_url(url)?;
        }
        let (turn, stun): (Vec<String>, Vec<String>) = urls.into_iter().partition(|u| is_turn(u));
        match (turn.is_empty(), &secret) {
            (false, None) => Err(TurnError::Inconsistent(
                "turn: and turns: URLs need the TURN shared secret",
            )),
            (true, Some(_)) => Err(TurnError::Inconsistent(
                "a TURN shared secret is set but no turn: or turns: URL",
            )),
            _ => Ok(TurnServers { stun, turn, secret }),
        }
    }

    /// No servers at all.
    pub fn is_empty(&self) -> bool {
        self.stun.is_empty() && self.turn.is_empty()
    }

    /// The configured URLs, STUN ones first.
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.stun.iter().chain(&self.turn).map(String::as_str)
    }

    /// The ICE servers for one client: STUN URLs in one entry without credentials, TURN URLs
    /// in another with a fresh credential for `id` valid for `ttl_secs` from `now_unix`.
    pub fn ice_servers(
        &self,
        id: &str,
        now_unix: u64,
        ttl_secs: u64,
    ) -> Result<IceServers, TurnError> {
        check_ttl(ttl_secs)?;
        let mut out = IceServers::default();
        if !self.stun.is_empty() {
            out.servers.push(IceServer {
                urls: self.stun.clone(),
                username: None,
                credential: None,
            });
        }
        if let Some(secret) = &self.secret
            && !self.turn.is_empty()
        {
            let c = credential(secret, id, now_unix, ttl_secs)?;
            out.expires_at = Some(c.expires_at);
            out.servers.push(IceServer {
                urls: self.turn.clone(),
                username: Some(c.username),
                credential: Some(c.credential),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn secret() -> TurnSecret {
        TurnSecret::new("north-sea-shared-secret").unwrap()
    }

    #[test]
    fn known_vector() {
        // Derived independently with OpenSSL:
        //   printf '%s' '1700086400:alice' \
        //     | openssl dgst -sha1 -hmac 'north-sea-shared-secret' -binary | base64
        //   → IxMl6N2xGRtGpRs7zqENXHd2uOw=
        // (hex 231325e8ddb1191b46a51b3bcea10d5c7776b8ec; Python's hmac module agrees).
        let c = credential(&secret(), "alice", 1_700_000_000, 86_400).unwrap();
        assert_eq!(c.username, "1700086400:alice");
        assert_eq!(c.credential, "IxMl6N2xGRtGpRs7zqENXHd2uOw=");
        assert_eq!(c.expires_at, 1_700_086_400);
    }

    #[test]
    fn ttl_is_bounded() {
        let s = secret();
        assert_eq!(credential(&s, "a", 0, 0), Err(TurnError::Ttl(0)));
        assert_eq!(
            credential(&s, "a", 0, MAX_TTL_SECS + 1),
            Err(TurnError::Ttl(MAX_TTL_SECS + 1))
        );
        assert!(credential(&s, "a", 0, 1).is_ok());
        assert!(credential(&s, "a", 0, MAX_TTL_SECS).is_ok());
        assert_eq!(credential(&s, "a", u64::MAX, 1), Err(TurnError::Overflow));
    }

    #[test]
    fn ids_are_checked() {
        let s = secret();
        let long = "x".repeat(MAX_ID_LEN + 1);
        for bad in ["", "a:b", "a b", "é", &long] {
            assert!(
                matches!(credential(&s, bad, 0, 60), Err(TurnError::Id(_))),
                "{bad:?}"
            );
        }
        assert!(credential(&s, "room-1.p_2", 0, 60).is_ok());
    }

    #[test]
    fn verify_accepts_fresh_and_refuses_expired_forged_or_garbled() {
        let s = secret();
        let c = credential(&s, "bob", 1000, 60).unwrap();
        assert_eq!(verify(&s, &c.username, &c.credential, 1000), Ok(1060));
        assert_eq!(verify(&s, &c.username, &c.credential, 1060), Ok(1060));
        assert_eq!(
            verify(&s, &c.username, &c.credential, 1061),
            Err(TurnError::Expired(1060))
        );
        // Extending the expiry breaks the HMAC.
        assert_eq!(
            verify(&s, "99999:bob", &c.credential, 1000),
            Err(TurnError::Invalid)
        );
        let other = TurnSecret::new("another-secret-entirely").unwrap();
        assert_eq!(
            verify(&other, &c.username, &c.credential, 1000),
            Err(TurnError::Invalid)
        );
        assert_eq!(verify(&s, "nocolon", "AAAA", 0), Err(TurnError::Invalid));
        assert_eq!(
            verify(&s, "x:bob", &c.credential, 0),
            Err(TurnError::Invalid)
        );
        assert_eq!(
            verify(&s, &c.username, "not base64!", 0),
            Err(TurnError::Invalid)
        );
    }

    #[test]
    fn secrets_are_long_enough_and_never_printed() {
        assert_eq!(TurnSecret::new("short"), Err(TurnError::ShortSecret));
        let s = secret();
        assert!(!format!("{s:?}").contains("north"));
        let servers = TurnServers::new(vec!["turn:t.example:3478".into()], Some(s)).unwrap();
        assert!(!format!("{servers:?}").contains("north"));
    }

    #[test]
    fn servers_split_stun_and_turn_and_carry_credentials() {
        let urls = vec![
            "stun:turn.example.com:3478".to_string(),
            "turn:turn.example.com:3478?transport=udp".to_string(),
            "turn:turn.example.com:3478?transport=tcp".to_string(),
            "turns:turn.example.com:443?transport=tcp".to_string(),
        ];
        let servers = TurnServers::new(urls, Some(secret())).unwrap();
        let ice = servers.ice_servers("p1", 5000, 600).unwrap();
        assert_eq!(ice.expires_at, Some(5600));
        assert_eq!(ice.servers.len(), 2);
        assert_eq!(ice.servers[0].urls, vec!["stun:turn.example.com:3478"]);
        assert_eq!(ice.servers[0].username, None);
        let turn = &ice.servers[1];
        assert_eq!(turn.urls.len(), 3);
        assert_eq!(turn.username.as_deref(), Some("5600:p1"));
        let cred = turn.credential.as_deref().unwrap();
        assert_eq!(verify(&secret(), "5600:p1", cred, 5000), Ok(5600));
        // The JSON is what RTCPeerConnection takes: no null username/credential for STUN.
        let json = serde_json::to_value(&ice.servers).unwrap();
        assert!(json[0].get("username").is_none());
        assert_eq!(json[1]["username"], "5600:p1");
        assert!(servers.ice_servers("p1", 5000, 0).is_err());
    }

    #[test]
    fn configurations_are_checked() {
        let s = || Some(secret());
        assert!(TurnServers::new(vec![], None).unwrap().is_empty());
        let stun_only = TurnServers::new(vec!["stun:s.example:3478".into()], None).unwrap();
        let ice = stun_only.ice_servers("x", 0, 60).unwrap();
        assert_eq!(ice.expires_at, None);
        assert_eq!(ice.servers.len(), 1);
        assert!(matches!(
            TurnServers::new(vec!["turn:t.example".into()], None),
            Err(TurnError::Inconsistent(_))
        ));
        assert!(matches!(
            TurnServers::new(vec!["stun:t.example".into()], s()),
            Err(TurnError::Inconsistent(_))
        ));
        for bad in [
            "http://t.example",
            "turn:",
            "turn:t.example bad",
            "turn:t.example\n",
        ] {
            assert!(
                matches!(
                    TurnServers::new(vec![bad.into()], s()),
                    Err(TurnError::Url(_))
                ),
                "{bad:?}"
            );
        }
        let many = vec!["turn:t.example".to_string(); MAX_URLS + 1];
        assert_eq!(
            TurnServers::new(many, s()),
            Err(TurnError::TooManyUrls(MAX_URLS + 1))
        );
    }
}
