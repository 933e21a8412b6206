r"""A whole binary Linear layer with full-precision inputs, fast: ``linear_1xf``.

For a packed layer ``Ŵ = α·B + S`` (docs/design.md §2) and float32 inputs ``x [N, K]``::

    y[n, m] = α_m · s_n · Σ_k B[m, k] · a[n, k]  +  Σ_k S[m, k] · x[n, k]  +  bias_m

``a[n]`` are the int8 codes of row ``n`` of ``x`` (symmetric, per row:
``s_n = max|x[n]| / 127``, ``a = clip(rint(x / s_n), -127, 127)``, rounded to nearest
even); that quantization is the only approximation. The binary product is computed
exactly in integers, by table lookup over groups of 4 inputs (T-MAC), and the sparse
correction ``S`` (the full-precision weights, CSR) multiplies ``x`` itself, in float32.
The output is ``[N, M]``, the layout of ``torch.nn.functional.linear``.

The weights are first repacked once per layer by :func:`linear_1xf_pack` into a panel
(tiles of 64 rows; per tile and group of 4 columns, 32 bytes of 4-bit indices), which
every instruction set reads; the layer keeps it beside (or instead of) its sign bits.

Compared with :func:`apb.kernels.bgemm_1xf` (exact float sign-select, ``[M, N]``), this is
the fast path for transformer Linear layers; the int8 codes cost about as much accuracy
as PyTorch's dynamic int8 quantization of activations (``docs/performance.md``).
"""

from __future__ import annotations

from typing import Any

from apb.kernels._arrays import as_int, check_array, check_matrix, like_input
from apb.kernels._ext import extension
from apb.kernels.sign_packing import words_for
from apb.kernels.spmm import INDEX_DTYPES, INDPTR_DTYPES, VALUE_DTYPES

TILE_ROWS = 64
"""Rows of weights per panel tile."""

GROUP = 4
"""Inputs per table lookup (one 4-bit index per weight row)."""

TILE_BYTES = 32
"""Bytes per tile and group: 64 rows' 4-bit indices."""


def panel_shape(out_features: int, in_features: int) -> tuple[int, int, int]:
    """Shape of the panel of an ``out_features x in_features`` weight matrix:
    ``(ceil(M/64), ceil(K/4), 32)``."""
    return (-(-out_features // TILE_ROWS), -(-in_features // GROUP), TILE_BYTES)


def linear_1xf_pack(sign_bits: Any, in_features: int) -> Any:
    """The weight panel ``uint8 [ceil(M/64), ceil(K/4), 32]`` of packed sign rows.

    Args:
        sign_bits: uint64 ``[M, ceil(K/64)]``, C-contiguous, the layout of
            :func:`~apb.kernels.pack_signs` (bit 1 = weight −1; bits past K ignored).
        in_features: K.

    Returns:
        The panel, of the same kind as ``sign_bits`` (numpy array or torch tensor).

    Raises:
        TypeError: wrong type or dtype. ValueError: wrong rank, layout, or words per row.
    """
    fn = "linear_1xf_pack"
    k = as_int(in_features, fn=fn, arg="in_features", meaning="K, the inputs per row")
    if k < 0:
        raise ValueError(f"{fn}: in_features must be >= 0, got {k}")
    sign_bits = check_matrix(sign_bits, fn=fn, arg="sign_bits", dtype="uint64")
    if sign_bits.shape[1] != words_for(k):
        raise ValueError(
            f"{fn}: sign_bits has {sign_bits.shape[1]} words per row, but in_features={k} "
            f"needs ceil(K/64)={words_for(k)}"
        )
    return like_input(extension().linear_1xf_pack(sign_bits, k), sign_bits)


def linear_1xf(
    x: Any,
    panel: Any,
    alpha: Any,
    out_features: int,
    indptr: Any = None,
    indices: Any = None,
    values: Any = None,
    bias: Any = None,
    table_bits: int = 16,
) -> Any:
    """``float32 [N, M]``: the layer ``α·B + S`` (plus bias) applied to every row of ``x``.

    Args:
        x: float32 ``[N, K]``.
        panel: uint8 ``[ceil(M/64), ceil(K/4), 32]`` from :func:`linear_1xf_pack`.
        alpha: float32 ``[1]`` (one α for the layer) or ``[M]`` (one per output).
        out_features: M.
        indptr, indices, values: the sparse correction ``S`` as CSR (all three or none):
            indptr ``[M + 1]`` uint8/uint16/int32/int64, indices ``[nnz]``
            uint8/uint16/int32 (each ``< K``), values ``[nnz]`` float32 or float16.
        bias: float32 ``[M]`` or None.
        table_bits: 16 (default): exact tables, ``D`` is the exact integer product of the
            signs with the codes. 8: each token's table values (sums of 4 signed codes)
            are rounded to int8 steps of ``max_q Σ|a| / 127`` and the token's scale is
            multiplied by that step (T-MAC's int8 tables): one more rounding, for half the
            lookup work on AVX-512 VBMI + VNNI (the same results, no faster, elsewhere).

    All arrays are numpy arrays or CPU torch tensors, C-contiguous; the result is of the
    kind of ``x``. The binary part is ``float32(D) * (α_m * s_n)`` with ``D`` the exact
    integer product of the signs with the int8 codes, so it is identical on every
    instruction set and thread count; the sparse sum is float32 in an order of the
    kernel's choosing.

    Raises:
        TypeError: wrong type or dtype. ValueError: wrong rank, shape or layout, not on
        CPU, a panel that does not fit ``(M, K)``, or an invalid CSR structure (the
        extension checks every index before reading through it).
    """
    fn = "linear_1xf"
    m = as_int(out_features, fn=fn, arg="out_features", meaning="M, the outputs")
    if m < 0:
        raise ValueError(f"{fn}: out_features must be >= 0, got {m}")
    bits = as_int(table_bits, fn=fn, arg="table_bits", meaning="16 or 8")
    if bits not in (16, 8):
        raise ValueError(f"{fn}: table_bits must be 16 (exact tables) or 8 (int8 tables), got {bits}")
    x = check_matrix(x, fn=fn, arg="x", dtype="float32")
    panel = check_array(panel, fn=fn, arg="panel", dtypes="uint8", shape="[tiles, groups, 32]")
    k = x.shape[1]
    expected = panel_shape(m, k)
    if tuple(panel.shape) != expected:
        raise ValueError(
            f"{fn}: panel has shape {tuple(panel.shape)}, but M={m} outputs and K={k} inputs "
            f"need (ceil(M/64), ceil(K/4), 32)={expected}; build it with "
            f"linear_1xf_pack(sign_bits, {k})"
        )
    alpha = check_array(alpha, fn=fn, arg="alpha", dtypes="float32", shape="[1 or M]")
    if alpha.shape[0] not in (1, m):
        raise ValueError(
            f"{fn}: alpha has shape {tuple(alpha.shape)}, expected (1,) (per layer) or ({m},) "
            "(per output)"
        )
    if bias is not None:
        bias = check_array(bias, fn=fn, arg="bias", dtypes="float32", shape="[M]")
        if bias.shape[0] != m:
            raise ValueError(f"{fn}: bias has shape {tuple(bias.shape)}, expected ({m},)")
    given = [a is not None for a in (indptr, indices, values)]
    if any(given) and not all(given):
        raise ValueError(f"{fn}: give all of indptr, indices and values (the sparse part), or none")
    if all(given):
        indptr = check_array(indptr, fn=fn, arg="indptr", dtypes=INDPTR_DTYPES, shape="[M + 1]")
        indices = check_array(indices, fn=fn, arg="indices", dtypes=INDEX_DTYPES, shape="[nnz]")
        values = check_array(values, fn=fn, arg="values", dtypes=VALUE_DTYPES, shape="[nnz]")
        if indptr.shape[0] != m + 1:
            raise ValueError(
                f"{fn}: indptr has {indptr.shape[0]} entries, but M={m} outputs need "
                f"M+1={m + 1}"
            )
        if values.shape[0] != indices.shape[0]:
            raise ValueError(
                f"{fn}: indices and values must have the same length (one per nonzero), got "
                f"{indices.shape[0]} and {values.shape[0]}"
            )
    out = extension().linear_1xf(x, panel, m, alpha, indptr, indices, values, bias, bits)
    return like_input(out, x)


def linear_1xf_lookup_rate(trials: int = 20, table_bits: int = 16) -> float:
    """One core's table-lookup rate of :func:`linear_1xf`'s microkernel on data in L1,
    with the active instruction set and ``table_bits``, in G lookups/s (a lookup is one
    weight row against 4 inputs of one token: 4 multiply-adds), the best of ``trials``:
    the limit the kernel is quoted against for large N."""
    fn = "linear_1xf_lookup_rate"
    n = as_int(trials, fn=fn, arg="trials", meaning="timed runs")
    bits = as_int(table_bits, fn=fn, arg="table_bits", meaning="16 or 8")
    if n < 1 or bits not in (16, 8):
        raise ValueError(f"{fn}: need trials >= 1 and table_bits 16 or 8, got {n}, {bits}")
    return float(extension().linear_1xf_lookup_rate(n, bits))


def linear_1xf_kernel(table_bits: int = 16) -> str:
    """The microkernel :func:`linear_1xf` runs with the active instruction set:
    ``"scalar"``, ``"lut16"`` (AVX2 byte shuffles; AVX-512 without VBMI + VNNI),
    ``"vbmi"`` or ``"vbmi8"`` (AVX-512 VBMI + VNNI, exact or int8 tables).
    ``APB_LINEAR_1XF_KERNEL=lut16`` makes AVX-512 CPUs use ``lut16`` (for comparisons)."""
    bits = as_int(table_bits, fn="linear_1xf_kernel", arg="table_bits", meaning="16 or 8")
    if bits not in (16, 8):
        raise ValueError(f"linear_1xf_kernel: table_bits must be 16 or 8, got {bits}")
    return str(extension().linear_1xf_kernel_name(bits))
