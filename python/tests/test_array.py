"""mmkit.array: construction, dtypes, queries, indexing views, numpy / DLPack
interchange without copies, lifetimes."""

import gc
import threading

import ml_dtypes
import numpy as np
import pytest

import mmkit as mk

ALL_DTYPES = {
    "float32": (mk.float32, np.float32, 4),
    "float16": (mk.float16, np.float16, 2),
    "bfloat16": (mk.bfloat16, ml_dtypes.bfloat16, 2),
    "uint32": (mk.uint32, np.uint32, 4),
    "uint8": (mk.uint8, np.uint8, 1),
    "int8": (mk.int8, np.int8, 1),
    "int16": (mk.int16, np.int16, 2),
    "int32": (mk.int32, np.int32, 4),
    "int64": (mk.int64, np.int64, 8),
    "bool_": (mk.bool_, np.bool_, 1),
}


@pytest.mark.parametrize("name", list(ALL_DTYPES))
def test_dtype_objects(name):
    dt, npdt, size = ALL_DTYPES[name]
    assert str(dt) == f"mmkit.{name}"
    assert repr(dt) == f"mmkit.{name}"
    assert dt.size == size
    assert dt == getattr(mk, name) and hash(dt) == hash(getattr(mk, name))
    assert all((dt == other) == (other_name == name) for other_name, (other, _, _) in ALL_DTYPES.items())


@pytest.mark.parametrize("name", list(ALL_DTYPES))
def test_numpy_roundtrip_every_dtype(name, rng):
    dt, npdt, size = ALL_DTYPES[name]
    src = (rng.standard_normal((3, 5)) * 50).astype(npdt)
    a = mk.array(src)
    assert a.dtype == dt and a.shape == (3, 5) and a.ndim == 2 and a.size == 15
    assert a.itemsize == size and a.nbytes == 15 * size
    assert a._data_ptr() == src.ctypes.data  # wrapped, not copied
    back = np.asarray(a)
    assert back.dtype == np.dtype(npdt)
    assert back.ctypes.data == src.ctypes.data  # and viewed back without a copy
    np.testing.assert_array_equal(back, src)
    assert a.tolist() == src.tolist()


def test_conversions_follow_mlx_defaults():
    assert mk.array([1, 2, 3]).dtype == mk.int32
    assert mk.array(7).dtype == mk.int32
    assert mk.array(1.5).dtype == mk.float32
    assert mk.array([1.5, 2]).dtype == mk.float32
    assert mk.array(True).dtype == mk.bool_
    assert mk.array([[True, False]]).dtype == mk.bool_
    assert mk.array(np.arange(3)).dtype == mk.int64  # numpy keeps its dtype
    f64 = np.linspace(-1, 1, 7)
    a = mk.array(f64)  # float64 is not an mmkit dtype: converted (copied) to float32
    assert a.dtype == mk.float32
    np.testing.assert_array_equal(np.asarray(a), f64.astype(np.float32))
    assert mk.array(np.float32(2.5)).item() == 2.5
    assert mk.array([1, 2], dtype=mk.float16).dtype == mk.float16
    assert mk.array(np.ones(3, np.float32), dtype="bfloat16").dtype == mk.bfloat16
    assert mk.array(np.ones(3, np.float32), dtype=np.int8).dtype == mk.int8
    assert mk.array(mk.array([1, 2])).tolist() == [1, 2]


def test_scalars_and_item():
    assert mk.array(3).item() == 3 and isinstance(mk.array(3).item(), int)
    assert mk.array(2.25).item() == 2.25 and isinstance(mk.array(2.25).item(), float)
    assert mk.array(False).item() is False
    assert mk.array(np.int64(2**40 + 1)).item() == 2**40 + 1
    assert mk.array(7).shape == () and mk.array(7).ndim == 0 and mk.array(7).size == 1
    assert mk.array(7).tolist() == 7
    with pytest.raises(ValueError):
        mk.array([1, 2]).item()


def test_unsupported_inputs():
    with pytest.raises(ValueError, match=r"\[array\]"):
        mk.array(np.zeros(3, np.uint16))
    with pytest.raises(ValueError, match=r"\[array\]"):
        mk.array(np.zeros(3, np.complex64))
    with pytest.raises(TypeError):
        mk.array(object())
    with pytest.raises(TypeError):
        mk.array(None)
    with pytest.raises(TypeError):
        mk.array(["a", "b"])


def test_astype():
    a = mk.array(np.array([[1.5, -2.25], [3.0, 65504.0]], np.float32))
    h = a.astype(mk.float16)
    assert h.dtype == mk.float16
    np.testing.assert_array_equal(np.asarray(h), np.asarray(a).astype(np.float16))
    b = a.astype(mk.bfloat16)
    np.testing.assert_array_equal(np.asarray(b).astype(np.float32), np.asarray(a).astype(ml_dtypes.bfloat16).astype(np.float32))
    i = a.astype(mk.int32)
    assert i.dtype == mk.int32
    assert a.astype("float32").dtype == mk.float32
    with pytest.raises(ValueError):
        a.astype("float64")


INDEX_CASES = [
    1,
    -1,
    (0, 2),
    (slice(None), 3),
    slice(1, 3),
    slice(None, None, -1),
    (slice(None), slice(None, None, -2)),
    (slice(3, 0, -1), slice(1, None, 2)),
    (Ellipsis, 1),
    (1, Ellipsis),
    (None, 0),
    (slice(None), None, slice(2, 4)),
    (Ellipsis, None),
    (slice(10, 20),),
    (slice(-100, 100, 3), -2),
    (slice(None, None, -3), slice(None, None, -1), Ellipsis),
    (),
]


@pytest.mark.parametrize("key", INDEX_CASES, ids=[repr(k) for k in INDEX_CASES])
def test_basic_indexing_is_a_view(key, rng):
    src = rng.standard_normal((4, 6, 5)).astype(np.float32)
    a = mk.array(src)
    got = a[key]
    want = src[key]
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.asarray(got), want)
    if want.size:
        assert got._data_ptr() == want.ctypes.data  # same first element: a view


def test_indexing_errors():
    a = mk.array(np.zeros((2, 3), np.float32))
    with pytest.raises(IndexError):
        a[2]
    with pytest.raises(IndexError):
        a[0, -4]
    with pytest.raises(IndexError):
        a[0, 0, 0]
    with pytest.raises(IndexError):
        a[..., ...]
    with pytest.raises(IndexError):
        a[[0, 1]]
    assert len(a) == 2
    assert [r.tolist() for r in a] == [[0.0, 0.0, 0.0]] * 2
    with pytest.raises(TypeError):
        len(mk.array(1.0))


def test_strided_inputs_are_not_copied(rng):
    base = rng.standard_normal((8, 10)).astype(np.float32)
    for view in (base[:, ::2], base[::-1], base.T, base[2:5, 3:9], np.broadcast_to(base[0], (4, 10))):
        a = mk.array(view)
        assert a._data_ptr() == view.ctypes.data
        np.testing.assert_array_equal(np.asarray(a), view)
        np.testing.assert_array_equal(np.asarray(a.astype(mk.float32)), view)  # a contiguous copy


def test_input_memory_is_shared_not_copied():
    src = np.zeros((2, 3), np.float32)
    a = mk.array(src)
    src[1, 2] = 42.0
    assert a[1, 2].item() == 42.0
    assert a._data_ptr() == src.ctypes.data


def test_read_only_input():
    src = np.arange(6, dtype=np.float32).reshape(2, 3)
    src.flags.writeable = False
    a = mk.array(src)
    assert a._data_ptr() == src.ctypes.data
    assert a.tolist() == src.tolist()


def test_bfloat16_numpy_interchange(rng):
    src = rng.standard_normal((4, 8)).astype(ml_dtypes.bfloat16)
    a = mk.array(src)
    assert a.dtype == mk.bfloat16
    assert a._data_ptr() == src.ctypes.data
    back = np.asarray(a)
    assert back.dtype == ml_dtypes.bfloat16
    assert back.ctypes.data == src.ctypes.data
    np.testing.assert_array_equal(back.view(np.uint16), src.view(np.uint16))
    # bf16 results of ops come back as ml_dtypes arrays too
    out = mk.dequantize(*mk.quantize(np.tile(src, (1, 8))), dtype=mk.bfloat16)
    assert np.asarray(out).dtype == ml_dtypes.bfloat16


def test_lifetimes():
    src = np.arange(12, dtype=np.float32).reshape(3, 4)
    a = mk.array(src)
    del src
    gc.collect()
    assert a.tolist() == np.arange(12, dtype=np.float32).reshape(3, 4).tolist()  # producer kept alive
    view = np.asarray(a[1:])
    del a
    gc.collect()
    np.testing.assert_array_equal(view, np.arange(4, 12, dtype=np.float32).reshape(2, 4))  # buffer kept alive


def test_numpy_array_protocol_options(rng):
    src = rng.standard_normal((3, 3)).astype(np.float32)
    a = mk.array(src)
    c = np.array(a)  # np.array copies by default
    assert c.ctypes.data != src.ctypes.data
    np.testing.assert_array_equal(c, src)
    h = np.asarray(a, dtype=np.float16)
    assert h.dtype == np.float16
    np.testing.assert_array_equal(h, src.astype(np.float16))
    c2 = a.__array__(copy=True)
    assert c2.ctypes.data != src.ctypes.data


@pytest.mark.native_streams  # an op's output on the CPU leaves through DLPack without a copy
def test_dlpack_roundtrip(rng):
    src = rng.standard_normal((5, 7)).astype(np.float32)
    a = mk.array(src)
    assert a.__dlpack_device__() == (1, 0)
    viewed = np.from_dlpack(a)
    assert viewed.ctypes.data == src.ctypes.data
    np.testing.assert_array_equal(viewed, src)
    # an op's output leaves without a copy as well
    y = mk.quantized_matmul(rng.standard_normal((3, 64)), rng.standard_normal((8, 64)))
    assert np.from_dlpack(y).ctypes.data == y._data_ptr()
    assert np.asarray(y).ctypes.data == y._data_ptr()
    # strided views keep their strides
    v = a[:, ::-2]
    np.testing.assert_array_equal(np.from_dlpack(v), src[:, ::-2])


def test_repr():
    assert repr(mk.array([[1, 2], [3, 4]])) == "array([[1, 2],\n       [3, 4]], dtype=int32)"
    assert repr(mk.array([1.5], dtype=mk.bfloat16)) == "array([1.5], dtype=bfloat16)"
    assert repr(mk.array(True)) == "array(True, dtype=bool_)"


def test_devices_and_streams():
    assert mk.cpu == mk.Device("cpu") and mk.cpu.type == "cpu" and mk.cpu.index == 0
    assert mk.gpu == mk.Device("gpu", 0) and mk.gpu.type == "gpu"
    assert mk.Device("gpu:1") == mk.Device("gpu", 1)
    assert repr(mk.cpu) == "Device(cpu, 0)" and str(mk.gpu) == "gpu"
    assert mk.array([1.0]).device == mk.cpu
    s = mk.default_stream(mk.cpu)
    assert s.device == mk.cpu
    s.synchronize()
    assert mk.new_stream("cpu").device == mk.cpu
    with pytest.raises(ValueError, match=r"\[device\]"):
        mk.Device("tpu")
    assert isinstance(mk.built_with_cuda(), bool)
    assert mk.gpu_count() >= 0
    mk.synchronize()  # a no-op without GPUs, never an error


def test_version_matches_cmake_project():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2]
    cml = root / "CMakeLists.txt"
    if not cml.exists():
        pytest.skip("source tree not available")
    want = re.search(r"project\(mmkit\s+VERSION\s+([0-9.]+)", cml.read_text()).group(1)
    assert mk.__version__ == want
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:
        return
    try:
        assert version("mmkit") == want  # the installed distribution's metadata
    except PackageNotFoundError:
        pass  # running from a build tree


def test_ops_release_the_gil_and_are_thread_safe(rng):
    w = rng.standard_normal((64, 256)).astype(np.float32)
    xs = [rng.standard_normal((8, 256)).astype(np.float32) for _ in range(8)]
    q = mk.quantize(w)
    want = [np.asarray(mk.quantized_matmul(x, *q)).copy() for x in xs]
    got = [None] * len(xs)

    def work(i):
        for _ in range(5):
            got[i] = np.asarray(mk.quantized_matmul(xs[i], *q))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w_ in zip(got, want):
        np.testing.assert_array_equal(g, w_)


def _torch():
    return pytest.importorskip("torch")


def test_torch_cpu_interchange(rng):
    torch = _torch()
    t = torch.randn(6, 8, dtype=torch.bfloat16)
    a = mk.array(t)
    assert a.dtype == mk.bfloat16 and a._data_ptr() == t.data_ptr()
    back = torch.from_dlpack(a)
    assert back.data_ptr() == t.data_ptr() and back.dtype == torch.bfloat16
    q = mk.quantize(t[:, :].float().repeat(1, 8))
    y = mk.quantized_matmul(torch.randn(3, 64), *q)
    ty = torch.from_dlpack(y)
    assert ty.data_ptr() == y._data_ptr() and tuple(ty.shape) == (3, 6)


def test_torch_cuda_interchange():
    torch = _torch()
    if not torch.cuda.is_available() or mk.gpu_count() == 0:
        pytest.skip("needs a CUDA GPU visible to both torch and mmkit")
    t = torch.randn(16, 64, device="cuda", dtype=torch.float16)
    a = mk.array(t)
    assert a.device == mk.gpu and a._data_ptr() == t.data_ptr()
    w_q, s, b = mk.quantize(t)
    assert w_q.device == mk.gpu
    y = torch.from_dlpack(mk.quantized_matmul(t, w_q, s, b))
    assert y.device.type == "cuda"
    w_hat = torch.from_dlpack(mk.dequantize(w_q, s, b)).float()
    torch.testing.assert_close(y.float(), t.float() @ w_hat.T, atol=2e-2, rtol=1e-2)
