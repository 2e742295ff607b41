#!/usr/bin/env bash
# Python package: `pip install ./` into build/venv (CMake builds the extension
# inside pip, incrementally in build/pip-<tag>), then the pytest suite in
# python/tests, with the differential tests against MLX when mlx[cpu] installs.
#   MMKIT_CUDA=OFF     build the package without the CUDA backend (faster)
#   MMKIT_TEST_SEED=N  reproduce a run's random draws (printed by pytest)
#   MMKIT_TEST_FULL=1  every shape of the combinatorial MLX cases (slow)
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
stage "Python package (pip install ./ into build/venv, pytest python/tests)"

# Stage 10 already compiles (and CI checks) every CUDA file; building them a
# second time inside pip would double the suite's time, so the package is
# built CPU-only here unless MMKIT_CUDA says otherwise.
: "${MMKIT_CUDA:=OFF}"
export MMKIT_CUDA

VENV="$ROOT/build/venv"
PY="$VENV/bin/python"
MLX_VERSION=0.32.2  # the MLX release SPEC.md and the conformance vectors describe
mkdir -p "$ROOT/build"
[ -x "$PY" ] || python3 -m venv "$VENV"

# Build requirements go into the venv once; --no-build-isolation reuses them.
"$PY" -m pip install -q --disable-pip-version-check \
  "scikit-build-core>=0.10" "nanobind>=2.2" "numpy>=1.23" "ml_dtypes>=0.2" "pytest>=7"
if ! "$PY" -c "import sys, mlx.core as mx; sys.exit(mx.__version__ != '$MLX_VERSION')" 2>/dev/null; then
  "$PY" -m pip install -q --disable-pip-version-check "mlx[cpu]==$MLX_VERSION" ||
    echo "[python] pip could not install mlx[cpu]==$MLX_VERSION: the differential tests will skip"
fi

pip_log="$ROOT/build/pip-install-mmkit.log"
if ! (cd "$ROOT" && CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
      "$PY" -m pip install -v --no-build-isolation --disable-pip-version-check ./ >"$pip_log" 2>&1); then
  tail -n 60 "$pip_log"
  echo "[python] pip install ./ failed (full log: $pip_log)"
  record python 0 1 0
  exit 1
fi
echo "[python] installed mmkit $("$PY" -c 'import mmkit; print(mmkit.__version__)') (log: $pip_log)"

if [ -f "$ROOT/cli/CMakeLists.txt" ]; then export MMKIT_EXPECT_CLI=1; fi
xml="$ROOT/build/pytest-python.xml"
rm -f "$xml"
rc=0
# Run from build/ with the venv's pytest so that python/mmkit (the sources) never
# shadows the installed package.
(cd "$ROOT/build" && "$VENV/bin/pytest" "$ROOT/python/tests" -q -rs -p no:cacheprovider --junitxml="$xml") || rc=$?

read -r passed failed skipped < <("$PY" - "$xml" <<'PYEOF'
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print(0, 1, 0)
    sys.exit()
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
t = f = e = s = 0
for su in suites:
    t += int(su.get("tests", 0)); f += int(su.get("failures", 0))
    e += int(su.get("errors", 0)); s += int(su.get("skipped", 0))
print(t - f - e - s, f + e, s)
PYEOF
)
if [ "$rc" -eq 5 ]; then  # pytest: no tests collected; never intended here
  echo "[python] pytest collected no tests"
  failed=$((failed + 1))
fi
record python "$passed" "$failed" "$skipped"
# MMKIT_TEST_DEVICE=gpu: without a GPU every test skips, saying why; with one,
# the suite runs on the GPU backend (python/README.md, "Tests").
grc=0
(cd "$ROOT/build" && MMKIT_TEST_DEVICE=gpu "$VENV/bin/pytest" "$ROOT/python/tests" -q -p no:cacheprovider) \
  >"$ROOT/build/pytest-python-gpu.log" 2>&1 || grc=$?
echo "[python] MMKIT_TEST_DEVICE=gpu: $(tail -n 1 "$ROOT/build/pytest-python-gpu.log") (exit $grc)"
[ "$grc" -eq 0 ] || { tail -n 40 "$ROOT/build/pytest-python-gpu.log"; rc=1; }
exit "$rc"
