#!/usr/bin/env bash
# fake-gcs-server restarted mid-run, behind the precondition proxy, with its objects on disk
# (-backend filesystem) or, as the control, in memory (a restart forgets every lock).
#
#   tests/gcs-restarts.sh filesystem|memory [dlock-contend scale options...]
#
# Default run: 4 processes x 30 acquisitions, 300 ms holds, a restart every 700 ms
# (RESTART_EVERY=9s for another interval). Needs a release dlock-contend
# (cargo build --release -p dlock-tests --bin dlock-contend --all-features).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?filesystem or memory}
shift
[ "$#" -gt 0 ] || set -- --processes 4 --acquisitions 30 --hold 300ms
case $mode in
  filesystem | memory) ;;
  *) echo "filesystem or memory, not $mode" >&2; exit 64 ;;
esac
source tests/stand-ins/common.sh
mkdir -p "$standins_logs/data"
storage=(-backend "$mode")
[ "$mode" = filesystem ] && storage+=(-filesystem-root "$standins_logs/data")
inner=$(free_port)
outer=$(free_port)
start_gcs "$inner" "$outer" "${storage[@]}"
bucket="curl -sf -o /dev/null -X POST -H 'Content-Type: application/json' -d '{\"name\":\"dlock-restarts\"}' http://127.0.0.1:$inner/storage/v1/b?project=dlock"
eval "$bucket"
# A restart: SIGTERM, the supervisor starts it again; a server in memory gets its bucket back
# (it forgot the bucket with the locks, and the run would only see errors).
restart_script gcs "old=\$(cat '$standins_logs/gcs.pid'); kill \$old
changed() { [ \"\$(cat '$standins_logs/gcs.pid')\" != \"\$old\" ]; }
within 'its supervisor did not start it again' changed
within 'it did not answer again' curl -sf -o /dev/null http://127.0.0.1:$inner/storage/v1/b
$bucket || true"
STORAGE_EMULATOR_HOST="http://127.0.0.1:$outer" target/release/dlock-contend scale \
  --backend "gs://dlock-restarts/$mode" --restart "$DLOCK_TEST_GCS_RESTART" \
  --restart-every "${RESTART_EVERY:-700ms}" "$@"
