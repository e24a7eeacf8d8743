//! Shared by the bot's room tests: a native E2EE member joining a room of an in-process
//! coordinator with a token the coordinator minted.

#![allow(clippy::unwrap_used, dead_code)]

use satsuma_bot::room::RoomMember;
use satsuma_coordinator::ServerHandle;
use satsuma_coordinator::auth::{Claims, unix_now};

/// Joins `room` as `name` (publish and subscribe rights, a 10-minute token).
pub(crate) async fn member(server: &ServerHandle, room: &str, name: &str) -> RoomMember {
    let claims = Claims {
        sub: name.to_lowercase(),
        room: room.into(),
        name: name.into(),
        perms: vec!["publish".into(), "subscribe".into()],
        exp: unix_now() + 600,
        ..Claims::default()
    };
    let token = server.mint_token(&claims).unwrap();
    RoomMember::join(&server.ws_url(room), &token, name)
        .await
        .unwrap()
}
