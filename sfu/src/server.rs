//! Starting and stopping a whole SFU in-process: [`Server::bind`] → [`ServerHandle`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use parking_lot::Mutex;
use satsuma_common::TokenBucket;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::api::{ApiState, ops_router, router};
use crate::config::{Config, ConfigError};
use crate::directory::Directory;
use crate::health::ShardHealth;
use crate::ice_tcp::DEFAULT_MAX_FRAME;
use crate::metrics::Metrics;
use crate::relay::bridge::{self, Bridge, ShardRelay};
use crate::relay::driver::{Relay, RelayConfig};
use crate::shard::{CoreContext, Shard, ShardContext, ShardMsg};
use crate::tcp::{TcpSettings, TcpShared, run_listener};
use crate::udp::{UdpIo, UdpReader};

/// Capacity of each shard's inbox.
const SHARD_QUEUE: usize = 16_384;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A socket could not be bound.
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        /// `http` or `udp`.
        what: &'static str,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Other I/O failure at start-up.
    #[error("i/o error at start-up: {0}")]
    Io(#[from] std::io::Error),
    /// The relay between SFU nodes could not start.
    #[error(transparent)]
    Relay(#[from] crate::relay::driver::RelayError),
}

/// The SFU. See [`Server::bind`].
#[derive(Debug)]
pub struct Server;

/// A running SFU: its addresses, metrics, and a way to stop it. Dropping the handle stops it too.
#[derive(Debug)]
pub struct ServerHandle {
    http_addr: SocketAddr,
    udp_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    metrics: Metrics,
    relay: Option<Relay>,
    relay_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    http: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    shard_stops: Vec<oneshot::Sender<()>>,
    shard_threads: Vec<std::thread::JoinHandle<()>>,
    directory: Arc<Directory>,
    drain: Arc<crate::drain::Drain>,
}

/// Starts one shard on a thread of its own, driven by a single-threaded tokio runtime: the
/// shard's sessions, forwarder and timers never leave that thread, so the packet path takes no
/// lock and keeps its caches warm. Shards talk to each other and to the API through channels.
///
/// A panic in a batch of the shard's work is survived inside [`Shard::run`]. Should one escape it
/// anyway, the thread marks the shard dead (so `/healthz` stays 503 and the supervisor restarts
/// the process) and counts it; new sessions are no longer placed on it.
fn spawn_shard_thread(
    index: usize,
    shard: Shard,
    mut rx: mpsc::Receiver<ShardMsg>,
    mut stop: oneshot::Receiver<()>,
    health: Arc<ShardHealth>,
    metrics: Metrics,
) -> Result<std::thread::JoinHandle<()>, ServerError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let thread = std::thread::Builder::new()
        .name(format!("satsuma-shard-{index}"))
        .spawn(move || {
            let run = catch_unwind(AssertUnwindSafe(|| {
                runtime.block_on(shard.run(&mut rx, &mut stop));
            }));
            if run.is_err() {
                tracing::error!(shard = index, "shard thread died; /healthz reports it dead");
                metrics
                    .shard_panics
                    .with_label_values(&[&index.to_string()])
                    .inc();
                health.note_dead(index);
            }
        })?;
    Ok(thread)
}

impl Server {
    /// Binds the HTTP listener, the UDP socket and the ICE-TCP listener, starts the shards, and returns once the
    /// server accepts requests. Must be called inside a multi-threaded tokio runtime.
    pub async fn bind(config: Config) -> Result<ServerHandle, ServerError> {
        Server::bind_with_relay(config, None).await
    }

    /// [`Server::bind`], with the relay between SFU nodes when `relay` is given: its QUIC
    /// endpoint, the bridge that ties it to the shards and the API (see
    /// [`crate::relay::bridge`]), and session ids tagged with the node.
    pub async fn bind_with_relay(
        config: Config,
        relay: Option<RelayConfig>,
    ) -> Result<ServerHandle, ServerError> {
        config.validate()?;
        // A plain socket: it is registered with no runtime here, only with the reading shard's
        // (see `crate::udp`), so that arriving datagrams wake no other thread.
        let udp =
            std::net::UdpSocket::bind(config.udp_bind).map_err(|source| ServerError::Bind {
                what: "udp",
                addr: config.udp_bind,
                source,
            })?;
        let udp_addr = udp.local_addr()?;
        let listener = TcpListener::bind(config.http_bind)
            .await
            .map_err(|source| ServerError::Bind {
                what: "http",
                addr: config.http_bind,
                source,
            })?;
        let http_addr = listener.local_addr()?;
        let metrics_listener = match config.metrics_bind {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| ServerError::Bind {
                            what: "metrics",
                            addr,
                            source,
                        })?,
                )
            }
            None => None,
        };
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let candidates: Vec<SocketAddr> = config
            .effective_announce_ips(udp_addr)
            .into_iter()
            .map(|ip| SocketAddr::new(ip, udp_addr.port()))
            .collect();
        let tcp_listener = match config.tcp_listen_addr() {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| ServerError::Bind {
                            what: "ice-tcp",
                            addr,
                            source,
                        })?,
                )
            }
            None => None,
        };
        let tcp_addr = match &tcp_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };

        let metrics = Metrics::new();
        let now = Instant::now();
        let mut relay = match relay {
            Some(c) => {
                let node = c.identity.node().to_string();
                let peers: Vec<String> = c.peers.keys().cloned().collect();
                let r = Relay::bind(c, metrics.relay.clone())?;
                let (bridge, inbox) = bridge::channel(&node);
                Some((r, node, peers, bridge, inbox))
            }
            None => None,
        };
        let relay_addr = relay.as_ref().map(|(r, ..)| r.local_addr());
        let health = Arc::new(ShardHealth::new(config.shards, now));
        let directory = Arc::new(Directory::default());
        let socket = Arc::new(UdpIo::new(udp)?);
        let (control_tx, mut control_rx) = mpsc::unbounded_channel();
        let tcp = tcp_addr.map(|bound| {
            Arc::new(TcpShared::new(
                TcpSettings {
                    candidates: config
                        .effective_announce_ips(bound)
                        .into_iter()
                        .map(|ip| SocketAddr::new(ip, bound.port()))
                        .collect(),
                    max_per_ip: config.limits.tcp_max_connections_per_ip,
                    max_total: config.limits.tcp_max_connections,
                    max_frame: DEFAULT_MAX_FRAME,
                    timeouts: config.tcp_timeouts,
                },
                metrics.clone(),
            ))
        });
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        if let Some(tcp) = &tcp {
            // Shards' routing changes reach both drivers: the TCP side first (it only keeps
            // ufrags), then the UDP reader (on shard 0).
            let (udp_tx, udp_rx) = mpsc::unbounded_channel();
            let tcp = Arc::clone(tcp);
            let mut from_shards = std::mem::replace(&mut control_rx, udp_rx);
            tasks.push(tokio::spawn(async move {
                while let Some(ctl) = from_shards.recv().await {
                    tcp.apply(&ctl);
                    if udp_tx.send(ctl).is_err() {
                        return;
                    }
                }
            }));
        }
        let ctx = Arc::new(ShardContext {
            core: Arc::new(CoreContext {
                config: config.clone(),
                directory: Arc::clone(&directory),
                metrics: metrics.clone(),
                candidates: candidates.clone(),
                tcp_candidates: tcp
                    .as_ref()
                    .map(|t| t.candidates().to_vec())
                    .unwrap_or_default(),
            }),
            udp: Arc::clone(&socket),
            udp_control: control_tx,
            tcp: tcp.clone(),
            health: Arc::clone(&health),
            relay: relay.as_ref().map(|(r, _, _, bridge, _)| ShardRelay {
                handle: r.handle(),
                bridge: bridge.clone(),
            }),
        });

        let (senders, receivers): (Vec<_>, Vec<_>) = (0..config.shards)
            .map(|_| mpsc::channel(SHARD_QUEUE))
            .unzip();
        let mut shard_threads = Vec::new();
        let mut shard_stops = Vec::new();
        // Shard 0 reads the UDP socket (see `crate::udp`).
        let mut reader = Some(UdpReader::new(
            Arc::clone(&socket),
            candidates.clone(),
            control_rx,
            senders.clone(),
            0,
        ));
        for (i, rx) in receivers.into_iter().enumerate() {
            let mut shard = Shard::new(i, Arc::clone(&ctx), senders.clone());
            if let Some(reader) = reader.take() {
                shard = shard.with_reader(reader);
            }
            let (stop_tx, stop_rx) = oneshot::channel();
            shard_stops.push(stop_tx);
            metrics.register_shard(i);
            shard_threads.push(spawn_shard_thread(
                i,
                shard,
                rx,
                stop_rx,
                Arc::clone(&health),
                metrics.clone(),
            )?);
        }
        let relay_api = relay.as_ref().map(|(_, _, _, bridge, _)| bridge.clone());
        let relay = match relay.take() {
            Some((mut r, node, peers, _, inbox)) => {
                tasks.push(Bridge::start(
                    &node,
                    peers,
                    r.handle(),
                    r.take_events(),
                    inbox,
                    Arc::clone(&directory),
                    senders.clone(),
                    metrics.relay.clone(),
                ));
                Some(r)
            }
            None => None,
        };
        if let (Some(listener), Some(tcp)) = (tcp_listener, tcp) {
            tasks.push(tokio::spawn(run_listener(listener, tcp, senders.clone())));
        }

        let drain = Arc::new(crate::drain::Drain::new());
        let handle_directory = Arc::clone(&directory);
        let state = Arc::new(ApiState {
            apps: config
                .apps
                .iter()
                .map(|a| (a.id.clone(), a.secret.clone()))
                .collect::<HashMap<_, _>>(),
            directory,
            shards: senders,
            metrics: metrics.clone(),
            next_shard: AtomicUsize::new(0),
            max_tracks: config.max_tracks_per_request,
            app_new_sessions: config
                .apps
                .iter()
                .map(|a| {
                    let bucket =
                        TokenBucket::per_second(config.limits.app_new_sessions_per_second, now);
                    (a.id.clone(), Mutex::new(bucket))
                })
                .collect(),
            health,
            limits: config.limits.clone(),
            session_requests_per_second: config.session_requests_per_second,
            shard_panic_hold: config.shard_panic_hold,
            test_hooks: config.test_hooks,
            cors_origins: config.cors_origins.clone(),
            metrics_token: config.metrics_token.clone(),
            metrics_on_api: metrics_listener.is_none(),
            turn_keys: config
                .turn_keys
                .iter()
                .map(|k| (k.id.clone(), k.token.clone()))
                .collect(),
            turn: config.turn.clone(),
            relay: relay_api,
            drain: Arc::clone(&drain),
        });
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let app = router(Arc::clone(&state));
        let mut metrics_stop = None;
        if let Some(l) = metrics_listener {
            let (tx, rx) = oneshot::channel::<()>();
            metrics_stop = Some(tx);
            let ops = ops_router(state);
            tasks.push(tokio::spawn(async move {
                let serve = axum::serve(l, ops).with_graceful_shutdown(async move {
                    let _ = rx.await;
                });
                if let Err(e) = serve.await {
                    tracing::error!("metrics server failed: {e}");
                }
            }));
        }
        let http = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = shutdown_rx.await;
                if let Some(tx) = metrics_stop {
                    let _ = tx.send(());
                }
            });
            if let Err(e) = serve.await {
                tracing::error!("http server failed: {e}");
            }
        });
        tracing::info!(%http_addr, %udp_addr, tcp_addr = ?tcp_addr, shards = config.shards, "satsuma-sfu started");
        Ok(ServerHandle {
            http_addr,
            udp_addr,
            tcp_addr,
            metrics_addr,
            metrics,
            relay,
            relay_addr,
            shutdown: Some(shutdown_tx),
            http: Some(http),
            tasks,
            shard_stops,
            shard_threads,
            directory: handle_directory,
            drain,
        })
    }
}

impl ServerHandle {
    /// The bound HTTP address (the real port when configured with port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound address of the separate `/metrics` listener, if one is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The bound UDP address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// The bound ICE-TCP address (`None`: ICE-TCP is off).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The relay's bound UDP address (`None`: the relay is off).
    pub fn relay_addr(&self) -> Option<SocketAddr> {
        self.relay_addr
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The node's drain state ([`crate::drain`]): start it, or see whether it started.
    pub fn drain(&self) -> Arc<crate::drain::Drain> {
        Arc::clone(&self.drain)
    }

    /// Sessions this node holds now.
    pub fn session_count(&self) -> usize {
        self.directory.session_count()
    }

    /// Resolves if the HTTP server stops (it does not stop on its own); the handle stays
    /// usable (e.g. for [`ServerHandle::shutdown`]).
    pub async fn http_stopped(&mut self) {
        match self.http.as_mut() {
            Some(http) => {
                let _ = http.await;
                self.http = None;
            }
            None => std::future::pending().await,
        }
    }

    /// Waits until the HTTP server stops (it does not stop on its own).
    pub async fn wait(mut self) {
        if let Some(http) = self.http.take() {
            let _ = http.await;
        }
    }

    /// Stops accepting requests, then stops the shards and the UDP driver.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(http) = self.http.take() {
            let _ = http.await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(relay) = self.relay.take() {
            relay.shutdown().await;
        }
        for stop in self.shard_stops.drain(..) {
            let _ = stop.send(());
        }
        let threads: Vec<_> = self.shard_threads.drain(..).collect();
        // Joining blocks: do it off the async workers. A shard closes its sessions and exits
        // as soon as it sees the stop signal.
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(http) = &self.http {
            http.abort();
        }
        for t in &self.tasks {
            t.abort();
        }
        // Dropping the stop senders ends the shard threads; they are not joined here (a drop
        // must not block an async worker).
        self.shard_stops.clear();
    }
}
