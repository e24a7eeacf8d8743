//! The tokio driver: one task that owns a [`Participant`] and its UDP socket.
//!
//! The task waits for the first of: a datagram, a command from the [`crate::Bot`] handle, or the
//! participant's next wakeup; feeds it to the participant; and sends whatever the participant put in its
//! outbox. Commands are closures run on the participant, so the handle can do any SDP step without the
//! driver knowing about signaling.
//!
//! An optional ingress limit (changeable at runtime through a watch channel) puts a
//! [`Shaper`] between the socket and the participant: a bottleneck link in front of the bot.

use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::debug;

use crate::participant::Participant;
use crate::shaper::Shaper;

/// A closure run by the driver on its participant.
pub(crate) type Command = Box<dyn FnOnce(&mut Participant, Instant) + Send>;

/// Microseconds since the Unix epoch now.
pub fn unix_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Bind a UDP socket on `ip` (ephemeral port) with generous buffers.
pub(crate) fn bind_socket(ip: IpAddr) -> std::io::Result<UdpSocket> {
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

/// Run the participant until the command channel closes or a command closes the participant.
pub(crate) async fn run(
    mut p: Participant,
    socket: UdpSocket,
    mut commands: mpsc::Receiver<Command>,
    mut ingress_limit: watch::Receiver<Option<u64>>,
) {
    let mut buf = vec![0u8; 2048];
    let mut shaper = (*ingress_limit.borrow_and_update()).map(|r| Shaper::new(r, Instant::now()));
    let mut limit_open = true;
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
                    let now = Instant::now();
                    receive(&mut p, shaper.as_mut(), now, from, &buf[..n]);
                    // Take what else is queued without going back through select.
                    for _ in 0..64 {
                        match socket.try_recv_from(&mut buf) {
                            Ok((n, from)) => receive(&mut p, shaper.as_mut(), now, from, &buf[..n]),
                            Err(_) => break,
                        }
                    }
                    release(&mut p, shaper.as_mut());
                    p.handle_timeout(Instant::now());
                }
                Err(e) => debug!("udp recv error: {e}"),
            },
            r = ingress_limit.changed(), if limit_open => match r {
                Ok(()) => {
                    let now = Instant::now();
                    let limit = *ingress_limit.borrow_and_update();
                    match (limit, shaper.as_mut()) {
                        (Some(rate), Some(s)) => s.set_rate(rate, now),
                        (Some(rate), None) => shaper = Some(Shaper::new(rate, now)),
                        (None, Some(s)) => {
                            for (from, bytes) in s.drain() {
                                p.handle_datagram(now, from, &bytes);
                            }
                            shaper = None;
                        }
                        (None, None) => {}
                    }
                    p.handle_timeout(now);
                }
                Err(_) => limit_open = false,
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

/// A datagram from the socket: straight to the participant, or into the shaper.
fn receive(
    p: &mut Participant,
    shaper: Option<&mut Shaper>,
    now: Instant,
    from: SocketAddr,
    bytes: &[u8],
) {
    match shaper {
        Some(s) => {
            if !s.push(now, from, bytes.to_vec()) {
                p.note_ingress_drop();
            }
        }
        None => p.handle_datagram(now, from, bytes),
    }
}

/// Hands the datagrams the shaper lets through now to the participant.
fn release(p: &mut Participant, shaper: Option<&mut Shaper>) {
    let Some(s) = shaper else { return };
    let now = Instant::now();
    while let Some((from, bytes)) = s.pop_due(now) {
        p.handle_datagram(now, from, &bytes);
    }
}

fn flush(p: &mut Participant, socket: &UdpSocket) {
    let mut errors = 0;
    for (_src, dst, bytes) in p.take_outbox() {
        if let Err(e) = socket.try_send_to(&bytes, dst) {
            debug!("udp send to {dst} failed: {e}");
            errors += 1;
        }
    }
    for _ in 0..errors {
        p.note_send_error();
    }
}
