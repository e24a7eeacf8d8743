//! Satsuma coordinator: server-owned rooms, an ordered relay for E2EE handshakes,
//! join tokens, presence, and access to the SFU.
//!
//! The coordinator knows rooms, not media (the SFU knows media, not rooms), and it
//! never holds a key: MLS handshake messages pass through it as opaque bytes.
//!
//! # Shape
//!
//! - [`room::Room`] is the whole logic of one room as a sans-IO state machine:
//!   feed it joins, resumes, client messages and timeouts with an injected
//!   `Instant`, then drain [`room::Room::poll_output`] for replies, broadcasts of
//!   new log entries, replays and departures. Every entry gets the next per-room
//!   `seq`, so all members see one total order (what the designated-committer
//!   algorithm of `docs/e2ee-relay.md` needs). The room names the MLS group
//!   creator, arbitrates commits per epoch by parsing them ([`mls_framing`]), lets
//!   only group members (the creator and those added by accepted commits) drive the
//!   group, voids a commit members cannot process and announces `execute` once
//!   members are `ready`.
//! - [`protocol`] holds the WebSocket wire types shared with clients; see
//!   `coordinator/PROTOCOL.md` for every message.
//! - [`auth`] signs and checks HS256 join tokens and invites (`exp`, `nbf`, `iss`, `aud`).
//! - [`access`] serves the token API of app backends (API keys), host-made invites and their
//!   revocation.
//! - The drivers are thin: `hub` (rooms behind mutexes and the connection queues
//!   their outputs go to), `connection` (per-WebSocket reader/writer with size and
//!   rate limits), `sfu_proxy` (`/sfu/...`, binding SFU sessions to participants,
//!   choosing a healthy node per room), `dynacast` (which simulcast layers of each published
//!   track some subscriber takes: the publisher turns the others off) and `server` (routes,
//!   timers, static files).
//!
//! # Embedding
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let handle = satsuma_coordinator::Server::bind(satsuma_coordinator::Config::dev()).await?;
//! println!("satsuma-coordinator listening http={}", handle.local_addr());
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

pub mod access;
pub mod access_control;
pub mod auth;
pub mod config;
mod connection;
mod dynacast;
mod forward;
mod hub;
mod ice;
pub mod metrics;
pub mod mls_framing;
mod placement;
pub mod protocol;
mod recording;
pub mod room;
mod server;
mod sfu_moves;
mod sfu_proxy;
pub mod store;
pub mod token_cli;

pub use config::{Cli, Config, ConfigError};
pub use server::{MAX_ROOM_NAME_LEN, Server, ServerError, ServerHandle, valid_room_name};
