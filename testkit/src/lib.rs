//! Test support shared by the workspace's tests, benchmarks and examples.
//! Not published.

pub mod cli;
pub mod conformance;
pub mod databases;
pub mod faults;
pub mod memdb;
pub mod poll;
pub mod process;
pub mod proxy;
pub mod query_model;
pub mod redis_server;
pub mod rng;
pub mod scenarios;
pub mod store;
