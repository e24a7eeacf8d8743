//! What the `satsuma` integration tests share: the all-in-one binary started on ephemeral
//! loopback ports ([`Stack::start`]: with its defaults and `--dev`, as a user's quick start runs
//! it; [`Stack::spawn`]: another web directory and more flags).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long the binary may take to print its `satsuma listening` line (a hang detector).
const STARTUP: Duration = Duration::from_secs(60);

/// A running `satsuma` on ephemeral loopback ports; killed and reaped when dropped.
pub(crate) struct Stack {
    pub(crate) child: Child,
    /// The web app, token endpoint, WebSocket and `/sfu` proxy.
    pub(crate) web: SocketAddr,
    /// The embedded SFU's API (and its `/metrics`).
    pub(crate) sfu: SocketAddr,
    /// The embedded SFU's media (UDP).
    pub(crate) media: SocketAddr,
    /// The lines the server printed after its `satsuma listening` line (read on, or not).
    pub(crate) stdout: mpsc::Receiver<String>,
}

/// The checkout's web client.
pub(crate) fn web_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../client/web/public")
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Stack {
    /// Starts `satsuma --dev` serving the checkout's web client, and waits until it listens.
    pub(crate) fn start() -> Stack {
        Stack::spawn(&web_dir(), &["--dev"])
    }

    /// Starts `satsuma` serving `web_dir` with `extra` flags after the loopback defaults (no
    /// config file, no test hooks from the environment), and waits until it listens.
    #[allow(clippy::zombie_processes)] // reaped in Drop
    pub(crate) fn spawn(web_dir: &Path, extra: &[&str]) -> Stack {
        let mut child = Command::new(env!("CARGO_BIN_EXE_satsuma"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--sfu-api",
                "127.0.0.1:0",
                "--media",
                "127.0.0.1:0",
                "--detect-lan=false",
                "--log",
                "warn",
            ])
            .arg("--web-dir")
            .arg(web_dir)
            .args(extra)
            .env_remove("SATSUMA_CONFIG")
            .env_remove("SATSUMA_TEST_HOOKS")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn satsuma");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keeps draining after the listening line, read or not: a closed pipe would fail
            // the server's later prints.
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        loop {
            let line = rx
                .recv_timeout(STARTUP)
                .expect("satsuma printed no `satsuma listening` line");
            if line.starts_with("satsuma listening ") {
                return Stack {
                    web: field(&line, "web"),
                    sfu: field(&line, "sfu"),
                    media: field(&line, "media"),
                    child,
                    stdout: rx,
                };
            }
        }
    }

    /// `http://` and the web address.
    pub(crate) fn base(&self) -> String {
        format!("http://{}", self.web)
    }

    /// The page's URL: `http://<web>/`.
    pub(crate) fn root(&self) -> String {
        format!("http://{}/", self.web)
    }

    /// The room's WebSocket URL.
    pub(crate) fn ws(&self, room: &str) -> String {
        format!("ws://{}/ws/{room}", self.web)
    }
}

/// The address after `key=` in the `satsuma listening` line.
pub(crate) fn field(line: &str, key: &str) -> SocketAddr {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .parse()
        .unwrap()
}
