//! Churn through a real coordinator on 127.0.0.1: six native members, then 16 random changes
//! (3 to 8 members), (the shipping E2EE core) join,
//! leave, lose their connection and resume at random, one change at a time while the group
//! runs its commits; afterwards all of them agree on one epoch and safety number, and every
//! member decrypts every other member's frames. `SATSUMA_CHURN_SEED` replays a run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::member;

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use satsuma_bot::room::{MemberView, RoomMember};
use satsuma_coordinator::{Config, Server};

const PATIENCE: Duration = Duration::from_secs(30);
const VP8_KEYFRAME: [u8; 18] = [
    0x10, 2, 0, 0x9d, 1, 0x2a, 0x80, 2, 0xe0, 1, 5, 6, 7, 8, 9, 10, 11, 12,
];

/// Everyone in one group: same epoch (also the one they send in) and safety number.
async fn converged(members: &[RoomMember], within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let views: Vec<MemberView> = members.iter().map(RoomMember::view).collect();
        let first = &views[0];
        if let Some(epoch) = first.epoch
            && first.safety_number.is_some()
            && views.iter().all(|v| {
                v.phase == "member"
                    && v.closed.is_none()
                    && v.epoch == first.epoch
                    && v.send_epoch == first.epoch
                    && v.safety_number == first.safety_number
            })
        {
            return epoch;
        }
        assert!(Instant::now() < deadline, "no common group: {views:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_with_churn_converge_and_decrypt_each_other() {
    let seed = std::env::var("SATSUMA_CHURN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("SATSUMA_CHURN_SEED={seed}");
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let server = Server::bind(Config::dev()).await.unwrap();
    let room = "churn";
    let mut next = 0u32;
    let mut members = Vec::new();
    for _ in 0..6 {
        next += 1;
        members.push(member(&server, room, &format!("M{next}")).await);
    }
    converged(&members, PATIENCE).await;

    let (mut joins, mut leaves, mut drops) = (0, 0, 0);
    let mut last_change = Instant::now();
    for _ in 0..16 {
        match rng.random_range(0..3) {
            0 if members.len() > 3 => {
                let i = rng.random_range(0..members.len());
                members.swap_remove(i).leave().await;
                leaves += 1;
            }
            1 if members.len() < 8 => {
                next += 1;
                members.push(member(&server, room, &format!("M{next}")).await);
                joins += 1;
            }
            _ => {
                let i = rng.random_range(0..members.len());
                members[i].drop_connection();
                drops += 1;
            }
        }
        last_change = Instant::now();
        // The next change comes at a random point of the group's reaction to this one.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
    }
    println!("churn: {joins} joins, {leaves} leaves, {drops} dropped connections");
    let epoch = converged(&members, PATIENCE).await;
    println!(
        "{} members converged on epoch {epoch} {:?} after the last change",
        members.len(),
        last_change.elapsed()
    );

    for from in &members {
        let sealed = from.encrypt("video/VP8", VP8_KEYFRAME.to_vec()).await;
        let sealed = sealed.expect("a send key after convergence");
        let sender = from.view().participant_id;
        for to in members.iter().filter(|m| m.view().participant_id != sender) {
            assert_eq!(
                to.decrypt(sender, true, sealed.clone()).await.as_deref(),
                Some(&VP8_KEYFRAME[..]),
                "{} cannot decrypt {sender} (seed {seed}): {:?}",
                to.view().participant_id,
                to.view()
            );
        }
    }
    for m in members {
        m.leave().await;
    }
}
