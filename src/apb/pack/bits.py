r"""Bit-packed torch tensors: the layout of every packed weight and activation, and the
activation codes that are packed (docs/design.md §2, bit layout).

A row of ``K`` values is ``W = ceil(K/64)`` little-endian ``uint64`` words
(:func:`words_for`, the kernels' own), bit ``j`` of word ``w`` holding column
``64 w + j``; bits past ``K`` are 0. Binary values: bit 1 means −1, bit 0 means +1
(:math:`s = 1 - 2b`). ``P``-bit unsigned codes are stored as bit-planes ``[P, rows, W]``,
plane ``p`` holding bit ``p`` of each code.

These helpers build and read packed buffers (packing a layer, loading a file, the
reference backend); the per-forward packing of activations runs in the kernels.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from ..kernels import words_for

if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for
    raise ImportError("apb.pack.bits reads uint64 words as bytes: little-endian only")

_SHIFTS = torch.arange(8, dtype=torch.uint8)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """``0/1`` values ``[..., K]`` (any integer or bool dtype) → uint64 ``[..., ceil(K/64)]``."""
    *lead, k = bits.shape
    w = words_for(k)
    if bits.numel() == 0:  # views between dtypes need real strides
        return torch.zeros((*lead, w), dtype=torch.uint64)
    b = bits.to(torch.uint8)
    if w * 64 != k:
        b = F.pad(b, (0, w * 64 - k))
    by = (b.reshape(*lead, w * 8, 8) << _SHIFTS).sum(-1, dtype=torch.uint8)
    return by.contiguous().view(torch.uint64).reshape(*lead, w)


def unpack_bits(words: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """uint64 ``[..., W]`` → uint8 ``0/1`` ``[..., k]`` (default ``k = 64 W``)."""
    *lead, w = words.shape
    if words.numel() == 0:
        return torch.zeros((*lead, w * 64 if k is None else k), dtype=torch.uint8)
    by = words.contiguous().view(torch.uint8).reshape(*lead, w * 8, 1)
    bits = ((by >> _SHIFTS) & 1).reshape(*lead, w * 64)
    return bits if k is None else bits[..., :k]


def bitcount(words: torch.Tensor) -> torch.Tensor:
    """Set bits of a uint64 tensor, summed (int64)."""
    return unpack_bits(words).sum(dtype=torch.int64)


def activation_codes(x: torch.Tensor, scale: torch.Tensor | float, bits: int) -> torch.Tensor:
    r"""``round(min(max(x, 0), s) / s · L)`` in float32, ``L = 2^bits − 1``: the codes of
    :class:`apb.nn.UniformActivation` (same ops in the same order, so bit-identical), as
    float32. ``s`` is used as given (the layer applies ``clamp_min(1e-8)`` first)."""
    s = torch.as_tensor(scale, dtype=torch.float32)
    levels = (1 << bits) - 1
    return torch.round(x.clamp(min=0.0).minimum(s) / s * levels)


__all__ = ["activation_codes", "bitcount", "pack_bits", "unpack_bits", "words_for"]
