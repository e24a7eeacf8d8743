//! Data channels (Cloudflare Realtime's `datachannels/new`, plus Satsuma's `datachannels/close`
//! and the `dataChannels` of `GET sessions/{id}`) against a real server on 127.0.0.1:
//!
//! * API conformance: valid and invalid input, status codes, per-channel and whole-request
//!   error bodies, quotas, listing, closing.
//! * Forwarding over real UDP: str0m clients publish and subscribe through the API, open the
//!   channels with the returned ids (`negotiated`), and every message reaches every subscriber
//!   in order, text and binary; an oversize message and a subscriber's message are not
//!   forwarded; a flood is rate limited; closing the publisher closes the subscribers' channels.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::api::{APP, SECRET, Sfu};
use reqwest::{Method, StatusCode};
use satsuma_bot::harness::{Metrics, fetch_metrics};
use serde_json::{Value, json};
use str0m::change::SdpAnswer;
use str0m::channel::{ChannelConfig, ChannelId};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// A server with two shards: consecutive sessions land on different ones, so messages,
/// subscriptions and ends cross shards.
async fn start_sfu() -> Sfu {
    Sfu::start(|c| c.shards = 2).await
}

impl Sfu {
    /// `datachannels/new` on `sid`; asserts 200 and returns the per-channel results.
    async fn new_channels(&self, sid: &str, channels: Value) -> Vec<Value> {
        let (status, body) = self
            .call(
                Method::POST,
                &format!("sessions/{sid}/datachannels/new"),
                Some(json!({ "dataChannels": channels })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["dataChannels"].as_array().unwrap().clone()
    }

    async fn close_channels(&self, sid: &str, channels: Value) -> Vec<Value> {
        let (status, body) = self
            .call(
                Method::PUT,
                &format!("sessions/{sid}/datachannels/close"),
                Some(json!({ "dataChannels": channels })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["dataChannels"].as_array().unwrap().clone()
    }

    async fn listed(&self, sid: &str) -> Vec<Value> {
        let (status, body) = self
            .call(Method::GET, &format!("sessions/{sid}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["dataChannels"].as_array().cloned().unwrap_or_default()
    }

    async fn metrics(&self) -> Metrics {
        fetch_metrics(&self.url("")).await.unwrap()
    }
}

fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["errorCode"], want_code, "{body}");
    assert!(
        body["errorDescription"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{body}"
    );
}

fn assert_entry_error(entry: &Value, code: &str) {
    assert_eq!(entry["errorCode"], code, "{entry}");
    assert!(
        entry["errorDescription"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{entry}"
    );
}

/// A str0m client over a real UDP socket whose offer carries an `m=application` section (as a
/// browser's does when a data channel exists before the offer).
struct Client {
    rtc: Rtc,
    socket: UdpSocket,
    addr: SocketAddr,
    connected: bool,
    /// (stream id, binary, data) of every message received.
    received: Vec<(u16, bool, Vec<u8>)>,
    closed: Vec<ChannelId>,
}

impl Client {
    fn new() -> Client {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let addr = socket.local_addr().unwrap();
        let mut rtc = Rtc::builder().build(Instant::now());
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        Client {
            rtc,
            socket,
            addr,
            connected: false,
            received: Vec::new(),
            closed: Vec::new(),
        }
    }

    /// Creates a session with this client's offer (with an in-band placeholder channel, so the
    /// SDP has `m=application`) and applies the answer. Returns the session id.
    async fn join(&mut self, sfu: &Sfu) -> String {
        let mut change = self.rtc.sdp_api();
        change.add_channel("placeholder".into());
        let (offer, pending) = change.apply().unwrap();
        let (status, body) = sfu
            .call(
                Method::POST,
                "sessions/new",
                Some(
                    json!({"sessionDescription": {"type": "offer", "sdp": offer.to_sdp_string()}}),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let answer =
            SdpAnswer::from_sdp_string(body["sessionDescription"]["sdp"].as_str().unwrap())
                .unwrap();
        self.rtc.sdp_api().accept_answer(pending, answer).unwrap();
        body["sessionId"].as_str().unwrap().to_string()
    }

    /// Opens the channel the SFU announced as `id` (out of band, as `negotiated: true`).
    fn open(&mut self, id: u16, label: &str) -> ChannelId {
        self.rtc.direct_api().create_data_channel(ChannelConfig {
            label: label.into(),
            negotiated: Some(id),
            ..Default::default()
        })
    }

    fn is_open(&mut self, ch: ChannelId) -> bool {
        self.rtc.channel(ch).is_some()
    }

    fn send(&mut self, ch: ChannelId, binary: bool, data: &[u8]) -> bool {
        let Some(mut c) = self.rtc.channel(ch) else {
            return false;
        };
        c.write(binary, data).unwrap()
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
                    Event::ChannelData(d) => {
                        let stream = self
                            .rtc
                            .direct_api()
                            .sctp_stream_id_by_channel_id(d.id)
                            .unwrap();
                        self.received.push((stream, d.binary, d.data));
                    }
                    Event::ChannelClose(id) => self.closed.push(id),
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
}

/// Steps every client until `cond` holds (generous timeout for a loaded machine).
async fn until(
    clients: &mut [&mut Client],
    what: &str,
    mut cond: impl FnMut(&mut [&mut Client]) -> bool,
) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        for c in clients.iter_mut() {
            c.step();
        }
        if cond(clients) {
            return;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn step_for(clients: &mut [&mut Client], d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        for c in clients.iter_mut() {
            c.step();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Polls `GET` until the channel with stream `id` of `sid` has `status`.
async fn until_status(sfu: &Sfu, sid: &str, id: u64, status: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = sfu.listed(sid).await;
        if listed
            .iter()
            .any(|c| c["id"] == id && c["status"] == status)
        {
            return;
        }
        assert!(
            Instant::now() < end,
            "channel {id} of {sid} never became {status}: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datachannels_new_close_and_get_with_valid_and_invalid_input() {
    let sfu = start_sfu().await;
    let mut publisher = Client::new();
    let mut subscriber = Client::new();
    let p = publisher.join(&sfu).await;
    let s = subscriber.join(&sfu).await;

    // Publish: the SFU picks odd stream ids.
    let r = sfu
        .new_channels(
            &p,
            json!([{"location": "local", "dataChannelName": "chat"}]),
        )
        .await;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["location"], "local");
    assert_eq!(r[0]["dataChannelName"], "chat");
    let chat = r[0]["id"].as_u64().unwrap();
    assert_eq!(chat % 2, 1, "{r:?}");
    assert!(r[0].get("errorCode").is_none(), "{r:?}");

    // Per-channel errors, in request order, beside a success.
    let long = "x".repeat(257);
    let r = sfu
        .new_channels(
            &p,
            json!([
                {"location": "local", "dataChannelName": "chat"},
                {"location": "local", "dataChannelName": "game"},
                {"location": "local"},
                {"location": "local", "dataChannelName": ""},
                {"location": "local", "dataChannelName": long},
                {"location": "local", "dataChannelName": "a\u{0}b"},
                {"dataChannelName": "nolocation"},
                {"location": "remote", "dataChannelName": "chat"},
                {"location": "remote", "sessionId": p, "dataChannelName": "chat"},
            ]),
        )
        .await;
    assert_eq!(r.len(), 9, "{r:?}");
    // A refused channel gets no stream id.
    assert!(
        r.iter()
            .all(|e| e.get("errorCode").is_none() || e.get("id").is_none()),
        "{r:?}"
    );
    assert_entry_error(&r[0], "duplicate_datachannel_name");
    let game = r[1]["id"].as_u64().unwrap();
    assert!(game > chat && game % 2 == 1, "{r:?}");
    for e in &r[2..8] {
        assert_entry_error(e, "invalid_params");
    }
    // A session cannot subscribe to itself.
    assert_entry_error(&r[8], "invalid_params");

    // Subscribe; then the ways of naming a channel that does not exist.
    let r = sfu
        .new_channels(
            &s,
            json!([
                {"location": "remote", "sessionId": p, "dataChannelName": "chat"},
                {"location": "remote", "sessionId": p, "dataChannelName": "nosuch"},
                {"location": "remote", "sessionId": "00000000000000000000000000000000", "dataChannelName": "chat"},
                {"location": "remote", "sessionId": "not-a-session", "dataChannelName": "chat"},
            ]),
        )
        .await;
    let sub_chat = r[0]["id"].as_u64().unwrap();
    assert_eq!(r[0]["sessionId"], p.as_str());
    for e in &r[1..] {
        assert_entry_error(e, "not_found");
    }
    // Sessions of another app cannot see this app's channels.
    let (status, body) = sfu
        .raw(
            Method::POST,
            "/v1/apps/other/sessions/new",
            Some("other-secret"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let other = body["sessionId"].as_str().unwrap().to_string();
    let (status, body) = sfu
        .raw(
            Method::POST,
            &format!("/v1/apps/other/sessions/{other}/datachannels/new"),
            Some("other-secret"),
            Some(
                json!({"dataChannels": [{"location": "local", "dataChannelName": "x"}]})
                    .to_string(),
            ),
        )
        .await;
    // That session has no m=application: the whole request is refused.
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_params");

    // Whole-request errors.
    let path = format!("/v1/apps/{APP}/sessions/{p}/datachannels/new");
    let one = json!({"dataChannels": [{"location": "local", "dataChannelName": "z"}]}).to_string();
    let (status, body) = sfu.raw(Method::POST, &path, None, Some(one.clone())).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = sfu
        .raw(Method::POST, &path, Some("wrong"), Some(one.clone()))
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = sfu
        .raw(
            Method::POST,
            &format!("/v1/apps/other/sessions/{p}/datachannels/new"),
            Some("other-secret"),
            Some(one.clone()),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "session_not_found");
    let (status, body) = sfu
        .raw(
            Method::POST,
            &format!("/v1/apps/{APP}/sessions/00000000000000000000000000000000/datachannels/new"),
            Some(SECRET),
            Some(one.clone()),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "session_not_found");
    let (status, body) = sfu
        .raw(Method::POST, &path, Some(SECRET), Some("{nope".into()))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "decoding_error");
    let (status, body) = sfu.raw(Method::POST, &path, Some(SECRET), None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "decoding_error");
    let (status, body) = sfu
        .raw(
            Method::POST,
            &path,
            Some(SECRET),
            Some(json!({"dataChannels": "chat"}).to_string()),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "decoding_error");
    let (status, body) = sfu
        .raw(
            Method::POST,
            &path,
            Some(SECRET),
            Some(json!({"dataChannels": []}).to_string()),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_params");
    let many: Vec<Value> = (0..65)
        .map(|i| json!({"location": "local", "dataChannelName": format!("m{i}")}))
        .collect();
    let (status, body) = sfu
        .raw(
            Method::POST,
            &path,
            Some(SECRET),
            Some(json!({ "dataChannels": many }).to_string()),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "too_many_datachannels",
    );
    let (status, body) = sfu.raw(Method::GET, &path, Some(SECRET), None).await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );

    // A session holds at most 32 channels: it has 2, so 30 of these 31 pass.
    let more: Vec<Value> = (0..31)
        .map(|i| json!({"location": "local", "dataChannelName": format!("q{i}")}))
        .collect();
    let r = sfu.new_channels(&p, Value::Array(more)).await;
    assert!(r[..30].iter().all(|e| e["id"].is_u64()), "{r:?}");
    assert_entry_error(&r[30], "too_many_datachannels");
    let q: Vec<Value> = (0..30)
        .map(|i| json!({"location": "local", "dataChannelName": format!("q{i}")}))
        .collect();
    let closed = sfu.close_channels(&p, Value::Array(q)).await;
    assert!(closed.iter().all(|e| e["id"].is_u64()), "{closed:?}");

    // GET lists them (not connected yet: initializing).
    let listed = sfu.listed(&p).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0]["location"], "local");
    assert_eq!(listed[0]["dataChannelName"], "chat");
    assert_eq!(listed[0]["id"], chat);
    assert_eq!(listed[0]["status"], "initializing");
    assert_eq!(listed[1]["dataChannelName"], "game");
    let listed = sfu.listed(&s).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["location"], "remote");
    assert_eq!(listed[0]["sessionId"], p.as_str());
    assert_eq!(listed[0]["id"], sub_chat);

    let m = sfu.metrics().await;
    assert_eq!(m.get("satsuma_sfu_datachannels"), 3.0);

    // Close: by id, by name; errors per entry.
    let r = sfu
        .close_channels(
            &p,
            json!([
                {"location": "local", "dataChannelName": "game"},
                {"id": 999},
                {"location": "local"},
                {"location": "remote", "sessionId": s, "dataChannelName": "chat"},
            ]),
        )
        .await;
    assert_eq!(r[0]["id"], game);
    assert_entry_error(&r[1], "not_found");
    assert_entry_error(&r[2], "invalid_params");
    assert_entry_error(&r[3], "not_found");
    let (status, body) = sfu
        .raw(
            Method::PUT,
            &format!("/v1/apps/{APP}/sessions/{p}/datachannels/close"),
            Some(SECRET),
            Some("\"chat\"".into()),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "decoding_error");
    let (status, body) = sfu
        .raw(
            Method::PUT,
            &format!("/v1/apps/{APP}/sessions/{p}/datachannels/close"),
            Some(SECRET),
            Some(json!({"dataChannels": []}).to_string()),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_params");
    let listed = sfu.listed(&p).await;
    assert_eq!(listed.len(), 1, "{listed:?}");

    // The publisher closes "chat": the subscription becomes inactive, and "chat" can no longer
    // be subscribed to.
    let r = sfu.close_channels(&p, json!([{"id": chat}])).await;
    assert_eq!(r[0]["id"], chat);
    until_status(&sfu, &s, sub_chat, "inactive").await;
    let r = sfu
        .new_channels(
            &s,
            json!([{"location": "remote", "sessionId": p, "dataChannelName": "chat"}]),
        )
        .await;
    assert_entry_error(&r[0], "not_found");
    // The subscriber closes its ended subscription by name.
    let r = sfu
        .close_channels(
            &s,
            json!([{"location": "remote", "sessionId": p, "dataChannelName": "chat"}]),
        )
        .await;
    assert_eq!(r[0]["id"], sub_chat);
    assert!(sfu.listed(&s).await.is_empty());

    // Publishing again, then deleting the publisher's session ends the new subscription.
    let r = sfu
        .new_channels(
            &p,
            json!([{"location": "local", "dataChannelName": "chat"}]),
        )
        .await;
    let chat2 = r[0]["id"].as_u64().unwrap();
    assert!(
        chat2 > game,
        "stream ids are not reused in a session: {r:?}"
    );
    let r = sfu
        .new_channels(
            &s,
            json!([{"location": "remote", "sessionId": p, "dataChannelName": "chat"}]),
        )
        .await;
    let sub2 = r[0]["id"].as_u64().unwrap();
    let (status, _) = sfu
        .call(Method::DELETE, &format!("sessions/{p}"), None)
        .await;
    assert!(status.is_success(), "{status}");
    until_status(&sfu, &s, sub2, "inactive").await;
    let m = sfu.metrics().await;
    assert_eq!(m.get("satsuma_sfu_datachannels"), 1.0);
    let (status, body) = sfu
        .raw(
            Method::PUT,
            &format!("/v1/apps/{APP}/sessions/{p}/datachannels/close"),
            Some(SECRET),
            Some(json!({"dataChannels": [{"id": 1}]}).to_string()),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "session_not_found");
    let _ = (&mut publisher, &mut subscriber);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_every_subscriber_in_order_within_limits() {
    let sfu = start_sfu().await;
    let mut publisher = Client::new();
    let mut sub1 = Client::new();
    let mut sub2 = Client::new();
    let p = publisher.join(&sfu).await;
    let s1 = sub1.join(&sfu).await;
    let s2 = sub2.join(&sfu).await;

    let r = sfu
        .new_channels(
            &p,
            json!([{"location": "local", "dataChannelName": "chat"}]),
        )
        .await;
    let pub_id = r[0]["id"].as_u64().unwrap() as u16;
    let mut ids = Vec::new();
    for s in [&s1, &s2] {
        let r = sfu
            .new_channels(
                s,
                json!([{"location": "remote", "sessionId": p, "dataChannelName": "chat"}]),
            )
            .await;
        ids.push(r[0]["id"].as_u64().unwrap() as u16);
    }
    let pub_ch = publisher.open(pub_id, "chat");
    let sub1_ch = sub1.open(ids[0], "chat");
    let sub2_ch = sub2.open(ids[1], "chat");
    until(
        &mut [&mut publisher, &mut sub1, &mut sub2],
        "every channel open",
        |c| {
            let (a, rest) = c.split_at_mut(1);
            let (b, d) = rest.split_at_mut(1);
            a[0].is_open(pub_ch) && b[0].is_open(sub1_ch) && d[0].is_open(sub2_ch)
        },
    )
    .await;
    until_status(&sfu, &p, u64::from(pub_id), "active").await;
    until_status(&sfu, &s1, u64::from(ids[0]), "active").await;

    // 50 text messages, a binary one, an oversize one (not forwarded), and one the subscriber
    // sends (one-way: not forwarded), then a last marker.
    let mut want: Vec<(bool, Vec<u8>)> = (0..50)
        .map(|i| (false, format!("message {i}").into_bytes()))
        .collect();
    want.push((true, vec![0, 1, 2, 255, 254]));
    for (binary, data) in &want {
        assert!(publisher.send(pub_ch, *binary, data));
        publisher.step();
    }
    assert!(publisher.send(pub_ch, true, &vec![7u8; 20_000]));
    assert!(sub1.send(sub1_ch, false, b"from a subscriber"));
    step_for(
        &mut [&mut publisher, &mut sub1, &mut sub2],
        Duration::from_millis(200),
    )
    .await;
    assert!(publisher.send(pub_ch, false, b"last"));
    want.push((false, b"last".to_vec()));
    until(
        &mut [&mut publisher, &mut sub1, &mut sub2],
        "every message at both subscribers",
        |c| c[1].received.len() >= want.len() && c[2].received.len() >= want.len(),
    )
    .await;
    step_for(
        &mut [&mut publisher, &mut sub1, &mut sub2],
        Duration::from_millis(200),
    )
    .await;
    for (sub, id) in [(&sub1, ids[0]), (&sub2, ids[1])] {
        let got: Vec<(bool, Vec<u8>)> = sub
            .received
            .iter()
            .map(|(stream, b, d)| {
                assert_eq!(*stream, id);
                (*b, d.clone())
            })
            .collect();
        assert_eq!(got, want, "in order, complete, nothing else");
    }
    assert!(
        publisher.received.is_empty(),
        "the publisher gets nothing back"
    );
    let m = sfu.metrics().await;
    assert_eq!(
        m.get("satsuma_sfu_datachannel_dropped_total{reason=\"too_large\"}"),
        1.0
    );
    assert_eq!(
        m.get("satsuma_sfu_datachannel_dropped_total{reason=\"not_published\"}"),
        1.0
    );
    assert_eq!(
        m.get("satsuma_sfu_datachannel_messages_out_total"),
        2.0 * want.len() as f64
    );

    // A flood: 1000 messages at once from a session allowed 200 per second (burst 200). Far
    // from all arrive, and those that do are in order.
    sub1.received.clear();
    let mut sent = 0;
    while sent < 1000 {
        if publisher.send(pub_ch, false, format!("{sent}").as_bytes()) {
            sent += 1;
        } else {
            publisher.step();
        }
    }
    step_for(
        &mut [&mut publisher, &mut sub1, &mut sub2],
        Duration::from_millis(1500),
    )
    .await;
    let got: Vec<u32> = sub1
        .received
        .iter()
        .map(|(_, _, d)| String::from_utf8(d.clone()).unwrap().parse().unwrap())
        .collect();
    assert!(got.len() >= 150 && got.len() < 700, "{} arrived", got.len());
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
    let m = sfu.metrics().await;
    assert!(m.get("satsuma_sfu_datachannel_dropped_total{reason=\"rate_limited\"}") >= 300.0);

    // The second subscriber closes its channel itself (an SCTP stream reset): the SFU forgets
    // the subscription, and messages keep reaching the first one only.
    sub2.rtc.direct_api().close_data_channel(sub2_ch);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        step_for(
            &mut [&mut publisher, &mut sub1, &mut sub2],
            Duration::from_millis(50),
        )
        .await;
        if sfu.listed(&s2).await.is_empty() {
            break;
        }
        assert!(
            Instant::now() < end,
            "the SFU never forgot sub2's closed channel"
        );
    }
    sub1.received.clear();
    sub2.received.clear();
    step_for(
        &mut [&mut publisher, &mut sub1, &mut sub2],
        Duration::from_millis(1100),
    )
    .await;
    assert!(publisher.send(pub_ch, false, b"after"));
    until(
        &mut [&mut publisher, &mut sub1, &mut sub2],
        "the message after sub2 left",
        |c| c[1].received.iter().any(|(_, _, d)| d == b"after"),
    )
    .await;
    assert!(sub2.received.is_empty(), "{:?}", sub2.received);

    // The publisher's session goes: the remaining subscriber's channel is closed by the SFU and
    // stays listed, inactive.
    let (status, _) = sfu
        .call(Method::DELETE, &format!("sessions/{p}"), None)
        .await;
    assert!(status.is_success());
    until(&mut [&mut sub1], "the subscriber's channel closed", |c| {
        c[0].closed.contains(&sub1_ch)
    })
    .await;
    until_status(&sfu, &s1, u64::from(ids[0]), "inactive").await;
    let m = sfu.metrics().await;
    assert_eq!(
        m.get("satsuma_sfu_datachannels"),
        1.0,
        "sub1's ended subscription"
    );
}
