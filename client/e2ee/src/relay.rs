//! The E2EE relay wire format (`docs/e2ee-relay.md`): typed coordinator log entries
//! and the codec of the binary frames that carry MLS bytes. They live in `satsuma-wire`
//! (shared with the coordinator, the web client's worker and the bot); re-exported here.

pub use satsuma_wire::relay::*;
