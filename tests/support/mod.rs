//! Shared test support. Each test binary uses only part of it.
#![allow(dead_code)]

pub mod conformance;
pub mod redis_server;
