//! ICE restarts over real UDP on 127.0.0.x: two str0m clients publish audio and pull each
//! other's through the HTTP API. Then one of them moves to a new local address (a new socket on
//! another loopback IP, the old one left silent: a real network change) again and again, each
//! time with an ICE restart offer sent to `PUT sessions/{id}/renegotiate`. Each time the answer
//! carries new ICE credentials, media flows both ways again on the same session, and the
//! addresses of before the restart stop routing to the session once the new path is up. More
//! moves than a session may hold routed addresses prove that old routes do not block new ones.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

const APP: &str = "satsuma";
const SECRET: &str = "satsuma-secret";

struct Client {
    rtc: Rtc,
    socket: UdpSocket,
    addr: SocketAddr,
    connected: bool,
    ice: IceConnectionState,
    received: Vec<Vec<u8>>,
    audio: Option<Mid>,
    seq: u64,
    /// The SFU's ICE ufrag, from its latest SDP.
    sfu_ufrag: Option<String>,
}

fn bind(ip: Ipv4Addr) -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind(SocketAddr::new(IpAddr::V4(ip), 0)).unwrap();
    socket.set_nonblocking(true).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

impl Client {
    fn new(ip: Ipv4Addr) -> Client {
        let (socket, addr) = bind(ip);
        let mut rtc = Rtc::builder().set_rtp_mode(true).build(Instant::now());
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        Client {
            rtc,
            socket,
            addr,
            connected: false,
            ice: IceConnectionState::New,
            received: Vec::new(),
            audio: None,
            seq: 1,
            sfu_ufrag: None,
        }
    }

    fn drain(&mut self) {
        loop {
            match self.rtc.poll_output().unwrap() {
                Output::Timeout(_) => break,
                Output::Transmit(t) => {
                    let _ = self.socket.send_to(&t.contents, t.destination);
                }
                Output::Event(e) => match e {
                    Event::Connected => self.connected = true,
                    Event::IceConnectionStateChange(s) => self.ice = s,
                    Event::RtpPacket(p) => self.received.push(p.payload.to_vec()),
                    _ => {}
                },
            }
        }
    }

    fn step(&mut self) {
        self.drain();
        let mut buf = [0u8; 2000];
        while let Ok((n, source)) = self.socket.recv_from(&mut buf) {
            let Ok(contents) = buf[..n].try_into() else {
                continue;
            };
            let input = Input::Receive(
                Instant::now(),
                Receive {
                    proto: Protocol::Udp,
                    source,
                    destination: self.addr,
                    contents,
                },
            );
            if self.rtc.accepts(&input) {
                self.rtc.handle_input(input).unwrap();
                self.drain();
            }
        }
        self.rtc
            .handle_input(Input::Timeout(Instant::now()))
            .unwrap();
        self.drain();
    }

    fn opus(&self) -> Pt {
        let mid = self.audio.unwrap();
        let pts = self.rtc.media(mid).unwrap().remote_pts().to_vec();
        self.rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == Codec::Opus && pts.contains(&p.pt()))
            .map(|p| p.pt())
            .unwrap()
    }

    fn send_audio(&mut self, payload: &[u8]) {
        let (mid, pt, seq) = (self.audio.unwrap(), self.opus(), self.seq);
        self.seq += 1;
        let mut api = self.rtc.direct_api();
        let tx = api.stream_tx_by_mid(mid, None).unwrap();
        tx.write_rtp(
            RtpWrite::new(
                pt,
                SeqNo::from(seq),
                (seq * 960) as u32,
                Instant::now(),
                payload.to_vec(),
            )
            .nackable(false),
        );
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}/{path}", self.base))
            .bearer_auth(SECRET);
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }
}

/// The `a=ice-ufrag` of an SDP (every m-line carries the same one with BUNDLE).
fn ufrag(sdp: &str) -> String {
    let all: Vec<&str> = sdp
        .lines()
        .filter_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .collect();
    assert!(!all.is_empty(), "no ice-ufrag in\n{sdp}");
    assert!(all.iter().all(|u| *u == all[0]), "mixed ufrags in\n{sdp}");
    all[0].to_string()
}

async fn step_until(
    clients: &mut [&mut Client],
    max: Duration,
    cond: impl Fn(&[&mut Client]) -> bool,
) -> bool {
    let end = Instant::now() + max;
    while Instant::now() < end {
        for c in clients.iter_mut() {
            c.step();
        }
        if cond(clients) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

/// Both clients send tagged audio every 20 ms until each has received the other's: how long
/// that took, or `None` within `max`.
async fn exchange(a: &mut Client, b: &mut Client, tag: &str, max: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut i = 0u32;
    while start.elapsed() < max {
        let pa = format!("from-a {tag} {i}").into_bytes();
        let pb = format!("from-b {tag} {i}").into_bytes();
        a.send_audio(&pa);
        b.send_audio(&pb);
        let tag_a = format!("from-a {tag} ");
        let tag_b = format!("from-b {tag} ");
        let done = step_until(&mut [&mut *a, &mut *b], Duration::from_millis(20), |c| {
            c[0].received
                .iter()
                .any(|p| p.starts_with(tag_b.as_bytes()))
                && c[1]
                    .received
                    .iter()
                    .any(|p| p.starts_with(tag_a.as_bytes()))
        })
        .await;
        if done {
            return Some(start.elapsed());
        }
        i += 1;
    }
    None
}

/// Creates a session that publishes one audio track named `name`; returns its id.
async fn publish(api: &Api, c: &mut Client, name: &str) -> String {
    let s = api.call(reqwest::Method::POST, "sessions/new", None).await;
    let id = s["sessionId"].as_str().unwrap().to_string();
    let mut change = c.rtc.sdp_api();
    let mid = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    let r = api
        .call(
            reqwest::Method::POST,
            &format!("sessions/{id}/tracks/new"),
            Some(json!({
                "sessionDescription": {"type": "offer", "sdp": offer.to_sdp_string()},
                "tracks": [{"location": "local", "mid": mid.to_string(), "trackName": name}],
            })),
        )
        .await;
    assert!(r["tracks"][0].get("errorCode").is_none(), "{r}");
    let sdp = r["sessionDescription"]["sdp"].as_str().unwrap();
    c.sfu_ufrag = Some(ufrag(sdp));
    let answer = SdpAnswer::from_sdp_string(sdp).unwrap();
    c.rtc.sdp_api().accept_answer(pending, answer).unwrap();
    c.audio = Some(mid);
    id
}

/// Pulls track `name` of session `from` into session `id` (answering the SFU's offer).
async fn pull(api: &Api, c: &mut Client, id: &str, from: &str, name: &str) {
    let r = api
        .call(
            reqwest::Method::POST,
            &format!("sessions/{id}/tracks/new"),
            Some(json!({"tracks": [{"location": "remote", "sessionId": from, "trackName": name}]})),
        )
        .await;
    assert!(r["tracks"][0].get("errorCode").is_none(), "{r}");
    assert_eq!(r["requiresImmediateRenegotiation"], true, "{r}");
    let sdp = r["sessionDescription"]["sdp"].as_str().unwrap();
    assert_eq!(c.sfu_ufrag.as_deref(), Some(ufrag(sdp).as_str()));
    let offer = SdpOffer::from_sdp_string(sdp).unwrap();
    let answer = c.rtc.sdp_api().accept_offer(offer).unwrap();
    let r = api
        .call(
            reqwest::Method::PUT,
            &format!("sessions/{id}/renegotiate"),
            Some(json!({"sessionDescription": {"type": "answer", "sdp": answer.to_sdp_string()}})),
        )
        .await;
    assert_eq!(r, json!({}));
}

async fn metrics(http: SocketAddr) -> String {
    reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

/// More moves than `MAX_ROUTED_ADDRS` (8): routes of before a restart must not block new ones.
const MOVES: u8 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_restart_on_a_new_address_resumes_media_on_the_same_session() {
    let config = satsuma_sfu::Config {
        http_bind: "127.0.0.1:0".parse().unwrap(),
        udp_bind: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let sfu = satsuma_sfu::Server::bind(config).await.unwrap();
    let http = sfu.http_addr();
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://{http}/v1/apps/{APP}"),
    };

    let mut a = Client::new(Ipv4Addr::new(127, 0, 0, 1));
    let mut b = Client::new(Ipv4Addr::new(127, 0, 0, 1));
    let a_id = publish(&api, &mut a, "a-mic").await;
    let b_id = publish(&api, &mut b, "b-mic").await;
    pull(&api, &mut a, &a_id, &b_id, "b-mic").await;
    pull(&api, &mut b, &b_id, &a_id, "a-mic").await;
    assert!(
        step_until(&mut [&mut a, &mut b], Duration::from_secs(10), |c| c[0]
            .connected
            && c[1].connected)
        .await,
        "the clients did not connect"
    );
    assert!(
        exchange(&mut a, &mut b, "before", Duration::from_secs(5))
            .await
            .is_some(),
        "no media before any restart"
    );

    let mut last_ufrag = a.sfu_ufrag.clone().unwrap();
    // The first socket stays open (silent): a datagram from it after the moves must no longer
    // reach A's session.
    let (first_socket, first_addr) = (a.socket.try_clone().unwrap(), a.addr);
    for n in 1..=MOVES {
        let ip = Ipv4Addr::new(127, 0, 0, 10 + n);
        let mut change = a.rtc.sdp_api();
        change.ice_restart(false);
        let (offer, pending) = change.apply().unwrap();
        let offer_sdp = offer.to_sdp_string();
        let r = api
            .call(
                reqwest::Method::PUT,
                &format!("sessions/{a_id}/renegotiate"),
                Some(json!({"sessionDescription": {"type": "offer", "sdp": offer_sdp}})),
            )
            .await;
        assert_eq!(r["sessionDescription"]["type"], "answer", "{r}");
        let answer_sdp = r["sessionDescription"]["sdp"].as_str().unwrap();
        let new_ufrag = ufrag(answer_sdp);
        assert_ne!(
            last_ufrag, new_ufrag,
            "move {n}: the answer kept the old ufrag"
        );
        last_ufrag = new_ufrag;
        a.rtc
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(answer_sdp).unwrap())
            .unwrap();
        // The network changed: a new local address, the old socket left behind.
        let (socket, addr) = bind(ip);
        a.socket = socket;
        a.addr = addr;
        a.rtc
            .add_local_candidate(Candidate::host(addr, "udp").unwrap());

        let took = exchange(&mut a, &mut b, &format!("move {n}"), Duration::from_secs(3)).await;
        let m = metrics(http).await;
        assert!(
            took.is_some(),
            "move {n} (to {addr}): media did not resume within 3 s (A's ICE {:?}); metrics:\n{}",
            a.ice,
            m.lines()
                .filter(|l| l.contains("dropped_total") || l.contains("ice_restarts"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert_eq!(
            metric(&m, "satsuma_sfu_sessions"),
            2.0,
            "still the same two sessions"
        );
    }
    // Still the same session, still pulling and publishing.
    let state = api
        .call(reqwest::Method::GET, &format!("sessions/{a_id}"), None)
        .await;
    let tracks = state["tracks"].as_array().unwrap();
    assert_eq!(tracks.len(), 2, "{state}");
    assert!(tracks.iter().all(|t| t["status"] == "active"), "{state}");
    let m = metrics(http).await;
    assert_eq!(
        metric(&m, "satsuma_sfu_ice_restarts_total"),
        f64::from(MOVES)
    );

    // The very first address was forgotten once A's session connected again elsewhere: an
    // RTP-looking datagram from it is dropped as coming from an unknown source.
    let label = "satsuma_sfu_dropped_total{reason=\"unknown_source\"}";
    let before = metric(&m, label);
    let sfu_addr = sfu.udp_addr();
    let rtp = [0x80u8, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 2, 3, 4];
    let mut after = before;
    for _ in 0..50 {
        first_socket.send_to(&rtp, sfu_addr).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = metric(&metrics(http).await, label);
        if after > before {
            break;
        }
    }
    assert!(
        after > before,
        "a datagram from {first_addr} (A's address before the moves) still routes to a session"
    );
    sfu.shutdown().await;
}
