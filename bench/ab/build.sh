#!/bin/bash
# Same-process A/B timing of two builds of the library (docs/kernels/cpu.md):
#   bench/ab/build.sh <build dir>/libmmkit.a <source root of that build> <out.so>
#   g++ -std=c++20 -O2 -fopenmp -o ab bench/ab/ab.cpp -ldl
#   ./ab A.so B.so|vnni-off|solo <calls> "qmm N K M bits gs f32|bf16 copies" "gather E N K T topk bf16" ...
# Each .so holds its own copy of libmmkit.a with hidden symbols, so both load into one process.
set -e
here="$(cd "$(dirname "$0")" && pwd)"
g++ -std=c++20 -O2 -fPIC -shared -fvisibility=hidden -fopenmp -I"$2/include" -I"$2/src" -I"$(dirname "$1")/include" \
  -o "$3" "$here/shim.cpp" -Wl,--whole-archive "$1" -Wl,--no-whole-archive -Wl,--exclude-libs,ALL
