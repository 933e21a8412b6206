"""The hwc activation packer (``im2col_pack_codes`` / ``im2col_pack_signs`` with
``column_order="hwc"``) against the numpy references on the shapes it has fast paths for
(ResNet-20's layers, runs of whole bytes, padding wider than the kernel, dilation), and
its codes by threshold comparison against the quantizer's formula at the threshold
boundaries, for scales from the smallest subnormal to near the largest float."""

from __future__ import annotations

import numpy as np
import pytest

from _isa import require_isa
from apb import kernels
from oracles.activation_packing import (
    im2col_pack_codes_ref,
    im2col_pack_signs_ref,
    quantize_codes_ref,
)

RESNET20_LAYERS = [  # (channels, size, kernel, stride, padding)
    (16, 32, 3, 1, 1), (16, 32, 3, 2, 1), (32, 16, 3, 1, 1), (32, 16, 3, 2, 1),
    (64, 8, 3, 1, 1), (16, 32, 1, 2, 0), (32, 16, 1, 2, 0),
]
OTHER_GEOMETRIES = [  # (channels, (h, w), kernel, stride, padding, dilation)
    (16, (5, 7), (3, 3), (1, 1), (3, 4), (1, 1)),  # padding beyond the kernel
    (16, (6, 9), (3, 2), (2, 1), (1, 1), (2, 3)),  # dilated: tap by tap
    (96, (4, 5), (3, 3), (1, 2), (1, 1), (1, 1)),  # 12 bytes in a 16-byte pixel
    (8, (3, 41), (1, 3), (1, 1), (0, 1), (1, 1)),  # rows not a multiple of 8 pixels
    (24, (9, 300), (3, 3), (2, 3), (1, 1), (1, 1)),  # rows wider than a block
    (40, (2, 3), (2, 2), (1, 1), (0, 0), (1, 1)),
    (128, (4, 4), (3, 3), (1, 1), (1, 1), (1, 1)),
    (13, (5, 6), (3, 3), (1, 1), (1, 1), (1, 1)),  # bit shifts
    (6, (14, 14), (5, 5), (1, 1), (0, 0), (1, 1)),  # LeNet-5: a kernel row in one word
    (3, (7, 9), (3, 3), (2, 1), (1, 2), (1, 2)),  # one word, dilated and padded
    (1, (5, 6), (5, 5), (1, 1), (2, 2), (1, 1)),  # one channel
    (13, (4, 12), (2, 5), (1, 2), (0, 1), (1, 1)),  # 65 bits a row: bit by bit again
    (7, (6, 20), (1, 9), (1, 1), (0, 4), (1, 1)),  # 63 bits a row: one word
]


def _inputs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.uniform(-0.2, 1.2, shape).astype(np.float32)
    x.reshape(-1)[::17] = np.nan
    return x


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("layer", RESNET20_LAYERS)
def test_resnet20_layers_match_reference(isa: str, batch: int, layer: tuple) -> None:
    require_isa(isa)
    c, size, k, s, p = layer
    x = _inputs(np.random.default_rng(c + size + k + s), (batch, c, size, size))
    with kernels.use_isa(isa):
        codes = kernels.im2col_pack_codes(x, 1.0, 2, k, s, p, column_order="hwc")
        signs = kernels.im2col_pack_signs(x - 0.5, k, s, p, column_order="hwc")
    args = ((k, k), (s, s), (p, p), (1, 1))
    np.testing.assert_array_equal(codes, im2col_pack_codes_ref(x, 1.0, 2, *args, "hwc"))
    np.testing.assert_array_equal(signs, im2col_pack_signs_ref(x - 0.5, *args, "hwc"))


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@pytest.mark.parametrize("channels, kernel_w", [(8, 2), (16, 2), (24, 2), (16, 3), (32, 3),
                                                (8, 3), (48, 2)])
@pytest.mark.parametrize("padding", [(0, 0), (1, 1), (3, 1), (1, 3)])
def test_runs_of_whole_bytes_over_several_kernel_rows(isa: str, channels: int, kernel_w: int,
                                                      padding: tuple) -> None:
    """Kernel rows of 2 to 12 bytes (dense pixels) over 2-3 kernel rows, tiny images and
    padding beyond the kernel: the gather copies 6- and 12-byte runs as 8 and 16 bytes
    except in the last kernel row, which must leave the bits past the taps zero."""
    require_isa(isa)
    for h, w in [(1, 1), (1, 2), (3, 4)]:
        if h + 2 * padding[0] < 3 or w + 2 * padding[1] < kernel_w:
            continue  # the kernel does not fit (the packers' error is tested elsewhere)
        x = _inputs(np.random.default_rng(channels * h * w + kernel_w), (2, channels, h, w))
        args = ((3, kernel_w), (1, 1), padding, (1, 1))
        with kernels.use_isa(isa):
            codes = kernels.im2col_pack_codes(x, 1.0, 2, *args, column_order="hwc")
            signs = kernels.im2col_pack_signs(x - 0.5, *args, column_order="hwc")
        np.testing.assert_array_equal(codes, im2col_pack_codes_ref(x, 1.0, 2, *args, "hwc"))
        np.testing.assert_array_equal(signs, im2col_pack_signs_ref(x - 0.5, *args, "hwc"))


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("channels", "size", "stride"), [(512, 7, 1), (256, 14, 2), (64, 3, 1)])
def test_one_small_image_splits_its_rows(isa: str, threads: int, channels: int, size: int,
                                         stride: int) -> None:
    """One image of few rows and many channels: large enough for a team, whose threads
    share its rows in blocks of fewer than 256 pixels (7 x 7: 4 and 3 rows)."""
    require_isa(isa)
    x = _inputs(np.random.default_rng(channels + size), (1, channels, size, size))
    args = ((3, 3), (stride, stride), (1, 1), (1, 1))
    previous = kernels.get_num_threads()
    kernels.set_num_threads(threads)
    try:
        with kernels.use_isa(isa):
            codes = kernels.im2col_pack_codes(x, 0.8, 2, *args, column_order="hwc")
            signs = kernels.im2col_pack_signs(x - 0.4, *args, column_order="hwc")
    finally:
        kernels.set_num_threads(previous)
    np.testing.assert_array_equal(codes, im2col_pack_codes_ref(x, 0.8, 2, *args, "hwc"))
    np.testing.assert_array_equal(signs, im2col_pack_signs_ref(x - 0.4, *args, "hwc"))


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("geometry", OTHER_GEOMETRIES)
def test_other_geometries_match_reference(isa: str, threads: int, geometry: tuple) -> None:
    require_isa(isa)
    c, (h, w), kernel, stride, padding, dilation = geometry
    x = _inputs(np.random.default_rng(c * h * w), (2, c, h, w))
    previous = kernels.get_num_threads()
    kernels.set_num_threads(threads)
    try:
        with kernels.use_isa(isa):
            codes = kernels.im2col_pack_codes(x, 0.8, 3, kernel, stride, padding, dilation,
                                              column_order="hwc")
            wide = kernels.im2col_pack_codes(x, 0.8, 5, kernel, stride, padding, dilation,
                                             column_order="hwc")
    finally:
        kernels.set_num_threads(previous)
    args = (kernel, stride, padding, dilation)
    np.testing.assert_array_equal(codes, im2col_pack_codes_ref(x, 0.8, 3, *args, "hwc"))
    np.testing.assert_array_equal(wide, im2col_pack_codes_ref(x, 0.8, 5, *args, "hwc"))


def _around_boundaries(scale: float, bits: int) -> np.ndarray:
    """Floats a few units in the last place either side of every code boundary
    s (k - 1/2) / L, and the ends of the range."""
    s = np.float32(scale)
    levels = 2**bits - 1
    centres = (np.float64(s) * (np.arange(1, levels + 1) - 0.5) / levels).astype(np.float32)
    values = [centres, np.array([0.0, s, np.inf, -np.inf], np.float32)]
    up, down = centres.copy(), centres.copy()
    for _ in range(4):
        up = np.nextafter(up, np.float32(np.inf))
        down = np.nextafter(down, np.float32(0))
        values += [up, down]
    return np.concatenate(values).astype(np.float32)


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("scale", [1.0, 0.1, 3.0, 1e-30, 1e30, 3e38, 1e-40, 1.4e-45])
def test_codes_at_their_boundaries(isa: str, bits: int, scale: float) -> None:
    """Every code boundary is hit (so a threshold off by one unit would show), at
    scales whose quotients are subnormal or near overflow."""
    require_isa(isa)
    x = _around_boundaries(scale, bits)
    expected = quantize_codes_ref(x, scale, bits)
    # Every code occurs, except at the smallest subnormal scale: no float lies in (0, s).
    occurring = set(range(2**bits)) if scale > 1e-44 else {0, 2**bits - 1}
    assert set(expected.tolist()) == occurring
    # One pixel per value (a 1 x 1 kernel over a 1 x K image of one channel), and
    # sixteen channels per pixel (the dense byte path).
    row = x.reshape(1, 1, 1, -1)
    deep = np.resize(x, 16 * 8).reshape(1, 16, 1, 8)
    with kernels.use_isa(isa):
        codes = kernels.im2col_pack_codes(row, scale, bits, 1, column_order="hwc")
        deep_codes = kernels.im2col_pack_codes(deep, scale, bits, 1, column_order="hwc")
    args = ((1, 1), (1, 1), (0, 0), (1, 1), "hwc")
    np.testing.assert_array_equal(codes, im2col_pack_codes_ref(row, scale, bits, *args))
    np.testing.assert_array_equal(deep_codes, im2col_pack_codes_ref(deep, scale, bits, *args))
