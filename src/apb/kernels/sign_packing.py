"""Sign packing: the bit layout every bitwise kernel reads.

A row of K floats becomes ``ceil(K/64)`` 64-bit words; bit ``j`` of word ``w`` is

    b[m, w] bit j = 1  iff  x[m, 64*w + j] < 0

so ``sign(0) = +1`` gives bit 0, as in the binarization ``B = sign(W)`` (docs/design.md §2).
Edge values follow IEEE-754 ``x < 0`` exactly, decided on the bit pattern (so a
thread's denormals-are-zero mode does not change the result):

=================  ===
value              bit
=================  ===
negative, -inf     1
negative denormal  1
+0.0 and -0.0      0
NaN (any sign)     0
=================  ===

Bits past K in the last word (padding) are 0. ``unpack_signs`` maps bit 0 to +1.0 and
bit 1 to -1.0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from apb.kernels._arrays import as_int, check_matrix, like_input
from apb.kernels._ext import extension


def words_for(k: int) -> int:
    """``ceil(k / 64)``: the uint64 words of a packed row of ``k`` columns."""
    return -(-k // 64)


def pack_signs(x: Any) -> Any:
    """Pack the signs of a float32 ``[M, K]`` matrix into uint64 ``[M, ceil(K/64)]``.

    Args:
        x: numpy array or CPU torch tensor, float32, 2-D, C-contiguous. It is read in
            place (no copy); a non-contiguous input is rejected rather than copied, so
            call ``.contiguous()`` / ``np.ascontiguousarray`` yourself.

    Returns:
        The packed bits, of the same kind as ``x``: a numpy ``uint64`` array, or a
        ``torch.uint64`` tensor sharing memory with the kernel's output.

    Raises:
        TypeError: wrong type or dtype. ValueError: not 2-D, not contiguous, not on CPU.
    """
    x = check_matrix(x, fn="pack_signs", arg="x", dtype="float32")
    # The extension's array has numpy's `ulonglong` type, which torch does not take;
    # `uint64` is the same 64 bits under the name everyone expects.
    return like_input(extension().pack_signs(x).view(np.uint64), x)


def unpack_signs(bits: Any, k: int) -> Any:
    """Unpack uint64 ``[M, ceil(k/64)]`` sign bits into float32 ``[M, k]`` of ±1.

    Args:
        bits: numpy ``uint64`` array or ``torch.uint64`` CPU tensor, 2-D, C-contiguous.
        k: number of columns to produce, ``>= 0``; ``bits`` must have exactly
            ``ceil(k/64)`` words per row. Padding bits past ``k`` are ignored.

    Returns:
        float32 ``[M, k]``, +1.0 where the bit is 0 and -1.0 where it is 1, of the same
        kind as ``bits``.
    """
    bits = check_matrix(bits, fn="unpack_signs", arg="bits", dtype="uint64")
    k = as_int(k, fn="unpack_signs", arg="k", meaning="the number of columns")
    if k < 0:
        raise ValueError(f"unpack_signs: k must be >= 0, got {k}")
    words = bits.shape[1]
    if words != words_for(k):
        raise ValueError(
            f"unpack_signs: bits has {words} words per row, but k={k} needs "
            f"ceil(k/64)={words_for(k)}"
        )
    return like_input(extension().unpack_signs(bits, k), bits)
