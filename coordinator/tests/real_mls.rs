//! Commit arbitration on real openmls output (PublicMessage and PrivateMessage framing).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Client, Got, start_dev};
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use satsuma_coordinator::protocol::{
    ClientMessage, KIND_COMMIT, KIND_KEY_PACKAGE, RoomEvent, ServerMessage, client_commit_frame,
    client_key_package_frame,
};

const CS: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

fn identity(provider: &OpenMlsRustCrypto, name: &str) -> (CredentialWithKey, SignatureKeyPair) {
    let credential = BasicCredential::new(name.as_bytes().to_vec());
    let signer = SignatureKeyPair::new(CS.signature_algorithm()).unwrap();
    signer.store(provider.storage()).unwrap();
    (
        CredentialWithKey {
            credential: credential.into(),
            signature_key: signer.public().into(),
        },
        signer,
    )
}

fn bytes(m: &MlsMessageOut) -> Vec<u8> {
    m.tls_serialize_detached().unwrap()
}

async fn run(room: &str, policy: WireFormatPolicy) {
    let server = start_dev().await;
    let mut alice = Client::join(&server, room, "alice").await;
    let RoomEvent::Creator { group_id, .. } = alice
        .until_event(|e| matches!(e, RoomEvent::Creator { .. }))
        .await
        .event
    else {
        unreachable!()
    };
    let gid = hex::decode(&group_id).unwrap();

    // Alice creates the group the coordinator named.
    let provider = OpenMlsRustCrypto::default();
    let (alice_cred, alice_signer) = identity(&provider, "alice");
    let mut group = MlsGroup::builder()
        .ciphersuite(CS)
        .with_group_id(GroupId::from_slice(&gid))
        .with_wire_format_policy(policy)
        .use_ratchet_tree_extension(true)
        .build(&provider, &alice_signer, alice_cred)
        .unwrap();
    alice
        .send(ClientMessage::Ready {
            epoch: 0,
            group_id: Some(group_id.clone()),
        })
        .await;

    // Bob announces a real KeyPackage; it is relayed byte for byte.
    let mut bob = Client::join(&server, room, "bob").await;
    let bob_provider = OpenMlsRustCrypto::default();
    let (bob_cred, bob_signer) = identity(&bob_provider, "bob");
    let kp = KeyPackage::builder()
        .build(CS, &bob_provider, &bob_signer, bob_cred)
        .unwrap();
    let kp_bytes = bytes(&MlsMessageOut::from(kp.key_package().clone()));
    bob.send_binary(client_key_package_frame(&kp_bytes)).await;
    let Got::Mls(f) = alice
        .until(|g| matches!(g, Got::Mls(f) if f.kind == KIND_KEY_PACKAGE))
        .await
    else {
        unreachable!()
    };
    assert_eq!(f.payload, kp_bytes);

    // Alice adds Bob: commit (epoch 0) + Welcome as one entry.
    let (commit, welcome, _) = group
        .add_members(&provider, &alice_signer, &[kp.key_package().clone()])
        .unwrap();
    alice
        .send_binary(client_commit_frame(&bytes(&commit), &bytes(&welcome)))
        .await;
    let Got::Mls(f) = bob
        .until(|g| matches!(g, Got::Mls(f) if f.kind == KIND_COMMIT))
        .await
    else {
        unreachable!()
    };
    assert_eq!(f.from, alice.id);
    group.merge_pending_commit(&provider).unwrap();
    assert_eq!(group.epoch().as_u64(), 1);
    alice
        .send(ClientMessage::Ready {
            epoch: 1,
            group_id: Some(group_id.clone()),
        })
        .await;

    // Two real commits for epoch 1: the first is logged, the second rejected.
    let first = group
        .self_update(&provider, &alice_signer, LeafNodeParameters::default())
        .unwrap()
        .into_commit();
    group.clear_pending_commit(provider.storage()).unwrap();
    let second = group
        .self_update(&provider, &alice_signer, LeafNodeParameters::default())
        .unwrap()
        .into_commit();
    alice
        .send_binary(client_commit_frame(&bytes(&first), &[]))
        .await;
    alice
        .send_binary(client_commit_frame(&bytes(&second), &[]))
        .await;
    let reply = alice.direct().await;
    assert_eq!(
        reply,
        ServerMessage::CommitRejected {
            epoch: 1,
            current_epoch: Some(2),
            reason: "stale_epoch".into()
        }
    );
    alice.sync().await;
    let commits: Vec<Vec<u8>> = alice
        .log
        .iter()
        .filter_map(|g| match g {
            Got::Mls(f) if f.kind == KIND_COMMIT => Some(f.payload[4..].to_vec()),
            _ => None,
        })
        .collect();
    assert_eq!(commits.len(), 2);
    assert_eq!(commits[1], bytes(&first));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmls_public_message_commits() {
    run("mls-public", PURE_PLAINTEXT_WIRE_FORMAT_POLICY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmls_private_message_commits() {
    run("mls-private", PURE_CIPHERTEXT_WIRE_FORMAT_POLICY).await;
}
