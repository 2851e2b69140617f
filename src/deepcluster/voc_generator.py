"""A small generated VOC-format dataset, so that the SVM benchmarks run end to end anywhere.

``make_voc(out)`` writes ``out/VOC2007`` in the layout ``voc.read_voc`` reads: Fashion-MNIST items
pasted onto crops of scikit-image's bundled photos, 1 to 3 items per image, one XML annotation per
image (small items are marked difficult), and the ImageSets files for all 20 VOC class names. The
10 Fashion-MNIST classes stand for 10 of the VOC names (``FMNIST_TO_VOC``); the other 10 names
have ImageSets files with every image absent, so the benchmarks evaluate the 10 classes present.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .checkpoint import atomic_write
from .data import DataError
from .datasets import load_dataset
from .voc import VOC_CLASSES, VOC_SPLITS, VOCObject, flags_from_objects

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
    try:  # here, not at the top: scikit-image is an extra that only make-voc needs
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
