//! The member facade: everything a client (the web client's E2EE worker through WASM
//! bindings, or the native bot) needs from this crate, behind one sans-IO type.
//!
//! A [`Member`] is one participant in one room. Feed it
//! * the coordinator's room snapshot on connect ([`Member::handle_roster`]),
//! * every log entry in `seq` order: binary frames as they arrive
//!   ([`Member::handle_binary`]) and JSON entries decoded into [`Entry`]
//!   ([`Member::handle_entry`]),
//! * timer ticks ([`Member::tick`], every ~250 ms is plenty),
//!
//! then drain [`Member::poll_outbound`] (binary frames and `ready` messages to send)
//! and [`Member::poll_event`] (epoch changes with the safety number, key switches,
//! "rejoin the room"). Media goes through [`Member::encrypt`] / [`Member::decrypt`],
//! which delegate to [`crate::frame`]. Time is always passed in as a [`Duration`]
//! since an origin of the caller's choosing.
//!
//! # Epoch transitions (DAVE's prepare → ready → execute)
//! When a commit lands (or a Welcome / group creation), the member installs every
//! other member's new key into the decryptor at once (receivers try the newest key
//! first and keep older ones ~10 s), sends `ready {epoch}`, and keeps *sending* under
//! the previous epoch's key until the coordinator's `execute {epoch}`. A participant
//! without a sending key yet (the creator, a joiner) starts sending right away.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::chat::{Chat, ChatError, ChatEvent, ChatStats};
use crate::committer::{
    Action, CommitOutcome, Committer, Config as CommitterConfig, Event, ParticipantId,
};
use crate::frame::{
    BaseSecret, Codec, Decrypted, Decryptor, DecryptorConfig, DropReason, EncryptError, Encryptor,
    Holdback, Verdict,
};
use crate::group::{Group, GroupError, MemberIdentity, ValidKeyPackage};
use crate::identity::Identity;
use crate::relay::{
    ApplicationFrame, Entry, Handshake, RelayError, ServerFrame, client_application_frame,
};
use crate::safety::SafetyNumber;

/// Settings of a [`Member`].
#[derive(Debug, Clone, Default)]
pub struct MemberConfig {
    /// Committer timers.
    pub committer: CommitterConfig,
    /// Frame receiver settings.
    pub decryptor: DecryptorConfig,
}

/// Something to send to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// A binary client → server frame (`u8 kind ‖ payload`), ready to send as is.
    Binary(Vec<u8>),
    /// The JSON message `ready {epoch}`. The optional `group_id` field of the
    /// coordinator protocol is [`Member::group_id`] (hex) when drained right away.
    Ready {
        /// The epoch reached.
        epoch: u64,
    },
    /// The JSON message `commit_failed {epoch}`: the commit logged for my current
    /// epoch could not be processed (the coordinator may void it).
    CommitFailed {
        /// My current epoch.
        epoch: u64,
    },
}

/// Something the application should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// The group moved to a new epoch: show the new safety number.
    EpochChanged {
        /// The new epoch.
        epoch: u64,
        /// Members in the new epoch.
        members: Vec<ParticipantId>,
        /// The epoch authenticator as 30 digits.
        safety_number: SafetyNumber,
    },
    /// This participant now sends under `epoch`'s key: force a keyframe on video.
    SendKeyChanged {
        /// The epoch of the new sending key.
        epoch: u64,
    },
    /// Receivers got new keys: ask for keyframes on inbound video.
    ReceiveKeysChanged {
        /// The epoch of the new keys.
        epoch: u64,
    },
    /// Left the group (removed, reset after an error, or the group was replaced);
    /// E2EE media stops until the next [`MemberEvent::EpochChanged`].
    GroupLost {
        /// Why.
        reason: String,
    },
    /// This participant saw its own `left`: reconnect to the room as a new
    /// participant (a new [`Member`]).
    RejoinRoom,
    /// An epoch with members this participant never saw join the room was refused:
    /// E2EE stopped for good (no keys, no group). Show an alarm naming them.
    Alarm {
        /// The unknown members as their credentials name them.
        unknown: Vec<MemberIdentity>,
    },
}

/// Why the facade refused an input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    /// A malformed binary relay frame.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// An MLS failure that could not be recovered from by resetting.
    #[error(transparent)]
    Group(#[from] GroupError),
}

/// Counters of dropped or failed inputs (every hostile input is counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberStats {
    /// Entries ignored because their `seq` was not newer than the last one.
    pub duplicate_entries: u64,
    /// KeyPackages that failed validation.
    pub invalid_key_packages: u64,
    /// Commits that could not be processed (each caused a reset).
    pub failed_commits: u64,
    /// Resets after an MLS error.
    pub resets: u64,
    /// Commits for the current epoch reported as unprocessable (`commit_failed`).
    pub reported_commits: u64,
    /// Epochs refused because of members never seen joining.
    pub refused_epochs: u64,
}

/// One participant's E2EE state for one room.
pub struct Member {
    committer: Committer,
    group: Group,
    /// Latest valid KeyPackage per participant, with its log position.
    key_packages: BTreeMap<ParticipantId, (u64, ValidKeyPackage)>,
    encryptor: Encryptor,
    decryptor: Decryptor,
    /// My sending key for a new epoch, waiting for `execute`.
    next_send_key: Option<(u64, BaseSecret)>,
    members: Vec<ParticipantId>,
    identities: Vec<MemberIdentity>,
    alarm: Option<Vec<MemberIdentity>>,
    safety_number: Option<SafetyNumber>,
    last_seq: u64,
    outbound: VecDeque<Outbound>,
    events: VecDeque<MemberEvent>,
    stats: MemberStats,
    /// End-to-end encrypted chat ([`crate::chat`]).
    chat: Chat,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("me", &self.committer.me())
            .field("phase", self.committer.phase())
            .field("last_seq", &self.last_seq)
            .finish_non_exhaustive()
    }
}

fn ms(now: Duration) -> u64 {
    u64::try_from(now.as_millis()).unwrap_or(u64::MAX)
}

impl Member {
    /// Participant `me` (the id the coordinator assigned) with long-term
    /// `identity` (see [`crate::identity`]) and a fresh MLS signature key.
    pub fn new(
        me: ParticipantId,
        identity: Identity,
        config: MemberConfig,
    ) -> Result<Self, MemberError> {
        let group = Group::new(me, identity)?;
        Ok(Self {
            committer: Committer::new(me, group.key_tag(), config.committer),
            group,
            key_packages: BTreeMap::new(),
            encryptor: Encryptor::new(),
            decryptor: Decryptor::new(config.decryptor),
            next_send_key: None,
            members: Vec::new(),
            identities: Vec::new(),
            alarm: None,
            safety_number: None,
            last_seq: 0,
            outbound: VecDeque::new(),
            events: VecDeque::new(),
            stats: MemberStats::default(),
            chat: Chat::default(),
        })
    }

    /// This participant's id.
    pub fn id(&self) -> ParticipantId {
        self.committer.me()
    }

    /// This participant's long-term identity (name, fingerprint).
    pub fn identity(&self) -> &Identity {
        self.group.identity()
    }

    /// The committer state (phase, group view, pending work).
    pub fn committer(&self) -> &Committer {
        &self.committer
    }

    /// The current epoch, if a group member.
    pub fn epoch(&self) -> Option<u64> {
        self.group.epoch()
    }

    /// The current group id, if a group member.
    pub fn group_id(&self) -> Option<Vec<u8>> {
        self.group.group_id()
    }

    /// Members of the current epoch (empty if not a member).
    pub fn members(&self) -> &[ParticipantId] {
        &self.members
    }

    /// Verified identities of the current epoch's members (empty if not a member).
    pub fn member_identities(&self) -> &[MemberIdentity] {
        &self.identities
    }

    /// The members named by a refused epoch, once this member refused one.
    pub fn alarm(&self) -> Option<&[MemberIdentity]> {
        self.alarm.as_deref()
    }

    /// The current safety number, if a group member.
    pub fn safety_number(&self) -> Option<&SafetyNumber> {
        self.safety_number.as_ref()
    }

    /// Whether this participant is the designated committer.
    pub fn is_committer(&self) -> bool {
        self.committer.is_committer()
    }

    /// The epoch this participant currently sends under.
    pub fn send_epoch(&self) -> Option<u64> {
        self.encryptor.epoch()
    }

    /// Counters of dropped inputs.
    pub fn stats(&self) -> MemberStats {
        self.stats
    }

    /// The last log position processed.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The MLS state (tests and diagnostics).
    pub fn mls(&self) -> &Group {
        &self.group
    }

    /// Next message to send to the coordinator.
    pub fn poll_outbound(&mut self) -> Option<Outbound> {
        self.outbound.pop_front()
    }

    /// Next event for the application.
    pub fn poll_event(&mut self) -> Option<MemberEvent> {
        self.events.pop_front()
    }

    /// Sends a chat message to the group: encrypted as an MLS application message and
    /// queued as a binary frame ([`Member::poll_outbound`]). It is shown (as
    /// [`ChatEvent::Message`] with `mine`) when the coordinator logs it, at its position
    /// in the room's order, like everybody else's.
    pub fn send_chat(&mut self, text: &str) -> Result<(), ChatError> {
        if self.committer.is_terminal() {
            return Err(ChatError::NoGroup);
        }
        let message = self.chat.send(&mut self.group, text)?;
        self.outbound
            .push_back(Outbound::Binary(client_application_frame(&message)));
        Ok(())
    }

    /// Next chat event (messages to show, dropped entries), in log order.
    pub fn poll_chat(&mut self) -> Option<ChatEvent> {
        self.chat.poll()
    }

    /// Chat counters.
    pub fn chat_stats(&self) -> ChatStats {
        self.chat.stats()
    }

    /// The coordinator's `welcome`: the room snapshot after entry `seq` (the ids of
    /// `welcome.snapshot.participants`; the joiner itself is not in it, its own
    /// `joined` is entry `seq + 1`). Call before feeding entries; entries up to
    /// `seq` are then ignored as already covered by the snapshot.
    pub fn handle_welcome(&mut self, now: Duration, seq: u64, live: &[ParticipantId]) {
        self.handle_snapshot(now, seq, live, &[]);
    }

    /// [`Member::handle_welcome`] with the snapshot's away participants (those
    /// flagged `away`: their connection ended and they may resume; the designated
    /// committer skips them).
    pub fn handle_snapshot(
        &mut self,
        now: Duration,
        seq: u64,
        live: &[ParticipantId],
        away: &[ParticipantId],
    ) {
        self.last_seq = self.last_seq.max(seq);
        self.handle_roster_away(now, live, away);
    }

    /// The room's live participants as of the connection's first log position
    /// (the coordinator's snapshot). Call before feeding entries. Prefer
    /// [`Member::handle_welcome`], which also records the snapshot's `seq`.
    pub fn handle_roster(&mut self, now: Duration, live: &[ParticipantId]) {
        self.handle_roster_away(now, live, &[]);
    }

    /// [`Member::handle_roster`] with the snapshot's away participants.
    pub fn handle_roster_away(
        &mut self,
        now: Duration,
        live: &[ParticipantId],
        away: &[ParticipantId],
    ) {
        let live = live.to_vec();
        self.key_packages.retain(|id, _| live.contains(id));
        let away = away.to_vec();
        tracing::debug!(me = self.committer.me(), ?live, ?away, "roster");
        let actions = self.committer.handle(ms(now), Event::Roster { live, away });
        self.run(now, actions);
    }

    /// A binary server → client frame (KeyPackage, Commit or application entry).
    pub fn handle_binary(&mut self, now: Duration, frame: &[u8]) -> Result<(), MemberError> {
        if ApplicationFrame::is_application(frame) {
            let f = ApplicationFrame::decode(frame)?;
            if f.seq <= self.last_seq {
                self.stats.duplicate_entries += 1;
                return Ok(());
            }
            self.last_seq = f.seq;
            // Chat never drives the group: the committer does not see it.
            self.chat
                .receive(&mut self.group, f.seq, f.from, &f.message);
            return Ok(());
        }
        let frame = ServerFrame::decode(frame)?;
        self.handle_entry(now, frame.into_entry());
        Ok(())
    }

    /// One log entry, in `seq` order. Entries not newer than the last one are ignored
    /// (replays after a reconnect).
    pub fn handle_entry(&mut self, now: Duration, entry: Entry) {
        let seq = entry.seq();
        if seq <= self.last_seq {
            self.stats.duplicate_entries += 1;
            return;
        }
        self.last_seq = seq;
        let t = ms(now);
        let what = match &entry {
            Entry::Joined { id, .. } => format!("joined {id}"),
            Entry::Left { id, .. } => format!("left {id}"),
            Entry::Away { id, .. } => format!("away {id}"),
            Entry::Back { id, from_seq, .. } => format!("back {id} from {from_seq}"),
            Entry::Creator { id, .. } => format!("creator {id}"),
            Entry::KeyPackage { from, .. } => format!("key_package from {from}"),
            Entry::Commit { from, .. } => format!("commit from {from}"),
            Entry::CommitVoid { epoch, from, .. } => format!("commit_void {epoch} from {from}"),
            Entry::Execute { epoch, .. } => format!("execute {epoch}"),
        };
        let actions = match entry {
            Entry::Joined { seq, id } => self.committer.handle(t, Event::Joined { seq, id }),
            Entry::Left { seq, id } => {
                self.key_packages.remove(&id);
                self.committer.handle(t, Event::Left { seq, id })
            }
            Entry::Away { seq, id } => self.committer.handle(t, Event::Away { seq, id }),
            Entry::Back { seq, id, from_seq } => {
                self.committer.handle(t, Event::Back { seq, id, from_seq })
            }
            Entry::Creator { seq, id, group_id } => {
                self.key_packages.clear();
                self.committer
                    .handle(t, Event::Creator { seq, id, group_id })
            }
            Entry::KeyPackage {
                seq,
                from,
                key_package,
            } => match self.group.parse_key_package(from, &key_package) {
                Ok(kp) => {
                    let key = kp.key;
                    if self.committer.live().contains(&from) {
                        self.key_packages.insert(from, (seq, kp));
                    }
                    self.committer
                        .handle(t, Event::KeyPackage { seq, from, key })
                }
                Err(e) => {
                    tracing::debug!(error = %e, from, seq, "KeyPackage dropped");
                    self.stats.invalid_key_packages += 1;
                    Vec::new()
                }
            },
            Entry::Commit {
                seq,
                from,
                commit,
                welcome,
            } => {
                if self.committer.is_terminal() {
                    Vec::new()
                } else {
                    let outcome =
                        self.group
                            .process_commit(from, &commit, &welcome, self.committer.seen());
                    match &outcome {
                        CommitOutcome::Failed | CommitOutcome::Unprocessable { .. } => {
                            self.stats.failed_commits += 1;
                        }
                        CommitOutcome::Refused { .. } => self.stats.refused_epochs += 1,
                        _ => {}
                    }
                    self.committer
                        .handle(t, Event::Commit { seq, from, outcome })
                }
            }
            Entry::CommitVoid { seq, epoch, from } => self
                .committer
                .handle(t, Event::CommitVoid { seq, epoch, from }),
            Entry::Execute { epoch, .. } => {
                self.execute(epoch);
                Vec::new()
            }
        };
        tracing::debug!(
            me = self.committer.me(),
            seq,
            entry = %what,
            ?actions,
            live = ?self.committer.live(),
            away = ?self.committer.away(),
            older = ?self.committer.group().map(|g| &g.older),
            members = ?self.committer.group().map(|g| g.members.keys().collect::<Vec<_>>()),
            kps = ?self.committer.pending_key_packages().iter().map(|k| (k.from, k.seq)).collect::<Vec<_>>(),
            in_flight = self.committer.commit_in_flight(),
            committer = self.committer.is_committer(),
            "entry"
        );
        self.run(now, actions);
    }

    /// The coordinator answered this member's `commit_failed` with error
    /// `not_member` (refused `commit_failed`): the commit stands, others applied
    /// it, this member is out of the group. Resets and re-announces at once
    /// (instead of waiting for the void timeout). Ignored without a pending report.
    pub fn commit_failure_refused(&mut self, now: Duration) {
        if self.committer.reported_failure().is_some() {
            self.reset(now);
        }
    }

    /// Drop the group and all MLS state, and rejoin the group under a fresh identity
    /// (what happens automatically after an unexpected MLS error).
    pub fn reset(&mut self, now: Duration) {
        let actions = self.committer.handle(ms(now), Event::MlsFailure);
        self.run(now, actions);
    }

    /// A timer tick.
    pub fn tick(&mut self, now: Duration) {
        let actions = self.committer.tick(ms(now));
        self.run(now, actions);
        self.decryptor.expire(now);
    }

    /// Encrypt one outgoing encoded frame under the current sending key.
    pub fn encrypt(&mut self, codec: Codec, frame: &[u8]) -> Result<Vec<u8>, EncryptError> {
        self.encryptor.encrypt(codec, frame)
    }

    /// Decrypt one incoming frame from `sender`.
    pub fn decrypt(
        &mut self,
        sender: ParticipantId,
        frame: &[u8],
        now: Duration,
    ) -> Result<Decrypted, DropReason> {
        self.decryptor.decrypt(sender, frame, now)
    }

    /// Like [`Member::decrypt`], through `holdback`: a frame no key opens yet
    /// waits there for the next key instead of being dropped. Appends the
    /// verdicts now due to `out`, in order.
    pub fn receive<T>(
        &mut self,
        holdback: &mut Holdback<T>,
        sender: ParticipantId,
        token: T,
        frame: &[u8],
        now: Duration,
        out: &mut Vec<Verdict<T>>,
    ) {
        holdback.receive(&mut self.decryptor, sender, token, frame, now, out);
    }

    /// Retries `holdback` if a key was installed, and drops what waited too long.
    pub fn poll_held<T>(
        &mut self,
        holdback: &mut Holdback<T>,
        sender: ParticipantId,
        now: Duration,
        out: &mut Vec<Verdict<T>>,
    ) {
        holdback.poll(&mut self.decryptor, sender, now, out);
    }

    fn execute(&mut self, epoch: u64) {
        let Some((e, key)) = self.next_send_key.take_if(|(e, _)| *e == epoch) else {
            return;
        };
        self.encryptor.set_key(e, &key);
        self.events
            .push_back(MemberEvent::SendKeyChanged { epoch: e });
        // Senders that are no longer members: forget their keys.
        let gone: Vec<u64> = self
            .decryptor
            .senders()
            .filter(|s| !self.members.contains(s))
            .collect();
        for s in gone {
            self.decryptor.remove_sender(s);
        }
    }

    fn reset_identity(&mut self, now: Duration, reason: String) -> Vec<Action> {
        self.stats.resets += 1;
        self.lose_group(reason);
        match self.group.reset() {
            Ok(()) => self.committer.rekeyed(ms(now), self.group.key_tag()),
            Err(e) => {
                // Generating a key pair failed: nothing sensible is left to do but
                // wait for the next tick's retry through another failure report.
                tracing::error!(error = %e, "could not generate a fresh identity");
                Vec::new()
            }
        }
    }

    fn lose_group(&mut self, reason: String) {
        self.encryptor.clear_key();
        self.next_send_key = None;
        self.members.clear();
        self.identities.clear();
        self.safety_number = None;
        self.chat.clear_pending();
        self.events.push_back(MemberEvent::GroupLost { reason });
    }

    fn run(&mut self, now: Duration, actions: Vec<Action>) {
        let t = ms(now);
        let mut queue: VecDeque<Action> = actions.into();
        // Every action is finite work; the bound only guards against a logic loop.
        let mut budget = 1_000usize;
        while let Some(action) = queue.pop_front() {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                tracing::error!("committer action loop did not settle");
                break;
            }
            match action {
                Action::AnnounceKeyPackage => match self.group.key_package() {
                    Ok(kp) => self.outbound.push_back(Outbound::Binary(
                        Handshake::KeyPackage(kp).encode_client_frame(),
                    )),
                    Err(e) => tracing::error!(error = %e, "could not build a KeyPackage"),
                },
                Action::ResetIdentity => {
                    queue.extend(self.reset_identity(now, "MLS error: reset".into()));
                }
                Action::CreateGroup { group_id } => {
                    if let Err(e) = self.group.create(&group_id) {
                        tracing::warn!(error = %e, "could not create the group");
                        queue.extend(self.committer.handle(t, Event::MlsFailure));
                    }
                }
                Action::Commit { adds, removes, .. } => {
                    let known = |a: &crate::committer::PendingKeyPackage| {
                        self.key_packages
                            .get(&a.from)
                            .filter(|(seq, _)| *seq == a.seq)
                            .map(|(_, kp)| kp.clone())
                    };
                    if let Some(a) = adds.iter().find(|a| known(a).is_none()) {
                        // We never saw a usable KeyPackage for it; forget it. (One at a
                        // time: the committer plans its next commit without it.)
                        queue.extend(
                            self.committer
                                .handle(t, Event::DropKeyPackage { from: a.from }),
                        );
                        continue;
                    }
                    let kps: Vec<ValidKeyPackage> = adds.iter().filter_map(known).collect();
                    let refs: Vec<&ValidKeyPackage> = kps.iter().collect();
                    let mut built = self.group.commit_adds(&refs, &removes);
                    if built.is_err() && refs.len() > 1 {
                        // A batch that cannot be built: commit the first joiner alone (and
                        // only its own old leaf, if it reset); the rest stays pending for
                        // the next commit, and the one at fault is found then.
                        let keep: Vec<u64> = removes
                            .iter()
                            .copied()
                            .filter(|r| !adds[1..].iter().any(|a| a.from == *r))
                            .collect();
                        tracing::warn!(
                            joiners = refs.len(),
                            "could not build a batched commit; committing the first joiner alone"
                        );
                        built = self.group.commit_adds(&refs[..1], &keep);
                    }
                    match built {
                        Ok((commit, welcome)) => self.outbound.push_back(Outbound::Binary(
                            Handshake::Commit { commit, welcome }.encode_client_frame(),
                        )),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not build a commit");
                            let ev = match adds.first() {
                                Some(a) => {
                                    self.key_packages.remove(&a.from);
                                    Event::DropKeyPackage { from: a.from }
                                }
                                None => Event::MlsFailure,
                            };
                            queue.extend(self.committer.handle(t, ev));
                        }
                    }
                }
                Action::DiscardCommit => self.group.discard_commit(),
                Action::DropGroup => {
                    self.group.drop_group();
                    self.lose_group("left the group".into());
                }
                Action::Ready { epoch } => self.outbound.push_back(Outbound::Ready { epoch }),
                Action::EpochChanged { epoch, members, .. } => {
                    if let Err(e) = self.install_epoch(now, epoch, members) {
                        tracing::warn!(error = %e, "could not derive epoch secrets");
                        queue.extend(self.committer.handle(t, Event::MlsFailure));
                    }
                }
                Action::Rejoin => self.events.push_back(MemberEvent::RejoinRoom),
                Action::ReportCommitFailed { epoch } => {
                    self.stats.reported_commits += 1;
                    self.outbound.push_back(Outbound::CommitFailed { epoch });
                }
                Action::Refused { unknown } => {
                    let mut named = self.group.take_refused();
                    for id in &unknown {
                        if !named.iter().any(|m| m.id == *id) {
                            named.push(MemberIdentity {
                                id: *id,
                                name: String::new(),
                                fingerprint: String::new(),
                            });
                        }
                    }
                    named.retain(|m| unknown.contains(&m.id));
                    // Nothing of this group is trusted any more: no sending key, no
                    // receiving keys (the committer dropped the group just before).
                    self.encryptor.clear_key();
                    self.next_send_key = None;
                    let senders: Vec<u64> = self.decryptor.senders().collect();
                    for s in senders {
                        self.decryptor.remove_sender(s);
                    }
                    tracing::warn!(?unknown, "refused an epoch with members never seen joining");
                    self.alarm = Some(named.clone());
                    self.events.push_back(MemberEvent::Alarm { unknown: named });
                }
            }
        }
    }

    fn install_epoch(
        &mut self,
        now: Duration,
        epoch: u64,
        members: Vec<ParticipantId>,
    ) -> Result<(), GroupError> {
        let secrets = self.group.epoch_secrets()?;
        let me = self.id();
        let mut mine = None;
        for (id, secret) in &secrets.senders {
            let key = BaseSecret::new(*secret);
            if *id == me {
                mine = Some(key);
            } else {
                self.decryptor.install_key(*id, epoch, &key, now);
            }
        }
        if let Some(key) = mine {
            if self.encryptor.epoch().is_none() {
                self.encryptor.set_key(epoch, &key);
                self.next_send_key = None;
                self.events.push_back(MemberEvent::SendKeyChanged { epoch });
            } else {
                self.next_send_key = Some((epoch, key));
            }
        }
        let safety_number = SafetyNumber::from_epoch_authenticator(&secrets.epoch_authenticator)
            .map_err(|e| GroupError::Mls {
                op: "safety number",
                detail: e.to_string(),
            })?;
        self.members = members.clone();
        self.identities = self.group.member_identities();
        self.chat.learn(&self.group);
        self.safety_number = Some(safety_number.clone());
        self.events
            .push_back(MemberEvent::ReceiveKeysChanged { epoch });
        self.events.push_back(MemberEvent::EpochChanged {
            epoch,
            members,
            safety_number,
        });
        Ok(())
    }
}
