//! Commit arbitration and group membership on real openmls output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Client, Got, start_dev};
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use satsuma_coordinator::mls_framing;
use satsuma_coordinator::protocol::{
    ClientMessage, KIND_COMMIT, KIND_KEY_PACKAGE, RoomEvent, ServerMessage, client_commit_frame,
    client_key_package_frame,
};

const CS: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// A credential as Satsuma's clients build it: the participant id (8 bytes BE) first,
/// then an identity binding the coordinator does not read.
fn identity(provider: &OpenMlsRustCrypto, id: u64) -> (CredentialWithKey, SignatureKeyPair) {
    let mut bytes = id.to_be_bytes().to_vec();
    bytes.extend_from_slice(b"identity-binding");
    let credential = BasicCredential::new(bytes);
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

/// A fresh openmls KeyPackage for participant `id`, as an `MLSMessage`.
fn key_package(id: u64) -> (KeyPackage, Vec<u8>) {
    let provider = OpenMlsRustCrypto::default();
    let (cred, signer) = identity(&provider, id);
    let kp = KeyPackage::builder()
        .build(CS, &provider, &signer, cred)
        .unwrap();
    let kp = kp.key_package().clone();
    let b = bytes(&MlsMessageOut::from(kp.clone()));
    (kp, b)
}

async fn creator(alice: &mut Client) -> (String, Vec<u8>) {
    let RoomEvent::Creator { group_id, .. } = alice
        .until_event(|e| matches!(e, RoomEvent::Creator { .. }))
        .await
        .event
    else {
        unreachable!()
    };
    let gid = hex::decode(&group_id).unwrap();
    (group_id, gid)
}

fn ready(epoch: u64, group_id: &str) -> ClientMessage {
    ClientMessage::Ready {
        epoch,
        group_id: Some(group_id.to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmls_public_message_commits() {
    let server = start_dev().await;
    let room = "mls-public";
    let mut alice = Client::join(&server, room, "alice").await;
    let (group_id, gid) = creator(&mut alice).await;

    // Alice creates the group the coordinator named, the way Satsuma's clients do.
    let provider = OpenMlsRustCrypto::default();
    let (alice_cred, alice_signer) = identity(&provider, alice.id);
    let mut group = MlsGroup::builder()
        .ciphersuite(CS)
        .with_group_id(GroupId::from_slice(&gid))
        .with_wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .build(&provider, &alice_signer, alice_cred)
        .unwrap();
    alice.send(ready(0, &group_id)).await;

    // Bob announces a real KeyPackage; it is relayed byte for byte.
    let mut bob = Client::join(&server, room, "bob").await;
    let (kp, kp_bytes) = key_package(bob.id);
    bob.send_binary(client_key_package_frame(&kp_bytes)).await;
    let Got::Mls(f) = alice
        .until(|g| matches!(g, Got::Mls(f) if f.kind == KIND_KEY_PACKAGE))
        .await
    else {
        unreachable!()
    };
    assert_eq!(f.payload, kp_bytes);
    // Bob is not a member yet: his ready is refused.
    bob.send(ready(0, &group_id)).await;
    assert!(
        matches!(bob.direct().await, ServerMessage::Error { code, refused: Some(r), .. } if code == "not_member" && r == "ready")
    );

    // Alice adds Bob: commit (epoch 0) + Welcome as one entry. The coordinator's
    // parser sees the add of exactly the KeyPackage Bob logged.
    let bundle = group
        .commit_builder()
        .propose_adds([kp.clone()])
        .load_psks(provider.storage())
        .unwrap()
        .build(provider.rand(), provider.crypto(), &alice_signer, |_| true)
        .unwrap()
        .stage_commit(&provider)
        .unwrap();
    let welcome = bytes(&bundle.to_welcome_msg().unwrap());
    let commit = bytes(&bundle.into_commit());
    let parsed = mls_framing::parse_public_commit(&commit).unwrap();
    assert_eq!(parsed.adds.len(), 1);
    assert_eq!(parsed.adds[0].participant, bob.id);
    assert_eq!(parsed.adds[0].key_package, kp_bytes[4..]);
    assert_eq!((parsed.epoch, parsed.group_id.clone()), (0, gid.clone()));
    alice
        .send_binary(client_commit_frame(&commit, &welcome))
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
    alice.send(ready(1, &group_id)).await;
    // Bob, added by an accepted commit, is a member now.
    bob.send(ready(1, &group_id)).await;
    bob.until_event(|e| matches!(e, RoomEvent::Execute { epoch: 1 }))
        .await;

    // An add of a real KeyPackage nobody logged (a ghost, id 99): refused.
    let (ghost, _) = key_package(99);
    let bundle = group
        .commit_builder()
        .propose_adds([ghost])
        .load_psks(provider.storage())
        .unwrap()
        .build(provider.rand(), provider.crypto(), &alice_signer, |_| true)
        .unwrap()
        .stage_commit(&provider)
        .unwrap();
    let welcome = bytes(&bundle.to_welcome_msg().unwrap());
    let commit = bytes(&bundle.into_commit());
    group.clear_pending_commit(provider.storage()).unwrap();
    alice
        .send_binary(client_commit_frame(&commit, &welcome))
        .await;
    assert!(matches!(
        alice.direct().await,
        ServerMessage::CommitRejected { epoch: Some(1), current_epoch: Some(1), reason, .. } if reason == "unknown_key_package"
    ));

    // A removal (by-value Remove with an UpdatePath), as the committer sends when a
    // member leaves: parsed and accepted.
    let bob_leaf = group
        .members()
        .find(|m| m.credential.serialized_content()[..8] == bob.id.to_be_bytes())
        .unwrap()
        .index;
    let bundle = group
        .commit_builder()
        .propose_removals([bob_leaf])
        .load_psks(provider.storage())
        .unwrap()
        .build(provider.rand(), provider.crypto(), &alice_signer, |_| true)
        .unwrap()
        .stage_commit(&provider)
        .unwrap();
    let remove = bytes(&bundle.into_commit());
    let parsed = mls_framing::parse_public_commit(&remove).unwrap();
    assert_eq!(parsed.removes, vec![bob_leaf.u32()]);
    assert!(parsed.has_path);
    group.clear_pending_commit(provider.storage()).unwrap();

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
            epoch: Some(1),
            current_epoch: Some(2),
            reason: "stale_epoch".into(),
            detail: None,
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
async fn openmls_private_message_commits_are_refused() {
    let server = start_dev().await;
    let mut alice = Client::join(&server, "mls-private", "alice").await;
    let (group_id, gid) = creator(&mut alice).await;
    let provider = OpenMlsRustCrypto::default();
    let (cred, signer) = identity(&provider, alice.id);
    let mut group = MlsGroup::builder()
        .ciphersuite(CS)
        .with_group_id(GroupId::from_slice(&gid))
        .with_wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .build(&provider, &signer, cred)
        .unwrap();
    alice.send(ready(0, &group_id)).await;
    let commit = group
        .self_update(&provider, &signer, LeafNodeParameters::default())
        .unwrap()
        .into_commit();
    alice
        .send_binary(client_commit_frame(&bytes(&commit), &[]))
        .await;
    match alice.direct().await {
        ServerMessage::CommitRejected {
            epoch,
            reason,
            detail,
            ..
        } => {
            assert_eq!((epoch, reason.as_str()), (Some(0), "malformed"));
            assert!(detail.unwrap().contains("PublicMessage"));
        }
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}
