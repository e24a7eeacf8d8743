//! The UDP driver: the one socket every session shares.
//!
//! One task receives datagrams and routes each to the shard owning its session — by remote
//! address for known flows (the fast path), by the ufrag in a STUN binding request for new ones.
//! An address is only learnt from a shard after its session has *sent* to it, which str0m does
//! only after checking a STUN request's integrity, so a spoofed request cannot steal a flow.
//! Everything else is counted as a drop. Shards send directly on the shared socket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::ids::{SessionId, ShardId};
use crate::metrics::Metrics;
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
    ) -> Result<(SessionId, ShardId), &'static str> {
        if let Some(r) = self.by_addr.get(&source) {
            return Ok(*r);
        }
        match stun::local_ufrag(data) {
            Ok(ufrag) => self.by_ufrag.get(ufrag).copied().ok_or("unknown_ufrag"),
            Err(StunError::NotStun) => Err("unknown_source"),
            Err(StunError::Truncated) => Err("malformed_stun"),
            Err(StunError::NotBindingRequest) => Err("unexpected_stun"),
            Err(StunError::NoUsername) => Err("malformed_stun"),
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

/// Receives until the task is aborted.
pub async fn run_receiver(
    socket: Arc<UdpSocket>,
    candidates: Vec<SocketAddr>,
    mut control: mpsc::UnboundedReceiver<UdpControl>,
    shards: Vec<mpsc::Sender<ShardMsg>>,
    metrics: Metrics,
) {
    let mut demux = Demux::default();
    let mut buf = vec![0u8; 2048];
    loop {
        tokio::select! {
            biased;
            ctl = control.recv() => match ctl {
                Some(ctl) => demux.apply(ctl),
                None => return,
            },
            received = socket.recv_from(&mut buf) => {
                let (n, source) = match received {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::debug!("udp receive error: {e}");
                        continue;
                    }
                };
                metrics.packets_in.inc();
                metrics.bytes_in.inc_by(n as u64);
                let data = &buf[..n];
                match demux.route(source, data) {
                    Ok((session, shard)) => {
                        let d = Datagram {
                            session,
                            source,
                            destination: local_for(&candidates, source),
                            data: data.to_vec(),
                            received: Instant::now(),
                        };
                        match shards.get(shard) {
                            Some(tx) => {
                                if tx.try_send(ShardMsg::Datagram(d)).is_err() {
                                    metrics.drop_reason("shard_queue_full");
                                }
                            }
                            None => metrics.drop_reason("unknown_shard"),
                        }
                    }
                    Err(reason) => metrics.drop_reason(reason),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun_request(ufrag: &str) -> Vec<u8> {
        let user = format!("{ufrag}:remote");
        let mut attr = Vec::new();
        attr.extend_from_slice(&6u16.to_be_bytes());
        attr.extend_from_slice(&(user.len() as u16).to_be_bytes());
        attr.extend_from_slice(user.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut m = vec![0, 1];
        m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        m.extend_from_slice(&0x2112_A442u32.to_be_bytes());
        m.extend_from_slice(&[0; 12]);
        m.extend_from_slice(&attr);
        m
    }

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
        assert_eq!(d.route(a, &stun_request("zzzz")), Err("unknown_ufrag"));
        assert_eq!(d.route(a, &[0x80, 0, 0, 0]), Err("unknown_source"));
        d.apply(UdpControl::Route {
            addr: a,
            session: s,
            shard: 0,
        });
        assert_eq!(d.route(a, &[0x80, 0, 0, 0]), Ok((s, 0)));
        d.apply(UdpControl::Unregister { session: s });
        assert_eq!(d.route(a, &[0x80, 0, 0, 0]), Err("unknown_source"));
        assert_eq!(d.route(a, &stun_request("abcd")), Err("unknown_ufrag"));
        assert_eq!(d.routed_addrs(), 0);
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
