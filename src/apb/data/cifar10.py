"""CIFAR-10 (Krizhevsky 2009) read from the standard "python version" files on disk.

Expected layout, as the CIFAR-10 python version (``cifar-10-python.tar.gz``) extracts
(nothing is ever downloaded)::

    <data_dir>/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch [, batches.meta]

or the same files directly in ``<data_dir>``. Each batch is a pickled dict with ``b"data"``, a
uint8 array (N, 3072) of rows ``R(32x32) G(32x32) B(32x32)``, and ``b"labels"``, N ints in
[0, 10). The files are read with :mod:`apb.data.cifar_pickle`'s restricted unpickler.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from apb.data.cifar_pickle import load_cifar_pickle
from apb.data.datasplit import DataError, DataSplit
from apb.data.registry import register
from apb.data.transforms import normalize, random_hflip, random_pad_crop

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{k}" for k in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_META_FILE = "batches.meta"
CIFAR10_SUBDIR = "cifar-10-batches-py"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
"""Per-channel pixel mean and standard deviation of the 50,000 training images in [0, 1]."""

CIFAR10_PADDING = 4


class CIFAR10Images(Dataset):
    """CIFAR images kept as uint8 (N, 3, 32, 32); ``__getitem__`` returns a normalised float32
    (3, 32, 32) image and its int64 label.

    With ``augment=True`` each access first pads 4 zero (black) pixels on every side and crops
    32x32 back at a random offset, then mirrors left-right with probability 1/2.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: bool):
        self.images = images
        self.labels = labels
        self.augment = augment
        self.mean = torch.tensor(CIFAR10_MEAN)
        self.std = torch.tensor(CIFAR10_STD)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index].float() / 255.0
        if self.augment:
            image = random_hflip(random_pad_crop(image, CIFAR10_PADDING))
        return normalize(image, self.mean, self.std), self.labels[index]


def _expected_files_message(data_dir: Path) -> str:
    names = ", ".join((*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE))
    return (
        f"expected the CIFAR-10 python-version files {names} in {data_dir / CIFAR10_SUBDIR} or "
        f"in {data_dir}: extract the CIFAR-10 python version (cifar-10-python.tar.gz) there; "
        "apb never downloads data"
    )


def find_cifar10_dir(data_dir: Path) -> Path:
    """The folder holding the batch files: ``data_dir/cifar-10-batches-py`` or ``data_dir``."""
    if not data_dir.is_dir():
        raise DataError(
            f"CIFAR-10 directory {data_dir} does not exist; " + _expected_files_message(data_dir)
        )
    required = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
    candidates = [data_dir / CIFAR10_SUBDIR, data_dir]
    for folder in candidates:
        if all((folder / name).is_file() for name in required):
            return folder
    folder = candidates[0] if candidates[0].is_dir() else data_dir
    missing = [name for name in required if not (folder / name).is_file()]
    raise DataError(
        f"CIFAR-10 files missing in {folder}: {', '.join(missing)}; "
        + _expected_files_message(data_dir)
    )


def _str_keys(batch: object, path: Path) -> dict[str, object]:
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(batch).__name__}")
    return {
        key.decode("latin1") if isinstance(key, bytes) else str(key): value
        for key, value in batch.items()
    }


def read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 3, 32, 32), labels int64 (N,))`` from one batch file, validated."""
    batch = _str_keys(load_cifar_pickle(path), path)
    missing = [key for key in ("data", "labels") if key not in batch]
    if missing:
        raise DataError(
            f"{path}: batch dict lacks key(s) {missing}; a CIFAR-10 batch has b'data' "
            f"(uint8 array N x 3072) and b'labels' (N ints); found keys {sorted(batch)}"
        )
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: b'data' must be a uint8 numpy array, found {kind}")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] == 0:
        raise DataError(
            f"{path}: b'data' must have shape (N, 3072) with N >= 1, found {data.shape}"
        )
    labels = _validated_labels(labels, data.shape[0], path)
    return data.reshape(-1, 3, 32, 32), labels


def _validated_labels(labels: object, count: int, path: Path) -> np.ndarray:
    if isinstance(labels, np.ndarray) and labels.dtype.kind in "iu" and labels.ndim == 1:
        values = labels.astype(np.int64)
    elif isinstance(labels, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in labels
    ):
        bad = next((v for v in labels if not 0 <= v < len(CIFAR10_CLASSES)), None)
        if bad is not None:  # before int64 conversion, which overflows on huge values
            raise DataError(f"{path}: labels must lie in [0, {len(CIFAR10_CLASSES) - 1}], "
                            f"found {bad}")
        values = np.array(labels, dtype=np.int64)
    else:
        raise DataError(f"{path}: b'labels' must be a list of ints, found {type(labels).__name__}")
    if len(values) != count:
        raise DataError(f"{path}: {len(values)} labels for {count} images")
    if values.size and (values.min() < 0 or values.max() >= len(CIFAR10_CLASSES)):
        raise DataError(
            f"{path}: labels must lie in [0, {len(CIFAR10_CLASSES) - 1}], "
            f"found {values.min()}..{values.max()}"
        )
    return values


def read_cifar10_classes(folder: Path) -> tuple[str, ...]:
    """Class names from ``batches.meta`` when present, else the standard ten."""
    path = folder / CIFAR10_META_FILE
    if not path.is_file():
        return CIFAR10_CLASSES
    names = _str_keys(load_cifar_pickle(path), path).get("label_names")
    if (
        not isinstance(names, list)
        or len(names) != len(CIFAR10_CLASSES)
        or not all(isinstance(n, (bytes, str)) for n in names)
    ):
        raise DataError(f"{path}: b'label_names' must be a list of {len(CIFAR10_CLASSES)} names")
    try:
        return tuple(n.decode("utf-8") if isinstance(n, bytes) else n for n in names)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: b'label_names' holds a name that is not UTF-8 text "
                        f"({err.reason} at byte {err.start})") from None


def _images_dataset(paths: list[Path], augment: bool) -> CIFAR10Images:
    parts = [read_cifar10_batch(path) for path in paths]
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts])
    return CIFAR10Images(torch.from_numpy(images), torch.from_numpy(labels), augment)


@register("cifar10")
def load_cifar10(data_dir: str | Path | None = None, augment: bool = True) -> DataSplit:
    """CIFAR-10 from ``data_dir``: 50,000 train / 10,000 test (3, 32, 32) images normalised
    with :data:`CIFAR10_MEAN` / :data:`CIFAR10_STD`; ``augment`` turns on the train split's
    random crop (padding 4) and horizontal flip. The test split is never augmented."""
    if data_dir is None:
        raise DataError("dataset 'cifar10' needs data_dir; " + _expected_files_message(Path("DIR")))
    if not isinstance(augment, bool):
        raise TypeError(f"augment must be True or False, got {augment!r}")
    folder = find_cifar10_dir(Path(data_dir))
    return DataSplit(
        train=_images_dataset([folder / name for name in CIFAR10_TRAIN_FILES], augment),
        test=_images_dataset([folder / CIFAR10_TEST_FILE], augment=False),
        num_classes=len(CIFAR10_CLASSES),
        input_shape=(3, 32, 32),
        name="cifar10",
        classes=read_cifar10_classes(folder),
    )
