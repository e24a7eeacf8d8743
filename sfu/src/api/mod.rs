//! The HTTP API: Cloudflare Realtime's sessions/tracks calls (v1) under `/v1/apps/{appId}`, plus
//! Cloudflare's TURN credentials route (`/v1/turn/keys/{keyId}/credentials/generate-ice-servers`),
//! `/healthz` and `/metrics`. Handlers authenticate, rate-limit and decode, then hand the work to
//! the shard that owns the session and wait for its reply.

pub mod drain;
pub mod error;
pub mod routes;
pub mod turn;
pub mod types;

pub use routes::{ApiState, ops_router, router};
