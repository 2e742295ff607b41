#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer build of the whole C++ suite.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
stage "C++ tests under ASan+UBSan (preset asan)"
cmake --preset asan >/dev/null
cmake --build --preset asan -j "$JOBS"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  run_gtest cpp-asan-ubsan "$ROOT/build/asan/tests/mmkit_tests"
