"""Deterministic subsets of a dataset: evenly spaced samples keep every class of a
label-sorted split in its share, with no random state to record."""

from __future__ import annotations

from torch.utils.data import Dataset, Subset


def evenly_spaced_indices(n: int, count: int) -> list[int]:
    """``count`` positions of ``range(n)``, evenly spaced: ``i * n // count``."""
    return [i * n // count for i in range(count)]


def evenly_spaced_subset(dataset: Dataset, count: int | None) -> Dataset:
    """``count`` samples at evenly spaced positions; the whole dataset when ``count`` is None
    or not smaller than it."""
    n = len(dataset)
    if count is None or count >= n:
        return dataset
    return Subset(dataset, evenly_spaced_indices(n, count))


def held_out_split(dataset: Dataset, count: int) -> tuple[Dataset, Dataset]:
    """``(rest, held_out)``: ``count`` evenly spaced samples held out, the rest kept."""
    n = len(dataset)
    if count >= n:
        raise ValueError(f"holding out {count} samples leaves nothing of the {n} to fit on")
    held = evenly_spaced_indices(n, count)
    taken = set(held)
    return Subset(dataset, [i for i in range(n) if i not in taken]), Subset(dataset, held)
