import functools
import os
import random

import numpy as np
import pytest

try:
    import mmkit  # noqa: F401
except ImportError as e:  # a source checkout on sys.path shadows the installed package
    raise ImportError(
        f"cannot import the built mmkit package ({e}); install it (pip install .) or set "
        "PYTHONPATH=<build>/python, and do not run pytest from inside python/"
    ) from e


def _session_seed():
    env = os.environ.get("MMKIT_TEST_SEED")
    if env:
        return int(env)
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # pytest-xdist: one seed for all workers
    if run_id:
        return int(run_id[:8], 16) % 2**31
    return random.SystemRandom().randrange(2**31)


SEED = _session_seed()

# MMKIT_TEST_DEVICE=gpu runs the whole suite on the GPU backend, like the C++
# suite: every op called without a stream runs on mmkit.gpu (inputs are copied
# there, results read back by numpy), and the device is synchronized after each
# call so a deferred error (an out-of-range index found on the device) surfaces
# at the call the test wraps. Tests of stream and device semantics themselves
# are marked `native_streams` and see the ops unchanged.
DEVICE = os.environ.get("MMKIT_TEST_DEVICE", "cpu")
if DEVICE not in ("cpu", "gpu"):
    raise pytest.UsageError(f"MMKIT_TEST_DEVICE={DEVICE!r}: expected 'cpu' or 'gpu'")
_OPS = ("quantize", "dequantize", "quantized_matmul", "gather_qmm", "gather_mm", "block_masked_mm", "to_fp8",
        "from_fp8")
_NATIVE = {}
_ON_GPU = [False]


def _gpu_unavailable():
    import mmkit

    if not mmkit.built_with_cuda():
        return "MMKIT_TEST_DEVICE=gpu but mmkit was built without CUDA"
    if mmkit.gpu_count() == 0:
        return "MMKIT_TEST_DEVICE=gpu but no CUDA GPU is present"
    return None


def _on_gpu(fn):
    import mmkit

    @functools.wraps(fn)
    def wrapper(*args, stream=None, **kwargs):
        if stream is None and _ON_GPU[0]:
            out = fn(*args, stream=mmkit.gpu, **kwargs)
            mmkit.synchronize(mmkit.gpu)
            return out
        return fn(*args, stream=stream, **kwargs)

    wrapper.__nb_signature__ = fn.__nb_signature__  # (the signature tests read nanobind's)
    return wrapper


def pytest_configure(config):
    config.addinivalue_line("markers", "native_streams: sees the ops' own stream defaults under MMKIT_TEST_DEVICE=gpu")
    if DEVICE == "gpu" and _gpu_unavailable() is None:
        import mmkit

        for name in _OPS:
            _NATIVE[name] = getattr(mmkit, name)
            setattr(mmkit, name, _on_gpu(_NATIVE[name]))


def pytest_collection_modifyitems(config, items):
    why = _gpu_unavailable() if DEVICE == "gpu" else None
    if why:
        for item in items:
            item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(autouse=True)
def _test_device(request):
    _ON_GPU[0] = bool(_NATIVE) and request.node.get_closest_marker("native_streams") is None
    yield
    _ON_GPU[0] = False


def pytest_report_header(config):
    import mmkit

    return [
        f"mmkit {mmkit.__version__} from {os.path.dirname(mmkit.__file__)}; "
        f"built_with_cuda={mmkit.built_with_cuda()} gpu_count={mmkit.gpu_count()}",
        f"random seed {SEED} (MMKIT_TEST_SEED={SEED} reproduces this run); "
        f"MMKIT_TEST_FULL={os.environ.get('MMKIT_TEST_FULL', '0')} (1 runs every shape of the combinatorial MLX cases)",
        f"MMKIT_TEST_DEVICE={DEVICE}" + (" (ops without a stream run on mmkit.gpu)" if _NATIVE else ""),
    ]


@pytest.fixture
def rng(request):
    """A generator seeded from the session seed and the test's name (stable per test)."""
    h = sum((i + 1) * ord(c) for i, c in enumerate(request.node.nodeid)) % (2**31)
    return np.random.default_rng([SEED, h])
