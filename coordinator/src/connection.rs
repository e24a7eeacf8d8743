//! The WebSocket driver: one reader and one writer task per connection.
//!
//! The reader enforces the per-connection limits (hello deadline, frame sizes,
//! token-bucket rate limit, consecutive refusals), parses frames and feeds them
//! to the hub; the writer drains the connection's queue onto the socket. Nothing
//! here decides room semantics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use crate::auth::unix_now;
use crate::hub::{ConnHandle, HubJoinError, HubResumeError, Outbound, RoomSlot, encode_reply};
use crate::protocol::{self, ClientMessage, PROTOCOL_VERSION, ServerMessage, close, error_code};
use crate::room::{Input, JoinRequest, ResumeError};
use crate::server::App;

/// Token bucket: `rate` per second, up to `burst`.
#[derive(Debug, Clone)]
pub(crate) struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub(crate) fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes a token if one is available.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Session {
    slot: Arc<RoomSlot>,
    id: u64,
    conn_id: u64,
}

/// Serves one upgraded WebSocket for room `room`.
pub(crate) async fn serve(socket: WebSocket, room: String, app: Arc<App>) {
    app.metrics.connections.inc();
    let (sink, mut stream) = socket.split();
    let capacity = app.config.replay_window + 1024;
    let (tx, rx) = mpsc::channel(capacity);
    let (kill_tx, kill_rx) = oneshot::channel();
    let mut writer = tokio::spawn(write_loop(sink, rx, kill_rx));
    let conn_id = app.hub.next_conn_id();
    let conn = ConnHandle {
        conn_id,
        tx: tx.clone(),
        kill: kill_tx,
    };

    let session = tokio::select! {
        s = hello(&app, &room, &mut stream, &tx, conn) => s,
        _ = &mut writer => None,
    };
    if let Some(session) = session {
        read_loop(&app, &session, &mut stream, &tx, &mut writer).await;
        app.hub.detach(&session.slot, session.id, session.conn_id);
    }
    drop(tx);
    // Let the writer flush a close frame, but never hang on a dead peer.
    if !writer.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
        writer.abort();
    }
    app.metrics.connections.dec();
}

async fn close_with(tx: &mpsc::Sender<Outbound>, app: &App, code: u16, reason: &'static str) {
    app.metrics.error(&code.to_string());
    let _ = tx.send(Outbound::Close(code, reason)).await;
}

/// After we sent a close frame because of what the peer sent: reads and discards whatever the
/// peer still has in flight until it answers the close (or a second passes). Dropping a socket
/// with unread input makes the kernel reset the connection, and a reset can destroy our close
/// frame and the error notices before the peer reads them.
async fn drain_after_close(stream: &mut SplitStream<WebSocket>) {
    let drain = async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

async fn reply(tx: &mpsc::Sender<Outbound>, msg: &ServerMessage) {
    let _ = tx.send(Outbound::Frame(encode_reply(msg))).await;
}

async fn hello(
    app: &Arc<App>,
    room: &str,
    stream: &mut SplitStream<WebSocket>,
    tx: &mpsc::Sender<Outbound>,
    conn: ConnHandle,
) -> Option<Session> {
    let first = tokio::time::timeout(app.config.hello_timeout, stream.next()).await;
    let text = match first {
        Err(_) => {
            close_with(tx, app, close::BAD_HELLO, "no hello in time").await;
            return None;
        }
        Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return None,
        Ok(Some(Ok(Message::Text(t)))) if t.len() <= app.config.max_text_bytes => t,
        Ok(Some(Ok(_))) => {
            close_with(tx, app, close::BAD_HELLO, "first message must be a hello").await;
            return None;
        }
    };
    app.metrics.messages_in.with_label_values(&["hello"]).inc();
    let Ok(ClientMessage::Hello {
        v,
        token,
        resume,
        test_visible_only_to,
    }) = serde_json::from_str::<ClientMessage>(text.as_str())
    else {
        close_with(tx, app, close::BAD_HELLO, "first message must be a hello").await;
        return None;
    };
    // A test-only field: without test hooks it is refused like any unknown field.
    if test_visible_only_to.is_some() && !app.config.test_hooks {
        close_with(tx, app, close::BAD_HELLO, "first message must be a hello").await;
        return None;
    }
    if v != PROTOCOL_VERSION {
        close_with(
            tx,
            app,
            close::UNSUPPORTED_VERSION,
            "unsupported protocol version",
        )
        .await;
        return None;
    }
    let conn_id = conn.conn_id;
    match (token, resume) {
        (_, Some(r)) => {
            match app
                .hub
                .resume(room, r.participant_id, &r.resume_token, r.last_seq, conn)
            {
                Ok(slot) => Some(Session {
                    slot,
                    id: r.participant_id,
                    conn_id,
                }),
                Err(e) => {
                    let reason = match e {
                        HubResumeError::UnknownRoom => "resume failed: room is gone; join fresh",
                        HubResumeError::Room(ResumeError::UnknownParticipant) => {
                            "resume failed: participant is gone; join fresh"
                        }
                        HubResumeError::Room(ResumeError::BadToken) => {
                            "resume failed: bad resume token"
                        }
                        HubResumeError::Room(ResumeError::FutureSeq { .. }) => {
                            "resume failed: last_seq is ahead of the room"
                        }
                        HubResumeError::Room(ResumeError::Gap { .. }) => {
                            "resume failed: missed entries are no longer retained; join fresh"
                        }
                    };
                    close_with(tx, app, close::RESUME_FAILED, reason).await;
                    None
                }
            }
        }
        (Some(token), None) => {
            let claims = match app.verify_join_token(&token, room) {
                Ok(c) => c,
                Err(e) => {
                    close_with(tx, app, close::UNAUTHORIZED, e.reason()).await;
                    return None;
                }
            };
            let req = JoinRequest {
                name: claims.display_name(),
                permissions: claims.permissions(),
                subject: claims.sub,
                resume_token: hex::encode(rand::random::<[u8; 24]>()),
                wall_ms: unix_now().saturating_mul(1000),
                visible_only_to: test_visible_only_to,
            };
            match app.hub.join(room, req, conn) {
                Ok((slot, id)) => Some(Session { slot, id, conn_id }),
                Err(HubJoinError::TooManyRooms) => {
                    close_with(tx, app, close::ROOM_FULL, "too many rooms on this server").await;
                    None
                }
                Err(HubJoinError::Room(e)) => {
                    let reason = match e {
                        crate::room::JoinError::Locked => "room is locked",
                        crate::room::JoinError::Full => "room is full",
                        crate::room::JoinError::Removed => "removed from this room",
                    };
                    close_with(tx, app, e.close_code(), reason).await;
                    None
                }
            }
        }
        (None, None) => {
            close_with(tx, app, close::BAD_HELLO, "hello needs a token or resume").await;
            None
        }
    }
}

async fn read_loop(
    app: &Arc<App>,
    s: &Session,
    stream: &mut SplitStream<WebSocket>,
    tx: &mpsc::Sender<Outbound>,
    writer: &mut tokio::task::JoinHandle<()>,
) {
    let cfg = &app.config;
    let mut rate = RateLimit::new(cfg.rate_per_second, cfg.rate_burst, Instant::now());
    let mut dropped_in_a_row = 0u32;
    let mut refused_in_a_row = 0u32;
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = &mut *writer => return,
        };
        let msg = match msg {
            None => return,
            Some(Err(e)) => {
                if is_too_big(e) {
                    close_with(
                        tx,
                        app,
                        close::MESSAGE_TOO_BIG,
                        "frame beyond the hard size limit",
                    )
                    .await;
                    // The rest of the frame is still unread: closing the socket now
                    // would reset it before the peer reads the close frame.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                return;
            }
            Some(Ok(m)) => m,
        };
        let (input, kind) = match msg {
            Message::Close(_) => return,
            Message::Pong(_) => continue,
            Message::Ping(_) => {
                app.hub.touch(&s.slot, s.id, s.conn_id);
                continue;
            }
            Message::Text(t) => (Frame::Text(t), "text"),
            Message::Binary(b) => (Frame::Binary(b), "binary"),
        };
        if !rate.allow(Instant::now()) {
            dropped_in_a_row += 1;
            app.metrics.error(error_code::RATE_LIMITED);
            if dropped_in_a_row >= cfg.flood_close_after {
                close_with(tx, app, close::FLOOD, "message flood").await;
                drain_after_close(stream).await;
                return;
            }
            if dropped_in_a_row == 1 {
                reply(
                    tx,
                    &refusal(
                        error_code::RATE_LIMITED,
                        "over the rate limit; message dropped",
                        None,
                    ),
                )
                .await;
            }
            continue;
        }
        dropped_in_a_row = 0;
        let input = match parse(app, input) {
            Ok(i) => i,
            Err(err) => {
                if let ServerMessage::Error { code, .. } = &*err {
                    app.metrics.error(code);
                }
                app.metrics.messages_in.with_label_values(&[kind]).inc();
                reply(tx, &err).await;
                refused_in_a_row += 1;
                if refused_in_a_row >= cfg.max_consecutive_errors {
                    close_with(
                        tx,
                        app,
                        close::PROTOCOL_VIOLATION,
                        "too many refused messages",
                    )
                    .await;
                    drain_after_close(stream).await;
                    return;
                }
                continue;
            }
        };
        let handled = app.hub.handle(&s.slot, s.id, s.conn_id, input);
        if handled.refused {
            refused_in_a_row += 1;
            if refused_in_a_row >= cfg.max_consecutive_errors {
                close_with(
                    tx,
                    app,
                    close::PROTOCOL_VIOLATION,
                    "too many refused messages",
                )
                .await;
                drain_after_close(stream).await;
                return;
            }
        } else {
            refused_in_a_row = 0;
        }
        if handled.detached {
            // The room closed this connection (leave, removal, replaced): let the
            // writer flush its close frame.
            let _ = (&mut *writer).await;
            return;
        }
    }
}

/// Whether a read error is the WebSocket layer's size limit.
fn is_too_big(e: axum::Error) -> bool {
    matches!(
        e.into_inner().downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    )
}

enum Frame {
    Text(axum::extract::ws::Utf8Bytes),
    Binary(bytes::Bytes),
}

fn refusal(code: &str, message: &str, refused: Option<&str>) -> ServerMessage {
    ServerMessage::Error {
        code: code.to_owned(),
        message: message.to_owned(),
        refused: refused.map(str::to_owned),
    }
}

/// Size checks and JSON parsing; errors are the reply to send.
fn parse(app: &App, frame: Frame) -> Result<Input, Box<ServerMessage>> {
    match frame {
        Frame::Text(t) => {
            if t.len() > app.config.max_text_bytes {
                return Err(Box::new(refusal(
                    error_code::TOO_LARGE,
                    &format!(
                        "text frames are limited to {} bytes",
                        app.config.max_text_bytes
                    ),
                    None,
                )));
            }
            match serde_json::from_str::<ClientMessage>(t.as_str()) {
                Ok(m) => {
                    app.metrics
                        .messages_in
                        .with_label_values(&[m.type_name()])
                        .inc();
                    Ok(Input::Message(m))
                }
                Err(e) => Err(Box::new(classify(t.as_str(), &e))),
            }
        }
        Frame::Binary(b) => {
            let name = match b.first() {
                Some(&protocol::KIND_KEY_PACKAGE) => "key_package",
                Some(&protocol::KIND_COMMIT) => "commit",
                _ => "binary",
            };
            app.metrics.messages_in.with_label_values(&[name]).inc();
            if b.len() > app.config.max_binary_bytes {
                return Err(Box::new(refusal(
                    error_code::TOO_LARGE,
                    &format!(
                        "binary frames are limited to {} bytes",
                        app.config.max_binary_bytes
                    ),
                    Some(name),
                )));
            }
            Ok(Input::Binary(b))
        }
    }
}

/// Distinguishes an unknown `type` from other malformed JSON.
fn classify(text: &str, err: &serde_json::Error) -> ServerMessage {
    #[derive(serde::Deserialize)]
    struct Tagged {
        #[serde(rename = "type")]
        ty: String,
    }
    match serde_json::from_str::<Tagged>(text) {
        Ok(Tagged { ty }) if !ClientMessage::TYPES.contains(&ty.as_str()) => {
            let mut shown: String = ty.chars().take(40).collect();
            if shown.len() < ty.len() {
                shown.push('…');
            }
            refusal(
                error_code::UNKNOWN_TYPE,
                &format!("unknown message type {shown:?}"),
                None,
            )
        }
        Ok(Tagged { ty }) => refusal(
            error_code::MALFORMED,
            &err.to_string(),
            ClientMessage::TYPES.iter().find(|t| **t == ty).copied(),
        ),
        Err(_) => refusal(error_code::MALFORMED, &err.to_string(), None),
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    mut kill: oneshot::Receiver<(u16, &'static str)>,
) {
    let mut kill_open = true;
    loop {
        let next = tokio::select! {
            biased;
            k = &mut kill, if kill_open => match k {
                Ok((code, reason)) => Outbound::Close(code, reason),
                Err(_) => {
                    // The room dropped its handle without killing us: keep draining.
                    kill_open = false;
                    continue;
                }
            },
            o = rx.recv() => match o {
                Some(o) => o,
                None => break,
            },
        };
        match next {
            Outbound::Frame(m) => {
                if sink.send(m).await.is_err() {
                    return;
                }
            }
            Outbound::Close(code, reason) => {
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    })))
                    .await;
                let _ = sink.close().await;
                return;
            }
        }
    }
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn rate_limit_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(10, 5, t0);
        assert_eq!((0..8).filter(|_| r.allow(t0)).count(), 5);
        // 10/s: one token per 100 ms.
        assert!(!r.allow(t0 + Duration::from_millis(50)));
        assert!(r.allow(t0 + Duration::from_millis(110)));
        assert!(!r.allow(t0 + Duration::from_millis(120)));
        // Refill is capped at the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..8).filter(|_| r.allow(later)).count(), 5);
    }

    #[test]
    fn refusals_distinguish_unknown_types() {
        let code = |text: &str| {
            let err = serde_json::from_str::<ClientMessage>(text).unwrap_err();
            match classify(text, &err) {
                ServerMessage::Error { code, refused, .. } => (code, refused),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(code(r#"{"type":"warp"}"#), ("unknown_type".into(), None));
        assert_eq!(
            code(r#"{"type":"hand","raised":1}"#),
            ("malformed".into(), Some("hand".into()))
        );
        assert_eq!(code("nope"), ("malformed".into(), None));
        assert_eq!(code(r#"{"kind":"hand"}"#), ("malformed".into(), None));
    }
}
