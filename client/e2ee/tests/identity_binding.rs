//! Identity bindings in MLS credentials (contract C1): a KeyPackage, an Add in a
//! commit or a member of a Welcome whose binding does not verify is invalid, and a
//! participant's fingerprint survives a reset of its MLS signature key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use openmls::prelude::{
    BasicCredential, CredentialWithKey, KeyPackage, MlsMessageOut, tls_codec::Serialize as _,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider as _;
use satsuma_e2ee::committer::CommitOutcome;
use satsuma_e2ee::group::{CIPHERSUITE, Group, MemberIdentity, ValidKeyPackage, key_tag};
use satsuma_e2ee::identity::Identity;

fn ident(id: u64) -> Identity {
    let mut seed = [3u8; 32];
    seed[..8].copy_from_slice(&id.to_be_bytes());
    Identity::from_seed(seed, &format!("member {id}"))
}

fn all() -> BTreeSet<u64> {
    (0..100).collect()
}

/// A well-signed KeyPackage whose credential identity bytes are
/// `make(leaf signature public key)`; returns it serialized and as a
/// `ValidKeyPackage` a hostile committer could use unchecked.
fn forged(id: u64, make: impl Fn(&[u8]) -> Vec<u8>) -> (Vec<u8>, ValidKeyPackage) {
    let provider = OpenMlsRustCrypto::default();
    let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
    signer.store(provider.storage()).unwrap();
    let credential = CredentialWithKey {
        credential: BasicCredential::new(make(signer.public())).into(),
        signature_key: signer.public().into(),
    };
    let bundle = KeyPackage::builder()
        .build(CIPHERSUITE, &provider, &signer, credential)
        .unwrap();
    let kp = bundle.key_package().clone();
    let bytes = MlsMessageOut::from(kp.clone())
        .tls_serialize_detached()
        .unwrap();
    let valid = ValidKeyPackage {
        id,
        key: key_tag(signer.public()),
        identity: MemberIdentity {
            id,
            name: "forged".into(),
            fingerprint: String::new(),
        },
        key_package: kp,
    };
    (bytes, valid)
}

#[test]
fn key_packages_without_a_valid_binding_are_invalid() {
    let a = Group::new(1, ident(1)).unwrap();
    // The old format: the participant id alone.
    let (bytes, _) = forged(2, |_| 2u64.to_be_bytes().to_vec());
    assert!(a.parse_key_package(2, &bytes).is_err());
    // A genuine binding, but for another leaf key.
    let (bytes, _) = forged(2, |_| ident(2).credential_identity(2, &[0; 32]));
    assert!(a.parse_key_package(2, &bytes).is_err());
    // A genuine binding for this leaf key, but another participant id.
    let (bytes, _) = forged(2, |leaf| ident(2).credential_identity(3, leaf));
    assert!(a.parse_key_package(2, &bytes).is_err());
    assert!(a.parse_key_package(3, &bytes).is_ok(), "valid for 3 itself");
    // A binding with its name swapped (same length).
    let (bytes, _) = forged(2, |leaf| {
        let mut b = ident(2).credential_identity(2, leaf);
        let at = 8 + 1 + 32 + 1;
        b[at] = b'X';
        b
    });
    assert!(a.parse_key_package(2, &bytes).is_err());
    // The real thing.
    let mut b = Group::new(2, ident(2)).unwrap();
    let kp = a.parse_key_package(2, &b.key_package().unwrap()).unwrap();
    assert_eq!(kp.identity.name, "member 2");
    assert_eq!(kp.identity.fingerprint, ident(2).fingerprint().to_string());
}

#[test]
fn forged_adds_and_welcomes_are_refused() {
    let mut a = Group::new(1, ident(1)).unwrap();
    a.create(b"room").unwrap();
    let mut b = Group::new(2, ident(2)).unwrap();
    let kp = a.parse_key_package(2, &b.key_package().unwrap()).unwrap();
    let (c, w) = a.commit(Some(&kp), &[]).unwrap();
    assert!(matches!(
        a.process_commit(1, &c, &w, &all()),
        CommitOutcome::Applied { .. }
    ));
    assert!(matches!(
        b.process_commit(1, &c, &w, &all()),
        CommitOutcome::Welcomed { .. }
    ));
    assert_eq!(
        b.member_identities()
            .iter()
            .map(|m| (m.id, m.name.as_str(), m.fingerprint.clone()))
            .collect::<Vec<_>>(),
        vec![
            (1, "member 1", ident(1).fingerprint().to_string()),
            (2, "member 2", ident(2).fingerprint().to_string()),
        ]
    );
    // A hostile committer adds a leaf whose binding was made for another key.
    let (_, bad) = forged(3, |_| ident(3).credential_identity(3, &[0; 32]));
    let (c, w) = a.commit(Some(&bad), &[]).unwrap();
    assert!(matches!(
        a.process_commit(1, &c, &w, &all()),
        CommitOutcome::Applied { .. }
    ));
    assert_eq!(
        b.process_commit(1, &c, &w, &all()),
        CommitOutcome::Unprocessable { epoch: 1 },
        "b refuses to apply it and keeps its epoch"
    );
    assert_eq!(b.epoch(), Some(1));
    // A joiner welcomed into the group that holds the forged leaf refuses to join.
    let mut j = Group::new(4, ident(4)).unwrap();
    let kp = a.parse_key_package(4, &j.key_package().unwrap()).unwrap();
    let (c, w) = a.commit(Some(&kp), &[]).unwrap();
    assert_eq!(j.process_commit(1, &c, &w, &all()), CommitOutcome::Failed);
    assert_eq!(j.epoch(), None);
}

#[test]
fn the_fingerprint_survives_a_reset_and_the_leaf_key_does_not() {
    let a = Group::new(1, ident(1)).unwrap();
    let mut b = Group::new(2, ident(2)).unwrap();
    let before = a.parse_key_package(2, &b.key_package().unwrap()).unwrap();
    b.reset().unwrap();
    let after = a.parse_key_package(2, &b.key_package().unwrap()).unwrap();
    assert_ne!(before.key, after.key, "fresh MLS signature key");
    assert_eq!(before.identity.fingerprint, after.identity.fingerprint);
    assert_eq!(after.identity.name, "member 2");
}
