//! Safety numbers: the MLS `epoch_authenticator` of the current epoch shown
//! as 30 digits in 6 groups of 5, as DAVE displays its "call code" (libdave
//! `GenerateDisplayableCode`). Each group is the next 5 bytes read as a
//! big-endian integer, reduced mod 100 000 and zero-padded. Members compare
//! it out of band; equal numbers mean the same group view at this epoch.

/// Digits in a safety number.
pub const SAFETY_NUMBER_DIGITS: usize = 30;

/// Digits (and bytes) per group.
pub const GROUP_DIGITS: usize = 5;

/// Why a displayable code cannot be formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SafetyNumberError {
    /// Fewer input bytes than digits requested.
    #[error("need at least {needed} bytes, got {got}")]
    TooShort {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// The code length is not a positive multiple of the group length, or the
    /// group does not fit a `u64` (more than 8 bytes / 19 digits).
    #[error("code length {code_len} and group length {group_len} do not fit")]
    BadShape {
        /// Requested digits.
        code_len: usize,
        /// Digits per group.
        group_len: usize,
    },
}

/// libdave's displayable code: `code_len` digits from `data`, `group_len`
/// bytes per group, each group `BE(bytes) mod 10^group_len`, zero-padded.
///
/// # Errors
/// [`SafetyNumberError`] when `data` is too short or the shape is invalid.
pub fn displayable_code(
    data: &[u8],
    code_len: usize,
    group_len: usize,
) -> Result<String, SafetyNumberError> {
    if group_len == 0 || group_len > 8 || !code_len.is_multiple_of(group_len) || code_len == 0 {
        return Err(SafetyNumberError::BadShape {
            code_len,
            group_len,
        });
    }
    if data.len() < code_len {
        return Err(SafetyNumberError::TooShort {
            needed: code_len,
            got: data.len(),
        });
    }
    let modulus = 10u64.pow(group_len as u32);
    let mut out = String::with_capacity(code_len);
    for group in data[..code_len].chunks_exact(group_len) {
        let value = group.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        out.push_str(&format!("{:0width$}", value % modulus, width = group_len));
    }
    Ok(out)
}

/// A safety number: 30 digits from an epoch authenticator.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SafetyNumber(String);

impl SafetyNumber {
    /// Formats the first 30 bytes of `epoch_authenticator` (32 bytes with
    /// SHA-256 ciphersuites).
    ///
    /// # Errors
    /// [`SafetyNumberError::TooShort`] for fewer than 30 bytes.
    pub fn from_epoch_authenticator(epoch_authenticator: &[u8]) -> Result<Self, SafetyNumberError> {
        displayable_code(epoch_authenticator, SAFETY_NUMBER_DIGITS, GROUP_DIGITS).map(Self)
    }

    /// The 30 digits without separators.
    #[must_use]
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// The 6 groups of 5 digits.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        (0..self.0.len() / GROUP_DIGITS)
            .map(move |i| &self.0[i * GROUP_DIGITS..(i + 1) * GROUP_DIGITS])
    }
}

impl std::fmt::Display for SafetyNumber {
    /// Groups separated by spaces: `05870 81055 …`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, group) in self.groups().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(group)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn formats_groups() {
        let auth = [0u8; 32];
        let n = SafetyNumber::from_epoch_authenticator(&auth).unwrap();
        assert_eq!(n.digits(), "0".repeat(30));
        assert_eq!(n.to_string(), "00000 00000 00000 00000 00000 00000");
        assert_eq!(n.groups().count(), 6);
        assert!(SafetyNumber::from_epoch_authenticator(&[0u8; 29]).is_err());
        assert!(displayable_code(&[0u8; 40], 30, 0).is_err());
        assert!(displayable_code(&[0u8; 40], 36, 9).is_err());
    }
}
