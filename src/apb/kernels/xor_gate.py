r"""XOR-gate encryption kernels: the GF(2) block solver and the table decoder.

A bit-plane of ``n`` bits is cut into blocks of ``n_out`` bits; a fixed network of
``n_out`` rows of ``n_in`` bits maps a block's ``n_in`` stored bits ``x_b`` to

.. math:: y_b[i] = \bigoplus_j \mathrm{rows}[i]_j \, x_b[j]
          \quad(\text{the XOR of the columns } j \text{ with } x_b[j] = 1).

:func:`xor_gate_encode` solves ``rows[i]·x_b = bits[i]`` over the care bits of each block
by Gaussian elimination over GF(2), care bits in order, and reports the care bits whose
equation contradicts the earlier ones as flips (patches). :func:`xor_gate_decode` builds
every block as the XOR of one row of :func:`xor_gate_table` per group of eight input
bits (the 256 XORs of each group of eight columns, precomputed), then flips the patches.
Kim et al., *Structured Compression by Weight Encryption for Unstructured Pruning and
Quantization*, CVPR 2020.

Streams are uint8 bitstreams, bit ``i`` = bit ``i % 8`` of byte ``i // 8``:
``inputs`` holds ``n_blocks`` fields of ``n_in`` bits; ``patch_counts`` each block's patch
count in unary (that many 1s, then a 0); ``patch_offsets`` each patch's offset in its block
in :func:`offset_bits` bits (block order, increasing within a block). Shapes:
``1 ≤ n_in ≤ 64``, ``n_out`` a multiple of 8 in ``[8, 4096]``, ``n_in ≤ n_out``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from apb.kernels._arrays import as_int, check_array
from apb.kernels._ext import extension

MAX_INPUTS = 64
MAX_OUTPUTS = 4096


def check_shape(n_out: int, n_in: int, *, fn: str = "xor gate") -> None:
    """Raise ValueError unless ``(n_out, n_in)`` is a network shape the kernels take."""
    if not 1 <= n_in <= MAX_INPUTS:
        raise ValueError(f"{fn}: n_in={n_in} must lie in [1, {MAX_INPUTS}]")
    if not 8 <= n_out <= MAX_OUTPUTS or n_out % 8:
        raise ValueError(f"{fn}: n_out={n_out} must be a multiple of 8 in [8, {MAX_OUTPUTS}]")
    if n_in > n_out:
        raise ValueError(f"{fn}: n_in={n_in} must not exceed n_out={n_out}")


def n_blocks(n_bits: int, n_out: int) -> int:
    return -(-n_bits // n_out)


def offset_bits(n_out: int) -> int:
    """Bits of one patch offset: ``max(1, ceil(log2 n_out))``."""
    return max(1, (n_out - 1).bit_length())


def row_bytes(n_out: int) -> int:
    """Bytes of one decode-table row: ``n_out/8`` rounded up to 32."""
    return -(-(n_out // 8) // 32) * 32


def _bytes_of(bits: int) -> int:
    return -(-bits // 8)


def _check_rows(rows: Any, n_in: int, fn: str) -> np.ndarray:
    rows = check_array(rows, fn=fn, arg="rows", dtypes="uint64", shape="[n_out]")
    rows = np.asarray(rows)
    n_in = as_int(n_in, fn=fn, arg="n_in", meaning="input bits per block")
    check_shape(rows.shape[0], n_in, fn=fn)
    if n_in < 64 and bool((rows >> np.uint64(n_in)).any()):
        raise ValueError(f"{fn}: rows have bits at or above n_in={n_in}")
    return rows


def _check_stream(a: Any, fn: str, arg: str, length: int | None = None) -> np.ndarray:
    a = np.asarray(check_array(a, fn=fn, arg=arg, dtypes="uint8", shape="[bytes]"))
    if length is not None and a.shape[0] != length:
        raise ValueError(f"{fn}: {arg} has {a.shape[0]} bytes, expected {length}")
    return a


def xor_gate_encode(rows: Any, n_in: int, bits: Any, care: Any,
                    n_bits: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Encode one bit-plane: ``(inputs, flips, n_flips)``.

    Args:
        rows: uint64 ``[n_out]``, the network (each row ``< 2^n_in``).
        n_in: stored bits per block.
        bits, care: uint8 bitstreams of ``n_bits`` bits (``ceil(n_bits/8)`` bytes): the
            plane, and which of its bits must come out right.
        n_bits: bits in the plane.

    Returns ``inputs`` (``ceil(n_blocks·n_in/8)`` bytes), ``flips`` (``ceil(n_bits/8)``
    bytes, bit ``i`` set where decoding gives the wrong value of care bit ``i``) and
    their count.
    """
    fn = "xor_gate_encode"
    rows = _check_rows(rows, n_in, fn)
    n_bits = as_int(n_bits, fn=fn, arg="n_bits", meaning="bits in the plane")
    if n_bits < 0:
        raise ValueError(f"{fn}: n_bits must be >= 0, got {n_bits}")
    bits = _check_stream(bits, fn, "bits", _bytes_of(n_bits))
    care = _check_stream(care, fn, "care", _bytes_of(n_bits))
    inputs, flips, count = extension().xor_gate_encode(rows, n_in, bits, care, n_bits)
    return inputs, flips, int(count)


def xor_gate_table(rows: Any, n_in: int) -> np.ndarray:
    """The decode table of a network: uint8 ``[ceil(n_in/8), 256, row_bytes(n_out)]``;
    entry ``(g, v)`` is the XOR of the columns ``8g + t`` for the set bits ``t`` of ``v``."""
    fn = "xor_gate_table"
    rows = _check_rows(rows, n_in, fn)
    return extension().xor_gate_table(rows, n_in)


def xor_gate_decode(table: Any, n_out: int, n_in: int, inputs: Any, n_bits: int,
                    patch_counts: Any, patch_offsets: Any, n_patches: int,
                    out: Any = None) -> np.ndarray:
    """Decode one bit-plane into ``out`` (uint8 ``[ceil(n_bits/8)]``, allocated when not
    given) and return it: the network's outputs for ``inputs``, then the patches flipped;
    bits past ``n_bits`` are 0. Every stream's length and every patch is checked before
    ``out`` is written (ValueError naming what is wrong: truncated or damaged streams)."""
    fn = "xor_gate_decode"
    n_out = as_int(n_out, fn=fn, arg="n_out", meaning="output bits per block")
    n_in = as_int(n_in, fn=fn, arg="n_in", meaning="input bits per block")
    check_shape(n_out, n_in, fn=fn)
    n_bits = as_int(n_bits, fn=fn, arg="n_bits", meaning="bits in the plane")
    n_patches = as_int(n_patches, fn=fn, arg="n_patches", meaning="patches in the plane")
    if n_bits < 0 or n_patches < 0:
        raise ValueError(f"{fn}: n_bits and n_patches must be >= 0, got {n_bits}, {n_patches}")
    table = np.asarray(check_array(table, fn=fn, arg="table", dtypes="uint8",
                                   shape="[groups, 256, row_bytes]"))
    want = (-(-n_in // 8), 256, row_bytes(n_out))
    if table.shape != want:
        raise ValueError(f"{fn}: table has shape {table.shape}, a network of n_in={n_in}, "
                         f"n_out={n_out} has {want}; build it with xor_gate_table")
    inputs = _check_stream(inputs, fn, "inputs")
    counts = _check_stream(patch_counts, fn, "patch_counts")
    offsets = _check_stream(patch_offsets, fn, "patch_offsets")
    if out is None:
        out = np.empty(_bytes_of(n_bits), dtype=np.uint8)
    else:
        out = np.asarray(check_array(out, fn=fn, arg="out", dtypes="uint8", shape="[bytes]",
                                     writable=True))
        if out.shape[0] != _bytes_of(n_bits):
            raise ValueError(f"{fn}: out has {out.shape[0]} bytes, n_bits={n_bits} need "
                             f"{_bytes_of(n_bits)}")
    extension().xor_gate_decode(table, n_out, n_in, inputs, n_bits, counts, offsets, n_patches,
                                out)
    return out
