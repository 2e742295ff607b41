"""mmkit: MLX-compatible quantized matrix multiplications.

``quantize`` / ``dequantize`` (affine 2-8 bit, mxfp4, mxfp8, nvfp4, MLX's packed
format bit for bit), ``quantized_matmul``, ``gather_qmm``, ``gather_mm``,
``block_masked_mm``, ``to_fp8`` and ``from_fp8`` with MLX's Python signatures,
on the CPU and on NVIDIA GPUs. Inputs may be numpy arrays, any DLPack producer
(torch, cupy, jax), ``mmkit.array`` objects, lists or scalars; outputs are
``mmkit.array`` objects that ``numpy.asarray`` and ``torch.from_dlpack`` view
without copying. Errors raise ``ValueError`` with a message starting
``[op_name]``.
"""

from ._core import (
    Device,
    Dtype,
    Stream,
    __version__,
    array,
    bfloat16,
    block_masked_mm,
    bool_,
    built_with_cuda,
    cpu,
    default_stream,
    dequantize,
    float16,
    float32,
    from_fp8,
    gather_mm,
    gather_qmm,
    gpu,
    gpu_count,
    int8,
    int16,
    int32,
    int64,
    new_stream,
    quantize,
    quantized_matmul,
    synchronize,
    to_fp8,
    uint8,
    uint32,
)

__all__ = [
    "Device",
    "Dtype",
    "Stream",
    "__version__",
    "array",
    "bfloat16",
    "block_masked_mm",
    "bool_",
    "built_with_cuda",
    "cpu",
    "default_stream",
    "dequantize",
    "float16",
    "float32",
    "from_fp8",
    "gather_mm",
    "gather_qmm",
    "gpu",
    "gpu_count",
    "int8",
    "int16",
    "int32",
    "int64",
    "new_stream",
    "quantize",
    "quantized_matmul",
    "synchronize",
    "to_fp8",
    "uint8",
    "uint32",
]
