//! Access for real deployments: the token API of app backends (API key + secret), host-made
//! invites (signed, revocable capabilities redeemed for join tokens), and the revocation list
//! that join checks consult.
//!
//! Routes (all JSON; errors are `{"error": code, "message": text}`):
//!
//! - `POST /api/v1/tokens` (API key): mints a join token.
//! - `POST /api/v1/invites` (a host of the room, or an API key): signs an invite.
//! - `POST /api/v1/invites/redeem` (anyone holding the invite): a join token for it.
//! - `DELETE /api/v1/invites/{id}` (a host of the room, or an API key): revokes it.
//!
//! Invites are not stored: an invite is a JWT for the audience `<audience>:invite`, signed with
//! the token secret. Revocations are held in memory (bounded, see [`MAX_REVOKED_INVITES`]) until
//! neither the invite nor a join token redeemed from it can still be valid; a restart forgets
//! them (rotate the token secret to revoke everything).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use base64::Engine as _;
use bytes::Bytes;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::{ApiKey, AuthError, Claims, InviteClaims, MAX_DISPLAY_NAME_CHARS, unix_now};
use crate::protocol::Permissions;
use crate::server::{App, valid_room_name};

/// Lifetime of a join token from `POST /api/v1/tokens` when the request names none (6 h).
pub const TOKEN_DEFAULT_TTL_S: u64 = 6 * 3600;
/// Longest lifetime of a join token from `POST /api/v1/tokens` (24 h).
pub const TOKEN_MAX_TTL_S: u64 = 24 * 3600;
/// Lifetime of an invite when the request names none (24 h).
pub const INVITE_DEFAULT_TTL_S: u64 = 24 * 3600;
/// Longest lifetime of an invite (7 days).
pub const INVITE_MAX_TTL_S: u64 = 7 * 24 * 3600;
/// Lifetime of the join token an invite is redeemed for (1 h): enough to join and to rejoin
/// after a network loss; a revoked invite's tokens are refused too.
pub const INVITE_TOKEN_TTL_S: u64 = 3600;
/// Most invite revocations held at once; beyond that a revocation answers 503.
pub const MAX_REVOKED_INVITES: usize = 10_000;
/// Most invite revocations held for one room, so that the host of one room cannot use up the
/// whole list; beyond that a revocation in that room answers 503.
pub const MAX_REVOKED_INVITES_PER_ROOM: usize = 256;
/// Largest accepted request body of these routes.
pub const MAX_BODY_BYTES: usize = 16 << 10;
/// Longest accepted identity (`sub`), in bytes.
pub const MAX_IDENTITY_BYTES: usize = 256;

/// API keys and invite revocations of one coordinator.
#[derive(Debug)]
pub(crate) struct Access {
    api_keys: Vec<ApiKey>,
    /// Revoked invites (bounded, see [`MAX_REVOKED_INVITES`]).
    revoked: Mutex<Revocations>,
    leeway_s: u64,
}

impl Access {
    pub(crate) fn new(api_keys: Vec<ApiKey>, leeway_s: u64) -> Self {
        Self {
            api_keys,
            revoked: Mutex::new(Revocations::default()),
            leeway_s,
        }
    }

    /// The API key `id` if `secret` is its secret. Every configured key is compared, in constant
    /// time over SHA-256 digests, so timing tells neither the secret nor which ids exist.
    fn api_key(&self, id: &str, secret: &str) -> Option<&ApiKey> {
        let given = Sha256::digest(secret.as_bytes());
        let mut found = None;
        for key in &self.api_keys {
            let want = Sha256::digest(key.secret.as_bytes());
            let secret_ok: bool = want.ct_eq(&given).into();
            let id_ok: bool = key.id.as_bytes().ct_eq(id.as_bytes()).into();
            if secret_ok & id_ok {
                found = Some(key);
            }
        }
        found
    }

    /// Whether invite `id` of `room` was revoked.
    pub(crate) fn is_revoked(&self, room: &str, id: &str) -> bool {
        self.revoked
            .lock()
            .entries
            .contains_key(&(room.to_owned(), id.to_owned()))
    }

    /// Revokes invite `id` of `room`; `Err` when the list, or the room's share of it, is full.
    fn revoke(&self, room: &str, id: &str, now: u64) -> Result<(), ()> {
        let mut r = self.revoked.lock();
        let key = (room.to_owned(), id.to_owned());
        // Neither the invite nor a token redeemed from it outlives this.
        let until = now + INVITE_MAX_TTL_S + INVITE_TOKEN_TTL_S + 2 * self.leeway_s + 60;
        if let Some(old) = r.entries.get_mut(&key) {
            *old = until;
            return Ok(());
        }
        if r.full(room) {
            r.prune(now);
            if r.full(room) {
                return Err(());
            }
        }
        r.entries.insert(key, until);
        *r.per_room.entry(room.to_owned()).or_default() += 1;
        Ok(())
    }

    /// Number of revocations held (tests, metrics).
    #[cfg(test)]
    fn revoked_len(&self) -> usize {
        self.revoked.lock().entries.len()
    }
}

/// Revoked invites: `(room, invite id)` → Unix time after which the entry can be forgotten, and
/// how many each room holds.
#[derive(Debug, Default)]
struct Revocations {
    entries: HashMap<(String, String), u64>,
    per_room: HashMap<String, usize>,
}

impl Revocations {
    fn full(&self, room: &str) -> bool {
        self.entries.len() >= MAX_REVOKED_INVITES
            || self.per_room.get(room).copied().unwrap_or(0) >= MAX_REVOKED_INVITES_PER_ROOM
    }

    /// Forgets entries nothing can use any more (O(n): only when full).
    fn prune(&mut self, now: u64) {
        self.entries.retain(|_, until| *until > now);
        self.per_room.clear();
        for (room, _) in self.entries.keys() {
            *self.per_room.entry(room.clone()).or_default() += 1;
        }
    }
}

impl App {
    /// Verifies a join token for `room`: signature, `exp`, `nbf`, `iss`, `aud`, room, and that
    /// the invite it was redeemed from (if any) is not revoked.
    pub(crate) fn verify_join_token(&self, token: &str, room: &str) -> Result<Claims, AuthError> {
        let claims = self.keys.verify(token, room)?;
        if let Some(inv) = &claims.inv
            && self.access.is_revoked(&claims.room, inv)
        {
            return Err(AuthError::Revoked);
        }
        Ok(claims)
    }
}

/// The routes of this module.
pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/tokens", post(create_token))
        .route("/api/v1/invites", post(create_invite))
        .route("/api/v1/invites/redeem", post(redeem_invite))
        .route("/api/v1/invites/{id}", delete(revoke_invite))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// An error answer: status, code and message.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Send `WWW-Authenticate: Basic` with a 401: only on the API-key route. Browsers answer
    /// that header on a same-origin `fetch` with a login prompt and leave the request pending,
    /// so the invite routes the web client calls never send it.
    challenge: bool,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            challenge: false,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    fn auth(e: &AuthError) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, e.code(), e.reason())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED && self.challenge {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"satsuma\""),
            );
        }
        resp
    }
}

/// `path` (starting with `/`) under the configured public URL; `None` without one.
fn public_link(app: &App, path: &str) -> Option<String> {
    app.config
        .budgets
        .public_url
        .as_deref()
        .map(|base| format!("{}{path}", base.trim_end_matches('/')))
}

fn ok(body: serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response()
}

/// Who is calling.
#[derive(Debug)]
enum Principal {
    /// An app backend (API key id).
    ApiKey(String),
    /// A host of `room`.
    Host { room: String, identity: String },
}

/// The `Authorization` header's credentials: `Basic base64(ID:SECRET)`, or `Bearer X` where X is
/// `ID:SECRET`, a participant credential (the `resume_token` of `welcome`) or a join token.
fn authorization(headers: &HeaderMap) -> Result<(&'static str, String), ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::unauthorized("missing Authorization header"))?
        .trim();
    let (scheme, rest) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("Authorization must be Basic or Bearer"))?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                ApiError::unauthorized("Basic credentials are not base64 of ID:SECRET")
            })?;
        Ok(("basic", decoded))
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Ok(("bearer", rest.to_owned()))
    } else {
        Err(ApiError::unauthorized(
            "Authorization must be Basic or Bearer",
        ))
    }
}

/// An API key from `Basic` or `Bearer ID:SECRET`.
fn api_key_principal(app: &App, cred: &str) -> Option<Result<Principal, ApiError>> {
    let (id, secret) = cred.split_once(':')?;
    Some(match app.access.api_key(id, secret) {
        Some(key) => Ok(Principal::ApiKey(key.id.clone())),
        None => Err(ApiError::unauthorized("unknown API key or wrong secret")),
    })
}

/// An app backend (API key) only.
fn require_api_key(app: &App, headers: &HeaderMap) -> Result<String, ApiError> {
    let (_, cred) = authorization(headers)?;
    match api_key_principal(app, &cred) {
        Some(Ok(Principal::ApiKey(id))) => Ok(id),
        Some(Err(e)) => Err(e),
        _ => Err(ApiError::unauthorized(
            "this route needs an API key: Authorization: Basic base64(ID:SECRET) or Bearer ID:SECRET",
        )),
    }
}

/// An API key, or a host of a room by grant: the participant credential of a participant whose
/// join token granted `host`, or such a join token itself. A participant who is host only as the
/// room's first joiner (`first_joiner_is_host`) cannot make invites: admitting new people is
/// for hosts the app named.
fn host_or_api_key(app: &App, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let (scheme, cred) = authorization(headers)?;
    // Join tokens (base64url and dots) and participant credentials (hex) never hold a ':'.
    if scheme == "basic" || cred.contains(':') {
        return api_key_principal(app, &cred)
            .unwrap_or_else(|| Err(ApiError::unauthorized("unknown API key or wrong secret")));
    }
    if let Some(c) = app.hub.credential(&cred) {
        let slot = app
            .hub
            .room(&c.room)
            .ok_or_else(|| ApiError::unauthorized("participant credential no longer valid"))?;
        let perms = slot
            .state
            .lock()
            .room
            .permissions(c.participant)
            .ok_or_else(|| ApiError::unauthorized("participant credential no longer valid"))?;
        if !perms.host {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only a host named by its join token (host grant) may do this",
            ));
        }
        return Ok(Principal::Host {
            room: c.room,
            identity: format!("participant-{}", c.participant),
        });
    }
    if cred.split('.').count() == 3 {
        let claims = app
            .keys
            .verify_any_room(&cred)
            .map_err(|e| ApiError::auth(&e))?;
        if let Some(inv) = &claims.inv
            && app.access.is_revoked(&claims.room, inv)
        {
            return Err(ApiError::auth(&AuthError::Revoked));
        }
        if !claims.permissions().host {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the token has no host grant",
            ));
        }
        return Ok(Principal::Host {
            room: claims.room,
            identity: claims.sub,
        });
    }
    Err(ApiError::unauthorized(
        "unknown credential: use a host's join token or participant credential, or an API key",
    ))
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

/// Grants of a token or invite (each optional; defaults: publish and subscribe, not host).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Grants {
    #[serde(default)]
    publish: Option<bool>,
    #[serde(default)]
    subscribe: Option<bool>,
    #[serde(default)]
    host: Option<bool>,
}

impl Grants {
    fn permissions(self) -> Permissions {
        Permissions {
            publish: self.publish.unwrap_or(true),
            subscribe: self.subscribe.unwrap_or(true),
            host: self.host.unwrap_or(false),
        }
    }
}

fn check_ttl(ttl: Option<u64>, default: u64, max: u64, what: &str) -> Result<u64, ApiError> {
    match ttl {
        None => Ok(default),
        Some(t) if (1..=max).contains(&t) => Ok(t),
        Some(t) => Err(ApiError::bad_request(format!(
            "{what} ttl_s {t} is out of range: 1 to {max} seconds"
        ))),
    }
}

fn check_room(room: &str) -> Result<(), ApiError> {
    if valid_room_name(room) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid room name: 1-64 of A-Z a-z 0-9 . _ -",
        ))
    }
}

fn check_identity(identity: &str) -> Result<(), ApiError> {
    if identity.trim().is_empty()
        || identity.len() > MAX_IDENTITY_BYTES
        || identity.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(format!(
            "identity must be 1-{MAX_IDENTITY_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.chars().count() > MAX_DISPLAY_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "name must be at most {MAX_DISPLAY_NAME_CHARS} characters without control characters"
        )));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    room: String,
    identity: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    grants: Option<Grants>,
    #[serde(default)]
    ttl_s: Option<u64>,
}

/// `POST /api/v1/tokens`: an app backend mints a join token.
async fn create_token(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    match create_token_inner(&app, &headers, &body) {
        Ok(r) => r,
        Err(e) => {
            app.metrics.error(e.code);
            e.into_response()
        }
    }
}

fn create_token_inner(app: &App, headers: &HeaderMap, body: &[u8]) -> Result<Response, ApiError> {
    let key_id = require_api_key(app, headers).map_err(|e| ApiError {
        challenge: true,
        ..e
    })?;
    let req: TokenRequest = parse_body(body)?;
    check_room(&req.room)?;
    check_identity(&req.identity)?;
    let name = req.name.unwrap_or_default();
    check_name(&name)?;
    let ttl = check_ttl(req.ttl_s, TOKEN_DEFAULT_TTL_S, TOKEN_MAX_TTL_S, "token")?;
    let now = unix_now();
    let exp = now + ttl;
    let claims = Claims {
        sub: req.identity.clone(),
        room: req.room.clone(),
        name,
        perms: req.grants.unwrap_or_default().permissions().to_names(),
        exp,
        iat: Some(now),
        ..Claims::default()
    };
    let token = app
        .keys
        .mint(&claims)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    tracing::info!(api_key = %key_id, room = %req.room, identity = %req.identity, ttl_s = ttl, "join token minted");
    let path = format!("/#token={token}");
    Ok(ok(json!({
        "token": token,
        "expires_at": exp,
        "room": req.room,
        "identity": req.identity,
        "url": public_link(app, &path),
        "path": path,
    })))
}

/// Role of an invite: the grants of the join token it is redeemed for.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Role {
    #[default]
    Participant,
    Host,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteRequest {
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    grants: Option<Grants>,
    #[serde(default)]
    ttl_s: Option<u64>,
}

/// `POST /api/v1/invites`: a host (or an app backend) signs an invite to a room.
async fn create_invite(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    match create_invite_inner(&app, &headers, &body) {
        Ok(r) => r,
        Err(e) => {
            app.metrics.error(e.code);
            e.into_response()
        }
    }
}

/// The room a principal acts on: a host's own room (a different `room` in the request is
/// refused), or the request's room for an API key.
fn principal_room(p: &Principal, requested: Option<&str>) -> Result<String, ApiError> {
    match (p, requested) {
        (Principal::Host { room, .. }, None) => Ok(room.clone()),
        (Principal::Host { room, .. }, Some(r)) if r == room => Ok(room.clone()),
        (Principal::Host { .. }, Some(_)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a host may only act on its own room",
        )),
        (Principal::ApiKey(_), Some(r)) => {
            check_room(r)?;
            Ok(r.to_owned())
        }
        (Principal::ApiKey(_), None) => Err(ApiError::bad_request("room is required")),
    }
}

fn create_invite_inner(app: &App, headers: &HeaderMap, body: &[u8]) -> Result<Response, ApiError> {
    let principal = host_or_api_key(app, headers)?;
    let req: InviteRequest = parse_body(body)?;
    let room = principal_room(&principal, req.room.as_deref())?;
    let perms = match (req.role, req.grants) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give role or grants, not both"));
        }
        (_, Some(g)) => g.permissions(),
        (role, None) => Permissions {
            publish: true,
            subscribe: true,
            host: role == Some(Role::Host),
        },
    };
    let ttl = check_ttl(req.ttl_s, INVITE_DEFAULT_TTL_S, INVITE_MAX_TTL_S, "invite")?;
    let now = unix_now();
    let id = hex::encode(rand::random::<[u8; 16]>());
    let by = match &principal {
        Principal::ApiKey(k) => format!("api-key:{k}"),
        Principal::Host { identity, .. } => identity.clone(),
    };
    let claims = InviteClaims {
        jti: id.clone(),
        sub: by.clone(),
        room: room.clone(),
        perms: perms.to_names(),
        exp: now + ttl,
        iat: now,
        iss: None,
        aud: None,
    };
    let invite = app
        .keys
        .mint_invite(&claims)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    tracing::info!(%room, invite = %id, by = %by, ttl_s = ttl, host = perms.host, "invite created");
    let path = format!("/#invite={invite}");
    Ok(ok(json!({
        "invite_id": id,
        "invite": invite,
        "room": room,
        "grants": {"publish": perms.publish, "subscribe": perms.subscribe, "host": perms.host},
        "expires_at": now + ttl,
        "url": public_link(app, &path),
        "path": path,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemRequest {
    invite: String,
    #[serde(default)]
    name: Option<String>,
}

/// `POST /api/v1/invites/redeem`: the holder of an invite gets a join token.
async fn redeem_invite(State(app): State<Arc<App>>, body: Bytes) -> Response {
    match redeem_invite_inner(&app, &body) {
        Ok(r) => r,
        Err(e) => {
            app.metrics.error(e.code);
            e.into_response()
        }
    }
}

fn redeem_invite_inner(app: &App, body: &[u8]) -> Result<Response, ApiError> {
    let req: RedeemRequest = parse_body(body)?;
    let invite = app
        .keys
        .verify_invite(req.invite.trim())
        .map_err(|e| match e {
            AuthError::Expired => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invite_expired",
                "this invite has expired; ask the host for a new one",
            ),
            other => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_invite",
                format!("not a valid invite ({})", other.reason()),
            ),
        })?;
    if app.access.is_revoked(&invite.room, &invite.jti) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invite_revoked",
            "this invite was revoked; ask the host for a new one",
        ));
    }
    let name = req.name.unwrap_or_default();
    check_name(&name)?;
    let now = unix_now();
    let exp = now + INVITE_TOKEN_TTL_S;
    let identity = format!(
        "invite-{}-{}",
        &invite.jti[..invite.jti.len().min(8)],
        hex::encode(rand::random::<[u8; 6]>())
    );
    let claims = Claims {
        sub: identity.clone(),
        room: invite.room.clone(),
        name: if name.trim().is_empty() {
            "Guest".to_owned()
        } else {
            name
        },
        perms: invite.perms.clone(),
        exp,
        iat: Some(now),
        inv: Some(invite.jti.clone()),
        ..Claims::default()
    };
    let token = app
        .keys
        .mint(&claims)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(ok(json!({
        "token": token,
        "room": invite.room,
        "identity": identity,
        "expires_at": exp,
    })))
}

#[derive(Debug, Deserialize)]
struct RevokeQuery {
    #[serde(default)]
    room: Option<String>,
}

/// `DELETE /api/v1/invites/{id}`: a host of the room (or an app backend, with `?room=`)
/// revokes an invite.
async fn revoke_invite(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<RevokeQuery>,
) -> Response {
    match revoke_invite_inner(&app, &headers, &id, q.room.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            app.metrics.error(e.code);
            e.into_response()
        }
    }
}

fn revoke_invite_inner(
    app: &App,
    headers: &HeaderMap,
    id: &str,
    room: Option<&str>,
) -> Result<Response, ApiError> {
    let principal = host_or_api_key(app, headers)?;
    let room = principal_room(&principal, room)?;
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request("invite id must be 32 hex digits"));
    }
    app.access.revoke(&room, id, unix_now()).map_err(|()| {
        tracing::warn!(%room, "invite revocation list full");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_revocations",
            format!(
                "too many revoked invites ({MAX_REVOKED_INVITES_PER_ROOM} per room, \
                     {MAX_REVOKED_INVITES} in all); rotate the token secret to revoke everything"
            ),
        )
    })?;
    tracing::info!(%room, invite = %id, "invite revoked");
    Ok(ok(json!({"revoked": id, "room": room})))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn access() -> Access {
        Access::new(
            vec![
                "app:0123456789abcdef0123456789abcdef".parse().unwrap(),
                "other:ffffffffffffffffffffffffffffffff".parse().unwrap(),
            ],
            5,
        )
    }

    #[test]
    fn api_keys_match_id_and_secret() {
        let a = access();
        assert_eq!(
            a.api_key("app", "0123456789abcdef0123456789abcdef")
                .map(|k| k.id.as_str()),
            Some("app")
        );
        assert!(
            a.api_key("app", "ffffffffffffffffffffffffffffffff")
                .is_none()
        );
        assert!(
            a.api_key("app", "0123456789abcdef0123456789abcde")
                .is_none()
        );
        assert!(
            a.api_key("nobody", "0123456789abcdef0123456789abcdef")
                .is_none()
        );
        assert!(a.api_key("", "").is_none());
    }

    #[test]
    fn revocations_are_per_room_bounded_and_forgotten_later() {
        let a = access();
        a.revoke("r", "id1", 1000).unwrap();
        assert!(a.is_revoked("r", "id1"));
        assert!(!a.is_revoked("other", "id1"));
        // Revoking twice is fine and does not grow the list.
        a.revoke("r", "id1", 1001).unwrap();
        assert_eq!(a.revoked_len(), 1);
        // One room's share is bounded; other rooms can still revoke.
        for i in 1..MAX_REVOKED_INVITES_PER_ROOM {
            a.revoke("r", &format!("x{i}"), 1000).unwrap();
        }
        assert!(a.revoke("r", "one-too-many", 1000).is_err());
        a.revoke("r", "id1", 1002).unwrap();
        // The whole list is bounded too.
        let mut i = 0;
        while a.revoked_len() < MAX_REVOKED_INVITES {
            a.revoke(&format!("room{}", i / 200), &format!("y{i}"), 1000)
                .unwrap();
            i += 1;
        }
        assert!(a.revoke("fresh-room", "z", 1000).is_err());
        // Long after every invite could have expired, the entries are dropped.
        let later = 1000 + INVITE_MAX_TTL_S + INVITE_TOKEN_TTL_S + 3600;
        a.revoke("r", "fresh", later).unwrap();
        assert_eq!(a.revoked_len(), 1);
    }

    #[test]
    fn ttls_are_bounded() {
        assert_eq!(check_ttl(None, 5, 10, "t").unwrap(), 5);
        assert_eq!(check_ttl(Some(10), 5, 10, "t").unwrap(), 10);
        assert!(check_ttl(Some(0), 5, 10, "t").is_err());
        assert!(check_ttl(Some(11), 5, 10, "t").is_err());
    }

    #[test]
    fn hosts_act_on_their_own_room_only() {
        let host = Principal::Host {
            room: "a".into(),
            identity: "h".into(),
        };
        assert_eq!(principal_room(&host, None).unwrap(), "a");
        assert_eq!(principal_room(&host, Some("a")).unwrap(), "a");
        assert_eq!(
            principal_room(&host, Some("b")).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        let key = Principal::ApiKey("app".into());
        assert!(principal_room(&key, None).is_err());
        assert!(principal_room(&key, Some("bad room")).is_err());
        assert_eq!(principal_room(&key, Some("b")).unwrap(), "b");
    }
}
