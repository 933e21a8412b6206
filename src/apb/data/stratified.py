"""Fixed stratified train/test splits that never change between runs, machines or versions.

The order of the samples inside each class comes from a keyed hash of their index
(SplitMix64, Steele et al. 2014, written here in numpy integer arithmetic), not from a
library random generator whose stream could change with a numpy release. The test split
takes the first samples of each class in that order, so a given ``(labels, n_test, seed)``
always selects the same samples.
"""

from __future__ import annotations

import numpy as np

SPLIT_SEED = 20240611
"""The seed of every shipped dataset's split. Never change it: results quoted anywhere were
measured on the split it selects."""

_MASK64 = (1 << 64) - 1


def splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser of each uint64 in ``values`` (a bijection of 64-bit integers)."""
    z = values.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def per_class_test_counts(class_sizes: np.ndarray, n_test: int) -> np.ndarray:
    """How many of each class go to the test split: ``n_test`` shared in proportion to the
    class sizes by largest remainder (ties to the lower class), so the counts sum to
    ``n_test`` exactly and each is within one of its proportional share."""
    total = int(class_sizes.sum())
    shares = class_sizes.astype(np.int64) * n_test
    counts = shares // total
    remainders = shares - counts * total
    missing = n_test - int(counts.sum())
    order = np.lexsort((np.arange(len(class_sizes)), -remainders))
    counts[order[:missing]] += 1
    return counts


def stratified_split(
    labels: np.ndarray, n_test: int, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train_indices, test_indices)`` into ``labels`` with ``n_test`` test samples,
    stratified by label. Deterministic in ``(labels, n_test, seed)`` alone."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if not 0 < n_test < len(labels):
        raise ValueError(f"n_test must be in [1, {len(labels) - 1}], got {n_test}")
    classes, class_sizes = np.unique(labels, return_counts=True)
    counts = per_class_test_counts(class_sizes, n_test)
    index = np.arange(len(labels), dtype=np.uint64)
    keys = splitmix64(index ^ np.uint64(seed & _MASK64))
    test_parts = []
    for label, count in zip(classes, counts, strict=True):
        members = np.flatnonzero(labels == label)
        order = np.argsort(keys[members], kind="stable")
        test_parts.append(members[order[:count]])
    test = np.sort(np.concatenate(test_parts))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test
