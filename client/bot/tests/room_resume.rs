//! The native room member through a real coordinator on 127.0.0.1: three members share one
//! MLS group; one loses its connection (close 4999, no `leave`), resumes from its last `seq`
//! and stays in the same group; a fourth then joins and all four agree on one epoch and one
//! safety number. Throughout, what one member encrypts every other member decrypts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::member;

use std::time::{Duration, Instant};

use satsuma_bot::room::{MemberView, RoomMember};
use satsuma_coordinator::{Config, Server};

const PATIENCE: Duration = Duration::from_secs(30);

/// All members in the group at one epoch with one safety number and `n` members' worth of
/// agreement; returns the epoch.
async fn converged(members: &[&RoomMember]) -> (u64, String) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let views: Vec<MemberView> = members.iter().map(|m| m.view()).collect();
        let first = &views[0];
        if let (Some(epoch), Some(number)) = (first.epoch, first.safety_number.clone())
            && views.iter().all(|v| {
                v.phase == "member"
                    && v.epoch == first.epoch
                    && v.send_epoch == first.epoch
                    && v.safety_number == first.safety_number
            })
        {
            return (epoch, number);
        }
        assert!(Instant::now() < deadline, "no common group: {views:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A VP8 keyframe (the codec header stays clear; the rest is encrypted).
const VP8_KEYFRAME: [u8; 18] = [
    0x10, 2, 0, 0x9d, 1, 0x2a, 0x80, 2, 0xe0, 1, 5, 6, 7, 8, 9, 10, 11, 12,
];

/// `from` encrypts a frame (waiting for its send key of the current epoch) and every member
/// of `to` decrypts it back to the plaintext; a replay of it is refused.
async fn frames_cross(from: &RoomMember, to: &[&RoomMember]) {
    let deadline = Instant::now() + PATIENCE;
    let mut plain = VP8_KEYFRAME.to_vec();
    plain.push(rand::random());
    let sealed = loop {
        if let Some(s) = from.encrypt("video/VP8", plain.clone()).await {
            break s;
        }
        assert!(Instant::now() < deadline, "no send key: {:?}", from.view());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(sealed, plain);
    let sender = from.view().participant_id;
    for m in to {
        let open = m.decrypt(sender, true, sealed.clone()).await;
        assert_eq!(open.as_deref(), Some(&plain[..]), "{:?}", m.view());
        assert_eq!(
            m.decrypt(sender, true, sealed.clone()).await,
            None,
            "replay"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_resumes_after_a_lost_connection_and_the_group_carries_on() {
    let server = Server::bind(Config::dev()).await.unwrap();
    let a = member(&server, "resume", "Alice").await;
    let b = member(&server, "resume", "Bob").await;
    let c = member(&server, "resume", "Carol").await;
    let (epoch, number) = converged(&[&a, &b, &c]).await;
    frames_cross(&a, &[&b, &c]).await;
    frames_cross(&c, &[&a, &b]).await;

    b.drop_connection();
    let resumed = b
        .wait_for(PATIENCE, |v| v.resumes == 1 && v.closed.is_none())
        .await
        .expect("Bob resumes");
    assert!(resumed.last_seq > 0);
    // The resume changed nobody's membership: same group, same epoch, same number.
    let (after, same) = converged(&[&a, &b, &c]).await;
    assert_eq!((after, &same), (epoch, &number));
    frames_cross(&b, &[&a, &c]).await;

    let d = member(&server, "resume", "Dave").await;
    let (grown, four) = converged(&[&a, &b, &c, &d]).await;
    assert!(grown > epoch, "Dave's join is a new epoch");
    assert_ne!(four, number);
    assert_eq!(b.view().resumes, 1);
    frames_cross(&d, &[&a, &b, &c]).await;
    frames_cross(&a, &[&b, &c, &d]).await;
    // A frame under another sender's id opens with no key.
    let sealed = a.encrypt("video/VP8", VP8_KEYFRAME.to_vec()).await.unwrap();
    assert_eq!(d.decrypt(b.view().participant_id, true, sealed).await, None);

    for m in [a, b, c, d] {
        m.leave().await;
    }
}
