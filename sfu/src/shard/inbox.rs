//! What a shard can be told: the messages of its inbox ([`ShardMsg`]), from the API, the UDP and
//! ICE-TCP drivers, its peer shards and the relay.

use tokio::sync::oneshot;

use super::commands::{ApiCommand, ApiReply, CoreError};
use super::core::{Datagram, PeerMsg};
use super::relay_leg::RelayInput;
use crate::udp::DatagramBatch;

/// Reply channel of an API command.
pub type Reply = oneshot::Sender<Result<ApiReply, CoreError>>;

/// Everything a shard can be told.
#[derive(Debug)]
pub enum ShardMsg {
    /// An API command and where its reply goes.
    Api {
        /// The command.
        command: ApiCommand,
        /// Its reply.
        reply: Reply,
    },
    /// A datagram for one of our sessions (ICE-TCP).
    Datagram(Datagram),
    /// The UDP datagrams of one `recvmmsg` round for our sessions.
    Datagrams(DatagramBatch),
    /// A message from another shard.
    Peer(PeerMsg),
    /// The messages another shard addressed to this one during one of its wake-ups, in order
    /// (see `PeerOutbox`).
    Peers(Vec<PeerMsg>),
    /// From the relay between SFU nodes, for a relayed track whose home is this shard.
    Relay(RelayInput),
    /// Test hook (only routed with `Config::test_hooks`): panic on the shard's thread.
    InjectPanic,
}

impl ShardMsg {
    /// Whether losing this message on a full inbox is acceptable.
    pub(crate) fn is_lossy(&self) -> bool {
        match self {
            ShardMsg::Datagram(_) | ShardMsg::Datagrams(_) => true,
            ShardMsg::Peer(m) => m.is_lossy(),
            ShardMsg::Peers(ms) => ms.iter().all(PeerMsg::is_lossy),
            ShardMsg::Relay(r) => r.is_lossy(),
            ShardMsg::Api { .. } | ShardMsg::InjectPanic => false,
        }
    }
}
