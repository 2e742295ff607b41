# Shared helpers for scripts/test and its stages (sourced, not run).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUMMARY="$ROOT/build/test-summary.txt"
JOBS="${MMKIT_JOBS:-$(nproc)}"

stage() { echo; echo "=== [mmkit test] $* ==="; }

# record NAME PASSED FAILED SKIPPED
record() { mkdir -p "$(dirname "$SUMMARY")"; echo "$1 $2 $3 $4" >> "$SUMMARY"; }

# run_ctest NAME PRESET [ctest args...]: runs ctest, records its counts, fails on failure.
run_ctest() {
  local name="$1" preset="$2"; shift 2
  local log="$ROOT/build/ctest-$name.log" rc=0
  (cd "$ROOT" && ctest --preset "$preset" -j "$JOBS" "$@") 2>&1 | tee "$log" || rc=$?
  local total failed skipped
  total=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\2/p' "$log" | tail -1)
  failed=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\1/p' "$log" | tail -1)
  skipped=$(grep -c "\*\*\*Skipped\|Not Run (Disabled)\| Skipped " "$log" || true)
  total=${total:-0}; failed=${failed:-1}
  record "$name" $((total - failed - skipped)) "$failed" "$skipped"
  return $rc
}
