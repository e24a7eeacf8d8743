//! The receiver side: one [`Decryptor`] holds the keys of every remote sender,
//! for several epochs, and turns protocol frames back into encoded frames.
//!
//! Rules (DAVE v1.1.4, libdave `decryptor.cpp` / `cryptor_manager.cpp`):
//! - keys are tried newest installed first;
//! - a key superseded by a newer one is kept until
//!   [`DecryptorConfig::previous_epoch_retention`] after the sender is first
//!   seen using a newer key, and never longer than
//!   [`DecryptorConfig::superseded_epoch_max_lifetime`] after it was superseded;
//! - generations are unwrapped relative to the oldest key still held; frames
//!   more than [`DecryptorConfig::max_generation_gap`] generations ahead, or
//!   ahead of what the key's age allows at
//!   [`DecryptorConfig::max_frames_per_second`], are refused;
//! - past generations' keys are erased
//!   [`DecryptorConfig::generation_retention`] after a newer generation
//!   decrypts, and at most [`DecryptorConfig::max_past_generations`] are kept;
//! - a (key, nonce) pair is accepted once ([`super::REPLAY_WINDOW`] sliding window).
//!
//! Time is a [`Duration`] since any fixed origin chosen by the caller.

use std::collections::BTreeMap;
use std::time::Duration;

use super::aead::{AeadError, FrameCipher, Span};
use super::encryptor::{GENERATION_SHIFT, split_spans};
use super::ratchet::{BaseSecret, FrameKey, HashRatchet};
use super::replay::{Freshness, ReplayWindow};
use super::trailer::{ProtocolFrame, TrailerError};

/// The Opus silence frame an SFU may inject (`F8 FF FE`).
pub const OPUS_SILENCE: [u8; 3] = [0xF8, 0xFF, 0xFE];

/// Generations wrap every 256 (the nonce carries one generation byte).
const GENERATION_WRAP: u32 = 1 << 8;

/// Receiver tuning. [`Default`] gives DAVE's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecryptorConfig {
    /// How long a superseded key stays usable after the sender's first frame
    /// under a newer key (DAVE: 10 s).
    pub previous_epoch_retention: Duration,
    /// Hard limit on how long a superseded key stays usable after the newer key
    /// was installed, even if the sender never switches.
    pub superseded_epoch_max_lifetime: Duration,
    /// Keys (epochs) kept per sender; the oldest is dropped beyond this.
    pub max_epochs_per_sender: usize,
    /// Largest accepted jump ahead of the newest generation (DAVE: 250).
    pub max_generation_gap: u32,
    /// Plausibility cap: a key of age `t` cannot have sent more than
    /// `max_frames_per_second × t` frames (DAVE: 50 audio + 2 × 60 video).
    pub max_frames_per_second: u64,
    /// How long a past generation's key is kept after a newer generation
    /// decrypts (DAVE: 10 s).
    pub generation_retention: Duration,
    /// Past generations' keys kept per epoch at most.
    pub max_past_generations: usize,
    /// Pass the Opus silence frame `F8 FF FE` through unchanged (DAVE does;
    /// it lets the SFU inject silence).
    pub opus_silence_passthrough: bool,
    /// Pass frames that are not protocol frames through unchanged (DAVE's
    /// passthrough mode during a downgrade to transport-only encryption).
    pub passthrough_unencrypted: bool,
}

impl Default for DecryptorConfig {
    fn default() -> Self {
        Self {
            previous_epoch_retention: Duration::from_secs(10),
            superseded_epoch_max_lifetime: Duration::from_secs(30),
            max_epochs_per_sender: 4,
            max_generation_gap: 250,
            max_frames_per_second: 50 + 2 * 60,
            generation_retention: Duration::from_secs(10),
            max_past_generations: 8,
            opus_silence_passthrough: false,
            passthrough_unencrypted: false,
        }
    }
}

/// Why a received frame was dropped. Never feed a dropped frame to a decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    /// The frame fails the protocol-frame check and passthrough is off.
    #[error("not a protocol frame: {0}")]
    NotProtocolFrame(TrailerError),
    /// No key was ever installed for this sender (or it was removed).
    #[error("no key for sender {0}")]
    UnknownSender(u64),
    /// All of this sender's keys have expired.
    #[error("all keys of sender {0} have expired")]
    EpochExpired(u64),
    /// The frame authenticated but its nonce was already accepted, or is too
    /// far behind the newest one to tell.
    #[error("replayed frame (epoch {epoch}, nonce {nonce:#010x})")]
    Replay {
        /// The epoch label of the key that authenticated it.
        epoch: u64,
        /// The frame's truncated nonce.
        nonce: u32,
    },
    /// The key for the frame's generation was already erased.
    #[error("key for generation {0} already erased")]
    GenerationExpired(u32),
    /// The generation is too far ahead (gap or plausibility cap).
    #[error("generation {0} out of range")]
    GenerationOutOfRange(u32),
    /// No held key authenticates the frame (wrong key, tampering, or an
    /// epoch whose key has expired).
    #[error("authentication failed")]
    AuthenticationFailed,
}

/// What a successfully accepted frame was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameOrigin {
    /// Decrypted with the sender's key for `epoch`.
    Encrypted {
        /// Epoch label given to [`Decryptor::install_key`].
        epoch: u64,
        /// Unwrapped ratchet generation.
        generation: u32,
        /// Truncated nonce from the trailer.
        nonce: u32,
    },
    /// The Opus silence frame, passed through (if configured).
    OpusSilence,
    /// A non-protocol frame passed through (passthrough mode).
    Passthrough,
}

/// A decrypted frame and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decrypted {
    /// The encoded frame for the decoder.
    pub frame: Vec<u8>,
    /// How it was accepted.
    pub origin: FrameOrigin,
}

struct GenerationKey {
    cipher: FrameCipher,
    /// Set once a newer generation has decrypted.
    expires_at: Option<Duration>,
}

struct EpochKeys {
    epoch: u64,
    secret: BaseSecret,
    installed_at: Duration,
    superseded: bool,
    expires_at: Option<Duration>,
    used: bool,
    ratchet: HashRatchet,
    keys: BTreeMap<u32, GenerationKey>,
    newest_generation: Option<u32>,
    replay: ReplayWindow,
}

impl EpochKeys {
    fn oldest_generation(&self) -> u32 {
        self.keys
            .keys()
            .next()
            .copied()
            .unwrap_or_else(|| self.ratchet.next_generation())
    }

    fn expire(&mut self, now: Duration) {
        self.keys
            .retain(|_, key| key.expires_at.is_none_or(|t| now < t));
    }
}

/// `ComputeWrappedGeneration`: the smallest generation ≥ `oldest` (mod 256
/// aligned) whose low byte is `byte`.
fn unwrap_generation(oldest: u32, byte: u8) -> Option<u32> {
    let remainder = oldest % GENERATION_WRAP;
    let mut factor = oldest / GENERATION_WRAP;
    if u32::from(byte) < remainder {
        factor = factor.checked_add(1)?;
    }
    factor
        .checked_mul(GENERATION_WRAP)?
        .checked_add(u32::from(byte))
}

#[derive(Default)]
struct SenderKeys {
    /// Newest installed first.
    epochs: Vec<EpochKeys>,
    had_expired: bool,
}

impl SenderKeys {
    fn expire(&mut self, now: Duration) {
        let before = self.epochs.len();
        self.epochs.retain(|e| e.expires_at.is_none_or(|t| now < t));
        if self.epochs.len() != before {
            self.had_expired = true;
        }
        for epoch in &mut self.epochs {
            epoch.expire(now);
        }
    }
}

/// Keys derived ahead of the ratchet while trying a frame; committed only if
/// the frame authenticates.
struct Candidate {
    ratchet: HashRatchet,
    keys: Vec<(u32, FrameCipher)>,
}

/// Decrypts frames from remote senders, keyed by sender id.
pub struct Decryptor {
    config: DecryptorConfig,
    senders: BTreeMap<u64, SenderKeys>,
    aad: Vec<Span>,
    text: Vec<Span>,
    key_installs: u64,
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor")
            .field("config", &self.config)
            .field("senders", &self.senders.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for Decryptor {
    fn default() -> Self {
        Self::new(DecryptorConfig::default())
    }
}

impl Decryptor {
    /// A decryptor without keys.
    #[must_use]
    pub fn new(config: DecryptorConfig) -> Self {
        Self {
            config,
            senders: BTreeMap::new(),
            aad: Vec::new(),
            text: Vec::new(),
            key_installs: 0,
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &DecryptorConfig {
        &self.config
    }

    /// Turns passthrough of non-protocol frames on or off (DAVE downgrade).
    pub fn set_passthrough(&mut self, on: bool) {
        self.config.passthrough_unencrypted = on;
    }

    /// Installs `sender_id`'s base secret for `epoch` at time `now`. Earlier
    /// keys of that sender become "previous" keys (see module docs).
    /// Installing the same epoch and secret again does nothing and returns
    /// `false`. `epoch` is only a label: order is install order, so a group
    /// that restarts its epoch numbers is handled.
    pub fn install_key(
        &mut self,
        sender_id: u64,
        epoch: u64,
        secret: &BaseSecret,
        now: Duration,
    ) -> bool {
        let config = &self.config;
        let sender = self.senders.entry(sender_id).or_default();
        sender.expire(now);
        if sender
            .epochs
            .iter()
            .any(|e| e.epoch == epoch && e.secret == *secret)
        {
            return false;
        }
        let hard_limit = now.saturating_add(config.superseded_epoch_max_lifetime);
        for older in &mut sender.epochs {
            older.superseded = true;
            older.expires_at = Some(older.expires_at.map_or(hard_limit, |t| t.min(hard_limit)));
        }
        sender.epochs.insert(
            0,
            EpochKeys {
                epoch,
                secret: secret.clone(),
                installed_at: now,
                superseded: false,
                expires_at: None,
                used: false,
                ratchet: HashRatchet::new(secret),
                keys: BTreeMap::new(),
                newest_generation: None,
                replay: ReplayWindow::default(),
            },
        );
        sender.epochs.truncate(config.max_epochs_per_sender.max(1));
        self.key_installs += 1;
        true
    }

    /// How many keys were installed so far: when it changes, frames that no
    /// key authenticated may now decrypt (see [`super::Holdback`]).
    #[must_use]
    pub fn key_installs(&self) -> u64 {
        self.key_installs
    }

    /// Forgets every key of `sender_id` at once.
    pub fn remove_sender(&mut self, sender_id: u64) {
        self.senders.remove(&sender_id);
    }

    /// The member left the group at `now`: its frames still in flight decrypt
    /// for [`DecryptorConfig::previous_epoch_retention`], after which all its
    /// keys expire and its frames are dropped with
    /// [`DropReason::EpochExpired`]. Installing a new key revives the sender.
    pub fn retire_sender(&mut self, sender_id: u64, now: Duration) {
        let limit = now.saturating_add(self.config.previous_epoch_retention);
        if let Some(sender) = self.senders.get_mut(&sender_id) {
            for epoch in &mut sender.epochs {
                epoch.expires_at = Some(epoch.expires_at.map_or(limit, |t| t.min(limit)));
            }
        }
    }

    /// Senders with at least one live key.
    pub fn senders(&self) -> impl Iterator<Item = u64> + '_ {
        self.senders
            .iter()
            .filter(|(_, s)| !s.epochs.is_empty())
            .map(|(id, _)| *id)
    }

    /// Epoch labels held for `sender_id`, newest first.
    #[must_use]
    pub fn epochs(&self, sender_id: u64) -> Vec<u64> {
        self.senders
            .get(&sender_id)
            .map(|s| s.epochs.iter().map(|e| e.epoch).collect())
            .unwrap_or_default()
    }

    /// Erases expired keys of every sender. Decryption also expires lazily,
    /// so calling this is only needed to release memory promptly.
    pub fn expire(&mut self, now: Duration) {
        for sender in self.senders.values_mut() {
            sender.expire(now);
        }
    }

    /// Decrypts one frame from `sender_id` received at `now`.
    ///
    /// # Errors
    /// [`DropReason`] saying why the frame must be dropped.
    pub fn decrypt(
        &mut self,
        sender_id: u64,
        frame: &[u8],
        now: Duration,
    ) -> Result<Decrypted, DropReason> {
        let mut out = Vec::with_capacity(frame.len());
        let origin = self.decrypt_into(sender_id, frame, now, &mut out)?;
        Ok(Decrypted { frame: out, origin })
    }

    /// Like [`Decryptor::decrypt`], writing the frame into `out` (cleared
    /// first). On error `out` is left empty.
    ///
    /// # Errors
    /// See [`Decryptor::decrypt`].
    pub fn decrypt_into(
        &mut self,
        sender_id: u64,
        frame: &[u8],
        now: Duration,
        out: &mut Vec<u8>,
    ) -> Result<FrameOrigin, DropReason> {
        out.clear();
        if self.config.opus_silence_passthrough && frame == OPUS_SILENCE {
            out.extend_from_slice(frame);
            return Ok(FrameOrigin::OpusSilence);
        }
        let parsed = match ProtocolFrame::parse(frame) {
            Ok(parsed) => parsed,
            Err(error) => {
                if self.config.passthrough_unencrypted {
                    out.extend_from_slice(frame);
                    return Ok(FrameOrigin::Passthrough);
                }
                return Err(DropReason::NotProtocolFrame(error));
            }
        };
        let config = &self.config;
        let Some(sender) = self.senders.get_mut(&sender_id) else {
            return Err(DropReason::UnknownSender(sender_id));
        };
        sender.expire(now);
        if sender.epochs.is_empty() {
            return Err(if sender.had_expired {
                DropReason::EpochExpired(sender_id)
            } else {
                DropReason::UnknownSender(sender_id)
            });
        }

        split_spans(
            parsed.ranges,
            parsed.payload.len(),
            &mut self.aad,
            &mut self.text,
        );
        out.extend_from_slice(parsed.payload);

        let mut failure: Option<DropReason> = None;
        let generation_byte = parsed.generation_byte();
        let low_nonce = u64::from(parsed.nonce & ((1 << GENERATION_SHIFT) - 1));
        for index in 0..sender.epochs.len() {
            let epoch = &mut sender.epochs[index];
            let attempt = try_epoch(
                config,
                epoch,
                generation_byte,
                low_nonce,
                &parsed,
                out,
                &self.aad,
                &self.text,
                now,
            );
            match attempt {
                Ok(generation) => {
                    let label = epoch.epoch;
                    if !epoch.used {
                        epoch.used = true;
                        // The sender moved on: start the retention clock of
                        // the keys installed before this one.
                        let limit = now.saturating_add(config.previous_epoch_retention);
                        for older in sender.epochs.iter_mut().skip(index + 1) {
                            older.expires_at =
                                Some(older.expires_at.map_or(limit, |t| t.min(limit)));
                        }
                    }
                    return Ok(FrameOrigin::Encrypted {
                        epoch: label,
                        generation,
                        nonce: parsed.nonce,
                    });
                }
                Err(reason @ DropReason::Replay { .. }) => {
                    out.clear();
                    return Err(reason);
                }
                Err(reason) => {
                    if failure.is_none_or(|f| rank(reason) > rank(f)) {
                        failure = Some(reason);
                    }
                }
            }
        }
        out.clear();
        Err(failure.unwrap_or(DropReason::AuthenticationFailed))
    }
}

/// Which failure to report when every key failed: the most specific one.
fn rank(reason: DropReason) -> u8 {
    match reason {
        DropReason::AuthenticationFailed => 3,
        DropReason::GenerationExpired(_) => 2,
        DropReason::GenerationOutOfRange(_) => 1,
        _ => 0,
    }
}

/// Tries one epoch's keys on a parsed frame whose payload is already in
/// `out`. On success `out` holds the plaintext frame and the epoch's state is
/// updated; on failure nothing changes.
#[allow(clippy::too_many_arguments)]
fn try_epoch(
    config: &DecryptorConfig,
    epoch: &mut EpochKeys,
    generation_byte: u8,
    low_nonce: u64,
    parsed: &ProtocolFrame<'_>,
    out: &mut [u8],
    aad: &[Span],
    text: &[Span],
    now: Duration,
) -> Result<u32, DropReason> {
    let oldest = epoch.oldest_generation();
    let generation = unwrap_generation(oldest, generation_byte)
        .ok_or(DropReason::GenerationOutOfRange(u32::from(generation_byte)))?;
    let reference = epoch.newest_generation.unwrap_or(oldest);
    if generation > reference.saturating_add(config.max_generation_gap) {
        return Err(DropReason::GenerationOutOfRange(generation));
    }
    let age = now.saturating_sub(epoch.installed_at);
    let max_frames =
        u128::from(config.max_frames_per_second).saturating_mul(age.as_millis()) / 1000;
    let max_generation = max_frames >> GENERATION_SHIFT;
    if u128::from(generation) > max_generation && generation > oldest {
        return Err(DropReason::GenerationOutOfRange(generation));
    }
    let big_nonce = (u64::from(generation) << GENERATION_SHIFT) | low_nonce;
    let freshness = epoch.replay.check(big_nonce);

    let mut candidate: Option<Candidate> = None;
    let cipher = if let Some(key) = epoch.keys.get(&generation) {
        &key.cipher
    } else if generation < epoch.ratchet.next_generation() {
        return Err(DropReason::GenerationExpired(generation));
    } else {
        let mut ratchet = epoch.ratchet.clone();
        let keep_from = generation.saturating_sub(config.max_past_generations as u32);
        let mut keys = Vec::new();
        loop {
            let (g, key): (u32, FrameKey) = ratchet
                .advance_key()
                .map_err(|_| DropReason::GenerationOutOfRange(generation))?;
            if g >= keep_from {
                keys.push((g, FrameCipher::new(&key)));
            }
            if g >= generation {
                break;
            }
        }
        let candidate = candidate.insert(Candidate { ratchet, keys });
        match candidate.keys.last() {
            Some((_, cipher)) => cipher,
            None => return Err(DropReason::GenerationOutOfRange(generation)),
        }
    };

    if freshness != Freshness::Fresh {
        // Confirm it is this key's frame before calling it a replay.
        return Err(
            match cipher.verify(parsed.nonce, out, aad, text, &parsed.tag) {
                Ok(()) => DropReason::Replay {
                    epoch: epoch.epoch,
                    nonce: parsed.nonce,
                },
                Err(_) => DropReason::AuthenticationFailed,
            },
        );
    }
    match cipher.open(parsed.nonce, out, aad, text, &parsed.tag) {
        Ok(()) => {}
        Err(AeadError::Authentication | AeadError::Bounds) => {
            return Err(DropReason::AuthenticationFailed);
        }
    }

    // Commit: ratchet, keys, replay window, generation bookkeeping.
    if let Some(candidate) = candidate {
        epoch.ratchet = candidate.ratchet;
        for (g, cipher) in candidate.keys {
            epoch.keys.insert(
                g,
                GenerationKey {
                    cipher,
                    expires_at: None,
                },
            );
        }
    }
    epoch.replay.mark(big_nonce);
    if epoch.newest_generation.is_none_or(|n| generation > n) {
        epoch.newest_generation = Some(generation);
        let limit = now.saturating_add(config.generation_retention);
        for (_, key) in epoch.keys.range_mut(..generation) {
            key.expires_at.get_or_insert(limit);
        }
    }
    // Bound the number of past generations kept.
    while epoch.keys.range(..generation).count() > config.max_past_generations {
        if epoch.keys.pop_first().is_none() {
            break;
        }
    }
    Ok(generation)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    use crate::frame::{BaseSecret, Codec, Encryptor};

    const GEN: u64 = 1 << GENERATION_SHIFT;

    fn setup() -> (Encryptor, Decryptor) {
        let secret = BaseSecret::new([9u8; 16]);
        let mut enc = Encryptor::new();
        enc.set_key(3, &secret);
        let mut dec = Decryptor::default();
        dec.install_key(1, 3, &secret, Duration::ZERO);
        (enc, dec)
    }

    #[test]
    fn generation_advance_expiry_and_plausibility() {
        let (mut enc, mut dec) = setup();
        enc.set_frame_counter(GEN - 2);
        let a = enc.encrypt(Codec::Opus, b"gen0").unwrap(); // nonce 2^24-1, gen 0
        let b = enc.encrypt(Codec::Opus, b"gen1").unwrap(); // nonce 2^24, gen 1
        let c = enc.encrypt(Codec::Opus, b"gen1b").unwrap();

        // Too early for 2^24 frames at 170 frames/s.
        assert_eq!(
            dec.decrypt(1, &b, Duration::from_secs(1_000)),
            Err(DropReason::GenerationOutOfRange(1))
        );
        let t = Duration::from_secs(200_000);
        let opened = dec.decrypt(1, &b, t).unwrap();
        assert_eq!(opened.frame, b"gen1");
        assert!(matches!(
            opened.origin,
            FrameOrigin::Encrypted { generation: 1, .. }
        ));
        // The older generation still works within its retention…
        assert_eq!(
            dec.decrypt(1, &a, t + Duration::from_secs(5))
                .unwrap()
                .frame,
            b"gen0"
        );
        // …and is erased after it.
        assert_eq!(
            dec.decrypt(1, &c, t + Duration::from_secs(11))
                .unwrap()
                .frame,
            b"gen1b"
        );
        let mut enc2 = Encryptor::new();
        enc2.set_key(3, &BaseSecret::new([9u8; 16]));
        enc2.set_frame_counter(GEN - 10);
        let late = enc2.encrypt(Codec::Opus, b"late").unwrap();
        // With generation 0 erased, its byte unwraps past the oldest held
        // generation (1) to 256, which is beyond the allowed gap.
        assert_eq!(
            dec.decrypt(1, &late, t + Duration::from_secs(12)),
            Err(DropReason::GenerationOutOfRange(256))
        );
    }

    #[test]
    fn generation_gap_is_bounded() {
        let (mut enc, mut dec) = setup();
        enc.set_frame_counter(251 * GEN);
        let far = enc.encrypt(Codec::Opus, b"far").unwrap();
        let now = Duration::from_secs(100_000_000);
        assert_eq!(
            dec.decrypt(1, &far, now),
            Err(DropReason::GenerationOutOfRange(251))
        );
        let (mut enc2, _) = setup();
        enc2.set_frame_counter(250 * GEN);
        let edge = enc2.encrypt(Codec::Opus, b"edge").unwrap();
        assert_eq!(dec.decrypt(1, &edge, now).unwrap().frame, b"edge");
        // Now 251 is within the gap of the newest generation (250).
        assert_eq!(dec.decrypt(1, &far, now).unwrap().frame, b"far");
    }

    #[test]
    fn nonce_wrap_continues_generations_past_255() {
        let (mut enc, mut dec) = setup();
        let now = Duration::from_secs(40_000_000);
        for (counter, expected_generation) in
            [(200 * GEN, 200), (255 * GEN + 5, 255), (1u64 << 32, 256)]
        {
            enc.set_frame_counter(counter - 1);
            let sealed = enc.encrypt(Codec::Opus, b"wrap").unwrap();
            let opened = dec.decrypt(1, &sealed, now).unwrap();
            assert_eq!(opened.frame, b"wrap");
            match opened.origin {
                FrameOrigin::Encrypted {
                    generation, nonce, ..
                } => {
                    assert_eq!(generation, expected_generation);
                    assert_eq!(nonce, counter as u32);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn unwrap_generation_matches_libdave() {
        assert_eq!(unwrap_generation(0, 0), Some(0));
        assert_eq!(unwrap_generation(0, 5), Some(5));
        assert_eq!(unwrap_generation(250, 255), Some(255));
        assert_eq!(unwrap_generation(250, 3), Some(259));
        assert_eq!(unwrap_generation(256, 0), Some(256));
        assert_eq!(unwrap_generation(u32::MAX, 0), None);
    }
}
