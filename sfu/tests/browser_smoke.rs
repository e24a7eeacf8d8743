//! Browser smoke test: headless Chromium (Debian's, driven by playwright-core from
//! `tests/browser/smoke.mjs`) pushes its fake camera and microphone through the real `satsuma-sfu` and
//! pulls them back as remote tracks — from a second RTCPeerConnection, and from the same one — and
//! `framesDecoded` (and received audio packets) must keep increasing. VP8 in both layouts, then VP9,
//! H.264 and AV1 (forced with `setCodecPreferences`) between two RTCPeerConnections. Catches SDP interop problems between str0m and real browsers.
//!
//! Needs `node`, `/usr/bin/chromium` and `tests/browser/node_modules/playwright-core`
//! (`tests/browser/setup.sh` installs them). Missing pieces FAIL the test with instructions, unless
//! `SATSUMA_SKIP_BROWSER=1` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use satsuma_bot::harness::{APP_ID, APP_SECRET, SfuProcess};

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Returns why the browser test cannot run, if it cannot.
fn missing_dependency() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !PathBuf::from(&chromium).exists() {
        return Some(format!("Chromium not found at {chromium}"));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node is not installed".into());
    }
    if !browser_dir()
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return Some("playwright-core is not installed in sfu/tests/browser/node_modules".into());
    }
    None
}

#[test]
fn chromium_pushes_its_camera_and_pulls_it_back() {
    if std::env::var("SATSUMA_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("SATSUMA_SKIP_BROWSER=1: browser smoke test skipped");
        return;
    }
    if let Some(why) = missing_dependency() {
        panic!(
            "browser smoke test cannot run: {why}. Run `sfu/tests/browser/setup.sh` \
             (installs chromium and playwright-core), or set SATSUMA_SKIP_BROWSER=1 to skip it."
        );
    }
    let mut sfu = SfuProcess::start(env!("CARGO_BIN_EXE_satsuma-sfu"), &[]).unwrap();
    let mut child = Command::new("node")
        .arg(browser_dir().join("smoke.mjs"))
        .env("SFU_URL", sfu.base_url())
        .env("APP_ID", APP_ID)
        .env("APP_SECRET", APP_SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    // Read both pipes in threads so a chatty failure cannot fill a pipe and block node.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = out_reader.join().unwrap();
    let err = err_reader.join().unwrap();
    eprintln!("--- smoke.mjs stdout\n{out}\n--- smoke.mjs stderr\n{err}");
    let Some(status) = status else {
        panic!("browser smoke test timed out after 120 s");
    };
    assert!(sfu.is_running(), "SFU died:\n{}", sfu.stderr());
    assert!(
        !sfu.stderr().contains("panicked"),
        "SFU panicked:\n{}",
        sfu.stderr()
    );
    match status.code() {
        Some(0) => {}
        Some(2) => {
            panic!("browser dependencies missing (see above); run sfu/tests/browser/setup.sh")
        }
        _ => panic!(
            "browser smoke test failed ({status}); SFU log:\n{}",
            sfu.stderr()
        ),
    }
    // Independently of what the page says: every case printed ok and decoded frames.
    let cases: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "case")
        .collect();
    let expected = [
        ("two-pcs", "video/VP8"),
        ("same-pc", "video/VP8"),
        ("vp9", "video/VP9"),
        ("h264", "video/H264"),
        ("av1", "video/AV1"),
    ];
    assert_eq!(
        cases.len(),
        expected.len(),
        "expected {} cases",
        expected.len()
    );
    for (c, (name, mime)) in cases.iter().zip(expected) {
        assert_eq!(c["case"], name);
        assert_eq!(c["last"]["mimeType"], mime, "{name} decoded another codec");
        assert_eq!(c["ok"], true, "{c}");
        let first = c["firstDecoded"]["framesDecoded"].as_u64().unwrap();
        let last = c["last"]["framesDecoded"].as_u64().unwrap();
        assert!(last > first + 10, "framesDecoded {first} -> {last}");
        let a0 = c["firstDecoded"]["audioPackets"].as_u64().unwrap();
        let a1 = c["last"]["audioPackets"].as_u64().unwrap();
        assert!(a1 > a0 + 50, "audio packetsReceived {a0} -> {a1}");
    }
}
