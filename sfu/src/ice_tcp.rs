//! ICE-TCP without I/O: RFC 4571 framing and the life of one passive TCP connection (RFC 6544).
//!
//! Over TCP every STUN, DTLS, RTP and RTCP packet travels as one *frame*: a 2-byte big-endian
//! length, then that many bytes. [`Deframer`] turns the arbitrary chunks a socket read returns
//! into whole frames; [`frame_into`] writes one. [`Conn`] decides what a connection may do:
//!
//! * its first routable frame must be a STUN binding request whose USERNAME names a session's
//!   ufrag ([`UfragRoutes`]); the connection then belongs to that session for good;
//! * until the session has *sent* on it (str0m answers a binding request only once its
//!   MESSAGE-INTEGRITY checks out), only STUN goes through, and only for
//!   [`ConnTimeouts::handshake`];
//! * a frame that is empty, longer than the maximum, or not STUN, DTLS, RTP or RTCP by its
//!   first byte (RFC 7983) is garbage: the connection is closed, and only that one;
//! * with no frame either way for [`ConnTimeouts::idle`], it is closed.
//!
//! [`ConnCounter`] bounds connections per source IP and in total. The driver is
//! [`crate::tcp`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::ids::{SessionId, ShardId};
use crate::metrics::PacketDrop;
use crate::stun::{self, StunError};
use crate::udp::UdpControl;

/// Length of the RFC 4571 length prefix.
pub const PREFIX: usize = 2;

/// Largest frame accepted from a peer by default. WebRTC keeps every packet under the path MTU
/// (browsers send at most about 1200-1500 bytes); a longer length prefix means the stream is
/// not ICE-TCP.
pub const DEFAULT_MAX_FRAME: usize = 4096;

/// Why a byte stream or a frame is refused. Each closes the connection it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A length prefix above the maximum frame size.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    Oversize {
        /// Announced length.
        len: usize,
        /// Maximum.
        max: usize,
    },
    /// A zero-length frame (no ICE-TCP packet is empty).
    #[error("empty frame")]
    Empty,
    /// A frame that is not STUN, DTLS, RTP or RTCP.
    #[error("frame is not STUN, DTLS, RTP or RTCP (first byte {0:#04x})")]
    Garbage(u8),
    /// An outgoing packet too long for a 2-byte length.
    #[error("packet of {0} bytes does not fit a frame")]
    TooLong(usize),
}

/// Splits a TCP byte stream into RFC 4571 frames. Feed it whatever a read returned
/// ([`Deframer::push`]), then take frames ([`Deframer::next_frame`]) until it returns
/// `Ok(None)`. Holds at most one partial frame plus the last chunk.
#[derive(Debug)]
pub struct Deframer {
    buf: Vec<u8>,
    start: usize,
    max_frame: usize,
}

impl Deframer {
    /// A deframer that refuses frames longer than `max_frame` bytes (at most 65535).
    pub fn new(max_frame: usize) -> Deframer {
        Deframer {
            buf: Vec::new(),
            start: 0,
            max_frame: max_frame.min(usize::from(u16::MAX)),
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed, or an error (the stream is
    /// broken: close it). A frame's length is checked as soon as its prefix arrived.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let rest = &self.buf[self.start..];
        let [hi, lo, ..] = *rest else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max_frame {
            return Err(FrameError::Oversize {
                len,
                max: self.max_frame,
            });
        }
        if rest.len() < PREFIX + len {
            return Ok(None);
        }
        let from = self.start + PREFIX;
        self.start = from + len;
        Ok(Some(&self.buf[from..from + len]))
    }

    /// Bytes held that are not yet a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// Appends `packet` as one frame to `out`.
pub fn frame_into(out: &mut Vec<u8>, packet: &[u8]) -> Result<(), FrameError> {
    let len = u16::try_from(packet.len()).map_err(|_| FrameError::TooLong(packet.len()))?;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet);
    Ok(())
}

/// What a frame carries, by its first byte (RFC 7983).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// STUN (0-3).
    Stun,
    /// DTLS (20-63).
    Dtls,
    /// RTP or RTCP (128-191).
    Rtp,
}

/// Classifies a frame; anything else is garbage.
pub fn classify(frame: &[u8]) -> Result<FrameKind, FrameError> {
    match frame.first() {
        None => Err(FrameError::Empty),
        Some(0..=3) => Ok(FrameKind::Stun),
        Some(20..=63) => Ok(FrameKind::Dtls),
        Some(128..=191) => Ok(FrameKind::Rtp),
        Some(&b) => Err(FrameError::Garbage(b)),
    }
}

/// Our ufrags → their sessions, kept up to date from the same [`UdpControl`] messages the UDP
/// driver gets (with the same meaning: an ICE restart's `ReplaceUfrag` makes the new ufrag
/// route and the old one stop).
#[derive(Debug, Default)]
pub struct UfragRoutes {
    by_ufrag: HashMap<String, (SessionId, ShardId)>,
    by_session: HashMap<SessionId, String>,
}

impl UfragRoutes {
    /// Applies a routing change (address routes are the UDP driver's business: a TCP
    /// connection is routed by its first binding request).
    pub fn apply(&mut self, ctl: &UdpControl) {
        match ctl {
            UdpControl::Register {
                ufrag,
                session,
                shard,
            } => self.set(ufrag, *session, *shard),
            UdpControl::ReplaceUfrag {
                ufrag,
                session,
                shard,
            } => {
                if self.by_session.contains_key(session) {
                    self.set(ufrag, *session, *shard);
                }
            }
            UdpControl::Unregister { session } => {
                if let Some(old) = self.by_session.remove(session) {
                    self.forget(&old, *session);
                }
            }
            UdpControl::Route { .. } | UdpControl::Unroute { .. } => {}
        }
    }

    fn set(&mut self, ufrag: &str, session: SessionId, shard: ShardId) {
        if let Some(old) = self.by_session.insert(session, ufrag.to_owned())
            && old != ufrag
        {
            self.forget(&old, session);
        }
        self.by_ufrag.insert(ufrag.to_owned(), (session, shard));
    }

    /// Unmaps `ufrag` unless another session owns it by now.
    fn forget(&mut self, ufrag: &str, session: SessionId) {
        if self.by_ufrag.get(ufrag).is_some_and(|(s, _)| *s == session) {
            self.by_ufrag.remove(ufrag);
        }
    }

    /// The session a STUN binding request is for, or the drop reason.
    pub fn route(&self, frame: &[u8]) -> Result<(SessionId, ShardId), PacketDrop> {
        match stun::local_ufrag(frame) {
            Ok(ufrag) => self
                .by_ufrag
                .get(ufrag)
                .copied()
                .ok_or(PacketDrop::UnknownUfrag),
            Err(StunError::NotStun) => Err(PacketDrop::TcpUnverified),
            Err(StunError::Truncated | StunError::NoUsername) => Err(PacketDrop::MalformedStun),
            Err(StunError::NotBindingRequest) => Err(PacketDrop::UnexpectedStun),
        }
    }

    /// Number of routable ufrags (for tests).
    pub fn len(&self) -> usize {
        self.by_ufrag.len()
    }

    /// Whether no ufrag is routable.
    pub fn is_empty(&self) -> bool {
        self.by_ufrag.is_empty()
    }
}

/// How long a connection may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnTimeouts {
    /// From accept until its session has sent on it (an authenticated binding request was
    /// answered).
    pub handshake: Duration,
    /// Without a frame in either direction, once established.
    pub idle: Duration,
}

impl Default for ConnTimeouts {
    fn default() -> Self {
        ConnTimeouts {
            handshake: Duration::from_secs(5),
            idle: Duration::from_secs(30),
        }
    }
}

/// Why a connection was closed (the `reason` label of
/// `satsuma_sfu_tcp_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The peer closed it (or reset it).
    PeerClosed,
    /// A garbage, empty or oversize frame.
    BadFrame,
    /// Not established within the handshake timeout.
    HandshakeTimeout,
    /// No frame either way for the idle timeout.
    Idle,
    /// Its session is gone, or the server stops.
    SessionGone,
    /// A socket error.
    IoError,
}

impl CloseReason {
    /// Every reason, in label order.
    pub const ALL: [CloseReason; 6] = [
        CloseReason::PeerClosed,
        CloseReason::BadFrame,
        CloseReason::HandshakeTimeout,
        CloseReason::Idle,
        CloseReason::SessionGone,
        CloseReason::IoError,
    ];

    /// The `reason` label.
    pub const fn label(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::BadFrame => "bad_frame",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::Idle => "idle",
            CloseReason::SessionGone => "session_gone",
            CloseReason::IoError => "io_error",
        }
    }
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// No STUN request has named a session yet.
    Unclaimed,
    /// A binding request named this session; it has not answered on this connection yet.
    Claimed(SessionId, ShardId),
    /// The session has sent on this connection.
    Established(SessionId, ShardId),
}

/// What to do with one received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to this session on this shard.
    Deliver(SessionId, ShardId),
    /// Drop it (count the reason) and keep the connection.
    Drop(PacketDrop),
    /// Close the connection.
    Close(FrameError),
}

/// One connection's state machine (see the module docs).
#[derive(Debug)]
pub struct Conn {
    state: ConnState,
    accepted: Instant,
    last_activity: Instant,
    timeouts: ConnTimeouts,
}

impl Conn {
    /// A connection accepted at `now`.
    pub fn new(now: Instant, timeouts: ConnTimeouts) -> Conn {
        Conn {
            state: ConnState::Unclaimed,
            accepted: now,
            last_activity: now,
            timeouts,
        }
    }

    /// Where it stands.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// Decides what happens to a frame received at `now`; `routes` finds the session of a
    /// binding request.
    pub fn on_frame(
        &mut self,
        frame: &[u8],
        now: Instant,
        routes: impl FnOnce(&[u8]) -> Result<(SessionId, ShardId), PacketDrop>,
    ) -> Verdict {
        let kind = match classify(frame) {
            Ok(k) => k,
            Err(e) => return Verdict::Close(e),
        };
        match self.state {
            ConnState::Unclaimed => {
                if kind != FrameKind::Stun {
                    return Verdict::Close(FrameError::Garbage(frame[0]));
                }
                match routes(frame) {
                    Ok((session, shard)) => {
                        self.state = ConnState::Claimed(session, shard);
                        self.last_activity = now;
                        Verdict::Deliver(session, shard)
                    }
                    Err(reason) => Verdict::Drop(reason),
                }
            }
            ConnState::Claimed(session, shard) => {
                if kind != FrameKind::Stun {
                    return Verdict::Drop(PacketDrop::TcpUnverified);
                }
                self.last_activity = now;
                Verdict::Deliver(session, shard)
            }
            ConnState::Established(session, shard) => {
                self.last_activity = now;
                Verdict::Deliver(session, shard)
            }
        }
    }

    /// The session sent a frame on this connection at `now`: it is established.
    pub fn on_sent(&mut self, now: Instant) {
        if let ConnState::Claimed(session, shard) = self.state {
            self.state = ConnState::Established(session, shard);
        }
        self.last_activity = now;
    }

    /// When [`Conn::check`] should run next.
    pub fn deadline(&self) -> Instant {
        match self.state {
            ConnState::Established(..) => self.last_activity + self.timeouts.idle,
            _ => self.accepted + self.timeouts.handshake,
        }
    }

    /// Whether the connection must close at `now`.
    pub fn check(&self, now: Instant) -> Option<CloseReason> {
        if now < self.deadline() {
            return None;
        }
        Some(match self.state {
            ConnState::Established(..) => CloseReason::Idle,
            _ => CloseReason::HandshakeTimeout,
        })
    }
}

/// Why a new connection was refused (the `reason` label of
/// `satsuma_sfu_tcp_connections_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source IP holds the most connections allowed.
    PerIp,
    /// The server holds the most connections allowed.
    Total,
    /// A connection from the same address and port is open (to another of our addresses).
    Duplicate,
}

impl Refusal {
    /// Every refusal, in label order.
    pub const ALL: [Refusal; 3] = [Refusal::PerIp, Refusal::Total, Refusal::Duplicate];

    /// The `reason` label.
    pub const fn label(self) -> &'static str {
        match self {
            Refusal::PerIp => "per_ip",
            Refusal::Total => "total",
            Refusal::Duplicate => "duplicate",
        }
    }
}

/// Open connections per source IP and in total, against their caps.
#[derive(Debug)]
pub struct ConnCounter {
    per_ip: HashMap<IpAddr, usize>,
    total: usize,
    max_per_ip: usize,
    max_total: usize,
}

impl ConnCounter {
    /// A counter allowing `max_per_ip` connections per IP and `max_total` in all.
    pub fn new(max_per_ip: usize, max_total: usize) -> ConnCounter {
        ConnCounter {
            per_ip: HashMap::new(),
            total: 0,
            max_per_ip,
            max_total,
        }
    }

    /// Counts a new connection from `ip`, or says why it is refused.
    pub fn acquire(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        if self.total >= self.max_total {
            return Err(Refusal::Total);
        }
        let n = self.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refusal::PerIp);
        }
        *n += 1;
        self.total += 1;
        Ok(())
    }

    /// Forgets a connection from `ip` counted by [`ConnCounter::acquire`].
    pub fn release(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
            self.total = self.total.saturating_sub(1);
        }
    }

    /// Open connections.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Open connections from `ip`.
    pub fn from_ip(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::test_support::binding_request_to as stun_request;
    use proptest::prelude::*;

    fn frames(packets: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in packets {
            frame_into(&mut out, p).unwrap();
        }
        out
    }

    fn drain(d: &mut Deframer) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut out = Vec::new();
        while let Some(f) = d.next_frame()? {
            out.push(f.to_vec());
        }
        Ok(out)
    }

    #[test]
    fn frames_come_out_whole_whatever_the_chunks() {
        let stream = frames(&[b"\x00\x01abc", &[0x80; 300], &[22; 5]]);
        let mut d = Deframer::new(DEFAULT_MAX_FRAME);
        let mut got = Vec::new();
        for b in &stream {
            d.push(std::slice::from_ref(b));
            got.extend(drain(&mut d).unwrap());
        }
        assert_eq!(
            got,
            vec![b"\x00\x01abc".to_vec(), vec![0x80; 300], vec![22; 5]]
        );
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn oversize_and_empty_frames_are_errors_as_soon_as_the_prefix_arrives() {
        let mut d = Deframer::new(1500);
        d.push(&[0x05, 0xdd]);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::Oversize {
                len: 1501,
                max: 1500
            })
        );
        let mut d = Deframer::new(1500);
        d.push(&[0x05, 0xdc]);
        assert_eq!(
            d.next_frame(),
            Ok(None),
            "1500 is allowed; wait for its bytes"
        );
        let mut d = Deframer::new(1500);
        d.push(&[0, 0, 1]);
        assert_eq!(d.next_frame(), Err(FrameError::Empty));
        let mut d = Deframer::new(1_000_000);
        d.push(&[0xff, 0xff]);
        assert_eq!(d.next_frame(), Ok(None), "the cap is 65535 at most");
    }

    #[test]
    fn framing_refuses_what_no_prefix_can_carry() {
        let mut out = Vec::new();
        assert_eq!(
            frame_into(&mut out, &vec![0; 65_536]),
            Err(FrameError::TooLong(65_536))
        );
        assert_eq!(frame_into(&mut out, &[]), Err(FrameError::Empty));
        assert!(out.is_empty());
        frame_into(&mut out, &vec![7; 65_535]).unwrap();
        assert_eq!(&out[..2], &[0xff, 0xff]);
    }

    #[test]
    fn classifies_by_first_byte() {
        assert_eq!(classify(&[0]), Ok(FrameKind::Stun));
        assert_eq!(classify(&[22]), Ok(FrameKind::Dtls));
        assert_eq!(classify(&[0x80]), Ok(FrameKind::Rtp));
        assert_eq!(classify(b"G"), Err(FrameError::Garbage(b'G')));
        assert_eq!(classify(&[0xff]), Err(FrameError::Garbage(0xff)));
        assert_eq!(classify(&[]), Err(FrameError::Empty));
    }

    fn routes() -> UfragRoutes {
        let mut r = UfragRoutes::default();
        r.apply(&UdpControl::Register {
            ufrag: "abcd".into(),
            session: SessionId([1; 16]),
            shard: 3,
        });
        r
    }

    #[test]
    fn a_connection_is_claimed_by_stun_then_established_by_a_reply() {
        let r = routes();
        let t0 = Instant::now();
        let mut c = Conn::new(t0, ConnTimeouts::default());
        let s = SessionId([1; 16]);
        // Unknown ufrag: dropped, still unclaimed.
        assert_eq!(
            c.on_frame(&stun_request("zzzz"), t0, |f| r.route(f)),
            Verdict::Drop(PacketDrop::UnknownUfrag)
        );
        assert_eq!(c.state(), ConnState::Unclaimed);
        assert_eq!(
            c.on_frame(&stun_request("abcd"), t0, |f| r.route(f)),
            Verdict::Deliver(s, 3)
        );
        assert_eq!(c.state(), ConnState::Claimed(s, 3));
        // Before the session answered, only STUN passes.
        assert_eq!(
            c.on_frame(&[22, 1, 2], t0, |f| r.route(f)),
            Verdict::Drop(PacketDrop::TcpUnverified)
        );
        c.on_sent(t0);
        assert_eq!(c.state(), ConnState::Established(s, 3));
        assert_eq!(
            c.on_frame(&[22, 1, 2], t0, |_| unreachable!()),
            Verdict::Deliver(s, 3)
        );
        assert_eq!(
            c.on_frame(&[0x90, 0], t0, |_| unreachable!()),
            Verdict::Deliver(s, 3)
        );
        assert_eq!(
            c.on_frame(b"GET / HTTP/1.1", t0, |_| unreachable!()),
            Verdict::Close(FrameError::Garbage(b'G'))
        );
    }

    #[test]
    fn a_first_frame_that_is_not_stun_closes() {
        let r = routes();
        let t0 = Instant::now();
        let mut c = Conn::new(t0, ConnTimeouts::default());
        assert_eq!(
            c.on_frame(&[0x80, 0, 0, 0], t0, |f| r.route(f)),
            Verdict::Close(FrameError::Garbage(0x80))
        );
    }

    #[test]
    fn handshake_and_idle_timeouts() {
        let t0 = Instant::now();
        let timeouts = ConnTimeouts {
            handshake: Duration::from_secs(2),
            idle: Duration::from_secs(10),
        };
        let r = routes();
        let mut c = Conn::new(t0, timeouts);
        assert_eq!(c.deadline(), t0 + Duration::from_secs(2));
        assert_eq!(c.check(t0 + Duration::from_secs(1)), None);
        assert_eq!(
            c.check(t0 + Duration::from_secs(2)),
            Some(CloseReason::HandshakeTimeout)
        );
        // Claimed is not enough: the handshake clock still runs.
        c.on_frame(&stun_request("abcd"), t0 + Duration::from_secs(1), |f| {
            r.route(f)
        });
        assert_eq!(
            c.check(t0 + Duration::from_secs(2)),
            Some(CloseReason::HandshakeTimeout)
        );
        let mut c = Conn::new(t0, timeouts);
        c.on_frame(&stun_request("abcd"), t0, |f| r.route(f));
        c.on_sent(t0 + Duration::from_secs(1));
        assert_eq!(c.check(t0 + Duration::from_secs(5)), None);
        c.on_frame(&[0x80, 0], t0 + Duration::from_secs(8), |_| unreachable!());
        assert_eq!(c.check(t0 + Duration::from_secs(17)), None);
        assert_eq!(
            c.check(t0 + Duration::from_secs(18)),
            Some(CloseReason::Idle)
        );
    }

    #[test]
    fn ufrag_routes_follow_register_restart_and_unregister() {
        let mut r = routes();
        let s = SessionId([1; 16]);
        let t = SessionId([2; 16]);
        r.apply(&UdpControl::ReplaceUfrag {
            ufrag: "next".into(),
            session: s,
            shard: 3,
        });
        assert_eq!(r.len(), 1);
        assert_eq!(
            r.route(&stun_request("abcd")),
            Err(PacketDrop::UnknownUfrag)
        );
        assert_eq!(r.route(&stun_request("next")), Ok((s, 3)));
        // Unknown sessions cannot restart; another session's ufrag is never unmapped.
        r.apply(&UdpControl::ReplaceUfrag {
            ufrag: "ghost".into(),
            session: t,
            shard: 0,
        });
        assert_eq!(
            r.route(&stun_request("ghost")),
            Err(PacketDrop::UnknownUfrag)
        );
        r.apply(&UdpControl::Register {
            ufrag: "next".into(),
            session: t,
            shard: 1,
        });
        r.apply(&UdpControl::ReplaceUfrag {
            ufrag: "other".into(),
            session: s,
            shard: 3,
        });
        assert_eq!(r.route(&stun_request("next")), Ok((t, 1)));
        r.apply(&UdpControl::Route {
            addr: "127.0.0.1:1".parse().unwrap(),
            session: s,
            shard: 3,
        });
        r.apply(&UdpControl::Unregister { session: s });
        r.apply(&UdpControl::Unregister { session: t });
        assert!(r.is_empty());
        assert_eq!(r.route(&[0x80, 1]), Err(PacketDrop::TcpUnverified));
        assert_eq!(r.route(&[0, 1, 0]), Err(PacketDrop::MalformedStun));
    }

    #[test]
    fn connection_caps_per_ip_and_in_total() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let mut c = ConnCounter::new(2, 3);
        assert_eq!(c.acquire(a), Ok(()));
        assert_eq!(c.acquire(a), Ok(()));
        assert_eq!(c.acquire(a), Err(Refusal::PerIp));
        assert_eq!(c.acquire(b), Ok(()));
        assert_eq!(c.acquire(b), Err(Refusal::Total));
        c.release(a);
        assert_eq!(c.from_ip(a), 1);
        assert_eq!(c.acquire(b), Ok(()));
        c.release(a);
        c.release(a);
        c.release(b);
        c.release(b);
        assert_eq!(c.total(), 0);
        assert_eq!(c.from_ip(b), 0);
    }

    proptest! {
        #[test]
        fn frames_round_trip_over_arbitrary_split_points(
            packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..600), 0..20),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
        ) {
            let mut stream = Vec::new();
            for p in &packets {
                frame_into(&mut stream, p).unwrap();
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            let mut d = Deframer::new(600);
            let mut got = Vec::new();
            for w in points.windows(2) {
                d.push(&stream[w[0]..w[1]]);
                got.extend(drain(&mut d).unwrap());
            }
            prop_assert_eq!(got, packets);
            prop_assert_eq!(d.pending(), 0);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_frames_respect_the_cap(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..10),
            max in 1usize..2000,
        ) {
            let mut d = Deframer::new(max);
            'outer: for c in &chunks {
                d.push(c);
                loop {
                    match d.next_frame() {
                        Ok(Some(f)) => prop_assert!(!f.is_empty() && f.len() <= max),
                        Ok(None) => break,
                        Err(_) => break 'outer,
                    }
                }
            }
        }
    }
}
