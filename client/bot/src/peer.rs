//! A participant's media side as a handle: one [`Participant`] (the sans-IO str0m core) driven by
//! a tokio task that owns its UDP socket ([`crate::driver`]).
//!
//! Signaling is not this module's business: [`crate::Bot`] (the SFU's HTTP API), the load
//! harness's Satsuma and Janus clients and its direct baseline pairs run SDP steps on the
//! participant through [`Peer::with`]. Every client uses this same driver, whichever server it
//! talks to, so different SFUs are measured with identical clients.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::driver::{self, Command};
use crate::participant::{Participant, ParticipantConfig, ParticipantStats, SignalingError};

pub use crate::driver::unix_now_us;

/// Errors of the peer driver.
#[derive(Debug, Error)]
pub enum PeerError {
    /// Socket setup failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The participant could not be created.
    #[error(transparent)]
    Signaling(#[from] SignalingError),
    /// The media task has stopped.
    #[error("the peer's media task has stopped")]
    Gone,
    /// DTLS did not come up in time.
    #[error("not connected after {0:?}")]
    NotConnected(Duration),
}

/// A running participant: the handle of its media task. Dropping it stops the task once the
/// pending commands ran.
#[derive(Debug)]
pub struct Peer {
    local_addr: SocketAddr,
    commands: mpsc::Sender<Command>,
    ingress_limit: watch::Sender<Option<u64>>,
    task: JoinHandle<()>,
}

impl Peer {
    /// Binds a UDP socket on `ip` (ephemeral port) and starts the media task.
    pub fn start(config: ParticipantConfig, ip: IpAddr) -> Result<Self, PeerError> {
        Self::start_limited(config, ip, None)
    }

    /// Like [`Peer::start`], with the peer's downlink limited to `limit_bps` (a token-bucket
    /// [`crate::shaper::Shaper`] between the socket and the participant: a bottleneck link with
    /// a bounded queue; datagrams reach the participant when the shaper releases them).
    pub fn start_limited(
        config: ParticipantConfig,
        ip: IpAddr,
        limit_bps: Option<u64>,
    ) -> Result<Self, PeerError> {
        let socket = driver::bind_socket(ip)?;
        let local_addr = socket.local_addr()?;
        let participant = Participant::new(
            config,
            local_addr,
            Instant::now(),
            unix_now_us(),
            rand::random(),
        )?;
        let (tx, rx) = mpsc::channel(64);
        let (limit_tx, limit_rx) = watch::channel(limit_bps);
        let task = tokio::spawn(driver::run(participant, socket, rx, limit_rx));
        Ok(Self {
            local_addr,
            commands: tx,
            ingress_limit: limit_tx,
            task,
        })
    }

    /// The peer's UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs `f` on the participant inside the media task and returns its result.
    pub async fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Participant, Instant) -> R + Send + 'static,
    ) -> Result<R, PeerError> {
        let (tx, rx) = oneshot::channel();
        let cmd: Command = Box::new(move |p, now| {
            let _ = tx.send(f(p, now));
        });
        self.commands.send(cmd).await.map_err(|_| PeerError::Gone)?;
        rx.await.map_err(|_| PeerError::Gone)
    }

    /// Changes the downlink limit (`None` lifts it; what the shaper holds is delivered).
    pub fn set_ingress_limit(&self, bps: Option<u64>) {
        self.ingress_limit.send_replace(bps);
    }

    /// Statistics so far.
    pub async fn stats(&self) -> Result<ParticipantStats, PeerError> {
        self.with(|p, _| p.stats()).await
    }

    /// Waits until DTLS is up.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), PeerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.with(|p, _| p.is_connected()).await? {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(PeerError::NotConnected(timeout));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes the participant (DTLS close) and stops the media task.
    pub async fn shutdown(self) {
        let _ = self.with(|p, _| p.close()).await;
        drop(self.commands);
        let _ = self.task.await;
    }

    /// Vanishes without a word: stops the media task at once (no DTLS close), as a crashed
    /// client or a lost network would.
    pub fn vanish(self) {
        self.task.abort();
    }
}
