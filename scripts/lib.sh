# Shared helpers for scripts/test and its stages (sourced, not run).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUMMARY="$ROOT/build/test-summary.txt"
JOBS="${MMKIT_JOBS:-$(nproc)}"

stage() { echo; echo "=== [mmkit test] $* ==="; }

# record NAME PASSED FAILED SKIPPED
record() { mkdir -p "$(dirname "$SUMMARY")"; echo "$1 $2 $3 $4" >> "$SUMMARY"; }

# run_gtest NAME BINARY [gtest args...]: runs the gtest binary as $JOBS shards
# at once (GTEST_TOTAL_SHARDS), records the summed counts, fails on failure.
# One process per shard instead of ctest's one per test: the sanitizer builds
# pay their start-up cost a few times instead of ~1900 times. A shard that
# dies (crash, sanitizer abort, the MMKIT_TEST_TIMEOUT limit, default 2400 s)
# counts as a failure and its log tail is printed.
run_gtest() {
  local name="$1" bin="$2"; shift 2
  local shards="$JOBS" i rc=0 pids=() P=0 F=0 S=0 p f s
  [ "$shards" -ge 1 ] || shards=1
  for ((i = 0; i < shards; i++)); do
    GTEST_TOTAL_SHARDS=$shards GTEST_SHARD_INDEX=$i timeout "${MMKIT_TEST_TIMEOUT:-2400}" \
      "$bin" --gtest_brief=1 "$@" >"$ROOT/build/gtest-$name-$i.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    local src=0
    wait "${pids[$i]}" || src=$?
    local log="$ROOT/build/gtest-$name-$i.log"
    p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
    f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
    s=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
    p=${p:-0}; f=${f:-0}; s=${s:-0}
    if [ "$src" -ne 0 ]; then
      rc=1
      [ "$f" -eq 0 ] && f=1  # died before its summary
      echo "[$name] shard $i of $shards exited with status $src (log: $log):"
      tail -n 60 "$log"
    fi
    P=$((P + p)); F=$((F + f)); S=$((S + s))
  done
  echo "[$name] $P passed, $F failed, $S skipped ($shards shards of $bin)"
  record "$name" "$P" "$F" "$S"
  return $rc
}
