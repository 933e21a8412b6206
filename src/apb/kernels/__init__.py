"""Thin Python wrappers over apb's compiled CPU kernels (``apb._C``).

Every function checks its arguments and raises a TypeError/ValueError saying what is
wrong and how to fix it, then calls the extension with zero-copy views: numpy arrays
come back as numpy arrays, CPU torch tensors as torch tensors.

The extension is loaded on the first call, so ``import apb`` works without it; a
missing build then raises an ImportError naming how to build (``make install``, or
``make build-inplace`` with ``PYTHONPATH=src`` during development).

Kernels:
    pack_signs, unpack_signs: the sign-bit layout (see :mod:`apb.kernels.sign_packing`);
    words_for: the uint64 words of a packed row.
    pack_planes: k-bit codes as bit-planes; bgemm_1x1, bgemm_1x2, bgemm_2x2: integer
    GEMMs of packed operands by XOR/AND + popcount (see :mod:`apb.kernels.bgemm`).
    bgemm_1xf: binary weights x float activations (:mod:`apb.kernels.bgemm_fp`).
    linear_1xf_pack, linear_1xf: a whole binary Linear layer (``α·B + S`` and bias) on
    float inputs, fast, by table lookup over int8 codes of each row (:mod:`apb.kernels.linear_fp`).
    spmm_csr: CSR sparse x dense, in place (:mod:`apb.kernels.spmm`).
    sparse_conv2d: direct sparse convolution of a CSR weight matrix with a layer's
    quantized input, plus the layer's epilogue (:mod:`apb.kernels.sparse_conv`).
    im2col_pack_signs, im2col_pack_codes, quantize_pack_codes: layer inputs quantized
    and bit-packed in one pass (:mod:`apb.kernels.activation_packing`).
    xor_gate_encode, xor_gate_table, xor_gate_decode: XOR-gate weight encryption, the
    GF(2) block solver and the table decoder (:mod:`apb.kernels.xor_gate`).

The same kernels without the Python checks, for calls made on every forward (the
extension's own checks still keep them in bounds): :mod:`apb.kernels.direct`. The rest
of apb reaches the extension only through this package.

Run time:
    active_isa, available_isas, set_isa, use_isa: instruction-set dispatch
    (``APB_ISA=scalar|avx2|avx512`` in the environment overrides the default choice).
    set_num_threads, get_num_threads: OpenMP threads of the kernels.

Measurement:
    xor_popcount_roofline: one core's XOR+popcount throughput on L1 data (the limit the
    bitwise GEMMs are quoted against), the best of xor_popcount_rooflines (each loop).
    linear_1xf_lookup_rate: one core's table-lookup rate of linear_1xf on L1 data.
"""

from apb.kernels.activation_packing import (
    im2col_pack_codes,
    im2col_pack_signs,
    quantize_pack_codes,
)
from apb.kernels.bgemm import MAX_PLANES, bgemm_1x1, bgemm_1x2, bgemm_2x2, pack_planes
from apb.kernels.bgemm_fp import bgemm_1xf
from apb.kernels.linear_fp import (
    linear_1xf,
    linear_1xf_kernel,
    linear_1xf_lookup_rate,
    linear_1xf_pack,
)
from apb.kernels.roofline import roofline_methods, xor_popcount_roofline, xor_popcount_rooflines
from apb.kernels.runtime import (
    ISA_NAMES,
    active_isa,
    available_isas,
    empty_result_cache,
    get_num_threads,
    result_memory,
    set_isa,
    set_num_threads,
    use_isa,
)
from apb.kernels.sign_packing import pack_signs, unpack_signs, words_for
from apb.kernels.sparse_conv import sparse_conv2d
from apb.kernels.spmm import spmm_csr
from apb.kernels.xor_gate import xor_gate_decode, xor_gate_encode, xor_gate_table

__all__ = [
    "ISA_NAMES",
    "MAX_PLANES",
    "active_isa",
    "available_isas",
    "bgemm_1x1",
    "bgemm_1x2",
    "bgemm_1xf",
    "bgemm_2x2",
    "empty_result_cache",
    "get_num_threads",
    "im2col_pack_codes",
    "im2col_pack_signs",
    "linear_1xf",
    "linear_1xf_kernel",
    "linear_1xf_lookup_rate",
    "linear_1xf_pack",
    "pack_planes",
    "pack_signs",
    "quantize_pack_codes",
    "result_memory",
    "roofline_methods",
    "set_isa",
    "set_num_threads",
    "sparse_conv2d",
    "spmm_csr",
    "unpack_signs",
    "use_isa",
    "words_for",
    "xor_gate_decode",
    "xor_gate_encode",
    "xor_gate_table",
    "xor_popcount_roofline",
    "xor_popcount_rooflines",
]
