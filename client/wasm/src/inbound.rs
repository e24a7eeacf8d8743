//! The receiving side of one pulled track: whose frames it carries, what
//! happened to them, and when to ask the sender for a keyframe.

use std::collections::VecDeque;
use std::time::Duration;

use satsuma_e2ee::frame::{
    DropReason, FrameOrigin, Holdback, KeyframeRequester, ProtocolFrame, Verdict,
};
use wasm_bindgen::prelude::*;

use crate::ids::{BindingError, to_f64, to_u64};

/// Per-receiver state, one per pulled track (see [`crate::GroupMember::decrypt`]).
#[wasm_bindgen]
pub struct InboundTrack {
    pub(crate) sender: u64,
    keyframes: Option<KeyframeRequester>,
    keyframe_due: bool,
    decrypted: u64,
    dropped: u64,
    /// Copies of frames already decrypted (refused by the replay window): not lost, not
    /// counted as dropped. str0m pads a probing link with retransmissions of sent packets,
    /// and a one-packet frame that arrives again after its first copy left the receiver's
    /// packet buffer is handed to the transform a second time.
    duplicates: u64,
    protocol_frames: u64,
    epoch: Option<u64>,
    last_drop: Option<&'static str>,
    /// Frames waiting for their key, named by the worker's frame ids.
    pub(crate) holdback: Holdback<u32>,
    /// Verdicts not yet taken by the worker, in order: the frame id and its
    /// decrypted bytes, or `None` to discard it.
    releases: VecDeque<(u32, Option<Vec<u8>>)>,
    current: Option<Vec<u8>>,
}

#[wasm_bindgen]
impl InboundTrack {
    /// A track carrying `sender`'s frames; `video` tracks get a keyframe
    /// requester (at most one request per second, and after 10 drops in a row).
    ///
    /// # Errors
    /// `sender` is not a non-negative safe integer.
    #[wasm_bindgen(constructor)]
    pub fn new(sender: f64, video: bool) -> Result<InboundTrack, JsError> {
        Ok(Self::try_new(sender, video)?)
    }

    /// Records a frame passed on without decryption (the keyless observer and
    /// the decryption-disabled negative control): counts DAVE protocol frames.
    pub fn inspect(&mut self, frame: &[u8]) {
        self.observe(frame);
    }

    /// `true` once when a keyframe request is due (a key change, or a run of
    /// undecryptable frames), throttled.
    pub fn take_keyframe_request(&mut self, now_ms: f64) -> bool {
        let Some(requester) = self.keyframes.as_mut() else {
            return false;
        };
        std::mem::take(&mut self.keyframe_due) | requester.poll(crate::ids::millis(now_ms))
    }

    /// Asks for a keyframe at the next opportunity (the sender's keys changed).
    pub fn want_keyframe(&mut self) {
        if self.keyframes.is_some() {
            self.keyframe_due = true;
        }
    }

    /// The next frame (by the id given to `GroupMember::receive`) whose
    /// verdict is due, in order; then [`InboundTrack::take_data`] says what
    /// to do with it.
    pub fn next_release(&mut self) -> Option<u32> {
        let (id, data) = self.releases.pop_front()?;
        self.current = data;
        Some(id)
    }

    /// The decrypted bytes of the frame [`InboundTrack::next_release`]
    /// returned, or `undefined`: drop that frame.
    pub fn take_data(&mut self) -> Option<Vec<u8>> {
        self.current.take()
    }

    /// Frames waiting for their key now.
    #[must_use]
    pub fn held(&self) -> f64 {
        to_f64(self.holdback.held() as u64)
    }

    /// Frames that waited for their key and then decrypted.
    #[must_use]
    pub fn late(&self) -> f64 {
        to_f64(self.holdback.released())
    }

    /// The sender's participant id.
    #[must_use]
    pub fn sender(&self) -> f64 {
        to_f64(self.sender)
    }

    /// Frames decrypted.
    #[must_use]
    pub fn decrypted(&self) -> f64 {
        to_f64(self.decrypted)
    }

    /// Frames dropped: they could not be decrypted (copies of frames already decrypted are
    /// counted by [`InboundTrack::duplicates`] instead).
    #[must_use]
    pub fn dropped(&self) -> f64 {
        to_f64(self.dropped)
    }

    /// Copies of frames already decrypted, refused as replays.
    #[must_use]
    pub fn duplicates(&self) -> f64 {
        to_f64(self.duplicates)
    }

    /// Frames seen that parse as DAVE protocol frames (valid trailer ending in `FA FA`).
    #[must_use]
    pub fn protocol_frames(&self) -> f64 {
        to_f64(self.protocol_frames)
    }

    /// The epoch of the last decrypted frame.
    #[must_use]
    pub fn epoch(&self) -> Option<f64> {
        self.epoch.map(to_f64)
    }

    /// Why the last frame was dropped (`no-key`, `auth-failed`, …).
    #[must_use]
    pub fn last_drop(&self) -> Option<String> {
        self.last_drop.map(str::to_owned)
    }
}

impl InboundTrack {
    pub(crate) fn try_new(sender: f64, video: bool) -> Result<Self, BindingError> {
        let sender = to_u64(sender).ok_or(BindingError::NotAnId("sender"))?;
        Ok(Self {
            sender,
            keyframes: video.then(KeyframeRequester::default),
            keyframe_due: false,
            decrypted: 0,
            dropped: 0,
            duplicates: 0,
            protocol_frames: 0,
            epoch: None,
            last_drop: None,
            holdback: Holdback::default(),
            releases: VecDeque::new(),
            current: None,
        })
    }

    pub(crate) fn observe(&mut self, frame: &[u8]) {
        if ProtocolFrame::parse(frame).is_ok() {
            self.protocol_frames += 1;
        }
    }

    /// Records verdicts from the holdback and queues them for the worker.
    pub(crate) fn record_verdicts(&mut self, verdicts: Vec<Verdict<u32>>, now: Duration) {
        for verdict in verdicts {
            match verdict {
                Verdict::Deliver { token, frame } => {
                    self.record_decrypted(&frame.origin, now);
                    self.releases.push_back((token, Some(frame.frame)));
                }
                Verdict::Drop { token, reason } => {
                    self.record_dropped(&reason, now);
                    self.releases.push_back((token, None));
                }
            }
        }
    }

    pub(crate) fn record_decrypted(&mut self, origin: &FrameOrigin, now: Duration) {
        self.decrypted += 1;
        if let FrameOrigin::Encrypted { epoch, .. } = *origin {
            self.epoch = Some(epoch);
        }
        if let Some(requester) = self.keyframes.as_mut() {
            self.keyframe_due |= requester.on_decrypted(origin, now);
        }
    }

    pub(crate) fn record_dropped(&mut self, reason: &DropReason, now: Duration) {
        if matches!(reason, DropReason::Replay { .. }) {
            self.duplicates += 1;
        } else {
            self.dropped += 1;
            self.last_drop = Some(drop_code(reason));
        }
        if let Some(requester) = self.keyframes.as_mut() {
            self.keyframe_due |= requester.on_dropped(reason, now);
        }
    }
}

/// A short, stable name for a drop reason (shown in the UI, counted in tests).
fn drop_code(reason: &DropReason) -> &'static str {
    match reason {
        DropReason::NotProtocolFrame(_) => "not-encrypted",
        DropReason::UnknownSender(_) => "no-key",
        DropReason::EpochExpired(_) => "key-expired",
        DropReason::Replay { .. } => "replay",
        DropReason::GenerationExpired(_) => "generation-expired",
        DropReason::GenerationOutOfRange(_) => "generation-out-of-range",
        DropReason::AuthenticationFailed => "auth-failed",
    }
}
