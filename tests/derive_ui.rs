//! Compile-time behaviour of `#[derive(CachedInstance)]`: every rejected
//! schema gets one error, at the user's token, saying what to write instead.
//!
//! Regenerate the snapshots with `TRYBUILD=overwrite cargo test --test
//! derive_ui`, then read every changed `.stderr`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
