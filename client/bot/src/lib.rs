//! Satsuma bot: a headless native WebRTC participant for tests, tools and load harnesses.
//!
//! A bot is what a browser tab is to the SFU, minus the browser: it creates a session through the
//! SFU's Cloudflare-Realtime-compatible HTTP API ([`api`]), pushes tracks (SDP offer → answer), pulls
//! other sessions' tracks (the SFU offers, the bot answers via `renegotiate`), closes tracks, and runs a
//! full ICE agent, DTLS and SRTP on one UDP socket with [str0m](https://docs.rs/str0m) in RTP mode.
//!
//! The media is synthetic but shaped like the real thing ([`source`]): Opus-like audio (20 ms, 50
//! packets/s) and VP8-like video (valid VP8 RTP payload descriptors, keyframe flags, keyframes at start,
//! periodically, and whenever a PLI/FIR arrives). Video can be published as rid-based simulcast
//! ([`TrackSpec::simulcast_video`], [`SimulcastLayer::standard`]): one RTP stream per layer, each
//! payload naming its layer, keyframe requests honoured per layer. Receivers track the layer they
//! get, switches, freezes (a small decoder model) and loss per layer ([`reception`]). An ingress
//! limit ([`BotConfig::ingress_limit_bps`], a token-bucket [`shaper`]) puts a bottleneck link in
//! front of a bot. Every payload is a pure function of a small header it
//! carries — track id, sequence number, send time ([`payload`]) — so a receiver rebuilds what was sent
//! and checks every byte ([`reception`]): loss, duplicates, corruption, misrouting, one-way latency
//! (same host clock) and time to first keyframe.
//!
//! Layout, sans-IO style:
//! - [`participant::Participant`]: the core. One `Rtc`, the published sources and pulled receptions;
//!   fed datagrams, timeouts and SDP steps with an explicit `now`; returns datagrams in an outbox. Tests
//!   can wire two of them together in memory with simulated time.
//! - `driver`: a tokio task owning the participant and its UDP socket.
//! - [`Bot`]: the handle: `connect`, `publish`, `subscribe`, `close_track`, `stats`, `shutdown`.
//! - [`harness`]: start a real `satsuma-sfu` process and read its `/metrics` (for tests and tools).
//! - [`room::RoomMember`]: a room member through the coordinator (token, WebSocket, resume) running
//!   the shipping E2EE core as an MLS member; [`media_e2ee`]: its keys seal what a bot acting for it
//!   publishes and open what it pulls ([`Bot::set_media_crypto`], [`MediaCrypto`]), as the web
//!   client's encoded-frame transforms do.
//!
//! ```no_run
//! # async fn demo() -> Result<(), satsuma_bot::BotError> {
//! use satsuma_bot::Bot;
//! let alice = Bot::connect("http://127.0.0.1:8080", "app", "secret").await?;
//! alice.publish_audio("mic").await?;
//! alice.publish_video("cam").await?;
//! let bob = Bot::connect("http://127.0.0.1:8080", "app", "secret").await?;
//! bob.subscribe(alice.session_id(), "cam").await?;
//! tokio::time::sleep(std::time::Duration::from_secs(2)).await;
//! let stats = bob.stats().await?;
//! assert_eq!(stats.participant.subscribed[0].received.corrupt, 0);
//! # Ok(()) }
//! ```

pub mod api;
mod bot;
mod driver;
pub mod harness;
pub mod log_audit;
pub mod media_e2ee;
pub mod participant;
pub mod payload;
pub mod peer;
pub mod reception;
pub mod room;
pub mod roster;
pub mod shaper;
pub mod source;

pub use api::{ApiError, SfuClient};
pub use bot::{Bot, BotConfig, BotError, BotStats, PublishedTrack, SubscribedTrack};
pub use participant::{MediaCrypto, ParticipantConfig, TrackSpec};
pub use payload::MediaKind;
pub use source::{AudioSettings, SimulcastLayer, VideoSettings};
