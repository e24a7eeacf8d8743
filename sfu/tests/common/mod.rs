//! What the SFU's integration tests share. Each test file takes the modules it needs.
#![allow(dead_code)]

pub(crate) mod api;
