//! ICE-TCP against a real server on 127.0.0.1: a str0m client whose only candidate is TCP
//! (active) connects to the SFU's passive TCP candidate, authenticates with a STUN binding
//! request (short-term credentials from the SDP) answered in an RFC 4571 frame, completes DTLS
//! and publishes audio the SFU receives — all over one TCP connection. Hostile connections
//! (garbage, an oversize length, silence) are closed without disturbing it, and the per-IP cap
//! refuses the connection beyond it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use satsuma_bot::harness::{Metrics, fetch_metrics};
use satsuma_sfu::config::TcpBind;
use satsuma_sfu::ice_tcp::{ConnTimeouts, Deframer, frame_into};
use serde_json::{Value, json};
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const APP: &str = "satsuma";
const SECRET: &str = "satsuma-secret";
/// Generous bound for anything that happens on loopback.
const SOON: Duration = Duration::from_secs(10);

struct Sfu {
    handle: satsuma_sfu::ServerHandle,
    http: reqwest::Client,
}

impl Sfu {
    async fn start(adjust: impl FnOnce(&mut satsuma_sfu::Config)) -> Sfu {
        let mut config = satsuma_sfu::Config {
            http_bind: "127.0.0.1:0".parse().unwrap(),
            udp_bind: "127.0.0.1:0".parse().unwrap(),
            tcp_bind: TcpBind::SameAsUdp,
            ..Default::default()
        };
        adjust(&mut config);
        Sfu {
            handle: satsuma_sfu::Server::bind(config).await.unwrap(),
            http: reqwest::Client::new(),
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.handle.http_addr())
    }

    fn tcp(&self) -> SocketAddr {
        self.handle.tcp_addr().expect("ICE-TCP is on")
    }

    async fn call(&self, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .post(format!("{}/v1/apps/{APP}/{path}", self.base()))
            .bearer_auth(SECRET);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap())
    }

    async fn new_session(&self) -> String {
        let (status, body) = self.call("sessions/new", None).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["sessionId"].as_str().unwrap().to_string()
    }

    async fn metrics(&self) -> Metrics {
        fetch_metrics(&self.base()).await.unwrap()
    }

    /// Waits until `series` reaches `at_least`.
    async fn wait_metric(&self, series: &str, at_least: f64) -> Metrics {
        let until = Instant::now() + SOON;
        loop {
            let m = self.metrics().await;
            if m.get(series) >= at_least {
                return m;
            }
            assert!(
                Instant::now() < until,
                "{series} stayed at {} (< {at_least})",
                m.get(series)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What the client saw, shared with the test.
#[derive(Debug, Default)]
struct Seen {
    /// Transaction ids of the binding requests the client sent.
    requests: Vec<[u8; 12]>,
    /// The first binding request, as sent.
    first_request: Option<Vec<u8>>,
    /// The first frame the SFU sent.
    first_frame: Option<Vec<u8>>,
    frames_in: u64,
    ice_connected: bool,
    dtls_connected: bool,
    rtp_sent: u64,
    closed: Option<String>,
}

/// The local address of the client's active TCP candidate (port 9, as browsers announce it).
fn client_candidate() -> SocketAddr {
    "127.0.0.1:9".parse().unwrap()
}

/// Publishes "mic" from a str0m client whose only candidate is ICE-TCP active; returns the
/// SFU's answer SDP and the running client.
async fn tcp_publisher(sfu: &Sfu) -> (String, Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let id = sfu.new_session().await;
    let mut rtc = Rtc::builder().set_rtp_mode(true).build(Instant::now());
    let local = Candidate::builder()
        .tcp()
        .host(client_candidate())
        .tcptype(TcpType::Active)
        .build()
        .unwrap();
    rtc.add_local_candidate(local);
    let mut change = rtc.sdp_api();
    let mid = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    let (status, body) = sfu
        .call(
            &format!("sessions/{id}/tracks/new"),
            Some(json!({
                "sessionDescription": {"type": "offer", "sdp": offer.to_sdp_string()},
                "tracks": [{"location": "local", "mid": mid.to_string(), "trackName": "mic"}]
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sdp = body["sessionDescription"]["sdp"]
        .as_str()
        .unwrap()
        .to_string();
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&sdp).unwrap())
        .unwrap();
    let pt = rtc
        .codec_config()
        .params()
        .iter()
        .find(|p| p.spec().codec == Codec::Opus)
        .map(|p| p.pt())
        .unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let task = tokio::spawn(run_client(rtc, mid, pt, Arc::clone(&seen)));
    (sdp, seen, task)
}

/// Drives the client: str0m's transmits go framed over one TCP connection (opened on the
/// first), received frames go back into str0m; once DTLS is up, 20 ms of "audio" every 20 ms.
async fn run_client(mut rtc: Rtc, mid: Mid, pt: Pt, seen: Arc<Mutex<Seen>>) {
    let mut stream: Option<(TcpStream, SocketAddr)> = None;
    let mut deframer = Deframer::new(65_535);
    let mut buf = vec![0u8; 65_536];
    let mut seq: u64 = 1;
    let mut next_media = Instant::now();
    let close = |why: String| seen.lock().unwrap().closed = Some(why);
    loop {
        let timeout = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break t,
                Ok(Output::Transmit(t)) => {
                    assert_eq!(
                        t.proto,
                        Protocol::Tcp,
                        "the client has only a TCP candidate"
                    );
                    if stream.is_none() {
                        let s = TcpStream::connect(t.destination).await.unwrap();
                        s.set_nodelay(true).unwrap();
                        stream = Some((s, t.destination));
                    }
                    if t.contents[..2] == [0, 1] {
                        let mut s = seen.lock().unwrap();
                        s.requests.push(t.contents[8..20].try_into().unwrap());
                        s.first_request.get_or_insert_with(|| t.contents.to_vec());
                    }
                    let mut framed = Vec::new();
                    frame_into(&mut framed, &t.contents).unwrap();
                    let Some((s, _)) = stream.as_mut() else {
                        unreachable!()
                    };
                    if let Err(e) = s.write_all(&framed).await {
                        return close(format!("write: {e}"));
                    }
                }
                Ok(Output::Event(e)) => match e {
                    Event::IceConnectionStateChange(
                        IceConnectionState::Connected | IceConnectionState::Completed,
                    ) => seen.lock().unwrap().ice_connected = true,
                    Event::Connected => seen.lock().unwrap().dtls_connected = true,
                    _ => {}
                },
                Err(e) => return close(format!("str0m: {e}")),
            }
        };
        let dtls = seen.lock().unwrap().dtls_connected;
        let wake = if dtls {
            timeout.min(next_media)
        } else {
            timeout
        };
        let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(wake));
        match stream.as_mut() {
            None => sleep.await,
            Some((s, remote)) => {
                tokio::select! {
                    r = s.read(&mut buf) => {
                        let n = match r {
                            Ok(0) => return close("eof".into()),
                            Ok(n) => n,
                            Err(e) => return close(format!("read: {e}")),
                        };
                        deframer.push(&buf[..n]);
                        let now = Instant::now();
                        while let Some(frame) = deframer.next_frame().unwrap() {
                            {
                                let mut s = seen.lock().unwrap();
                                s.frames_in += 1;
                                s.first_frame.get_or_insert_with(|| frame.to_vec());
                            }
                            let input = Input::Receive(
                                now,
                                Receive {
                                    proto: Protocol::Tcp,
                                    source: *remote,
                                    destination: client_candidate(),
                                    contents: frame.try_into().unwrap(),
                                },
                            );
                            if let Err(e) = rtc.handle_input(input) {
                                return close(format!("str0m input: {e}"));
                            }
                        }
                    }
                    () = sleep => {}
                }
            }
        }
        let now = Instant::now();
        if dtls && now >= next_media {
            let mut api = rtc.direct_api();
            if let Some(tx) = api.stream_tx_by_mid(mid, None) {
                let payload = vec![0xf8u8; 80];
                tx.write_rtp(RtpWrite::new(
                    pt,
                    seq.into(),
                    (seq * 960) as u32,
                    now,
                    payload,
                ));
                seq += 1;
                seen.lock().unwrap().rtp_sent += 1;
            }
            next_media = now + Duration::from_millis(20);
        }
        if let Err(e) = rtc.handle_input(Input::Timeout(now)) {
            return close(format!("str0m timeout: {e}"));
        }
    }
}

/// Waits until the client saw what `done` wants.
async fn wait_seen(seen: &Arc<Mutex<Seen>>, what: &str, done: impl Fn(&Seen) -> bool) {
    let until = Instant::now() + SOON;
    loop {
        {
            let s = seen.lock().unwrap();
            assert!(s.closed.is_none(), "client connection ended: {s:?}");
            if done(&s) {
                return;
            }
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}: {s:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// STUN attributes `(type, value)` of a message.
fn stun_attrs(msg: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let len = usize::from(u16::from_be_bytes([msg[2], msg[3]]));
    let mut rest = &msg[20..20 + len];
    let mut out = Vec::new();
    while rest.len() >= 4 {
        let t = u16::from_be_bytes([rest[0], rest[1]]);
        let l = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        out.push((t, rest[4..4 + l].to_vec()));
        rest = &rest[4 + l.div_ceil(4) * 4..];
    }
    out
}

/// `(proto, priority, port, line)` of the candidate lines of an SDP.
fn candidates(sdp: &str) -> Vec<(String, u32, u16, String)> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[2].to_lowercase(),
                f[3].parse().unwrap(),
                f[5].parse().unwrap(),
                l.to_string(),
            )
        })
        .collect()
}

/// Whether the server closed `s` (EOF or reset) within [`SOON`]; anything it sent is
/// discarded.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let until = tokio::time::Instant::now() + SOON;
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_only_tcp_authenticates_completes_dtls_and_publishes() {
    let sfu = Sfu::start(|_| {}).await;
    let (sdp, seen, client) = tcp_publisher(&sfu).await;

    // The answer offers a passive TCP host candidate on the listener's port, below UDP.
    let c = candidates(&sdp);
    let (_, udp_prio, _, _) = c.iter().find(|(p, ..)| p == "udp").expect("udp candidate");
    let (_, tcp_prio, tcp_port, line) = c.iter().find(|(p, ..)| p == "tcp").expect("tcp one");
    assert!(line.contains(" typ host tcptype passive"), "{line}");
    assert_eq!(*tcp_port, sfu.tcp().port());
    assert!(tcp_prio < udp_prio, "{sdp}");
    let sfu_ufrag = sdp
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .unwrap()
        .to_string();

    wait_seen(&seen, "DTLS over TCP", |s| {
        s.ice_connected && s.dtls_connected
    })
    .await;
    {
        let s = seen.lock().unwrap();
        // The client authenticated with the SDP's short-term credentials...
        let req = s.first_request.as_ref().unwrap();
        let attrs = stun_attrs(req);
        let user = &attrs.iter().find(|(t, _)| *t == 0x0006).unwrap().1;
        assert!(
            user.starts_with(format!("{sfu_ufrag}:").as_bytes()),
            "USERNAME {:?}",
            String::from_utf8_lossy(user)
        );
        assert!(attrs.iter().any(|(t, v)| *t == 0x0008 && v.len() == 20));
        // ...and the SFU's first frame is the binding success response to one of its
        // requests (str0m verified its integrity, or ICE would not be connected).
        let first = s.first_frame.as_ref().unwrap();
        assert_eq!(&first[..2], &[0x01, 0x01], "binding success response");
        let txid: [u8; 12] = first[8..20].try_into().unwrap();
        assert!(s.requests.contains(&txid));
    }

    // Audio flows over TCP and reaches the SFU's forwarding path.
    let m = sfu
        .wait_metric("satsuma_sfu_rtp_packets_in_total", 20.0)
        .await;
    assert_eq!(m.get("satsuma_sfu_tcp_connections"), 1.0);
    assert_eq!(m.get("satsuma_sfu_tcp_connections_accepted_total"), 1.0);
    assert!(m.get("satsuma_sfu_tcp_frames_in_total") >= 20.0);
    assert!(m.get("satsuma_sfu_tcp_frames_out_total") >= 2.0);
    assert!(m.get("satsuma_sfu_tcp_bytes_in_total") > 20.0 * 80.0);
    assert!(m.get("satsuma_sfu_tcp_bytes_out_total") > 0.0);
    assert_eq!(
        m.get("satsuma_sfu_packets_in_total"),
        0.0,
        "nothing came over UDP"
    );
    assert_eq!(m.get("satsuma_sfu_session_panics_total"), 0.0);
    client.abort();
    sfu.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversize_and_silent_connections_close_alone() {
    let sfu = Sfu::start(|c| {
        c.tcp_timeouts = ConnTimeouts {
            handshake: Duration::from_secs(1),
            idle: Duration::from_secs(5),
        };
    })
    .await;
    let other_session = sfu.new_session().await;
    let (_, seen, client) = tcp_publisher(&sfu).await;
    wait_seen(&seen, "DTLS over TCP", |s| s.dtls_connected).await;

    // Garbage inside a plausible frame; an oversize length; a connection that never speaks;
    // one that only sends binding requests for a ufrag no session has.
    let mut garbage = TcpStream::connect(sfu.tcp()).await.unwrap();
    garbage
        .write_all(b"\x00\x10GET / HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut oversize = TcpStream::connect(sfu.tcp()).await.unwrap();
    oversize.write_all(&[0xff, 0xff, 0, 1]).await.unwrap();
    let mut silent = TcpStream::connect(sfu.tcp()).await.unwrap();
    let mut unknown = TcpStream::connect(sfu.tcp()).await.unwrap();
    let mut req = Vec::new();
    let user = b"nosuchufrag:peer";
    let mut m = vec![0, 1, 0, 20, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&[7; 12]);
    m.extend_from_slice(&[0, 6, 0, user.len() as u8]);
    m.extend_from_slice(user);
    frame_into(&mut req, &m).unwrap();
    unknown.write_all(&req).await.unwrap();

    let before = seen.lock().unwrap().frames_in;
    let started = Instant::now();
    for (name, s) in [
        ("garbage", &mut garbage),
        ("oversize", &mut oversize),
        ("silent", &mut silent),
        ("unknown ufrag", &mut unknown),
    ] {
        assert!(
            closed_by_server(s).await,
            "the {name} connection stayed open"
        );
    }
    eprintln!("hostile connections closed within {:?}", started.elapsed());

    // The good connection carries on: more frames arrive, more media reaches the SFU.
    let rtp = sfu.metrics().await.get("satsuma_sfu_rtp_packets_in_total");
    wait_seen(&seen, "more frames", |s| s.frames_in > before + 5).await;
    let m = sfu
        .wait_metric("satsuma_sfu_rtp_packets_in_total", rtp + 20.0)
        .await;
    assert!(seen.lock().unwrap().closed.is_none());
    assert_eq!(
        m.get("satsuma_sfu_tcp_connections_closed_total{reason=\"bad_frame\"}"),
        2.0
    );
    assert_eq!(
        m.get("satsuma_sfu_tcp_connections_closed_total{reason=\"handshake_timeout\"}"),
        2.0
    );
    assert_eq!(
        m.get("satsuma_sfu_dropped_total{reason=\"tcp_bad_frame\"}"),
        2.0
    );
    assert!(m.get("satsuma_sfu_dropped_total{reason=\"unknown_ufrag\"}") >= 1.0);
    assert_eq!(m.get("satsuma_sfu_tcp_connections"), 1.0);
    // Other sessions are untouched.
    assert_eq!(m.get("satsuma_sfu_sessions"), 2.0);
    let resp = sfu
        .http
        .get(format!(
            "{}/v1/apps/{APP}/sessions/{other_session}",
            sfu.base()
        ))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    client.abort();
    sfu.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_cap_refuses_the_next_connection() {
    let sfu = Sfu::start(|c| {
        c.limits.tcp_max_connections_per_ip = 3;
        c.tcp_timeouts = ConnTimeouts {
            handshake: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        };
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(sfu.tcp()).await.unwrap());
    }
    sfu.wait_metric("satsuma_sfu_tcp_connections", 3.0).await;
    let mut refused = TcpStream::connect(sfu.tcp()).await.unwrap();
    assert!(closed_by_server(&mut refused).await);
    let m = sfu
        .wait_metric(
            "satsuma_sfu_tcp_connections_refused_total{reason=\"per_ip\"}",
            1.0,
        )
        .await;
    assert_eq!(m.get("satsuma_sfu_tcp_connections"), 3.0);
    assert_eq!(m.get("satsuma_sfu_tcp_connections_accepted_total"), 3.0);
    // The three held are still open.
    let mut buf = [0u8; 16];
    for s in &held {
        assert!(matches!(
            s.try_read(&mut buf),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        ));
    }
    // Closing one makes room again.
    drop(held.pop());
    let until = Instant::now() + SOON;
    while sfu.metrics().await.get("satsuma_sfu_tcp_connections") > 2.0 {
        assert!(
            Instant::now() < until,
            "the closed connection was not released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _again = TcpStream::connect(sfu.tcp()).await.unwrap();
    let m = sfu
        .wait_metric("satsuma_sfu_tcp_connections_accepted_total", 4.0)
        .await;
    assert_eq!(
        m.get("satsuma_sfu_tcp_connections_refused_total{reason=\"per_ip\"}"),
        1.0
    );
    sfu.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_tcp_can_be_turned_off() {
    let sfu = Sfu::start(|c| c.tcp_bind = TcpBind::Off).await;
    assert_eq!(sfu.handle.tcp_addr(), None);
    let id = sfu.new_session().await;
    let mut rtc = Rtc::builder().set_rtp_mode(true).build(Instant::now());
    rtc.add_local_candidate(Candidate::host("127.0.0.1:40000".parse().unwrap(), "udp").unwrap());
    let mut change = rtc.sdp_api();
    let mid = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, _) = change.apply().unwrap();
    let (status, body) = sfu
        .call(
            &format!("sessions/{id}/tracks/new"),
            Some(json!({
                "sessionDescription": {"type": "offer", "sdp": offer.to_sdp_string()},
                "tracks": [{"location": "local", "mid": mid.to_string(), "trackName": "mic"}]
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let c = candidates(body["sessionDescription"]["sdp"].as_str().unwrap());
    assert!(!c.is_empty() && c.iter().all(|(p, ..)| p == "udp"), "{c:?}");
    sfu.handle.shutdown().await;
}
