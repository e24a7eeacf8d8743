//! Satsuma SFU: a selective forwarding unit that forwards RTP between WebRTC sessions without
//! touching payloads, behind an HTTP API compatible with Cloudflare Realtime's sessions/tracks
//! calls (v1). Because it never reads or changes a payload, it forwards end-to-end encrypted
//! media it cannot decrypt.
//!
//! # Shape
//!
//! * A **session** ([`session::Session`]) is one peer connection: one str0m [`Rtc`](str0m::Rtc)
//!   in RTP mode, ICE-lite, DTLS-SRTP (str0m prefers AES-GCM), BUNDLE. A session can publish
//!   tracks (the client pushes) and subscribe to tracks of other sessions (the client pulls)
//!   on the same connection.
//! * A **shard** ([`shard::Shard`]) is one OS thread (its own single-threaded tokio runtime; one
//!   shard per core by default) that owns a set of sessions and a [`forward::Forwarder`]. Sessions never move between shards; all their work (datagrams, API
//!   calls, timers) runs on their shard, so nothing on the packet path is locked. Its state and
//!   rules are a sans-IO [`shard::Core`] (fed datagrams, typed API commands, messages from other
//!   shards and timeouts, each with the time; it returns datagrams, actions, API replies and its
//!   next timeout), unit-tested under simulated time; the driver around it owns the inbox, the
//!   timer and the sockets.
//! * The **forwarder** ([`forward`]) is the sans-IO core: given a publisher's packet it decides
//!   which subscriber legs get it, with their own sequence numbers (rebased per leg: the SRTP
//!   rollover pitfall), timestamps and payload types. It is unit-tested without sockets.
//! * The **UDP driver** ([`udp`]) owns the single socket's receive side (batched `recvmmsg`) and
//!   routes datagrams to shards; shards send on the same socket directly, each flushing what a
//!   batch of work produced grouped per peer with UDP GSO ([`egress`]).
//! * The **ICE-TCP driver** ([`tcp`], sans-IO core in [`ice_tcp`]) owns one TCP listener for
//!   passive TCP candidates (RFC 6544, priority below UDP): each connection's RFC 4571 frames
//!   go to its session's shard like UDP datagrams, routed by the first binding request's ufrag.
//! * The **API** ([`api`]) authenticates, rate-limits and decodes requests, and hands them to
//!   the owning shard; the [`directory::Directory`] maps session ids and track names (control
//!   path only).
//!
//! # The packet path
//!
//! ```text
//!  UDP socket ──recvmmsg on shard 0──▶ udp::UdpReader ── Demux: remote addr → session (fast path)
//!                                                   └─ else STUN USERNAME ufrag → session (new flow)
//!        │ shard 0's own sessions: handled at once; others: ShardMsg::Datagrams, one per
//!        │ recvmmsg round and shard (pooled buffers, one copy)
//!        ▼
//!  shard of the publisher: Rtc::handle_input → drain poll_output until Timeout
//!        │ Event::RtpPacket (SRTP decrypted, payload: Arc<[u8]>)
//!        ▼
//!  Forwarder::note_media → which shards have legs on this track
//!        ├─ this shard: Forwarder::forward → LegWrite per leg (rebased seq/ts, mapped PT)
//!        │                └─ StreamTx::write_rtp on the subscriber's Rtc → drain → Egress
//!        │                   (flushed once per batch: runs per peer as one GSO sendmsg)
//!        └─ other shards: PeerMsg::Media { Arc<MediaPacket> } (payload shared, never copied)
//! ```
//!
//! # Simulcast and bandwidth
//!
//! By default (`Config::bwe_initial_kbps` above 0) every session runs str0m's send-side
//! bandwidth estimator (GCC over TWCC, which str0m negotiates by default). Forwarded media skips
//! str0m's pacer (it only spaces out padding and probes; `Config::bwe_pace_video` paces simulcast
//! video): the estimate acts through the layer choice, never by holding packets. A publisher's layers (rids) all reach the
//! shards that have legs on the track; there the forwarder measures each layer's bitrate and
//! whether it flows, and a [`layer::LayerSelector`] per subscriber session gives each leg the
//! best flowing layer in layer order (`q` < `h` < `f`, never ranked by a bitrate sample) under its
//! `preferredRid` and, with estimation on, under the session's estimate
//! (`Event::EgressBitrateEstimate`) split over its legs, with hysteresis (down on heavy loss, a
//! severe shortfall or a sustained one, never on GCC's mere back-off; the least wanted legs
//! paused when even the lowest layers do not fit; up after the estimate has left room for a
//! while; see [`layer`]). A leg
//! switches on the next keyframe of its target layer (requested, throttled per layer) and keeps
//! its old layer until then; packets of layers no leg takes are dropped and counted. For VP8 the
//! leg's PictureID and TL0PICIDX run on across switches ([`vp8`]): the one change the SFU makes
//! inside a payload, in the descriptor in front of the encoded frame, which is never modified. The shard tells str0m the
//! bitrate the session would like (`Bwe::set_bitrate`) so it probes for more when the link allows.
//!
//! Keyframe requests flow back: a subscriber's PLI/FIR (`Event::KeyframeRequest`) is mapped to
//! its leg's track and sent to the publisher's shard, which lets at most one per second per track
//! and layer through (`StreamRx::request_keyframe`). NACKs are answered per leg by str0m from its
//! RTX cache; RTCP and TWCC feedback are str0m's, per leg.
//!
//! Addresses are learnt by the UDP driver only after a session *sent* to them (str0m answers a
//! STUN request only once its integrity checks out), so spoofed datagrams cannot hijack a flow.
//! A client that changed networks restarts ICE on its session (an offer with new ICE
//! credentials through `renegotiate`): the session keeps its tracks and DTLS state, the driver
//! learns its new ufrag, and the routes of the old path are forgotten once the new one is up
//! ([`routes`]).
//! Every call into str0m runs under `catch_unwind`: a session that panics is torn down and
//! counted (`satsuma_sfu_session_panics_total`) while the others carry on.
//!
//! # Embedding
//!
//! ```no_run
//! # async fn run() -> Result<(), satsuma_sfu::ServerError> {
//! let mut config = satsuma_sfu::Config::default();
//! config.http_bind = "127.0.0.1:0".parse().unwrap();
//! config.udp_bind = "127.0.0.1:0".parse().unwrap();
//! let sfu = satsuma_sfu::Server::bind(config).await?;
//! println!("http={} udp={}", sfu.http_addr(), sfu.udp_addr());
//! sfu.shutdown().await;
//! # Ok(()) }
//! ```

pub mod api;
pub mod config;
pub mod directory;
pub mod drain;
pub mod egress;
pub mod forward;
pub mod health;
pub mod ice_tcp;
pub mod ids;
pub mod keyframe_cache;
pub mod layer;
pub mod metrics;
pub mod relay;
pub mod routes;
pub mod server;
pub mod session;
pub mod shard;
pub mod speaker;
pub mod stun;
pub mod tcp;
pub mod udp;
pub mod vp8;

pub use config::{App, Config, Limits};
pub use metrics::Metrics;
pub use server::{Server, ServerError, ServerHandle};
