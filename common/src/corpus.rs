//! Fuzz corpora replayed as ordinary tests: every input a fuzzing run kept in a crate's
//! `fuzz/corpus/<target>/` goes through the same body as the cargo-fuzz target, so CI
//! re-checks each one on stable, without libFuzzer.

use std::path::{Path, PathBuf};

/// A fuzz target's body: panics on an input that breaks an invariant.
pub type Body = fn(&[u8]);

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
    /// A corpus holds fewer inputs than its seeds.
    #[error("{dir}: only {n} corpus files")]
    TooFew {
        /// The corpus.
        dir: PathBuf,
        /// How many it holds.
        n: usize,
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
pub fn replay(dir: &Path, body: Body) -> Result<usize, ReplayError> {
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

/// Replays the corpus of every `(target, body)` of the crate at `manifest_dir`; each corpus
/// must hold at least `min_files` inputs (its seeds: fewer means a lost directory). Returns
/// the number of inputs per target.
///
/// # Errors
/// As [`replay`], or [`ReplayError::TooFew`].
pub fn replay_targets(
    manifest_dir: &str,
    targets: &[(&str, Body)],
    min_files: usize,
) -> Result<Vec<(String, usize)>, ReplayError> {
    let mut counts = Vec::with_capacity(targets.len());
    for (target, body) in targets {
        let dir = corpus_dir(manifest_dir, target);
        let n = replay(&dir, *body)?;
        if n < min_files {
            return Err(ReplayError::TooFew { dir, n });
        }
        counts.push(((*target).to_owned(), n));
    }
    Ok(counts)
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

    #[test]
    fn every_target_is_replayed_and_a_short_corpus_is_an_error() {
        let root = std::env::temp_dir().join(format!("satsuma-targets-{}", std::process::id()));
        std::fs::create_dir_all(root.join("fuzz/corpus/t")).unwrap();
        std::fs::write(root.join("fuzz/corpus/t/a"), b"ok").unwrap();
        let dir = root.to_str().unwrap();
        let counts = replay_targets(dir, &[("t", refuse_x)], 1).unwrap();
        assert_eq!(counts, vec![("t".to_owned(), 1)]);
        let err = replay_targets(dir, &[("t", refuse_x)], 2).unwrap_err();
        assert!(matches!(err, ReplayError::TooFew { n: 1, .. }), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
