//! Shared harness: a coordinator on 127.0.0.1 and WebSocket clients speaking its protocol.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use satsuma_coordinator::auth::{Claims, unix_now};
use satsuma_coordinator::protocol::{
    ClientMessage, EventFrame, MlsFrame, PROTOCOL_VERSION, Resume, RoomEvent, ServerMessage,
    ServerText,
};
use satsuma_coordinator::{Config, Server, ServerHandle};
use satsuma_e2ee::relay::Entry;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const WAIT: Duration = Duration::from_secs(10);

pub async fn start(config: Config) -> ServerHandle {
    Server::bind(config).await.unwrap()
}

pub async fn start_dev() -> ServerHandle {
    start(Config::dev()).await
}

pub fn claims(room: &str, sub: &str, perms: &[&str]) -> Claims {
    Claims {
        sub: sub.into(),
        room: room.into(),
        name: sub.to_uppercase(),
        perms: perms.iter().map(|s| s.to_string()).collect(),
        exp: unix_now() + 600,
        iat: None,
        ..Claims::default()
    }
}

pub fn token(server: &ServerHandle, room: &str, sub: &str) -> String {
    server
        .mint_token(&claims(room, sub, &["publish", "subscribe"]))
        .unwrap()
}

/// Something the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Got {
    Event(EventFrame),
    Mls(MlsFrame),
    Direct(ServerMessage),
    Close(u16, String),
}

impl Got {
    pub fn seq(&self) -> Option<u64> {
        match self {
            Got::Event(e) => Some(e.seq),
            Got::Mls(m) => Some(m.seq),
            _ => None,
        }
    }
}

pub struct Client {
    pub ws: Ws,
    pub id: u64,
    pub resume_token: String,
    pub last_seq: u64,
    /// Every sequenced entry received, in arrival order.
    pub log: Vec<Got>,
}

pub async fn raw(server: &ServerHandle, room: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url(room))
        .await
        .unwrap();
    ws
}

pub async fn send_json(ws: &mut Ws, msg: &ClientMessage) {
    ws.send(Message::Text(serde_json::to_string(msg).unwrap().into()))
        .await
        .unwrap();
}

/// Next frame the server sends (skipping pings), or panics after [`WAIT`].
pub async fn recv(ws: &mut Ws) -> Got {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for the server");
        match m {
            None => return Got::Close(1006, "eof".into()),
            Some(Err(e)) => return Got::Close(1006, e.to_string()),
            Some(Ok(Message::Text(t))) => {
                return match ServerText::decode(t.as_str()).unwrap() {
                    ServerText::Event(e) => Got::Event(e),
                    ServerText::Direct(d) => Got::Direct(d),
                };
            }
            Some(Ok(Message::Binary(b))) => return Got::Mls(MlsFrame::decode(&b).unwrap()),
            Some(Ok(Message::Close(c))) => {
                return match c {
                    Some(f) => Got::Close(u16::from(f.code), f.reason.to_string()),
                    None => Got::Close(1005, String::new()),
                };
            }
            Some(Ok(_)) => continue,
        }
    }
}

/// Reads until a close frame; returns its code and reason.
pub async fn expect_close(ws: &mut Ws) -> (u16, String) {
    loop {
        if let Got::Close(code, reason) = recv(ws).await {
            return (code, reason);
        }
    }
}

pub fn close_code(code: u16) -> CloseCode {
    CloseCode::from(code)
}

impl Client {
    pub async fn join(server: &ServerHandle, room: &str, sub: &str) -> Client {
        let t = token(server, room, sub);
        Self::join_with_token(server, room, &t).await
    }

    pub async fn join_with_token(server: &ServerHandle, room: &str, token: &str) -> Client {
        Self::join_url(&server.ws_url(room), token).await
    }

    pub async fn join_url(url: &str, token: &str) -> Client {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        send_json(
            &mut ws,
            &ClientMessage::Hello {
                v: PROTOCOL_VERSION,
                token: Some(token.to_owned()),
                resume: None,
                test_visible_only_to: None,
            },
        )
        .await;
        match recv(&mut ws).await {
            Got::Direct(ServerMessage::Welcome {
                participant_id,
                resume_token,
                seq,
                ..
            }) => Client {
                ws,
                id: participant_id,
                resume_token,
                last_seq: seq,
                log: Vec::new(),
            },
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// Resumes on a new connection; returns the `resumed` reply.
    pub async fn resume(&mut self, server: &ServerHandle, room: &str) -> Got {
        let mut ws = raw(server, room).await;
        send_json(
            &mut ws,
            &ClientMessage::Hello {
                v: PROTOCOL_VERSION,
                token: None,
                resume: Some(Resume {
                    participant_id: self.id,
                    resume_token: self.resume_token.clone(),
                    last_seq: self.last_seq,
                }),
                test_visible_only_to: None,
            },
        )
        .await;
        let reply = recv(&mut ws).await;
        self.ws = ws;
        reply
    }

    pub async fn send(&mut self, msg: ClientMessage) {
        send_json(&mut self.ws, &msg).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }

    /// Next frame; sequenced entries are checked for order and recorded.
    pub async fn recv(&mut self) -> Got {
        let g = recv(&mut self.ws).await;
        if let Some(seq) = g.seq() {
            assert_eq!(
                seq,
                self.last_seq + 1,
                "participant {} got seq {seq} after {}",
                self.id,
                self.last_seq
            );
            self.last_seq = seq;
            self.log.push(g.clone());
        }
        g
    }

    /// Next sequenced entry (direct replies are returned as errors in a panic).
    pub async fn entry(&mut self) -> Got {
        loop {
            let g = self.recv().await;
            match &g {
                Got::Event(_) | Got::Mls(_) => return g,
                Got::Direct(ServerMessage::Pong { .. }) => continue,
                other => panic!("participant {}: expected an entry, got {other:?}", self.id),
            }
        }
    }

    /// Reads entries until one matches.
    pub async fn until(&mut self, mut f: impl FnMut(&Got) -> bool) -> Got {
        loop {
            let g = self.recv().await;
            if f(&g) {
                return g;
            }
            if let Got::Close(..) = g {
                panic!("participant {}: closed while waiting: {g:?}", self.id);
            }
        }
    }

    /// Reads until an event matching `f`.
    pub async fn until_event(&mut self, mut f: impl FnMut(&RoomEvent) -> bool) -> EventFrame {
        match self
            .until(|g| matches!(g, Got::Event(e) if f(&e.event)))
            .await
        {
            Got::Event(e) => e,
            _ => unreachable!(),
        }
    }

    /// Next direct reply (skipping entries, which are still recorded).
    pub async fn direct(&mut self) -> ServerMessage {
        match self.until(|g| matches!(g, Got::Direct(_))).await {
            Got::Direct(d) => d,
            _ => unreachable!(),
        }
    }

    /// Reads up to `seq` (inclusive).
    pub async fn catch_up(&mut self, seq: u64) {
        while self.last_seq < seq {
            self.recv().await;
        }
    }

    /// Sends a ping and reads until its pong: everything the server queued before is in.
    pub async fn sync(&mut self) {
        let t = rand_t();
        self.send(ClientMessage::Ping { t: Some(t) }).await;
        self.until(|g| matches!(g, Got::Direct(ServerMessage::Pong { t: Some(x) }) if *x == t))
            .await;
    }
}

fn rand_t() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The JSON entries the E2EE layer reads, as `satsuma_e2ee::relay::Entry` (what the web
/// client's worker and `satsuma_e2ee::member::Member` are fed): `Entry::from_event`.
pub fn e2ee_entry(seq: u64, event: &RoomEvent) -> Option<Entry> {
    Entry::from_event(seq, event).unwrap()
}
