"""The compiled max pooling (``apb.kernels.direct.max_pool2d``, and
``max_pool2d_channels_last`` on every ISA) against torch's ``max_pool2d``, over window
shapes, strides, padding and odd sizes, NaN and infinities included; and its argument
checks."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _isa import require_isa
from apb import kernels
from apb.kernels import direct
from apb.pack import FastMaxPool2d

WINDOWS = [  # (kernel, stride, padding)
    ((2, 2), (2, 2), (0, 0)),
    ((3, 3), (2, 2), (1, 1)),
    ((3, 3), (1, 1), (1, 1)),
    ((2, 3), (1, 2), (1, 0)),
    ((1, 1), (1, 1), (0, 0)),
    ((3, 2), (3, 1), (0, 1)),
]
SIZES = [(1, 1, 2, 2), (1, 3, 5, 7), (2, 4, 8, 8), (3, 2, 11, 6), (1, 6, 28, 28)]


def _torch(x: torch.Tensor, k, s, p) -> torch.Tensor:
    return F.max_pool2d(x, k, s, p)


@pytest.mark.parametrize(("window", "size"), list(itertools.product(WINDOWS, SIZES)))
def test_matches_torch(window, size):
    k, s, p = window
    if size[2] + 2 * p[0] < k[0] or size[3] + 2 * p[1] < k[1]:
        pytest.skip("window larger than the padded input")
    gen = torch.Generator().manual_seed(hash((window, size)) % 2**31)
    x = torch.randn(size, generator=gen)
    got = torch.from_numpy(direct.max_pool2d(x.numpy(), k, s, p))
    torch.testing.assert_close(got, _torch(x, k, s, p), rtol=0, atol=0)


def _with_specials(shape, seed: int, nans: int, infs: int) -> torch.Tensor:
    """Random values with `nans` NaNs, `nans` -infs and `infs` +infs at random places."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    flat = x.view(-1)
    for value, count in ((float("nan"), nans), (float("-inf"), nans), (float("inf"), infs)):
        flat[torch.randperm(flat.numel(), generator=gen)[:count]] = value
    return x


def _assert_same_nans_and_values(got: torch.Tensor, want: torch.Tensor) -> None:
    assert torch.equal(got.isnan(), want.isnan())
    keep = ~want.isnan()
    assert torch.equal(got[keep], want[keep])


@pytest.mark.parametrize("window", WINDOWS)
def test_nan_and_infinities_as_torch(window):
    k, s, p = window
    x = _with_specials((2, 3, 9, 10), 1, 12, 6)
    got = torch.from_numpy(direct.max_pool2d(x.numpy(), k, s, p))
    _assert_same_nans_and_values(got, _torch(x, k, s, p))


def test_all_negative_infinity_window_stays_negative_infinity():
    x = torch.full((1, 1, 4, 4), float("-inf"))
    got = direct.max_pool2d(x.numpy(), (3, 3), (2, 2), (1, 1))
    assert np.all(got == -np.inf)


def test_empty_batch():
    got = direct.max_pool2d(np.zeros((0, 3, 4, 4), np.float32), (2, 2), (2, 2), (0, 0))
    assert got.shape == (0, 3, 2, 2)


@pytest.mark.parametrize(("args", "message"), [
    (((0, 2), (2, 2), (0, 0)), "kernel and stride"),
    (((2, 2), (0, 2), (0, 0)), "kernel and stride"),
    (((2, 2), (2, 2), (-1, 0)), "padding >= 0"),
    (((2, 2), (2, 2), (2, 0)), "at most half"),
    (((9, 2), (1, 1), (0, 0)), "smaller than the kernel"),
])
def test_bad_geometry_is_refused(args, message):
    x = np.zeros((1, 2, 4, 4), np.float32)
    with pytest.raises(ValueError, match=message):
        direct.max_pool2d(x, *args)


@pytest.mark.parametrize(("x", "error"), [
    (np.zeros((2, 4, 4), np.float32), ValueError),
    (np.zeros((1, 2, 4, 4), np.float64), TypeError),
    (np.zeros((1, 2, 4, 8), np.float32)[..., ::2], ValueError),
])
def test_bad_input_is_refused(x, error):
    with pytest.raises(error):
        direct.max_pool2d(x, (2, 2), (2, 2), (0, 0))


def _channels_last(x: torch.Tensor, k, s, p) -> torch.Tensor:
    """direct.max_pool2d_channels_last of x made channels-last, as an NCHW tensor."""
    cl = x.contiguous(memory_format=torch.channels_last)
    out = direct.max_pool2d_channels_last(cl.permute(0, 2, 3, 1).numpy(), k, s, p)
    assert out.flags.c_contiguous and out.shape == _torch(x, k, s, p).shape
    return torch.from_numpy(out)


# Channel counts around the AVX2 and AVX-512 vectors, their chains of four and the 8 x 8
# transposition: remainders of each.
CL_SIZES = [(1, 1, 2, 2), (2, 3, 5, 7), (1, 8, 8, 8), (1, 16, 9, 16), (3, 21, 11, 6),
            (1, 64, 17, 15), (2, 72, 12, 12), (1, 100, 7, 9)]


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@pytest.mark.parametrize(("window", "size"), list(itertools.product(WINDOWS, CL_SIZES)))
def test_channels_last_matches_torch(isa, window, size):
    require_isa(isa)
    k, s, p = window
    if size[2] + 2 * p[0] < k[0] or size[3] + 2 * p[1] < k[1]:
        pytest.skip("window larger than the padded input")
    gen = torch.Generator().manual_seed(hash((window, size)) % 2**31)
    x = torch.randn(size, generator=gen)
    with kernels.use_isa(isa):
        got = _channels_last(x, k, s, p)
    assert torch.equal(got, _torch(x, k, s, p))


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@pytest.mark.parametrize("window", WINDOWS)
def test_channels_last_nan_infinities_and_ties_as_torch(isa, window):
    """NaN wins its windows, infinities and signed zeros as torch (ties keep the earlier
    tap: -0.0 before 0.0 stays -0.0)."""
    require_isa(isa)
    k, s, p = window
    x = _with_specials((2, 37, 9, 10), 3, 40, 20)
    zeros = torch.zeros(1, 37, 4, 4)
    zeros[..., ::2, :] = -0.0
    with kernels.use_isa(isa):
        got = _channels_last(x, k, s, p)
        got_zeros = _channels_last(zeros, (2, 2), (2, 2), (0, 0))
    _assert_same_nans_and_values(got, _torch(x, k, s, p))
    want_zeros = _torch(zeros, (2, 2), (2, 2), (0, 0))
    assert torch.equal(got_zeros.signbit(), want_zeros.signbit())


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@pytest.mark.parametrize(("lower", "upper"), [(0.0, float("inf")), (-0.5, 0.75),
                                              (float("-inf"), 0.25)])
def test_bounds_clamp_after_the_maximum_nan_kept(isa, lower, upper):
    """min(max(pool, lower), upper) as torch's clamp computes it, in both layouts, NaN
    staying NaN; the ReLU / Hardtanh a plan moves into the pool."""
    require_isa(isa)
    x = _with_specials((2, 21, 9, 10), 6, 10, 10)
    want = torch.clamp(_torch(x, (3, 3), (2, 2), (1, 1)), lower, upper)
    with kernels.use_isa(isa):
        nchw = direct.max_pool2d(x.numpy(), (3, 3), (2, 2), (1, 1), lower, upper)
        cl = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).numpy()
        last = direct.max_pool2d_channels_last(cl, (3, 3), (2, 2), (1, 1), lower, upper)
        two = direct.max_pool2d(x.numpy(), (2, 2), (2, 2), (0, 0), lower, upper)
    _assert_same_nans_and_values(torch.from_numpy(nchw), want)
    _assert_same_nans_and_values(torch.from_numpy(last), want)
    _assert_same_nans_and_values(torch.from_numpy(two),
                                 torch.clamp(_torch(x, (2, 2), (2, 2), (0, 0)), lower, upper))


def test_channels_last_threads_and_batch():
    """Rows of several images over a team of threads."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 64, 40, 40, generator=gen)
    previous = kernels.get_num_threads()
    kernels.set_num_threads(2)
    try:
        got = _channels_last(x, (3, 3), (2, 2), (1, 1))
    finally:
        kernels.set_num_threads(previous)
    assert torch.equal(got, _torch(x, (3, 3), (2, 2), (1, 1)))


@pytest.mark.parametrize(("x", "args", "error", "message"), [
    (np.zeros((2, 4, 4), np.float32), ((2, 2), (2, 2), (0, 0)), ValueError, "4"),
    (np.zeros((1, 4, 4, 2), np.float64), ((2, 2), (2, 2), (0, 0)), TypeError, ""),
    (np.zeros((1, 4, 4, 4), np.float32)[..., ::2], ((2, 2), (2, 2), (0, 0)), ValueError, ""),
    (np.zeros((1, 4, 4, 2), np.float32), ((2, 2), (2, 2), (2, 0)), ValueError, "at most half"),
    (np.zeros((1, 4, 4, 2), np.float32), ((9, 2), (1, 1), (0, 0)), ValueError,
     "smaller than the kernel"),
])
def test_channels_last_bad_input_is_refused(x, args, error, message):
    with pytest.raises(error, match=message):
        direct.max_pool2d_channels_last(x, *args)


def test_fast_max_pool_module_takes_the_kernel_and_keeps_autograd():
    pool = FastMaxPool2d(3, 2, 1)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 13, 12, generator=gen)
    with torch.no_grad():
        assert torch.equal(pool(x), F.max_pool2d(x, 3, 2, 1))
    # With autograd on a tensor that needs it, the traced torch path keeps the gradient.
    x.requires_grad_(True)
    y = pool(x)
    assert y.requires_grad
    y.sum().backward()
    assert x.grad is not None and x.grad.sum() == y.numel()
    # Channels-last input goes to torch's own kernel; the values are the same.
    cl = x.detach().contiguous(memory_format=torch.channels_last)
    assert torch.equal(pool(cl), F.max_pool2d(cl, 3, 2, 1))
