//! The UDP driver: the one socket every session shares.
//!
//! One task receives datagrams and routes each to the shard owning its session — by remote
//! address for known flows (the fast path), by the ufrag in a STUN binding request for new ones.
//! An address is only learnt from a shard after its session has *sent* to it, which str0m does
//! only after checking a STUN request's integrity, so a spoofed request cannot steal a flow.
//! An ICE restart replaces a session's ufrag ([`UdpControl::ReplaceUfrag`]) and keeps its
//! routes until the new path is up; then the unused ones are forgotten ([`UdpControl::Unroute`],
//! see [`crate::routes`]).
//! Everything else is counted as a drop. Reads are batched (`recvmmsg`); shards send directly on
//! the shared socket, in batches grouped per destination ([`crate::egress`], UDP GSO), and single
//! datagrams to many peers with one `sendmmsg`.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
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
/// supports it), through `quinn-udp`.
#[derive(Debug)]
pub struct UdpIo {
    socket: Arc<UdpSocket>,
    state: UdpSocketState,
    /// Whether the socket is IPv6 (IPv4 destinations are then sent as IPv4-mapped).
    ipv6: bool,
}

impl UdpIo {
    /// Wraps a bound socket and sizes its kernel buffers.
    pub fn new(socket: Arc<UdpSocket>) -> std::io::Result<UdpIo> {
        let state = UdpSocketState::new((&*socket).into())?;
        for (what, result) in [
            (
                "receive",
                state.set_recv_buffer_size((&*socket).into(), SOCKET_BUFFER),
            ),
            (
                "send",
                state.set_send_buffer_size((&*socket).into(), SOCKET_BUFFER),
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
        self.state.try_send((&*self.socket).into(), &transmit)
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
            match rustix::net::sendmmsg(&*self.socket, rest, SendFlags::DONTWAIT) {
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

/// Receives until the task is aborted.
pub async fn run_receiver(
    io: Arc<UdpIo>,
    candidates: Vec<SocketAddr>,
    mut control: mpsc::UnboundedReceiver<UdpControl>,
    shards: Vec<mpsc::Sender<ShardMsg>>,
    metrics: Metrics,
) {
    let mut demux = Demux::default();
    // With UDP GRO the kernel may hand over several datagrams of one peer in one buffer, up to
    // its GRO limit of segments: size every buffer for that.
    let slot = 2048 * io.state.gro_segments().max(1);
    let mut bufs: Vec<Vec<u8>> = (0..RECV_BATCH).map(|_| vec![0u8; slot]).collect();
    let mut meta = vec![RecvMeta::default(); RECV_BATCH];
    loop {
        tokio::select! {
            biased;
            ctl = control.recv() => match ctl {
                Some(ctl) => demux.apply(ctl),
                None => return,
            },
            ready = io.socket.readable() => {
                if let Err(e) = ready {
                    tracing::warn!("udp socket failed: {e}");
                    return;
                }
                for _ in 0..RECV_ROUNDS {
                    let mut slices: Vec<IoSliceMut<'_>> =
                        bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                    let received = io.socket.try_io(Interest::READABLE, || {
                        io.state.recv((&*io.socket).into(), &mut slices, &mut meta)
                    });
                    drop(slices);
                    let n = match received {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            tracing::debug!("udp receive error: {e}");
                            break;
                        }
                    };
                    let now = Instant::now();
                    for (m, buf) in meta.iter().zip(&bufs).take(n) {
                        let stride = if m.stride == 0 { m.len } else { m.stride };
                        for data in buf[..m.len.min(buf.len())].chunks(stride.max(1)) {
                            route_datagram(&mut demux, &candidates, &shards, &metrics, m.addr, data, now);
                        }
                    }
                }
            }
        }
    }
}

/// Hands one received datagram to the shard owning its session, or counts why not.
fn route_datagram(
    demux: &mut Demux,
    candidates: &[SocketAddr],
    shards: &[mpsc::Sender<ShardMsg>],
    metrics: &Metrics,
    source: SocketAddr,
    data: &[u8],
    received: Instant,
) {
    metrics.packets_in.inc();
    metrics.bytes_in.inc_by(data.len() as u64);
    match demux.route(source, data) {
        Ok((session, shard)) => {
            let d = Datagram {
                session,
                source,
                destination: local_for(candidates, source),
                data: data.to_vec(),
                received,
                proto: str0m::net::Protocol::Udp,
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
        Err(reason) => metrics.drop(reason),
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
