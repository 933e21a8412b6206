"""The compiled max pooling (``apb.kernels.direct.max_pool2d``) against torch's
``max_pool2d``, over window shapes, strides, padding and odd sizes, NaN and infinities
included; and its argument checks."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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


@pytest.mark.parametrize("window", WINDOWS)
def test_nan_and_infinities_as_torch(window):
    k, s, p = window
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 9, 10, generator=gen)
    flat = x.view(-1)
    flat[torch.randperm(flat.numel(), generator=gen)[:12]] = float("nan")
    flat[torch.randperm(flat.numel(), generator=gen)[:12]] = float("-inf")
    flat[torch.randperm(flat.numel(), generator=gen)[:6]] = float("inf")
    got = torch.from_numpy(direct.max_pool2d(x.numpy(), k, s, p))
    want = _torch(x, k, s, p)
    assert torch.equal(got.isnan(), want.isnan())
    keep = ~want.isnan()
    assert torch.equal(got[keep], want[keep])


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
