"""The Python API surface: MLX's signatures (SPEC sections 1-6), the stream
argument, errors as ValueError with the C++ message, the shipped type stub."""

import ast
import pathlib

import numpy as np
import pytest

import mmkit as mk

REQUIRED = object()

# name -> (positional-only, positional-or-keyword with defaults, keyword-only with defaults)
EXPECTED = {
    "quantize": (
        ["w"],
        [("group_size", None), ("bits", None), ("mode", "affine"), ("global_scale", None)],
        [("stream", None)],
    ),
    "dequantize": (
        ["w"],
        [
            ("scales", REQUIRED),
            ("biases", None),
            ("group_size", None),
            ("bits", None),
            ("mode", "affine"),
            ("global_scale", None),
            ("dtype", None),
        ],
        [("stream", None)],
    ),
    # scales defaults to None (MLX: required) so that an unquantized w can omit it.
    "quantized_matmul": (
        ["x", "w"],
        [
            ("scales", None),
            ("biases", None),
            ("transpose", True),
            ("group_size", None),
            ("bits", None),
            ("mode", "affine"),
        ],
        [("stream", None)],
    ),
    "gather_qmm": (
        ["x", "w"],
        [
            ("scales", None),
            ("biases", None),
            ("lhs_indices", None),
            ("rhs_indices", None),
            ("transpose", True),
            ("group_size", None),
            ("bits", None),
            ("mode", "affine"),
        ],
        [("sorted_indices", False), ("stream", None)],
    ),
    "gather_mm": (
        ["a", "b"],
        [("lhs_indices", None), ("rhs_indices", None)],
        [("sorted_indices", False), ("stream", None)],
    ),
    "block_masked_mm": (
        ["a", "b"],
        [("block_size", 64), ("mask_out", None), ("mask_lhs", None), ("mask_rhs", None)],
        [("stream", None)],
    ),
    "to_fp8": ([], [("x", REQUIRED)], [("stream", None)]),
    "from_fp8": ([], [("x", REQUIRED), ("dtype", "bfloat16")], [("stream", None)]),
}


def parse_signature(sig_text):
    """'def f(a, /, b=1, *, c=None) -> T' -> (posonly names, [(name, default)], [(name, default)])."""
    fn = ast.parse(sig_text + ": pass").body[0]
    a = fn.args

    def value(node):
        if node is None:
            return REQUIRED
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Attribute):
            return node.attr
        return ast.literal_eval(node)

    pos = a.posonlyargs + a.args
    defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
    posonly = [p.arg for p in a.posonlyargs]
    assert all(d is None for d in defaults[: len(posonly)]), "positional-only arguments never have defaults here"
    normal = [(p.arg, value(d)) for p, d in zip(a.args, defaults[len(posonly) :])]
    kwonly = [(p.arg, value(d)) for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    return posonly, normal, kwonly


def nb_signature(fn):
    sigs = fn.__nb_signature__
    assert len(sigs) == 1
    return sigs[0][0]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_signature(name):
    assert parse_signature(nb_signature(getattr(mk, name))) == EXPECTED[name]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_docstring_states_shapes_dtypes_defaults(name):
    doc = getattr(mk, name).__doc__
    assert doc and name in doc
    body = doc.split("\n", 1)[1]
    assert "Args:" in body and "Returns:" in body
    assert "stream" in body
    if name not in ("to_fp8", "from_fp8"):
        assert "shape" in body
    for pname, default in EXPECTED[name][1] + EXPECTED[name][2]:
        assert pname in body, f"{name}: argument {pname} undocumented"


def test_positional_only_and_keyword_only_are_enforced(rng):
    w = rng.standard_normal((4, 64)).astype(np.float32)
    with pytest.raises(TypeError):
        mk.quantize(w=w)
    with pytest.raises(TypeError):
        mk.quantize(w, 64, 4, "affine", None, "cpu")  # stream is keyword-only
    w_q, s, b = mk.quantize(w, 64, 4, "affine", None)  # everything else positional
    with pytest.raises(TypeError):
        mk.quantized_matmul(x=w, w=w_q, scales=s, biases=b)
    y = mk.quantized_matmul(w, w_q, s, b, True, 64, 4, "affine")
    assert y.shape == (4, 4)
    with pytest.raises(TypeError):
        mk.gather_qmm(w, w_q, s, b, None, None, True, 64, 4, "affine", False)  # sorted_indices keyword-only
    with pytest.raises(TypeError):
        mk.gather_mm(w, w.T, None, None, True)
    assert mk.from_fp8(x=mk.to_fp8(x=w)).dtype == mk.bfloat16
    assert mk.dequantize(w_q, scales=s, biases=b).dtype == mk.float32


@pytest.mark.native_streams
@pytest.mark.parametrize("stream", ["cpu", mk.cpu, mk.Device("cpu"), "default_stream", "new_stream", None])
def test_stream_forms(stream, rng):
    if stream == "default_stream":
        stream = mk.default_stream(mk.cpu)
    elif stream == "new_stream":
        stream = mk.new_stream(mk.cpu)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    want = np.asarray(mk.quantized_matmul(x, *mk.quantize(w)))
    got = mk.quantized_matmul(x, *mk.quantize(w, stream=stream), stream=stream)
    assert got.device == mk.cpu
    np.testing.assert_array_equal(np.asarray(got), want)
    for fn, args in [
        (mk.dequantize, mk.quantize(w)),
        (mk.gather_mm, (x, w.T)),
        (mk.block_masked_mm, (x, w.T, 32, np.ones((1, 1), bool))),
        (mk.to_fp8, (x,)),
        (mk.gather_qmm, (x, *mk.quantize(w))),
    ]:
        fn(*args, stream=stream)


@pytest.mark.native_streams
def test_bad_streams(rng):
    w = rng.standard_normal((8, 64)).astype(np.float32)
    with pytest.raises(TypeError):
        mk.quantize(w, stream=3)
    with pytest.raises(ValueError, match=r"\[device\]"):
        mk.quantize(w, stream="tpu")
    if mk.gpu_count() == 0:
        with pytest.raises(ValueError, match=r"CUDA"):
            mk.quantize(w, stream=mk.gpu)
        with pytest.raises(ValueError, match=r"CUDA"):
            mk.quantize(w, stream="gpu")


def test_errors_are_value_errors_with_the_cpp_message(rng):
    w = rng.standard_normal((8, 64)).astype(np.float32)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    w_q, s, b = mk.quantize(w)
    cases = [
        (lambda: mk.quantize(w, mode="xyz"), r"^\[quantize\] Invalid quantization mode 'xyz'\.$"),
        (lambda: mk.quantize(w, group_size=48), r"^\[quantize\] "),
        (lambda: mk.dequantize(w_q, s, None), r"^\[dequantize\] Biases must be provided"),
        (lambda: mk.quantized_matmul(x, w_q, s, b, mode="xyz"), r"^\[quantized_matmul\] Invalid quantization mode"),
        (lambda: mk.quantized_matmul(x[:, :32], w_q, s, b), r"^\[quantized_matmul\] "),
        (lambda: mk.gather_qmm(x, w_q, s, b, rhs_indices=np.array(0), mode="xyz"), r"^\[gather_qmm\] "),
        (lambda: mk.gather_mm(x, w), r"^\[gather_mm\] "),
        (lambda: mk.block_masked_mm(x, w.T, 48, np.ones((1, 1), bool)), r"^\[block_masked_mm\] "),
        (lambda: mk.from_fp8(np.zeros(3, np.uint8), mk.int32), r"^\[from_fp8\] "),
        (lambda: mk.to_fp8(np.zeros(3, np.int32)), r"^\[to_fp8\] "),
    ]
    for fn, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            fn()


def test_on_the_fly_quantization_argument_rules(rng):
    w = rng.standard_normal((8, 64)).astype(np.float32)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    w_q, s, b = mk.quantize(w)
    with pytest.raises(ValueError, match=r"^\[quantized_matmul\] w has floating dtype float32"):
        mk.quantized_matmul(x, w, s, b)
    with pytest.raises(ValueError, match=r"^\[gather_qmm\] w has floating dtype"):
        mk.gather_qmm(x, w, s)
    with pytest.raises(ValueError, match=r"^\[quantized_matmul\] scales must be given"):
        mk.quantized_matmul(x, w_q)
    with pytest.raises(ValueError, match=r"^\[gather_qmm\] scales must be given"):
        mk.gather_qmm(x, w_q, rhs_indices=[0])
    with pytest.raises(ValueError, match=r"^\[quantized_matmul\] Invalid quantization mode 'xyz'"):
        mk.quantized_matmul(x, w, mode="xyz")


def _package_dir():
    return pathlib.Path(mk.__file__).parent


def test_stub_ships_and_matches_the_module():
    pkg = _package_dir()
    assert (pkg / "py.typed").exists()
    stub = pkg / "_core.pyi"
    assert stub.exists(), f"{stub} missing"
    tree = ast.parse(stub.read_text())
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {"array", "Dtype", "Device", "Stream"} <= classes
    names = {t.id for n in tree.body if isinstance(n, ast.AnnAssign) for t in [n.target]}
    assert {"float32", "float16", "bfloat16", "uint32", "uint8", "int8", "int16", "int32", "int64", "bool_"} <= names
    assert {"cpu", "gpu"} <= names
    for name in EXPECTED:
        assert name in funcs, f"{name} missing from the stub"
        node = funcs[name]
        stub_sig = "def " + name + "(" + ast.unparse(node.args) + ")"
        assert parse_signature(stub_sig) == EXPECTED[name]
        assert ast.get_docstring(node), f"{name}: stub has no docstring"


def test_cli_is_installed_next_to_python():
    import os
    import subprocess
    import sys

    if os.environ.get("MMKIT_EXPECT_CLI") != "1":
        pytest.skip("MMKIT_EXPECT_CLI=1 is set by scripts/test.d/40-python.sh when cli/ is part of the build")
    exe = pathlib.Path(sys.executable).parent / "mmkit"
    assert exe.exists() and os.access(exe, os.X_OK), f"{exe} missing: pip install did not install the mmkit command"
    assert subprocess.run([str(exe), "--help"], capture_output=True, timeout=60).returncode == 0
