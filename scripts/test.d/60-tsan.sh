#!/usr/bin/env bash
# ThreadSanitizer build of the whole C++ suite (preset tsan).
#
# OMP_NUM_THREADS=1: libgomp is not built with ThreadSanitizer, so the
# synchronisation inside its barriers and task queues is invisible to it and
# every OpenMP parallel region would be reported as a data race between the
# worker threads and the caller (false positives). With one OpenMP thread per
# call the kernels run inline, and the real concurrency under test comes from
# tests/test_concurrency.cpp, which starts std::threads that call every op at
# once on shared and private inputs.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
stage "C++ tests under ThreadSanitizer (preset tsan, OMP_NUM_THREADS=1)"
# Warnings are the ci stage's concern (-Werror there); this stage looks for races.
cmake --preset tsan -DMMKIT_WERROR=OFF >/dev/null
cmake --build --preset tsan -j "$JOBS"
OMP_NUM_THREADS=1 TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:allocator_may_return_null=1" \
  run_gtest cpp-tsan "$ROOT/build/tsan/tests/mmkit_tests"
