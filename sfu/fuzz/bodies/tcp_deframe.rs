//! Fuzz body: the ICE-TCP deframer and connection state machine (`satsuma_sfu::ice_tcp`).
//!
//! Shared by the cargo-fuzz target `tcp_deframe` and by `tests/fuzz_corpus.rs`, which replays
//! every file of `fuzz/corpus/tcp_deframe/` through it.
//!
//! The input's first byte picks the maximum frame size, its second the read size; the rest is
//! the TCP byte stream, fed to a [`Deframer`] in chunks of that size. Invariants: nothing
//! panics; every frame is non-empty and at most the maximum; without an error, the frames
//! framed again are exactly the bytes consumed and the rest is pending; an error is only
//! reported for a length prefix that is zero or above the maximum. Each frame then goes
//! through a [`Conn`] (with one routable ufrag): a frame whose first byte is not STUN, DTLS
//! or RTP/RTCP closes it, a connection is claimed only by a binding request for the known
//! ufrag, and nothing but STUN passes before the session answered (which it does at once
//! when the read size is even).

use std::time::{Duration, Instant};

use satsuma_sfu::ice_tcp::{
    Conn, ConnState, ConnTimeouts, Deframer, FrameError, UfragRoutes, Verdict, classify, frame_into,
};
use satsuma_sfu::ids::SessionId;
use satsuma_sfu::udp::UdpControl;

pub(crate) fn run(data: &[u8]) {
    let [max_sel, chunk_sel, stream @ ..] = data else {
        return;
    };
    let max = 1 + usize::from(*max_sel) * 16;
    let chunk = 1 + usize::from(*chunk_sel);
    let answers = chunk_sel % 2 == 0;
    let mut routes = UfragRoutes::default();
    let session = SessionId([5; 16]);
    routes.apply(&UdpControl::Register {
        ufrag: "fuzz".into(),
        session,
        shard: 0,
    });
    let now = Instant::now();
    let mut conn = Conn::new(now, ConnTimeouts::default());
    let mut deframer = Deframer::new(max);
    let mut reframed = Vec::new();
    let mut fed = 0;
    let mut failed = None;
    'feed: for part in stream.chunks(chunk) {
        deframer.push(part);
        fed += part.len();
        loop {
            match deframer.next_frame() {
                Ok(Some(frame)) => {
                    assert!(!frame.is_empty() && frame.len() <= max);
                    if let Err(e) = frame_into(&mut reframed, frame) {
                        panic!("a deframed frame does not frame again: {e}");
                    }
                    step(&mut conn, frame, now, &routes, session, answers);
                }
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e);
                    break 'feed;
                }
            }
        }
    }
    match failed {
        None => {
            assert_eq!(&reframed[..], &stream[..reframed.len()]);
            assert_eq!(deframer.pending(), fed - reframed.len());
            assert_eq!(fed, stream.len());
        }
        Some(e) => {
            // The bad prefix starts right after the frames taken.
            let prefix = &stream[reframed.len()..];
            let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
            match e {
                FrameError::Empty => assert_eq!(len, 0),
                FrameError::Oversize { len: l, max: m } => {
                    assert_eq!((l, m), (len, max));
                    assert!(len > max);
                }
                other => panic!("unexpected deframing error {other}"),
            }
        }
    }
    // Time only closes: the handshake or the idle timeout ends every connection.
    assert!(conn.check(now + Duration::from_secs(3600)).is_some());
    assert!(conn.check(now).is_none());
}

fn step(
    conn: &mut Conn,
    frame: &[u8],
    now: Instant,
    routes: &UfragRoutes,
    session: SessionId,
    answers: bool,
) {
    let before = conn.state();
    let verdict = conn.on_frame(frame, now, |f| routes.route(f));
    match verdict {
        Verdict::Close(_) => assert!(classify(frame).is_err() || before == ConnState::Unclaimed),
        Verdict::Deliver(s, shard) => {
            assert_eq!((s, shard), (session, 0));
            if before == ConnState::Established(session, 0) {
                assert!(classify(frame).is_ok());
            } else {
                assert!(frame[0] < 4, "only STUN passes before the session answered");
                assert_eq!(conn.state(), ConnState::Claimed(session, 0));
                if answers {
                    conn.on_sent(now);
                    assert_eq!(conn.state(), ConnState::Established(session, 0));
                }
            }
        }
        Verdict::Drop(_) => assert_eq!(conn.state(), before),
    }
}
