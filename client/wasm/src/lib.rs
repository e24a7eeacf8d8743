//! wasm-bindgen bindings of `satsuma-e2ee` for the web client's E2EE worker.
//!
//! The browser's E2EE worker (`client/web/public/e2ee-worker.js`) loads this
//! module (built by `scripts/build-web.sh` into `client/web/public/pkg/`) and
//! holds every piece of secret state in it; the page's main thread never sees
//! a key. Two objects are exported:
//!
//! - [`GroupMember`]: the participant's MLS member (designated committer,
//!   ready/execute; `satsuma_e2ee::member::Member`) together with the DAVE
//!   frame encryptor and decryptor keyed by it. Keys never leave WebAssembly.
//! - [`InboundTrack`]: the per-receiver state (which sender it belongs to,
//!   counters, the throttled keyframe requester). One per pulled track; the
//!   keyless observer uses it alone to count DAVE trailers.
//!
//! The bindings are thin: they convert JavaScript numbers, strings and byte
//! arrays, call the sans-IO core with the time the caller passes
//! (milliseconds from `performance.now()`), and turn failures into values the
//! worker can show. Nothing here panics on input: the coordinator's log and
//! every frame come from the network.

mod ids;
mod inbound;
mod member;

pub use inbound::InboundTrack;
pub use member::GroupMember;
