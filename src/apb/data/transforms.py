"""Per-image tensor transforms for ``(C, H, W)`` float images, drawing from torch's global RNG.

Using torch's generator (not Python's or numpy's) means every DataLoader worker draws
different augmentations: PyTorch seeds each worker's torch generator differently.
"""

from __future__ import annotations

import torch


def normalize(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(image - mean[c]) / std[c]`` per channel ``c``; ``mean`` and ``std`` have shape (C,)."""
    return (image - mean[:, None, None]) / std[:, None, None]


def random_hflip(image: torch.Tensor) -> torch.Tensor:
    """Mirror left-right with probability 1/2."""
    if torch.rand(()) < 0.5:
        return image.flip(-1)
    return image


def random_pad_crop(image: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad ``padding`` pixels on every side, then crop back to the original size at a
    uniformly random offset (the CIFAR "random crop 32, padding 4" augmentation)."""
    height, width = image.shape[-2:]
    padded = torch.nn.functional.pad(image, (padding, padding, padding, padding))
    top, left = torch.randint(0, 2 * padding + 1, (2,)).tolist()
    return padded[..., top : top + height, left : left + width]
