//! End-to-end encrypted chat in the room's log (`docs/chat.md`).
//!
//! A chat message is binary frame kind 3 ([`KIND_APPLICATION`]): one MLS application message
//! (`PrivateMessage`) of the room's group. The coordinator cannot read it; it checks what the
//! clear MLS framing says and logs it in the room's one order, like the handshake kinds:
//!
//! - at most [`MAX_CHAT_FRAME`] bytes (error `too_large`);
//! - from a member of the MLS group (error `not_member`): nobody else holds a key, so
//!   nothing else could be a message anybody can read;
//! - at most [`CHAT_BURST`] messages at once and [`CHAT_PER_SECOND`] sustained per
//!   participant (error `rate_limited`);
//! - an `MLSMessage` in `PrivateMessage` framing, content type `application`, of the room's
//!   current group and an epoch not ahead of it (error `mls_framing`).
//!
//! Every refusal is an `error` reply with `refused: "chat"`, counted in
//! `satsuma_coord_errors_total{code}` and toward the connection's consecutive-refusal close
//! (4002); logged messages are counted in `satsuma_coord_entries_total{type="chat"}`.
//!
//! Retention: the servers keep chat ciphertext only in the room's bounded in-memory resume
//! log: at most [`CHAT_RETAINED`] messages per room (the oldest leaves first), chat leaves
//! the log before any entry a resume needs when the log is full, and chat entries are never
//! written to a room store (they are ephemeral, like `speaking`). A member that resumes gets
//! the messages still retained; entries that left are gaps, which clients accept.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use super::Room;
use crate::mls_framing::{self, ContentType, WireFormat};
use crate::protocol::{KIND_APPLICATION, error_code};

/// Largest chat frame (kind byte included): a text of `MAX_CHAT_TEXT_BYTES` plus the MLS
/// framing, signature and padding.
pub const MAX_CHAT_FRAME: usize = satsuma_wire::relay::MAX_APPLICATION_FRAME;
/// Sustained chat messages per second per participant.
pub const CHAT_PER_SECOND: f64 = 2.0;
/// Chat messages a participant may send at once.
pub const CHAT_BURST: f64 = 10.0;
/// Chat messages a room's log retains (the oldest leaves first).
pub const CHAT_RETAINED: usize = 256;

/// The room's chat bookkeeping.
#[derive(Debug, Default)]
pub(super) struct ChatRelay {
    /// Per participant: tokens and when they were counted.
    buckets: BTreeMap<u64, (f64, Instant)>,
    /// Seqs of the chat entries in the log, oldest first.
    retained: VecDeque<u64>,
}

impl ChatRelay {
    /// The oldest chat entry in the log (dropped first when the log is full).
    pub(super) fn oldest(&self) -> Option<u64> {
        self.retained.front().copied()
    }

    /// Entry `seq` left the log.
    pub(super) fn forget(&mut self, seq: u64) {
        if self.retained.front() == Some(&seq) {
            self.retained.pop_front();
        } else if let Some(i) = self.retained.iter().position(|s| *s == seq) {
            self.retained.remove(i);
        }
    }

    fn take(&mut self, now: Instant, from: u64) -> bool {
        let (tokens, at) = self.buckets.entry(from).or_insert((CHAT_BURST, now));
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        *tokens = (*tokens + elapsed * CHAT_PER_SECOND).min(CHAT_BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Room {
    /// A binary frame of kind [`KIND_APPLICATION`] (`frame` includes the kind byte).
    pub(super) fn chat_message(&mut self, now: Instant, from: u64, frame: &[u8]) {
        let refuse = |room: &mut Room, code: &str, message: String| {
            room.error(from, code, message, Some("chat"));
        };
        if frame.len() > MAX_CHAT_FRAME {
            return refuse(
                self,
                error_code::TOO_LARGE,
                format!("chat frames are limited to {MAX_CHAT_FRAME} bytes"),
            );
        }
        let Some(group) = &self.group else {
            return refuse(
                self,
                error_code::NOT_MEMBER,
                "the room has no encryption group yet".to_owned(),
            );
        };
        if !group.members.contains(&from) {
            return refuse(
                self,
                error_code::NOT_MEMBER,
                "only members of the encryption group can send chat".to_owned(),
            );
        }
        let (group_id, epoch) = (group.id.clone(), group.epoch);
        // Rate before parsing: a flood costs one bucket lookup per frame.
        if self.chat.buckets.len() > self.participants.len().saturating_mul(2) + 16 {
            let present = &self.participants;
            self.chat.buckets.retain(|id, _| present.contains_key(id));
        }
        if !self.chat.take(now, from) {
            return refuse(
                self,
                error_code::RATE_LIMITED,
                format!(
                    "at most {CHAT_BURST} chat messages at once and {CHAT_PER_SECOND} per second; message dropped"
                ),
            );
        }
        let payload = frame.get(1..).unwrap_or_default();
        let checked = mls_framing::parse_header(payload)
            .map_err(|e| e.to_string())
            .and_then(|h| match (h.wire_format, h.framed) {
                (WireFormat::PrivateMessage, Some(f))
                    if f.content_type == ContentType::Application =>
                {
                    if f.group_id != group_id {
                        Err("not this room's current encryption group".to_owned())
                    } else if f.epoch > epoch {
                        Err(format!("epoch {} is ahead of the room's {epoch}", f.epoch))
                    } else {
                        Ok(())
                    }
                }
                (wf, f) => Err(format!(
                    "expected an application PrivateMessage, got {wf:?} {:?}",
                    f.map(|f| f.content_type)
                )),
            });
        if let Err(detail) = checked {
            return refuse(self, error_code::MLS_FRAMING, detail);
        }
        self.append_mls(KIND_APPLICATION, from, payload);
        self.chat.retained.push_back(self.seq);
        while self.chat.retained.len() > CHAT_RETAINED {
            if let Some(old) = self.chat.retained.pop_front() {
                self.drop_seq(old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::mls_framing::build;
    use crate::protocol::{Permissions, ServerMessage};
    use crate::room::{EntryBody, Input, JoinRequest, Output, RoomConfig, journal};

    fn req(subject: &str) -> JoinRequest {
        JoinRequest {
            subject: subject.to_owned(),
            name: subject.to_owned(),
            permissions: Permissions {
                publish: true,
                subscribe: true,
                host: false,
            },
            resume_token: format!("tok-{subject}"),
            wall_ms: 1,
            visible_only_to: None,
            recorder: false,
        }
    }

    fn group_id(room: &Room) -> Vec<u8> {
        room.group.as_ref().unwrap().id.clone()
    }

    fn chat_frame(group_id: &[u8], epoch: u64, content_type: u8) -> Bytes {
        let mut f = vec![KIND_APPLICATION];
        f.extend(build::private_message(
            group_id,
            epoch,
            content_type,
            &[7; 200],
        ));
        Bytes::from(f)
    }

    fn errors(room: &mut Room) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(o) = room.poll_output() {
            if let Output::Reply {
                msg: ServerMessage::Error { code, refused, .. },
                ..
            } = o
            {
                assert_eq!(refused.as_deref(), Some("chat"));
                out.push(code);
            }
        }
        out
    }

    fn chat_seqs(room: &Room) -> Vec<u64> {
        room.log
            .iter()
            .filter(|e| {
                matches!(
                    e.body,
                    EntryBody::Mls {
                        kind: KIND_APPLICATION,
                        ..
                    }
                )
            })
            .map(|e| e.seq)
            .collect()
    }

    #[test]
    fn only_application_messages_of_the_current_group_are_logged() {
        let mut now = Instant::now();
        let mut room = Room::new("r", RoomConfig::default(), 7);
        let a = room.join(now, req("a")).unwrap();
        let b = room.join(now, req("b")).unwrap();
        let _ = errors(&mut room);
        let g = group_id(&room);
        let mut send = |room: &mut Room, from: u64, f: Bytes| {
            now += Duration::from_secs(1); // stay under the rate
            room.handle(now, from, Input::Binary(f));
            errors(room)
        };
        // b is in the room but not in the group.
        assert_eq!(send(&mut room, b, chat_frame(&g, 0, 1)), ["not_member"]);
        assert_eq!(
            send(&mut room, a, chat_frame(&g, 0, 1)),
            Vec::<String>::new()
        );
        // A commit or proposal in the chat kind, another group, a future epoch: refused.
        assert_eq!(send(&mut room, a, chat_frame(&g, 0, 3)), ["mls_framing"]);
        assert_eq!(send(&mut room, a, chat_frame(&g, 0, 2)), ["mls_framing"]);
        assert_eq!(
            send(&mut room, a, chat_frame(b"other", 0, 1)),
            ["mls_framing"]
        );
        assert_eq!(send(&mut room, a, chat_frame(&g, 1, 1)), ["mls_framing"]);
        assert_eq!(
            send(&mut room, a, Bytes::from(vec![KIND_APPLICATION, 0, 1])),
            ["mls_framing"]
        );
        let big = Bytes::from(vec![KIND_APPLICATION; MAX_CHAT_FRAME + 1]);
        assert_eq!(send(&mut room, a, big), ["too_large"]);
        assert_eq!(chat_seqs(&room).len(), 1);
        assert_eq!(room.log.back().unwrap().type_name(), "chat");
    }

    #[test]
    fn rate_limit_is_per_participant_with_a_burst() {
        let now = Instant::now();
        let mut room = Room::new("r", RoomConfig::default(), 7);
        let a = room.join(now, req("a")).unwrap();
        let g = group_id(&room);
        let _ = errors(&mut room);
        let mut refused = 0;
        for _ in 0..(CHAT_BURST as usize + 5) {
            room.handle(now, a, Input::Binary(chat_frame(&g, 0, 1)));
            refused += errors(&mut room)
                .iter()
                .filter(|c| *c == "rate_limited")
                .count();
        }
        assert_eq!(refused, 5);
        assert_eq!(chat_seqs(&room).len(), CHAT_BURST as usize);
        // Tokens come back at CHAT_PER_SECOND.
        let later = now + Duration::from_secs(1);
        room.handle(later, a, Input::Binary(chat_frame(&g, 0, 1)));
        room.handle(later, a, Input::Binary(chat_frame(&g, 0, 1)));
        room.handle(later, a, Input::Binary(chat_frame(&g, 0, 1)));
        assert_eq!(errors(&mut room), ["rate_limited"]);
    }

    #[test]
    fn the_log_retains_a_bounded_number_of_chat_messages_never_stored() {
        let mut now = Instant::now();
        let mut room = Room::new("r", RoomConfig::default(), 7);
        let a = room.join(now, req("a")).unwrap();
        let g = group_id(&room);
        for _ in 0..(CHAT_RETAINED + 20) {
            now += Duration::from_secs(1);
            room.handle(now, a, Input::Binary(chat_frame(&g, 0, 1)));
        }
        let _ = errors(&mut room);
        let kept = chat_seqs(&room);
        assert_eq!(kept.len(), CHAT_RETAINED);
        assert_eq!(room.chat.retained.iter().copied().collect::<Vec<_>>(), kept);
        // The newest are kept; the room's first entries (joined, creator) are not trimmed.
        assert_eq!(*kept.last().unwrap(), room.seq);
        assert_eq!(room.log.front().unwrap().seq, 1);
        // Chat never reaches a room store.
        assert!(room.log.iter().filter(|e| journal::is_ephemeral(e)).count() >= CHAT_RETAINED);
    }

    #[test]
    fn a_full_log_drops_chat_before_anything_a_resume_needs() {
        let mut now = Instant::now();
        let config = RoomConfig {
            replay_max_entries: 8,
            ..RoomConfig::default()
        };
        let mut room = Room::new("r", config, 7);
        let a = room.join(now, req("a")).unwrap();
        let g = group_id(&room);
        for _ in 0..20 {
            now += Duration::from_secs(1);
            room.handle(now, a, Input::Binary(chat_frame(&g, 0, 1)));
        }
        let _ = errors(&mut room);
        assert_eq!(room.log.len(), 8);
        // `joined` and `creator` stay; no resume after them has a gap.
        assert_eq!(room.log[0].seq, 1);
        assert_eq!(room.log[1].seq, 2);
        assert_eq!(room.trimmed_upto, 0);
        assert_eq!(chat_seqs(&room).len(), 6);
    }
}
