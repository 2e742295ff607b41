"""Differential tests against MLX's CPU backend (when `import mlx.core` works).

Shapes and parameters are drawn at random per run from the session seed
(printed in the pytest header; MMKIT_TEST_SEED reproduces a run). Checks:
quantize / dequantize bit-identical, the matmuls within tolerance on the same
packed weights (MLX's packing fed to mmkit), the same invalid calls rejected.
"""

import ml_dtypes
import numpy as np
import pytest

import mmkit as mk
from mmkit_ref import unpack_codes
from test_api import EXPECTED, parse_signature

# The MLX release SPEC.md and the conformance vectors describe. Later releases changed
# MLX's own numerics (0.32.4 rounds mx scale exponents up and decodes E4M3 0x7F as NaN).
MLX_VERSION = "0.32.2"

try:
    import mlx.core as mx

    mx.set_default_device(mx.cpu)
    MLX_SKIP = None
    if mx.__version__ != MLX_VERSION:
        MLX_SKIP = (f"MLX {mx.__version__} is installed; the differential suite targets MLX {MLX_VERSION} "
                    f"(pip install 'mlx[cpu]=={MLX_VERSION}')")
        mx = None
except Exception as e:  # ImportError, or a broken install
    mx = None
    MLX_SKIP = (f"MLX is not importable ({type(e).__name__}: {e}); "
                f"pip install 'mlx[cpu]=={MLX_VERSION}' to run the differential suite")

pytestmark = pytest.mark.skipif(mx is None, reason=MLX_SKIP or "")

BF16 = ml_dtypes.bfloat16
N_CASES = 24
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": BF16}
FORMATS = [("affine", gs, b) for gs in (32, 64, 128) for b in (2, 3, 4, 5, 6, 8)] + [
    ("mxfp4", 32, 4),
    ("mxfp8", 32, 8),
    ("nvfp4", 16, 4),
]


# ---------------------------------------------------------------------------
# conversions


def to_mx(a):
    a = np.asarray(a)
    if a.dtype == BF16:
        return mx.array(a.astype(np.float32)).astype(mx.bfloat16)  # exact: bf16 values are float32 values
    return mx.array(a)


def from_mx(a):
    if a.dtype == mx.bfloat16:
        return np.array(a.astype(mx.float32)).astype(BF16)
    return np.array(a)


def bits_of(a):
    a = np.ascontiguousarray(np.asarray(a))
    return a.view(np.uint8)


def mlx_eval(fn):
    out = fn()
    mx.eval(out)
    return out


def draw_format(rng, modes=None):
    fmts = [f for f in FORMATS if modes is None or f[0] in modes]
    return fmts[rng.integers(len(fmts))]


def draw_batch(rng, max_dims=2):
    return tuple(int(v) for v in rng.integers(1, 4, rng.integers(0, max_dims + 1)))


def draw_weights(rng, shape, dtype):
    w = rng.standard_normal(shape) * float(np.exp(rng.uniform(-4, 4)))
    flat = w.reshape(-1)
    if flat.size >= 64 and rng.random() < 0.3:
        flat[:32] = 0.0  # an all-zero group
    if flat.size >= 128 and rng.random() < 0.3:
        flat[64:96] = flat[64]  # a constant group
    return w.astype(dtype)


MX_MODES = ("mxfp4", "mxfp8")


def check_mx_rounding_divergence(ours, theirs, bits, info):
    """The MLX wheels on PyPI (0.32.2 included) pick the mx scale exponent as
    ceil(log2(amax / maxval)); SPEC 1.4 (MLX's source at the reference commit,
    and the conformance vectors generated from it) rounds to nearest, which mmkit
    follows. So: MLX's exponent is ours or one more, and every group with the
    same exponent has identical codes."""
    s_ours = np.asarray(ours[1]).astype(np.int64)
    s_mlx = from_mx(theirs[1]).astype(np.int64)
    step = s_mlx - s_ours
    assert np.isin(step, (0, 1)).all(), f"{info}: scale exponents differ by {np.unique(step)}"
    gs = 32
    c_ours = unpack_codes(np.asarray(ours[0]), bits).reshape(s_ours.shape + (gs,))
    c_mlx = unpack_codes(from_mx(theirs[0]), bits).reshape(s_ours.shape + (gs,))
    same = step == 0
    np.testing.assert_array_equal(c_ours[same], c_mlx[same], err_msg=f"{info}: codes differ in groups with equal scales")


def case_info(**kw):
    return ", ".join(f"{k}={v}" for k, v in kw.items())


# ---------------------------------------------------------------------------
# quantize / dequantize: bit-identical


@pytest.mark.parametrize("case", range(N_CASES))
def test_quantize_dequantize_bit_identical(case, rng):
    mode, gs, bits = draw_format(rng)
    dtype = list(DTYPES)[rng.integers(3)]
    batch = draw_batch(rng)
    rows = int(rng.integers(1, 40))
    cols = gs * int(rng.integers(1, 9))
    if mode == "nvfp4" and (rows * cols * int(np.prod(batch))) % 32:
        rows += 1  # MLX's nvfp4 quantize needs a multiple of 32 elements (SPEC decision 10a)
    w = draw_weights(rng, batch + (rows, cols), DTYPES[dtype])
    use_global = mode == "nvfp4" and rng.random() < 0.4
    gscale = np.array(np.abs(w.astype(np.float32)).max() or 1.0, np.float32) if use_global else None
    info = case_info(mode=mode, gs=gs, bits=bits, dtype=dtype, shape=w.shape, global_scale=use_global)

    ours = mk.quantize(w, gs, bits, mode, gscale)
    kw = {"global_scale": to_mx(gscale)} if use_global else {}
    theirs = mlx_eval(lambda: mx.quantize(to_mx(w), gs, bits, mode, **kw))
    assert len(ours) == len(theirs), info
    for name, o, t in zip(("w_q", "scales", "biases"), ours, theirs):
        t_np = from_mx(t)
        assert o.shape == t_np.shape, f"{info}: {name} shape"
        assert np.asarray(o).dtype == t_np.dtype, f"{info}: {name} dtype"
    if mode in MX_MODES:
        check_mx_rounding_divergence(ours, theirs, bits, info)
    else:
        for name, o, t in zip(("w_q", "scales", "biases"), ours, theirs):
            np.testing.assert_array_equal(bits_of(o), bits_of(from_mx(t)), err_msg=f"{info}: {name} bits differ")

    # dequantize the same packed data; for nvfp4 with a global scale MLX returns
    # float32 whatever dtype is asked for (SPEC decision 11), so ask for float32
    out_dt = "float32" if use_global else list(DTYPES)[rng.integers(3)]
    q_mx = [to_mx(np.asarray(a)) for a in ours]
    ours_hat = mk.dequantize(*ours[:2], ours[2] if mode == "affine" else None, gs, bits, mode, gscale,
                             getattr(mk, out_dt))
    theirs_hat = mlx_eval(lambda: mx.dequantize(*q_mx[:2], q_mx[2] if mode == "affine" else None, gs, bits, mode,
                                                to_mx(gscale) if use_global else None, getattr(mx, out_dt)))
    t_np = from_mx(theirs_hat)
    assert np.asarray(ours_hat).dtype == t_np.dtype, info
    np.testing.assert_array_equal(bits_of(ours_hat), bits_of(t_np), err_msg=f"{info}: dequantize to {out_dt}")


@pytest.mark.parametrize("case", range(4))
def test_fp8_conversions_identical(case, rng):
    x = (rng.standard_normal(4096) * np.exp(rng.uniform(-12, 8, 4096))).astype(np.float32)
    x[:4] = [np.nan, np.inf, -np.inf, -0.0]
    np.testing.assert_array_equal(np.asarray(mk.to_fp8(x)), from_mx(mlx_eval(lambda: mx.to_fp8(to_mx(x)))))
    codes = np.arange(256, dtype=np.uint8)
    for dt in ("float32", "float16", "bfloat16"):
        ours = mk.from_fp8(codes, getattr(mk, dt))
        theirs = from_mx(mlx_eval(lambda: mx.from_fp8(to_mx(codes), getattr(mx, dt))))
        np.testing.assert_array_equal(bits_of(ours), bits_of(theirs), err_msg=dt)


# ---------------------------------------------------------------------------
# matmuls: within tolerance, on MLX's packed weights


def mlx_quantized(w, gs, bits, mode):
    q = mlx_eval(lambda: mx.quantize(to_mx(w), gs, bits, mode))
    mx_args = list(q) + ([None] if mode != "affine" else [])
    np_args = [from_mx(a) for a in q] + ([None] if mode != "affine" else [])
    return mx_args, np_args


def assert_matches(ours, theirs, tol, info):
    t = from_mx(theirs).astype(np.float64)
    o = np.asarray(ours).astype(np.float64)
    assert o.shape == t.shape, f"{info}: shape {o.shape} vs MLX {t.shape}"
    err = np.abs(o - t)
    assert err.size == 0 or err.max() <= tol, f"{info}: max |mmkit - MLX| = {err.max():.3g} > {tol}"


@pytest.mark.parametrize("case", range(N_CASES))
def test_quantized_matmul_matches(case, rng):
    mode, gs, bits = draw_format(rng)
    transpose = bool(rng.random() < 0.6)
    m = int(rng.choice([1, 2, 3, 7, 16, 33, 64]))
    k_groups, n = int(rng.integers(1, 9)), int(rng.integers(1, 70))
    if transpose:
        k = gs * k_groups
        n += n % 2 if mode == "nvfp4" else 0  # MLX's nvfp4 quantize needs a multiple of 32 elements
        w_shape = (n, k)
    else:
        k, n = int(rng.integers(1, 300)), gs * int(rng.integers(1, 5))
        k += k % 2 if mode == "nvfp4" else 0
        w_shape = (k, n)
    batch = draw_batch(rng, 1)
    if batch and rng.random() < 0.5:
        w_shape = batch + w_shape
        x_shape = (int(rng.integers(1, 3)),) + batch + (m, k)
    else:
        x_shape = batch + (m, k)
    x = (rng.standard_normal(x_shape) / np.sqrt(k)).astype(np.float32)
    w = (rng.standard_normal(w_shape) / np.sqrt(k)).astype(np.float32)
    info = case_info(mode=mode, gs=gs, bits=bits, transpose=transpose, x=x.shape, w=w.shape)
    mx_q, np_q = mlx_quantized(w, gs, bits, mode)
    theirs = mlx_eval(lambda: mx.quantized_matmul(to_mx(x), *mx_q, transpose, gs, bits, mode))
    ours = mk.quantized_matmul(x, *np_q, transpose, gs, bits, mode)
    assert_matches(ours, theirs, 1e-3, info)
    if mode not in MX_MODES:  # (see check_mx_rounding_divergence)
        # the unquantized-w form quantizes exactly as MLX does
        ours_fly = mk.quantized_matmul(x, w, transpose=transpose, group_size=gs, bits=bits, mode=mode)
        np.testing.assert_array_equal(np.asarray(ours_fly), np.asarray(ours), err_msg=info)


@pytest.mark.parametrize("case", range(N_CASES))
def test_gather_qmm_matches(case, rng):
    mode, gs, bits = draw_format(rng)
    transpose = bool(rng.random() < 0.6)
    e = int(rng.integers(1, 6))
    m = int(rng.choice([1, 1, 2, 5, 16]))
    if transpose:
        k, n = gs * int(rng.integers(1, 5)), int(rng.integers(1, 80))
        n += n % 2 if mode == "nvfp4" else 0  # MLX's nvfp4 quantize needs a multiple of 32 elements
        w_shape = (e, n, k)
    else:
        k, n = int(rng.integers(1, 200)), gs * int(rng.integers(1, 4))
        k += k % 2 if mode == "nvfp4" else 0
        w_shape = (e, k, n)
    bx = int(rng.integers(1, 5))
    x = (rng.standard_normal((bx, m, k)) / np.sqrt(k)).astype(np.float32)
    w = (rng.standard_normal(w_shape) / np.sqrt(k)).astype(np.float32)
    n_idx = int(rng.integers(1, 9))
    kind = rng.integers(3)
    lhs = rng.integers(0, bx, n_idx).astype(np.uint32) if kind != 1 else None
    rhs = rng.integers(0, e, n_idx).astype(np.uint32) if kind != 2 or lhs is None else None
    if lhs is None and rhs is not None and bx != n_idx:
        x = x[:1]  # the default lhs (arange over x's batch) must broadcast with rhs
    if rhs is None and lhs is not None and e != n_idx:
        w = w[:1]
    sorted_flag = False
    if (lhs is None) != (rhs is None) and rng.random() < 0.5:
        sorted_flag = True
        if lhs is not None:
            lhs = np.sort(lhs)
        else:
            rhs = np.sort(rhs)
    info = case_info(mode=mode, gs=gs, bits=bits, transpose=transpose, x=x.shape, w=w.shape, lhs=lhs, rhs=rhs,
                     sorted=sorted_flag)
    mx_q, np_q = mlx_quantized(w, gs, bits, mode)
    to_idx = lambda v: None if v is None else to_mx(v)  # noqa: E731
    theirs = mlx_eval(lambda: mx.gather_qmm(to_mx(x), *mx_q, to_idx(lhs), to_idx(rhs), transpose, gs, bits, mode,
                                            sorted_indices=sorted_flag))
    ours = mk.gather_qmm(x, *np_q, lhs, rhs, transpose, gs, bits, mode, sorted_indices=sorted_flag)
    assert_matches(ours, theirs, 1e-3, info)


@pytest.mark.parametrize("case", range(N_CASES))
def test_gather_mm_matches(case, rng):
    ba, bb = draw_batch(rng), draw_batch(rng)
    m, k, n = (int(v) for v in rng.integers(1, 40, 3))
    a = rng.standard_normal(ba + (m, k)).astype(np.float32)
    b = rng.standard_normal(bb + (k, n)).astype(np.float32)
    na, nb = int(np.prod(ba)), int(np.prod(bb))
    idx_shape = tuple(int(v) for v in rng.integers(1, 4, rng.integers(1, 3)))
    lhs = rng.integers(0, na, idx_shape).astype(np.uint32)
    rhs = rng.integers(0, nb, idx_shape[-1:]).astype(np.uint32)  # broadcasts against lhs
    info = case_info(a=a.shape, b=b.shape, lhs=lhs.tolist(), rhs=rhs.tolist())
    theirs = mlx_eval(lambda: mx.gather_mm(to_mx(a), to_mx(b), to_mx(lhs), to_mx(rhs)))
    assert_matches(mk.gather_mm(a, b, lhs, rhs), theirs, 1e-4 * np.sqrt(k), info)


@pytest.mark.parametrize("case", range(N_CASES))
def test_block_masked_mm_matches(case, rng):
    bs = int(rng.choice([32, 64]))
    m, k, n = (int(v) for v in rng.integers(1, 150, 3))
    batch = draw_batch(rng, 1)
    a = rng.standard_normal(batch + (m, k)).astype(np.float32)
    b = rng.standard_normal(batch + (k, n)).astype(np.float32)  # same batch: avoids MLX bug 10b
    tm, tn, tk = (-(-v // bs) for v in (m, n, k))

    def mask(shape):
        kind = rng.integers(3)
        if kind == 0:
            return None
        if kind == 1:
            return rng.random(batch + shape) < 0.6
        return np.maximum(rng.standard_normal(batch + shape), 0).astype(np.float32)

    mo, ml, mr = mask((tm, tn)), mask((tm, tk)), mask((tk, tn))
    info = case_info(bs=bs, a=a.shape, b=b.shape, masks=[None if v is None else v.dtype.name for v in (mo, ml, mr)])
    to_m = lambda v: None if v is None else to_mx(v)  # noqa: E731
    theirs = mlx_eval(lambda: mx.block_masked_mm(to_mx(a), to_mx(b), bs, to_m(mo), to_m(ml), to_m(mr)))
    assert_matches(mk.block_masked_mm(a, b, bs, mo, ml, mr), theirs, 1e-4 * np.sqrt(k), info)


# ---------------------------------------------------------------------------
# the same invalid calls are rejected


def rejection_cases(rng):
    """(name, call(lib, conv)) pairs that MLX and mmkit must both reject."""
    # r < 8 keeps every "wrong shape" case wrong: with r == 8 and c == 64 the packed w.T
    # (c / 8, r) has the same shape as w and "qmm w.T" would be a valid call.
    r, c = int(rng.integers(1, 8)), 64 * int(rng.integers(1, 4))
    w = rng.standard_normal((r, c)).astype(np.float32)
    x = rng.standard_normal((int(rng.integers(1, 5)), c)).astype(np.float32)
    wq, s, b = mk.quantize(w)
    wq, s, b = (np.asarray(v) for v in (wq, s, b))
    wq4, s4 = (np.asarray(v) for v in mk.quantize(w, mode="mxfp4"))
    idx = np.array([0], np.uint32)
    return [
        ("quantize bad mode", lambda L, C: L.quantize(C(w), mode="xyz")),
        ("quantize int w", lambda L, C: L.quantize(C(w.astype(np.int32)))),
        ("quantize int w mxfp4", lambda L, C: L.quantize(C(w.astype(np.int32)), mode="mxfp4")),
        ("quantize 1-D w", lambda L, C: L.quantize(C(w[0]))),
        ("quantize cols % gs", lambda L, C: L.quantize(C(w[:, :48]))),
        ("quantize gs 48", lambda L, C: L.quantize(C(w), 48)),
        ("quantize bits 7", lambda L, C: L.quantize(C(w), 64, 7)),
        ("quantize mxfp4 gs 16", lambda L, C: L.quantize(C(w), 16, 4, "mxfp4")),
        ("quantize mxfp4 bits 3", lambda L, C: L.quantize(C(w), 32, 3, "mxfp4")),
        ("quantize nvfp4 gs 64", lambda L, C: L.quantize(C(w), 64, 4, "nvfp4")),
        ("quantize mxfp8 bits 7", lambda L, C: L.quantize(C(w), 32, 7, "mxfp8")),
        ("dequantize bad mode", lambda L, C: L.dequantize(C(wq), C(s), C(b), mode="xyz")),
        ("dequantize no biases", lambda L, C: L.dequantize(C(wq), C(s))),
        ("dequantize int scales", lambda L, C: L.dequantize(C(wq), C(s.astype(np.int32)), C(b.astype(np.int32)))),
        ("dequantize dtype int32", lambda L, C: L.dequantize(C(wq), C(s), C(b), dtype=L.int32)),
        ("dequantize w not uint32", lambda L, C: L.dequantize(C(wq.astype(np.int32)), C(s), C(b))),
        ("dequantize scales cols", lambda L, C: L.dequantize(C(wq), C(s[:, :1]), C(b[:, :1]), 32)),
        ("dequantize mxfp4 bits 3", lambda L, C: L.dequantize(C(wq4), C(s4), None, 32, 3, "mxfp4")),
        ("dequantize mxfp4 gs 64", lambda L, C: L.dequantize(C(wq4), C(s4), None, 64, 4, "mxfp4")),
        ("dequantize mxfp4 float scales", lambda L, C: L.dequantize(C(wq4), C(s4.astype(np.float32)), None, mode="mxfp4")),
        ("dequantize mxfp4 with biases", lambda L, C: L.dequantize(C(wq4), C(s4), C(s4), mode="mxfp4")),
        ("qmm bad mode", lambda L, C: L.quantized_matmul(C(x), C(wq), C(s), C(b), mode="xyz")),
        ("qmm no biases", lambda L, C: L.quantized_matmul(C(x), C(wq), C(s), None)),
        ("qmm int operands", lambda L, C: L.quantized_matmul(C(x.astype(np.int32)), C(wq), C(s.astype(np.int32)), C(b.astype(np.int32)))),
        ("qmm w.T", lambda L, C: L.quantized_matmul(C(x), C(np.ascontiguousarray(wq.T)), C(s), C(b))),
        ("qmm w.T scales.T", lambda L, C: L.quantized_matmul(C(x), C(np.ascontiguousarray(wq.T)), C(np.ascontiguousarray(s.T)), C(np.ascontiguousarray(b.T)))),
        ("qmm transpose=False", lambda L, C: L.quantized_matmul(C(x), C(wq), C(s), C(b), transpose=False)),
        ("qmm K mismatch", lambda L, C: L.quantized_matmul(C(x[:, :32]), C(wq), C(s), C(b))),
        ("qmm scales/biases shapes differ", lambda L, C: L.quantized_matmul(C(x), C(wq), C(s), C(np.concatenate([b, b], -1)))),
        ("qmm w not uint32", lambda L, C: L.quantized_matmul(C(x), C(wq.astype(np.int32)), C(s), C(b))),
        ("gather_qmm bad mode", lambda L, C: L.gather_qmm(C(x), C(wq), C(s), C(b), rhs_indices=C(np.array(0)), mode="xyz")),
        ("gather_qmm no biases", lambda L, C: L.gather_qmm(C(x), C(wq), C(s), None, rhs_indices=C(np.array(0)))),
        ("gather_qmm float indices", lambda L, C: L.gather_qmm(C(x[None]), C(wq[None]), C(s[None]), C(b[None]), rhs_indices=C(np.zeros(1, np.float32)))),
        ("gather_qmm 1-D x with indices", lambda L, C: L.gather_qmm(C(x[0]), C(wq[None]), C(s[None]), C(b[None]), rhs_indices=C(idx))),
        ("gather_qmm indices do not broadcast", lambda L, C: L.gather_qmm(C(x[None].repeat(3, 0)), C(wq[None].repeat(2, 0)), C(s[None].repeat(2, 0)), C(b[None].repeat(2, 0)), C(np.array([0, 1, 2], np.uint32)), C(np.array([0, 1], np.uint32)))),
        ("gather_mm 0-D", lambda L, C: L.gather_mm(C(np.float32(1)), C(w), C(idx), C(idx))),
        ("gather_mm K mismatch", lambda L, C: L.gather_mm(C(x[None]), C(w[None]), C(idx), C(idx))),
        ("gather_mm int inputs", lambda L, C: L.gather_mm(C(x.astype(np.int32)[None]), C(w.T.astype(np.int32)[None]), C(idx), C(idx))),
        ("gather_mm float indices", lambda L, C: L.gather_mm(C(x[None]), C(w.T[None]), C(np.zeros(1, np.float32)), C(idx))),
        ("block_masked_mm bs 16", lambda L, C: L.block_masked_mm(C(x), C(w.T), 16, C(np.ones((1, 1), bool)))),
        ("block_masked_mm K mismatch", lambda L, C: L.block_masked_mm(C(x), C(w), 32, C(np.ones((1, 1), bool)))),
        ("block_masked_mm 0-D", lambda L, C: L.block_masked_mm(C(np.float32(1)), C(w.T), 32, C(np.ones((1, 1), bool)))),
        ("block_masked_mm int inputs", lambda L, C: L.block_masked_mm(C(x.astype(np.int32)), C(w.T.astype(np.int32)), 32, C(np.ones((1, 1), bool)))),
        ("block_masked_mm mask shape", lambda L, C: L.block_masked_mm(C(x), C(w.T), 32, C(np.ones((3, 5), bool)))),
        ("to_fp8 int input", lambda L, C: L.to_fp8(C(np.ones(3, np.int32)))),
        ("from_fp8 int dtype", lambda L, C: L.from_fp8(C(np.ones(3, np.uint8)), L.int32)),
        ("from_fp8 non-uint8 input", lambda L, C: L.from_fp8(C(np.ones(3, np.int32)))),
    ]


def stricter_cases(rng):
    """Calls MLX accepts but mmkit rejects on purpose (SPEC decisions 2 and 3)."""
    w = rng.standard_normal((3, 16, 64)).astype(np.float32)
    wq, s, b = (np.asarray(v) for v in mk.quantize(w))
    x = rng.standard_normal((2, 64)).astype(np.float32)
    return [
        ("qmm 2-D x with batched w", lambda L, C: L.quantized_matmul(C(x), C(wq), C(s), C(b))),
        ("qmm scales rows != w rows", lambda L, C: L.quantized_matmul(C(x), C(wq[0]), C(s[0, :8]), C(b[0, :8]))),
        ("qmm mxfp4 with group size 16", lambda L, C: L.quantized_matmul(C(x), *[C(np.asarray(v)) for v in mk.quantize(w[0], mode="nvfp4")], group_size=16, mode="mxfp4")),
        ("gather_qmm index out of range", lambda L, C: L.gather_qmm(C(x[None]), C(wq), C(s), C(b), rhs_indices=C(np.array([3], np.uint32)))),
        ("gather_mm index out of range", lambda L, C: L.gather_mm(C(x[None]), C(np.swapaxes(w, -1, -2)), C(np.array([1], np.uint32)), C(np.array([0], np.uint32)))),
    ]


def outcome(fn):
    try:
        mlx_eval(fn)
        return None
    except Exception as e:  # MLX raises ValueError, some checks at evaluation time
        return e


def test_same_calls_rejected(rng):
    problems = []
    for name, call in rejection_cases(rng):
        theirs = outcome(lambda: call(mx, to_mx))
        try:
            call(mk, lambda v: v)
            ours = None
        except ValueError as e:
            ours = e
        except Exception as e:  # anything but ValueError is a failure too
            problems.append(f"{name}: mmkit raised {type(e).__name__}: {e}")
            continue
        if theirs is None:
            problems.append(f"{name}: MLX accepted the call (the case is not a shared rejection)")
        if ours is None:
            problems.append(f"{name}: mmkit accepted a call MLX rejects ({type(theirs).__name__}: {theirs})")
        elif not str(ours).startswith("["):
            problems.append(f"{name}: mmkit message does not start with [op]: {ours}")
    assert not problems, "\n".join(problems)


def test_stricter_than_mlx(rng):
    for name, call in stricter_cases(rng):
        assert outcome(lambda: call(mx, to_mx)) is None, f"{name}: MLX now rejects it; move the case to the shared list"
        with pytest.raises(ValueError, match=r"^\["):
            call(mk, lambda v: v)


# ---------------------------------------------------------------------------
# signatures and array interchange


# Where the Python signatures differ from MLX on purpose; each accepts every call MLX accepts:
#  - quantized_matmul / gather_qmm: scales defaults to None (an unquantized w needs none);
#  - quantize: global_scale is positional-or-keyword as SPEC 1.1 writes it (MLX: keyword-only);
#  - gather_mm: lhs_indices / rhs_indices default to None as SPEC 5.1 writes it (MLX: no default).
KNOWN_DIFFERENCES = {
    ("quantized_matmul", "scales"),
    ("gather_qmm", "scales"),
    ("quantize", "global_scale"),
    ("gather_mm", "lhs_indices"),
    ("gather_mm", "rhs_indices"),
}


def mlx_signature(name):
    sig = getattr(mx, name).__nb_signature__[0][0]
    return parse_signature(sig)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_signatures_match_mlx(name):
    ours = parse_signature(getattr(mk, name).__nb_signature__[0][0])
    theirs = mlx_signature(name)

    def table(sig):
        posonly, normal, kwonly = sig
        rows = {p: ("positional-only", None) for p in posonly}
        rows.update({p: ("positional", repr(d)) for p, d in normal})
        rows.update({p: ("keyword-only", repr(d)) for p, d in kwonly})
        return rows

    o, t = table(ours), table(theirs)
    diffs = {p for p in set(o) | set(t) if o.get(p) != t.get(p)}
    unexpected = {p for p in diffs if (name, p) not in KNOWN_DIFFERENCES}
    assert not unexpected, {p: (o.get(p), t.get(p)) for p in unexpected}
    order_o = [p for p in o if p not in diffs]
    order_t = [p for p in t if p not in diffs]
    assert order_o == order_t, "argument order differs"


def test_mlx_arrays_are_accepted_and_returned(rng):
    w = rng.standard_normal((8, 64)).astype(np.float32)
    w_mx = to_mx(w)
    a = mk.array(w_mx)
    np.testing.assert_array_equal(np.asarray(a), w)
    q_mx = mlx_eval(lambda: mx.quantize(w_mx))
    y = mk.quantized_matmul(to_mx(w), *q_mx)  # MLX arrays straight into mmkit ops
    back = mx.array(np.asarray(y))
    assert_matches(y, mlx_eval(lambda: mx.quantized_matmul(w_mx, *q_mx)), 1e-4, "mlx in/out")
    assert back.shape == (8, 8)

