//! Fuzz body: the SFU API's JSON request bodies, decoded as the routes decode them.
//!
//! Shared by the cargo-fuzz target `api_json` and by `tests/fuzz_corpus.rs`, which replays
//! every file of `fuzz/corpus/api_json/` through it.
//!
//! The input is one HTTP body, decoded (with the routes' own `decode`) as each request
//! type: `sessions/new`, `tracks/new`, `renegotiate`, `tracks/close`, `tracks/update`,
//! `datachannels/new` and `datachannels/close`.
//! Invariants: nothing panics; a refusal is a typed 400 `decoding_error`; a body of only
//! whitespace is the default exactly where the route allows no body; whatever decodes
//! re-encodes to JSON that decodes to the same value; session ids in it parse only as
//! 32 hex characters and print back the same. An SDP in the body goes through str0m's
//! parser as the shard would parse it, and an offer that parses is accepted by a real
//! `Session`'s `Rtc` or refused with an error; an answer it produces parses again.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::http::StatusCode;
use satsuma_sfu::api::error::ApiError;
use satsuma_sfu::api::routes::decode;
use satsuma_sfu::api::types::{
    CloseTracksRequest, DataChannelsRequest, NewSessionRequest, RenegotiateRequest, SdpType,
    SessionDescription, TrackObject, TracksRequest, UpdateTracksRequest,
};
use satsuma_sfu::ids::SessionId;
use satsuma_sfu::session::Session;
use serde::Serialize;
use serde::de::DeserializeOwned;
use str0m::change::{SdpAnswer, SdpOffer};

pub(crate) fn run(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    let blank = data.iter().all(u8::is_ascii_whitespace);

    let new_session = check::<NewSessionRequest>(&body, true, blank);
    let tracks_new = check::<TracksRequest>(&body, false, blank);
    let renegotiate = check::<Option<RenegotiateRequest>>(&body, false, blank);
    let close = check::<CloseTracksRequest>(&body, false, blank);
    let update = check::<UpdateTracksRequest>(&body, false, blank);
    let datachannels = check::<DataChannelsRequest>(&body, false, blank);

    let mut descriptions: Vec<&SessionDescription> = Vec::new();
    let mut tracks: Vec<&TrackObject> = Vec::new();
    if let Some(r) = &new_session {
        descriptions.extend(&r.session_description);
    }
    if let Some(r) = &tracks_new {
        descriptions.extend(&r.session_description);
        tracks.extend(&r.tracks);
    }
    if let Some(Some(r)) = &renegotiate {
        descriptions.push(&r.session_description);
    }
    if let Some(r) = &close {
        descriptions.extend(&r.session_description);
    }
    if let Some(r) = &update {
        tracks.extend(&r.tracks);
    }

    let mut session_ids: Vec<&String> = tracks
        .iter()
        .filter_map(|t| t.session_id.as_ref())
        .collect();
    if let Some(r) = &datachannels {
        session_ids.extend(r.data_channels.iter().filter_map(|d| d.session_id.as_ref()));
    }
    for s in session_ids {
        if let Some(id) = SessionId::parse(s) {
            assert_eq!(s.len(), 32);
            assert!(id.to_string().eq_ignore_ascii_case(s));
            assert_eq!(SessionId::parse(&id.to_string()), Some(id));
        }
    }

    // The same SDP appears in every request type that carries one: check it once.
    if let Some(d) = descriptions.first() {
        sdp(d);
    }
}

/// Decodes `body` as `T` the way the routes do and checks the outcome.
fn check<T>(body: &Bytes, optional: bool, blank: bool) -> Option<T>
where
    T: DeserializeOwned + Serialize + Default + PartialEq + std::fmt::Debug,
{
    match decode::<T>(body, optional) {
        Ok(v) => {
            if blank {
                assert!(optional, "a blank body decoded where one is required");
                assert_eq!(v, T::default());
            }
            let json = serde_json::to_vec(&v).unwrap_or_else(|e| panic!("{v:?}: {e}"));
            match decode::<T>(&Bytes::from(json), optional) {
                Ok(again) => assert_eq!(again, v),
                Err(e) => panic!("{v:?} re-encoded does not decode: {e}"),
            }
            Some(v)
        }
        Err(e) => {
            assert!(!(blank && optional), "a blank optional body refused: {e}");
            assert_refusal(&e);
            None
        }
    }
}

fn assert_refusal(e: &ApiError) {
    assert_eq!(e.status, StatusCode::BAD_REQUEST);
    assert_eq!(e.code, "decoding_error");
    assert!(!e.description.is_empty());
}

/// The SDP as the shard parses it.
fn sdp(d: &SessionDescription) {
    match d.kind {
        SdpType::Offer => {
            let Ok(offer) = SdpOffer::from_sdp_string(&d.sdp) else {
                return;
            };
            // What we parsed prints as SDP that parses again.
            let printed = offer.to_sdp_string();
            assert!(
                SdpOffer::from_sdp_string(&printed).is_ok(),
                "a parsed offer prints as SDP that does not parse:\n{printed}"
            );
            let now = Instant::now();
            let mut session = Session::new(SessionId([7; 16]), Arc::from("fuzz"), &[], 0, now);
            if let Ok(answer) = session.rtc.sdp_api().accept_offer(offer) {
                let text = answer.to_sdp_string();
                assert!(
                    SdpAnswer::from_sdp_string(&text).is_ok(),
                    "our answer does not parse:\n{text}"
                );
            }
        }
        SdpType::Answer => {
            if let Ok(answer) = SdpAnswer::from_sdp_string(&d.sdp) {
                let printed = answer.to_sdp_string();
                assert!(
                    SdpAnswer::from_sdp_string(&printed).is_ok(),
                    "a parsed answer prints as SDP that does not parse:\n{printed}"
                );
            }
        }
    }
}
