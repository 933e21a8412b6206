"""The popcount roofline: what one core's XOR + popcount does on L1-resident data.

Benchmarks quote the bitwise GEMMs as a fraction of this number (docs/design.md §8). One bit-op is
one bit of each operand XORed and counted, so a binary GEMM of shape (M, K, N) does
``M·K·N`` bit-ops per 1-bit plane of activations.

The limit is the best of several loops with the active instruction set (see
``csrc/roofline.h``): on AVX2 the plain nibble lookup, Harley-Seal carry-save
accumulation, and the GEMM microkernel itself on operands in L1 (``tiled``, which reuses
each loaded word across a register tile as a GEMM can); on AVX-512 VPOPCNTQ; on scalar
POPCNT. Taking the best keeps "% of roofline" honest: a kernel faster than one loop
would otherwise read as more than the core can do.
"""

from __future__ import annotations

from apb.kernels._ext import extension


def roofline_methods() -> list[str]:
    """Names of the roofline loops the active ISA runs."""
    return list(extension().roofline_methods())


def xor_popcount_rooflines(
    words: int = 1024, seconds: float = 0.5, trials: int = 100
) -> dict[str, float]:
    """G bit-ops/s of each roofline loop of the active ISA on one thread, the best of
    ``trials`` short trials each (a limit is what the core can do; other load on the
    machine only lowers a trial, and short ones are more often left alone). Trials of
    the methods alternate, so that a busy spell of the machine hits them alike.

    ``words`` uint64 per operand (two operands of 8 KiB by default, in L1; ``tiled``
    needs at least 1024); the trials together take about ``seconds``.
    """
    if not isinstance(words, int) or words <= 0 or words % 32:
        raise ValueError(f"words must be a positive multiple of 32, got {words!r}")
    if not seconds > 0 or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"need seconds > 0 and trials >= 1, got {seconds!r}, {trials!r}")
    ext = extension()
    methods = roofline_methods()
    budget = seconds / len(methods) / trials
    repeats = {}
    for method in methods:
        n = 16
        while True:  # calibrate: grow until one trial takes a measurable share of the budget
            elapsed, _, _ = ext.xor_popcount_roofline(words, n, method)
            if elapsed >= budget / 4 or n >= 1 << 30:
                break
            n *= 4
        repeats[method] = n
    rates = dict.fromkeys(methods, 0.0)
    for _ in range(trials):
        for method in methods:
            elapsed, bit_ops, _ = ext.xor_popcount_roofline(words, repeats[method], method)
            rates[method] = max(rates[method], bit_ops / elapsed / 1e9)
    return rates


def xor_popcount_roofline(words: int = 1024, seconds: float = 0.5, trials: int = 100) -> float:
    """The roofline: the best G bit-ops/s over :func:`xor_popcount_rooflines`."""
    return max(xor_popcount_rooflines(words, seconds, trials).values())
