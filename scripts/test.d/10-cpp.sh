#!/usr/bin/env bash
# C++ suite (release build, warnings as errors; the CUDA backend is compiled
# when nvcc is present and its tests skip without a GPU).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
stage "C++ build + tests (preset ci)"
cmake --preset ci >/dev/null
cmake --build --preset ci -j "$JOBS"
run_gtest cpp-release "$ROOT/build/ci/tests/mmkit_tests"
# The same binary with the GPU as the device under test: on a machine without
# one every device-dependent test must skip and say why (none may fail); with
# one, this is the GPU suite.
MMKIT_TEST_DEVICE=gpu run_gtest cpp-device-gpu "$ROOT/build/ci/tests/mmkit_tests"
