//! The ICE-TCP driver: one `TcpListener` for passive TCP candidates (RFC 6544), RFC 4571
//! framing, into the same sessions as UDP.
//!
//! The accept loop bounds connections per source IP and in total ([`ConnCounter`]); each
//! connection runs as a task of its own that deframes what it reads ([`Deframer`]), lets
//! [`Conn`] decide about every frame, and hands frames to the shard owning their session as
//! [`Datagram`]s marked TCP. Its first binding request names the session (by our ufrag, from
//! the same [`UdpControl`] messages the UDP driver gets). Shards send back through
//! [`TcpShared::transmit`]: a bounded queue per connection, keyed by the peer's address (the
//! destination str0m names). A full queue drops the packet (counted), it never blocks a shard.
//!
//! Every refused connection, closed connection and dropped frame is counted
//! (`satsuma_sfu_tcp_*`, `satsuma_sfu_dropped_total{reason=…}`) and logged at debug.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use str0m::net::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::ice_tcp::{
    CloseReason, Conn, ConnCounter, ConnState, ConnTimeouts, Deframer, FrameError, Refusal,
    UfragRoutes, Verdict, frame_into,
};
use crate::ids::{SessionId, ShardId};
use crate::metrics::{Metrics, PacketDrop};
use crate::shard::{Datagram, ShardMsg};
use crate::udp::{UdpControl, local_for};

/// Frames waiting to be written to one connection; beyond, packets are dropped
/// (`tcp_queue_full`).
pub const SEND_QUEUE: usize = 512;
/// Bytes read per socket read.
const READ_BUF: usize = 16 * 1024;
/// Bytes gathered from the send queue into one socket write.
const WRITE_BATCH: usize = 64 * 1024;

/// What the ICE-TCP driver needs to know.
#[derive(Debug, Clone)]
pub struct TcpSettings {
    /// Our TCP host candidates (announced IPs with the listener's port): a received frame's
    /// destination is picked among them, as for UDP.
    pub candidates: Vec<SocketAddr>,
    /// Connections allowed per source IP.
    pub max_per_ip: usize,
    /// Connections allowed in total.
    pub max_total: usize,
    /// Largest frame accepted from a peer.
    pub max_frame: usize,
    /// Handshake and idle timeouts.
    pub timeouts: ConnTimeouts,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    tx: mpsc::Sender<Vec<u8>>,
    session: Option<SessionId>,
}

#[derive(Debug)]
struct Inner {
    routes: UfragRoutes,
    conns: HashMap<SocketAddr, Entry>,
    counter: ConnCounter,
    next_id: u64,
}

/// The driver's state shared with the shards (send side) and the control fan-out (ufrags).
#[derive(Debug)]
pub struct TcpShared {
    inner: RwLock<Inner>,
    settings: TcpSettings,
    metrics: Metrics,
}

impl TcpShared {
    /// Empty state.
    pub fn new(settings: TcpSettings, metrics: Metrics) -> TcpShared {
        TcpShared {
            inner: RwLock::new(Inner {
                routes: UfragRoutes::default(),
                conns: HashMap::new(),
                counter: ConnCounter::new(settings.max_per_ip, settings.max_total),
                next_id: 0,
            }),
            settings,
            metrics,
        }
    }

    /// The TCP host candidates.
    pub fn candidates(&self) -> &[SocketAddr] {
        &self.settings.candidates
    }

    /// Applies a routing change from a shard. A session that is gone takes its connections
    /// with it.
    pub fn apply(&self, ctl: &UdpControl) {
        let mut inner = self.inner.write();
        inner.routes.apply(ctl);
        if let UdpControl::Unregister { session } = ctl {
            // Dropping a connection's sender ends its task (closed as `session_gone`).
            inner.conns.retain(|_, e| e.session != Some(*session));
        }
    }

    /// Sends one packet of a session to the TCP peer at `destination` (called by shards).
    /// Never blocks: without a connection, or with its queue full, the packet is dropped and
    /// counted.
    pub fn transmit(&self, destination: SocketAddr, packet: &[u8]) {
        let mut framed = Vec::with_capacity(packet.len() + crate::ice_tcp::PREFIX);
        if let Err(e) = frame_into(&mut framed, packet) {
            tracing::debug!(%destination, "ice-tcp: cannot frame an outgoing packet: {e}");
            self.metrics.drop(PacketDrop::SendFailed);
            return;
        }
        let inner = self.inner.read();
        let Some(entry) = inner.conns.get(&destination) else {
            tracing::debug!(%destination, "ice-tcp: no connection for an outgoing packet");
            self.metrics.drop(PacketDrop::TcpNoConnection);
            return;
        };
        match entry.tx.try_send(framed) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!(%destination, "ice-tcp: send queue full, packet dropped");
                self.metrics.drop(PacketDrop::TcpQueueFull);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!(%destination, "ice-tcp: connection closing, packet dropped");
                self.metrics.drop(PacketDrop::TcpNoConnection);
            }
        }
    }

    /// Open connections (for tests and metrics).
    pub fn connections(&self) -> usize {
        self.inner.read().counter.total()
    }

    /// Counts a new connection from `peer`, or says why not.
    fn admit(&self, peer: SocketAddr) -> Result<(u64, mpsc::Receiver<Vec<u8>>), Refusal> {
        let mut inner = self.inner.write();
        if inner.conns.contains_key(&peer) {
            return Err(Refusal::Duplicate);
        }
        inner.counter.acquire(peer.ip())?;
        inner.next_id += 1;
        let id = inner.next_id;
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        inner.conns.insert(
            peer,
            Entry {
                id,
                tx,
                session: None,
            },
        );
        self.metrics.tcp_connections.inc();
        Ok((id, rx))
    }

    /// The connection `id` from `peer` belongs to `session` from now on.
    fn claim(&self, peer: SocketAddr, id: u64, session: SessionId) {
        if let Some(e) = self.inner.write().conns.get_mut(&peer)
            && e.id == id
        {
            e.session = Some(session);
        }
    }

    /// Forgets the connection `id` from `peer`.
    fn release(&self, peer: SocketAddr, id: u64) {
        let mut inner = self.inner.write();
        if inner.conns.get(&peer).is_some_and(|e| e.id == id) {
            inner.conns.remove(&peer);
        }
        inner.counter.release(peer.ip());
        self.metrics.tcp_connections.dec();
    }

    fn route(&self, frame: &[u8]) -> Result<(SessionId, ShardId), PacketDrop> {
        self.inner.read().routes.route(frame)
    }
}

/// Releases a connection's place however its task ends (also when aborted at shutdown).
struct Admitted {
    shared: Arc<TcpShared>,
    peer: SocketAddr,
    id: u64,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.shared.release(self.peer, self.id);
    }
}

/// Accepts connections until the task is aborted; connection tasks end with it.
pub async fn run_listener(
    listener: TcpListener,
    shared: Arc<TcpShared>,
    shards: Vec<mpsc::Sender<ShardMsg>>,
) {
    let shards: Arc<[mpsc::Sender<ShardMsg>]> = shards.into();
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                    match shared.admit(peer) {
                        Ok((id, rx)) => {
                            shared.metrics.tcp_accepted.inc();
                            let admitted = Admitted { shared: Arc::clone(&shared), peer, id };
                            tasks.spawn(run_connection(stream, admitted, rx, Arc::clone(&shards)));
                        }
                        Err(refusal) => {
                            tracing::debug!(%peer, reason = refusal.label(), "ice-tcp: connection refused");
                            shared.metrics.tcp_refused.with_label_values(&[refusal.label()]).inc();
                            drop(stream);
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!("ice-tcp: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn run_connection(
    stream: TcpStream,
    admitted: Admitted,
    rx: mpsc::Receiver<Vec<u8>>,
    shards: Arc<[mpsc::Sender<ShardMsg>]>,
) {
    let peer = admitted.peer;
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, "ice-tcp: cannot set TCP_NODELAY: {e}");
    }
    let reason = drive(stream, &admitted, rx, &shards).await;
    let metrics = &admitted.shared.metrics;
    metrics
        .tcp_closed
        .with_label_values(&[reason.label()])
        .inc();
    tracing::debug!(%peer, reason = reason.label(), "ice-tcp: connection closed");
}

async fn drive(
    stream: TcpStream,
    admitted: &Admitted,
    mut rx: mpsc::Receiver<Vec<u8>>,
    shards: &[mpsc::Sender<ShardMsg>],
) -> CloseReason {
    let shared = &*admitted.shared;
    let metrics = &shared.metrics;
    let peer = admitted.peer;
    let destination = local_for(&shared.settings.candidates, peer);
    let (mut reader, mut writer) = stream.into_split();
    let mut conn = Conn::new(Instant::now(), shared.settings.timeouts);
    let mut deframer = Deframer::new(shared.settings.max_frame);
    let mut rbuf = vec![0u8; READ_BUF];
    let mut out: Vec<u8> = Vec::new();
    let mut written = 0;
    loop {
        let deadline = tokio::time::Instant::from_std(conn.deadline());
        tokio::select! {
            read = reader.read(&mut rbuf) => {
                let n = match read {
                    Ok(0) => return CloseReason::PeerClosed,
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!(%peer, "ice-tcp: read failed: {e}");
                        return CloseReason::IoError;
                    }
                };
                metrics.tcp_bytes_in.inc_by(n as u64);
                deframer.push(&rbuf[..n]);
                let now = Instant::now();
                loop {
                    let frame = match deframer.next_frame() {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => return bad_frame(metrics, peer, e),
                    };
                    metrics.tcp_frames_in.inc();
                    let was_unclaimed = conn.state() == ConnState::Unclaimed;
                    match conn.on_frame(frame, now, |f| shared.route(f)) {
                        Verdict::Deliver(session, shard) => {
                            if was_unclaimed {
                                tracing::debug!(%peer, %session, "ice-tcp: connection claimed");
                                shared.claim(peer, admitted.id, session);
                            }
                            let d = Datagram {
                                session,
                                source: peer,
                                destination,
                                data: frame.to_vec(),
                                received: now,
                                proto: Protocol::Tcp,
                            };
                            match shards.get(shard) {
                                Some(tx) => {
                                    if tx.try_send(ShardMsg::Datagram(d)).is_err() {
                                        metrics.drop(PacketDrop::ShardQueueFull);
                                    }
                                }
                                None => metrics.drop(PacketDrop::UnknownShard),
                            }
                        }
                        Verdict::Drop(reason) => {
                            tracing::debug!(%peer, reason = reason.label(), "ice-tcp: frame dropped");
                            metrics.drop(reason);
                        }
                        Verdict::Close(e) => return bad_frame(metrics, peer, e),
                    }
                }
            }
            next = rx.recv(), if out.is_empty() => {
                let Some(first) = next else {
                    return CloseReason::SessionGone;
                };
                out = first;
                let mut frames = 1;
                while out.len() < WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(more) => {
                            out.extend_from_slice(&more);
                            frames += 1;
                        }
                        Err(_) => break,
                    }
                }
                metrics.tcp_frames_out.inc_by(frames);
                conn.on_sent(Instant::now());
            }
            wrote = writer.write(&out[written..]), if !out.is_empty() => match wrote {
                Ok(0) => return CloseReason::PeerClosed,
                Ok(n) => {
                    metrics.tcp_bytes_out.inc_by(n as u64);
                    written += n;
                    if written == out.len() {
                        out.clear();
                        written = 0;
                    }
                }
                Err(e) => {
                    tracing::debug!(%peer, "ice-tcp: write failed: {e}");
                    return CloseReason::IoError;
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                if let Some(reason) = conn.check(Instant::now()) {
                    return reason;
                }
            }
        }
    }
}

fn bad_frame(metrics: &Metrics, peer: SocketAddr, e: FrameError) -> CloseReason {
    tracing::debug!(%peer, "ice-tcp: closing the connection: {e}");
    metrics.drop(PacketDrop::TcpBadFrame);
    CloseReason::BadFrame
}
