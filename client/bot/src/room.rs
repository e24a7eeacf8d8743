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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use satsuma_wasm::{GroupMember, InboundTrack};
use satsuma_wire::relay::MlsFrame;
use satsuma_wire::room::{
    ClientMessage, PROTOCOL_VERSION, Resume, RoomEvent, ServerMessage, ServerText, close,
};
use serde_json::Value;
use shared::Shared;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::log_audit::{LogAudit, Verdict};

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
    /// The epoch this member's media is encrypted in (it follows `execute`).
    pub send_epoch: Option<u64>,
    /// The safety number of the epoch.
    pub safety_number: Option<String>,
    /// How many times the member lost its group and reset.
    pub resets: u64,
    /// Whether this member is the designated committer now.
    pub committer: bool,
    /// The E2EE core's last error, if any (bad input, refused commit, …).
    pub last_error: Option<String>,
    /// Sequenced entries received.
    pub entries: u64,
    /// The close code and reason, once the socket closed for good (or while it resumes).
    pub closed: Option<(u16, String)>,
    /// The highest `seq` processed (the resume point).
    pub last_seq: u64,
    /// Successful resumes after a lost connection.
    pub resumes: u64,
    /// The close code and reason of the last connection that ended (kept after the resume;
    /// 1006 when it ended without a close frame).
    pub last_disconnect: Option<(u16, String)>,
    /// Sequenced entries delivered again after this member had processed them (never by
    /// design: a resume's replay starts after its `last_seq`); not processed twice.
    /// [`crate::log_audit`].
    pub duplicates: u64,
    /// Sequenced entries that came below the last processed `seq` without having been
    /// processed (out of order); not processed.
    pub out_of_order: u64,
    /// Jumps in `seq` (not faults by themselves: superseded KeyPackages, a rebuilt room's seq
    /// ceiling; compare [`RoomMember::log_audit`] across members to tell a lost entry).
    pub gaps: u64,
    /// How many `seq` numbers the jumps skipped in total.
    pub skipped_seqs: u64,
    /// The participant ids of the MLS group's members in this member's current epoch
    /// (itself included; empty while not a member).
    pub members: Vec<u64>,
    /// The room's participants as the coordinator's log tells them (names, hosts,
    /// recorders, SFU sessions, published tracks); not verified by MLS.
    pub roster: crate::roster::Roster,
    /// The coordinator's `move` orders so far (issue 15: an SFU node this member has a
    /// session on is draining or down), oldest first. Acting on them is the media side's
    /// job ([`crate::Bot::relocate`]); the member's MLS state stays as it is.
    pub move_orders: Vec<MoveOrder>,
}

/// One `move` order of the coordinator ([`satsuma_wire::room::ServerMessage::Move`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveOrder {
    /// This member's SFU sessions on the node to leave.
    pub sessions: Vec<String>,
    /// `draining` or `down` ([`satsuma_wire::room::move_reason`]).
    pub reason: String,
    /// When it arrived.
    pub at: Instant,
}

/// The member's E2EE core, shared between its room task and the media it encrypts
/// ([`crate::media_e2ee::RoomMediaCrypto`]).
pub(crate) type Core = Arc<Mutex<GroupMember>>;

/// Locks the core (a panic elsewhere while it was held leaves it usable).
pub(crate) fn lock(core: &Core) -> MutexGuard<'_, GroupMember> {
    core.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Which participant owns which SFU session, from the room's log (the snapshot's
/// `sfu_sessions` and `session` entries): whose keys open a pulled track's frames.
pub(crate) type Sessions = Arc<Mutex<BTreeMap<String, u64>>>;

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
pub struct RoomMember {
    view: Shared<MemberView>,
    audit: Shared<LogAudit>,
    core: Core,
    sessions: Sessions,
    media: crate::media_e2ee::MediaStatsCell,
    control: mpsc::UnboundedSender<Control>,
    task: JoinHandle<()>,
}

/// What the handle asks of the member's task.
#[derive(Debug)]
enum Control {
    /// Send `leave` and close.
    Leave,
    /// Close the socket without a `leave` (a network loss); the member resumes.
    DropConnection,
    /// Send a client message (e.g. `publish`, `unpublish`).
    Send(ClientMessage),
    /// Encrypt one outbound frame with this member's current media key.
    Encrypt {
        mime: String,
        frame: Vec<u8>,
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
    /// Decrypt one frame `sender` published.
    Decrypt {
        sender: u64,
        video: bool,
        frame: Vec<u8>,
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
}

/// What the member decrypts with: one inbound track (holdback, replay window) per sender and
/// kind, as the web client keeps per pulled track.
#[derive(Default)]
struct Inbound {
    tracks: std::collections::BTreeMap<(u64, bool), InboundTrack>,
    next_id: u32,
}

impl Inbound {
    /// Decrypts `frame` from `sender` now; `None` if no key opens it yet (it is not held for
    /// later: the caller asked for an answer now) or it is refused.
    fn open(
        &mut self,
        member: &mut GroupMember,
        sender: u64,
        video: bool,
        frame: &[u8],
        now_ms: f64,
    ) -> Option<Vec<u8>> {
        #[allow(clippy::cast_precision_loss)] // participant ids are far below 2^53
        let track = match self.tracks.entry((sender, video)) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(InboundTrack::new(sender as f64, video).ok()?)
            }
        };
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        member.receive(track, id, frame, now_ms);
        let mut out = None;
        while let Some(released) = track.next_release() {
            let data = track.take_data();
            if released == id {
                out = data;
            }
        }
        out
    }
}

impl std::fmt::Debug for RoomMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomMember")
            .field("view", &self.view.get())
            .finish_non_exhaustive()
    }
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
        let (text, id, resume_token, heartbeat_ms, welcome_seq) = loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => match ServerText::decode(t.as_str()) {
                    Ok(ServerText::Direct(ServerMessage::Welcome {
                        participant_id,
                        resume_token,
                        limits,
                        seq,
                        ..
                    })) => {
                        break (
                            t.to_string(),
                            participant_id,
                            resume_token,
                            limits.heartbeat_interval_ms,
                            seq,
                        );
                    }
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
        let sessions = Sessions::default();
        if let Ok(ServerText::Direct(ServerMessage::Welcome { snapshot, .. })) =
            ServerText::decode(&text)
            && let Ok(mut map) = sessions.lock()
        {
            for p in &snapshot.participants {
                for s in &p.sfu_sessions {
                    map.insert(s.clone(), p.id);
                }
            }
        }
        let core: Core = Arc::new(Mutex::new(member));
        let view = Shared::default();
        view.update(|w: &mut MemberView| {
            w.participant_id = id;
            w.resume_token = resume_token.clone();
            w.last_seq = welcome_seq;
            if let Ok(ServerText::Direct(ServerMessage::Welcome { snapshot, .. })) =
                ServerText::decode(&text)
            {
                w.roster = crate::roster::Roster::from_snapshot(&snapshot);
            }
        });
        let (control, control_rx) = mpsc::unbounded_channel();
        let link = Link {
            url: ws_url.to_owned(),
            participant_id: id,
            resume_token,
            // The snapshot is the room after entry `welcome.seq`: a resume continues after it.
            last_seq: welcome_seq,
            heartbeat: heartbeat(heartbeat_ms),
            audit: Shared::default(),
        };
        link.audit.update(|a| *a = LogAudit::after(welcome_seq));
        let audit = link.audit.clone();
        let task = tokio::spawn(run(
            ws,
            core.clone(),
            sessions.clone(),
            view.clone(),
            start,
            control_rx,
            link,
        ));
        Ok(Self {
            view,
            audit,
            core,
            sessions,
            media: crate::media_e2ee::MediaStatsCell::default(),
            control,
            task,
        })
    }

    /// The member's state now.
    #[must_use]
    pub fn view(&self) -> MemberView {
        self.view.get()
    }

    /// This member's copy of the room log, audited: the `seq`s it processed with a digest of
    /// each entry (compare members: the same `seq` must carry the same bytes, and a `seq`
    /// one member processed that another skipped is a lost entry), duplicates and gaps.
    #[must_use]
    pub fn log_audit(&self) -> LogAudit {
        self.audit.get()
    }

    /// The frame encryption of this member's media for a [`crate::Bot`] acting for it
    /// ([`crate::Bot::set_media_crypto`]): what the bot publishes is sealed with this member's
    /// send key of the current epoch (frames without a key are dropped, never sent in the
    /// clear), and what it pulls is opened with the keys of the participant that owns the
    /// publishing SFU session (from the room's log), through a holdback per pulled track as
    /// the web client's worker does. Counts go to [`RoomMember::media_stats`].
    #[must_use]
    pub fn media_crypto(&self) -> crate::media_e2ee::RoomMediaCrypto {
        crate::media_e2ee::RoomMediaCrypto::new(
            self.core.clone(),
            self.sessions.clone(),
            self.media.clone(),
        )
    }

    /// What this member's media crypto sealed and opened so far, per sender.
    #[must_use]
    pub fn media_stats(&self) -> crate::media_e2ee::MediaStats {
        self.media.get()
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
        let _ = self.control.send(Control::Leave);
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
    }

    /// Sends `msg` to the coordinator on the current connection (e.g. `publish` and
    /// `unpublish` of the tracks a [`crate::Bot`] acting for this member pushed); dropped if
    /// the connection is down at that moment.
    pub fn send(&self, msg: ClientMessage) {
        let _ = self.control.send(Control::Send(msg));
    }

    /// Drops the WebSocket without a `leave`, as a network loss would (close code 4999, like
    /// the web client's drill): the coordinator logs `away`, and the member resumes from its
    /// last `seq` (`hello.resume`) and counts it in [`MemberView::resumes`].
    pub fn drop_connection(&self) {
        let _ = self.control.send(Control::DropConnection);
    }

    /// Encrypts one encoded frame of codec `mime` (`video/VP8`, `audio/opus`, …) with this
    /// member's media key of the current epoch, as the web client's sender transform does;
    /// `None` when there is no key yet (the frame must not be sent in the clear).
    pub async fn encrypt(&self, mime: &str, frame: Vec<u8>) -> Option<Vec<u8>> {
        let (reply, rx) = oneshot::channel();
        let mime = mime.to_owned();
        self.control
            .send(Control::Encrypt { mime, frame, reply })
            .ok()?;
        rx.await.ok().flatten()
    }

    /// Decrypts one frame that participant `sender` published (`video`: from its video
    /// track); `None` if no key this member holds now opens it (a frame sent in an epoch
    /// whose key has not arrived yet is not waited for: wait for [`MemberView::send_epoch`]
    /// of the sender and the group epoch to agree first) or it is a replay.
    pub async fn decrypt(&self, sender: u64, video: bool, frame: Vec<u8>) -> Option<Vec<u8>> {
        let (reply, rx) = oneshot::channel();
        self.control
            .send(Control::Decrypt {
                sender,
                video,
                frame,
                reply,
            })
            .ok()?;
        rx.await.ok().flatten()
    }
}

/// Where and as whom to resume.
#[derive(Debug)]
struct Link {
    url: String,
    participant_id: u64,
    resume_token: String,
    last_seq: u64,
    /// How often to send `ping` (from the limits in `welcome`/`resumed`).
    heartbeat: Duration,
    /// The audit of what arrived (shared with the handle).
    audit: Shared<LogAudit>,
}

/// The ping period for the server's `heartbeat_interval_ms`: as the web client, at least 1 s
/// and at most 10 s.
fn heartbeat(interval_ms: u64) -> Duration {
    Duration::from_millis(interval_ms.clamp(1000, 10_000))
}

/// Close codes after which resuming is pointless: the member is done.
fn is_final(code: u16) -> bool {
    [
        close::NORMAL,
        close::BAD_HELLO,
        close::UNSUPPORTED_VERSION,
        close::UNAUTHORIZED,
        close::REMOVED,
        close::REPLACED,
        close::RESUME_FAILED,
        close::PRESENCE_TIMEOUT,
        close::ROOM_LOCKED,
        close::ROOM_FULL,
    ]
    .contains(&code)
}

/// Reconnects with `hello.resume` until `resumed` (backing off from 100 ms to 2 s), for up to
/// `give_up`; the close code of a final refusal otherwise.
async fn resume(link: &mut Link, give_up: Duration) -> Result<Ws, (u16, String)> {
    let deadline = Instant::now() + give_up;
    let mut backoff = Duration::from_millis(100);
    let mut last = (1006, "resume: no attempt".to_owned());
    while Instant::now() < deadline {
        match resume_once(link).await {
            Ok(ws) => return Ok(ws),
            Err((code, reason)) if is_final(code) => return Err((code, reason)),
            Err(e) => last = e,
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    Err(last)
}

async fn resume_once(link: &mut Link) -> Result<Ws, (u16, String)> {
    let (mut ws, _) = tokio_tungstenite::connect_async(link.url.as_str())
        .await
        .map_err(|e| (1006, format!("resume connect: {e}")))?;
    let hello = ClientMessage::Hello {
        v: PROTOCOL_VERSION,
        token: None,
        resume: Some(Resume {
            participant_id: link.participant_id,
            resume_token: link.resume_token.clone(),
            last_seq: link.last_seq,
        }),
        test_visible_only_to: None,
    };
    ws.send(Message::Text(json_text(&hello).into()))
        .await
        .map_err(|e| (1006, format!("resume send: {e}")))?;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if let Ok(ServerText::Direct(ServerMessage::Resumed { limits, .. })) =
                    ServerText::decode(t.as_str())
                {
                    link.heartbeat = heartbeat(limits.heartbeat_interval_ms);
                    return Ok(ws);
                }
            }
            Ok(Some(Ok(Message::Close(c)))) => {
                return Err(c.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                }));
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err((1006, e.to_string())),
            Ok(None) => return Err((1006, "eof".into())),
            Err(_) => return Err((1006, "no resumed within 5 s".into())),
        }
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

/// How one connection ended.
enum End {
    /// The member left.
    Left,
    /// The socket closed (code, reason).
    Closed(u16, String),
}

async fn run(
    mut ws: Ws,
    member: Core,
    sessions: Sessions,
    view: Shared<MemberView>,
    start: Instant,
    mut control: mpsc::UnboundedReceiver<Control>,
    mut link: Link,
) {
    let mut inbound = Inbound::default();
    loop {
        let (code, reason) = match connected(
            &mut ws,
            (&member, &sessions),
            &mut inbound,
            &view,
            start,
            &mut control,
            &mut link,
        )
        .await
        {
            End::Left => return,
            End::Closed(code, reason) => (code, reason),
        };
        tracing::debug!(me = link.participant_id, last_seq = link.last_seq, code, %reason, "connection ended");
        view.update(|w| {
            w.closed = Some((code, reason.clone()));
            w.last_disconnect = Some((code, reason.clone()));
        });
        if is_final(code) {
            return;
        }
        // Give up around the time the coordinator would time the participant out anyway.
        match resume(&mut link, Duration::from_secs(15)).await {
            Ok(next) => {
                tracing::debug!(
                    me = link.participant_id,
                    last_seq = link.last_seq,
                    "resumed"
                );
                ws = next;
                view.update(|w| {
                    w.closed = None;
                    w.resumes += 1;
                });
            }
            Err(closed) => {
                view.update(|w| w.closed = Some(closed));
                return;
            }
        }
    }
}

/// Audits a sequenced entry; whether to process it (above the last processed `seq`).
fn observe(link: &Link, view: &Shared<MemberView>, seq: u64, bytes: &[u8]) -> bool {
    let mut verdict = Verdict::Fresh;
    let mut counts = (0, 0, 0, 0);
    link.audit.update(|a| {
        verdict = a.observe(seq, bytes);
        counts = (a.duplicates(), a.out_of_order(), a.gaps(), a.skipped());
    });
    if verdict != Verdict::Fresh {
        tracing::warn!(
            me = link.participant_id,
            seq,
            last_seq = link.last_seq,
            ?verdict,
            "sequenced entry not processed"
        );
    }
    view.update(|w| {
        (w.duplicates, w.out_of_order, w.gaps, w.skipped_seqs) = counts;
    });
    verdict == Verdict::Fresh
}

/// Runs one connection until it closes or the member leaves.
async fn connected(
    ws: &mut Ws,
    (core, sessions): (&Core, &Sessions),
    inbound: &mut Inbound,
    view: &Shared<MemberView>,
    start: Instant,
    control: &mut mpsc::UnboundedReceiver<Control>,
    link: &mut Link,
) -> End {
    let mut tick = tokio::time::interval(TICK);
    let mut ping = tokio::time::interval(link.heartbeat);
    let mut pings = 0u64;
    loop {
        tokio::select! {
            _ = ping.tick() => {
                pings += 1;
                let msg = ClientMessage::Ping { t: Some(pings) };
                if ws.send(Message::Text(json_text(&msg).into())).await.is_err() {
                    return End::Closed(1006, "send failed".into());
                }
            }
            c = control.recv() => match c {
                Some(Control::DropConnection) => {
                    let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                        code: 4999.into(),
                        reason: "simulated network loss".into(),
                    };
                    let _ = ws.close(Some(frame)).await;
                    return End::Closed(4999, "simulated network loss".into());
                }
                Some(Control::Send(msg)) => {
                    if ws.send(Message::Text(json_text(&msg).into())).await.is_err() {
                        return End::Closed(1006, "send failed".into());
                    }
                }
                Some(Control::Encrypt { mime, frame, reply }) => {
                    let _ = reply.send(lock(core).encrypt(&mime, &frame));
                }
                Some(Control::Decrypt { sender, video, frame, reply }) => {
                    let opened = inbound.open(&mut lock(core), sender, video, &frame, ms(start));
                    let _ = reply.send(opened);
                }
                Some(Control::Leave) | None => {
                    let _ = ws.send(Message::Text(json_text(&ClientMessage::Leave {}).into())).await;
                    let _ = ws.close(None).await;
                    return End::Left;
                }
            },
            _ = tick.tick() => lock(core).tick(ms(start)),
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => match ServerText::decode(t.as_str()) {
                    Ok(ServerText::Event(f)) => {
                        // An entry already processed (delivered again) or out of order is
                        // counted and skipped.
                        if observe(link, view, f.seq, t.as_bytes()) {
                            link.last_seq = f.seq;
                            if let RoomEvent::Session { id, session_id } = &f.event
                                && let Ok(mut map) = sessions.lock()
                            {
                                map.insert(session_id.clone(), *id);
                            }
                            lock(core).on_event(t.as_str(), ms(start));
                            view.update(|w| {
                                w.entries += 1;
                                w.last_seq = f.seq;
                                w.roster.apply(&f.event);
                            });
                        }
                    }
                    Ok(ServerText::Direct(ServerMessage::Move { sessions, reason })) => {
                        tracing::info!(me = link.participant_id, ?sessions, %reason, "told to move off an SFU node");
                        let at = Instant::now();
                        view.update(|w| w.move_orders.push(MoveOrder { sessions, reason, at }));
                    }
                    // Direct replies, and what does not parse (the core counts it as bad input).
                    _ => lock(core).on_direct(t.as_str(), ms(start)),
                },
                Some(Ok(Message::Binary(b))) => {
                    let seq = MlsFrame::decode(&b).map(|f| f.seq);
                    if seq.is_none_or(|s| observe(link, view, s, &b)) {
                        if let Some(s) = seq {
                            link.last_seq = s;
                        }
                        lock(core).on_mls(&b, ms(start));
                        view.update(|w| {
                            w.entries += 1;
                            w.last_seq = link.last_seq;
                        });
                    }
                }
                Some(Ok(Message::Close(c))) => {
                    let (code, reason) = c.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                    return End::Closed(code, reason);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return End::Closed(1006, e.to_string()),
                None => return End::Closed(1006, "eof".into()),
            },
        }
        // Take what to send under the lock, send without it (the media crypto shares it).
        let (binary, json, status) = {
            let mut member = lock(core);
            let binary: Vec<Vec<u8>> = std::iter::from_fn(|| member.poll_binary()).collect();
            let json: Vec<String> = std::iter::from_fn(|| member.poll_json()).collect();
            let _ = member.take_send_key_changed();
            let _ = member.take_receive_keys_changed();
            (binary, json, member.status_json())
        };
        let mut failed = false;
        for b in binary {
            failed |= ws.send(Message::Binary(b.into())).await.is_err();
        }
        for j in json {
            failed |= ws.send(Message::Text(j.into())).await.is_err();
        }
        let status: Value = serde_json::from_str(&status).unwrap_or(Value::Null);
        view.update(|w| {
            w.phase = status["phase"].as_str().unwrap_or_default().to_owned();
            w.epoch = status["epoch"].as_u64();
            w.send_epoch = status["send_epoch"].as_u64();
            w.safety_number = status["safety_number"].as_str().map(str::to_owned);
            w.resets = status["resets"].as_u64().unwrap_or(0);
            w.committer = status["committer"].as_bool().unwrap_or(false);
            w.last_error = status["last_error"].as_str().map(str::to_owned);
            w.members = status["members"]
                .as_array()
                .map(|a| a.iter().filter_map(|m| m["id"].as_u64()).collect())
                .unwrap_or_default();
        });
        if failed {
            return End::Closed(1006, "send failed".into());
        }
    }
}
