r"""The pruning mask beside the encrypted planes: a Golomb-Rice code of the gaps between
kept positions, or a plain bitmap, whichever is smaller.

A random mask of density ``d`` has entropy :math:`H(d)` bits per weight; its gaps are
nearly geometric, for which a Rice code (Golomb 1966, Rice 1979) with the best parameter
``k`` comes within a few percent of that. Gap ``g`` (zeros before the next kept weight) is
the quotient ``g >> k`` in unary (that many 1s, then a 0) and the remainder in ``k``
bits. The quotients and the remainders are kept in two streams: every 0 of the first
then ends one gap, so both directions are a few vectorised numpy operations.

Bits: ``Σ (g_i >> k) + kept·(1 + k)`` for Rice, ``n`` for the bitmap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CODINGS = ("rice", "bitmap")
MAX_RICE_K = 32


@dataclass(frozen=True)
class MaskCode:
    """A mask of ``n`` positions with ``kept`` of them set, coded as ``coding``.

    ``rice``: ``quotients`` (``quotient_bits`` bits) and ``remainders`` (``kept·k`` bits);
    ``bitmap``: ``bitmap`` (``n`` bits). Streams are uint8, little-endian bit order.
    """

    coding: str
    n: int
    kept: int
    k: int = 0
    quotient_bits: int = 0
    streams: tuple[tuple[str, np.ndarray], ...] = ()

    @property
    def bits(self) -> int:
        if self.coding == "bitmap":
            return self.n
        return self.quotient_bits + self.kept * self.k

    def describe(self) -> dict:
        return {"coding": self.coding, "n": self.n, "kept": self.kept, "k": self.k,
                "quotient_bits": self.quotient_bits}


def _gaps(keep: np.ndarray) -> np.ndarray:
    positions = np.flatnonzero(keep)
    return np.diff(positions, prepend=-1) - 1


def rice_bits(gaps: np.ndarray, k: int) -> int:
    return int((gaps >> k).sum()) + gaps.shape[0] * (1 + k)


def encode_mask(keep) -> MaskCode:
    """The smaller of the Rice code (best ``k``) and the bitmap of a boolean mask."""
    keep = np.asarray(keep, dtype=bool).reshape(-1)
    n, kept = keep.shape[0], int(keep.sum())
    bitmap = MaskCode("bitmap", n, kept,
                      streams=(("bitmap", np.packbits(keep, bitorder="little")),))
    gaps = _gaps(keep).astype(np.int64)
    k = min(range(MAX_RICE_K), key=lambda j: rice_bits(gaps, j))
    if rice_bits(gaps, k) >= n:
        return bitmap
    quotients = gaps >> k
    unary = np.ones(int(quotients.sum()) + kept, dtype=np.uint8)
    unary[np.cumsum(quotients + 1) - 1] = 0
    remainders = ((gaps[:, None] >> np.arange(k)) & 1).astype(np.uint8).reshape(-1)
    return MaskCode("rice", n, kept, k, unary.shape[0], (
        ("quotients", np.packbits(unary, bitorder="little")),
        ("remainders", np.packbits(remainders, bitorder="little")),
    ))


def stream_bytes(description: dict) -> dict[str, int]:
    """Bytes of each stream a mask described by :meth:`MaskCode.describe` holds."""
    if description["coding"] == "bitmap":
        return {"bitmap": -(-description["n"] // 8)}
    return {"quotients": -(-description["quotient_bits"] // 8),
            "remainders": -(-description["kept"] * description["k"] // 8)}


def decode_mask(description: dict, streams: dict[str, np.ndarray]) -> np.ndarray:
    """The boolean mask ``[n]`` of :meth:`MaskCode.describe` output and its streams;
    ValueError when they do not fit together (damaged or truncated)."""
    coding, n, kept = description.get("coding"), description.get("n"), description.get("kept")
    if coding not in CODINGS:
        raise ValueError(f"unknown mask coding {coding!r}; known: {', '.join(CODINGS)}")
    for key, value in (("n", n), ("kept", kept), ("k", description.get("k")),
                       ("quotient_bits", description.get("quotient_bits"))):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"mask {key} must be a non-negative integer, got {value!r}")
    if kept > n:
        raise ValueError(f"mask keeps {kept} of {n} positions")
    expected = stream_bytes(description)
    for name, size in expected.items():
        if name not in streams or streams[name].dtype != np.uint8 or streams[name].shape != (
                size,):
            got = streams.get(name)
            raise ValueError(f"mask stream {name!r} must be uint8[{size}], got "
                             f"{None if got is None else f'{got.dtype}{list(got.shape)}'}")
    if coding == "bitmap":
        bits = np.unpackbits(streams["bitmap"], bitorder="little")
        if bits[n:].any():
            raise ValueError("nonzero padding after the mask bitmap")
        keep = bits[:n].astype(bool)
        if int(keep.sum()) != kept:
            raise ValueError(f"the mask bitmap keeps {int(keep.sum())} positions, not {kept}")
        return keep
    k, q_bits = description["k"], description["quotient_bits"]
    unary = np.unpackbits(streams["quotients"], bitorder="little")
    if unary[q_bits:].any():
        raise ValueError("nonzero padding after the mask quotients")
    ends = np.flatnonzero(unary[:q_bits] == 0)
    if ends.shape[0] != kept or (kept and ends[-1] != q_bits - 1):
        raise ValueError(f"the mask quotients end {ends.shape[0]} gaps, not {kept}")
    quotients = np.diff(ends, prepend=-1) - 1
    fields = np.unpackbits(streams["remainders"], bitorder="little")
    if fields[kept * k:].any():
        raise ValueError("nonzero padding after the mask remainders")
    remainders = (fields[:kept * k].reshape(kept, k).astype(np.int64)
                  << np.arange(k)).sum(1) if k else np.zeros(kept, dtype=np.int64)
    positions = np.cumsum((quotients << k) + remainders + 1) - 1
    if kept and positions[-1] >= n:
        raise ValueError(f"the mask codes a position {int(positions[-1])} past its {n} bits")
    keep = np.zeros(n, dtype=bool)
    keep[positions] = True
    return keep
