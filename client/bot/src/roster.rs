//! The room's participants as a member learns them: the `welcome` snapshot, then every log
//! entry that changes who is there, which SFU sessions they own and which tracks they publish.
//! Pure state (no I/O): [`Roster::apply`] one entry at a time.

use std::collections::BTreeMap;

use satsuma_wire::room::{ParticipantInfo, RoomEvent, Snapshot};

/// Who is in the room, by participant id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    /// Participants, by id.
    pub participants: BTreeMap<u64, ParticipantInfo>,
}

impl Roster {
    /// The roster of a `welcome` snapshot.
    #[must_use]
    pub fn from_snapshot(snapshot: &Snapshot) -> Self {
        Self {
            participants: snapshot
                .participants
                .iter()
                .map(|p| (p.id, p.clone()))
                .collect(),
        }
    }

    /// Applies one log entry (entries that do not change the roster are ignored).
    pub fn apply(&mut self, event: &RoomEvent) {
        match event {
            RoomEvent::Joined {
                id,
                name,
                joined_at_ms,
                host,
                recorder,
            } => {
                self.participants.insert(
                    *id,
                    ParticipantInfo {
                        id: *id,
                        name: name.clone(),
                        joined_at_ms: *joined_at_ms,
                        host: *host,
                        sfu_sessions: Vec::new(),
                        tracks: Vec::new(),
                        hand_raised: false,
                        speaking: false,
                        codecs: None,
                        sending: None,
                        away: false,
                        recorder: *recorder,
                    },
                );
            }
            RoomEvent::Left { id, .. } => {
                self.participants.remove(id);
            }
            RoomEvent::Away { id } => self.with(*id, |p| p.away = true),
            RoomEvent::Back { id, .. } => self.with(*id, |p| p.away = false),
            RoomEvent::Host { id } => self.with(*id, |p| p.host = true),
            RoomEvent::Session { id, session_id } => self.with(*id, |p| {
                if !p.sfu_sessions.contains(session_id) {
                    p.sfu_sessions.push(session_id.clone());
                }
            }),
            RoomEvent::Published { id, track } => self.with(*id, |p| {
                p.tracks.retain(|t| t.track_name != track.track_name);
                p.tracks.push(track.clone());
            }),
            RoomEvent::Unpublished { id, track_name } => {
                self.with(*id, |p| p.tracks.retain(|t| &t.track_name != track_name));
            }
            RoomEvent::TrackEnabled {
                id,
                track_name,
                enabled,
            } => self.with(*id, |p| {
                for t in p.tracks.iter_mut().filter(|t| &t.track_name == track_name) {
                    t.enabled = *enabled;
                }
            }),
            _ => {}
        }
    }

    fn with(&mut self, id: u64, f: impl FnOnce(&mut ParticipantInfo)) {
        if let Some(p) = self.participants.get_mut(&id) {
            f(p);
        }
    }

    /// The participant that owns SFU session `session_id`.
    #[must_use]
    pub fn owner_of(&self, session_id: &str) -> Option<&ParticipantInfo> {
        self.participants
            .values()
            .find(|p| p.sfu_sessions.iter().any(|s| s == session_id))
    }

    /// The recorders in the room (participants whose token grants `recorder`).
    pub fn recorders(&self) -> impl Iterator<Item = &ParticipantInfo> {
        self.participants.values().filter(|p| p.recorder)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use satsuma_wire::room::{LeaveReason, TrackInfo, TrackKind};

    #[test]
    fn follows_joins_sessions_tracks_and_leaves() {
        let mut r = Roster::default();
        r.apply(&RoomEvent::Joined {
            id: 1,
            name: "Ann".into(),
            joined_at_ms: 5,
            host: true,
            recorder: false,
        });
        r.apply(&RoomEvent::Joined {
            id: 2,
            name: "Rec".into(),
            joined_at_ms: 6,
            host: false,
            recorder: true,
        });
        r.apply(&RoomEvent::Session {
            id: 1,
            session_id: "s1".into(),
        });
        let cam = TrackInfo {
            track_name: "cam".into(),
            session_id: "s1".into(),
            kind: TrackKind::Video,
            enabled: true,
        };
        r.apply(&RoomEvent::Published {
            id: 1,
            track: cam.clone(),
        });
        r.apply(&RoomEvent::Published { id: 1, track: cam });
        r.apply(&RoomEvent::TrackEnabled {
            id: 1,
            track_name: "cam".into(),
            enabled: false,
        });
        assert_eq!(r.owner_of("s1").unwrap().id, 1);
        assert!(r.owner_of("s2").is_none());
        assert_eq!(r.participants[&1].tracks.len(), 1);
        assert!(!r.participants[&1].tracks[0].enabled);
        assert_eq!(r.recorders().map(|p| p.id).collect::<Vec<_>>(), vec![2]);
        r.apply(&RoomEvent::Unpublished {
            id: 1,
            track_name: "cam".into(),
        });
        assert!(r.participants[&1].tracks.is_empty());
        r.apply(&RoomEvent::Left {
            id: 2,
            reason: LeaveReason::Left,
        });
        assert_eq!(r.recorders().count(), 0);
        // Entries about unknown participants change nothing.
        r.apply(&RoomEvent::Host { id: 9 });
        assert_eq!(r.participants.len(), 1);
    }
}
