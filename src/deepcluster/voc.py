"""PASCAL VOC devkit: a reader for the classification sets.

``read_voc(root, split)`` reads a VOC2007-style folder (``root`` may be the ``VOC2007`` folder or
the ``VOCdevkit`` folder above it)::

    JPEGImages/<id>.jpg
    Annotations/<id>.xml
    ImageSets/Main/<split>.txt                  (optional: the image ids of the split, in order)
    ImageSets/Main/<class>_<split>.txt          (one per class: "<id> <flag>", flag 1 / -1 / 0)

and gives a ``VOCSplit``: image ids, paths and an ``N x C`` int8 matrix of the flags, where 1 means
the class is present, -1 absent and 0 present only as "difficult" objects. The class files are
authoritative (the references read them); the XML annotations are parsed too, every one of them,
and the flags they imply are compared with the class files (a mismatch is a warning). Missing or
malformed files raise ``DataError`` naming the file (and line), on one line.

The classes are the devkit's own (``devkit_classes``): VOC's 20 when the class files are VOC's
(VOC2007 itself: all 20 must be there), the names of the class files of a detection set in the
same layout with other classes, or, where a devkit has no class files, the object names of its
annotations (the flags are then derived from the annotations, as the devkit does).

A small generated stand-in in the same layout is ``voc_generator.make_voc``.
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .data import DataError, ImageFileDataset, file_exists, printable

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
VOC_SPLITS = ("train", "val", "trainval", "test")
# Where a devkit's classes come from (``devkit_classes``).
CLASS_SOURCES = ("VOC2007", "ImageSets/Main", "Annotations")
POSITIVE, NEGATIVE, DIFFICULT = 1, -1, 0


@dataclass(frozen=True)
class VOCObject:
    name: str
    difficult: bool
    truncated: bool = False
    bbox: tuple[int, int, int, int] | None = None  # xmin, ymin, xmax, ymax (1-based, inclusive)


@dataclass
class VOCSplit:
    """One split of a VOC devkit: ``labels[i, c]`` is 1 (present), -1 (absent) or 0 (difficult)."""

    root: Path
    split: str
    ids: list[str]
    paths: list[Path]
    labels: np.ndarray  # int8, N x len(classes)
    classes: tuple[str, ...] = VOC_CLASSES
    objects: dict[str, list[VOCObject]] = field(default_factory=dict, repr=False)
    class_source: str = "given"  # one of CLASS_SOURCES, or "given" (passed to read_voc)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def difficult(self) -> np.ndarray:
        """Boolean N x C: the class appears only as difficult objects."""
        return self.labels == DIFFICULT

    def train_targets(self) -> np.ndarray:
        """SVM training targets, N x C in {1, -1}: difficult counts as a negative."""
        return np.where(self.labels == POSITIVE, 1, -1).astype(np.int8)

    def test_mask(self) -> np.ndarray:
        """Boolean N x C: the images that count when testing (difficult ones are ignored)."""
        return self.labels != DIFFICULT

    def positives_per_class(self) -> np.ndarray:
        return (self.labels == POSITIVE).sum(axis=0)

    def dataset(self, transform: Callable | None = None) -> ImageFileDataset:
        """The images as a dataset (labels -1: the targets are multi-label, see ``labels``)."""
        return ImageFileDataset(self.paths, None, list(self.classes), transform=transform,
                                name=f"{self.root}:{self.split}")


def find_voc_root(path: str | Path) -> Path:
    """The folder holding ``JPEGImages`` / ``Annotations`` / ``ImageSets``: ``path`` itself, or
    ``path/VOC2007`` (a ``VOCdevkit`` folder), or ``path/VOCdevkit/VOC2007``."""
    path = Path(path)
    for candidate in (path, path / "VOC2007", path / "VOCdevkit" / "VOC2007"):
        if (candidate / "ImageSets" / "Main").is_dir():
            return candidate
    if not path.exists():
        raise DataError(f"VOC folder {path} does not exist")
    raise DataError(f"{path}: not a VOC devkit folder (no ImageSets/Main in it, nor in "
                    f"{path / 'VOC2007'})")


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"missing VOC file {path}")
    try:
        return path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read VOC file {path}: {error}") from error


def read_id_list(path: Path) -> list[str]:
    """``ImageSets/Main/<split>.txt``: one image id a line."""
    ids = []
    for number, line in enumerate(_read_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 1:
            raise DataError(f"{path}:{number}: expected one image id, got {line!r}")
        ids.append(fields[0])
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: repeated image ids")
    if not ids:
        raise DataError(f"{path}: no image ids")
    return ids


def read_class_file(path: Path) -> dict[str, int]:
    """``ImageSets/Main/<class>_<split>.txt``: ``<id> <flag>`` lines, flag 1, -1 or 0."""
    flags: dict[str, int] = {}
    for number, line in enumerate(_read_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"{path}:{number}: expected '<image id> <1|-1|0>', got {line!r}")
        image_id, flag = fields
        try:
            value = int(flag)
        except ValueError:
            value = None
        if value not in (POSITIVE, NEGATIVE, DIFFICULT):
            raise DataError(f"{path}:{number}: flag {flag!r} is not 1, -1 or 0")
        if image_id in flags:
            raise DataError(f"{path}:{number}: image {image_id} listed twice")
        flags[image_id] = value
    if not flags:
        raise DataError(f"{path}: no lines")
    return flags


def _text(element: ET.Element, tag: str, path: Path, default: str | None = None) -> str:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if default is not None:
            return default
        raise DataError(f"{path}: an <{element.tag}> without <{tag}>")
    return child.text.strip()


def parse_annotation(path: str | Path) -> list[VOCObject]:
    """The objects of one ``Annotations/<id>.xml`` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing VOC annotation {path}")
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError, LookupError, ValueError) as error:  # LookupError: encoding
        raise DataError(f"malformed VOC annotation {path}: {printable(str(error))}") from None
    if root.tag != "annotation":
        raise DataError(f"malformed VOC annotation {path}: root element "
                        f"<{printable(str(root.tag))}>, expected <annotation>")
    objects = []
    for element in root.findall("object"):
        name = _text(element, "name", path)
        difficult = _text(element, "difficult", path, default="0")
        truncated = _text(element, "truncated", path, default="0")
        if difficult not in ("0", "1") or truncated not in ("0", "1"):
            raise DataError(f"{path}: object {name!r} has <difficult> {difficult!r} / "
                            f"<truncated> {truncated!r}; expected 0 or 1")
        bbox = None
        box = element.find("bndbox")
        if box is not None:
            try:
                bbox = tuple(int(float(_text(box, tag, path)))
                             for tag in ("xmin", "ymin", "xmax", "ymax"))
            except (ValueError, OverflowError) as error:  # not a number, NaN, infinite
                raise DataError(f"{path}: object {name!r} has a bad <bndbox>: "
                                f"{printable(str(error))}") from None
        objects.append(VOCObject(name, difficult == "1", truncated == "1", bbox))
    return objects


def flags_from_objects(objects: Sequence[VOCObject], classes: Sequence[str] = VOC_CLASSES
                       ) -> np.ndarray:
    """Per-class flags as the devkit derives them: 1 if any non-difficult object of the class,
    0 if only difficult ones, -1 if none."""
    flags = np.full(len(classes), NEGATIVE, dtype=np.int8)
    index = {name: i for i, name in enumerate(classes)}
    for obj in objects:
        if obj.name not in index:
            continue
        i = index[obj.name]
        if not obj.difficult:
            flags[i] = POSITIVE
        elif flags[i] == NEGATIVE:
            flags[i] = DIFFICULT
    return flags


def class_file_names(root: Path) -> set[str]:
    """The class names that have an ``ImageSets/Main/<class>_<split>.txt`` file, for any split."""
    names = set()
    for path in (root / "ImageSets" / "Main").glob("*_*.txt"):
        name, _, split = path.stem.rpartition("_")
        if name and split in VOC_SPLITS:
            names.add(name)
    return names


def devkit_classes(root: str | Path) -> tuple[tuple[str, ...], str]:
    """The classes of a devkit folder and where they come from (``CLASS_SOURCES``).

    - Class files ``ImageSets/Main/<class>_<split>.txt`` whose names are all VOC names: the devkit
      is VOC2007 itself, and its classes are VOC's 20 in VOC's order (``"VOC2007"``; a missing
      class file is then an error when the split is read).
    - Class files with other names (a detection set in the devkit layout): those names, sorted
      (``"ImageSets/Main"``).
    - No class files: the object names of the ``trainval`` and ``test`` annotations, sorted
      (``"Annotations"``; the flags are then derived from the annotations).
    """
    root = find_voc_root(root)
    names = class_file_names(root)
    if names and names <= set(VOC_CLASSES):
        return VOC_CLASSES, CLASS_SOURCES[0]
    if names:
        return tuple(sorted(names)), CLASS_SOURCES[1]
    main = root / "ImageSets" / "Main"
    lists = [main / f"{split}.txt" for split in ("trainval", "test") if (main / f"{split}.txt").is_file()]
    if not lists:
        raise DataError(f"{main}: no class files (<class>_trainval.txt) and no trainval.txt or "
                        "test.txt to read the classes from the annotations")
    found = {obj.name for path in lists for image_id in read_id_list(path)
             for obj in parse_annotation(root / "Annotations" / f"{image_id}.xml")}
    if not found:
        raise DataError(f"{root / 'Annotations'}: no objects in the annotations of "
                        f"{', '.join(p.name for p in lists)}, so no classes")
    return tuple(sorted(found)), CLASS_SOURCES[2]


def _flags_from_class_files(main: Path, split: str, classes: Sequence[str]
                            ) -> tuple[list[str], Path, np.ndarray]:
    """Image ids, the file that lists them and the N x C flags, from the class files."""
    class_flags = [(name, main / f"{name}_{split}.txt") for name in classes]
    per_class = [read_class_file(path) for _, path in class_flags]
    list_file = main / f"{split}.txt"
    if list_file.is_file():
        ids = read_id_list(list_file)
    else:  # the class files list the split's images in the same order
        ids = list(per_class[0])
        list_file = class_flags[0][1]
    wanted = set(ids)
    labels = np.empty((len(ids), len(classes)), dtype=np.int8)
    for c, ((_, path), flags) in enumerate(zip(class_flags, per_class)):
        if set(flags) != wanted:
            missing = sorted(wanted - set(flags))
            extra = sorted(set(flags) - wanted)
            detail = (f"{len(missing)} image(s) of {list_file.name} missing, first {missing[0]}"
                      if missing else f"{len(extra)} image(s) not in {list_file.name}, "
                      f"first {extra[0]}")
            raise DataError(f"{path}: {detail}")
        labels[:, c] = [flags[image_id] for image_id in ids]
    return ids, list_file, labels


def _annotations(root: Path, ids: Sequence[str], classes: Sequence[str]
                 ) -> dict[str, list[VOCObject]]:
    """The objects of every image; a class name outside ``classes`` is an error (outside VOC's
    20, when ``classes`` are some of VOC's)."""
    objects: dict[str, list[VOCObject]] = {}
    known = set(classes) | (set(VOC_CLASSES) if set(classes) <= set(VOC_CLASSES) else set())
    for image_id in ids:
        annotation = root / "Annotations" / f"{image_id}.xml"
        found = parse_annotation(annotation)
        unknown = sorted({o.name for o in found} - known)
        if unknown:
            raise DataError(f"{annotation}: unknown class name(s) "
                            f"{', '.join(map(printable, unknown))}")
        objects[image_id] = found
    return objects


def read_voc(root: str | Path, split: str, classes: Sequence[str] | None = None,
             check_annotations: bool = True) -> VOCSplit:
    """Read one split (``trainval``, ``test``, ``train`` or ``val``) of a VOC devkit folder.

    ``classes`` None: the devkit's own (``devkit_classes``: VOC's 20 for VOC2007, else the names
    of its class files or of its annotations). A devkit without class files gets its flags from
    the annotations.
    """
    if split not in VOC_SPLITS:
        raise DataError(f"unknown VOC split {split!r}; expected one of {', '.join(VOC_SPLITS)}")
    root = find_voc_root(root)
    source = "given"
    if classes is None:
        classes, source = devkit_classes(root)
    classes = tuple(classes)
    main = root / "ImageSets" / "Main"
    if not class_file_names(root):  # no class files: the flags the annotations imply
        list_file = main / f"{split}.txt"
        ids = read_id_list(list_file)
        objects = _annotations(root, ids, classes)
        labels = np.stack([flags_from_objects(objects[i], classes) for i in ids])
    else:
        ids, list_file, labels = _flags_from_class_files(main, split, classes)
        objects = _annotations(root, ids, classes) if check_annotations else {}
        mismatches = [root / "Annotations" / f"{image_id}.xml"
                      for i, image_id in enumerate(objects)
                      if not np.array_equal(flags_from_objects(objects[image_id], classes), labels[i])]
        if mismatches:
            warnings.warn(f"{root}: the ImageSets flags of {len(mismatches)} {split} image(s) "
                          f"disagree with their annotations (first: {mismatches[0]}); "
                          "using the ImageSets flags, as the reference benchmarks do", stacklevel=2)
    paths = []
    for image_id in ids:
        path = root / "JPEGImages" / f"{image_id}.jpg"
        if not file_exists(path):
            raise DataError(f"missing VOC image {path} (listed in {list_file})")
        paths.append(path)
    return VOCSplit(root, split, ids, paths, labels, classes, objects, source)
