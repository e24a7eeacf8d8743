//! All members of a room see the same entries in the same order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Client, Got, start_dev};
use satsuma_coordinator::mls_framing::{WireFormat, build};
use satsuma_coordinator::protocol::{ClientMessage, RoomEvent, client_key_package_frame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_see_one_total_order() {
    let server = start_dev().await;
    let mut members = Vec::new();
    for i in 0..5 {
        members.push(Client::join(&server, "order", &format!("m{i}")).await);
    }
    // Everyone catches up with the joins.
    let joined_seq = {
        let last = members.last_mut().unwrap();
        last.until_event(|e| matches!(e, RoomEvent::Joined { .. }))
            .await
            .seq
    };
    for m in &mut members {
        m.catch_up(joined_seq).await;
    }
    let start = joined_seq;

    // Everyone sends interleaved JSON and binary entries at the same time.
    const PER_MEMBER: usize = 20;
    let mut tasks = Vec::new();
    for mut m in members {
        tasks.push(tokio::spawn(async move {
            for k in 0..PER_MEMBER {
                if k % 2 == 0 {
                    m.send(ClientMessage::Hand { raised: k % 4 == 0 }).await;
                } else {
                    let kp =
                        build::message(WireFormat::KeyPackage, format!("{}-{k}", m.id).as_bytes());
                    m.send_binary(client_key_package_frame(&kp)).await;
                }
            }
            m
        }));
    }
    let mut members = Vec::new();
    for t in tasks {
        members.push(t.await.unwrap());
    }
    // Each member reads until it has seen all of its own key packages; then all
    // key packages of everyone (5 × 10).
    for m in &mut members {
        let mut kps = 0;
        while kps < 5 * PER_MEMBER / 2 {
            if let Got::Mls(_) = m.entry().await {
                kps += 1;
            }
        }
        m.sync().await;
    }
    let end = members.iter().map(|m| m.last_seq).max().unwrap();
    for m in &mut members {
        m.catch_up(end).await;
    }
    let reference: Vec<Got> = members[0]
        .log
        .iter()
        .filter(|g| g.seq().unwrap() > start)
        .cloned()
        .collect();
    assert!(reference.len() >= 5 * PER_MEMBER / 2);
    for m in &members[1..] {
        let mine: Vec<Got> = m
            .log
            .iter()
            .filter(|g| g.seq().unwrap() > start)
            .cloned()
            .collect();
        assert_eq!(mine, reference, "participant {} saw another order", m.id);
    }
    // Each member's own messages appear in the order it sent them.
    for m in &members {
        let own: Vec<Vec<u8>> = reference
            .iter()
            .filter_map(|g| match g {
                Got::Mls(f) if f.from == m.id => Some(f.payload[4..].to_vec()),
                _ => None,
            })
            .collect();
        let expected: Vec<Vec<u8>> = (0..PER_MEMBER)
            .filter(|k| k % 2 == 1)
            .map(|k| format!("{}-{k}", m.id).into_bytes())
            .collect();
        assert_eq!(own, expected);
    }
    server.shutdown().await;
}
