//! The relay between SFU nodes: a room whose participants are on several nodes gets each
//! published track across to every other node that has subscribers for it, once per node pair
//! whatever the number of subscribers there.
//!
//! * [`wire`]: the media datagram framing (RTP header fields and extensions plus the track id,
//!   payload bytes untouched) and the control stream's messages (subscribe with layer demand,
//!   announce, withdraw, keyframe requests, NACKs, loss reports). Hostile input gives a
//!   [`wire::WireError`], never a panic (proptested).
//! * [`core`]: the sans-IO [`RelayCore`]: per peer-node link state, the origin half (which peers
//!   pull which local tracks, a resend buffer for their NACKs) and the subscriber half (remote
//!   tracks with their local subscribers, gap detection and NACKs). Fed events and `now`,
//!   it returns [`Action`]s for the driver and [`RelayEvent`]s for the SFU.
//! * [`tls`]: the cluster CA and node certificates (`satsuma-sfu cluster-ca`, `node-cert`), and
//!   the rustls configurations for mutual authentication by CA or by pinned keys.
//! * [`driver`]: the thin quinn driver: one QUIC connection per node pair made on demand,
//!   datagrams for media, one bidirectional stream for control.
//! * [`media`]: conversion between the forwarder's [`MediaPacket`](crate::forward::MediaPacket)
//!   and the relay's [`RelayMedia`], for the shard that feeds the relay.
//!
//! # How the SFU uses it
//!
//! Origin side (node A, where the publisher is): every track published on the node is
//! [`RelayCore::publish`]ed (through [`driver::RelayHandle::publish`]); on
//! [`RelayEvent::LocalTrackWanted`] the publisher's shard feeds the track's packets to
//! [`RelayCore::local_media`] (through [`driver::RelayHandle::local_media`]), and
//! [`RelayEvent::KeyframeRequest`] becomes a keyframe request like a local leg's.
//!
//! Subscriber side (node B): a pull of a track on node A is [`RelayCore::subscribe`] with a
//! subscriber id (one per leg, or one per shard with legs on it); the packets come back as
//! [`RelayEvent::Media`] for the handle it returned, and enter B's forwarder as if a local
//! publisher had sent them (B's legs rebase sequence numbers and timestamps themselves, and
//! serve their subscribers' NACKs from str0m's RTX cache). Loss on the link itself is repaired
//! by the relay's own NACKs to A.

//! # Wiring into the node
//!
//! * [`bridge`]: a routing task between the relay, the shards, the directory and the API. A
//!   session id names its node ([`crate::ids::SessionId::tagged`]), so a pull of a session on
//!   another node is resolved before the shard sees it: one relay subscription per track and
//!   node, a local track id whose home is the pulling session's shard, a name in the
//!   [`Directory`](crate::directory::Directory). Every local track published or gone is
//!   published to or withdrawn from the relay.
//! * `shard/relay_leg.rs`: the shard side, sans-IO like the rest of the shard core. A relayed
//!   track is a publication without a local session; its packets fan out like a local
//!   publisher's, its legs' keyframe requests pass the forwarder's throttle and go to the
//!   origin. On the origin the relay is one more subscriber shard
//!   ([`RELAY_SHARD`](crate::shard::RELAY_SHARD)), so each packet reaches it once.

pub mod bridge;
pub mod core;
pub mod driver;
pub mod media;
pub mod metrics;
pub mod settings;
pub mod tls;
pub mod wire;

pub use self::core::{Action, LinkStats, RelayCore, RelayEvent, RemoteTrackId, SubscriberId};
pub use self::wire::{ControlMsg, KeyframeKind, LayerDemand, RelayMedia, TrackKind, TrackRef};
