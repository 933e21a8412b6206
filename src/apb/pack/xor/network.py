r"""The fixed random XOR-gate network: ``n_out`` rows of ``n_in`` bits over GF(2).

Output bit ``i`` of a block is :math:`y_i = \bigoplus_j G_{ij} x_j`, the parity of row ``i``
AND the block's ``n_in`` stored bits. The rows come from a seed: the raw 64-bit stream of
numpy's PCG64 bit generator (a stream numpy keeps stable across versions), each word
masked to ``n_in`` bits, zero rows skipped (a zero row would make its output bit always
0). A file records the seed, the shape and a fingerprint of the rows, so a decoder that
generates another network refuses instead of returning other weights.
"""

from __future__ import annotations

import hashlib
import operator
from functools import cached_property

import numpy as np

from ...kernels.xor_gate import check_shape, xor_gate_table

DEFAULT_SEED = 0
_MAX_SEED = 2**63 - 1


def _as_int(value, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, got {type(value).__name__}") from None


class XorNetwork:
    """A seeded random XOR network of ``n_in`` inputs and ``n_out`` outputs.

    >>> net = XorNetwork(n_in=64, n_out=656, seed=0)
    >>> net.rows.shape, net.fingerprint[:8]
    """

    def __init__(self, n_in: int, n_out: int, seed: int = DEFAULT_SEED):
        self.n_in = _as_int(n_in, "n_in")
        self.n_out = _as_int(n_out, "n_out")
        self.seed = _as_int(seed, "seed")
        check_shape(self.n_out, self.n_in, fn="XorNetwork")
        if not 0 <= self.seed <= _MAX_SEED:
            raise ValueError(f"XorNetwork: seed must lie in [0, 2^63 - 1], got {self.seed}")
        self.rows = _network_rows(self.seed, self.n_out, self.n_in)
        self.rows.flags.writeable = False

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the shape, the seed and the rows: what a file records."""
        h = hashlib.sha256(f"apb-xor-network:{self.n_in}:{self.n_out}:{self.seed}:".encode())
        h.update(self.rows.astype("<u8").tobytes())
        return h.hexdigest()

    @cached_property
    def table(self) -> np.ndarray:
        """The decoder's table (:func:`apb.kernels.xor_gate.xor_gate_table`), built once."""
        table = xor_gate_table(np.ascontiguousarray(self.rows), self.n_in)
        table.flags.writeable = False
        return table

    def matrix(self) -> np.ndarray:
        """``G`` as uint8 0/1 ``[n_out, n_in]`` (for references and tests)."""
        return ((self.rows[:, None] >> np.arange(self.n_in, dtype=np.uint64)) & 1).astype(
            np.uint8)

    def describe(self) -> dict:
        return {"seed": self.seed, "n_in": self.n_in, "n_out": self.n_out,
                "network": self.fingerprint}

    def __repr__(self) -> str:
        return f"XorNetwork(n_in={self.n_in}, n_out={self.n_out}, seed={self.seed})"


def _network_rows(seed: int, n_out: int, n_in: int) -> np.ndarray:
    generator = np.random.PCG64(seed)
    mask = np.uint64((1 << n_in) - 1)
    rows = np.zeros(0, dtype=np.uint64)
    while rows.shape[0] < n_out:
        raw = generator.random_raw(n_out) & mask
        rows = np.concatenate([rows, raw[raw != 0]])
    return np.ascontiguousarray(rows[:n_out].astype(np.uint64))
