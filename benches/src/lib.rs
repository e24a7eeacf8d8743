//! Satsuma benchmarks and the `satsuma-load` load harness.
//!
//! `satsuma-load` runs LiveKit-style scenarios (audio fan-out, N×N meeting, 1→N livestream) against
//! Satsuma's `satsuma-sfu` and, in the same run, against Janus 1.1.2's VideoRoom, with identical
//! native str0m bots, and reports packets/s, SFU CPU per forwarded packet (from `/proc`), loss,
//! server-added latency and memory per participant as JSON and Markdown.
//!
//! Layout:
//! - [`scenario`]: the scenario plans (pure data: who publishes, who pulls what, worker split).
//! - [`media`]: bitrate/fps/keyframe settings → the bot crate's source shapes.
//! - the media side of every peer is `satsuma_bot::peer::Peer` (the bot crate's tokio driver around its sans-IO `Participant`).
//! - [`satsuma`] and [`janus`]: signaling for a peer against each SFU (Janus: VideoRoom over HTTP).
//! - [`janus_server`]: run Janus with a private config and the loopback workaround.
//! - [`worker`]: the bot worker process and its JSON-lines protocol with the controller.
//! - [`run`]: the controller (start SFUs, spawn workers, measure the window).
//! - [`report`]: aggregation, ratios, Markdown; [`process`]: `/proc` readings.
//! - [`soak`]: `satsuma-load soak`, a long mixed load with churn and a pass/fail verdict.

pub mod janus;
pub mod janus_server;
pub mod media;
pub mod process;
pub mod report;
pub mod run;
pub mod satsuma;
pub mod scenario;
pub mod soak;
pub mod worker;
