//! Seeded simulation with real openmls: members join, leave and crash at random
//! (the designated committer included, with or without its last messages reaching
//! the coordinator) while log delivery and message delivery interleave randomly,
//! against an in-memory coordinator implementing `docs/e2ee-relay.md`. After churn
//! stops the room must converge on 20 members in one group and epoch, with equal
//! safety numbers, and every member must decrypt every other member's frames.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sim_support;

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use satsuma_e2ee::frame::Codec;
use satsuma_e2ee::member::MemberConfig;
use sim_support::Room;

const TARGET: usize = 20;

fn run(seed: u64, churn_steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut room = Room::new(MemberConfig::default());
    // Crashed participants and the step at which their presence times out.
    let mut crashed: BTreeMap<u64, usize> = BTreeMap::new();
    let mut committer_crashes = 0;
    for _ in 0..6 {
        room.join();
    }
    for step in 0..churn_steps {
        let ids: Vec<u64> = room.clients.keys().copied().collect();
        let roll = rng.random_range(0..100);
        match roll {
            0..=5 if room.clients.len() < TARGET => {
                room.join();
            }
            6..=7 if room.clients.len() > 2 => {
                let id = ids[rng.random_range(0..ids.len())];
                room.leave(id);
            }
            8 if room.clients.len() > 2 => {
                // Crash the designated committer if there is one.
                let dc = ids
                    .iter()
                    .copied()
                    .find(|id| room.clients[id].member.is_committer());
                if let Some(id) = dc {
                    let sent = rng.random_bool(0.5);
                    room.crash(id, sent);
                    crashed.insert(id, step + rng.random_range(5..40));
                    committer_crashes += 1;
                }
            }
            9 if room.clients.len() > 2 => {
                let id = ids[rng.random_range(0..ids.len())];
                room.crash(id, rng.random_bool(0.5));
                crashed.insert(id, step + rng.random_range(5..40));
            }
            10..=54 if !ids.is_empty() => {
                let id = ids[rng.random_range(0..ids.len())];
                room.deliver(id, rng.random_range(1..30));
            }
            55..=89 if !ids.is_empty() => {
                let id = ids[rng.random_range(0..ids.len())];
                room.flush(id, rng.random_range(1..8));
            }
            _ => room.advance(Duration::from_millis(rng.random_range(10..400))),
        }
        let due: Vec<u64> = crashed
            .iter()
            .filter(|(_, at)| **at <= step)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            crashed.remove(&id);
            room.expire(id);
        }
    }
    let creators = room
        .coord
        .log
        .iter()
        .filter(|l| {
            matches!(
                l,
                sim_support::Logged::Json(satsuma_e2ee::relay::Entry::Creator { .. })
            )
        })
        .count();
    let committers: std::collections::BTreeSet<u64> = room
        .coord
        .log
        .iter()
        .filter_map(|l| match l {
            sim_support::Logged::Binary(b) => {
                let f = satsuma_e2ee::relay::ServerFrame::decode(b).ok()?;
                matches!(f.handshake, satsuma_e2ee::relay::Handshake::Commit { .. })
                    .then_some(f.from)
            }
            _ => None,
        })
        .collect();
    println!("seed {seed}: distinct committers during churn: {committers:?}");
    println!(
        "seed {seed}: after churn {} live, coordinator epoch {:?}, {creators} creator entries, {} log entries",
        room.clients.len(),
        room.coord.epoch(),
        room.coord.log.len()
    );
    // Churn stops: pending presence timeouts fire, the room fills up to 20.
    for id in std::mem::take(&mut crashed).into_keys() {
        room.expire(id);
    }
    while room.clients.len() < TARGET {
        room.join();
    }
    let rounds = room.settle(2_000);
    assert!(
        room.converged(),
        "seed {seed}: not converged after {rounds} rounds; epochs: {:?}",
        room.clients
            .iter()
            .map(|(id, c)| (*id, c.member.epoch(), c.member.members().len()))
            .collect::<Vec<_>>()
    );
    assert_eq!(room.clients.len(), TARGET);
    // Churn never raised a false alarm, and no honest commit was unprocessable.
    for (id, c) in &room.clients {
        let s = c.member.stats();
        assert_eq!(s.refused_epochs, 0, "seed {seed}: {id} refused an epoch");
        assert!(c.member.alarm().is_none(), "seed {seed}: {id} alarmed");
    }
    println!(
        "seed {seed}: converged at epoch {:?} after {} log entries, {committer_crashes} committer crashes, {} rejected commits",
        room.clients.values().next().and_then(|c| c.member.epoch()),
        room.coord.log.len(),
        room.coord.rejected_commits
    );
    // Every member decrypts every other member's frames.
    let ids: Vec<u64> = room.clients.keys().copied().collect();
    for s in &ids {
        let frame: Vec<u8> = (0..120u8).map(|b| b.wrapping_mul(*s as u8)).collect();
        let sender = room.clients.get_mut(s).unwrap();
        let enc = sender.member.encrypt(Codec::Opus, &frame).unwrap();
        for r in &ids {
            if r == s {
                continue;
            }
            let now = room.now;
            let got = room
                .clients
                .get_mut(r)
                .unwrap()
                .member
                .decrypt(*s, &enc, now)
                .unwrap_or_else(|e| panic!("seed {seed}: {r} cannot decrypt {s}: {e:?}"));
            assert_eq!(got.frame, frame);
        }
    }
}

#[test]
fn twenty_members_with_churn_converge_and_decrypt() {
    let seeds: Vec<u64> = match std::env::var("SATSUMA_SIM_SEEDS") {
        Ok(v) => v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) => vec![1, 2, 3],
    };
    for seed in seeds {
        run(seed, 1_500);
    }
}
