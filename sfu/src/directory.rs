//! The directory: which sessions exist (their app and shard) and which tracks are published
//! under which name. Used only by the API (control path); the packet path never touches it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use str0m::format::PayloadParams;
use str0m::media::MediaKind;

use satsuma_common::TokenBucket;

use crate::ids::{SessionId, ShardId, TrackId};

/// What the directory knows of a session.
#[derive(Debug)]
pub struct SessionEntry {
    /// The app that created it.
    pub app: Arc<str>,
    /// The shard that owns it.
    pub shard: ShardId,
    rate: Mutex<TokenBucket>,
}

/// A published track as seen from the API.
#[derive(Debug, Clone)]
pub struct PublishedTrack {
    /// Internal id.
    pub track: TrackId,
    /// Shard of the publishing session.
    pub shard: ShardId,
    /// Audio or video.
    pub kind: MediaKind,
    /// The publisher's negotiated codecs (its PTs).
    pub params: Vec<PayloadParams>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Directory {
    sessions: RwLock<HashMap<SessionId, SessionEntry>>,
    tracks: RwLock<HashMap<(SessionId, String), PublishedTrack>>,
    next_track: AtomicU64,
}

impl Directory {
    /// Registers a new session.
    pub fn add_session(&self, id: SessionId, app: Arc<str>, shard: ShardId, rate: u32) {
        self.sessions.write().insert(
            id,
            SessionEntry {
                app,
                shard,
                rate: Mutex::new(TokenBucket::per_second(rate, Instant::now())),
            },
        );
    }

    /// Forgets a session and every track it published.
    pub fn remove_session(&self, id: SessionId) {
        self.sessions.write().remove(&id);
        self.tracks.write().retain(|(s, _), _| *s != id);
    }

    /// The shard of a session of `app`, if it exists.
    pub fn session_shard(&self, app: &str, id: SessionId) -> Option<ShardId> {
        let sessions = self.sessions.read();
        let e = sessions.get(&id)?;
        (&*e.app == app).then_some(e.shard)
    }

    /// Takes one request token from a session's rate limit. `None`: unknown session.
    pub fn take_request_token(&self, app: &str, id: SessionId, now: Instant) -> Option<bool> {
        let sessions = self.sessions.read();
        let e = sessions.get(&id)?;
        if &*e.app != app {
            return None;
        }
        Some(e.rate.lock().try_take(now))
    }

    /// Number of sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.read().len()
    }

    /// A fresh track id.
    pub fn next_track_id(&self) -> TrackId {
        TrackId(self.next_track.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Publishes a track name; false if the session already has a track with that name.
    pub fn publish(&self, session: SessionId, name: &str, track: PublishedTrack) -> bool {
        let mut tracks = self.tracks.write();
        let key = (session, name.to_string());
        if tracks.contains_key(&key) {
            return false;
        }
        tracks.insert(key, track);
        true
    }

    /// Removes a published name (only if it still points at `track`).
    pub fn unpublish(&self, session: SessionId, name: &str, track: TrackId) {
        let mut tracks = self.tracks.write();
        let key = (session, name.to_string());
        if tracks.get(&key).is_some_and(|t| t.track == track) {
            tracks.remove(&key);
        }
    }

    /// Looks up a published track of a session of `app`.
    pub fn lookup(&self, app: &str, session: SessionId, name: &str) -> Option<PublishedTrack> {
        self.session_shard(app, session)?;
        self.tracks
            .read()
            .get(&(session, name.to_string()))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_scoped_to_their_app() {
        let d = Directory::default();
        let id = SessionId::random();
        d.add_session(id, Arc::from("a"), 0, 50);
        assert_eq!(d.session_shard("a", id), Some(0));
        assert_eq!(d.session_shard("b", id), None);
        assert_eq!(d.take_request_token("b", id, Instant::now()), None);
        let t = PublishedTrack {
            track: d.next_track_id(),
            shard: 0,
            kind: MediaKind::Audio,
            params: vec![],
        };
        assert!(d.publish(id, "mic", t.clone()));
        assert!(!d.publish(id, "mic", t.clone()));
        assert!(d.lookup("a", id, "mic").is_some());
        assert!(d.lookup("b", id, "mic").is_none());
        d.remove_session(id);
        assert!(d.lookup("a", id, "mic").is_none());
    }
}
