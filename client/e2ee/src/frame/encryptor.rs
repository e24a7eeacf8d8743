//! The sender side: one [`Encryptor`] per local sender (shared by all its
//! tracks, so the nonce counter is shared as DAVE requires).

use super::aead::{FrameCipher, Span};
use super::codec::{Codec, FrameLayout, contains_start_code};
use super::ratchet::{BaseSecret, HashRatchet, KdfError};
use super::trailer::{ClearRange, write_trailer};

/// How often a H.264/H.265 frame is re-encrypted with a fresh nonce when the
/// ciphertext or trailer contains a start code (libdave uses 10).
pub const MAX_START_CODE_ATTEMPTS: usize = 10;

/// The 32-bit truncated nonce's top byte is the generation: the key changes
/// every 2^24 frames.
pub const GENERATION_SHIFT: u32 = 24;

/// Frame counters at or above this value would need a generation beyond
/// `u32::MAX`.
const MAX_FRAME_COUNTER: u64 = 1 << (32 + GENERATION_SHIFT);

/// Why a frame could not be encrypted. The caller drops the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncryptError {
    /// No key has been installed (or it was cleared).
    #[error("no sender key installed")]
    NoKey,
    /// Every attempt produced a start code in ciphertext or trailer (H.26x).
    #[error("ciphertext formed an H.26x start code {MAX_START_CODE_ATTEMPTS} times")]
    StartCodeCollision,
    /// The clear-range list does not fit the one-byte supplemental size.
    #[error("too many clear ranges for the trailer")]
    TooManyClearRanges,
    /// The nonce space of this key is used up; install a new key.
    #[error("nonce space exhausted")]
    NonceExhausted,
    /// The frame is too large for AES-GCM.
    #[error("frame too large")]
    FrameTooLarge,
}

impl From<KdfError> for EncryptError {
    fn from(_: KdfError) -> Self {
        Self::NonceExhausted
    }
}

struct SenderKey {
    epoch: u64,
    secret: BaseSecret,
    ratchet: HashRatchet,
    /// Frames encrypted so far (the last nonce used); pre-incremented.
    frame_counter: u64,
    cipher: Option<(u32, FrameCipher)>,
}

impl SenderKey {
    fn cipher_for(&mut self, generation: u32) -> Result<&FrameCipher, EncryptError> {
        if self.cipher.as_ref().is_none_or(|(g, _)| *g != generation) {
            self.cipher = None;
            loop {
                let (g, key) = self.ratchet.advance_key()?;
                if g == generation {
                    self.cipher = Some((g, FrameCipher::new(&key)));
                    break;
                }
                if g > generation {
                    return Err(EncryptError::NonceExhausted);
                }
            }
        }
        match &self.cipher {
            Some((_, cipher)) => Ok(cipher),
            None => Err(EncryptError::NonceExhausted),
        }
    }
}

/// Encrypts a local sender's frames in the DAVE v1.1.4 format.
///
/// Install the sender's base secret for an epoch with [`Encryptor::set_key`];
/// the nonce counter restarts at 1 for each new key.
pub struct Encryptor {
    key: Option<SenderKey>,
    layout: FrameLayout,
    aad: Vec<Span>,
    text: Vec<Span>,
}

impl Default for Encryptor {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor")
            .field("epoch", &self.epoch())
            .field("frames", &self.key.as_ref().map(|k| k.frame_counter))
            .finish()
    }
}

/// Fills `aad` with the clear ranges and `text` with the gaps between them,
/// both as `[start, end)` spans of a `len`-byte payload.
pub(crate) fn split_spans(
    ranges: impl IntoIterator<Item = ClearRange>,
    len: usize,
    aad: &mut Vec<Span>,
    text: &mut Vec<Span>,
) {
    aad.clear();
    text.clear();
    let mut pos = 0usize;
    for range in ranges {
        if range.offset > pos {
            text.push((pos, range.offset));
        }
        if range.len > 0 {
            aad.push((range.offset, range.end()));
        }
        pos = range.end();
    }
    if pos < len {
        text.push((pos, len));
    }
}

impl Encryptor {
    /// An encryptor without a key.
    #[must_use]
    pub fn new() -> Self {
        Self {
            key: None,
            layout: FrameLayout::default(),
            aad: Vec::new(),
            text: Vec::new(),
        }
    }

    /// Installs this sender's base secret for `epoch` (the MLS exporter output
    /// for the local sender id). Returns `true` when the key changed, in which
    /// case the caller should force a keyframe on its video tracks.
    /// Re-installing the same epoch and secret keeps the nonce sequence.
    pub fn set_key(&mut self, epoch: u64, secret: &BaseSecret) -> bool {
        if let Some(current) = &self.key
            && current.epoch == epoch
            && current.secret == *secret
        {
            return false;
        }
        self.key = Some(SenderKey {
            epoch,
            secret: secret.clone(),
            ratchet: HashRatchet::new(secret),
            frame_counter: 0,
            cipher: None,
        });
        true
    }

    /// Removes the key; later frames fail with [`EncryptError::NoKey`].
    pub fn clear_key(&mut self) {
        self.key = None;
    }

    /// Test hook: pretend `frames` frames were already sent with this key.
    #[cfg(test)]
    pub(crate) fn set_frame_counter(&mut self, frames: u64) {
        if let Some(key) = self.key.as_mut() {
            key.frame_counter = frames;
        }
    }

    /// The epoch of the installed key.
    #[must_use]
    pub fn epoch(&self) -> Option<u64> {
        self.key.as_ref().map(|k| k.epoch)
    }

    /// Encrypts one encoded frame of `codec`.
    ///
    /// # Errors
    /// [`EncryptError`]; the frame must then be dropped, not sent in the clear.
    pub fn encrypt(&mut self, codec: Codec, frame: &[u8]) -> Result<Vec<u8>, EncryptError> {
        let mut out = Vec::with_capacity(frame.len() + 32);
        self.encrypt_into(codec, frame, &mut out)?;
        Ok(out)
    }

    /// Like [`Encryptor::encrypt`], writing into `out` (cleared first) to reuse
    /// its allocation. On error `out` is left empty.
    ///
    /// # Errors
    /// See [`Encryptor::encrypt`].
    pub fn encrypt_into(
        &mut self,
        codec: Codec,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EncryptError> {
        out.clear();
        let Some(key) = self.key.as_mut() else {
            return Err(EncryptError::NoKey);
        };
        self.layout.build(codec, frame);
        let payload_len = self.layout.bytes.len();
        split_spans(
            self.layout.clear.iter().copied(),
            payload_len,
            &mut self.aad,
            &mut self.text,
        );
        let attempts = if codec.uses_start_codes() {
            MAX_START_CODE_ATTEMPTS
        } else {
            1
        };
        for _ in 0..attempts {
            let counter = key.frame_counter + 1;
            if counter >= MAX_FRAME_COUNTER {
                return Err(EncryptError::NonceExhausted);
            }
            // Consume the nonce even if this attempt is discarded.
            key.frame_counter = counter;
            let generation = (counter >> GENERATION_SHIFT) as u32;
            let nonce = counter as u32;
            let cipher = key.cipher_for(generation)?;
            out.clear();
            out.extend_from_slice(&self.layout.bytes);
            let tag = cipher
                .seal(nonce, out, &self.aad, &self.text)
                .map_err(|_| EncryptError::FrameTooLarge)?;
            if write_trailer(out, &tag, nonce, &self.layout.clear).is_none() {
                out.clear();
                return Err(EncryptError::TooManyClearRanges);
            }
            if !codec.uses_start_codes() || !has_stray_start_code(out, &self.layout.clear) {
                return Ok(());
            }
        }
        out.clear();
        Err(EncryptError::StartCodeCollision)
    }
}

/// `true` when a start code appears in, or overlaps the edges of, any part of
/// the frame that is not a clear range (ciphertext and trailer).
fn has_stray_start_code(frame: &[u8], clear: &[ClearRange]) -> bool {
    const EDGE: usize = 2;
    let mut pos = 0usize;
    for range in clear {
        if range.offset > pos
            && contains_start_code(
                frame,
                pos.saturating_sub(EDGE),
                (range.offset + EDGE).min(frame.len()),
            )
        {
            return true;
        }
        pos = range.end();
    }
    pos < frame.len() && contains_start_code(frame, pos.saturating_sub(EDGE), frame.len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn nonce_starts_at_one_and_resets_on_new_key() {
        let mut enc = Encryptor::new();
        assert_eq!(enc.encrypt(Codec::Opus, b"x"), Err(EncryptError::NoKey));
        assert!(enc.set_key(1, &BaseSecret::new([1; 16])));
        let first = enc.encrypt(Codec::Opus, b"hello").unwrap();
        let parsed = super::super::trailer::ProtocolFrame::parse(&first).unwrap();
        assert_eq!(parsed.nonce, 1);
        let second = enc.encrypt(Codec::Opus, b"hello").unwrap();
        assert_eq!(
            super::super::trailer::ProtocolFrame::parse(&second)
                .unwrap()
                .nonce,
            2
        );
        assert!(
            !enc.set_key(1, &BaseSecret::new([1; 16])),
            "same key keeps counter"
        );
        let third = enc.encrypt(Codec::Opus, b"hello").unwrap();
        assert_eq!(
            super::super::trailer::ProtocolFrame::parse(&third)
                .unwrap()
                .nonce,
            3
        );
        assert!(enc.set_key(2, &BaseSecret::new([2; 16])));
        let fresh = enc.encrypt(Codec::Opus, b"hello").unwrap();
        assert_eq!(
            super::super::trailer::ProtocolFrame::parse(&fresh)
                .unwrap()
                .nonce,
            1
        );
    }

    #[test]
    fn stray_start_code_detection() {
        let clear = [ClearRange { offset: 0, len: 5 }];
        assert!(!has_stray_start_code(&[0, 0, 0, 1, 0x65, 9, 9, 9], &clear));
        assert!(has_stray_start_code(&[0, 0, 0, 1, 0x65, 0, 0, 1], &clear));
        // Straddling the clear/encrypted edge.
        assert!(has_stray_start_code(
            &[0, 0, 0, 1, 0, 0, 1, 9],
            &[ClearRange { offset: 0, len: 5 }]
        ));
        assert!(!has_stray_start_code(
            &[0, 0, 1],
            &[ClearRange { offset: 0, len: 3 }]
        ));
    }

    #[test]
    fn spans_cover_payload() {
        let mut aad = Vec::new();
        let mut text = Vec::new();
        split_spans(
            [
                ClearRange { offset: 2, len: 3 },
                ClearRange { offset: 5, len: 1 },
            ],
            10,
            &mut aad,
            &mut text,
        );
        assert_eq!(aad, vec![(2, 5), (5, 6)]);
        assert_eq!(text, vec![(0, 2), (6, 10)]);
    }
}
