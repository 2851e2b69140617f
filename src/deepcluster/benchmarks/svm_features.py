"""The VOC features of the SVM benchmarks: extraction and the on-disk cache.

Each split is resized to a square (no crop), passed once through the frozen backbone for all the
missing layers, L2-normalised per row and stored as float32, keyed by the checkpoint's digest and
the digest of the image files, so that a rerun (or the low-shot run after the SVM run) reads them
back instead of extracting again. Entries are written atomically (whole or not at all); one that
does not read back whole, with the split's ids and rows, counts as absent. Kept apart from ``svm`` because it needs torch, which the SVM
worker processes must not load.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torchvision.transforms import v2

from ..checkpoint import save_npz
from ..features import extract_layers
from ..transforms import IMAGENET_MEAN, IMAGENET_STD, SMALL_MEAN, SMALL_STD, is_small
from .svm import normalise_rows


def file_digest(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file (the checkpoint), read in chunks: names its cache folder."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def default_image_size(checkpoint_image_size: int) -> int:
    """224 (the protocol) for networks trained on large images; small networks (28-64 px) get
    their own training size, since they were never trained at 224."""
    return checkpoint_image_size if is_small(checkpoint_image_size) else 224


def voc_transform(image_size: int) -> v2.Compose:
    """Resize to image_size x image_size (no crop), then the checkpoint's normalisation."""
    mean, std = (SMALL_MEAN, SMALL_STD) if is_small(image_size) else (IMAGENET_MEAN, IMAGENET_STD)
    return v2.Compose([v2.RGB(), v2.Resize((image_size, image_size), antialias=True), v2.ToImage(),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def images_digest(paths: Sequence[Path]) -> str:
    """Identifies a split's image files (path, size, modification time), so that regenerated or
    replaced images never reuse stale cached features."""
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{Path(path).resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class FeatureCache:
    """``DIR/<checkpoint sha256[:16]>-<trained|random>-<size>px/<split>-<layer>.npz``, holding
    ``features`` (float32, L2-normalised), the image ``ids`` and the ``images`` digest of the files
    they came from; an entry whose ids or digest differ from the split's is extracted again."""

    def __init__(self, folder: str | Path, checkpoint_sha: str, random_init: bool, image_size: int):
        tag = f"{checkpoint_sha[:16]}-{'random' if random_init else 'trained'}-{image_size}px"
        self.folder = Path(folder) / tag
        self._digests: dict[int, str] = {}

    def path(self, split: str, layer: str) -> Path:
        return self.folder / f"{split}-{layer}.npz"

    def _digest(self, voc_split) -> str:
        key = id(voc_split)
        if key not in self._digests:
            self._digests[key] = images_digest(voc_split.paths)
        return self._digests[key]

    def load(self, voc_split, layer: str, check_only: bool = False) -> np.ndarray | bool | None:
        """The cached features (None when absent, stale or unreadable); with ``check_only``,
        whether the entry is there for this split (without reading the features)."""
        path = self.path(voc_split.split, layer)
        if not path.is_file():
            return None
        try:
            with np.load(path) as stored:  # an npz reads each array only when asked for
                if (list(stored["ids"]) != list(voc_split.ids)
                        or str(stored["images"]) != self._digest(voc_split)):
                    return None
                if check_only:
                    return True
                features = np.ascontiguousarray(stored["features"], dtype=np.float32)
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            return None  # unreadable, truncated or foreign cache entry: extract again
        if features.ndim != 2 or len(features) != len(voc_split.ids):
            return None
        return features

    def save(self, voc_split, layer: str, features: np.ndarray) -> None:
        save_npz(self.path(voc_split.split, layer), features=features,
                 ids=np.asarray(voc_split.ids), images=np.asarray(self._digest(voc_split)))


def split_features(get_backbone: Callable[[], torch.nn.Module], voc_split,
                   layers: Sequence[str], cache: FeatureCache, image_size: int, batch_size: int,
                   workers: int, device: str, progress: bool = True,
                   before_extract: Callable[[list[str]], None] | None = None
                   ) -> tuple[dict[str, np.ndarray], list[str]]:
    """L2-normalised float32 features of one split for each layer: from the cache, and the missing
    layers from one extraction pass (then cached). ``get_backbone()`` gives the network, asked
    for only when something is missing; ``before_extract(missing)`` is told first. Returns the
    features and the layers extracted now."""
    found = {layer: cache.load(voc_split, layer) for layer in layers}
    missing = [layer for layer in layers if found[layer] is None]
    if missing:
        if before_extract is not None:
            before_extract(missing)
        dataset = voc_split.dataset(voc_transform(image_size))
        extracted, _ = extract_layers(get_backbone(), dataset, tuple(missing),
                                      batch_size=batch_size, workers=workers, device=device,
                                      progress=progress)
        for layer in missing:
            found[layer] = normalise_rows(extracted.pop(layer))
            cache.save(voc_split, layer, found[layer])
    return found, missing
