//! DAVE v1.1.4 frame encryption (Discord's "Audio & Video End-to-End
//! Encryption" frame format), sans-IO: no clocks (time is a [`Duration`](std::time::Duration)
//! since any origin the caller picks), no sockets, no panics on any input.
//!
//! # Keys
//! For each epoch, every member derives every sender's 16-byte base secret
//! `MLS-Exporter(`[`EXPORTER_LABEL`]`, `[`exporter_context`]`(sender_id), 16)`
//! (the MLS layer does this) and hands it to this module as a [`BaseSecret`].
//! A per-sender MLS hash ratchet ([`HashRatchet`]) turns it into one AES-128
//! key per generation; the generation is the top byte of the 32-bit frame
//! nonce, so keys change every 2^24 frames.
//!
//! # Frame format
//! `[payload with clear ranges untouched, the rest AES-128-GCM ciphertext] ‖
//! tag(8) ‖ ULEB128 nonce ‖ ULEB128 (offset, len) clear ranges ‖ size(1) ‖ FA FA`
//! — see [`trailer`]. The GCM nonce is 8 zero bytes ‖ the u32 nonce
//! little-endian; the additional data is the clear bytes in order.
//!
//! # Codecs
//! Which bytes stay clear depends on the codec so that browser packetizers
//! keep working; see [`codec`] for the table and what works between
//! browsers (Opus, VP8, VP9, H.264 yes; H.265 where supported; **AV1 no**).
//!
//! # Use
//! - Sender: one [`Encryptor`] per local participant (shared by all its
//!   tracks); [`Encryptor::set_key`] on each epoch switch (returns `true`
//!   when the caller should force a keyframe), then [`Encryptor::encrypt`].
//! - Receiver: one [`Decryptor`] for all remote senders;
//!   [`Decryptor::install_key`] for every (sender, epoch),
//!   [`Decryptor::decrypt`] per frame, which returns the frame or a
//!   [`DropReason`]; [`Decryptor::remove_sender`] when a member leaves.
//! - Late keys: one [`Holdback`] per inbound track holds the frames no key
//!   opens yet and retries them when a key is installed (a receiver that
//!   processes a commit after the sender switched loses no frame).
//! - Keyframes: one [`KeyframeRequester`] per inbound video track, fed every
//!   decrypt outcome; it says when to send a keyframe request.
//!
//! Per-sender keys prevent nonce reuse; they do not authenticate the sender
//! (every member can derive every key). The clear-range list is not itself
//! authenticated (DAVE audit TOB-DISCE2EC-7), but changing it changes the
//! split between additional data and ciphertext, so the tag check fails.

pub(crate) mod aead;
pub mod codec;
mod decryptor;
mod encryptor;
mod holdback;
mod keyframe;
pub mod ratchet;
mod replay;
pub mod trailer;

pub use aead::TAG_LEN;
pub use codec::{Codec, FrameLayout};
pub use decryptor::{Decrypted, Decryptor, DecryptorConfig, DropReason, FrameOrigin, OPUS_SILENCE};
pub use encryptor::{EncryptError, Encryptor, GENERATION_SHIFT, MAX_START_CODE_ATTEMPTS};
pub use holdback::{Holdback, HoldbackConfig, Verdict};
pub use keyframe::KeyframeRequester;
pub use ratchet::{
    BASE_SECRET_LEN, BaseSecret, EXPORTER_LABEL, HashRatchet, KdfError, KeyLengthError,
    exporter_context,
};
pub use replay::REPLAY_WINDOW;
pub use trailer::{ClearRange, ProtocolFrame, TrailerError};
