//! Compile-time checks of the attribute: one file per rule, with the expected diagnostics in
//! `.stderr` files beside them (trybuild; regenerate with `TRYBUILD=overwrite` and review).
//!
//! This crate depends on dlock-runtime's default features only, so trybuild's own build of
//! the cases compiles no cloud SDK.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("pass/*.rs");
    t.compile_fail("fail/*.rs");
}
