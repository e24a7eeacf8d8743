//! Serving a client through the replica that owns its room (issue 16).
//!
//! With the etcd room store each room has one owner replica. A client may reach any replica
//! (a Service spreads connections), so a replica that does not own the room serves the client
//! **through the owner**:
//!
//! - **WebSocket** (`/ws/{room}`): the hello is answered by the store with
//!   [`StoreError::Owned`] and the owner's internal URL (`--replica-url`); this replica opens a
//!   WebSocket to the owner, sends the client's hello and then pipes frames both ways, the
//!   owner's close code and reason included. The owner does all room logic (and applies its
//!   per-connection limits to the forwarded connection). When the owner dies the pipe closes
//!   with 1001 and the client resumes (at any replica; the first to take the lapsed lease
//!   rebuilds the room).
//! - **SFU proxy** (`/sfu/...`): a participant credential names its room
//!   (`<room>.<48 hex digits>`, see [`credential`]). A replica that does not know the credential
//!   looks up the room's owner in the store and forwards the request there as it came.
//!
//! A forwarded request carries the client's address and an HMAC of it under the coordinator's
//! token secret ([`HEADER_PROOF`]): the owner counts the connection against the client's
//! address (not the forwarding replica's) and never forwards it again (no loops). Without a
//! valid proof the headers are ignored.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use satsuma_wire::realtime::{ErrorBody, api_error_code};
use sha2::Sha256;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use crate::hub::SendQueue;
use crate::server::App;

/// The header with the client's address on a request one replica forwards to another.
pub(crate) const HEADER_CLIENT: &str = "x-satsuma-forwarded-for";
/// The header with the HMAC that proves [`HEADER_CLIENT`] was set by a replica.
pub(crate) const HEADER_PROOF: &str = "x-satsuma-forward-proof";

/// How long connecting to the owner may take before the client is told to retry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Close code when the owner cannot be reached or its connection broke (the client resumes).
const GOING_AWAY: u16 = 1001;
/// Close code when the owner cannot be reached now (the client retries).
const TRY_AGAIN_LATER: u16 = 1013;

/// Hex digits of a credential's random part.
const SECRET_HEX: usize = 48;

/// A new participant credential for `room`: `<room>.<48 hex digits>` (192 random bits). The
/// room part lets any replica find the owner of the credential's room.
pub(crate) fn credential(room: &str) -> String {
    format!(
        "{room}.{}",
        hex::encode(rand::random::<[u8; SECRET_HEX / 2]>())
    )
}

/// The room a credential of [`credential`]'s form names (room names may contain dots; the
/// random part may not).
pub(crate) fn credential_room(token: &str) -> Option<&str> {
    let (room, secret) = token.rsplit_once('.')?;
    (secret.len() == SECRET_HEX
        && secret.bytes().all(|b| b.is_ascii_hexdigit())
        && crate::server::valid_room_name(room))
    .then_some(room)
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], what: &str, ip: &str) -> Option<HmacSha256> {
    let mut m = HmacSha256::new_from_slice(secret).ok()?;
    m.update(b"satsuma-forward\n");
    m.update(what.as_bytes());
    m.update(b"\n");
    m.update(ip.as_bytes());
    Some(m)
}

/// The proof a replica attaches when it forwards a request about `what` (the room for a
/// WebSocket, the path for an SFU call) for a client at `ip`.
pub(crate) fn proof(secret: &[u8], what: &str, ip: &str) -> String {
    mac(secret, what, ip)
        .map(|m| hex::encode(m.finalize().into_bytes()))
        .unwrap_or_default()
}

/// The client's address a valid forwarding proof vouches for, if the request carries one.
pub(crate) fn forwarded_client(secret: &[u8], what: &str, headers: &HeaderMap) -> Option<IpAddr> {
    let ip = headers.get(HEADER_CLIENT)?.to_str().ok()?;
    let given = hex::decode(headers.get(HEADER_PROOF)?.to_str().ok()?).ok()?;
    mac(secret, what, ip)?.verify_slice(&given).ok()?;
    ip.parse().ok()
}

/// `http(s)://host[:port]` → `ws(s)://host[:port]/ws/{room}`.
fn owner_ws_url(owner: &str, room: &str) -> Option<String> {
    let owner = owner.trim_end_matches('/');
    let rest = owner
        .strip_prefix("http://")
        .map(|r| format!("ws://{r}"))
        .or_else(|| owner.strip_prefix("https://").map(|r| format!("wss://{r}")))
        .or_else(|| {
            (owner.starts_with("ws://") || owner.starts_with("wss://")).then(|| owner.to_owned())
        })?;
    Some(format!("{rest}/ws/{room}"))
}

fn to_upstream(m: Message) -> Option<tungstenite::Message> {
    Some(match m {
        Message::Text(t) => tungstenite::Message::Text(t.as_str().into()),
        Message::Binary(b) => tungstenite::Message::Binary(b),
        Message::Ping(b) => tungstenite::Message::Ping(b),
        Message::Pong(_) | Message::Close(_) => return None,
    })
}

/// Queues a close for the client (code and reason as the owner sent them).
fn close_client(tx: &SendQueue, code: u16, reason: &str) {
    let _ = tx.push(Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    })));
}

/// The pipes of a replica: on shutdown each closes its client with 1001 (the client resumes
/// through another replica), as the hub closes the connections it serves itself.
#[derive(Debug)]
pub(crate) struct Pipes {
    closing: tokio::sync::watch::Sender<bool>,
}

impl Default for Pipes {
    fn default() -> Self {
        Self {
            closing: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Pipes {
    /// Closes every pipe (server shutdown).
    pub(crate) fn close_all(&self) {
        self.closing.send_replace(true);
    }
}

/// A client to serve through the owner of its room.
pub(crate) struct Through {
    /// The room.
    pub(crate) room: String,
    /// The owner's URL (`--replica-url` of the owning replica).
    pub(crate) owner: String,
    /// The client's address (the owner counts the connection under it).
    pub(crate) client_ip: IpAddr,
    /// The client's hello, as it sent it.
    pub(crate) hello: String,
}

/// Serves a client whose room another replica owns: connects to the owner, sends it the hello
/// and pipes frames until either side closes. `tx` is the client connection's send queue.
pub(crate) async fn pipe(
    app: &Arc<App>,
    through: Through,
    stream: &mut SplitStream<WebSocket>,
    tx: &SendQueue,
    writer: &mut tokio::task::JoinHandle<()>,
) {
    let Through {
        room,
        owner,
        client_ip,
        hello,
    } = through;
    let (room, owner) = (room.as_str(), owner.as_str());
    let Some(url) = owner_ws_url(owner, room) else {
        tracing::warn!(room, owner, "the room owner's URL is not http(s) or ws(s)");
        close_client(tx, TRY_AGAIN_LATER, "room owner unreachable; retry");
        return;
    };
    let Ok(mut request) = url.as_str().into_client_request() else {
        close_client(tx, TRY_AGAIN_LATER, "room owner unreachable; retry");
        return;
    };
    let ip = client_ip.to_string();
    let secret = app.config.jwt_secret.as_bytes();
    if let (Ok(ipv), Ok(pv)) = (
        HeaderValue::from_str(&ip),
        HeaderValue::from_str(&proof(secret, room, &ip)),
    ) {
        request.headers_mut().insert(HEADER_CLIENT, ipv);
        request.headers_mut().insert(HEADER_PROOF, pv);
    }
    let mut cfg = tungstenite::protocol::WebSocketConfig::default();
    let hard = app.config.max_text_bytes.max(app.config.max_binary_bytes) + (64 << 10);
    cfg.max_message_size = Some(hard);
    cfg.max_frame_size = Some(hard);
    let connect = tokio_tungstenite::connect_async_with_config(request, Some(cfg), true);
    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok((ws, _))) => ws,
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_owned(),
            };
            tracing::info!(room, owner, error = %why, "cannot reach the room's owner");
            app.metrics.error("forward_unreachable");
            close_client(tx, TRY_AGAIN_LATER, "room owner unreachable; retry");
            return;
        }
    };
    tracing::debug!(room, owner, "serving a client through the room's owner");
    let mut closing = app.pipes.closing.subscribe();
    if *closing.borrow_and_update() {
        close_client(tx, GOING_AWAY, "coordinator replica shutting down; resume");
        return;
    }
    if upstream
        .send(tungstenite::Message::Text(hello.into()))
        .await
        .is_err()
    {
        close_client(tx, TRY_AGAIN_LATER, "room owner unreachable; retry");
        return;
    }
    loop {
        tokio::select! {
            m = stream.next() => match m {
                Some(Ok(Message::Close(frame))) => {
                    let frame = frame.map(|f| tungstenite::protocol::CloseFrame {
                        code: f.code.into(),
                        reason: f.reason.as_str().into(),
                    });
                    let _ = upstream.send(tungstenite::Message::Close(frame)).await;
                    let _ = tokio::time::timeout(Duration::from_secs(1), upstream.close(None)).await;
                    return;
                }
                Some(Ok(m)) => {
                    if let Some(m) = to_upstream(m)
                        && upstream.send(m).await.is_err()
                    {
                        close_client(tx, GOING_AWAY, "room owner connection lost; resume");
                        return;
                    }
                }
                None | Some(Err(_)) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), upstream.close(None)).await;
                    return;
                }
            },
            m = upstream.next() => match m {
                Some(Ok(tungstenite::Message::Text(t))) => {
                    if !tx.push(Message::Text(t.as_str().into())) {
                        close_client(tx, crate::protocol::close::SLOW_CONSUMER,
                            "send budget exceeded: not reading fast enough; resume");
                        let _ = tokio::time::timeout(Duration::from_secs(1), upstream.close(None)).await;
                        return;
                    }
                }
                Some(Ok(tungstenite::Message::Binary(b))) => {
                    if !tx.push(Message::Binary(b)) {
                        close_client(tx, crate::protocol::close::SLOW_CONSUMER,
                            "send budget exceeded: not reading fast enough; resume");
                        let _ = tokio::time::timeout(Duration::from_secs(1), upstream.close(None)).await;
                        return;
                    }
                }
                Some(Ok(tungstenite::Message::Close(frame))) => {
                    match frame {
                        Some(f) => close_client(tx, f.code.into(), f.reason.as_str()),
                        None => close_client(tx, GOING_AWAY, "room owner closed; resume"),
                    }
                    return;
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => {
                    close_client(tx, GOING_AWAY, "room owner connection lost; resume");
                    return;
                }
            },
            _ = &mut *writer => {
                let _ = tokio::time::timeout(Duration::from_secs(1), upstream.close(None)).await;
                return;
            }
            _ = closing.changed() => {
                close_client(tx, GOING_AWAY, "coordinator replica shutting down; resume");
                let _ = tokio::time::timeout(Duration::from_secs(1), upstream.close(None)).await;
                return;
            }
        }
    }
}

fn http_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .unwrap_or_default()
    })
}

/// Middleware of the `/sfu` routes: a call with a credential this replica does not know, for
/// a room another replica owns, is forwarded to that owner. Everything else goes on here.
pub(crate) async fn sfu_middleware(
    State(app): State<Arc<App>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    req: Request<Body>,
    next: Next,
) -> Response {
    if !app.hub.store().durable() {
        return next.run(req).await;
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let secret = app.config.jwt_secret.as_bytes();
    if forwarded_client(secret, &path, req.headers()).is_some() {
        // Forwarded by a replica that thought this one owns the room: never again.
        return next.run(req).await;
    }
    let Some(token) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
    else {
        return next.run(req).await;
    };
    if app.hub.credential(&token).is_some() {
        return next.run(req).await;
    }
    let Some(room) = credential_room(&token).map(str::to_owned) else {
        return next.run(req).await;
    };
    let store = app.hub.store().clone();
    let owner = tokio::task::spawn_blocking(move || store.owner_url(&room)).await;
    let owner = match owner {
        Ok(Ok(Some(url))) => url,
        // Not owned elsewhere (or unknown): answered here (401 for an unknown credential).
        _ => return next.run(req).await,
    };
    let ip = crate::server::client_ip(peer, req.headers(), app.config.budgets.trust_forwarded_for)
        .to_string();
    let method = req.method().clone();
    let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
    let limit = app.config.sfu_max_body_bytes;
    let Ok(body) = axum::body::to_bytes(req.into_body(), limit).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response();
    };
    let url = format!("{}{path}", owner.trim_end_matches('/'));
    let mut out = http_client()
        .request(method, &url)
        .bearer_auth(&token)
        .header(HEADER_CLIENT, &ip)
        .header(HEADER_PROOF, proof(secret, &path, &ip))
        .body(body);
    if let Some(ct) = content_type {
        out = out.header(header::CONTENT_TYPE, ct);
    }
    match out.send().await {
        Ok(resp) => {
            let status = resp.status();
            let ct = resp.headers().get(header::CONTENT_TYPE).cloned();
            let body = resp.bytes().await.unwrap_or_default();
            let mut r = (status, body).into_response();
            if let Some(ct) = ct {
                r.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            r
        }
        Err(e) => {
            tracing::info!(owner, error = %e, "cannot forward an SFU call to the room's owner");
            app.metrics.error("forward_unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(ErrorBody {
                    error_code: api_error_code::OWNER_UNREACHABLE.to_owned(),
                    error_description: "the replica serving this room cannot be reached; retry"
                        .to_owned(),
                }),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_credential_names_its_room() {
        let c = credential("team.daily-1");
        assert_eq!(credential_room(&c), Some("team.daily-1"));
        assert_ne!(credential("r"), credential("r"));
        // Not of the form: no room.
        assert_eq!(credential_room(&"ab".repeat(24)), None);
        assert_eq!(credential_room("r.xyz"), None);
        assert_eq!(
            credential_room(&format!("bad/room.{}", "a".repeat(48))),
            None
        );
        assert_eq!(credential_room(&format!(".{}", "a".repeat(48))), None);
    }

    #[test]
    fn a_forwarding_proof_binds_the_address_and_what_to_the_secret() {
        let mut h = HeaderMap::new();
        h.insert(HEADER_CLIENT, HeaderValue::from_static("203.0.113.7"));
        let p = proof(b"secret", "room1", "203.0.113.7");
        h.insert(HEADER_PROOF, HeaderValue::from_str(&p).unwrap());
        assert_eq!(
            forwarded_client(b"secret", "room1", &h),
            Some("203.0.113.7".parse().unwrap())
        );
        assert_eq!(forwarded_client(b"other", "room1", &h), None);
        assert_eq!(forwarded_client(b"secret", "room2", &h), None);
        h.insert(HEADER_CLIENT, HeaderValue::from_static("203.0.113.8"));
        assert_eq!(forwarded_client(b"secret", "room1", &h), None);
        assert_eq!(
            forwarded_client(b"secret", "room1", &HeaderMap::new()),
            None
        );
    }

    #[test]
    fn owner_urls_become_websocket_urls() {
        assert_eq!(
            owner_ws_url("http://10.0.0.5:8080/", "r").as_deref(),
            Some("ws://10.0.0.5:8080/ws/r")
        );
        assert_eq!(
            owner_ws_url("https://a.example", "r").as_deref(),
            Some("wss://a.example/ws/r")
        );
        assert_eq!(owner_ws_url("ftp://x", "r"), None);
    }
}
