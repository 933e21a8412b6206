"""Oracles of the packed bit layout (:mod:`apb.kernels.sign_packing`): a row of ``K``
values is ``ceil(K/64)`` little-endian uint64 words, bit ``j`` of word ``w`` holding
column ``64*w + j``, padding bits 0; a sign bit is 1 where the value is negative."""

from __future__ import annotations

import numpy as np


def pack_bits_ref(bits: np.ndarray) -> np.ndarray:
    """uint64 ``[..., ceil(K/64)]`` from 0/1 ``[..., K]``, padding bits 0."""
    bits = np.asarray(bits).astype(bool)
    k = bits.shape[-1]
    words = -(-k // 64)
    padded = np.zeros((*bits.shape[:-1], 64 * words), dtype=bool)
    padded[..., :k] = bits
    as_bytes = np.ascontiguousarray(np.packbits(padded, axis=-1, bitorder="little"))
    return as_bytes.view("<u8").astype(np.uint64).reshape(*bits.shape[:-1], words)


def unpack_bits_ref(words: np.ndarray, k: int) -> np.ndarray:
    """int64 0/1 ``[..., k]``: the first ``k`` bits of each row of uint64 ``[..., W]``
    (bit ``j`` of word ``w`` is column ``64*w + j``)."""
    words = np.ascontiguousarray(np.asarray(words, dtype=np.uint64).astype("<u8"))
    as_bytes = words.view(np.uint8).reshape(*words.shape[:-1], 8 * words.shape[-1])
    return np.unpackbits(as_bytes, axis=-1, bitorder="little")[..., :k].astype(np.int64)


def pack_signs_ref(x: np.ndarray) -> np.ndarray:
    """uint64 ``[M, ceil(K/64)]``: bit ``j`` of word ``w`` is ``x[m, 64*w + j] < 0``.

    NaN < 0 and -0.0 < 0 are both False in IEEE-754, so they give bit 0.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"pack_signs_ref: x must be 2-D, got shape {x.shape}")
    rows, k = x.shape
    words = -(-k // 64)
    negative = np.zeros((rows, words * 64), dtype=bool)
    with np.errstate(invalid="ignore"):
        negative[:, :k] = x < 0
    as_bytes = np.packbits(negative, axis=1, bitorder="little")  # [rows, 8 * words]
    return np.ascontiguousarray(as_bytes).view("<u8").astype(np.uint64).reshape(rows, words)


def unpack_signs_ref(bits: np.ndarray, k: int) -> np.ndarray:
    """float32 ``[M, k]``: -1.0 where bit ``k`` of the row is 1, +1.0 where it is 0."""
    bits = np.asarray(bits, dtype=np.uint64)
    rows, words = bits.shape
    as_bytes = np.ascontiguousarray(bits.astype("<u8")).view(np.uint8).reshape(rows, 8 * words)
    negative = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :k]
    return np.where(negative.astype(bool), np.float32(-1.0), np.float32(1.0))
