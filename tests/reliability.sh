#!/usr/bin/env bash
# The README's reliability table, one command: starts the stand-ins, then runs
# `dlock-contend scale` at 10,000 acquisitions on every backend (no faults), the faulted runs
# (5% faults on the wire, kill -9 and SIGSTOP of holders, and server restarts where the
# stand-in keeps its data), and the model checker; prints one table row per run.
#
#   bash tests/reliability.sh            # everything (hours: moto serves one request at a time)
#   bash tests/reliability.sh redis etcd # only these backends
#
# Needs what tests/run-all.sh installs (it installs nothing itself). Runs go on after a failed
# one; the exit status is 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
source tests/stand-ins/start.sh || exit 1
cargo build --release -p dlock-tests --bin dlock-contend --all-features || exit 1
contend=target/release/dlock-contend
etcd_host=${DLOCK_TEST_ETCD_ENDPOINT#http://}
mongo=${DLOCK_TEST_MONGODB_URI%%\?*}
wanted=("$@")
failed=0

wants() { # BACKEND: whether it was asked for (all, when none was named)
  [ ${#wanted[@]} -eq 0 ] && return 0
  local w
  for w in "${wanted[@]}"; do [ "$w" = "$1" ] && return 0; done
  return 1
}

run() { # BACKEND URL ARGS...
  local backend=$1 url=$2
  shift 2
  wants "$backend" || return 0
  echo "== $backend $*" >&2
  local out
  out=$("$contend" scale --backend "$url" --processes 4 "$@" 2>&1)
  echo "$out" | grep -E '^\| [a-z]' | grep -v '^| backend'
  echo "$out" | grep -E '^FAILED' >&2
  echo "$out" | grep -q ' | ok |$' || failed=1
}

faults=(--acquisitions 2500 --hold 1ms --ttl 2s --faults 0.05 --seed 11 --kill-every 5s --stop-every 7s)
restarts=(--restart-every 9s --slack 3s)

echo "| backend | processes | acquisitions | faults injected | kills | stops | server restarts | holder knew first (lost) | overlaps | fencing tokens | longest stranded | result |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
if wants memory; then
  out=$("$contend" scale --backend memory:// --tasks --processes 4 --acquisitions 10000 --hold 0 2>&1)
  echo "$out" | grep -E '^\| memory'
  echo "$out" | grep -q ' | ok |$' || failed=1
fi
file_dir=$(mktemp -d)
run file "file://$file_dir" --acquisitions 10000 --hold 0
run file "file://$file_dir" --acquisitions 2500 --hold 1ms --ttl 2s --kill-every 2s --stop-every 3s
rm -rf "$file_dir"
run postgres "$DLOCK_TEST_POSTGRES_URL?table=dlock_reliability" --acquisitions 2500 --hold 0
run postgres "$DLOCK_TEST_POSTGRES_URL?table=dlock_reliability" "${faults[@]}" \
  --restart "$DLOCK_TEST_POSTGRES_RESTART" "${restarts[@]}"
run redis "$DLOCK_TEST_REDIS_URL/?prefix=reliability:" --acquisitions 2500 --hold 0
run redis "$DLOCK_TEST_REDIS_URL/?prefix=reliability:" "${faults[@]}" \
  --restart "$DLOCK_TEST_REDIS_RESTART" "${restarts[@]}"
run etcd "etcd://$etcd_host/reliability/" --acquisitions 2500 --hold 0
run etcd "etcd://$etcd_host/reliability/" "${faults[@]}" \
  --restart "$DLOCK_TEST_ETCD_RESTART" "${restarts[@]}"
run gcs "gs://$DLOCK_TEST_GCS_BUCKET/reliability" --acquisitions 2500 --hold 0
run gcs "gs://$DLOCK_TEST_GCS_BUCKET/reliability" "${faults[@]}"
if wants gcs; then
  # fake-gcs-server with its objects on disk, restarted (its own instance: the stand-ins' one
  # keeps them in memory).
  echo "== gcs on disk ${faults[*]}, restarts" >&2
  out=$(RESTART_EVERY=9s tests/gcs-restarts.sh filesystem --processes 4 "${faults[@]}" --slack 3s 2>&1)
  echo "$out" | grep -E '^\| gcs'
  echo "$out" | grep -E '^FAILED' >&2
  echo "$out" | grep -q ' | ok |$' || failed=1
fi
run mongodb "$mongo?collection=reliability&directConnection=true" --acquisitions 2500 --hold 0
run mongodb "$mongo?collection=reliability&directConnection=true" "${faults[@]}"
run s3 "s3://$DLOCK_TEST_S3_BUCKET/reliability" --acquisitions 2500 --hold 0
run s3 "s3://$DLOCK_TEST_S3_BUCKET/reliability" "${faults[@]}"
run dynamodb "dynamodb://$DLOCK_TEST_DYNAMODB_TABLE" --acquisitions 2500 --hold 0
run dynamodb "dynamodb://$DLOCK_TEST_DYNAMODB_TABLE" "${faults[@]}"
if wants model; then
  echo "== model" >&2
  for configuration in small expiry liveness; do
    cargo run --release -q -p dlock-model -- "$configuration" | grep -E 'configuration|states|hold' \
      || failed=1
  done
fi
exit $failed
