//! Smoke test: a tiny 3-second audio scenario against a real `satsuma-sfu`, through the real
//! `satsuma-load` binary and its worker process. Checks that the report's fields are sane and
//! non-zero; no timing or performance assertions (the machine is shared).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

mod common;

use common::sfu_binary;

#[test]
fn tiny_audio_scenario_reports_sane_fields() {
    let load = PathBuf::from(env!("CARGO_BIN_EXE_satsuma-load"));
    let sfu = sfu_binary(&load);
    let out = std::env::temp_dir().join(format!("satsuma-load-smoke-{}.json", std::process::id()));
    let output = Command::new(&load)
        .args([
            "--sfus",
            "satsuma",
            "--scenarios",
            "audio",
            "--audio-publishers",
            "2",
            "--audio-subscribers",
            "2",
            "--workers",
            "1",
            "--warmup",
            "0.5",
            "--duration",
            "3",
            "--log",
            "warn",
        ])
        .arg("--sfu-bin")
        .arg(&sfu)
        .arg("--json")
        .arg(&out)
        .output()
        .expect("run satsuma-load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("| audio | satsuma (bwe on) |"), "{stdout}");

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    std::fs::remove_file(&out).ok();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{report:#}");
    let r = &results[0];
    assert_eq!(r["sfu"], "satsuma");
    assert!(r["notes"].as_array().unwrap().is_empty(), "{r:#}");
    assert_eq!(r["publishers"], serde_json::json!([2, 2]));
    assert_eq!(r["subscribers"], serde_json::json!([2, 2]));
    let num = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r:#}"));
    assert!(num("ingress_pps") > 0.0, "{r:#}");
    assert!(num("egress_pps") > 0.0, "{r:#}");
    assert!(num("cpu_us_per_packet") > 0.0, "{r:#}");
    let loss = num("loss_pct");
    assert!((0.0..=100.0).contains(&loss), "{r:#}");
    assert_eq!(r["corrupt"], 0);
    let counters = &r["counters"];
    assert!(counters["recv_unique"].as_u64().unwrap() > 0);
    // Every received packet came from a publisher of this run.
    assert!(
        counters["recv_unique"].as_u64().unwrap()
            <= 2 * counters["sent_packets"].as_u64().unwrap() + 200
    );
    assert!(r["latency"]["tracks"].as_u64().unwrap() >= 4, "{r:#}");
    assert!(r["latency"]["p50"].as_f64().unwrap() > 0.0);
    assert!(
        r["baseline_latency"]["tracks"].as_u64().unwrap() >= 1,
        "{r:#}"
    );
    assert!(r["process"]["rss_mib"].as_f64().unwrap() > 0.0);
    assert!(r["process"]["rss_idle_mib"].as_f64().unwrap() > 0.0);
}

#[test]
fn short_soak_churns_and_leaves_nothing_behind() {
    let load = PathBuf::from(env!("CARGO_BIN_EXE_satsuma-load"));
    let sfu = sfu_binary(&load);
    let out = std::env::temp_dir().join(format!("satsuma-soak-smoke-{}.json", std::process::id()));
    let output = Command::new(&load)
        .args(["--log", "warn", "soak", "--minutes", "0.2"])
        .args(["--rooms", "1", "--room-size", "3", "--churn-secs", "2"])
        .args(["--sample-secs", "3", "--workers", "1"])
        .arg("--sfu-bin")
        .arg(&sfu)
        .arg("--json")
        .arg(&out)
        .output()
        .expect("run satsuma-load soak");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("{e}\n{stdout}\n{stderr}")),
    )
    .unwrap();
    std::fs::remove_file(&out).ok();
    // The exit status is the verdict.
    let failures = report["verdict"]["failures"].as_array().unwrap();
    assert_eq!(
        output.status.success(),
        failures.is_empty(),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("| verdict |"), "{stdout}");
    // 12 s with a step every 2 s: the 3 initial members plus at least 4 churn joins.
    let churn = &report["churn"];
    assert!(churn["joins"].as_u64().unwrap() >= 7, "{churn:#}");
    assert!(
        churn["leaves"].as_u64().unwrap() >= 7,
        "teardown included: {churn:#}"
    );
    assert!(churn["tracks_closed"].as_u64().unwrap() > 0, "{churn:#}");
    assert_eq!(
        churn["sessions_created"], churn["sessions_deleted"],
        "{churn:#}"
    );
    assert_eq!(churn["members"], 0, "everyone left: {churn:#}");
    // Clean leaves leave the SFU empty.
    assert_eq!(
        report["after_teardown"],
        serde_json::json!([0.0, 0.0, 0.0]),
        "{stdout}"
    );
    assert!(report["forwarded"].as_u64().unwrap() > 0, "{stdout}");
    assert!(report["samples"].as_array().unwrap().len() >= 3, "{stdout}");
    assert_eq!(
        report["rss_enforced"], false,
        "a 12 s run does not enforce RSS"
    );
    assert!(report["rss_end_mib"].as_f64().unwrap() > 0.0);
    assert!(report["sfu_cores"].as_f64().unwrap() > 0.0);
    assert!(report["bots_cores"].as_f64().unwrap() > 0.0);
}
