//! A Janus VideoRoom client over Janus's HTTP transport, for native str0m bots.
//!
//! One Janus session per worker process, one plugin handle per peer connection, events collected by a
//! long-poll task (`GET /janus/<session>?maxev=50`) and matched to waiting requests by transaction.
//! Publishers use `joinandconfigure` with the bot's offer; subscribers `join` with a list of feeds,
//! get Janus's offer, and `start` with the bot's answer. All SDP carries its candidates (no trickle).
//! The plain-JSON helpers ([`events_of`], [`plugin_data`], [`attached_streams`]) hold the parsing
//! and are unit-tested on canned Janus replies; [`JanusClient`] is the thin I/O around them.

use std::time::Duration;

use satsuma_bot::TrackSpec;
use satsuma_bot::participant::PullSpec;
use serde_json::{Value, json};
use thiserror::Error;
use tokio::task::JoinHandle;
use tracing::debug;
use transactions::Waiters;

use satsuma_bot::peer::{Peer, PeerError};

/// Errors talking to Janus.
#[derive(Debug, Error)]
pub enum JanusError {
    /// HTTP failed.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// Janus answered with an error.
    #[error("janus error {code}: {reason}")]
    Janus {
        /// Janus or plugin error code.
        code: i64,
        /// Reason text.
        reason: String,
    },
    /// The reply does not have the expected shape.
    #[error("unexpected reply: {0}")]
    Protocol(String),
    /// No event arrived for a request in time.
    #[error("no event for transaction {0} in time")]
    Timeout(String),
    /// The media side failed.
    #[error(transparent)]
    Peer(#[from] PeerError),
}

/// A stream Janus put in a subscriber offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedStream {
    /// Mid in Janus's offer.
    pub mid: String,
    /// Publisher feed id.
    pub feed: u64,
    /// "audio" or "video".
    pub kind: String,
}

/// The events in a long-poll reply (Janus returns an array with `maxev`, a single object without).
pub fn events_of(reply: Value) -> Vec<Value> {
    match reply {
        Value::Array(v) => v,
        Value::Object(_) => vec![reply],
        _ => Vec::new(),
    }
}

/// Error of a top-level Janus reply (`{"janus":"error","error":{code,reason}}`), if any.
pub fn janus_error(reply: &Value) -> Option<JanusError> {
    if reply.get("janus").and_then(Value::as_str) != Some("error") {
        return None;
    }
    let err = reply.get("error");
    Some(JanusError::Janus {
        code: err
            .and_then(|e| e.get("code"))
            .and_then(Value::as_i64)
            .unwrap_or(0),
        reason: err
            .and_then(|e| e.get("reason"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
    })
}

/// The plugin's `data` of a `success` or `event` reply; plugin errors become [`JanusError::Janus`].
pub fn plugin_data(reply: &Value) -> Result<&Value, JanusError> {
    if let Some(e) = janus_error(reply) {
        return Err(e);
    }
    let data = reply
        .get("plugindata")
        .and_then(|p| p.get("data"))
        .ok_or_else(|| JanusError::Protocol(format!("no plugindata in {reply}")))?;
    if let Some(reason) = data.get("error").and_then(Value::as_str) {
        return Err(JanusError::Janus {
            code: data.get("error_code").and_then(Value::as_i64).unwrap_or(0),
            reason: reason.to_owned(),
        });
    }
    Ok(data)
}

/// The SDP of a reply's `jsep`, if it has the expected type.
pub fn jsep_sdp(reply: &Value, kind: &str) -> Result<String, JanusError> {
    let jsep = reply
        .get("jsep")
        .ok_or_else(|| JanusError::Protocol("reply carries no jsep".into()))?;
    if jsep.get("type").and_then(Value::as_str) != Some(kind) {
        return Err(JanusError::Protocol(format!(
            "expected a jsep {kind}, got {jsep}"
        )));
    }
    jsep.get("sdp")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| JanusError::Protocol("jsep without sdp".into()))
}

/// The streams of a VideoRoom `attached` event.
pub fn attached_streams(data: &Value) -> Result<Vec<AttachedStream>, JanusError> {
    if data.get("videoroom").and_then(Value::as_str) != Some("attached") {
        return Err(JanusError::Protocol(format!(
            "expected attached, got {data}"
        )));
    }
    let streams = data
        .get("streams")
        .and_then(Value::as_array)
        .ok_or_else(|| JanusError::Protocol("attached without streams".into()))?;
    let mut out = Vec::new();
    for s in streams {
        let (Some(mid), Some(feed), Some(kind)) = (
            s.get("mid").and_then(Value::as_str),
            s.get("feed_id").and_then(Value::as_u64),
            s.get("type").and_then(Value::as_str),
        ) else {
            continue;
        };
        if kind == "data" {
            continue;
        }
        out.push(AttachedStream {
            mid: mid.to_owned(),
            feed,
            kind: kind.to_owned(),
        });
    }
    Ok(out)
}

mod transactions {
    //! Transaction → waiter map shared by requesters and the long-poll task.
    use std::collections::HashMap;
    use std::sync::Arc;

    use serde_json::Value;
    use tokio::sync::oneshot;

    /// Pending transactions.
    #[derive(Debug, Default, Clone)]
    pub(crate) struct Waiters(Arc<std::sync::Mutex<HashMap<String, oneshot::Sender<Value>>>>);

    impl Waiters {
        pub(crate) fn register(&self, tx: &str) -> oneshot::Receiver<Value> {
            let (s, r) = oneshot::channel();
            if let Ok(mut m) = self.0.lock() {
                m.insert(tx.to_owned(), s);
            }
            r
        }

        pub(crate) fn forget(&self, tx: &str) {
            if let Ok(mut m) = self.0.lock() {
                m.remove(tx);
            }
        }

        /// Deliver an event; returns whether someone waited for it.
        pub(crate) fn deliver(&self, event: Value) -> bool {
            let Some(tx) = event.get("transaction").and_then(Value::as_str) else {
                return false;
            };
            let waiter = self.0.lock().ok().and_then(|mut m| m.remove(tx));
            match waiter {
                Some(w) => w.send(event).is_ok(),
                None => false,
            }
        }
    }
}

/// One Janus session over HTTP with its long-poll task.
#[derive(Debug)]
pub struct JanusClient {
    http: reqwest::Client,
    base: String,
    session: u64,
    waiters: Waiters,
    poller: JoinHandle<()>,
    event_timeout: Duration,
}

impl Drop for JanusClient {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

fn transaction() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl JanusClient {
    /// Create a session at `base` (e.g. `http://127.0.0.1:18088/janus`) and start long-polling.
    pub async fn connect(base: &str) -> Result<Self, JanusError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(64)
            .timeout(Duration::from_secs(60))
            .build()?;
        let base = base.trim_end_matches('/').to_owned();
        let reply: Value = http
            .post(&base)
            .json(&json!({"janus": "create", "transaction": transaction()}))
            .send()
            .await?
            .json()
            .await?;
        if let Some(e) = janus_error(&reply) {
            return Err(e);
        }
        let session = reply
            .get("data")
            .and_then(|d| d.get("id"))
            .and_then(Value::as_u64)
            .ok_or_else(|| JanusError::Protocol(format!("create: {reply}")))?;
        let waiters = Waiters::default();
        let poller = tokio::spawn(long_poll(
            http.clone(),
            format!("{base}/{session}?maxev=50"),
            waiters.clone(),
        ));
        Ok(Self {
            http,
            base,
            session,
            waiters,
            poller,
            event_timeout: Duration::from_secs(20),
        })
    }

    async fn post(&self, path: &str, mut body: Value) -> Result<(String, Value), JanusError> {
        let tx = transaction();
        body["transaction"] = json!(tx);
        let reply: Value = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        if let Some(e) = janus_error(&reply) {
            return Err(e);
        }
        Ok((tx, reply))
    }

    /// Attach a VideoRoom handle; returns its id.
    pub async fn attach(&self) -> Result<u64, JanusError> {
        let (_, reply) = self
            .post(
                &format!("/{}", self.session),
                json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
            )
            .await?;
        reply
            .get("data")
            .and_then(|d| d.get("id"))
            .and_then(Value::as_u64)
            .ok_or_else(|| JanusError::Protocol(format!("attach: {reply}")))
    }

    /// Send a plugin message; returns the synchronous `success` or the asynchronous `event` reply.
    async fn message(
        &self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> Result<Value, JanusError> {
        let tx = transaction();
        let rx = self.waiters.register(&tx);
        let mut msg = json!({"janus": "message", "transaction": tx, "body": body});
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        let sent = self
            .http
            .post(format!("{}/{}/{handle}", self.base, self.session))
            .json(&msg)
            .send()
            .await;
        let reply: Value = match sent {
            Ok(r) => r.json().await?,
            Err(e) => {
                self.waiters.forget(&tx);
                return Err(e.into());
            }
        };
        match reply.get("janus").and_then(Value::as_str) {
            Some("ack") => match tokio::time::timeout(self.event_timeout, rx).await {
                Ok(Ok(event)) => Ok(event),
                _ => {
                    self.waiters.forget(&tx);
                    Err(JanusError::Timeout(tx))
                }
            },
            _ => {
                self.waiters.forget(&tx);
                if let Some(e) = janus_error(&reply) {
                    return Err(e);
                }
                Ok(reply)
            }
        }
    }

    /// Create a VideoRoom room for `publishers` publishers (opus + vp8).
    pub async fn create_room(&self, room: u64, publishers: u32) -> Result<(), JanusError> {
        let handle = self.attach().await?;
        let reply = self
            .message(
                handle,
                json!({"request": "create", "room": room, "publishers": publishers,
                       "audiocodec": "opus", "videocodec": "vp8", "bitrate": 4_000_000,
                       "fir_freq": 0, "notify_joining": false}),
                None,
            )
            .await?;
        plugin_data(&reply)?;
        self.detach(handle).await;
        Ok(())
    }

    /// Publish `tracks` from `peer` in `room`; returns the feed id.
    pub async fn publish(
        &self,
        peer: &Peer,
        room: u64,
        display: &str,
        tracks: Vec<TrackSpec>,
    ) -> Result<u64, JanusError> {
        let handle = self.attach().await?;
        let (offer, _mids) = peer
            .with(move |p, now| p.create_push_offer(now, &tracks))
            .await?
            .map_err(PeerError::from)?;
        let reply = self
            .message(
                handle,
                json!({"request": "joinandconfigure", "ptype": "publisher", "room": room,
                       "display": display, "audio": true, "video": true}),
                Some(json!({"type": "offer", "sdp": offer, "trickle": false})),
            )
            .await?;
        let data = plugin_data(&reply)?;
        let feed = data
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| JanusError::Protocol(format!("joined without id: {data}")))?;
        let answer = jsep_sdp(&reply, "answer")?;
        peer.with(move |p, now| p.accept_answer(now, &answer))
            .await?
            .map_err(PeerError::from)?;
        Ok(feed)
    }

    /// Subscribe `peer` to every stream of `feeds` in `room` (one peer connection).
    pub async fn subscribe(&self, peer: &Peer, room: u64, feeds: &[u64]) -> Result<(), JanusError> {
        let handle = self.attach().await?;
        let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
        let reply = self
            .message(
                handle,
                json!({"request": "join", "ptype": "subscriber", "room": room, "streams": streams}),
                None,
            )
            .await?;
        let data = plugin_data(&reply)?;
        let pulls: Vec<PullSpec> = attached_streams(data)?
            .into_iter()
            .map(|s| PullSpec {
                mid: s.mid,
                remote_session_id: s.feed.to_string(),
                track_name: s.kind,
            })
            .collect();
        let offer = jsep_sdp(&reply, "offer")?;
        let answer = peer
            .with(move |p, now| p.accept_offer(now, &offer, &pulls))
            .await?
            .map_err(PeerError::from)?;
        let reply = self
            .message(
                handle,
                json!({"request": "start", "room": room}),
                Some(json!({"type": "answer", "sdp": answer, "trickle": false})),
            )
            .await?;
        plugin_data(&reply)?;
        Ok(())
    }

    async fn detach(&self, handle: u64) {
        let r = self
            .post(
                &format!("/{}/{handle}", self.session),
                json!({"janus": "detach"}),
            )
            .await;
        if let Err(e) = r {
            debug!("detach {handle}: {e}");
        }
    }

    /// Destroy the session (all handles and peer connections).
    pub async fn destroy(&self) {
        if let Err(e) = self
            .post(&format!("/{}", self.session), json!({"janus": "destroy"}))
            .await
        {
            debug!("destroy session: {e}");
        }
    }
}

async fn long_poll(http: reqwest::Client, url: String, waiters: Waiters) {
    loop {
        let reply = match http.get(&url).send().await {
            Ok(r) => r.json::<Value>().await,
            Err(e) => {
                debug!("janus long-poll: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        match reply {
            Ok(v) => {
                for event in events_of(v) {
                    if !waiters.deliver(event.clone()) {
                        debug!("janus event: {event}");
                    }
                }
            }
            Err(e) => {
                debug!("janus long-poll body: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn attached_event_yields_streams_and_offer() {
        let event = json!({
            "janus": "event", "session_id": 1, "sender": 2, "transaction": "t1",
            "plugindata": {"plugin": "janus.plugin.videoroom", "data": {
                "videoroom": "attached", "room": 1234,
                "streams": [
                    {"type": "audio", "active": true, "mindex": 0, "mid": "0", "ready": false,
                     "send": true, "feed_id": 77, "feed_mid": "0"},
                    {"type": "video", "active": true, "mindex": 1, "mid": "1", "ready": false,
                     "send": true, "feed_id": 77, "feed_mid": "1"},
                    {"type": "data", "mid": "2", "mindex": 2}
                ]}},
            "jsep": {"type": "offer", "sdp": "v=0\r\n"}
        });
        let data = plugin_data(&event).unwrap();
        let streams = attached_streams(data).unwrap();
        assert_eq!(streams.len(), 2);
        assert_eq!(streams[1].mid, "1");
        assert_eq!(streams[1].feed, 77);
        assert_eq!(streams[1].kind, "video");
        assert_eq!(jsep_sdp(&event, "offer").unwrap(), "v=0\r\n");
        assert!(jsep_sdp(&event, "answer").is_err());
    }

    #[test]
    fn plugin_and_core_errors_are_errors() {
        let plugin_err = json!({"janus": "event", "plugindata": {"plugin": "janus.plugin.videoroom",
            "data": {"videoroom": "event", "error_code": 426, "error": "No such room"}}});
        match plugin_data(&plugin_err) {
            Err(JanusError::Janus { code, reason }) => {
                assert_eq!(code, 426);
                assert_eq!(reason, "No such room");
            }
            other => panic!("{other:?}"),
        }
        let core_err =
            json!({"janus": "error", "error": {"code": 458, "reason": "No such session"}});
        assert!(matches!(
            plugin_data(&core_err),
            Err(JanusError::Janus { code: 458, .. })
        ));
        assert!(plugin_data(&json!({"janus": "success"})).is_err());
        assert!(attached_streams(&json!({"videoroom": "joined"})).is_err());
    }

    #[test]
    fn long_poll_replies_are_arrays_or_single_events() {
        assert_eq!(events_of(json!([{"a": 1}, {"b": 2}])).len(), 2);
        assert_eq!(events_of(json!({"janus": "keepalive"})).len(), 1);
        assert!(events_of(json!("junk")).is_empty());
    }

    #[tokio::test]
    async fn waiters_match_by_transaction() {
        let w = Waiters::default();
        let rx = w.register("abc");
        assert!(!w.deliver(json!({"transaction": "other"})));
        assert!(!w.deliver(json!({"no": "transaction"})));
        assert!(w.deliver(json!({"transaction": "abc", "x": 1})));
        assert_eq!(rx.await.unwrap()["x"], 1);
        assert!(!w.deliver(json!({"transaction": "abc"})), "delivered once");
    }
}
