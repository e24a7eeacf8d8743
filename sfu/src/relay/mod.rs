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
//! Origin side (node A, where the publisher is): the shard calls [`RelayCore::publish`] for
//! each track it publishes; on [`RelayEvent::LocalTrackWanted`] it feeds the track's packets to
//! [`RelayCore::local_media`] (through [`driver::RelayHandle::local_media`]); it answers
//! [`RelayEvent::KeyframeRequest`] like a keyframe request of a local leg.
//!
//! Subscriber side (node B): a pull of a track on node A is [`RelayCore::subscribe`] with a
//! subscriber id (one per leg, or one per shard with legs on it); the packets come back as
//! [`RelayEvent::Media`] for the handle it returned, and enter B's forwarder as if a local
//! publisher had sent them (B's legs rebase sequence numbers and timestamps themselves, and
//! serve their subscribers' NACKs from str0m's RTX cache). Loss on the link itself is repaired
//! by the relay's own NACKs to A.

//! # Wiring it into the shards (not done yet)
//!
//! The shards already talk to each other with messages about tracks (a subscriber shard
//! subscribes to a publisher shard's track, gets its packets, sends keyframe requests back).
//! The relay fits that shape as one more participant, a *relay shard* id:
//!
//! * **Origin node.** When a session publishes, the shard calls [`RelayHandle::publish`] with
//!   its [`TrackId`](crate::ids::TrackId) as the relay id and the API's (session id, track
//!   name) as [`TrackRef`]. The task that reads the relay's events turns
//!   [`RelayEvent::LocalTrackWanted`] into "the relay shard subscribes to this track" for the
//!   publisher's shard (and `LocalTrackUnwanted` into an unsubscribe); from then on the
//!   publisher's shard hands each packet of the track to [`RelayHandle::local_media`] with
//!   [`media::to_relay`] (once per packet, not per remote subscriber), and
//!   [`RelayEvent::KeyframeRequest`] becomes the keyframe request of a (fresh) leg.
//! * **Subscriber node.** A pull of a track that the coordinator says lives on node N is
//!   [`RelayHandle::subscribe`] (subscriber id: the pulling shard, or the leg); the returned
//!   [`RemoteTrackId`] gets a local `TrackId` from the directory, so B's legs and forwarder see
//!   an ordinary track published by the relay shard. [`RelayEvent::Media`] packets go through
//!   [`media::from_relay`] to the shards with legs on it, exactly like cross-shard media;
//!   their legs' keyframe requests go to [`RelayHandle::request_keyframe`];
//!   [`RelayEvent::TrackEnded`] ends the legs like a local track's end.
//! * The relay's own NACKs repair loss on the link; subscribers' NACKs are answered on B by
//!   str0m's RTX cache of each leg, as for local tracks.
//!
//! [`RelayHandle::publish`]: driver::RelayHandle::publish
//! [`RelayHandle::local_media`]: driver::RelayHandle::local_media
//! [`RelayHandle::subscribe`]: driver::RelayHandle::subscribe
//! [`RelayHandle::request_keyframe`]: driver::RelayHandle::request_keyframe

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
