"""Oracles of bit-plane packing and the bitwise GEMMs (:mod:`apb.kernels.bgemm`).

Written from the definitions (docs/design.md §2), not from the kernels: bits are unpacked
into 0/1 matrices with ``np.unpackbits`` and the dot products are ordinary int64 matrix
products of signs (``s = 1 - 2*bit``) and codes (``sum_p 2^p * bit_p``).
"""

from __future__ import annotations

import numpy as np

from .sign_packing import pack_bits_ref, unpack_bits_ref


def pack_planes_ref(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint64 ``[bits, N, ceil(K/64)]``: plane ``p`` packs bit ``p`` of every code."""
    codes = np.asarray(codes, dtype=np.uint8)
    return np.stack([pack_bits_ref((codes >> p) & 1) for p in range(bits)])


def codes_ref(planes: np.ndarray, k: int) -> np.ndarray:
    """int64 ``[rows, k]`` codes ``sum_p 2^p * bit_p`` from planes uint64 ``[P, rows, W]``."""
    bits = unpack_bits_ref(planes, k)  # [P, rows, k]
    weights = (2 ** np.arange(bits.shape[0], dtype=np.int64))[:, None, None]
    return (bits * weights).sum(axis=0)


def signs_ref(words: np.ndarray, k: int) -> np.ndarray:
    """int64 ``[rows, k]`` of +1 (bit 0) and -1 (bit 1)."""
    return 1 - 2 * unpack_bits_ref(words, k)


def _columns(words: np.ndarray, k: int | None) -> int:
    return 64 * words.shape[-1] if k is None else k


def bgemm_1x1_ref(w: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """int64 ``[M, N]`` = ``signs(w) @ signs(x).T`` over the first ``k`` columns."""
    return signs_ref(w, k) @ signs_ref(x, k).T


def bgemm_1x2_ref(w: np.ndarray, x: np.ndarray, k: int | None = None) -> np.ndarray:
    """int64 ``[M, N]`` = ``signs(w) @ codes(x).T`` over the first ``k`` columns (all
    ``64*W`` if None)."""
    k = _columns(w, k)
    return signs_ref(w, k) @ codes_ref(x, k).T


def bgemm_2x2_ref(w: np.ndarray, x: np.ndarray, k: int | None = None) -> np.ndarray:
    """int64 ``[M, N]`` = ``codes(w) @ codes(x).T`` over the first ``k`` columns (all
    ``64*W`` if None)."""
    k = _columns(w, k)
    return codes_ref(w, k) @ codes_ref(x, k).T
