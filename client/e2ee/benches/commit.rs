//! MLS commit costs at group sizes 2, 10, 50 and 100, through [`Group`] (openmls
//! 0.9.2, `openmls_rust_crypto`, X25519/Ed25519): the committer creating an add
//! commit (with its Welcome) and a remove commit, and another member processing
//! each. Every iteration adds one fresh member and removes it again, so the group
//! size stays at `n` (± 1); only the named step is timed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use satsuma_e2ee::group::Group;

const COMMITTER: u64 = 1;

/// A fixed long-term identity per participant id.
fn ident(id: u64) -> satsuma_e2ee::identity::Identity {
    let mut seed = [1u8; 32];
    seed[..8].copy_from_slice(&id.to_be_bytes());
    satsuma_e2ee::identity::Identity::from_seed(seed, &format!("member {id}"))
}

/// Every participant id a test uses counts as seen joining the room.
fn all() -> std::collections::BTreeSet<u64> {
    (0..=1_000).collect()
}
const OBSERVER: u64 = 2;

/// Committer and one observing member in a group of `n` built by single adds.
fn group(n: u64) -> (Group, Group) {
    let mut a = Group::new(COMMITTER, ident(COMMITTER)).unwrap();
    a.create(b"bench-room").unwrap();
    let mut b = Group::new(OBSERVER, ident(OBSERVER)).unwrap();
    let kp = b.key_package().unwrap();
    let kp = a.parse_key_package(OBSERVER, &kp).unwrap();
    let (c, w) = a.commit(Some(&kp), &[]).unwrap();
    a.process_commit(COMMITTER, &c, &w, &all());
    b.process_commit(COMMITTER, &c, &w, &all());
    for id in 3..=n {
        let mut j = Group::new(id, ident(id)).unwrap();
        let kp = j.key_package().unwrap();
        let kp = a.parse_key_package(id, &kp).unwrap();
        let (c, w) = a.commit(Some(&kp), &[]).unwrap();
        a.process_commit(COMMITTER, &c, &w, &all());
        b.process_commit(COMMITTER, &c, &w, &all());
    }
    (a, b)
}

#[derive(Clone, Copy)]
enum Step {
    AddCommit,
    AddProcess,
    RemoveCommit,
    RemoveProcess,
}

/// One add + remove cycle; returns the time of `step`.
fn cycle(a: &mut Group, b: &mut Group, joiner: u64, step: Step) -> Duration {
    let mut j = Group::new(joiner, ident(joiner)).unwrap();
    let kp = j.key_package().unwrap();
    let kp = a.parse_key_package(joiner, &kp).unwrap();
    let t = Instant::now();
    let (c, w) = a.commit(Some(&kp), &[]).unwrap();
    let add_commit = t.elapsed();
    a.process_commit(COMMITTER, &c, &w, &all());
    let t = Instant::now();
    b.process_commit(COMMITTER, &c, &w, &all());
    let add_process = t.elapsed();
    let t = Instant::now();
    let (c, w) = a.commit(None, &[joiner]).unwrap();
    let remove_commit = t.elapsed();
    a.process_commit(COMMITTER, &c, &w, &all());
    let t = Instant::now();
    b.process_commit(COMMITTER, &c, &w, &all());
    let remove_process = t.elapsed();
    assert_eq!(a.epoch(), b.epoch());
    match step {
        Step::AddCommit => add_commit,
        Step::AddProcess => add_process,
        Step::RemoveCommit => remove_commit,
        Step::RemoveProcess => remove_process,
    }
}

fn commits(c: &mut Criterion) {
    let mut g = c.benchmark_group("mls_commit");
    g.sample_size(10);
    for n in [2u64, 10, 50, 100] {
        let (mut a, mut b) = group(n);
        let mut joiner = 10_000u64;
        for (name, step) in [
            ("add_create", Step::AddCommit),
            ("add_process", Step::AddProcess),
            ("remove_create", Step::RemoveCommit),
            ("remove_process", Step::RemoveProcess),
        ] {
            g.bench_with_input(BenchmarkId::new(name, n), &n, |bench, _| {
                bench.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        joiner += 1;
                        total += cycle(&mut a, &mut b, joiner, step);
                    }
                    total
                });
            });
        }
    }
    g.finish();
}

criterion_group!(benches, commits);
criterion_main!(benches);
