//! Numbers crossing the JavaScript boundary: participant ids and epochs are
//! `u64` in the core and plain JavaScript numbers in the page (they are small
//! integers assigned by the coordinator), so every conversion is checked.

use std::time::Duration;

use satsuma_e2ee::member::MemberError;

/// Arguments the bindings refuse (turned into a JavaScript `Error`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum BindingError {
    /// A participant id or epoch that is not a non-negative safe integer.
    #[error("{0} is not a non-negative safe integer")]
    NotAnId(&'static str),
    /// An identity seed that is not 32 bytes.
    #[error("identity seed must be 32 bytes, got {0}")]
    BadSeed(usize),
    /// The MLS member could not be created.
    #[error("MLS: {0}")]
    Member(MemberError),
}

/// Largest integer a JavaScript number holds exactly (2^53 − 1).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// A JavaScript number that must be a non-negative safe integer.
pub(crate) fn to_u64(value: f64) -> Option<u64> {
    if value.is_finite() && (0.0..=MAX_SAFE_INTEGER).contains(&value) && value.fract() == 0.0 {
        // Exact: checked above that the value is an integer in u64 range.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(value as u64)
    } else {
        None
    }
}

/// A `u64` counter as a JavaScript number (saturating at 2^53 − 1).
pub(crate) fn to_f64(value: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let v = value.min(MAX_SAFE_INTEGER as u64) as f64;
    v
}

/// Milliseconds (e.g. `performance.now()`) as a duration; negative or
/// non-finite values count as zero.
pub(crate) fn millis(now_ms: f64) -> Duration {
    if now_ms.is_finite() && now_ms > 0.0 {
        Duration::from_secs_f64(now_ms / 1000.0)
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_only_safe_integers() {
        assert_eq!(to_u64(0.0), Some(0));
        assert_eq!(to_u64(42.0), Some(42));
        assert_eq!(to_u64(MAX_SAFE_INTEGER), Some(9_007_199_254_740_991));
        assert_eq!(to_u64(-1.0), None);
        assert_eq!(to_u64(1.5), None);
        assert_eq!(to_u64(f64::NAN), None);
        assert_eq!(to_u64(f64::INFINITY), None);
        assert_eq!(to_u64(MAX_SAFE_INTEGER * 4.0), None);
        assert_eq!(to_f64(u64::MAX), MAX_SAFE_INTEGER);
        assert_eq!(millis(-5.0), Duration::ZERO);
        assert_eq!(millis(1500.0), Duration::from_millis(1500));
    }
}
