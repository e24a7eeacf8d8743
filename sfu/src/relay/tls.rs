//! Who may join the relay: mutual TLS between nodes, with certificates from a cluster CA or with
//! pinned keys, and the tools that make them (`satsuma-sfu cluster-ca`, `satsuma-sfu node-cert`).
//!
//! * **Cluster CA**: one CA per cluster signs each node's certificate, whose only name (a DNS
//!   subject alternative name) is the node's name. A dialling node checks that the peer it
//!   reached holds a certificate for the name it dialled; an accepting node checks the client
//!   certificate's chain, then that it is valid for the name the peer gives in its `hello`.
//! * **Pinned keys**: each node has a self-signed certificate and every node's configuration
//!   lists the SHA-256 of each peer's public key (its SubjectPublicKeyInfo) by node name.
//!
//! Only TLS 1.3 (QUIC's), only aws-lc-rs (str0m's crypto provider here).

use std::collections::HashMap;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// The ALPN protocol of relay links.
pub const ALPN: &[u8] = b"satsuma-relay/1";

/// Why an identity could not be made, loaded or checked.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused a configuration (a key that does not match, …).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The PEM text held no usable certificate or key.
    #[error("{0}")]
    Pem(String),
    /// A node name that cannot be a certificate name.
    #[error("node name {0:?} must be 1-63 of a-z 0-9 - (not starting or ending with -)")]
    BadNodeName(String),
    /// A pin that is not 64 hex characters.
    #[error("key pin {0:?} must be the SHA-256 of a public key as 64 hex characters")]
    BadPin(String),
    /// The peer's certificate is not for the node it claims to be.
    #[error("peer certificate is not valid for node {0:?}")]
    WrongPeer(String),
    /// The CA or client verifier could not be built.
    #[error("verifier: {0}")]
    Verifier(String),
}

/// Checks a node name: a DNS label (it is the certificate's name).
pub fn validate_node_name(name: &str) -> Result<(), TlsError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(TlsError::BadNodeName(name.to_string()))
    }
}

/// A certificate and its key, as PEM text.
#[derive(Clone)]
pub struct PemPair {
    /// The certificate.
    pub cert: String,
    /// The private key (PKCS#8).
    pub key: String,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemPair").finish_non_exhaustive()
    }
}

/// Makes a cluster CA (ECDSA P-256, valid for ten years).
pub fn generate_ca(cluster: &str) -> Result<PemPair, TlsError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("satsuma relay CA {cluster}"),
    );
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    let cert = params.self_signed(&key)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn node_params(node: &str, days: i64) -> Result<rcgen::CertificateParams, TlsError> {
    validate_node_name(node)?;
    let mut params = rcgen::CertificateParams::new(vec![node.to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node.to_string());
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
    Ok(params)
}

/// Makes the certificate of node `node`, signed by the cluster CA (valid for `days`).
pub fn generate_node_cert(ca: &PemPair, node: &str, days: i64) -> Result<PemPair, TlsError> {
    let ca_key = rcgen::KeyPair::from_pem(&ca.key)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let cert = node_params(node, days)?.signed_by(&key, &issuer)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Makes a self-signed node certificate for pinned-key clusters (valid for `days`).
pub fn generate_self_signed(node: &str, days: i64) -> Result<PemPair, TlsError> {
    let key = rcgen::KeyPair::generate()?;
    let cert = node_params(node, days)?.self_signed(&key)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A SHA-256 of a SubjectPublicKeyInfo: what pinned-key clusters configure per node.
pub type KeyPin = [u8; 32];

/// The pin of a certificate's key.
pub fn key_pin(cert: &CertificateDer<'_>) -> Result<KeyPin, TlsError> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| TlsError::Pem(format!("unparsable certificate: {e}")))?;
    let spki = ee.subject_public_key_info();
    Ok(Sha256::digest(spki.as_ref()).into())
}

/// Parses a pin written as 64 hex characters.
pub fn parse_pin(text: &str) -> Result<KeyPin, TlsError> {
    let mut pin = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut pin).map_err(|_| TlsError::BadPin(text.into()))?;
    Ok(pin)
}

fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(format!("bad certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no certificate in the PEM text".into()));
    }
    Ok(certs)
}

fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| TlsError::Pem(format!("bad private key PEM: {e}")))
}

/// How this node proves itself and checks its peers.
#[derive(Clone)]
pub struct RelayIdentity {
    node: String,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    trust: Trust,
}

#[derive(Clone)]
enum Trust {
    Ca(Arc<RootCertStore>),
    Pinned(Arc<HashMap<String, KeyPin>>),
}

impl std::fmt::Debug for RelayIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayIdentity")
            .field("node", &self.node)
            .field(
                "trust",
                &match &self.trust {
                    Trust::Ca(_) => "cluster CA".to_string(),
                    Trust::Pinned(p) => format!("{} pinned keys", p.len()),
                },
            )
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl RelayIdentity {
    /// Node `node` with its certificate and key (PEM), trusting peers the CA (PEM) signed.
    pub fn with_ca(node: &str, cert: &PemPair, ca_cert: &str) -> Result<RelayIdentity, TlsError> {
        validate_node_name(node)?;
        let mut roots = RootCertStore::empty();
        for ca in certs_from_pem(ca_cert)? {
            roots.add(ca)?;
        }
        Ok(RelayIdentity {
            node: node.to_string(),
            chain: certs_from_pem(&cert.cert)?,
            key: Arc::new(key_from_pem(&cert.key)?),
            trust: Trust::Ca(Arc::new(roots)),
        })
    }

    /// Node `node` with its (self-signed) certificate and key, trusting exactly the peers whose
    /// key pins are given by name.
    pub fn with_pins(
        node: &str,
        cert: &PemPair,
        pins: HashMap<String, KeyPin>,
    ) -> Result<RelayIdentity, TlsError> {
        validate_node_name(node)?;
        for name in pins.keys() {
            validate_node_name(name)?;
        }
        Ok(RelayIdentity {
            node: node.to_string(),
            chain: certs_from_pem(&cert.cert)?,
            key: Arc::new(key_from_pem(&cert.key)?),
            trust: Trust::Pinned(Arc::new(pins)),
        })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The pin of this node's own key (what peers configure in pinned mode).
    pub fn own_pin(&self) -> Result<KeyPin, TlsError> {
        let cert = self
            .chain
            .first()
            .ok_or_else(|| TlsError::Pem("no certificate".into()))?;
        key_pin(cert)
    }

    /// The rustls server configuration: our certificate, client certificates required.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let provider = provider();
        let verifier: Arc<dyn ClientCertVerifier> = match &self.trust {
            Trust::Ca(roots) => rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.clone(),
                provider.clone(),
            )
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?,
            Trust::Pinned(pins) => Arc::new(PinnedVerifier {
                pins: pins.clone(),
                provider: provider.clone(),
            }),
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// The rustls client configuration: our certificate as client certificate; the server's
    /// checked against the CA and the dialled node name, or against the pins.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let builder = match &self.trust {
            Trust::Ca(roots) => builder.with_webpki_verifier(
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    roots.clone(),
                    provider,
                )
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?,
            ),
            Trust::Pinned(pins) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                    pins: pins.clone(),
                    provider,
                })),
        };
        let mut config = builder.with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// After the TLS handshake of an accepted connection: is the client certificate (chain
    /// already verified) one of node `claimed`, the name in its `hello`?
    pub fn check_peer(&self, claimed: &str, certs: &[CertificateDer<'_>]) -> Result<(), TlsError> {
        let wrong = || TlsError::WrongPeer(claimed.to_string());
        validate_node_name(claimed).map_err(|_| wrong())?;
        if claimed == self.node {
            return Err(wrong());
        }
        let cert = certs.first().ok_or_else(wrong)?;
        match &self.trust {
            Trust::Ca(_) => {
                let ee = webpki::EndEntityCert::try_from(cert).map_err(|_| wrong())?;
                let name = ServerName::try_from(claimed).map_err(|_| wrong())?;
                ee.verify_is_valid_for_subject_name(&name)
                    .map_err(|_| wrong())
            }
            Trust::Pinned(pins) => {
                let pin = key_pin(cert).map_err(|_| wrong())?;
                if pins.get(claimed) == Some(&pin) {
                    Ok(())
                } else {
                    Err(wrong())
                }
            }
        }
    }
}

/// Pinned-key verification: the peer's key must be one of the pinned ones (and, dialling, the
/// one pinned for the dialled name). Signatures are checked with the provider's algorithms.
#[derive(Debug)]
struct PinnedVerifier {
    pins: Arc<HashMap<String, KeyPin>>,
    provider: Arc<CryptoProvider>,
}

impl PinnedVerifier {
    fn bad_cert() -> rustls::Error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pin = key_pin(end_entity).map_err(|_| Self::bad_cert())?;
        let name = server_name.to_str();
        if self.pins.get(name.as_ref()) == Some(&pin) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(Self::bad_cert())
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is configured.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for PinnedVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Which node it is comes with its hello ([`RelayIdentity::check_peer`]); here: any
        // pinned key at all, so strangers fail the handshake itself.
        let pin = key_pin(end_entity).map_err(|_| Self::bad_cert())?;
        if self.pins.values().any(|p| *p == pin) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(Self::bad_cert())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ServerCertVerifier::supported_verify_schemes(self)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn node_certificates_name_their_node_and_chain_to_the_ca() {
        let ca = generate_ca("test").unwrap();
        let a = generate_node_cert(&ca, "sfu-a", 30).unwrap();
        let id = RelayIdentity::with_ca("sfu-b", &a, &ca.cert).unwrap();
        id.server_config().unwrap();
        id.client_config().unwrap();
        let a_der = certs_from_pem(&a.cert).unwrap();
        id.check_peer("sfu-a", &a_der).unwrap();
        assert!(id.check_peer("sfu-c", &a_der).is_err());
        assert!(id.check_peer("sfu-b", &a_der).is_err(), "not ourselves");
        assert!(id.check_peer("Bad Name", &a_der).is_err());
        assert!(generate_node_cert(&ca, "Not_A_Label", 30).is_err());
    }

    #[test]
    fn pins_are_of_the_key_and_parse_from_hex() {
        let a = generate_self_signed("sfu-a", 30).unwrap();
        let der = certs_from_pem(&a.cert).unwrap();
        let pin = key_pin(&der[0]).unwrap();
        assert_eq!(parse_pin(&hex::encode(pin)).unwrap(), pin);
        assert!(parse_pin("abc").is_err());
        let pins = HashMap::from([("sfu-a".to_string(), pin)]);
        let id =
            RelayIdentity::with_pins("sfu-b", &generate_self_signed("sfu-b", 30).unwrap(), pins)
                .unwrap();
        id.check_peer("sfu-a", &der).unwrap();
        let other = generate_self_signed("sfu-a", 30).unwrap();
        assert!(
            id.check_peer("sfu-a", &certs_from_pem(&other.cert).unwrap())
                .is_err(),
            "same name, other key"
        );
    }

    #[test]
    fn garbage_pem_is_an_error() {
        let ca = generate_ca("t").unwrap();
        let bad = PemPair {
            cert: "not pem".into(),
            key: ca.key.clone(),
        };
        assert!(RelayIdentity::with_ca("sfu-a", &bad, &ca.cert).is_err());
        assert!(RelayIdentity::with_ca("sfu-a", &ca, "garbage").is_err());
    }
}
