//! A native room member: the coordinator's WebSocket driven by the E2EE core the web client
//! ships (`satsuma-wasm`'s `GroupMember`, here compiled natively), so tests and load tools
//! take part in a room's MLS group exactly as a browser's E2EE worker does: they join,
//! announce a KeyPackage, commit when they are the designated committer, apply others'
//! commits and Welcomes, and report `ready`.
//!
//! ```no_run
//! # async fn demo(token: &str) -> Result<(), satsuma_bot::room::RoomError> {
//! use satsuma_bot::room::RoomMember;
//! let alice = RoomMember::join("ws://127.0.0.1:7880/ws/standup", token, "Alice").await?;
//! let view = alice.view();
//! println!("epoch {:?}, safety number {:?}", view.epoch, view.safety_number);
//! # Ok(()) }
//! ```

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use satsuma_wasm::GroupMember;
use satsuma_wire::room::{ClientMessage, PROTOCOL_VERSION, ServerMessage, ServerText};
use serde_json::Value;
use shared::Shared;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// How often the member's timers run (the web worker ticks at the same rate).
const TICK: Duration = Duration::from_millis(200);

/// Why joining failed.
#[derive(Debug, Error)]
pub enum RoomError {
    /// The WebSocket could not be opened.
    #[error("connecting to {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// What went wrong.
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// The coordinator closed or refused before `welcome`.
    #[error("refused before welcome: {0}")]
    Refused(String),
    /// The MLS identity could not be created.
    #[error("E2EE core: {0}")]
    Core(String),
}

/// What the member looks like now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberView {
    /// The coordinator's participant id.
    pub participant_id: u64,
    /// The credential for `/sfu` calls (`Authorization: Bearer …`).
    pub resume_token: String,
    /// The E2EE phase (`member`, `joining`, `refused`, …).
    pub phase: String,
    /// The MLS epoch, once a member.
    pub epoch: Option<u64>,
    /// The safety number of the epoch.
    pub safety_number: Option<String>,
    /// How many times the member lost its group and reset.
    pub resets: u64,
    /// Sequenced entries received.
    pub entries: u64,
    /// The close code and reason, once the coordinator closed the socket.
    pub closed: Option<(u16, String)>,
}

mod shared {
    //! A tiny shared cell on `std::sync::Mutex`, poison-tolerant.
    use std::sync::{Arc, Mutex};

    /// Shared, cloneable state.
    #[derive(Debug, Default)]
    pub(super) struct Shared<T>(Arc<Mutex<T>>);

    impl<T> Clone for Shared<T> {
        fn clone(&self) -> Self {
            Self(Arc::clone(&self.0))
        }
    }

    impl<T: Clone> Shared<T> {
        pub(super) fn get(&self) -> T {
            match self.0.lock() {
                Ok(g) => g.clone(),
                Err(p) => p.into_inner().clone(),
            }
        }

        pub(super) fn update(&self, f: impl FnOnce(&mut T)) {
            match self.0.lock() {
                Ok(mut g) => f(&mut g),
                Err(p) => f(&mut p.into_inner()),
            }
        }
    }
}

/// A joined member; dropping it closes the WebSocket.
#[derive(Debug)]
pub struct RoomMember {
    view: Shared<MemberView>,
    leave: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Drop for RoomMember {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RoomMember {
    /// Joins the room at `ws_url` (`ws://host/ws/{room}`) with a join token, as `name`.
    ///
    /// # Errors
    /// The socket could not be opened, or the coordinator refused before `welcome`.
    pub async fn join(ws_url: &str, token: &str, name: &str) -> Result<Self, RoomError> {
        let (mut ws, _) = tokio_tungstenite::connect_async(ws_url)
            .await
            .map_err(|e| RoomError::Connect {
                url: ws_url.to_owned(),
                source: Box::new(e),
            })?;
        let hello = ClientMessage::Hello {
            v: PROTOCOL_VERSION,
            token: Some(token.to_owned()),
            resume: None,
            test_visible_only_to: None,
        };
        ws.send(Message::Text(json_text(&hello).into()))
            .await
            .map_err(|e| RoomError::Refused(e.to_string()))?;
        let start = Instant::now();
        let (text, id, resume_token) = loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => match ServerText::decode(t.as_str()) {
                    Ok(ServerText::Direct(ServerMessage::Welcome {
                        participant_id,
                        resume_token,
                        ..
                    })) => break (t.to_string(), participant_id, resume_token),
                    Ok(ServerText::Direct(e @ ServerMessage::Error { .. })) => {
                        return Err(RoomError::Refused(format!("{e:?}")));
                    }
                    Ok(_) => {}
                    Err(e) => return Err(RoomError::Refused(format!("bad JSON: {e}"))),
                },
                Some(Ok(Message::Close(c))) => {
                    return Err(RoomError::Refused(format!("closed: {c:?}")));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(RoomError::Refused(e.to_string())),
                None => return Err(RoomError::Refused("closed".into())),
            }
        };
        let seed: [u8; 32] = rand::random();
        #[allow(clippy::cast_precision_loss)] // participant ids are far below 2^53
        let mut member = GroupMember::new(id as f64, &seed, name)
            .map_err(|_| RoomError::Core("cannot create the MLS identity".into()))?;
        member.on_welcome(&text, ms(start));
        let view = Shared::default();
        view.update(|w: &mut MemberView| {
            w.participant_id = id;
            w.resume_token = resume_token;
        });
        let (leave_tx, leave_rx) = oneshot::channel();
        let task = tokio::spawn(run(ws, member, view.clone(), start, leave_rx));
        Ok(Self {
            view,
            leave: Some(leave_tx),
            task,
        })
    }

    /// The member's state now.
    #[must_use]
    pub fn view(&self) -> MemberView {
        self.view.get()
    }

    /// Waits until `check` holds for the view, or `timeout` passes; returns the last view.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        check: impl Fn(&MemberView) -> bool,
    ) -> Result<MemberView, MemberView> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.view();
            if check(&v) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(v);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `leave` and closes the socket.
    pub async fn leave(mut self) {
        if let Some(tx) = self.leave.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
    }
}

/// A client message as a text frame.
fn json_text(msg: &ClientMessage) -> String {
    // Serializing these plain types cannot fail; an empty frame would be refused as malformed.
    serde_json::to_string(msg).unwrap_or_default()
}

#[allow(clippy::cast_precision_loss)] // milliseconds since start fit an f64 exactly for ages
fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn run(
    mut ws: Ws,
    mut member: GroupMember,
    view: Shared<MemberView>,
    start: Instant,
    mut leave: oneshot::Receiver<()>,
) {
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = &mut leave => {
                let _ = ws.send(Message::Text(json_text(&ClientMessage::Leave {}).into())).await;
                let _ = ws.close(None).await;
                return;
            }
            _ = tick.tick() => member.tick(ms(start)),
            Some(m) = out_rx.recv() => {
                if ws.send(m).await.is_err() {
                    return;
                }
                continue;
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => match ServerText::decode(t.as_str()) {
                    Ok(ServerText::Event(_)) => {
                        member.on_event(t.as_str(), ms(start));
                        view.update(|w| w.entries += 1);
                    }
                    // Direct replies, and what does not parse (the core counts it as bad input).
                    _ => member.on_direct(t.as_str(), ms(start)),
                },
                Some(Ok(Message::Binary(b))) => {
                    member.on_mls(&b, ms(start));
                    view.update(|w| w.entries += 1);
                }
                Some(Ok(Message::Close(c))) => {
                    let (code, reason) = c.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                    view.update(|w| w.closed = Some((code, reason)));
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    view.update(|w| w.closed = Some((1006, e.to_string())));
                    return;
                }
                None => {
                    view.update(|w| w.closed = Some((1006, "eof".into())));
                    return;
                }
            },
        }
        while let Some(b) = member.poll_binary() {
            let _ = out_tx.send(Message::Binary(b.into()));
        }
        while let Some(j) = member.poll_json() {
            let _ = out_tx.send(Message::Text(j.into()));
        }
        let _ = member.take_send_key_changed();
        let _ = member.take_receive_keys_changed();
        let status: Value = serde_json::from_str(&member.status_json()).unwrap_or(Value::Null);
        view.update(|w| {
            w.phase = status["phase"].as_str().unwrap_or_default().to_owned();
            w.epoch = status["epoch"].as_u64();
            w.safety_number = status["safety_number"].as_str().map(str::to_owned);
            w.resets = status["resets"].as_u64().unwrap_or(0);
        });
    }
}
