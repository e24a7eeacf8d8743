//! A member's copy of the room log, audited: which `seq`s it processed (with a digest of each
//! entry's bytes, so members can compare contents), and what arrived that it did not process.
//!
//! Sans-IO: [`LogAudit::observe`] is fed every sequenced entry as it arrives and says whether
//! to process it.
//!
//! What counts as what (coordinator/PROTOCOL.md §6):
//! - **Duplicate**: an entry whose `seq` this member already processed, delivered again (on
//!   the same connection or after a resume). A resume's replay starts *after* the `last_seq`
//!   the member sent, so the protocol never re-sends a processed entry "by design": every
//!   duplicate is a fault. It is counted and not processed again.
//! - **Out of order**: a `seq` below the last processed one that this member never had. Also a
//!   fault (entries flow in `seq` order); counted, not processed.
//! - **Gap**: a jump in `seq` (the next entry is above `last + 1`). Not a fault by itself: the
//!   log legitimately skips numbers (a KeyPackage superseded by a newer one, `speaking` entries
//!   a rebuilt room never stored and the *seq ceiling* it continues after, the test hook's
//!   hidden entries). Whether a hole lost an entry is a question for the whole room: did
//!   another member (or the store) have that `seq`? Compare the members' [`LogAudit::entries`].

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

/// How many processed entries are remembered (the oldest are forgotten beyond it; the room's
/// own resume log keeps 4096).
const KEPT: usize = 1 << 16;

/// What [`LogAudit::observe`] made of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Above the last processed `seq`: process it.
    Fresh,
    /// Its `seq` was processed already (or is older than what is remembered): skip it.
    Duplicate,
    /// Below the last processed `seq` and never processed: skip it.
    OutOfOrder,
}

/// The audit of one member's log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogAudit {
    base: u64,
    last: u64,
    digests: BTreeMap<u64, u64>,
    duplicates: u64,
    out_of_order: u64,
    gaps: u64,
    skipped: u64,
}

impl LogAudit {
    /// A log that starts after entry `base` (the `seq` of the `welcome` snapshot).
    #[must_use]
    pub fn after(base: u64) -> Self {
        Self {
            base,
            last: base,
            ..Self::default()
        }
    }

    /// Feeds one sequenced entry (`bytes`: as it arrived, JSON text or binary frame).
    pub fn observe(&mut self, seq: u64, bytes: &[u8]) -> Verdict {
        if seq <= self.last {
            let remembered = self
                .digests
                .keys()
                .next()
                .is_some_and(|first| seq >= *first);
            if self.digests.contains_key(&seq) || seq <= self.base || !remembered {
                self.duplicates += 1;
                return Verdict::Duplicate;
            }
            self.out_of_order += 1;
            return Verdict::OutOfOrder;
        }
        if seq > self.last + 1 {
            self.gaps += 1;
            self.skipped += seq - self.last - 1;
        }
        self.last = seq;
        self.digests.insert(seq, digest(bytes));
        if self.digests.len() > KEPT {
            self.digests.pop_first();
        }
        Verdict::Fresh
    }

    /// The `seq` of the snapshot this log starts after.
    #[must_use]
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The last processed `seq`.
    #[must_use]
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Entries delivered again after they were processed.
    #[must_use]
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Entries that came below the last processed `seq` without having been processed.
    #[must_use]
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    /// Jumps in `seq` (see the module docs: not faults by themselves).
    #[must_use]
    pub fn gaps(&self) -> u64 {
        self.gaps
    }

    /// `seq` numbers skipped by the jumps, in total.
    #[must_use]
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The processed entries after `from` as `(seq, digest of its bytes)`, in order (the last
    /// 65536 at most).
    #[must_use]
    pub fn entries(&self, from: u64) -> Vec<(u64, u64)> {
        self.digests
            .range(from.saturating_add(1)..)
            .map(|(s, d)| (*s, *d))
            .collect()
    }
}

/// A digest of an entry's bytes, equal for equal bytes within one process (enough to compare
/// the members of one test or tool).
fn digest(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_entries_are_fresh_and_gaps_are_counted_not_refused() {
        let mut a = LogAudit::after(10);
        assert_eq!(a.observe(11, b"a"), Verdict::Fresh);
        assert_eq!(a.observe(12, b"b"), Verdict::Fresh);
        assert_eq!(a.observe(15, b"c"), Verdict::Fresh);
        assert_eq!((a.gaps(), a.skipped()), (1, 2));
        assert_eq!((a.duplicates(), a.out_of_order()), (0, 0));
        assert_eq!(a.last(), 15);
        let seqs: Vec<u64> = a.entries(11).iter().map(|e| e.0).collect();
        assert_eq!(seqs, [12, 15]);
    }

    #[test]
    fn a_processed_seq_delivered_again_is_a_duplicate() {
        let mut a = LogAudit::after(0);
        for s in 1..=5 {
            a.observe(s, b"x");
        }
        // A resume that replays from too early: 4 and 5 come again.
        assert_eq!(a.observe(4, b"x"), Verdict::Duplicate);
        assert_eq!(a.observe(5, b"x"), Verdict::Duplicate);
        assert_eq!(a.observe(6, b"y"), Verdict::Fresh);
        // The snapshot's entries are had too.
        let mut b = LogAudit::after(7);
        assert_eq!(b.observe(7, b"z"), Verdict::Duplicate);
        assert_eq!((a.duplicates(), b.duplicates()), (2, 1));
        assert_eq!(a.gaps(), 0);
    }

    #[test]
    fn a_hole_filled_late_is_out_of_order() {
        let mut a = LogAudit::after(0);
        a.observe(1, b"a");
        a.observe(3, b"c");
        assert_eq!(a.observe(2, b"b"), Verdict::OutOfOrder);
        assert_eq!((a.out_of_order(), a.duplicates(), a.gaps()), (1, 0, 1));
    }

    #[test]
    fn digests_tell_different_contents_apart() {
        let mut a = LogAudit::after(0);
        let mut b = LogAudit::after(0);
        a.observe(1, b"{\"seq\":1,\"type\":\"hand\"}");
        b.observe(1, b"{\"seq\":1,\"type\":\"hand\"}");
        assert_eq!(a.entries(0), b.entries(0));
        a.observe(2, b"one");
        b.observe(2, b"two");
        assert_ne!(a.entries(0), b.entries(0));
    }

    #[test]
    fn memory_is_bounded() {
        let mut a = LogAudit::after(0);
        let n = u64::try_from(KEPT).unwrap_or(u64::MAX) + 10;
        for s in 1..=n {
            a.observe(s, b"x");
        }
        assert_eq!(a.entries(0).len(), KEPT);
        // Older than what is remembered: taken as had (a duplicate), never processed again.
        assert_eq!(a.observe(1, b"x"), Verdict::Duplicate);
    }
}
