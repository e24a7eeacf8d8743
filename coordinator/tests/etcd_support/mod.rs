//! Real etcd members and coordinator replicas as child processes on 127.0.0.1 (issue 16).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The etcd binary: `$SATSUMA_ETCD`, else `etcd` on the PATH (Debian package `etcd-server`).
pub fn etcd_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SATSUMA_ETCD") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd member.
pub struct Member {
    pub name: String,
    pub client_url: String,
    peer_url: String,
    dir: PathBuf,
    child: Option<Child>,
    cluster: String,
}

/// An etcd cluster of `n` members, each with its own temp data dir and random ports.
pub struct Etcd {
    pub members: Vec<Member>,
}

impl Etcd {
    /// Starts `n` members and waits until the cluster answers; `None` (with a message) if the
    /// etcd binary is missing.
    pub fn start(n: usize) -> Option<Etcd> {
        let Some(bin) = etcd_binary() else {
            eprintln!(
                "SKIPPED: no etcd binary (apt-get install etcd-server, or set SATSUMA_ETCD); \
                 scripts/test.sh installs it"
            );
            return None;
        };
        let tag = format!("{}-{}", std::process::id(), rand::random::<u32>());
        let mut members: Vec<Member> = (0..n)
            .map(|i| {
                let name = format!("m{i}");
                Member {
                    client_url: format!("http://127.0.0.1:{}", free_port()),
                    peer_url: format!("http://127.0.0.1:{}", free_port()),
                    dir: std::env::temp_dir().join(format!("satsuma-etcd-{tag}-{name}")),
                    name,
                    child: None,
                    cluster: String::new(),
                }
            })
            .collect();
        let cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.cluster = cluster.clone();
            m.spawn(&bin);
        }
        let etcd = Etcd { members };
        etcd.wait_healthy(Duration::from_secs(20));
        Some(etcd)
    }

    /// Client URLs of all members.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Waits until some member reports health (a leader and a quorum).
    pub fn wait_healthy(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            if self.members.iter().any(|m| m.healthy()) {
                return;
            }
            assert!(start.elapsed() < limit, "etcd not healthy within {limit:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Restarts member `i` with its data dir.
    pub fn restart(&mut self, i: usize) {
        let bin = etcd_binary().unwrap();
        self.members[i].spawn(&bin);
    }
}

impl Member {
    fn spawn(&mut self, bin: &PathBuf) {
        let log = std::fs::File::create(std::env::temp_dir().join(format!(
            "{}.log",
            self.dir.file_name().unwrap().to_string_lossy()
        )))
        .unwrap();
        let state = if self.dir.exists() { "existing" } else { "new" };
        let child = Command::new(bin)
            .args([
                "--name",
                &self.name,
                "--data-dir",
                self.dir.to_str().unwrap(),
                "--listen-client-urls",
                &self.client_url,
                "--advertise-client-urls",
                &self.client_url,
                "--listen-peer-urls",
                &self.peer_url,
                "--initial-advertise-peer-urls",
                &self.peer_url,
                "--initial-cluster",
                &self.cluster,
                "--initial-cluster-state",
                state,
                "--initial-cluster-token",
                "satsuma-test",
                // A leader's loss is noticed in 0.5-1 s instead of 1-2 s (etcd's defaults
                // are tuned for WANs; deploy/helm sets the same on a LAN).
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn healthy(&self) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect_timeout(
            &self.client_url["http://".len()..].parse().unwrap(),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        use std::io::{Read, Write};
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.contains("\"health\":\"true\"")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
            let _ = std::fs::remove_dir_all(&m.dir);
        }
    }
}

/// A coordinator replica: the real binary, with the etcd room store.
pub struct Replica {
    pub id: String,
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl Replica {
    /// Starts `satsuma-coordinator --dev` with the store on `endpoints`.
    pub fn start(id: &str, endpoints: &[String], extra: &[&str]) -> Replica {
        Self::start_on(id, endpoints, "127.0.0.1:0", extra)
    }

    /// Like [`Replica::start`], on a fixed free port and with `--replica-url` set to it, so
    /// other replicas forward clients of its rooms to it.
    pub fn start_reachable(id: &str, endpoints: &[String], extra: &[&str]) -> Replica {
        let listen = format!("127.0.0.1:{}", free_port());
        let url = format!("http://{listen}");
        let mut args = vec!["--replica-url", url.as_str()];
        args.extend_from_slice(extra);
        Self::start_on(id, endpoints, &listen, &args)
    }

    fn start_on(id: &str, endpoints: &[String], listen: &str, extra: &[&str]) -> Replica {
        let log = std::fs::File::create(
            std::env::temp_dir().join(format!("satsuma-replica-{}-{id}.log", std::process::id())),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_satsuma-coordinator"));
        cmd.args(["--dev", "--listen", listen, "--replica-id", id])
            .args(["--store-lease-ttl-ms", "2000"])
            .args(["--etcd-endpoint", &endpoints.join(",")])
            .args(extra)
            .env("SATSUMA_COORD_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = cmd.spawn().expect("spawn coordinator");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("satsuma-coordinator listening http=")
            .unwrap_or_else(|| panic!("replica {id} did not start: {line:?}"))
            .parse()
            .unwrap();
        Replica {
            id: id.to_owned(),
            addr,
            child: Some(child),
        }
    }

    pub fn ws_url(&self, room: &str) -> String {
        format!("ws://{}/ws/{room}", self.addr)
    }

    /// `http://addr`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        let pid = c.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        c.wait().unwrap()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}
