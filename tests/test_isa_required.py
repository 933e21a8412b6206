"""APB_REQUIRE_ISA turns a skipped instruction set into a failure (tests/_isa.py), so a
machine that has AVX-512 cannot silently run its kernel tests without it."""

from __future__ import annotations

import pytest

import _isa
from apb import kernels
from apb.kernels.runtime import MAX_THREADS


def test_required_instruction_sets_are_available():
    """Under APB_REQUIRE_ISA=avx512 (say), fails on a CPU or build without it."""
    assert set(_isa.required_isas()) <= set(_isa.isas_under_test())


def test_a_missing_required_isa_fails_instead_of_skipping(monkeypatch):
    monkeypatch.setattr(kernels, "available_isas", lambda: ["scalar"])
    monkeypatch.delenv(_isa.ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="lacks avx512"):
        _isa.require_isa("avx512")
    assert _isa.isas_under_test() == ["scalar"]
    monkeypatch.setenv(_isa.ENV, "avx2, avx512")
    assert _isa.required_isas() == ("avx2", "avx512")
    with pytest.raises(pytest.fail.Exception, match="APB_REQUIRE_ISA requires it"):
        _isa.require_isa("avx512")
    with pytest.raises(pytest.fail.Exception, match=r"lacks \['avx2', 'avx512'\]"):
        _isa.isas_under_test()
    _isa.require_isa("scalar")  # present: neither
    monkeypatch.setenv(_isa.ENV, "all")
    assert _isa.required_isas() == kernels.ISA_NAMES
    monkeypatch.setenv(_isa.ENV, "sse9")
    with pytest.raises(pytest.fail.Exception, match="names \\['sse9'\\]"):
        _isa.required_isas()


def test_set_num_threads_rejects_absurd_counts_with_one_clear_error():
    for n, match in ((2**31, "at most 65536 .*got 2147483648"), (0, ">= 1, got 0"),
                     (-1, "got -1")):
        with pytest.raises(ValueError, match=match):
            kernels.set_num_threads(n)
    with pytest.raises(TypeError, match="int"):
        kernels.set_num_threads(2.0)
    assert MAX_THREADS == 65536
