//! A shard: one thread that owns a set of sessions and the [`Forwarder`](crate::forward::Forwarder)
//! for them, as a sans-IO [`Core`] inside a thin [`Shard`] driver.
//!
//! Everything a session does happens on its shard: datagrams routed to it by the UDP driver, API
//! commands, timeouts. Shards talk to each other only by message ([`PeerMsg`]): a publisher's
//! shard sends each packet once (as an `Arc<MediaPacket>`, payload shared, never copied) to every
//! shard that holds legs on the track; keyframe requests and (un)subscriptions travel the other
//! way. What one wake-up of a shard addresses to a peer goes as one batch, in order
//! (`outbox.rs`), so the peer wakes and drains its subscribers once per batch, not per packet.
//! No lock is taken on the packet path.
//!
//! * [`Core`] (`core.rs`, with the packet path in `media.rs` and the API commands in
//!   `commands.rs`) takes datagrams, [`ApiCommand`]s, [`PeerMsg`]s and timeouts, each with the
//!   time `now`, and returns UDP datagrams (its egress), [`Action`]s (messages to other shards,
//!   routing changes, ICE-TCP datagrams), API replies ([`ApiReply`] or a typed [`CoreError`]) and
//!   its next timeout. It reads no clock and does no I/O, so tests drive it under simulated time
//!   (`sim.rs`).
//! * [`Shard`] (`driver.rs`) owns the inbox ([`ShardMsg`], `inbox.rs`), the timer, the sockets
//!   and the queues to its peers (`outbox.rs`): it feeds the core and carries out what it asks.
//!
//! Every call into a session's str0m state is wrapped in `catch_unwind`: a panicking session is
//! torn down and counted, and the shard carries on with the others.

mod channel;
mod commands;
mod core;
mod driver;
mod inbox;
mod keyframe_replay;
mod media;
mod outbox;
mod publisher_keyframe;
mod relay_leg;
#[cfg(test)]
mod sim;

pub use self::channel::{
    ChannelDirectory, ChannelDrop, ChannelLimits, ChannelMessage, ChannelMetrics, ChannelPeerMsg,
};
pub use self::commands::{ApiCommand, ApiReply, CoreError};
pub use self::core::{Action, Core, CoreContext, Datagram, PeerMsg};
pub use self::driver::{Shard, ShardContext};
pub use self::inbox::{Reply, ShardMsg};
pub use self::relay_leg::{RELAY_SHARD, RelayAction, RelayInput};
