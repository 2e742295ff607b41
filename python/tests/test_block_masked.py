"""block_masked_mm: the cases of MLX's test_block_masked_matmul (SPEC 9.3)
against a float64 numpy reference with expanded masks."""

import ml_dtypes
import numpy as np
import pytest

import mmkit as mk
from mmkit_ref import assert_close, block_masked_ref, to64

BF16 = ml_dtypes.bfloat16

SHAPES = [
    # (M, N, K, block_size, batch_A, batch_B)
    (16, 16, 16, 32, (), ()),
    (64, 64, 16, 32, (), ()),
    (128, 128, 128, 32, (), ()),
    (256, 256, 128, 64, (), ()),
    (1, 128, 128, 32, (), ()),
    (256, 1, 128, 64, (), ()),
    (64, 64, 64, 32, (1, 2), (2, 2)),
    (1, 128, 128, 32, (1, 2), (2, 2)),
    (128, 1, 128, 32, (1, 2), (2, 2)),
]


def ceil_div(a, b):
    return (a + b - 1) // b


def float_mask(rng, shape):
    m = rng.standard_normal(shape).astype(np.float32)
    return np.where(m < 0, 0, m).astype(np.float32)


@pytest.mark.parametrize("m,n,k,bs,batch_a,batch_b", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16], ids=["f32", "f16", "bf16"])
def test_block_masked_matmul(m, n, k, bs, batch_a, batch_b, dtype, rng):
    tm, tn, tk = ceil_div(m, bs), ceil_div(n, bs), ceil_div(k, bs)
    batch_out = np.broadcast_shapes(batch_a, batch_b)
    a = rng.standard_normal(batch_a + (m, k)).astype(dtype)
    b = rng.standard_normal(batch_b + (k, n)).astype(dtype)
    lhs_bool = rng.standard_normal(batch_a + (tm, tk)) < 0
    rhs_bool = rng.standard_normal(batch_b + (tk, tn)) < 0
    out_bool = rng.standard_normal(batch_out + (tm, tn)) < 0
    lhs_f = float_mask(rng, batch_a + (tm, tk))
    rhs_f = float_mask(rng, batch_b + (tk, tn))
    out_f = float_mask(rng, batch_out + (tm, tn))
    eps = {np.float32: 2.0**-24, np.float16: 2.0**-11, BF16: 2.0**-8}[dtype]
    runs = [
        ("bool out,lhs,rhs", dict(mask_out=out_bool, mask_lhs=lhs_bool, mask_rhs=rhs_bool)),
        ("bool out", dict(mask_out=out_bool)),
        ("bool lhs,rhs", dict(mask_lhs=lhs_bool, mask_rhs=rhs_bool)),
        ("float out,lhs,rhs", dict(mask_out=out_f, mask_lhs=lhs_f, mask_rhs=rhs_f)),
        ("float lhs,rhs", dict(mask_lhs=lhs_f, mask_rhs=rhs_f)),
        ("float lhs, bool rhs", dict(mask_lhs=lhs_f, mask_rhs=rhs_bool)),
        ("bool lhs only", dict(mask_lhs=lhs_bool)),
    ]
    for what, masks in runs:
        y = mk.block_masked_mm(a, b, bs, **masks)
        assert y.dtype == mk.array(a).dtype
        # float masks are cast to the output dtype (SPEC 6.2) before they scale the blocks
        masks_t = {key: (v if v.dtype == bool else v.astype(dtype)) for key, v in masks.items()}
        ref = block_masked_ref(a, b, bs, **masks_t)
        # error bound: a few roundings in the output dtype, plus float32 accumulation,
        # relative to the sum of |terms| (MLX's test uses atol 1e-5 for float32)
        mag = block_masked_ref(np.abs(to64(a)), np.abs(to64(b)), bs, **{key: np.abs(to64(v)) for key, v in masks_t.items()})
        bound = 1e-5 + 4 * eps * mag + 1e-6 * mag
        # (A fixed atol 1e-5 on top of this fails on elements whose terms cancel: an
        # output of -0.0024 from 128 products summing |terms| ~ 30 carries ~1e-5 of
        # float32 rounding whatever the summation order.)
        err = np.abs(to64(y) - ref)
        worst = np.unravel_index(np.argmax(err - bound), err.shape)
        assert (err <= bound).all(), (f"{what}: max err {err.max():.3g}, worst excess {(err - bound).max():.3g} "
                                      f"at {worst}: got {to64(y)[worst]!r}, reference {ref[worst]!r}")


def test_masked_blocks_are_zero_and_partial_blocks_use_their_entry(rng):
    a = rng.standard_normal((70, 100)).astype(np.float32)
    b = rng.standard_normal((100, 45)).astype(np.float32)
    out_mask = np.array([[True, False], [False, True], [True, True]])
    y = np.asarray(mk.block_masked_mm(a, b, 32, mask_out=out_mask))
    assert (y[:32, 32:] == 0).all() and (y[32:64, :32] == 0).all()
    assert_close(y, block_masked_ref(a, b, 32, mask_out=out_mask), atol=1e-4)


def test_float_masks_multiply_nan(rng):
    # SPEC decision 8: float masks multiply, so NaN * 0 stays NaN; bool masks zero the block
    a = rng.standard_normal((32, 64)).astype(np.float32)
    b = rng.standard_normal((64, 32)).astype(np.float32)
    a[0, 0] = np.nan
    lhs_f = np.array([[0.0, 1.0]], np.float32)
    y = np.asarray(mk.block_masked_mm(a, b, 32, mask_lhs=lhs_f, mask_rhs=np.ones((2, 1), np.float32)))
    assert np.isnan(y[0]).all()
    y = np.asarray(mk.block_masked_mm(a, b, 32, mask_lhs=np.array([[False, True]]), mask_rhs=np.ones((2, 1), bool)))
    assert not np.isnan(y).any()
    assert_close(y, a[:, 32:].astype(np.float64) @ b[32:].astype(np.float64), atol=1e-4)


def test_transposed_input_case():
    bs = 32
    a = np.ones((128, 256), np.float32)
    b = np.ones((128, 1), np.float32)
    d = np.ones((1, 256), np.float32)
    a_mask = np.array(np.random.default_rng(0).standard_normal((4, 8)) < 0)
    out_mask = np.ones((8, 1), np.float32)
    c = mk.block_masked_mm(a.T, b, bs, out_mask, a_mask.T.astype(np.float32), np.ones((4, 1), bool))
    assert_close(c, block_masked_ref(a.T, b, bs, out_mask, a_mask.T.astype(np.float32), np.ones((4, 1), bool)), 1e-5)
    e = mk.block_masked_mm(d, a.T, bs, np.ones((1, 4), np.float32), np.ones((1, 8), bool), a_mask.T)
    assert_close(e, block_masked_ref(d, a.T, bs, np.ones((1, 4), np.float32), np.ones((1, 8), bool), a_mask.T), 1e-5)


def test_vectors_and_no_masks(rng):
    a = rng.standard_normal((40,)).astype(np.float32)
    b = rng.standard_normal((40, 70)).astype(np.float32)
    y = mk.block_masked_mm(a, b, 32, mask_out=np.array([True, False, True]))  # (..., tn) for a 1-D a
    ref = a.astype(np.float64) @ b
    ref[32:64] = 0
    assert y.shape == (70,)
    assert_close(y, ref, atol=1e-4)
    # no masks at all: plain matmul, block_size not even checked
    assert_close(mk.block_masked_mm(b.T, a, 48), b.T.astype(np.float64) @ a, atol=1e-4)


def test_k0_and_empty(rng):
    y = mk.block_masked_mm(np.zeros((3, 0), np.float32), np.zeros((0, 5), np.float32), 32, np.ones((1, 1), bool))
    assert y.shape == (3, 5) and (np.asarray(y) == 0).all()


def test_block_masked_errors(rng):
    a = rng.standard_normal((64, 64)).astype(np.float32)
    mask = np.ones((2, 2), bool)
    with pytest.raises(ValueError, match=r"^\[block_masked_mm\]"):
        mk.block_masked_mm(a, a, 16, mask)
    with pytest.raises(ValueError, match=r"^\[block_masked_mm\]"):
        mk.block_masked_mm(a, a[:32], 32, mask)
    with pytest.raises(ValueError, match=r"^\[block_masked_mm\]"):
        mk.block_masked_mm(a.astype(np.int32), a.astype(np.int32), 32, mask)
    with pytest.raises(ValueError):
        mk.block_masked_mm(a, a, 32, np.ones((3, 2), bool))  # mask does not broadcast
    with pytest.raises(ValueError, match=r"^\[block_masked_mm\]"):
        mk.block_masked_mm(np.float32(1), a, 32, mask)
