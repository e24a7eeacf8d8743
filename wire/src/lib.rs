//! Satsuma's wire protocols, written once and shared by the coordinator, the SFU, the E2EE
//! core and its wasm bindings, the native bot and the load harness:
//!
//! - [`room`]: the coordinator's WebSocket protocol (`coordinator/PROTOCOL.md`): JSON
//!   control messages both ways, the room log's JSON entries, close codes and error codes;
//! - [`relay`]: the binary frames that carry MLS handshake messages through the room log
//!   (`docs/e2ee-relay.md`), and the log entries the E2EE core consumes;
//! - [`realtime`]: the JSON bodies of the Cloudflare-Realtime-compatible SFU API (v1);
//! - [`ice`]: `RTCConfiguration.iceServers` entries;
//! - [`js`]: the constants the web client uses, rendered as the JavaScript module
//!   `client/web/public/wire.js` (a test fails when that file drifts from this crate).
//!
//! Plain data and codecs only (serde, thiserror): no I/O, no async runtime; builds for
//! `wasm32-unknown-unknown`. Decoding never panics on hostile input.

pub mod ice;
pub mod js;
pub mod realtime;
pub mod relay;
pub mod room;

pub use ice::{GenerateIceServersResponse, IceServer, IceServersResponse};
