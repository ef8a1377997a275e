# Sourced by the bench commands that run on the bench's own cluster:
# deploy/local in a release build, with its own state dir and ports, so a
# dev cluster is left alone. `bench_cluster WORKERS` starts it fresh (the
# state of an earlier run is purged), because what earlier runs leave behind
# skews the figures: the local S3 server keeps two files per object in one
# directory, and renames into it slow down as it grows past a million
# objects. BATCHMILL_BENCH_KEEP=1 keeps a running bench cluster instead.
# `bench_venv MODULES -- PACKAGES` makes the bench's venv (from PyPI) if
# MODULES do not import from it.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
export BATCHMILL_PROFILE=release
export BATCHMILL_STATE_DIR=${BATCHMILL_BENCH_STATE_DIR:-$REPO/.batchmill/bench-cluster}
export BATCHMILL_PORT_BASE=${BATCHMILL_BENCH_PORT_BASE:-7700}
TOOLS=${BATCHMILL_TOOLS_DIR:-$REPO/.batchmill/tools}
VENV=$TOOLS/bench-venv

bench_cluster() {
  if [ "${BATCHMILL_BENCH_KEEP:-0}" != 1 ]; then
    deploy/local/down --purge >/dev/null 2>&1 || true
  fi
  BATCHMILL_WORKERS=$1 deploy/local/up >/dev/null
  # A scheduler that has just started answers 503 until it leads.
  local gateway key
  gateway=$(sed -n 's/^export BATCHMILL_GATEWAY_URL=//p' "$BATCHMILL_STATE_DIR/env")
  key=$(sed -n 's/^export BATCHMILL_API_KEY=//p' "$BATCHMILL_STATE_DIR/env")
  for _ in $(seq 1 120); do
    curl -sf -o /dev/null -H "Authorization: Bearer $key" "$gateway/v1/jobs?pageSize=1" && return 0
    sleep 0.5
  done
  echo "[bench] the cluster did not answer within 60 s" >&2
  return 1
}

bench_venv() {
  local modules=() packages=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do modules+=("$1"); shift; done
  shift
  packages=("$@")
  local joined
  joined=$(IFS=,; echo "${modules[*]}")
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import $joined" 2>/dev/null; then
    echo "[bench] installing ${packages[*]} into $VENV (PyPI)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "${packages[@]}"
  fi
}
