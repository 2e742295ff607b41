"""The ops on the GPU through the Python API (skipped without a CUDA GPU):
results on GPU arrays, quantize identical to the CPU, matmuls against the
float64 references, DLPack with device memory, deferred index errors."""

import ml_dtypes
import numpy as np
import pytest

import mmkit as mk
from mmkit_ref import FP_MODES, assert_close, block_masked_ref, dequantize_ref, gather_ref, qmm_ref

pytestmark = pytest.mark.skipif(mk.gpu_count() == 0, reason="needs a CUDA GPU and mmkit built with CUDA")

BF16 = ml_dtypes.bfloat16
FORMATS = [("affine", 64, 4), ("affine", 32, 3), ("affine", 128, 8), ("affine", 64, 6)] + list(FP_MODES)


def normal(rng, shape, scale=1.0, dtype=np.float32):
    return (rng.standard_normal(shape) * scale).astype(dtype)


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16], ids=["f32", "f16", "bf16"])
def test_quantize_on_gpu_is_identical_to_cpu(fmt, dtype, rng):
    mode, gs, bits = fmt
    w = normal(rng, (2, 96, 512), 1.0, dtype)
    cpu = mk.quantize(w, gs, bits, mode)
    gpu = mk.quantize(w, gs, bits, mode, stream=mk.gpu)
    for c, g in zip(cpu, gpu):
        assert g.device == mk.gpu
        np.testing.assert_array_equal(np.asarray(g).view(np.uint8), np.asarray(c).view(np.uint8))
    deq_c = mk.dequantize(*cpu[:2], cpu[2] if mode == "affine" else None, gs, bits, mode)
    deq_g = mk.dequantize(*gpu[:2], gpu[2] if mode == "affine" else None, gs, bits, mode)
    np.testing.assert_array_equal(np.asarray(deq_g).view(np.uint8), np.asarray(deq_c).view(np.uint8))


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize("transpose", [True, False])
@pytest.mark.parametrize("m", [1, 7, 64])
def test_quantized_matmul_on_gpu(fmt, dtype, transpose, m, rng):
    mode, gs, bits = fmt
    k, n = 512, 384
    x = normal(rng, (2, m, k), k**-0.5, dtype)
    w = normal(rng, (n, k) if transpose else (k, n), k**-0.5, dtype)
    q = mk.quantize(w, gs, bits, mode)
    q = (q[0], q[1], q[2] if mode == "affine" else None)
    y = mk.quantized_matmul(x, *q, transpose, gs, bits, mode, stream=mk.gpu)
    assert y.device == mk.gpu and y.__dlpack_device__() == (2, 0)
    eps = 2.0**-8 if dtype == BF16 else 1e-6
    assert_close(y, qmm_ref(x, *q, transpose, gs, bits, mode), atol=1e-3, rtol=eps, what=f"{mode} m={m}")


@pytest.mark.parametrize("mode", ["affine", "mxfp4", "nvfp4"])
@pytest.mark.parametrize("sorted_rhs", [False, True])
def test_gather_qmm_on_gpu(mode, sorted_rhs, rng):
    e, n, k, tokens, top = 8, 256, 512, 37, 2
    x = normal(rng, (tokens, 1, 1, k), k**-0.5)
    w = normal(rng, (e, n, k), k**-0.5)
    q = mk.quantize(w, mode=mode)
    q = (q[0], q[1], q[2] if mode == "affine" else None)
    ids = rng.integers(0, e, (tokens, top)).astype(np.int32)
    if sorted_rhs:
        flat = ids.reshape(-1)
        order = np.argsort(flat, kind="stable")
        xs = x.reshape(tokens, 1, k)[order // top]
        y = mk.gather_qmm(xs, *q, rhs_indices=flat[order], mode=mode, sorted_indices=True, stream=mk.gpu)
        ref = gather_ref(xs, np.swapaxes(dequantize_ref(*q, mode=mode), -1, -2), None, flat[order])
    else:
        y = mk.gather_qmm(x, *q, rhs_indices=ids, mode=mode, stream=mk.gpu)
        ref = gather_ref(x, np.swapaxes(dequantize_ref(*q, mode=mode), -1, -2), None, ids)
    assert y.device == mk.gpu
    assert_close(y, ref, atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16], ids=["f32", "f16", "bf16"])
def test_gather_mm_and_block_masked_mm_on_gpu(dtype, rng):
    a = normal(rng, (4, 33, 96), 1.0, dtype)
    b = normal(rng, (3, 96, 70), 1.0, dtype)
    lhs, rhs = np.array([3, 0, 2]), np.array([1, 1, 0])
    eps = {np.float32: 1e-5, np.float16: 2.0**-10, BF16: 2.0**-7}[dtype]
    assert_close(mk.gather_mm(a, b, lhs, rhs, stream=mk.gpu), gather_ref(a, b, lhs, rhs), atol=1e-3, rtol=eps)
    bs = 32
    ml = rng.random((2, 3)) < 0.6
    mr = np.maximum(rng.standard_normal((3, 3)), 0).astype(np.float32)
    mo = rng.random((2, 3)) < 0.7
    y = mk.block_masked_mm(a[0, :, :], b[0], bs, mo, ml, mr, stream=mk.gpu)
    mr_t = mr.astype(dtype)  # float masks take the output dtype
    ref = block_masked_ref(a[0], b[0], bs, mo, ml, mr_t)
    assert_close(y, ref, atol=1e-2 if dtype != np.float32 else 1e-4, rtol=4 * eps)


def test_gpu_index_errors_are_reported(rng):
    x = normal(rng, (4, 2, 64))
    w_q, s, b = mk.quantize(normal(rng, (3, 16, 64)), stream=mk.gpu)
    with pytest.raises(ValueError, match=r"\[gather_qmm\]"):
        y = mk.gather_qmm(x, w_q, s, b, lhs_indices=np.array([0, 1]), rhs_indices=np.array([0, 3]), stream=mk.gpu)
        mk.synchronize()
        np.asarray(y)


def test_streams_on_gpu(rng):
    s = mk.new_stream(mk.gpu)
    assert s.device == mk.gpu
    x = normal(rng, (8, 256))
    w_q, sc, b = mk.quantize(normal(rng, (64, 256)))
    y = mk.quantized_matmul(x, w_q, sc, b, stream=s)
    s.synchronize()
    assert_close(y, qmm_ref(x, w_q, sc, b), atol=1e-3)
    y2 = mk.quantized_matmul(x, w_q, sc, b, stream="gpu")
    np.testing.assert_allclose(np.asarray(y2), np.asarray(y), atol=1e-5)
    z = mk.gather_mm(y2, np.eye(64, dtype=np.float32), stream=mk.cpu)  # a GPU input moves to the CPU
    assert z.device == mk.cpu
    np.testing.assert_allclose(np.asarray(z), np.asarray(y2), atol=1e-6)
