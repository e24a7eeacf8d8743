//! 200 concurrent connections across 20 rooms, without an error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Client, Got};
use satsuma_coordinator::Config;
use satsuma_coordinator::mls_framing::{WireFormat, build};
use satsuma_coordinator::protocol::{ClientMessage, client_key_package_frame};

const ROOMS: usize = 20;
const PER_ROOM: usize = 10;
const MESSAGES: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_connections_in_twenty_rooms() {
    let server = common::start(Config::dev()).await;
    let url = server.http_url();

    // Connect everyone concurrently.
    let mut joins = Vec::new();
    for r in 0..ROOMS {
        for p in 0..PER_ROOM {
            let t = common::token(&server, &format!("load-{r}"), &format!("u{r}-{p}"));
            let room = format!("load-{r}");
            let ws_url = server.ws_url(&room);
            joins.push(tokio::spawn(async move {
                (r, Client::join_url(&ws_url, &t).await)
            }));
        }
    }
    let mut rooms: Vec<Vec<Client>> = (0..ROOMS).map(|_| Vec::new()).collect();
    for j in joins {
        let (r, c) = j.await.unwrap();
        rooms[r].push(c);
    }

    // Everyone sends a few JSON and binary messages at once.
    let mut tasks = Vec::new();
    for (r, members) in rooms.into_iter().enumerate() {
        for mut c in members {
            tasks.push(tokio::spawn(async move {
                for k in 0..MESSAGES {
                    if k % 2 == 0 {
                        let kp = build::message(WireFormat::KeyPackage, &[k as u8]);
                        c.send_binary(client_key_package_frame(&kp)).await;
                    } else {
                        c.send(ClientMessage::Ping { t: None }).await;
                    }
                }
                // Read until every member's key packages (and every join) arrived.
                let kps_expected = PER_ROOM * MESSAGES.div_ceil(2);
                let mut kps = 0;
                let mut errors = 0;
                while kps < kps_expected {
                    match c.recv().await {
                        Got::Mls(_) => kps += 1,
                        Got::Direct(satsuma_coordinator::protocol::ServerMessage::Error {
                            ..
                        }) => errors += 1,
                        Got::Close(code, reason) => panic!("closed {code} {reason}"),
                        _ => {}
                    }
                }
                (r, c.id, c.last_seq, errors)
            }));
        }
    }
    let mut last_seq_per_room = vec![Vec::new(); ROOMS];
    for t in tasks {
        let (r, _id, last, errors) = t.await.unwrap();
        assert_eq!(errors, 0);
        last_seq_per_room[r].push(last);
    }
    for seqs in &last_seq_per_room {
        assert_eq!(seqs.len(), PER_ROOM);
    }
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("satsuma_coord_rooms {ROOMS}")),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("satsuma_coord_participants {}", ROOMS * PER_ROOM)));
    assert!(!metrics.contains("satsuma_coord_errors_total"), "{metrics}");
    server.shutdown().await;
}
