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


def pytest_report_header(config):
    import mmkit

    return [
        f"mmkit {mmkit.__version__} from {os.path.dirname(mmkit.__file__)}; "
        f"built_with_cuda={mmkit.built_with_cuda()} gpu_count={mmkit.gpu_count()}",
        f"random seed {SEED} (MMKIT_TEST_SEED={SEED} reproduces this run); "
        f"MMKIT_TEST_FULL={os.environ.get('MMKIT_TEST_FULL', '0')} (1 runs every shape of the combinatorial MLX cases)",
    ]


@pytest.fixture
def rng(request):
    """A generator seeded from the session seed and the test's name (stable per test)."""
    h = sum((i + 1) * ord(c) for i, c in enumerate(request.node.nodeid)) % (2**31)
    return np.random.default_rng([SEED, h])
