//! Shared setup of the tests that run several `satsuma-sfu` nodes joined by the QUIC relay
//! behind a `satsuma-coordinator` process (`sfu_cluster.rs`, `sfu_drain.rs`): a cluster CA and
//! node certificates in a temporary folder, the node processes, the coordinator process, and
//! which node a session id names. A test includes it with
//! `#[path = "common/cluster.rs"] mod cluster;` (the other tests that use `common` need none of
//! it).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use satsuma_bot::harness::{APP_ID, APP_SECRET, SfuProcess};
use satsuma_sfu::relay::tls;

/// `satsuma-sfu` next to the coordinator binary in the same target folder; built if missing
/// (`cargo test -p satsuma-coordinator` does not build other packages' binaries; `cargo test
/// --workspace` has it).
pub fn sfu_binary() -> PathBuf {
    satsuma_bot::harness::sfu_binary_beside(Path::new(env!("CARGO_BIN_EXE_satsuma-coordinator")))
        .unwrap()
}

fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// SFU nodes named `names`, each with its relay on a free loopback port, a certificate from a
/// fresh cluster CA, and every other node as relay peer.
pub struct Nodes {
    /// The certificates (left behind for a look after a failure; the next run replaces them).
    pub dir: PathBuf,
    /// The node processes, in the order of `names` (killed on drop).
    pub sfus: Vec<SfuProcess>,
}

impl Nodes {
    /// Starts the nodes: `satsuma-sfu --shards 1 --log info --node-name NAME` with the relay
    /// settings, plus `extra` on every node. `label` names the temporary folder.
    pub fn start(label: &str, names: &[&str], extra: &[&str]) -> Nodes {
        let bin = sfu_binary();
        let dir = std::env::temp_dir().join(format!("satsuma-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = tls::generate_ca("test").unwrap();
        std::fs::write(dir.join("ca.pem"), &ca.cert).unwrap();
        for name in names {
            let c = tls::generate_node_cert(&ca, name, 1).unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), &c.cert).unwrap();
            std::fs::write(dir.join(format!("{name}-key.pem")), &c.key).unwrap();
        }
        let ports: Vec<u16> = names.iter().map(|_| free_udp_port()).collect();
        let file = |f: String| dir.join(f).to_str().unwrap().to_string();
        let sfus = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut args = vec![
                    "--shards".to_string(),
                    "1".into(),
                    "--log".into(),
                    "info".into(),
                    "--node-name".into(),
                    (*name).into(),
                    "--relay-bind".into(),
                    format!("127.0.0.1:{}", ports[i]),
                    "--relay-cert".into(),
                    file(format!("{name}.pem")),
                    "--relay-key".into(),
                    file(format!("{name}-key.pem")),
                    "--relay-ca".into(),
                    file("ca.pem".into()),
                ];
                for (j, peer) in names.iter().enumerate().filter(|(j, _)| *j != i) {
                    args.push("--relay-peer".into());
                    args.push(format!("{peer}=127.0.0.1:{}", ports[j]));
                }
                args.extend(extra.iter().map(|a| (*a).to_owned()));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                SfuProcess::start(&bin, &args).expect("start satsuma-sfu")
            })
            .collect();
        Nodes { dir, sfus }
    }
}

/// The node (index into `names`) whose tag starts session id `sid`.
pub fn node_of(names: &[&str], sid: &str) -> usize {
    let tag = hex::decode(&sid[..4]).unwrap();
    names
        .iter()
        .position(|n| satsuma_sfu::relay::bridge::node_tag(n)[..] == tag[..])
        .unwrap_or_else(|| panic!("session {sid} names no node"))
}

/// A `satsuma-coordinator` process (killed on drop).
pub struct Coordinator {
    child: Child,
    /// Its HTTP address (`host:port`).
    pub addr: String,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Coordinator {
    /// `satsuma-coordinator --dev` on a free loopback port with the SFU `nodes` (`--sfu-node`
    /// specs) and the harness's app, plus `extra`; its log goes to
    /// `$TMPDIR/satsuma-{label}-{pid}.log`.
    #[allow(clippy::zombie_processes)] // reaped in Drop
    pub fn start(label: &str, nodes: &[String], extra: &[&str]) -> Coordinator {
        let log = std::fs::File::create(
            std::env::temp_dir().join(format!("satsuma-{label}-{}.log", std::process::id())),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_satsuma-coordinator"));
        cmd.args([
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--web-dir",
            "/nonexistent",
        ])
        .args(["--sfu-app-id", APP_ID, "--sfu-app-secret", APP_SECRET])
        .args(extra);
        for n in nodes {
            cmd.args(["--sfu-node", n]);
        }
        let mut child = cmd
            .env_remove("SATSUMA_COORD_CONFIG")
            .env("SATSUMA_COORD_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn coordinator");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("satsuma-coordinator listening http=")
            .unwrap_or_else(|| panic!("coordinator did not start: {line:?}"))
            .to_owned();
        Coordinator { child, addr }
    }
}
