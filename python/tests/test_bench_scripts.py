"""The GPU peer harness (bench/gpu_peers.py) checks its own byte accounting,
JSON parsing, table and plot code without a GPU: run that self-test here so a
change that breaks the harness fails the suite, not the next GPU run."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_gpu_peers_self_test_passes():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_peers.py"), "--self-test"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "self-test passed" in r.stdout + r.stderr


def test_gpu_peers_says_what_is_missing_without_torch_or_gpu(tmp_path):
    # This machine has no GPU (and usually no torch): the harness must say so in
    # one line and exit 2, never a traceback.
    try:
        import torch  # noqa: F401
        if torch.cuda.is_available():
            import pytest
            pytest.skip("a GPU is present")
    except ImportError:
        pass
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_peers.py"), "--peers", "cublas", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
