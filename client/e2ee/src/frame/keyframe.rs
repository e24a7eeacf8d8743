//! When a receiver should ask for a keyframe (PLI/FIR, or
//! `RTCRtpScriptTransformer.sendKeyFrameRequest()`): after the sender's key
//! changes (a decoder cannot use delta frames from before it could decrypt),
//! and after a run of undecryptable frames. Requests are rate-limited.
//!
//! Keep one [`KeyframeRequester`] per inbound *video* track and feed it every
//! decrypt outcome of that track.

use std::time::Duration;

use super::decryptor::{DropReason, FrameOrigin};

/// Per-track keyframe-request policy with injected time.
#[derive(Debug, Clone)]
pub struct KeyframeRequester {
    min_interval: Duration,
    failure_threshold: u32,
    last_epoch: Option<u64>,
    consecutive_failures: u32,
    pending: bool,
    last_request: Option<Duration>,
}

impl Default for KeyframeRequester {
    /// At most one request per second; request after 10 consecutive drops.
    fn default() -> Self {
        Self::new(Duration::from_secs(1), 10)
    }
}

impl KeyframeRequester {
    /// A requester sending at most one request per `min_interval`, and asking
    /// after `failure_threshold` consecutive dropped frames (at least 1).
    #[must_use]
    pub fn new(min_interval: Duration, failure_threshold: u32) -> Self {
        Self {
            min_interval,
            failure_threshold: failure_threshold.max(1),
            last_epoch: None,
            consecutive_failures: 0,
            pending: false,
            last_request: None,
        }
    }

    /// Records a decrypted frame; returns `true` when the caller should
    /// request a keyframe now.
    pub fn on_decrypted(&mut self, origin: &FrameOrigin, now: Duration) -> bool {
        if let FrameOrigin::Encrypted { epoch, .. } = *origin {
            self.consecutive_failures = 0;
            if self.last_epoch != Some(epoch) {
                self.last_epoch = Some(epoch);
                self.pending = true;
            }
        }
        self.poll(now)
    }

    /// Records a dropped frame; returns `true` when the caller should request
    /// a keyframe now. Replays do not count (they are duplicates).
    pub fn on_dropped(&mut self, reason: &DropReason, now: Duration) -> bool {
        if !matches!(reason, DropReason::Replay { .. }) {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            if self.consecutive_failures >= self.failure_threshold {
                self.consecutive_failures = 0;
                self.pending = true;
            }
        }
        self.poll(now)
    }

    /// Returns `true` (once) when a request is due and the rate limit allows
    /// it; a throttled request stays pending.
    pub fn poll(&mut self, now: Duration) -> bool {
        if !self.pending {
            return false;
        }
        if self
            .last_request
            .is_some_and(|last| now.saturating_sub(last) < self.min_interval)
        {
            return false;
        }
        self.pending = false;
        self.last_request = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(epoch: u64) -> FrameOrigin {
        FrameOrigin::Encrypted {
            epoch,
            generation: 0,
            nonce: 1,
        }
    }

    #[test]
    fn requests_on_epoch_change_with_rate_limit() {
        let mut k = KeyframeRequester::new(Duration::from_secs(1), 3);
        let t = Duration::from_secs(100);
        assert!(k.on_decrypted(&enc(1), t));
        assert!(!k.on_decrypted(&enc(1), t));
        // Epoch change 100 ms later: throttled, stays pending.
        let t2 = t + Duration::from_millis(100);
        assert!(!k.on_decrypted(&enc(2), t2));
        assert!(!k.on_decrypted(&enc(2), t2 + Duration::from_millis(500)));
        assert!(k.on_decrypted(&enc(2), t + Duration::from_secs(1)));
        assert!(!k.poll(t + Duration::from_secs(5)));
    }

    #[test]
    fn requests_after_consecutive_failures() {
        let mut k = KeyframeRequester::new(Duration::ZERO, 3);
        let t = Duration::ZERO;
        let r = DropReason::AuthenticationFailed;
        assert!(!k.on_dropped(&r, t));
        assert!(!k.on_dropped(&r, t));
        assert!(k.on_dropped(&r, t));
        assert!(!k.on_dropped(&DropReason::Replay { epoch: 1, nonce: 1 }, t));
        assert!(!k.on_dropped(&r, t));
        // A success resets the run.
        k.on_decrypted(&enc(1), t);
        assert!(!k.on_dropped(&r, t));
    }
}
