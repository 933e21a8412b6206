"""Which instruction sets the kernel tests must cover.

A test of an instruction set this CPU lacks is skipped, and loops over
``kernels.available_isas()`` leave it out; on a machine that has it that would hide a
broken build. ``APB_REQUIRE_ISA`` (a comma list such as ``avx512`` or ``avx2,avx512``, or
``all``) turns each skip of a listed instruction set into a failure, and makes
:func:`isas_under_test` fail when one is missing.
"""

from __future__ import annotations

import os

import pytest

from apb import kernels

ENV = "APB_REQUIRE_ISA"


def required_isas() -> tuple[str, ...]:
    """The instruction sets ``APB_REQUIRE_ISA`` lists (unknown names fail the test)."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return ()
    names = kernels.ISA_NAMES if text == "all" else tuple(
        n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in kernels.ISA_NAMES]
    if unknown:
        pytest.fail(f"{ENV}={text!r} names {unknown}; known: {', '.join(kernels.ISA_NAMES)}")
    return names


def require_isa(isa: str) -> None:
    """Skip the calling test when this CPU lacks ``isa``, or fail if ``APB_REQUIRE_ISA``
    lists it."""
    available = kernels.available_isas()
    if isa in available:
        return
    message = f"this CPU lacks {isa} (has {available})"
    if isa in required_isas():
        pytest.fail(f"{message}, but {ENV} requires it")
    pytest.skip(message)


def isas_under_test() -> list[str]:
    """``kernels.available_isas()``, after checking that every required one is there."""
    available = kernels.available_isas()
    missing = [isa for isa in required_isas() if isa not in available]
    if missing:
        pytest.fail(f"this CPU lacks {missing} (has {available}), but {ENV} requires them")
    return available
