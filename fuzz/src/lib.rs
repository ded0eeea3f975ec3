//! The fuzz targets' functions, shared by the cargo-fuzz binaries in
//! `fuzz_targets/` and by `tests/fuzz_corpus.rs` (which runs them on
//! stable over the corpus).

/// The polls models, as the example and the tests declare them.
#[path = "../../examples/polls/models.rs"]
pub mod models;

pub mod targets;
