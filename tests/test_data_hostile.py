"""Data folders that lie (issue 19): image-folder links are followed only inside
``data_dir``; CIFAR labels and class names are checked before they are converted."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from _hostile import cifar_dir
from apb.data import DataError, load


def image_root(tmp_path):
    root = tmp_path / "images"
    for split in ("train", "val"):
        (root / split / "a").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / split / "a" / "0.png")
    return root


def test_links_inside_the_root_are_followed(tmp_path):
    root = image_root(tmp_path)
    (root / "train" / "a" / "1.png").symlink_to(root / "val" / "a" / "0.png")
    (root / "train" / "b").symlink_to(root / "val" / "a", target_is_directory=True)
    link = tmp_path / "link-to-root"
    link.symlink_to(root, target_is_directory=True)
    split = load("imagefolder", link, image_size=8)
    assert split.classes == ("a", "b") and len(split.train) == 3


@pytest.mark.parametrize("what", ["image", "class folder", "split folder"])
def test_links_out_of_the_root_are_refused(tmp_path, what):
    root = image_root(tmp_path)
    outside = tmp_path / "outside"
    (outside / "c").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside / "c" / "x.png")
    if what == "image":
        (root / "train" / "a" / "x.png").symlink_to(outside / "c" / "x.png")
    elif what == "class folder":
        (root / "train" / "c").symlink_to(outside / "c", target_is_directory=True)
    else:
        (root / "val" / "a" / "0.png").unlink()
        (root / "val" / "a").rmdir()
        (root / "val").rmdir()
        (root / "val").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError, match="outside the data directory"):
        load("imagefolder", root, image_size=8)


def test_cifar_labels_and_names_are_checked_before_conversion(tmp_path):
    with pytest.raises(DataError, match=r"labels must lie in \[0, 9\], found 1180591620717411303424"):
        load("cifar10", cifar_dir(tmp_path / "a", labels=[0, 2**70]))
    with pytest.raises(DataError, match="batches.meta: b'label_names' holds a name that is not "
                                        "UTF-8"):
        load("cifar10", cifar_dir(tmp_path / "b", meta=[b"\xff"] + [b"x"] * 9))
    assert load("cifar10", cifar_dir(tmp_path / "c", meta=[b"x"] * 10)).classes == ("x",) * 10
