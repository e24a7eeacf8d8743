//! Fuzz corpora replayed as ordinary tests: every input a fuzzing run kept in a crate's
//! `fuzz/corpus/<target>/` goes through the same body as the cargo-fuzz target, so CI
//! re-checks each one on stable, without libFuzzer.

use std::path::{Path, PathBuf};

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The corpus directory or one of its files could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The directory or file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The body panicked on one input.
    #[error("fuzz body fails on corpus file {file}: {message}")]
    Failed {
        /// The input.
        file: PathBuf,
        /// The panic message.
        message: String,
    },
}

/// `fuzz/corpus/<target>` of the crate whose manifest directory is `manifest_dir`.
#[must_use]
pub fn corpus_dir(manifest_dir: &str, target: &str) -> PathBuf {
    Path::new(manifest_dir)
        .join("fuzz")
        .join("corpus")
        .join(target)
}

/// Runs `body` on every file of `dir`, in name order; returns how many there were.
///
/// # Errors
/// The directory or a file cannot be read, or `body` panics on an input (named).
pub fn replay(dir: &Path, body: fn(&[u8])) -> Result<usize, ReplayError> {
    let read = |path: &Path, source| ReplayError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| read(dir, e))? {
        let path = entry.map_err(|e| read(dir, e))?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    for file in &files {
        let data = std::fs::read(file).map_err(|e| read(file, e))?;
        if let Err(panic) = std::panic::catch_unwind(|| body(&data)) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            return Err(ReplayError::Failed {
                file: file.clone(),
                message,
            });
        }
    }
    Ok(files.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refuse_x(data: &[u8]) {
        assert!(!data.contains(&b'x'), "an x");
    }

    #[test]
    fn replays_every_file_and_names_the_one_that_fails() {
        let dir = std::env::temp_dir().join(format!("satsuma-corpus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a"), b"fine").unwrap();
        std::fs::write(dir.join("b"), b"also fine").unwrap();
        assert_eq!(replay(&dir, refuse_x).unwrap(), 2);
        std::fs::write(dir.join("c"), b"xx").unwrap();
        let err = replay(&dir, refuse_x).unwrap_err().to_string();
        assert!(
            err.contains("corpus file") && err.ends_with("an x"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            replay(&dir, refuse_x).is_err(),
            "a missing corpus is an error"
        );
    }
}
