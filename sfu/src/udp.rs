//! The UDP driver: the one socket every session shares.
//!
//! One shard (the *reading shard*, shard 0) reads the socket on its own thread, between its
//! other work ([`UdpReader`]), and routes each datagram to the shard owning its session — by
//! remote address for known flows (the fast path), by the ufrag in a STUN binding request for
//! new ones. Its own sessions' datagrams it handles at once; the others' reach their shards as
//! one message per `recvmmsg` round and shard. (Before, a receiver task on the async runtime
//! read the socket and handed every datagram over: at the sparse input rates of real calls that
//! cost two thread wake-ups per datagram, the receiver's and the shard's.)
//! An address is only learnt from a shard after its session has *sent* to it, which str0m does
//! only after checking a STUN request's integrity, so a spoofed request cannot steal a flow.
//! An ICE restart replaces a session's ufrag ([`UdpControl::ReplaceUfrag`]) and keeps its
//! routes until the new path is up; then the unused ones are forgotten ([`UdpControl::Unroute`],
//! see [`crate::routes`]).
//! Everything else is counted as a drop. Reads are batched (`recvmmsg`), and the socket is read
//! until it is empty at each wake-up of the reading shard; each round's datagrams for another
//! shard reach it as one message (a [`DatagramBatch`], its buffers recycled through a
//! [`BatchPool`]: one copy per datagram and no allocation). Shards send directly on the shared
//! socket, in batches grouped per destination ([`crate::egress`], UDP GSO), and single datagrams
//! to many peers with one `sendmmsg`.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::sync::mpsc;

use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};

use crate::egress::{Egress, Flushed, Send};

use crate::ids::{SessionId, ShardId};
use crate::metrics::{Metrics, PacketDrop};
use crate::shard::{Datagram, ShardMsg};
use crate::stun::{self, StunError};

/// Routing changes, sent by shards.
#[derive(Debug, Clone)]
pub enum UdpControl {
    /// A new session: STUN requests for `ufrag` go to it.
    Register {
        /// Our ICE ufrag of the session.
        ufrag: String,
        /// Session.
        session: SessionId,
        /// Its shard.
        shard: ShardId,
    },
    /// The session talks to `addr`: route that address's datagrams to it.
    Route {
        /// Remote address.
        addr: SocketAddr,
        /// Session.
        session: SessionId,
        /// Its shard.
        shard: ShardId,
    },
    /// The session is gone.
    Unregister {
        /// Session.
        session: SessionId,
    },
    /// The session's ICE restarted with new credentials: STUN requests for `ufrag` go to it,
    /// those for its old ufrag no longer do. Its address routes stay (a client that comes back
    /// on the same path is still found by address).
    ReplaceUfrag {
        /// Our new ICE ufrag of the session.
        ufrag: String,
        /// Session.
        session: SessionId,
        /// Its shard.
        shard: ShardId,
    },
    /// The session no longer talks to `addr` (a path of before an ICE restart): forget that
    /// route, unless another session owns it by now.
    Unroute {
        /// Remote address.
        addr: SocketAddr,
        /// Session.
        session: SessionId,
    },
}

/// The routing table (no I/O): remote address → session, ufrag → session.
#[derive(Debug, Default)]
pub struct Demux {
    by_addr: HashMap<SocketAddr, (SessionId, ShardId)>,
    by_ufrag: HashMap<String, (SessionId, ShardId)>,
    sessions: HashMap<SessionId, (String, Vec<SocketAddr>)>,
}

impl Demux {
    /// Applies a routing change.
    pub fn apply(&mut self, ctl: UdpControl) {
        match ctl {
            UdpControl::Register {
                ufrag,
                session,
                shard,
            } => {
                self.by_ufrag.insert(ufrag.clone(), (session, shard));
                self.sessions.insert(session, (ufrag, Vec::new()));
            }
            UdpControl::Route {
                addr,
                session,
                shard,
            } => {
                if !self.sessions.contains_key(&session) {
                    return;
                }
                if let Some((old, _)) = self.by_addr.insert(addr, (session, shard))
                    && old != session
                    && let Some((_, old_addrs)) = self.sessions.get_mut(&old)
                {
                    old_addrs.retain(|a| *a != addr);
                }
                if let Some((_, addrs)) = self.sessions.get_mut(&session)
                    && !addrs.contains(&addr)
                {
                    addrs.push(addr);
                }
            }
            UdpControl::ReplaceUfrag {
                ufrag,
                session,
                shard,
            } => {
                let Some((old, _)) = self.sessions.get_mut(&session) else {
                    return;
                };
                let old = std::mem::replace(old, ufrag.clone());
                if self.by_ufrag.get(&old).is_some_and(|(s, _)| *s == session) {
                    self.by_ufrag.remove(&old);
                }
                self.by_ufrag.insert(ufrag, (session, shard));
            }
            UdpControl::Unroute { addr, session } => {
                if self.by_addr.get(&addr).is_some_and(|(s, _)| *s == session) {
                    self.by_addr.remove(&addr);
                }
                if let Some((_, addrs)) = self.sessions.get_mut(&session) {
                    addrs.retain(|a| *a != addr);
                }
            }
            UdpControl::Unregister { session } => {
                if let Some((ufrag, addrs)) = self.sessions.remove(&session) {
                    if self
                        .by_ufrag
                        .get(&ufrag)
                        .is_some_and(|(s, _)| *s == session)
                    {
                        self.by_ufrag.remove(&ufrag);
                    }
                    for a in addrs {
                        if self.by_addr.get(&a).is_some_and(|(s, _)| *s == session) {
                            self.by_addr.remove(&a);
                        }
                    }
                }
            }
        }
    }

    /// Which session a datagram from `source` belongs to, or the drop reason.
    pub fn route(
        &self,
        source: SocketAddr,
        data: &[u8],
    ) -> Result<(SessionId, ShardId), PacketDrop> {
        if let Some(r) = self.by_addr.get(&source) {
            return Ok(*r);
        }
        match stun::local_ufrag(data) {
            Ok(ufrag) => self
                .by_ufrag
                .get(ufrag)
                .copied()
                .ok_or(PacketDrop::UnknownUfrag),
            Err(StunError::NotStun) => Err(PacketDrop::UnknownSource),
            Err(StunError::Truncated) => Err(PacketDrop::MalformedStun),
            Err(StunError::NotBindingRequest) => Err(PacketDrop::UnexpectedStun),
            Err(StunError::NoUsername) => Err(PacketDrop::MalformedStun),
        }
    }

    /// Number of routed addresses (for tests).
    pub fn routed_addrs(&self) -> usize {
        self.by_addr.len()
    }
}

/// Which of our candidate addresses a datagram from `source` was most likely sent to. (One
/// socket bound to several addresses cannot tell without IP_PKTINFO; prefer the same family,
/// and loopback for loopback peers.)
pub fn local_for(candidates: &[SocketAddr], source: SocketAddr) -> SocketAddr {
    let same_family = candidates
        .iter()
        .filter(|c| c.is_ipv4() == source.is_ipv4());
    let loopback = source.ip().is_loopback();
    same_family
        .clone()
        .find(|c| c.ip().is_loopback() == loopback)
        .or_else(|| same_family.clone().next())
        .or_else(|| candidates.first())
        .copied()
        .unwrap_or(source)
}

/// Socket buffer size asked of the kernel for each direction (it caps this at
/// `net.core.rmem_max` / `wmem_max`): enough to ride out a scheduling hiccup of a few hundred
/// milliseconds at full load without dropping audio, which cannot be resent.
pub const SOCKET_BUFFER: usize = 8 << 20;

/// The shared socket with batched I/O (`recvmmsg`; `sendmsg` with UDP GSO where the kernel
/// supports it), through `quinn-udp`. Every shard sends on it directly (non-blocking); only the
/// reading shard's [`UdpReader`] registers it (a duplicate of its descriptor) with a runtime, so
/// that no other thread is woken by arriving datagrams.
#[derive(Debug)]
pub struct UdpIo {
    socket: std::net::UdpSocket,
    state: UdpSocketState,
    /// Whether the socket is IPv6 (IPv4 destinations are then sent as IPv4-mapped).
    ipv6: bool,
}

impl UdpIo {
    /// Wraps a bound socket (made non-blocking here) and sizes its kernel buffers.
    pub fn new(socket: std::net::UdpSocket) -> std::io::Result<UdpIo> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        for (what, result) in [
            (
                "receive",
                state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER),
            ),
            (
                "send",
                state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER),
            ),
        ] {
            if let Err(e) = result {
                tracing::warn!("cannot size the UDP {what} buffer: {e}");
            }
        }
        let ipv6 = socket.local_addr()?.is_ipv6();
        Ok(UdpIo {
            socket,
            state,
            ipv6,
        })
    }

    /// Datagrams one GSO send may carry (1 without GSO).
    pub fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Sends one planned socket call without blocking; a full socket buffer is an error the
    /// caller counts as a drop.
    pub fn send(&self, s: &Send<'_>) -> std::io::Result<()> {
        let transmit = Transmit {
            destination: s.destination,
            ecn: None,
            contents: s.contents,
            segment_size: s.segment_size,
            src_ip: None,
        };
        self.state.try_send((&self.socket).into(), &transmit)
    }

    /// Sends every datagram `egress` holds, counting what left and what was dropped: runs to one
    /// peer with GSO (`sendmsg`), single datagrams to any peers in batches of up to
    /// [`SEND_BATCH`] with one `sendmmsg` each.
    pub fn flush(&self, egress: &mut Egress, metrics: &Metrics) {
        if egress.is_empty() {
            return;
        }
        egress.flush_batched(self.max_segments(), SEND_BATCH, |f| match f {
            Flushed::Gso(s) => match self.send(&s) {
                Ok(()) => {
                    metrics.packets_out.inc_by(s.datagrams as u64);
                    metrics.bytes_out.inc_by(s.contents.len() as u64);
                    metrics.send_calls.inc();
                }
                Err(e) => {
                    tracing::trace!(destination = %s.destination, "udp send failed: {e}");
                    metrics.drop_n(PacketDrop::SendFailed, s.datagrams as u64);
                }
            },
            Flushed::Singles(batch) => self.send_singles(batch, metrics),
        });
    }

    /// Sends single datagrams to any peers with `sendmmsg`. A datagram the kernel refuses is
    /// dropped and counted, and the rest still go; a full socket buffer drops what is left.
    fn send_singles(&self, batch: &[Send<'_>], metrics: &Metrics) {
        let addrs: Vec<SocketAddrAny> = batch
            .iter()
            .map(|s| SocketAddrAny::from(self.socket_addr(s.destination)))
            .collect();
        let iovs: Vec<[IoSlice<'_>; 1]> =
            batch.iter().map(|s| [IoSlice::new(s.contents)]).collect();
        let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = batch
            .iter()
            .map(|_| SendAncillaryBuffer::default())
            .collect();
        let mut msgs: Vec<MMsgHdr<'_>> = addrs
            .iter()
            .zip(&iovs)
            .zip(controls.iter_mut())
            .map(|((addr, iov), control)| MMsgHdr::new_with_addr(addr, iov, control))
            .collect();
        let mut next = 0;
        while next < msgs.len() {
            let rest = msgs.get_mut(next..).unwrap_or_default();
            match rustix::net::sendmmsg(&self.socket, rest, SendFlags::DONTWAIT) {
                Ok(sent) if sent > 0 => {
                    let bytes: usize = batch[next..next + sent]
                        .iter()
                        .map(|s| s.contents.len())
                        .sum();
                    metrics.packets_out.inc_by(sent as u64);
                    metrics.bytes_out.inc_by(bytes as u64);
                    metrics.send_calls.inc();
                    next += sent;
                }
                Err(e) if e == rustix::io::Errno::AGAIN => {
                    tracing::trace!("udp send buffer full: {e}");
                    metrics.drop_n(PacketDrop::SendFailed, (msgs.len() - next) as u64);
                    return;
                }
                Ok(_) | Err(_) => {
                    // The first datagram of the rest was refused (an unreachable or invalid
                    // destination): drop it alone.
                    tracing::trace!(destination = %batch[next].destination, "udp send failed");
                    metrics.drop(PacketDrop::SendFailed);
                    next += 1;
                }
            }
        }
    }

    /// `destination` as the socket takes it: IPv4 addresses as IPv4-mapped IPv6 on an IPv6
    /// (dual-stack) socket.
    fn socket_addr(&self, destination: SocketAddr) -> SocketAddr {
        match destination {
            SocketAddr::V4(v4) if self.ipv6 => SocketAddr::V6(std::net::SocketAddrV6::new(
                v4.ip().to_ipv6_mapped(),
                v4.port(),
                0,
                0,
            )),
            other => other,
        }
    }
}

/// Single datagrams per `sendmmsg` call at most.
pub const SEND_BATCH: usize = 64;

/// Datagrams read per `recvmmsg` call.
const RECV_BATCH: usize = quinn_udp::BATCH_SIZE;
/// Rounds of batched reads before the receiver looks at its control channel again.
const RECV_ROUNDS: usize = 8;

/// The datagrams of one `recvmmsg` round for one shard, handed over in one channel message
/// ([`ShardMsg::Datagrams`]): their bytes one after the other in one buffer. The buffers come
/// from a [`BatchPool`] and go back to it when the batch is dropped (after the shard has fed
/// every datagram to str0m, which copies what it keeps), so a steady flow allocates nothing:
/// one copy per datagram, from the receive buffer into the batch.
#[derive(Debug, Default)]
pub struct DatagramBatch {
    bytes: Vec<u8>,
    datagrams: Vec<Datagram<Range<usize>>>,
    pool: Option<BatchPool>,
    /// The count of its shard's datagrams in flight, which this batch is part of until dropped.
    in_flight: Option<Arc<AtomicUsize>>,
}

impl DatagramBatch {
    /// Appends a copy of one datagram.
    pub fn push(&mut self, d: Datagram<&[u8]>) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(d.data);
        self.datagrams.push(d.with_data(start..self.bytes.len()));
    }

    /// Datagrams held.
    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    /// The datagrams, in the order they were pushed.
    pub fn iter(&self) -> impl Iterator<Item = Datagram<&[u8]>> {
        self.datagrams
            .iter()
            .map(|d| d.with_data(self.bytes.get(d.data.clone()).unwrap_or_default()))
    }
}

impl Drop for DatagramBatch {
    fn drop(&mut self) {
        if let Some(in_flight) = self.in_flight.take() {
            in_flight.fetch_sub(self.datagrams.len(), Ordering::Relaxed);
        }
        if let Some(pool) = self.pool.take() {
            pool.put(
                std::mem::take(&mut self.bytes),
                std::mem::take(&mut self.datagrams),
            );
        }
    }
}

/// Buffers of spent [`DatagramBatch`]es, for the receiver's next ones (shared with the shards,
/// which drop the batches). Holds at most [`BatchPool::KEEP`] of them, and none grown past
/// [`BatchPool::MAX_BYTES`] (a burst of large GRO reads does not stay allocated).
#[derive(Debug, Clone, Default)]
pub struct BatchPool {
    free: Arc<Mutex<Vec<SpareBatch>>>,
}

/// The buffers of a spent [`DatagramBatch`].
type SpareBatch = (Vec<u8>, Vec<Datagram<Range<usize>>>);

impl BatchPool {
    /// Spare batches kept at most.
    pub const KEEP: usize = 256;
    /// Largest byte buffer kept: a round of full-sized datagrams (32 × 1,500 bytes) fits, so the
    /// pool holds 16 MiB at most.
    pub const MAX_BYTES: usize = 64 << 10;

    /// An empty batch, with recycled buffers when there are any.
    pub fn take(&self) -> DatagramBatch {
        let (bytes, datagrams) = self.free.lock().pop().unwrap_or_default();
        DatagramBatch {
            bytes,
            datagrams,
            pool: Some(self.clone()),
            in_flight: None,
        }
    }

    fn put(&self, mut bytes: Vec<u8>, mut datagrams: Vec<Datagram<Range<usize>>>) {
        if bytes.capacity() > Self::MAX_BYTES {
            return;
        }
        bytes.clear();
        datagrams.clear();
        let mut free = self.free.lock();
        if free.len() < Self::KEEP {
            free.push((bytes, datagrams));
        }
    }

    /// Spare batches held (for tests).
    pub fn spare(&self) -> usize {
        self.free.lock().len()
    }
}

/// The reading side of the shared socket, run by the reading shard's driver between its other
/// work: the routing table (kept up to date from the shards' [`UdpControl`] messages, applied
/// before every read), the receive buffers, and a [`Router`] that hands other shards' datagrams
/// over. See the module docs.
#[derive(Debug)]
pub struct UdpReader {
    io: Arc<UdpIo>,
    /// The socket as registered with the reading shard's runtime (a duplicate descriptor of
    /// `io`'s), after [`UdpReader::register`].
    socket: Option<tokio::net::UdpSocket>,
    demux: Demux,
    control: mpsc::UnboundedReceiver<UdpControl>,
    candidates: Vec<SocketAddr>,
    router: Router,
    /// The shard reading (its datagrams are handled, not handed over).
    me: ShardId,
    bufs: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
}

impl UdpReader {
    /// The reader for shard `me` of `shards` (`shards[i]` reaches shard `i`).
    pub fn new(
        io: Arc<UdpIo>,
        candidates: Vec<SocketAddr>,
        control: mpsc::UnboundedReceiver<UdpControl>,
        shards: Vec<mpsc::Sender<ShardMsg>>,
        me: ShardId,
    ) -> UdpReader {
        // With UDP GRO the kernel may hand over several datagrams of one peer in one buffer, up
        // to its GRO limit of segments: size every buffer for that.
        let slot = 2048 * io.state.gro_segments().max(1);
        UdpReader {
            io,
            socket: None,
            demux: Demux::default(),
            control,
            candidates,
            router: Router::new(shards, BatchPool::default(), MAX_IN_FLIGHT),
            me,
            bufs: (0..RECV_BATCH).map(|_| vec![0u8; slot]).collect(),
            meta: vec![RecvMeta::default(); RECV_BATCH],
        }
    }

    /// Registers the socket with the current (the reading shard's) runtime. Call on its thread,
    /// inside the runtime, before [`UdpReader::readable`].
    pub fn register(&mut self) -> std::io::Result<()> {
        if self.socket.is_none() {
            let dup = self.io.socket.try_clone()?;
            self.socket = Some(tokio::net::UdpSocket::from_std(dup)?);
        }
        Ok(())
    }

    /// Resolves when the socket may have datagrams (never, before [`UdpReader::register`]).
    pub async fn readable(&self) -> std::io::Result<()> {
        match &self.socket {
            Some(s) => s.readable().await,
            None => std::future::pending().await,
        }
    }

    /// Reads the socket until it is empty (at most [`RECV_ROUNDS`] rounds of `recvmmsg`). Each
    /// round's datagrams for other shards are handed over (one message per shard), the reading
    /// shard's own are given to `own` at once. Costs no system call when the runtime has not
    /// seen the socket readable since the last read that found it empty.
    pub fn read(&mut self, metrics: &Metrics, mut own: impl FnMut(&DatagramBatch)) {
        let Some(socket) = &self.socket else {
            return;
        };
        for _ in 0..RECV_ROUNDS {
            while let Ok(ctl) = self.control.try_recv() {
                self.demux.apply(ctl);
            }
            let mut slices: Vec<IoSliceMut<'_>> =
                self.bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let received = socket.try_io(Interest::READABLE, || {
                self.io
                    .state
                    .recv(socket.into(), &mut slices, &mut self.meta)
            });
            drop(slices);
            let n = match received {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!("udp receive error: {e}");
                    return;
                }
            };
            let now = Instant::now();
            for (m, buf) in self.meta.iter().zip(&self.bufs).take(n) {
                let stride = if m.stride == 0 { m.len } else { m.stride };
                for data in buf[..m.len.min(buf.len())].chunks(stride.max(1)) {
                    self.router
                        .route(&self.demux, &self.candidates, metrics, m.addr, data, now);
                }
            }
            if let Some(batch) = self.router.hand_over(metrics, Some(self.me)) {
                own(&batch);
            }
        }
    }
}

/// Received datagrams waiting in one shard's inbox (or being handled) at most; more are dropped
/// (`shard_queue_full`). The inbox's own bound counts messages, and a batch message holds up to
/// a `recvmmsg` round: this keeps the bound in datagrams where it was with one message each.
const MAX_IN_FLIGHT: usize = 16_384;

/// Sorts received datagrams into one [`DatagramBatch`] per shard and hands the batches over.
#[derive(Debug)]
struct Router {
    shards: Vec<mpsc::Sender<ShardMsg>>,
    batches: Vec<DatagramBatch>,
    /// Per shard: its datagrams in flight (see [`MAX_IN_FLIGHT`]).
    in_flight: Vec<Arc<AtomicUsize>>,
    max_in_flight: usize,
    pool: BatchPool,
}

impl Router {
    fn new(shards: Vec<mpsc::Sender<ShardMsg>>, pool: BatchPool, max_in_flight: usize) -> Router {
        let batches = shards.iter().map(|_| DatagramBatch::default()).collect();
        let in_flight = shards.iter().map(|_| Arc::default()).collect();
        Router {
            shards,
            batches,
            in_flight,
            max_in_flight,
            pool,
        }
    }

    /// Adds one received datagram to the batch of the shard owning its session, or counts why
    /// not.
    fn route(
        &mut self,
        demux: &Demux,
        candidates: &[SocketAddr],
        metrics: &Metrics,
        source: SocketAddr,
        data: &[u8],
        received: Instant,
    ) {
        metrics.packets_in.inc();
        metrics.bytes_in.inc_by(data.len() as u64);
        let (session, shard) = match demux.route(source, data) {
            Ok(r) => r,
            Err(reason) => return metrics.drop(reason),
        };
        let Some(batch) = self.batches.get_mut(shard) else {
            return metrics.drop(PacketDrop::UnknownShard);
        };
        if batch.pool.is_none() {
            *batch = self.pool.take();
        }
        batch.push(Datagram {
            session,
            source,
            destination: local_for(candidates, source),
            data,
            received,
            proto: str0m::net::Protocol::Udp,
        });
    }

    /// Sends every non-empty batch to its shard (one message each); a full inbox, or a shard
    /// with [`MAX_IN_FLIGHT`] datagrams not yet handled, drops the batch's datagrams, counted.
    /// The batch of shard `local` (the one reading) is not sent but returned, for it to handle
    /// at once.
    fn hand_over(&mut self, metrics: &Metrics, local: Option<ShardId>) -> Option<DatagramBatch> {
        let mut kept = None;
        let shards = self
            .batches
            .iter_mut()
            .zip(&self.shards)
            .zip(&self.in_flight)
            .enumerate();
        for (shard, ((batch, tx), in_flight)) in shards {
            if batch.is_empty() {
                continue;
            }
            let mut batch = std::mem::take(batch);
            if local == Some(shard) {
                kept = Some(batch);
                continue;
            }
            let n = batch.len();
            if in_flight.load(Ordering::Relaxed) + n > self.max_in_flight {
                metrics.drop_n(PacketDrop::ShardQueueFull, n as u64);
                continue;
            }
            in_flight.fetch_add(n, Ordering::Relaxed);
            batch.in_flight = Some(Arc::clone(in_flight));
            if tx.try_send(ShardMsg::Datagrams(batch)).is_err() {
                metrics.drop_n(PacketDrop::ShardQueueFull, n as u64);
            }
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::test_support::binding_request_to as stun_request;

    #[test]
    fn routes_by_ufrag_then_by_address_and_forgets_on_unregister() {
        let mut d = Demux::default();
        let s = SessionId([1; 16]);
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        d.apply(UdpControl::Register {
            ufrag: "abcd".into(),
            session: s,
            shard: 0,
        });
        assert_eq!(d.route(a, &stun_request("abcd")), Ok((s, 0)));
        assert_eq!(
            d.route(a, &stun_request("zzzz")),
            Err(PacketDrop::UnknownUfrag)
        );
        assert_eq!(d.route(a, &[0x80, 0, 0, 0]), Err(PacketDrop::UnknownSource));
        d.apply(UdpControl::Route {
            addr: a,
            session: s,
            shard: 0,
        });
        assert_eq!(d.route(a, &[0x80, 0, 0, 0]), Ok((s, 0)));
        d.apply(UdpControl::Unregister { session: s });
        assert_eq!(d.route(a, &[0x80, 0, 0, 0]), Err(PacketDrop::UnknownSource));
        assert_eq!(
            d.route(a, &stun_request("abcd")),
            Err(PacketDrop::UnknownUfrag)
        );
        assert_eq!(d.routed_addrs(), 0);
    }

    #[test]
    fn a_replaced_ufrag_routes_to_the_session_and_its_addresses_stay() {
        let mut d = Demux::default();
        let s = SessionId([1; 16]);
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:6000".parse().unwrap();
        d.apply(UdpControl::Register {
            ufrag: "old1".into(),
            session: s,
            shard: 1,
        });
        d.apply(UdpControl::Route {
            addr: a,
            session: s,
            shard: 1,
        });
        // Before the restart is known, a check for the new ufrag from a new address is dropped.
        assert_eq!(
            d.route(b, &stun_request("new2")),
            Err(PacketDrop::UnknownUfrag)
        );
        d.apply(UdpControl::ReplaceUfrag {
            ufrag: "new2".into(),
            session: s,
            shard: 1,
        });
        assert_eq!(d.route(b, &stun_request("new2")), Ok((s, 1)));
        assert_eq!(
            d.route(b, &stun_request("old1")),
            Err(PacketDrop::UnknownUfrag)
        );
        // The old path still reaches the session by address.
        assert_eq!(d.route(a, &[0x80, 0, 0, 0]), Ok((s, 1)));
        assert_eq!(d.route(b, &[0x80, 0, 0, 0]), Err(PacketDrop::UnknownSource));
        // Unregistering forgets the new ufrag and the kept route.
        d.apply(UdpControl::Unregister { session: s });
        assert_eq!(
            d.route(b, &stun_request("new2")),
            Err(PacketDrop::UnknownUfrag)
        );
        assert_eq!(d.routed_addrs(), 0);
    }

    #[test]
    fn replacing_the_ufrag_of_an_unknown_session_does_nothing() {
        let mut d = Demux::default();
        d.apply(UdpControl::ReplaceUfrag {
            ufrag: "gone".into(),
            session: SessionId([3; 16]),
            shard: 0,
        });
        assert_eq!(
            d.route("127.0.0.1:1".parse().unwrap(), &stun_request("gone")),
            Err(PacketDrop::UnknownUfrag)
        );
    }

    #[test]
    fn a_replaced_ufrag_never_unmaps_another_sessions_ufrag() {
        let mut d = Demux::default();
        let (s, t) = (SessionId([1; 16]), SessionId([2; 16]));
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        d.apply(UdpControl::Register {
            ufrag: "same".into(),
            session: s,
            shard: 0,
        });
        // Another session registered the same ufrag later (it owns it now).
        d.apply(UdpControl::Register {
            ufrag: "same".into(),
            session: t,
            shard: 1,
        });
        d.apply(UdpControl::ReplaceUfrag {
            ufrag: "next".into(),
            session: s,
            shard: 0,
        });
        assert_eq!(d.route(a, &stun_request("same")), Ok((t, 1)));
        assert_eq!(d.route(a, &stun_request("next")), Ok((s, 0)));
    }

    #[test]
    fn unroute_forgets_only_the_sessions_own_route() {
        let mut d = Demux::default();
        let (s, t) = (SessionId([1; 16]), SessionId([2; 16]));
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        for (ufrag, session, shard) in [("s", s, 0), ("t", t, 1)] {
            d.apply(UdpControl::Register {
                ufrag: ufrag.into(),
                session,
                shard,
            });
        }
        d.apply(UdpControl::Route {
            addr: a,
            session: s,
            shard: 0,
        });
        d.apply(UdpControl::Route {
            addr: b,
            session: s,
            shard: 0,
        });
        // `b` moved on to session t (it sent there after s had): s's unroute must not take it.
        d.apply(UdpControl::Route {
            addr: b,
            session: t,
            shard: 1,
        });
        d.apply(UdpControl::Unroute {
            addr: b,
            session: s,
        });
        assert_eq!(d.route(b, &[0x80, 0, 0, 0]), Ok((t, 1)));
        d.apply(UdpControl::Unroute {
            addr: a,
            session: s,
        });
        assert_eq!(d.route(a, &[0x80, 0, 0, 0]), Err(PacketDrop::UnknownSource));
        // A STUN check for s's ufrag still finds it (from any address).
        assert_eq!(d.route(a, &stun_request("s")), Ok((s, 0)));
        assert_eq!(d.routed_addrs(), 1);
        // Unroute of an unknown session or address is harmless.
        d.apply(UdpControl::Unroute {
            addr: a,
            session: SessionId([9; 16]),
        });
        assert_eq!(d.routed_addrs(), 1);
    }

    #[test]
    fn routes_are_ignored_for_unknown_sessions() {
        let mut d = Demux::default();
        d.apply(UdpControl::Route {
            addr: "127.0.0.1:1".parse().unwrap(),
            session: SessionId([2; 16]),
            shard: 0,
        });
        assert_eq!(d.routed_addrs(), 0);
    }

    fn datagram(session: u8, data: &[u8]) -> Datagram<&[u8]> {
        Datagram {
            session: SessionId([session; 16]),
            source: "127.0.0.1:7".parse().unwrap(),
            destination: "127.0.0.1:9".parse().unwrap(),
            data,
            received: Instant::now(),
            proto: str0m::net::Protocol::Udp,
        }
    }

    #[test]
    fn a_batch_gives_back_each_datagram_whole_and_its_buffers_go_back_to_the_pool() {
        let pool = BatchPool::default();
        let mut batch = pool.take();
        batch.push(datagram(1, &[1, 2, 3]));
        batch.push(datagram(2, &[]));
        batch.push(datagram(3, &[9; 1500]));
        let got: Vec<(u8, Vec<u8>)> = batch
            .iter()
            .map(|d| (d.session.0[0], d.data.to_vec()))
            .collect();
        assert_eq!(
            got,
            vec![(1, vec![1, 2, 3]), (2, vec![]), (3, vec![9; 1500])]
        );
        assert_eq!(pool.spare(), 0);
        drop(batch);
        assert_eq!(pool.spare(), 1);
        // The next batch reuses those buffers, emptied.
        let batch = pool.take();
        assert!(batch.is_empty() && batch.bytes.capacity() >= 1503);
        assert_eq!(pool.spare(), 0);
        drop(batch);
        // A batch that grew past the limit is not kept; nor more than KEEP batches.
        let mut big = pool.take();
        big.push(datagram(1, &vec![0; BatchPool::MAX_BYTES + 1]));
        drop(big);
        assert_eq!(pool.spare(), 0);
        let many: Vec<DatagramBatch> = (0..BatchPool::KEEP + 3).map(|_| pool.take()).collect();
        drop(many);
        assert_eq!(pool.spare(), BatchPool::KEEP);
    }

    #[test]
    fn one_message_per_shard_and_round_and_a_full_inbox_drops_the_batch_counted() {
        let (tx0, mut rx0) = mpsc::channel(1);
        let (tx1, mut rx1) = mpsc::channel(1);
        let pool = BatchPool::default();
        let mut router = Router::new(vec![tx0, tx1], pool.clone(), 4);
        let metrics = Metrics::new();
        let mut demux = Demux::default();
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        for (ufrag, session, shard, addr) in [("a", 1u8, 0, a), ("b", 2, 1, b)] {
            let session = SessionId([session; 16]);
            demux.apply(UdpControl::Register {
                ufrag: ufrag.into(),
                session,
                shard,
            });
            demux.apply(UdpControl::Route {
                addr,
                session,
                shard,
            });
        }
        let candidates: Vec<SocketAddr> = vec!["127.0.0.1:9".parse().unwrap()];
        let now = Instant::now();
        let round = |router: &mut Router, packets: &[(SocketAddr, u8)]| {
            for (from, byte) in packets {
                router.route(&demux, &candidates, &metrics, *from, &[0x80, *byte], now);
            }
            assert!(router.hand_over(&metrics, None).is_none());
        };
        // An unknown source is dropped and counted, not batched.
        let c: SocketAddr = "127.0.0.1:3".parse().unwrap();
        round(&mut router, &[(a, 1), (b, 2), (a, 3), (c, 4), (a, 5)]);
        let Ok(ShardMsg::Datagrams(first)) = rx0.try_recv() else {
            panic!("shard 0 gets one batch");
        };
        let data: Vec<Vec<u8>> = first.iter().map(|d| d.data.to_vec()).collect();
        assert_eq!(data, vec![vec![0x80, 1], vec![0x80, 3], vec![0x80, 5]]);
        assert!(
            first
                .iter()
                .all(|d| d.source == a && d.destination == candidates[0])
        );
        let Ok(ShardMsg::Datagrams(second)) = rx1.try_recv() else {
            panic!("shard 1 gets one batch");
        };
        assert_eq!(second.len(), 1);
        assert!(rx0.try_recv().is_err() && rx1.try_recv().is_err());
        // Shard 1's inbox is full: the next round's batch for it is dropped, each datagram
        // counted; shard 0 still gets its own.
        drop(first);
        round(&mut router, &[(b, 6), (b, 7)]);
        round(&mut router, &[(a, 8), (b, 9), (b, 10)]);
        assert!(text_has(&metrics, "shard_queue_full", 2));
        assert!(text_has(&metrics, "unknown_source", 1));
        let Ok(ShardMsg::Datagrams(third)) = rx0.try_recv() else {
            panic!("shard 0 gets its batch");
        };
        assert_eq!(third.iter().map(|d| d.data[1]).collect::<Vec<_>>(), vec![8]);
        // Dropped and consumed batches went back to the pool.
        drop((second, third));
        assert!(pool.spare() >= 2, "spare {}", pool.spare());
        // Shard 0 may hold 4 datagrams not yet handled: a batch beyond that is dropped even with
        // room in its inbox, and taken again once the shard has handled the ones before.
        round(&mut router, &[(a, 11), (a, 12), (a, 13)]);
        round(&mut router, &[(a, 14), (a, 15)]);
        assert!(text_has(&metrics, "shard_queue_full", 4));
        let Ok(ShardMsg::Datagrams(held)) = rx0.try_recv() else {
            panic!("shard 0 gets the first batch");
        };
        assert_eq!(held.len(), 3);
        drop(held);
        round(&mut router, &[(a, 16), (a, 17)]);
        let Ok(ShardMsg::Datagrams(next)) = rx0.try_recv() else {
            panic!("shard 0 gets the batch after");
        };
        assert_eq!(
            next.iter().map(|d| d.data[1]).collect::<Vec<_>>(),
            vec![16, 17]
        );
        assert!(text_has(&metrics, "shard_queue_full", 4));
    }

    /// The reading shard (shard 0 here) reads the socket itself: its own sessions' datagrams
    /// come back to it at once and never pass through its inbox, other shards' reach theirs as
    /// one batch per round, routing changes sent before a datagram are applied before it is
    /// routed, and a datagram of no session is counted as a drop.
    #[tokio::test(flavor = "current_thread")]
    async fn the_reading_shard_keeps_its_own_datagrams_and_hands_over_the_others() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = socket.local_addr().unwrap();
        let io = Arc::new(UdpIo::new(socket).unwrap());
        let (tx0, mut rx0) = mpsc::channel(8);
        let (tx1, mut rx1) = mpsc::channel(8);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let mut reader = UdpReader::new(io, vec![server], control_rx, vec![tx0, tx1], 0);
        reader.register().unwrap();
        let metrics = Metrics::new();
        let clients: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for (i, shard) in [(0u8, 0), (1, 1)] {
            let session = SessionId([i + 1; 16]);
            control_tx
                .send(UdpControl::Register {
                    ufrag: format!("u{i}"),
                    session,
                    shard,
                })
                .unwrap();
            control_tx
                .send(UdpControl::Route {
                    addr: clients[usize::from(i)].local_addr().unwrap(),
                    session,
                    shard,
                })
                .unwrap();
        }
        for (client, byte) in [(0, 1u8), (1, 2), (2, 3), (0, 4), (1, 5)] {
            clients[client].send_to(&[0x80, byte], server).unwrap();
        }
        let mut own: Vec<(u8, u8)> = Vec::new();
        let mut other: Vec<u8> = Vec::new();
        while own.len() + other.len() < 4 {
            tokio::time::timeout(std::time::Duration::from_secs(5), reader.readable())
                .await
                .expect("the socket becomes readable")
                .unwrap();
            reader.read(&metrics, |batch| {
                own.extend(batch.iter().map(|d| (d.session.0[0], d.data[1])));
            });
            while let Ok(msg) = rx1.try_recv() {
                let ShardMsg::Datagrams(batch) = msg else {
                    panic!("shard 1 gets datagram batches only");
                };
                assert!(batch.iter().all(|d| d.session == SessionId([2; 16])));
                other.extend(batch.iter().map(|d| d.data[1]));
            }
        }
        assert_eq!(own, vec![(1, 1), (1, 4)]);
        assert_eq!(other, vec![2, 5]);
        assert!(
            rx0.try_recv().is_err(),
            "nothing of its own through its inbox"
        );
        assert!(text_has(&metrics, "unknown_source", 1));
        // Once the socket is empty, reading costs nothing and finds nothing.
        reader.read(&metrics, |_| panic!("nothing left to read"));
    }

    fn text_has(metrics: &Metrics, reason: &str, n: u64) -> bool {
        let series = format!("satsuma_sfu_dropped_total{{reason=\"{reason}\"}} {n}\n");
        metrics.render().contains(&series)
    }

    #[test]
    fn picks_a_candidate_of_the_same_family() {
        let c: Vec<SocketAddr> = vec![
            "10.0.0.1:9".parse().unwrap(),
            "127.0.0.1:9".parse().unwrap(),
            "[fd00::2]:9".parse().unwrap(),
        ];
        assert_eq!(local_for(&c, "127.0.0.1:4".parse().unwrap()), c[1]);
        assert_eq!(local_for(&c, "192.0.2.7:4".parse().unwrap()), c[0]);
        assert_eq!(local_for(&c, "[fd00::9]:4".parse().unwrap()), c[2]);
    }
}
