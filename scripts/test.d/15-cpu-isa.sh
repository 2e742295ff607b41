#!/usr/bin/env bash
# The MLX conformance cases and the CpuIsa suite (tests/test_cpu_isa.cpp) again,
# from the release build (preset ci), once per SIMD level this CPU supports,
# forced with MMKIT_CPU_ISA: every level must pass the whole contract.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
stage "CPU SIMD levels: Mlx* + CpuIsa* under each MMKIT_CPU_ISA (preset ci)"
cmake --preset ci >/dev/null
cmake --build --preset ci -j "$JOBS" --target mmkit_tests
BIN="$ROOT/build/ci/tests/mmkit_tests"

flags="$(grep -m1 '^flags' /proc/cpuinfo || true)"
has() { for f in "$@"; do [[ " $flags " == *" $f "* ]] || return 1; done; }
levels=(scalar)
has avx2 fma f16c && levels=(avx2 "${levels[@]}")
has avx512f avx512bw avx512vl avx512dq fma f16c && levels=(avx512 "${levels[@]}")

status=0
for isa in "${levels[@]}"; do
  log="$ROOT/build/cpu-isa-$isa.log"
  rc=0
  MMKIT_CPU_ISA="$isa" "$BIN" --gtest_filter='Mlx*:CpuIsa*' --gtest_brief=1 >"$log" 2>&1 || rc=$?
  passed=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
  failed=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
  skipped=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
  passed=${passed:-0}; failed=${failed:-0}; skipped=${skipped:-0}
  [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ] && failed=1  # crashed before the summary
  echo "MMKIT_CPU_ISA=$isa: $passed passed, $failed failed, $skipped skipped ($log)"
  [ "$failed" -gt 0 ] && tail -40 "$log"
  record "cpu-isa-$isa" "$passed" "$failed" "$skipped"
  [ "$rc" -eq 0 ] || status=1
done
exit $status
