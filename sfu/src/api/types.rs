//! JSON bodies of the Cloudflare-Realtime-compatible API (v1), camelCase on the wire. They
//! live in `satsuma-wire` (shared with the coordinator's proxy and the bot); re-exported here.

pub use satsuma_wire::realtime::*;
