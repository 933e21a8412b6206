"""Bitwise GEMMs: integer dot products of bit-packed rows by XOR/AND + popcount.

Operands are packed along K into little-endian 64-bit words, ``W = ceil(K/64)`` per
row (bit ``j`` of word ``w`` is column ``64*w + j``), as produced by
:func:`apb.kernels.pack_signs` (signs: bit 1 means -1, bit 0 means +1, so
``s = 1 - 2*bit``) and :func:`pack_planes` (k-bit unsigned codes as bit-planes
``[P, rows, W]``, plane ``p`` holding bit ``p``: ``code = sum_p 2^p * bit_p``). Every
result is int32 ``[M, N]``, M the weight rows (output channels) and N the activation
rows (positions or batch), so a convolution's output comes out channel-major.

    bgemm_1x1(w [M, W] signs,     x [N, W] signs,     k):
        out[m, n] = k - 2 popcount(w[m] ^ x[n])                    = sum_j s_w(m,j) s_x(n,j)
    bgemm_1x2(w [M, W] signs,     x [P, N, W] codes):
        out[m, n] = sum_p 2^p (popcount(x[p,n]) - 2 popcount(w[m] & x[p,n]))
                                                                   = sum_j s_w(m,j) code_x(n,j)
    bgemm_2x2(w [Q, M, W] codes,  x [P, N, W] codes):
        out[m, n] = sum_{q,p} 2^(q+p) popcount(w[q,m] & x[p,n])   = sum_j code_w(m,j) code_x(n,j)

Padding (the bits past K in the last word of a row): the packers write zeros there,
but the kernels do not rely on it. ``bgemm_1x1`` masks them away using ``k``, so any
padding bits in either operand give the same result. ``bgemm_1x2`` and ``bgemm_2x2``
take ``k`` optionally: given, they mask the same way; omitted, every bit of every word
counts (K = 64*W), which equals the K-column result exactly when the padding of ``x``
is zero for ``bgemm_1x2`` (the padding of ``w`` never matters there: a zero code
contributes 0) and of either operand for ``bgemm_2x2``. No kernel ever reads outside
its operands, whatever bits they hold.

The formulas are those of the bitwise convolutions of XNOR-Net (Rastegari et al., 2016)
and DoReFa-Net (Zhou et al., 2016); plane counts are 1..8.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from apb.kernels._arrays import as_int, check_array, check_matrix, like_input
from apb.kernels._ext import extension
from apb.kernels.sign_packing import words_for

MAX_PLANES = 8
"""Most bit-planes an operand may have (codes are uint8)."""

_INT32_MAX = 2**31 - 1
_PLANES = "[planes, rows, words]"


def pack_planes(codes: Any, bits: int) -> Any:
    """Pack k-bit unsigned codes into bit-planes: uint8 ``[N, K]`` to uint64 ``[bits, N, W]``.

    Bit ``j`` of word ``w`` of plane ``p`` is bit ``p`` of ``codes[n, 64*w + j]``, so
    ``codes[n, c] = sum_p 2^p * bit(out[p, n], c)``; padding bits past K are 0.

    Args:
        codes: numpy array or CPU torch tensor, uint8, 2-D, C-contiguous, every value
            ``< 2**bits``.
        bits: planes to produce, ``1 <= bits <= 8``.

    Returns:
        uint64 ``[bits, N, ceil(K/64)]``, of the same kind as ``codes``.

    Raises:
        TypeError: wrong type or dtype. ValueError: not 2-D or not contiguous, ``bits``
        out of range, or a code ``>= 2**bits`` (the message gives its position).
    """
    codes = check_matrix(codes, fn="pack_planes", arg="codes", dtype="uint8")
    bits = _check_planes(
        as_int(bits, fn="pack_planes", arg="bits", meaning="bits per code"), "pack_planes", "bits"
    )
    return like_input(extension().pack_planes(codes, bits).view(np.uint64), codes)


def bgemm_1x1(w: Any, x: Any, k: int) -> Any:
    """Binary x binary: ``out[m, n] = k - 2 popcount(w[m] ^ x[n])`` = sum_j s_w(m,j) s_x(n,j).

    Args:
        w: packed signs, uint64 ``[M, ceil(k/64)]`` (numpy or CPU torch, C-contiguous).
        x: packed signs, uint64 ``[N, ceil(k/64)]``.
        k: the number of columns, ``>= 0``; bits at or past ``k`` are ignored.

    Returns:
        int32 ``[M, N]``, of the same kind as ``x``.
    """
    fn = "bgemm_1x1"
    w = check_matrix(w, fn=fn, arg="w", dtype="uint64")
    x = check_matrix(x, fn=fn, arg="x", dtype="uint64")
    words = _check_same_words(w.shape[1], x.shape[1], fn)
    k = _check_k(k, words, fn)
    _check_fits_int32(1, k, fn)
    return like_input(extension().bgemm_1x1(w, x, k), x)


def bgemm_1x2(w: Any, x: Any, k: int | None = None) -> Any:
    """Binary weights x k-bit codes: ``out[m, n] = sum_j s_w(m,j) code_x(n,j)``, computed as
    ``sum_p 2^p (popcount(x[p,n]) - 2 popcount(w[m] & x[p,n]))``.

    Args:
        w: packed signs, uint64 ``[M, W]``.
        x: code planes, uint64 ``[P, N, W]`` with ``1 <= P <= 8``.
        k: the number of columns (then ``W == ceil(k/64)`` and bits past ``k`` are
            ignored), or None to count all ``64*W`` (right when the padding of ``x`` is
            zero, as :func:`pack_planes` leaves it).

    Returns:
        int32 ``[M, N]``, of the same kind as ``x``.
    """
    fn = "bgemm_1x2"
    w = check_matrix(w, fn=fn, arg="w", dtype="uint64")
    x = check_array(x, fn=fn, arg="x", dtypes="uint64", shape=_PLANES)
    planes = _check_planes(x.shape[0], fn, "the number of planes of x")
    words = _check_same_words(w.shape[1], x.shape[2], fn)
    k = 64 * words if k is None else _check_k(k, words, fn)
    _check_fits_int32(2**planes - 1, k, fn)
    return like_input(extension().bgemm_1x2(w, x, k), x)


def bgemm_2x2(w: Any, x: Any, k: int | None = None) -> Any:
    """k-bit codes x k-bit codes: ``out[m, n] = sum_j code_w(m,j) code_x(n,j)``, computed as
    ``sum_{q,p} 2^(q+p) popcount(w[q,m] & x[p,n])``.

    Args:
        w: code planes, uint64 ``[Q, M, W]`` with ``1 <= Q <= 8``.
        x: code planes, uint64 ``[P, N, W]`` with ``1 <= P <= 8``.
        k: the number of columns (then ``W == ceil(k/64)`` and bits past ``k`` are
            ignored), or None to count all ``64*W``.

    Returns:
        int32 ``[M, N]``, of the same kind as ``x``.
    """
    fn = "bgemm_2x2"
    w = check_array(w, fn=fn, arg="w", dtypes="uint64", shape=_PLANES)
    x = check_array(x, fn=fn, arg="x", dtypes="uint64", shape=_PLANES)
    w_planes = _check_planes(w.shape[0], fn, "the number of planes of w")
    x_planes = _check_planes(x.shape[0], fn, "the number of planes of x")
    words = _check_same_words(w.shape[2], x.shape[2], fn)
    k = 64 * words if k is None else _check_k(k, words, fn)
    _check_fits_int32((2**w_planes - 1) * (2**x_planes - 1), k, fn)
    return like_input(extension().bgemm_2x2(w, x, k), x)


def _check_planes(planes: int, fn: str, what: str) -> int:
    if not 1 <= planes <= MAX_PLANES:
        raise ValueError(f"{fn}: {what} must be 1..{MAX_PLANES}, got {planes}")
    return planes


def _check_same_words(w_words: int, x_words: int, fn: str) -> int:
    if w_words != x_words:
        raise ValueError(
            f"{fn}: w has {w_words} words per row but x has {x_words}; both operands must be "
            "packed from rows of the same length K"
        )
    return w_words


def _check_k(k: Any, words: int, fn: str) -> int:
    k = as_int(k, fn=fn, arg="k", meaning="the number of columns K")
    if k < 0:
        raise ValueError(f"{fn}: k must be >= 0, got {k}")
    if words != words_for(k):
        raise ValueError(
            f"{fn}: the operands have {words} words per row, but k={k} needs "
            f"ceil(k/64)={words_for(k)}"
        )
    return k


def _check_fits_int32(weight: int, k: int, fn: str) -> None:
    if weight * k > _INT32_MAX:
        raise ValueError(
            f"{fn}: K={k} columns with these plane counts can overflow the int32 result "
            f"(|out| <= {weight}*K); split K into chunks and add the partial results in int64"
        )
