"""scikit-learn's 1,797 8x8 handwritten digits (UCI optdigits test set), shipped offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from apb.data.datasplit import DataError, DataSplit
from apb.data.in_memory import in_memory_split
from apb.data.registry import register

DIGITS_MEAN = 0.3053
DIGITS_STD = 0.3760
"""Pixel mean / std of all 1,797 images scaled to [0, 1] (pixel value / 16), fixed here."""

DIGITS_TEST_SIZE = 360
"""About 20%, shared between classes in proportion to their sizes; 1,437 digits train."""


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The raw data: pixels (1797, 64) float64 in [0, 16] and labels (1797,) in [0, 9]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise DataError(
            "dataset 'digits' needs the 'scikit-learn' package, which ships the 1,797 "
            "digits: pip install scikit-learn"
        ) from err
    bunch = load_digits()
    return bunch.data, bunch.target


@register("digits")
def load_digits_split(data_dir: str | Path | None = None) -> DataSplit:
    """The digits as (N, 1, 8, 8) float32 tensors, ``(x / 16 - 0.3053) / 0.3760``, and int64
    labels: a fixed stratified split of 1,437 train / 360 test images
    (:data:`apb.data.stratified.SPLIT_SEED`). ``data_dir`` is ignored: the data is shipped."""
    images, labels = digits_arrays()
    return in_memory_split(
        "digits",
        images.reshape(-1, 1, 8, 8) / 16.0,
        labels,
        n_test=DIGITS_TEST_SIZE,
        mean=DIGITS_MEAN,
        std=DIGITS_STD,
    )
