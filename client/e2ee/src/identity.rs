//! Long-term identities: who is behind an MLS leaf, stable across rejoins.
//!
//! Every browser profile (or bot) holds one long-term Ed25519 *identity key*,
//! generated once and kept (the web client keeps its 32-byte seed in IndexedDB).
//! Each MLS leaf it creates (a fresh MLS signature key per join or reset) carries a
//! *binding*: a signature by the identity key over the participant id, the leaf's
//! MLS signature public key and the display name. Members verify the binding on
//! every KeyPackage, every Add in a commit and every member of a Welcome; a leaf
//! whose binding does not verify is invalid. A member's *fingerprint* is derived
//! from its identity public key alone, so the same profile shows the same
//! fingerprint every time it joins, and people can verify it once.
//!
//! # Credential format (contract C1)
//! The MLS `BasicCredential` identity bytes are
//!
//! ```text
//! u64 BE participant_id            (8)   assigned by the coordinator; the only
//!                                         part anybody else may read
//! u8     version = 1               (1)
//! [u8;32] identity public key      (32)  Ed25519
//! u8     name_len                  (1)
//! [u8]   name                      (name_len)  UTF-8, at most 64 characters, no
//!                                              control characters
//! [u8;64] signature                (64)  Ed25519 by the identity key over
//!                                         BINDING_LABEL ‖ 0x00
//!                                         ‖ u64 BE participant_id
//!                                         ‖ u16 BE len ‖ leaf MLS signature public key
//!                                         ‖ u8 name_len ‖ name
//! ```
//!
//! Fingerprint: the first 8 bytes of SHA-256(identity public key), shown as four
//! groups of four upper-case hex digits, `XXXX XXXX XXXX XXXX`.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// The binding format version.
pub const BINDING_VERSION: u8 = 1;

/// Domain separation label of the binding signature.
pub const BINDING_LABEL: &[u8] = b"satsuma identity binding v1";

/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Length of an identity seed.
pub const SEED_LEN: usize = 32;

const KEY_LEN: usize = 32;
const SIG_LEN: usize = 64;

/// Why a credential's binding is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// Shorter than the fixed parts.
    #[error("credential too short ({0} bytes)")]
    TooShort(usize),
    /// An unknown format version.
    #[error("unknown binding version {0}")]
    Version(u8),
    /// The lengths do not add up.
    #[error("credential length does not match its name length")]
    Length,
    /// The name is not valid UTF-8, too long, or has control characters.
    #[error("invalid display name")]
    Name,
    /// The identity public key is not a valid Ed25519 point.
    #[error("invalid identity key")]
    Key,
    /// The signature does not verify.
    #[error("identity binding signature does not verify")]
    Signature,
}

/// A member fingerprint: the first 8 bytes of SHA-256 of the identity public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 8]);

impl Fingerprint {
    /// The fingerprint of an identity public key.
    pub fn of(identity_key: &[u8; KEY_LEN]) -> Self {
        let digest = Sha256::digest(identity_key);
        let mut out = [0u8; 8];
        out.copy_from_slice(&digest[..8]);
        Self(out)
    }
}

impl std::fmt::Display for Fingerprint {
    /// `XXXX XXXX XXXX XXXX`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, pair) in self.0.chunks(2).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            for b in pair {
                write!(f, "{b:02X}")?;
            }
        }
        Ok(())
    }
}

/// A display name as it goes into a binding: control characters dropped,
/// surrounding white space trimmed, at most [`MAX_NAME_CHARS`] characters.
pub fn clean_name(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .chars()
        .take(MAX_NAME_CHARS)
        .collect()
}

fn name_ok(name: &str) -> bool {
    name.chars().count() <= MAX_NAME_CHARS && !name.chars().any(char::is_control)
}

/// A long-term identity: the identity signing key and the display name.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
    name: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint().to_string())
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The identity of a 32-byte seed (the Ed25519 secret key) with display name
    /// `name` (cleaned with [`clean_name`]).
    pub fn from_seed(seed: [u8; SEED_LEN], name: &str) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
            name: clean_name(name),
        }
    }

    /// The identity public key.
    pub fn public_key(&self) -> [u8; KEY_LEN] {
        self.key.verifying_key().to_bytes()
    }

    /// This identity's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.public_key())
    }

    /// The display name bound into credentials.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The credential identity bytes binding this identity to the MLS leaf of
    /// `participant` with signature public key `leaf_signature_key`.
    pub fn credential_identity(&self, participant: u64, leaf_signature_key: &[u8]) -> Vec<u8> {
        // `clean_name` keeps at most 64 characters (at most 256 bytes); cut at a
        // character boundary to fit the one-byte length.
        let mut name = self.name.as_str();
        while name.len() > usize::from(u8::MAX) {
            let mut end = name.len() - 1;
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            name = &name[..end];
        }
        let signature = self.key.sign(&signed_message(
            participant,
            leaf_signature_key,
            name.as_bytes(),
        ));
        let mut out = Vec::with_capacity(8 + 1 + KEY_LEN + 1 + name.len() + SIG_LEN);
        out.extend_from_slice(&participant.to_be_bytes());
        out.push(BINDING_VERSION);
        out.extend_from_slice(&self.public_key());
        out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&signature.to_bytes());
        out
    }
}

fn signed_message(participant: u64, leaf_signature_key: &[u8], name: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(
        BINDING_LABEL.len() + 1 + 8 + 2 + leaf_signature_key.len() + 1 + name.len(),
    );
    m.extend_from_slice(BINDING_LABEL);
    m.push(0);
    m.extend_from_slice(&participant.to_be_bytes());
    m.extend_from_slice(
        &u16::try_from(leaf_signature_key.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    m.extend_from_slice(leaf_signature_key);
    m.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    m.extend_from_slice(name);
    m
}

/// What a verified binding says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VerifiedIdentity {
    /// The participant id (the first 8 bytes).
    pub participant: u64,
    /// The identity public key.
    pub identity_key: [u8; KEY_LEN],
    /// The display name.
    pub name: String,
}

impl VerifiedIdentity {
    /// The member's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.identity_key)
    }
}

/// Verify the credential identity bytes `identity` of a leaf whose MLS signature
/// public key is `leaf_signature_key`.
///
/// # Errors
/// [`BindingError`] for anything but a well-formed binding whose signature
/// verifies (strict Ed25519 verification).
pub fn verify_binding(
    identity: &[u8],
    leaf_signature_key: &[u8],
) -> Result<VerifiedIdentity, BindingError> {
    let too_short = || BindingError::TooShort(identity.len());
    let (participant, rest) = identity.split_first_chunk::<8>().ok_or_else(too_short)?;
    let (version, rest) = rest.split_first().ok_or_else(too_short)?;
    if *version != BINDING_VERSION {
        return Err(BindingError::Version(*version));
    }
    let (key, rest) = rest.split_first_chunk::<KEY_LEN>().ok_or_else(too_short)?;
    let (name_len, rest) = rest.split_first().ok_or_else(too_short)?;
    let name_len = usize::from(*name_len);
    if rest.len() != name_len + SIG_LEN {
        return Err(BindingError::Length);
    }
    let (name, sig) = rest.split_at(name_len);
    let name = std::str::from_utf8(name).map_err(|_| BindingError::Name)?;
    if !name_ok(name) {
        return Err(BindingError::Name);
    }
    let sig: [u8; SIG_LEN] = sig.try_into().map_err(|_| BindingError::Length)?;
    let verifying = VerifyingKey::from_bytes(key).map_err(|_| BindingError::Key)?;
    let participant = u64::from_be_bytes(*participant);
    verifying
        .verify_strict(
            &signed_message(participant, leaf_signature_key, name.as_bytes()),
            &Signature::from_bytes(&sig),
        )
        .map_err(|_| BindingError::Signature)?;
    Ok(VerifiedIdentity {
        participant,
        identity_key: *key,
        name: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const LEAF: [u8; 32] = [7; 32];

    #[test]
    fn binding_round_trips_and_fingerprint_is_stable() {
        let id = Identity::from_seed([1; 32], "Alice");
        let bytes = id.credential_identity(42, &LEAF);
        assert_eq!(&bytes[..8], &42u64.to_be_bytes());
        let v = verify_binding(&bytes, &LEAF).unwrap();
        assert_eq!(v.participant, 42);
        assert_eq!(v.name, "Alice");
        assert_eq!(v.fingerprint(), id.fingerprint());
        // Same seed, another participant id and leaf key: same fingerprint.
        let again = Identity::from_seed([1; 32], "Alice");
        let v2 = verify_binding(&again.credential_identity(43, &[9; 32]), &[9; 32]).unwrap();
        assert_eq!(v2.fingerprint(), v.fingerprint());
        assert_ne!(
            Identity::from_seed([2; 32], "Alice").fingerprint(),
            id.fingerprint()
        );
        let shown = id.fingerprint().to_string();
        assert_eq!(shown.len(), 19);
        assert!(shown.split(' ').all(|g| {
            g.len() == 4
                && g.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
        }));
    }

    #[test]
    fn every_tampering_is_refused() {
        let id = Identity::from_seed([3; 32], "Bob");
        let good = id.credential_identity(5, &LEAF);
        // Another leaf key (a stolen binding on somebody else's leaf).
        assert_eq!(
            verify_binding(&good, &[8; 32]),
            Err(BindingError::Signature)
        );
        // Another participant id.
        let mut b = good.clone();
        b[7] ^= 1;
        assert_eq!(verify_binding(&b, &LEAF), Err(BindingError::Signature));
        // Another name of the same length.
        let mut b = good.clone();
        b[8 + 1 + 32 + 1] = b'X';
        assert_eq!(verify_binding(&b, &LEAF), Err(BindingError::Signature));
        // Another identity key.
        let mut b = good.clone();
        b[8 + 1] ^= 0x40;
        assert!(verify_binding(&b, &LEAF).is_err());
        // Truncated, extended, wrong version, bare participant id (the old format).
        assert!(verify_binding(&good[..good.len() - 1], &LEAF).is_err());
        let mut b = good.clone();
        b.push(0);
        assert_eq!(verify_binding(&b, &LEAF), Err(BindingError::Length));
        let mut b = good.clone();
        b[8] = 2;
        assert_eq!(verify_binding(&b, &LEAF), Err(BindingError::Version(2)));
        assert_eq!(
            verify_binding(&5u64.to_be_bytes(), &LEAF),
            Err(BindingError::TooShort(8))
        );
        for n in 0..good.len() {
            assert!(verify_binding(&good[..n], &LEAF).is_err());
        }
    }

    #[test]
    fn names_are_cleaned_and_bounded() {
        assert_eq!(clean_name("  Eve\u{7}\n "), "Eve");
        let long = "é".repeat(100);
        let id = Identity::from_seed([4; 32], &long);
        assert_eq!(id.name().chars().count(), MAX_NAME_CHARS);
        let v = verify_binding(&id.credential_identity(1, &LEAF), &LEAF).unwrap();
        assert_eq!(v.name, id.name());
        // A control character in a signed name is refused anyway.
        let mut bad = Identity::from_seed([4; 32], "x");
        bad.name = "a\u{1b}b".into();
        assert_eq!(
            verify_binding(&bad.credential_identity(1, &LEAF), &LEAF),
            Err(BindingError::Name)
        );
        let id = Identity::from_seed([4; 32], "");
        assert_eq!(
            verify_binding(&id.credential_identity(1, &LEAF), &LEAF)
                .unwrap()
                .name,
            ""
        );
        let _ = format!("{id:?}");
    }
}
