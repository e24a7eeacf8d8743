//! `satsuma verify-client URL`: checks that a deployment serves exactly the web client you
//! built yourself.
//!
//! `scripts/build-web.sh` writes `manifest.json` into the web client's directory: every file
//! the server serves (path, size, SHA-256), sorted by path. This command fetches the
//! deployment's `URL/manifest.json` and every file it lists, hashes what was served, and
//! compares each file with the local build (hashes recomputed here from the files on disk, not
//! taken from the local manifest). It prints one line per file and exits 1 naming every file
//! that differs, is missing from the deployment, or is extra in it; 0 when all match.
//!
//! What it proves: that this server, when asked by this command, served the same bytes as your
//! build. A server can serve other bytes to other clients; run it from where your users are and
//! often, and compare the one hash that pins the page (`index.html`, whose import map carries
//! the integrity hash of every module) over a channel you trust.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Name of the manifest in the web client's directory and at the deployment's root.
pub(crate) const MANIFEST: &str = "manifest.json";
/// Largest manifest accepted from a server.
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Largest file accepted from a server.
const MAX_FILE_BYTES: usize = 64 << 20;
/// Most files a manifest may list.
const MAX_FILES: usize = 10_000;

/// Arguments of `satsuma verify-client`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct VerifyArgs {
    /// Base URL of the deployment, e.g. `https://meet.example.com/` (its `manifest.json` and
    /// files are fetched below it).
    #[arg(value_name = "URL")]
    pub(crate) url: String,

    /// The local build to compare with: the web client's directory after
    /// `scripts/build-web.sh`. Default: the same search as the server's `--web-dir`
    /// (./client/web/public, <exe dir>/../share/satsuma/web, the source checkout).
    #[arg(long, env = "SATSUMA_WEB_DIR", value_name = "DIR")]
    pub(crate) web_dir: Option<PathBuf>,

    /// Extra PEM CA certificate(s) to trust for an https:// URL (besides the system's), e.g. a
    /// deployment with its own CA.
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_file: Option<PathBuf>,

    /// Timeout of each request, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub(crate) timeout_secs: u64,
}

/// One file of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Entry {
    /// Path relative to the web root, `/`-separated.
    pub(crate) path: String,
    /// Size in bytes.
    pub(crate) size: u64,
    /// Lower-case hex SHA-256 of the content.
    pub(crate) sha256: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Manifest {
    /// Format version (1).
    pub(crate) version: u32,
    /// Every served file but the manifest itself, sorted by path.
    pub(crate) files: Vec<Entry>,
}

/// Hex SHA-256.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether a manifest path is one this command fetches: relative, `/`-separated, no empty,
/// `.` or `..` segment, no dot-file, plain characters only.
pub(crate) fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 512
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && !seg.starts_with('.')
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
        })
}

/// The manifest of the files in `dir`, recomputed from disk with the same rules as
/// `scripts/web-manifest.sh`: every regular file, except `manifest.json` at the root and
/// anything whose name starts with `.`, sorted by path (bytewise).
pub(crate) fn local_manifest(dir: &Path) -> anyhow::Result<Vec<Entry>> {
    fn walk(root: &Path, rel: &str, out: &mut Vec<Entry>) -> anyhow::Result<()> {
        let here = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let entries =
            std::fs::read_dir(&here).with_context(|| format!("cannot list {}", here.display()))?;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let kind = entry.file_type()?;
            if kind.is_dir() {
                walk(root, &path, out)?;
            } else if kind.is_file() && path != MANIFEST {
                let bytes = std::fs::read(entry.path())
                    .with_context(|| format!("cannot read {}", entry.path().display()))?;
                out.push(Entry {
                    path,
                    size: bytes.len() as u64,
                    sha256: sha256_hex(&bytes),
                });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    out.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    Ok(out)
}

/// Parses and checks a manifest from a server.
pub(crate) fn parse_manifest(bytes: &[u8]) -> anyhow::Result<Manifest> {
    let manifest: Manifest = serde_json::from_slice(bytes).context("manifest.json is not valid")?;
    if manifest.version != 1 {
        bail!("manifest.json has version {}, expected 1", manifest.version);
    }
    if manifest.files.len() > MAX_FILES {
        bail!("manifest.json lists more than {MAX_FILES} files");
    }
    let mut seen = std::collections::BTreeSet::new();
    for e in &manifest.files {
        if !valid_path(&e.path) || e.path == MANIFEST {
            bail!("manifest.json lists an invalid path {:?}", e.path);
        }
        if e.sha256.len() != 64 || !e.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("manifest.json: bad sha256 for {}", e.path);
        }
        if !seen.insert(e.path.as_str()) {
            bail!("manifest.json lists {} twice", e.path);
        }
    }
    Ok(manifest)
}

/// The verdict on one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Served bytes, the deployment's manifest and the local build agree.
    Ok,
    /// The served bytes differ from the local build.
    Differs {
        /// SHA-256 of what was served.
        served: String,
        /// SHA-256 of the local file.
        local: String,
    },
    /// The served bytes match the local build but the deployment's manifest says otherwise.
    ManifestDiffers,
    /// In the local build, not in the deployment's manifest.
    Missing,
    /// In the deployment's manifest, not in the local build.
    Extra,
    /// Listed, but could not be fetched.
    Unreachable(String),
}

impl Verdict {
    fn label(&self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Differs { .. } => "DIFFERS",
            Verdict::ManifestDiffers => "MANIFEST",
            Verdict::Missing => "MISSING",
            Verdict::Extra => "EXTRA",
            Verdict::Unreachable(_) => "UNREACHABLE",
        }
    }

    fn detail(&self) -> String {
        match self {
            Verdict::Ok => String::new(),
            Verdict::Differs { served, local } => {
                format!("served sha256 {served}, local {local}")
            }
            Verdict::ManifestDiffers => {
                "the deployment's manifest.json gives another hash than it serves".into()
            }
            Verdict::Missing => "in the local build but not in the deployment's manifest".into(),
            Verdict::Extra => "in the deployment's manifest but not in the local build".into(),
            Verdict::Unreachable(why) => format!("cannot fetch: {why}"),
        }
    }
}

fn http_client(args: &VerifyArgs) -> anyhow::Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
                "/etc/ssl/cert.pem",
            ]
            .into_iter()
            .map(PathBuf::from),
        )
        .find(|p| p.is_file());
    if let Some(bundle) = system
        && let Ok(certs) = CertificateDer::pem_file_iter(&bundle)
    {
        for cert in certs.flatten() {
            let _ = roots.add(cert);
        }
    }
    if let Some(ca) = &args.ca_file {
        let certs = CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("cannot read CA file {}", ca.display()))?;
        let mut added = 0;
        for cert in certs {
            roots
                .add(cert.with_context(|| format!("bad PEM in {}", ca.display()))?)
                .with_context(|| format!("bad certificate in {}", ca.display()))?;
            added += 1;
        }
        if added == 0 {
            bail!("no certificate in {}", ca.display());
        }
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS setup")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(args.timeout_secs.max(1)))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("HTTP client setup")
}

/// `base` + `/` + `path`, with anything but plain path characters percent-encoded.
fn file_url(base: &str, path: &str) -> String {
    let mut url = base.trim_end_matches('/').to_string();
    url.push('/');
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'~') {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

async fn fetch(client: &reqwest::Client, url: &str, limit: usize) -> anyhow::Result<Vec<u8>> {
    let mut resp = client.get(url).send().await.context("request failed")?;
    if !resp.status().is_success() {
        bail!("HTTP {}", resp.status());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.context("reading the body")? {
        if body.len() + chunk.len() > limit {
            bail!("larger than {limit} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Compares the deployment at `args.url` with the local build in `web_dir`; prints one line per
/// file and returns the files that do not match (empty: everything matches).
pub(crate) async fn verify(args: &VerifyArgs, web_dir: &Path) -> anyhow::Result<Vec<String>> {
    if !(args.url.starts_with("http://") || args.url.starts_with("https://")) {
        bail!(
            "URL must start with http:// or https://, got {:?}",
            args.url
        );
    }
    let local = local_manifest(web_dir)
        .with_context(|| format!("reading the local build in {}", web_dir.display()))?;
    if local.is_empty() {
        bail!("no files in the local build {}", web_dir.display());
    }
    // A stale local manifest means the local build was changed after build-web.sh: the
    // comparison below uses the files, but say so.
    match std::fs::read(web_dir.join(MANIFEST)) {
        Ok(bytes) => match parse_manifest(&bytes) {
            Ok(m) if m.files == local => {}
            Ok(_) => println!(
                "note: {} does not match the files next to it (run scripts/build-web.sh); \
                 comparing with the files",
                web_dir.join(MANIFEST).display()
            ),
            Err(e) => println!("note: local {MANIFEST}: {e:#}"),
        },
        Err(_) => println!(
            "note: no {MANIFEST} in {} (run scripts/build-web.sh); comparing with the files",
            web_dir.display()
        ),
    }
    let client = http_client(args)?;
    let manifest_url = file_url(&args.url, MANIFEST);
    let remote = fetch(&client, &manifest_url, MAX_MANIFEST_BYTES)
        .await
        .with_context(|| format!("fetching {manifest_url}"))?;
    let remote = parse_manifest(&remote).with_context(|| format!("from {manifest_url}"))?;

    let local: BTreeMap<&str, &Entry> = local.iter().map(|e| (e.path.as_str(), e)).collect();
    let listed: BTreeMap<&str, &Entry> =
        remote.files.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut paths: Vec<&str> = local.keys().chain(listed.keys()).copied().collect();
    paths.sort_unstable();
    paths.dedup();

    println!(
        "verifying {} against {} ({} local files, {} in its manifest)",
        args.url,
        web_dir.display(),
        local.len(),
        listed.len()
    );
    let mut bad = Vec::new();
    for path in paths {
        let verdict = match (local.get(path), listed.get(path)) {
            (Some(_), None) => Verdict::Missing,
            (None, Some(_)) => Verdict::Extra,
            (None, None) => continue,
            (Some(mine), Some(theirs)) => {
                match fetch(&client, &file_url(&args.url, path), MAX_FILE_BYTES).await {
                    Err(e) => Verdict::Unreachable(format!("{e:#}")),
                    Ok(bytes) => {
                        let served = sha256_hex(&bytes);
                        if served != mine.sha256 {
                            Verdict::Differs {
                                served,
                                local: mine.sha256.clone(),
                            }
                        } else if theirs.sha256 != mine.sha256 || theirs.size != mine.size {
                            Verdict::ManifestDiffers
                        } else {
                            Verdict::Ok
                        }
                    }
                }
            }
        };
        let detail = verdict.detail();
        if detail.is_empty() {
            println!("{:<11} {path}", verdict.label());
        } else {
            println!("{:<11} {path}: {detail}", verdict.label());
        }
        if verdict != Verdict::Ok {
            bad.push(path.to_string());
        }
    }
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_plain_relative_paths() {
        for ok in ["index.html", "pkg/satsuma_wasm_bg.wasm", "a/b-c_d.e+f.js"] {
            assert!(valid_path(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            ".hidden",
            "pkg/.source-stamp",
            "a b",
            "a\\b",
            "%2e%2e/x",
            "a?b",
        ] {
            assert!(!valid_path(bad), "{bad}");
        }
    }

    #[test]
    fn manifests_from_servers_are_checked() {
        let good = br#"{"version":1,"files":[{"path":"a.js","size":1,"sha256":"ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"}]}"#;
        assert_eq!(parse_manifest(good).unwrap().files.len(), 1);
        let twice = br#"{"version":1,"files":[{"path":"a","size":1,"sha256":"ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"},{"path":"a","size":1,"sha256":"ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"}]}"#;
        assert!(parse_manifest(twice).is_err());
        let escape = br#"{"version":1,"files":[{"path":"../a","size":1,"sha256":"ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"}]}"#;
        assert!(parse_manifest(escape).is_err());
        let short = br#"{"version":1,"files":[{"path":"a","size":1,"sha256":"ca97"}]}"#;
        assert!(parse_manifest(short).is_err());
        assert!(parse_manifest(br#"{"version":2,"files":[]}"#).is_err());
        assert!(parse_manifest(b"not json").is_err());
    }

    #[test]
    fn local_manifest_lists_files_sorted_without_manifest_and_dotfiles() {
        let dir = std::env::temp_dir().join(format!("satsuma-verify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pkg")).unwrap();
        std::fs::write(dir.join("b.js"), "b").unwrap();
        std::fs::write(dir.join("a.js"), "a").unwrap();
        std::fs::write(dir.join("pkg/x.wasm"), "x").unwrap();
        std::fs::write(dir.join("pkg/.source-stamp"), "s").unwrap();
        std::fs::write(dir.join(MANIFEST), "{}").unwrap();
        let m = local_manifest(&dir).unwrap();
        let paths: Vec<&str> = m.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a.js", "b.js", "pkg/x.wasm"]);
        assert_eq!(
            m[0].sha256,
            "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
        );
        assert_eq!(m[0].size, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_urls_join_and_escape() {
        assert_eq!(file_url("http://h:1/", "pkg/a.js"), "http://h:1/pkg/a.js");
        assert_eq!(file_url("https://h/meet", "a b"), "https://h/meet/a%20b");
    }
}
