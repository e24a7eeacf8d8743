//! Built-in HTTPS for the web port (rustls): a TLS front that terminates TLS and passes the
//! plaintext byte stream to the embedded coordinator on a loopback port, so the web client,
//! `/token`, the SFU proxy and WebSockets all work over `https://` / `wss://` without a reverse
//! proxy.
//!
//! The certificate comes from PEM files (`--tls-cert`, `--tls-key`) or is generated at start
//! (`--tls-self-signed`) for the names users will type (localhost and the announced addresses):
//! browsers warn about it, but after accepting the warning a page on another machine of the LAN
//! gets camera access, which plain `http://` does not.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// A TLS handshake that takes longer than this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections the front carries at once; beyond this new connections are refused.
const MAX_CONNECTIONS: usize = 4096;

/// Where the certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CertSource {
    /// PEM files: the certificate chain (leaf first) and its private key.
    Files {
        /// Certificate chain.
        cert: std::path::PathBuf,
        /// Private key (PKCS#8, PKCS#1 or SEC1).
        key: std::path::PathBuf,
    },
    /// A certificate generated at start for these DNS names and IP addresses.
    SelfSigned {
        /// Subject alternative names.
        names: Vec<String>,
    },
}

/// The names a generated certificate covers: `localhost` and every announced address.
pub(crate) fn self_signed_names(announce_ips: &[IpAddr]) -> Vec<String> {
    let mut names = vec!["localhost".to_string()];
    for ip in announce_ips {
        let name = ip.to_string();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Loads or generates the certificate and builds the rustls server configuration (HTTP/1.1 only:
/// the coordinator behind it speaks HTTP/1.1 and WebSocket upgrades).
pub(crate) fn server_config(source: &CertSource) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (chain, key) = match source {
        CertSource::Files { cert, key } => (load_chain(cert)?, load_key(key)?),
        CertSource::SelfSigned { names } => {
            let generated = rcgen::generate_simple_self_signed(names.clone())
                .context("generating a self-signed certificate")?;
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                generated.signing_key.serialize_der(),
            ));
            (vec![generated.cert.der().clone()], key)
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the TLS certificate does not match its key, or is not usable")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn load_chain(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read TLS certificate {}", path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid PEM in {}", path.display()))?;
    if chain.is_empty() {
        bail!("no certificate in {}", path.display());
    }
    Ok(chain)
}

fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read TLS key {}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .with_context(|| format!("no usable private key in {}", path.display()))
}

/// The running TLS front.
#[derive(Debug)]
pub(crate) struct TlsFront {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl TlsFront {
    /// Binds `listen` and starts passing TLS connections to `backend`.
    pub(crate) async fn bind(
        listen: SocketAddr,
        backend: SocketAddr,
        config: Arc<rustls::ServerConfig>,
    ) -> anyhow::Result<TlsFront> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(config),
            backend,
            stop_rx,
        ));
        Ok(TlsFront { addr, stop, accept })
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting. Connections already passed through stay up until either side closes
    /// them (the coordinator closes its WebSockets when it shuts down).
    pub(crate) async fn stop_accepting(self) {
        let _ = self.stop.send(true);
        let _ = self.accept.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    backend: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("TLS front: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, "TLS front: too many connections, refusing one");
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Err(e) = pass_through(tcp, acceptor, backend).await {
                tracing::debug!(%peer, "TLS connection ended: {e:#}");
            }
            drop(permit);
        });
    }
}

async fn pass_through(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    backend: SocketAddr,
) -> anyhow::Result<()> {
    let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake failed")?;
    let mut upstream = TcpStream::connect(backend)
        .await
        .context("cannot reach the coordinator")?;
    let _ = upstream.set_nodelay(true);
    tokio::io::copy_bidirectional(&mut tls, &mut upstream)
        .await
        .context("relaying")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_names_cover_localhost_and_announced_addresses() {
        let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "192.168.1.2".parse().unwrap()];
        assert_eq!(
            self_signed_names(&ips),
            vec!["localhost", "127.0.0.1", "192.168.1.2"]
        );
    }

    #[test]
    fn a_self_signed_config_builds_and_speaks_http1() {
        let config = server_config(&CertSource::SelfSigned {
            names: vec!["localhost".into()],
        })
        .unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn missing_or_garbage_files_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("satsuma-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a pem").unwrap();
        let missing = CertSource::Files {
            cert: dir.join("nope.pem"),
            key: junk.clone(),
        };
        let err = format!("{:#}", server_config(&missing).unwrap_err());
        assert!(err.contains("cannot read TLS certificate"), "{err}");
        let garbage = CertSource::Files {
            cert: junk.clone(),
            key: junk,
        };
        let err = format!("{:#}", server_config(&garbage).unwrap_err());
        assert!(err.contains("no certificate"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
