//! A load bot's media side: one [`Participant`] (the bot crate's sans-IO str0m core) driven by a
//! tokio task that owns its UDP socket.
//!
//! Signaling is not this module's business: the Satsuma and Janus clients ([`crate::satsuma`],
//! [`crate::janus`]) and the direct baseline pairs ([`crate::worker`]) run SDP steps on the
//! participant through [`Peer::with`]. Every bot in a run uses this same driver, whichever SFU it
//! talks to, so the two SFUs are measured with identical clients.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use satsuma_bot::ParticipantConfig;
use satsuma_bot::participant::{Participant, ParticipantStats, SignalingError};
use satsuma_bot::shaper::Shaper;
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::debug;

/// Errors of the peer driver.
#[derive(Debug, Error)]
pub enum PeerError {
    /// Socket setup failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// An SDP step failed.
    #[error(transparent)]
    Signaling(#[from] SignalingError),
    /// The media task has stopped.
    #[error("the peer's media task has stopped")]
    Gone,
    /// DTLS did not come up in time.
    #[error("not connected after {0:?}")]
    NotConnected(Duration),
}

type Command = Box<dyn FnOnce(&mut Participant, Instant) + Send>;

/// A running participant: handle to its media task.
#[derive(Debug)]
pub struct Peer {
    local_addr: SocketAddr,
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

/// Microseconds since the Unix epoch now (bots in one host share this clock).
pub fn unix_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Peer {
    /// Bind a UDP socket on `ip` and start the media task.
    pub fn start(config: ParticipantConfig, ip: IpAddr) -> Result<Self, PeerError> {
        Self::start_limited(config, ip, None)
    }

    /// Like [`Peer::start`], with the peer's downlink limited to `limit_bps` (the bot crate's
    /// token-bucket [`Shaper`] between the socket and the participant: a bottleneck link with a
    /// bounded queue; datagrams reach the participant when the shaper releases them).
    pub fn start_limited(
        config: ParticipantConfig,
        ip: IpAddr,
        limit_bps: Option<u64>,
    ) -> Result<Self, PeerError> {
        let socket = bind_socket(ip)?;
        let local_addr = socket.local_addr()?;
        let participant = Participant::new(
            config,
            local_addr,
            Instant::now(),
            unix_now_us(),
            rand::random(),
        )?;
        let (tx, rx) = mpsc::channel(16);
        let shaper = limit_bps.map(|bps| Shaper::new(bps, Instant::now()));
        let task = tokio::spawn(run(participant, socket, rx, shaper));
        Ok(Self {
            local_addr,
            commands: tx,
            task,
        })
    }

    /// The peer's UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Run `f` on the participant inside the media task and return its result.
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

    /// Statistics so far.
    pub async fn stats(&self) -> Result<ParticipantStats, PeerError> {
        self.with(|p, _| p.stats()).await
    }

    /// Wait until DTLS is up.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), PeerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.with(|p, _| p.is_connected()).await? {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(PeerError::NotConnected(timeout));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stop the media task.
    pub async fn shutdown(self) {
        let _ = self.with(|p, _| p.close()).await;
        drop(self.commands);
        let _ = self.task.await;
    }
}

fn bind_socket(ip: IpAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(ip, 0);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

async fn run(
    mut p: Participant,
    socket: UdpSocket,
    mut commands: mpsc::Receiver<Command>,
    mut shaper: Option<Shaper>,
) {
    let mut buf = vec![0u8; 2048];
    loop {
        flush(&mut p, &socket);
        if !p.is_alive() {
            break;
        }
        let mut wake = p.next_wakeup();
        if let Some(at) = shaper.as_ref().and_then(Shaper::next_release) {
            wake = wake.min(at);
        }
        let wake = tokio::time::Instant::from_std(wake);
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    receive(&mut p, shaper.as_mut(), from, &buf[..n]);
                    for _ in 0..64 {
                        match socket.try_recv_from(&mut buf) {
                            Ok((n, from)) => receive(&mut p, shaper.as_mut(), from, &buf[..n]),
                            Err(_) => break,
                        }
                    }
                    release(&mut p, shaper.as_mut());
                    p.handle_timeout(Instant::now());
                }
                Err(e) => debug!("udp recv error: {e}"),
            },
            c = commands.recv() => match c {
                Some(f) => {
                    let now = Instant::now();
                    f(&mut p, now);
                    p.handle_timeout(now);
                }
                None => {
                    p.close();
                    break;
                }
            },
            _ = tokio::time::sleep_until(wake) => {
                release(&mut p, shaper.as_mut());
                p.handle_timeout(Instant::now());
            }
        }
    }
    flush(&mut p, &socket);
}

/// A datagram from the socket: to the participant at once, or into the shaper's queue.
fn receive(p: &mut Participant, shaper: Option<&mut Shaper>, from: SocketAddr, bytes: &[u8]) {
    let now = Instant::now();
    match shaper {
        Some(s) => {
            if !s.push(now, from, bytes.to_vec()) {
                p.note_ingress_drop();
            }
        }
        None => p.handle_datagram(now, from, bytes),
    }
}

/// Hands what the shaper lets through now to the participant, arriving now.
fn release(p: &mut Participant, shaper: Option<&mut Shaper>) {
    let Some(s) = shaper else { return };
    let now = Instant::now();
    while let Some((from, bytes)) = s.pop_due(now) {
        p.handle_datagram(now, from, &bytes);
    }
}

fn flush(p: &mut Participant, socket: &UdpSocket) {
    for (_src, dst, bytes) in p.take_outbox() {
        if let Err(e) = socket.try_send_to(&bytes, dst) {
            debug!("udp send to {dst} failed: {e}");
        }
    }
}
