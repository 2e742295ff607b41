"""quantize / dequantize / to_fp8 / from_fp8: the cases of MLX's Python tests
(SPEC 9.1, 9.4) plus exact checks against numpy references that read the
packed bit stream (SPEC 0.2)."""

import ml_dtypes
import numpy as np
import pytest

import mmkit as mk
from mmkit_ref import (
    AFFINE,
    E2M1,
    FP_MODES,
    assert_close,
    dequantize_ref,
    e4m3_decode,
    e4m3_encode,
    quantize_affine_ref,
    quantize_fp_ref,
    to64,
    unpack_codes,
)

BF16 = ml_dtypes.bfloat16


# ---------------------------------------------------------------------------
# MLX test_quantize_dequantize and ops_tests.cpp "quantize dequantize"


@pytest.mark.parametrize("gs,bits", AFFINE)
def test_quantize_dequantize_error_bound(gs, bits, rng):
    w = rng.standard_normal((128, 512)).astype(np.float32)
    w_q, scales, biases = mk.quantize(w, gs, bits)
    assert w_q.shape == (128, 512 * bits // 32) and w_q.dtype == mk.uint32
    assert scales.shape == (128, 512 // gs) and scales.dtype == mk.float32
    assert biases.shape == scales.shape and biases.dtype == mk.float32
    w_hat = mk.dequantize(w_q, scales, biases, gs, bits)
    assert w_hat.shape == w.shape and w_hat.dtype == mk.float32
    err = np.abs(w - np.asarray(w_hat)).reshape(128, 512 // gs, gs)
    assert (err <= np.abs(np.asarray(scales))[..., None] + 1e-6).all()


@pytest.mark.parametrize("gs,bits", AFFINE)
def test_quantize_zeros_round_trip(gs, bits):
    w = np.zeros((256, 512), np.float32)
    w_hat = mk.dequantize(*mk.quantize(w, gs, bits), gs, bits)
    assert (np.asarray(w_hat) == 0).all()


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_ops_tests_ramp(bits):
    w = np.tile(np.arange(512, dtype=np.float32), (128, 1))
    w_q, scales, biases = mk.quantize(w, 128, bits)
    assert w_q.shape == (128, 512 * bits // 32)
    assert scales.shape == (128, 4) and biases.shape == (128, 4)
    w_hat = np.asarray(mk.dequantize(w_q, scales, biases, 128, bits))
    assert np.abs(w - w_hat).max() <= 127 / 2**bits


def test_spec_worked_example():
    # SPEC 1.3: b=4, group 0..31 -> scale -31/15 rounded edge, bias 31, code(31)=0, code(0)=15
    w = np.tile(np.arange(32, dtype=np.float32), (1, 1))
    w_q, s, b = mk.quantize(w, 32, 4)
    codes = unpack_codes(w_q, 4)
    assert codes[0, 31] == 0 and codes[0, 0] == 15
    assert np.asarray(b)[0, 0] == 31.0
    assert np.isclose(np.asarray(s)[0, 0], -2.0666666, atol=1e-6)


# ---------------------------------------------------------------------------
# Exact: affine quantize is MLX's float32 algorithm bit for bit; dequantize
# matches the float64 bit-stream reference.


@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16], ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("gs,bits", AFFINE)
def test_affine_quantize_is_bit_exact(gs, bits, dtype, rng):
    w = (rng.standard_normal((6, 2, 256)) * rng.uniform(0.01, 100, (6, 2, 1))).astype(dtype)
    w[0, 0, :gs] = 0  # all-zero group
    w[1, 0, :gs] = w[1, 0, 0]  # constant group
    w[2, 1, :gs] = -np.abs(w[2, 1, :gs])  # all-negative group (flip)
    w_q, s, b = mk.quantize(w, gs, bits)
    rq, rs, rb = quantize_affine_ref(w, gs, bits)
    assert s.dtype == b.dtype and np.asarray(s).dtype == np.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(w_q), rq)
    np.testing.assert_array_equal(np.asarray(s).view(np.uint8), rs.view(np.uint8))
    np.testing.assert_array_equal(np.asarray(b).view(np.uint8), rb.view(np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16], ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("mode", ["mxfp4", "mxfp8", "nvfp4", "nvfp4+global"])
def test_fp_quantize_is_bit_exact(mode, dtype, rng):
    mode, use_global = mode.split("+")[0], mode.endswith("+global")
    w = (rng.standard_normal((4, 3, 256)) * np.exp(rng.uniform(-8, 8, (4, 3, 1)))).astype(dtype)
    w[0, 0, :32] = 0  # all-zero groups
    w[1, 0, :64] = (np.arange(64) % 16 - 8) * 0.25  # ties between table entries (0.25, 0.75, 1.25, ...)
    w[2, 0, :32] = -1e-3  # small negatives (encode to +0 when they round to zero)
    w[3, 2, :32] = 6.0 * 2.0 ** rng.integers(-10, 10)  # exact powers of two
    gscale = np.array(np.abs(w.astype(np.float32)).max(), np.float32) if use_global else None
    w_q, scales = mk.quantize(w, mode=mode, global_scale=gscale)
    r_q, r_s = quantize_fp_ref(w, mode, gscale)
    np.testing.assert_array_equal(np.asarray(scales), r_s)
    np.testing.assert_array_equal(np.asarray(w_q), r_q)


@pytest.mark.parametrize("gs,bits", AFFINE)
def test_affine_dequantize_matches_bitstream_reference(gs, bits, rng):
    # random codes (every bit pattern), float32 scales/biases: MLX computes
    # code * scale (one rounding) + bias (second rounding) in float32
    rows, cols = 5, 4 * gs
    codes = rng.integers(0, 2**bits, (rows, cols))
    from mmkit_ref import pack_codes

    w_q = pack_codes(codes, bits)
    s = rng.standard_normal((rows, cols // gs)).astype(np.float32)
    b = rng.standard_normal((rows, cols // gs)).astype(np.float32)
    got = np.asarray(mk.dequantize(w_q, s, b, gs, bits))
    np.testing.assert_array_equal(unpack_codes(w_q, bits), codes)
    want32 = codes.astype(np.float32) * np.repeat(s, gs, -1) + np.repeat(b, gs, -1)
    np.testing.assert_array_equal(got, want32)
    assert_close(got, dequantize_ref(w_q, s, b, gs, bits), atol=1e-5, rtol=1e-6, what="dequantize")


@pytest.mark.parametrize("mode,gs,bits", FP_MODES)
@pytest.mark.parametrize("out", [mk.float32, mk.bfloat16, mk.float16])
def test_fp_dequantize_matches_bitstream_reference(mode, gs, bits, out, rng):
    rows, cols = 7, 8 * gs
    codes = rng.integers(0, 2**bits, (rows, cols))
    from mmkit_ref import pack_codes

    w_q = pack_codes(codes, bits)
    if mode == "nvfp4":
        scales = rng.integers(0, 127, (rows, cols // gs)).astype(np.uint8)  # positive E4M3 (<= 448)
    else:
        scales = rng.integers(110, 140, (rows, cols // gs)).astype(np.uint8)  # 2^-17 .. 2^12
    got = mk.dequantize(w_q, scales, None, gs, bits, mode, dtype=out)
    assert got.dtype == out
    ref = dequantize_ref(w_q, scales, None, gs, bits, mode)
    # values are products of two exactly representable factors: one rounding to `out`
    np_out = {mk.float32: np.float32, mk.bfloat16: BF16, mk.float16: np.float16}[out]
    with np.errstate(over="ignore"):  # float16 overflows to Inf like the op does
        want = ref.astype(np_out).astype(np.float64)
    np.testing.assert_array_equal(to64(got), want)


def test_fp_dequantize_default_dtype_is_bfloat16(rng):
    w = rng.standard_normal((4, 64)).astype(np.float32)
    for mode, _, _ in FP_MODES:
        assert mk.dequantize(*mk.quantize(w, mode=mode), mode=mode).dtype == mk.bfloat16


def test_fp8_conversions_exhaustive():
    every_byte = np.arange(256, dtype=np.uint8)
    for dt, npdt in [(mk.float32, np.float32), (mk.float16, np.float16), (mk.bfloat16, BF16)]:
        got = mk.from_fp8(every_byte, dt)
        assert got.dtype == dt
        np.testing.assert_array_equal(to64(got), e4m3_decode(every_byte).astype(npdt).astype(np.float64))
    assert np.asarray(mk.from_fp8(np.array([0x7F, 0xFF], np.uint8), mk.float32)).tolist() == [480.0, -480.0]
    # every float16 value (as float32 input too), and special values
    h = np.arange(65536, dtype=np.uint16).view(np.float16)
    np.testing.assert_array_equal(np.asarray(mk.to_fp8(h)), e4m3_encode(h.astype(np.float32)))
    np.testing.assert_array_equal(np.asarray(mk.to_fp8(h.astype(np.float32))), e4m3_encode(h.astype(np.float32)))
    specials = np.array([np.nan, np.inf, -np.inf, 448, 449, 464, 1e30, -0.0, 2.0**-10, 2.0**-9 * 1.5], np.float32)
    np.testing.assert_array_equal(np.asarray(mk.to_fp8(specials)), e4m3_encode(specials))
    assert np.asarray(mk.to_fp8(np.array([np.nan, -np.inf, -0.0], np.float32))).tolist() == [0x7E, 0xFE, 0x80]


def test_fp8_round_trip_of_every_code():
    codes = np.array([c for c in range(256) if c not in (0x7F, 0xFF)], np.uint8)  # 0x7F is never produced
    vals = mk.from_fp8(codes, mk.float32)
    np.testing.assert_array_equal(np.asarray(mk.to_fp8(vals)), codes)


# ---------------------------------------------------------------------------
# MLX test_mxfp4 / test_mxfp8 / test_nvfp4 _quantize_dequantize


def _table_weights(rng, group):
    w = E2M1[rng.integers(0, 16, (128, 512))].reshape(-1, group)
    w[:, 0] = 6
    return (w + 3e-6).astype(BF16)


def test_mxfp4_quantize_dequantize(rng):
    w = _table_weights(rng, 32)
    with pytest.raises(ValueError):
        mk.quantize(w, bits=3, group_size=32, mode="mxfp4")
    with pytest.raises(ValueError):
        mk.quantize(w, group_size=64, bits=4, mode="mxfp4")
    w_q, scales = mk.quantize(w, group_size=32, bits=4, mode="mxfp4")
    assert scales.dtype == mk.uint8 and w_q.shape == (w.shape[0], 4) and scales.shape == (w.shape[0], 1)
    with pytest.raises(ValueError):
        mk.dequantize(w_q, scales, bits=3, group_size=32, mode="mxfp4")
    with pytest.raises(ValueError):
        mk.dequantize(w_q, scales, group_size=64, bits=4, mode="mxfp4")
    with pytest.raises(ValueError):
        mk.dequantize(w_q, scales, group_size=32, bits=4, mode="mxfp4", dtype=mk.int32)
    w_hat = mk.dequantize(w_q, scales, group_size=32, bits=4, mode="mxfp4")
    np.testing.assert_allclose(to64(w_hat), to64(w), rtol=1e-5, atol=1e-5)
    z = np.zeros((256, 512), np.float32)
    assert (to64(mk.dequantize(*mk.quantize(z, mode="mxfp4"), mode="mxfp4")) == 0).all()


def test_mxfp8_quantize_dequantize(rng):
    w = rng.uniform(-1, 1, (512, 32)).astype(BF16)
    with pytest.raises(ValueError):
        mk.quantize(w, bits=3, mode="mxfp8")
    with pytest.raises(ValueError):
        mk.quantize(w, group_size=32, bits=7, mode="mxfp8")
    w_q, scales = mk.quantize(w, group_size=32, mode="mxfp8")
    with pytest.raises(ValueError):
        mk.dequantize(w_q, scales, group_size=16, bits=4, mode="mxfp8")
    w_hat = mk.dequantize(w_q, scales, group_size=32, mode="mxfp8")
    np.testing.assert_allclose(to64(w_hat), to64(w), rtol=1e-1, atol=1e-1)
    z = np.zeros((256, 512), np.float32)
    assert (to64(mk.dequantize(*mk.quantize(z, mode="mxfp8"), mode="mxfp8")) == 0).all()


def test_mxfp8_saturation_quirk():
    # SPEC 1.4: a group maximum of 1.0 gets exponent -9; 1.0 -> 512 saturates to 448 -> 0.875
    w = np.full((1, 32), 0.5, np.float32)
    w[0, 0] = 1.0
    w_hat = np.asarray(mk.dequantize(*mk.quantize(w, mode="mxfp8"), mode="mxfp8", dtype=mk.float32))
    assert w_hat[0, 0] == 0.875 and (w_hat[0, 1:] == 0.5).all()


def test_nvfp4_quantize_dequantize(rng):
    w = _table_weights(rng, 16)
    with pytest.raises(ValueError):
        mk.quantize(w, bits=3, mode="nvfp4")
    with pytest.raises(ValueError):
        mk.quantize(w, group_size=64, mode="nvfp4")
    w_q, scales = mk.quantize(w, mode="nvfp4")
    with pytest.raises(ValueError):
        mk.dequantize(w_q, scales, bits=3, mode="nvfp4")
    with pytest.raises(ValueError):
        mk.dequantize(w_q, scales, group_size=32, mode="nvfp4")
    w_hat = mk.dequantize(w_q, scales, mode="nvfp4")
    np.testing.assert_allclose(to64(w_hat), to64(w), rtol=1e-5, atol=1e-5)

    # one scale per 16 elements, not per 32
    alt = np.empty((64, 16), np.float32)
    alt[0::2] = 6 * 2.0**-9
    alt[1::2] = 6.0
    alt = alt.astype(BF16)
    w_hat = mk.dequantize(*mk.quantize(alt, mode="nvfp4"), mode="nvfp4", dtype=mk.bfloat16)
    np.testing.assert_allclose(to64(w_hat), to64(alt), rtol=1e-5, atol=1e-6)

    z = np.zeros((256, 512), np.float32)
    assert (to64(mk.dequantize(*mk.quantize(z, mode="nvfp4"), mode="nvfp4")) == 0).all()

    gscale = np.array(np.abs(to64(w)).max(), np.float32)
    w_q, scales = mk.quantize(w, mode="nvfp4", global_scale=gscale)
    w_hat = mk.dequantize(w_q, scales, mode="nvfp4", global_scale=gscale)
    np.testing.assert_allclose(to64(w_hat), to64(w), rtol=1e-5, atol=1e-5)
    assert_close(w_hat, dequantize_ref(w_q, scales, None, mode="nvfp4", global_scale=gscale), 1e-6, 1e-2)


def test_nvfp4_shapes_not_multiple_of_32():
    # SPEC decision 10a: every shape whose last dim is a multiple of 16 quantizes
    w = np.linspace(-3, 3, 17 * 16, dtype=np.float32).reshape(17, 16)
    w_q, s = mk.quantize(w, mode="nvfp4")
    assert w_q.shape == (17, 2) and s.shape == (17, 1)


def test_quantize_strided_scales(rng):
    w = rng.standard_normal((64, 64)).astype(np.float32)
    w_q, scales = mk.quantize(w, mode="nvfp4")
    broadcast = np.broadcast_to(np.uint8(56), scales.shape)  # 56 = E4M3 1.0, all strides 0
    contiguous = np.full(scales.shape, 56, np.uint8)
    a = mk.dequantize(w_q, broadcast, mode="nvfp4")
    b = mk.dequantize(w_q, contiguous, mode="nvfp4")
    np.testing.assert_array_equal(to64(a), to64(b))


def test_strided_weights_quantize_like_contiguous(rng):
    base = rng.standard_normal((64, 256)).astype(np.float32)
    view = base[::2, ::2]  # non-contiguous
    for mode in ("affine", "mxfp4", "mxfp8", "nvfp4"):
        got = mk.quantize(view, mode=mode)
        want = mk.quantize(np.ascontiguousarray(view), mode=mode)
        for g, w_ in zip(got, want):
            np.testing.assert_array_equal(np.asarray(g).view(np.uint8), np.asarray(w_).view(np.uint8))


def test_batched_quantize_shapes(rng):
    w = rng.standard_normal((2, 3, 8, 128)).astype(np.float16)
    w_q, s, b = mk.quantize(w, 32, 6)
    assert w_q.shape == (2, 3, 8, 24) and s.shape == (2, 3, 8, 4) and s.dtype == mk.float16
    assert_close(mk.dequantize(w_q, s, b, 32, 6), dequantize_ref(w_q, s, b, 32, 6), atol=2e-3, rtol=2e-3)


# ---------------------------------------------------------------------------
# SPEC 9.4: the error cases MLX's tests exercise


def test_mode_error_cases(rng):
    w = rng.standard_normal((256, 256)).astype(np.float32)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    w_q, scales, biases = mk.quantize(w)
    with pytest.raises(ValueError):
        mk.quantize(w, mode="xyz")
    with pytest.raises(ValueError):
        mk.dequantize(w_q, scales, biases, mode="xyz")
    with pytest.raises(ValueError):
        mk.quantized_matmul(x, w_q, scales, biases, mode="xyz")
    with pytest.raises(ValueError):
        mk.gather_qmm(x, w_q, scales, biases, rhs_indices=np.array(0), mode="xyz")
    for mode in ("affine", "mxfp4"):
        with pytest.raises(ValueError):
            mk.quantize(w.astype(np.int32), mode=mode)
    with pytest.raises(ValueError):
        mk.dequantize(w_q, scales, None)
    with pytest.raises(ValueError):
        mk.quantized_matmul(x, w_q, scales, None)
    with pytest.raises(ValueError):
        mk.gather_qmm(x, w_q, scales, None, rhs_indices=np.array(0))
    si, bi, xi = (np.asarray(scales).astype(np.int32), np.asarray(biases).astype(np.int32), x.astype(np.int32))
    with pytest.raises(ValueError):
        mk.dequantize(w_q, si, bi)
    with pytest.raises(ValueError):
        mk.quantized_matmul(xi, w_q, si, bi)
    with pytest.raises(ValueError):
        mk.gather_qmm(xi, w_q, si, bi, rhs_indices=np.array(0))
    with pytest.raises(ValueError):
        mk.dequantize(w_q, scales, biases, dtype=mk.int32)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(mode="affine", group_size=48),
        dict(mode="affine", bits=7),
        dict(mode="affine", bits=1),
        dict(mode="mxfp4", group_size=16),
        dict(mode="nvfp4", bits=8),
        dict(mode="mxfp8", bits=4),
        dict(mode="affine", global_scale=np.array(1.0, np.float32)),
        dict(mode="nvfp4", global_scale=np.array([1.0, 2.0], np.float32)),
        dict(mode="nvfp4", global_scale=np.array(1.0, np.float16)),
    ],
)
def test_quantize_rejects(kwargs, rng):
    w = rng.standard_normal((4, 128)).astype(np.float32)
    with pytest.raises(ValueError, match=r"^\[quantize\]"):
        mk.quantize(w, **kwargs)


def test_quantize_rejects_shapes(rng):
    with pytest.raises(ValueError, match=r"^\[quantize\]"):
        mk.quantize(rng.standard_normal(128).astype(np.float32))  # 1-D
    with pytest.raises(ValueError, match=r"^\[quantize\]"):
        mk.quantize(rng.standard_normal((2, 48)).astype(np.float32), mode="mxfp4")  # 48 % 32
    w_q, s, b = mk.quantize(rng.standard_normal((4, 128)).astype(np.float32))
    with pytest.raises(ValueError, match=r"^\[dequantize\]"):
        mk.dequantize(w_q, s[:3], b[:3])  # scales rows != w rows (SPEC decision 2)
    with pytest.raises(ValueError, match=r"^\[dequantize\]"):
        mk.dequantize(w_q, s[None], b[None])  # ndim mismatch
    with pytest.raises(ValueError, match=r"^\[dequantize\]"):
        mk.dequantize(np.asarray(w_q).astype(np.int32), s, b)
