//! Frame crypto throughput: encrypt and decrypt a 1,200-byte VP8 delta frame
//! and a 100-byte Opus frame in the DAVE format.
//!
//! With `FRAME_BENCH_CPU_TIME=1` the figures are this thread's CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`) instead of wall time, which stays meaningful
//! on a machine shared with other builds.
//!
//! Decryption needs a fresh nonce every time (replays are refused), so the
//! decrypt benchmark encrypts frames in untimed chunks and times decrypting
//! each once, in order.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use satsuma_e2ee::frame::{BaseSecret, Codec, Decryptor, Encryptor};

const SENDER: u64 = 7;

/// Wall time or thread CPU time, chosen by `FRAME_BENCH_CPU_TIME`.
#[derive(Clone, Copy)]
enum Clock {
    Wall,
    ThreadCpu,
}

impl Clock {
    fn from_env() -> Self {
        if std::env::var_os("FRAME_BENCH_CPU_TIME").is_some() {
            Self::ThreadCpu
        } else {
            Self::Wall
        }
    }

    fn now(self, origin: Instant) -> Duration {
        match self {
            Self::Wall => origin.elapsed(),
            Self::ThreadCpu => {
                let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
                Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
            }
        }
    }
}

fn frame(codec: Codec, len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
    if codec == Codec::Vp8 {
        f[0] = 0x31; // delta frame: 1 clear byte
    }
    f
}

fn bench_codec(c: &mut Criterion, name: &str, codec: Codec, len: usize) {
    let secret = BaseSecret::new([0x42; 16]);
    let plain = frame(codec, len);
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(len as u64));

    let mut encryptor = Encryptor::new();
    encryptor.set_key(1, &secret);
    let mut out = Vec::with_capacity(len + 32);
    let clock = Clock::from_env();
    let origin = Instant::now();
    group.bench_function("encrypt", |b| {
        b.iter_custom(|iters| {
            let start = clock.now(origin);
            for _ in 0..iters {
                let sealed = encryptor.encrypt_into(codec, black_box(&plain), &mut out);
                assert!(sealed.is_ok());
                black_box(&out);
            }
            clock.now(origin).saturating_sub(start)
        });
    });

    group.bench_function("decrypt", |b| {
        b.iter_custom(|iters| {
            // Fresh keys per sample; frames are encrypted (untimed) in chunks
            // and each is decrypted once, in order.
            const CHUNK: u64 = 4096;
            let mut sender = Encryptor::new();
            sender.set_key(1, &secret);
            let mut decryptor = Decryptor::default();
            decryptor.install_key(SENDER, 1, &secret, Duration::ZERO);
            // Far enough in the future that no generation is implausible.
            let now = Duration::from_secs(1 << 32);
            let mut plain_out = Vec::with_capacity(len);
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(CHUNK);
                let frames: Vec<Vec<u8>> = (0..n)
                    .map(|_| sender.encrypt(codec, &plain).unwrap_or_default())
                    .collect();
                let start = clock.now(origin);
                for sealed in &frames {
                    let opened =
                        decryptor.decrypt_into(SENDER, black_box(sealed), now, &mut plain_out);
                    assert!(
                        opened.is_ok(),
                        "benchmark frame failed to decrypt: {opened:?}"
                    );
                    black_box(&plain_out);
                }
                total += clock.now(origin).saturating_sub(start);
                left -= n;
            }
            total
        });
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_codec(c, "vp8_1200B", Codec::Vp8, 1200);
    bench_codec(c, "opus_100B", Codec::Opus, 100);
}

criterion_group!(frame_benches, benches);
criterion_main!(frame_benches);
