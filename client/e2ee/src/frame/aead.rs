//! AES-128-GCM with the tag truncated to 8 bytes (NIST SP 800-38D §5.2.1.2),
//! built from `aes`, `ctr` and `ghash` because `aes-gcm` only emits 12–16 byte
//! tags. The frame's additional data and plaintext are scattered over byte
//! ranges of one buffer, so both GHASH and CTR run over range lists without
//! copying.
//!
//! ```text
//! H  = AES_K(0^128)         J0 = nonce(12) || 00000001
//! C  = P xor CTR32_K(inc32(J0))
//! T  = MSB_64(AES_K(J0) xor GHASH_H(A || pad || C || pad || [len(A)]64 || [len(C)]64))
//! ```
//! The 12-byte nonce is 8 zero bytes followed by the 32-bit truncated nonce,
//! little-endian (DAVE v1.1.4).

use aes::Aes128;
use aes::cipher::{BlockEncrypt, InnerIvInit, KeyInit, StreamCipher};
use ghash::GHash;
use ghash::universal_hash::UniversalHash;
use subtle::ConstantTimeEq;

use super::ratchet::FrameKey;

/// Length of the truncated authentication tag.
pub const TAG_LEN: usize = 8;

type Ctr = ctr::Ctr32BE<Aes128>;

/// Byte ranges `[start, end)` of one buffer; the AEAD treats their
/// concatenation as one message.
pub(crate) type Span = (usize, usize);

/// Failures of the AEAD itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AeadError {
    /// The tag does not match.
    Authentication,
    /// A span lies outside the buffer or the message exceeds GCM's limits.
    Bounds,
}

/// An AES-128-GCM key with its GHASH subkey, ready for many frames.
#[derive(Clone)]
pub(crate) struct FrameCipher {
    aes: Aes128,
    ghash_key: ghash::Key,
}

/// GHASH over a byte stream fed in arbitrary pieces.
struct GhashStream {
    ghash: GHash,
    pending: [u8; 16],
    filled: usize,
}

impl GhashStream {
    fn new(key: &ghash::Key) -> Self {
        Self {
            ghash: GHash::new(key),
            pending: [0u8; 16],
            filled: 0,
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        if self.filled > 0 {
            let take = (16 - self.filled).min(data.len());
            self.pending[self.filled..self.filled + take].copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
            if self.filled < 16 {
                return;
            }
            self.ghash.update_padded(&self.pending);
            self.filled = 0;
        }
        let whole = data.len() - data.len() % 16;
        if whole > 0 {
            self.ghash.update_padded(&data[..whole]);
        }
        let rest = &data[whole..];
        self.pending[..rest.len()].copy_from_slice(rest);
        self.filled = rest.len();
    }

    /// Zero-pads to a block boundary (between A and C, and before the lengths).
    fn pad(&mut self) {
        if self.filled > 0 {
            self.pending[self.filled..].fill(0);
            self.ghash.update_padded(&self.pending);
            self.filled = 0;
        }
    }

    fn finish(mut self, aad_len: u64, text_len: u64) -> [u8; 16] {
        self.pad();
        let mut lengths = [0u8; 16];
        lengths[..8].copy_from_slice(&(aad_len * 8).to_be_bytes());
        lengths[8..].copy_from_slice(&(text_len * 8).to_be_bytes());
        self.ghash.update_padded(&lengths);
        self.ghash.finalize().into()
    }
}

/// The full 12-byte GCM nonce for a truncated nonce.
fn full_nonce(truncated: u32) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[8..].copy_from_slice(&truncated.to_le_bytes());
    nonce
}

/// GCM bounds the plaintext to 2^32 − 2 blocks; frames are far smaller.
const MAX_TEXT_LEN: u64 = ((1u64 << 32) - 2) * 16;

impl FrameCipher {
    pub(crate) fn new(key: &FrameKey) -> Self {
        let aes = Aes128::new(&key.0.into());
        let mut h = aes::Block::default();
        aes.encrypt_block(&mut h);
        Self { aes, ghash_key: h }
    }

    fn counter_block(nonce: &[u8; 12], counter: u32) -> aes::Block {
        let mut block = aes::Block::default();
        block[..12].copy_from_slice(nonce);
        block[12..].copy_from_slice(&counter.to_be_bytes());
        block
    }

    fn keystream(&self, nonce: &[u8; 12]) -> Ctr {
        let iv = Self::counter_block(nonce, 2);
        Ctr::from_core(ctr::CtrCore::inner_iv_init(self.aes.clone(), &iv))
    }

    fn tag(&self, nonce: &[u8; 12], buf: &[u8], aad: &[Span], text: &[Span]) -> [u8; 16] {
        let mut stream = GhashStream::new(&self.ghash_key);
        let mut aad_len = 0u64;
        for &(start, end) in aad {
            stream.update(&buf[start..end]);
            aad_len += (end - start) as u64;
        }
        stream.pad();
        let mut text_len = 0u64;
        for &(start, end) in text {
            stream.update(&buf[start..end]);
            text_len += (end - start) as u64;
        }
        let mut tag = stream.finish(aad_len, text_len);
        let mut j0 = Self::counter_block(nonce, 1);
        self.aes.encrypt_block(&mut j0);
        for (t, k) in tag.iter_mut().zip(j0.iter()) {
            *t ^= k;
        }
        tag
    }

    fn check(buf: &[u8], aad: &[Span], text: &[Span]) -> Result<(), AeadError> {
        let mut total = 0u64;
        for &(start, end) in aad.iter().chain(text) {
            if start > end || end > buf.len() {
                return Err(AeadError::Bounds);
            }
            total += (end - start) as u64;
        }
        if total > MAX_TEXT_LEN {
            return Err(AeadError::Bounds);
        }
        Ok(())
    }

    /// Encrypts the `text` spans of `buf` in place, authenticating the `aad`
    /// spans, and returns the 8-byte tag.
    pub(crate) fn seal(
        &self,
        truncated_nonce: u32,
        buf: &mut [u8],
        aad: &[Span],
        text: &[Span],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        Self::check(buf, aad, text)?;
        let nonce = full_nonce(truncated_nonce);
        let mut ctr = self.keystream(&nonce);
        for &(start, end) in text {
            ctr.try_apply_keystream(&mut buf[start..end])
                .map_err(|_| AeadError::Bounds)?;
        }
        let full = self.tag(&nonce, buf, aad, text);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        Ok(tag)
    }

    /// Checks `tag` over the `aad` and `text` spans of `buf` without
    /// decrypting (constant-time comparison).
    pub(crate) fn verify(
        &self,
        truncated_nonce: u32,
        buf: &[u8],
        aad: &[Span],
        text: &[Span],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        Self::check(buf, aad, text)?;
        let nonce = full_nonce(truncated_nonce);
        let full = self.tag(&nonce, buf, aad, text);
        if bool::from(full[..TAG_LEN].ct_eq(tag)) {
            Ok(())
        } else {
            Err(AeadError::Authentication)
        }
    }

    /// Verifies `tag` over the `aad` and `text` spans of `buf` (constant-time
    /// comparison) and only then decrypts the `text` spans in place.
    pub(crate) fn open(
        &self,
        truncated_nonce: u32,
        buf: &mut [u8],
        aad: &[Span],
        text: &[Span],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        self.verify(truncated_nonce, buf, aad, text, tag)?;
        let nonce = full_nonce(truncated_nonce);
        let mut ctr = self.keystream(&nonce);
        for &(start, end) in text {
            ctr.try_apply_keystream(&mut buf[start..end])
                .map_err(|_| AeadError::Bounds)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aes_gcm::aead::AeadInPlace;
    use aes_gcm::{Aes128Gcm, Nonce};

    fn reference(key: [u8; 16], nonce: u32, aad: &[u8], pt: &[u8]) -> (Vec<u8>, [u8; 16]) {
        let cipher = Aes128Gcm::new(&key.into());
        let mut buf = pt.to_vec();
        let tag = cipher
            .encrypt_in_place_detached(Nonce::from_slice(&full_nonce(nonce)), aad, &mut buf)
            .unwrap();
        (buf, tag.into())
    }

    #[test]
    fn matches_aes_gcm_with_scattered_spans() {
        let key = [0x42u8; 16];
        let cipher = FrameCipher::new(&FrameKey(key));
        for len in [0usize, 1, 15, 16, 17, 31, 33, 100, 1200] {
            let frame: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            // Alternate clear (AAD) and encrypted spans of odd lengths.
            let mut aad = Vec::new();
            let mut text = Vec::new();
            let mut pos = 0;
            let mut clear = true;
            let mut step = 1;
            while pos < len {
                let end = (pos + step).min(len);
                if clear {
                    aad.push((pos, end))
                } else {
                    text.push((pos, end))
                }
                clear = !clear;
                step = step * 3 % 23 + 1;
                pos = end;
            }
            let aad_bytes: Vec<u8> = aad
                .iter()
                .flat_map(|&(s, e)| frame[s..e].to_vec())
                .collect();
            let pt_bytes: Vec<u8> = text
                .iter()
                .flat_map(|&(s, e)| frame[s..e].to_vec())
                .collect();
            let (ct, full_tag) = reference(key, 0x0102_0304, &aad_bytes, &pt_bytes);

            let mut buf = frame.clone();
            let tag = cipher.seal(0x0102_0304, &mut buf, &aad, &text).unwrap();
            assert_eq!(tag, full_tag[..8]);
            let ct_mine: Vec<u8> = text.iter().flat_map(|&(s, e)| buf[s..e].to_vec()).collect();
            assert_eq!(ct_mine, ct);

            cipher
                .open(0x0102_0304, &mut buf, &aad, &text, &tag)
                .unwrap();
            assert_eq!(buf, frame);
        }
    }

    #[test]
    fn open_rejects_wrong_tag_and_leaves_buffer() {
        let cipher = FrameCipher::new(&FrameKey([1u8; 16]));
        let mut buf = vec![9u8; 40];
        let spans = [(0usize, 10usize)];
        let text = [(10usize, 40usize)];
        let mut tag = cipher.seal(5, &mut buf, &spans, &text).unwrap();
        let sealed = buf.clone();
        tag[7] ^= 1;
        assert_eq!(
            cipher.open(5, &mut buf, &spans, &text, &tag),
            Err(AeadError::Authentication)
        );
        assert_eq!(buf, sealed);
        assert_eq!(
            cipher.open(5, &mut buf, &[(0, 41)], &[], &tag),
            Err(AeadError::Bounds)
        );
    }
}
