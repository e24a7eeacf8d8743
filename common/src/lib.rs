//! Infrastructure shared by Satsuma's crates. Sans-IO: nothing here reads a clock or touches a
//! socket; callers pass the time in.

pub mod corpus;
pub mod rate;
pub mod turn;

pub use rate::TokenBucket;
