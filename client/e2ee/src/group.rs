//! The openmls wrapper: one MLS group per room, identities are participant ids.
//!
//! [`Group`] holds one participant's MLS state: its signing identity (a basic
//! credential whose identity bytes are the participant id, 8 bytes big-endian,
//! followed by the binding of the long-term identity key and display name
//! described in [`crate::identity`], and an Ed25519 MLS signature key), the
//! KeyPackages it announced, and at most one [`MlsGroup`]. Every KeyPackage, every
//! Add in a commit and every member of a Welcome must carry a valid binding. It turns
//! the relay's opaque bytes into the abstract facts the designated committer
//! ([`crate::committer`]) reasons about: who a KeyPackage is from and under which key,
//! what a commit added and removed, whether a Welcome was for us.
//!
//! Ciphersuite `MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`; Welcomes carry the
//! ratchet tree inline; handshake messages go out as `PublicMessage` (the
//! coordinator reads `group_id` and `epoch` from the framing either way). Per-sender
//! media base secrets are `MLS-Exporter("Discord Secure Frames v0", LE64(sender), 16)`.
//!
//! Every input here is hostile: nothing panics, malformed bytes give a
//! [`GroupError`], and a commit that cannot be applied leaves the group untouched and
//! reports [`CommitOutcome::Unprocessable`] (a commit for the current epoch) or
//! [`CommitOutcome::Failed`].
//!
//! # Roster check
//! [`Group::process_commit`] takes the set of participants this client has seen join
//! the room. Before merging a commit or joining from a Welcome it computes the member
//! set of the resulting epoch; if that contains anybody outside the set, nothing is
//! merged and the outcome is [`CommitOutcome::Refused`] (the refused members'
//! identities are kept for [`Group::take_refused`]). Commits may carry only Add and
//! Remove proposals (by value); the committer's path leaf must keep its credential
//! and signature key.

use std::collections::{BTreeMap, BTreeSet};

use openmls::prelude::{
    BasicCredential, Ciphersuite, Credential, CredentialWithKey, GroupId, KeyPackage, KeyPackageIn,
    LeafNodeIndex, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY, MlsGroup, MlsGroupCreateConfig,
    MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, ProcessedMessageContent,
    Proposal, ProtocolMessage, ProtocolVersion, StagedWelcome,
    tls_codec::{Deserialize as _, Serialize as _},
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider as _;

use crate::committer::{CommitOutcome, KeyTag, ParticipantId};
use crate::identity::{Identity, verify_binding};

/// The one ciphersuite Satsuma uses.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// Exporter label of the per-sender media base secret (DAVE).
pub const MEDIA_EXPORTER_LABEL: &str = "Discord Secure Frames v0";

/// Length of a per-sender media base secret.
pub const MEDIA_SECRET_LEN: usize = 16;

/// Why an MLS operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// Bytes that do not decode as the expected MLS structure.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// Decoder message.
        detail: String,
    },
    /// A KeyPackage that fails validation or does not belong to its sender.
    #[error("invalid KeyPackage: {0}")]
    InvalidKeyPackage(String),
    /// A leaf whose credential does not carry a valid identity binding.
    #[error("invalid credential: {0}")]
    InvalidCredential(String),
    /// The operation needs a group and there is none.
    #[error("not a group member")]
    NoGroup,
    /// The operation names a participant that is not a member.
    #[error("participant {0} is not a group member")]
    NotAMember(ParticipantId),
    /// openmls refused the operation.
    #[error("MLS operation {op} failed: {detail}")]
    Mls {
        /// The operation.
        op: &'static str,
        /// openmls's error message.
        detail: String,
    },
}

fn mls_err(op: &'static str) -> impl FnOnce(String) -> GroupError {
    move |detail| GroupError::Mls { op, detail }
}

/// The fingerprint the committer uses for a signature public key.
pub fn key_tag(signature_key: &[u8]) -> KeyTag {
    let mut b = [0u8; 8];
    for (d, s) in b.iter_mut().zip(signature_key.iter()) {
        *d = *s;
    }
    KeyTag(u64::from_be_bytes(b))
}

/// The participant id a credential names (basic credential, first 8 bytes
/// big-endian). Says nothing about the validity of the rest: see
/// [`member_identity`].
pub fn credential_id(credential: &Credential) -> Option<ParticipantId> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    let bytes: [u8; 8] = basic.identity().first_chunk::<8>().copied()?;
    Some(u64::from_be_bytes(bytes))
}

/// Who a group member is, as its credential says (verified).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemberIdentity {
    /// The participant id.
    pub id: ParticipantId,
    /// The display name bound into the credential.
    pub name: String,
    /// The member's fingerprint (of its long-term identity key, see
    /// [`crate::identity::Fingerprint`]), `XXXX XXXX XXXX XXXX`.
    pub fingerprint: String,
}

/// The verified identity behind a leaf, from its credential and MLS signature
/// key: the binding must be well-formed and its signature must verify.
pub fn member_identity(
    credential: &Credential,
    signature_key: &[u8],
) -> Result<MemberIdentity, GroupError> {
    let basic = BasicCredential::try_from(credential.clone())
        .map_err(|_| GroupError::InvalidCredential("not a basic credential".into()))?;
    let v = verify_binding(basic.identity(), signature_key)
        .map_err(|e| GroupError::InvalidCredential(e.to_string()))?;
    Ok(MemberIdentity {
        id: v.participant,
        fingerprint: v.fingerprint().to_string(),
        name: v.name,
    })
}

/// A validated KeyPackage from the relay.
#[derive(Debug, Clone)]
pub struct ValidKeyPackage {
    /// The participant id in its credential.
    pub id: ParticipantId,
    /// Its signature key fingerprint.
    pub key: KeyTag,
    /// The verified identity in its credential.
    pub identity: MemberIdentity,
    /// The KeyPackage.
    pub key_package: KeyPackage,
}

/// Per-epoch secrets handed to the media layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochSecrets {
    /// The epoch.
    pub epoch: u64,
    /// Per-sender media base secrets, one per member.
    pub senders: Vec<(ParticipantId, [u8; MEDIA_SECRET_LEN])>,
    /// The MLS epoch authenticator (for the safety number).
    pub epoch_authenticator: Vec<u8>,
}

/// A commit this participant sent and has not seen in the log yet.
#[derive(Debug, Clone)]
struct PendingCommit {
    epoch: u64,
    commit: Vec<u8>,
    adds: Vec<(ParticipantId, KeyTag)>,
    added: Vec<MemberIdentity>,
    removes: Vec<ParticipantId>,
}

/// One participant's MLS state.
pub struct Group {
    me: ParticipantId,
    identity: Identity,
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    group: Option<MlsGroup>,
    pending: Option<PendingCommit>,
    /// Identities named by the last refusal.
    refused: Vec<MemberIdentity>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("me", &self.me)
            .field("key", &self.key_tag())
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        // Chat messages sent just before a commit are logged after it (crate::chat).
        .max_past_epochs(crate::chat::CHAT_PAST_EPOCHS)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .build()
}

impl Group {
    /// Participant `me` with long-term `identity`: a fresh MLS signature key bound
    /// to the identity, and no group.
    pub fn new(me: ParticipantId, identity: Identity) -> Result<Self, GroupError> {
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm())
            .map_err(|e| mls_err("signature key")(format!("{e:?}")))?;
        signer
            .store(provider.storage())
            .map_err(|e| mls_err("store signature key")(format!("{e:?}")))?;
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity.credential_identity(me, signer.public()))
                .into(),
            signature_key: signer.public().into(),
        };
        Ok(Self {
            me,
            identity,
            provider,
            signer,
            credential,
            group: None,
            pending: None,
            refused: Vec::new(),
        })
    }

    /// Throw everything away (group, announced KeyPackages, MLS signature key) and
    /// start over with a fresh MLS signature key (the long-term identity stays).
    pub fn reset(&mut self) -> Result<(), GroupError> {
        *self = Self::new(self.me, self.identity.clone())?;
        Ok(())
    }

    /// The long-term identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// This participant's id.
    pub fn me(&self) -> ParticipantId {
        self.me
    }

    /// Fingerprint of the current signature key.
    pub fn key_tag(&self) -> KeyTag {
        key_tag(self.signer.public())
    }

    /// The current epoch, if a member.
    pub fn epoch(&self) -> Option<u64> {
        self.group.as_ref().map(|g| g.epoch().as_u64())
    }

    /// The current group id, if a member.
    pub fn group_id(&self) -> Option<Vec<u8>> {
        self.group
            .as_ref()
            .map(|g| g.group_id().as_slice().to_vec())
    }

    /// Verified identities of the current epoch's members, by participant id.
    pub fn member_identities(&self) -> Vec<MemberIdentity> {
        let mut out: Vec<MemberIdentity> = self
            .group
            .iter()
            .flat_map(|g| g.members())
            .filter_map(|m| member_identity(&m.credential, &m.signature_key).ok())
            .collect();
        out.sort_by_key(|m| m.id);
        out
    }

    /// Verified identities of the current epoch's members with the identity bytes of their
    /// basic credentials (chat resolves a message's sender by them).
    pub fn verified_credentials(&self) -> Vec<(Vec<u8>, MemberIdentity)> {
        self.group
            .iter()
            .flat_map(|g| g.members())
            .filter_map(|m| {
                let identity = member_identity(&m.credential, &m.signature_key).ok()?;
                let basic = BasicCredential::try_from(m.credential).ok()?;
                Some((basic.identity().to_vec(), identity))
            })
            .collect()
    }

    /// The verified identity of the current member whose basic credential has these
    /// identity bytes.
    pub fn verified_by_credential(&self, identity_bytes: &[u8]) -> Option<MemberIdentity> {
        let g = self.group.as_ref()?;
        g.members().find_map(|m| {
            let basic = BasicCredential::try_from(m.credential.clone()).ok()?;
            if basic.identity() != identity_bytes {
                return None;
            }
            member_identity(&m.credential, &m.signature_key).ok()
        })
    }

    /// The openmls group, the crypto provider and the signer (for [`crate::chat`]).
    pub(crate) fn mls_parts(
        &mut self,
    ) -> Option<(&mut MlsGroup, &OpenMlsRustCrypto, &SignatureKeyPair)> {
        let g = self.group.as_mut()?;
        Some((g, &self.provider, &self.signer))
    }

    /// Members (participant id → key fingerprint) of the current epoch.
    pub fn members(&self) -> BTreeMap<ParticipantId, KeyTag> {
        let mut out = BTreeMap::new();
        if let Some(g) = &self.group {
            for m in g.members() {
                if let Some(id) = credential_id(&m.credential) {
                    out.insert(id, key_tag(&m.signature_key));
                }
            }
        }
        out
    }

    /// Build a new KeyPackage under the current identity, serialized as an
    /// `MLSMessage` (what binary relay frame kind 1 carries).
    pub fn key_package(&mut self) -> Result<Vec<u8>, GroupError> {
        let bundle = KeyPackage::builder()
            .build(
                CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .map_err(|e| mls_err("build KeyPackage")(e.to_string()))?;
        let msg: MlsMessageOut = bundle.key_package().clone().into();
        msg.tls_serialize_detached()
            .map_err(|e| mls_err("serialize KeyPackage")(e.to_string()))
    }

    /// Decode and validate a KeyPackage announced by `from`.
    pub fn parse_key_package(
        &self,
        from: ParticipantId,
        bytes: &[u8],
    ) -> Result<ValidKeyPackage, GroupError> {
        let msg =
            MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| GroupError::Malformed {
                what: "KeyPackage message",
                detail: e.to_string(),
            })?;
        let MlsMessageBodyIn::KeyPackage(kp_in) = msg.extract() else {
            return Err(GroupError::Malformed {
                what: "KeyPackage message",
                detail: "not a KeyPackage".into(),
            });
        };
        let kp_in: KeyPackageIn = kp_in;
        let kp = kp_in
            .validate(self.provider.crypto(), ProtocolVersion::Mls10)
            .map_err(|e| GroupError::InvalidKeyPackage(e.to_string()))?;
        if kp.ciphersuite() != CIPHERSUITE {
            return Err(GroupError::InvalidKeyPackage("wrong ciphersuite".into()));
        }
        let leaf = kp.leaf_node();
        let identity = member_identity(leaf.credential(), leaf.signature_key().as_slice())?;
        let id = identity.id;
        if id != from {
            return Err(GroupError::InvalidKeyPackage(format!(
                "credential names {id}, sent by {from}"
            )));
        }
        Ok(ValidKeyPackage {
            id,
            key: key_tag(leaf.signature_key().as_slice()),
            identity,
            key_package: kp,
        })
    }

    /// Create the room's group (epoch 0, only member: me). An older group is dropped.
    pub fn create(&mut self, group_id: &[u8]) -> Result<(), GroupError> {
        self.drop_group();
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .use_ratchet_tree_extension(true)
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .max_past_epochs(crate::chat::CHAT_PAST_EPOCHS)
            .build();
        let group = MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &config,
            GroupId::from_slice(group_id),
            self.credential.clone(),
        )
        .map_err(|e| mls_err("create group")(e.to_string()))?;
        self.group = Some(group);
        Ok(())
    }

    /// Forget the group (and any pending commit).
    pub fn drop_group(&mut self) {
        self.pending = None;
        if let Some(mut g) = self.group.take() {
            // Best effort: a storage error only leaves garbage in memory storage.
            let _ = g.delete(self.provider.storage());
        }
    }

    /// Build a commit adding `add` (removing its old leaf first if it is a member)
    /// and removing `removes`; returns `(commit, welcome)` as serialized MLSMessages
    /// (welcome empty when nobody is added). The commit stays pending until it is
    /// seen in the log ([`Group::process_commit`]) or discarded.
    pub fn commit(
        &mut self,
        add: Option<&ValidKeyPackage>,
        removes: &[ParticipantId],
    ) -> Result<(Vec<u8>, Vec<u8>), GroupError> {
        let adds: Vec<&ValidKeyPackage> = add.into_iter().collect();
        self.commit_adds(&adds, removes)
    }

    /// Like [`Group::commit`], adding every KeyPackage of `adds` (one per participant;
    /// a participant that is a member must be in `removes` too) in the one commit.
    pub fn commit_adds(
        &mut self,
        adds: &[&ValidKeyPackage],
        removes: &[ParticipantId],
    ) -> Result<(Vec<u8>, Vec<u8>), GroupError> {
        self.discard_commit();
        let me = self.me;
        let group = self.group.as_mut().ok_or(GroupError::NoGroup)?;
        let mut leaves: Vec<LeafNodeIndex> = Vec::new();
        let mut removed_ids = Vec::new();
        for id in removes {
            if *id == me {
                return Err(GroupError::Mls {
                    op: "commit",
                    detail: "cannot remove myself".into(),
                });
            }
            let idx = group
                .members()
                .find(|m| credential_id(&m.credential) == Some(*id))
                .map(|m| m.index)
                .ok_or(GroupError::NotAMember(*id))?;
            leaves.push(idx);
            removed_ids.push(*id);
        }
        let epoch = group.epoch().as_u64();
        let bundle = group
            .commit_builder()
            .propose_removals(leaves)
            .propose_adds(adds.iter().map(|a| a.key_package.clone()))
            .load_psks(self.provider.storage())
            .map_err(|e| mls_err("commit")(e.to_string()))?
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &self.signer,
                |_| true,
            )
            .map_err(|e| mls_err("commit")(e.to_string()))?
            .stage_commit(&self.provider)
            .map_err(|e| mls_err("stage commit")(e.to_string()))?;
        let welcome = match bundle.to_welcome_msg() {
            Some(w) => w
                .tls_serialize_detached()
                .map_err(|e| mls_err("serialize welcome")(e.to_string()))?,
            None => Vec::new(),
        };
        let commit = bundle
            .into_commit()
            .tls_serialize_detached()
            .map_err(|e| mls_err("serialize commit")(e.to_string()))?;
        self.pending = Some(PendingCommit {
            epoch,
            commit: commit.clone(),
            adds: adds.iter().map(|a| (a.id, a.key)).collect(),
            added: adds.iter().map(|a| a.identity.clone()).collect(),
            removes: removed_ids,
        });
        Ok((commit, welcome))
    }

    /// Forget the pending commit, if any.
    pub fn discard_commit(&mut self) {
        self.pending = None;
        if let Some(g) = self.group.as_mut()
            && g.pending_commit().is_some()
        {
            let _ = g.clear_pending_commit(self.provider.storage());
        }
    }

    /// Process a `commit` log entry: apply it if a member, or join from its Welcome.
    /// `seen` is everybody this client saw join the room: an epoch with any other
    /// member is refused ([`CommitOutcome::Refused`]) before anything is merged.
    pub fn process_commit(
        &mut self,
        from: ParticipantId,
        commit: &[u8],
        welcome: &[u8],
        seen: &BTreeSet<ParticipantId>,
    ) -> CommitOutcome {
        self.refused.clear();
        let Some(current) = self.epoch() else {
            return self.try_welcome(welcome, seen);
        };
        match self.apply_commit(from, commit, seen) {
            Ok(Applied::Still(outcome)) => outcome,
            Ok(Applied::RemovedMe) => match self.try_welcome(welcome, seen) {
                CommitOutcome::NotForMe => CommitOutcome::RemovedMe,
                other => other,
            },
            Ok(Applied::OtherGroup) => CommitOutcome::NotForMe,
            Err(Fault::Report(e)) => {
                tracing::warn!(error = %e, from, epoch = current, "commit could not be processed");
                CommitOutcome::Unprocessable { epoch: current }
            }
            Err(Fault::Reset(e)) => {
                tracing::warn!(error = %e, from, "commit could not be applied");
                CommitOutcome::Failed
            }
        }
    }

    /// Identities of the members the last [`CommitOutcome::Refused`] named.
    pub fn take_refused(&mut self) -> Vec<MemberIdentity> {
        std::mem::take(&mut self.refused)
    }

    fn apply_commit(
        &mut self,
        from: ParticipantId,
        commit: &[u8],
        seen: &BTreeSet<ParticipantId>,
    ) -> Result<Applied, Fault> {
        let me = self.me;
        let report = |what: &'static str| {
            move |detail: String| Fault::Report(GroupError::Malformed { what, detail })
        };
        let msg = MlsMessageIn::tls_deserialize_exact(commit)
            .map_err(|e| report("commit")(e.to_string()))?;
        let protocol: ProtocolMessage = msg
            .try_into_protocol_message()
            .map_err(|e| report("commit")(e.to_string()))?;
        let group = self
            .group
            .as_mut()
            .ok_or(Fault::Reset(GroupError::NoGroup))?;
        if protocol.group_id() != group.group_id() {
            return Ok(Applied::OtherGroup);
        }
        let epoch = protocol.epoch().as_u64();
        let current = group.epoch().as_u64();
        if epoch < current {
            return Ok(Applied::Still(CommitOutcome::Stale));
        }
        if epoch > current {
            return Err(Fault::Reset(GroupError::Mls {
                op: "process commit",
                detail: format!("commit for epoch {epoch}, I am at {current}"),
            }));
        }
        if from == me {
            // Only my own pending commit can be merged; anything else under my name
            // (a discarded commit that still made it) cannot be processed.
            let pending = self.pending.take();
            return match pending {
                Some(p) if p.commit == commit && p.epoch == epoch => {
                    let mut post = member_ids(group);
                    for id in &p.removes {
                        post.remove(id);
                    }
                    post.extend(p.adds.iter().map(|(id, _)| *id));
                    let unknown: Vec<ParticipantId> = post
                        .iter()
                        .copied()
                        .filter(|id| !seen.contains(id))
                        .collect();
                    if !unknown.is_empty() {
                        self.refused = p
                            .added
                            .iter()
                            .filter(|m| unknown.contains(&m.id))
                            .cloned()
                            .collect();
                        return Ok(Applied::Still(CommitOutcome::Refused { unknown }));
                    }
                    group
                        .merge_pending_commit(&self.provider)
                        .map_err(|e| Fault::Reset(mls_err("merge own commit")(e.to_string())))?;
                    Ok(Applied::Still(CommitOutcome::Applied {
                        epoch: group.epoch().as_u64(),
                        adds: p.adds,
                        removes: p.removes,
                    }))
                }
                _ => Err(Fault::Reset(GroupError::Mls {
                    op: "process commit",
                    detail: "a commit of mine that is not pending".into(),
                })),
            };
        }
        if group.pending_commit().is_some() {
            let _ = group.clear_pending_commit(self.provider.storage());
        }
        self.pending = None;
        let processed = group
            .process_message(&self.provider, protocol)
            .map_err(|e| Fault::Report(mls_err("process commit")(e.to_string())))?;
        let sender = match processed.sender() {
            openmls::prelude::Sender::Member(idx) => *idx,
            _ => return Err(report("commit")("not sent by a member".into())),
        };
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            return Err(report("commit")("not a commit".into()));
        };
        // The committer is the participant the coordinator says sent it, and keeps
        // its credential and signature key in its new path leaf.
        let sender_leaf = group
            .members()
            .find(|m| m.index == sender)
            .ok_or(Fault::Report(GroupError::NotAMember(from)))?;
        if credential_id(&sender_leaf.credential) != Some(from) {
            return Err(report("commit")(format!(
                "signed by a leaf that is not {from}"
            )));
        }
        if let Some(leaf) = staged.update_path_leaf_node()
            && (leaf.credential() != &sender_leaf.credential
                || leaf.signature_key().as_slice() != sender_leaf.signature_key.as_slice())
        {
            return Err(report("commit")(
                "the committer's path leaf changes its identity".into(),
            ));
        }
        for p in staged.queued_proposals() {
            if !matches!(p.proposal(), Proposal::Add(_) | Proposal::Remove(_)) {
                return Err(report("commit")(format!(
                    "a {:?} proposal (only Add and Remove are allowed)",
                    p.proposal().proposal_type()
                )));
            }
        }
        let mut removes = Vec::new();
        for r in staged.remove_proposals() {
            let idx = r.remove_proposal().removed();
            let id = group
                .member(idx)
                .and_then(credential_id)
                .ok_or_else(|| report("commit")("removes an unknown leaf".into()))?;
            removes.push(id);
        }
        let members = member_ids(group);
        let mut adds: Vec<(ParticipantId, KeyTag)> = Vec::new();
        let mut added = Vec::new();
        for a in staged.add_proposals() {
            let leaf = a.add_proposal().key_package().leaf_node();
            let identity = member_identity(leaf.credential(), leaf.signature_key().as_slice())
                .map_err(Fault::Report)?;
            let id = identity.id;
            // Nobody may be in the group twice: an add of a member must come with the
            // removal of its old leaf, and one commit adds an id at most once.
            if (members.contains(&id) && !removes.contains(&id))
                || adds.iter().any(|(x, _)| *x == id)
            {
                return Err(report("commit")(format!("commit adds {id} twice")));
            }
            adds.push((id, key_tag(leaf.signature_key().as_slice())));
            added.push(identity);
        }
        // The roster check, before anything is merged.
        let mut post = members;
        for id in &removes {
            post.remove(id);
        }
        post.extend(adds.iter().map(|(id, _)| *id));
        let unknown: Vec<ParticipantId> = post
            .iter()
            .copied()
            .filter(|id| !seen.contains(id))
            .collect();
        if !unknown.is_empty() {
            let mut refused: Vec<MemberIdentity> = added
                .into_iter()
                .filter(|m| unknown.contains(&m.id))
                .collect();
            for m in group.members() {
                if let Ok(identity) = member_identity(&m.credential, &m.signature_key)
                    && unknown.contains(&identity.id)
                    && !refused.iter().any(|r| r.id == identity.id)
                {
                    refused.push(identity);
                }
            }
            self.refused = refused;
            return Ok(Applied::Still(CommitOutcome::Refused { unknown }));
        }
        let self_removed = staged.self_removed();
        group
            .merge_staged_commit(&self.provider, *staged)
            .map_err(|e| Fault::Reset(mls_err("merge commit")(e.to_string())))?;
        if self_removed {
            self.drop_group();
            return Ok(Applied::RemovedMe);
        }
        Ok(Applied::Still(CommitOutcome::Applied {
            epoch: group.epoch().as_u64(),
            adds,
            removes,
        }))
    }

    fn try_welcome(&mut self, welcome: &[u8], seen: &BTreeSet<ParticipantId>) -> CommitOutcome {
        if welcome.is_empty() {
            return CommitOutcome::NotForMe;
        }
        let Ok(msg) = MlsMessageIn::tls_deserialize_exact(welcome) else {
            return CommitOutcome::NotForMe;
        };
        let MlsMessageBodyIn::Welcome(w) = msg.extract() else {
            return CommitOutcome::NotForMe;
        };
        let staged = match StagedWelcome::build_from_welcome(&self.provider, &join_config(), w) {
            Ok(b) => b.replace_old_group().build(),
            Err(e) => Err(e),
        };
        let staged = match staged {
            Ok(s) => s,
            Err(openmls::prelude::WelcomeError::NoMatchingKeyPackage) => {
                return CommitOutcome::NotForMe;
            }
            Err(e) => {
                tracing::warn!(error = %e, "welcome for me could not be staged");
                return CommitOutcome::Failed;
            }
        };
        // Every member's credential must be valid, and every member somebody this
        // client saw join, before the group is joined.
        let mut identities = Vec::new();
        for m in staged.members() {
            match member_identity(&m.credential, &m.signature_key) {
                Ok(identity) => identities.push(identity),
                Err(e) => {
                    tracing::warn!(error = %e, "welcome with an invalid member");
                    return CommitOutcome::Failed;
                }
            }
        }
        let unknown: Vec<ParticipantId> = identities
            .iter()
            .map(|m| m.id)
            .filter(|id| !seen.contains(id))
            .collect();
        if !unknown.is_empty() {
            self.refused = identities
                .into_iter()
                .filter(|m| unknown.contains(&m.id))
                .collect();
            return CommitOutcome::Refused { unknown };
        }
        match staged.into_group(&self.provider) {
            Ok(g) => {
                self.group = Some(g);
                self.pending = None;
                let members = self.members();
                match (self.group_id(), self.epoch()) {
                    (Some(group_id), Some(epoch)) => CommitOutcome::Welcomed {
                        group_id,
                        epoch,
                        members,
                    },
                    _ => CommitOutcome::Failed,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "welcome for me could not be joined");
                CommitOutcome::Failed
            }
        }
    }

    /// Media base secrets of every member and the epoch authenticator.
    pub fn epoch_secrets(&self) -> Result<EpochSecrets, GroupError> {
        let g = self.group.as_ref().ok_or(GroupError::NoGroup)?;
        let mut senders = Vec::new();
        for id in self.members().keys() {
            senders.push((*id, self.media_secret(*id)?));
        }
        Ok(EpochSecrets {
            epoch: g.epoch().as_u64(),
            senders,
            epoch_authenticator: g.epoch_authenticator().as_slice().to_vec(),
        })
    }

    /// `MLS-Exporter("Discord Secure Frames v0", LE64(sender), 16)` of the current epoch.
    pub fn media_secret(
        &self,
        sender: ParticipantId,
    ) -> Result<[u8; MEDIA_SECRET_LEN], GroupError> {
        let g = self.group.as_ref().ok_or(GroupError::NoGroup)?;
        let v = g
            .export_secret(
                self.provider.crypto(),
                MEDIA_EXPORTER_LABEL,
                &sender.to_le_bytes(),
                MEDIA_SECRET_LEN,
            )
            .map_err(|e| mls_err("export secret")(e.to_string()))?;
        v.as_slice().try_into().map_err(|_| GroupError::Mls {
            op: "export secret",
            detail: "wrong length".into(),
        })
    }

    /// Any exporter output of the current epoch (tests and diagnostics).
    pub fn export_secret(
        &self,
        label: &str,
        context: &[u8],
        len: usize,
    ) -> Result<Vec<u8>, GroupError> {
        let g = self.group.as_ref().ok_or(GroupError::NoGroup)?;
        g.export_secret(self.provider.crypto(), label, context, len)
            .map(|v| v.to_vec())
            .map_err(|e| mls_err("export secret")(e.to_string()))
    }
}

enum Applied {
    Still(CommitOutcome),
    RemovedMe,
    OtherGroup,
}

/// Why a commit was not applied.
enum Fault {
    /// A commit for my current epoch that is invalid: report it, keep the group.
    Report(GroupError),
    /// Anything else (I am behind, my own commit, a storage error): reset.
    Reset(GroupError),
}

/// Participant ids of a group's members.
fn member_ids(group: &MlsGroup) -> BTreeSet<ParticipantId> {
    group
        .members()
        .filter_map(|m| credential_id(&m.credential))
        .collect()
}
