"""Small datasets held whole in memory as tensors, split by :mod:`apb.data.stratified`."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from apb.data.datasplit import DataSplit
from apb.data.stratified import stratified_split


def in_memory_split(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    n_test: int,
    mean: float,
    std: float,
) -> DataSplit:
    """A :class:`DataSplit` of two ``TensorDataset``s from ``images`` (N, C, H, W) scaled to
    [0, 1], normalised as ``(x - mean) / std``, and integer ``labels`` (N,) in [0, K).

    The split is :func:`~apb.data.stratified.stratified_split` with its fixed seed.
    """
    train_idx, test_idx = stratified_split(labels, n_test)
    x = torch.from_numpy(((images - mean) / std).astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return DataSplit(
        train=TensorDataset(x[train_idx], y[train_idx]),
        test=TensorDataset(x[test_idx], y[test_idx]),
        num_classes=int(labels.max()) + 1,
        input_shape=tuple(images.shape[1:]),
        name=name,
        classes=tuple(str(k) for k in range(int(labels.max()) + 1)),
    )
