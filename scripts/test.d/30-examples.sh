#!/usr/bin/env bash
# The installed package: `cmake --install` of the ci build into build/install,
# then examples/ configured with find_package(mmkit CONFIG REQUIRED) against
# that prefix, built and run (it checks quantized_matmul and gather_qmm
# against dequantize + matmul and exits non-zero on a mismatch).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
stage "installed package: examples/ against cmake --install of build/ci"
trap 'record examples 0 1 0' ERR
if [ ! -f "$ROOT/build/ci/build.ninja" ]; then
  cmake --preset ci >/dev/null
fi
cmake --build --preset ci -j "$JOBS"  # no-op after stage 10; install needs every target
rm -rf "$ROOT/build/install" "$ROOT/build/examples"
cmake --install "$ROOT/build/ci" --prefix "$ROOT/build/install" >/dev/null
cmake -S "$ROOT/examples" -B "$ROOT/build/examples" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$ROOT/build/install"
cmake --build "$ROOT/build/examples" -j "$JOBS"
"$ROOT/build/examples/quantized_matmul_example"
trap - ERR
record examples 1 0 0
