"""quantized_matmul: the cases of MLX's Python tests (SPEC 9.2) against float64
references computed from the packed bit stream, plus the unquantized-w form."""

import itertools

import ml_dtypes
import numpy as np
import pytest

import mmkit as mk
from mmkit_ref import AFFINE, FP_MODES, assert_close, qmm_ref, subset, to64

BF16 = ml_dtypes.bfloat16


def normal(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def quant(w, gs=None, bits=None, mode="affine"):
    out = mk.quantize(w, gs, bits, mode)
    return (out[0], out[1], out[2] if mode == "affine" else None)


def check(x, w, gs, bits, mode="affine", transpose=True, tol=1e-3, what=""):
    w_q, s, b = quant(w, gs, bits, mode)
    y = mk.quantized_matmul(x, w_q, s, b, transpose, gs, bits, mode)
    ref = qmm_ref(x, w_q, s, b, transpose, gs, bits, mode)
    assert_close(y, ref, atol=tol, what=what or f"{mode} gs={gs} b={bits} T={transpose} x{x.shape} w{w.shape}")
    return y


# ---------------------------------------------------------------------------
# test_qmm


@pytest.mark.parametrize("gs,bits", [(g, b) for g in (128, 64, 32) for b in (2, 4, 8)])
@pytest.mark.parametrize("transpose", [True, False])
def test_qmm(gs, bits, transpose, rng):
    for m, n, k in subset(rng, itertools.product([8, 32, 33, 64], [128, 256], [128, 256]), 6):
        x = normal(rng, (m, k), k**-0.5)
        w = normal(rng, (n, k) if transpose else (k, n), k**-0.5)
        y = check(x, w, gs, bits, transpose=transpose)
        assert y.shape == (m, n) and y.dtype == mk.float32


@pytest.mark.parametrize("m,n", [(16, 32840), (32, 32840), (33, 32840), (33000, 64)])
def test_qmm_large_dims(m, n, rng):
    k = 128
    check(normal(rng, (m, k), k**-0.5), normal(rng, (n, k), k**-0.5), 64, 4)


def test_qmm_shapes(rng):
    w = normal(rng, (32, 256), 256**-0.5)
    for x_shape in [(3, 256), (2, 1, 7, 256)]:
        y = check(normal(rng, x_shape, 256**-0.5), w, 64, 4, transpose=True)
        assert y.shape == x_shape[:-1] + (32,)
    w = normal(rng, (256, 256), 256**-0.5)
    for x_shape in [(3, 256), (2, 1, 7, 256)]:
        y = check(normal(rng, x_shape, 256**-0.5), w, 64, 4, transpose=False)
        assert y.shape == x_shape[:-1] + (256,)


def test_qmm_batch_broadcast(rng):
    # x (2,1,7,K) with w (3,N,K): both batched, so the batch dims broadcast to (2,3)
    x = normal(rng, (2, 1, 7, 128), 128**-0.5)
    w = normal(rng, (3, 32, 128), 128**-0.5)
    y = check(x, w, 64, 4)
    assert y.shape == (2, 3, 7, 32)


# ---------------------------------------------------------------------------
# test_qmv / test_fp_qmv / test_qmv_wide / small sizes


@pytest.mark.parametrize("gs,bits", AFFINE)
def test_qmv(gs, bits, rng):
    for m, n, b in subset(rng, itertools.product([256, 512, 67], [64, 256], [0, 1, 3, 8]), 8):
        if gs > n:
            continue
        x_shape = (3, 1, n) if b == 0 else (b, 1, n)
        w_shape = (m, n) if b == 0 else (b, m, n)
        y = check(normal(rng, x_shape, n**-0.5), normal(rng, w_shape, n**-0.5), gs, bits)
        assert y.shape == x_shape[:-1] + (m,)


@pytest.mark.parametrize("mode,gs,bits", FP_MODES)
def test_fp_qmv(mode, gs, bits, rng):
    for m, n, b in subset(rng, itertools.product([256, 512, 67, 5, 7], [64, 256], [0, 1, 3, 8]), 12):
        x_shape = (3, 1, n) if b == 0 else (b, 1, n)
        w_shape = (m, n) if b == 0 else (b, m, n)
        check(normal(rng, x_shape), normal(rng, w_shape), gs, bits, mode)
    if mode == "nvfp4":
        check(normal(rng, (1, 48)), normal(rng, (128, 48)), gs, bits, mode)


@pytest.mark.parametrize("dtype", [np.float32, BF16, np.float16], ids=["f32", "bf16", "f16"])
def test_fp_qmv_large_output(dtype, rng):
    for x_shape, w_shape in [((1, 512), (4096, 512)), ((2, 1, 512), (2, 4096, 512))]:
        x = normal(rng, x_shape, 512**-0.5).astype(dtype)
        w = normal(rng, w_shape, 512**-0.5).astype(dtype)
        w_q, s = mk.quantize(w, mode="nvfp4")
        y = mk.quantized_matmul(x, w_q, s, mode="nvfp4")
        assert y.dtype == mk.array(x).dtype
        w_hat = mk.dequantize(w_q, s, mode="nvfp4", dtype=mk.array(x).dtype)
        # y is x @ w_hat^T computed in float32 and rounded once to the output dtype
        tol = 1e-3 if dtype == np.float32 else 1e-2
        assert_close(y, to64(x) @ np.swapaxes(to64(w_hat), -1, -2), atol=tol, rtol=tol)


@pytest.mark.parametrize("fmt", [("affine", gs, b) for gs, b in AFFINE] + FP_MODES, ids=str)
def test_qmv_wide(fmt, rng):
    mode, gs, bits = fmt
    for m, n, b, k in subset(rng, itertools.product([2, 3, 4, 5, 6, 7, 9], [256, 67], [0, 3], [128, 512]), 6):
        x_shape = (m, k) if b == 0 else (b, m, k)
        w_shape = (n, k) if b == 0 else (b, n, k)
        check(normal(rng, x_shape, k**-0.5), normal(rng, w_shape, k**-0.5), gs, bits, mode)


@pytest.mark.parametrize("bits,gs,mode", [(4, 32, "affine"), (6, 32, "affine"), (4, 16, "nvfp4")])
def test_qmv_tiny_and_small_non_multiples(bits, gs, mode, rng):
    shapes = [(2, 32, 10), (4, 32, 7), (3, 64, 5), (5, 64, 3), (1, 32, 3), (1, 32, 5)]
    for m, k, n in shapes:
        check(normal(rng, (m, k), k**-0.5), normal(rng, (n, k), k**-0.5), gs, bits, mode)


# ---------------------------------------------------------------------------
# test_qvm (transpose=False) and split-k


@pytest.mark.parametrize("gs,bits", AFFINE)
def test_qvm(gs, bits, rng):
    for m, n, b in subset(rng, itertools.product([32, 128, 256], [128, 256, 67], [0, 1, 3, 8]), 8):
        if m < gs:
            continue
        x_shape = (1, n) if b == 0 else (b, 1, n)
        w_shape = (n, m) if b == 0 else (b, n, m)
        y = check(normal(rng, x_shape, n**-0.5), normal(rng, w_shape, n**-0.5), gs, bits, transpose=False)
        assert y.shape == x_shape[:-1] + (m,)


@pytest.mark.parametrize("gs,bits", [(g, b) for g in (128, 64, 32) for b in (2, 4, 8)])
def test_qvm_splitk(gs, bits, rng):
    for b in subset(rng, (1, 3), 1):
        x = normal(rng, (b, 1, 16384), 0.1)
        w = normal(rng, (b, 16384, 128), 0.1)
        check(x, w, gs, bits, transpose=False, tol=2e-3)


def test_qvm_splitk_1d(rng):
    x = normal(rng, (2048,), 0.1)
    w = normal(rng, (2048, 2048), 0.1)
    y = check(x, w, 32, 8, transpose=False, tol=2e-3)
    assert y.shape == (2048,)


@pytest.mark.parametrize("gs,bits", [(64, 4), (64, 8), (32, 4), (32, 8)])
def test_qvm_splitk_multi_row(gs, bits, rng):
    for k, m in subset(rng, itertools.product([2048, 4096], [2, 3]), 2):
        check(normal(rng, (m, k), 0.1), normal(rng, (k, 128), 0.1), gs, bits, transpose=False, tol=2e-3)


@pytest.mark.parametrize("mode,gs,bits", FP_MODES)
def test_fp_qvm(mode, gs, bits, rng):
    cases = subset(rng, itertools.product([32, 128, 256], [128, 256, 67], [0, 1, 3, 8]), 12) + [(128, 16384, 0)]
    for m, n, b in cases:
        x_shape = (1, n) if b == 0 else (b, 1, n)
        w_shape = (n, m) if b == 0 else (b, n, m)
        check(normal(rng, x_shape), normal(rng, w_shape), gs, bits, mode, transpose=False, tol=2e-3 * max(1, n / 256))


# ---------------------------------------------------------------------------
# test_small_matrix / test_non_multiples / test_qmm_fp_type / test_throw


def test_small_matrix(rng):
    for w_shape in [(8, 256), (1, 8, 256), (3, 8, 256)]:
        w = normal(rng, w_shape)
        for x_shape in [(3, 1, 256), (3, 4, 256), (3, 10, 256)]:
            check(normal(rng, x_shape), w, None, None, transpose=True)
        for x_shape in [(3, 1, 8), (3, 10, 8)]:
            check(normal(rng, x_shape), w, None, None, transpose=False)


def test_non_multiples(rng):
    for n in (33, 3):
        w = normal(rng, (n, 256))
        check(normal(rng, (1, 256)), w, None, None, transpose=True)
        check(normal(rng, (10, 256)), w, None, None, transpose=True)
        check(normal(rng, (1, n)), w, None, None, transpose=False)
        check(normal(rng, (10, n)), w, None, None, transpose=False)
    check(normal(rng, (129, 256)), normal(rng, (99, 256)), None, None, transpose=True)


@pytest.mark.parametrize("mode", ["mxfp8", "mxfp4"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16], ids=["f32", "f16", "bf16"])
def test_qmm_fp_type(mode, dtype, rng):
    x = normal(rng, (32, 256)).astype(dtype)
    want = mk.array(x).dtype
    for w_shape in [(32, 256), (4, 32, 256)]:
        w_q, s = mk.quantize(normal(rng, w_shape), mode=mode)
        if len(w_shape) == 2:
            y = mk.quantized_matmul(x, w_q, s, mode=mode)
        else:
            y = mk.gather_qmm(x, w_q, s, mode=mode, rhs_indices=np.array([[2], [0], [1]]))
        assert y.dtype == want


def test_affine_output_dtype_promotes(rng):
    w = normal(rng, (16, 64))
    w_q, s, b = mk.quantize(w.astype(np.float16))
    assert mk.quantized_matmul(normal(rng, (2, 64)).astype(BF16), w_q, s, b).dtype == mk.float32
    assert mk.quantized_matmul(normal(rng, (2, 64)).astype(np.float16), w_q, s, b).dtype == mk.float16
    y = mk.quantized_matmul(np.ones((2, 64), np.int32), w_q, s, b)  # integer x converts
    assert y.dtype == mk.float16


def test_throw(rng):
    x = normal(rng, (10, 512))
    w_q, s, b = mk.quantize(normal(rng, (32, 512)))
    wq_t, s_t, b_t = (np.asarray(a).T for a in (w_q, s, b))
    with pytest.raises(ValueError):
        mk.quantized_matmul(x, wq_t, s, b)
    with pytest.raises(ValueError):
        mk.quantized_matmul(x, wq_t, s_t, b_t)
    with pytest.raises(ValueError):
        mk.quantized_matmul(x, w_q, s, b, transpose=False)
    with pytest.raises(ValueError):
        mk.quantized_matmul(x, w_q, s_t, b_t)


def test_stricter_validation(rng):
    # SPEC decision 2: holes MLX leaves open are errors here
    x = normal(rng, (4, 128))
    w_q, s, b = mk.quantize(normal(rng, (3, 16, 128)))
    with pytest.raises(ValueError, match=r"^\[quantized_matmul\]"):
        mk.quantized_matmul(x, w_q, s, b)  # 2-D x with a batched w
    w_q, s, b = mk.quantize(normal(rng, (16, 128)))
    with pytest.raises(ValueError, match=r"^\[quantized_matmul\]"):
        mk.quantized_matmul(x, w_q, s[:8], b[:8])  # scales rows != w rows
    with pytest.raises(ValueError, match=r"^\[quantized_matmul\]"):
        mk.quantized_matmul(x, w_q, s, b, group_size=64, bits=7)
    with pytest.raises(ValueError, match=r"^\[quantized_matmul\]"):
        mk.quantized_matmul(np.float32(1.0), w_q, s, b)  # 0-D x
    w_q, s = mk.quantize(normal(rng, (16, 128)), mode="mxfp4")
    with pytest.raises(ValueError, match=r"^\[quantized_matmul\]"):
        mk.quantized_matmul(x, w_q, s, mode="mxfp4", group_size=16)


def test_empty_shapes(rng):
    w_q, s, b = mk.quantize(normal(rng, (16, 128)))
    y = mk.quantized_matmul(np.zeros((0, 128), np.float32), w_q, s, b)
    assert y.shape == (0, 16)
    w_q, s, b = mk.quantize(np.zeros((0, 128), np.float32))
    assert w_q.shape == (0, 16)
    y = mk.quantized_matmul(normal(rng, (3, 128)), w_q, s, b)
    assert y.shape == (3, 0)


# ---------------------------------------------------------------------------
# Half precision inputs: float32 accumulation, compared with float64 (SPEC decision 5)


@pytest.mark.parametrize("dtype", [np.float16, BF16], ids=["f16", "bf16"])
@pytest.mark.parametrize("fmt", [("affine", 64, 4), ("affine", 32, 3), ("mxfp4", 32, 4), ("nvfp4", 16, 4), ("mxfp8", 32, 8)], ids=str)
@pytest.mark.parametrize("transpose", [True, False])
def test_half_precision(dtype, fmt, transpose, rng):
    mode, gs, bits = fmt
    k, n = 512, 96 if transpose else 128
    x = normal(rng, (2, 33, k), k**-0.5).astype(dtype)
    w = normal(rng, (n, k) if transpose else (k, n), k**-0.5).astype(dtype)
    w_q, s, b = quant(w, gs, bits, mode)
    y = mk.quantized_matmul(x, w_q, s, b, transpose, gs, bits, mode)
    assert y.dtype == mk.array(x).dtype
    ref = qmm_ref(x, w_q, s, b, transpose, gs, bits, mode)
    eps = 2.0**-8 if dtype == BF16 else 2.0**-11
    # one rounding of the float32 result to the output dtype, plus float32 accumulation
    assert_close(y, ref, atol=1e-3, rtol=eps, what=f"{mode} {dtype}")


# ---------------------------------------------------------------------------
# Unquantized floating w: quantized on the fly with the call's mode/group_size/bits


@pytest.mark.parametrize("fmt", [("affine", None, None), ("affine", 32, 3), ("affine", 128, 8)] + FP_MODES, ids=str)
@pytest.mark.parametrize("transpose", [True, False])
def test_quantized_matmul_unquantized_w(fmt, transpose, rng):
    mode, gs, bits = fmt
    x = normal(rng, (5, 256), 256**-0.5)
    w = normal(rng, (128, 256) if transpose else (256, 128), 256**-0.5)
    got = mk.quantized_matmul(x, w, transpose=transpose, group_size=gs, bits=bits, mode=mode)
    w_q, s, b = quant(w, gs, bits, mode)
    want = mk.quantized_matmul(x, w_q, s, b, transpose, gs, bits, mode)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert_close(got, qmm_ref(x, w_q, s, b, transpose, gs, bits, mode), atol=1e-3)
    # and with scales/biases passed as explicit None
    again = mk.quantized_matmul(x, w, None, None, transpose, gs, bits, mode)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(want))


def test_unquantized_w_dtypes_and_batches(rng):
    x = normal(rng, (2, 3, 128), 128**-0.5).astype(BF16)
    w = normal(rng, (2, 64, 128), 128**-0.5).astype(BF16)
    got = mk.quantized_matmul(x, w)  # affine 64/4, bf16 scales
    w_q, s, b = mk.quantize(w)
    assert s.dtype == mk.bfloat16
    np.testing.assert_array_equal(to64(got), to64(mk.quantized_matmul(x, w_q, s, b)))
    assert got.shape == (2, 3, 64)
    with pytest.raises(ValueError, match=r"^\[quantize\]"):
        mk.quantized_matmul(x, w, group_size=48)
