#!/usr/bin/env bash
# Two-node Ray cluster on this machine, every listener on 127.0.0.1, for CI tests.
#   ray.sh up          start the head and a second node (tagged {"node2": 1}); no-op when both run
#   ray.sh down        stop both
#   ray.sh status      exit 0 when the head answers and both nodes are alive
#   ray.sh stop-node2  stop only the second node (SIGTERM its raylet; `ray stop` would stop every node)
# Exit status 3 + one line on stderr = "cannot run a cluster here" (tests skip on it).
#
# Drivers must also export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before `import ray`, then
# ray.init(address="127.0.0.1:$STILTS_RAY_PORT"); see "why" below.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PY=${STILTS_RAY_PYTHON:-$HERE/../../.venv/bin/python}
TMP=${STILTS_RAY_TMP:-/tmp/stilts-ray}      # own temp dir: a plain ray.init() elsewhere never finds this cluster
PORT=${STILTS_RAY_PORT:-6379}
B=${STILTS_RAY_PORT_BASE:-8076}            # head uses B..B+4, node2 B+100..B+104
# Why: Ray rewrites 127.0.0.1 (in --node-ip-address and in --address / ray.init) to the
# machine's routable IP, and its gRPC servers then bind every interface. With this variable at 0
# its address detection answers 127.0.0.1 instead, and the servers bind 127.0.0.1 only.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
# Token authentication (on by default for new clusters in Ray 2.60): every node and driver of the
# same user reads the token in ~/.ray/auth_token; say so explicitly, or a joining node may start
# without it and be refused.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
# GCS notices a crashed node after ~3 s instead of ~12 s (a check every 1 s, 3 misses); a slow but
# live node still gets health_check_timeout_ms (10 s) per check before a miss counts.
export RAY_health_check_period_ms=${RAY_health_check_period_ms:-1000}
export RAY_health_check_failure_threshold=${RAY_health_check_failure_threshold:-3}
# The same variable makes `ray start --address` refuse to add a node ("not supported on
# Windows and OSX"), so run the CLI with that one check re-allowed and detection kept on loopback.
RAY_CLI='import sys; from ray._private import ray_constants as c, services as s
c.ENABLE_RAY_CLUSTER = True; s.get_node_ip_address = lambda address=None: "127.0.0.1"
from ray.scripts.scripts import main; sys.argv[0] = "ray"; sys.exit(main())'

skip() { echo "ray.sh: cannot start Ray: $*" >&2; exit 3; }
ray_cli() { "$PY" -c "$RAY_CLI" "$@"; }
# Processes of this cluster: their command lines name our temp dir or our GCS address.
cluster_pids() { grep -lsaE -- "$TMP/session[_]|--address=127\.0\.0\.1:$PORT\b" /proc/[0-9]*/cmdline | cut -d/ -f3 | sort; }
# The pids recorded for a node that are still this cluster's (a stale pid may belong to anyone now).
node_pids() { comm -12 <(sort "$TMP/$1.pids" 2>/dev/null) <(cluster_pids); }
alive() { ps -o stat= -p "$1" 2>/dev/null | grep -qv '^Z'; }   # zombies count as dead
tree() { local p; for p in "$@"; do echo "$p"; tree $(ps -o pid= --ppid "$p" 2>/dev/null); done; }
# A node counts as running while its raylet does (a crashed raylet leaves e.g. its log monitor behind).
raylet_alive() { local p; for p in $(node_pids "$1"); do
  [ "$(cat /proc/$p/comm 2>/dev/null)" = raylet ] && alive "$p" && return 0; done; return 1; }
# Alive nodes in the GCS node table (`ray status` lags a dead node by many seconds).
active_nodes() {
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || { echo 0; return; }   # nobody listens: no wait
  RAY_py_gcs_connect_timeout_s=5 timeout 20 "$PY" -c 'import sys; from ray._raylet import GcsClient
nodes = GcsClient(address=sys.argv[1]).get_all_node_info(timeout=5).values()
print(sum(n.state == 0 for n in nodes))' "127.0.0.1:$PORT" 2>/dev/null || echo 0
}

start_node() {  # $1 = head|node2, rest = ray start flags; records the pids it created
  local name=$1 before; shift
  before=$(cluster_pids)
  ray_cli start "$@" --node-ip-address 127.0.0.1 --num-cpus "${STILTS_RAY_CPUS:-1}" \
    --object-store-memory 100000000 --disable-usage-stats >"$TMP/$name.start.log" 2>&1 ||
    skip "ray start ($name) failed: $(grep -m1 -iE 'error|exception' "$TMP/$name.start.log")"
  comm -13 <(echo "$before") <(cluster_pids) >"$TMP/$name.pids"
  did+=" $name"
}

# TERM the processes and their children, KILL what is left after 10 s. A raylet exits ~5 s
# after TERM (and deregisters, so the GCS marks its node dead at once); the GCS may hang in
# its shutdown ("flushing remaining events") and only goes with KILL.
stop_pids() {
  local all p
  all=$(tree "$@" | sort -un)
  [ -n "$all" ] || return 0
  kill $all 2>/dev/null
  for _ in $(seq 20); do
    for p in $all; do alive "$p" && break; p=; done
    [ -z "$p" ] && return 0; sleep 0.5
  done
  kill -9 $all 2>/dev/null; return 0
}

up() {
  [ -x "$PY" ] || skip "no python at $PY"
  "$PY" -c 'import ray' 2>/dev/null || skip "ray is not importable by $PY"
  mkdir -p "$TMP"; did=""
  local t0=$SECONDS
  if ! raylet_alive head; then
    stop_pids $(node_pids head) $(node_pids node2)   # a node2 of an old head would not survive it
    rm -f "$TMP/node2.pids"
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && skip "127.0.0.1:$PORT is taken by something else"
    start_node head --head --port "$PORT" --temp-dir "$TMP" --include-dashboard false \
      --dashboard-host 127.0.0.1 --ray-client-server-port "${STILTS_RAY_CLIENT_PORT:-10001}" \
      --object-manager-port $B --node-manager-port $((B + 1)) --dashboard-agent-grpc-port $((B + 2)) \
      --runtime-env-agent-port $((B + 3)) --metrics-export-port $((B + 4)) \
      --dashboard-agent-listen-port 52365 --min-worker-port 11000 --max-worker-port 11099
  fi
  if ! raylet_alive node2; then
    stop_pids $(node_pids node2)
    start_node node2 --address "127.0.0.1:$PORT" --resources '{"node2": 1}' \
      --object-manager-port $((B + 100)) --node-manager-port $((B + 101)) --dashboard-agent-grpc-port $((B + 102)) \
      --runtime-env-agent-port $((B + 103)) --metrics-export-port $((B + 104)) \
      --dashboard-agent-listen-port 52465 --min-worker-port 11100 --max-worker-port 11199
  fi
  for _ in $(seq 60); do [ "$(active_nodes)" = 2 ] && break; sleep 1; done
  [ "$(active_nodes)" = 2 ] || skip "2 nodes not alive after 60 s (logs in $TMP/session_latest/logs)"
  echo "ray up:${did:- nothing to start (already running)} in $((SECONDS - t0)) s; head 127.0.0.1:$PORT, node2 tagged {\"node2\": 1}; drivers need RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
}

down() {
  local pids
  pids=$(cluster_pids)
  stop_pids $pids
  rm -f "$TMP"/*.pids "$TMP/ray_current_cluster"
  echo "ray down: stopped $(echo $pids | tr ' ' '\n' | sort -u | grep -c .) cluster processes (and their children)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) n=$(active_nodes); echo "ray: $n node(s) alive at 127.0.0.1:$PORT"; [ "$n" = 2 ] ;;
  stop-node2) stop_pids $(node_pids node2); rm -f "$TMP/node2.pids"; echo "ray: node2 stopped" ;;
  *) echo "usage: $0 up|down|status|stop-node2" >&2; exit 2 ;;
esac
