"""The roofline loop computes what the scalar reference computes, under every ISA."""

import pytest

import apb._C as ext
from apb.kernels import available_isas, use_isa, xor_popcount_roofline


@pytest.mark.parametrize("isa", available_isas())
def test_checksum_matches_scalar_and_scales_with_repeats(isa):
    with use_isa("scalar"):
        _, bits1, reference = ext.xor_popcount_roofline(64, 1)
    with use_isa(isa):
        _, bits3, three = ext.xor_popcount_roofline(64, 3)
    assert bits1 == 64 * 64 and bits3 == 3 * 64 * 64
    assert three == 3 * reference
    assert 0 < reference < 64 * 64


def test_rate_is_positive_and_bad_arguments_are_refused():
    assert xor_popcount_roofline(words=64, seconds=0.01, trials=1) > 0
    for words in (0, 33, -32):
        with pytest.raises(ValueError, match="multiple of 32"):
            xor_popcount_roofline(words=words)
    with pytest.raises(ValueError):
        ext.xor_popcount_roofline(33, 1)
    with pytest.raises(ValueError):
        ext.xor_popcount_roofline(64, 0)
