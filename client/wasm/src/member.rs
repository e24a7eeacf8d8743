//! The MLS group member and frame crypto of one participant, for the worker.

use satsuma_e2ee::chat::ChatEvent;
use satsuma_e2ee::committer::Phase;
use satsuma_e2ee::frame::Codec;
use satsuma_e2ee::identity::{Identity, SEED_LEN};
use satsuma_e2ee::member::{Member, MemberConfig, MemberEvent, Outbound};
use satsuma_e2ee::relay::Entry;
use satsuma_wire::room::{ClientMessage, ServerMessage, error_code};
use wasm_bindgen::prelude::*;

use crate::ids::{BindingError, millis, to_f64, to_u64};
use crate::inbound::InboundTrack;

/// One member of the current epoch, as the UI lists it.
#[derive(Debug, serde::Serialize)]
struct StatusMember<'a> {
    id: u64,
    name: &'a str,
    fingerprint: &'a str,
    me: bool,
}

/// A member named by an alarm.
#[derive(Debug, serde::Serialize)]
struct AlarmMember<'a> {
    id: u64,
    name: &'a str,
    fingerprint: &'a str,
}

/// Why E2EE stopped for good.
#[derive(Debug, serde::Serialize)]
struct Alarm<'a> {
    reason: &'static str,
    unknown: Vec<AlarmMember<'a>>,
}

/// What the worker shows: `status_json()` (contract C7).
#[derive(Debug, serde::Serialize)]
struct Status<'a> {
    phase: &'static str,
    epoch: Option<u64>,
    safety_number: Option<&'a str>,
    members: Vec<StatusMember<'a>>,
    alarm: Option<Alarm<'a>>,
    committer: bool,
    send_epoch: Option<u64>,
    group_lost: Option<&'a str>,
    resets: u64,
    failed_commits: u64,
    invalid_key_packages: u64,
    reported_commits: u64,
    refused_epochs: u64,
    bad_inputs: u64,
    last_error: Option<&'a str>,
}

/// One participant's E2EE state in one room: the MLS member (designated
/// committer, ready/execute) and the frame encryptor/decryptor keyed by it.
/// Feed it the coordinator's log in `seq` order and ticks; drain
/// [`GroupMember::poll_binary`] and [`GroupMember::poll_json`] to the
/// coordinator; encrypt and decrypt frames.
#[wasm_bindgen]
pub struct GroupMember {
    member: Member,
    send_key_changed: bool,
    receive_keys_changed: bool,
    rejoin: bool,
    group_lost: Option<String>,
    json_out: std::collections::VecDeque<String>,
    binary_out: std::collections::VecDeque<Vec<u8>>,
    bad_inputs: u64,
    last_error: Option<String>,
    encrypted: u64,
    encrypt_failed: u64,
}

#[wasm_bindgen]
impl GroupMember {
    /// Participant `me` (the id from the coordinator's `welcome`) with the
    /// long-term identity of `identity_seed` (32 bytes, kept by the worker per
    /// browser profile) and `display_name` bound into its MLS credential, and a
    /// fresh MLS signature key.
    ///
    /// # Errors
    /// A bad id or seed, or the MLS identity could not be generated.
    #[wasm_bindgen(constructor)]
    pub fn new(me: f64, identity_seed: &[u8], display_name: &str) -> Result<GroupMember, JsError> {
        Ok(Self::try_new(me, identity_seed, display_name)?)
    }

    /// This participant's own fingerprint (`XXXX XXXX XXXX XXXX`), stable for
    /// the identity seed.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        self.member.identity().fingerprint().to_string()
    }

    /// The coordinator's `welcome` message (JSON): its snapshot's roster.
    /// Call before any entry.
    pub fn on_welcome(&mut self, welcome_json: &str, now_ms: f64) {
        match serde_json::from_str::<ServerMessage>(welcome_json) {
            Ok(ServerMessage::Welcome { snapshot, .. }) => {
                let live: Vec<u64> = snapshot.participants.iter().map(|p| p.id).collect();
                let away: Vec<u64> = snapshot
                    .participants
                    .iter()
                    .filter(|p| p.away)
                    .map(|p| p.id)
                    .collect();
                self.member.handle_roster_away(millis(now_ms), &live, &away);
            }
            Ok(other) => self.bad_input(format!("welcome: got {}", other.type_name())),
            Err(e) => self.bad_input(format!("welcome: {e}")),
        }
        self.drain();
    }

    /// One JSON log entry (`{"seq":N,"type":...}`); types other than
    /// `joined`, `left`, `away`, `back`, `creator`, `execute` and `commit_void`
    /// are ignored.
    pub fn on_event(&mut self, entry_json: &str, now_ms: f64) {
        match parse_entry(entry_json) {
            Ok(Some(entry)) => self.member.handle_entry(millis(now_ms), entry),
            Ok(None) => {}
            Err(e) => self.bad_input(e),
        }
        self.drain();
    }

    /// One binary log entry exactly as received
    /// (`u64 seq ‖ u8 kind ‖ u64 from ‖ payload`).
    pub fn on_mls(&mut self, frame: &[u8], now_ms: f64) {
        if let Err(e) = self.member.handle_binary(millis(now_ms), frame) {
            self.bad_input(format!("MLS frame: {e}"));
        }
        self.drain();
    }

    /// A direct reply of the coordinator (`error`, `commit_rejected`, … as
    /// JSON). Reads one: error `not_member` refusing `commit_failed` (the
    /// reported commit stands; this member resets and re-announces).
    pub fn on_direct(&mut self, reply_json: &str, now_ms: f64) {
        match serde_json::from_str::<ServerMessage>(reply_json) {
            Ok(ServerMessage::Error {
                code,
                refused: Some(refused),
                ..
            }) if code == error_code::NOT_MEMBER && refused == "commit_failed" => {
                self.member.commit_failure_refused(millis(now_ms));
            }
            Ok(_) => {}
            Err(e) => self.bad_input(format!("direct: {e}")),
        }
        self.drain();
    }

    /// A timer tick (every ~200 ms).
    pub fn tick(&mut self, now_ms: f64) {
        self.member.tick(millis(now_ms));
        self.drain();
    }

    /// Next binary frame for the coordinator (`kind ‖ payload`).
    pub fn poll_binary(&mut self) -> Option<Vec<u8>> {
        self.binary_out.pop_front()
    }

    /// Next JSON message for the coordinator (`ready`, `commit_failed`).
    pub fn poll_json(&mut self) -> Option<String> {
        self.json_out.pop_front()
    }

    /// `true` once after this participant's sending key changed: video
    /// senders should generate a keyframe.
    pub fn take_send_key_changed(&mut self) -> bool {
        std::mem::take(&mut self.send_key_changed)
    }

    /// `true` once after other members' keys changed: inbound video should
    /// ask for keyframes.
    pub fn take_receive_keys_changed(&mut self) -> bool {
        std::mem::take(&mut self.receive_keys_changed)
    }

    /// `true` once when this participant saw its own `left`: the page must
    /// rejoin the room as a new participant.
    pub fn take_rejoin(&mut self) -> bool {
        std::mem::take(&mut self.rejoin)
    }

    /// The 30-digit safety number of the current epoch.
    #[must_use]
    pub fn safety_number(&self) -> Option<String> {
        self.member.safety_number().map(|s| s.digits().to_owned())
    }

    /// The current epoch.
    #[must_use]
    pub fn epoch(&self) -> Option<f64> {
        self.member.epoch().map(to_f64)
    }

    /// Everything the UI shows, as JSON.
    #[must_use]
    pub fn status_json(&self) -> String {
        let phase = match self.member.committer().phase() {
            Phase::Joining { .. } => "joining",
            Phase::Member(_) => "member",
            Phase::Detached => "detached",
            Phase::Refused { .. } => "refused",
        };
        let me = self.member.id();
        let members = self
            .member
            .member_identities()
            .iter()
            .map(|m| StatusMember {
                id: m.id,
                name: &m.name,
                fingerprint: &m.fingerprint,
                me: m.id == me,
            })
            .collect();
        let alarm = self.member.alarm().map(|unknown| Alarm {
            reason: "refused an epoch with members this client never saw join the room",
            unknown: unknown
                .iter()
                .map(|m| AlarmMember {
                    id: m.id,
                    name: &m.name,
                    fingerprint: &m.fingerprint,
                })
                .collect(),
        });
        let stats = self.member.stats();
        let status = Status {
            phase,
            epoch: self.member.epoch(),
            safety_number: self.member.safety_number().map(|s| s.digits()),
            members,
            alarm,
            committer: self.member.is_committer(),
            send_epoch: self.member.send_epoch(),
            group_lost: self.group_lost.as_deref(),
            resets: stats.resets,
            failed_commits: stats.failed_commits,
            invalid_key_packages: stats.invalid_key_packages,
            reported_commits: stats.reported_commits,
            refused_epochs: stats.refused_epochs,
            bad_inputs: self.bad_inputs,
            last_error: self.last_error.as_deref(),
        };
        serde_json::to_string(&status).unwrap_or_else(|_| "{}".to_owned())
    }

    /// Encrypts one outbound frame whose codec has MIME type `mime`
    /// (`video/VP8`, `audio/opus`, …). `undefined`: drop the frame (no key
    /// yet, or not encryptable); never send it in the clear.
    pub fn encrypt(&mut self, mime: &str, frame: &[u8]) -> Option<Vec<u8>> {
        match self.member.encrypt(Codec::from_mime_type(mime), frame) {
            Ok(out) => {
                self.encrypted += 1;
                Some(out)
            }
            Err(e) => {
                self.encrypt_failed += 1;
                self.last_error = Some(format!("encrypt: {e}"));
                None
            }
        }
    }

    /// One received frame, named by the worker's `id` for it, through the
    /// track's holdback: frames no key opens yet wait (up to 3 s) for the
    /// next key instead of being dropped. Then take the verdicts now due
    /// with `track.next_release()` / `track.take_data()`, in order.
    pub fn receive(&mut self, track: &mut InboundTrack, id: u32, frame: &[u8], now_ms: f64) {
        let now = millis(now_ms);
        track.observe(frame);
        let mut out = Vec::new();
        let sender = track.sender;
        self.member
            .receive(&mut track.holdback, sender, id, frame, now, &mut out);
        track.record_verdicts(out, now);
    }

    /// Retries the track's held frames if a key was installed, and drops
    /// those that waited too long; verdicts as after [`GroupMember::receive`].
    pub fn poll_held(&mut self, track: &mut InboundTrack, now_ms: f64) {
        if track.holdback.held() == 0 {
            return;
        }
        let now = millis(now_ms);
        let mut out = Vec::new();
        let sender = track.sender;
        self.member
            .poll_held(&mut track.holdback, sender, now, &mut out);
        track.record_verdicts(out, now);
    }

    /// Sends a chat message to the group (end-to-end encrypted, `docs/chat.md`): the frame
    /// to send comes out of [`GroupMember::poll_binary`]; the message is shown when the
    /// coordinator logs it ([`GroupMember::poll_chat`]). Returns why it could not be sent
    /// (empty, too long, not in the group yet), or `undefined`.
    pub fn send_chat(&mut self, text: &str) -> Option<String> {
        let result = self.member.send_chat(text);
        self.drain();
        result.err().map(|e| e.to_string())
    }

    /// The next chat event as JSON, in log order: `{"type":"message", seq, from, name,
    /// fingerprint, text, mine, epoch}` (name and fingerprint from the sender's verified
    /// credential) or `{"type":"dropped", seq, from, reason}`; `undefined` when none.
    pub fn poll_chat(&mut self) -> Option<String> {
        let event = self.member.poll_chat()?;
        let json = match event {
            ChatEvent::Message(m) => serde_json::json!({
                "type": "message",
                "seq": m.seq,
                "from": m.from,
                "name": m.name,
                "fingerprint": m.fingerprint,
                "text": m.text,
                "mine": m.mine,
                "epoch": m.epoch,
            }),
            ChatEvent::Dropped { seq, from, reason } => serde_json::json!({
                "type": "dropped",
                "seq": seq,
                "from": from,
                "reason": reason.to_string(),
            }),
        };
        Some(json.to_string())
    }

    /// Frames encrypted so far.
    #[must_use]
    pub fn encrypted(&self) -> f64 {
        to_f64(self.encrypted)
    }

    /// Outbound frames dropped so far.
    #[must_use]
    pub fn encrypt_failed(&self) -> f64 {
        to_f64(self.encrypt_failed)
    }
}

impl GroupMember {
    pub(crate) fn try_new(
        me: f64,
        identity_seed: &[u8],
        display_name: &str,
    ) -> Result<Self, BindingError> {
        let me = to_u64(me).ok_or(BindingError::NotAnId("participant id"))?;
        let seed: [u8; SEED_LEN] = identity_seed
            .try_into()
            .map_err(|_| BindingError::BadSeed(identity_seed.len()))?;
        let identity = Identity::from_seed(seed, display_name);
        let member =
            Member::new(me, identity, MemberConfig::default()).map_err(BindingError::Member)?;
        Ok(Self {
            member,
            send_key_changed: false,
            receive_keys_changed: false,
            rejoin: false,
            group_lost: None,
            json_out: Default::default(),
            binary_out: Default::default(),
            bad_inputs: 0,
            last_error: None,
            encrypted: 0,
            encrypt_failed: 0,
        })
    }

    fn push_json(&mut self, msg: &ClientMessage) {
        match serde_json::to_string(msg) {
            Ok(text) => self.json_out.push_back(text),
            Err(e) => self.last_error = Some(format!("encode {}: {e}", msg.type_name())),
        }
    }

    fn bad_input(&mut self, what: String) {
        self.bad_inputs += 1;
        self.last_error = Some(what);
    }

    /// Moves the member's outputs into the queues and flags the worker reads.
    fn drain(&mut self) {
        while let Some(out) = self.member.poll_outbound() {
            match out {
                Outbound::Binary(bytes) => self.binary_out.push_back(bytes),
                Outbound::Ready { epoch } => {
                    let group_id = self.member.group_id().map(hex::encode);
                    self.push_json(&ClientMessage::Ready { epoch, group_id });
                }
                Outbound::CommitFailed { epoch } => {
                    self.push_json(&ClientMessage::CommitFailed { epoch });
                }
            }
        }
        while let Some(event) = self.member.poll_event() {
            match event {
                MemberEvent::EpochChanged { .. } => self.group_lost = None,
                MemberEvent::SendKeyChanged { .. } => self.send_key_changed = true,
                MemberEvent::ReceiveKeysChanged { .. } => self.receive_keys_changed = true,
                MemberEvent::GroupLost { reason } => self.group_lost = Some(reason),
                MemberEvent::RejoinRoom => self.rejoin = true,
                MemberEvent::Alarm { .. } => {
                    self.group_lost = Some("refused an epoch with unknown members".into());
                }
            }
        }
    }
}

/// Decodes a JSON log entry into the MLS layer's [`Entry`]; `Ok(None)` for
/// entries it does not read.
fn parse_entry(json: &str) -> Result<Option<Entry>, String> {
    Entry::parse_json(json).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn at(ms: u64) -> f64 {
        ms as f64
    }

    /// The coordinator's `welcome` with a roster of `(id, away)`.
    fn welcome(roster: &[(u64, bool)]) -> String {
        use satsuma_wire::room::{Limits, ParticipantInfo, Snapshot};
        let participants = roster
            .iter()
            .map(|&(id, away)| ParticipantInfo {
                id,
                name: format!("P{id}"),
                joined_at_ms: 0,
                host: false,
                sfu_sessions: vec![],
                tracks: vec![],
                hand_raised: false,
                speaking: false,
                codecs: None,
                sending: None,
                away,
                recorder: false,
            })
            .collect();
        let w = ServerMessage::Welcome {
            v: 1,
            room: "r".into(),
            participant_id: 99,
            resume_token: "t".into(),
            seq: 0,
            snapshot: Snapshot {
                participants,
                locked: false,
                max_participants: 50,
                group: None,
            },
            limits: Limits {
                heartbeat_interval_ms: 5000,
                presence_timeout_ms: 15000,
                max_text_bytes: 4096,
                max_binary_bytes: 1 << 18,
                messages_per_second: 20,
                replay_window: 1024,
                max_key_package_bytes: 1 << 14,
                bytes_per_second: 1 << 16,
            },
            ice_servers: vec![],
            ice_expires_at: None,
        };
        serde_json::to_string(&w).unwrap()
    }

    /// The body of a `joined` entry (without `seq`).
    fn joined(id: u64) -> String {
        format!(r#""type":"joined","id":{id},"name":"P{id}","joined_at_ms":0,"host":false"#)
    }

    #[test]
    fn entries_parse_and_unknown_types_are_ignored() {
        assert_eq!(
            parse_entry(
                r#"{"seq":3,"type":"joined","id":2,"name":"x","joined_at_ms":1,"host":false}"#
            ),
            Ok(Some(Entry::Joined { seq: 3, id: 2 }))
        );
        assert_eq!(
            parse_entry(r#"{"seq":5,"type":"away","id":2}"#),
            Ok(Some(Entry::Away { seq: 5, id: 2 }))
        );
        assert_eq!(
            parse_entry(r#"{"seq":6,"type":"back","id":2,"from_seq":3}"#),
            Ok(Some(Entry::Back {
                seq: 6,
                id: 2,
                from_seq: 3
            }))
        );
        assert_eq!(
            parse_entry(r#"{"seq":4,"type":"creator","id":1,"group_id":"0aff"}"#),
            Ok(Some(Entry::Creator {
                seq: 4,
                id: 1,
                group_id: vec![0x0a, 0xff]
            }))
        );
        assert_eq!(
            parse_entry(r#"{"seq":5,"type":"hand","id":1,"raised":true}"#),
            Ok(None)
        );
        assert_eq!(
            parse_entry(r#"{"seq":7,"type":"commit_void","epoch":3,"from":2}"#),
            Ok(Some(Entry::CommitVoid {
                seq: 7,
                epoch: 3,
                from: 2
            }))
        );
        assert!(parse_entry(r#"{"seq":6,"type":"creator","id":1,"group_id":"zz"}"#).is_err());
        assert!(parse_entry("not json").is_err());
    }

    /// Two members through a simulated coordinator log: creator, KeyPackage,
    /// commit with Welcome, execute; then frames cross in both directions.
    #[test]
    fn two_members_agree_and_exchange_frames() {
        let mut a = GroupMember::try_new(1.0, &[1; 32], "Alice").unwrap();
        let mut b = GroupMember::try_new(2.0, &[2; 32], "Bob").unwrap();
        let mut seq = 0u64;
        let mut log: Vec<Result<String, Vec<u8>>> = Vec::new();
        let push_json = |log: &mut Vec<Result<String, Vec<u8>>>, seq: &mut u64, body: String| {
            *seq += 1;
            log.push(Ok(format!(r#"{{"seq":{seq},{body}}}"#)));
        };
        a.on_welcome(&welcome(&[(1, false)]), at(0));
        push_json(&mut log, &mut seq, joined(1));
        push_json(
            &mut log,
            &mut seq,
            r#""type":"creator","id":1,"group_id":"00112233"#.to_owned() + "\"",
        );
        b.on_welcome(&welcome(&[(1, false)]), at(0));
        push_json(&mut log, &mut seq, joined(2));
        let mut delivered = [0usize; 2];
        let mut t = 0u64;
        for _round in 0..20 {
            t += 100;
            for (i, m) in [&mut a, &mut b].into_iter().enumerate() {
                while delivered[i] < log.len() {
                    match &log[delivered[i]] {
                        Ok(json) => m.on_event(json, at(t)),
                        Err(bin) => m.on_mls(bin, at(t)),
                    }
                    delivered[i] += 1;
                }
                m.tick(at(t));
                let from = if i == 0 { 1u64 } else { 2 };
                while let Some(frame) = m.poll_binary() {
                    // Coordinator: `seq ‖ kind ‖ from ‖ payload`.
                    seq += 1;
                    let mut out = seq.to_be_bytes().to_vec();
                    out.push(frame[0]);
                    out.extend_from_slice(&from.to_be_bytes());
                    out.extend_from_slice(&frame[1..]);
                    log.push(Err(out));
                }
                while let Some(json) = m.poll_json() {
                    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
                    assert_eq!(v["type"], "ready");
                    if from == 2 {
                        push_json(
                            &mut log,
                            &mut seq,
                            format!(r#""type":"execute","epoch":{}"#, v["epoch"]),
                        );
                    }
                }
            }
        }
        let sa = a.safety_number().expect("a has a safety number");
        assert_eq!(Some(sa.clone()), b.safety_number());
        assert_eq!(sa.len(), 30);
        let status: serde_json::Value = serde_json::from_str(&a.status_json()).unwrap();
        assert_eq!(status["phase"], "member");
        assert_eq!(status["alarm"], serde_json::Value::Null);
        let members = status["members"].as_array().unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[0]["id"], 1);
        assert_eq!(members[0]["name"], "Alice");
        assert_eq!(members[0]["me"], true);
        assert_eq!(
            members[0]["fingerprint"].as_str(),
            Some(a.fingerprint().as_str())
        );
        assert_eq!(members[1]["name"], "Bob");
        assert_eq!(members[1]["me"], false);
        assert_eq!(
            members[1]["fingerprint"].as_str(),
            Some(b.fingerprint().as_str())
        );
        assert_eq!(
            GroupMember::try_new(9.0, &[2; 32], "Bob again")
                .unwrap()
                .fingerprint(),
            b.fingerprint(),
            "same seed, same fingerprint"
        );

        let frame = [
            0x10u8, 2, 0, 0x9d, 1, 0x2a, 0x80, 2, 0xe0, 1, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        let sealed = a.encrypt("video/VP8", &frame).expect("a can send");
        assert_eq!(&sealed[sealed.len() - 2..], &[0xFA, 0xFA]);
        // The frames' verdicts in order: (id, decrypted bytes or None for a drop).
        let released = |track: &mut InboundTrack| {
            let mut out = Vec::new();
            while let Some(id) = track.next_release() {
                out.push((id, track.take_data()));
            }
            out
        };
        let mut track = InboundTrack::try_new(1.0, true).unwrap();
        b.receive(&mut track, 1, &sealed, at(t));
        assert_eq!(released(&mut track), vec![(1, Some(frame.to_vec()))]);
        b.receive(&mut track, 2, &sealed, at(t));
        assert_eq!(released(&mut track), vec![(2, None)], "replay refused");
        // A copy of a frame already decrypted is refused but not lost: a duplicate, not a drop.
        assert_eq!(track.duplicates(), 1.0);
        assert_eq!(track.dropped(), 0.0);
        assert_eq!(track.last_drop(), None);
        // Under another sender's id no key opens it: held for a later key, never delivered,
        // and dropped once it has waited too long.
        let mut wrong = InboundTrack::try_new(3.0, true).unwrap();
        b.receive(&mut wrong, 3, &sealed, at(t));
        assert_eq!(released(&mut wrong), vec![]);
        assert_eq!(wrong.held(), 1.0);
        b.poll_held(&mut wrong, at(t + 10_000));
        assert_eq!(released(&mut wrong), vec![(3, None)]);
        b.receive(&mut track, 4, &[0xFF; 40], at(t));
        assert_eq!(released(&mut track), vec![(4, None)]);
        assert_eq!(track.dropped(), 1.0);
        assert_eq!(track.last_drop().as_deref(), Some("not-encrypted"));
        assert_eq!(track.protocol_frames(), 2.0);
    }

    /// A log entry and, for a hidden participant's entries, the only two ids
    /// that see it.
    type Logged = (Option<(u64, u64)>, Result<String, Vec<u8>>);

    /// A room where the coordinator shows participant 3 only to participant 1
    /// (the committer): 2 refuses the epoch that adds 3 and its status carries
    /// the alarm naming 3.
    #[test]
    fn a_hidden_member_raises_the_alarm_in_the_status() {
        let ids = [1u64, 2, 3];
        let mut ms: Vec<GroupMember> = ids
            .iter()
            .map(|id| {
                GroupMember::try_new(*id as f64, &[*id as u8; 32], &format!("P{id}")).unwrap()
            })
            .collect();
        let hide = |id: u64| (id == 3).then_some((3u64, 1u64));
        let mut log: Vec<Logged> = Vec::new();
        let mut seq = 0u64;
        let json = |log: &mut Vec<Logged>, seq: &mut u64, vis, body: String| {
            *seq += 1;
            log.push((vis, Ok(format!(r#"{{"seq":{seq},{body}}}"#))));
        };
        ms[0].on_welcome(&welcome(&[]), at(0));
        json(&mut log, &mut seq, None, joined(1));
        json(
            &mut log,
            &mut seq,
            None,
            r#""type":"creator","id":1,"group_id":"aa""#.into(),
        );
        ms[1].on_welcome(&welcome(&[(1, false)]), at(0));
        json(&mut log, &mut seq, None, joined(2));
        let mut delivered = [0usize; 3];
        let mut t = 0u64;
        let mut ghost_joined = false;
        for round in 0..40 {
            t += 100;
            if round == 15 && !ghost_joined {
                // The ghost arrives once 1 and 2 share a group.
                ghost_joined = true;
                ms[2].on_welcome(&welcome(&[(1, false), (2, false)]), at(t));
                delivered[2] = log.len();
                json(&mut log, &mut seq, hide(3), joined(3));
            }
            for (i, m) in ms.iter_mut().enumerate() {
                let me = ids[i];
                if me == 3 && !ghost_joined {
                    continue;
                }
                while delivered[i] < log.len() {
                    let (vis, entry) = &log[delivered[i]];
                    delivered[i] += 1;
                    if vis.is_some_and(|(a, b)| me != a && me != b) {
                        continue;
                    }
                    match entry {
                        Ok(j) => m.on_event(j, at(t)),
                        Err(bin) => m.on_mls(bin, at(t)),
                    }
                }
                m.tick(at(t));
                while let Some(frame) = m.poll_binary() {
                    seq += 1;
                    let mut out = seq.to_be_bytes().to_vec();
                    out.push(frame[0]);
                    out.extend_from_slice(&me.to_be_bytes());
                    out.extend_from_slice(&frame[1..]);
                    // The commit that adds the ghost is visible to all.
                    let vis = if frame[0] == 1 { hide(me) } else { None };
                    log.push((vis, Err(out)));
                }
                while m.poll_json().is_some() {}
            }
        }
        let b: serde_json::Value = serde_json::from_str(&ms[1].status_json()).unwrap();
        assert_eq!(b["phase"], "refused", "{b}");
        assert_eq!(b["epoch"], serde_json::Value::Null);
        assert_eq!(b["members"].as_array().map(Vec::len), Some(0));
        let unknown = &b["alarm"]["unknown"];
        assert_eq!(unknown[0]["id"], 3, "{b}");
        assert_eq!(unknown[0]["name"], "P3");
        assert_eq!(
            unknown[0]["fingerprint"].as_str(),
            Some(ms[2].fingerprint().as_str())
        );
        assert_eq!(
            ms[1].encrypt("audio/opus", &[1, 2, 3]),
            None,
            "b sends nothing"
        );
        let a: serde_json::Value = serde_json::from_str(&ms[0].status_json()).unwrap();
        assert_eq!(a["phase"], "member");
        assert_eq!(a["members"].as_array().map(Vec::len), Some(3));
        assert_eq!(a["alarm"], serde_json::Value::Null);
    }

    #[test]
    fn the_snapshot_and_entries_say_who_is_away() {
        let mut m = GroupMember::try_new(3.0, &[3; 32], "Carol").unwrap();
        m.on_welcome(&welcome(&[(1, true), (2, false)]), at(0));
        let away = |m: &GroupMember| {
            m.member
                .committer()
                .away()
                .iter()
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(away(&m), vec![1]);
        m.on_event(r#"{"seq":5,"type":"back","id":1,"from_seq":0}"#, at(1));
        m.on_event(r#"{"seq":6,"type":"away","id":2}"#, at(2));
        assert_eq!(away(&m), vec![2]);
    }

    #[test]
    fn hostile_inputs_are_counted_not_fatal() {
        let mut m = GroupMember::try_new(7.0, &[7; 32], "x").unwrap();
        m.on_welcome("{}", 0.0);
        m.on_event(r#"{"seq":1}"#, 0.0);
        m.on_mls(&[1, 2, 3], 0.0);
        m.on_mls(&[0; 40], 0.0);
        assert!(
            m.status_json().contains(r#""bad_inputs":4"#),
            "{}",
            m.status_json()
        );
        assert_eq!(m.encrypt("audio/opus", &[1, 2, 3]), None);
        m.on_direct(
            r#"{"type":"error","code":"not_member","refused":"commit_failed","message":"x"}"#,
            0.0,
        );
        m.on_direct(
            r#"{"type":"commit_rejected","epoch":1,"current_epoch":2,"reason":"stale_epoch"}"#,
            0.0,
        );
        m.on_direct("[]", 0.0);
        assert!(
            m.status_json().contains(r#""bad_inputs":5"#),
            "{}",
            m.status_json()
        );
        assert!(GroupMember::try_new(-1.0, &[0; 32], "x").is_err());
        assert!(GroupMember::try_new(1.0, &[0; 31], "x").is_err());
        assert!(InboundTrack::try_new(f64::NAN, false).is_err());
    }
}
