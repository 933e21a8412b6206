"""The popcount roofline: what one core's XOR + popcount loop does on L1-resident data.

Benchmarks quote the bitwise GEMMs as a fraction of this number (DESIGN §8). One bit-op is
one bit of each operand XORed and counted, so a binary GEMM of shape (M, K, N) does
``M·K·N`` bit-ops per 1-bit plane of activations.
"""

from __future__ import annotations

from apb.kernels._ext import extension


def xor_popcount_roofline(
    words: int = 512, seconds: float = 0.2, trials: int = 5
) -> float:
    """Best G bit-ops/s of the active ISA's XOR+popcount loop on one thread over ``trials``
    (the best, not the median: a limit is what the core can do, and other load only
    lowers a trial).

    ``words`` uint64 per operand (two operands of 4 KiB by default, in L1); each trial runs
    long enough to take about ``seconds / trials``.
    """
    if not isinstance(words, int) or words <= 0 or words % 32:
        raise ValueError(f"words must be a positive multiple of 32, got {words!r}")
    if not seconds > 0 or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"need seconds > 0 and trials >= 1, got {seconds!r}, {trials!r}")
    ext = extension()
    repeats = 64
    while True:  # calibrate: grow until one trial takes a measurable share of the budget
        elapsed, _, _ = ext.xor_popcount_roofline(words, repeats)
        if elapsed >= seconds / trials / 4 or repeats >= 1 << 30:
            break
        repeats *= 4
    rates = []
    for _ in range(trials):
        elapsed, bit_ops, _ = ext.xor_popcount_roofline(words, repeats)
        rates.append(bit_ops / elapsed / 1e9)
    return max(rates)
