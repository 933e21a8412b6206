r"""Direct sparse convolution with a packed layer's epilogue: the ``S ⊗ x̂`` part of
``Ŵ = α·B + S`` (docs/design.md §2) for a convolution, without unfolding ``x̂``::

    out[m, n] = dot_scale[m]·dot[m, n]
              + sparse_scale[m]·Σ_{e in row m} values[e]·x̂(n, indices[e])
              + shift[m]

``x`` is the layer's float32 input ``[B, C, H, W]`` and ``x̂`` its quantized value (the
input the training layer computes with): ``x`` itself (``act_bits=32``), its sign
(``act_bits=1``: ``x < 0 ? −1 : +1``) or ``code·(s/L)`` with the codes of
:func:`~apb.kernels.im2col_pack_codes` (``act_bits`` 2..8, clip scale ``s``). Columns
``j = (c·kh + dy)·kw + dx`` (``weight.reshape(M, -1)`` of a Conv2d weight), positions
``n = (b·OH + oy)·OW + ox``, and ``x̂(n, j)`` the input pixel that tap reads, 0 in the
zero padding. ``dot`` is the binary product ``B ⊗ x̂`` (int32 from the popcount GEMMs,
or float32), and the per-channel vectors carry ``α``, the activation step and a folded
BatchNorm: the whole layer after its binary GEMM, in one pass.

How: ``x̂`` is written once into zero-bordered stride-phase planes, so that every
nonzero is one contiguous AXPY over all output positions (the inner loop of
:func:`~apb.kernels.spmm_csr`), instead of unfolding ``x̂`` into a ``kh·kw`` times larger
matrix first. Each output is a chain of float32 FMAs in CSR order, then
``fma(sparse_scale, acc, fma(dot_scale, dot, shift))``: bit-identical across
instruction sets.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from apb.kernels._arrays import check_array, like_input
from apb.kernels._ext import extension
from apb.kernels.activation_packing import _bits, _conv_geometry, _scale
from apb.kernels.spmm import INDEX_DTYPES, INDPTR_DTYPES, VALUE_DTYPES

ACT_BITS = (32, 1, 2, 3, 4, 5, 6, 7, 8)


def sparse_conv2d(
    x: Any, indptr: Any, indices: Any, values: Any, kernel_size: Any, stride: Any = 1,
    padding: Any = 0, dilation: Any = 1, *, act_bits: int = 32, scale: Any = None,
    dot: Any = None, dot_scale: Any = None, sparse_scale: Any = None, shift: Any = None,
) -> Any:
    """The convolution of the CSR matrix ``S`` (``[M, C·kh·kw]``) with ``x̂``, plus the
    epilogue: float32 ``[M, B·OH·OW]`` (see the module docstring).

    Args:
        x: float32 ``[B, C, H, W]``, C-contiguous (numpy or CPU torch).
        indptr, indices, values: ``S`` as in :func:`~apb.kernels.spmm_csr`, with
            ``K = C·kh·kw`` columns; ``M = len(indptr) − 1``.
        kernel_size, stride, padding, dilation: as for ``torch.nn.Conv2d``.
        act_bits: 32 (``x̂ = x``), 1 (signs) or 2..8 (codes; needs ``scale``).
        scale: the clip scale ``s`` of 2..8-bit codes, finite and > 0 in float32.
        dot: int32 or float32 ``[M, B·OH·OW]`` or None (no binary part).
        dot_scale: float32 ``[M]``, required with ``dot``.
        sparse_scale, shift: float32 ``[M]`` or None (1 and 0).

    Returns:
        float32 ``[M, B·OH·OW]``, of the same kind as ``x``.

    Raises:
        TypeError: wrong type or dtype. ValueError: wrong rank or shape, not contiguous,
        not on CPU, a parameter out of range, a kernel larger than the padded input, or
        an invalid CSR structure (the message names the first offending entry).
    """
    fn = "sparse_conv2d"
    if act_bits not in ACT_BITS:
        raise ValueError(f"{fn}: act_bits must be 32, 1 or 2..8, got {act_bits!r}")
    if 2 <= act_bits <= 8:
        if scale is None:
            raise ValueError(f"{fn}: {act_bits}-bit codes need their clip scale (scale=...)")
        s = _scale(scale, fn=fn)
        _bits(act_bits, fn=fn)
    elif scale is not None:
        raise ValueError(f"{fn}: scale is only used by 2..8-bit codes, not act_bits={act_bits}")
    else:
        s = 1.0
    x, geometry = _conv_geometry(x, fn, kernel_size, stride, padding, dilation)
    indptr = check_array(indptr, fn=fn, arg="indptr", dtypes=INDPTR_DTYPES, shape="[M + 1]")
    indices = check_array(indices, fn=fn, arg="indices", dtypes=INDEX_DTYPES, shape="[nnz]")
    values = check_array(values, fn=fn, arg="values", dtypes=VALUE_DTYPES, shape="[nnz]")
    if indptr.shape[0] < 1:
        raise ValueError(f"{fn}: indptr must have M + 1 >= 1 entries, got none")
    rows = indptr.shape[0] - 1
    if values.shape[0] != indices.shape[0]:
        raise ValueError(
            f"{fn}: indices and values must have the same length (one per nonzero), got "
            f"{indices.shape[0]} and {values.shape[0]}"
        )
    if dot is not None:
        dot = check_array(dot, fn=fn, arg="dot", dtypes=("int32", "float32"), shape="[M, N]")
        if dot_scale is None:
            raise ValueError(f"{fn}: dot needs dot_scale, one float32 per output channel")
    elif dot_scale is not None:
        raise ValueError(f"{fn}: dot_scale is given without dot")
    vectors = {}
    for name, v in (("dot_scale", dot_scale), ("sparse_scale", sparse_scale), ("shift", shift)):
        if v is not None:
            v = check_array(v, fn=fn, arg=name, dtypes="float32", shape="[M]")
            if v.shape[0] != rows:
                raise ValueError(
                    f"{fn}: {name} has {v.shape[0]} values, expected one per output channel "
                    f"({rows}, from len(indptr) − 1)"
                )
        vectors[name] = v
    out = extension().sparse_conv2d(
        x, indptr, indices, values, *geometry, act_bits, s, dot, vectors["dot_scale"],
        vectors["sparse_scale"], vectors["shift"],
    )
    return like_input(np.asarray(out), x)
