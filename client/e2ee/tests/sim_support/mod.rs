//! An in-memory coordinator implementing `docs/e2ee-relay.md` (ordered log, `creator`
//! naming, first-commit-per-epoch arbitration, ready → execute with a timeout,
//! `commit_failed` → `commit_void`) and a harness that wires real [`Member`]s to it
//! with controllable delivery. Shared by the `mls_*` and `sim_*` tests. A hostile
//! coordinator is one call away: [`Room::join_hidden`] adds a participant whose
//! entries only one other participant sees (the `test_visible_only_to` hook).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use openmls::prelude::{MlsMessageIn, ProtocolMessage, tls_codec::Deserialize as _};
use satsuma_e2ee::member::{Member, MemberConfig, MemberEvent, Outbound};
use satsuma_e2ee::relay::{ApplicationFrame, Entry, Handshake, KIND_APPLICATION, ServerFrame};

/// A log entry as the coordinator stores it: JSON entries typed, MLS entries binary.
#[derive(Debug, Clone)]
pub enum Logged {
    Json(Entry),
    Binary(Vec<u8>),
}

/// The room side of the contract.
#[derive(Debug, Default)]
pub struct Coordinator {
    pub log: Vec<Logged>,
    /// Live participants in join order.
    pub live: Vec<u64>,
    /// Live participants whose connection dropped (in their resume window): `execute`
    /// does not wait for them and they are not named creator while others are connected.
    pub disconnected: BTreeSet<u64>,
    group: Option<(Vec<u8>, u64)>,
    /// Participants counted as group members (named creator, or reported ready).
    group_members: BTreeSet<u64>,
    ready: BTreeSet<u64>,
    execute_deadline: Option<(u64, Duration)>,
    next_group: u64,
    pub rejected_commits: u64,
    pub execute_timeout: Duration,
    /// The last accepted commit: (epoch it was created in, sender).
    last_commit: Option<(u64, u64)>,
    /// (reporter, epoch) pairs of `commit_failed` reports.
    reports: BTreeSet<(u64, u64)>,
    /// Voided commits.
    pub voids: u64,
    /// Reporters whose report did not void anything (they stop being members).
    pub refused_reports: u64,
    /// Reporters to answer with error `not_member` (refused `commit_failed`).
    pub refused_reporters: Vec<u64>,
    /// Contract refinement (proposed, not in e2ee-relay.md yet): a KeyPackage from a
    /// participant counted as a group member means it reset, so it no longer counts;
    /// if no live group member is left, a new creator is named.
    pub reset_releases_membership: bool,
}

/// Read `group_id` and `epoch` from an MLS commit's framing.
fn commit_header(commit: &[u8]) -> Option<(Vec<u8>, u64)> {
    let msg = MlsMessageIn::tls_deserialize_exact(commit).ok()?;
    let pm: ProtocolMessage = msg.try_into_protocol_message().ok()?;
    Some((pm.group_id().as_slice().to_vec(), pm.epoch().as_u64()))
}

impl Coordinator {
    pub fn new() -> Self {
        Self {
            execute_timeout: Duration::from_secs(2),
            ..Default::default()
        }
    }

    fn seq(&self) -> u64 {
        self.log.len() as u64 + 1
    }

    pub fn epoch(&self) -> Option<u64> {
        self.group.as_ref().map(|g| g.1)
    }

    pub fn join(&mut self, id: u64) {
        self.live.push(id);
        let seq = self.seq();
        self.log.push(Logged::Json(Entry::Joined { seq, id }));
        self.maybe_creator();
    }

    pub fn leave(&mut self, id: u64) {
        if !self.live.contains(&id) {
            return;
        }
        self.live.retain(|x| *x != id);
        self.disconnected.remove(&id);
        self.group_members.remove(&id);
        self.ready.remove(&id);
        let seq = self.seq();
        self.log.push(Logged::Json(Entry::Left { seq, id }));
        self.maybe_creator();
        self.maybe_execute(None);
    }

    fn maybe_creator(&mut self) {
        if self.live.is_empty() || self.live.iter().any(|x| self.group_members.contains(x)) {
            return;
        }
        let id = self
            .live
            .iter()
            .copied()
            .find(|x| !self.disconnected.contains(x))
            .unwrap_or(self.live[0]);
        self.next_group += 1;
        let group_id = format!("room-group-{}", self.next_group).into_bytes();
        self.group = Some((group_id.clone(), 0));
        self.group_members = [id].into_iter().collect();
        self.ready.clear();
        self.execute_deadline = None;
        let seq = self.seq();
        self.log
            .push(Logged::Json(Entry::Creator { seq, id, group_id }));
    }

    /// A message from participant `from`.
    pub fn receive(&mut self, from: u64, msg: Outbound, group_id: Option<Vec<u8>>, now: Duration) {
        if !self.live.contains(&from) {
            return;
        }
        match msg {
            Outbound::Binary(bytes) if bytes.first() == Some(&KIND_APPLICATION) => {
                // Chat: logged in order for group members, never interpreted.
                if self.group_members.contains(&from) && bytes.len() > 1 {
                    let frame = ApplicationFrame {
                        seq: self.seq(),
                        from,
                        message: bytes[1..].to_vec(),
                    };
                    self.log.push(Logged::Binary(frame.encode()));
                }
            }
            Outbound::Binary(bytes) => {
                let Ok(hs) = Handshake::decode_client_frame(&bytes) else {
                    return;
                };
                if let Handshake::Commit { commit, .. } = &hs {
                    let Some((gid, epoch)) = commit_header(commit) else {
                        self.rejected_commits += 1;
                        return;
                    };
                    if !self.group_members.contains(&from) {
                        self.rejected_commits += 1;
                        return;
                    }
                    match &mut self.group {
                        Some((g, e)) if *g == gid && *e == epoch => *e += 1,
                        _ => {
                            self.rejected_commits += 1;
                            return;
                        }
                    }
                    self.ready.clear();
                    self.execute_deadline = Some((epoch + 1, now + self.execute_timeout));
                    self.last_commit = Some((epoch, from));
                }
                let reset_member = matches!(hs, Handshake::KeyPackage(_))
                    && self.reset_releases_membership
                    && self.group_members.remove(&from);
                let frame = ServerFrame {
                    seq: self.seq(),
                    from,
                    handshake: hs,
                };
                self.log.push(Logged::Binary(frame.encode()));
                if reset_member {
                    self.ready.remove(&from);
                    self.maybe_creator();
                    self.maybe_execute(None);
                }
            }
            Outbound::CommitFailed { epoch } => {
                if !self.reports.insert((from, epoch)) {
                    return; // error `invalid`: one report per epoch
                }
                let voidable = match (self.last_commit, &self.group) {
                    (Some((e, sender)), Some((_, room))) => {
                        e == epoch
                            && *room == epoch + 1
                            && self.group_members.contains(&from)
                            && from != sender
                            && self.ready.iter().all(|x| *x == sender)
                    }
                    _ => false,
                };
                if voidable {
                    let Some((e, sender)) = self.last_commit.take() else {
                        return;
                    };
                    if let Some((_, room)) = &mut self.group {
                        *room = e;
                    }
                    self.group_members.remove(&sender);
                    self.ready.clear();
                    self.execute_deadline = None;
                    self.voids += 1;
                    let seq = self.seq();
                    self.log.push(Logged::Json(Entry::CommitVoid {
                        seq,
                        epoch: e,
                        from: sender,
                    }));
                    self.maybe_creator();
                } else {
                    self.refused_reports += 1;
                    self.refused_reporters.push(from);
                    self.group_members.remove(&from);
                    self.ready.remove(&from);
                    self.maybe_creator();
                    self.maybe_execute(None);
                }
            }
            Outbound::Ready { epoch } => {
                if self
                    .group
                    .as_ref()
                    .is_some_and(|(g, e)| group_id.is_none_or(|x| x == *g) && epoch <= *e)
                {
                    self.group_members.insert(from);
                    if self.epoch() == Some(epoch) {
                        self.ready.insert(from);
                    }
                    self.maybe_execute(None);
                }
            }
        }
    }

    fn maybe_execute(&mut self, now: Option<Duration>) {
        let Some((epoch, deadline)) = self.execute_deadline else {
            return;
        };
        let all = self
            .live
            .iter()
            .filter(|x| self.group_members.contains(x) && !self.disconnected.contains(x))
            .all(|x| self.ready.contains(x));
        let late = now.is_some_and(|n| n >= deadline);
        if all || late {
            self.execute_deadline = None;
            let seq = self.seq();
            self.log.push(Logged::Json(Entry::Execute { seq, epoch }));
        }
    }

    pub fn tick(&mut self, now: Duration) {
        self.maybe_execute(Some(now));
    }

    /// Participant `id`'s connection dropped (it stays until [`Coordinator::leave`]).
    pub fn disconnect(&mut self, id: u64) {
        if self.live.contains(&id) && self.disconnected.insert(id) {
            self.maybe_execute(None);
        }
    }
}

/// One simulated client: a [`Member`], its log cursor and its unsent messages.
pub struct Client {
    pub member: Member,
    pub cursor: usize,
    /// Messages with the group id at the time they were drained (what a driver
    /// puts in `ready`'s optional `group_id`).
    pub outbox: VecDeque<(Outbound, Option<Vec<u8>>)>,
    pub events: Vec<MemberEvent>,
}

/// Coordinator + clients + simulated time.
pub struct Room {
    pub coord: Coordinator,
    pub clients: BTreeMap<u64, Client>,
    pub now: Duration,
    next_id: u64,
    config: MemberConfig,
    /// Hidden participant → the only other participant that sees its entries.
    pub hidden: BTreeMap<u64, u64>,
}

/// The identity seed of simulated participant `id` (fixed, so fingerprints are
/// reproducible).
pub fn seed(id: u64) -> [u8; 32] {
    let mut s = [0x5au8; 32];
    s[..8].copy_from_slice(&id.to_be_bytes());
    s
}

impl Room {
    pub fn new(config: MemberConfig) -> Self {
        Self {
            coord: Coordinator::new(),
            clients: BTreeMap::new(),
            now: Duration::from_secs(1),
            next_id: 1,
            config,
            hidden: BTreeMap::new(),
        }
    }

    /// Whether client `viewer` gets log entry `entry` (a hidden participant's
    /// entries reach only itself and the one it is visible to).
    pub fn visible(&self, viewer: u64, entry: &Logged) -> bool {
        let subject = match entry {
            Logged::Json(Entry::Joined { id, .. } | Entry::Left { id, .. }) => *id,
            Logged::Json(_) => return true,
            Logged::Binary(b) => match ServerFrame::decode(b) {
                Ok(f) => f.from,
                Err(_) => return true,
            },
        };
        match self.hidden.get(&subject) {
            Some(to) => viewer == subject || viewer == *to,
            None => true,
        }
    }

    /// A participant joins that the coordinator shows only to `visible_to` (a
    /// hostile coordinator); returns its id.
    pub fn join_hidden(&mut self, visible_to: u64) -> u64 {
        let id = self.next_id;
        self.hidden.insert(id, visible_to);
        self.join()
    }

    /// A new participant joins; returns its id.
    pub fn join(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.coord.join(id);
        let mut member = Member::new(
            id,
            satsuma_e2ee::identity::Identity::from_seed(seed(id), &format!("P{id}")),
            self.config.clone(),
        )
        .unwrap();
        // Snapshot as of just before its own `joined` entry.
        let cursor = self
            .coord
            .log
            .iter()
            .rposition(|l| matches!(l, Logged::Json(Entry::Joined { id: x, .. }) if *x == id))
            .unwrap();
        let live_before: Vec<u64> = self
            .coord
            .live
            .iter()
            .copied()
            .filter(|x| *x != id)
            .filter(|x| self.hidden.get(x).is_none_or(|to| *to == id))
            .collect();
        member.handle_welcome(self.now, cursor as u64, &live_before);
        self.clients.insert(
            id,
            Client {
                member,
                cursor,
                outbox: VecDeque::new(),
                events: Vec::new(),
            },
        );
        id
    }

    /// Graceful leave (or crash + presence timeout, when `crash` keeps the client
    /// out of the room without a `left` until [`Room::expire`]).
    pub fn leave(&mut self, id: u64) {
        self.clients.remove(&id);
        self.coord.leave(id);
    }

    /// Crash: the client stops processing. With `sent`, its queued messages were
    /// already on the wire and still reach the coordinator; otherwise they are lost.
    /// Its `left` comes later, from [`Room::expire`] (presence timeout).
    pub fn crash(&mut self, id: u64, sent: bool) {
        if sent {
            self.flush(id, usize::MAX);
        }
        self.clients.remove(&id);
        self.coord.disconnect(id);
    }

    /// The presence timeout of a crashed participant.
    pub fn expire(&mut self, id: u64) {
        self.coord.leave(id);
    }

    /// Deliver up to `n` log entries to client `id`; returns how many.
    pub fn deliver(&mut self, id: u64, n: usize) -> usize {
        let now = self.now;
        let visible: Vec<bool> = match self.clients.get(&id) {
            Some(c) => self.coord.log[c.cursor..]
                .iter()
                .map(|e| self.visible(id, e))
                .collect(),
            None => return 0,
        };
        let Some(c) = self.clients.get_mut(&id) else {
            return 0;
        };
        let start = c.cursor;
        let mut done = 0;
        while done < n && c.cursor < self.coord.log.len() {
            if !visible[c.cursor - start] {
                c.cursor += 1;
                continue;
            }
            match &self.coord.log[c.cursor] {
                Logged::Json(e) => c.member.handle_entry(now, e.clone()),
                Logged::Binary(b) => c.member.handle_binary(now, b).unwrap(),
            }
            c.cursor += 1;
            done += 1;
            while let Some(o) = c.member.poll_outbound() {
                c.outbox.push_back((o, c.member.group_id()));
            }
            while let Some(e) = c.member.poll_event() {
                c.events.push(e);
            }
        }
        done
    }

    /// Deliver client `id`'s next log entry with one byte of its MLS commit
    /// flipped (a commit that fails for this client only). Returns whether the
    /// next entry was a commit.
    pub fn deliver_corrupted(&mut self, id: u64) -> bool {
        let now = self.now;
        let Some(c) = self.clients.get_mut(&id) else {
            return false;
        };
        let Some(Logged::Binary(bytes)) = self.coord.log.get(c.cursor) else {
            return false;
        };
        let mut frame = ServerFrame::decode(bytes).unwrap();
        let Handshake::Commit { commit, .. } = &mut frame.handshake else {
            return false;
        };
        let n = commit.len();
        commit[n - 5] ^= 0xff;
        c.member.handle_binary(now, &frame.encode()).unwrap();
        c.cursor += 1;
        while let Some(o) = c.member.poll_outbound() {
            c.outbox.push_back((o, c.member.group_id()));
        }
        while let Some(e) = c.member.poll_event() {
            c.events.push(e);
        }
        true
    }

    /// Send up to `n` of client `id`'s queued messages to the coordinator.
    pub fn flush(&mut self, id: u64, n: usize) -> usize {
        let now = self.now;
        let mut done = 0;
        while done < n {
            let Some(c) = self.clients.get_mut(&id) else {
                break;
            };
            let Some((m, g)) = c.outbox.pop_front() else {
                break;
            };
            self.coord.receive(id, m, g, now);
            for r in std::mem::take(&mut self.coord.refused_reporters) {
                // The coordinator's error reply reaches the reporter.
                if let Some(c) = self.clients.get_mut(&r) {
                    c.member.commit_failure_refused(now);
                    while let Some(o) = c.member.poll_outbound() {
                        c.outbox.push_back((o, c.member.group_id()));
                    }
                    while let Some(e) = c.member.poll_event() {
                        c.events.push(e);
                    }
                }
            }
            done += 1;
        }
        done
    }

    /// Advance time and tick everyone.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        let now = self.now;
        for c in self.clients.values_mut() {
            c.member.tick(now);
            while let Some(o) = c.member.poll_outbound() {
                c.outbox.push_back((o, c.member.group_id()));
            }
            while let Some(e) = c.member.poll_event() {
                c.events.push(e);
            }
        }
        self.coord.tick(now);
    }

    /// Deliver and flush everything until nothing moves (time advances in small
    /// steps so timers fire). Returns the number of rounds.
    pub fn settle(&mut self, max_rounds: usize) -> usize {
        for round in 0..max_rounds {
            let mut moved = 0;
            let ids: Vec<u64> = self.clients.keys().copied().collect();
            for id in &ids {
                moved += self.deliver(*id, usize::MAX);
                moved += self.flush(*id, usize::MAX);
            }
            if moved == 0 {
                let before = self.coord.log.len();
                self.advance(Duration::from_millis(500));
                let busy = self.clients.values().any(|c| !c.outbox.is_empty());
                if self.coord.log.len() == before && !busy && self.converged() {
                    return round;
                }
            }
        }
        max_rounds
    }

    /// Every live client is a member of the same group at the same epoch, with
    /// exactly the live participants as members.
    pub fn converged(&self) -> bool {
        let live: BTreeSet<u64> = self.clients.keys().copied().collect();
        let mut view = None;
        for c in self.clients.values() {
            let m = &c.member;
            let Some(epoch) = m.epoch() else {
                return false;
            };
            let members: BTreeSet<u64> = m.members().iter().copied().collect();
            if members != live {
                return false;
            }
            let v = (m.group_id(), epoch, m.safety_number().cloned());
            match &view {
                None => view = Some(v),
                Some(x) if *x == v => {}
                Some(_) => return false,
            }
        }
        true
    }
}
