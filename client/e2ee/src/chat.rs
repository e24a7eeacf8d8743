//! End-to-end encrypted chat: MLS application messages in the room's log.
//!
//! A chat message is one MLS application message (`PrivateMessage`, RFC 9420 §6.3) of the
//! room's group, sent as binary relay frame kind 3 ([`crate::relay::KIND_APPLICATION`]). The
//! coordinator logs it in the room's one total order and relays it to every member; it can
//! read the group id, the epoch and the content type (application) in the clear, nothing
//! else. Why MLS application messages and not an exporter-derived key with DAVE-style
//! framing (as media uses):
//!
//! - **Sender authentication.** Every application message is signed with the sender's MLS
//!   signature key (the key bound to its long-term identity and display name in its
//!   credential, [`crate::identity`]); a key exported from the epoch is known to every
//!   member, so any member could forge any other member's messages under it.
//! - **Forward secrecy per message.** The MLS secret tree ratchets per sender and per
//!   message and deletes used keys; no key material of ours to manage.
//! - **No new crypto.** The group already exists for media; chat adds no scheme, no nonce
//!   management and no framing of our own. The cost (a signature per message, ~150 bytes
//!   of overhead) does not matter at chat rates, unlike per-frame media.
//!
//! The receiving side checks, before anything is shown: the frame is a `PrivateMessage` of
//! content type application for the current group (a handshake message in this kind is
//! refused unprocessed: it could otherwise queue a proposal); openmls decrypts it and
//! verifies the sender's signature; the MLS sender's credential names the participant the
//! coordinator says sent it ([`ChatDrop::WrongSender`] otherwise) and carries a valid
//! identity binding, whose display name and fingerprint are what the UI shows.
//!
//! Epochs: messages are encrypted under the sender's current epoch. A receiver keeps the
//! secrets of the last [`CHAT_PAST_EPOCHS`] epochs, so a message sent just before a commit
//! and logged after it still opens. A joiner holds no epoch before its Welcome: messages
//! logged before it joined are never sent to it, and messages in epochs before its own are
//! dropped ([`ChatDrop::Undecryptable`]): it sees messages from its join on.
//!
//! MLS cannot decrypt one's own messages. A sender keeps the plaintext of each message it
//! sent (the last [`MAX_PENDING`]) and shows it when the coordinator echoes its ciphertext
//! back at its log position, so every page shows every message at the same position.
//!
//! Plaintext format (inside the MLS message): `u8 version (1) ‖ u8 type (1 = text) ‖ UTF-8
//! text`, text 1..=[`MAX_CHAT_TEXT_BYTES`] bytes.

use std::collections::{BTreeMap, VecDeque};

use openmls::prelude::{
    BasicCredential, ContentType, MlsMessageIn, ProcessedMessageContent, ProtocolMessage, Sender,
    WireFormat, tls_codec::Deserialize as _, tls_codec::Serialize as _,
};

use crate::committer::ParticipantId;
use crate::group::{Group, GroupError, MemberIdentity};
pub use crate::relay::MAX_CHAT_TEXT_BYTES;

/// Past epochs whose secrets a member keeps for chat messages sent before a commit
/// reached their sender.
pub const CHAT_PAST_EPOCHS: usize = 8;

/// Own sent messages remembered until their echo (older ones are shown as sent by me
/// without text if they ever come back: they never do in practice).
pub const MAX_PENDING: usize = 64;

/// Plaintext format version.
const VERSION: u8 = 1;
/// Plaintext type: UTF-8 text.
const TYPE_TEXT: u8 = 1;

/// Why a message could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// Empty (or only whitespace) text.
    #[error("empty message")]
    Empty,
    /// Text over [`MAX_CHAT_TEXT_BYTES`].
    #[error("message of {0} bytes is too long (at most {MAX_CHAT_TEXT_BYTES})")]
    TooLong(usize),
    /// Not in the group (yet): nothing can be encrypted.
    #[error("not in the encryption group yet")]
    NoGroup,
    /// openmls refused.
    #[error(transparent)]
    Group(#[from] GroupError),
}

/// Why a received chat entry was dropped (counted, never shown as a message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatDrop {
    /// Not an MLS `PrivateMessage` of content type application.
    #[error("not an MLS application message: {0}")]
    NotApplication(String),
    /// For another group (an older one of this room).
    #[error("for another group")]
    OtherGroup,
    /// No key opens it: an epoch this member never held (before it joined), one it
    /// dropped (older than [`CHAT_PAST_EPOCHS`]), no group, or tampered bytes.
    #[error("cannot decrypt: {0}")]
    Undecryptable(String),
    /// The MLS sender is not the participant the coordinator named.
    #[error("sent by {actual:?}, relayed as from {claimed}")]
    WrongSender {
        /// The coordinator's `from`.
        claimed: ParticipantId,
        /// The MLS sender's participant id, if its credential names one.
        actual: Option<ParticipantId>,
    },
    /// The sender's credential carries no valid identity binding.
    #[error("sender has no verified identity")]
    UnverifiedSender,
    /// The plaintext is not a chat message of this version.
    #[error("bad plaintext: {0}")]
    BadPlaintext(String),
    /// My own message, but not one this member remembers sending.
    #[error("own message not remembered")]
    UnknownOwn,
}

/// A chat message, at its log position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Its position in the room's log (every member shows messages in this order).
    pub seq: u64,
    /// The sender's participant id.
    pub from: ParticipantId,
    /// The sender's display name, from its verified credential.
    pub name: String,
    /// The sender's fingerprint, from its verified credential.
    pub fingerprint: String,
    /// The text (render it as text, never as markup).
    pub text: String,
    /// Sent by this member.
    pub mine: bool,
    /// The MLS epoch it was encrypted in.
    pub epoch: u64,
}

/// What chat tells the application, in log order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatEvent {
    /// A message to show.
    Message(ChatMessage),
    /// An entry that was dropped (counted; a UI may say "n messages could not be
    /// decrypted").
    Dropped {
        /// Its log position.
        seq: u64,
        /// The coordinator's sender.
        from: ParticipantId,
        /// Why.
        reason: ChatDrop,
    },
}

/// Chat counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChatStats {
    /// Messages sent.
    pub sent: u64,
    /// Messages shown (others' and own echoes).
    pub shown: u64,
    /// Entries dropped.
    pub dropped: u64,
}

/// Encodes a chat text as the plaintext of an application message.
pub fn encode_text(text: &str) -> Result<Vec<u8>, ChatError> {
    if text.trim().is_empty() {
        return Err(ChatError::Empty);
    }
    if text.len() > MAX_CHAT_TEXT_BYTES {
        return Err(ChatError::TooLong(text.len()));
    }
    let mut out = Vec::with_capacity(2 + text.len());
    out.push(VERSION);
    out.push(TYPE_TEXT);
    out.extend_from_slice(text.as_bytes());
    Ok(out)
}

/// Decodes the plaintext of an application message.
pub fn decode_text(plaintext: &[u8]) -> Result<String, ChatDrop> {
    let [version, kind, text @ ..] = plaintext else {
        return Err(ChatDrop::BadPlaintext("too short".into()));
    };
    if *version != VERSION || *kind != TYPE_TEXT {
        return Err(ChatDrop::BadPlaintext(format!(
            "version {version} type {kind}"
        )));
    }
    if text.is_empty() || text.len() > MAX_CHAT_TEXT_BYTES {
        return Err(ChatDrop::BadPlaintext(format!("{} bytes", text.len())));
    }
    String::from_utf8(text.to_vec()).map_err(|_| ChatDrop::BadPlaintext("not UTF-8".into()))
}

/// A decrypted application message whose signature openmls verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The identity bytes of the sender's basic credential (its leaf in the message's epoch;
    /// resolve it to a verified identity with [`Group::verified_by_credential`]).
    pub credential_identity: Vec<u8>,
    /// The epoch it was encrypted in.
    pub epoch: u64,
    /// The plaintext.
    pub plaintext: Vec<u8>,
}

impl Group {
    /// Encrypts `plaintext` as an MLS application message of the current epoch, signed by
    /// this member; returns the serialized `MLSMessage`.
    pub fn encrypt_application(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, GroupError> {
        let (group, provider, signer) = self.mls_parts().ok_or(GroupError::NoGroup)?;
        let msg = group
            .create_message(provider, signer, plaintext)
            .map_err(|e| GroupError::Mls {
                op: "create application message",
                detail: e.to_string(),
            })?;
        msg.tls_serialize_detached().map_err(|e| GroupError::Mls {
            op: "serialize application message",
            detail: e.to_string(),
        })
    }

    /// Decrypts an application message of this group (current epoch or one of the last
    /// [`CHAT_PAST_EPOCHS`]) and authenticates its sender. Refuses, unprocessed, anything
    /// that is not a `PrivateMessage` of content type application.
    pub fn decrypt_application(&mut self, bytes: &[u8]) -> Result<Opened, ChatDrop> {
        let msg = MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(|e| ChatDrop::NotApplication(e.to_string()))?;
        let protocol: ProtocolMessage = msg
            .try_into_protocol_message()
            .map_err(|e| ChatDrop::NotApplication(e.to_string()))?;
        if protocol.wire_format() != WireFormat::PrivateMessage {
            return Err(ChatDrop::NotApplication("not a PrivateMessage".into()));
        }
        if protocol.content_type() != ContentType::Application {
            return Err(ChatDrop::NotApplication(format!(
                "content type {:?}",
                protocol.content_type()
            )));
        }
        let Some((group, provider, _)) = self.mls_parts() else {
            return Err(ChatDrop::Undecryptable("not in a group".into()));
        };
        if protocol.group_id() != group.group_id() {
            return Err(ChatDrop::OtherGroup);
        }
        let processed = group
            .process_message(provider, protocol)
            .map_err(|e| ChatDrop::Undecryptable(e.to_string()))?;
        if !matches!(processed.sender(), Sender::Member(_)) {
            return Err(ChatDrop::NotApplication("not from a member".into()));
        }
        let epoch = processed.epoch().as_u64();
        let credential = processed.credential().clone();
        let ProcessedMessageContent::ApplicationMessage(app) = processed.into_content() else {
            return Err(ChatDrop::NotApplication("not application content".into()));
        };
        let credential_identity = BasicCredential::try_from(credential)
            .map(|b| b.identity().to_vec())
            .map_err(|_| ChatDrop::UnverifiedSender)?;
        Ok(Opened {
            credential_identity,
            epoch,
            plaintext: app.into_bytes(),
        })
    }
}

/// A member's chat state: its own messages awaiting their echo, the verified identities of
/// every member it has seen (so a message from a member who left since still names it),
/// and the events for the application.
#[derive(Debug, Default)]
pub struct Chat {
    /// (ciphertext, text) of my messages not yet echoed, oldest first.
    pending: VecDeque<(Vec<u8>, String)>,
    /// Verified identities by credential identity bytes.
    known: BTreeMap<Vec<u8>, MemberIdentity>,
    events: VecDeque<ChatEvent>,
    stats: ChatStats,
}

impl Chat {
    /// Counters.
    pub fn stats(&self) -> ChatStats {
        self.stats
    }

    /// Next event.
    pub fn poll(&mut self) -> Option<ChatEvent> {
        self.events.pop_front()
    }

    /// Encrypts `text` in `group` and remembers it; returns the `MLSMessage` to send.
    pub fn send(&mut self, group: &mut Group, text: &str) -> Result<Vec<u8>, ChatError> {
        let plaintext = encode_text(text)?;
        if group.epoch().is_none() {
            return Err(ChatError::NoGroup);
        }
        let message = group.encrypt_application(&plaintext)?;
        self.pending.push_back((message.clone(), text.to_owned()));
        while self.pending.len() > MAX_PENDING {
            self.pending.pop_front();
        }
        self.stats.sent += 1;
        Ok(message)
    }

    /// A logged application message: `from` (the coordinator's sender) at `seq`.
    pub fn receive(&mut self, group: &mut Group, seq: u64, from: ParticipantId, message: &[u8]) {
        let me = group.me();
        let event = if from == me {
            self.own_echo(group, seq, message)
        } else {
            self.open(group, seq, from, message)
        };
        match &event {
            ChatEvent::Message(_) => self.stats.shown += 1,
            ChatEvent::Dropped { reason, .. } => {
                tracing::debug!(seq, from, %reason, "chat entry dropped");
                self.stats.dropped += 1;
            }
        }
        self.events.push_back(event);
    }

    fn own_echo(&mut self, group: &Group, seq: u64, message: &[u8]) -> ChatEvent {
        let me = group.me();
        let Some(i) = self.pending.iter().position(|(c, _)| c == message) else {
            return ChatEvent::Dropped {
                seq,
                from: me,
                reason: ChatDrop::UnknownOwn,
            };
        };
        // Anything sent before it and not echoed was lost (e.g. with a connection).
        let (_, text) = self.pending.drain(..=i).next_back().unwrap_or_default();
        let epoch = epoch_of(message).unwrap_or_default();
        let (name, fingerprint) = group
            .verified_credentials()
            .into_iter()
            .map(|(_, m)| m)
            .chain(self.known.values().cloned())
            .find(|m| m.id == me)
            .map(|m| (m.name, m.fingerprint))
            .unwrap_or_default();
        ChatEvent::Message(ChatMessage {
            seq,
            from: me,
            name,
            fingerprint,
            text,
            mine: true,
            epoch,
        })
    }

    fn open(
        &mut self,
        group: &mut Group,
        seq: u64,
        from: ParticipantId,
        message: &[u8],
    ) -> ChatEvent {
        let dropped = |reason| ChatEvent::Dropped { seq, from, reason };
        let opened = match group.decrypt_application(message) {
            Ok(o) => o,
            Err(reason) => return dropped(reason),
        };
        // The leaf's credential was verified when its member was added; a sender who left
        // since is still known from an earlier epoch.
        let Some(sender) = group
            .verified_by_credential(&opened.credential_identity)
            .or_else(|| self.known.get(&opened.credential_identity).cloned())
        else {
            return dropped(ChatDrop::UnverifiedSender);
        };
        if sender.id != from {
            return dropped(ChatDrop::WrongSender {
                claimed: from,
                actual: Some(sender.id),
            });
        }
        match decode_text(&opened.plaintext) {
            Ok(text) => ChatEvent::Message(ChatMessage {
                seq,
                from,
                name: sender.name,
                fingerprint: sender.fingerprint,
                text,
                mine: false,
                epoch: opened.epoch,
            }),
            Err(reason) => dropped(reason),
        }
    }

    /// Forgets my unechoed messages (the group was lost: they will never be echoed in it).
    pub fn clear_pending(&mut self) {
        self.pending.clear();
    }

    /// Remembers the verified identities of `group`'s current members.
    pub fn learn(&mut self, group: &Group) {
        for (bytes, identity) in group.verified_credentials() {
            self.known.insert(bytes, identity);
        }
        // Bounded: a room's members over time; drop the oldest-inserted beyond a cap by
        // clearing identities no longer in the group when the map grows large.
        if self.known.len() > 4096 {
            let current: Vec<Vec<u8>> = group
                .verified_credentials()
                .into_iter()
                .map(|(b, _)| b)
                .collect();
            self.known.retain(|b, _| current.contains(b));
        }
    }

    /// The identity of a credential seen in some epoch.
    pub fn known(&self, identity_bytes: &[u8]) -> Option<&MemberIdentity> {
        self.known.get(identity_bytes)
    }
}

/// The epoch in an MLS message's framing, if it parses.
fn epoch_of(message: &[u8]) -> Option<u64> {
    let msg = MlsMessageIn::tls_deserialize_exact(message).ok()?;
    let protocol: ProtocolMessage = msg.try_into_protocol_message().ok()?;
    Some(protocol.epoch().as_u64())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::collections::BTreeSet;

    use super::*;
    use crate::committer::CommitOutcome;
    use crate::identity::Identity;

    fn member(id: u64, name: &str) -> Group {
        Group::new(id, Identity::from_seed([id as u8; 32], name)).unwrap()
    }

    /// `ids[0]` creates the group and adds the others one commit each; everyone applies.
    fn group_of(ids: &[(u64, &str)]) -> Vec<Group> {
        let mut gs: Vec<Group> = ids.iter().map(|(id, n)| member(*id, n)).collect();
        let seen: BTreeSet<u64> = ids.iter().map(|(id, _)| *id).collect();
        gs[0]
            .create(format!("chat-test-group-{}", ids[0].0).as_bytes())
            .unwrap();
        for j in 1..gs.len() {
            let kp = gs[j].key_package().unwrap();
            let valid = gs[0].parse_key_package(ids[j].0, &kp).unwrap();
            let (commit, welcome) = gs[0].commit_adds(&[&valid], &[]).unwrap();
            for (i, g) in gs.iter_mut().enumerate().take(j + 1) {
                let out = g.process_commit(ids[0].0, &commit, &welcome, &seen);
                assert!(
                    matches!(
                        out,
                        CommitOutcome::Applied { .. } | CommitOutcome::Welcomed { .. }
                    ),
                    "member {i}: {out:?}"
                );
            }
        }
        gs
    }

    fn chats(n: usize) -> Vec<Chat> {
        (0..n).map(|_| Chat::default()).collect::<Vec<_>>()
    }

    #[test]
    fn members_decrypt_each_others_messages_with_verified_names() {
        let mut gs = group_of(&[(1, "Ann"), (2, "Ben"), (3, "Cy")]);
        let mut cs = chats(3);
        for (c, g) in cs.iter_mut().zip(&gs) {
            c.learn(g);
        }
        let ct = cs[1].send(&mut gs[1], "hello <b>all</b>").unwrap();
        assert!(
            !ct.windows(5).any(|w| w == b"hello"),
            "ciphertext leaks text"
        );
        for i in 0..3 {
            let (c, g) = (&mut cs[i], &mut gs[i]);
            c.receive(g, 10, 2, &ct);
            match c.poll().unwrap() {
                ChatEvent::Message(m) => {
                    assert_eq!(m.text, "hello <b>all</b>");
                    assert_eq!(m.from, 2);
                    assert_eq!(m.seq, 10);
                    assert_eq!(m.mine, i == 1);
                    assert_eq!(m.epoch, 2);
                    if i != 1 {
                        assert_eq!(m.name, "Ben");
                        assert_eq!(m.fingerprint.len(), 19);
                    }
                }
                other => panic!("member {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn tampered_messages_are_dropped() {
        let mut gs = group_of(&[(1, "Ann"), (2, "Ben")]);
        let mut c = Chat::default();
        let mut sender = Chat::default();
        let ct = sender.send(&mut gs[0], "secret").unwrap();
        // Flip a byte near the end (ciphertext / tag).
        let mut bad = ct.clone();
        let n = bad.len();
        bad[n - 3] ^= 1;
        c.receive(&mut gs[1], 5, 1, &bad);
        assert!(matches!(
            c.poll(),
            Some(ChatEvent::Dropped {
                reason: ChatDrop::Undecryptable(_),
                ..
            })
        ));
        // Truncated: does not even parse.
        c.receive(&mut gs[1], 6, 1, &ct[..ct.len() / 2]);
        assert!(matches!(
            c.poll(),
            Some(ChatEvent::Dropped {
                reason: ChatDrop::NotApplication(_),
                ..
            })
        ));
        // Relabelled by the coordinator as somebody else's: refused (after decrypting).
        c.receive(&mut gs[1], 7, 3, &ct);
        assert!(matches!(
            c.poll(),
            Some(ChatEvent::Dropped {
                reason: ChatDrop::WrongSender {
                    claimed: 3,
                    actual: Some(1)
                },
                ..
            })
        ));
        assert_eq!(c.stats().dropped, 3);
        assert_eq!(c.stats().shown, 0);
    }

    #[test]
    fn a_message_from_a_past_epoch_opens_but_not_one_from_before_joining() {
        let mut gs = group_of(&[(1, "Ann"), (2, "Ben")]);
        let mut ann = Chat::default();
        let mut ben = Chat::default();
        // Ben sends at epoch 1; Ann commits adding Cy (epoch 2) before Ben's message is
        // logged; Ben's message comes after the commit in the log.
        let early = ben.send(&mut gs[1], "sent at epoch 1").unwrap();
        let mut cy = member(3, "Cy");
        let seen: BTreeSet<u64> = [1, 2, 3].into_iter().collect();
        let kp = cy.key_package().unwrap();
        let valid = gs[0].parse_key_package(3, &kp).unwrap();
        let (commit, welcome) = gs[0].commit_adds(&[&valid], &[]).unwrap();
        for g in gs.iter_mut() {
            assert!(matches!(
                g.process_commit(1, &commit, &welcome, &seen),
                CommitOutcome::Applied { epoch: 2, .. }
            ));
        }
        assert!(matches!(
            cy.process_commit(1, &commit, &welcome, &seen),
            CommitOutcome::Welcomed { epoch: 2, .. }
        ));
        let mut cy_chat = Chat::default();
        // Ann (now at epoch 2) still opens Ben's epoch-1 message.
        ann.receive(&mut gs[0], 20, 2, &early);
        match ann.poll() {
            Some(ChatEvent::Message(m)) => {
                assert_eq!((m.epoch, m.text.as_str()), (1, "sent at epoch 1"))
            }
            other => panic!("{other:?}"),
        }
        // Cy joined at epoch 2: it cannot (and must not) read the epoch-1 message.
        cy_chat.receive(&mut cy, 20, 2, &early);
        assert!(matches!(
            cy_chat.poll(),
            Some(ChatEvent::Dropped {
                reason: ChatDrop::Undecryptable(_),
                ..
            })
        ));
        // A message at epoch 2 reaches everyone, Cy included.
        let now = ben.send(&mut gs[1], "epoch 2").unwrap();
        cy_chat.receive(&mut cy, 21, 2, &now);
        assert!(matches!(
            cy_chat.poll(),
            Some(ChatEvent::Message(ChatMessage { epoch: 2, .. }))
        ));
        // Ben's own echo shows his text at its log position.
        ben.receive(&mut gs[1], 20, 2, &early);
        assert!(matches!(
            ben.poll(),
            Some(ChatEvent::Message(ChatMessage {
                mine: true,
                seq: 20,
                ..
            }))
        ));
    }

    #[test]
    fn epochs_older_than_the_window_are_dropped() {
        let mut gs = group_of(&[(1, "Ann"), (2, "Ben")]);
        let mut ben = Chat::default();
        let old = ben.send(&mut gs[1], "old").unwrap();
        let seen: BTreeSet<u64> = [1, 2].into_iter().collect();
        // Ann commits empty (update-less) commits past the window; Ben applies them too.
        for _ in 0..=CHAT_PAST_EPOCHS {
            let (commit, welcome) = gs[0].commit_adds(&[], &[]).unwrap();
            for g in gs.iter_mut() {
                assert!(matches!(
                    g.process_commit(1, &commit, &welcome, &seen),
                    CommitOutcome::Applied { .. }
                ));
            }
        }
        let mut ann = Chat::default();
        ann.receive(&mut gs[0], 30, 2, &old);
        assert!(matches!(
            ann.poll(),
            Some(ChatEvent::Dropped {
                reason: ChatDrop::Undecryptable(_),
                ..
            })
        ));
    }

    #[test]
    fn handshake_messages_and_other_groups_are_refused_unprocessed() {
        let mut gs = group_of(&[(1, "Ann"), (2, "Ben")]);
        let (commit, _) = gs[0].commit_adds(&[], &[]).unwrap();
        assert!(matches!(
            gs[1].decrypt_application(&commit),
            Err(ChatDrop::NotApplication(_))
        ));
        let mut other = group_of(&[(5, "Eve"), (6, "Fay")]);
        // Same ids would not matter: the group id differs.
        let mut eve = Chat::default();
        let ct = eve.send(&mut other[0], "elsewhere").unwrap();
        assert_eq!(gs[1].decrypt_application(&ct), Err(ChatDrop::OtherGroup));
        // A KeyPackage is no protocol message at all.
        let kp = member(9, "x").key_package().unwrap();
        assert!(matches!(
            gs[1].decrypt_application(&kp),
            Err(ChatDrop::NotApplication(_))
        ));
    }

    #[test]
    fn own_echo_needs_the_remembered_ciphertext() {
        let mut gs = group_of(&[(1, "Ann"), (2, "Ben")]);
        let mut ann = Chat::default();
        let a = ann.send(&mut gs[0], "one").unwrap();
        let b = ann.send(&mut gs[0], "two").unwrap();
        // "one" was lost; "two" is echoed: shown, and "one" forgotten.
        ann.receive(&mut gs[0], 3, 1, &b);
        assert!(matches!(ann.poll(), Some(ChatEvent::Message(m)) if m.text == "two" && m.mine));
        ann.receive(&mut gs[0], 4, 1, &a);
        assert!(matches!(
            ann.poll(),
            Some(ChatEvent::Dropped {
                reason: ChatDrop::UnknownOwn,
                ..
            })
        ));
    }

    #[test]
    fn text_codec_limits() {
        assert_eq!(encode_text("  \n"), Err(ChatError::Empty));
        let long = "x".repeat(MAX_CHAT_TEXT_BYTES + 1);
        assert_eq!(
            encode_text(&long),
            Err(ChatError::TooLong(MAX_CHAT_TEXT_BYTES + 1))
        );
        let ok = "é".repeat(MAX_CHAT_TEXT_BYTES / 2);
        assert_eq!(decode_text(&encode_text(&ok).unwrap()).unwrap(), ok);
        assert!(decode_text(&[1]).is_err());
        assert!(decode_text(&[2, 1, b'a']).is_err());
        assert!(decode_text(&[1, 1]).is_err());
        assert!(decode_text(&[1, 1, 0xff]).is_err());
        let mut big = vec![1, 1];
        big.extend(std::iter::repeat_n(b'a', MAX_CHAT_TEXT_BYTES + 1));
        assert!(decode_text(&big).is_err());
    }

    #[test]
    fn a_committer_with_a_commit_in_flight_still_chats() {
        let mut gs = group_of(&[(1, "Ann"), (2, "Ben")]);
        let seen: BTreeSet<u64> = [1, 2].into_iter().collect();
        let (commit, welcome) = gs[0].commit_adds(&[], &[]).unwrap();
        let mut ann = Chat::default();
        let mut ben = Chat::default();
        // Sent at epoch 1 while Ann's commit to epoch 2 is pending; Ben applies the commit
        // first, then reads the message from the previous epoch.
        let ct = ann.send(&mut gs[0], "during the commit").unwrap();
        assert!(matches!(
            gs[1].process_commit(1, &commit, &welcome, &seen),
            CommitOutcome::Applied { epoch: 2, .. }
        ));
        assert!(matches!(
            gs[0].process_commit(1, &commit, &welcome, &seen),
            CommitOutcome::Applied { epoch: 2, .. }
        ));
        ben.receive(&mut gs[1], 9, 1, &ct);
        assert!(matches!(
            ben.poll(),
            Some(ChatEvent::Message(ChatMessage { epoch: 1, .. }))
        ));
        ann.receive(&mut gs[0], 9, 1, &ct);
        assert!(matches!(
            ann.poll(),
            Some(ChatEvent::Message(ChatMessage { mine: true, .. }))
        ));
    }

    #[test]
    fn no_group_no_send() {
        let mut g = member(1, "Ann");
        let mut c = Chat::default();
        assert_eq!(c.send(&mut g, "hi"), Err(ChatError::NoGroup));
        assert_eq!(c.stats().sent, 0);
    }
}
