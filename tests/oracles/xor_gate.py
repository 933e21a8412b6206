"""Oracles of the XOR-gate kernels (:mod:`apb.kernels.xor_gate`), written for
obviousness: 0/1 uint8 arrays, a dense Gauss-Jordan elimination over GF(2) kept in
reduced row echelon form, and the network applied as a matrix product mod 2.

The encoder's contract fixes its output uniquely, so the kernel must match these
exactly: care bits are taken in order and one whose equation contradicts the earlier
ones (it lies in their span with the other right-hand side) is a flip; the unknowns
that are not pivots of the reduced system are 0.
"""

from __future__ import annotations

import numpy as np


def solve_block_ref(g: np.ndarray, bits: np.ndarray, care: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """One block: ``g`` 0/1 ``[rows, n_in]`` (the rows of the block's positions),
    ``bits``/``care`` 0/1 ``[rows]``. Returns ``(x [n_in], flips [rows])``."""
    n_in = g.shape[1]
    pivots: list[tuple[int, np.ndarray, int]] = []  # (column, row, rhs), fully reduced
    flips = np.zeros(g.shape[0], dtype=np.uint8)
    for i in np.flatnonzero(care):
        a, b = g[i].astype(bool).copy(), int(bits[i])
        for col, row, rhs in pivots:
            if a[col]:
                a ^= row
                b ^= rhs
        if not a.any():
            flips[i] = b
            continue
        col = int(np.flatnonzero(a)[0])
        reduced = []
        for c, row, rhs in pivots:
            if row[col]:
                row, rhs = row ^ a, rhs ^ b
            reduced.append((c, row, rhs))
        pivots = reduced + [(col, a, b)]
    x = np.zeros(n_in, dtype=np.uint8)
    for col, _, rhs in pivots:
        x[col] = rhs
    return x, flips


def encode_ref(g: np.ndarray, bits: np.ndarray, care: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """A plane of 0/1 ``bits``/``care`` ``[n]`` under network ``g`` ``[n_out, n_in]``:
    ``(x [n_blocks, n_in], flips [n])``."""
    n_out, n_in = g.shape
    n = bits.shape[0]
    blocks = -(-n // n_out)
    x = np.zeros((blocks, n_in), dtype=np.uint8)
    flips = np.zeros(n, dtype=np.uint8)
    for b in range(blocks):
        s, e = b * n_out, min(n, (b + 1) * n_out)
        x[b], flips[s:e] = solve_block_ref(g[:e - s], bits[s:e], care[s:e])
    return x, flips


def decode_ref(g: np.ndarray, x: np.ndarray, n: int) -> np.ndarray:
    """The network's outputs ``y_b = G x_b mod 2`` of every block, concatenated, first
    ``n`` bits (0/1 uint8)."""
    y = (x.astype(np.int64) @ g.T.astype(np.int64)) % 2
    return y.reshape(-1)[:n].astype(np.uint8)


def patch_positions_ref(counts: np.ndarray, offsets: np.ndarray, n_patches: int, n_out: int,
                        n_bits: int) -> np.ndarray:
    """Positions of the patches in the plane, read bit by bit from the two streams
    (unary count per block, then fixed-width offsets); ValueError if they run short."""
    count_bits = np.unpackbits(counts, bitorder="little")
    offset_bits = np.unpackbits(offsets, bitorder="little")
    width = max(1, (n_out - 1).bit_length())
    blocks = -(-n_bits // n_out)
    positions, at, k = [], 0, 0
    for b in range(blocks):
        while True:
            if at >= count_bits.shape[0]:
                raise ValueError("patch counts end early")
            bit = int(count_bits[at])
            at += 1
            if not bit:
                break
            field = offset_bits[k * width:(k + 1) * width]
            if field.shape[0] < width:
                raise ValueError("patch offsets end early")
            positions.append(b * n_out + int((field.astype(np.int64) << np.arange(width)).sum()))
            k += 1
    if k != n_patches:
        raise ValueError(f"{k} patches in the counts, {n_patches} expected")
    return np.array(positions, dtype=np.int64)
