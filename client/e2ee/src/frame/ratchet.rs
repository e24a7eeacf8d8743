//! Per-sender key derivation: HKDF-Expand over HMAC-SHA-256, the MLS
//! `ExpandWithLabel` / `DeriveTreeSecret` functions (RFC 9420 §5.1, §9.1) and
//! the MLS hash ratchet that DAVE seeds with the 16-byte exporter output.
//!
//! ```text
//! secret_0     = base_secret                     (16 bytes)
//! key_g        = ExpandWithLabel(secret_g, "key",    BE32(g), 16)
//! secret_{g+1} = ExpandWithLabel(secret_g, "secret", BE32(g), 32)
//! ```
//!
//! HKDF-Expand is written directly over `hmac` because the `hkdf` crate refuses
//! a pseudo-random key shorter than the hash output, and the base secret is
//! only 16 bytes.

use core::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

type HmacSha256 = Hmac<Sha256>;

/// SHA-256 output size; the ratchet's secrets after generation 0 have this length.
const HASH_LEN: usize = 32;

/// Length of the per-sender base secret (the MLS exporter output) in bytes.
pub const BASE_SECRET_LEN: usize = 16;

/// Length of an AES-128 frame key.
pub const FRAME_KEY_LEN: usize = 16;

/// The MLS exporter label DAVE uses to derive a sender's base secret.
pub const EXPORTER_LABEL: &str = "Discord Secure Frames v0";

/// The MLS exporter context for `sender_id`: its little-endian 64-bit encoding
/// (DAVE protocol changelog 1.1.1).
#[must_use]
pub fn exporter_context(sender_id: u64) -> [u8; 8] {
    sender_id.to_le_bytes()
}

/// Errors from the key-derivation functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KdfError {
    /// HKDF-Expand cannot produce more than 255 hash blocks, and MLS labels the
    /// output length as a `u16`.
    #[error("requested output length {0} is too long for HKDF-Expand-SHA256")]
    OutputTooLong(usize),
    /// A label or context longer than an MLS variable-length vector can hold.
    #[error("label or context too long for an MLS vector")]
    VectorTooLong,
    /// The ratchet reached generation `u32::MAX`.
    #[error("hash ratchet exhausted")]
    RatchetExhausted,
}

/// HKDF-Expand with HMAC-SHA-256 (RFC 5869 §2.3) for a PRK of any length.
///
/// # Errors
/// [`KdfError::OutputTooLong`] when `out` is longer than 255 × 32 bytes.
pub fn hkdf_expand(prk: &[u8], info: &[u8], out: &mut [u8]) -> Result<(), KdfError> {
    if out.len() > 255 * HASH_LEN {
        return Err(KdfError::OutputTooLong(out.len()));
    }
    let mut previous = [0u8; HASH_LEN];
    let mut previous_len = 0usize;
    for (index, chunk) in out.chunks_mut(HASH_LEN).enumerate() {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let Ok(mut mac) = <HmacSha256 as Mac>::new_from_slice(prk) else {
            return Err(KdfError::OutputTooLong(chunk.len()));
        };
        mac.update(&previous[..previous_len]);
        mac.update(info);
        // `index < 255` by the length check above.
        mac.update(&[u8::try_from(index + 1).unwrap_or(u8::MAX)]);
        let block = mac.finalize().into_bytes();
        chunk.copy_from_slice(&block[..chunk.len()]);
        previous.copy_from_slice(&block);
        previous_len = HASH_LEN;
    }
    previous.zeroize();
    Ok(())
}

/// Appends the MLS variable-length-vector header (RFC 9420 §2.1.2) and `data`.
fn push_vector(info: &mut Vec<u8>, data: &[u8]) -> Result<(), KdfError> {
    let len = data.len();
    if len < 1 << 6 {
        info.push(len as u8);
    } else if len < 1 << 14 {
        info.extend_from_slice(&((len as u16) | 0x4000).to_be_bytes());
    } else if len < 1 << 30 {
        info.extend_from_slice(&((len as u32) | 0x8000_0000).to_be_bytes());
    } else {
        return Err(KdfError::VectorTooLong);
    }
    info.extend_from_slice(data);
    Ok(())
}

/// MLS `ExpandWithLabel(secret, label, context, out.len())` with SHA-256:
/// HKDF-Expand over the serialized `KDFLabel { uint16 length; opaque
/// label<V> = "MLS 1.0 " + label; opaque context<V>; }`.
///
/// # Errors
/// [`KdfError`] when `out`, the label or the context is too long.
pub fn expand_with_label(
    secret: &[u8],
    label: &str,
    context: &[u8],
    out: &mut [u8],
) -> Result<(), KdfError> {
    let length = u16::try_from(out.len()).map_err(|_| KdfError::OutputTooLong(out.len()))?;
    let mut full_label = Vec::with_capacity(8 + label.len());
    full_label.extend_from_slice(b"MLS 1.0 ");
    full_label.extend_from_slice(label.as_bytes());
    let mut info = Vec::with_capacity(4 + full_label.len() + context.len());
    info.extend_from_slice(&length.to_be_bytes());
    push_vector(&mut info, &full_label)?;
    push_vector(&mut info, context)?;
    hkdf_expand(secret, &info, out)
}

/// MLS `DeriveSecret(secret, label) = ExpandWithLabel(secret, label, "", 32)`.
///
/// # Errors
/// [`KdfError`] when the label is too long.
pub fn derive_secret(secret: &[u8], label: &str) -> Result<[u8; HASH_LEN], KdfError> {
    let mut out = [0u8; HASH_LEN];
    expand_with_label(secret, label, &[], &mut out)?;
    Ok(out)
}

/// MLS `DeriveTreeSecret(secret, label, generation, out.len())
/// = ExpandWithLabel(secret, label, BE32(generation), out.len())`.
/// The generation context is always 4 bytes, also for generation 0.
///
/// # Errors
/// [`KdfError`] when `out` or the label is too long.
pub fn derive_tree_secret(
    secret: &[u8],
    label: &str,
    generation: u32,
    out: &mut [u8],
) -> Result<(), KdfError> {
    expand_with_label(secret, label, &generation.to_be_bytes(), out)
}

/// A sender's 16-byte base secret for one epoch: the output of
/// `MLS-Exporter(EXPORTER_LABEL, exporter_context(sender_id), 16)`.
/// Zeroized on drop; `Debug` does not print it.
#[derive(Clone)]
pub struct BaseSecret([u8; BASE_SECRET_LEN]);

impl BaseSecret {
    /// Wraps the exporter output.
    #[must_use]
    pub fn new(bytes: [u8; BASE_SECRET_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw secret.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; BASE_SECRET_LEN] {
        &self.0
    }
}

impl TryFrom<&[u8]> for BaseSecret {
    type Error = KeyLengthError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        let array: [u8; BASE_SECRET_LEN] =
            bytes.try_into().map_err(|_| KeyLengthError(bytes.len()))?;
        Ok(Self(array))
    }
}

impl PartialEq for BaseSecret {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for BaseSecret {}

impl fmt::Debug for BaseSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BaseSecret(..)")
    }
}

impl Drop for BaseSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A base secret of the wrong length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("base secret must be {BASE_SECRET_LEN} bytes, got {0}")]
pub struct KeyLengthError(pub usize);

/// One generation's AES-128 frame key. Zeroized on drop.
#[derive(Clone)]
pub(crate) struct FrameKey(pub(crate) [u8; FRAME_KEY_LEN]);

impl Drop for FrameKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FrameKey(..)")
    }
}

/// The MLS hash ratchet (RFC 9420 §9.1, without the unused nonce) seeded with
/// a DAVE base secret. It only moves forward: the secret of a generation is
/// overwritten as soon as the next one is derived.
#[derive(Clone)]
pub struct HashRatchet {
    /// Secret of generation `next_generation`; 16 bytes at generation 0, 32 after.
    secret: [u8; HASH_LEN],
    secret_len: usize,
    next_generation: u32,
    exhausted: bool,
}

impl HashRatchet {
    /// A ratchet at generation 0.
    #[must_use]
    pub fn new(base: &BaseSecret) -> Self {
        let mut secret = [0u8; HASH_LEN];
        secret[..BASE_SECRET_LEN].copy_from_slice(base.as_bytes());
        Self {
            secret,
            secret_len: BASE_SECRET_LEN,
            next_generation: 0,
            exhausted: false,
        }
    }

    /// The generation the next call to [`HashRatchet::advance`] returns.
    #[must_use]
    pub fn next_generation(&self) -> u32 {
        self.next_generation
    }

    /// Derives the key of the current generation, moves to the next one and
    /// returns `(generation, key)`.
    ///
    /// # Errors
    /// [`KdfError::RatchetExhausted`] after generation `u32::MAX`.
    pub fn advance(&mut self) -> Result<(u32, [u8; FRAME_KEY_LEN]), KdfError> {
        let (generation, key) = self.advance_key()?;
        Ok((generation, key.0))
    }

    pub(crate) fn advance_key(&mut self) -> Result<(u32, FrameKey), KdfError> {
        if self.exhausted {
            return Err(KdfError::RatchetExhausted);
        }
        let generation = self.next_generation;
        let mut key = FrameKey([0u8; FRAME_KEY_LEN]);
        let current = &self.secret[..self.secret_len];
        derive_tree_secret(current, "key", generation, &mut key.0)?;
        let mut next = [0u8; HASH_LEN];
        derive_tree_secret(current, "secret", generation, &mut next)?;
        self.secret = next;
        next.zeroize();
        self.secret_len = HASH_LEN;
        match generation.checked_add(1) {
            Some(n) => self.next_generation = n,
            None => self.exhausted = true,
        }
        Ok((generation, key))
    }
}

impl fmt::Debug for HashRatchet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashRatchet")
            .field("next_generation", &self.next_generation)
            .finish_non_exhaustive()
    }
}

impl Drop for HashRatchet {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hkdf_expand_rfc5869_case_1() {
        // RFC 5869 A.1: PRK and OKM for SHA-256.
        let prk = hex::decode("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5")
            .unwrap();
        let info = hex::decode("f0f1f2f3f4f5f6f7f8f9").unwrap();
        let mut okm = [0u8; 42];
        hkdf_expand(&prk, &info, &mut okm).unwrap();
        assert_eq!(
            hex::encode(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    #[test]
    fn hkdf_expand_rejects_oversized_output() {
        let mut out = vec![0u8; 255 * 32 + 1];
        assert_eq!(
            hkdf_expand(b"k", b"", &mut out),
            Err(KdfError::OutputTooLong(255 * 32 + 1))
        );
    }

    #[test]
    fn ratchet_generation_zero_uses_four_byte_context() {
        let base = BaseSecret::new([7u8; 16]);
        let mut ratchet = HashRatchet::new(&base);
        let (generation, key) = ratchet.advance().unwrap();
        assert_eq!(generation, 0);
        let mut expected = [0u8; 16];
        derive_tree_secret(&[7u8; 16], "key", 0, &mut expected).unwrap();
        assert_eq!(key, expected);
        let mut wrong = [0u8; 16];
        expand_with_label(&[7u8; 16], "key", &[], &mut wrong).unwrap();
        assert_ne!(key, wrong, "an empty context must not be used");
        assert_eq!(ratchet.next_generation(), 1);
    }

    #[test]
    fn vector_header_lengths() {
        let mut v = Vec::new();
        push_vector(&mut v, &[0u8; 63]).unwrap();
        assert_eq!(v[0], 63);
        let mut v = Vec::new();
        push_vector(&mut v, &[0u8; 64]).unwrap();
        assert_eq!(&v[..2], &[0x40, 64]);
    }

    #[test]
    fn base_secret_debug_hides_bytes() {
        let s = BaseSecret::new([0xAB; 16]);
        assert!(!format!("{s:?}").contains("ab"));
        assert!(BaseSecret::try_from(&[1u8; 15][..]).is_err());
    }
}
