//! `POST tracks/keyframe` (Satsuma extension): a session asks for a keyframe of video tracks it
//! publishes. A client whose sending key just changed (an MLS epoch change) needs its next video
//! frame to be a keyframe under the new key, or a joiner cannot decode anything until the next
//! one; browsers that cannot make their encoder emit one on demand ask the SFU to send their own
//! publication a PLI (every simulcast layer). The forwarder limits this to one request per track
//! per [`PUBLISHER_KEYFRAME_GAP`] and counts it against the subscribers' keyframe throttle.

use satsuma_wire::realtime::api_error_code;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Rid, Rids};

use super::commands::CoreError;
use super::core::Core;
use crate::api::types::{KeyframeTracksRequest, KeyframeTracksResponse, Location, TrackResult};
use crate::forward::{PUBLISHER_KEYFRAME_GAP, PublisherKeyframeRefusal};
use crate::ids::{SessionId, TrackId};

/// What a named track of the asking session is.
enum Found {
    /// An active video publication: its track, m-line and layers.
    Video(TrackId, Mid, Vec<Option<Rid>>),
    /// A per-track error: code and description.
    Refused(&'static str, String),
}

impl Core {
    pub(super) fn publisher_keyframe(
        &mut self,
        id: SessionId,
        request: KeyframeTracksRequest,
    ) -> Result<KeyframeTracksResponse, CoreError> {
        let now = self.now;
        let mut results = Vec::with_capacity(request.tracks.len());
        let mut targets = Vec::new();
        for t in &request.tracks {
            let r = TrackResult {
                track_name: t.track_name.clone(),
                ..Default::default()
            };
            let found = self.find_own_video(id, t.location, t.track_name.as_deref())?;
            let (track, mid, layers) = match found {
                Found::Video(track, mid, layers) => (track, mid, layers),
                Found::Refused(code, text) => {
                    results.push(r.with_error(code, text));
                    continue;
                }
            };
            match self
                .forwarder
                .publisher_keyframe_request(track, &layers, now)
            {
                Ok(t) => {
                    self.ctx
                        .metrics
                        .keyframe_requests
                        .with_label_values(&["publisher_asked"])
                        .inc();
                    targets.extend(t);
                    results.push(TrackResult {
                        mid: Some(mid.to_string()),
                        ..r
                    });
                }
                Err(PublisherKeyframeRefusal::TooSoon) => results.push(r.with_error(
                    api_error_code::RATE_LIMITED,
                    format!(
                        "a keyframe of this track was requested less than {} ms ago",
                        PUBLISHER_KEYFRAME_GAP.as_millis()
                    ),
                )),
                Err(PublisherKeyframeRefusal::NotVideo) => {
                    results.push(r.with_error(api_error_code::INVALID_PARAMS, "not a video track"));
                }
                Err(PublisherKeyframeRefusal::Unknown) => {
                    results.push(r.with_error(api_error_code::NOT_FOUND, "no such track"));
                }
            }
        }
        for target in targets {
            self.send_keyframe_request(target, KeyframeRequestKind::Pli);
        }
        Ok(KeyframeTracksResponse { tracks: results })
    }

    /// Looks up a track the session `id` names in `tracks/keyframe`.
    fn find_own_video(
        &self,
        id: SessionId,
        location: Option<Location>,
        name: Option<&str>,
    ) -> Result<Found, CoreError> {
        let session = self.sessions.get(&id).ok_or(CoreError::NoSession)?;
        let refused = |code, text: &str| Ok(Found::Refused(code, text.to_string()));
        if location == Some(Location::Remote) {
            return refused(
                api_error_code::INVALID_PARAMS,
                "only tracks this session publishes (local) can be asked for a keyframe",
            );
        }
        let Some(name) = name else {
            return refused(api_error_code::INVALID_PARAMS, "trackName is required");
        };
        // A closed publication keeps its name (for `GET`) and a new one may reuse it.
        let publication = session
            .publications
            .iter()
            .filter(|(_, p)| p.name == name)
            .max_by_key(|(_, p)| p.active);
        let Some((mid, p)) = publication else {
            if session.subscriptions.values().any(|s| s.name == name) {
                return refused(
                    api_error_code::INVALID_PARAMS,
                    "a track this session pulls: only its publisher can ask for a keyframe",
                );
            }
            return refused(
                api_error_code::NOT_FOUND,
                "this session publishes no track of that name",
            );
        };
        if !p.active {
            return refused(api_error_code::NOT_FOUND, "the track is closed");
        }
        if p.kind != MediaKind::Video {
            return refused(api_error_code::INVALID_PARAMS, "not a video track");
        }
        if !session.is_connected() {
            return refused(
                api_error_code::NOT_CONNECTED,
                "the session's transport is not connected: nothing would reach the publisher",
            );
        }
        let layers = match session.rtc.media(*mid).map(|m| m.rids_rx()) {
            Some(Rids::Specific(rids)) => rids.iter().map(|r| Some(*r)).collect(),
            _ => Vec::new(),
        };
        Ok(Found::Video(p.track, *mid, layers))
    }
}
