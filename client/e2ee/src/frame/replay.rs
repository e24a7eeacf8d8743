//! Anti-replay for one (sender, epoch) key: a sliding window over the 64-bit
//! "big nonce" `generation << 24 | (nonce & 0xFFFFFF)`.

/// Frames this far behind the newest accepted one are refused: they can no
/// longer be told apart from replays.
pub const REPLAY_WINDOW: u64 = 1024;

const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// Outcome of a window check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Never accepted before.
    Fresh,
    /// Already accepted.
    Seen,
    /// Older than the window.
    TooOld,
}

/// Sliding bitmap window; bit `n % REPLAY_WINDOW` records big nonce `n`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReplayWindow {
    highest: Option<u64>,
    bits: [u64; WORDS],
}

impl ReplayWindow {
    fn bit(n: u64) -> (usize, u64) {
        let slot = n % REPLAY_WINDOW;
        ((slot / 64) as usize, 1u64 << (slot % 64))
    }

    pub(crate) fn check(&self, n: u64) -> Freshness {
        let Some(highest) = self.highest else {
            return Freshness::Fresh;
        };
        if n > highest {
            return Freshness::Fresh;
        }
        if highest - n >= REPLAY_WINDOW {
            return Freshness::TooOld;
        }
        let (word, mask) = Self::bit(n);
        if self.bits[word] & mask != 0 {
            Freshness::Seen
        } else {
            Freshness::Fresh
        }
    }

    /// Records `n` as accepted; call only after `check(n) == Fresh` and a
    /// successful authentication.
    pub(crate) fn mark(&mut self, n: u64) {
        match self.highest {
            Some(highest) if n <= highest => {}
            Some(highest) => {
                let advance = n - highest;
                if advance >= REPLAY_WINDOW {
                    self.bits = [0; WORDS];
                } else {
                    for m in highest + 1..=n {
                        let (word, mask) = Self::bit(m);
                        self.bits[word] &= !mask;
                    }
                }
                self.highest = Some(n);
            }
            None => self.highest = Some(n),
        }
        let (word, mask) = Self::bit(n);
        self.bits[word] |= mask;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_semantics() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.check(5), Freshness::Fresh);
        w.mark(5);
        assert_eq!(w.check(5), Freshness::Seen);
        assert_eq!(w.check(4), Freshness::Fresh);
        w.mark(3);
        assert_eq!(w.check(3), Freshness::Seen);
        assert_eq!(w.check(4), Freshness::Fresh);
        w.mark(5 + REPLAY_WINDOW);
        assert_eq!(w.check(5), Freshness::TooOld);
        assert_eq!(w.check(6), Freshness::Fresh);
        assert_eq!(w.check(5 + REPLAY_WINDOW), Freshness::Seen);
        // Slots reused after the window moved are fresh again.
        w.mark(5 + 2 * REPLAY_WINDOW + 10);
        assert_eq!(w.check(5 + 2 * REPLAY_WINDOW), Freshness::Fresh);
    }
}
