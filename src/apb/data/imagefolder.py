"""ImageNet-style image folders, decoded with PIL and transformed with PIL + torch.

Expected layout (class index = position of the folder name in the sorted train class list)::

    <data_dir>/train/<class>/*.jpg|*.jpeg|*.png
    <data_dir>/val/<class>/*.jpg|*.jpeg|*.png

Every val class must also be a train class; extensions match case-insensitively; other files
are ignored. Only the file lists are read up front; images are decoded on access. Symbolic
links are followed only when they resolve inside ``data_dir``; one pointing out of it (to a
file or a class folder) raises DataError.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from apb.data.datasplit import DataError, DataSplit
from apb.data.registry import register
from apb.data.transforms import normalize, random_hflip

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_RATIO = 256 / 224
"""Evaluation resizes the shorter side to ``image_size * 256 / 224`` before the center crop."""
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)

LAYOUT = (
    "expected an ImageNet-style folder: <data_dir>/train/<class>/*.jpg|*.jpeg|*.png and "
    "<data_dir>/val/<class>/*.jpg|*.jpeg|*.png, one sub-folder per class"
)


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


def random_resized_crop(image: Image.Image, size: int) -> Image.Image:
    """A random box covering 8-100% of the image area with aspect ratio in [3/4, 4/3]
    (log-uniform), resized to ``size`` x ``size``; after 10 boxes that do not fit, the
    largest centred square. The Inception-style crop (Szegedy et al. 2015)."""
    width, height = image.size
    area = width * height
    for _ in range(10):
        target_area = area * _uniform(*CROP_SCALE)
        aspect = math.exp(_uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        box_w = round(math.sqrt(target_area * aspect))
        box_h = round(math.sqrt(target_area / aspect))
        if 0 < box_w <= width and 0 < box_h <= height:
            top = int(torch.randint(0, height - box_h + 1, ()))
            left = int(torch.randint(0, width - box_w + 1, ()))
            box = (left, top, left + box_w, top + box_h)
            return image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    box = (left, top, left + side, top + side)
    return image.resize((size, size), Image.Resampling.BILINEAR, box=box)


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``round(size * 256 / 224)`` keeping the aspect ratio, then
    cut the centred ``size`` x ``size`` square (the standard ImageNet evaluation view)."""
    width, height = image.size
    short = round(size * RESIZE_RATIO)
    scale = short / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return resized.crop((left, top, left + size, top + size))


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 (3, H, W) tensor in [0, 1]."""
    array = np.array(image, dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0


class ImageFolderImages(Dataset):
    """``(path, class index)`` samples decoded on access into normalised (3, S, S) float32.

    ``train=True``: :func:`random_resized_crop` then a random horizontal flip;
    ``train=False``: :func:`resize_center_crop`. Holds only strings and ints, so it pickles
    into DataLoader workers.
    """

    def __init__(self, samples: list[tuple[str, int]], image_size: int, train: bool):
        self.samples = samples
        self.image_size = image_size
        self.train = train
        self.mean = torch.tensor(IMAGENET_MEAN)
        self.std = torch.tensor(IMAGENET_STD)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as raw:
                image = raw.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"cannot decode image {path}: {err}") from err
        if self.train:
            tensor = random_hflip(pil_to_tensor(random_resized_crop(image, self.image_size)))
        else:
            tensor = pil_to_tensor(resize_center_crop(image, self.image_size))
        return normalize(tensor, self.mean, self.std), torch.tensor(label, dtype=torch.int64)


def _inside(path: Path, root: Path) -> Path:
    """``path`` itself, after checking that it resolves inside ``root`` (a symbolic link out
    of the data directory is refused, not followed)."""
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError) as err:
        raise DataError(f"cannot resolve {path}: {err}") from None
    if not resolved.is_relative_to(root):
        raise DataError(
            f"{path} resolves to {resolved}, outside the data directory {root}; apb reads "
            "image folders only from files inside it: copy (or bind-mount) them in"
        )
    return path


def _class_folders(split_dir: Path, root: Path) -> list[Path]:
    if not split_dir.is_dir():
        raise DataError(f"missing folder {split_dir}; {LAYOUT}")
    _inside(split_dir, root)
    folders = sorted(_inside(p, root) for p in split_dir.iterdir()
                     if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"no class folders in {split_dir}; {LAYOUT}")
    return folders


def _image_files(class_dir: Path, root: Path) -> list[str]:
    files = []
    with os.scandir(class_dir) as entries:  # the folder resolved inside root already
        for entry in entries:
            if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file():
                if entry.is_symlink():
                    _inside(Path(entry.path), root)
                files.append(entry.path)
    files.sort()
    if not files:
        raise DataError(
            f"class folder {class_dir} holds no {'/'.join(IMAGE_EXTENSIONS)} images; {LAYOUT}"
        )
    return files


def scan_image_folders(data_dir: Path) -> tuple[tuple[str, ...], list, list]:
    """``(classes, train_samples, val_samples)``; classes are the sorted train folder names.
    Every folder and image must resolve inside ``data_dir`` (itself may be a link): a
    symbolic link pointing out of it raises DataError."""
    if not data_dir.is_dir():
        raise DataError(f"image folder {data_dir} does not exist; {LAYOUT}")
    root = data_dir.resolve()
    train_folders = _class_folders(data_dir / "train", root)
    val_folders = _class_folders(data_dir / "val", root)
    classes = tuple(folder.name for folder in train_folders)
    index = {name: k for k, name in enumerate(classes)}
    unknown = [folder.name for folder in val_folders if folder.name not in index]
    if unknown:
        raise DataError(
            f"val classes {unknown} have no folder in {data_dir / 'train'}; every val class "
            f"must be a train class (train classes: {list(classes)})"
        )
    train = [(f, index[d.name]) for d in train_folders for f in _image_files(d, root)]
    val = [(f, index[d.name]) for d in val_folders for f in _image_files(d, root)]
    return classes, train, val


@register("imagefolder")
def load_imagefolder(
    data_dir: str | Path | None = None, image_size: int = 224, augment: bool = True
) -> DataSplit:
    """Train and val splits of an ImageNet-style folder as normalised (3, ``image_size``,
    ``image_size``) float32 images (ImageNet mean / std) and int64 labels.

    ``augment=False`` gives the train split the evaluation transform too (e.g. for BatchNorm
    re-estimation or calibration sets).
    """
    if data_dir is None:
        raise DataError(f"dataset 'imagefolder' needs data_dir; {LAYOUT}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    if not isinstance(augment, bool):
        raise TypeError(f"augment must be True or False, got {augment!r}")
    classes, train, val = scan_image_folders(Path(data_dir))
    return DataSplit(
        train=ImageFolderImages(train, image_size, train=augment),
        test=ImageFolderImages(val, image_size, train=False),
        num_classes=len(classes),
        input_shape=(3, image_size, image_size),
        name="imagefolder",
        classes=classes,
    )
