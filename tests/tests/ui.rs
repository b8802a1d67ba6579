//! Compile-time checks of the attribute: one file per rule, with the expected diagnostics in
//! `.stderr` files beside them (trybuild; regenerate with `TRYBUILD=overwrite` and review).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
