//! Every placeholder secret shipped in `deploy/` (the `REPLACE-WITH-...` values of the env
//! examples, the Kubernetes manifest and the docs) is refused by the secret check the servers run
//! at start, so a deployment that forgot to replace one does not start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Words of `text` that look like placeholder secrets.
fn placeholders(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .filter(|w| {
            let l = w.to_ascii_lowercase();
            l.starts_with("replace-with") || l.contains("change-me") || l.contains("changeme")
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn placeholder_secrets_in_deploy_are_refused() {
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut all = Vec::new();
    files(&deploy, &mut all);
    let mut found = Vec::new();
    for path in all {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for p in placeholders(&text) {
            found.push((path.display().to_string(), p));
        }
    }
    // The env examples and the Kubernetes manifest carry them (the test must see some).
    assert!(
        found
            .iter()
            .any(|(f, _)| f.ends_with("satsuma.env.example")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|(f, _)| f.ends_with("satsuma.yaml")),
        "{found:?}"
    );
    for (file, value) in &found {
        let err = satsuma_coordinator::auth::check_secret("token_secret", value).expect_err(
            &format!("{file}: placeholder {value:?} is accepted as a secret"),
        );
        assert!(err.contains("placeholder"), "{file}: {value}: {err}");
    }
    // A real secret of the same length passes.
    assert!(satsuma_coordinator::auth::check_secret("token_secret", &"7f".repeat(20)).is_ok());
}
