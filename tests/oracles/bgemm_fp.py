"""Oracle of bgemm_1xf, binary weights x float activations (:mod:`apb.kernels.bgemm_fp`)."""

from __future__ import annotations

import numpy as np

from .sign_packing import unpack_signs_ref


def bgemm_1xf_ref(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """float64 ``[M, N]``: ``out[m, n] = sum_j s_w(m, j) * x[n, j]`` with ``s_w = -1``
    where bit ``j`` of weight row ``m`` is 1 and ``+1`` where it is 0.

    Computed in float64 from the unpacked signs, so it is the exact sum up to float64
    rounding; the kernel's float32 sums are compared within a summation-error bound.
    """
    x = np.asarray(x)
    signs = unpack_signs_ref(np.asarray(w), x.shape[1]).astype(np.float64)
    return signs @ x.astype(np.float64).T
