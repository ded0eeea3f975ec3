//! The rows of the table, one module per group of `--only`.

pub(crate) mod cold;
pub(crate) mod detail;
pub(crate) mod herd;
pub(crate) mod http;
pub(crate) mod list;
pub(crate) mod memory;
pub(crate) mod memory_store;
pub(crate) mod write;
