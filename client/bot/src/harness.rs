//! Test harness pieces: run a real `satsuma-sfu` process and read its `/metrics`.
//!
//! Integration tests and load tools start the SFU binary with ephemeral ports, wait for its
//! `satsuma-sfu listening http=… udp=…` line, talk to it with bots, read Prometheus counters, and
//! measure its CPU time from `/proc/<pid>/stat`. The process is killed when the handle drops.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use thiserror::Error;

/// Errors of the harness.
#[derive(Debug, Error)]
pub enum HarnessError {
    /// The process could not be started.
    #[error("cannot start {0}: {1}")]
    Spawn(String, std::io::Error),
    /// The process did not print its listening line in time (or exited).
    #[error("SFU did not report its ports: {0}")]
    NoListeningLine(String),
    /// `/metrics` could not be fetched.
    #[error("metrics: {0}")]
    Metrics(String),
    /// `/proc` could not be read.
    #[error("proc: {0}")]
    Proc(String),
    /// The `satsuma-sfu` binary is missing and could not be built.
    #[error("satsuma-sfu binary: {0}")]
    Binary(String),
}

/// The `satsuma-sfu` binary in the same target folder as `beside` (a test's or tool's own
/// binary), built there with `cargo build -p satsuma-sfu` if missing: `cargo test -p <crate>`
/// builds only that package's binaries (`cargo test --workspace` has it already).
pub fn sfu_binary_beside(beside: &Path) -> Result<PathBuf, HarnessError> {
    let dir = beside
        .parent()
        .ok_or_else(|| HarnessError::Binary(format!("{} has no folder", beside.display())))?;
    let sfu = dir.join("satsuma-sfu");
    if !sfu.exists() {
        let target_dir = dir
            .parent()
            .ok_or_else(|| HarnessError::Binary(format!("{} has no parent", dir.display())))?;
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(&cargo)
            .args(["build", "-p", "satsuma-sfu", "--bin", "satsuma-sfu"])
            .env("CARGO_TARGET_DIR", target_dir)
            .status()
            .map_err(|e| HarnessError::Spawn(cargo, e))?;
        if !status.success() {
            return Err(HarnessError::Binary(format!(
                "cargo build failed: {status}"
            )));
        }
    }
    if sfu.exists() {
        Ok(sfu)
    } else {
        Err(HarnessError::Binary(format!("{} missing", sfu.display())))
    }
}

/// A running `satsuma-sfu` process.
#[derive(Debug)]
pub struct SfuProcess {
    child: Child,
    /// HTTP API address.
    pub http_addr: SocketAddr,
    /// UDP media address.
    pub udp_addr: SocketAddr,
    stderr_log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// The default app the harness configures.
pub const APP_ID: &str = "test-app";
/// Its secret.
pub const APP_SECRET: &str = "test-secret";

impl SfuProcess {
    /// Start `binary` on 127.0.0.1 with ephemeral ports, app [`APP_ID`]/[`APP_SECRET`], plus `extra_args`.
    pub fn start(binary: impl AsRef<Path>, extra_args: &[&str]) -> Result<Self, HarnessError> {
        let binary = binary.as_ref();
        let mut child = Command::new(binary)
            .args([
                "--http-bind",
                "127.0.0.1:0",
                "--udp-bind",
                "127.0.0.1:0",
                "--app",
                &format!("{APP_ID}:{APP_SECRET}"),
            ])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| HarnessError::Spawn(binary.display().to_string(), e))?;
        let stderr_log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        if let Some(err) = child.stderr.take() {
            let log = stderr_log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if let Ok(mut l) = log.lock()
                        && l.len() < 10_000
                    {
                        l.push(line);
                    }
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if line.starts_with("satsuma-sfu listening") {
                        let _ = tx.send(line);
                    }
                }
            });
        }
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = stderr_log.lock().map(|l| l.join("\n")).unwrap_or_default();
                return Err(HarnessError::NoListeningLine(log));
            }
        };
        let field = |name: &str| -> Option<SocketAddr> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse().ok())
        };
        let (Some(http_addr), Some(udp_addr)) = (field("http="), field("udp=")) else {
            let _ = child.kill();
            return Err(HarnessError::NoListeningLine(line));
        };
        Ok(Self {
            child,
            http_addr,
            udp_addr,
            stderr_log,
        })
    }

    /// Base URL of the HTTP API.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The exit status once the process has exited (`None` while it runs).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr_log
            .lock()
            .map(|l| l.join("\n"))
            .unwrap_or_default()
    }

    /// Fetch and parse `/metrics`.
    pub async fn metrics(&self) -> Result<Metrics, HarnessError> {
        fetch_metrics(&self.base_url()).await
    }

    /// CPU time (user + system) the process has used so far, from `/proc/<pid>/stat`.
    pub fn cpu_time(&self) -> Result<Duration, HarnessError> {
        cpu_time_of(self.pid())
    }
}

impl Drop for SfuProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (utime + stime) of process `pid`.
pub fn cpu_time_of(pid: u32) -> Result<Duration, HarnessError> {
    let (user, system) = cpu_times_of(pid)?;
    Ok(user + system)
}

/// utime and stime of `pid` (all threads), apart: user space, and the kernel working for it
/// (system calls; on loopback also the receivers' delivery, which runs in the sender's context).
pub fn cpu_times_of(pid: u32) -> Result<(Duration, Duration), HarnessError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| HarnessError::Proc(e.to_string()))?;
    parse_cpu_times(&stat)
}

/// utime and stime from a `/proc/<pid>/stat` text.
fn parse_cpu_times(stat: &str) -> Result<(Duration, Duration), HarnessError> {
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| HarnessError::Proc("malformed stat".into()))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Result<u64, HarnessError> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| HarnessError::Proc(format!("stat field {i}")))
    };
    // rest starts at field 3 (state), so field n is at index n - 3.
    let hz = clock_ticks_per_second() as f64;
    let secs = |ticks: u64| Duration::from_secs_f64(ticks as f64 / hz);
    Ok((secs(num(14 - 3)?), secs(num(15 - 3)?)))
}

fn clock_ticks_per_second() -> u64 {
    // USER_HZ is 100 on every Linux architecture we run on.
    100
}

/// Fetches and parses `{base}/metrics` (an SFU, or anything serving Prometheus text).
pub async fn fetch_metrics(base: &str) -> Result<Metrics, HarnessError> {
    let text = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| HarnessError::Metrics(e.to_string()))?
        .get(format!("{base}/metrics"))
        .send()
        .await
        .map_err(|e| HarnessError::Metrics(e.to_string()))?
        .text()
        .await
        .map_err(|e| HarnessError::Metrics(e.to_string()))?;
    Ok(Metrics::parse(&text))
}

/// Prometheus text exposition, parsed into `name{labels}` → value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// Samples keyed by the series as written (`name` or `name{a="b"}`).
    pub samples: BTreeMap<String, f64>,
}

impl Metrics {
    /// Parse the text format (comments skipped).
    pub fn parse(text: &str) -> Self {
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((series, value)) = line.rsplit_once(' ')
                && let Ok(v) = value.parse::<f64>()
            {
                samples.insert(series.to_owned(), v);
            }
        }
        Self { samples }
    }

    /// Value of an exact series (`name` or `name{label="v"}`), 0 when absent.
    pub fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    /// Sum over all series of metric `name` (any labels).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| {
                k.as_str() == name || k.strip_prefix(name).is_some_and(|r| r.starts_with('{'))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let m = Metrics::parse(
            "# HELP x y\n# TYPE a counter\na_total 3\nb{reason=\"x\"} 2\nb{reason=\"y\"} 5\nbad line\n",
        );
        assert_eq!(m.get("a_total"), 3.0);
        assert_eq!(m.get("b{reason=\"x\"}"), 2.0);
        assert_eq!(m.sum("b"), 7.0);
        assert_eq!(m.sum("a_total"), 3.0);
        assert_eq!(m.get("missing"), 0.0);
    }

    #[test]
    fn parses_user_and_system_time_apart() {
        // A command name with spaces and a parenthesis; utime 250 and stime 130 ticks.
        let stat = "4177 (sfu (base) x) S 1 4177 4177 0 -1 4194560 1017 0 0 0 250 130 0 0 20 0 9 0";
        let (user, system) = parse_cpu_times(stat).unwrap();
        assert_eq!(user, Duration::from_millis(2500));
        assert_eq!(system, Duration::from_millis(1300));
        assert!(parse_cpu_times("4177 (sfu) S 1 2").is_err());
        assert!(parse_cpu_times("no parenthesis").is_err());
    }

    #[test]
    fn reads_own_cpu_time() {
        let t = cpu_time_of(std::process::id()).unwrap();
        assert!(t < Duration::from_secs(100_000));
    }
}
