"""pack_signs / unpack_signs against the numpy reference, under every instruction set
this CPU has, plus the argument checks and the ISA selection."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import apb
from _isa import require_isa
from apb import kernels
from oracles.sign_packing import pack_signs_ref, unpack_signs_ref

# Bit patterns at the edges of the `x < 0` rule.
EDGE_BITS = np.array(
    [
        0x00000000,  # +0.0 -> 0
        0x80000000,  # -0.0 -> 0
        0x00000001,  # +denorm_min -> 0
        0x80000001,  # -denorm_min -> 1
        0x807FFFFF,  # largest negative denormal -> 1
        0x3F800000,  # 1.0 -> 0
        0xBF800000,  # -1.0 -> 1
        0x7F800000,  # +inf -> 0
        0xFF800000,  # -inf -> 1
        0x7FC00000,  # +qNaN -> 0
        0xFFC00000,  # -qNaN -> 0
        0xFF800001,  # -sNaN, the first bit pattern above -inf -> 0
        0xFFFFFFFF,  # -NaN, largest payload -> 0
        0x7F800001,  # +sNaN -> 0
    ],
    dtype=np.uint32,
)

# Column counts around every word boundary that matters, plus one large K.
EDGE_K = [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 200, 4096 + 17]


def _require(isa: str) -> None:
    require_isa(isa)  # a skip, or a failure under APB_REQUIRE_ISA


float_bits = st.one_of(
    st.sampled_from(EDGE_BITS.tolist()),
    st.integers(0, 2**32 - 1),
    st.floats(width=32).map(lambda v: int(np.array(v, dtype=np.float32).view(np.uint32))),
)


@st.composite
def float_matrices(draw: st.DrawFn) -> np.ndarray:
    rows = draw(st.integers(0, 6))
    cols = draw(st.one_of(st.integers(0, 260), st.sampled_from(EDGE_K)))
    bits = draw(arrays(np.uint32, (rows, cols), elements=float_bits))
    return bits.view(np.float32)


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@settings(max_examples=150, deadline=None)
@given(x=float_matrices())
def test_pack_signs_matches_reference(isa: str, x: np.ndarray) -> None:
    _require(isa)
    with kernels.use_isa(isa):
        packed = kernels.pack_signs(x)
    assert packed.dtype == np.uint64
    assert packed.shape == (x.shape[0], -(-x.shape[1] // 64))
    np.testing.assert_array_equal(packed, pack_signs_ref(x))


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@pytest.mark.parametrize("k", EDGE_K)
@pytest.mark.parametrize("rows", [0, 1, 3])
def test_pack_signs_every_remainder(isa: str, k: int, rows: int) -> None:
    _require(isa)
    rng = np.random.default_rng(k * 7 + rows)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    x.ravel()[::5] = 0.0  # exact zeros must pack as +1
    with kernels.use_isa(isa):
        packed = kernels.pack_signs(x)
    np.testing.assert_array_equal(packed, pack_signs_ref(x))
    if k % 64:
        # Padding bits past K are zero.
        assert not np.any(packed[:, -1] >> np.uint64(k % 64))
    np.testing.assert_array_equal(kernels.unpack_signs(packed, k), np.where(x < 0, -1.0, 1.0))


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
def test_pack_signs_edge_values_hand_computed(isa: str) -> None:
    _require(isa)
    x = EDGE_BITS.view(np.float32).reshape(1, -1)
    expected_negative = [3, 4, 6, 8]  # indices in EDGE_BITS: -denorm, -denorm, -1, -inf
    with kernels.use_isa(isa):
        packed = kernels.pack_signs(x)
    assert int(packed[0, 0]) == sum(1 << i for i in expected_negative)


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@pytest.mark.parametrize("threads", [1, 2])
def test_pack_signs_threaded_large(isa: str, threads: int) -> None:
    _require(isa)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((97, 3 * 64 * 17 + 5)).astype(np.float32)  # enough for a team
    previous = kernels.get_num_threads()
    kernels.set_num_threads(threads)
    try:
        with kernels.use_isa(isa):
            packed = kernels.pack_signs(x)
    finally:
        kernels.set_num_threads(previous)
    np.testing.assert_array_equal(packed, pack_signs_ref(x))


@settings(max_examples=100, deadline=None)
@given(
    rows=st.integers(0, 5),
    k=st.one_of(st.integers(0, 200), st.sampled_from(EDGE_K)),
    data=st.data(),
)
def test_unpack_signs_matches_reference(rows: int, k: int, data: st.DataObject) -> None:
    words = -(-k // 64)
    bits = data.draw(arrays(np.uint64, (rows, words), elements=st.integers(0, 2**64 - 1)))
    out = kernels.unpack_signs(bits, k)
    assert out.dtype == np.float32 and out.shape == (rows, k)
    np.testing.assert_array_equal(out, unpack_signs_ref(bits, k))


def test_torch_in_torch_out() -> None:
    x = torch.randn(5, 100)
    packed = kernels.pack_signs(x)
    assert isinstance(packed, torch.Tensor) and packed.dtype == torch.uint64
    np.testing.assert_array_equal(packed.numpy(), pack_signs_ref(x.numpy()))
    signs = kernels.unpack_signs(packed, 100)
    assert isinstance(signs, torch.Tensor) and signs.dtype == torch.float32
    torch.testing.assert_close(signs, torch.where(x < 0, -1.0, 1.0))


def test_torch_input_requiring_grad_and_row_slices() -> None:
    w = torch.randn(6, 70, requires_grad=True)
    np.testing.assert_array_equal(kernels.pack_signs(w).numpy(), pack_signs_ref(w.detach().numpy()))
    rows = torch.randn(10, 70)[2:5]  # contiguous view with an offset
    np.testing.assert_array_equal(kernels.pack_signs(rows).numpy(), pack_signs_ref(rows.numpy()))


def test_read_only_numpy_input() -> None:
    x = np.array([[-1.0, 2.0, -3.0]], dtype=np.float32)
    x.flags.writeable = False
    assert int(kernels.pack_signs(x)[0, 0]) == 0b101


# ---- bad input: clear Python exceptions, from the wrappers and from apb._C itself ---

BAD_PACK_INPUTS = [
    pytest.param(np.zeros((2, 3), dtype=np.float64), TypeError, "float32", id="float64"),
    pytest.param(np.zeros((2, 3), dtype=np.int32), TypeError, "float32", id="int32"),
    pytest.param(np.zeros(3, dtype=np.float32), ValueError, "2-D", id="1-D"),
    pytest.param(np.zeros((2, 3, 4), dtype=np.float32), ValueError, "2-D", id="3-D"),
    pytest.param(np.zeros((4, 6), dtype=np.float32).T, ValueError, "contiguous", id="transposed"),
    pytest.param(
        np.zeros((4, 6), dtype=np.float32)[:, ::2], ValueError, "contiguous", id="strided"
    ),
    pytest.param(torch.zeros(2, 3, dtype=torch.float64), TypeError, "float32", id="torch-f64"),
    pytest.param(torch.zeros(4, 6).t(), ValueError, "contiguous", id="torch-transposed"),
    pytest.param(torch.zeros(2, 3, 4), ValueError, "2-D", id="torch-3-D"),
]


@pytest.mark.parametrize(("x", "error", "words"), BAD_PACK_INPUTS)
def test_pack_signs_rejects(x: object, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        kernels.pack_signs(x)


@pytest.mark.parametrize(("x", "error", "words"), BAD_PACK_INPUTS)
def test_extension_rejects_without_the_wrapper(
    x: object, error: type[Exception], words: str
) -> None:
    from apb import _C

    with pytest.raises(error, match=words):
        _C.pack_signs(x)


def test_pack_signs_rejects_non_arrays_and_other_devices() -> None:
    with pytest.raises(TypeError, match=r"numpy.ndarray or a torch.Tensor"):
        kernels.pack_signs([[1.0, -1.0]])
    with pytest.raises(ValueError, match=r"CPU tensor.*\.cpu\(\)"):
        kernels.pack_signs(torch.zeros(2, 3, device="meta"))


def test_unpack_signs_rejects() -> None:
    bits = np.zeros((2, 2), dtype=np.uint64)
    with pytest.raises(ValueError, match=r"ceil\(k/64\)=1"):
        kernels.unpack_signs(bits, 64)
    with pytest.raises(ValueError, match=r"ceil\(k/64\)=3"):
        kernels.unpack_signs(bits, 129)
    with pytest.raises(ValueError, match=">= 0"):
        kernels.unpack_signs(bits, -1)
    with pytest.raises(TypeError, match="uint64"):
        kernels.unpack_signs(bits.astype(np.int64), 100)
    with pytest.raises(TypeError, match="int"):
        kernels.unpack_signs(bits, 100.0)
    from apb import _C

    with pytest.raises(ValueError, match="ceil"):
        _C.unpack_signs(bits, 300)
    with pytest.raises(ValueError, match=">= 0"):
        _C.unpack_signs(bits, -5)


# ---- instruction-set selection and threads -------------------------------------------


def test_available_isas() -> None:
    available = kernels.available_isas()
    assert available[0] == "scalar"
    assert set(available) <= set(kernels.ISA_NAMES)
    assert kernels.active_isa() in available


def test_set_isa_rejects_unknown_and_unavailable() -> None:
    with pytest.raises(ValueError, match="scalar, avx2, avx512"):
        kernels.set_isa("sse9")
    missing = [isa for isa in kernels.ISA_NAMES if isa not in kernels.available_isas()]
    if not missing:
        pytest.skip("this CPU has every instruction set apb knows")
    before = kernels.active_isa()
    with pytest.raises(RuntimeError, match=rf"{missing[-1]}.*available ISAs: scalar"):
        kernels.set_isa(missing[-1])
    assert kernels.active_isa() == before


def _run_with_apb_isa(value: str, code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, APB_ISA=value)
    # The child must import the same apb as this process (installed or PYTHONPATH=src),
    # and the test oracles next to this file.
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(apb.__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]
    )
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
def test_apb_isa_environment_variable_forces_the_isa(isa: str) -> None:
    _require(isa)
    result = _run_with_apb_isa(
        isa,
        """
        import numpy as np
        from apb import kernels
        from oracles.sign_packing import pack_signs_ref
        print(kernels.active_isa())
        x = np.random.default_rng(1).standard_normal((9, 333)).astype(np.float32)
        assert np.array_equal(kernels.pack_signs(x), pack_signs_ref(x))
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == isa


def test_apb_isa_environment_variable_errors_are_clear() -> None:
    call = "from apb import kernels; import numpy as np; kernels.pack_signs(np.ones((1, 1), 'f4'))"
    bogus = _run_with_apb_isa("sse9", call)
    assert bogus.returncode == 1
    assert "ValueError: APB_ISA='sse9' is not an ISA" in bogus.stderr
    missing = [isa for isa in kernels.ISA_NAMES if isa not in kernels.available_isas()]
    if missing:
        unavailable = _run_with_apb_isa(missing[-1], call)
        assert unavailable.returncode == 1
        assert f"RuntimeError: APB_ISA requests '{missing[-1]}'" in unavailable.stderr


def test_num_threads() -> None:
    previous = kernels.get_num_threads()
    try:
        kernels.set_num_threads(1)
        assert kernels.get_num_threads() == 1
        apb.set_num_threads(2)
        from apb import _C

        assert kernels.get_num_threads() == (2 if _C.has_openmp else 1)
    finally:
        kernels.set_num_threads(previous)
    with pytest.raises(ValueError, match=">= 1"):
        kernels.set_num_threads(0)
    with pytest.raises(TypeError, match="int"):
        kernels.set_num_threads(2.5)
