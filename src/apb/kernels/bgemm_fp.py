"""Binary weights x full-precision activations (weight-only binarization).

With the weights packed by :func:`~apb.kernels.pack_signs` (bit 1 means -1)::

    out[m, n] = sum_j s_w(m, j) * x[n, j],    s_w(m, j) = +1 (bit 0) or -1 (bit 1)

No weight value is ever multiplied: each term is ``x`` or ``-x`` (sign-select
accumulation, docs/design.md §2), summed in float32. This is ``B ⊗ x̂`` of ``Ŵ = α·B + S`` for a
layer whose activations stay in full precision, e.g. a transformer Linear.
"""

from __future__ import annotations

from typing import Any

from apb.kernels._arrays import check_matrix, like_input
from apb.kernels._ext import extension
from apb.kernels.sign_packing import words_for


def bgemm_1xf(w: Any, x: Any) -> Any:
    """``float32 [M, N]``: every packed weight row against every activation row.

    Args:
        w: packed signs, numpy ``uint64`` array or ``torch.uint64`` CPU tensor
            ``[M, ceil(K/64)]``, C-contiguous (the layout of ``pack_signs``; bits past K
            are ignored).
        x: activations, float32 ``[N, K]``, C-contiguous (numpy or CPU torch).

    Returns:
        ``out[m, n] = sum_j s_w(m, j) * x[n, j]`` as float32 ``[M, N]``, of the same kind
        as ``x`` (numpy array or torch tensor). The float32 sum is taken in an order of
        the kernel's choosing, so it agrees with an exact sum to within
        ``~K * 2^-24 * sum_j |x[n, j]|``.

    Raises:
        TypeError: wrong type or dtype. ValueError: wrong rank, not contiguous, not on
        CPU, or ``w`` does not have ``ceil(K/64)`` words per row.
    """
    w = check_matrix(w, fn="bgemm_1xf", arg="w", dtype="uint64")
    x = check_matrix(x, fn="bgemm_1xf", arg="x", dtype="float32")
    k = x.shape[1]
    words = words_for(k)
    if w.shape[1] != words:
        raise ValueError(
            f"bgemm_1xf: w has {w.shape[1]} words per row, but x has K={k} columns, which "
            f"need ceil(K/64)={words}; pack the weights with pack_signs(weight.reshape(M, K))"
        )
    return like_input(extension().bgemm_1xf(w, x), x)
