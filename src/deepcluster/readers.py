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

Every error is a ``data.DataError`` naming the file and the line, or the JSON key and index, at
fault.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from .data import DataError, ImageFileDataset, IMAGE_EXTENSIONS

IMAGENET_CLASSES = 1000
PLACES205_CLASSES = 205
INAT2018_CLASSES = 8142

_OFFICIAL_SPLIT = {"train": "train", "test": "val"}


def _check_split(split: str) -> str:
    if split not in _OFFICIAL_SPLIT:
        raise DataError(f"unknown split {split!r}; expected train or test (the validation set)")
    return _OFFICIAL_SPLIT[split]


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{what} {path} not found")
    return path


# ----------------------------------------------------------------------------------------------
# List files (ImageNet meta/*.txt, Places205 *_places205.csv)


def read_list_file(list_file: str | os.PathLike, image_root: str | os.PathLike,
                   num_classes: int | None = None, check_files: bool = True,
                   name: str | None = None) -> ImageFileDataset:
    """Lines of ``relative/path label``; paths relative to ``image_root``.

    Class names come from the image's parent folder when every label has a single one (``a/abbey``
    -> ``abbey``, ``n01440764`` -> ``n01440764``), else they are the label numbers. Errors name the
    line: a wrong number of fields, a label that is not an integer or outside
    ``[0, num_classes)``, one label used for two class folders, an image that does not exist.
    """
    list_file, image_root = Path(list_file), Path(image_root)
    _require_file(list_file, "list file")
    if check_files and not image_root.is_dir():
        raise DataError(f"{list_file}: image folder {image_root} not found")
    paths, targets, folders = [], [], {}
    with open(list_file) as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{list_file}:{number}"
            if len(fields) != 2:
                raise DataError(f"{where}: expected 'relative/path label', got {line.strip()!r}")
            try:
                label = int(fields[1])
            except ValueError:
                raise DataError(f"{where}: label {fields[1]!r} is not an integer") from None
            if label < 0 or (num_classes is not None and label >= num_classes):
                limit = f"[0, {num_classes})" if num_classes is not None else "non-negative"
                raise DataError(f"{where}: label {label} is outside {limit} (unknown class)")
            path = image_root / fields[0]
            if check_files and not path.is_file():
                raise DataError(f"{where}: image {path} not found")
            folder = str(Path(fields[0]).parent)
            if folder != ".":
                known = folders.setdefault(label, (folder, number))
                if known[0] != folder:
                    raise DataError(f"{where}: label {label} is used for folder {folder!r} here "
                                    f"but for {known[0]!r} on line {known[1]}")
            paths.append(path)
            targets.append(label)
    if not paths:
        raise DataError(f"{list_file}: the list is empty")
    classes = _class_names(folders, num_classes or max(targets) + 1)
    return ImageFileDataset(paths, targets, classes, name=name or str(list_file))


def _class_names(folders: dict[int, tuple[str, int]], count: int) -> list[str]:
    names = [Path(folders[i][0]).name if i in folders else str(i) for i in range(count)]
    return names if len(set(names)) == len(names) else [str(i) for i in range(count)]


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
        classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    index = {name: i for i, name in enumerate(classes)}
    paths, targets = [], []
    for class_dir in sorted(p for p in folder.iterdir()):
        if not class_dir.is_dir():
            if class_dir.suffix.lower() in IMAGE_EXTENSIONS:
                raise DataError(f"ImageNet: {class_dir} lies directly in {folder}; the validation "
                                "images must be sorted into class folders, or use meta/val.txt")
            continue
        if class_dir.name not in index:
            raise DataError(f"ImageNet: class folder {class_dir} is not a training class "
                            f"(unknown class {class_dir.name!r})")
        files = sorted(p for p in class_dir.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += files
        targets += [index[class_dir.name]] * len(files)
    if not paths:
        raise DataError(f"ImageNet: no images found under {folder}")
    return ImageFileDataset(paths, targets, classes, name=f"imagenet:{split}")


def imagenet_dataset(root: str | os.PathLike, split: str, check_files: bool = True
                     ) -> ImageFileDataset:
    """ImageNet from ``ROOT/meta/{train,val}.txt`` when present, else from the class folders."""
    root = Path(root)
    official = _check_split(split)
    list_file = root / "meta" / f"{official}.txt"
    if list_file.is_file():
        return read_list_file(list_file, root / official, IMAGENET_CLASSES, check_files,
                              name=f"imagenet:{split}")
    if not (root / official).is_dir():
        raise DataError(f"ImageNet: neither {list_file} nor the folder {root / official} found")
    return imagenet_folder(root, split)


# ----------------------------------------------------------------------------------------------
# Places205


def places205_dataset(root: str | os.PathLike, split: str, check_files: bool = True
                      ) -> ImageFileDataset:
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
                          name=f"places205:{split}")


# ----------------------------------------------------------------------------------------------
# iNaturalist 2018


def _load_json(path: Path) -> Any:
    _require_file(path, "annotation file")
    try:
        with open(path) as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}:{error.colno}: malformed JSON ({error.msg})") from None


def _records(document: Any, key: str, path: Path, required: Sequence[str]) -> list[dict]:
    if not isinstance(document, dict) or key not in document:
        raise DataError(f"{path}: missing key {key!r} (a COCO-style file has 'images', "
                        "'annotations' and 'categories')")
    records = document[key]
    if not isinstance(records, list):
        raise DataError(f"{path}: {key!r} must be a list")
    for position, record in enumerate(records):
        missing = [name for name in required if not isinstance(record, dict) or name not in record]
        if missing:
            raise DataError(f"{path}: {key}[{position}] has no {', '.join(map(repr, missing))}")
    return records


def inat_categories(path: str | os.PathLike) -> tuple[dict[int, int], list[str]]:
    """Category id -> label (ids in sorted order) and the class names, from a COCO-style file."""
    path = Path(path)
    categories = _records(_load_json(path), "categories", path, ("id",))
    ids = sorted(int(c["id"]) for c in categories)
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: 'categories' repeats an id")
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    return {cid: i for i, cid in enumerate(ids)}, [names[cid] for cid in ids]


def inat_json_dataset(path: str | os.PathLike, image_root: str | os.PathLike,
                      labels: dict[int, int] | None = None, classes: Sequence[str] | None = None,
                      check_files: bool = True, name: str | None = None) -> ImageFileDataset:
    """One COCO-style annotation file: every image with exactly one annotation.

    ``labels`` (category id -> label) defaults to this file's own categories; pass the training
    file's so that validation labels agree with training ones.
    """
    path, image_root = Path(path), Path(image_root)
    document = _load_json(path)
    images = _records(document, "images", path, ("id", "file_name"))
    annotations = _records(document, "annotations", path, ("image_id", "category_id"))
    if labels is None:
        labels, classes = inat_categories(path)
    files: dict[Any, str] = {}
    for position, image in enumerate(images):
        if image["id"] in files:
            raise DataError(f"{path}: images[{position}] repeats id {image['id']!r}")
        files[image["id"]] = image["file_name"]
    label_of: dict[Any, int] = {}
    for position, annotation in enumerate(annotations):
        image_id, category = annotation["image_id"], annotation["category_id"]
        where = f"{path}: annotations[{position}]"
        if image_id not in files:
            raise DataError(f"{where}: image_id {image_id!r} is not in 'images'")
        if category not in labels:
            raise DataError(f"{where}: category_id {category!r} is not a known category "
                            "(unknown class)")
        if image_id in label_of:
            raise DataError(f"{where}: image_id {image_id!r} has a second annotation")
        label_of[image_id] = labels[category]
    paths, targets = [], []
    for position, image in enumerate(images):
        if image["id"] not in label_of:
            raise DataError(f"{path}: images[{position}] (id {image['id']!r}) has no annotation")
        file = image_root / image["file_name"]
        if check_files and not file.is_file():
            raise DataError(f"{path}: images[{position}]: image {file} not found")
        paths.append(file)
        targets.append(label_of[image["id"]])
    if not paths:
        raise DataError(f"{path}: no images")
    return ImageFileDataset(paths, targets, classes or [str(i) for i in range(len(labels))],
                            name=name or str(path))


def inat2018_dataset(root: str | os.PathLike, split: str, check_files: bool = True
                     ) -> ImageFileDataset:
    """``ROOT/train2018.json`` / ``ROOT/val2018.json``, labels numbered by the training file's
    categories (8142 in the official release)."""
    root = Path(root)
    labels, classes = inat_categories(root / "train2018.json")
    return inat_json_dataset(root / f"{_check_split(split)}2018.json", root, labels, classes,
                             check_files, name=f"inat2018:{split}")


# ----------------------------------------------------------------------------------------------
# The --data prefixes (datasets.load_dataset dispatches on them)


READERS = {"imagenet:": imagenet_dataset, "places205:": places205_dataset,
           "inat2018:": inat2018_dataset}
