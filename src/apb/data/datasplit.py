"""What every dataset loader returns, and the error it raises."""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset


class DataError(ValueError):
    """Data missing, laid out wrongly or malformed; the message says what was expected."""


@dataclass(frozen=True)
class DataSplit:
    """A dataset's train and test splits with what a model needs to know about them.

    Both splits yield ``(image, label)`` pairs: ``image`` a float32 tensor of shape
    ``input_shape`` (normalised), ``label`` an int64 scalar tensor in ``[0, num_classes)``.
    ``classes`` names the labels in order (empty when the source names none).
    """

    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str
    classes: tuple[str, ...] = ()
