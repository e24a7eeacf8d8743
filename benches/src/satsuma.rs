//! Signaling against Satsuma's Cloudflare-Realtime-compatible API for a [`Peer`].
//!
//! Push: the bot offers, `tracks/new` (local) answers. Pull: `tracks/new` (remote) returns the SFU's
//! offer, the bot answers with `renegotiate`. The same steps the bot crate's `Bot` does, run on this
//! crate's driver so Satsuma and Janus bots are identical apart from signaling.

use satsuma_bot::api::{SessionDescription, TrackObject, TracksRequest};
use satsuma_bot::participant::PullSpec;
use satsuma_bot::{ApiError, SfuClient, TrackSpec};
use thiserror::Error;

use satsuma_bot::peer::{Peer, PeerError};

/// Errors of Satsuma signaling.
#[derive(Debug, Error)]
pub enum SatsumaError {
    /// The HTTP API failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The media side failed.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The answer does not fit the request.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Create a session and publish `tracks` from `peer`. Returns the session id.
pub async fn publish(
    client: &SfuClient,
    peer: &Peer,
    tracks: Vec<TrackSpec>,
) -> Result<String, SatsumaError> {
    let session = client.new_session().await?.session_id;
    let specs = tracks.clone();
    let (offer, mids) = peer
        .with(move |p, now| p.create_push_offer(now, &specs))
        .await?
        .map_err(PeerError::from)?;
    let req = TracksRequest {
        session_description: Some(SessionDescription::offer(offer)),
        tracks: mids
            .iter()
            .zip(&tracks)
            .map(|(mid, t)| TrackObject::local(mid.clone(), t.name.clone()))
            .collect(),
    };
    let resp = client.new_tracks(&session, &req).await?;
    if let Some(t) = resp.tracks.iter().find(|t| t.error_code.is_some()) {
        return Err(SatsumaError::Protocol(format!(
            "push refused: {:?} {:?}",
            t.error_code, t.error_description
        )));
    }
    let answer = match resp.session_description {
        Some(sd) if sd.is_answer() => sd.sdp,
        _ => {
            return Err(SatsumaError::Protocol(
                "push response carries no answer".into(),
            ));
        }
    };
    peer.with(move |p, now| p.accept_answer(now, &answer))
        .await?
        .map_err(PeerError::from)?;
    Ok(session)
}

/// Create a session and pull `(session id, track name)` pairs into `peer`. Returns the session id.
pub async fn subscribe(
    client: &SfuClient,
    peer: &Peer,
    pulls: &[(String, String)],
) -> Result<String, SatsumaError> {
    let session = client.new_session().await?.session_id;
    let req = TracksRequest {
        session_description: None,
        tracks: pulls
            .iter()
            .map(|(s, n)| TrackObject::remote(s.clone(), n.clone()))
            .collect(),
    };
    let resp = client.new_tracks(&session, &req).await?;
    let mut specs = Vec::new();
    for (t, (sid, name)) in resp.tracks.iter().zip(pulls) {
        if let Some(code) = &t.error_code {
            return Err(SatsumaError::Protocol(format!(
                "pull {sid}/{name} refused: {code}"
            )));
        }
        let mid = t
            .mid
            .clone()
            .ok_or_else(|| SatsumaError::Protocol("pulled track without mid".into()))?;
        specs.push(PullSpec {
            mid,
            remote_session_id: sid.clone(),
            track_name: name.clone(),
        });
    }
    let offer = match resp.session_description {
        Some(sd) if sd.is_offer() => sd.sdp,
        _ => {
            return Err(SatsumaError::Protocol(
                "pull response carries no offer".into(),
            ));
        }
    };
    let answer = peer
        .with(move |p, now| p.accept_offer(now, &offer, &specs))
        .await?
        .map_err(PeerError::from)?;
    client
        .renegotiate(&session, SessionDescription::answer(answer))
        .await?;
    Ok(session)
}
