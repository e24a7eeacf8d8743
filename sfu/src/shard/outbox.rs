//! The driver's queues towards its peer shards (see [`PeerOutbox`]).

use std::collections::VecDeque;
use std::mem;

use tokio::sync::mpsc;

use super::core::PeerMsg;
use super::inbox::ShardMsg;

/// Messages this shard sends to one peer shard.
///
/// **Batched per wake-up.** What the core addresses to a peer during one wake-up of the driver
/// is gathered, in order, and goes out as one [`ShardMsg::Peers`] ([`PeerOutbox::flush`]) once
/// the wake-up's input is handled, before this shard drains its own subscribers (so that both
/// work at the same time), and again for what the drains and timeouts added: one channel send
/// and at most one wake-up of the peer per batch instead of one per packet.
/// The order of the messages between two shards is kept (the keyframe replay relies on it).
///
/// **Loss.** A batch of media only may be dropped when the peer's inbox is full (counted as
/// `shard_queue_full`, per message): loss is what UDP media tolerates, and NACK/RTX and keyframe
/// requests repair it. A batch holding a control message (subscribe, unsubscribe, track ended,
/// keyframe request, replay, shard reset) must not be lost, or a leg would stay silent for good:
/// it waits here, in order, and goes out as soon as the peer has room.
#[derive(Debug, Default)]
pub(super) struct PeerOutbox {
    /// This wake-up's messages, not yet sent.
    batch: Vec<PeerMsg>,
    pub(super) deferred: VecDeque<ShardMsg>,
}

/// Batches holding control messages kept for one peer at most; beyond, the peer is stuck and
/// they are dropped (counted and logged).
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
    /// Adds a message to this wake-up's batch.
    pub(super) fn push(&mut self, msg: PeerMsg) {
        self.batch.push(msg);
    }

    /// Sends this wake-up's batch, if any: returns what happened to it and how many messages it
    /// held.
    pub(super) fn flush(&mut self, tx: &mpsc::Sender<ShardMsg>) -> Option<(Sent, usize)> {
        let n = self.batch.len();
        let msg = match n {
            0 => return None,
            1 => ShardMsg::Peer(self.batch.pop()?),
            _ => ShardMsg::Peers(mem::take(&mut self.batch)),
        };
        Some((self.send(tx, msg), n))
    }

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

    /// Sends deferred messages while the peer has room; returns how many peer messages went out.
    pub(super) fn retry(&mut self, tx: &mpsc::Sender<ShardMsg>) -> usize {
        let mut sent = 0;
        while let Some(msg) = self.deferred.pop_front() {
            let n = match &msg {
                ShardMsg::Peers(ms) => ms.len(),
                _ => 1,
            };
            match tx.try_send(msg) {
                Ok(()) => sent += n,
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
    use std::sync::Arc;
    use std::time::Instant;

    use str0m::net::Protocol;

    use super::*;
    use crate::forward::MediaPacket;
    use crate::ids::{SessionId, TrackId};
    use crate::shard::core::{Datagram, PeerMsg};

    fn media(seq: u64) -> PeerMsg {
        PeerMsg::Media {
            track: TrackId(1),
            packet: Arc::new(MediaPacket::test_video(seq, Instant::now())),
        }
    }

    /// What a peer message is, for comparing orders: `m<seq>` or `e<track>`.
    fn tag(msg: &PeerMsg) -> String {
        match msg {
            PeerMsg::Media { packet, .. } => format!("m{}", packet.seq),
            PeerMsg::TrackEnded { track } => format!("e{}", track.0),
            other => format!("{other:?}"),
        }
    }

    fn received(rx: &mut mpsc::Receiver<ShardMsg>) -> Vec<Vec<String>> {
        let mut got = Vec::new();
        while let Ok(msg) = rx.try_recv() {
            got.push(match msg {
                ShardMsg::Peer(m) => vec![tag(&m)],
                ShardMsg::Peers(ms) => ms.iter().map(tag).collect(),
                other => vec![format!("{other:?}")],
            });
        }
        got
    }

    #[test]
    fn a_wake_ups_messages_go_out_as_one_batch_in_order() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut outbox = PeerOutbox::default();
        assert_eq!(outbox.flush(&tx), None, "nothing to send");
        outbox.push(media(1));
        outbox.push(PeerMsg::TrackEnded { track: TrackId(5) });
        outbox.push(media(2));
        assert_eq!(outbox.flush(&tx), Some((Sent::Delivered, 3)));
        // A lone message goes as itself.
        outbox.push(media(3));
        assert_eq!(outbox.flush(&tx), Some((Sent::Delivered, 1)));
        assert_eq!(outbox.flush(&tx), None, "the batch was taken");
        assert_eq!(received(&mut rx), vec![vec!["m1", "e5", "m2"], vec!["m3"]]);
    }

    #[test]
    fn a_full_peer_loses_a_media_batch_but_keeps_one_with_control() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut outbox = PeerOutbox::default();
        outbox.push(media(1));
        assert_eq!(outbox.flush(&tx), Some((Sent::Delivered, 1)));
        // The inbox is full: the media-only batch is lost (all of it counted)...
        outbox.push(media(2));
        outbox.push(media(3));
        assert_eq!(outbox.flush(&tx), Some((Sent::Dropped, 2)));
        // ...and a batch with a control message waits, whole and in order.
        outbox.push(media(4));
        outbox.push(PeerMsg::TrackEnded { track: TrackId(9) });
        assert_eq!(outbox.flush(&tx), Some((Sent::Deferred, 2)));
        assert_eq!(received(&mut rx), vec![vec!["m1"]]);
        assert_eq!(
            outbox.retry(&tx),
            2,
            "the retry counts the messages of the batch"
        );
        assert_eq!(received(&mut rx), vec![vec!["m4", "e9"]]);
    }

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
