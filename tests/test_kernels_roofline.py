"""The roofline loops compute what numpy computes on the same operands, under every ISA
and every method; the Python wrapper takes the best method and refuses bad arguments."""

import numpy as np
import pytest

import apb._C as ext
from apb.kernels import (
    available_isas,
    roofline_methods,
    use_isa,
    xor_popcount_roofline,
    xor_popcount_rooflines,
)

METHODS = {"scalar": ["popcnt"], "avx2": ["lookup", "harley_seal", "tiled"], "avx512": ["vpopcntq"]}


def _popcount(words: np.ndarray) -> int:
    return int(np.unpackbits(words.view(np.uint8)).sum())


def _expected(method: str, words: int) -> tuple[int, int]:
    """(checksum, bit-ops) of one pass, from the definition in csrc/roofline.h."""
    a, b = ext.roofline_operands(words)
    if method == "tiled":
        rows_a, rows_b = a[: 16 * 4].reshape(16, 4), b[: 256 * 4].reshape(256, 4)
        pairs = rows_a[:, None, :] ^ rows_b[None, :, :]
        pairs[..., 3] &= np.uint64(2**60 - 1)  # 252 columns: the last 4 bits do not count
        return _popcount(pairs), 16 * 256 * 252
    return _popcount(a ^ b), 64 * words


@pytest.mark.parametrize("isa", available_isas())
@pytest.mark.parametrize("words", [32, 64, 96, 512, 1024, 32 * 31 + 32 * 33])
def test_every_method_counts_what_numpy_counts(isa: str, words: int) -> None:
    with use_isa(isa):
        methods = roofline_methods()
        assert methods == METHODS[isa]
        for method in methods:
            if method == "tiled" and words < 1024:
                with pytest.raises(ValueError, match="tiled needs words >= 1024"):
                    ext.xor_popcount_roofline(words, 1, method)
                continue
            checksum, bit_ops = _expected(method, words)
            _, bits3, three = ext.xor_popcount_roofline(words, 3, method)
            assert (three, bits3) == (3 * checksum, 3 * bit_ops), method


def test_operands_are_fixed_and_mixed() -> None:
    a, b = ext.roofline_operands(64)
    assert np.array_equal(ext.roofline_operands(64), np.stack([a, b]))
    assert 0.3 < _popcount(a ^ b) / (64 * 64) < 0.7


def test_rates_are_positive_and_bad_arguments_are_refused() -> None:
    rates = xor_popcount_rooflines(words=1024, seconds=0.01, trials=1)
    assert set(rates) == set(roofline_methods()) and min(rates.values()) > 0
    assert xor_popcount_roofline(words=1024, seconds=0.01, trials=1) > 0
    for words in (0, 33, -32):
        with pytest.raises(ValueError, match="multiple of 32"):
            xor_popcount_rooflines(words=words)
    with pytest.raises(ValueError, match="multiple of 32"):
        ext.xor_popcount_roofline(33, 1, roofline_methods()[0])
    with pytest.raises(ValueError, match="positive"):
        ext.xor_popcount_roofline(64, 0, roofline_methods()[0])
    with pytest.raises(ValueError, match="unknown roofline method"):
        ext.xor_popcount_roofline(64, 1, "fast")
    with use_isa("scalar"), pytest.raises(ValueError, match="no method lookup"):
        ext.xor_popcount_roofline(64, 1, "lookup")
