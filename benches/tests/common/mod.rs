//! Helpers shared by the harness's integration tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `satsuma-sfu` next to `satsuma-load` in the same target folder; built if missing.
pub(crate) fn sfu_binary(load: &Path) -> PathBuf {
    let dir = load.parent().unwrap();
    let sfu = dir.join("satsuma-sfu");
    if !sfu.exists() {
        // `cargo test -p satsuma-bench` does not build other packages' binaries; do it here with
        // the same target folder (`cargo test --workspace` already has it).
        let target_dir = dir.parent().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "satsuma-sfu", "--bin", "satsuma-sfu"])
            .env("CARGO_TARGET_DIR", target_dir)
            .status()
            .expect("run cargo build -p satsuma-sfu");
        assert!(status.success());
    }
    assert!(sfu.exists(), "{} missing", sfu.display());
    sfu
}
