//! The WebSocket driver: one reader and one writer task per connection.
//!
//! The reader enforces the per-connection limits (hello deadline, frame sizes, a message rate
//! and a byte rate, both token buckets that also cover WebSocket pings, consecutive refusals),
//! parses frames and feeds them to the hub; the writer drains the connection's queue onto the
//! socket. The queue is bounded in bytes ([`SendQueue`]): a connection that holds its budget
//! is closed with 4430 and its queue freed at once, even while the socket does not drain.
//! Resume replays stream from the room's log as the socket drains. Nothing here decides room
//! semantics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use satsuma_common::TokenBucket;
use tokio::sync::{mpsc, oneshot};

use crate::auth::unix_now;
use crate::hub::{
    ConnHandle, HubJoinError, HubResumeError, IpSlot, Outbound, RoomSlot, SendQueue, encode_reply,
    frame_len,
};
use crate::metrics::{CloseReason, DropReason};
use crate::protocol::{self, ClientMessage, PROTOCOL_VERSION, ServerMessage, close, error_code};
use crate::room::{Input, JoinRequest, ResumeError};
use crate::server::App;
use crate::store::StoreError;

/// How long a killed connection's writer may still try to finish the frame it was writing and
/// send its close frame (the peer is not reading; its queue is already freed).
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Close code of a hello the room store could not serve now (RFC 6455 "try again later"):
/// another replica owns the room (its lease has not lapsed yet) or the store has no quorum.
/// The client retries (a resume stays a resume).
const TRY_AGAIN_LATER: u16 = 1013;

/// The close reason for a store refusal.
fn store_refusal(e: &crate::store::StoreError) -> &'static str {
    match e {
        StoreError::Owned { .. } => "room is served by another coordinator replica; retry",
        StoreError::Fenced => "room moved to another coordinator replica; retry",
        StoreError::Unavailable(_) => "room store unavailable; retry",
        StoreError::Corrupt(_) => "stored room cannot be read",
    }
}

/// Bytes of the log one replay step reads under the room lock.
const REPLAY_CHUNK: usize = 64 << 10;

struct Session {
    slot: Arc<RoomSlot>,
    id: u64,
    conn_id: u64,
}

/// What the hello led to.
enum Hello {
    /// The client is a participant of a room this replica serves.
    Served(Session),
    /// Another replica owns the room: serve the client through it ([`crate::forward`]).
    Forward { owner: String, hello: String },
    /// Refused (the close is queued) or gone.
    Done,
}

/// Serves one upgraded WebSocket for room `room`; `ip_slot` is its place under the per-IP cap,
/// `client_ip` the client's address; `forwarded`: another replica forwards the client (it is
/// never forwarded again).
pub(crate) async fn serve(
    socket: WebSocket,
    room: String,
    app: Arc<App>,
    ip_slot: IpSlot,
    client_ip: std::net::IpAddr,
    forwarded: bool,
) {
    let _ip_slot = ip_slot;
    app.metrics.connections.inc();
    let (sink, mut stream) = socket.split();
    let (tx, rx) = SendQueue::new(app.config.budgets.send_budget_bytes);
    let (kill_tx, kill_rx) = oneshot::channel();
    let mut writer = tokio::spawn(write_loop(sink, rx, kill_rx, tx.clone()));
    let conn_id = app.hub.next_conn_id();
    let conn = ConnHandle {
        conn_id,
        queue: tx.clone(),
        kill: kill_tx,
    };

    let outcome = tokio::select! {
        s = hello(&app, &room, &mut stream, &tx, conn, forwarded) => s,
        _ = &mut writer => Hello::Done,
    };
    match outcome {
        Hello::Served(session) => {
            read_loop(&app, &session, &mut stream, &tx, &mut writer).await;
            app.hub.detach(&session.slot, session.id, session.conn_id);
        }
        Hello::Forward { owner, hello } => {
            let through = crate::forward::Through {
                room: room.clone(),
                owner,
                client_ip,
                hello,
            };
            crate::forward::pipe(&app, through, &mut stream, &tx, &mut writer).await;
        }
        Hello::Done => {}
    }
    drop(tx);
    // Let the writer flush a close frame, but never hang on a dead peer. Meanwhile read and
    // discard what the peer still sends (a socket dropped with unread input is reset, and
    // the reset can destroy the close frame before the peer reads it).
    let flush = async {
        if !writer.is_finished() {
            let _ = (&mut writer).await;
        }
    };
    let _ = tokio::time::timeout(
        KILL_GRACE + Duration::from_secs(1),
        futures_util::future::join(flush, drain_after_close(&mut stream)),
    )
    .await;
    writer.abort();
    app.metrics.connections.dec();
}

async fn close_with(tx: &SendQueue, app: &App, code: u16, reason: &'static str) {
    app.metrics.error(&code.to_string());
    let _ = tx.push_control(Outbound::Close(code, reason));
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

/// Queues a direct reply; false if the connection holds its send budget (the caller closes it).
async fn reply(tx: &SendQueue, msg: &ServerMessage) -> bool {
    tx.push(encode_reply(msg))
}

async fn hello(
    app: &Arc<App>,
    room: &str,
    stream: &mut SplitStream<WebSocket>,
    tx: &SendQueue,
    conn: ConnHandle,
    forwarded: bool,
) -> Hello {
    let first = tokio::time::timeout(app.config.hello_timeout, stream.next()).await;
    let text = match first {
        Err(_) => {
            close_with(tx, app, close::BAD_HELLO, "no hello in time").await;
            return Hello::Done;
        }
        Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return Hello::Done,
        Ok(Some(Ok(Message::Text(t)))) if t.len() <= app.config.max_text_bytes => t,
        Ok(Some(Ok(_))) => {
            close_with(tx, app, close::BAD_HELLO, "first message must be a hello").await;
            return Hello::Done;
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
        return Hello::Done;
    };
    // A test-only field: without test hooks it is refused like any unknown field.
    if test_visible_only_to.is_some() && !app.config.test_hooks {
        close_with(tx, app, close::BAD_HELLO, "first message must be a hello").await;
        return Hello::Done;
    }
    if v != PROTOCOL_VERSION {
        close_with(
            tx,
            app,
            close::UNSUPPORTED_VERSION,
            "unsupported protocol version",
        )
        .await;
        return Hello::Done;
    }
    let conn_id = conn.conn_id;
    match (token, resume) {
        (_, Some(r)) => {
            match app
                .hub
                .resume(room, r.participant_id, &r.resume_token, r.last_seq, conn)
            {
                Ok(slot) => Hello::Served(Session {
                    slot,
                    id: r.participant_id,
                    conn_id,
                }),
                Err(HubResumeError::Store(StoreError::Owned {
                    url: Some(owner), ..
                })) if !forwarded => Hello::Forward {
                    owner,
                    hello: text.to_string(),
                },
                Err(HubResumeError::Store(e)) => {
                    close_with(tx, app, TRY_AGAIN_LATER, store_refusal(&e)).await;
                    Hello::Done
                }
                Err(e) => {
                    let reason = match e {
                        HubResumeError::Store(_) => "room store refused",
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
                    Hello::Done
                }
            }
        }
        (Some(token), None) => {
            let claims = match app.verify_join_token(&token, room) {
                Ok(c) => c,
                Err(e) => {
                    close_with(tx, app, close::UNAUTHORIZED, e.reason()).await;
                    return Hello::Done;
                }
            };
            let req = JoinRequest {
                name: claims.display_name(),
                permissions: claims.permissions(),
                recorder: claims.is_recorder(),
                subject: claims.sub,
                resume_token: crate::forward::credential(room),
                wall_ms: unix_now().saturating_mul(1000),
                visible_only_to: test_visible_only_to,
            };
            match app.hub.join(room, req, conn) {
                Ok((slot, id)) => Hello::Served(Session { slot, id, conn_id }),
                Err(HubJoinError::Store(StoreError::Owned {
                    url: Some(owner), ..
                })) if !forwarded => Hello::Forward {
                    owner,
                    hello: text.to_string(),
                },
                Err(HubJoinError::Store(e)) => {
                    close_with(tx, app, TRY_AGAIN_LATER, store_refusal(&e)).await;
                    Hello::Done
                }
                Err(HubJoinError::TooManyRooms) => {
                    close_with(tx, app, close::ROOM_FULL, "too many rooms on this server").await;
                    Hello::Done
                }
                Err(HubJoinError::Room(e)) => {
                    let reason = match e {
                        crate::room::JoinError::Locked => "room is locked",
                        crate::room::JoinError::Full => "room is full",
                        crate::room::JoinError::Removed => "removed from this room",
                    };
                    close_with(tx, app, e.close_code(), reason).await;
                    Hello::Done
                }
            }
        }
        (None, None) => {
            close_with(tx, app, close::BAD_HELLO, "hello needs a token or resume").await;
            Hello::Done
        }
    }
}

async fn read_loop(
    app: &Arc<App>,
    s: &Session,
    stream: &mut SplitStream<WebSocket>,
    tx: &SendQueue,
    writer: &mut tokio::task::JoinHandle<()>,
) {
    let cfg = &app.config;
    let now = Instant::now();
    let mut rate = TokenBucket::new(
        f64::from(cfg.rate_per_second),
        f64::from(cfg.rate_burst),
        now,
    );
    let mut bytes = TokenBucket::new(
        cfg.budgets.byte_rate_per_second as f64,
        cfg.budgets.byte_rate_burst as f64,
        now,
    );
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
                    app.metrics.close(CloseReason::FrameTooBig);
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
        // Every frame, pings and pongs included, takes one message token and its size in
        // byte tokens (a ping the server answers is traffic too).
        let size = frame_len(&msg);
        let now = Instant::now();
        let over = if !rate.try_take(now) {
            Some(DropReason::MessageRate)
        } else if !bytes.try_take_n(now, size as u64) {
            Some(DropReason::ByteRate)
        } else {
            None
        };
        let (input, kind) = match msg {
            Message::Close(_) => return,
            Message::Pong(_) | Message::Ping(_) => {
                if over.is_some() {
                    app.metrics.drop_message(DropReason::Ping);
                    dropped_in_a_row += 1;
                    if dropped_in_a_row >= cfg.flood_close_after {
                        app.metrics.close(CloseReason::Flood);
                        close_with(tx, app, close::FLOOD, "message flood").await;
                        drain_after_close(stream).await;
                        return;
                    }
                } else {
                    app.hub.touch(&s.slot, s.id, s.conn_id);
                }
                continue;
            }
            Message::Text(t) => (Frame::Text(t), "text"),
            Message::Binary(b) => (Frame::Binary(b), "binary"),
        };
        if let Some(reason) = over {
            dropped_in_a_row += 1;
            app.metrics.error(error_code::RATE_LIMITED);
            app.metrics.drop_message(reason);
            if dropped_in_a_row >= cfg.flood_close_after {
                app.metrics.close(CloseReason::Flood);
                close_with(tx, app, close::FLOOD, "message flood").await;
                drain_after_close(stream).await;
                return;
            }
            if dropped_in_a_row == 1 {
                let what = match reason {
                    DropReason::ByteRate => "over the byte rate limit; message dropped",
                    _ => "over the rate limit; message dropped",
                };
                if !reply(tx, &refusal(error_code::RATE_LIMITED, what, None)).await {
                    return slow(app, tx);
                }
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
                if !reply(tx, &err).await {
                    return slow(app, tx);
                }
                refused_in_a_row += 1;
                if refused_in_a_row >= cfg.max_consecutive_errors {
                    app.metrics.close(CloseReason::Refusals);
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
                app.metrics.close(CloseReason::Refusals);
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
            // The room closed this connection (leave, removal, replaced, send budget): let
            // the writer flush its close frame.
            let _ = (&mut *writer).await;
            return;
        }
    }
}

/// A direct reply did not fit the send budget: the connection stopped reading. Closes it
/// (4430); the writer gives up on the socket within [`KILL_GRACE`].
fn slow(app: &App, tx: &SendQueue) {
    app.metrics.close(CloseReason::SendBudget);
    let _ = tx.push_control(Outbound::Close(
        close::SLOW_CONSUMER,
        "send budget exceeded: not reading fast enough; resume",
    ));
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
            match ClientMessage::decode(t.as_str()) {
                Ok(m) => {
                    app.metrics
                        .messages_in
                        .with_label_values(&[m.type_name()])
                        .inc();
                    Ok(Input::Message(m))
                }
                Err(e) => Err(Box::new(refusal(e.code(), &e.to_string(), e.refused()))),
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

/// What the writer does next.
enum Step {
    Go,
    /// Stop: the socket failed or a close frame went out.
    Stop,
    /// Killed with this close: the queue is freed, the close is sent within the grace.
    Killed(u16, &'static str),
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    mut kill: oneshot::Receiver<(u16, &'static str)>,
    queue: SendQueue,
) {
    let mut kill_open = true;
    let killed = loop {
        let next = tokio::select! {
            biased;
            k = &mut kill, if kill_open => match k {
                Ok((code, reason)) => break Some((code, reason)),
                Err(_) => {
                    // The room dropped its handle without killing us: keep draining.
                    kill_open = false;
                    continue;
                }
            },
            o = rx.recv() => match o {
                Some(o) => o,
                None => break None,
            },
        };
        let step = match next {
            Outbound::Frame(m) => {
                let len = frame_len(&m);
                let step = send_or_kill(&mut sink, m, &mut kill, &mut kill_open).await;
                queue.sent(len);
                step
            }
            Outbound::Replay {
                slot,
                id,
                after,
                until,
            } => {
                replay(
                    &mut sink,
                    &slot,
                    id,
                    after,
                    until,
                    &mut kill,
                    &mut kill_open,
                )
                .await
            }
            Outbound::Close(code, reason) => Step::Killed(code, reason),
        };
        match step {
            Step::Go => {}
            Step::Stop => return,
            Step::Killed(code, reason) => break Some((code, reason)),
        }
    };
    // Free everything still queued at once, whatever the socket does.
    rx.close();
    while let Ok(o) = rx.try_recv() {
        if let Outbound::Frame(m) = o {
            queue.sent(frame_len(&m));
        }
    }
    drop(rx);
    let finish = async {
        if let Some((code, reason)) = killed {
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                })))
                .await;
        }
        let _ = sink.close().await;
    };
    let _ = tokio::time::timeout(KILL_GRACE, finish).await;
}

/// Writes one frame unless a kill arrives first.
async fn send_or_kill(
    sink: &mut SplitSink<WebSocket, Message>,
    m: Message,
    kill: &mut oneshot::Receiver<(u16, &'static str)>,
    kill_open: &mut bool,
) -> Step {
    tokio::select! {
        r = sink.send(m) => if r.is_err() { Step::Stop } else { Step::Go },
        k = &mut *kill, if *kill_open => match k {
            Ok((code, reason)) => Step::Killed(code, reason),
            Err(_) => {
                *kill_open = false;
                Step::Go
            }
        },
    }
}

/// Streams a resume replay from the room's log, a chunk at a time, as the socket drains.
async fn replay(
    sink: &mut SplitSink<WebSocket, Message>,
    slot: &std::sync::Weak<RoomSlot>,
    id: u64,
    mut after: u64,
    until: u64,
    kill: &mut oneshot::Receiver<(u16, &'static str)>,
    kill_open: &mut bool,
) -> Step {
    while after < until {
        let Some(slot) = slot.upgrade() else {
            return Step::Killed(close::RESUME_FAILED, "room is gone; join fresh");
        };
        let chunk = slot
            .state
            .lock()
            .room
            .replay_chunk(id, after, until, REPLAY_CHUNK);
        drop(slot);
        let (entries, next) = match chunk {
            Ok(c) => c,
            Err(_) => {
                return Step::Killed(
                    close::RESUME_FAILED,
                    "missed entries are no longer retained; join fresh",
                );
            }
        };
        for e in entries {
            match send_or_kill(sink, crate::hub::wire_message(&e.wire), kill, kill_open).await {
                Step::Go => {}
                other => return other,
            }
        }
        after = next;
    }
    Step::Go
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn refusals_distinguish_unknown_types() {
        // What `parse` replies to a refused text frame.
        let code = |text: &str| {
            let e = ClientMessage::decode(text).unwrap_err();
            match refusal(e.code(), &e.to_string(), e.refused()) {
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
