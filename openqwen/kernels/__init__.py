"""CPU kernels: matmuls against GGUF-quantized weights that stay quantized in memory."""

from openqwen.kernels.quant import (
    SUPPORTED_TYPES,
    QuantLinear,
    get_num_threads,
    native_available,
    native_isa,
    set_num_threads,
)
from openqwen.kernels.quantize import QUANTIZABLE_TYPES, quantize

__all__ = [
    "QUANTIZABLE_TYPES",
    "SUPPORTED_TYPES",
    "QuantLinear",
    "get_num_threads",
    "native_available",
    "native_isa",
    "quantize",
    "set_num_threads",
]
