"""Memory accounting: the one definition of bits and bytes used everywhere (docs/design.md §3).

Every compressed layer describes what it stores as a :class:`LayerStorage`; the summary, the
method statistics, the budget mode and the packed file format all read the same numbers, so
a figure printed anywhere is a figure the format achieves.

Rules
-----
* Binary part: 1 bit per weight, packed densely (``ceil(n / 8)`` bytes per layer).
* A sparse full-precision correction is CSR: for each nonzero its value (32 or 16 bits) and
  its column index in the smallest unsigned type that holds the row length, plus one row
  pointer per row (+1) in the smallest unsigned type that holds the nonzero count.
* A sparse quantized matrix (pruning baselines) is stored in whichever of CSR or bitmap
  (one presence bit per weight, then the kept values) is smaller; the format is recorded.
* XOR-gate encrypted bit-planes (:func:`xor_bits`): ``n_in`` bits per block of ``n_out``
  weights per plane, plus the patches; the pruning mask is counted by the format that
  stores it (:mod:`apb.pack.xor`).
* Scalars (``α`` per layer or per channel, quantizer scales) cost 32 bits each.
* Uncompressed tensors count at their stored precision (fp32: 32 bits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FP32_BITS = 32
FP16_BITS = 16
SCALAR_BITS = 32


def index_bits(max_value: int) -> int:
    """Bits of the smallest unsigned integer type (8/16/32/64) that can hold ``max_value``."""
    if max_value < 0:
        raise ValueError(f"index range must be non-negative, got {max_value}")
    for bits in (8, 16, 32):
        if max_value < (1 << bits):
            return bits
    return 64


@dataclass(frozen=True)
class LayerStorage:
    """What one compressed weight tensor stores, in bits, by component."""

    n_weights: int
    format: str  # "dense-fp32", "binary", "binary+csr", "kbit", "csr", "bitmap", ...
    payload_bits: int  # sign bits or k-bit codes of the dense part
    value_bits: int  # full-precision (or quantized) values of the sparse part
    index_bits: int  # column indices / presence bitmap
    pointer_bits: int  # CSR row pointers
    scalar_bits: int  # α, scales
    n_fp: int = 0  # weights stored at full precision

    @property
    def total_bits(self) -> int:
        return (
            self.payload_bits + self.value_bits + self.index_bits + self.pointer_bits
            + self.scalar_bits
        )

    @property
    def total_bytes(self) -> int:
        """Bytes as stored: each component rounded up to whole bytes."""
        return sum(
            math.ceil(b / 8)
            for b in (
                self.payload_bits, self.value_bits, self.index_bits, self.pointer_bits,
                self.scalar_bits,
            )
        )

    @property
    def bits_per_weight(self) -> float:
        return self.total_bits / self.n_weights if self.n_weights else 0.0

    @property
    def fp_fraction(self) -> float:
        return self.n_fp / self.n_weights if self.n_weights else 0.0


def dense_storage(n_weights: int, bits: int = FP32_BITS) -> LayerStorage:
    """An uncompressed tensor at ``bits`` per element."""
    return LayerStorage(n_weights, f"dense-{bits}", n_weights * bits, 0, 0, 0, 0, n_fp=n_weights)


def csr_bits(rows: int, cols: int, nnz: int, value_bits: int) -> tuple[int, int, int]:
    """(values, column indices, row pointers) bits of a ``rows × cols`` CSR matrix."""
    if nnz == 0:
        return 0, 0, 0
    return nnz * value_bits, nnz * index_bits(max(cols - 1, 0)), (rows + 1) * index_bits(nnz)


def binary_sparse_storage(
    rows: int, cols: int, nnz: int, *, value_bits: int = FP32_BITS, n_scalars: int = 1
) -> LayerStorage:
    """APB layer: 1 sign bit per weight + a CSR correction with ``nnz`` full-precision values."""
    n = rows * cols
    values, indices, pointers = csr_bits(rows, cols, nnz, value_bits)
    fmt = "binary+csr" if nnz else "binary"
    return LayerStorage(n, fmt, n, values, indices, pointers, n_scalars * SCALAR_BITS, n_fp=nnz)


def quantized_storage(rows: int, cols: int, bits: int, *, n_scalars: int = 1) -> LayerStorage:
    """Dense k-bit codes (binary networks with k = 1, DoReFa k-bit)."""
    n = rows * cols
    fmt = "binary" if bits == 1 else f"{bits}bit"
    return LayerStorage(n, fmt, n * bits, 0, 0, 0, n_scalars * SCALAR_BITS)


def bitmap_bits(rows: int, cols: int, nnz: int, value_bits: int) -> tuple[int, int]:
    """(values, presence bitmap) bits of a ``rows × cols`` matrix stored as one presence bit
    per position and the ``nnz`` kept values."""
    return nnz * value_bits, rows * cols


def sparse_storage(
    rows: int, cols: int, nnz: int, *, value_bits: int, n_scalars: int = 0
) -> LayerStorage:
    """A pruned matrix whose kept values take ``value_bits``: the smaller of CSR and bitmap."""
    n = rows * cols
    fp = nnz if value_bits >= FP16_BITS else 0
    values, indices, pointers = csr_bits(rows, cols, nnz, value_bits)
    csr = LayerStorage(n, "csr", 0, values, indices, pointers, n_scalars * SCALAR_BITS, n_fp=fp)
    kept, presence = bitmap_bits(rows, cols, nnz, value_bits)
    bitmap = LayerStorage(n, "bitmap", 0, kept, presence, 0, n_scalars * SCALAR_BITS, n_fp=fp)
    return csr if csr.total_bits <= bitmap.total_bits else bitmap


def group_count(cols: int, group_size: int | None) -> int:
    """Scales per row of a quantization grid with one scale per ``group_size`` consecutive
    weights of a row (the last group may be narrower), or one per row (``None``)."""
    if group_size is None:
        return 1
    if group_size < 1:
        raise ValueError(f"group_size must be positive, got {group_size}")
    return -(-cols // group_size)


def xor_bits(n_bits: int, n_planes: int, n_in: int, n_out: int,
             n_patches: float) -> tuple[float, float]:
    """(encrypted, patch) bits of ``n_planes`` bit-planes of ``n_bits`` bits each under an
    XOR-gate network of ``n_in`` inputs and ``n_out`` outputs (:mod:`apb.pack.xor`), with
    ``n_patches`` patches over all planes (integers in, integers out; an expected, fractional
    patch count gives the expected bits).

    Encrypted: ``n_in`` bits per block of ``n_out`` bits, ``ceil(n_bits / n_out)`` blocks per
    plane. Patches: per block, its patch count in unary (count + 1 bits: a block without
    patches costs its 1-bit terminator), and per patch its offset in the block in
    ``ceil(log2 n_out)`` bits.
    """
    blocks = -(-n_bits // n_out)
    offset = max(1, (n_out - 1).bit_length())
    return (n_planes * blocks * n_in,
            n_planes * blocks + n_patches * (1 + offset))
