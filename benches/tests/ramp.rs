//! The `ramp` scenario end to end against a real `satsuma-sfu`, through the real `satsuma-load`
//! binary and its worker processes, kept short (a few 1.5-second windows). Two runs: limits no
//! window can break (the ramp must climb every step to `--ramp-max`, with egress growing with
//! the subscribers), and a p99 limit every window breaks (it must stop at the first step with a
//! named reason and no maximum). No performance assertions: the machine is shared.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod common;

use common::sfu_binary;

/// Runs a Satsuma-only ramp 1, 2, 4 with `extra` flags; the JSON report and stdout.
fn ramp(load: &Path, sfu: &Path, name: &str, extra: &[&str]) -> (Value, String) {
    let out = std::env::temp_dir().join(format!(
        "satsuma-load-ramp-{name}-{}.json",
        std::process::id()
    ));
    let output = Command::new(load)
        .args(["--sfus", "satsuma", "--scenarios", "ramp", "--log", "warn"])
        .args(["--ramp-start", "1", "--ramp-step", "2", "--ramp-max", "4"])
        .args(["--ramp-warmup", "0.5", "--ramp-step-seconds", "1.5"])
        .args(["--ramp-workers", "2"])
        .args(extra)
        .arg("--sfu-bin")
        .arg(sfu)
        .arg("--json")
        .arg(&out)
        .output()
        .expect("run satsuma-load");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let text = std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("{e}\n{stdout}\n{stderr}"));
    std::fs::remove_file(&out).ok();
    let report: Value = serde_json::from_str(&text).unwrap();
    assert!(
        report["results"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    let ramps = report["ramps"].as_array().unwrap();
    assert_eq!(ramps.len(), 1, "one ramp for one SFU: {report:#}");
    (ramps[0].clone(), stdout)
}

#[test]
fn ramp_adds_subscribers_per_step_and_stops_with_a_named_reason() {
    let load = PathBuf::from(env!("CARGO_BIN_EXE_satsuma-load"));
    let sfu = sfu_binary(&load);

    // Nothing can break: every step up to the maximum.
    let (r, stdout) = ramp(
        &load,
        &sfu,
        "climb",
        &["--ramp-max-loss", "100", "--ramp-max-p99-ms", "100000"],
    );
    assert_eq!(r["sfu"], "satsuma");
    assert_eq!(r["stop"], "max_reached", "{r:#}");
    assert_eq!(r["stopped_at"], 4, "{r:#}");
    let steps = r["steps"].as_array().unwrap();
    let counts: Vec<u64> = steps
        .iter()
        .map(|s| s["subscribers"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 2, 4], "one window per step: {r:#}");
    for s in steps {
        let res = &s["result"];
        let n = s["subscribers"].as_u64().unwrap();
        assert_eq!(res["subscribers"], serde_json::json!([n, n]), "{s:#}");
        assert_eq!(
            (&res["sfu"], &res["bwe"]),
            (&"satsuma".into(), &"on".into())
        );
        assert!(s["breaks"].as_array().unwrap().is_empty(), "{s:#}");
        assert_eq!(res["corrupt"], 0, "{s:#}");
        // Audio + video per subscriber, every latency sample from this window only.
        assert!(res["latency"]["tracks"].as_u64().unwrap() >= 2 * n, "{s:#}");
        let workers = s["worker_cpu_pct"].as_array().unwrap();
        assert_eq!(workers.len(), 2, "{s:#}");
        assert!(workers.iter().all(|c| c.as_f64().unwrap() >= 0.0));
        assert!(res["process"]["cpu_s"].as_f64().unwrap() > 0.0, "{s:#}");
    }
    let egress = |i: usize| steps[i]["result"]["egress_pps"].as_f64().unwrap();
    assert!(egress(0) > 100.0, "{r:#}");
    // 4 subscribers get 4 times the packets of 1 (2 allows for a loaded machine).
    assert!(egress(2) > 2.0 * egress(0), "{r:#}");
    let bots: f64 = steps
        .iter()
        .flat_map(|s| s["worker_cpu_pct"].as_array().unwrap())
        .map(|c| c.as_f64().unwrap())
        .sum();
    assert!(bots > 0.0, "{r:#}");
    let max = &r["max"];
    assert_eq!(max["subscribers"], 4, "{r:#}");
    assert_eq!(max["egress_pps"].as_f64().unwrap(), egress(2));
    assert!(stdout.contains("Ramp, satsuma (bwe on)"), "{stdout}");
    assert!(stdout.contains("max sustained egress pkt/s"), "{stdout}");

    // Every window breaks (server-added p99 can never be below -1 s): stops at the first step,
    // after one re-measurement, with nothing sustained.
    let (r, stdout) = ramp(
        &load,
        &sfu,
        "break",
        &["--ramp-max-p99-ms=-1000", "--ramp-retries", "1"],
    );
    assert_eq!(r["stop"], "latency", "{r:#}");
    assert_eq!(r["stopped_at"], 1, "{r:#}");
    let steps = r["steps"].as_array().unwrap();
    let windows: Vec<(u64, u64)> = steps
        .iter()
        .map(|s| {
            (
                s["subscribers"].as_u64().unwrap(),
                s["attempt"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(windows, [(1, 1), (1, 2)], "{r:#}");
    assert!(r["max"].is_null(), "{r:#}");
    assert!(
        stdout.contains("| satsuma (bwe on) | none held |"),
        "{stdout}"
    );
}
