"""Readers for the benchmark datasets in their official layouts.

Each returns a ``data.ImageFileDataset`` (image paths, integer labels, class names), so every
benchmark can use them like any other dataset. The splits are called ``train`` and ``test``
(``test`` is the official validation set, on which the benchmarks report).

- ImageNet (``imagenet:ROOT``): either the class-folder trees ``ROOT/train/<wnid>/*.JPEG`` and
  ``ROOT/val/<wnid>/*.JPEG``, or the list-file form ``ROOT/meta/train.txt`` / ``ROOT/meta/val.txt``
  (``relative/path label`` per line, paths relative to ``ROOT/train`` and ``ROOT/val``; the
  MMSelfSup layout), which is preferred when present. 1000 classes.
- Places205 (``places205:ROOT``): the official list files
  ``ROOT/trainvalsplit_places205/{train,val}_places205.csv`` (``a/abbey/00000001.jpg 0`` per
  line, space separated despite the name), images under ``ROOT/images256`` (or
  ``ROOT/data/vision/torralba/deeplearning/images256``, as the archive unpacks). 205 classes.
- iNaturalist 2018 (``inat2018:ROOT``): the COCO-style ``ROOT/train2018.json`` and
  ``ROOT/val2018.json`` (``images``, ``annotations``, ``categories``); image ``file_name``\\ s are
  relative to ``ROOT``. 8142 classes.

The list files follow ``list_files``' rules (comments, a header, paths checked when read). An
image path (a list entry, a ``file_name``) must lie under the image folder: an absolute one, or
one climbing out with ``..``, is refused unless ``allow_outside_root``. Every error is a
``data.DataError`` on one line, naming the file and the line, or the JSON key and index, at fault.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from .data import (DataError, ImageFileDataset, class_folders, file_exists, image_folder_dataset,
                   is_image_file, printable)
from .list_files import listed_path, read_list_file

IMAGENET_CLASSES = 1000
PLACES205_CLASSES = 205
INAT2018_CLASSES = 8142

_OFFICIAL_SPLIT = {"train": "train", "test": "val"}


def _check_split(split: str) -> str:
    if split not in _OFFICIAL_SPLIT:
        raise DataError(f"unknown split {split!r}; expected train or test (the validation set)")
    return _OFFICIAL_SPLIT[split]


def _require_file(path: Path, what: str) -> Path:
    if not file_exists(path):
        raise DataError(f"{what} {path} not found")
    return path


# ----------------------------------------------------------------------------------------------
# ImageNet


def imagenet_folder(root: str | os.PathLike, split: str, classes: Sequence[str] | None = None
                    ) -> ImageFileDataset:
    """``ROOT/{train,val}/<wnid>/*``: the classes are the sorted training folders, and every
    validation folder must be one of them (so both splits share the label numbers)."""
    root = Path(root)
    folder = root / _check_split(split)
    if not folder.is_dir():
        raise DataError(f"ImageNet: folder {folder} not found")
    train = root / "train"
    if classes is None:
        if not train.is_dir():
            raise DataError(f"ImageNet: folder {train} not found (it defines the classes)")
        classes = [p.name for p in class_folders(train)]
    stray = next((p for p in folder.iterdir() if p.is_file() and is_image_file(p)), None)
    if stray is not None:
        raise DataError(f"ImageNet: {stray} lies directly in {folder}; the validation "
                        "images must be sorted into class folders, or use meta/val.txt")
    return image_folder_dataset(folder, name=f"imagenet:{split}", classes=classes)


def imagenet_dataset(root: str | os.PathLike, split: str, check_files: bool = True,
                     allow_outside_root: bool = False) -> ImageFileDataset:
    """ImageNet from ``ROOT/meta/{train,val}.txt`` when present, else from the class folders."""
    root = Path(root)
    official = _check_split(split)
    list_file = root / "meta" / f"{official}.txt"
    if list_file.is_file():
        return read_list_file(list_file, root / official, IMAGENET_CLASSES, check_files,
                              name=f"imagenet:{split}", allow_outside_root=allow_outside_root)
    if not (root / official).is_dir():
        raise DataError(f"ImageNet: neither {list_file} nor the folder {root / official} found")
    return imagenet_folder(root, split)


# ----------------------------------------------------------------------------------------------
# Places205


def places205_dataset(root: str | os.PathLike, split: str, check_files: bool = True,
                      allow_outside_root: bool = False) -> ImageFileDataset:
    """The official Places205 lists ``trainvalsplit_places205/{train,val}_places205.csv``."""
    root = Path(root)
    list_file = root / "trainvalsplit_places205" / f"{_check_split(split)}_places205.csv"
    _require_file(list_file, "Places205 list file")
    for images in (root / "images256", root / "data/vision/torralba/deeplearning/images256"):
        if images.is_dir():
            break
    else:
        if check_files:
            raise DataError(f"Places205: image folder {root / 'images256'} not found")
    return read_list_file(list_file, images, PLACES205_CLASSES, check_files,
                          name=f"places205:{split}", allow_outside_root=allow_outside_root)


# ----------------------------------------------------------------------------------------------
# iNaturalist 2018


def _load_json(path: Path) -> Any:
    _require_file(path, "annotation file")
    try:
        return json.loads(path.read_bytes())  # UTF-8, -16 or -32, as JSON allows
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}:{error.colno}: malformed JSON ({error.msg})") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 JSON (byte {error.start})") from None
    except RecursionError:
        raise DataError(f"{path}: malformed JSON (nested too deeply)") from None
    except (ValueError, OSError) as error:  # a number of over 4300 digits, a read error
        raise DataError(f"{path}: cannot read JSON ({printable(str(error))})") from None


def _records(document: Any, key: str, path: Path, required: Sequence[str]) -> list[dict]:
    if not isinstance(document, dict) or key not in document:
        raise DataError(f"{path}: missing key {key!r} (a COCO-style file has 'images', "
                        "'annotations' and 'categories')")
    records = document[key]
    if not isinstance(records, list):
        raise DataError(f"{path}: {key!r} must be a list")
    for position, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{path}: {key}[{position}] is not an object")
        missing = [name for name in required if name not in record]
        if missing:
            raise DataError(f"{path}: {key}[{position}] has no {', '.join(map(repr, missing))}")
    return records


def _category_id(value: Any, where: str, key: str) -> int:
    """A category id: a JSON integer (or a string of decimal digits), never a bool or a float."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 20:
        return int(value)
    raise DataError(f"{where}: {key!r} {value!r:.80} is not an integer category id")


def _image_id(value: Any, where: str, key: str) -> int | str:
    """An image id: a JSON integer or string (something two records can be matched on)."""
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return value
    raise DataError(f"{where}: {key!r} {value!r:.80} is not an integer or string image id")


def inat_categories(path: str | os.PathLike) -> tuple[dict[int, int], list[str]]:
    """Category id -> label (ids in sorted order) and the class names, from a COCO-style file."""
    path = Path(path)
    categories = _records(_load_json(path), "categories", path, ("id",))
    names: dict[int, str] = {}
    for position, category in enumerate(categories):
        where = f"{path}: categories[{position}]"
        cid = _category_id(category["id"], where, "id")
        if cid in names:
            raise DataError(f"{where}: 'categories' repeats id {cid}")
        names[cid] = printable(str(category.get("name", cid)))
    ids = sorted(names)
    return {cid: i for i, cid in enumerate(ids)}, [names[cid] for cid in ids]


def _image_files(path: Path, images: list[dict]) -> dict[int | str, str]:
    """Image id -> file name, every id once and every file name a non-empty string."""
    files: dict[int | str, str] = {}
    for position, image in enumerate(images):
        where = f"{path}: images[{position}]"
        image_id = _image_id(image["id"], where, "id")
        if image_id in files:
            raise DataError(f"{where}: repeats id {image_id!r}")
        name = image["file_name"]
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{where}: 'file_name' {name!r:.80} is not a path (a non-empty "
                            "string relative to the image folder)")
        files[image_id] = name
    return files


def _labels_of_images(path: Path, annotations: list[dict], files: dict, labels: dict[int, int]
                      ) -> dict[int | str, int]:
    """Image id -> label, from exactly one annotation per image."""
    label_of: dict[int | str, int] = {}
    for position, annotation in enumerate(annotations):
        where = f"{path}: annotations[{position}]"
        image_id = _image_id(annotation["image_id"], where, "image_id")
        category = _category_id(annotation["category_id"], where, "category_id")
        if image_id not in files:
            raise DataError(f"{where}: image_id {image_id!r} is not in 'images'")
        if category not in labels:
            raise DataError(f"{where}: category_id {category!r} is not a known category "
                            "(unknown class)")
        if image_id in label_of:
            raise DataError(f"{where}: image_id {image_id!r} has a second annotation")
        label_of[image_id] = labels[category]
    return label_of


def inat_json_dataset(path: str | os.PathLike, image_root: str | os.PathLike,
                      labels: dict[int, int] | None = None, classes: Sequence[str] | None = None,
                      check_files: bool = True, name: str | None = None,
                      allow_outside_root: bool = False) -> ImageFileDataset:
    """One COCO-style annotation file: every image with exactly one annotation.

    ``labels`` (category id -> label) defaults to this file's own categories; pass the training
    file's so that validation labels agree with training ones. A ``file_name`` is relative to
    ``image_root`` and must lie under it (unless ``allow_outside_root``).
    """
    path, image_root = Path(path), Path(image_root)
    document = _load_json(path)
    images = _records(document, "images", path, ("id", "file_name"))
    annotations = _records(document, "annotations", path, ("image_id", "category_id"))
    if labels is None:
        labels, classes = inat_categories(path)
    files = _image_files(path, images)
    label_of = _labels_of_images(path, annotations, files, labels)
    paths, targets = [], []
    for position, (image_id, file_name) in enumerate(files.items()):
        where = f"{path}: images[{position}]"
        if image_id not in label_of:
            raise DataError(f"{path}: images[{position}] (id {image_id!r}) has no annotation")
        paths.append(listed_path(image_root, file_name, where, allow_outside_root, check_files))
        targets.append(label_of[image_id])
    if not paths:
        raise DataError(f"{path}: no images")
    return ImageFileDataset(paths, targets, classes or [str(i) for i in range(len(labels))],
                            name=name or str(path))


def inat2018_dataset(root: str | os.PathLike, split: str, check_files: bool = True,
                     allow_outside_root: bool = False) -> ImageFileDataset:
    """``ROOT/train2018.json`` / ``ROOT/val2018.json``, labels numbered by the training file's
    categories (8142 in the official release)."""
    root = Path(root)
    labels, classes = inat_categories(root / "train2018.json")
    return inat_json_dataset(root / f"{_check_split(split)}2018.json", root, labels, classes,
                             check_files, name=f"inat2018:{split}",
                             allow_outside_root=allow_outside_root)


# ----------------------------------------------------------------------------------------------
# The --data prefixes (datasets.load_dataset dispatches on them)


READERS = {"imagenet:": imagenet_dataset, "places205:": places205_dataset,
           "inat2018:": inat2018_dataset}
