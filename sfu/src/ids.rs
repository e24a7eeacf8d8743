//! Identifiers: sessions (public, hex in the API), tracks and shards (internal).

use std::fmt;

/// A session id: 16 random bytes, written as 32 lowercase hex characters in the API.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// A fresh random session id.
    pub fn random() -> SessionId {
        SessionId(rand::random())
    }

    /// A fresh random session id that names its node: its first two bytes are the node's
    /// relay tag (see [`crate::relay::bridge::node_tag`]), the other 14 are random. Another
    /// node that is asked for a track of this session knows which peer to pull it from.
    pub fn tagged(tag: [u8; 2]) -> SessionId {
        let mut id: [u8; 16] = rand::random();
        id[..2].copy_from_slice(&tag);
        SessionId(id)
    }

    /// The first two bytes: the node tag of a [`SessionId::tagged`] id.
    pub fn tag(&self) -> [u8; 2] {
        [self.0[0], self.0[1]]
    }

    /// Parses the 32-hex-character form; anything else is `None`.
    pub fn parse(s: &str) -> Option<SessionId> {
        if s.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(SessionId(out))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// A published track, unique for the lifetime of the server.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TrackId(pub u64);

/// Index of a shard (a worker task that owns sessions).
pub type ShardId = usize;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_round_trips_through_hex() {
        let id = SessionId::random();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(SessionId::parse(&text), Some(id));
        assert_eq!(SessionId::parse("xyz"), None);
        assert_eq!(SessionId::parse(&"g".repeat(32)), None);
        assert_eq!(SessionId::parse(&"é".repeat(16)), None);
    }
}
