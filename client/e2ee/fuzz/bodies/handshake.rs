//! Hostile relay input into a Member: arbitrary bytes become a sequence of binary
//! server frames, commit / KeyPackage entries with arbitrary MLS bytes, JSON-side
//! entries and ticks, fed to a group creator (a member at epoch 0) and to a joiner
//! (no group yet). Nothing may panic; the members must keep answering.
//!
//! Shared by the cargo-fuzz target `handshake` and by `tests/fuzz_corpus.rs`, which
//! replays every file of `fuzz/corpus/handshake/` through it.

use std::time::Duration;

use satsuma_e2ee::member::{Member, MemberConfig};
use satsuma_e2ee::relay::Entry;

fn member(id: u64, creator: bool) -> Option<Member> {
    let identity = satsuma_e2ee::identity::Identity::from_seed([id as u8; 32], "fuzz");
    let mut m = Member::new(id, identity, MemberConfig::default()).ok()?;
    let t = Duration::from_secs(1);
    m.handle_welcome(t, 0, &[1, 2]);
    if creator {
        m.handle_entry(
            t,
            Entry::Creator {
                seq: 1,
                id,
                group_id: b"fuzz-room".to_vec(),
            },
        );
    }
    Some(m)
}

fn u64_at(d: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    for (k, x) in b.iter_mut().enumerate() {
        *x = d.get(i + k).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

pub(crate) fn run(data: &[u8]) {
    let (Some(mut creator), Some(mut joiner)) = (member(1, true), member(2, false)) else {
        return;
    };
    let mut seq = 1u64;
    let mut now = Duration::from_secs(1);
    let mut rest = data;
    // Each op: 1 byte opcode, 2 bytes length, then that many bytes.
    while rest.len() >= 3 {
        let op = rest[0];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]]));
        let body = &rest[3..(3 + len).min(rest.len())];
        rest = &rest[(3 + len).min(rest.len())..];
        seq += 1;
        let from = u64::from(op >> 4) % 4;
        let entry = match op & 0x0f {
            0 => {
                for m in [&mut creator, &mut joiner] {
                    let _ = m.handle_binary(now, body);
                }
                continue;
            }
            1 => Entry::KeyPackage {
                seq,
                from,
                key_package: body.to_vec(),
            },
            2 | 3 => {
                let cut = usize::from(body.first().copied().unwrap_or(0)).min(body.len());
                Entry::Commit {
                    seq,
                    from,
                    commit: body[..cut].to_vec(),
                    welcome: body[cut..].to_vec(),
                }
            }
            4 => Entry::Joined { seq, id: from },
            5 => Entry::Left { seq, id: from },
            6 => Entry::Creator {
                seq,
                id: from,
                group_id: body.to_vec(),
            },
            7 => Entry::Execute {
                seq,
                epoch: u64_at(body, 0),
            },
            _ => {
                now += Duration::from_millis(u64_at(body, 0) % 20_000);
                creator.tick(now);
                joiner.tick(now);
                continue;
            }
        };
        creator.handle_entry(now, entry.clone());
        joiner.handle_entry(now, entry);
        // Whatever the members want to send must be well-formed for the relay.
        for m in [&mut creator, &mut joiner] {
            while let Some(o) = m.poll_outbound() {
                if let satsuma_e2ee::member::Outbound::Binary(b) = o {
                    assert!(satsuma_e2ee::relay::Handshake::decode_client_frame(&b).is_ok());
                }
            }
            while m.poll_event().is_some() {}
        }
    }
    let _ = creator.encrypt(satsuma_e2ee::frame::Codec::Opus, &[1, 2, 3]);
}
