//! The driver's queues towards its peer shards (see [`PeerOutbox`]).

use std::collections::VecDeque;

use tokio::sync::mpsc;

use super::driver::ShardMsg;

/// Messages this shard sends to one peer shard. Media and datagrams may be dropped when the
/// peer's inbox is full (counted as `shard_queue_full`): loss is what UDP media tolerates, and
/// NACK/RTX and keyframe requests repair it. Control messages (subscribe, unsubscribe, track
/// ended, keyframe request, shard reset) must not be lost, or a leg would stay silent for good:
/// they wait here, in order, and go out as soon as the peer has room.
#[derive(Debug, Default)]
pub(super) struct PeerOutbox {
    pub(super) deferred: VecDeque<ShardMsg>,
}

/// Control messages kept for one peer at most; beyond, the peer is stuck and they are dropped
/// (counted and logged).
const MAX_DEFERRED: usize = 65_536;

/// What [`PeerOutbox::send`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sent {
    Delivered,
    Deferred,
    Dropped,
    PeerGone,
}

impl PeerOutbox {
    pub(super) fn send(&mut self, tx: &mpsc::Sender<ShardMsg>, msg: ShardMsg) -> Sent {
        let lossy = msg.is_lossy();
        if !lossy && !self.deferred.is_empty() {
            return self.defer(msg);
        }
        match tx.try_send(msg) {
            Ok(()) => Sent::Delivered,
            Err(mpsc::error::TrySendError::Full(msg)) if !lossy => self.defer(msg),
            Err(mpsc::error::TrySendError::Full(_)) => Sent::Dropped,
            Err(mpsc::error::TrySendError::Closed(_)) => Sent::PeerGone,
        }
    }

    fn defer(&mut self, msg: ShardMsg) -> Sent {
        if self.deferred.len() >= MAX_DEFERRED {
            return Sent::Dropped;
        }
        self.deferred.push_back(msg);
        Sent::Deferred
    }

    /// Sends deferred messages while the peer has room; returns how many went out.
    pub(super) fn retry(&mut self, tx: &mpsc::Sender<ShardMsg>) -> usize {
        let mut sent = 0;
        while let Some(msg) = self.deferred.pop_front() {
            match tx.try_send(msg) {
                Ok(()) => sent += 1,
                Err(mpsc::error::TrySendError::Full(msg)) => {
                    self.deferred.push_front(msg);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.deferred.clear();
                    break;
                }
            }
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use str0m::net::Protocol;

    use super::*;
    use crate::ids::{SessionId, TrackId};
    use crate::shard::core::{Datagram, PeerMsg};

    fn datagram() -> ShardMsg {
        ShardMsg::Datagram(Datagram {
            session: SessionId([7; 16]),
            source: SocketAddr::from(([127, 0, 0, 1], 1)),
            destination: SocketAddr::from(([127, 0, 0, 1], 2)),
            data: vec![0; 10],
            received: Instant::now(),
            proto: Protocol::Udp,
        })
    }

    fn ended(id: u64) -> ShardMsg {
        ShardMsg::Peer(PeerMsg::TrackEnded { track: TrackId(id) })
    }

    fn ended_id(msg: &ShardMsg) -> Option<u64> {
        match msg {
            ShardMsg::Peer(PeerMsg::TrackEnded { track }) => Some(track.0),
            _ => None,
        }
    }

    #[test]
    fn a_full_peer_loses_media_but_never_control_messages() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut outbox = PeerOutbox::default();
        assert_eq!(outbox.send(&tx, datagram()), Sent::Delivered);
        assert_eq!(outbox.send(&tx, ended(1)), Sent::Delivered);
        // The inbox is full: media is dropped, control waits.
        assert_eq!(outbox.send(&tx, datagram()), Sent::Dropped);
        assert_eq!(outbox.send(&tx, ended(2)), Sent::Deferred);
        // Room for one: a later control message still queues behind the deferred one.
        assert!(rx.try_recv().is_ok());
        assert_eq!(outbox.send(&tx, ended(3)), Sent::Deferred);
        assert_eq!(outbox.retry(&tx), 1);
        assert_eq!(outbox.deferred.len(), 1);
        while rx.try_recv().is_ok() {}
        assert_eq!(outbox.retry(&tx), 1);
        assert!(outbox.deferred.is_empty());
        // Control messages arrive in the order they were sent.
        let mut order = Vec::new();
        while let Ok(msg) = rx.try_recv() {
            order.extend(ended_id(&msg));
        }
        assert_eq!(order, vec![3]);
    }

    #[test]
    fn control_messages_keep_their_order_through_the_outbox() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut outbox = PeerOutbox::default();
        for id in 0..5 {
            outbox.send(&tx, ended(id));
        }
        let mut order = Vec::new();
        for _ in 0..10 {
            while let Ok(msg) = rx.try_recv() {
                order.extend(ended_id(&msg));
            }
            outbox.retry(&tx);
        }
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
        drop(rx);
        assert_eq!(outbox.send(&tx, ended(9)), Sent::PeerGone);
    }
}
