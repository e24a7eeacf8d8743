//! The directory: which sessions exist (their app and shard) and which tracks are published
//! under which name. Used only by the API (control path); the packet path never touches it.
//!
//! With the relay between SFU nodes on, it also holds the *remote* tracks this node pulls from
//! other nodes (published there, relayed here; [`Directory::publish_remote`]): a pull names them
//! like local tracks, and [`Directory::lookup`] finds them. And it reports every local track
//! published or gone to a listener ([`Directory::set_listener`]), so the relay can offer local
//! tracks to peer nodes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use str0m::format::PayloadParams;
use str0m::media::MediaKind;
use tokio::sync::mpsc;

use satsuma_common::TokenBucket;

use crate::ids::{SessionId, ShardId, TrackId};

/// A reserved place for one more session of an app (see [`Directory::reserve_session`]). It
/// travels with the create command to the shard: [`SessionSlot::commit`] hands it to the session
/// the shard registered; dropped uncommitted (the request was abandoned, the command never ran,
/// the creation failed or panicked), it gives the place back.
#[derive(Debug)]
pub struct SessionSlot {
    directory: Arc<Directory>,
    app: Arc<str>,
    armed: bool,
}

impl SessionSlot {
    /// The session now holds the place; [`Directory::remove_session`] gives it back.
    pub fn commit(mut self) {
        self.armed = false;
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        if self.armed {
            self.directory.release_reservation(&self.app);
        }
    }
}

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

/// A change to the local tracks, for the listener (see [`Directory::set_listener`]).
#[derive(Debug, Clone)]
pub enum TrackChange {
    /// A local session published a track.
    Published {
        /// The session's app.
        app: Arc<str>,
        /// The session.
        session: SessionId,
        /// The track name.
        name: String,
        /// The track.
        track: PublishedTrack,
    },
    /// A local track is gone (unpublished, or its session left).
    Unpublished {
        /// The track id.
        track: TrackId,
    },
}

/// A remote track's key: app, publishing session (on another node), track name.
type RemoteKey = (Arc<str>, SessionId, String);

/// See the module docs.
#[derive(Debug, Default)]
pub struct Directory {
    sessions: RwLock<HashMap<SessionId, SessionEntry>>,
    /// Live sessions per app, counting sessions being created (reserved by the API).
    app_sessions: Mutex<HashMap<Arc<str>, usize>>,
    tracks: RwLock<HashMap<(SessionId, String), PublishedTrack>>,
    /// Tracks of sessions on other nodes that this node pulls over the relay.
    remote: RwLock<HashMap<RemoteKey, PublishedTrack>>,
    next_track: AtomicU64,
    listener: Mutex<Option<mpsc::UnboundedSender<TrackChange>>>,
    /// Published data channels by session and name.
    pub channels: crate::shard::ChannelDirectory,
}

impl Directory {
    /// Reserves room for one more session of `app` if it holds fewer than `max`.
    pub fn reserve_session(self: &Arc<Self>, app: &Arc<str>, max: usize) -> Option<SessionSlot> {
        let mut counts = self.app_sessions.lock();
        let n = counts.entry(Arc::clone(app)).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SessionSlot {
            directory: Arc::clone(self),
            app: Arc::clone(app),
            armed: true,
        })
    }

    /// Gives back one place of `app`.
    fn release_reservation(&self, app: &str) {
        let mut counts = self.app_sessions.lock();
        if let Some(n) = counts.get_mut(app) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(app);
            }
        }
    }

    /// Live (and reserved) sessions of `app`.
    pub fn app_session_count(&self, app: &str) -> usize {
        self.app_sessions.lock().get(app).copied().unwrap_or(0)
    }

    /// Registers a new session (whose app reserved room for it).
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
        let removed = self.sessions.write().remove(&id);
        if let Some(e) = removed {
            self.release_reservation(&e.app);
            let mut gone = Vec::new();
            self.tracks.write().retain(|(s, _), t| {
                let keep = *s != id;
                if !keep {
                    gone.push(t.track);
                }
                keep
            });
            for track in gone {
                self.tell(TrackChange::Unpublished { track });
            }
        }
    }

    /// Where changes to the local tracks go from now on (the relay; one listener).
    pub fn set_listener(&self, tx: mpsc::UnboundedSender<TrackChange>) {
        *self.listener.lock() = Some(tx);
    }

    fn tell(&self, change: TrackChange) {
        if let Some(tx) = &*self.listener.lock() {
            let _ = tx.send(change);
        }
    }

    /// Forgets every session of a shard and their tracks (after the shard panicked); returns
    /// their ids.
    pub fn remove_shard(&self, shard: ShardId) -> Vec<SessionId> {
        let gone: Vec<(SessionId, Arc<str>)> = {
            let mut sessions = self.sessions.write();
            let ids: Vec<SessionId> = sessions
                .iter()
                .filter(|(_, e)| e.shard == shard)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| sessions.remove(&id).map(|e| (id, e.app)))
                .collect()
        };
        for (_, app) in &gone {
            self.release_reservation(app);
        }
        let mut ended = Vec::new();
        self.tracks.write().retain(|_, t| {
            let keep = t.shard != shard;
            if !keep {
                ended.push(t.track);
            }
            keep
        });
        for track in ended {
            self.tell(TrackChange::Unpublished { track });
        }
        gone.into_iter().map(|(id, _)| id).collect()
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
        {
            let mut tracks = self.tracks.write();
            let key = (session, name.to_string());
            if tracks.contains_key(&key) {
                return false;
            }
            tracks.insert(key, track.clone());
        }
        let app = self
            .sessions
            .read()
            .get(&session)
            .map(|e| Arc::clone(&e.app));
        if let Some(app) = app {
            self.tell(TrackChange::Published {
                app,
                session,
                name: name.to_string(),
                track,
            });
        }
        true
    }

    /// Removes a published name (only if it still points at `track`).
    pub fn unpublish(&self, session: SessionId, name: &str, track: TrackId) {
        let removed = {
            let mut tracks = self.tracks.write();
            let key = (session, name.to_string());
            tracks.get(&key).is_some_and(|t| t.track == track) && tracks.remove(&key).is_some()
        };
        if removed {
            self.tell(TrackChange::Unpublished { track });
        }
    }

    /// Looks up a published track of a session of `app`: a local one, else one pulled from
    /// another node (see [`Directory::publish_remote`]).
    pub fn lookup(&self, app: &str, session: SessionId, name: &str) -> Option<PublishedTrack> {
        if self.session_shard(app, session).is_some() {
            return self
                .tracks
                .read()
                .get(&(session, name.to_string()))
                .cloned();
        }
        self.remote
            .read()
            .get(&(Arc::from(app), session, name.to_string()))
            .cloned()
    }

    /// A track of session `session` (of `app`, on another node) relayed to this node: pulls of
    /// it find `track`, whose publication lives on `track.shard`.
    pub fn publish_remote(&self, app: &str, session: SessionId, name: &str, track: PublishedTrack) {
        self.remote
            .write()
            .insert((Arc::from(app), session, name.to_string()), track);
    }

    /// A relayed track is gone (only if the name still points at `track`).
    pub fn unpublish_remote(&self, app: &str, session: SessionId, name: &str, track: TrackId) {
        let mut remote = self.remote.write();
        let key = (Arc::from(app), session, name.to_string());
        if remote.get(&key).is_some_and(|t| t.track == track) {
            remote.remove(&key);
        }
    }

    /// Relayed tracks this node knows.
    pub fn remote_count(&self) -> usize {
        self.remote.read().len()
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

    #[test]
    fn app_session_counts_are_reserved_released_and_per_app() {
        let d = Arc::new(Directory::default());
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        let first = d.reserve_session(&a, 2).unwrap();
        let second = d.reserve_session(&a, 2).unwrap();
        assert!(d.reserve_session(&a, 2).is_none());
        let other = d.reserve_session(&b, 2).unwrap();
        // An abandoned or failed creation gives its place back.
        drop(second);
        assert_eq!(d.app_session_count("a"), 1);
        let id = SessionId::random();
        let slot = d.reserve_session(&a, 2).unwrap();
        d.add_session(id, Arc::clone(&a), 1, 50);
        slot.commit();
        assert_eq!(d.app_session_count("a"), 2);
        // Removing a session releases its place once, however often it is removed.
        d.remove_session(id);
        d.remove_session(id);
        assert_eq!(d.app_session_count("a"), 1);
        assert_eq!(d.app_session_count("b"), 1);
        first.commit();
        other.commit();
    }

    #[test]
    fn the_listener_hears_of_local_tracks_and_lookups_find_relayed_ones() {
        let d = Arc::new(Directory::default());
        let (tx, mut rx) = mpsc::unbounded_channel();
        d.set_listener(tx);
        let app: Arc<str> = Arc::from("a");
        let id = SessionId::random();
        let slot = d.reserve_session(&app, 10).unwrap();
        d.add_session(id, Arc::clone(&app), 0, 50);
        slot.commit();
        let track = |shard| PublishedTrack {
            track: d.next_track_id(),
            shard,
            kind: MediaKind::Video,
            params: vec![],
        };
        let cam = track(0);
        assert!(d.publish(id, "cam", cam.clone()));
        match rx.try_recv().unwrap() {
            TrackChange::Published {
                app: a,
                session,
                name,
                track,
            } => {
                assert_eq!((&*a, session, name.as_str()), ("a", id, "cam"));
                assert_eq!(track.track, cam.track);
            }
            other => panic!("{other:?}"),
        }
        // A refused duplicate is not reported; an unpublish and a session's end are.
        assert!(!d.publish(id, "cam", track(0)));
        assert!(rx.try_recv().is_err());
        assert!(d.publish(id, "mic", track(0)));
        d.unpublish(id, "cam", cam.track);
        d.remove_session(id);
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(matches!(events[1], TrackChange::Unpublished { track } if track == cam.track));
        assert!(matches!(events[2], TrackChange::Unpublished { .. }));

        // A track of a session on another node, relayed here: found under its app only.
        let remote = SessionId::random();
        let relayed = track(1);
        d.publish_remote("a", remote, "cam", relayed.clone());
        assert_eq!(
            d.lookup("a", remote, "cam").map(|t| t.track),
            Some(relayed.track)
        );
        assert!(d.lookup("b", remote, "cam").is_none());
        assert!(d.lookup("a", remote, "mic").is_none());
        // Removing it needs the same track id (a newer relay of the name stays).
        d.unpublish_remote("a", remote, "cam", TrackId(u64::MAX));
        assert_eq!(d.remote_count(), 1);
        d.unpublish_remote("a", remote, "cam", relayed.track);
        assert!(d.lookup("a", remote, "cam").is_none());
        assert!(
            rx.try_recv().is_err(),
            "relayed tracks are not offered to the relay"
        );
    }

    #[test]
    fn removing_a_shard_forgets_its_sessions_and_tracks_only() {
        let d = Arc::new(Directory::default());
        let app: Arc<str> = Arc::from("a");
        let (x, y) = (SessionId::random(), SessionId::random());
        for (id, shard) in [(x, 0), (y, 1)] {
            let slot = d.reserve_session(&app, 10).unwrap();
            d.add_session(id, Arc::clone(&app), shard, 50);
            slot.commit();
            let t = PublishedTrack {
                track: d.next_track_id(),
                shard,
                kind: MediaKind::Audio,
                params: vec![],
            };
            assert!(d.publish(id, "mic", t));
        }
        assert_eq!(d.remove_shard(0), vec![x]);
        assert_eq!(d.session_shard("a", x), None);
        assert!(d.lookup("a", x, "mic").is_none());
        assert_eq!(d.session_shard("a", y), Some(1));
        assert!(d.lookup("a", y, "mic").is_some());
        assert_eq!(d.app_session_count("a"), 1);
    }
}
