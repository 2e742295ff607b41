#!/usr/bin/env bash
# The CPU benchmark with its MLX peer, side by side in one run:
#   1. bench/mlx_cpu_peer.py times MLX's CPU backend on the same cases (skipped,
#      with a note, when `mlx` is not importable: pip install "mlx[cpu]"),
#   2. mmkit_cpu_bench measures the machine (read bandwidth, FMA peak), times
#      mmkit and its other peers, and prints one table with the MLX column.
# Usage: bench/run_cpu.sh [build dir (default build/ci)] [mmkit_cpu_bench args...]
#   MMKIT_PYTHON  the Python with mlx (default: build/venv/bin/python, else python3)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${1:-$ROOT/build/ci}"
shift || true
BIN="$BUILD/bench/mmkit_cpu_bench"
[ -x "$BIN" ] || { echo "run_cpu.sh: $BIN not found (configure with -DMMKIT_BUILD_BENCH=ON and build mmkit_cpu_bench)"; exit 1; }
OUT="${MMKIT_BENCH_OUT:-$BUILD/bench}"
mkdir -p "$OUT"
quick=()
# The Python that has mlx: MMKIT_PYTHON, else the test suite's venv, else python3.
PY="${MMKIT_PYTHON:-}"
[ -n "$PY" ] || { [ -x "$ROOT/build/venv/bin/python" ] && PY="$ROOT/build/venv/bin/python"; } || true
[ -n "$PY" ] || PY=python3
for a in "$@"; do [ "$a" = "--quick" ] && quick=(--quick); done
"$PY" "$ROOT/bench/mlx_cpu_peer.py" --json "$OUT/mlx_cpu.json" "${quick[@]}" || echo "run_cpu.sh: MLX peer failed; continuing without it"
exec "$BIN" --mlx "$OUT/mlx_cpu.json" --json "$OUT/cpu_bench.json" "$@"
