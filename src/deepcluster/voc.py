"""PASCAL VOC devkit: a reader for the classification sets, and a small generated stand-in.

Reader
------
``read_voc(root, split)`` reads a VOC2007-style folder (``root`` may be the ``VOC2007`` folder or
the ``VOCdevkit`` folder above it)::

    JPEGImages/<id>.jpg
    Annotations/<id>.xml
    ImageSets/Main/<split>.txt                  (optional: the image ids of the split, in order)
    ImageSets/Main/<class>_<split>.txt          (one per class: "<id> <flag>", flag 1 / -1 / 0)

and gives a ``VOCSplit``: image ids, paths and an ``N x 20`` int8 matrix of the flags, where 1 means
the class is present, -1 absent and 0 present only as "difficult" objects. The class files are
authoritative (the references read them); the XML annotations are parsed too, every one of them,
and the flags they imply are compared with the class files (a mismatch is a warning). Missing or
malformed files raise ``DataError`` naming the file (and line).

Generated data
--------------
``make_voc(out)`` writes ``out/VOC2007`` in the same layout: Fashion-MNIST items pasted onto crops
of scikit-image's bundled photos, 1 to 3 items per image, one XML annotation per image (small items
are marked difficult), and the ImageSets files for all 20 VOC class names. The 10 Fashion-MNIST
classes stand for 10 of the VOC names (``FMNIST_TO_VOC``); the other 10 names have ImageSets files
with every image absent, so the benchmarks evaluate the 10 classes present.
"""

from __future__ import annotations

import io
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import click
import numpy as np
from PIL import Image

from .data import DataError, ImageFileDataset

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
VOC_SPLITS = ("train", "val", "trainval", "test")
POSITIVE, NEGATIVE, DIFFICULT = 1, -1, 0


# ----------------------------------------------------------------------------------------------
# Reading


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
    except (ET.ParseError, OSError) as error:
        raise DataError(f"malformed VOC annotation {path}: {error}") from error
    if root.tag != "annotation":
        raise DataError(f"malformed VOC annotation {path}: root element <{root.tag}>, "
                        "expected <annotation>")
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
            except ValueError as error:
                raise DataError(f"{path}: object {name!r} has a bad <bndbox>: {error}") from error
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


def read_voc(root: str | Path, split: str, classes: Sequence[str] = VOC_CLASSES,
             check_annotations: bool = True) -> VOCSplit:
    """Read one split (``trainval``, ``test``, ``train`` or ``val``) of a VOC devkit folder."""
    if split not in VOC_SPLITS:
        raise DataError(f"unknown VOC split {split!r}; expected one of {', '.join(VOC_SPLITS)}")
    root = find_voc_root(root)
    main = root / "ImageSets" / "Main"
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

    paths = []
    for image_id in ids:
        path = root / "JPEGImages" / f"{image_id}.jpg"
        if not path.is_file():
            raise DataError(f"missing VOC image {path} (listed in {list_file})")
        paths.append(path)

    objects: dict[str, list[VOCObject]] = {}
    if check_annotations:
        mismatches = []
        for i, image_id in enumerate(ids):
            annotation = root / "Annotations" / f"{image_id}.xml"
            found = parse_annotation(annotation)
            unknown = sorted({o.name for o in found} - set(VOC_CLASSES) - set(classes))
            if unknown:
                raise DataError(f"{annotation}: unknown class name(s) {', '.join(unknown)}")
            objects[image_id] = found
            if not np.array_equal(flags_from_objects(found, classes), labels[i]):
                mismatches.append(annotation)
        if mismatches:
            warnings.warn(f"{root}: the ImageSets flags of {len(mismatches)} {split} image(s) "
                          f"disagree with their annotations (first: {mismatches[0]}); "
                          "using the ImageSets flags, as the reference benchmarks do", stacklevel=2)
    return VOCSplit(root, split, ids, paths, labels, tuple(classes), objects)


# ----------------------------------------------------------------------------------------------
# A small generated VOC-format dataset


# Which VOC name each Fashion-MNIST class stands for (an arbitrary, fixed mapping).
FMNIST_TO_VOC = ("person",       # T-shirt/top
                 "horse",        # Trouser
                 "sheep",        # Pullover
                 "pottedplant",  # Dress
                 "sofa",         # Coat
                 "boat",         # Sandal
                 "chair",        # Shirt
                 "car",          # Sneaker
                 "bottle",       # Bag
                 "motorbike")    # Ankle boot

# scikit-image photos that ship with the package (no download needed).
BACKGROUNDS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass",
               "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina",
               "rocket", "text")


def _backgrounds() -> list[np.ndarray]:
    try:
        from skimage import data as skdata
    except ImportError as error:  # pragma: no cover - scikit-image is a test/benchmark extra
        raise DataError("make-voc needs scikit-image for its bundled photos "
                        "(pip install scikit-image)") from error
    photos = []
    for name in BACKGROUNDS:
        try:
            image = np.asarray(getattr(skdata, name)())
        except Exception:  # a photo that needs a download in this version: skip it
            continue
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        photos.append(np.ascontiguousarray(image[:, :, :3]).astype(np.uint8))
    if not photos:
        raise DataError("no scikit-image photo could be loaded for the backgrounds")
    return photos


def _background(photos: list[np.ndarray], rng: np.random.Generator, width: int,
                height: int) -> np.ndarray:
    photo = photos[rng.integers(len(photos))]
    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.3, 0.9)
    ch, cw = max(8, int(ph * scale)), max(8, int(pw * scale))
    ch, cw = min(ch, ph), min(cw, pw)
    top, left = rng.integers(ph - ch + 1), rng.integers(pw - cw + 1)
    crop = Image.fromarray(photo[top:top + ch, left:left + cw]).resize((width, height),
                                                                       Image.BILINEAR)
    out = np.asarray(crop).astype(np.float32)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return out * rng.uniform(0.3, 0.6)  # dimmed, so the pasted items stand out


def _paste(canvas: np.ndarray, item: np.ndarray, size: int, x: int, y: int,
           rng: np.random.Generator) -> tuple[int, int, int, int, bool]:
    """Paste a 28 x 28 grey item scaled to ``size`` px with its top-left at (x, y); returns the
    clipped box (0-based, inclusive) and whether it was truncated by the border."""
    height, width = canvas.shape[:2]
    scaled = np.asarray(Image.fromarray(item).resize((size, size), Image.BILINEAR),
                        dtype=np.float32) / 255.0
    alpha = np.clip(scaled * 1.6, 0.0, 1.0)[:, :, None]
    tint = rng.uniform(0.75, 1.0, size=3) * 255.0
    colour = scaled[:, :, None] * tint
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + size, width), min(y + size, height)
    region = (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - alpha[region]) + colour[region] * alpha[region]
    truncated = (x0, y0, x1, y1) != (x, y, x + size, y + size)
    # The box of the item's visible pixels, as an annotator would draw it.
    visible = np.argwhere(alpha[region][:, :, 0] > 0.2)
    if len(visible):
        (r0, c0), (r1, c1) = visible.min(0), visible.max(0)
        return x0 + c0, y0 + r0, x0 + c1, y0 + r1, truncated
    return x0, y0, x1 - 1, y1 - 1, truncated


def _annotation_xml(image_id: str, width: int, height: int,
                    objects: Sequence[VOCObject]) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2007"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = ("deepcluster make-voc: Fashion-MNIST items on "
                                              "scikit-image photos")
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        element = ET.SubElement(root, "object")
        ET.SubElement(element, "name").text = obj.name
        ET.SubElement(element, "pose").text = "Unspecified"
        ET.SubElement(element, "truncated").text = str(int(obj.truncated))
        ET.SubElement(element, "difficult").text = str(int(obj.difficult))
        box = ET.SubElement(element, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.bbox):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8") + b"\n"


def _write_bytes(path: Path, data: bytes) -> None:
    from .checkpoint import atomic_write

    def write(temp: str) -> None:
        with open(temp, "wb") as handle:
            handle.write(data)
    atomic_write(path, write)


def _overlap(box: tuple[int, int, int, int], boxes: Sequence[tuple[int, int, int, int]]) -> int:
    x, y, size = box[0], box[1], box[2]
    total = 0
    for bx, by, bsize, _ in boxes:
        w = min(x + size, bx + bsize) - max(x, bx)
        h = min(y + size, by + bsize) - max(y, by)
        total += max(w, 0) * max(h, 0)
    return total


def _compose(rng: np.random.Generator, photos, items: np.ndarray, item_labels: np.ndarray,
             width: int, height: int, max_objects: int, difficult_rate: float
             ) -> tuple[np.ndarray, list[VOCObject]]:
    canvas = _background(photos, rng, width, height)
    weights = np.array([0.45, 0.35, 0.2, 0.1, 0.05][:max_objects])
    count = int(rng.choice(np.arange(1, max_objects + 1), p=weights / weights.sum()))
    objects, placed = [], []
    side = min(width, height)
    for _ in range(count):
        item = int(rng.integers(len(items)))
        difficult = rng.random() < difficult_rate
        # Ordinary items fill 55-85% of the short side; difficult ones are small (18-26%).
        size = int(side * (rng.uniform(0.18, 0.26) if difficult else rng.uniform(0.55, 0.85)))
        # Of a few random spots, the one overlapping the items already there the least
        # (items may stick out of the image by up to a sixth: truncated).
        spots = [(int(rng.integers(-size // 6, width - size + size // 6 + 1)),
                  int(rng.integers(-size // 6, height - size + size // 6 + 1)))
                 for _ in range(6)]
        x, y = min(spots, key=lambda spot: _overlap((spot[0], spot[1], size), placed))
        placed.append((x, y, size, item))
        x0, y0, x1, y1, truncated = _paste(canvas, items[item], size, x, y, rng)
        name = FMNIST_TO_VOC[int(item_labels[item])]
        objects.append(VOCObject(name, bool(difficult), truncated,
                                 (int(x0) + 1, int(y0) + 1, int(x1) + 1, int(y1) + 1)))
    return np.clip(canvas, 0, 255).astype(np.uint8), objects


def make_voc(out: str | Path, trainval: int = 500, test: int = 400, seed: int = 0,
             width: int = 112, height: int = 96, max_objects: int = 3,
             difficult_rate: float = 0.12, quality: int = 90) -> Path:
    """Write a small VOC2007-format dataset under ``out/VOC2007`` and return that folder.

    Trainval images use Fashion-MNIST training items, test images its test items. Image ids are
    ``000001``... (trainval first); ``train``/``val`` are the two halves of trainval.
    """
    from .data import load_dataset

    if trainval < 2 or test < 1:
        raise ValueError("make-voc needs at least 2 trainval and 1 test image")
    root = Path(out) / "VOC2007"
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    photos = _backgrounds()
    rng = np.random.default_rng(seed)
    split_ids: dict[str, list[str]] = {}
    split_flags: dict[str, list[np.ndarray]] = {}
    number = 0
    for split, count, source in (("trainval", trainval, "train"), ("test", test, "test")):
        items = load_dataset("fashion-mnist", source)
        if not hasattr(items, "images") or len(items.classes) != len(FMNIST_TO_VOC):
            raise DataError("make-voc needs the Fashion-MNIST IDX files (install the Debian "
                            "package dataset-fashion-mnist or set DEEPCLUSTER_FASHION_MNIST)")
        split_ids[split], split_flags[split] = [], []
        for _ in range(count):
            number += 1
            image_id = f"{number:06d}"
            image, objects = _compose(rng, photos, items.images, items.targets, width, height,
                                      max_objects, difficult_rate)
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
            _write_bytes(root / "JPEGImages" / f"{image_id}.jpg", buffer.getvalue())
            _write_bytes(root / "Annotations" / f"{image_id}.xml",
                         _annotation_xml(image_id, width, height, objects))
            split_ids[split].append(image_id)
            split_flags[split].append(flags_from_objects(objects))
    half = len(split_ids["trainval"]) // 2
    split_ids["train"], split_flags["train"] = split_ids["trainval"][:half], split_flags["trainval"][:half]
    split_ids["val"], split_flags["val"] = split_ids["trainval"][half:], split_flags["trainval"][half:]
    main = root / "ImageSets" / "Main"
    for split in VOC_SPLITS:
        ids, flags = split_ids[split], np.stack(split_flags[split])
        _write_bytes(main / f"{split}.txt", "".join(f"{i}\n" for i in ids).encode())
        for c, name in enumerate(VOC_CLASSES):
            # The devkit's own layout: "000005 -1", "000007  1".
            lines = "".join(f"{i} {int(f):2d}\n" for i, f in zip(ids, flags[:, c]))
            _write_bytes(main / f"{name}_{split}.txt", lines.encode())
    return root


# ----------------------------------------------------------------------------------------------
# Command line: ``deepcluster data ...``


@click.group("data")
def data_group() -> None:
    """Prepare benchmark data."""


@data_group.command("make-voc")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="folder to write (the devkit goes to OUT/VOC2007)")
@click.option("--trainval", default=500, show_default=True, help="trainval images")
@click.option("--test", default=400, show_default=True, help="test images")
@click.option("--seed", default=0, show_default=True)
@click.option("--width", default=112, show_default=True)
@click.option("--height", default=96, show_default=True)
def make_voc_command(out, trainval, test, seed, width, height) -> None:
    """A small multi-label dataset in the VOC2007 devkit layout (Fashion-MNIST items pasted on
    scikit-image photos), so that the SVM benchmarks run end to end here."""
    from .report import console

    root = make_voc(out, trainval=trainval, test=test, seed=seed, width=width, height=height)
    summary = []
    for split in ("trainval", "test"):
        voc = read_voc(root, split)
        present = [name for name, n in zip(VOC_CLASSES, voc.positives_per_class()) if n]
        summary.append(f"{split}: {len(voc)} images, {len(present)} classes present, "
                       f"{int(voc.difficult.sum())} difficult-only labels")
    console.print(f"{root}\n  " + "\n  ".join(summary))
