//! [`Bot`]: the handle tests and tools use. Signaling over the HTTP API, media in the driver task.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::Mutex;

use crate::api::{
    ApiError, CloseTrackObject, CloseTracksRequest, SessionDescription, SessionState, SfuClient,
    Simulcast, TrackObject, TrackResult, TracksRequest, TracksResponse, UpdateTracksRequest,
};
use crate::participant::{
    Participant, ParticipantConfig, ParticipantStats, PullSpec, SignalingError, TrackSpec,
};
use crate::payload::MediaKind;
use crate::peer::{Peer, PeerError};

/// Errors of the bot.
#[derive(Debug, Error)]
pub enum BotError {
    /// The HTTP API failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// An SDP step failed.
    #[error(transparent)]
    Signaling(#[from] SignalingError),
    /// Socket setup failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The driver task has stopped.
    #[error("the bot's media task has stopped")]
    DriverGone,
    /// The server's answer does not fit the request.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A per-track error from the server.
    #[error("track {track}: {code}: {description}")]
    Track {
        /// Track name or mid.
        track: String,
        /// `errorCode`.
        code: String,
        /// `errorDescription`.
        description: String,
    },
    /// A wait ran out.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

impl From<PeerError> for BotError {
    fn from(e: PeerError) -> Self {
        match e {
            PeerError::Io(e) => Self::Io(e),
            PeerError::Signaling(e) => Self::Signaling(e),
            PeerError::Gone => Self::DriverGone,
            PeerError::NotConnected(_) => Self::Timeout("connection"),
        }
    }
}

/// How a bot connects and what it sends.
#[derive(Debug, Clone)]
pub struct BotConfig {
    /// SFU base URL, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// App id.
    pub app_id: String,
    /// App secret.
    pub secret: String,
    /// IP for the bot's UDP socket (and its ICE host candidate).
    pub bind_ip: IpAddr,
    /// Media settings.
    pub participant: ParticipantConfig,
    /// Shape incoming datagrams to this many bits/s (a token bucket with a bounded queue in front
    /// of the bot); `None`: no limit. Changeable later with [`Bot::set_ingress_limit`].
    pub ingress_limit_bps: Option<u64>,
    /// Use the API mounted here instead of `{base_url}/v1/apps/{app_id}`, with `secret` as
    /// the bearer credential: e.g. the coordinator's proxy `http://host/sfu` and a
    /// participant's `resume_token`.
    pub api_base: Option<String>,
}

impl BotConfig {
    /// Defaults: bind on 127.0.0.1, default media settings.
    pub fn new(base_url: &str, app_id: &str, secret: &str) -> Self {
        Self {
            base_url: base_url.to_owned(),
            app_id: app_id.to_owned(),
            secret: secret.to_owned(),
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            participant: ParticipantConfig::default(),
            ingress_limit_bps: None,
            api_base: None,
        }
    }
}

/// A track this bot publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedTrack {
    /// Track name.
    pub track_name: String,
    /// Mid in this bot's session.
    pub mid: String,
    /// Audio or video.
    pub kind: MediaKind,
}

/// A track this bot pulls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribedTrack {
    /// Publishing session.
    pub session_id: String,
    /// Track name.
    pub track_name: String,
    /// Mid in this bot's session.
    pub mid: String,
}

/// Statistics of a bot.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BotStats {
    /// Session id at the SFU.
    pub session_id: String,
    /// Everything the media core counted.
    #[serde(flatten)]
    pub participant: ParticipantStats,
}

/// A native WebRTC participant driven over the SFU's HTTP API.
#[derive(Debug)]
pub struct Bot {
    client: SfuClient,
    session_id: String,
    peer: Peer,
    signaling: Mutex<()>,
    /// How it was made (for [`Bot::relocate`]).
    config: BotConfig,
    /// What it published, in order (for [`Bot::relocate`]).
    published: std::sync::Mutex<Vec<TrackSpec>>,
}

impl Bot {
    /// Connect with default settings: create a session and start the media task.
    pub async fn connect(base_url: &str, app_id: &str, secret: &str) -> Result<Self, BotError> {
        Self::connect_with(BotConfig::new(base_url, app_id, secret)).await
    }

    /// Connect with explicit settings.
    pub async fn connect_with(config: BotConfig) -> Result<Self, BotError> {
        let client = match &config.api_base {
            Some(base) => SfuClient::with_app_base(base, &config.secret)?,
            None => SfuClient::new(&config.base_url, &config.app_id, &config.secret)?,
        };
        let session = client.new_session().await?;
        let peer =
            Peer::start_limited(config.participant, config.bind_ip, config.ingress_limit_bps)?;
        Ok(Self {
            client,
            session_id: session.session_id,
            peer,
            signaling: Mutex::new(()),
            config,
            published: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// A new session for the same participant, e.g. on another SFU node when the
    /// coordinator says this one's node is draining or down (`move`, issue 15; with the
    /// coordinator's proxy as the API, it places the new session on a live node): a new bot
    /// made with this one's configuration, sealing with `crypto` (the member's media crypto,
    /// as [`Bot::set_media_crypto`]), publishing the same tracks under the same names. It
    /// pulls nothing yet (the caller pulls what it wants, from the publishers' current
    /// sessions), and this bot is untouched: shut it down (and delete its session) once the
    /// new one carries the media.
    ///
    /// # Errors
    /// The new session, its media task or its publication failed.
    pub async fn relocate(
        &self,
        crypto: Option<Box<dyn crate::participant::MediaCrypto>>,
    ) -> Result<Bot, BotError> {
        let bot = Bot::connect_with(self.config.clone()).await?;
        if crypto.is_some() {
            bot.set_media_crypto(crypto).await?;
        }
        let specs = self.published.lock().map(|p| p.clone()).unwrap_or_default();
        if !specs.is_empty() {
            bot.publish(&specs).await?;
        }
        Ok(bot)
    }

    /// This bot's session id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The bot's UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.peer.local_addr()
    }

    /// The HTTP API client (same app and secret).
    pub fn api(&self) -> &SfuClient {
        &self.client
    }

    /// Run `f` on the participant inside the driver and return its result.
    async fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Participant, Instant) -> R + Send + 'static,
    ) -> Result<R, BotError> {
        Ok(self.peer.with(f).await?)
    }

    /// Publish tracks: offer → `tracks/new` → answer. Media starts once connected.
    pub async fn publish(&self, tracks: &[TrackSpec]) -> Result<Vec<PublishedTrack>, BotError> {
        let _guard = self.signaling.lock().await;
        let specs = tracks.to_vec();
        let (offer, mids) = self
            .with(move |p, now| p.create_push_offer(now, &specs))
            .await??;
        let req = TracksRequest {
            session_description: Some(SessionDescription::offer(offer)),
            tracks: mids
                .iter()
                .zip(tracks)
                .map(|(mid, t)| TrackObject::local(mid.clone(), t.name.clone()))
                .collect(),
        };
        let resp = match self.client.new_tracks(&self.session_id, &req).await {
            Ok(r) => r,
            Err(e) => {
                self.with(|p, _| p.rollback()).await?;
                return Err(e.into());
            }
        };
        let answer = match answer_of(&resp) {
            Ok(a) => a,
            Err(e) => {
                self.with(|p, _| p.rollback()).await?;
                return Err(e);
            }
        };
        self.with(move |p, now| p.accept_answer(now, &answer))
            .await??;
        check_track_errors(&resp.tracks)?;
        if let Ok(mut p) = self.published.lock() {
            p.extend(tracks.iter().cloned());
        }
        Ok(mids
            .into_iter()
            .zip(tracks)
            .map(|(mid, t)| PublishedTrack {
                track_name: t.name.clone(),
                mid,
                kind: t.kind,
            })
            .collect())
    }

    /// Publish one audio track.
    pub async fn publish_audio(&self, name: &str) -> Result<PublishedTrack, BotError> {
        self.publish_one(name, MediaKind::Audio).await
    }

    /// Publish one video track.
    pub async fn publish_video(&self, name: &str) -> Result<PublishedTrack, BotError> {
        self.publish_one(name, MediaKind::Video).await
    }

    async fn publish_one(&self, name: &str, kind: MediaKind) -> Result<PublishedTrack, BotError> {
        let spec = TrackSpec {
            name: name.to_owned(),
            kind,
            simulcast: Vec::new(),
        };
        self.publish(&[spec])
            .await?
            .pop()
            .ok_or_else(|| BotError::Protocol("no track published".into()))
    }

    /// Pull one track of another session.
    pub async fn subscribe(
        &self,
        session_id: &str,
        track_name: &str,
    ) -> Result<SubscribedTrack, BotError> {
        self.subscribe_many(&[(session_id.to_owned(), track_name.to_owned())])
            .await?
            .pop()
            .ok_or_else(|| BotError::Protocol("no track subscribed".into()))
    }

    /// Pull several tracks: `tracks/new` (remote) → SFU offer → our answer via `renegotiate`.
    pub async fn subscribe_many(
        &self,
        tracks: &[(String, String)],
    ) -> Result<Vec<SubscribedTrack>, BotError> {
        let _guard = self.signaling.lock().await;
        let req = TracksRequest {
            session_description: None,
            tracks: tracks
                .iter()
                .map(|(s, n)| TrackObject::remote(s.clone(), n.clone()))
                .collect(),
        };
        let resp = self.client.new_tracks(&self.session_id, &req).await?;
        let mut subs = Vec::new();
        for (i, t) in resp.tracks.iter().enumerate() {
            if t.error_code.is_some() {
                continue;
            }
            let mid = t
                .mid
                .clone()
                .ok_or_else(|| BotError::Protocol(format!("pulled track {i} has no mid")))?;
            let (sid, name) = tracks
                .get(i)
                .cloned()
                .ok_or_else(|| BotError::Protocol("more tracks answered than asked".into()))?;
            subs.push(SubscribedTrack {
                session_id: t.session_id.clone().unwrap_or(sid),
                track_name: t.track_name.clone().unwrap_or(name),
                mid,
            });
        }
        if let Some(sd) = resp.session_description.filter(|sd| sd.is_offer()) {
            let pulls: Vec<PullSpec> = subs
                .iter()
                .map(|s| PullSpec {
                    mid: s.mid.clone(),
                    remote_session_id: s.session_id.clone(),
                    track_name: s.track_name.clone(),
                })
                .collect();
            let answer = self
                .with(move |p, now| p.accept_offer(now, &sd.sdp, &pulls))
                .await??;
            self.client
                .renegotiate(&self.session_id, SessionDescription::answer(answer))
                .await?;
        } else if !subs.is_empty() {
            return Err(BotError::Protocol("pull response carries no offer".into()));
        }
        check_track_errors(&resp.tracks)?;
        Ok(subs)
    }

    /// Close one track (pushed or pulled) by mid.
    pub async fn close_track(&self, mid: &str) -> Result<(), BotError> {
        self.close_tracks(&[mid.to_owned()]).await
    }

    /// Close tracks by mid: offer with the transceivers stopped → `tracks/close` → answer.
    pub async fn close_tracks(&self, mids: &[String]) -> Result<(), BotError> {
        let _guard = self.signaling.lock().await;
        let list = mids.to_vec();
        self.with(move |p, _| p.forget_tracks(&list)).await?;
        let list = mids.to_vec();
        let offer = self
            .with(move |p, now| p.create_close_offer(now, &list))
            .await??;
        let req = CloseTracksRequest {
            tracks: mids.iter().map(CloseTrackObject::by_mid).collect(),
            session_description: Some(SessionDescription::offer(offer)),
            force: false,
        };
        let resp = match self.client.close_tracks(&self.session_id, &req).await {
            Ok(r) => r,
            Err(e) => {
                self.with(|p, _| p.rollback()).await?;
                return Err(e.into());
            }
        };
        match resp.session_description.clone() {
            Some(sd) if sd.is_answer() => {
                self.with(move |p, now| p.accept_answer(now, &sd.sdp))
                    .await??;
            }
            Some(sd) if sd.is_offer() => {
                self.with(|p, _| p.rollback()).await?;
                let answer = self
                    .with(move |p, now| p.accept_offer(now, &sd.sdp, &[]))
                    .await??;
                self.client
                    .renegotiate(&self.session_id, SessionDescription::answer(answer))
                    .await?;
            }
            _ => self.with(|p, _| p.rollback()).await?,
        }
        check_track_errors(&resp.tracks)
    }

    /// Seal what this bot publishes and open what it pulls with `crypto` from now on, e.g.
    /// [`crate::room::RoomMember::media_crypto`] of the member it acts for (`None`: media in
    /// the clear). Set it before publishing: frames sent before it are in the clear.
    pub async fn set_media_crypto(
        &self,
        crypto: Option<Box<dyn crate::participant::MediaCrypto>>,
    ) -> Result<(), BotError> {
        self.with(move |p, _| p.set_media_crypto(crypto)).await
    }

    /// Changes the ingress limit (see [`BotConfig::ingress_limit_bps`]); `None` lifts it.
    pub fn set_ingress_limit(&self, bps: Option<u64>) {
        self.peer.set_ingress_limit(bps);
    }

    /// `tracks/update`: asks the SFU for simulcast layer `rid` (None: no preference) on the pulled
    /// track at `mid`.
    pub async fn set_preferred_rid(
        &self,
        track: &SubscribedTrack,
        rid: Option<&str>,
    ) -> Result<(), BotError> {
        let mut t = TrackObject::remote(track.session_id.clone(), track.track_name.clone());
        t.mid = Some(track.mid.clone());
        t.simulcast = Some(Simulcast {
            preferred_rid: Some(rid.unwrap_or_default().to_owned()),
            ..Simulcast::default()
        });
        let req = UpdateTracksRequest { tracks: vec![t] };
        let resp = self.client.update_tracks(&self.session_id, &req).await?;
        check_track_errors(&resp.tracks)
    }

    /// `GET /sessions/{id}` for this bot's session.
    pub async fn session_state(&self) -> Result<SessionState, BotError> {
        Ok(self.client.session(&self.session_id).await?)
    }

    /// Start or stop sending media on all published tracks.
    pub async fn set_sending(&self, sending: bool) -> Result<(), BotError> {
        self.with(move |p, now| p.set_sending(now, sending)).await
    }

    /// ICE usernames `(local, remote)`: the bot's, and the SFU's from its last SDP.
    pub async fn ice_ufrags(&self) -> Result<(String, Option<String>), BotError> {
        self.with(|p, _| p.ice_ufrags()).await
    }

    /// Send arbitrary bytes from this bot's UDP socket (for hostile-input tests).
    pub async fn send_raw(&self, destination: SocketAddr, bytes: Vec<u8>) -> Result<(), BotError> {
        self.with(move |p, _| p.send_raw(destination, bytes)).await
    }

    /// Statistics so far.
    pub async fn stats(&self) -> Result<BotStats, BotError> {
        let participant = self.with(|p, _| p.stats()).await?;
        Ok(BotStats {
            session_id: self.session_id.clone(),
            participant,
        })
    }

    /// Wait until DTLS is up (ICE connected and handshake done).
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), BotError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.with(|p, _| p.is_connected()).await? {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BotError::Timeout("connection"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop the media task and return the final statistics.
    pub async fn shutdown(self) -> Result<BotStats, BotError> {
        let stats = self.stats().await;
        self.peer.shutdown().await;
        stats
    }

    /// Vanish without a word: stop the media task at once (no DTLS close, no API call), as a crashed
    /// client or a lost network would.
    pub fn vanish(self) {
        self.peer.vanish();
    }
}

fn answer_of(resp: &TracksResponse) -> Result<String, BotError> {
    match &resp.session_description {
        Some(sd) if sd.is_answer() => Ok(sd.sdp.clone()),
        Some(sd) => Err(BotError::Protocol(format!(
            "expected an answer, got {:?}",
            sd.kind
        ))),
        None => Err(BotError::Protocol("push response carries no answer".into())),
    }
}

fn check_track_errors(tracks: &[TrackResult]) -> Result<(), BotError> {
    for t in tracks {
        if let Some(code) = &t.error_code {
            return Err(BotError::Track {
                track: t
                    .track_name
                    .clone()
                    .or_else(|| t.mid.clone())
                    .unwrap_or_default(),
                code: code.clone(),
                description: t.error_description.clone().unwrap_or_default(),
            });
        }
    }
    Ok(())
}

/// Recording real media: the pulled tracks' RTP packets, raw (see
/// [`crate::participant::TappedRtp`]).
impl Bot {
    /// From now on, the RTP packets of every pulled track come out of the returned receiver
    /// instead of going through the reception checks (which assume the bot's synthetic
    /// payloads) and the media crypto.
    pub async fn tap_rtp(
        &self,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<crate::participant::TappedRtp>, BotError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.with(move |p, _| p.set_rtp_tap(Some(tx))).await?;
        Ok(rx)
    }

    /// Asks the sender of pulled track `mid` for a keyframe (PLI); `false` if there is no
    /// receive stream for it yet.
    pub async fn request_keyframe(&self, mid: &str) -> Result<bool, BotError> {
        let mid = mid.to_owned();
        self.with(move |p, _| p.request_keyframe(&mid)).await
    }
}
