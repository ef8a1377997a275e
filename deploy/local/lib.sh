# Shared by deploy/local scripts. Sourced, not run.
# shellcheck shell=bash

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=${BATCHMILL_STATE_DIR:-$REPO/.batchmill}
TOOLS=${BATCHMILL_TOOLS_DIR:-$REPO/.batchmill/tools}
PORT_BASE=${BATCHMILL_PORT_BASE:-7400}
PROFILE=${BATCHMILL_PROFILE:-debug}
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$TARGET/$PROFILE
# Workers with the CUDA backend (the worker's `cuda` feature): BATCHMILL_CUDA=1,
# or by default where NVIDIA's driver is installed; BATCHMILL_CUDA=0 leaves it
# out. A worker built with it still runs on the CPU where it finds no GPU.
case ${BATCHMILL_CUDA:-auto} in
  1) CARGO_FEATURES=(--features batchmill-worker/cuda) ;;
  0) CARGO_FEATURES=() ;;
  auto)
    if [ -e /dev/nvidiactl ] || { command -v ldconfig >/dev/null && ldconfig -p | grep -q 'libcuda\.so'; }; then
      CARGO_FEATURES=(--features batchmill-worker/cuda)
    else
      CARGO_FEATURES=()
    fi
    ;;
  *)
    printf '[batchmill] error: BATCHMILL_CUDA=%s: expected 0, 1 or auto\n' "$BATCHMILL_CUDA" >&2
    exit 1
    ;;
esac

ETCD_PORT=$((PORT_BASE + 0))
ETCD_PEER_PORT=$((PORT_BASE + 1))
NATS_PORT=$((PORT_BASE + 2))
S3_PORT=$((PORT_BASE + 3))
PG_PORT=$((PORT_BASE + 4))
# The servers' own metrics: NATS's monitoring (/varz, /jsz) and the S3
# server's request counts (/metrics); etcd serves /metrics on its client port.
NATS_MONITOR_PORT=$((PORT_BASE + 5))
S3_METRICS_PORT=$((PORT_BASE + 6))
GATEWAY_PORT=$((PORT_BASE + 10))
LISTER_PORT=$((PORT_BASE + 11))
ENQUEUER_PORT=$((PORT_BASE + 12))
SCHEDULER_PORT=$((PORT_BASE + 13))
# The second scheduler: a hot standby, leader once the first dies.
SCHEDULER_2_PORT=$((PORT_BASE + 14))
WORKER_PORT_BASE=$((PORT_BASE + 20))

S3_ACCESS_KEY=${BATCHMILL_S3_ACCESS_KEY:-batchmill}
S3_SECRET_KEY=${BATCHMILL_S3_SECRET_KEY:-batchmill-local-secret}
BUCKET=${BATCHMILL_BUCKET:-batchmill}

# PostgreSQL's programs (Debian's, newest version) and how to run them:
# PostgreSQL refuses root, so as root it runs as the postgres user (setpriv
# execs, so the recorded pid is PostgreSQL's own).
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ "$(id -u)" -eq 0 ]; then
  AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups)
else
  AS_PG=()
fi

log() { printf '[batchmill] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# True if the pid in $STATE/pids/$1.pid is alive and still runs what we started.
running() {
  local file=$STATE/pids/$1.pid pid exe
  [ -f "$file" ] || return 1
  read -r pid exe <"$file" || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  [ -z "$exe" ] || tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$exe"
}

# start NAME CMD...: runs CMD in the background unless NAME already runs.
start() {
  local name=$1; shift
  if running "$name"; then
    log "$name already running"
    return 0
  fi
  mkdir -p "$STATE/pids" "$STATE/logs"
  # The program the pid runs: through setpriv (which execs it), its own.
  local exe=$1 arg
  if [ "$exe" = setpriv ]; then
    for arg in "${@:2}"; do
      case $arg in -*) ;; *) exe=$arg; break ;; esac
    done
  fi
  nohup "$@" >>"$STATE/logs/$name.log" 2>&1 </dev/null &
  echo "$! $exe" >"$STATE/pids/$name.pid"
  log "started $name (pid $!)"
}

# port_open PORT: true if something listens on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for NAME SECONDS CHECK...: waits until CHECK succeeds; fails if NAME died.
wait_for() {
  local name=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    running "$name" || die "$name exited; see $STATE/logs/$name.log"
    [ $SECONDS -lt $deadline ] || die "$name not healthy after ${secs}s; see $STATE/logs/$name.log"
    sleep 0.2
  done
}

# grpc_healthy PORT: the service's gRPC health is SERVING; over mutual TLS
# with GRPC_TLS_DIR's CA and client certificate when that is set (up --tls).
grpc_healthy() {
  local how=(-plaintext)
  [ -z "${GRPC_TLS_DIR:-}" ] ||
    how=(-cacert "$GRPC_TLS_DIR/ca.pem" -cert "$GRPC_TLS_DIR/client.pem" -key "$GRPC_TLS_DIR/client.key")
  "$TOOLS/venv/bin/grpcurl" "${how[@]}" -max-time 2 "127.0.0.1:$1" grpc.health.v1.Health/Check | grep -q '"SERVING"'
}

# gateway_healthy_tls PORT CERT_DIR server|mutual: the gateway's health over TLS.
gateway_healthy_tls() {
  local client=()
  [ "$3" != mutual ] || client=(-cert "$2/client.pem" -key "$2/client.key")
  "$TOOLS/venv/bin/grpcurl" -cacert "$2/ca.pem" "${client[@]}" -max-time 2 "127.0.0.1:$1" grpc.health.v1.Health/Check |
    grep -q '"SERVING"'
}

# leader_port: the port of whichever scheduler leads (SERVING); fails if none.
leader_port() {
  local port
  for port in "$SCHEDULER_PORT" "$SCHEDULER_2_PORT"; do
    grpc_healthy "$port" && { echo "$port"; return 0; }
  done
  return 1
}
