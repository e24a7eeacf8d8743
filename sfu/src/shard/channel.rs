//! Data channels, as Cloudflare Realtime's `datachannels/new` has them: a session publishes a
//! named channel (`location: local`), other sessions of the app subscribe to it (`location:
//! remote`), and every message the publisher sends on it reaches every subscriber, in order.
//! Channels are one-way (publisher → subscribers), as Cloudflare's are.
//!
//! Each channel is an SCTP stream the SFU and the client open out of band (`negotiated: true`
//! in the browser): the SFU picks the stream id (odd ids, the DTLS server's half, since str0m
//! answers offers as the DTLS server and the browser's own in-band channels take even ids) and
//! returns it as `id`. A session needs an SCTP association for that: its offer must carry an
//! `m=application` section (a browser adds one when a data channel exists before the offer).
//!
//! [`ChannelRouter`] is the sans-IO bookkeeping (which session publishes which channel on which
//! stream, which sessions subscribe, which shards hold subscribers, the per-session limits); the
//! `impl Core` below ties it to str0m's channel API and the cross-shard messages
//! ([`ChannelPeerMsg`]). A published channel has a unique [`TrackId`] (from the same counter as
//! tracks) as its key across shards.
//!
//! Limits: a message longer than [`ChannelLimits::max_message_bytes`] is not forwarded, a
//! session sending more than [`ChannelLimits::session_messages_per_second`] has the excess
//! dropped, and a session holds at most [`ChannelLimits::session_max_channels`] channels. Each
//! drop is logged (debug) and counted (`satsuma_sfu_datachannel_dropped_total{reason}`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;
use prometheus::core::Collector;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};

use satsuma_common::TokenBucket;
use satsuma_wire::realtime::api_error_code;

use super::commands::CoreError;
use super::core::{Core, PeerMsg};
use crate::api::types::{
    DataChannelObject, DataChannelResult, DataChannelState, DataChannelsRequest,
    DataChannelsResponse, Location, TrackStatus,
};
use crate::ids::{SessionId, ShardId, TrackId};
use crate::session::Session;

/// Limits on data channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelLimits {
    /// Longest message forwarded, in bytes (longer ones are dropped and counted as
    /// `too_large`). 16 KiB is the size every WebRTC stack interoperates at (RFC 8831 §6.6).
    pub max_message_bytes: usize,
    /// Messages one session may send per second, over all its channels (token bucket, burst
    /// the same number); the excess is dropped and counted as `rate_limited`.
    pub session_messages_per_second: u32,
    /// Channels (published and subscribed) one session may hold at once.
    pub session_max_channels: usize,
    /// Channels one session may open over its life (stream ids are never reused in a session).
    pub session_max_opened: usize,
}

impl Default for ChannelLimits {
    fn default() -> Self {
        ChannelLimits::from(&crate::config::Limits::default())
    }
}

impl From<&crate::config::Limits> for ChannelLimits {
    /// The data channel limits of the SFU's configuration.
    fn from(l: &crate::config::Limits) -> Self {
        ChannelLimits {
            max_message_bytes: l.datachannel_max_message_bytes,
            session_messages_per_second: l.session_datachannel_messages_per_second,
            session_max_channels: l.session_max_datachannels,
            session_max_opened: l.session_max_datachannels.saturating_mul(4),
        }
    }
}

/// Longest `dataChannelName`, in bytes.
pub(crate) const MAX_NAME_BYTES: usize = 256;

/// Why a data channel message was not forwarded (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelDrop {
    /// Longer than [`ChannelLimits::max_message_bytes`].
    TooLarge,
    /// Over the session's [`ChannelLimits::session_messages_per_second`].
    RateLimited,
    /// Sent on a stream the session did not publish (a subscriber's channel is one-way, or an
    /// in-band channel the SFU does not forward).
    NotPublished,
    /// A subscriber's stream is not open yet (its SCTP association or the stream is still
    /// being set up).
    NotOpen,
    /// A subscriber's SCTP send buffer is full (it does not keep up).
    Backlog,
    /// str0m refused the write.
    WriteFailed,
}

impl ChannelDrop {
    /// Every variant, in label order.
    pub const ALL: [ChannelDrop; 6] = [
        ChannelDrop::TooLarge,
        ChannelDrop::RateLimited,
        ChannelDrop::NotPublished,
        ChannelDrop::NotOpen,
        ChannelDrop::Backlog,
        ChannelDrop::WriteFailed,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            ChannelDrop::TooLarge => "too_large",
            ChannelDrop::RateLimited => "rate_limited",
            ChannelDrop::NotPublished => "not_published",
            ChannelDrop::NotOpen => "not_open",
            ChannelDrop::Backlog => "backlog",
            ChannelDrop::WriteFailed => "write_failed",
        }
    }
}

/// Data channel metrics (`satsuma_sfu_datachannel_*`), registered in the SFU's registry
/// ([`crate::metrics::Metrics::datachannels`]).
#[derive(Clone)]
pub struct ChannelMetrics {
    /// Channels held by sessions, published (`local`) and subscribed (`remote`).
    pub channels: IntGauge,
    /// Messages received from publishers.
    pub messages_in: IntCounter,
    /// Messages written to subscribers.
    pub messages_out: IntCounter,
    /// Their bytes.
    pub bytes_out: IntCounter,
    /// Messages dropped, by reason (see [`ChannelDrop`]); a message is counted once per
    /// subscriber it did not reach.
    pub dropped: IntCounterVec,
}

impl ChannelMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> ChannelMetrics {
        fn reg<M: Collector + Clone + 'static>(r: &Registry, m: prometheus::Result<M>) -> M {
            // Names and labels are constants (checked by the unit test below): a failure is a
            // programming error, never something a peer triggers.
            #[allow(clippy::expect_used)]
            let m = m.expect("data channel metric is well-formed");
            #[allow(clippy::expect_used)]
            r.register(Box::new(m.clone()))
                .expect("data channel metric registers once");
            m
        }
        let o = |name: &str, help: &str| Opts::new(name, help).namespace("satsuma_sfu");
        let m = ChannelMetrics {
            channels: reg(
                registry,
                IntGauge::with_opts(o(
                    "datachannels",
                    "Data channels held by sessions (published and subscribed)",
                )),
            ),
            messages_in: reg(
                registry,
                IntCounter::with_opts(o(
                    "datachannel_messages_in_total",
                    "Data channel messages received from publishers",
                )),
            ),
            messages_out: reg(
                registry,
                IntCounter::with_opts(o(
                    "datachannel_messages_out_total",
                    "Data channel messages written to subscribers",
                )),
            ),
            bytes_out: reg(
                registry,
                IntCounter::with_opts(o(
                    "datachannel_bytes_out_total",
                    "Bytes of data channel messages written to subscribers",
                )),
            ),
            dropped: reg(
                registry,
                IntCounterVec::new(
                    o(
                        "datachannel_dropped_total",
                        "Data channel messages dropped, by reason",
                    ),
                    &["reason"],
                ),
            ),
        };
        for d in ChannelDrop::ALL {
            m.dropped.with_label_values(&[d.label()]);
        }
        m
    }

    /// Counts a drop.
    pub fn drop(&self, reason: ChannelDrop) {
        self.dropped.with_label_values(&[reason.label()]).inc();
    }
}

impl std::fmt::Debug for ChannelMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelMetrics")
    }
}

/// Which channels are published under which name (the API's view, shared by the shards like
/// [`crate::directory::Directory`], which holds it).
#[derive(Debug, Default)]
pub struct ChannelDirectory {
    channels: RwLock<HashMap<(SessionId, String), (TrackId, ShardId)>>,
}

impl ChannelDirectory {
    /// Registers a published channel; false if the session already publishes one by that name.
    pub fn publish(&self, session: SessionId, name: &str, key: TrackId, shard: ShardId) -> bool {
        let mut m = self.channels.write();
        let k = (session, name.to_string());
        if m.contains_key(&k) {
            return false;
        }
        m.insert(k, (key, shard));
        true
    }

    /// The channel `session` publishes as `name`: its key and the publisher's shard.
    pub fn lookup(&self, session: SessionId, name: &str) -> Option<(TrackId, ShardId)> {
        self.channels
            .read()
            .get(&(session, name.to_string()))
            .copied()
    }

    /// Forgets a published channel (if it is still `key`).
    pub fn unpublish(&self, session: SessionId, name: &str, key: TrackId) {
        let mut m = self.channels.write();
        let k = (session, name.to_string());
        if m.get(&k).is_some_and(|(c, _)| *c == key) {
            m.remove(&k);
        }
    }

    /// Forgets every channel of a session.
    pub fn remove_session(&self, session: SessionId) {
        self.channels.write().retain(|(s, _), _| *s != session);
    }

    /// Forgets every channel published on a shard.
    pub fn remove_shard(&self, shard: ShardId) {
        self.channels.write().retain(|_, (_, s)| *s != shard);
    }
}

/// A message on a published channel, shared by every shard that forwards it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelMessage {
    /// Binary or text (the WebRTC PPID).
    pub binary: bool,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Messages between shards about data channels (inside [`PeerMsg::Channel`]).
#[derive(Debug)]
pub enum ChannelPeerMsg {
    /// A message of a channel some of the receiver's sessions subscribe to.
    Data {
        /// Channel.
        key: TrackId,
        /// The message.
        message: Arc<ChannelMessage>,
    },
    /// Shard `shard` gained its first subscriber of the receiver's channel.
    Subscribe {
        /// Channel.
        key: TrackId,
        /// Subscriber shard.
        shard: ShardId,
    },
    /// Shard `shard` lost its last subscriber of the receiver's channel.
    Unsubscribe {
        /// Channel.
        key: TrackId,
        /// Subscriber shard.
        shard: ShardId,
    },
    /// A channel the receiver's sessions subscribe to is gone.
    Ended {
        /// Channel.
        key: TrackId,
    },
}

/// Published or subscribed, with what each needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChannelRole {
    /// Published by this session.
    Local,
    /// Subscribed from another session.
    Remote {
        /// The publishing session.
        source: SessionId,
        /// Its shard.
        home: ShardId,
        /// The publisher closed the channel or went away.
        ended: bool,
    },
}

/// One channel of a session. `H` is str0m's handle of it ([`ChannelId`]; tests use `()`).
#[derive(Debug, Clone)]
pub(crate) struct ChannelEntry<H> {
    /// The channel's name.
    pub name: String,
    /// The published channel's key.
    pub key: TrackId,
    /// Local or remote.
    pub role: ChannelRole,
    /// str0m's handle.
    pub handle: H,
}

#[derive(Debug)]
struct SessionChannels<H> {
    /// By SCTP stream id.
    channels: BTreeMap<u16, ChannelEntry<H>>,
    /// Next stream id to hand out (odd, never reused).
    next_stream: u16,
    /// Channels opened over the session's life.
    opened: usize,
    rate: TokenBucket,
}

#[derive(Debug)]
struct Published {
    /// Shards with subscribers (this one included when it has some).
    shards: HashSet<ShardId>,
}

/// A channel that went away: what the caller must tell str0m and the other shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Closed<H> {
    /// A published channel: its subscribers' shards must hear [`ChannelPeerMsg::Ended`].
    Local {
        /// Session.
        session: SessionId,
        /// Stream.
        stream: u16,
        /// Key.
        key: TrackId,
        /// Name.
        name: String,
        /// Shards with subscribers.
        shards: Vec<ShardId>,
        /// str0m's handle.
        handle: H,
    },
    /// A subscription: when it was the shard's last on `key`, the publisher's shard must hear
    /// [`ChannelPeerMsg::Unsubscribe`].
    Remote {
        /// Session.
        session: SessionId,
        /// Stream.
        stream: u16,
        /// Key.
        key: TrackId,
        /// The publisher's shard.
        home: ShardId,
        /// Whether this shard has no subscriber of `key` left.
        last_on_shard: bool,
        /// str0m's handle.
        handle: H,
    },
}

/// Why a channel could not be added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AddRefused {
    /// The session holds its limit of channels.
    TooMany(usize),
    /// The session opened its limit of channels over its life.
    Exhausted(usize),
}

/// The sans-IO bookkeeping of one shard's data channels (see the module docs).
#[derive(Debug)]
pub(crate) struct ChannelRouter<H> {
    limits: ChannelLimits,
    sessions: HashMap<SessionId, SessionChannels<H>>,
    /// Channels published by this shard's sessions.
    published: HashMap<TrackId, Published>,
    /// This shard's subscribers of each channel, in the order they subscribed.
    subscribers: HashMap<TrackId, Vec<(SessionId, u16)>>,
}

impl<H: Copy> ChannelRouter<H> {
    /// An empty router.
    pub(crate) fn new(limits: ChannelLimits) -> Self {
        ChannelRouter {
            limits,
            sessions: HashMap::new(),
            published: HashMap::new(),
            subscribers: HashMap::new(),
        }
    }

    /// The limits.
    pub(crate) fn limits(&self) -> &ChannelLimits {
        &self.limits
    }

    fn session(&mut self, id: SessionId, now: Instant) -> &mut SessionChannels<H> {
        let rate = self.limits.session_messages_per_second;
        self.sessions.entry(id).or_insert_with(|| SessionChannels {
            channels: BTreeMap::new(),
            next_stream: 1,
            opened: 0,
            rate: TokenBucket::per_second(rate, now),
        })
    }

    /// The stream id the session's next channel gets: the next odd id that `in_use` (what
    /// str0m already knows of) does not hold, or why there is none.
    pub(crate) fn next_stream(
        &mut self,
        id: SessionId,
        now: Instant,
        in_use: impl Fn(u16) -> bool,
    ) -> Result<u16, AddRefused> {
        let limits = self.limits.clone();
        let s = self.session(id, now);
        if s.channels.len() >= limits.session_max_channels {
            return Err(AddRefused::TooMany(limits.session_max_channels));
        }
        if s.opened >= limits.session_max_opened {
            return Err(AddRefused::Exhausted(limits.session_max_opened));
        }
        let mut stream = s.next_stream;
        while in_use(stream) || s.channels.contains_key(&stream) {
            stream = stream
                .checked_add(2)
                .ok_or(AddRefused::Exhausted(limits.session_max_opened))?;
        }
        Ok(stream)
    }

    fn add(&mut self, id: SessionId, stream: u16, entry: ChannelEntry<H>, now: Instant) {
        let s = self.session(id, now);
        s.channels.insert(stream, entry);
        s.opened += 1;
        s.next_stream = stream.saturating_add(2);
    }

    /// Registers a channel `id` publishes on `stream` (from [`Self::next_stream`]).
    pub(crate) fn publish(
        &mut self,
        id: SessionId,
        stream: u16,
        name: &str,
        key: TrackId,
        handle: H,
        now: Instant,
    ) {
        let entry = ChannelEntry {
            name: name.to_string(),
            key,
            role: ChannelRole::Local,
            handle,
        };
        self.add(id, stream, entry, now);
        self.published.insert(
            key,
            Published {
                shards: HashSet::new(),
            },
        );
    }

    /// Registers `id`'s subscription on `stream` to channel `key` of `source` (on shard
    /// `home`); true when it is this shard's first subscriber of `key` (the publisher's shard
    /// must then hear [`ChannelPeerMsg::Subscribe`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn subscribe(
        &mut self,
        id: SessionId,
        stream: u16,
        name: &str,
        source: SessionId,
        key: TrackId,
        home: ShardId,
        handle: H,
        now: Instant,
    ) -> bool {
        let entry = ChannelEntry {
            name: name.to_string(),
            key,
            role: ChannelRole::Remote {
                source,
                home,
                ended: false,
            },
            handle,
        };
        self.add(id, stream, entry, now);
        let subs = self.subscribers.entry(key).or_default();
        subs.push((id, stream));
        subs.len() == 1
    }

    /// Whether `id` publishes a channel named `name`.
    pub(crate) fn publishes(&self, id: SessionId, name: &str) -> bool {
        self.sessions.get(&id).is_some_and(|s| {
            s.channels
                .values()
                .any(|c| c.role == ChannelRole::Local && c.name == name)
        })
    }

    /// A message of `len` bytes that session `id` sent on `stream`: the key of the channel to
    /// forward it on, or why not.
    pub(crate) fn on_message(
        &mut self,
        id: SessionId,
        stream: u16,
        len: usize,
        now: Instant,
    ) -> Result<TrackId, ChannelDrop> {
        let max = self.limits.max_message_bytes;
        let s = self
            .sessions
            .get_mut(&id)
            .ok_or(ChannelDrop::NotPublished)?;
        let entry = s.channels.get(&stream).ok_or(ChannelDrop::NotPublished)?;
        if entry.role != ChannelRole::Local {
            return Err(ChannelDrop::NotPublished);
        }
        let key = entry.key;
        if len > max {
            return Err(ChannelDrop::TooLarge);
        }
        if !s.rate.try_take(now) {
            return Err(ChannelDrop::RateLimited);
        }
        Ok(key)
    }

    /// The shards with subscribers of published channel `key`.
    pub(crate) fn subscriber_shards(&self, key: TrackId) -> Vec<ShardId> {
        self.published.get(&key).map_or_else(Vec::new, |p| {
            let mut v: Vec<ShardId> = p.shards.iter().copied().collect();
            v.sort_unstable();
            v
        })
    }

    /// This shard's subscribers of `key` with their stream and handle, in subscription order.
    pub(crate) fn local_subscribers(&self, key: TrackId) -> Vec<(SessionId, u16, H)> {
        let Some(subs) = self.subscribers.get(&key) else {
            return Vec::new();
        };
        subs.iter()
            .filter_map(|(s, stream)| {
                let e = self.sessions.get(s)?.channels.get(stream)?;
                Some((*s, *stream, e.handle))
            })
            .collect()
    }

    /// Shard `shard` subscribes to published channel `key`; false if `key` is not published
    /// here (any more): the shard must hear [`ChannelPeerMsg::Ended`].
    pub(crate) fn add_subscriber_shard(&mut self, key: TrackId, shard: ShardId) -> bool {
        match self.published.get_mut(&key) {
            Some(p) => {
                p.shards.insert(shard);
                true
            }
            None => false,
        }
    }

    /// Shard `shard` no longer subscribes to `key`.
    pub(crate) fn remove_subscriber_shard(&mut self, key: TrackId, shard: ShardId) {
        if let Some(p) = self.published.get_mut(&key) {
            p.shards.remove(&shard);
        }
    }

    /// The stream of `id`'s channel that `obj` names: by `id`, or by location and name (and
    /// the publisher's session for a remote one).
    pub(crate) fn find(&self, id: SessionId, obj: &DataChannelObject) -> Option<u16> {
        let s = self.sessions.get(&id)?;
        if let Some(stream) = obj.id {
            return s.channels.contains_key(&stream).then_some(stream);
        }
        let name = obj.data_channel_name.as_deref()?;
        let source = obj.session_id.as_deref().and_then(SessionId::parse);
        s.channels
            .iter()
            .find(|(_, c)| {
                c.name == name
                    && match (&c.role, obj.location) {
                        (ChannelRole::Local, Some(Location::Local) | None) => true,
                        (ChannelRole::Remote { source: src, .. }, Some(Location::Remote)) => {
                            source.is_none_or(|want| want == *src)
                        }
                        _ => false,
                    }
            })
            .map(|(stream, _)| *stream)
    }

    /// Closes `id`'s channel on `stream`.
    pub(crate) fn close(&mut self, id: SessionId, stream: u16) -> Option<Closed<H>> {
        let entry = self.sessions.get_mut(&id)?.channels.remove(&stream)?;
        Some(self.closed(id, stream, entry))
    }

    fn closed(&mut self, id: SessionId, stream: u16, entry: ChannelEntry<H>) -> Closed<H> {
        match entry.role {
            ChannelRole::Local => {
                let shards = self.subscriber_shards(entry.key);
                self.published.remove(&entry.key);
                Closed::Local {
                    session: id,
                    stream,
                    key: entry.key,
                    name: entry.name,
                    shards,
                    handle: entry.handle,
                }
            }
            ChannelRole::Remote { home, .. } => {
                let mut last_on_shard = false;
                if let Some(subs) = self.subscribers.get_mut(&entry.key) {
                    let before = subs.len();
                    subs.retain(|(s, st)| !(*s == id && *st == stream));
                    if subs.is_empty() {
                        self.subscribers.remove(&entry.key);
                        // Only a subscription that was still counted unsubscribes the shard.
                        last_on_shard = before > 0;
                    }
                }
                Closed::Remote {
                    session: id,
                    stream,
                    key: entry.key,
                    home,
                    last_on_shard,
                    handle: entry.handle,
                }
            }
        }
    }

    /// Published channel `key` is gone: this shard's subscriptions to it end (they stay
    /// listed as inactive until closed). Returns them.
    pub(crate) fn end_channel(&mut self, key: TrackId) -> Vec<(SessionId, u16, H)> {
        let Some(subs) = self.subscribers.remove(&key) else {
            return Vec::new();
        };
        let mut ended = Vec::new();
        for (s, stream) in subs {
            if let Some(e) = self
                .sessions
                .get_mut(&s)
                .and_then(|c| c.channels.get_mut(&stream))
                && let ChannelRole::Remote { ended: flag, .. } = &mut e.role
            {
                *flag = true;
                ended.push((s, stream, e.handle));
            }
        }
        ended
    }

    /// Session `id` is gone: every channel of it, closed.
    pub(crate) fn remove_session(&mut self, id: SessionId) -> Vec<Closed<H>> {
        let Some(s) = self.sessions.remove(&id) else {
            return Vec::new();
        };
        s.channels
            .into_iter()
            .map(|(stream, entry)| self.closed(id, stream, entry))
            .collect()
    }

    /// Shard `shard` was reset: forget it as a subscriber shard, and end the subscriptions to
    /// channels it published before `before`. Returns the channels to end.
    pub(crate) fn forget_shard(&mut self, shard: ShardId, before: TrackId) -> Vec<TrackId> {
        for p in self.published.values_mut() {
            p.shards.remove(&shard);
        }
        let mut keys: Vec<TrackId> = self
            .sessions
            .values()
            .flat_map(|s| s.channels.values())
            .filter_map(|c| match c.role {
                ChannelRole::Remote {
                    home, ended: false, ..
                } if home == shard && c.key < before => Some(c.key),
                _ => None,
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// `id`'s channels by stream id.
    pub(crate) fn channels(&self, id: SessionId) -> Vec<(u16, &ChannelEntry<H>)> {
        self.sessions.get(&id).map_or_else(Vec::new, |s| {
            s.channels.iter().map(|(st, e)| (*st, e)).collect()
        })
    }

    /// The stream of `id`'s channel with str0m handle `handle`.
    pub(crate) fn stream_of(&self, id: SessionId, handle: H) -> Option<u16>
    where
        H: PartialEq,
    {
        self.sessions
            .get(&id)?
            .channels
            .iter()
            .find(|(_, e)| e.handle == handle)
            .map(|(s, _)| *s)
    }

    /// Whether `id`'s subscription on `stream` ended (its publisher closed it or went away).
    pub(crate) fn is_ended(&self, id: SessionId, stream: u16) -> bool {
        self.sessions
            .get(&id)
            .and_then(|s| s.channels.get(&stream))
            .is_some_and(|e| matches!(e.role, ChannelRole::Remote { ended: true, .. }))
    }

    /// Published channels of this shard.
    #[cfg(test)]
    fn published_count(&self) -> usize {
        self.published.len()
    }
}

/// What str0m reported about a session's channels (from draining it).
#[derive(Debug)]
pub(crate) enum ChannelEvent {
    /// A message on SCTP stream `stream`.
    Data {
        /// Stream.
        stream: u16,
        /// The message.
        message: ChannelMessage,
    },
    /// The client closed a channel (str0m has forgotten its stream id by then).
    Closed {
        /// str0m's handle.
        handle: ChannelId,
    },
}

/// Whether an SDP offer has an `m=application` section (an SCTP association for data channels).
pub(crate) fn offers_data(sdp: &str) -> bool {
    sdp.lines().any(|l| l.starts_with("m=application"))
}

fn invalid(r: DataChannelResult, text: impl Into<String>) -> DataChannelResult {
    r.with_error(api_error_code::INVALID_PARAMS, text)
}

/// A valid `dataChannelName`: 1 to [`MAX_NAME_BYTES`] bytes, no control characters.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_BYTES && !name.chars().any(char::is_control)
}

/// Writes `message` on stream `stream` of `session`.
fn write(session: &mut Session, stream: u16, message: &ChannelMessage) -> Result<(), ChannelDrop> {
    let Some(cid) = session
        .rtc
        .direct_api()
        .channel_id_by_sctp_stream_id(stream)
    else {
        return Err(ChannelDrop::NotOpen);
    };
    let Some(mut ch) = session.rtc.channel(cid) else {
        return Err(ChannelDrop::NotOpen);
    };
    match ch.write(message.binary, &message.data) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ChannelDrop::Backlog),
        Err(_) => Err(ChannelDrop::WriteFailed),
    }
}

impl Core {
    /// `POST datachannels/new`.
    pub(super) fn datachannels_new(
        &mut self,
        id: SessionId,
        request: DataChannelsRequest,
    ) -> Result<DataChannelsResponse, CoreError> {
        let now = self.now;
        let session = self.sessions.get(&id).ok_or(CoreError::NoSession)?;
        if !session.data_offered {
            return Err(CoreError::InvalidParams(
                "this session has no SCTP association for data channels: its offer needs an \
                 m=application section (create a data channel before the offer)"
                    .into(),
            ));
        }
        let app = Arc::clone(&session.app);
        let mut results = Vec::with_capacity(request.data_channels.len());
        for obj in &request.data_channels {
            let r = DataChannelResult {
                location: obj.location,
                data_channel_name: obj.data_channel_name.clone(),
                session_id: obj.session_id.clone(),
                ..Default::default()
            };
            let Some(name) = obj.data_channel_name.as_deref() else {
                results.push(invalid(r, "dataChannelName is required"));
                continue;
            };
            if !valid_name(name) {
                results.push(invalid(
                    r,
                    format!(
                        "dataChannelName must be 1 to {MAX_NAME_BYTES} bytes without control characters"
                    ),
                ));
                continue;
            }
            let result = match obj.location {
                Some(Location::Local) => self.publish_channel(id, name, now),
                Some(Location::Remote) => {
                    self.subscribe_channel(id, &app, obj.session_id.as_deref(), name, now)
                }
                None => Err((
                    api_error_code::INVALID_PARAMS,
                    "location must be local or remote".into(),
                )),
            };
            results.push(match result {
                Ok(stream) => DataChannelResult {
                    id: Some(stream),
                    ..r
                },
                Err((code, text)) => r.with_error(code, text),
            });
        }
        Ok(DataChannelsResponse {
            data_channels: results,
        })
    }

    fn next_stream(&mut self, id: SessionId, now: Instant) -> Result<u16, (&'static str, String)> {
        let session = self.sessions.get_mut(&id).ok_or((
            api_error_code::SESSION_NOT_FOUND,
            "no such session for this app".to_string(),
        ))?;
        let api = session.rtc.direct_api();
        self.channels
            .next_stream(id, now, |s| api.channel_id_by_sctp_stream_id(s).is_some())
            .map_err(|e| match e {
                AddRefused::TooMany(n) => (
                    api_error_code::TOO_MANY_DATACHANNELS,
                    format!("a session may hold at most {n} data channels at once"),
                ),
                AddRefused::Exhausted(n) => (
                    api_error_code::TOO_MANY_DATACHANNELS,
                    format!("this session has opened {n} data channels over its life; start a new session"),
                ),
            })
    }

    fn open_stream(&mut self, id: SessionId, stream: u16, name: &str) -> Option<ChannelId> {
        let session = self.sessions.get_mut(&id)?;
        Some(session.rtc.direct_api().create_data_channel(ChannelConfig {
            label: name.to_string(),
            ordered: true,
            reliability: Reliability::Reliable,
            negotiated: Some(stream),
            protocol: String::new(),
        }))
    }

    fn publish_channel(
        &mut self,
        id: SessionId,
        name: &str,
        now: Instant,
    ) -> Result<u16, (&'static str, String)> {
        if self.channels.publishes(id, name) {
            return Err((
                api_error_code::DUPLICATE_DATACHANNEL_NAME,
                format!("this session already publishes a data channel named {name}"),
            ));
        }
        let stream = self.next_stream(id, now)?;
        let key = self.ctx.directory.next_track_id();
        if !self.ctx.directory.channels.publish(id, name, key, self.id) {
            return Err((
                api_error_code::DUPLICATE_DATACHANNEL_NAME,
                format!("this session already publishes a data channel named {name}"),
            ));
        }
        let Some(handle) = self.open_stream(id, stream, name) else {
            self.ctx.directory.channels.unpublish(id, name, key);
            return Err((
                api_error_code::SESSION_NOT_FOUND,
                "no such session for this app".into(),
            ));
        };
        self.channels.publish(id, stream, name, key, handle, now);
        self.ctx.metrics.datachannels.channels.inc();
        Ok(stream)
    }

    fn subscribe_channel(
        &mut self,
        id: SessionId,
        app: &str,
        source: Option<&str>,
        name: &str,
        now: Instant,
    ) -> Result<u16, (&'static str, String)> {
        let Some(sid) = source else {
            return Err((
                api_error_code::INVALID_PARAMS,
                "a remote data channel needs sessionId".into(),
            ));
        };
        let not_found = || {
            (
                api_error_code::NOT_FOUND,
                format!("session {sid} publishes no data channel named {name}"),
            )
        };
        let source = SessionId::parse(sid).ok_or_else(not_found)?;
        if source == id {
            return Err((
                api_error_code::INVALID_PARAMS,
                "a session cannot subscribe to its own data channel".into(),
            ));
        }
        // The source must be a session of the same app.
        self.ctx
            .directory
            .session_shard(app, source)
            .ok_or_else(not_found)?;
        let (key, home) = self
            .ctx
            .directory
            .channels
            .lookup(source, name)
            .ok_or_else(not_found)?;
        let stream = self.next_stream(id, now)?;
        let Some(handle) = self.open_stream(id, stream, name) else {
            return Err((
                api_error_code::SESSION_NOT_FOUND,
                "no such session for this app".into(),
            ));
        };
        if self
            .channels
            .subscribe(id, stream, name, source, key, home, handle, now)
        {
            let shard = self.id;
            self.send_to_shard(
                home,
                PeerMsg::Channel(ChannelPeerMsg::Subscribe { key, shard }),
            );
        }
        self.ctx.metrics.datachannels.channels.inc();
        Ok(stream)
    }

    /// `PUT datachannels/close` (Satsuma extension).
    pub(super) fn datachannels_close(
        &mut self,
        id: SessionId,
        request: DataChannelsRequest,
    ) -> Result<DataChannelsResponse, CoreError> {
        if !self.sessions.contains_key(&id) {
            return Err(CoreError::NoSession);
        }
        let mut results = Vec::with_capacity(request.data_channels.len());
        for obj in &request.data_channels {
            let r = DataChannelResult {
                location: obj.location,
                data_channel_name: obj.data_channel_name.clone(),
                session_id: obj.session_id.clone(),
                id: obj.id,
                ..Default::default()
            };
            if obj.id.is_none() && obj.data_channel_name.is_none() {
                results.push(invalid(r, "name a data channel by id or dataChannelName"));
                continue;
            }
            let closed = self
                .channels
                .find(id, obj)
                .and_then(|stream| self.channels.close(id, stream));
            match closed {
                Some(c) => {
                    let stream = match &c {
                        Closed::Local { stream, .. } | Closed::Remote { stream, .. } => *stream,
                    };
                    self.after_close(c, true);
                    results.push(DataChannelResult {
                        id: Some(stream),
                        ..r
                    });
                }
                None => results.push(r.with_error(
                    api_error_code::NOT_FOUND,
                    "this session has no such data channel",
                )),
            }
        }
        Ok(DataChannelsResponse {
            data_channels: results,
        })
    }

    /// Tells str0m (when `close_stream`), the directory and the other shards that a channel
    /// is gone.
    fn after_close(&mut self, closed: Closed<ChannelId>, close_stream: bool) {
        self.ctx.metrics.datachannels.channels.dec();
        match closed {
            Closed::Local {
                session,
                key,
                name,
                shards,
                handle,
                ..
            } => {
                self.ctx.directory.channels.unpublish(session, &name, key);
                for shard in shards {
                    self.send_to_shard(shard, PeerMsg::Channel(ChannelPeerMsg::Ended { key }));
                }
                if close_stream {
                    self.close_stream(session, handle);
                }
            }
            Closed::Remote {
                session,
                key,
                home,
                last_on_shard,
                handle,
                ..
            } => {
                if last_on_shard {
                    let shard = self.id;
                    self.send_to_shard(
                        home,
                        PeerMsg::Channel(ChannelPeerMsg::Unsubscribe { key, shard }),
                    );
                }
                if close_stream {
                    self.close_stream(session, handle);
                }
            }
        }
    }

    /// Resets the stream (the client's channel closes).
    fn close_stream(&mut self, session: SessionId, handle: ChannelId) {
        if let Some(s) = self.sessions.get_mut(&session) {
            let r = catch_unwind(AssertUnwindSafe(|| {
                s.rtc.direct_api().close_data_channel(handle)
            }));
            if r.is_err() {
                self.session_panicked(session);
                return;
            }
            self.mark_dirty(session);
        }
    }

    /// The data channels of `id` for `GET sessions/{id}`.
    pub(super) fn datachannel_states(&mut self, id: SessionId) -> Vec<DataChannelState> {
        let entries: Vec<(u16, ChannelEntry<ChannelId>)> = self
            .channels
            .channels(id)
            .into_iter()
            .map(|(s, e)| (s, e.clone()))
            .collect();
        let Some(session) = self.sessions.get_mut(&id) else {
            return Vec::new();
        };
        entries
            .into_iter()
            .map(|(stream, e)| {
                let open = session.rtc.channel(e.handle).is_some();
                let (location, session_id, ended) = match e.role {
                    ChannelRole::Local => (Location::Local, None, false),
                    ChannelRole::Remote { source, ended, .. } => {
                        (Location::Remote, Some(source.to_string()), ended)
                    }
                };
                DataChannelState {
                    location,
                    data_channel_name: e.name,
                    session_id,
                    id: stream,
                    status: if ended {
                        TrackStatus::Inactive
                    } else if open {
                        TrackStatus::Active
                    } else {
                        TrackStatus::Initializing
                    },
                }
            })
            .collect()
    }

    /// What str0m reported about session `id`'s channels.
    pub(crate) fn channel_event(&mut self, id: SessionId, ev: ChannelEvent) {
        match ev {
            ChannelEvent::Data { stream, message } => {
                let m = &self.ctx.metrics.datachannels;
                m.messages_in.inc();
                match self
                    .channels
                    .on_message(id, stream, message.data.len(), self.now)
                {
                    Ok(key) => {
                        let message = Arc::new(message);
                        for shard in self.channels.subscriber_shards(key) {
                            let message = Arc::clone(&message);
                            self.send_to_shard(
                                shard,
                                PeerMsg::Channel(ChannelPeerMsg::Data { key, message }),
                            );
                        }
                    }
                    Err(reason) => {
                        tracing::debug!(session = %id, stream, len = message.data.len(), reason = reason.label(), "data channel message dropped");
                        m.drop(reason);
                    }
                }
            }
            ChannelEvent::Closed { handle } => {
                // The client reset the stream: the channel is closed as if through the API. (A
                // subscription whose publisher went away was reset by the SFU: it stays listed,
                // inactive, until closed through the API.)
                if let Some(c) = self
                    .channels
                    .stream_of(id, handle)
                    .filter(|stream| !self.channels.is_ended(id, *stream))
                    .and_then(|stream| self.channels.close(id, stream))
                {
                    self.after_close(c, false);
                }
            }
        }
    }

    /// A data channel message from another shard (or this one).
    pub(super) fn handle_channel_peer(&mut self, msg: ChannelPeerMsg) {
        match msg {
            ChannelPeerMsg::Data { key, message } => self.deliver(key, &message),
            ChannelPeerMsg::Subscribe { key, shard } => {
                if !self.channels.add_subscriber_shard(key, shard) {
                    self.send_to_shard(shard, PeerMsg::Channel(ChannelPeerMsg::Ended { key }));
                }
            }
            ChannelPeerMsg::Unsubscribe { key, shard } => {
                self.channels.remove_subscriber_shard(key, shard);
            }
            ChannelPeerMsg::Ended { key } => self.end_subscriptions(key),
        }
    }

    fn end_subscriptions(&mut self, key: TrackId) {
        for (session, _, handle) in self.channels.end_channel(key) {
            self.close_stream(session, handle);
        }
    }

    /// Writes a message of channel `key` to this shard's subscribers of it.
    fn deliver(&mut self, key: TrackId, message: &ChannelMessage) {
        for (sid, stream, _) in self.channels.local_subscribers(key) {
            let Some(session) = self.sessions.get_mut(&sid) else {
                continue;
            };
            let r = catch_unwind(AssertUnwindSafe(|| write(session, stream, message)));
            let m = &self.ctx.metrics.datachannels;
            match r {
                Ok(Ok(())) => {
                    m.messages_out.inc();
                    m.bytes_out.inc_by(message.data.len() as u64);
                    self.mark_dirty(sid);
                }
                Ok(Err(reason)) => {
                    tracing::debug!(session = %sid, stream, reason = reason.label(), "data channel message not delivered");
                    m.drop(reason);
                }
                Err(_) => self.session_panicked(sid),
            }
        }
    }

    /// Session `id` is being removed: its channels close (their subscribers hear it).
    pub(super) fn channels_session_removed(&mut self, id: SessionId) {
        for c in self.channels.remove_session(id) {
            self.after_close(c, false);
        }
        self.ctx.directory.channels.remove_session(id);
    }

    /// Shard `shard` was reset (see [`PeerMsg::ShardReset`]).
    pub(super) fn channels_forget_shard(&mut self, shard: ShardId, before: TrackId) {
        for key in self.channels.forget_shard(shard, before) {
            self.end_subscriptions(key);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::Duration;

    fn sid(n: u8) -> SessionId {
        SessionId([n; 16])
    }

    fn router() -> ChannelRouter<()> {
        ChannelRouter::new(ChannelLimits {
            max_message_bytes: 100,
            session_messages_per_second: 10,
            session_max_channels: 3,
            session_max_opened: 5,
        })
    }

    #[test]
    fn streams_are_odd_and_never_reused() {
        let now = Instant::now();
        let mut r = router();
        let a = sid(1);
        let s1 = r.next_stream(a, now, |_| false).unwrap();
        assert_eq!(s1, 1);
        r.publish(a, s1, "chat", TrackId(1), (), now);
        // Stream 3 is taken by str0m (an in-band channel): skipped.
        let s2 = r.next_stream(a, now, |s| s == 3).unwrap();
        assert_eq!(s2, 5);
        r.publish(a, s2, "game", TrackId(2), (), now);
        assert!(r.close(a, s1).is_some());
        // The closed stream 1 is not handed out again.
        assert_eq!(r.next_stream(a, now, |_| false).unwrap(), 7);
    }

    #[test]
    fn channel_limits_refuse() {
        let now = Instant::now();
        let mut r = router();
        let a = sid(1);
        for i in 0..3u64 {
            let s = r.next_stream(a, now, |_| false).unwrap();
            r.publish(a, s, &format!("c{i}"), TrackId(i), (), now);
        }
        assert_eq!(
            r.next_stream(a, now, |_| false),
            Err(AddRefused::TooMany(3))
        );
        // Close and reopen until the lifetime limit (5) is reached.
        let first = r.channels(a)[0].0;
        r.close(a, first).unwrap();
        let s = r.next_stream(a, now, |_| false).unwrap();
        r.publish(a, s, "c3", TrackId(3), (), now);
        let first = r.channels(a)[0].0;
        r.close(a, first).unwrap();
        let s = r.next_stream(a, now, |_| false).unwrap();
        r.publish(a, s, "c4", TrackId(4), (), now);
        let first = r.channels(a)[0].0;
        r.close(a, first).unwrap();
        assert_eq!(
            r.next_stream(a, now, |_| false),
            Err(AddRefused::Exhausted(5))
        );
    }

    #[test]
    fn messages_are_checked_for_size_rate_and_direction() {
        let now = Instant::now();
        let mut r = router();
        let (a, b) = (sid(1), sid(2));
        r.publish(a, 1, "chat", TrackId(7), (), now);
        assert!(r.subscribe(b, 1, "chat", a, TrackId(7), 0, (), now));
        assert_eq!(r.on_message(a, 1, 100, now), Ok(TrackId(7)));
        assert_eq!(r.on_message(a, 1, 101, now), Err(ChannelDrop::TooLarge));
        // The subscriber's channel is one-way; unknown streams are not forwarded.
        assert_eq!(r.on_message(b, 1, 1, now), Err(ChannelDrop::NotPublished));
        assert_eq!(r.on_message(a, 9, 1, now), Err(ChannelDrop::NotPublished));
        // 10 per second: 9 more pass (one was taken), the next is dropped, a second later
        // the budget is back.
        for _ in 0..9 {
            assert!(r.on_message(a, 1, 1, now).is_ok());
        }
        assert_eq!(r.on_message(a, 1, 1, now), Err(ChannelDrop::RateLimited));
        assert!(r.on_message(a, 1, 1, now + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn subscribers_fan_out_in_order_and_shards_are_tracked() {
        let now = Instant::now();
        let mut r = router();
        let (a, b, c) = (sid(1), sid(2), sid(3));
        let key = TrackId(7);
        r.publish(a, 1, "chat", key, (), now);
        assert!(r.subscribe(b, 1, "chat", a, key, 0, (), now));
        // The second local subscriber does not subscribe the shard again.
        assert!(!r.subscribe(c, 3, "chat", a, key, 0, (), now));
        assert_eq!(r.local_subscribers(key), vec![(b, 1, ()), (c, 3, ())]);
        assert!(r.add_subscriber_shard(key, 0));
        assert!(r.add_subscriber_shard(key, 1));
        assert_eq!(r.subscriber_shards(key), vec![0, 1]);
        r.remove_subscriber_shard(key, 1);
        assert_eq!(r.subscriber_shards(key), vec![0]);
        // Unknown channels: the subscribing shard must be told it ended.
        assert!(!r.add_subscriber_shard(TrackId(99), 1));
        // Closing one subscriber keeps the shard subscribed; closing the last one does not.
        match r.close(b, 1).unwrap() {
            Closed::Remote { last_on_shard, .. } => assert!(!last_on_shard),
            other => panic!("{other:?}"),
        }
        match r.close(c, 3).unwrap() {
            Closed::Remote {
                last_on_shard,
                home,
                ..
            } => assert!(last_on_shard && home == 0),
            other => panic!("{other:?}"),
        }
        assert!(r.local_subscribers(key).is_empty());
    }

    #[test]
    fn closing_the_publisher_ends_its_subscribers() {
        let now = Instant::now();
        let mut r = router();
        let (a, b) = (sid(1), sid(2));
        let key = TrackId(7);
        r.publish(a, 1, "chat", key, (), now);
        r.subscribe(b, 1, "chat", a, key, 0, (), now);
        r.add_subscriber_shard(key, 0);
        let closed = r.remove_session(a);
        assert_eq!(closed.len(), 1);
        match &closed[0] {
            Closed::Local { shards, key: k, .. } => {
                assert_eq!(shards, &vec![0]);
                assert_eq!(*k, key);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.published_count(), 0);
        // The subscriber's shard hears `Ended`: its subscription stays listed, ended.
        assert_eq!(r.end_channel(key), vec![(b, 1, ())]);
        assert!(r.is_ended(b, 1));
        assert!(!r.is_ended(a, 1), "the publisher's session is gone");
        let chans = r.channels(b);
        assert!(matches!(
            chans[0].1.role,
            ChannelRole::Remote { ended: true, .. }
        ));
        assert!(r.local_subscribers(key).is_empty());
        // Closing it afterwards does not unsubscribe the shard a second time.
        match r.close(b, 1).unwrap() {
            Closed::Remote { last_on_shard, .. } => assert!(!last_on_shard),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn find_by_id_or_name() {
        let now = Instant::now();
        let mut r = router();
        let (a, b) = (sid(1), sid(2));
        r.publish(b, 1, "chat", TrackId(1), (), now);
        r.subscribe(b, 3, "chat", a, TrackId(2), 1, (), now);
        let by_id = DataChannelObject {
            id: Some(3),
            ..Default::default()
        };
        assert_eq!(r.find(b, &by_id), Some(3));
        assert_eq!(r.find(b, &DataChannelObject::local("chat")), Some(1));
        assert_eq!(
            r.find(b, &DataChannelObject::remote(a.to_string(), "chat")),
            Some(3)
        );
        assert_eq!(
            r.find(b, &DataChannelObject::remote(sid(9).to_string(), "chat")),
            None
        );
        assert_eq!(r.find(b, &DataChannelObject::local("other")), None);
    }

    #[test]
    fn a_reset_shard_ends_subscriptions_to_its_older_channels() {
        let now = Instant::now();
        let mut r = router();
        let b = sid(2);
        r.subscribe(b, 1, "old", sid(1), TrackId(5), 1, (), now);
        r.subscribe(b, 3, "new", sid(1), TrackId(20), 1, (), now);
        r.subscribe(b, 5, "other", sid(3), TrackId(6), 0, (), now);
        assert_eq!(r.forget_shard(1, TrackId(10)), vec![TrackId(5)]);
    }

    #[test]
    fn names_and_sdp() {
        assert!(valid_name("chat"));
        assert!(!valid_name(""));
        assert!(!valid_name("a\nb"));
        assert!(!valid_name(&"x".repeat(MAX_NAME_BYTES + 1)));
        assert!(offers_data(
            "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
        ));
        assert!(!offers_data("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"));
    }

    #[test]
    fn metrics_register() {
        let r = Registry::new();
        let m = ChannelMetrics::new(&r);
        m.drop(ChannelDrop::TooLarge);
        assert_eq!(m.dropped.with_label_values(&["too_large"]).get(), 1);
    }
}
