#!/usr/bin/env bash
# One-command set-up on a fresh machine that has Python 3.10+:
#   ./dev.sh run     install into .venv, then `dcoord run examples/quickstart.yaml`
#   ./dev.sh test    install with test extras (and Open MPI when missing), then run the whole test suite:
#                    the fast tier first (timed), then the slow end-to-end tests
#   ./dev.sh test --fast   only the fast tier (under 3 minutes on 2 cores): run it while you work
#   ./dev.sh test ARGS...  pytest with your arguments (a file, -k, -m ...)
#   ./dev.sh bench   run the benchmarks in bench/ (writes bench/results/*.json)
#   ./dev.sh mutate [MODULE...]  mutation testing with cosmic-ray (docs/testing.md; long: name modules to
#                    run a few); ./dev.sh mutate --check runs only scripts/check_mutants.py's known mutants
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv

install() {
  local extras=$1
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  # torch is pinned in constraints.txt (CPU build here); everything else comes from pyproject.toml
  local target="."
  if [ -n "$extras" ]; then target=".[${extras}]"; fi
  "$VENV/bin/pip" install -q -c constraints.txt -e "$target"
}

system_packages() {
  # Open MPI for the mpirun launch path and mpi4py; installed only when missing and when we may.
  if ! command -v mpirun >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null
    else
      echo "dev.sh: Open MPI (mpirun) is missing; the MPI tests will skip. Install openmpi-bin to run them." >&2
    fi
  fi
  # iproute2 (ip netns) for the emulated-cluster test, util-linux (unshare, setpriv) for it and the full-disk
  # test: those tests fail, not skip, without them
  if ! command -v ip >/dev/null 2>&1 || ! command -v unshare >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 util-linux >/dev/null
    fi
  fi
}

cmd=${1:-run}
shift || true
case "$cmd" in
  run)
    install ""
    exec "$VENV/bin/dcoord" run examples/quickstart.yaml "$@"
    ;;
  test)
    system_packages
    install "test,mpi"
    "$VENV/bin/ruff" check dcoord tests bench scripts
    "$VENV/bin/python" scripts/gen_protos.py --check
    fast=(-m "not slow" --fast-tier)
    if [ "${1:-}" = "--fast" ]; then
      shift
      exec "$VENV/bin/python" -m pytest -q "${fast[@]}" "$@"
    fi
    if [ $# -gt 0 ]; then
      exec "$VENV/bin/python" -m pytest -q "$@"
    fi
    start=$(date +%s)
    "$VENV/bin/python" -m pytest -q "${fast[@]}"
    took=$(( $(date +%s) - start ))
    echo "fast tier: ${took} s (budget 180 s)"
    if [ "$took" -gt 180 ]; then
      echo "dev.sh: the fast tier took ${took} s, over its 180 s budget: mark the slowest of its tests slow" >&2
    fi
    exec "$VENV/bin/python" -m pytest -q -m slow
    ;;
  bench)
    system_packages
    install "test,mpi"
    # each prints its side-by-side ratios and writes bench/results/NAME.json (and a plot where one helps)
    for b in decode control_plane local_stragglers transport sgc_traces srrw privacy privacy_digits; do
      "$VENV/bin/python" "bench/$b.py"
    done
    "$VENV/bin/python" bench/real_models.py --quick   # full size (no --quick) wants a bigger machine
    ;;
  mutate)
    install "test"
    if [ "${1:-}" = "--check" ]; then
      shift
      exec "$VENV/bin/python" scripts/check_mutants.py "$@"
    fi
    # a dev tool only: pinned in constraints.txt, installed here and nowhere else
    "$VENV/bin/pip" install -q -c constraints.txt cosmic-ray
    exec nice -n 19 "$VENV/bin/python" scripts/mutate.py "$@"
    ;;
  *)
    echo "usage: ./dev.sh run|test|bench|mutate [args...]" >&2
    exit 2
    ;;
esac
