#!/usr/bin/env bash
# libFuzzer targets (fuzz/, docs/fuzzing.md): built with clang, AddressSanitizer,
# UndefinedBehaviorSanitizer and coverage instrumentation, then each target
# runs for a bounded time from its checked-in corpus (fuzz/corpus/<target>),
# split over the CPU kernel levels (the best one, scalar, and avx2 when the
# best is avx512). A target that finishes without a finding counts as passed.
#   MMKIT_FUZZ_SECONDS=N  seconds per target in all (default 24)
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
SECS="${MMKIT_FUZZ_SECONDS:-24}"
# A fixed libFuzzer seed keeps CI runs reproducible (a finding is a change's,
# not the dice's); MMKIT_FUZZ_SEED=0 lets libFuzzer draw one (exploration).
SEED="${MMKIT_FUZZ_SEED:-1}"
stage "libFuzzer targets (clang, ASan+UBSan, ${SECS} s per target)"
BUILD="$ROOT/build/fuzz"
OUT="$ROOT/build/fuzz-runs"
cmake -S "$ROOT/fuzz" -B "$BUILD" -G Ninja -DCMAKE_CXX_COMPILER=clang++ >/dev/null
cmake --build "$BUILD" -j "$JOBS"

# (ISA, share of the time in percent)
runs=("native 50" "scalar 25")
if grep -qw avx512f /proc/cpuinfo && grep -qw avx2 /proc/cpuinfo; then runs+=("avx2 25"); else runs[0]="native 75"; fi

passed=0; failed=0
mkdir -p "$OUT"
for corpus in "$ROOT"/fuzz/corpus/*/; do
  t="$(basename "$corpus")"
  exe="$BUILD/$t"
  if [ ! -x "$exe" ]; then echo "[fuzz] $t: no executable"; failed=$((failed + 1)); continue; fi
  scratch="$OUT/$t"; rm -rf "$scratch"; mkdir -p "$scratch"
  ok=1; execs=0
  for r in "${runs[@]}"; do
    set -- $r
    isa="$1"; secs=$(( SECS * $2 / 100 )); [ "$secs" -ge 1 ] || secs=1
    log="$OUT/$t.$isa.log"
    # New inputs go to the scratch dir (first corpus argument); the checked-in
    # corpus is only read. Findings are written as $OUT/$t-crash-*.
    envs=(); [ "$isa" = native ] || envs=(MMKIT_CPU_ISA="$isa")
    if ! env "${envs[@]}" "$exe" -seed="$SEED" -max_total_time="$secs" -max_len=1024 -len_control=0 -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
         -artifact_prefix="$OUT/$t-" "$scratch" "$corpus" >"$log" 2>&1; then
      ok=0
      echo "[fuzz] $t ($isa) FAILED; log $log; last lines:"
      tail -n 30 "$log"
      echo "[fuzz] reproduce: $exe $OUT/$t-<crash file>"
    fi
    n=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\)/\1/p' "$log" | tail -1)
    execs=$((execs + ${n:-0}))
  done
  echo "[fuzz] $t: $execs inputs in ${SECS} s, $([ $ok -eq 1 ] && echo ok || echo FAILED)"
  if [ $ok -eq 1 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
record fuzz "$passed" "$failed" 0
[ "$failed" -eq 0 ]
