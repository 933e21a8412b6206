"""Oracle of linear_1xf, the binary Linear layer with float inputs
(:mod:`apb.kernels.linear_fp`), written from its definition::

    y[n, m] = alpha_m * s_n * D[n, m] + sum_e S[m, k_e] * x[n, k_e] + bias_m
    D[n, m] = sum_k sign(m, k) * a[n, k]          (exact integers)

with ``a`` the int8 codes of each row of ``x`` (scale ``s_n = max|x_n| / 127``), and the
weight panel's layout (tiles of 64 rows, two rows' 4-bit column groups per byte). With
``table_bits=8`` the table values ``T = Σ_c ±a_c`` of each group are rounded to int8 steps
of ``tmax / 127`` (``tmax`` = the token's largest ``Σ_c |a_c|``) before they are summed.
"""

from __future__ import annotations

import numpy as np

from .sign_packing import unpack_bits_ref
from .spmm import csr_to_dense_ref

TILE_ROWS = 64
GROUP = 4
TILE_BYTES = 32
TINY_AMAX = np.float32(1e-36)


def panel_slot_ref(r: int) -> tuple[int, bool]:
    """``(byte, high nibble)`` of row ``r`` (0..63) of a tile in its group's 32 bytes."""
    i, p, parity, lane = r // 32, (r // 16) % 2, (r // 8) % 2, r % 8
    j = 2 * lane + parity
    byte = 8 * p + j if j < 8 else 16 + 8 * p + (j - 8)
    return byte, i == 1


def pack_panel_ref(w: np.ndarray, k: int) -> np.ndarray:
    """uint8 ``[ceil(M/64), ceil(k/4), 32]``: the panel of pack_signs rows ``w``."""
    bits = unpack_bits_ref(w, k)  # 1 = negative
    m = bits.shape[0]
    tiles, groups = -(-m // TILE_ROWS), -(-k // GROUP)
    padded = np.zeros((tiles * TILE_ROWS, groups * GROUP), dtype=np.int64)
    padded[:m, :k] = bits
    nibbles = (padded.reshape(tiles * TILE_ROWS, groups, GROUP) << np.arange(GROUP)).sum(axis=2)
    panel = np.zeros((tiles, groups, TILE_BYTES), dtype=np.int64)
    for r in range(TILE_ROWS):
        byte, high = panel_slot_ref(r)
        panel[:, :, byte] |= nibbles[r::TILE_ROWS] << (4 if high else 0)
    return panel.astype(np.uint8)


def quantize_rows_ref(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(codes int64 [N, K], scales float32 [N])``, in float32 exactly as the kernels
    compute them: ``s = amax / 127``, ``codes = clip(rint(x * (127 / amax)), -127, 127)``;
    rows with inf/NaN get ``s = NaN`` and rows with ``amax < 1e-36`` ``s = 0`` (codes 0)."""
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    codes = np.zeros(x.shape, dtype=np.int64)
    scales = np.zeros(n, dtype=np.float32)
    for i in range(n):
        row = x[i]
        if not np.all(np.isfinite(row)):
            scales[i] = np.float32(np.nan)
            continue
        amax = np.float32(np.abs(row).max()) if row.size else np.float32(0)
        if not amax >= TINY_AMAX:
            continue
        scales[i] = amax / np.float32(127)
        inverse = np.float32(127) / amax
        codes[i] = np.clip(np.rint(row * inverse), -127, 127).astype(np.int64)
    return codes, scales


def _sign_patterns() -> np.ndarray:
    """int64 ``[16, 4]``: the signs of the 4 columns in table entry ``i`` (bit c set: -1)."""
    return 1 - 2 * ((np.arange(16)[:, None] >> np.arange(GROUP)) & 1)


def int8_tables_ref(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(tables int64 [N, Q, 16], table scales float32 [N])`` of ``table_bits=8``: entry
    ``i`` of group ``q`` is ``rint(float32(T) * float32(127 / tmax))``, ``T = Σ_c sign(i, c)
    a[4q + c]``, and the scale is ``float32(tmax) / 127`` (0 when ``tmax`` is 0)."""
    n, k = codes.shape
    groups = -(-k // GROUP)
    padded = np.zeros((n, groups * GROUP), dtype=np.int64)
    padded[:, :k] = codes
    a = padded.reshape(n, groups, GROUP)
    t = a @ _sign_patterns().T  # [N, Q, 16]
    tmax = np.abs(a).sum(axis=2).max(axis=1) if groups else np.zeros(n, dtype=np.int64)
    tf = tmax.astype(np.float32)
    with np.errstate(divide="ignore"):
        inverse = np.where(tmax > 0, np.float32(127) / tf, np.float32(0)).astype(np.float32)
    tables = np.rint(t.astype(np.float32) * inverse[:, None, None]).astype(np.int64)
    scales = np.where(tmax > 0, tf / np.float32(127), np.float32(0)).astype(np.float32)
    return tables, scales


def linear_1xf_parts_ref(x, w, alpha, csr=None, table_bits=16):
    """``(main float32 [N, M], sparse float64 [N, M])``: ``float32(D) * (alpha * s)`` as
    the kernels round it, and the sparse correction ``x @ S.T`` in float64 (``csr`` is
    ``(indptr, indices, values)`` or None)."""
    x = np.asarray(x, dtype=np.float32)
    k = x.shape[1]
    bits = unpack_bits_ref(w, k)
    signs = 1 - 2 * bits
    codes, scales = quantize_rows_ref(x)
    if table_bits == 8:
        tables, table_scales = int8_tables_ref(codes)
        groups = tables.shape[1]
        padded = np.zeros((bits.shape[0], groups * GROUP), dtype=np.int64)
        padded[:, :k] = bits
        nibbles = (padded.reshape(-1, groups, GROUP) << np.arange(GROUP)).sum(axis=2)  # [M, Q]
        d = tables[:, np.arange(groups)[None, :], nibbles].sum(axis=2)  # [N, M]
        scales = scales * table_scales
    else:
        d = codes @ signs.T  # exact int64 [N, M]
    alpha = np.asarray(alpha, dtype=np.float32)
    factor = alpha[None, :] * scales[:, None]  # float32, alpha_m * s_n
    with np.errstate(invalid="ignore"):
        main = d.astype(np.float32) * factor
    m = signs.shape[0]
    sparse = np.zeros((x.shape[0], m))
    if csr is not None:
        dense = csr_to_dense_ref(*csr, k)
        with np.errstate(invalid="ignore", over="ignore"):
            sparse = x.astype(np.float64) @ dense.T
    return main.astype(np.float32), sparse


def linear_1xf_ref(x, w, alpha, csr=None, bias=None, table_bits=16) -> np.ndarray:
    """float64 ``[N, M]``, the layer's output (see the module docstring)."""
    main, sparse = linear_1xf_parts_ref(x, w, alpha, csr, table_bits)
    y = main.astype(np.float64) + sparse
    if bias is not None:
        y = y + np.asarray(bias, np.float64)[None, :]
    return y
