"""The SVM benchmark runs: checkpoint + VOC folder -> OUT/results.json and OUT/results.md.

``run_svm`` (the full VOC07 SVM) and ``run_lowshot`` share one setup (``_Setup``): the checkpoint,
the VOC splits, the feature cache and the results file, which both commands update in place so
that the low-shot run can use the best SVM layer and the report shows both.

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
from .svm_evaluation import job_count, lowshot_evaluate, svm_evaluate, worker_pool
from .svm_features import FeatureCache, default_image_size, file_digest, images_digest, split_features
from .svm_report import markdown_report, published_rows


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

    def _load_results(self) -> dict[str, Any]:
        path = self.out / "results.json"
        header = self.header()
        if path.is_file():
            try:
                previous = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                previous = None
            same = previous and all(previous.get(key) == header[key] for key in
                                    ("checkpoint_sha256", "voc", "image_size", "images_sha256",
                                     "classes"))
            if same:
                return previous
            warnings.warn(f"{path} holds results of another checkpoint or dataset; replacing them",
                          stacklevel=3)
        return {**header, "runs": {}}

    def features(self, random_init: bool, layers: Sequence[str]):
        """(trainval, test) feature dicts, the layers extracted now, and the seconds it took."""
        start = time.perf_counter()
        cache = FeatureCache(self.cache_dir, self.sha, random_init, self.image_size)
        backbone = None
        out, extracted = [], set()
        for split in (self.trainval, self.test):
            if backbone is None and any(cache.load(split, layer, check_only=True) is None
                                        for layer in layers):
                backbone, _ = backbone_from_checkpoint(self.checkpoint, random_init=random_init)
                backbone = backbone.to(self.device)
            found, new = split_features(backbone, split, layers, cache, self.image_size,
                                        self.batch_size, self.workers, self.device, self.progress)
            out.append(found)
            extracted.update(new)
        return out[0], out[1], sorted(extracted), time.perf_counter() - start

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


def run_svm(checkpoint: str | Path, voc: str | Path, out: str | Path,
            layers: Sequence[str] | str | None = None, costs: str = DEFAULT_COSTS,
            random_init: bool = False, baselines: bool = False, image_size: int | None = None,
            jobs: int = -1, batch_size: int | None = None, workers: int = 0,
            cache: str | Path | None = None, seed: int = 0, progress: bool = True,
            classes: Sequence[str] | None = None) -> dict[str, Any]:
    """The full VOC07 SVM benchmark for each requested layer; writes OUT/results.{json,md}.
    ``classes`` None: the devkit's own (``voc.devkit_classes``)."""
    layers = parse_layers(layers) or list(LAYERS)
    cost_values = cost_list(costs)
    setup = _Setup(checkpoint, voc, out, image_size, cache, batch_size, workers, jobs, progress,
                   classes)
    with worker_pool(jobs) as parallel:
        for name, untrained in _run_names(random_init, baselines):
            run_start = time.perf_counter()
            train, test, extracted, feature_seconds = setup.features(untrained, layers)
            per_layer = {}
            for layer in layers:
                start = time.perf_counter()
                result = svm_evaluate(train[layer], setup.trainval.labels, test[layer],
                                      setup.test.labels, cost_values, setup.classes, jobs, seed,
                                      parallel=parallel)
                result.update(dim=int(train[layer].shape[1]), seconds=time.perf_counter() - start)
                per_layer[layer] = result
            done = {k: v for k, v in per_layer.items() if np.isfinite(v["map"])}
            best = max(done, key=lambda k: done[k]["map"]) if done else None
            run = setup.results["runs"].setdefault(name, {})
            run["svm"] = {"costs": costs, "cost_values": list(cost_values), "layers": per_layer,
                          "best_layer": best, "feature_seconds": feature_seconds,
                          "features_extracted": extracted, "jobs": job_count(jobs),
                          "seconds": time.perf_counter() - run_start}
            setup.save()
    return setup.results


def run_lowshot(checkpoint: str | Path, voc: str | Path, out: str | Path,
                layers: Sequence[str] | str | None = None, costs: str = DEFAULT_COSTS,
                ks: Sequence[int] | str = LOWSHOT_KS, samples: int = LOWSHOT_SAMPLES, seed: int = 0,
                random_init: bool = False, baselines: bool = False, image_size: int | None = None,
                jobs: int = -1, batch_size: int | None = None, workers: int = 0,
                cache: str | Path | None = None, progress: bool = True,
                classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Low-shot SVMs; ``layers`` None: the best SVM layer of each run when OUT already holds its
    SVM results, else every layer. ``classes`` None: the devkit's own. Writes
    OUT/results.{json,md}."""
    requested = parse_layers(layers)
    ks = parse_ks(ks)
    if samples < 1:
        raise ValueError("--samples must be at least 1")
    cost_values = cost_list(costs)
    setup = _Setup(checkpoint, voc, out, image_size, cache, batch_size, workers, jobs, progress,
                   classes)
    with worker_pool(jobs) as parallel:
        for name, untrained in _run_names(random_init, baselines):
            run_start = time.perf_counter()
            run = setup.results["runs"].setdefault(name, {})
            best_svm = run.get("svm", {}).get("best_layer")
            run_layers = requested or ([best_svm] if best_svm else list(LAYERS))
            train, test, extracted, feature_seconds = setup.features(untrained, run_layers)
            per_layer = {}
            for layer in run_layers:
                start = time.perf_counter()
                result = lowshot_evaluate(train[layer], setup.trainval.labels, test[layer],
                                          setup.test.labels, cost_values, ks, samples, seed,
                                          setup.classes, jobs, parallel=parallel)
                result["seconds"] = time.perf_counter() - start
                per_layer[layer] = result
                if result["capped"]:
                    warnings.warn(f"{name} {layer}: {len(result['capped'])} (k, sample, class) "
                                  "draws had too few trainval images and were capped (see "
                                  "'capped' in results.json)", stacklevel=2)
            run["lowshot"] = {"costs": costs, "cost_values": list(cost_values), "layers": per_layer,
                              "layer_choice": "requested" if requested else
                              ("best SVM layer" if best_svm else "all layers"),
                              "feature_seconds": feature_seconds, "features_extracted": extracted,
                              "jobs": job_count(jobs), "seconds": time.perf_counter() - run_start}
            setup.save()
    return setup.results
