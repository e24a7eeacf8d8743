//! Run Janus (Debian's 1.1.2 package) as the comparison SFU: private config folder, loopback only.
//!
//! Janus skips loopback interfaces when it gathers candidates, so on 127.0.0.1 it never answers with
//! a usable candidate. The workaround (see `benches/README.md`): a tiny `LD_PRELOAD` shim, set for the
//! Janus process only, that clears `IFF_LOOPBACK` in what `getifaddrs()` returns, together with
//! `ice_enforce_list = "lo"`. The shim is compiled with the system C compiler into the temp folder.
//! Only the VideoRoom plugin and the HTTP transport (on 127.0.0.1) are enabled.

use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Where Debian installs Janus's modules.
pub const MODULES_DIR: &str = "/usr/lib/x86_64-linux-gnu/janus";

const SHIM_C: &str = r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <stddef.h>

/* Satsuma load harness: present loopback as an ordinary interface so Janus gathers 127.0.0.1. */
int getifaddrs(struct ifaddrs **ifap) {
    static int (*next_getifaddrs)(struct ifaddrs **) = NULL;
    if (next_getifaddrs == NULL) {
        next_getifaddrs = (int (*)(struct ifaddrs **))dlsym(RTLD_NEXT, "getifaddrs");
        if (next_getifaddrs == NULL) return -1;
    }
    int rc = next_getifaddrs(ifap);
    if (rc == 0) {
        for (struct ifaddrs *it = *ifap; it != NULL; it = it->ifa_next) {
            it->ifa_flags &= ~IFF_LOOPBACK;
        }
    }
    return rc;
}
"#;

/// Settings of the Janus process.
#[derive(Debug, Clone)]
pub struct JanusSettings {
    /// The `janus` executable.
    pub binary: PathBuf,
    /// `event_loops` (0: one thread per handle, Janus's default).
    pub event_loops: usize,
    /// RTP port range, "min-max".
    pub rtp_port_range: String,
    /// Janus log level (0–7).
    pub log_level: u8,
}

/// A running Janus with its private config folder (removed on drop).
#[derive(Debug)]
pub struct JanusProcess {
    child: Child,
    dir: PathBuf,
    /// Base URL of the HTTP API, `http://127.0.0.1:<port>/janus`.
    pub api_url: String,
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `disable = "..."` list: every module in `folder` but `keep`.
fn disable_all_but(folder: &Path, keep: &str) -> String {
    let mut names: Vec<String> = fs::read_dir(folder)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.ends_with(".so") && n != keep)
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.join(",")
}

/// The main config file (`janus.jcfg`) for a config folder `dir`.
pub fn main_config(dir: &Path, settings: &JanusSettings, modules: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "general: {{\n  configs_folder = \"{}\"\n  plugins_folder = \"{m}/plugins\"\n  \
         transports_folder = \"{m}/transports\"\n  events_folder = \"{m}/events\"\n  \
         loggers_folder = \"{m}/loggers\"\n  session_timeout = 60\n  debug_level = {}\n{}}}",
        dir.display(),
        settings.log_level,
        if settings.event_loops > 0 {
            format!("  event_loops = {}\n", settings.event_loops)
        } else {
            String::new()
        },
        m = modules.display(),
    );
    let _ = writeln!(
        s,
        "media: {{\n  rtp_port_range = \"{}\"\n}}",
        settings.rtp_port_range
    );
    s.push_str("nat: {\n  ice_enforce_list = \"lo\"\n  ignore_mdns = true\n}\n");
    let _ = writeln!(
        s,
        "plugins: {{\n  disable = \"{}\"\n}}",
        disable_all_but(&modules.join("plugins"), "libjanus_videoroom.so")
    );
    let _ = writeln!(
        s,
        "transports: {{\n  disable = \"{}\"\n}}",
        disable_all_but(&modules.join("transports"), "libjanus_http.so")
    );
    let _ = writeln!(
        s,
        "loggers: {{\n  disable = \"{}\"\n}}",
        disable_all_but(&modules.join("loggers"), "")
    );
    s.push_str("events: {\n  broadcast = false\n}\n");
    s
}

impl JanusProcess {
    /// Write the config folder and the shim into a fresh temp folder and start Janus.
    pub fn start(settings: &JanusSettings) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "satsuma-load-janus-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let shim_c = dir.join("loopback-shim.c");
        let shim = dir.join("loopback-shim.so");
        fs::write(&shim_c, SHIM_C)?;
        let cc = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&shim)
            .arg(&shim_c)
            .arg("-ldl")
            .output()
            .context("run cc to build the loopback shim")?;
        if !cc.status.success() {
            bail!("cc failed: {}", String::from_utf8_lossy(&cc.stderr));
        }
        let port = free_tcp_port()?;
        let modules = Path::new(MODULES_DIR);
        fs::write(dir.join("janus.jcfg"), main_config(&dir, settings, modules))?;
        fs::write(
            dir.join("janus.transport.http.jcfg"),
            format!(
                "general: {{\n  json = \"plain\"\n  base_path = \"/janus\"\n  http = true\n  \
                 port = {port}\n  ip = \"127.0.0.1\"\n  https = false\n}}\n\
                 admin: {{\n  admin_http = false\n}}\ncors: {{\n  allow_origin = \"*\"\n}}\n"
            ),
        )?;
        fs::write(dir.join("janus.plugin.videoroom.jcfg"), "general: {\n}\n")?;
        let log = fs::File::create(dir.join("janus.log"))?;
        let child = Command::new(&settings.binary)
            .env("LD_PRELOAD", &shim)
            .arg("-F")
            .arg(&dir)
            .arg("-C")
            .arg(dir.join("janus.jcfg"))
            .arg("-o")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("start {}", settings.binary.display()))?;
        Ok(Self {
            child,
            dir,
            api_url: format!("http://127.0.0.1:{port}/janus"),
        })
    }

    /// Wait until the HTTP API answers `info` with the VideoRoom plugin loaded.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("janus exited ({status}); log:\n{}", self.log_tail());
            }
            let reply = http
                .post(&self.api_url)
                .json(&json!({"janus": "info", "transaction": "ready"}))
                .send()
                .await;
            if let Ok(r) = reply
                && let Ok(v) = r.json::<Value>().await
                && v.get("plugins")
                    .and_then(|p| p.get("janus.plugin.videoroom"))
                    .is_some()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("janus not ready in {timeout:?}; log:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of Janus's log.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.join("janus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for JanusProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn config_keeps_only_videoroom_and_http_and_loopback() {
        let tmp = std::env::temp_dir().join(format!("satsuma-janus-cfg-{}", std::process::id()));
        for (sub, names) in [
            (
                "plugins",
                &[
                    "libjanus_videoroom.so",
                    "libjanus_echotest.so",
                    "libjanus_sip.so.1",
                ][..],
            ),
            (
                "transports",
                &["libjanus_http.so", "libjanus_websockets.so"][..],
            ),
            ("loggers", &["libjanus_jsonlog.so"][..]),
        ] {
            fs::create_dir_all(tmp.join(sub)).unwrap();
            for n in names {
                fs::write(tmp.join(sub).join(n), b"").unwrap();
            }
        }
        let settings = JanusSettings {
            binary: "janus".into(),
            event_loops: 2,
            rtp_port_range: "20000-20999".into(),
            log_level: 3,
        };
        let cfg = main_config(Path::new("/x/conf"), &settings, &tmp);
        assert!(cfg.contains("disable = \"libjanus_echotest.so\""), "{cfg}");
        assert!(
            cfg.contains("disable = \"libjanus_websockets.so\""),
            "{cfg}"
        );
        assert!(cfg.contains("disable = \"libjanus_jsonlog.so\""), "{cfg}");
        assert!(cfg.contains("ice_enforce_list = \"lo\""));
        assert!(cfg.contains("configs_folder = \"/x/conf\""));
        assert!(cfg.contains("event_loops = 2"));
        assert!(!cfg.contains("stun_server"));
        fs::remove_dir_all(&tmp).unwrap();
    }
}
