//! The frame-crypto module of `satsuma-e2ee`, compiled from its source so it
//! can be tested against `davey` (see `Cargo.toml` for why this is a separate
//! workspace).

#[path = "../../../src"]
mod e2ee_source {
    pub mod frame;
}

pub use e2ee_source::frame;
