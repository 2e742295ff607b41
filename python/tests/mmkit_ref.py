"""float64 numpy references for the tests (independent of mmkit's own code).

The packed weights are read as SPEC section 0.2 describes them: each row is a
little-endian bit stream, element j at bits [j*b, (j+1)*b).
"""

import os

import numpy as np

DEFAULTS = {"affine": (64, 4), "mxfp4": (32, 4), "mxfp8": (32, 8), "nvfp4": (16, 4)}
AFFINE = [(gs, b) for gs in (32, 64, 128) for b in (2, 3, 4, 5, 6, 8)]
FP_MODES = [("mxfp4", 32, 4), ("mxfp8", 32, 8), ("nvfp4", 16, 4)]
E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float64)


FULL = os.environ.get("MMKIT_TEST_FULL", "") not in ("", "0")


def subset(rng, cases, k):
    """All of `cases` with MMKIT_TEST_FULL=1, else k of them drawn with the test's
    seeded generator (the seed is printed in the pytest header)."""
    cases = list(cases)
    if FULL or k >= len(cases):
        return cases
    return [cases[i] for i in sorted(rng.choice(len(cases), size=k, replace=False))]


def to64(a):
    """Any array-like (mmkit arrays included, bfloat16 via ml_dtypes) as float64 numpy."""
    return np.asarray(a).astype(np.float64)


def resolve(mode, group_size, bits):
    gs, b = DEFAULTS[mode]
    return (group_size or gs), (bits or b)


def unpack_codes(w_q, bits):
    """(..., R, W) uint32 -> (..., R, W*32/bits) codes, reading the bit stream:
    element j sits at stream bits [j*bits, (j+1)*bits), i.e. in bytes j*bits//8
    and the next one (bits <= 8), starting at bit j*bits % 8."""
    w = np.ascontiguousarray(np.asarray(w_q), dtype="<u4")
    lead, words = w.shape[:-1], w.shape[-1]
    n = words * 32 // bits
    by = w.view(np.uint8).reshape(lead + (words * 4,)).astype(np.uint16)
    by = np.concatenate([by, np.zeros(lead + (1,), np.uint16)], axis=-1)  # room for the last read
    first = np.arange(n) * bits
    lo, sh = first // 8, (first % 8).astype(np.uint16)
    pair = by[..., lo] | (by[..., lo + 1] << np.uint16(8))
    return ((pair >> sh) & np.uint16(2**bits - 1)).astype(np.int64)


def pack_codes(codes, bits):
    """Inverse of unpack_codes: (..., C) codes -> (..., C*bits/32) uint32."""
    codes = np.asarray(codes, dtype=np.uint64)
    lead, c = codes.shape[:-1], codes.shape[-1]
    bit_planes = ((codes[..., None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint8)
    by = np.packbits(bit_planes.reshape(lead + (c * bits,)), axis=-1, bitorder="little")
    return np.ascontiguousarray(by).view("<u4").astype(np.uint32)


def e4m3_decode(byte):
    """MLX's E4M3: no NaN, 0x7F = 480, subnormals m * 2^-9."""
    b = np.asarray(byte).astype(np.int64)
    sign = np.where(b & 0x80, -1.0, 1.0)
    e = (b >> 3) & 0xF
    m = (b & 7).astype(np.float64)
    mag = np.where(e == 0, m * 2.0**-9, (1 + m / 8) * 2.0 ** (e - 7))
    return sign * mag


def e4m3_encode(x):
    """SPEC 0.4 (MLX's ToFP8) on float32 inputs: saturate at 448, NaN -> 448, RNE."""
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf lanes are replaced below
        return _e4m3_encode(np.asarray(x, dtype=np.float32))


def _e4m3_encode(f):
    u = f.view(np.uint32).astype(np.int64)
    sign = (u >> 24) & 0x80
    mag_bits = u & 0x7FFFFFFF
    a = np.abs(f.astype(np.float64))
    out = np.zeros(f.shape, dtype=np.int64)
    big = (mag_bits >= np.float32(448).view(np.uint32)) | np.isnan(f)
    small = (~big) & (a < 2.0**-6)
    out = np.where(small, np.rint(a / 2.0**-9).astype(np.int64), out)
    normal = ~(big | small)
    e = (mag_bits >> 23) - 127
    mant = mag_bits & 0x7FFFFF
    m3 = (mant + 0x7FFFF + ((mant >> 20) & 1)) >> 20  # round to 3 bits, ties to even
    out = np.where(normal, ((e + 7) << 3) + m3, out)
    out = np.where(big, 0x7E, out)
    return (out | sign).astype(np.uint8)


def dequantize_ref(w_q, scales, biases=None, group_size=None, bits=None, mode="affine", global_scale=None):
    """float64 dequantization from the packed bit stream."""
    gs, b = resolve(mode, group_size, bits)
    codes = unpack_codes(w_q, b)
    if mode == "affine":
        s = np.repeat(to64(scales), gs, axis=-1)
        z = np.repeat(to64(biases), gs, axis=-1)
        return codes.astype(np.float64) * s + z
    vals = E2M1[codes.astype(np.int64)] if b == 4 else e4m3_decode(codes)
    sb = np.asarray(scales).astype(np.int64)
    if mode in ("mxfp4", "mxfp8"):
        scale = np.ldexp(1.0, sb - 127)
    else:
        scale = e4m3_decode(sb)
        if global_scale is not None:
            scale = scale * (float(np.asarray(global_scale).reshape(-1)[0]) / 2688.0)
    return vals * np.repeat(scale, gs, axis=-1)


def quantize_affine_ref(w, group_size, bits):
    """SPEC 1.3 in float32 (MLX's CPU quantizer): returns (w_q, scales, biases)."""
    w = np.asarray(w)
    dt = w.dtype
    lead, c = w.shape[:-1], w.shape[-1]
    wf = w.astype(np.float32).reshape(-1, group_size)
    n = np.float32(2**bits - 1)
    wmin, wmax = wf.min(axis=1), wf.max(axis=1)
    flip = np.abs(wmin) > np.abs(wmax)
    s = np.maximum((wmax - wmin) / n, np.float32(1e-7))
    s = np.where(flip, s, -s).astype(np.float32)
    edge = np.where(flip, wmin, wmax).astype(np.float32)
    q0 = np.rint(edge / s)
    nz = q0 != 0
    s = np.where(nz, edge / np.where(nz, q0, np.float32(1)), s).astype(np.float32)
    bias = np.where(nz, edge, np.float32(0)).astype(np.float32)
    codes = np.clip(np.rint((wf - bias[:, None]) / s[:, None]), 0, n).astype(np.uint64)
    w_q = pack_codes(codes.reshape(lead + (c,)), bits)
    shape = lead + (c // group_size,)
    return w_q, s.astype(dt).reshape(shape), bias.astype(dt).reshape(shape)


def qmm_ref(x, w_q, scales, biases, transpose=True, group_size=None, bits=None, mode="affine"):
    """float64 x @ dequantize(w).T (or x @ dequantize(w))."""
    w_hat = dequantize_ref(w_q, scales, biases, group_size, bits, mode)
    w_mat = np.swapaxes(w_hat, -1, -2) if transpose else w_hat
    return to64(x) @ w_mat


def gather_ref(a, b, lhs=None, rhs=None):
    """float64 gather matmul: a_flat[lhs] @ b_flat[rhs] over the broadcast index shape."""
    a, b = to64(a), to64(b)
    af = a.reshape((-1,) + a.shape[-2:])
    bf = b.reshape((-1,) + b.shape[-2:])
    lhs = np.arange(af.shape[0]).reshape(a.shape[:-2]) if lhs is None else np.asarray(lhs)
    rhs = np.arange(bf.shape[0]).reshape(b.shape[:-2]) if rhs is None else np.asarray(rhs)
    lhs, rhs = np.broadcast_arrays(lhs, rhs)
    out = np.empty(lhs.shape + (af.shape[-2], bf.shape[-1]))
    for i in np.ndindex(lhs.shape):  # one product at a time: no (I, K, N) gathered copy of b
        out[i] = af[lhs[i]] @ bf[rhs[i]]
    return out


def expand_mask(mask, bs, rows, cols):
    """Repeats each mask entry over its bs x bs block, cropped to (rows, cols)."""
    m = np.repeat(np.repeat(to64(mask), bs, axis=-2), bs, axis=-1)
    return m[..., :rows, :cols]


def block_masked_ref(a, b, bs, mask_out=None, mask_lhs=None, mask_rhs=None):
    a, b = to64(a), to64(b)
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    if mask_lhs is not None:
        a = a * expand_mask(mask_lhs, bs, m, k)
    if mask_rhs is not None:
        b = b * expand_mask(mask_rhs, bs, k, n)
    out = a @ b
    if mask_out is not None:
        out = out * expand_mask(mask_out, bs, m, n)
    return out


def assert_close(y, ref, atol, rtol=0.0, what=""):
    """Per element |y - ref| <= atol + rtol*|ref|, with the worst element named."""
    y64, ref = to64(y), np.asarray(ref, dtype=np.float64)
    assert y64.shape == ref.shape, f"{what}: shape {y64.shape} != reference {ref.shape}"
    if ref.size == 0:
        return
    err = np.abs(y64 - ref)
    bound = atol + rtol * np.abs(ref)
    bad = ~(err <= bound)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err - bound, -np.inf)), ref.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {ref.size} elements off; worst at {tuple(int(v) for v in i)}: "
            f"got {y64[i]!r}, reference {ref[i]!r} (atol {atol}, rtol {rtol}, max err {err.max():.3g})"
        )


def quantize_fp_ref(w, mode, global_scale=None):
    """SPEC 1.4 (MLX's CPU op graph for the fp modes), each step in w.dtype as
    MLX evaluates it: returns (w_q, scales)."""
    w = np.asarray(w)
    dt = w.dtype
    gs, bits = DEFAULTS[mode]
    maxval = 6.0 if bits == 4 else 448.0
    lead, c = w.shape[:-1], w.shape[-1]
    g = w.reshape(-1, gs)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        amax = np.abs(g).max(axis=1)
        sc = (amax / np.array(maxval, dt)).astype(dt)
        if mode in ("mxfp4", "mxfp8"):
            e = np.where(sc == 0, np.array(0, dt), np.rint(np.log2(sc))).astype(np.float64)
            scales = (e + 127).astype(np.int64).astype(np.uint8)
            vals = (g / np.ldexp(1.0, e.astype(np.int64)).astype(dt)[:, None]).astype(dt)
        else:
            enc = np.float32(2688.0 / float(np.asarray(global_scale).reshape(-1)[0])) if global_scale is not None else np.float32(1)
            scales = e4m3_encode(sc.astype(np.float32) * enc)
            vals = (g / e4m3_decode(scales).astype(dt)[:, None]).astype(dt).astype(np.float32) * enc
            dt = np.dtype(np.float32)
        if bits == 4:
            table = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]).astype(dt)
            diff = np.abs((vals[..., None] - table).astype(dt))
            codes = np.argmin(diff, axis=-1)  # the first minimum: ties to the smaller magnitude, NaN -> 0
        else:
            codes = e4m3_encode(vals.astype(np.float32))
    w_q = pack_codes(codes.reshape(lead + (c,)), bits)
    return w_q, scales.reshape(lead + (c // gs,))
