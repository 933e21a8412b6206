"""im2col_pack_signs, im2col_pack_codes (both column orders) and quantize_pack_codes
against the numpy references (themselves checked against torch.nn.functional.unfold),
under every instruction set this CPU has; the codes bit-identical to
apb.nn.UniformActivation; plus the argument checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _isa import isas_under_test, require_isa
from apb import kernels
from apb.nn.act_quantizers import UniformActivation
from oracles.activation_packing import (
    conv2d_output_size,
    im2col_pack_codes_ref,
    im2col_pack_signs_ref,
    im2col_ref,
    quantize_codes_ref,
    quantize_pack_codes_ref,
)
from oracles.sign_packing import unpack_signs_ref

# Bit patterns that stress both quantizers: zeros of both signs, denormals, infinities,
# NaNs (sign bit 0, code 0).
SPECIAL = np.array(
    [
        0x00000000,
        0x80000000,
        0x00000001,
        0x80000001,
        0x7F800000,
        0xFF800000,
        0x7FC00000,
        0xFFC00000,
    ],  # fmt: skip
    dtype=np.uint32,
).view(np.float32)


def _require(isa: str) -> None:
    require_isa(isa)  # a skip, or a failure under APB_REQUIRE_ISA


def _activations(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Values around [0, scale] with exact grid points, ties and special values mixed in."""
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    flat = x.reshape(-1)
    if flat.size:
        picks = rng.random(flat.size)
        grid = np.float32(scale) * rng.integers(0, 15, flat.size).astype(np.float32) / 14
        flat[picks < 0.3] = grid[picks < 0.3]
        special = picks > 0.95
        flat[special] = rng.choice(SPECIAL, int(special.sum()))
    return x


def _codes_from_planes(planes: np.ndarray, k: int) -> np.ndarray:
    codes = np.zeros((planes.shape[1], k), dtype=np.int64)
    for p in range(planes.shape[0]):
        codes += (unpack_signs_ref(planes[p], k) < 0).astype(np.int64) << p
    return codes


@st.composite
def conv_problems(draw: st.DrawFn) -> dict:
    b = draw(st.integers(0, 2))
    c = draw(st.one_of(st.integers(1, 4), st.integers(5, 20)))
    h = draw(st.integers(0, 9))
    w = draw(st.one_of(st.integers(0, 9), st.integers(10, 40)))
    geometry = {
        "kernel_size": (draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        "stride": (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        "padding": (draw(st.integers(0, 3)), draw(st.integers(0, 3))),
        "dilation": (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
    }
    scale = draw(st.sampled_from([1.0, 0.75, 3.0, 0.1, 2.5e-3]))
    bits = draw(st.integers(1, 4))
    x = _activations(np.random.default_rng(draw(st.integers(0, 2**32 - 1))), (b, c, h, w), scale)
    return {"x": x, "scale": scale, "bits": bits, "geometry": geometry}


def _fits(x: np.ndarray, geometry: dict) -> bool:
    return all(
        conv2d_output_size(size, k, 1, p, d) >= 1
        for size, k, p, d in zip(
            x.shape[2:], geometry["kernel_size"], geometry["padding"], geometry["dilation"]
        )
    )


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@settings(max_examples=120, deadline=None)
@given(problem=conv_problems())
def test_im2col_packers_match_reference(isa: str, problem: dict) -> None:
    _require(isa)
    x, geometry, scale, bits = problem["x"], problem["geometry"], problem["scale"], problem["bits"]
    with kernels.use_isa(isa):
        if not _fits(x, geometry):
            with pytest.raises(ValueError, match="padded input"):
                kernels.im2col_pack_signs(x, **geometry)
            with pytest.raises(ValueError, match="padded input"):
                kernels.im2col_pack_codes(x, scale, bits, **geometry)
            return
        signs = kernels.im2col_pack_signs(x, **geometry)
        codes = kernels.im2col_pack_codes(x, scale, bits, **geometry)
    args = tuple(geometry.values())
    np.testing.assert_array_equal(signs, im2col_pack_signs_ref(x, *args))
    np.testing.assert_array_equal(codes, im2col_pack_codes_ref(x, scale, bits, *args))
    assert signs.dtype == codes.dtype == np.uint64
    assert codes.shape == (bits, *signs.shape)


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@settings(max_examples=120, deadline=None)
@given(
    problem=conv_problems(),
    channels=st.sampled_from([1, 2, 3, 8, 16, 24, 31, 32, 33, 40, 63, 64, 65, 127, 128, 130]),
)
def test_hwc_column_order_matches_reference(isa: str, problem: dict, channels: int) -> None:
    """Columns (dy, dx, c): the per-pixel packing and the word and byte gathers, with channel counts
    that fill whole words, leave remainders, and span several words per pixel."""
    _require(isa)
    geometry, scale, bits = problem["geometry"], problem["scale"], problem["bits"]
    b, _, h, w = problem["x"].shape
    seed = int(problem["x"].size) + channels
    x = _activations(np.random.default_rng(seed), (b, channels, h, w), scale)
    if not _fits(x, geometry):
        with pytest.raises(ValueError, match="padded input"):
            kernels.im2col_pack_codes(x, scale, bits, **geometry, column_order="hwc")
        return
    with kernels.use_isa(isa):
        signs = kernels.im2col_pack_signs(x, **geometry, column_order="hwc")
        codes = kernels.im2col_pack_codes(x, scale, bits, **geometry, column_order="hwc")
    args = tuple(geometry.values())
    np.testing.assert_array_equal(signs, im2col_pack_signs_ref(x, *args, "hwc"))
    np.testing.assert_array_equal(codes, im2col_pack_codes_ref(x, scale, bits, *args, "hwc"))


def test_hwc_reference_is_the_permuted_chw_one() -> None:
    x = _activations(np.random.default_rng(9), (2, 5, 6, 7), 1.0)
    args = ((3, 2), (2, 1), (1, 0), (1, 2))
    chw = im2col_ref(x, *args)
    hwc = im2col_ref(x, *args, column_order="hwc")
    np.testing.assert_array_equal(
        hwc, chw.reshape(-1, 5, 3, 2).transpose(0, 2, 3, 1).reshape(chw.shape)
    )


@settings(max_examples=40, deadline=None)
@given(problem=conv_problems())
def test_im2col_reference_matches_torch_unfold(problem: dict) -> None:
    x, geometry = problem["x"], problem["geometry"]
    if not _fits(x, geometry) or x.size == 0:
        return  # torch.unfold refuses empty images
    x = np.nan_to_num(x, nan=0.0)  # so that the arrays compare with ==
    unfolded = torch.nn.functional.unfold(torch.from_numpy(x), **geometry)  # [B, K, L]
    expected = unfolded.transpose(1, 2).reshape(-1, unfolded.shape[1]).numpy()
    np.testing.assert_array_equal(im2col_ref(x, *geometry.values()), expected)


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(0, 6),
    k=st.one_of(st.integers(0, 200), st.sampled_from([1, 7, 8, 9, 63, 64, 65, 128, 129])),
    bits=st.integers(1, 8),
    scale=st.sampled_from([1.0, 0.3, 6.0, 1e-3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_quantize_pack_codes_matches_reference(
    isa: str, n: int, k: int, bits: int, scale: float, seed: int
) -> None:
    _require(isa)
    x = _activations(np.random.default_rng(seed), (n, k), scale)
    with kernels.use_isa(isa):
        packed = kernels.quantize_pack_codes(x, scale, bits)
    assert packed.shape == (bits, n, -(-k // 64))
    np.testing.assert_array_equal(packed, quantize_pack_codes_ref(x, scale, bits))


# ---- bit-identity with the training quantizer ------------------------------------------


def _tie_inputs(scale: float, levels: int) -> np.ndarray:
    """Every half-step s*t/(2L) of the code grid (the rounding ties, up to the float32
    rounding of the division), their float32 neighbours, and the ends of the range."""
    s = np.float32(scale)
    steps = (s * np.arange(2 * levels + 1, dtype=np.float32) / np.float32(2 * levels)).astype(
        np.float32
    )
    around = np.concatenate(
        [steps, np.nextafter(steps, np.float32(np.inf)), np.nextafter(steps, np.float32(-1))]
    )
    ends = np.array([0.0, -0.0, -1.0, s, 2 * s, np.inf, -np.inf], dtype=np.float32)
    ends = np.append(ends, np.nextafter(s, np.float32(np.inf)))
    return np.concatenate([around, ends]).astype(np.float32)


def _torch_codes(x: np.ndarray, act: UniformActivation) -> torch.Tensor:
    """The codes as UniformActivation's forward computes them (its own expression)."""
    s = act.act_scale.detach().clamp_min(1e-8)
    xc = torch.from_numpy(x).clamp(min=0.0).minimum(s)
    return torch.round(xc / s * act.levels)


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@pytest.mark.parametrize("bits", [2, 3, 8])
@pytest.mark.parametrize("scale", [1.0, 0.75, 3.0, 0.1, 1.7e-3, 12.5])
def test_codes_bit_identical_to_uniform_activation(isa: str, bits: int, scale: float) -> None:
    _require(isa)
    act = UniformActivation(bits).eval()
    with torch.no_grad():
        act.act_scale.fill_(scale)
    act.initialized.fill_(True)
    rng = np.random.default_rng(bits)
    x = np.concatenate(
        [_tie_inputs(scale, act.levels), (rng.uniform(-0.5, 1.5, 3000) * scale).astype(np.float32)]
    ).reshape(1, -1)
    s = float(act.act_scale.detach())  # the float32 the module holds
    with kernels.use_isa(isa):
        codes = _codes_from_planes(kernels.quantize_pack_codes(x, s, bits), x.shape[1])
        # The same values through the convolution packer (a 1x1 kernel over a 1 x K image).
        conv = kernels.im2col_pack_codes(x.reshape(1, 1, 1, -1), s, bits, 1)
    expected = _torch_codes(x, act)
    np.testing.assert_array_equal(codes, expected.numpy().astype(np.int64))
    np.testing.assert_array_equal(_codes_from_planes(conv, 1)[:, 0], codes[0])
    # The module's output is code * (s / L): the same codes give the same floats.
    with torch.no_grad():
        y = act(torch.from_numpy(x))
    dequantized = torch.from_numpy(codes).float() * (act.act_scale.detach() / act.levels)
    assert torch.equal(dequantized, y)
    # Exact ties did occur (x/s*L landing on k + 0.5), and were rounded to even.
    q = (x[0] / np.float32(s) * np.float32(act.levels)).astype(np.float32)
    q = q[np.isfinite(q)]
    assert np.any((q % 1 == 0.5) & (q <= act.levels))


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
def test_codes_of_a_convolution_match_uniform_activation_on_unfold(isa: str) -> None:
    """A 3x3 / stride 2 / padding 1 convolution input: the packed codes are those of the
    module applied to torch's unfolding (whose zero padding quantizes to code 0)."""
    _require(isa)
    act = UniformActivation(2).eval()
    with torch.no_grad():
        act.act_scale.fill_(0.9)
    act.initialized.fill_(True)
    x = torch.relu(torch.randn(2, 5, 9, 11, generator=torch.Generator().manual_seed(0)))
    with kernels.use_isa(isa):
        packed = kernels.im2col_pack_codes(x, act.act_scale, 2, 3, stride=2, padding=1)
    unfolded = torch.nn.functional.unfold(x, 3, stride=2, padding=1)
    columns = unfolded.transpose(1, 2).reshape(-1, unfolded.shape[1]).contiguous().numpy()
    assert isinstance(packed, torch.Tensor) and packed.dtype == torch.uint64
    np.testing.assert_array_equal(
        _codes_from_planes(packed.numpy(), columns.shape[1]),
        _torch_codes(columns, act).numpy().astype(np.int64),
    )


# ---- hand-computed cases ------------------------------------------------------------------


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
def test_padding_mask_from_an_all_negative_input(isa: str) -> None:
    """im2col_pack_signs of an all -1 input sets exactly the bits of real pixels: the
    mask the packed layer uses for its padding correction."""
    _require(isa)
    x = -np.ones((1, 2, 3, 3), dtype=np.float32)
    with kernels.use_isa(isa):
        bits = kernels.im2col_pack_signs(x, 3, padding=1)
    inside = im2col_ref(np.ones_like(x), (3, 3), (1, 1), (1, 1), (1, 1)) == 1
    np.testing.assert_array_equal(unpack_signs_ref(bits, 18) < 0, inside)
    # The centre position sees every pixel; a corner sees 4 of 9 per channel.
    assert inside[4].all() and inside[0].sum() == 2 * 4


def test_quantize_pack_codes_hand_computed() -> None:
    # s = 1, 2 bits (L = 3): x*3 = 0, 0.75, 1.5 (tie -> 2), 2.25, 4.5 (clipped 3), NaN -> 0.
    x = np.array([[-2.0, 0.25, 0.5, 0.75, 1.5, np.nan]], dtype=np.float32)
    for isa in isas_under_test():
        with kernels.use_isa(isa):
            packed = kernels.quantize_pack_codes(x, 1.0, 2)
        np.testing.assert_array_equal(_codes_from_planes(packed, 6), [[0, 1, 2, 2, 3, 0]])
    np.testing.assert_array_equal(quantize_codes_ref(x, 1.0, 2), [[0, 1, 2, 2, 3, 0]])


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@pytest.mark.parametrize("threads", [1, 2])
def test_packers_threaded_large(isa: str, threads: int) -> None:
    _require(isa)
    rng = np.random.default_rng(5)
    x = _activations(rng, (2, 24, 30, 30), 1.0)
    rows = _activations(rng, (300, 300), 1.0)
    previous = kernels.get_num_threads()
    kernels.set_num_threads(threads)
    try:
        with kernels.use_isa(isa):
            signs = kernels.im2col_pack_signs(x, 3, stride=(1, 2), padding=1)
            codes = kernels.im2col_pack_codes(x, 1.0, 2, 3, stride=(1, 2), padding=1)
            linear = kernels.quantize_pack_codes(rows, 1.0, 2)
            hwc = kernels.im2col_pack_codes(x, 1.0, 2, 3, stride=(1, 2), padding=1,
                                            column_order="hwc")
    finally:
        kernels.set_num_threads(previous)
    args = ((3, 3), (1, 2), (1, 1), (1, 1))
    np.testing.assert_array_equal(hwc, im2col_pack_codes_ref(x, 1.0, 2, *args, "hwc"))
    np.testing.assert_array_equal(signs, im2col_pack_signs_ref(x, *args))
    np.testing.assert_array_equal(codes, im2col_pack_codes_ref(x, 1.0, 2, *args))
    np.testing.assert_array_equal(linear, quantize_pack_codes_ref(rows, 1.0, 2))


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@pytest.mark.parametrize(
    "geometry",
    [((1, 20), (1, 2), (0, 3), (1, 1)), ((2, 17), (1, 1), (1, 3), (1, 2)), ((1, 33), 1, 16, 1)],
)
def test_im2col_wide_kernels(isa: str, geometry: tuple) -> None:
    """Kernels wider than the AVX2 path's cache of tap positions (16)."""
    _require(isa)
    x = _activations(np.random.default_rng(6), (1, 2, 3, 40), 1.0)
    kernel_size, stride, padding, dilation = geometry
    with kernels.use_isa(isa):
        signs = kernels.im2col_pack_signs(x, kernel_size, stride, padding, dilation)
        codes = kernels.im2col_pack_codes(x, 1.0, 3, kernel_size, stride, padding, dilation)
    pairs = [g if isinstance(g, tuple) else (g, g) for g in geometry]
    np.testing.assert_array_equal(signs, im2col_pack_signs_ref(x, *pairs))
    np.testing.assert_array_equal(codes, im2col_pack_codes_ref(x, 1.0, 3, *pairs))


def test_zero_size_inputs() -> None:
    empty_batch = kernels.im2col_pack_signs(np.zeros((0, 3, 4, 4), np.float32), 3)
    assert empty_batch.shape == (0, 1)
    no_channels = kernels.im2col_pack_codes(np.zeros((2, 0, 4, 4), np.float32), 1.0, 2, 3)
    assert no_channels.shape == (2, 8, 0)
    # An empty image with enough padding is all padding.
    all_padding = kernels.im2col_pack_signs(np.zeros((1, 1, 0, 0), np.float32), 1, padding=1)
    assert all_padding.shape == (4, 1) and not all_padding.any()
    assert kernels.quantize_pack_codes(np.zeros((0, 70), np.float32), 1.0, 3).shape == (3, 0, 2)


# ---- bad input: clear Python exceptions, from the wrappers and from apb._C itself ---

X4 = np.zeros((1, 2, 5, 5), dtype=np.float32)

BAD_CONV = [
    pytest.param({"x": X4.astype(np.float64)}, TypeError, "float32", id="x-float64"),
    pytest.param({"x": X4[0]}, ValueError, "4-D", id="x-3-D"),
    pytest.param(
        {"x": np.zeros((1, 5, 5, 2), np.float32).transpose(0, 3, 1, 2)},
        ValueError,
        "contiguous",
        id="channels-last",
    ),  # fmt: skip
    pytest.param({"kernel_size": 6}, ValueError, "padded input", id="kernel-too-big"),
    pytest.param({"kernel_size": 3, "dilation": 3}, ValueError, "padded input", id="dilated"),
    pytest.param({"kernel_size": 0}, ValueError, "kernel_size", id="kernel-0"),
    pytest.param({"stride": 0}, ValueError, "stride", id="stride-0"),
    pytest.param({"stride": -1}, ValueError, "stride", id="stride-negative"),
    pytest.param({"padding": -1}, ValueError, "padding", id="padding-negative"),
    pytest.param({"dilation": 0}, ValueError, "dilation", id="dilation-0"),
    pytest.param({"stride": 2**31}, ValueError, "stride", id="stride-huge"),
]

BAD_CODES = [
    pytest.param({"scale": 0.0}, ValueError, "scale", id="scale-0"),
    pytest.param({"scale": -1.0}, ValueError, "scale", id="scale-negative"),
    pytest.param({"scale": float("nan")}, ValueError, "scale", id="scale-nan"),
    pytest.param({"scale": float("inf")}, ValueError, "scale", id="scale-inf"),
    pytest.param({"scale": 1e-50}, ValueError, "scale", id="scale-underflows-float32"),
    pytest.param({"bits": 0}, ValueError, "bits", id="bits-0"),
    pytest.param({"bits": 9}, ValueError, "bits", id="bits-9"),
]


def _conv_call(fn, overrides: dict, codes: bool, raw: bool) -> None:
    args = {"x": X4, "kernel_size": 3, "stride": 1, "padding": 0, "dilation": 1}
    args.update({"scale": 1.0, "bits": 2} if codes else {})
    args.update(overrides)
    if raw:
        # The extension takes (kh, kw, sh, sw, ph, pw, dh, dw); every pair is symmetric here.
        names = ("kernel_size", "stride", "padding", "dilation")
        geometry = [args[name] for name in names for _ in range(2)]
        lead = [args["x"]] + ([args["scale"], args["bits"]] if codes else [])
        fn(*lead, *geometry)
    elif codes:
        fn(args.pop("x"), args.pop("scale"), args.pop("bits"), **args)
    else:
        fn(args.pop("x"), **args)


@pytest.mark.parametrize(("overrides", "error", "words"), BAD_CONV)
@pytest.mark.parametrize("raw", [False, True], ids=["wrapper", "extension"])
def test_im2col_rejects(overrides: dict, error: type[Exception], words: str, raw: bool) -> None:
    from apb import _C

    signs = _C.im2col_pack_signs if raw else kernels.im2col_pack_signs
    codes = _C.im2col_pack_codes if raw else kernels.im2col_pack_codes
    with pytest.raises(error, match=words):
        _conv_call(signs, overrides, codes=False, raw=raw)
    with pytest.raises(error, match=words):
        _conv_call(codes, overrides, codes=True, raw=raw)


@pytest.mark.parametrize(("overrides", "error", "words"), BAD_CODES)
@pytest.mark.parametrize("raw", [False, True], ids=["wrapper", "extension"])
def test_codes_reject(overrides: dict, error: type[Exception], words: str, raw: bool) -> None:
    from apb import _C

    with pytest.raises(error, match=words):
        _conv_call(_C.im2col_pack_codes if raw else kernels.im2col_pack_codes, overrides,
                   codes=True, raw=raw)  # fmt: skip
    quantize = _C.quantize_pack_codes if raw else kernels.quantize_pack_codes
    args = {"scale": 1.0, "bits": 2, **overrides}
    with pytest.raises(error, match=words):
        quantize(np.zeros((2, 3), np.float32), args["scale"], args["bits"])


def test_packers_reject_wrong_argument_types() -> None:
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="bits"):
        kernels.quantize_pack_codes(x, 1.0, 2.0)
    with pytest.raises(TypeError, match="bits"):
        kernels.quantize_pack_codes(x, 1.0, True)
    with pytest.raises(TypeError, match="scale"):
        kernels.quantize_pack_codes(x, "1.0", 2)
    with pytest.raises(TypeError, match="kernel_size"):
        kernels.im2col_pack_signs(X4, 2.5)
    with pytest.raises(ValueError, match="kernel_size"):
        kernels.im2col_pack_signs(X4, (1, 2, 3))
    with pytest.raises(ValueError, match="2-D"):
        kernels.quantize_pack_codes(X4, 1.0, 2)
    with pytest.raises(TypeError, match="numpy.ndarray or a torch.Tensor"):
        kernels.im2col_pack_signs(X4.tolist(), 1)
    with pytest.raises(ValueError, match="column_order"):
        kernels.im2col_pack_codes(X4, 1.0, 2, 3, column_order="cwh")
    from apb import _C

    with pytest.raises(ValueError, match="column_order"):
        _C.im2col_pack_signs(X4, 1, 1, 1, 1, 0, 0, 1, 1, "nhwc")
