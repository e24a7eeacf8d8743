//! Satsuma E2EE core: the MLS group with a designated committer, DAVE-format
//! per-frame encryption, safety numbers and long-term member identities. Sans-IO: no sockets, no clocks
//! (time is passed in); builds for native and `wasm32-unknown-unknown`.

pub mod frame;
pub mod safety;

pub mod chat;
pub mod committer;
pub mod group;
pub mod identity;
pub mod member;
pub mod relay;
