//! Helpers shared by the harness's integration tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// `satsuma-sfu` next to `satsuma-load` in the same target folder; built if missing.
pub(crate) fn sfu_binary(load: &Path) -> PathBuf {
    satsuma_bot::harness::sfu_binary_beside(load).unwrap()
}
