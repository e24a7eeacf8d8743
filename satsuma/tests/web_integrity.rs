//! A page that proves what it runs: the real `satsuma` binary serves the web client with a
//! strict Content-Security-Policy and the other security headers, `GET /client-config.json`
//! says whether test hooks are on, and `satsuma verify-client URL` passes against the running
//! server and fails, naming the file, when one served file is changed.
//!
//! The web directory is a copy of `client/web/public` stamped by `scripts/web-manifest.sh`
//! (import map with integrity hashes + manifest.json), so the test needs neither the WASM
//! build nor a previous `scripts/build-web.sh` run, and never writes into the checkout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Stack;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A fresh temporary directory for this test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("satsuma-web-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Runs `scripts/web-manifest.sh dir` (integrity hashes into index.html, manifest.json).
fn stamp(dir: &Path) {
    let out = Command::new("bash")
        .arg(repo().join("scripts/web-manifest.sh"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "web-manifest.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A stamped copy of the checkout's web client.
fn stamped_copy(name: &str) -> PathBuf {
    let dir = temp_dir(name);
    copy_dir(&repo().join("client/web/public"), &dir);
    stamp(&dir);
    dir
}

/// Starts `satsuma` (with a token secret) serving `web_dir`, with `extra` flags.
fn start(web_dir: &Path, extra: &[&str]) -> Stack {
    let mut args = vec!["--token-secret", "web-integrity-token-secret-0123456789"];
    args.extend_from_slice(extra);
    Stack::spawn(web_dir, &args)
}

fn verify_client(url: &str, web_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_satsuma"))
        .args(["verify-client", url, "--web-dir"])
        .arg(web_dir)
        .env_remove("SATSUMA_WEB_DIR")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The line verify-client printed for `path`, if any.
fn line_for(out: &Output, path: &str) -> Option<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.split_whitespace().nth(1).map(|p| p.trim_end_matches(':')) == Some(path))
        .map(str::to_string)
}

fn flip_one_byte(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn verify_client_passes_on_the_same_build_and_names_a_changed_file() {
    let good = stamped_copy("good");
    let files: Vec<String> = {
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(good.join("manifest.json")).unwrap()).unwrap();
        manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(files.iter().any(|f| f == "index.html") && files.iter().any(|f| f == "app.js"));

    // The deployment serves exactly the local build: every file ok, exit 0.
    let server = start(&good, &[]);
    let out = verify_client(&server.root(), &good);
    assert!(out.status.success(), "{}", text(&out));
    for f in &files {
        let line = line_for(&out, f).unwrap_or_else(|| panic!("no line for {f}\n{}", text(&out)));
        assert!(line.starts_with("ok "), "{line}");
    }
    println!("{}", text(&out));

    // One byte of one served file changed (its manifest left as it was): exit 1, the file named.
    let bad = temp_dir("bad");
    copy_dir(&good, &bad);
    flip_one_byte(&bad.join("call-view.js"));
    let tampered = start(&bad, &[]);
    let out = verify_client(&tampered.root(), &good);
    println!("{}", text(&out));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        line_for(&out, "call-view.js").is_some_and(|l| l.starts_with("DIFFERS")),
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("call-view.js"),
        "{}",
        text(&out)
    );
    assert!(line_for(&out, "app.js").is_some_and(|l| l.starts_with("ok ")));

    // A consistent forgery (manifest and import map regenerated for the changed file, plus a new
    // file) still fails: the changed file, index.html (its hashes) and the extra file are named.
    std::fs::write(bad.join("extra.js"), "export const x = 1;\n").unwrap();
    stamp(&bad);
    let out = verify_client(&tampered.root(), &good);
    println!("{}", text(&out));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for (path, verdict) in [
        ("call-view.js", "DIFFERS"),
        ("index.html", "DIFFERS"),
        ("extra.js", "EXTRA"),
    ] {
        assert!(
            line_for(&out, path).is_some_and(|l| l.starts_with(verdict)),
            "{path} not {verdict}:\n{}",
            text(&out)
        );
    }

    // A file of the local build the deployment does not list: MISSING.
    std::fs::remove_file(bad.join("extra.js")).unwrap();
    std::fs::remove_file(bad.join("local-media.js")).unwrap();
    stamp(&bad);
    let out = verify_client(&tampered.root(), &good);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        line_for(&out, "local-media.js").is_some_and(|l| l.starts_with("MISSING")),
        "{}",
        text(&out)
    );

    // Nothing listening: the check cannot run (2), which is not a pass.
    let url = server.root();
    drop(server);
    let out = verify_client(&url, &good);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    drop(tampered);
    std::fs::remove_dir_all(&good).unwrap();
    std::fs::remove_dir_all(&bad).unwrap();
}

/// The `sha256-...` CSP source of the import map in `index.html`.
fn import_map_source(index: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest;
    let start = index.find("<script type=\"importmap\">").unwrap() + 25;
    let end = start + index[start..].find("</script>").unwrap();
    let digest = sha2::Sha256::digest(&index.as_bytes()[start..end]);
    let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
    format!("'sha256-{b64}'")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_a_strict_csp_and_security_headers() {
    let web = stamped_copy("headers");
    let index = std::fs::read_to_string(web.join("index.html")).unwrap();
    let map_source = import_map_source(&index);
    let server = start(&web, &[]);
    let http = reqwest::Client::new();
    let base = server.root();

    for path in [
        "",
        "index.html",
        "app.js",
        "e2ee-worker.js",
        "manifest.json",
        "client-config.json",
        "healthz",
        "no/such/page",
    ] {
        let resp = http.get(format!("{base}{path}")).send().await.unwrap();
        assert!(resp.status().is_success(), "/{path}: {}", resp.status());
        let h = resp.headers();
        let get = |name: &str| {
            h.get(name)
                .unwrap_or_else(|| panic!("/{path}: no {name} header"))
                .to_str()
                .unwrap()
                .to_string()
        };
        let csp = get("content-security-policy");
        for part in [
            "default-src 'self'",
            "script-src 'self' 'wasm-unsafe-eval'",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(part), "/{path}: {part} missing in {csp}");
        }
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("'unsafe-eval'"),
            "/{path}: {csp}"
        );
        // The import map (and nothing else inline) is allowed by its hash.
        assert!(
            csp.contains(&map_source),
            "/{path}: {map_source} missing in {csp}"
        );
        assert_eq!(get("x-content-type-options"), "nosniff", "/{path}");
        assert_eq!(get("referrer-policy"), "no-referrer", "/{path}");
        assert_eq!(get("x-frame-options"), "DENY", "/{path}");
        assert_eq!(get("cross-origin-opener-policy"), "same-origin", "/{path}");
        assert!(get("permissions-policy").contains("camera=(self)"));
        assert!(!get("cache-control").is_empty());
    }

    // The page served is the stamped one: every module pinned by the import map.
    let served = http.get(&base).send().await.unwrap().text().await.unwrap();
    assert_eq!(served, index);
    assert!(served.contains("\"./app.js\":\"sha256-"));
    assert!(!served.contains("<script>"), "inline script in index.html");

    // Test hooks are off unless asked for.
    let config: serde_json::Value = http
        .get(format!("{base}client-config.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        config,
        serde_json::json!({"test_hooks": false, "dev": false, "recording": false})
    );
    let hooked = start(&web, &["--test-hooks"]);
    let config: serde_json::Value = http
        .get(format!("{}client-config.json", hooked.root()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        config,
        serde_json::json!({"test_hooks": true, "dev": false, "recording": false})
    );

    drop(server);
    drop(hooked);
    std::fs::remove_dir_all(&web).unwrap();
}

#[test]
fn verify_client_speaks_https_with_a_given_ca_and_refuses_an_unknown_one() {
    let web = stamped_copy("https");
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = web
        .join("..")
        .join(format!("satsuma-web-{}-https-cert.pem", std::process::id()));
    let key = cert.with_extension("key");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let server = start(
        &web,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let url = format!("https://localhost:{}/", server.web.port());

    // The certificate is trusted only through --ca-file: then every file is checked.
    let out = Command::new(env!("CARGO_BIN_EXE_satsuma"))
        .args(["verify-client", &url, "--web-dir"])
        .arg(&web)
        .arg("--ca-file")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(line_for(&out, "index.html").is_some_and(|l| l.starts_with("ok ")));

    // Without it the TLS handshake fails: exit 2, not a pass.
    let out = verify_client(&url, &web);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    drop(server);
    std::fs::remove_dir_all(&web).unwrap();
    let _ = std::fs::remove_file(&cert);
    let _ = std::fs::remove_file(&key);
}
