//! The relay's settings: one definition of its flags (`--node-name`, `--relay-bind`, …),
//! environment variables (`SATSUMA_SFU_NODE_NAME`, …) and TOML keys (`node_name`, …), turned
//! into a [`RelayConfig`] by reading the certificate files.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::driver::{PeerAddr, RelayConfig};
use super::tls::{self, PemPair, RelayIdentity, TlsError};

/// Optional relay settings; the relay runs when `node_name` is set.
#[derive(Debug, Default, Clone, PartialEq, Eq, clap::Args, Deserialize)]
pub struct RelaySettings {
    /// This node's name in the SFU cluster (a DNS label like sfu-0; its relay certificate is
    /// for this name). Setting it turns the relay between SFU nodes on. Default: no relay.
    #[arg(long, env = "SATSUMA_SFU_NODE_NAME")]
    pub node_name: Option<String>,

    /// UDP address of the relay's QUIC endpoint (other SFU nodes connect here). Default
    /// 0.0.0.0:7882.
    #[arg(long, env = "SATSUMA_SFU_RELAY_BIND")]
    pub relay_bind: Option<SocketAddr>,

    /// PEM file with this node's relay certificate (from `satsuma-sfu node-cert`).
    #[arg(long, env = "SATSUMA_SFU_RELAY_CERT")]
    pub relay_cert: Option<PathBuf>,

    /// PEM file with the private key of the relay certificate.
    #[arg(long, env = "SATSUMA_SFU_RELAY_KEY")]
    pub relay_key: Option<PathBuf>,

    /// PEM file with the cluster CA certificate (from `satsuma-sfu cluster-ca`): peers must
    /// hold a certificate it signed for their node name. Either this or --relay-pin.
    #[arg(long, env = "SATSUMA_SFU_RELAY_CA")]
    pub relay_ca: Option<PathBuf>,

    /// A pinned peer key as NODE=SHA256HEX (repeatable; env: comma-separated): the SHA-256 of
    /// the node's public key, as `satsuma-sfu node-cert` prints it. Instead of --relay-ca.
    #[arg(
        long = "relay-pin",
        env = "SATSUMA_SFU_RELAY_PINS",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub relay_pins: Vec<String>,

    /// Where a peer node's relay listens, as NODE=ADDR (repeatable; env: comma-separated),
    /// like sfu-1=10.0.0.2:7882, or NODE=HOST:PORT with a DNS name resolved at each dial, like
    /// sfu-1=sfu-1.sfu.satsuma.svc.cluster.local:7882 (a StatefulSet's headless Service). This
    /// node's own entry is skipped, so all nodes can share one list.
    #[arg(
        long = "relay-peer",
        env = "SATSUMA_SFU_RELAY_PEERS",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub relay_peers: Vec<String>,
}

/// Why the relay settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A setting is missing or malformed.
    #[error("relay: {0}")]
    Invalid(String),
    /// A file could not be read.
    #[error("relay: cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The certificates are unusable.
    #[error("relay: {0}")]
    Tls(#[from] TlsError),
}

/// The default relay address.
pub const DEFAULT_RELAY_BIND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 7882);

fn read(path: &Path) -> Result<String, SettingsError> {
    std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn pair<'a>(text: &'a str, what: &str) -> Result<(&'a str, &'a str), SettingsError> {
    text.split_once('=')
        .map(|(a, b)| (a.trim(), b.trim()))
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .ok_or_else(|| SettingsError::Invalid(format!("{what} {text:?} must be NODE=VALUE")))
}

impl RelaySettings {
    /// Each setting from `self`, else from `lower` (flags over environment over file).
    #[must_use]
    pub fn or(self, lower: RelaySettings) -> RelaySettings {
        RelaySettings {
            node_name: self.node_name.or(lower.node_name),
            relay_bind: self.relay_bind.or(lower.relay_bind),
            relay_cert: self.relay_cert.or(lower.relay_cert),
            relay_key: self.relay_key.or(lower.relay_key),
            relay_ca: self.relay_ca.or(lower.relay_ca),
            relay_pins: if self.relay_pins.is_empty() {
                lower.relay_pins
            } else {
                self.relay_pins
            },
            relay_peers: if self.relay_peers.is_empty() {
                lower.relay_peers
            } else {
                self.relay_peers
            },
        }
    }

    /// The relay's configuration (reading the PEM files), or `None` without a node name.
    pub fn build(&self) -> Result<Option<RelayConfig>, SettingsError> {
        let Some(node) = &self.node_name else {
            let stray = self.relay_cert.is_some()
                || self.relay_key.is_some()
                || self.relay_ca.is_some()
                || !self.relay_pins.is_empty()
                || !self.relay_peers.is_empty();
            if stray {
                return Err(SettingsError::Invalid(
                    "relay settings need a node name (--node-name)".into(),
                ));
            }
            return Ok(None);
        };
        tls::validate_node_name(node)?;
        let (Some(cert), Some(key)) = (&self.relay_cert, &self.relay_key) else {
            return Err(SettingsError::Invalid(
                "the relay needs --relay-cert and --relay-key".into(),
            ));
        };
        let pem = PemPair {
            cert: read(cert)?,
            key: read(key)?,
        };
        let identity = match (&self.relay_ca, self.relay_pins.is_empty()) {
            (Some(ca), true) => RelayIdentity::with_ca(node, &pem, &read(ca)?)?,
            (None, false) => {
                let mut pins = HashMap::new();
                for p in &self.relay_pins {
                    let (name, hex) = pair(p, "relay pin")?;
                    pins.insert(name.to_string(), tls::parse_pin(hex)?);
                }
                RelayIdentity::with_pins(node, &pem, pins)?
            }
            _ => {
                return Err(SettingsError::Invalid(
                    "give either --relay-ca or --relay-pin, not both or neither".into(),
                ));
            }
        };
        let mut peers = HashMap::new();
        for p in &self.relay_peers {
            let (name, addr) = pair(p, "relay peer")?;
            tls::validate_node_name(name)?;
            let addr: PeerAddr = addr
                .parse()
                .map_err(|e| SettingsError::Invalid(format!("relay peer address: {e}")))?;
            // Every node of a cluster may get the same list (a StatefulSet's pods do): its own
            // entry is not a peer.
            if name == node {
                continue;
            }
            peers.insert(name.to_string(), addr);
        }
        Ok(Some(RelayConfig {
            identity,
            bind: self.relay_bind.unwrap_or(DEFAULT_RELAY_BIND),
            peers,
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn builds_from_files_and_refuses_half_settings() {
        let dir =
            std::env::temp_dir().join(format!("satsuma-relay-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = tls::generate_ca("t").unwrap();
        let node = tls::generate_node_cert(&ca, "sfu-0", 1).unwrap();
        std::fs::write(dir.join("ca.pem"), &ca.cert).unwrap();
        std::fs::write(dir.join("sfu-0.pem"), &node.cert).unwrap();
        std::fs::write(dir.join("sfu-0-key.pem"), &node.key).unwrap();
        let s = RelaySettings {
            node_name: Some("sfu-0".into()),
            relay_cert: Some(dir.join("sfu-0.pem")),
            relay_key: Some(dir.join("sfu-0-key.pem")),
            relay_ca: Some(dir.join("ca.pem")),
            relay_peers: vec!["sfu-1=127.0.0.1:9".into()],
            ..RelaySettings::default()
        };
        let c = s.build().unwrap().unwrap();
        assert_eq!(c.identity.node(), "sfu-0");
        assert_eq!(c.bind, DEFAULT_RELAY_BIND);
        assert_eq!(
            c.peers["sfu-1"],
            PeerAddr::Addr("127.0.0.1:9".parse().unwrap())
        );
        assert!(RelaySettings::default().build().unwrap().is_none());
        let no_name = RelaySettings {
            node_name: None,
            ..s.clone()
        };
        assert!(no_name.build().is_err());
        let both = RelaySettings {
            relay_pins: vec![format!("sfu-1={}", "00".repeat(32))],
            ..s.clone()
        };
        assert!(both.build().is_err());
        for bad in [
            "sfu-1",
            "sfu-1=sfu-1",
            "sfu-1=sfu-1:0",
            "sfu-1=sfu-1:99999",
            "sfu-1=10.0.0.300:7882",
            "sfu-1=bad_name:7882",
            "sfu-1=a..b:7882",
            "sfu-1=-a:7882",
        ] {
            let bad_peer = RelaySettings {
                relay_peers: vec![bad.into()],
                ..s.clone()
            };
            assert!(bad_peer.build().is_err(), "{bad} accepted");
        }
        // A DNS name (a StatefulSet pod under its headless Service), resolved at each dial;
        // the node's own entry in a shared list is skipped.
        let named = RelaySettings {
            relay_peers: vec![
                "sfu-0=satsuma-sfu-0.satsuma-sfu.satsuma.svc.cluster.local:7883".into(),
                "sfu-1=satsuma-sfu-1.satsuma-sfu.satsuma.svc.cluster.local:7883".into(),
            ],
            ..s.clone()
        };
        assert_eq!(named.build().unwrap().unwrap().peers.len(), 1);
        assert_eq!(
            named.build().unwrap().unwrap().peers["sfu-1"],
            PeerAddr::Host {
                host: "satsuma-sfu-1.satsuma-sfu.satsuma.svc.cluster.local".into(),
                port: 7883
            }
        );
        let pinned = RelaySettings {
            relay_ca: None,
            relay_pins: vec![format!("sfu-1={}", "ab".repeat(32))],
            ..s
        };
        assert!(pinned.build().unwrap().is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
