//! End-to-end over real UDP on 127.0.0.1: a str0m client pushes an audio and a video track
//! through the HTTP API, another pulls both, and every payload arrives byte-identical, with the
//! subscriber's own SSRC and fresh sequence numbers. Then the publisher closes the video track and
//! delivery of it stops. (The full bot-driven media tests live in `media_*.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, Input, Output, Rtc};

const APP: &str = "satsuma";
const SECRET: &str = "satsuma-secret";

struct Client {
    rtc: Rtc,
    socket: UdpSocket,
    addr: SocketAddr,
    connected: bool,
    received: Vec<(Mid, u16, u32, Vec<u8>)>,
    keyframe_requests: usize,
}

impl Client {
    fn new() -> Client {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let addr = socket.local_addr().unwrap();
        let mut rtc = Rtc::builder().set_rtp_mode(true).build(Instant::now());
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        Client {
            rtc,
            socket,
            addr,
            connected: false,
            received: Vec::new(),
            keyframe_requests: 0,
        }
    }

    /// Drains output until str0m wants a timeout.
    fn drain(&mut self) {
        loop {
            match self.rtc.poll_output().unwrap() {
                Output::Timeout(_) => break,
                Output::Transmit(t) => {
                    let _ = self.socket.send_to(&t.contents, t.destination);
                }
                Output::Event(e) => match e {
                    Event::Connected => self.connected = true,
                    Event::RtpPacket(p) => {
                        let mid = self
                            .rtc
                            .direct_api()
                            .stream_rx(&p.header.ssrc)
                            .map(|s| s.mid())
                            .unwrap();
                        self.received.push((
                            mid,
                            p.header.sequence_number,
                            *p.header.ssrc,
                            p.payload.to_vec(),
                        ));
                    }
                    Event::KeyframeRequest(_) => self.keyframe_requests += 1,
                    _ => {}
                },
            }
        }
    }

    /// Feeds every waiting datagram (draining after each, as str0m requires), then drives time.
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

    fn pt_for(&self, mid: Mid, codec: Codec) -> Pt {
        let media = self.rtc.media(mid).unwrap();
        let pts = media.remote_pts().to_vec();
        self.rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == codec && pts.contains(&p.pt()))
            .map(|p| p.pt())
            .unwrap()
    }

    fn send(&mut self, mid: Mid, pt: Pt, seq: u64, ts: u32, payload: &[u8]) {
        let mut api = self.rtc.direct_api();
        let tx = api.stream_tx_by_mid(mid, None).unwrap();
        tx.write_rtp(
            RtpWrite::new(pt, SeqNo::from(seq), ts, Instant::now(), payload.to_vec())
                .marker(true)
                .nackable(true),
        );
    }
}

async fn step_all(clients: &mut [&mut Client], for_how_long: Duration) {
    let end = Instant::now() + for_how_long;
    while Instant::now() < end {
        for c in clients.iter_mut() {
            c.step();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn until(clients: &mut [&mut Client], max: Duration, cond: impl Fn(&[&mut Client]) -> bool) {
    let end = Instant::now() + max;
    while Instant::now() < end {
        for c in clients.iter_mut() {
            c.step();
        }
        if cond(clients) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("condition not reached within {max:?}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_to_subscriber_payloads_arrive_byte_identical() {
    let config = satsuma_sfu::Config {
        http_bind: "127.0.0.1:0".parse().unwrap(),
        udp_bind: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let sfu = satsuma_sfu::Server::bind(config).await.unwrap();
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://{}/v1/apps/{APP}", sfu.http_addr()),
    };

    // Publisher: audio + video, sendonly.
    let mut publisher = Client::new();
    let mut change = publisher.rtc.sdp_api();
    let audio = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let video = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    let s = api.call(reqwest::Method::POST, "sessions/new", None).await;
    let pub_id = s["sessionId"].as_str().unwrap().to_string();
    let r = api
        .call(
            reqwest::Method::POST,
            &format!("sessions/{pub_id}/tracks/new"),
            Some(json!({
                "sessionDescription": {"type": "offer", "sdp": offer.to_sdp_string()},
                "tracks": [
                    {"location": "local", "mid": audio.to_string(), "trackName": "mic"},
                    {"location": "local", "mid": video.to_string(), "trackName": "cam"},
                ]
            })),
        )
        .await;
    assert_eq!(r["requiresImmediateRenegotiation"], false);
    let answer =
        SdpAnswer::from_sdp_string(r["sessionDescription"]["sdp"].as_str().unwrap()).unwrap();
    publisher
        .rtc
        .sdp_api()
        .accept_answer(pending, answer)
        .unwrap();

    // Subscriber: pulls both; answers the SFU's offer.
    let mut subscriber = Client::new();
    let s = api.call(reqwest::Method::POST, "sessions/new", None).await;
    let sub_id = s["sessionId"].as_str().unwrap().to_string();
    let r = api
        .call(
            reqwest::Method::POST,
            &format!("sessions/{sub_id}/tracks/new"),
            Some(json!({"tracks": [
                {"location": "remote", "sessionId": pub_id, "trackName": "mic"},
                {"location": "remote", "sessionId": pub_id, "trackName": "cam"},
            ]})),
        )
        .await;
    assert_eq!(r["requiresImmediateRenegotiation"], true);
    assert_eq!(r["sessionDescription"]["type"], "offer");
    let sub_audio = Mid::from(r["tracks"][0]["mid"].as_str().unwrap());
    let sub_video = Mid::from(r["tracks"][1]["mid"].as_str().unwrap());
    let offer =
        SdpOffer::from_sdp_string(r["sessionDescription"]["sdp"].as_str().unwrap()).unwrap();
    let answer = subscriber.rtc.sdp_api().accept_offer(offer).unwrap();
    let r = api
        .call(
            reqwest::Method::PUT,
            &format!("sessions/{sub_id}/renegotiate"),
            Some(json!({"sessionDescription": {"type": "answer", "sdp": answer.to_sdp_string()}})),
        )
        .await;
    assert_eq!(r, json!({}));

    until(
        &mut [&mut publisher, &mut subscriber],
        Duration::from_secs(10),
        |c| c[0].connected && c[1].connected,
    )
    .await;

    let opus = publisher.pt_for(audio, Codec::Opus);
    let vp8 = publisher.pt_for(video, Codec::Vp8);
    // The publisher's sequence numbers roll over during the test; the subscriber's are its own.
    let base_seq = 65_500;
    let mut sent: HashMap<Vec<u8>, Mid> = HashMap::new();
    for i in 0..60u64 {
        let a = format!("opus-frame-{i}-").repeat(5).into_bytes();
        // A VP8 payload descriptor (S bit, partition 0) then a keyframe-flagged header.
        let mut v = vec![0x10, 0x00, 0x9d, 0x01, 0x2a];
        v.extend_from_slice(format!("vp8-frame-{i}").as_bytes());
        publisher.send(audio, opus, base_seq + i, (i * 960) as u32, &a);
        publisher.send(video, vp8, base_seq + i, (i * 3000) as u32, &v);
        sent.insert(a, sub_audio);
        sent.insert(v, sub_video);
        step_all(
            &mut [&mut publisher, &mut subscriber],
            Duration::from_millis(5),
        )
        .await;
    }
    let end = Instant::now() + Duration::from_secs(5);
    while subscriber.received.len() < 100 && Instant::now() < end {
        step_all(
            &mut [&mut publisher, &mut subscriber],
            Duration::from_millis(20),
        )
        .await;
    }
    let metrics = reqwest::get(format!("http://{}/metrics", sfu.http_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        subscriber.received.len() >= 100,
        "only {} packets arrived (audio {}, video {}); metrics:\n{metrics}",
        subscriber.received.len(),
        subscriber
            .received
            .iter()
            .filter(|r| r.0 == sub_audio)
            .count(),
        subscriber
            .received
            .iter()
            .filter(|r| r.0 == sub_video)
            .count(),
    );

    let got = &subscriber.received;
    for (mid, _, _, payload) in got {
        assert_eq!(sent.get(payload), Some(mid), "unexpected payload on {mid}");
    }
    let audio_seqs: Vec<u16> = got
        .iter()
        .filter(|r| r.0 == sub_audio)
        .map(|r| r.1)
        .collect();
    assert!(
        audio_seqs.iter().all(|s| *s < 16_384 + 100),
        "sequence numbers are rebased per subscriber: {audio_seqs:?}"
    );
    // A keyframe request from the subscriber reaches the publisher (once the 1/s throttle allows;
    // the SFU itself asked when the subscriber connected).
    step_all(
        &mut [&mut publisher, &mut subscriber],
        Duration::from_millis(1100),
    )
    .await;
    let before_kf = publisher.keyframe_requests;
    subscriber
        .rtc
        .direct_api()
        .stream_rx_by_mid(sub_video, None)
        .unwrap()
        .request_keyframe(KeyframeRequestKind::Pli);
    until(
        &mut [&mut publisher, &mut subscriber],
        Duration::from_secs(3),
        |c| c[0].keyframe_requests > before_kf,
    )
    .await;

    let metrics = reqwest::get(format!("http://{}/metrics", sfu.http_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let forwarded: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("satsuma_sfu_forwarded_packets_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(forwarded >= 100.0, "{metrics}");

    // The publisher closes its video track: no more video reaches the subscriber.
    let r = api
        .call(
            reqwest::Method::PUT,
            &format!("sessions/{pub_id}/tracks/close"),
            Some(json!({"tracks": [{"mid": video.to_string()}], "force": true})),
        )
        .await;
    assert!(r["tracks"][0].get("errorCode").is_none(), "{r}");
    let before = subscriber
        .received
        .iter()
        .filter(|r| r.0 == sub_video)
        .count();
    for i in 60..80u64 {
        let a = format!("opus-frame-{i}-").into_bytes();
        publisher.send(audio, opus, base_seq + i, (i * 960) as u32, &a);
        publisher.send(video, vp8, base_seq + i, (i * 3000) as u32, b"\x10\x00late");
        step_all(
            &mut [&mut publisher, &mut subscriber],
            Duration::from_millis(5),
        )
        .await;
    }
    step_all(
        &mut [&mut publisher, &mut subscriber],
        Duration::from_millis(300),
    )
    .await;
    let after = subscriber
        .received
        .iter()
        .filter(|r| r.0 == sub_video)
        .count();
    assert_eq!(before, after, "video stopped after close");
    let state = api
        .call(reqwest::Method::GET, &format!("sessions/{sub_id}"), None)
        .await;
    let video_state = state["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["trackName"] == "cam")
        .unwrap()
        .clone();
    assert_eq!(video_state["status"], "inactive", "{state}");
    sfu.shutdown().await;
}
