//! The shard's driver: the inbox, the timer, the socket and the channels around one [`Core`].
//! It feeds the core what arrives (with the time), carries out what the core asks
//! ([`Action`]s, the egress), and sleeps until the next message or the core's next timeout.
//! The reading shard also reads the shared UDP socket ([`UdpReader`]): at every wake-up, before
//! and after its inbox, so that a datagram arriving while the shard works costs no wake-up, and
//! its own sessions' datagrams none of another thread.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::core::{Action, Core, CoreContext};
use super::inbox::ShardMsg;
use super::outbox::{PeerOutbox, Sent};
use super::relay_leg::RELAY_SHARD;
use crate::health::ShardHealth;
use crate::ids::ShardId;
use crate::metrics::PacketDrop;
use crate::relay::bridge::ShardRelay;
use crate::tcp::TcpShared;
use crate::udp::{UdpControl, UdpIo, UdpReader};

/// Messages handled before the shard looks at timeouts again.
const BATCH: usize = 256;

/// What the drivers of all shards share: the core's context, the socket, the routing channel of
/// the UDP and ICE-TCP drivers, the ICE-TCP send side, and what `/healthz` reports.
#[derive(Debug)]
pub struct ShardContext {
    /// What every core shares.
    pub core: Arc<CoreContext>,
    /// The one UDP socket, with batched I/O.
    pub udp: Arc<UdpIo>,
    /// Control channel of the UDP driver (the ICE-TCP driver gets the same messages).
    pub udp_control: mpsc::UnboundedSender<UdpControl>,
    /// The ICE-TCP driver's send side (`None`: ICE-TCP is off).
    pub tcp: Option<Arc<TcpShared>>,
    /// Shard health, for `/healthz`.
    pub health: Arc<ShardHealth>,
    /// The relay between SFU nodes (`None`: off).
    pub relay: Option<ShardRelay>,
}

/// One shard: a [`Core`] and its driver.
pub struct Shard {
    id: ShardId,
    core: Core,
    ctx: Arc<ShardContext>,
    peers: Vec<mpsc::Sender<ShardMsg>>,
    outboxes: Vec<PeerOutbox>,
    /// The reading shard's side of the UDP socket (`None` on the other shards).
    reader: Option<UdpReader>,
}

/// What woke the shard.
enum Wake {
    Message(ShardMsg),
    Readable,
    Timer,
    Failed(std::io::Error),
}

impl Shard {
    /// A shard with index `id`; `peers[i]` reaches shard `i` (including this one).
    pub fn new(id: ShardId, ctx: Arc<ShardContext>, peers: Vec<mpsc::Sender<ShardMsg>>) -> Shard {
        let core = Core::new(id, peers.len(), Arc::clone(&ctx.core), Instant::now());
        let outboxes = peers.iter().map(|_| PeerOutbox::default()).collect();
        Shard {
            id,
            core,
            ctx,
            peers,
            outboxes,
            reader: None,
        }
    }

    /// Makes this the reading shard: it reads the UDP socket with `reader`.
    pub fn with_reader(mut self, reader: UdpReader) -> Shard {
        self.reader = Some(reader);
        self
    }

    /// Runs until the channel closes or `stop` fires (or its sender is dropped); then closes
    /// every session. Time spent handling work (not waiting) is added to the shard's busy-time
    /// counter, so `rate(satsuma_sfu_shard_busy_seconds_total)` is the shard's utilisation.
    ///
    /// Each batch of work runs under `catch_unwind`. A panic that escapes the core's
    /// per-session guards (a bug in the shard itself) is counted
    /// (`satsuma_sfu_shard_panics_total`), reported by `/healthz`, and survived: every session of
    /// this shard is closed (their API calls answer 404, their clients reconnect), the core is
    /// reset, the other shards are told, and the shard takes new work.
    pub async fn run(
        mut self,
        rx: &mut mpsc::Receiver<ShardMsg>,
        stop: &mut oneshot::Receiver<()>,
    ) {
        let label = self.id.to_string();
        let metrics = self.ctx.core.metrics.clone();
        let busy = metrics.shard_busy_seconds.with_label_values(&[&label]);
        let sessions_gauge = metrics.shard_sessions.with_label_values(&[&label]);
        if let Some(reader) = &mut self.reader
            && let Err(e) = reader.register()
        {
            tracing::error!(shard = self.id, "cannot read the udp socket: {e}");
            self.reader = None;
        }
        loop {
            let deadline = self.deadline();
            let reader = self.reader.as_ref();
            let wake = tokio::select! {
                biased;
                _ = &mut *stop => break,
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    Wake::Message(msg)
                }
                ready = async {
                    match reader {
                        Some(r) => r.readable().await,
                        None => std::future::pending().await,
                    }
                } => match ready {
                    Ok(()) => Wake::Readable,
                    Err(e) => Wake::Failed(e),
                },
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => Wake::Timer,
            };
            if let Wake::Failed(e) = &wake {
                tracing::warn!(shard = self.id, "udp socket failed: {e}");
                self.reader = None;
                continue;
            }
            let started = Instant::now();
            let worked = catch_unwind(AssertUnwindSafe(|| {
                match wake {
                    Wake::Message(_) | Wake::Readable => {
                        self.core.begin_batch();
                        self.read_udp();
                        if let Wake::Message(msg) = wake {
                            self.handle(msg, started);
                        }
                        for _ in 0..BATCH {
                            match rx.try_recv() {
                                Ok(msg) => self.handle(msg, Instant::now()),
                                Err(_) => break,
                            }
                        }
                        // What arrived meanwhile, before the batch's drains (and before other
                        // shards' datagrams wait behind them).
                        self.read_udp();
                        // Peer shards get their share of the batch before this one drains its
                        // own subscribers, so the two work at the same time.
                        self.flush_peers();
                        self.core.end_batch();
                        self.act();
                        self.core.handle_timeout(Instant::now());
                    }
                    Wake::Timer | Wake::Failed(_) => self.core.handle_timeout(started),
                }
                self.act();
                self.retry_deferred();
                self.flush();
            }));
            if worked.is_err() {
                let now = Instant::now();
                // Counted before `/healthz` shows it, so that whoever sees the one sees both.
                metrics.shard_panics.with_label_values(&[&label]).inc();
                self.ctx.health.note_panic(self.id, now);
                self.core.reset_after_panic(now);
                self.act();
                self.flush();
            }
            busy.inc_by(started.elapsed().as_secs_f64());
            sessions_gauge.set(i64::try_from(self.core.session_count()).unwrap_or(i64::MAX));
        }
        self.core.close_all(Instant::now());
        self.act();
        self.flush();
        sessions_gauge.set(0);
    }

    /// Reads the UDP socket if this is the reading shard (see [`UdpReader::read`]): other shards'
    /// datagrams are handed over, this shard's own go to the core at once.
    fn read_udp(&mut self) {
        let Some(reader) = &mut self.reader else {
            return;
        };
        let core = &mut self.core;
        reader.read(&self.ctx.core.metrics, |batch| {
            core.handle_datagrams(Instant::now(), batch.iter());
        });
        self.act();
    }

    /// Hands one message to the core and carries out what it asked.
    fn handle(&mut self, msg: ShardMsg, now: Instant) {
        match msg {
            ShardMsg::Api { command, reply } => {
                let _ = reply.send(self.core.handle_api(now, command));
            }
            ShardMsg::Datagram(d) => self.core.handle_datagram(now, d),
            ShardMsg::Datagrams(batch) => self.core.handle_datagrams(now, batch.iter()),
            ShardMsg::Peer(m) => self.core.handle_peer(now, m),
            ShardMsg::Peers(ms) => self.core.handle_peers(now, ms),
            ShardMsg::Relay(r) => self.core.handle_relay(now, r),
            ShardMsg::InjectPanic => injected_panic(self.id),
        }
        self.act();
    }

    /// Carries out the core's actions.
    fn act(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::ToShard(RELAY_SHARD, msg) => {
                    if let Some(relay) = &self.ctx.relay {
                        relay.local_media(msg);
                    }
                }
                Action::ToShard(shard, msg) => match self.outboxes.get_mut(shard) {
                    Some(outbox) => outbox.push(msg),
                    None => self.ctx.core.metrics.drop(PacketDrop::UnknownShard),
                },
                Action::Relay(action) => {
                    if let Some(relay) = &self.ctx.relay {
                        relay.act(action);
                    }
                }
                Action::Routing(ctl) => {
                    let _ = self.ctx.udp_control.send(ctl);
                }
                Action::TcpTransmit { destination, data } => match &self.ctx.tcp {
                    Some(tcp) => tcp.transmit(destination, &data),
                    None => self.ctx.core.metrics.drop(PacketDrop::TcpNoConnection),
                },
            }
        }
    }

    /// Sends what the last batch of work produced: the messages to peer shards first (so that
    /// they work on them meanwhile), then the datagrams (see [`crate::egress`]).
    fn flush(&mut self) {
        self.flush_peers();
        self.ctx
            .udp
            .flush(self.core.egress(), &self.ctx.core.metrics);
    }

    /// Sends each peer shard the messages gathered for it since the last flush (see
    /// [`PeerOutbox`]).
    fn flush_peers(&mut self) {
        let metrics = &self.ctx.core.metrics;
        for (tx, outbox) in self.peers.iter().zip(self.outboxes.iter_mut()) {
            match outbox.flush(tx) {
                Some((Sent::Delivered, n)) => metrics.cross_shard_messages.inc_by(n as u64),
                Some((Sent::Dropped, n)) => metrics.drop_n(PacketDrop::ShardQueueFull, n as u64),
                Some((Sent::PeerGone, n)) => metrics.drop_n(PacketDrop::UnknownShard, n as u64),
                Some((Sent::Deferred, _)) | None => {}
            }
        }
    }

    fn deadline(&self) -> Instant {
        let deadline = self.core.poll_timeout();
        if self.outboxes.iter().any(|o| !o.deferred.is_empty()) {
            // Control messages wait for a peer's room: look again soon.
            return deadline.min(Instant::now() + Duration::from_millis(1));
        }
        deadline
    }

    /// Sends the control messages that waited for room in a peer's inbox.
    fn retry_deferred(&mut self) {
        for (tx, outbox) in self.peers.iter().zip(self.outboxes.iter_mut()) {
            let sent = outbox.retry(tx);
            self.ctx
                .core
                .metrics
                .cross_shard_messages
                .inc_by(sent as u64);
        }
    }
}

/// The test hook's panic (see [`ShardMsg::InjectPanic`]).
#[allow(clippy::panic)]
fn injected_panic(shard: ShardId) -> ! {
    panic!("test hook: injected panic on shard {shard}")
}
