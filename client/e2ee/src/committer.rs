//! The designated-committer state machine: ordered room events in, actions out.
//!
//! This module is the *decision logic* of Satsuma's MLS group management and nothing
//! else: it never touches MLS bytes, sockets or clocks. A driver feeds it the
//! coordinator's log entries in `seq` order (see `docs/e2ee-relay.md`), already
//! interpreted by an MLS layer (for a commit entry: "I applied it and it added X and
//! removed Y", "it welcomed me", "not for me", "it failed"), plus timer ticks with the
//! current time in milliseconds. It answers with [`Action`]s for the driver to carry
//! out (announce a KeyPackage, build a commit, send `ready`, drop the group, reset the
//! signing identity, ...).
//!
//! Two drivers use the very same functions: [`crate::member::Member`] (backed by
//! openmls) and the stateright model in `tests/model_committer.rs` (backed by an
//! abstract group), so what the model checks is what ships.
//!
//! # Rules
//!
//! * Only the participant the coordinator names in a `creator` entry creates a group;
//!   everybody else waits and announces a KeyPackage. A `creator` entry discards every
//!   older group and every KeyPackage logged before it: non-creators re-announce.
//! * The committer is the *oldest surviving member in welcome order*. Each member
//!   remembers who was already in the group when it was welcomed (`older`); it is the
//!   committer when all of those have left the room or are rejoining (they announced a
//!   KeyPackage under a new signature key). Removed members drop out of `older`, so a
//!   member that is removed and re-added becomes the youngest. Joiners welcomed by one
//!   commit (a batch) are ordered by their KeyPackages' log positions (the order the
//!   committer adds them in): without that, each would count the others as older and
//!   none would commit once every member older than the batch is gone.
//! * **Away members are skipped.** The coordinator logs `away {id}` when a
//!   participant's connection ends without a leave (a crashed page, a network loss)
//!   and `back {id}` when it resumes; the snapshot at connect says who is away now
//!   ([`Event::Roster`]). An away member does not count as an active older member, so
//!   while the committer is away the next oldest commits (a join is not held up for
//!   the away member's 15 s presence timeout). An away member is *not* removed from
//!   the group: it resumes and catches up from the log, and its `left` ends it as
//!   usual. A participant that reads `away` about itself (in its resume replay) does
//!   not commit until its `back`, so at every log position all participants agree on
//!   who the committer is. Safety does not rest on this: a committer that comes back
//!   with a commit in flight loses the race for that epoch (the coordinator logs only
//!   the first commit per epoch) and its commit is superseded.
//! * Every participant tracks the pending work (KeyPackages in arrival order, departed
//!   members), so a successor finishes what a departed committer started.
//! * The committer commits as soon as there is work and no commit of its own is in
//!   flight, and puts **all** of its pending work into that one commit: every
//!   KeyPackage waiting (in arrival order) and the removal of every departed member
//!   (Commit and Welcome travel in one log entry). So a KeyPackage is committed at
//!   once, joins are batched only when they arrived together (while the previous
//!   commit was in flight), and a departed member's removal never delays a join: it
//!   rides in the join's commit instead of going first in a commit of its own. The
//!   removals still take effect no later than the adds, so a joiner is never welcomed
//!   into a group that still holds the leaf of somebody who left before the joiner
//!   arrived: the joiner never saw that participant join and would refuse the epoch
//!   (see the roster check below); the Welcome's group is the group *after* the
//!   commit, without them. A KeyPackage from a participant already in the group under
//!   a *different* signature key means that participant reset: its old leaf is
//!   removed and the new KeyPackage added in the same commit. A KeyPackage under the
//!   *same* key as its leaf is a stale duplicate and ignored.
//! * **Roster check.** Every participant remembers whom it has seen join the room
//!   (the roster at connect and every later `joined`; participants that left stay in
//!   this set). The MLS layer refuses, before merging, any commit or Welcome whose
//!   resulting member set contains anybody else ([`CommitOutcome::Refused`]): a
//!   coordinator that shows a participant to the committer only cannot slip it into
//!   everybody else's group. A refusal is terminal ([`Phase::Refused`]): the group is
//!   dropped, no KeyPackage is announced again, and [`Action::Refused`] names the
//!   unknown members for an alarm.
//! * **A commit I cannot process.** A commit for my current epoch that fails
//!   ([`CommitOutcome::Unprocessable`]) leaves the group and keys as they are: the
//!   participant reports it ([`Action::ReportCommitFailed`], `commit_failed {epoch}`)
//!   and commits nothing until the coordinator voids that commit (`commit_void`,
//!   [`Event::CommitVoid`]) or [`Config::void_timeout_ms`] passes (then it resets).
//!   On `commit_void {epoch: E}` a participant that is past E (it applied the voided
//!   commit, or joined from its Welcome) resets; one still at E carries on. A commit
//!   for a future epoch (I am behind) resets at once.
//! * One commit in flight at a time; the coordinator logs only the first commit per
//!   epoch, so a commit that lost the race is simply superseded by the winner.
//! * A joiner that is not welcomed within [`Config::welcome_timeout_ms`] re-announces.
//!   A member that sees its own `left` stops and asks to rejoin the room; a member hit
//!   by any other unexpected MLS failure, or removed from the group, drops the group
//!   and re-announces (after a failure under a fresh signature key).

use std::collections::{BTreeMap, BTreeSet};

/// A participant id, assigned by the coordinator; also the MLS credential identity.
pub type ParticipantId = u64;

/// A short fingerprint of the signature key behind a KeyPackage or a group leaf
/// (first 8 bytes of the Ed25519 public key in the openmls driver). Two KeyPackages
/// of one participant with the same tag come from the same, un-reset identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyTag(pub u64);

/// Timers of the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// A joiner not welcomed this long after announcing re-announces a KeyPackage.
    pub welcome_timeout_ms: u64,
    /// A commit not seen in the log this long after it was sent is given up.
    pub commit_timeout_ms: u64,
    /// A reported commit failure (`commit_failed`) not answered by `commit_void`
    /// this long after it was reported: the others applied the commit, so this
    /// participant resets and rejoins the group.
    pub void_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            welcome_timeout_ms: 10_000,
            commit_timeout_ms: 30_000,
            void_timeout_ms: 5_000,
        }
    }
}

/// A KeyPackage announced in the log that has not been consumed yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PendingKeyPackage {
    /// Who announced it.
    pub from: ParticipantId,
    /// Its signature key fingerprint.
    pub key: KeyTag,
    /// The log position of the announcement.
    pub seq: u64,
}

/// The abstract view of the MLS group this participant is a member of.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupView {
    /// The group id named by the coordinator's `creator` entry.
    pub group_id: Vec<u8>,
    /// The current MLS epoch.
    pub epoch: u64,
    /// Members and the key fingerprint of their leaf.
    pub members: BTreeMap<ParticipantId, KeyTag>,
    /// Members that were already in the group when this participant was welcomed
    /// and have not been removed since.
    pub older: BTreeSet<ParticipantId>,
}

/// Where this participant stands.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// In the room, not in a group; `announced_at` is when the last KeyPackage went out.
    Joining {
        /// Time (ms) of the last announcement, `None` before the first one.
        announced_at: Option<u64>,
    },
    /// A group member.
    Member(GroupView),
    /// This participant saw its own `left`: it is out of the room and must rejoin as a
    /// new participant. Terminal.
    Detached,
    /// This participant refused an epoch whose member set contains participants it
    /// never saw join the room (`unknown`). It dropped the group and does nothing
    /// more: somebody (the coordinator, or the committer) tried to add a member
    /// behind the others' backs. Terminal.
    Refused {
        /// The members nobody showed this participant.
        unknown: Vec<ParticipantId>,
    },
}

/// What the MLS layer made of a `commit` log entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CommitOutcome {
    /// I am a member, processed the commit (someone else's, or merged my own) and am
    /// still a member at `epoch` (the new epoch).
    Applied {
        /// The epoch after the commit.
        epoch: u64,
        /// Added participants and their key fingerprints.
        adds: Vec<(ParticipantId, KeyTag)>,
        /// Participants whose leaf was removed.
        removes: Vec<ParticipantId>,
    },
    /// I joined from the Welcome carried by the entry (possibly right after being
    /// removed by the same commit).
    Welcomed {
        /// The group id.
        group_id: Vec<u8>,
        /// The epoch joined.
        epoch: u64,
        /// The full member list of the new epoch.
        members: BTreeMap<ParticipantId, KeyTag>,
    },
    /// The commit removed me and its Welcome (if any) was not for me.
    RemovedMe,
    /// Not a member of this group and the Welcome (if any) was not for me.
    NotForMe,
    /// A commit for an epoch I already left behind (ignored).
    Stale,
    /// The resulting epoch (the group after the commit, or the group a Welcome for
    /// me joins) has members I never saw join the room: refused before merging,
    /// nothing applied.
    Refused {
        /// The members I never saw join.
        unknown: Vec<ParticipantId>,
    },
    /// A commit for my current epoch `epoch` could not be processed (invalid,
    /// malformed, or by somebody else's hand); my group is unchanged.
    Unprocessable {
        /// My current epoch (the epoch the commit claims to be created in).
        epoch: u64,
    },
    /// Processing failed unexpectedly (the driver must not have changed its group),
    /// or the commit is for a future epoch (I am behind): reset.
    Failed,
}

/// An input to the state machine. Log entries carry their `seq`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// The live participants of the room, as of the driver's first log position
    /// (from the coordinator's room snapshot on connect).
    Roster {
        /// Live participant ids.
        live: Vec<ParticipantId>,
        /// Those of them whose connection is away (the snapshot's `away` flags).
        away: Vec<ParticipantId>,
    },
    /// `joined {id}`.
    Joined {
        /// Log position.
        seq: u64,
        /// Who joined.
        id: ParticipantId,
    },
    /// `left {id}`.
    Left {
        /// Log position.
        seq: u64,
        /// Who left.
        id: ParticipantId,
    },
    /// `away {id}`: `id`'s connection ended without a leave; it may resume.
    Away {
        /// Log position.
        seq: u64,
        /// Whose connection ended.
        id: ParticipantId,
    },
    /// `back {id, from_seq}`: `id` resumed after an `away`; its replay started
    /// after `from_seq` (the last entry it had processed on the connection that ended).
    Back {
        /// Log position.
        seq: u64,
        /// Who resumed.
        id: ParticipantId,
        /// The resume point: `id` had processed the log up to here.
        from_seq: u64,
    },
    /// `creator {id, group_id}`.
    Creator {
        /// Log position.
        seq: u64,
        /// The named creator.
        id: ParticipantId,
        /// The new group's id.
        group_id: Vec<u8>,
    },
    /// A valid `key_package` entry (invalid ones are dropped by the driver).
    KeyPackage {
        /// Log position.
        seq: u64,
        /// Who announced it.
        from: ParticipantId,
        /// Its signature key fingerprint.
        key: KeyTag,
    },
    /// `commit_void {epoch, from}`: the coordinator voided the commit `from` made
    /// at `epoch` (a member reported it could not process it); the room is back at
    /// `epoch`.
    CommitVoid {
        /// Log position.
        seq: u64,
        /// The epoch the voided commit was created in.
        epoch: u64,
        /// Its sender.
        from: ParticipantId,
    },
    /// A `commit` entry, as interpreted by the MLS layer.
    Commit {
        /// Log position.
        seq: u64,
        /// Who committed.
        from: ParticipantId,
        /// What processing it did.
        outcome: CommitOutcome,
    },
    /// Some other MLS operation failed unexpectedly (e.g. building a commit).
    MlsFailure,
    /// The driver could not use `from`'s KeyPackage in a commit (e.g. it expired):
    /// forget it; its sender re-announces after its welcome timeout.
    DropKeyPackage {
        /// Whose KeyPackage.
        from: ParticipantId,
    },
}

impl Event {
    /// The log position of a log entry event (`None` for the others).
    pub fn seq(&self) -> Option<u64> {
        match self {
            Event::Joined { seq, .. }
            | Event::Left { seq, .. }
            | Event::Away { seq, .. }
            | Event::Back { seq, .. }
            | Event::Creator { seq, .. }
            | Event::KeyPackage { seq, .. }
            | Event::CommitVoid { seq, .. }
            | Event::Commit { seq, .. } => Some(*seq),
            Event::Roster { .. } | Event::MlsFailure | Event::DropKeyPackage { .. } => None,
        }
    }
}

/// What the driver must do. Execute in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Build a KeyPackage under the current signature key and send it (binary kind 1).
    AnnounceKeyPackage,
    /// Forget the group and every pending commit, generate a new signature key, then
    /// call [`Committer::rekeyed`] with its fingerprint (which announces it).
    ResetIdentity,
    /// Create a new MLS group with this id at epoch 0 (I am its only member).
    CreateGroup {
        /// Group id from the `creator` entry.
        group_id: Vec<u8>,
    },
    /// Build a commit at `epoch` and send it with its Welcome (binary kind 2).
    Commit {
        /// The epoch the commit is created in.
        epoch: u64,
        /// Add these KeyPackages (in arrival order, one per participant); a sender
        /// that is already a member has its old leaf listed in `removes` too. A driver
        /// that cannot build the commit with all of them may leave out all but the
        /// first: the others stay pending and go into the next commit.
        adds: Vec<PendingKeyPackage>,
        /// Remove these members' leaves.
        removes: Vec<ParticipantId>,
    },
    /// The last commit was not seen in the log in time: forget it.
    DiscardCommit,
    /// Forget the current group (a newer group replaced it, or I was removed).
    DropGroup,
    /// Tell the coordinator `ready {epoch}`.
    Ready {
        /// The epoch now reached.
        epoch: u64,
    },
    /// The group moved to a new epoch (new media keys, new safety number).
    EpochChanged {
        /// The group id.
        group_id: Vec<u8>,
        /// The new epoch.
        epoch: u64,
        /// Members in the new epoch.
        members: Vec<ParticipantId>,
    },
    /// I saw my own `left`: reconnect to the room as a new participant.
    Rejoin,
    /// Tell the coordinator `commit_failed {epoch}`: the commit logged for my
    /// current epoch `epoch` could not be processed.
    ReportCommitFailed {
        /// My current epoch.
        epoch: u64,
    },
    /// I refused an epoch with members I never saw join: raise the alarm.
    Refused {
        /// Those members.
        unknown: Vec<ParticipantId>,
    },
}

/// A commit that was sent and not yet seen in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct InFlight {
    epoch: u64,
    sent_at: u64,
    /// The last log position processed when it was built.
    built_after: u64,
}

/// The designated-committer state machine of one participant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Committer {
    me: ParticipantId,
    key: KeyTag,
    config: Config,
    live: BTreeSet<ParticipantId>,
    /// Live participants whose connection is away (`away` without a `back` yet).
    away: BTreeSet<ParticipantId>,
    /// Unconsumed KeyPackages, one per participant, in arrival order.
    key_packages: Vec<PendingKeyPackage>,
    phase: Phase,
    in_flight: Option<InFlight>,
    /// Whether this participant saw its own `joined` or a roster listing it.
    in_room: bool,
    /// Everybody this participant saw join the room (roster at connect, `joined`
    /// entries, itself), including those that left since.
    seen: BTreeSet<ParticipantId>,
    /// A commit failure reported for this epoch at this time, not resolved yet.
    reported: Option<(u64, u64)>,
    /// The highest log position processed.
    last_seq: u64,
    /// `last_seq` when the latest KeyPackage was announced.
    announced_after: u64,
}

impl Committer {
    /// A participant `me` whose current signature key has fingerprint `key`.
    pub fn new(me: ParticipantId, key: KeyTag, config: Config) -> Self {
        Self {
            me,
            key,
            config,
            live: BTreeSet::new(),
            away: BTreeSet::new(),
            key_packages: Vec::new(),
            phase: Phase::Joining { announced_at: None },
            in_flight: None,
            in_room: false,
            seen: [me].into_iter().collect(),
            reported: None,
            last_seq: 0,
            announced_after: 0,
        }
    }

    /// This participant's id.
    pub fn me(&self) -> ParticipantId {
        self.me
    }

    /// The current signature key fingerprint.
    pub fn key(&self) -> KeyTag {
        self.key
    }

    /// Where this participant stands.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The group view if a member.
    pub fn group(&self) -> Option<&GroupView> {
        match &self.phase {
            Phase::Member(g) => Some(g),
            _ => None,
        }
    }

    /// Live participants of the room as far as the log told us.
    pub fn live(&self) -> &BTreeSet<ParticipantId> {
        &self.live
    }

    /// Live participants whose connection is away (logged `away`, no `back` yet).
    pub fn away(&self) -> &BTreeSet<ParticipantId> {
        &self.away
    }

    /// Everybody seen join the room (including those that left since): the only
    /// participants an epoch may contain.
    pub fn seen(&self) -> &BTreeSet<ParticipantId> {
        &self.seen
    }

    /// The epoch of a reported, unresolved commit failure.
    pub fn reported_failure(&self) -> Option<u64> {
        self.reported.map(|(e, _)| e)
    }

    /// Unconsumed KeyPackages in arrival order.
    pub fn pending_key_packages(&self) -> &[PendingKeyPackage] {
        &self.key_packages
    }

    /// Whether a commit is in flight.
    pub fn commit_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Feed one event; returns the actions to carry out, in order.
    pub fn handle(&mut self, now: u64, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if self.is_terminal() {
            return out;
        }
        if let Some(seq) = event.seq() {
            self.last_seq = self.last_seq.max(seq);
        }
        match event {
            Event::Roster { live, away } => {
                self.seen.extend(live.iter().copied());
                self.live = live.into_iter().collect();
                let live = &self.live;
                self.away = away.into_iter().filter(|id| live.contains(id)).collect();
                if self.live.contains(&self.me) {
                    self.in_room = true;
                }
                let live = &self.live;
                self.key_packages.retain(|k| live.contains(&k.from));
            }
            Event::Joined { id, .. } => {
                self.live.insert(id);
                self.seen.insert(id);
                if id == self.me {
                    self.in_room = true;
                }
            }
            Event::Left { id, .. } => {
                if id == self.me {
                    if self.group().is_some() {
                        out.push(Action::DropGroup);
                    }
                    self.phase = Phase::Detached;
                    self.in_flight = None;
                    out.push(Action::Rejoin);
                    return out;
                }
                self.live.remove(&id);
                self.away.remove(&id);
                self.key_packages.retain(|k| k.from != id);
            }
            Event::Away { id, .. } => {
                if self.live.contains(&id) {
                    self.away.insert(id);
                }
            }
            Event::Back { id, from_seq, .. } => {
                self.away.remove(&id);
                if id == self.me
                    && let Some(f) = self.in_flight
                    && f.built_after <= from_seq
                {
                    // Built before my connection ended and not in the log before my
                    // `away` (everything the coordinator received from that
                    // connection is logged before it): it was lost with the
                    // connection (or refused). Commit again now instead of waiting
                    // for the commit timeout.
                    self.in_flight = None;
                    out.push(Action::DiscardCommit);
                }
                if id == self.me
                    && matches!(
                        self.phase,
                        Phase::Joining {
                            announced_at: Some(_)
                        }
                    )
                    && self.announced_after <= from_seq
                    && !self
                        .key_packages
                        .iter()
                        .any(|k| k.from == self.me && k.key == self.key)
                {
                    // Likewise a KeyPackage announced before my connection ended that
                    // is not in the log: announce again now, not after the welcome
                    // timeout.
                    self.phase = Phase::Joining { announced_at: None };
                }
            }
            Event::Creator { id, group_id, .. } => {
                self.key_packages.clear();
                self.in_flight = None;
                self.reported = None;
                if self.group().is_some() {
                    out.push(Action::DropGroup);
                }
                if id == self.me {
                    self.in_room = true;
                    self.live.insert(id);
                    let mut members = BTreeMap::new();
                    members.insert(self.me, self.key);
                    out.push(Action::CreateGroup {
                        group_id: group_id.clone(),
                    });
                    self.enter_group(group_id, 0, members, &mut out);
                } else {
                    self.phase = Phase::Joining { announced_at: None };
                }
            }
            Event::KeyPackage { seq, from, key } => {
                if self.live.contains(&from) {
                    self.key_packages.retain(|k| k.from != from);
                    self.key_packages.push(PendingKeyPackage { from, key, seq });
                    self.prune_consumed();
                }
            }
            Event::Commit { outcome, .. } => self.on_commit(now, outcome, &mut out),
            Event::CommitVoid { epoch, from, .. } => {
                if let Phase::Member(g) = &self.phase {
                    if g.epoch > epoch || (from == self.me && g.epoch == epoch) {
                        // I applied the voided commit (or joined from its Welcome),
                        // or it was mine: that epoch no longer exists.
                        self.fail(&mut out);
                        return out;
                    }
                    if g.epoch == epoch {
                        // The room is back at my epoch: carry on.
                        self.reported = None;
                        self.in_flight = None;
                    }
                }
            }
            Event::MlsFailure => {
                self.fail(&mut out);
                return out;
            }
            Event::DropKeyPackage { from } => {
                self.in_flight = None;
                self.key_packages.retain(|k| k.from != from);
            }
        }
        self.plan(now, &mut out);
        out
    }

    /// A timer tick: re-announce when not welcomed in time, give up a lost commit.
    pub fn tick(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        match &self.phase {
            Phase::Joining {
                announced_at: Some(at),
            } if self.in_room && now.saturating_sub(*at) >= self.config.welcome_timeout_ms => {
                self.phase = Phase::Joining {
                    announced_at: Some(now),
                };
                self.announced_after = self.last_seq;
                out.push(Action::AnnounceKeyPackage);
            }
            Phase::Member(_) => {
                if let Some((_, at)) = self.reported
                    && now.saturating_sub(at) >= self.config.void_timeout_ms
                {
                    // Nobody voided the commit I could not process: the others
                    // applied it. Rejoin the group under a fresh key.
                    self.fail(&mut out);
                    return out;
                }
                if let Some(f) = self.in_flight
                    && now.saturating_sub(f.sent_at) >= self.config.commit_timeout_ms
                {
                    self.in_flight = None;
                    out.push(Action::DiscardCommit);
                }
            }
            _ => {}
        }
        self.plan(now, &mut out);
        out
    }

    /// The driver generated a new signature key after [`Action::ResetIdentity`].
    pub fn rekeyed(&mut self, now: u64, key: KeyTag) -> Vec<Action> {
        let mut out = Vec::new();
        if self.is_terminal() {
            return out;
        }
        self.key = key;
        self.phase = Phase::Joining { announced_at: None };
        self.in_flight = None;
        self.plan(now, &mut out);
        out
    }

    /// Whether this participant stopped for good (saw its own `left`, or refused an
    /// epoch).
    pub fn is_terminal(&self) -> bool {
        matches!(self.phase, Phase::Detached | Phase::Refused { .. })
    }

    /// Whether this participant is the designated committer right now.
    pub fn is_committer(&self) -> bool {
        match &self.phase {
            Phase::Member(g) => g.older.iter().all(|o| !self.is_active_member(g, *o)),
            _ => false,
        }
    }

    /// Whether `id` is a member that still acts as one: in the room with its
    /// connection up (not away), and not rejoining under a new key.
    fn is_active_member(&self, g: &GroupView, id: ParticipantId) -> bool {
        match g.members.get(&id) {
            None => false,
            Some(key) => {
                self.live.contains(&id) && !self.away.contains(&id) && !self.is_rejoining(id, *key)
            }
        }
    }

    fn is_rejoining(&self, id: ParticipantId, leaf_key: KeyTag) -> bool {
        self.key_packages
            .iter()
            .any(|k| k.from == id && k.key != leaf_key)
    }

    /// The work the committer has to do: adds (arrival order) and the removals of
    /// departed members, all of it for the next commit. Every participant can compute it.
    pub fn pending_work(&self) -> (Vec<PendingKeyPackage>, Vec<ParticipantId>) {
        let Phase::Member(g) = &self.phase else {
            return (Vec::new(), Vec::new());
        };
        let adds = self
            .key_packages
            .iter()
            .filter(|k| {
                k.from != self.me
                    && self.live.contains(&k.from)
                    && g.members.get(&k.from) != Some(&k.key)
            })
            .copied()
            .collect();
        let removes = g
            .members
            .keys()
            .filter(|id| **id != self.me && !self.live.contains(id))
            .copied()
            .collect();
        (adds, removes)
    }

    fn plan(&mut self, now: u64, out: &mut Vec<Action>) {
        match &self.phase {
            Phase::Detached | Phase::Refused { .. } => {}
            Phase::Joining { announced_at } => {
                if announced_at.is_none() && self.in_room && self.live.contains(&self.me) {
                    self.phase = Phase::Joining {
                        announced_at: Some(now),
                    };
                    self.announced_after = self.last_seq;
                    out.push(Action::AnnounceKeyPackage);
                }
            }
            Phase::Member(g) => {
                if self.in_flight.is_some()
                    || self.reported.is_some()
                    || self.away.contains(&self.me)
                    || !self.is_committer()
                {
                    return;
                }
                let epoch = g.epoch;
                let (adds, mut removes) = self.pending_work();
                if adds.is_empty() && removes.is_empty() {
                    return;
                }
                // All of it in one commit: the joiners at once, and the departed
                // members' removals with them (never a commit of its own first, which
                // would make the joiners wait a round trip). The Welcome's group is the
                // group after the removals, so a joiner never finds somebody in it who
                // left before it arrived. A joiner that is a member under an older key
                // reset: its old leaf goes in the same commit.
                removes.extend(
                    adds.iter()
                        .filter(|a| g.members.contains_key(&a.from))
                        .map(|a| a.from),
                );
                let action = Action::Commit {
                    epoch,
                    adds,
                    removes,
                };
                self.in_flight = Some(InFlight {
                    epoch,
                    sent_at: now,
                    built_after: self.last_seq,
                });
                out.push(action);
            }
        }
    }

    fn enter_group(
        &mut self,
        group_id: Vec<u8>,
        epoch: u64,
        members: BTreeMap<ParticipantId, KeyTag>,
        out: &mut Vec<Action>,
    ) {
        // Who was welcomed by the same commit as me (a batch of joins) must not count as
        // older on both sides, or two co-joiners wait for each other for good once every
        // member older than the batch is gone. Within a batch the welcome order is the
        // KeyPackage order (the committer adds them in arrival order): a member whose
        // pending KeyPackage (under its leaf key) was logged after mine is younger. Every
        // co-joiner agrees: the one with the later KeyPackage saw the earlier one (or
        // joined the room after it, and then counts it as older anyway).
        let mine = self
            .key_packages
            .iter()
            .find(|k| k.from == self.me && k.key == self.key)
            .map(|k| k.seq);
        let older = members
            .iter()
            .filter(|(id, key)| {
                **id != self.me
                    && !mine.is_some_and(|mine| {
                        self.key_packages
                            .iter()
                            .any(|k| k.from == **id && k.key == **key && k.seq > mine)
                    })
            })
            .map(|(id, _)| *id)
            .collect();
        let list = members.keys().copied().collect();
        self.phase = Phase::Member(GroupView {
            group_id: group_id.clone(),
            epoch,
            members,
            older,
        });
        self.in_flight = None;
        self.reported = None;
        self.prune_consumed();
        out.push(Action::Ready { epoch });
        out.push(Action::EpochChanged {
            group_id,
            epoch,
            members: list,
        });
    }

    fn on_commit(&mut self, now: u64, outcome: CommitOutcome, out: &mut Vec<Action>) {
        match outcome {
            CommitOutcome::Applied {
                epoch,
                adds,
                removes,
            } => {
                let Phase::Member(g) = &mut self.phase else {
                    // The driver applied a commit we do not know a group for.
                    self.fail(out);
                    return;
                };
                for id in &removes {
                    g.members.remove(id);
                    g.older.remove(id);
                }
                for (id, key) in &adds {
                    g.members.insert(*id, *key);
                }
                g.epoch = epoch;
                let group_id = g.group_id.clone();
                let list = g.members.keys().copied().collect();
                self.in_flight = None;
                self.reported = None;
                self.prune_consumed();
                out.push(Action::Ready { epoch });
                out.push(Action::EpochChanged {
                    group_id,
                    epoch,
                    members: list,
                });
            }
            CommitOutcome::Welcomed {
                group_id,
                epoch,
                members,
            } => {
                if !members.contains_key(&self.me) {
                    self.fail(out);
                    return;
                }
                // The MLS layer already replaced any old group with the new one.
                self.enter_group(group_id, epoch, members, out);
            }
            CommitOutcome::RemovedMe => {
                if self.group().is_some() {
                    out.push(Action::DropGroup);
                }
                self.in_flight = None;
                self.reported = None;
                self.phase = Phase::Joining { announced_at: None };
            }
            CommitOutcome::NotForMe | CommitOutcome::Stale => {}
            CommitOutcome::Refused { unknown } => {
                if self.group().is_some() {
                    out.push(Action::DropGroup);
                }
                self.in_flight = None;
                self.reported = None;
                self.key_packages.clear();
                self.phase = Phase::Refused {
                    unknown: unknown.clone(),
                };
                out.push(Action::Refused { unknown });
            }
            CommitOutcome::Unprocessable { epoch } => match &self.phase {
                Phase::Member(g) if g.epoch == epoch => {
                    // Whatever I had in flight lost: the log holds another commit
                    // for this epoch. Report it once and wait for the verdict.
                    self.in_flight = None;
                    if self.reported.is_none() {
                        self.reported = Some((epoch, now));
                        out.push(Action::ReportCommitFailed { epoch });
                    }
                }
                _ => self.fail(out),
            },
            CommitOutcome::Failed => self.fail(out),
        }
    }

    fn fail(&mut self, out: &mut Vec<Action>) {
        self.in_flight = None;
        self.reported = None;
        self.phase = Phase::Joining { announced_at: None };
        out.push(Action::ResetIdentity);
    }

    /// Forget KeyPackages whose key already sits in the group.
    fn prune_consumed(&mut self) {
        if let Phase::Member(g) = &self.phase {
            let members = &g.members;
            self.key_packages
                .retain(|k| members.get(&k.from) != Some(&k.key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(me: u64) -> Committer {
        Committer::new(me, KeyTag(me * 100), Config::default())
    }

    #[test]
    fn creator_creates_and_others_announce() {
        let mut a = c(1);
        let out = a.handle(0, Event::Joined { seq: 1, id: 1 });
        assert_eq!(out, vec![Action::AnnounceKeyPackage]);
        let out = a.handle(
            0,
            Event::Creator {
                seq: 2,
                id: 1,
                group_id: vec![7],
            },
        );
        assert!(out.contains(&Action::CreateGroup { group_id: vec![7] }));
        assert!(a.is_committer());
        // Its own stale KeyPackage (same key) is ignored.
        let out = a.handle(
            0,
            Event::KeyPackage {
                seq: 3,
                from: 1,
                key: KeyTag(100),
            },
        );
        assert!(out.is_empty());
        a.handle(0, Event::Joined { seq: 4, id: 2 });
        let out = a.handle(
            0,
            Event::KeyPackage {
                seq: 5,
                from: 2,
                key: KeyTag(200),
            },
        );
        assert_eq!(
            out,
            vec![Action::Commit {
                epoch: 0,
                adds: vec![PendingKeyPackage {
                    from: 2,
                    key: KeyTag(200),
                    seq: 5
                }],
                removes: vec![]
            }]
        );
    }

    #[test]
    fn successor_takes_over_and_removes_in_one_batch() {
        let mut b = c(2);
        b.handle(
            0,
            Event::Roster {
                live: vec![1, 3],
                away: vec![],
            },
        );
        b.handle(0, Event::Joined { seq: 5, id: 2 });
        let mut members = BTreeMap::new();
        members.insert(1, KeyTag(100));
        members.insert(3, KeyTag(300));
        members.insert(2, KeyTag(200));
        let out = b.handle(
            0,
            Event::Commit {
                seq: 7,
                from: 1,
                outcome: CommitOutcome::Welcomed {
                    group_id: vec![1],
                    epoch: 3,
                    members,
                },
            },
        );
        assert!(out.contains(&Action::Ready { epoch: 3 }));
        assert!(!b.is_committer());
        b.handle(0, Event::Left { seq: 8, id: 1 });
        assert!(!b.is_committer(), "3 is older and alive");
        let out = b.handle(0, Event::Left { seq: 9, id: 3 });
        assert!(b.is_committer());
        assert_eq!(
            out,
            vec![Action::Commit {
                epoch: 3,
                adds: vec![],
                removes: vec![1, 3]
            }]
        );
    }

    /// Three joiners welcomed by one commit (a batch): once the members older than the
    /// batch are gone, exactly one of them (the first KeyPackage) is the committer, not
    /// none (each counting the others as older would stall every later join).
    #[test]
    fn joiners_welcomed_together_agree_on_one_committer() {
        let mut members = BTreeMap::new();
        for id in [1, 4, 5, 6] {
            members.insert(id, KeyTag(id * 100));
        }
        let mut joiners: Vec<Committer> = [4, 5, 6]
            .into_iter()
            .map(|me| {
                let mut j = c(me);
                // The room at connect: 1 and the joiners before me (and me).
                let live = [1, 4, 5, 6].into_iter().filter(|id| *id <= me).collect();
                j.handle(0, Event::Roster { live, away: vec![] });
                j
            })
            .collect();
        // Joined and KeyPackage entries in log order; each joiner sees those after its own
        // joined (a joiner's roster covers those already in the room).
        let log = [
            Event::Joined { seq: 10, id: 4 },
            kp(11, 4),
            Event::Joined { seq: 12, id: 5 },
            kp(13, 5),
            Event::Joined { seq: 14, id: 6 },
            kp(15, 6),
        ];
        for j in &mut joiners {
            let me = j.me();
            let mine = |e: &&Event| matches!(e, Event::Joined { id, .. } if *id == me);
            for e in log.iter().skip_while(|e| !mine(e)) {
                j.handle(0, e.clone());
            }
            j.handle(
                0,
                Event::Commit {
                    seq: 16,
                    from: 1,
                    outcome: CommitOutcome::Welcomed {
                        group_id: vec![1],
                        epoch: 3,
                        members: members.clone(),
                    },
                },
            );
            assert!(!j.is_committer(), "1 is older than the whole batch");
        }
        for j in &mut joiners {
            j.handle(0, Event::Left { seq: 17, id: 1 });
        }
        let committers: Vec<u64> = joiners
            .iter()
            .filter(|j| j.is_committer())
            .map(Committer::me)
            .collect();
        assert_eq!(
            committers,
            vec![4],
            "the first KeyPackage of the batch commits"
        );
        // Once 4 leaves too, 5 (the next KeyPackage) takes over, and only 5.
        for j in &mut joiners[1..] {
            j.handle(0, Event::Left { seq: 18, id: 4 });
        }
        let committers: Vec<u64> = joiners[1..]
            .iter()
            .filter(|j| j.is_committer())
            .map(Committer::me)
            .collect();
        assert_eq!(committers, vec![5]);
    }

    #[test]
    fn own_leave_detaches_and_failure_resets() {
        let mut a = c(1);
        a.handle(0, Event::Joined { seq: 1, id: 1 });
        let out = a.handle(0, Event::MlsFailure);
        assert_eq!(out, vec![Action::ResetIdentity]);
        let out = a.rekeyed(5, KeyTag(101));
        assert_eq!(out, vec![Action::AnnounceKeyPackage]);
        let out = a.handle(6, Event::Left { seq: 2, id: 1 });
        assert_eq!(out, vec![Action::Rejoin]);
        assert_eq!(a.phase(), &Phase::Detached);
        assert!(a.handle(7, Event::Joined { seq: 3, id: 9 }).is_empty());
    }

    #[test]
    fn joiner_reannounces_after_timeout() {
        let mut j = c(4);
        j.handle(100, Event::Joined { seq: 1, id: 4 });
        assert!(j.tick(5_000).is_empty());
        assert_eq!(j.tick(10_100), vec![Action::AnnounceKeyPackage]);
        assert!(j.tick(10_200).is_empty());
    }

    #[test]
    fn reset_member_is_removed_and_readded() {
        let mut a = c(1);
        a.handle(0, Event::Joined { seq: 1, id: 1 });
        a.handle(
            0,
            Event::Creator {
                seq: 2,
                id: 1,
                group_id: vec![1],
            },
        );
        a.handle(0, Event::Joined { seq: 3, id: 2 });
        a.handle(
            0,
            Event::KeyPackage {
                seq: 4,
                from: 2,
                key: KeyTag(200),
            },
        );
        a.handle(
            0,
            Event::Commit {
                seq: 5,
                from: 1,
                outcome: CommitOutcome::Applied {
                    epoch: 1,
                    adds: vec![(2, KeyTag(200))],
                    removes: vec![],
                },
            },
        );
        assert!(!a.commit_in_flight());
        let out = a.handle(
            0,
            Event::KeyPackage {
                seq: 6,
                from: 2,
                key: KeyTag(201),
            },
        );
        assert_eq!(
            out,
            vec![Action::Commit {
                epoch: 1,
                adds: vec![PendingKeyPackage {
                    from: 2,
                    key: KeyTag(201),
                    seq: 6
                }],
                removes: vec![2]
            }]
        );
    }

    fn member_at(me: u64, others: &[u64], epoch: u64) -> Committer {
        let mut c = c(me);
        let mut live = others.to_vec();
        live.push(me);
        c.handle(0, Event::Roster { live, away: vec![] });
        let mut members = BTreeMap::new();
        for id in others.iter().chain([&me]) {
            members.insert(*id, KeyTag(*id * 100));
        }
        c.handle(
            0,
            Event::Commit {
                seq: 1,
                from: others.first().copied().unwrap_or(me),
                outcome: CommitOutcome::Welcomed {
                    group_id: vec![1],
                    epoch,
                    members,
                },
            },
        );
        c
    }

    fn kp(seq: u64, from: u64) -> Event {
        Event::KeyPackage {
            seq,
            from,
            key: KeyTag(from * 100),
        }
    }

    fn pending(seq: u64, from: u64) -> PendingKeyPackage {
        PendingKeyPackage {
            from,
            key: KeyTag(from * 100),
            seq,
        }
    }

    #[test]
    fn a_join_commit_carries_the_removals_and_is_never_held_back_by_them() {
        // 2 was welcomed by 1 (older). 3 joins and announces while 1 is still the
        // committer; then 1 leaves: 2 takes over and removes 1 *and* adds 3 in one
        // commit (formerly the removal alone first, the add an epoch later).
        let mut b = member_at(2, &[1], 4);
        b.handle(0, Event::Joined { seq: 2, id: 3 });
        assert!(b.handle(0, kp(3, 3)).is_empty(), "1 is the committer");
        let out = b.handle(0, Event::Left { seq: 4, id: 1 });
        assert_eq!(
            out,
            vec![Action::Commit {
                epoch: 4,
                adds: vec![pending(3, 3)],
                removes: vec![1]
            }]
        );
        // The Welcome's group is the one after the commit: 2 and 3, not 1 (whom 3
        // saw join anyway here).
        let out = b.handle(
            0,
            Event::Commit {
                seq: 5,
                from: 2,
                outcome: CommitOutcome::Applied {
                    epoch: 5,
                    adds: vec![(3, KeyTag(300))],
                    removes: vec![1],
                },
            },
        );
        assert!(
            !out.iter().any(|a| matches!(a, Action::Commit { .. })),
            "nothing left to do: {out:?}"
        );

        // A removal already in flight when the KeyPackage comes: the add goes out the
        // moment that commit is in the log (one commit per epoch, nothing more).
        let mut b = member_at(2, &[1], 4);
        let out = b.handle(0, Event::Left { seq: 2, id: 1 });
        assert_eq!(
            out,
            vec![Action::Commit {
                epoch: 4,
                adds: vec![],
                removes: vec![1]
            }]
        );
        b.handle(0, Event::Joined { seq: 3, id: 3 });
        assert!(b.handle(0, kp(4, 3)).is_empty(), "one commit in flight");
        let out = b.handle(
            0,
            Event::Commit {
                seq: 5,
                from: 2,
                outcome: CommitOutcome::Applied {
                    epoch: 5,
                    adds: vec![],
                    removes: vec![1],
                },
            },
        );
        assert_eq!(
            out.last(),
            Some(&Action::Commit {
                epoch: 5,
                adds: vec![pending(4, 3)],
                removes: vec![]
            })
        );

        // A departure noticed while an add is in flight rides in the next add.
        let mut a = member_at(1, &[], 2);
        a.handle(0, Event::Joined { seq: 2, id: 5 });
        a.handle(0, kp(3, 5));
        a.handle(
            0,
            Event::Commit {
                seq: 4,
                from: 1,
                outcome: CommitOutcome::Applied {
                    epoch: 3,
                    adds: vec![(5, KeyTag(500))],
                    removes: vec![],
                },
            },
        );
        a.handle(0, Event::Joined { seq: 5, id: 3 });
        let out = a.handle(0, kp(6, 3));
        assert_eq!(
            out,
            vec![Action::Commit {
                epoch: 3,
                adds: vec![pending(6, 3)],
                removes: vec![]
            }]
        );
        assert!(a.handle(0, Event::Left { seq: 7, id: 5 }).is_empty());
        a.handle(0, Event::Joined { seq: 8, id: 4 });
        assert!(a.handle(0, kp(9, 4)).is_empty(), "one commit in flight");
        let out = a.handle(
            0,
            Event::Commit {
                seq: 10,
                from: 1,
                outcome: CommitOutcome::Applied {
                    epoch: 4,
                    adds: vec![(3, KeyTag(300))],
                    removes: vec![],
                },
            },
        );
        assert_eq!(
            out.last(),
            Some(&Action::Commit {
                epoch: 4,
                adds: vec![pending(9, 4)],
                removes: vec![5]
            })
        );
    }

    #[test]
    fn a_key_package_is_committed_at_once_and_joins_batch_only_when_together() {
        let mut a = member_at(1, &[], 0);
        for id in 2..=4 {
            a.handle(0, Event::Joined { seq: id * 10, id });
        }
        // The first KeyPackage: committed the moment it is seen, alone.
        let out = a.handle(0, kp(21, 2));
        assert_eq!(
            out,
            vec![Action::Commit {
                epoch: 0,
                adds: vec![pending(21, 2)],
                removes: vec![]
            }]
        );
        // Two more arrive while it is in flight: they wait for it, then go together.
        assert!(a.handle(0, kp(31, 3)).is_empty());
        assert!(a.handle(0, kp(41, 4)).is_empty());
        let out = a.handle(
            0,
            Event::Commit {
                seq: 50,
                from: 1,
                outcome: CommitOutcome::Applied {
                    epoch: 1,
                    adds: vec![(2, KeyTag(200))],
                    removes: vec![],
                },
            },
        );
        assert_eq!(
            out.last(),
            Some(&Action::Commit {
                epoch: 1,
                adds: vec![pending(31, 3), pending(41, 4)],
                removes: vec![]
            })
        );
        // A driver that could only commit the first of them: the other stays pending
        // and goes into the next commit.
        let out = a.handle(
            0,
            Event::Commit {
                seq: 51,
                from: 1,
                outcome: CommitOutcome::Applied {
                    epoch: 2,
                    adds: vec![(3, KeyTag(300))],
                    removes: vec![],
                },
            },
        );
        assert_eq!(
            out.last(),
            Some(&Action::Commit {
                epoch: 2,
                adds: vec![pending(41, 4)],
                removes: vec![]
            })
        );
    }

    #[test]
    fn seen_keeps_departed_participants() {
        let mut a = c(1);
        a.handle(
            0,
            Event::Roster {
                live: vec![5, 6],
                away: vec![],
            },
        );
        a.handle(0, Event::Joined { seq: 1, id: 1 });
        a.handle(0, Event::Joined { seq: 2, id: 7 });
        a.handle(0, Event::Left { seq: 3, id: 6 });
        assert_eq!(
            a.seen().iter().copied().collect::<Vec<_>>(),
            vec![1, 5, 6, 7]
        );
        assert!(!a.live().contains(&6));
    }

    #[test]
    fn a_refused_epoch_drops_the_group_and_stops_for_good() {
        let mut b = member_at(2, &[1], 1);
        let out = b.handle(
            0,
            Event::Commit {
                seq: 5,
                from: 1,
                outcome: CommitOutcome::Refused { unknown: vec![9] },
            },
        );
        assert_eq!(
            out,
            vec![Action::DropGroup, Action::Refused { unknown: vec![9] }]
        );
        assert_eq!(b.phase(), &Phase::Refused { unknown: vec![9] });
        // No re-announcement, ever: not on ticks, not on a new creator.
        assert!(b.tick(1_000_000).is_empty());
        assert!(
            b.handle(
                0,
                Event::Creator {
                    seq: 6,
                    id: 2,
                    group_id: vec![2]
                }
            )
            .is_empty()
        );
        assert!(b.rekeyed(0, KeyTag(1)).is_empty());
        // A joiner refusing a Welcome stops too.
        let mut j = c(4);
        j.handle(0, Event::Joined { seq: 1, id: 4 });
        let out = j.handle(
            0,
            Event::Commit {
                seq: 2,
                from: 1,
                outcome: CommitOutcome::Refused { unknown: vec![9] },
            },
        );
        assert_eq!(out, vec![Action::Refused { unknown: vec![9] }]);
        assert!(j.tick(100_000).is_empty());
    }

    #[test]
    fn an_unprocessable_commit_is_reported_once_and_voided_or_timed_out() {
        let mut a = member_at(1, &[], 0);
        a.handle(0, Event::Joined { seq: 2, id: 2 });
        let out = a.handle(
            0,
            Event::KeyPackage {
                seq: 3,
                from: 2,
                key: KeyTag(200),
            },
        );
        assert!(matches!(out[..], [Action::Commit { epoch: 0, .. }]));
        // Somebody else's commit for epoch 0 got logged and I cannot process it.
        let out = a.handle(
            10,
            Event::Commit {
                seq: 4,
                from: 3,
                outcome: CommitOutcome::Unprocessable { epoch: 0 },
            },
        );
        assert_eq!(out, vec![Action::ReportCommitFailed { epoch: 0 }]);
        assert_eq!(a.reported_failure(), Some(0));
        assert_eq!(a.group().map(|g| g.epoch), Some(0), "group kept");
        // A second bad commit for the same epoch is not reported again, and no
        // commit goes out while the verdict is pending.
        let out = a.handle(
            20,
            Event::Commit {
                seq: 5,
                from: 3,
                outcome: CommitOutcome::Unprocessable { epoch: 0 },
            },
        );
        assert!(out.is_empty(), "{out:?}");
        // The coordinator voids it: the committer carries on with its work.
        let out = a.handle(
            30,
            Event::CommitVoid {
                seq: 6,
                epoch: 0,
                from: 3,
            },
        );
        assert!(
            matches!(out[..], [Action::Commit { epoch: 0, .. }]),
            "{out:?}"
        );
        assert_eq!(a.reported_failure(), None);

        // Not voided in time: reset.
        let mut b = member_at(2, &[1], 3);
        let out = b.handle(
            100,
            Event::Commit {
                seq: 7,
                from: 1,
                outcome: CommitOutcome::Unprocessable { epoch: 3 },
            },
        );
        assert_eq!(out, vec![Action::ReportCommitFailed { epoch: 3 }]);
        assert!(b.tick(100 + 4_999).is_empty());
        assert_eq!(b.tick(100 + 5_000), vec![Action::ResetIdentity]);
    }

    #[test]
    fn an_away_committer_is_skipped_not_removed() {
        // 2 was welcomed with 1 in the group, 3 with 1 and 2: 1 is the committer.
        let mut b = member_at(2, &[1], 4);
        let mut c3 = member_at(3, &[1, 2], 4);
        assert!(!b.is_committer() && !c3.is_committer());
        // 1's socket ends without a leave: 2 (the next oldest) takes over, 3 does not.
        assert!(b.handle(0, Event::Away { seq: 2, id: 1 }).is_empty());
        assert!(c3.handle(0, Event::Away { seq: 2, id: 1 }).is_empty());
        assert!(b.is_committer());
        assert!(!c3.is_committer(), "2 is older and connected");
        assert_eq!(b.away().iter().copied().collect::<Vec<_>>(), vec![1]);
        // A joiner's KeyPackage is committed at once by 2, and the away 1 is not
        // removed (it resumes and catches up from the log).
        b.handle(0, Event::Joined { seq: 3, id: 4 });
        c3.handle(0, Event::Joined { seq: 3, id: 4 });
        let out = b.handle(0, kp(4, 4));
        assert_eq!(
            out,
            vec![Action::Commit {
                epoch: 4,
                adds: vec![pending(4, 4)],
                removes: vec![]
            }]
        );
        assert!(c3.handle(0, kp(4, 4)).is_empty());
        // 1 comes back: it is the committer again, 2 is not.
        b.handle(
            0,
            Event::Commit {
                seq: 5,
                from: 2,
                outcome: CommitOutcome::Applied {
                    epoch: 5,
                    adds: vec![(4, KeyTag(400))],
                    removes: vec![],
                },
            },
        );
        b.handle(
            0,
            Event::Back {
                seq: 6,
                id: 1,
                from_seq: 1,
            },
        );
        assert!(!b.is_committer());
        assert!(b.away().is_empty());
        // Its `left` ends it for good: the removal follows.
        b.handle(0, Event::Away { seq: 7, id: 1 });
        let out = b.handle(0, Event::Left { seq: 8, id: 1 });
        assert_eq!(
            out,
            vec![Action::Commit {
                epoch: 5,
                adds: vec![],
                removes: vec![1]
            }]
        );
        assert!(b.away().is_empty(), "left clears away");
        // An away participant never listed live is not tracked.
        b.handle(0, Event::Away { seq: 9, id: 77 });
        assert!(b.away().is_empty());
    }

    #[test]
    fn an_away_participant_does_not_commit_until_back_and_roster_carries_away() {
        // 1 is the oldest; it reads its own `away` in its resume replay: whatever
        // arrives until its `back` is the next oldest's to commit.
        let mut a = member_at(1, &[], 2);
        a.handle(0, Event::Joined { seq: 2, id: 2 });
        a.handle(0, Event::Away { seq: 3, id: 1 });
        a.handle(0, Event::Joined { seq: 4, id: 3 });
        assert!(a.handle(0, kp(5, 3)).is_empty(), "away: not committing");
        let out = a.handle(
            0,
            Event::Back {
                seq: 6,
                id: 1,
                from_seq: 1,
            },
        );
        assert_eq!(
            out,
            vec![Action::Commit {
                epoch: 2,
                adds: vec![pending(5, 3)],
                removes: vec![]
            }]
        );

        // A commit built before my connection ended and not logged before my `away`
        // was lost with it: on my `back` it is discarded and built again at once.
        let commit = Action::Commit {
            epoch: 2,
            adds: vec![pending(3, 2)],
            removes: vec![],
        };
        let mut a = member_at(1, &[], 2);
        a.handle(0, Event::Joined { seq: 2, id: 2 });
        assert_eq!(a.handle(0, kp(3, 2)), vec![commit.clone()]);
        a.handle(0, Event::Away { seq: 4, id: 1 });
        let back = Event::Back {
            seq: 5,
            id: 1,
            from_seq: 3,
        };
        assert_eq!(
            a.handle(0, back.clone()),
            vec![Action::DiscardCommit, commit.clone()]
        );
        // One built during the resume replay (after the resume point) went out on the
        // new connection: it stays in flight.
        let mut a = member_at(1, &[], 2);
        a.handle(0, Event::Joined { seq: 2, id: 2 });
        a.handle(0, kp(3, 2));
        let back = Event::Back {
            seq: 5,
            id: 1,
            from_seq: 2,
        };
        a.handle(0, Event::Away { seq: 4, id: 1 });
        assert!(a.handle(0, back).is_empty());
        assert!(a.commit_in_flight());

        // A joiner's KeyPackage lost with its connection is announced again on its
        // `back`; one that made it into the log is not.
        let mut j = c(5);
        assert_eq!(
            j.handle(0, Event::Joined { seq: 9, id: 5 }),
            vec![Action::AnnounceKeyPackage]
        );
        j.handle(0, Event::Away { seq: 10, id: 5 });
        let out = j.handle(
            0,
            Event::Back {
                seq: 11,
                id: 5,
                from_seq: 9,
            },
        );
        assert_eq!(out, vec![Action::AnnounceKeyPackage]);
        j.handle(0, kp(12, 5));
        j.handle(0, Event::Away { seq: 13, id: 5 });
        let out = j.handle(
            0,
            Event::Back {
                seq: 14,
                id: 5,
                from_seq: 13,
            },
        );
        assert!(out.is_empty(), "{out:?}");

        // A joiner whose snapshot says 1 is away: welcomed by 2 with 1 older than it,
        // it sees 2 as committer, not 1; the away flag of somebody not live is ignored.
        let mut d = c(4);
        d.handle(
            0,
            Event::Roster {
                live: vec![1, 2],
                away: vec![1, 9],
            },
        );
        assert_eq!(d.away().iter().copied().collect::<Vec<_>>(), vec![1]);
        let mut members = BTreeMap::new();
        for id in [1, 2, 4] {
            members.insert(id, KeyTag(id * 100));
        }
        d.handle(0, Event::Joined { seq: 5, id: 4 });
        d.handle(
            0,
            Event::Commit {
                seq: 6,
                from: 2,
                outcome: CommitOutcome::Welcomed {
                    group_id: vec![1],
                    epoch: 3,
                    members,
                },
            },
        );
        assert!(!d.is_committer(), "2 is older and connected");
        d.handle(0, Event::Left { seq: 7, id: 2 });
        assert!(d.is_committer(), "1 is away, 2 left");
        d.handle(
            0,
            Event::Back {
                seq: 8,
                id: 1,
                from_seq: 1,
            },
        );
        assert!(!d.is_committer(), "1 is back");
    }

    #[test]
    fn a_void_resets_those_past_the_voided_epoch() {
        // b applied the commit made at 3 (it is at 4): the void resets it.
        let mut b = member_at(2, &[1], 4);
        let out = b.handle(
            0,
            Event::CommitVoid {
                seq: 9,
                epoch: 3,
                from: 1,
            },
        );
        assert_eq!(out, vec![Action::ResetIdentity]);
        // c is still at 3: nothing happens.
        let mut c3 = member_at(3, &[1], 3);
        let out = c3.handle(
            0,
            Event::CommitVoid {
                seq: 9,
                epoch: 3,
                from: 1,
            },
        );
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(c3.group().map(|g| g.epoch), Some(3));
    }
}
