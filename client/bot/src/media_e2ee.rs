//! End-to-end encrypted media for a bot that acts for a [`RoomMember`](crate::room::RoomMember):
//! [`RoomMediaCrypto`] is the [`MediaCrypto`] of the member's MLS keys, as the web client's
//! E2EE worker is for a page. What the bot publishes is sealed with the member's send key
//! of the current epoch (DAVE framing: Opus whole, VP8 with its payload header clear); what
//! it pulls is opened with the keys of the participant that owns the publishing SFU session
//! (the room's log names the owner of every session the coordinator proxied), through one
//! inbound track per pulled track: a holdback for frames whose key has not arrived yet, and
//! a replay window.
//!
//! Counts per sender ([`MediaStats`]) are what tests assert on: frames decrypted, frames
//! that could not be decrypted, replays, and frames on sessions nobody in the room owns.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use satsuma_wasm::InboundTrack;

use crate::participant::MediaCrypto;
use crate::payload::MediaKind;
use crate::room::{Core, Sessions, lock};

/// What one receiver got from one sender.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Frames decrypted.
    pub decrypted: u64,
    /// Frames that could not be decrypted (no key, expired key, failed authentication,
    /// not encrypted); replays are not counted here.
    pub failed: u64,
    /// Copies of frames already decrypted (retransmissions), refused by the replay window.
    pub duplicates: u64,
    /// Frames that waited for their key and then decrypted.
    pub late: u64,
    /// Why the last frame failed (`no-key`, `auth-failed`, …).
    pub last_failure: Option<String>,
    /// The epoch of the last decrypted frame.
    pub epoch: Option<u64>,
}

/// What a member's media crypto did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaStats {
    /// Frames sealed.
    pub sealed: u64,
    /// Frames dropped unsent: no send key (not a member yet, or between groups).
    pub unsealed: u64,
    /// Per sender's participant id.
    pub from: BTreeMap<u64, SenderStats>,
    /// Frames on a pulled track whose SFU session no participant of the room owns (per the
    /// room's log): dropped.
    pub unattributed: u64,
}

impl MediaStats {
    /// Frames decrypted from `sender`.
    #[must_use]
    pub fn decrypted_from(&self, sender: u64) -> u64 {
        self.from.get(&sender).map_or(0, |s| s.decrypted)
    }

    /// Frames from all senders that could not be decrypted.
    #[must_use]
    pub fn failed(&self) -> u64 {
        self.from.values().map(|s| s.failed).sum()
    }
}

/// Stats shared by a member and the crypto of the bots acting for it.
#[derive(Debug, Clone, Default)]
pub(crate) struct MediaStatsCell(Arc<Mutex<MediaStats>>);

impl MediaStatsCell {
    pub(crate) fn get(&self) -> MediaStats {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut MediaStats)) {
        f(&mut self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }
}

/// One pulled track being opened.
struct Pulled {
    sender: u64,
    track: InboundTrack,
}

/// A room member's keys sealing and opening a bot's media ([`RoomMember::media_crypto`]).
///
/// [`RoomMember::media_crypto`]: crate::room::RoomMember::media_crypto
pub struct RoomMediaCrypto {
    core: Core,
    sessions: Sessions,
    stats: MediaStatsCell,
    start: Instant,
    /// By mid.
    pulled: BTreeMap<String, Pulled>,
    /// Verdicts due, in order.
    verdicts: std::collections::VecDeque<(u32, Option<Vec<u8>>)>,
}

impl std::fmt::Debug for RoomMediaCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomMediaCrypto")
            .field("pulled", &self.pulled.len())
            .finish_non_exhaustive()
    }
}

impl RoomMediaCrypto {
    pub(crate) fn new(core: Core, sessions: Sessions, stats: MediaStatsCell) -> Self {
        Self {
            core,
            sessions,
            stats,
            start: Instant::now(),
            pulled: BTreeMap::new(),
            verdicts: std::collections::VecDeque::new(),
        }
    }

    #[allow(clippy::cast_precision_loss)] // milliseconds since start fit an f64 exactly for ages
    fn ms(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.start).as_secs_f64() * 1000.0
    }

    /// Takes the track's verdicts into the queue and its counters into the stats.
    fn collect(&mut self, mid: &str, before: Counts) {
        let Some(p) = self.pulled.get_mut(mid) else {
            return;
        };
        while let Some(id) = p.track.next_release() {
            self.verdicts.push_back((id, p.track.take_data()));
        }
        let after = Counts::of(&p.track);
        if after == before {
            return;
        }
        let sender = p.sender;
        let last_drop = p.track.last_drop();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let epoch = p.track.epoch().map(|e| e as u64);
        self.stats.update(|s| {
            let e = s.from.entry(sender).or_default();
            e.decrypted += after.decrypted.saturating_sub(before.decrypted);
            e.failed += after.dropped.saturating_sub(before.dropped);
            e.duplicates += after.duplicates.saturating_sub(before.duplicates);
            e.late += after.late.saturating_sub(before.late);
            if after.dropped > before.dropped {
                e.last_failure = last_drop;
            }
            if epoch.is_some() {
                e.epoch = epoch;
            }
        });
    }
}

/// An inbound track's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    decrypted: u64,
    dropped: u64,
    duplicates: u64,
    late: u64,
}

impl Counts {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // counters are exact
    fn of(t: &InboundTrack) -> Self {
        Self {
            decrypted: t.decrypted() as u64,
            dropped: t.dropped() as u64,
            duplicates: t.duplicates() as u64,
            late: t.late() as u64,
        }
    }
}

impl MediaCrypto for RoomMediaCrypto {
    fn seal(&mut self, kind: MediaKind, frame_start: bool, frame: &[u8]) -> Option<Vec<u8>> {
        let mime = match (kind, frame_start) {
            (MediaKind::Audio, _) => "audio/opus",
            (MediaKind::Video, true) => "video/VP8",
            // A continuation of a frame carries no payload header: sealed whole.
            (MediaKind::Video, false) => "application/octet-stream",
        };
        let sealed = lock(&self.core).encrypt(mime, frame);
        self.stats.update(|s| match sealed {
            Some(_) => s.sealed += 1,
            None => s.unsealed += 1,
        });
        sealed
    }

    fn open(
        &mut self,
        now: Instant,
        mid: &str,
        remote_session_id: &str,
        kind: MediaKind,
        id: u32,
        frame: &[u8],
    ) {
        let owner = self
            .sessions
            .lock()
            .ok()
            .and_then(|m| m.get(remote_session_id).copied());
        let Some(sender) = owner else {
            self.stats.update(|s| s.unattributed += 1);
            self.verdicts.push_back((id, None));
            return;
        };
        // A mid the SFU reused for another sender's track starts over.
        if self.pulled.get(mid).is_some_and(|p| p.sender != sender) {
            self.pulled.remove(mid);
        }
        if !self.pulled.contains_key(mid) {
            #[allow(clippy::cast_precision_loss)] // participant ids are far below 2^53
            let Ok(track) = InboundTrack::new(sender as f64, kind == MediaKind::Video) else {
                self.verdicts.push_back((id, None));
                return;
            };
            self.pulled.insert(mid.to_owned(), Pulled { sender, track });
        }
        let now_ms = self.ms(now);
        let before = match self.pulled.get_mut(mid) {
            Some(p) => {
                let before = Counts::of(&p.track);
                lock(&self.core).receive(&mut p.track, id, frame, now_ms);
                before
            }
            None => return,
        };
        self.collect(mid, before);
    }

    fn poll(&mut self, now: Instant) {
        let now_ms = self.ms(now);
        let mids: Vec<String> = self.pulled.keys().cloned().collect();
        for mid in mids {
            let before = match self.pulled.get_mut(&mid) {
                Some(p) if p.track.held() > 0.0 => {
                    let before = Counts::of(&p.track);
                    lock(&self.core).poll_held(&mut p.track, now_ms);
                    before
                }
                _ => continue,
            };
            self.collect(&mid, before);
        }
    }

    fn next_verdict(&mut self) -> Option<(u32, Option<Vec<u8>>)> {
        self.verdicts.pop_front()
    }
}
