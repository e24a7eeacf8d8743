//! The embedded stack: one SFU and one coordinator in this process, wired to each other.
//!
//! [`sfu_config`] and [`coordinator_config`] are pure translations of [`Settings`] into the two
//! libraries' configs (unit-tested); [`Stack::start`] binds them in order (the SFU first, so the
//! coordinator's first health check finds it) and [`Stack::shutdown`] stops them in the reverse
//! order within the drain time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

use crate::settings::{Settings, Tls};
use crate::tls::{self, CertSource, TlsFront};

/// How long WebSocket tasks get to flush their close frames after the coordinator stopped.
const CLOSE_LINGER: Duration = Duration::from_millis(300);

/// The secrets the two embedded servers share.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secrets {
    /// Bearer secret of the coordinator's app at the SFU.
    pub(crate) app_secret: String,
    /// HS256 key of join tokens.
    pub(crate) token_secret: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

/// 32 random bytes, hex-encoded.
fn random_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

impl Secrets {
    /// The configured secrets, or fresh random ones for what is not configured. The token
    /// secret may be random only in dev mode: without it nobody could mint a token the server
    /// accepts (`satsuma token create`, your app), so a production start without one is refused.
    pub(crate) fn from_settings(settings: &Settings) -> anyhow::Result<Secrets> {
        let token_secret = match (&settings.token_secret, settings.dev) {
            (Some(s), _) => s.clone(),
            (None, true) => random_secret(),
            (None, false) => anyhow::bail!(
                "token_secret is not set: give --token-secret / SATSUMA_TOKEN_SECRET (at least 32 \
                 random bytes, e.g. `openssl rand -hex 32`), or run with --dev to try Satsuma \
                 with open dev tokens"
            ),
        };
        Ok(Secrets {
            app_secret: settings.app_secret.clone().unwrap_or_else(random_secret),
            token_secret,
        })
    }
}

/// The embedded SFU's configuration: one app (the embedded coordinator), the configured
/// sockets, and the announce list decided by [`crate::announce`].
pub(crate) fn sfu_config(
    settings: &Settings,
    secrets: &Secrets,
    announce_ips: Vec<IpAddr>,
) -> satsuma_sfu::Config {
    let mut config = satsuma_sfu::Config {
        apps: vec![satsuma_sfu::App {
            id: settings.app_id.clone(),
            secret: secrets.app_secret.clone(),
        }],
        http_bind: settings.sfu_api,
        udp_bind: settings.media,
        tcp_bind: settings.media_tcp,
        announce_ips,
        // The SFU's test hooks (POST /v1/test/shards/{n}/panic) come with the stack's.
        test_hooks: settings.test_hooks,
        // The Realtime-compatible TURN credentials route, for the same TURN servers.
        turn_keys: settings.turn_keys.clone(),
        turn: settings.turn.clone(),
        ..satsuma_sfu::Config::default()
    };
    settings.sfu_limits.apply(&mut config);
    config
}

/// The address to reach a server bound at `bound` from this machine: the unspecified address
/// becomes loopback.
pub(crate) fn reachable(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

/// The embedded coordinator's configuration: `listen` (the web address, or a loopback port
/// behind the TLS front), dev mode, the shared secrets, the web directory, and the embedded SFU
/// (bound at `sfu_http`) as its only node.
pub(crate) fn coordinator_config(
    settings: &Settings,
    secrets: &Secrets,
    web_dir: PathBuf,
    listen: SocketAddr,
    sfu_http: SocketAddr,
) -> satsuma_coordinator::Config {
    satsuma_coordinator::Config {
        listen,
        jwt_secret: secrets.token_secret.clone(),
        api_keys: settings.api_keys.clone(),
        dev: settings.dev,
        test_hooks: settings.test_hooks,
        web_dir,
        sfu_nodes: vec![format!("http://{}", reachable(sfu_http))],
        sfu_app_id: settings.app_id.clone(),
        sfu_app_secret: secrets.app_secret.clone(),
        turn: settings.turn.clone(),
        turn_ttl_s: settings.turn_ttl_secs,
        ..settings.coordinator.clone()
    }
}

/// The origins of the announced addresses on the web port, which browsers on the LAN use
/// (the coordinator's Host/Origin allow-list; loopback is allowed anyway without a public URL).
pub(crate) fn lan_origins(settings: &Settings, announce_ips: &[IpAddr]) -> Vec<String> {
    let port = settings.listen.port();
    if port == 0 {
        return Vec::new();
    }
    let scheme = if settings.tls == Tls::Off {
        "http"
    } else {
        "https"
    };
    announce_ips
        .iter()
        .map(|ip| format!("{scheme}://{}", SocketAddr::new(*ip, port)))
        .collect()
}

/// The URL users open: the configured public URL, else `http(s)://localhost:PORT/` when bound
/// to loopback or every address, else the bound address.
pub(crate) fn user_url(settings: &Settings, web: SocketAddr) -> String {
    if let Some(url) = &settings.public_url {
        return url.clone();
    }
    let scheme = if settings.tls == Tls::Off {
        "http"
    } else {
        "https"
    };
    if web.ip().is_loopback() || web.ip().is_unspecified() {
        format!("{scheme}://localhost:{}/", web.port())
    } else {
        format!("{scheme}://{web}/")
    }
}

/// The TLS certificate source for `settings`, if the web port speaks HTTPS.
pub(crate) fn cert_source(settings: &Settings, announce_ips: &[IpAddr]) -> Option<CertSource> {
    match &settings.tls {
        Tls::Off => None,
        Tls::Files { cert, key } => Some(CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        }),
        Tls::SelfSigned => Some(CertSource::SelfSigned {
            names: tls::self_signed_names(announce_ips),
        }),
    }
}

/// Where the web client's files are: the configured directory, else the first of the default
/// places that holds an `index.html`. `None` if nothing was configured and nothing was found.
pub(crate) fn find_web_dir(configured: Option<&Path>, candidates: &[PathBuf]) -> Option<PathBuf> {
    if let Some(dir) = configured {
        return Some(dir.to_path_buf());
    }
    candidates
        .iter()
        .find(|dir| dir.join("index.html").is_file())
        .cloned()
}

/// The default places for the web client, in order: `./client/web/public`, the installed
/// location next to the binary (`<exe dir>/../share/satsuma/web`), and the checkout this binary
/// was built from.
pub(crate) fn default_web_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("client/web/public")];
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.join("../share/satsuma/web"));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../client/web/public"));
    dirs
}

/// The running stack.
#[derive(Debug)]
pub(crate) struct Stack {
    sfu: satsuma_sfu::ServerHandle,
    coordinator: satsuma_coordinator::ServerHandle,
    tls: Option<TlsFront>,
}

impl Stack {
    /// Starts the SFU, then the coordinator pointed at it.
    pub(crate) async fn start(
        settings: &Settings,
        secrets: &Secrets,
        announce_ips: Vec<IpAddr>,
        web_dir: PathBuf,
    ) -> anyhow::Result<Stack> {
        // Certificate problems are configuration errors: find them before binding anything.
        let tls_config = match cert_source(settings, &announce_ips) {
            Some(source) => Some(tls::server_config(&source)?),
            None => None,
        };
        let origins = lan_origins(settings, &announce_ips);
        let sfu = satsuma_sfu::Server::bind(sfu_config(settings, secrets, announce_ips))
            .await
            .context("starting the SFU")?;
        // Behind the TLS front the coordinator listens on a loopback port of its own.
        let coordinator_listen = if tls_config.is_some() {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
        } else {
            settings.listen
        };
        let mut coordinator_config = coordinator_config(
            settings,
            secrets,
            web_dir,
            coordinator_listen,
            sfu.http_addr(),
        );
        coordinator_config.budgets.public_url = settings.public_url.clone();
        coordinator_config.budgets.allowed_origins.extend(origins);
        let coordinator = satsuma_coordinator::Server::bind(coordinator_config)
            .await
            .context("starting the coordinator")?;
        let tls = match tls_config {
            Some(config) => Some(
                TlsFront::bind(settings.listen, coordinator.local_addr(), config)
                    .await
                    .context("starting the TLS front")?,
            ),
            None => None,
        };
        Ok(Stack {
            sfu,
            coordinator,
            tls,
        })
    }

    /// Where the web client, coordinator WebSocket and `/token` are served.
    pub(crate) fn web_addr(&self) -> SocketAddr {
        match &self.tls {
            Some(front) => front.local_addr(),
            None => self.coordinator.local_addr(),
        }
    }

    /// The SFU's HTTP API and `/metrics`.
    pub(crate) fn sfu_api_addr(&self) -> SocketAddr {
        self.sfu.http_addr()
    }

    /// The media UDP socket.
    pub(crate) fn media_addr(&self) -> SocketAddr {
        self.sfu.udp_addr()
    }

    /// The ICE-TCP listener, if on.
    pub(crate) fn media_tcp_addr(&self) -> Option<SocketAddr> {
        self.sfu.tcp_addr()
    }

    /// Graceful stop: the coordinator stops accepting and closes every client connection with
    /// 1001 (going away) so clients know to leave; then the SFU stops its API and media. Each
    /// step gets what is left of `drain`; a step that overruns is abandoned (its tasks are
    /// aborted when the handles drop) so the process always exits.
    pub(crate) async fn shutdown(self, drain: Duration) {
        let deadline = Instant::now() + drain;
        let Stack {
            sfu,
            coordinator,
            tls,
        } = self;
        if let Some(front) = tls
            && tokio::time::timeout_at(deadline, front.stop_accepting())
                .await
                .is_err()
        {
            tracing::warn!("TLS front did not stop in time");
        }
        if tokio::time::timeout_at(deadline, coordinator.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("coordinator did not drain in time");
        } else {
            tracing::info!("coordinator stopped; clients were told to leave");
        }
        // The coordinator's shutdown returns once its listener is closed, but each WebSocket is
        // served by a detached task that still has to write its close frame (1001). Leave them
        // a moment while the runtime is alive, so clients learn the server is going away
        // instead of seeing a reset.
        let linger = deadline.min(Instant::now() + CLOSE_LINGER);
        tokio::time::sleep_until(linger).await;
        if tokio::time::timeout_at(deadline, sfu.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("SFU did not drain in time");
        } else {
            tracing::info!("SFU stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Cli, FileSettings};

    fn settings() -> Settings {
        Settings::resolve(Cli::default(), FileSettings::default()).unwrap()
    }

    #[test]
    fn a_token_secret_is_required_outside_dev_mode() {
        let e = Secrets::from_settings(&settings()).unwrap_err().to_string();
        assert!(e.contains("token_secret") && e.contains("--dev"), "{e}");
        let given = Settings {
            token_secret: Some("0123456789abcdef0123456789abcdef".into()),
            ..settings()
        };
        let s = Secrets::from_settings(&given).unwrap();
        assert_eq!(s.token_secret, "0123456789abcdef0123456789abcdef");
        assert_eq!(s.app_secret.len(), 64);
    }

    #[test]
    fn secrets_are_generated_when_missing_and_kept_when_given() {
        let s = Settings {
            dev: true,
            ..settings()
        };
        let a = Secrets::from_settings(&s).unwrap();
        let b = Secrets::from_settings(&s).unwrap();
        assert_eq!(a.app_secret.len(), 64);
        assert_ne!(a.app_secret, b.app_secret);
        assert_ne!(a.app_secret, a.token_secret);
        let given = Settings {
            app_secret: Some("0123456789abcdef-app".into()),
            ..s
        };
        assert_eq!(
            Secrets::from_settings(&given).unwrap().app_secret,
            "0123456789abcdef-app"
        );
        assert!(!format!("{a:?}").contains(&a.app_secret));
    }

    #[test]
    fn both_servers_share_app_id_and_secret() {
        let s = settings();
        let secrets = Secrets::from_settings(&Settings {
            dev: true,
            ..s.clone()
        })
        .unwrap();
        let sfu = sfu_config(&s, &secrets, vec!["127.0.0.1".parse().unwrap()]);
        let coord = coordinator_config(
            &s,
            &secrets,
            PathBuf::from("web"),
            s.listen,
            "0.0.0.0:7880".parse().unwrap(),
        );
        assert_eq!(sfu.apps.len(), 1);
        assert_eq!(sfu.apps[0].id, coord.sfu_app_id);
        assert_eq!(sfu.apps[0].secret, coord.sfu_app_secret);
        assert_eq!(coord.jwt_secret, secrets.token_secret);
        assert_eq!(coord.sfu_nodes, vec!["http://127.0.0.1:7880".to_string()]);
        assert!(!coord.dev);
        assert!(!coord.test_hooks);
        assert_eq!(coord.listen, s.listen);
        assert_eq!(sfu.udp_bind, s.media);
        assert_eq!(sfu.http_bind, s.sfu_api);
        sfu.validate().unwrap();
        coord.validate().unwrap();
        let hooks = Settings {
            test_hooks: true,
            ..s
        };
        let coord = coordinator_config(
            &hooks,
            &secrets,
            PathBuf::from("web"),
            hooks.listen,
            "0.0.0.0:7880".parse().unwrap(),
        );
        assert!(coord.test_hooks);
    }

    #[test]
    fn user_url_prefers_public_url_then_localhost() {
        let s = settings();
        assert_eq!(
            user_url(&s, "127.0.0.1:8080".parse().unwrap()),
            "http://localhost:8080/"
        );
        assert_eq!(
            user_url(&s, "0.0.0.0:9000".parse().unwrap()),
            "http://localhost:9000/"
        );
        assert_eq!(
            user_url(&s, "192.0.2.1:80".parse().unwrap()),
            "http://192.0.2.1:80/"
        );
        let tls = Settings {
            tls: Tls::SelfSigned,
            ..s.clone()
        };
        assert_eq!(
            user_url(&tls, "127.0.0.1:8443".parse().unwrap()),
            "https://localhost:8443/"
        );
        let public = Settings {
            public_url: Some("https://meet.example.com/".into()),
            ..s
        };
        assert_eq!(
            user_url(&public, "127.0.0.1:8080".parse().unwrap()),
            "https://meet.example.com/"
        );
    }

    #[test]
    fn web_dir_is_the_configured_one_or_the_first_with_an_index() {
        let base = std::env::temp_dir().join(format!("satsuma-webdir-{}", std::process::id()));
        let empty = base.join("empty");
        let full = base.join("full");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::create_dir_all(&full).unwrap();
        std::fs::write(full.join("index.html"), "<html></html>").unwrap();
        let candidates = vec![empty.clone(), full.clone()];
        assert_eq!(find_web_dir(None, &candidates), Some(full.clone()));
        assert_eq!(find_web_dir(Some(&empty), &candidates), Some(empty.clone()));
        assert_eq!(find_web_dir(None, &[empty]), None);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
