//! The API commands a core executes (Cloudflare Realtime's sessions/tracks calls plus Satsuma's
//! extensions), typed: [`ApiCommand`] in, [`ApiReply`] or a [`CoreError`] out. HTTP (status
//! codes, JSON bodies, authentication, rate limits) stays in [`crate::api`], which decodes a
//! request into a command and encodes the reply.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use satsuma_wire::realtime::api_error_code;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, MediaKind, Mid, Rid};

use super::core::{Action, Core};
use super::media::initial_estimate_bps;
use crate::api::types::{
    ActiveSpeaker, CloseTracksRequest, CloseTracksResponse, DataChannelsRequest,
    DataChannelsResponse, KeyframeTracksRequest, KeyframeTracksResponse, Location,
    RenegotiateResponse, SdpType, SessionDescription, SessionState, TrackObject, TrackResult,
    TrackState, TrackStatus, TracksRequest, TracksResponse, UpdateTracksRequest,
    UpdateTracksResponse,
};
use crate::directory::{Directory, PublishedTrack, SessionSlot};
use crate::forward::LegKey;
use crate::ids::{SessionId, ShardId, TrackId};
use crate::metrics::{Metrics, Quota};
use crate::session::{LegState, Publication, Session, Subscription, ingress_budget};
use crate::udp::UdpControl;

/// Why a core refused an API command as a whole (per-track refusals are in the reply's track
/// results). [`crate::api::error`] maps each to an HTTP status and `errorCode`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// No such session on this shard.
    #[error("no such session for this app")]
    NoSession,
    /// The command does not make sense (`invalid_params`).
    #[error("{0}")]
    InvalidParams(String),
    /// An SDP did not parse or was refused (`invalid_sdp`).
    #[error("{0}")]
    InvalidSdp(String),
    /// An answer came but no SFU offer waits for one.
    #[error("there is no SFU offer waiting for an answer")]
    NoPendingOffer,
    /// Our fault (the session may have been closed).
    #[error("{0}")]
    Internal(String),
}

impl CoreError {
    fn invalid(description: impl Into<String>) -> Self {
        CoreError::InvalidParams(description.into())
    }

    fn sdp(description: impl Into<String>) -> Self {
        CoreError::InvalidSdp(description.into())
    }

    fn internal(description: impl Into<String>) -> Self {
        CoreError::Internal(description.into())
    }
}

/// An API command for the shard that owns the session.
#[derive(Debug)]
pub enum ApiCommand {
    /// `POST sessions/new`: a session `id` of `app`, answering `offer` if given; `slot` is the
    /// app's reserved place for it.
    Create {
        /// New id.
        id: SessionId,
        /// App.
        app: Arc<str>,
        /// Optional offer SDP.
        offer: Option<String>,
        /// The app's reserved place for the session.
        slot: SessionSlot,
    },
    /// `POST tracks/new`.
    TracksNew {
        /// Session.
        id: SessionId,
        /// Body.
        request: TracksRequest,
    },
    /// `PUT renegotiate`.
    Renegotiate {
        /// Session.
        id: SessionId,
        /// The client's SDP.
        description: SessionDescription,
    },
    /// `PUT tracks/close`.
    Close {
        /// Session.
        id: SessionId,
        /// Body.
        request: CloseTracksRequest,
    },
    /// `PUT tracks/update`.
    Update {
        /// Session.
        id: SessionId,
        /// Body.
        request: UpdateTracksRequest,
    },
    /// `POST tracks/keyframe` (Satsuma extension): PLIs to the session's own video tracks.
    Keyframe {
        /// Session.
        id: SessionId,
        /// Body.
        request: KeyframeTracksRequest,
    },
    /// `GET sessions/{id}`.
    Get {
        /// Session.
        id: SessionId,
    },
    /// `DELETE sessions/{id}` (Satsuma extension): close the session and end its tracks.
    Delete {
        /// Session.
        id: SessionId,
    },
    /// `POST datachannels/new`: publish or subscribe to data channels.
    DataChannelsNew {
        /// Session.
        id: SessionId,
        /// Body.
        request: DataChannelsRequest,
    },
    /// `PUT datachannels/close` (Satsuma extension): close data channels.
    DataChannelsClose {
        /// Session.
        id: SessionId,
        /// Body.
        request: DataChannelsRequest,
    },
}

/// The reply to an [`ApiCommand`], one variant per command.
#[derive(Debug)]
pub enum ApiReply {
    /// To `Create`: the answer SDP, if an offer was given.
    Created(Option<String>),
    /// To `TracksNew`.
    Tracks(TracksResponse),
    /// To `Renegotiate`.
    Renegotiated(RenegotiateResponse),
    /// To `Close`.
    Closed(CloseTracksResponse),
    /// To `Update`.
    Updated(UpdateTracksResponse),
    /// To `Keyframe`.
    Keyframe(KeyframeTracksResponse),
    /// To `Get`.
    State(SessionState),
    /// To `Delete`: the session is gone.
    Deleted,
    /// To `DataChannelsNew` and `DataChannelsClose`.
    DataChannels(DataChannelsResponse),
}

impl Core {
    /// Executes an API command at `now`.
    pub fn handle_api(&mut self, now: Instant, cmd: ApiCommand) -> Result<ApiReply, CoreError> {
        self.now = now;
        let reply = match cmd {
            ApiCommand::Create {
                id,
                app,
                offer,
                slot,
            } => self
                .guarded(id, |s| s.create(id, app, offer, slot))
                .map(ApiReply::Created),
            ApiCommand::TracksNew { id, request } => self
                .guarded(id, |s| s.tracks_new(id, request))
                .map(ApiReply::Tracks),
            ApiCommand::Renegotiate { id, description } => self
                .guarded(id, |s| s.renegotiate(id, description))
                .map(ApiReply::Renegotiated),
            ApiCommand::Close { id, request } => self
                .guarded(id, |s| s.close(id, request))
                .map(ApiReply::Closed),
            ApiCommand::Update { id, request } => self
                .guarded(id, |s| s.update(id, request))
                .map(ApiReply::Updated),
            ApiCommand::Keyframe { id, request } => self
                .guarded(id, |s| s.publisher_keyframe(id, request))
                .map(ApiReply::Keyframe),
            ApiCommand::Get { id } => self.guarded(id, |s| s.get(id)).map(ApiReply::State),
            ApiCommand::DataChannelsNew { id, request } => self
                .guarded(id, |s| s.datachannels_new(id, request))
                .map(ApiReply::DataChannels),
            ApiCommand::DataChannelsClose { id, request } => self
                .guarded(id, |s| s.datachannels_close(id, request))
                .map(ApiReply::DataChannels),
            ApiCommand::Delete { id } => {
                if self.sessions.contains_key(&id) {
                    self.remove_session(id, "deleted through the API");
                    Ok(ApiReply::Deleted)
                } else {
                    Err(CoreError::NoSession)
                }
            }
        };
        self.settle();
        reply
    }

    /// Runs an API operation; a panic inside tears the session down and becomes an internal
    /// error.
    fn guarded<T>(
        &mut self,
        id: SessionId,
        op: impl FnOnce(&mut Core) -> Result<T, CoreError>,
    ) -> Result<T, CoreError> {
        match catch_unwind(AssertUnwindSafe(|| op(self))) {
            Ok(r) => {
                self.mark_dirty(id);
                r
            }
            Err(_) => {
                self.session_panicked(id);
                Err(CoreError::internal("session failed and was closed"))
            }
        }
    }

    fn session_mut(&mut self, id: SessionId) -> Result<&mut Session, CoreError> {
        self.sessions.get_mut(&id).ok_or(CoreError::NoSession)
    }

    fn create(
        &mut self,
        id: SessionId,
        app: Arc<str>,
        offer: Option<String>,
        slot: SessionSlot,
    ) -> Result<Option<String>, CoreError> {
        let now = self.now;
        let mut session = Session::new(
            id,
            Arc::clone(&app),
            &self.ctx.candidates,
            self.ctx.config.bwe_initial_kbps,
            now,
        );
        session.ingress = ingress_budget(self.ctx.config.limits.session_max_ingress_kbps, now);
        session.add_tcp_candidates(&self.ctx.tcp_candidates);
        let answer = match offer {
            Some(sdp) => Some(accept_offer(
                &mut session,
                &sdp,
                self.id,
                &self.ctx.metrics,
                &mut self.actions,
            )?),
            None => None,
        };
        self.routing(UdpControl::Register {
            ufrag: session.ufrag.clone(),
            session: id,
            shard: self.id,
        });
        self.ctx.directory.add_session(
            id,
            app,
            self.id,
            self.ctx.config.session_requests_per_second,
        );
        slot.commit();
        self.ctx.metrics.sessions.inc();
        self.sessions.insert(id, session);
        if let Some(bps) = initial_estimate_bps(&self.ctx.config) {
            // Until str0m's first estimate, layers are chosen to fit the initial one: a leg
            // that started on the top layer would overfill the pacer before the estimate came.
            self.forwarder.note_estimate(id, bps, now);
        }
        Ok(answer)
    }

    fn tracks_new(
        &mut self,
        id: SessionId,
        request: TracksRequest,
    ) -> Result<TracksResponse, CoreError> {
        let now = self.now;
        let shard = self.id;
        let ctx = Arc::clone(&self.ctx);
        let directory = &ctx.directory;
        let limits = &ctx.config.limits;
        let session = self.sessions.get_mut(&id).ok_or(CoreError::NoSession)?;
        let app = Arc::clone(&session.app);

        let answer = match &request.session_description {
            Some(sd) if sd.kind == SdpType::Offer => Some(accept_offer(
                session,
                &sd.sdp,
                shard,
                &ctx.metrics,
                &mut self.actions,
            )?),
            Some(_) => {
                return Err(CoreError::invalid(
                    "tracks/new takes an offer; answers go to renegotiate",
                ));
            }
            None => None,
        };

        let mut results = Vec::with_capacity(request.tracks.len());
        let mut published = Vec::new();
        let mut bound = Vec::new();
        let mut to_offer: Vec<(usize, Subscription)> = Vec::new();

        for t in &request.tracks {
            let i = results.len();
            match t.location {
                Some(Location::Local) => {
                    let r = TrackResult {
                        track_name: t.track_name.clone(),
                        mid: t.mid.clone(),
                        ..Default::default()
                    };
                    let live = session.publications.values().filter(|p| p.active).count();
                    if live >= limits.session_max_publications {
                        ctx.metrics.refused(Quota::SessionPublications);
                        results.push(r.with_error(
                            api_error_code::TOO_MANY_PUBLICATIONS,
                            format!(
                                "a session may publish at most {} tracks at once",
                                limits.session_max_publications
                            ),
                        ));
                        continue;
                    }
                    match push_track(session, t, answer.is_some(), directory, shard, now) {
                        Ok((mid, track, kind)) => {
                            published.push((track, mid, kind));
                            results.push(r);
                        }
                        Err((code, text)) => results.push(r.with_error(code, text)),
                    }
                }
                Some(Location::Remote) => {
                    let r = TrackResult {
                        session_id: t.session_id.clone(),
                        track_name: t.track_name.clone(),
                        mid: t.mid.clone(),
                        ..Default::default()
                    };
                    let pulls = resolve_remote(directory, &app, t).and_then(|sub| {
                        check_pull_quota(session, &to_offer, sub.track, limits)
                            .map_err(|(quota, code, text)| {
                                ctx.metrics.refused(quota);
                                (code, text)
                            })
                            .map(|()| sub)
                    });
                    match pulls {
                        Err((code, text)) => results.push(r.with_error(code, text)),
                        Ok(sub) => match (&t.mid, answer.is_some()) {
                            (Some(mid), true) => {
                                let mid = Mid::from(mid.as_str());
                                match session.sends_on(mid) {
                                    Some(kind) if kind == sub.kind => {
                                        if session.subscriptions.contains_key(&mid)
                                            || session.publications.contains_key(&mid)
                                        {
                                            results.push(r.with_error(
                                                api_error_code::INVALID_PARAMS,
                                                "that mid already carries a track",
                                            ));
                                        } else {
                                            session.subscriptions.insert(mid, sub);
                                            bound.push(mid);
                                            results.push(r);
                                        }
                                    }
                                    _ => results.push(r.with_error(
                                        api_error_code::INVALID_PARAMS,
                                        "the offer has no receiving m-line of that kind with this mid",
                                    )),
                                }
                            }
                            (_, true) => results.push(r.with_error(
                                api_error_code::INVALID_PARAMS,
                                "with an offer, a remote track needs the mid of a receiving transceiver in that offer",
                            )),
                            (_, false) => {
                                to_offer.push((i, sub));
                                results.push(r);
                            }
                        },
                    }
                }
                None => results.push(
                    TrackResult {
                        mid: t.mid.clone(),
                        track_name: t.track_name.clone(),
                        session_id: t.session_id.clone(),
                        ..Default::default()
                    }
                    .with_error(
                        api_error_code::INVALID_PARAMS,
                        "location must be local or remote",
                    ),
                ),
            }
        }

        let mut offer = None;
        if !to_offer.is_empty() {
            if session.pending.is_some() {
                for (i, _) in &to_offer {
                    if let Some(r) = results.get_mut(*i) {
                        *r = std::mem::take(r).with_error(
                            api_error_code::RENEGOTIATION_PENDING,
                            "answer the previous SFU offer (renegotiate) before pulling more tracks",
                        );
                    }
                }
            } else {
                let mut api = session.rtc.sdp_api();
                let mut mids = Vec::new();
                for (i, sub) in &to_offer {
                    let mid = api.add_media(
                        sub.kind,
                        Direction::SendOnly,
                        Some(sub.source.to_string()),
                        Some(sub.name.clone()),
                        None,
                    );
                    mids.push((*i, mid));
                }
                match api.apply() {
                    Some((sdp, pending)) => {
                        session.pending = Some(pending);
                        offer = Some(sdp.to_sdp_string());
                        for ((i, sub), (_, mid)) in to_offer.into_iter().zip(mids) {
                            if let Some(r) = results.get_mut(i) {
                                r.mid = Some(mid.to_string());
                            }
                            session.subscriptions.insert(mid, sub);
                        }
                    }
                    None => return Err(CoreError::internal("could not create an offer")),
                }
            }
        }

        for (track, mid, kind) in published {
            self.forwarder.publish(track, id, mid, kind, now);
            self.ctx.metrics.tracks.inc();
        }
        for mid in bound {
            self.activate_leg(id, mid);
        }

        let (requires, description) = match (offer, answer) {
            (Some(sdp), _) => (
                true,
                Some(SessionDescription {
                    kind: SdpType::Offer,
                    sdp,
                }),
            ),
            (None, Some(sdp)) => (
                false,
                Some(SessionDescription {
                    kind: SdpType::Answer,
                    sdp,
                }),
            ),
            (None, None) => (false, None),
        };
        Ok(TracksResponse {
            requires_immediate_renegotiation: requires,
            session_description: description,
            tracks: results,
        })
    }

    fn renegotiate(
        &mut self,
        id: SessionId,
        description: SessionDescription,
    ) -> Result<RenegotiateResponse, CoreError> {
        let ctx = Arc::clone(&self.ctx);
        let shard = self.id;
        let session = self.sessions.get_mut(&id).ok_or(CoreError::NoSession)?;
        match description.kind {
            SdpType::Offer => {
                let answer = accept_offer(
                    session,
                    &description.sdp,
                    shard,
                    &ctx.metrics,
                    &mut self.actions,
                )?;
                Ok(RenegotiateResponse {
                    session_description: Some(SessionDescription {
                        kind: SdpType::Answer,
                        sdp: answer,
                    }),
                })
            }
            SdpType::Answer => {
                let answer = SdpAnswer::from_sdp_string(&description.sdp)
                    .map_err(|e| CoreError::sdp(format!("cannot parse the answer: {e}")))?;
                let Some(pending) = session.pending.take() else {
                    return Err(CoreError::NoPendingOffer);
                };
                if let Err(e) = session.rtc.sdp_api().accept_answer(pending, answer) {
                    cancel_negotiating(session);
                    return Err(CoreError::sdp(format!("answer rejected: {e}")));
                }
                session.clear_ssrc_cache();
                let negotiating: Vec<Mid> = session
                    .subscriptions
                    .iter()
                    .filter(|(_, s)| s.state == LegState::Negotiating)
                    .map(|(m, _)| *m)
                    .collect();
                for mid in negotiating {
                    self.activate_leg(id, mid);
                }
                Ok(RenegotiateResponse::default())
            }
        }
    }

    fn close(
        &mut self,
        id: SessionId,
        request: CloseTracksRequest,
    ) -> Result<CloseTracksResponse, CoreError> {
        if request.tracks.is_empty() {
            return Err(CoreError::invalid("tracks must list at least one mid"));
        }
        if let Some(sd) = &request.session_description
            && sd.kind != SdpType::Offer
        {
            return Err(CoreError::invalid("tracks/close takes an offer"));
        }
        self.session_mut(id)?;
        let mut results = Vec::new();
        let mut closed = Vec::new();
        for t in &request.tracks {
            let r = TrackResult {
                mid: t.mid.clone(),
                ..Default::default()
            };
            let Some(mid_text) = &t.mid else {
                results.push(r.with_error(api_error_code::INVALID_PARAMS, "mid is required"));
                continue;
            };
            let mid = Mid::from(mid_text.as_str());
            let (publication, subscription) = match self.sessions.get(&id) {
                Some(s) => (
                    s.publications
                        .get(&mid)
                        .filter(|p| p.active)
                        .map(|p| p.track),
                    s.subscriptions
                        .get(&mid)
                        .filter(|s| s.state != LegState::Inactive)
                        .is_some(),
                ),
                None => return Err(CoreError::NoSession),
            };
            if let Some(track) = publication {
                self.unpublish(track);
                closed.push(mid);
                results.push(r);
            } else if subscription {
                self.deactivate_leg(id, mid);
                closed.push(mid);
                results.push(r);
            } else {
                results.push(r.with_error(
                    api_error_code::CLOSE_TRACK_ERROR,
                    "Track doesn't exist or was already closed",
                ));
            }
        }
        let ctx = Arc::clone(&self.ctx);
        let shard = self.id;
        let session = self.sessions.get_mut(&id).ok_or(CoreError::NoSession)?;
        let mut requires = false;
        let description = if let Some(sd) = request.session_description {
            Some(SessionDescription {
                kind: SdpType::Answer,
                sdp: accept_offer(session, &sd.sdp, shard, &ctx.metrics, &mut self.actions)?,
            })
        } else if !request.force && !closed.is_empty() && session.pending.is_none() {
            let mut api = session.rtc.sdp_api();
            for mid in &closed {
                api.stop_media(*mid);
            }
            match api.apply() {
                Some((offer, pending)) => {
                    session.pending = Some(pending);
                    requires = true;
                    Some(SessionDescription {
                        kind: SdpType::Offer,
                        sdp: offer.to_sdp_string(),
                    })
                }
                None => None,
            }
        } else {
            None
        };
        Ok(CloseTracksResponse {
            session_description: description,
            tracks: results,
            requires_immediate_renegotiation: requires,
        })
    }

    fn update(
        &mut self,
        id: SessionId,
        request: UpdateTracksRequest,
    ) -> Result<UpdateTracksResponse, CoreError> {
        let ctx = Arc::clone(&self.ctx);
        let directory = &ctx.directory;
        let app = Arc::clone(&self.session_mut(id)?.app);
        let mut results = Vec::new();
        for t in &request.tracks {
            let r = TrackResult {
                mid: t.mid.clone(),
                session_id: t.session_id.clone(),
                track_name: t.track_name.clone(),
                ..Default::default()
            };
            if t.location != Some(Location::Remote) {
                results.push(r.with_error(
                    api_error_code::INVALID_PARAMS,
                    "only remote tracks can be updated",
                ));
                continue;
            }
            let Some(mid_text) = &t.mid else {
                results.push(r.with_error(api_error_code::INVALID_PARAMS, "mid is required"));
                continue;
            };
            let mid = Mid::from(mid_text.as_str());
            let Some(current) = self
                .sessions
                .get(&id)
                .and_then(|s| s.subscriptions.get(&mid))
                .cloned()
            else {
                results
                    .push(r.with_error(api_error_code::NOT_FOUND, "no pulled track on that mid"));
                continue;
            };
            let new = match resolve_remote(directory, &app, t) {
                Ok(new) => new,
                Err((code, text)) => {
                    results.push(r.with_error(code, text));
                    continue;
                }
            };
            if new.track != current.track
                && let Some(session) = self.sessions.get(&id)
                && let Err((quota, code, text)) =
                    check_track_pulls(session, &[], new.track, &ctx.config.limits)
            {
                ctx.metrics.refused(quota);
                results.push(r.with_error(code, text));
                continue;
            }
            if new.kind != current.kind {
                results.push(r.with_error(
                    api_error_code::INVALID_PARAMS,
                    "the new track is not of the same kind as the transceiver",
                ));
                continue;
            }
            if new.track == current.track && current.state == LegState::Active {
                self.forwarder
                    .set_preferred_rid(LegKey { session: id, mid }, new.preferred_rid);
                self.select_layers(Some(id));
                results.push(r);
                continue;
            }
            let was_active = current.state == LegState::Active;
            self.deactivate_leg(id, mid);
            if let Some(s) = self.sessions.get_mut(&id) {
                let mut sub = new;
                sub.state = if was_active || current.state == LegState::Inactive {
                    LegState::Negotiating
                } else {
                    current.state
                };
                let activate = was_active || current.state == LegState::Inactive;
                s.subscriptions.insert(mid, sub);
                if activate {
                    self.activate_leg(id, mid);
                }
            }
            results.push(r);
        }
        Ok(UpdateTracksResponse {
            requires_immediate_renegotiation: false,
            tracks: results,
        })
    }

    fn get(&mut self, id: SessionId) -> Result<SessionState, CoreError> {
        let data_channels = self.datachannel_states(id);
        let now = self.now;
        let speakers = &self.speakers;
        let session = self.sessions.get(&id).ok_or(CoreError::NoSession)?;
        let level = |track: TrackId, kind: MediaKind| {
            (kind == MediaKind::Audio)
                .then(|| speakers.level(track, now))
                .flatten()
        };
        let mut tracks: Vec<TrackState> = session
            .publications
            .iter()
            .map(|(mid, p)| {
                let l = level(p.track, p.kind);
                TrackState {
                    location: Location::Local,
                    mid: mid.to_string(),
                    track_name: p.name.clone(),
                    session_id: None,
                    status: if p.active {
                        TrackStatus::Active
                    } else {
                        TrackStatus::Inactive
                    },
                    audio_level: l.map(|l| l.last_dbov),
                    speaking: l.map(|l| l.speaking),
                }
            })
            .chain(session.subscriptions.iter().map(|(mid, s)| {
                let l = level(s.track, s.kind);
                TrackState {
                    location: Location::Remote,
                    mid: mid.to_string(),
                    track_name: s.name.clone(),
                    session_id: Some(s.source.to_string()),
                    status: match s.state {
                        LegState::Active => TrackStatus::Active,
                        LegState::Negotiating => TrackStatus::Initializing,
                        LegState::Inactive => TrackStatus::Inactive,
                    },
                    audio_level: l.map(|l| l.last_dbov),
                    speaking: l.map(|l| l.speaking),
                }
            }))
            .collect();
        tracks.sort_by(|a, b| a.mid.cmp(&b.mid));
        let active_speaker = session.active_speaker.and_then(|track| {
            session
                .subscriptions
                .values()
                .find(|s| s.track == track)
                .map(|s| ActiveSpeaker {
                    session_id: s.source.to_string(),
                    track_name: s.name.clone(),
                })
        });
        Ok(SessionState {
            tracks,
            active_speaker,
            data_channels,
        })
    }
}

/// Accepts a client offer; an SFU offer still waiting for its answer is abandoned. An offer
/// with new ICE credentials restarts ICE (see [`note_ice_restart`]).
fn accept_offer(
    session: &mut Session,
    sdp: &str,
    shard: ShardId,
    metrics: &Metrics,
    actions: &mut VecDeque<Action>,
) -> Result<String, CoreError> {
    let offer = SdpOffer::from_sdp_string(sdp)
        .map_err(|e| CoreError::sdp(format!("cannot parse the offer: {e}")))?;
    if session.pending.take().is_some() {
        cancel_negotiating(session);
    }
    let accepted = session.rtc.sdp_api().accept_offer(offer);
    // str0m takes new ICE credentials before it checks the rest of the offer: even a refused
    // offer may have restarted ICE.
    note_ice_restart(session, shard, metrics, actions);
    let answer = accepted.map_err(|e| CoreError::sdp(format!("offer rejected: {e}")))?;
    session.data_offered |= super::channel::offers_data(sdp);
    session.clear_ssrc_cache();
    Ok(answer.to_sdp_string())
}

/// After an accepted offer: if it restarted ICE (the client sent new ICE credentials, str0m
/// answered with new local ones), STUN checks for the new ufrag must reach the session, and the
/// routes of the old path must not keep the new one from being learnt (see
/// [`crate::routes::Routes`]). The session, its tracks and its DTLS state stay as they are.
fn note_ice_restart(
    session: &mut Session,
    shard: ShardId,
    metrics: &Metrics,
    actions: &mut VecDeque<Action>,
) {
    let ufrag = session.rtc.direct_api().local_ice_credentials().ufrag;
    if ufrag == session.ufrag {
        return;
    }
    tracing::debug!(session = %session.id, "ICE restart");
    metrics.ice_restarts.inc();
    session.ufrag = ufrag.clone();
    actions.push_back(Action::Routing(UdpControl::ReplaceUfrag {
        ufrag,
        session: session.id,
        shard,
    }));
    for addr in session.routes.restarted() {
        actions.push_back(Action::Routing(UdpControl::Unroute {
            addr,
            session: session.id,
        }));
    }
}

/// Forgets legs whose m-lines were only in an abandoned SFU offer.
fn cancel_negotiating(session: &mut Session) {
    session
        .subscriptions
        .retain(|_, s| s.state != LegState::Negotiating);
}

/// Validates and registers one pushed track; returns (mid, track id, kind).
fn push_track(
    session: &mut Session,
    t: &TrackObject,
    have_offer: bool,
    directory: &Directory,
    shard: ShardId,
    now: Instant,
) -> Result<(Mid, TrackId, MediaKind), (&'static str, String)> {
    let _ = now;
    let (Some(mid_text), Some(name)) = (&t.mid, &t.track_name) else {
        return Err((
            api_error_code::INVALID_PARAMS,
            "a local track needs mid and trackName".into(),
        ));
    };
    if name.is_empty() || name.len() > 256 {
        return Err((
            api_error_code::INVALID_PARAMS,
            "trackName must be 1 to 256 characters".into(),
        ));
    }
    if !have_offer {
        return Err((
            api_error_code::INVALID_PARAMS,
            "pushing a track needs an offer (sessionDescription)".into(),
        ));
    }
    let mid = Mid::from(mid_text.as_str());
    if mid.to_string() != *mid_text {
        return Err((
            api_error_code::INVALID_PARAMS,
            "mid must be up to 16 letters or digits".into(),
        ));
    }
    let Some(kind) = session.receives_on(mid) else {
        return Err((
            api_error_code::INVALID_PARAMS,
            format!("the offer has no m-line {mid_text} that sends media"),
        ));
    };
    if let Some(p) = session.publications.get(&mid)
        && p.active
    {
        return Err((
            api_error_code::INVALID_PARAMS,
            format!("mid {mid_text} already carries track {}", p.name),
        ));
    }
    let params = session.negotiated_params(mid);
    let track = directory.next_track_id();
    let entry = PublishedTrack {
        track,
        shard,
        kind,
        params: params.clone(),
    };
    if !directory.publish(session.id, name, entry) {
        return Err((
            api_error_code::DUPLICATE_TRACK_NAME,
            format!("this session already publishes a track named {name}"),
        ));
    }
    session.publications.insert(
        mid,
        Publication {
            track,
            name: name.clone(),
            kind,
            params,
            active: true,
        },
    );
    Ok((mid, track, kind))
}

/// Pulls a session may make over its life, as a multiple of `Limits::session_max_legs`.
const MLINES_PER_LEG: usize = 4;

/// A quota refusal: the quota, the per-track `errorCode` and its description.
type QuotaError = (Quota, &'static str, String);

/// Whether `session` may pull one more leg, on `track`, given the pulls of this request not yet
/// in its subscriptions (`pending`).
fn check_pull_quota(
    session: &Session,
    pending: &[(usize, Subscription)],
    track: TrackId,
    limits: &crate::config::Limits,
) -> Result<(), QuotaError> {
    let live = session
        .subscriptions
        .values()
        .filter(|s| s.state != LegState::Inactive)
        .count()
        + pending.len();
    if live >= limits.session_max_legs {
        return Err((
            Quota::SessionLegs,
            api_error_code::TOO_MANY_LEGS,
            format!(
                "a session may pull at most {} tracks at once",
                limits.session_max_legs
            ),
        ));
    }
    // Closed legs keep their (stopped) m-line in the session's SDP: pulling and closing in a
    // loop would grow it without end. A session may have used 4 times its live-leg limit.
    let used = session.subscriptions.len() + pending.len();
    if used >= limits.session_max_legs.saturating_mul(MLINES_PER_LEG) {
        return Err((
            Quota::SessionLegs,
            api_error_code::TOO_MANY_LEGS,
            format!(
                "this session has pulled {used} tracks over its life (limit {}); start a new session",
                limits.session_max_legs.saturating_mul(MLINES_PER_LEG)
            ),
        ));
    }
    check_track_pulls(session, pending, track, limits)
}

/// Whether `session` may pull `track` once more.
fn check_track_pulls(
    session: &Session,
    pending: &[(usize, Subscription)],
    track: TrackId,
    limits: &crate::config::Limits,
) -> Result<(), QuotaError> {
    let same = session
        .subscriptions
        .values()
        .filter(|s| s.state != LegState::Inactive && s.track == track)
        .count()
        + pending.iter().filter(|(_, s)| s.track == track).count();
    if same >= limits.session_max_pulls_per_track {
        return Err((
            Quota::SessionPullsPerTrack,
            api_error_code::TOO_MANY_PULLS,
            format!(
                "a session may pull the same track at most {} times at once",
                limits.session_max_pulls_per_track
            ),
        ));
    }
    Ok(())
}

/// Finds the published track a remote track entry names.
fn resolve_remote(
    directory: &Directory,
    app: &str,
    t: &TrackObject,
) -> Result<Subscription, (&'static str, String)> {
    let (Some(sid), Some(name)) = (&t.session_id, &t.track_name) else {
        return Err((
            api_error_code::INVALID_PARAMS,
            "a remote track needs sessionId and trackName".into(),
        ));
    };
    let Some(source) = SessionId::parse(sid) else {
        return Err((api_error_code::NOT_FOUND, format!("no session {sid}")));
    };
    let Some(info) = directory.lookup(app, source, name) else {
        return Err((
            api_error_code::NOT_FOUND,
            format!("session {sid} publishes no track named {name}"),
        ));
    };
    let preferred_rid = t
        .simulcast
        .as_ref()
        .and_then(|s| s.preferred_rid.as_deref())
        .filter(|r| !r.is_empty())
        .map(Rid::from);
    Ok(Subscription {
        track: info.track,
        home: info.shard,
        source,
        name: name.clone(),
        kind: info.kind,
        source_params: info.params,
        preferred_rid,
        state: LegState::Negotiating,
    })
}
