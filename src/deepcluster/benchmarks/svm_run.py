"""The SVM benchmark runs: checkpoint + VOC folder -> OUT/results.json and OUT/results.md.

``run_svm`` (the full VOC07 SVM) and ``run_lowshot`` share one setup (``_Setup``): the checkpoint,
the VOC splits, the feature cache and the results file, which both commands update in place so
that the low-shot run can use the best SVM layer and the report shows both. One command at a
time per folder (``OUT/.lock``); each finished layer (low-shot: layer and k) is kept in
``OUT/progress.json`` (``svm_progress``) until the command ends, so that a killed command given
again continues to the results file of an uninterrupted one.

The classes are the devkit's (``voc.devkit_classes``: VOC's 20 on VOC2007, else the classes of
the devkit's class files or annotations), or the ones asked for; the results name them
(``classes``, ``class_source``).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..checkpoint import atomic_write, backbone_from_checkpoint, load_checkpoint, save_json
from ..config import PretrainConfig
from ..voc import devkit_classes, find_voc_root, read_voc
from .svm import DEFAULT_COSTS, LAYERS, LOWSHOT_KS, LOWSHOT_SAMPLES, cost_list
from .folder_lock import locked_folder
from .svm_evaluation import (job_count, lowshot_evaluate, merge_lowshot, shared_arrays,
                             svm_evaluate, worker_pool)
from .svm_features import FeatureCache, default_image_size, file_digest, images_digest, split_features
from .svm_progress import Progress
from .svm_report import markdown_report, published_rows

# The header fields that say which results a results file holds: another value, other results.
IDENTITY_KEYS = ("checkpoint_sha256", "voc", "image_size", "images_sha256", "classes")


def parse_layers(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None or value == "" or value == "auto":
        return None
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    names = [n for n in names if n]
    if names == ["all"]:
        return list(LAYERS)
    unknown = [n for n in names if n not in LAYERS]
    if unknown:
        raise ValueError(f"unknown layer(s) {', '.join(unknown)}; choose from {', '.join(LAYERS)}")
    return [n for n in LAYERS if n in names]


def parse_ks(value: str | Sequence[int]) -> list[int]:
    ks = [int(v) for v in value.split(",")] if isinstance(value, str) else [int(v) for v in value]
    if not ks or min(ks) < 1:
        raise ValueError(f"low-shot k values must be positive integers, got {value!r}")
    return ks


def _run_names(random_init: bool, baselines: bool) -> list[tuple[str, bool]]:
    if random_init:
        return [("random init", True)]
    return [("deepcluster", False)] + ([("random init", True)] if baselines else [])


class _Setup:
    """What both commands share: the checkpoint, the VOC splits, the output folder and results."""

    def __init__(self, checkpoint, voc, out, image_size, cache, batch_size, workers, jobs,
                 progress, classes=None):
        self.checkpoint = Path(checkpoint)
        self.config = PretrainConfig.from_dict(load_checkpoint(self.checkpoint)["config"])
        self.sha = file_digest(self.checkpoint)
        self.voc_root = find_voc_root(voc)
        if classes is None:
            classes, self.class_source = devkit_classes(self.voc_root)
        else:
            self.class_source = "given"
        self.classes = tuple(classes)
        self.trainval = read_voc(self.voc_root, "trainval", self.classes)
        self.test = read_voc(self.voc_root, "test", self.classes)
        self.images_sha = images_digest(self.trainval.paths + self.test.paths)
        self.image_size = image_size or default_image_size(self.config.image_size)
        self.out = Path(out)
        self.cache_dir = Path(cache) if cache else self.out / "features"
        self.batch_size = batch_size or (256 if self.image_size <= 64 else 64)
        self.workers = workers
        self.jobs = jobs
        self.progress = progress
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.results = self._load_results()

    def header(self) -> dict[str, Any]:
        return {"benchmark": "voc07-svm", "checkpoint": str(self.checkpoint),
                "checkpoint_sha256": self.sha, "arch": self.config.arch, "sobel": self.config.sobel,
                "voc": str(self.voc_root), "image_size": self.image_size,
                "resize": f"{self.image_size} x {self.image_size}, no crop",
                "trainval_images": len(self.trainval), "test_images": len(self.test),
                "images_sha256": self.images_sha, "classes": list(self.classes),
                "class_source": self.class_source}

    def identity(self) -> dict[str, Any]:
        header = self.header()
        return {key: header[key] for key in IDENTITY_KEYS}

    def _load_results(self) -> dict[str, Any]:
        path = self.out / "results.json"
        header = self.header()
        if path.is_file():
            try:
                previous = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                previous = None
            same = previous and all(previous.get(key) == header[key] for key in IDENTITY_KEYS)
            if same:
                return previous
            warnings.warn(f"{path} holds results of another checkpoint or dataset; replacing them",
                          stacklevel=3)
        return {**header, "runs": {}}

    def features(self, random_init: bool, layers: Sequence[str], before_extract=None):
        """(trainval, test) feature dicts of ``layers``, and the seconds it took; the network is
        built only if the cache lacks something, ``before_extract(layers)`` told first."""
        start = time.perf_counter()
        cache = FeatureCache(self.cache_dir, self.sha, random_init, self.image_size)
        built = []

        def get_backbone():
            if not built:
                backbone, _ = backbone_from_checkpoint(self.checkpoint, random_init=random_init)
                built.append(backbone.to(self.device))
            return built[0]
        out = [split_features(get_backbone, split, layers, cache, self.image_size,
                              self.batch_size, self.workers, self.device, self.progress,
                              before_extract)[0]
               for split in (self.trainval, self.test)]
        return out[0], out[1], time.perf_counter() - start

    def save(self) -> dict[str, Any]:
        self.results.update(self.header())
        self.results["table"] = published_rows(self.results)
        markdown = markdown_report(self.results)
        self.results["markdown"] = markdown
        save_json(self.results, self.out / "results.json")

        def write(temp: str) -> None:
            Path(temp).write_text(markdown)
        atomic_write(self.out / "results.md", write)
        return self.results


def _cache_folders(out: str | Path, cache: str | Path | None) -> list[Path]:
    """The feature cache folders only runs into ``out`` write to (the default ``OUT/features``):
    their killed writes' leftovers are cleared under ``out``'s lock."""
    if cache:
        return []
    return [folder for folder in (Path(out) / "features").glob("*") if folder.is_dir()]


def run_svm(checkpoint: str | Path, voc: str | Path, out: str | Path,
            layers: Sequence[str] | str | None = None, costs: str = DEFAULT_COSTS,
            random_init: bool = False, baselines: bool = False, image_size: int | None = None,
            jobs: int = -1, batch_size: int | None = None, workers: int = 0,
            cache: str | Path | None = None, seed: int = 0, progress: bool = True,
            classes: Sequence[str] | None = None) -> dict[str, Any]:
    """The full VOC07 SVM benchmark for each requested layer; writes OUT/results.{json,md}.
    ``classes`` None: the devkit's own (``voc.devkit_classes``). A command killed before is
    continued from OUT/progress.json."""
    layers = parse_layers(layers) or list(LAYERS)
    cost_list(costs)  # an unknown list stops here, before any work
    with locked_folder(out, also=_cache_folders(out, cache)):
        setup = _Setup(checkpoint, voc, out, image_size, cache, batch_size, workers, jobs,
                       progress, classes)
        done = Progress(setup.out, setup.identity())
        with worker_pool(jobs) as parallel:
            for name, untrained in _run_names(random_init, baselines):
                run = setup.results["runs"].setdefault(name, {})
                run["svm"] = _svm_record(setup, done, name, untrained, layers, costs, seed,
                                         jobs, parallel)
                setup.save()
        done.finish("svm")
    return setup.results


def _svm_record(setup: _Setup, done: Progress, name: str, untrained: bool, layers: list[str],
                costs: str, seed: int, jobs: int, parallel) -> dict[str, Any]:
    """One run's SVM results: each layer from ``done`` or evaluated (then kept there)."""
    run_start = time.perf_counter()
    cost_values = cost_list(costs)
    key = f"svm/{name}"
    done.start(key, {"cost_values": list(cost_values), "seed": seed})
    todo = [layer for layer in layers if done.part(key, layer) is None]
    train, test, feature_seconds = setup.features(untrained, todo,
                                                  lambda missing: done.extracting(key, missing))
    for layer in todo:
        start = time.perf_counter()
        result = svm_evaluate(train[layer], setup.trainval.labels, test[layer], setup.test.labels,
                              cost_values, setup.classes, jobs, seed, parallel=parallel)
        result.update(dim=int(train[layer].shape[1]), seconds=time.perf_counter() - start)
        done.done(key, layer, result)
    per_layer = {layer: done.part(key, layer) for layer in layers}
    finished = {k: v for k, v in per_layer.items() if np.isfinite(v["map"])}
    best = max(finished, key=lambda k: finished[k]["map"]) if finished else None
    return {"costs": costs, "cost_values": list(cost_values), "layers": per_layer,
            "best_layer": best, "feature_seconds": feature_seconds,
            "features_extracted": done.extracted(key), "jobs": job_count(jobs),
            "seconds": time.perf_counter() - run_start}


def run_lowshot(checkpoint: str | Path, voc: str | Path, out: str | Path,
                layers: Sequence[str] | str | None = None, costs: str = DEFAULT_COSTS,
                ks: Sequence[int] | str = LOWSHOT_KS, samples: int = LOWSHOT_SAMPLES, seed: int = 0,
                random_init: bool = False, baselines: bool = False, image_size: int | None = None,
                jobs: int = -1, batch_size: int | None = None, workers: int = 0,
                cache: str | Path | None = None, progress: bool = True,
                classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Low-shot SVMs; ``layers`` None: the best SVM layer of each run when OUT already holds its
    SVM results, else every layer. ``classes`` None: the devkit's own. Writes
    OUT/results.{json,md}; a command killed before is continued from OUT/progress.json."""
    requested = parse_layers(layers)
    ks = parse_ks(ks)
    if samples < 1:
        raise ValueError("--samples must be at least 1")
    cost_list(costs)
    with locked_folder(out, also=_cache_folders(out, cache)):
        setup = _Setup(checkpoint, voc, out, image_size, cache, batch_size, workers, jobs,
                       progress, classes)
        done = Progress(setup.out, setup.identity())
        with worker_pool(jobs) as parallel:
            for name, untrained in _run_names(random_init, baselines):
                run = setup.results["runs"].setdefault(name, {})
                best_svm = run.get("svm", {}).get("best_layer")
                run_layers = requested or ([best_svm] if best_svm else list(LAYERS))
                run["lowshot"] = _lowshot_record(setup, done, name, untrained, run_layers, costs,
                                                 ks, samples, seed, jobs, parallel)
                run["lowshot"]["layer_choice"] = "requested" if requested else (
                    "best SVM layer" if best_svm else "all layers")
                setup.save()
        done.finish("lowshot")
    return setup.results


def _lowshot_record(setup: _Setup, done: Progress, name: str, untrained: bool,
                    layers: list[str], costs: str, ks: list[int], samples: int, seed: int,
                    jobs: int, parallel) -> dict[str, Any]:
    """One run's low-shot results: each (layer, k) from ``done`` or evaluated (then kept)."""
    run_start = time.perf_counter()
    cost_values = cost_list(costs)
    key = f"lowshot/{name}"
    done.start(key, {"cost_values": list(cost_values), "samples": samples, "seed": seed})
    todo = [layer for layer in layers if any(done.part(key, _part(layer, k)) is None for k in ks)]
    train, test, feature_seconds = setup.features(untrained, todo,
                                                  lambda missing: done.extracting(key, missing))
    per_layer = {}
    for layer in layers:
        per_layer[layer] = _lowshot_layer(setup, done, key, layer, train.get(layer),
                                          test.get(layer), cost_values, ks, samples, seed, jobs,
                                          parallel)
        if per_layer[layer]["capped"]:
            warnings.warn(f"{name} {layer}: {len(per_layer[layer]['capped'])} (k, sample, class) "
                          "draws had too few trainval images and were capped (see 'capped' in "
                          "results.json)", stacklevel=3)
    return {"costs": costs, "cost_values": list(cost_values), "layers": per_layer,
            "feature_seconds": feature_seconds, "features_extracted": done.extracted(key),
            "jobs": job_count(jobs), "seconds": time.perf_counter() - run_start}


def _part(layer: str, k: int) -> str:
    return f"{layer} k={k}"


def _lowshot_layer(setup: _Setup, done: Progress, key: str, layer: str, train, test,
                   cost_values, ks: list[int], samples: int, seed: int, jobs: int, parallel
                   ) -> dict[str, Any]:
    """One layer's low-shot result, k by k: each k from ``done`` or evaluated (then kept)."""
    parts = [done.part(key, _part(layer, k)) for k in ks]
    if any(part is None for part in parts):
        with shared_arrays(train, test) as (train_shared, test_shared):  # dumped once, all ks
            for i, k in enumerate(ks):
                if parts[i] is None:
                    start = time.perf_counter()
                    parts[i] = lowshot_evaluate(
                        train_shared, setup.trainval.labels, test_shared, setup.test.labels,
                        cost_values, [k], samples, seed, setup.classes, jobs, parallel=parallel)
                    parts[i]["seconds"] = time.perf_counter() - start
                    done.done(key, _part(layer, k), parts[i])
    result = merge_lowshot(parts)
    result["seconds"] = sum(part["seconds"] for part in parts)
    return result
