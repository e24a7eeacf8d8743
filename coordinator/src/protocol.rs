//! Wire types of the coordinator's WebSocket protocol, version [`PROTOCOL_VERSION`].
//!
//! JSON control messages in text frames, MLS payloads in binary frames.
//! `coordinator/PROTOCOL.md` documents every message; the normative encoding is
//! `satsuma_wire::room` (shared with the web client's worker, the bot and the tests, and
//! the source of the web client's `wire.js`), re-exported here.

pub use satsuma_wire::room::*;
