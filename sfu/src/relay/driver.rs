//! The thin quinn driver of [`RelayCore`]: one QUIC endpoint (one UDP port) that both accepts
//! and dials, one connection per peer node made when the core asks ([`Action::Connect`]), media
//! as QUIC datagrams (a datagram too large for the path goes on a unidirectional stream of its
//! own, so no packet is lost to the MTU), and one bidirectional stream for control.
//!
//! A connection is a link only after mutual TLS ([`RelayIdentity`]) and the `hello` exchange:
//! the dialler sends its `hello` first; the acceptor checks that the client certificate belongs
//! to the node named in it, answers with its own, and only then do both report the link to the
//! core. A peer that fails any step is refused, counted
//! (`satsuma_sfu_relay_refused_total{reason}`) and closed; the node carries on.
//!
//! The driver runs as one tokio task that owns the core; the SFU talks to it through a
//! [`RelayHandle`] (commands) and receives [`RelayEvent`]s on a channel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use str0m::format::PayloadParams;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::core::{Action, ConnId, LinkStats, RelayCore, RelayEvent, RemoteTrackId, SubscriberId};
use super::metrics::RelayMetrics;
use super::tls::{RelayIdentity, TlsError};
use super::wire::{
    ControlMsg, KeyframeKind, LayerDemand, MAX_CONTROL_FRAME, PROTOCOL_VERSION, RelayMedia,
    TrackKind, TrackRef,
};

/// How long a peer has for the `hello` exchange after the TLS handshake.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A link with no packet for this long is dead (keep-alives go every [`KEEP_ALIVE`]).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// QUIC keep-alive interval.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// How often link statistics go to the metrics.
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// Media packets queued towards the driver before [`RelayHandle::local_media`] drops.
pub const MEDIA_QUEUE: usize = 8192;
/// Events queued towards the SFU before media events are dropped.
pub const EVENT_QUEUE: usize = 16384;
/// Media datagrams from peers queued towards the driver before they are dropped (counted).
pub const INBOUND_QUEUE: usize = 8192;
/// TLS handshakes with unauthenticated peers at once; more are refused (counted as `busy`).
pub const MAX_HANDSHAKES: usize = 64;
/// The largest media packet accepted on a unidirectional stream.
const MAX_STREAM_DATAGRAM: usize = 64 * 1024;

/// The relay's configuration.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Who this node is and whom it trusts.
    pub identity: RelayIdentity,
    /// The UDP address of the relay endpoint (port 0: any).
    pub bind: SocketAddr,
    /// Where each peer node's relay listens (more can be added with
    /// [`RelayHandle::add_peer`]).
    pub peers: HashMap<String, PeerAddr>,
}

/// Where a peer node's relay listens: an address, or a DNS name and port resolved at each dial
/// (a StatefulSet pod's name under its headless Service follows the pod when it moves).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerAddr {
    /// A socket address.
    Addr(SocketAddr),
    /// A DNS name and a port.
    Host {
        /// The name (1-253 of `[A-Za-z0-9.-]`, labels not empty).
        host: String,
        /// The UDP port.
        port: u16,
    },
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> PeerAddr {
        PeerAddr::Addr(addr)
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddr::Addr(a) => write!(f, "{a}"),
            PeerAddr::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl std::str::FromStr for PeerAddr {
    type Err = String;

    /// `IP:PORT`, `[IPv6]:PORT` or `NAME:PORT`.
    fn from_str(s: &str) -> Result<PeerAddr, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(PeerAddr::Addr(a));
        }
        let bad = || format!("{s:?} is not IP:PORT or HOST:PORT");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(bad)?;
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .split('.')
                .all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-'))
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            // Not an IP address gone wrong (e.g. 10.0.0.300).
            && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if !name_ok {
            return Err(bad());
        }
        Ok(PeerAddr::Host {
            host: host.to_owned(),
            port,
        })
    }
}

impl PeerAddr {
    /// The address to dial: itself, or the first address `host` resolves to in the family of
    /// `local` (the endpoint's own address).
    async fn resolve(&self, local: Option<SocketAddr>) -> Result<SocketAddr, String> {
        match self {
            PeerAddr::Addr(a) => Ok(*a),
            PeerAddr::Host { host, port } => {
                let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map_err(|e| format!("resolve {host}: {e}"))?
                    .collect();
                let same_family =
                    |a: &&SocketAddr| local.is_none_or(|l| l.is_ipv4() == a.is_ipv4());
                found
                    .iter()
                    .find(same_family)
                    .or(found.first())
                    .copied()
                    .ok_or_else(|| format!("resolve {host}: no address"))
            }
        }
    }
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The TLS configuration is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// quinn refused the TLS configuration.
    #[error("QUIC TLS configuration: {0}")]
    QuicTls(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind the relay endpoint on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

enum Command {
    Publish {
        id: u64,
        track: TrackRef,
        kind: TrackKind,
        params: Vec<PayloadParams>,
    },
    Unpublish {
        id: u64,
    },
    Subscribe {
        peer: String,
        track: TrackRef,
        subscriber: SubscriberId,
        demand: LayerDemand,
        reply: oneshot::Sender<RemoteTrackId>,
    },
    Unsubscribe {
        subscriber: SubscriberId,
    },
    SetDemand {
        subscriber: SubscriberId,
        demand: LayerDemand,
    },
    Keyframe {
        remote: RemoteTrackId,
        rid: Option<String>,
        kind: KeyframeKind,
        fresh: bool,
    },
    AddPeer {
        node: String,
        addr: PeerAddr,
    },
    Stats {
        peer: String,
        reply: oneshot::Sender<Option<LinkStats>>,
    },
    Shutdown,
}

/// What connection tasks tell the driver.
enum Internal {
    Up {
        peer: String,
        dialled: bool,
        connection: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    },
    DialFailed {
        peer: String,
    },
    Down {
        peer: String,
        conn: ConnId,
    },
    Control {
        peer: String,
        conn: ConnId,
        bytes: Bytes,
    },
}

/// A media datagram from a peer (bounded queue: a flood is dropped and counted, never buffered
/// without limit).
struct Inbound {
    peer: String,
    conn: ConnId,
    bytes: Bytes,
}

/// The SFU's side of the relay: cheap to clone.
#[derive(Debug, Clone)]
pub struct RelayHandle {
    commands: mpsc::UnboundedSender<Command>,
    media: mpsc::Sender<RelayMedia>,
    metrics: RelayMetrics,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl RelayHandle {
    fn send(&self, c: Command) {
        // The driver only stops at shutdown; commands after it have nothing left to do.
        let _ = self.commands.send(c);
    }

    /// A track published on this node that peers may pull (see [`RelayCore::publish`]).
    pub fn publish(&self, id: u64, track: TrackRef, kind: TrackKind, params: Vec<PayloadParams>) {
        self.send(Command::Publish {
            id,
            track,
            kind,
            params,
        });
    }

    /// A local track is gone.
    pub fn unpublish(&self, id: u64) {
        self.send(Command::Unpublish { id });
    }

    /// A packet of a local track (sent only if some peer pulls it). Dropped and counted when
    /// the driver is behind.
    pub fn local_media(&self, media: RelayMedia) {
        if self.media.try_send(media).is_err() {
            self.metrics.drop("media_queue_full");
        }
    }

    /// A local subscriber wants `track` from node `peer`; returns the remote track's handle.
    pub async fn subscribe(
        &self,
        peer: &str,
        track: TrackRef,
        subscriber: SubscriberId,
        demand: LayerDemand,
    ) -> Option<RemoteTrackId> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Subscribe {
            peer: peer.to_string(),
            track,
            subscriber,
            demand,
            reply,
        });
        rx.await.ok()
    }

    /// A local subscriber is gone.
    pub fn unsubscribe(&self, subscriber: SubscriberId) {
        self.send(Command::Unsubscribe { subscriber });
    }

    /// A local subscriber's layer demand changed.
    pub fn set_demand(&self, subscriber: SubscriberId, demand: LayerDemand) {
        self.send(Command::SetDemand { subscriber, demand });
    }

    /// A local subscriber of a remote track needs a keyframe (`fresh`: it has had none yet).
    pub fn request_keyframe(
        &self,
        remote: RemoteTrackId,
        rid: Option<String>,
        kind: KeyframeKind,
        fresh: bool,
    ) {
        self.send(Command::Keyframe {
            remote,
            rid,
            kind,
            fresh,
        });
    }

    /// Where node `node`'s relay listens.
    pub fn add_peer(&self, node: &str, addr: impl Into<PeerAddr>) {
        self.send(Command::AddPeer {
            node: node.to_string(),
            addr: addr.into(),
        });
    }

    /// The counters of the link to `peer`.
    pub async fn link_stats(&self, peer: &str) -> Option<LinkStats> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Stats {
            peer: peer.to_string(),
            reply,
        });
        rx.await.ok().flatten()
    }
}

/// A running relay endpoint.
#[derive(Debug)]
pub struct Relay {
    handle: RelayHandle,
    events: mpsc::Receiver<RelayEvent>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Relay {
    /// Binds the endpoint and starts the driver.
    pub fn bind(config: RelayConfig, metrics: RelayMetrics) -> Result<Relay, RelayError> {
        let server_tls = config.identity.server_config()?;
        let client_tls = config.identity.client_config()?;
        let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
            .map_err(|e| RelayError::QuicTls(e.to_string()))?;
        let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)
            .map_err(|e| RelayError::QuicTls(e.to_string()))?;
        let transport = Arc::new(transport_config());
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport.clone());
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);
        let mut endpoint =
            quinn::Endpoint::server(server, config.bind).map_err(|source| RelayError::Bind {
                addr: config.bind,
                source,
            })?;
        endpoint.set_default_client_config(client);
        let addr = endpoint.local_addr().map_err(|source| RelayError::Bind {
            addr: config.bind,
            source,
        })?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (media, media_rx) = mpsc::channel(MEDIA_QUEUE);
        let (event_tx, events) = mpsc::channel(EVENT_QUEUE);
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let driver = Driver {
            core: RelayCore::new(config.identity.node()),
            identity: config.identity,
            endpoint,
            peers: config.peers,
            conns: HashMap::new(),
            next_conn: 1,
            internal: internal_tx,
            inbound: inbound_tx,
            handshakes: Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES)),
            events: event_tx,
            metrics: metrics.clone(),
            reported: HashMap::new(),
        };
        let task = tokio::spawn(driver.run(command_rx, media_rx, internal_rx, inbound_rx));
        Ok(Relay {
            handle: RelayHandle {
                commands,
                media,
                metrics,
            },
            events,
            addr,
            task,
        })
    }

    /// The endpoint's UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle for commands.
    pub fn handle(&self) -> RelayHandle {
        self.handle.clone()
    }

    /// The events for the SFU.
    pub fn events(&mut self) -> &mut mpsc::Receiver<RelayEvent> {
        &mut self.events
    }

    /// Takes the event receiver, for a task of its own (later calls get a closed one).
    pub fn take_events(&mut self) -> mpsc::Receiver<RelayEvent> {
        std::mem::replace(&mut self.events, mpsc::channel(1).1)
    }

    /// Closes every link and stops the driver.
    pub async fn shutdown(self) {
        self.handle.send(Command::Shutdown);
        let _ = self.task.await;
    }
}

fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // Datacentre links carry full-size RTP (about 1,200 bytes plus our header): start above
    // QUIC's 1,200-byte minimum; MTU discovery goes on from there, and a datagram that still
    // does not fit goes on a stream.
    t.initial_mtu(1400);
    t.keep_alive_interval(Some(KEEP_ALIVE));
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    t.datagram_receive_buffer_size(Some(4 * 1024 * 1024));
    t.datagram_send_buffer_size(4 * 1024 * 1024);
    // One control stream each way plus the oversize fallback streams.
    t.max_concurrent_bidi_streams(4u32.into());
    t.max_concurrent_uni_streams(256u32.into());
    t
}

struct Conn {
    peer: String,
    connection: quinn::Connection,
    control: mpsc::UnboundedSender<Bytes>,
    /// QUIC packets lost so far (for the metric's delta).
    quic_lost: u64,
    /// UDP datagrams and bytes out and in so far (for the metrics' deltas).
    udp: [u64; 4],
}

struct Driver {
    core: RelayCore,
    identity: RelayIdentity,
    endpoint: quinn::Endpoint,
    peers: HashMap<String, PeerAddr>,
    conns: HashMap<ConnId, Conn>,
    next_conn: ConnId,
    internal: mpsc::UnboundedSender<Internal>,
    inbound: mpsc::Sender<Inbound>,
    handshakes: Arc<tokio::sync::Semaphore>,
    events: mpsc::Sender<RelayEvent>,
    metrics: RelayMetrics,
    /// Link stats last turned into metrics, per peer.
    reported: HashMap<String, LinkStats>,
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut media: mpsc::Receiver<RelayMedia>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
        mut inbound: mpsc::Receiver<Inbound>,
    ) {
        let mut stats = tokio::time::interval(STATS_INTERVAL);
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let timeout = self.core.poll_timeout();
            let sleep = async {
                match timeout {
                    Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                c = commands.recv() => match c {
                    Some(Command::Shutdown) | None => break,
                    Some(c) => self.command(c),
                },
                Some(m) = media.recv() => {
                    self.core.local_media(&m);
                    // Drain what else is queued before doing I/O.
                    while let Ok(m) = media.try_recv() {
                        self.core.local_media(&m);
                    }
                }
                Some(i) = internal.recv() => self.internal(i),
                Some(d) = inbound.recv() => {
                    self.datagram(d);
                    // A batch of what else arrived before doing I/O.
                    for _ in 0..256 {
                        let Ok(d) = inbound.try_recv() else { break };
                        self.datagram(d);
                    }
                }
                incoming = self.endpoint.accept() => match incoming {
                    Some(incoming) => match self.handshakes.clone().try_acquire_owned() {
                        Ok(permit) => {
                            tokio::spawn(accept(
                                incoming,
                                self.identity.clone(),
                                self.internal.clone(),
                                self.metrics.clone(),
                                permit,
                            ));
                        }
                        Err(_) => {
                            self.metrics.refused("busy");
                            incoming.refuse();
                        }
                    },
                    None => break,
                },
                () = sleep => self.core.handle_timeout(Instant::now()),
                _ = stats.tick() => self.report_stats(),
            }
            self.drain();
        }
        self.report_stats();
        for conn in self.conns.values() {
            conn.connection.close(0u32.into(), b"shutdown");
        }
        self.endpoint.close(0u32.into(), b"shutdown");
        self.metrics.links.set(0);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    fn command(&mut self, c: Command) {
        let now = Instant::now();
        match c {
            Command::Publish {
                id,
                track,
                kind,
                params,
            } => self.core.publish(id, track, kind, params),
            Command::Unpublish { id } => self.core.unpublish(id),
            Command::Subscribe {
                peer,
                track,
                subscriber,
                demand,
                reply,
            } => {
                let h = self.core.subscribe(&peer, track, subscriber, demand, now);
                let _ = reply.send(h);
            }
            Command::Unsubscribe { subscriber } => self.core.unsubscribe(subscriber, now),
            Command::SetDemand { subscriber, demand } => {
                self.core.set_demand(subscriber, demand, now);
            }
            Command::Keyframe {
                remote,
                rid,
                kind,
                fresh,
            } => {
                self.core.request_keyframe(remote, rid, kind, fresh);
            }
            Command::AddPeer { node, addr } => {
                self.peers.insert(node, addr);
            }
            Command::Stats { peer, reply } => {
                let _ = reply.send(self.core.link_stats(&peer));
            }
            Command::Shutdown => {}
        }
    }

    fn internal(&mut self, i: Internal) {
        let now = Instant::now();
        match i {
            Internal::Up {
                peer,
                dialled,
                connection,
                send,
                recv,
            } => {
                let conn = self.next_conn;
                self.next_conn += 1;
                let (control, control_rx) = mpsc::unbounded_channel();
                tokio::spawn(write_control(send, control_rx));
                tokio::spawn(read_control(
                    peer.clone(),
                    conn,
                    recv,
                    self.internal.clone(),
                ));
                tokio::spawn(read_datagrams(
                    peer.clone(),
                    conn,
                    connection.clone(),
                    self.inbound.clone(),
                    self.internal.clone(),
                    self.metrics.clone(),
                ));
                tokio::spawn(read_uni_streams(
                    peer.clone(),
                    conn,
                    connection.clone(),
                    self.inbound.clone(),
                    self.metrics.clone(),
                ));
                tracing::info!(peer, conn, dialled, remote = %connection.remote_address(), "relay link up");
                self.conns.insert(
                    conn,
                    Conn {
                        peer: peer.clone(),
                        connection,
                        control,
                        quic_lost: 0,
                        udp: [0; 4],
                    },
                );
                self.core.link_up(&peer, conn, dialled, now);
            }
            Internal::DialFailed { peer } => self.core.link_failed(&peer, now),
            Internal::Down { peer, conn } => {
                if let Some(c) = self.conns.remove(&conn) {
                    tracing::info!(peer, conn, reason = ?c.connection.close_reason(), "relay link down");
                    c.connection.close(0u32.into(), b"closed");
                    self.core.link_down(&peer, conn, now);
                }
            }
            Internal::Control { peer, conn, bytes } => {
                if let Err(e) = self.core.control_received(&peer, conn, &bytes, now) {
                    tracing::warn!(peer, conn, error = %e, "relay control stream refused");
                    self.metrics.drop("malformed_control");
                }
            }
        }
    }

    fn datagram(&mut self, d: Inbound) {
        if self.conns.contains_key(&d.conn)
            && let Err(e) = self
                .core
                .datagram_received(&d.peer, &d.bytes, Instant::now())
        {
            tracing::debug!(peer = d.peer, error = %e, "relay datagram refused");
            self.metrics.drop("malformed_datagram");
        }
    }

    /// Carries out the core's actions and hands its events on.
    fn drain(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Connect { peer } => match self.peers.get(&peer) {
                    Some(addr) => {
                        tokio::spawn(dial(
                            self.endpoint.clone(),
                            peer,
                            addr.clone(),
                            self.core.name().to_string(),
                            self.internal.clone(),
                            self.metrics.clone(),
                        ));
                    }
                    None => {
                        tracing::warn!(peer, "relay peer with no known address");
                        self.metrics.drop("unknown_peer");
                        self.core.link_failed(&peer, Instant::now());
                    }
                },
                Action::SendControl { conn, frame, .. } => {
                    if let Some(c) = self.conns.get(&conn) {
                        let _ = c.control.send(frame);
                    }
                }
                Action::SendDatagram { conn, datagram, .. } => {
                    let Some(c) = self.conns.get(&conn) else {
                        continue;
                    };
                    match c.connection.send_datagram(datagram.clone()) {
                        Ok(()) => {}
                        Err(quinn::SendDatagramError::TooLarge) => {
                            self.metrics.oversize.inc();
                            tokio::spawn(send_on_stream(c.connection.clone(), datagram));
                        }
                        Err(_) => self.metrics.drop("send_failed"),
                    }
                }
                Action::Close { peer, conn, reason } => {
                    if let Some(c) = self.conns.remove(&conn) {
                        tracing::info!(peer, conn, reason, "closing relay link");
                        c.connection.close(1u32.into(), reason.as_bytes());
                        self.core.link_down(&peer, conn, Instant::now());
                    }
                }
            }
        }
        while let Some(event) = self.core.poll_event() {
            if let Err(e) = self.events.try_send(event) {
                match e {
                    mpsc::error::TrySendError::Full(_) => self.metrics.drop("event_queue_full"),
                    mpsc::error::TrySendError::Closed(_) => {}
                }
            }
        }
    }

    fn report_stats(&mut self) {
        let mut up = 0;
        for c in self.conns.values_mut() {
            let s = c.connection.stats();
            self.core.note_rtt(&c.peer, s.path.rtt);
            self.metrics
                .rtt
                .with_label_values(&[&c.peer])
                .set(s.path.rtt.as_secs_f64());
            let lost = s.path.lost_packets;
            self.metrics
                .quic_lost
                .with_label_values(&[&c.peer])
                .inc_by(lost.saturating_sub(c.quic_lost));
            c.quic_lost = lost;
            let udp = [
                s.udp_tx.datagrams,
                s.udp_tx.bytes,
                s.udp_rx.datagrams,
                s.udp_rx.bytes,
            ];
            self.metrics.count_udp(&c.peer, c.udp, udp);
            c.udp = udp;
        }
        let peers: Vec<(String, bool)> =
            self.core.links().map(|(p, u)| (p.to_string(), u)).collect();
        for (peer, is_up) in peers {
            up += usize::from(is_up);
            let Some(now) = self.core.link_stats(&peer) else {
                continue;
            };
            let before = self.reported.insert(peer.clone(), now).unwrap_or_default();
            self.metrics.count_link(&peer, &before, &now);
            if let Some((served, pulled)) = self.core.link_legs(&peer) {
                self.metrics.set_link_legs(&peer, served, pulled);
            }
        }
        let (served, pulled) = self.core.legs();
        self.metrics.links.set(up as i64);
        self.metrics
            .legs
            .with_label_values(&["origin"])
            .set(served as i64);
        self.metrics
            .legs
            .with_label_values(&["subscriber"])
            .set(pulled as i64);
    }
}

async fn send_on_stream(connection: quinn::Connection, datagram: Bytes) {
    if let Ok(mut s) = connection.open_uni().await {
        let _ = s.write_all(&datagram).await;
        let _ = s.finish();
    }
}

async fn write_control(mut send: quinn::SendStream, mut rx: mpsc::UnboundedReceiver<Bytes>) {
    while let Some(frame) = rx.recv().await {
        if send.write_all(&frame).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

async fn read_control(
    peer: String,
    conn: ConnId,
    mut recv: quinn::RecvStream,
    tx: mpsc::UnboundedSender<Internal>,
) {
    while let Ok(Some(chunk)) = recv.read_chunk(MAX_CONTROL_FRAME, true).await {
        let msg = Internal::Control {
            peer: peer.clone(),
            conn,
            bytes: chunk.bytes,
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
    let _ = tx.send(Internal::Down { peer, conn });
}

fn queue_inbound(tx: &mpsc::Sender<Inbound>, d: Inbound, metrics: &RelayMetrics) -> bool {
    match tx.try_send(d) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            metrics.drop("inbound_queue_full");
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

async fn read_datagrams(
    peer: String,
    conn: ConnId,
    connection: quinn::Connection,
    tx: mpsc::Sender<Inbound>,
    down: mpsc::UnboundedSender<Internal>,
    metrics: RelayMetrics,
) {
    while let Ok(bytes) = connection.read_datagram().await {
        let d = Inbound {
            peer: peer.clone(),
            conn,
            bytes,
        };
        if !queue_inbound(&tx, d, &metrics) {
            return;
        }
    }
    let _ = down.send(Internal::Down { peer, conn });
}

async fn read_uni_streams(
    peer: String,
    conn: ConnId,
    connection: quinn::Connection,
    tx: mpsc::Sender<Inbound>,
    metrics: RelayMetrics,
) {
    while let Ok(mut s) = connection.accept_uni().await {
        let peer = peer.clone();
        let tx = tx.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Ok(Ok(data)) =
                tokio::time::timeout(HELLO_TIMEOUT, s.read_to_end(MAX_STREAM_DATAGRAM)).await
            {
                let d = Inbound {
                    peer,
                    conn,
                    bytes: Bytes::from(data),
                };
                queue_inbound(&tx, d, &metrics);
            }
        });
    }
}

/// Reads exactly one control frame (the `hello`), no byte more.
async fn read_hello(recv: &mut quinn::RecvStream) -> Result<(String, u32), &'static str> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(|_| "hello")?;
    let len = u32::from_be_bytes(len) as usize;
    if len > 1024 {
        return Err("hello");
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|_| "hello")?;
    match ControlMsg::decode(&body) {
        Ok(ControlMsg::Hello { node, version }) => Ok((node, version)),
        _ => Err("hello"),
    }
}

fn hello(node: &str) -> Bytes {
    ControlMsg::Hello {
        node: node.to_string(),
        version: PROTOCOL_VERSION,
    }
    .encode()
}

async fn dial(
    endpoint: quinn::Endpoint,
    peer: String,
    target: PeerAddr,
    me: String,
    tx: mpsc::UnboundedSender<Internal>,
    metrics: RelayMetrics,
) {
    let addr = match target.resolve(endpoint.local_addr().ok()).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(peer, %target, error = e, "relay dial failed");
            metrics.dial_failures.inc();
            let _ = tx.send(Internal::DialFailed { peer });
            return;
        }
    };
    let result = tokio::time::timeout(HELLO_TIMEOUT * 2, async {
        let connection = endpoint
            .connect(addr, &peer)
            .map_err(|e| format!("connect: {e}"))?
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|e| format!("control stream: {e}"))?;
        send.write_all(&hello(&me))
            .await
            .map_err(|e| format!("hello: {e}"))?;
        let (node, version) = read_hello(&mut recv).await.map_err(str::to_string)?;
        if node != peer || version != PROTOCOL_VERSION {
            connection.close(2u32.into(), b"bad hello");
            return Err(format!("peer answered as {node:?} version {version}"));
        }
        Ok((connection, send, recv))
    })
    .await;
    match result {
        Ok(Ok((connection, send, recv))) => {
            let _ = tx.send(Internal::Up {
                peer,
                dialled: true,
                connection,
                send,
                recv,
            });
        }
        Ok(Err(e)) => {
            tracing::warn!(peer, %addr, error = e, "relay dial failed");
            metrics.dial_failures.inc();
            let _ = tx.send(Internal::DialFailed { peer });
        }
        Err(_) => {
            tracing::warn!(peer, %addr, "relay dial timed out");
            metrics.dial_failures.inc();
            let _ = tx.send(Internal::DialFailed { peer });
        }
    }
}

async fn accept(
    incoming: quinn::Incoming,
    identity: RelayIdentity,
    tx: mpsc::UnboundedSender<Internal>,
    metrics: RelayMetrics,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%remote, error = %e, "relay peer refused in the TLS handshake");
            metrics.refused("handshake");
            return;
        }
    };
    let result = tokio::time::timeout(HELLO_TIMEOUT, async {
        let (mut send, mut recv) = connection.accept_bi().await.map_err(|_| "hello")?;
        let (node, version) = read_hello(&mut recv).await?;
        if version != PROTOCOL_VERSION {
            return Err("version");
        }
        let certs = connection
            .peer_identity()
            .and_then(|i| {
                i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .ok_or("identity")?;
        identity.check_peer(&node, &certs).map_err(|_| "identity")?;
        send.write_all(&hello(identity.node()))
            .await
            .map_err(|_| "hello")?;
        Ok((node, send, recv))
    })
    .await
    .unwrap_or(Err("timeout"));
    match result {
        Ok((peer, send, recv)) => {
            let _ = tx.send(Internal::Up {
                peer,
                dialled: false,
                connection,
                send,
                recv,
            });
        }
        Err(reason) => {
            tracing::warn!(%remote, reason, "relay peer refused");
            metrics.refused(reason);
            connection.close(2u32.into(), reason.as_bytes());
        }
    }
}
