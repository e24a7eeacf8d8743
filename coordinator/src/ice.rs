//! ICE servers for participants: the configured STUN/TURN URLs with short-lived TURN
//! credentials of the TURN REST API scheme ([`satsuma_common::turn`]; coturn with
//! `use-auth-secret`). Every `welcome` and `resumed` carries fresh ones (added by the hub as the
//! reply goes out: the room state machine has no wall clock), and `POST /sfu/ice-servers` mints
//! new ones for a participant whose call outlives them.

use satsuma_common::turn::{IceServers, TurnServers};

use crate::protocol::ServerMessage;

/// Mints ICE servers for participants.
#[derive(Debug, Clone, Default)]
pub(crate) struct IceIssuer {
    servers: TurnServers,
    ttl_s: u64,
}

impl IceIssuer {
    /// Servers from the configuration, credentials valid for `ttl_s` seconds (checked by
    /// `Config::validate`).
    pub(crate) fn new(servers: TurnServers, ttl_s: u64) -> Self {
        Self { servers, ttl_s }
    }

    /// ICE servers for participant `participant` at `now_unix`; empty without configuration.
    /// The TURN username is `<expiry>:p<participant id>-<random>`, so coturn's logs tell
    /// participants apart without naming the room.
    pub(crate) fn issue(&self, participant: u64, now_unix: u64) -> IceServers {
        if self.servers.is_empty() {
            return IceServers::default();
        }
        let id = format!("p{participant}-{}", hex::encode(rand::random::<[u8; 4]>()));
        match self.servers.ice_servers(&id, now_unix, self.ttl_s) {
            Ok(ice) => ice,
            Err(e) => {
                // Only a TTL out of range or a clock at the end of time get here; both are
                // refused at start. Without servers the client still tries direct paths.
                tracing::error!("cannot mint TURN credentials: {e}");
                IceServers::default()
            }
        }
    }

    /// Fills the ICE servers of a `welcome` or `resumed` reply to participant `to`; other
    /// messages are left alone.
    pub(crate) fn fill(&self, to: u64, msg: &mut ServerMessage, now_unix: u64) {
        if let ServerMessage::Welcome {
            ice_servers,
            ice_expires_at,
            ..
        }
        | ServerMessage::Resumed {
            ice_servers,
            ice_expires_at,
            ..
        } = msg
        {
            let ice = self.issue(to, now_unix);
            *ice_servers = ice.servers;
            *ice_expires_at = ice.expires_at;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use satsuma_common::turn::{TurnSecret, verify};

    fn issuer() -> IceIssuer {
        let servers = TurnServers::new(
            vec![
                "stun:turn.example:3478".into(),
                "turn:turn.example:3478?transport=udp".into(),
                "turns:turn.example:443?transport=tcp".into(),
            ],
            Some(TurnSecret::new("coturn-shared-secret").unwrap()),
        )
        .unwrap();
        IceIssuer::new(servers, 600)
    }

    fn resumed() -> ServerMessage {
        ServerMessage::Resumed {
            participant_id: 7,
            from_seq: 1,
            seq: 2,
            limits: crate::room::RoomConfig::default().limits,
            ice_servers: Vec::new(),
            ice_expires_at: None,
        }
    }

    #[test]
    fn replies_get_credentials_for_their_participant() {
        let mut msg = resumed();
        issuer().fill(7, &mut msg, 1000);
        let ServerMessage::Resumed {
            ice_servers,
            ice_expires_at,
            ..
        } = &msg
        else {
            panic!("not resumed");
        };
        assert_eq!(*ice_expires_at, Some(1600));
        assert_eq!(ice_servers.len(), 2);
        assert_eq!(ice_servers[0].urls, vec!["stun:turn.example:3478"]);
        let username = ice_servers[1].username.as_deref().unwrap();
        assert!(username.starts_with("1600:p7-"), "{username}");
        let credential = ice_servers[1].credential.as_deref().unwrap();
        let secret = TurnSecret::new("coturn-shared-secret").unwrap();
        assert_eq!(verify(&secret, username, credential, 1000), Ok(1600));
        // Each issue is a new credential.
        let again = issuer().issue(7, 1000);
        assert_ne!(again.servers[1].username.as_deref(), Some(username));
    }

    #[test]
    fn without_configuration_nothing_is_added() {
        let mut msg = resumed();
        IceIssuer::default().fill(7, &mut msg, 1000);
        assert_eq!(msg, resumed());
        let json = serde_json::to_value(&msg).unwrap();
        assert_eq!(json["ice_servers"], serde_json::json!([]));
        assert!(json.get("ice_expires_at").is_none());
        // Other replies are untouched.
        let mut pong = ServerMessage::Pong { t: Some(1) };
        issuer().fill(7, &mut pong, 1000);
        assert_eq!(pong, ServerMessage::Pong { t: Some(1) });
    }
}
