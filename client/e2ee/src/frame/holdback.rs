//! Frames that arrive before their key.
//!
//! A sender switches to a new epoch's key when the coordinator says `execute`;
//! a receiver installs that key when it has processed the commit. On a loaded
//! machine the receiver can be a few hundred milliseconds late, and the
//! sender's first frames under the new key would fail authentication. Instead
//! of dropping them, a receiver holds each frame no held key authenticates, in
//! arrival order, and tries the queue again whenever a key was installed
//! ([`Decryptor::key_installs`] changed). Held frames leave the queue in
//! order, decrypted or dropped:
//! - a held frame that now decrypts is delivered, and every older held frame
//!   that still does not is dropped (a newer frame made it, so they never will);
//! - a new frame that decrypts with a key already held drops the whole queue
//!   first, for the same reason;
//! - a frame held longer than [`HoldbackConfig::max_age`], or pushed out by
//!   the frame and byte bounds, is dropped with the reason it last failed for.
//!
//! Nothing is delivered that did not authenticate; holding only delays the
//! verdict. Reasons that a later key cannot change (not a protocol frame, a
//! replay, an erased generation, a sender whose keys all expired) drop at once.

use std::collections::VecDeque;
use std::time::Duration;

use super::decryptor::{Decrypted, Decryptor, DropReason};

/// Bounds of one track's queue. [`Default`] holds up to 3 s, 256 frames and
/// 2 MiB: more than a coordinator's `execute` timeout (2 s) of 1080p video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldbackConfig {
    /// The longest a frame waits for its key.
    pub max_age: Duration,
    /// Frames held at most.
    pub max_frames: usize,
    /// Bytes held at most (a larger frame is dropped at once).
    pub max_bytes: usize,
}

impl Default for HoldbackConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(3),
            max_frames: 256,
            max_bytes: 2 * 1024 * 1024,
        }
    }
}

/// What became of a frame, in the order the caller must pass them on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<T> {
    /// Decrypted: pass `frame` on in place of the frame `token` names.
    Deliver {
        /// The caller's handle of the frame.
        token: T,
        /// The decrypted frame.
        frame: Decrypted,
    },
    /// Dropped: discard the frame `token` names.
    Drop {
        /// The caller's handle of the frame.
        token: T,
        /// Why (the last failure).
        reason: DropReason,
    },
}

#[derive(Debug)]
struct Held<T> {
    token: T,
    frame: Vec<u8>,
    arrived: Duration,
    reason: DropReason,
}

/// One inbound track's queue of frames waiting for a key; the caller keeps the
/// frames' handles (`T`), this keeps a copy of their bytes.
#[derive(Debug)]
pub struct Holdback<T> {
    config: HoldbackConfig,
    queue: VecDeque<Held<T>>,
    bytes: usize,
    /// [`Decryptor::key_installs`] when the queue was last tried.
    tried_at: u64,
    released: u64,
}

impl<T> Default for Holdback<T> {
    fn default() -> Self {
        Self::new(HoldbackConfig::default())
    }
}

/// Whether a later key could make a frame that failed for `reason` decrypt.
fn may_change(reason: &DropReason) -> bool {
    matches!(
        reason,
        DropReason::AuthenticationFailed
            | DropReason::UnknownSender(_)
            | DropReason::GenerationOutOfRange(_)
    )
}

impl<T> Holdback<T> {
    /// An empty queue.
    #[must_use]
    pub fn new(config: HoldbackConfig) -> Self {
        Self {
            config,
            queue: VecDeque::new(),
            bytes: 0,
            tried_at: 0,
            released: 0,
        }
    }

    /// Frames held now.
    #[must_use]
    pub fn held(&self) -> usize {
        self.queue.len()
    }

    /// Bytes held now.
    #[must_use]
    pub fn held_bytes(&self) -> usize {
        self.bytes
    }

    /// Frames that were held and then decrypted (late, but not lost).
    #[must_use]
    pub fn released(&self) -> u64 {
        self.released
    }

    /// One frame from `sender` arrived at `now`; appends to `out` the verdicts
    /// now due, in order (held frames first, then possibly this one).
    pub fn receive(
        &mut self,
        decryptor: &mut Decryptor,
        sender: u64,
        token: T,
        frame: &[u8],
        now: Duration,
        out: &mut Vec<Verdict<T>>,
    ) {
        self.poll(decryptor, sender, now, out);
        match decryptor.decrypt(sender, frame, now) {
            Ok(decrypted) => {
                self.drop_all(out);
                out.push(Verdict::Deliver {
                    token,
                    frame: decrypted,
                });
            }
            Err(reason) if may_change(&reason) && frame.len() <= self.config.max_bytes => {
                self.tried_at = decryptor.key_installs();
                self.bytes += frame.len();
                self.queue.push_back(Held {
                    token,
                    frame: frame.to_vec(),
                    arrived: now,
                    reason,
                });
                while self.queue.len() > self.config.max_frames
                    || self.bytes > self.config.max_bytes
                {
                    let Some(old) = self.pop() else { break };
                    out.push(Verdict::Drop {
                        token: old.token,
                        reason: old.reason,
                    });
                }
            }
            Err(reason) => out.push(Verdict::Drop { token, reason }),
        }
    }

    /// Time passed or keys changed: drops what waited too long, then tries the
    /// queue again if a key was installed since the last try.
    pub fn poll(
        &mut self,
        decryptor: &mut Decryptor,
        sender: u64,
        now: Duration,
        out: &mut Vec<Verdict<T>>,
    ) {
        while let Some(front) = self.queue.front() {
            if now.saturating_sub(front.arrived) < self.config.max_age {
                break;
            }
            let Some(old) = self.pop() else { break };
            out.push(Verdict::Drop {
                token: old.token,
                reason: old.reason,
            });
        }
        if self.queue.is_empty() || decryptor.key_installs() == self.tried_at {
            return;
        }
        self.tried_at = decryptor.key_installs();
        let mut still: VecDeque<Held<T>> = VecDeque::with_capacity(self.queue.len());
        while let Some(mut held) = self.queue.pop_front() {
            match decryptor.decrypt(sender, &held.frame, now) {
                Ok(decrypted) => {
                    for older in still.drain(..) {
                        out.push(Verdict::Drop {
                            token: older.token,
                            reason: older.reason,
                        });
                    }
                    self.released += 1;
                    out.push(Verdict::Deliver {
                        token: held.token,
                        frame: decrypted,
                    });
                }
                Err(reason) if may_change(&reason) => {
                    held.reason = reason;
                    still.push_back(held);
                }
                Err(reason) => out.push(Verdict::Drop {
                    token: held.token,
                    reason,
                }),
            }
        }
        self.bytes = still.iter().map(|h| h.frame.len()).sum();
        self.queue = still;
    }

    /// Drops every held frame (the track ended, or a newer frame decrypted).
    pub fn drop_all(&mut self, out: &mut Vec<Verdict<T>>) {
        while let Some(old) = self.pop() {
            out.push(Verdict::Drop {
                token: old.token,
                reason: old.reason,
            });
        }
    }

    fn pop(&mut self) -> Option<Held<T>> {
        let old = self.queue.pop_front()?;
        self.bytes = self.bytes.saturating_sub(old.frame.len());
        Some(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{BaseSecret, Codec, Encryptor};

    const SENDER: u64 = 7;

    fn secret(byte: u8) -> BaseSecret {
        BaseSecret::new([byte; 16])
    }

    fn encryptor(byte: u8) -> Encryptor {
        let mut e = Encryptor::default();
        e.set_key(1, &secret(byte));
        e
    }

    fn frames(e: &mut Encryptor, n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let payload = vec![u8::try_from(i % 251).unwrap_or(0); 200];
                e.encrypt(Codec::Opus, &payload).expect("encrypt")
            })
            .collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn delivered(out: &[Verdict<usize>]) -> Vec<usize> {
        out.iter()
            .filter_map(|v| match v {
                Verdict::Deliver { token, .. } => Some(*token),
                Verdict::Drop { .. } => None,
            })
            .collect()
    }

    fn dropped(out: &[Verdict<usize>]) -> Vec<usize> {
        out.iter()
            .filter_map(|v| match v {
                Verdict::Drop { token, .. } => Some(*token),
                Verdict::Deliver { .. } => None,
            })
            .collect()
    }

    #[test]
    fn frames_under_a_key_installed_late_are_delivered_in_order() {
        let mut dec = Decryptor::default();
        dec.install_key(SENDER, 1, &secret(1), ms(0));
        let mut old = encryptor(1);
        let mut new = encryptor(2);
        let mut hb = Holdback::default();
        let mut out = Vec::new();
        for (i, f) in frames(&mut old, 3).iter().enumerate() {
            hb.receive(&mut dec, SENDER, i, f, ms(i as u64 * 20), &mut out);
        }
        assert_eq!(delivered(&out), vec![0, 1, 2]);
        out.clear();
        // The sender switched; the receiver has not processed the commit yet.
        for (i, f) in frames(&mut new, 5).iter().enumerate() {
            hb.receive(
                &mut dec,
                SENDER,
                3 + i,
                f,
                ms(100 + i as u64 * 20),
                &mut out,
            );
        }
        assert!(out.is_empty(), "held, not dropped: {out:?}");
        assert_eq!(hb.held(), 5);
        // Polling without a new key does nothing.
        hb.poll(&mut dec, SENDER, ms(300), &mut out);
        assert!(out.is_empty());
        dec.install_key(SENDER, 2, &secret(2), ms(900));
        hb.poll(&mut dec, SENDER, ms(900), &mut out);
        assert_eq!(delivered(&out), vec![3, 4, 5, 6, 7]);
        assert_eq!(hb.held(), 0);
        assert_eq!(hb.held_bytes(), 0);
        assert_eq!(hb.released(), 5);
    }

    #[test]
    fn a_key_installed_between_frames_releases_on_the_next_frame() {
        let mut dec = Decryptor::default();
        dec.install_key(SENDER, 1, &secret(1), ms(0));
        let mut new = encryptor(2);
        let fs = frames(&mut new, 3);
        let mut hb = Holdback::default();
        let mut out = Vec::new();
        hb.receive(&mut dec, SENDER, 0, &fs[0], ms(0), &mut out);
        hb.receive(&mut dec, SENDER, 1, &fs[1], ms(20), &mut out);
        dec.install_key(SENDER, 2, &secret(2), ms(30));
        hb.receive(&mut dec, SENDER, 2, &fs[2], ms(40), &mut out);
        assert_eq!(delivered(&out), vec![0, 1, 2]);
        assert!(dropped(&out).is_empty());
    }

    #[test]
    fn frames_no_key_ever_opens_are_dropped_after_max_age() {
        let mut dec = Decryptor::default();
        dec.install_key(SENDER, 1, &secret(1), ms(0));
        let mut forged = encryptor(9);
        let fs = frames(&mut forged, 4);
        let mut hb = Holdback::default();
        let mut out = Vec::new();
        for (i, f) in fs.iter().enumerate() {
            hb.receive(&mut dec, SENDER, i, f, ms(i as u64 * 1000), &mut out);
        }
        // Frame 0 arrived at 0 s: at 3 s it has waited max_age.
        assert_eq!(dropped(&out), vec![0]);
        out.clear();
        hb.poll(&mut dec, SENDER, ms(10_000), &mut out);
        assert_eq!(dropped(&out), vec![1, 2, 3]);
        assert!(out.iter().all(|v| matches!(
            v,
            Verdict::Drop {
                reason: DropReason::AuthenticationFailed,
                ..
            }
        )));
        assert_eq!(hb.held(), 0);
    }

    #[test]
    fn a_newer_frame_that_decrypts_drops_the_held_ones_first() {
        let mut dec = Decryptor::default();
        dec.install_key(SENDER, 1, &secret(1), ms(0));
        let mut good = encryptor(1);
        let mut forged = encryptor(9);
        let junk = frames(&mut forged, 2);
        let ok = frames(&mut good, 1);
        let mut hb = Holdback::default();
        let mut out = Vec::new();
        hb.receive(&mut dec, SENDER, 0, &junk[0], ms(0), &mut out);
        hb.receive(&mut dec, SENDER, 1, &junk[1], ms(20), &mut out);
        hb.receive(&mut dec, SENDER, 2, &ok[0], ms(40), &mut out);
        assert_eq!(dropped(&out), vec![0, 1]);
        assert_eq!(delivered(&out), vec![2]);
        // Order: both drops come before the delivery.
        assert!(matches!(out[2], Verdict::Deliver { token: 2, .. }));
    }

    #[test]
    fn bounds_push_out_the_oldest_and_a_huge_frame_is_never_held() {
        let mut dec = Decryptor::default();
        dec.install_key(SENDER, 1, &secret(1), ms(0));
        let mut forged = encryptor(9);
        let config = HoldbackConfig {
            max_age: Duration::from_secs(3),
            max_frames: 3,
            max_bytes: 700,
        };
        let mut hb = Holdback::new(config);
        let mut out = Vec::new();
        for (i, f) in frames(&mut forged, 5).iter().enumerate() {
            hb.receive(&mut dec, SENDER, i, f, ms(i as u64), &mut out);
            assert!(hb.held() <= 3 && hb.held_bytes() <= 700);
        }
        assert_eq!(dropped(&out), vec![0, 1]);
        out.clear();
        hb.receive(&mut dec, SENDER, 9, &[0u8; 701], ms(10), &mut out);
        assert_eq!(dropped(&out), vec![9]);
    }

    #[test]
    fn reasons_a_key_cannot_change_drop_at_once() {
        let mut dec = Decryptor::default();
        dec.install_key(SENDER, 1, &secret(1), ms(0));
        let mut hb = Holdback::default();
        let mut out = Vec::new();
        hb.receive(
            &mut dec,
            SENDER,
            0,
            b"plain frame, no trailer",
            ms(0),
            &mut out,
        );
        assert!(matches!(
            out[..],
            [Verdict::Drop {
                token: 0,
                reason: DropReason::NotProtocolFrame(_)
            }]
        ));
        // A replay: the same frame twice.
        let mut good = encryptor(1);
        let f = frames(&mut good, 1).remove(0);
        out.clear();
        hb.receive(&mut dec, SENDER, 1, &f, ms(1), &mut out);
        hb.receive(&mut dec, SENDER, 2, &f, ms(2), &mut out);
        assert_eq!(delivered(&out), vec![1]);
        assert_eq!(dropped(&out), vec![2]);
        assert_eq!(hb.held(), 0);
    }

    #[test]
    fn a_new_sender_s_frames_wait_for_its_first_key() {
        let mut dec = Decryptor::default();
        let mut joiner = encryptor(4);
        let fs = frames(&mut joiner, 2);
        let mut hb = Holdback::default();
        let mut out = Vec::new();
        hb.receive(&mut dec, SENDER, 0, &fs[0], ms(0), &mut out);
        assert!(out.is_empty());
        dec.install_key(SENDER, 5, &secret(4), ms(500));
        hb.receive(&mut dec, SENDER, 1, &fs[1], ms(520), &mut out);
        assert_eq!(delivered(&out), vec![0, 1]);
    }
}
