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
    let socket = UdpSocket::from_std(socket.into())?;
    stamps::enable(&socket);
    Ok(socket)
}

/// Kernel receive timestamps: when the kernel queued each datagram, not when this task got round
/// to reading it.
///
/// str0m reports each packet's arrival time back to the sender (transport-wide feedback), whose
/// bandwidth estimator (GCC) reads delay growth from it and measures its probes by it. Stamped
/// when read, a batch read after the task waited for a core (the load harness runs dozens of bots
/// on two shared cores) carried one time for packets that arrived over tens of ms: the SFU's
/// probes came out as received in zero time (rejected) and the wait read as queueing (the
/// estimate fell by GCC's back-off), so sessions on an idle loopback stayed below the top layer.
#[cfg(target_os = "linux")]
mod stamps {
    use std::io::{self, IoSliceMut};
    use std::net::SocketAddr;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use nix::sys::socket::{
        ControlMessageOwned, MsgFlags, SockaddrLike, SockaddrStorage, recvmsg, setsockopt, sockopt,
    };
    use nix::sys::time::TimeSpec;
    use tokio::io::Interest;
    use tokio::net::UdpSocket;

    /// Asks the kernel for receive timestamps (best effort: without them the read time is used).
    pub(super) fn enable(socket: &UdpSocket) {
        if let Err(e) = setsockopt(socket, sockopt::ReceiveTimestampns, &true) {
            tracing::debug!("SO_TIMESTAMPNS: {e}");
        }
    }

    /// Reads one datagram if one is queued: its length, source and kernel receive time (wall
    /// clock), if the kernel gave one.
    pub(super) fn recv(
        socket: &UdpSocket,
        buf: &mut [u8],
    ) -> io::Result<(usize, SocketAddr, Option<SystemTime>)> {
        socket.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(buf)];
            let mut space = nix::cmsg_space!(TimeSpec);
            let msg = recvmsg::<SockaddrStorage>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::empty(),
            )
            .map_err(io::Error::from)?;
            let stamp = msg
                .cmsgs()
                .ok()
                .into_iter()
                .flatten()
                .find_map(|c| match c {
                    ControlMessageOwned::ScmTimestampns(ts) => Some(
                        UNIX_EPOCH
                            + Duration::new(
                                ts.tv_sec().try_into().ok()?,
                                ts.tv_nsec().try_into().ok()?,
                            ),
                    ),
                    _ => None,
                });
            let from = msg.address.as_ref().and_then(socket_addr).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "datagram without an IP source")
            })?;
            Ok((msg.bytes, from, stamp))
        })
    }

    fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
        let _ = a.family()?;
        a.as_sockaddr_in()
            .map(|v| SocketAddr::V4((*v).into()))
            .or_else(|| a.as_sockaddr_in6().map(|v| SocketAddr::V6((*v).into())))
    }
}

#[cfg(not(target_os = "linux"))]
mod stamps {
    use std::io;
    use std::net::SocketAddr;
    use std::time::SystemTime;

    use tokio::net::UdpSocket;

    pub(super) fn enable(_: &UdpSocket) {}

    pub(super) fn recv(
        socket: &UdpSocket,
        buf: &mut [u8],
    ) -> io::Result<(usize, SocketAddr, Option<SystemTime>)> {
        let (n, from) = socket.try_recv_from(buf)?;
        Ok((n, from, None))
    }
}

/// The arrival time of a datagram the kernel stamped at `stamp` (wall clock), read at `now` /
/// `wall` (the same moment on both clocks), never before `floor` (the latest time str0m was given:
/// its clock must not go back). Without a stamp, or with one from the future (the wall clock
/// stepped), `now`.
fn arrival(stamp: Option<SystemTime>, now: Instant, wall: SystemTime, floor: Instant) -> Instant {
    let waited = stamp.and_then(|s| wall.duration_since(s).ok());
    let at = waited.and_then(|w| now.checked_sub(w)).unwrap_or(now);
    at.clamp(floor.min(now), now)
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
    // The latest time the participant (str0m) was given (see `arrival`).
    let mut clock = Instant::now();
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
            r = socket.readable() => match r {
                Ok(()) => {
                    let now = Instant::now();
                    let wall = SystemTime::now();
                    // What is queued (up to 65 datagrams) without going back through select.
                    for _ in 0..65 {
                        match stamps::recv(&socket, &mut buf) {
                            Ok((n, from, stamp)) => {
                                let at = arrival(stamp, now, wall, clock);
                                clock = at;
                                receive(&mut p, shaper.as_mut(), at, now, from, &buf[..n]);
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => {
                                debug!("udp recv error: {e}");
                                break;
                            }
                        }
                    }
                    release(&mut p, shaper.as_mut());
                    clock = Instant::now();
                    p.handle_timeout(clock);
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
                    clock = now;
                    p.handle_timeout(now);
                }
                Err(_) => limit_open = false,
            },
            c = commands.recv() => match c {
                Some(f) => {
                    let now = Instant::now();
                    clock = now;
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
                clock = Instant::now();
                p.handle_timeout(clock);
            }
        }
    }
    flush(&mut p, &socket);
}

/// A datagram from the socket that arrived at `at` (see `arrival`), read at `now`: straight to
/// the participant, or into the shaper (which releases it later, at its own time).
fn receive(
    p: &mut Participant,
    shaper: Option<&mut Shaper>,
    at: Instant,
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
        None => p.handle_datagram_at(at, now, from, bytes),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn arrival_is_the_kernel_time_on_the_monotonic_clock_never_before_the_floor() {
        let now = Instant::now() + Duration::from_secs(10);
        let wall = SystemTime::now();
        let ms = Duration::from_millis;
        // Queued 30 ms before it was read: 30 ms before `now`.
        assert_eq!(
            arrival(Some(wall - ms(30)), now, wall, now - ms(100)),
            now - ms(30)
        );
        // ... but never before what str0m saw last.
        assert_eq!(
            arrival(Some(wall - ms(30)), now, wall, now - ms(20)),
            now - ms(20)
        );
        // No stamp, or one from the future (the wall clock stepped back): `now`.
        assert_eq!(arrival(None, now, wall, now - ms(100)), now);
        assert_eq!(arrival(Some(wall + ms(5)), now, wall, now - ms(100)), now);
        // A floor after `now` (it cannot be; still no panic): `now`.
        assert_eq!(arrival(Some(wall - ms(30)), now, wall, now + ms(1)), now);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_kernel_stamps_a_datagram_when_it_arrives_not_when_it_is_read() {
        let rx = bind_socket("127.0.0.1".parse().unwrap()).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        // The kernel turns receive stamping on lazily (a deferred work item, the first time any
        // socket asks for it): until then a datagram is stamped when it is read. Give it time,
        // and read one datagram first, so the one below is stamped on arrival.
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send_to(b"warm", to).unwrap();
        rx.readable().await.unwrap();
        let mut buf = [0u8; 64];
        let (n, _, _) = stamps::recv(&rx, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"warm");
        let before = SystemTime::now();
        tx.send_to(b"one", to).unwrap();
        // Read 50 ms later.
        tokio::time::sleep(Duration::from_millis(50)).await;
        rx.readable().await.unwrap();
        let read_at = SystemTime::now();
        let (n, from, stamp) = stamps::recv(&rx, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"one");
        assert_eq!(from, tx.local_addr().unwrap());
        let stamp = stamp.expect("SO_TIMESTAMPNS gives a stamp");
        assert!(
            stamp >= before - Duration::from_millis(1),
            "{stamp:?} {before:?}"
        );
        assert!(
            read_at.duration_since(stamp).unwrap_or_default() >= Duration::from_millis(45),
            "stamped when read, not when it arrived: {stamp:?} read at {read_at:?}"
        );
        // Nothing more: WouldBlock.
        let e = stamps::recv(&rx, &mut buf).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    }
}
