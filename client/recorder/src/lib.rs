//! `satsuma-record`: records a Satsuma call as a visible member.
//!
//! The recorder joins the room with a join token that grants `recorder`: the coordinator
//! marks it in the roster of every member, every page shows "● Recording by <name>", and it
//! becomes an MLS member of the room's group like anyone else, so it is in every member's
//! verified roster and gets the keys only through the group. It pulls every published
//! track through the coordinator's SFU proxy, decrypts the frames (DAVE framing) with the
//! group's keys, and writes one WebM file per track (VP8 or VP9 video, Opus audio; libwebm
//! through the `webm` crate; H.264 video is named in the manifest as not recordable) plus
//! `manifest.json`: participants, tracks, start and end times, and the safety numbers of the
//! epochs it was in. See `docs/recording.md`.
//!
//! Layout: [`vp8`] and [`vp9`] reassemble frames from RTP and [`clock`] places them on the
//! recording's timeline (all sans-IO), [`track`] writes one WebM file, [`recorder`] runs the
//! session.

pub mod clock;
pub mod recorder;
pub mod track;
pub mod vp8;
pub mod vp9;

pub use recorder::{Manifest, Options, record};
