//! Outgoing datagrams of one shard, batched: everything a shard's sessions want to send while it
//! works through a batch of inbound messages is queued here and flushed once, grouped by
//! destination, so that runs of same-sized datagrams to one peer (the packets of a video frame
//! to one subscriber) leave in a single `sendmsg` with UDP GSO instead of one syscall each.
//!
//! Single datagrams (an audio packet to each of 80 subscribers, the last short packet of a frame)
//! are handed over in batches ([`Egress::flush_batched`]), so that the driver sends them with one
//! `sendmmsg` across peers instead of one `sendmsg` each.
//!
//! Sans-IO: [`Egress`] only queues and plans; the socket call is a closure given to
//! [`Egress::flush`] or [`Egress::flush_batched`] (see `udp::UdpIo::flush`). Order per destination
//! is kept; order between destinations does not matter to anyone.

use std::net::SocketAddr;

/// Upper bound of one GSO send (the kernel's limit on a UDP datagram's total size).
pub const MAX_GSO_BYTES: usize = 65_000;

#[derive(Debug)]
struct Queued {
    destination: SocketAddr,
    datagram: Vec<u8>,
}

/// One socket call: `contents` holds one datagram, or several of `segment_size` bytes each (the
/// last may be shorter) for the same destination.
#[derive(Debug, PartialEq, Eq)]
pub struct Send<'a> {
    /// Where to.
    pub destination: SocketAddr,
    /// The bytes.
    pub contents: &'a [u8],
    /// `Some(size)` when `contents` is several datagrams of `size` bytes (GSO).
    pub segment_size: Option<usize>,
    /// How many datagrams `contents` holds.
    pub datagrams: usize,
}

/// What [`Egress::flush_batched`] hands to its closure.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed<'a, 'b> {
    /// A run of datagrams to one peer (GSO), or a datagram that could not wait for a batch.
    Gso(Send<'a>),
    /// Single datagrams (each `Send` has `datagrams == 1` and no segment size), to any peers:
    /// one `sendmmsg`.
    Singles(&'b [Send<'a>]),
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Egress {
    queued: Vec<Queued>,
    order: Vec<usize>,
    scratch: Vec<u8>,
}

impl Egress {
    /// Queues one datagram. It is taken as it is (str0m hands over each datagram it sends in a
    /// `Vec` of its own): single datagrams leave from it uncopied, and only runs sent with GSO
    /// are gathered into one buffer, so a datagram is copied once at most.
    pub fn push(&mut self, destination: SocketAddr, datagram: impl Into<Vec<u8>>) {
        let datagram = datagram.into();
        if datagram.is_empty() {
            return;
        }
        self.queued.push(Queued {
            destination,
            datagram,
        });
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Hands every queued datagram to `send`, grouping runs for one destination into GSO sends
    /// of at most `max_segments` datagrams (1 disables grouping). Clears the queue (each datagram's
    /// own buffer is freed; the queue's buffers are kept for the next batch).
    pub fn flush(&mut self, max_segments: usize, mut send: impl FnMut(Send<'_>)) {
        self.flush_batched(max_segments, 1, |f| match f {
            Flushed::Gso(s) => send(s),
            Flushed::Singles(batch) => {
                for s in batch {
                    send(Send { ..*s });
                }
            }
        });
    }

    /// Like [`Egress::flush`], but single datagrams (runs of one) are collected, up to `batch`
    /// at a time, and handed over together ([`Flushed::Singles`]); runs of several datagrams to
    /// one peer come as [`Flushed::Gso`]. A peer's datagrams keep their order: singles already
    /// collected for a peer go out before a run to that peer. Singles are not copied (they
    /// point into the queue); only GSO runs are gathered into one buffer.
    pub fn flush_batched(
        &mut self,
        max_segments: usize,
        batch: usize,
        mut send: impl for<'a, 'b> FnMut(Flushed<'a, 'b>),
    ) {
        let max_segments = max_segments.max(1);
        let batch = batch.max(1);
        let mut singles: Vec<Send<'_>> = Vec::with_capacity(batch.min(self.queued.len()));
        self.order.clear();
        self.order.extend(0..self.queued.len());
        // Stable: datagrams to one destination keep their order.
        let queued = &self.queued;
        self.order.sort_by_key(|&i| queued[i].destination);
        let mut i = 0;
        while i < self.order.len() {
            let first = &queued[self.order[i]];
            let first_len = first.datagram.len();
            let mut end = i + 1;
            let mut total = first_len;
            if max_segments > 1 {
                while end < self.order.len() && end - i < max_segments {
                    let next = &queued[self.order[end]];
                    let next_len = next.datagram.len();
                    // Same peer; every segment but the last exactly `first_len` long.
                    if next.destination != first.destination
                        || next_len > first_len
                        || total + next_len > MAX_GSO_BYTES
                    {
                        break;
                    }
                    total += next_len;
                    end += 1;
                    if next_len < first_len {
                        break;
                    }
                }
            }
            if end - i == 1 {
                singles.push(Send {
                    destination: first.destination,
                    contents: &first.datagram,
                    segment_size: None,
                    datagrams: 1,
                });
                if singles.len() >= batch {
                    send(Flushed::Singles(&singles));
                    singles.clear();
                }
            } else {
                if singles
                    .last()
                    .is_some_and(|s| s.destination == first.destination)
                {
                    send(Flushed::Singles(&singles));
                    singles.clear();
                }
                self.scratch.clear();
                for &k in &self.order[i..end] {
                    self.scratch.extend_from_slice(&queued[k].datagram);
                }
                send(Flushed::Gso(Send {
                    destination: first.destination,
                    contents: &self.scratch,
                    segment_size: Some(first_len),
                    datagrams: end - i,
                }));
            }
            i = end;
        }
        if !singles.is_empty() {
            send(Flushed::Singles(&singles));
        }
        drop(singles);
        self.queued.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Flushes and returns (destination port, segment size, datagram count, contents).
    fn flush(e: &mut Egress, max: usize) -> Vec<(u16, Option<usize>, usize, Vec<u8>)> {
        let mut out = Vec::new();
        e.flush(max, |s| {
            out.push((
                s.destination.port(),
                s.segment_size,
                s.datagrams,
                s.contents.to_vec(),
            ))
        });
        out
    }

    #[test]
    fn runs_to_one_peer_become_one_gso_send_in_order() {
        let mut e = Egress::default();
        // Two frames' packets interleaved over two subscribers, as fan-out produces them.
        e.push(addr(1), [1; 4]);
        e.push(addr(2), [9; 4]);
        e.push(addr(1), [2; 4]);
        e.push(addr(2), [8; 4]);
        e.push(addr(1), [3; 2]);
        let out = flush(&mut e, 64);
        assert_eq!(
            out,
            vec![
                (1, Some(4), 3, vec![1, 1, 1, 1, 2, 2, 2, 2, 3, 3]),
                (2, Some(4), 2, vec![9, 9, 9, 9, 8, 8, 8, 8]),
            ]
        );
        assert!(e.is_empty());
        assert!(flush(&mut e, 64).is_empty());
    }

    #[test]
    fn a_longer_datagram_or_a_short_one_in_the_middle_ends_a_run() {
        let mut e = Egress::default();
        e.push(addr(1), [1; 4]);
        e.push(addr(1), [2; 2]);
        e.push(addr(1), [3; 4]);
        e.push(addr(1), [4; 6]);
        let out = flush(&mut e, 64);
        let shape: Vec<_> = out.iter().map(|(_, s, n, c)| (*s, *n, c.len())).collect();
        assert_eq!(
            shape,
            vec![(Some(4), 2, 6), (None, 1, 4), (None, 1, 6)],
            "segments must be equal except the last"
        );
        let all: Vec<u8> = out.into_iter().flat_map(|o| o.3).collect();
        assert_eq!(all, [[1; 4].as_slice(), &[2; 2], &[3; 4], &[4; 6]].concat());
    }

    #[test]
    fn segment_and_size_limits_hold_and_one_disables_grouping() {
        let mut e = Egress::default();
        for _ in 0..10 {
            e.push(addr(1), [7; 1000]);
        }
        let out = flush(&mut e, 4);
        assert_eq!(out.iter().map(|o| o.2).collect::<Vec<_>>(), vec![4, 4, 2]);
        for _ in 0..100 {
            e.push(addr(1), [7; 1200]);
        }
        let out = flush(&mut e, 64);
        assert!(out.iter().all(|o| o.3.len() <= MAX_GSO_BYTES));
        assert_eq!(out.iter().map(|o| o.2).sum::<usize>(), 100);
        e.push(addr(1), [1; 3]);
        e.push(addr(1), [2; 3]);
        assert_eq!(flush(&mut e, 1).len(), 2);
    }

    /// Flushes in batches and returns what each call carried: (ports, segment size, datagrams).
    fn flush_in_batches(e: &mut Egress, max: usize, batch: usize) -> Vec<Vec<(u16, usize, u8)>> {
        let mut out = Vec::new();
        e.flush_batched(max, batch, |f| match f {
            Flushed::Gso(s) => out.push(vec![(s.destination.port(), s.datagrams, s.contents[0])]),
            Flushed::Singles(b) => {
                assert!(
                    b.iter()
                        .all(|s| s.datagrams == 1 && s.segment_size.is_none())
                );
                out.push(
                    b.iter()
                        .map(|s| (s.destination.port(), 1, s.contents[0]))
                        .collect(),
                );
            }
        });
        out
    }

    #[test]
    fn single_datagrams_to_many_peers_leave_in_batches() {
        let mut e = Egress::default();
        for port in 1..=5u16 {
            e.push(addr(port), [port as u8; 100]);
        }
        let out = flush_in_batches(&mut e, 64, 3);
        assert_eq!(
            out,
            vec![
                vec![(1, 1, 1), (2, 1, 2), (3, 1, 3)],
                vec![(4, 1, 4), (5, 1, 5)],
            ]
        );
        assert!(e.is_empty());
    }

    #[test]
    fn a_peers_single_goes_before_its_run_and_runs_stay_whole() {
        let mut e = Egress::default();
        // Peer 1: a short packet, then a frame of two; peer 2: one packet; peer 3: a frame.
        e.push(addr(1), [1; 10]);
        e.push(addr(2), [2; 10]);
        e.push(addr(1), [3; 50]);
        e.push(addr(1), [4; 50]);
        e.push(addr(3), [5; 50]);
        e.push(addr(3), [6; 50]);
        let out = flush_in_batches(&mut e, 64, 64);
        assert_eq!(
            out,
            vec![
                vec![(1, 1, 1)],
                vec![(1, 2, 3)],
                vec![(3, 2, 5)],
                vec![(2, 1, 2)],
            ],
            "peer 1's single before its run; peer 2's single may wait for the batch"
        );
        // The same datagrams through the unbatched flush: identical bytes per peer, in order.
        for (port, bytes) in [(1u16, [1u8; 10]), (2, [2; 10])] {
            e.push(addr(port), bytes);
        }
        let plain = flush(&mut e, 64);
        assert_eq!(plain.len(), 2);
    }

    #[test]
    fn empty_datagrams_are_not_sent() {
        let mut e = Egress::default();
        e.push(addr(1), []);
        assert!(e.is_empty());
    }
}
