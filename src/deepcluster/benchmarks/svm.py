"""VOC07 linear SVM and low-shot SVM benchmarks, with the reference protocol.

Full SVM (``benchmark svm``): for each layer (``feature1``..``feature5`` pooled maps and
``avgpool``), features of trainval and test with the image resized to 224 x 224 (no crop; small
networks: their own image size), each row L2-normalised (divided by norm + 1e-5). Per class a
one-vs-rest ``LinearSVC`` (squared hinge, L2, dual, tol 1e-4, max_iter 2000, class_weight
{1: 2, -1: 1}); "difficult" images count as negatives when training and are left out when testing.
The cost is picked per class by 3-fold cross-validated average precision on trainval (stratified
folds without shuffling and scikit-learn's ``average_precision``, as ``cross_val_score(cv=3)`` in
the references), the SVM refit on all of trainval with it, and scored on test with VOC's
all-point interpolated AP. mAP is the mean over the evaluated classes.

Low-shot (``benchmark lowshot``): for k in 1, 2, 4 ... 96 and 5 seeded samples, each class gets an
SVM trained on k positives and 19k negatives drawn from trainval (positives: images with the class,
negatives: images without it; difficult images are never drawn, as in the references' sample
generator), for every cost, without cross-validation, scored on the full test set. Two cost
choices are reported per k: the references' (the cost with the best mean test mAP over the samples,
*tuned on test*) and one chosen on trainval only (the cost with the best mean mAP on the trainval
images left out of each class's sample, difficult ones ignored).

The SVMs run in joblib worker processes over (class, fold, cost group) / (k, sample, class); the
float32 feature matrices are written once per layer to temporary .npy files and handed to the
workers as read-only memory maps (``shared_arrays``), so no copy is made per worker or per cost: a
task copies only the rows it trains on, once, as the float64 that liblinear needs, and reuses
that copy for all its costs.

This module imports no torch at import time, so the worker processes start light.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import click
import numpy as np

# Same names and order as deepcluster.features.LAYERS (kept here so workers need no torch).
LAYERS = ("feature1", "feature2", "feature3", "feature4", "feature5", "avgpool")

# MMSelfSup (svm_helper.parse_cost_list): "1.0,10.0,100.0" plus 0.5 ** 4 ... 0.5 ** 19.
MMSELFSUP_COSTS = (1.0, 10.0, 100.0) + tuple(0.5 ** n for n in range(4, 20))
# VISSL (the VOC07 SVM configs' COSTS_LIST).
VISSL_COSTS = (0.01, 0.1, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 50.0, 100.0, 1000.0)
COST_LISTS = {"mmselfsup": MMSELFSUP_COSTS, "vissl": VISSL_COSTS}
DEFAULT_COSTS = "mmselfsup"

LOWSHOT_KS = (1, 2, 4, 8, 16, 32, 64, 96)
LOWSHOT_SAMPLES = 5
CV_FOLDS = 3
MAX_ITER = 2000
# When a class has fewer images than a low-shot sample asks for (small data only), take this share
# of what there is, so that some trainval images stay out of the sample for the trainval-only cost
# choice. Samples that are not short are drawn exactly as the references draw them.
CAPPED_SHARE = 0.8

POSITIVE, NEGATIVE, DIFFICULT = 1, -1, 0


def cost_list(name: str) -> tuple[float, ...]:
    if name not in COST_LISTS:
        raise ValueError(f"unknown cost list {name!r}; choose one of {', '.join(COST_LISTS)}")
    return COST_LISTS[name]


def linear_svc(cost: float, seed: int = 0):
    """The references' SVM. They leave random_state unset; a fixed one makes reruns identical."""
    from sklearn.svm import LinearSVC

    return LinearSVC(C=cost, loss="squared_hinge", penalty="l2", dual=True, tol=1e-4,
                     max_iter=MAX_ITER, class_weight={1: 2, -1: 1}, intercept_scaling=1.0,
                     random_state=seed)


# ----------------------------------------------------------------------------------------------
# Average precision


def precision_recall(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each image, ranked by decreasing score (ties keep image order)."""
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = positive[order]
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / max(int(positive.sum()), 1)
    return precision, recall


def voc_ap(positive: np.ndarray, scores: np.ndarray) -> float:
    """VOC all-point interpolated AP (VOC2010+ devkit; the references' ``calculate_ap``): the area
    under the precision-recall curve after making precision monotonically decreasing. NaN when there
    is no positive."""
    positive = np.asarray(positive, dtype=bool)
    if not positive.any():
        return float("nan")
    precision, recall = precision_recall(positive, scores)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))


def voc_ap_11point(positive: np.ndarray, scores: np.ndarray) -> float:
    """The VOC2007 devkit's 11-point interpolated AP (not the benchmark's metric; for comparison)."""
    positive = np.asarray(positive, dtype=bool)
    if not positive.any():
        return float("nan")
    precision, recall = precision_recall(positive, scores)
    total = 0.0
    for threshold in np.linspace(0.0, 1.0, 11):
        reached = recall >= threshold
        total += precision[reached].max() if reached.any() else 0.0
    return total / 11.0


def train_labels(flags: np.ndarray) -> np.ndarray:
    """SVM targets of one class from VOC flags: 1 stays 1; -1 and 0 (difficult) become -1."""
    return np.where(np.asarray(flags) == POSITIVE, 1, -1).astype(np.int32)


def ap_ignoring_difficult(flags: np.ndarray, scores: np.ndarray) -> float:
    """VOC AP of one class with the difficult images (flag 0) left out."""
    flags = np.asarray(flags)
    keep = flags != DIFFICULT
    return voc_ap(flags[keep] == POSITIVE, np.asarray(scores)[keep])


def normalise_rows(features: np.ndarray) -> np.ndarray:
    """Divide each row by its L2 norm + 1e-5, in place, as float32."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1)
    features /= (norms + 1e-5)[:, None]
    return features


# ----------------------------------------------------------------------------------------------
# Worker tasks (run in joblib processes; features arrive memory-mapped)


def _rows64(features: np.ndarray, rows: np.ndarray | None = None, chunk: int = 2048) -> np.ndarray:
    """The chosen rows as one C-contiguous float64 array (liblinear's input), built in chunks."""
    count = len(features) if rows is None else len(rows)
    out = np.empty((count, features.shape[1]), dtype=np.float64)
    for start in range(0, count, chunk):
        index = slice(start, start + chunk) if rows is None else rows[start:start + chunk]
        out[start:start + chunk] = features[index]
    return out


def decision_scores(features: np.ndarray, coef: np.ndarray, intercept: np.ndarray,
                    rows: np.ndarray | None = None, chunk: int = 2048) -> np.ndarray:
    """``features[rows] @ coef.T + intercept`` in float64, a chunk of rows at a time; coef is
    (n_models, D), the result (n_rows, n_models)."""
    coef = np.atleast_2d(np.asarray(coef, dtype=np.float64))
    intercept = np.asarray(intercept, dtype=np.float64).reshape(-1)
    count = len(features) if rows is None else len(rows)
    out = np.empty((count, len(coef)), dtype=np.float64)
    for start in range(0, count, chunk):
        index = slice(start, start + chunk) if rows is None else rows[start:start + chunk]
        out[start:start + chunk] = np.asarray(features[index], dtype=np.float64) @ coef.T
    return out + intercept


def _fit_costs(x: np.ndarray, y: np.ndarray, costs: Sequence[float], seed: int
               ) -> tuple[np.ndarray, np.ndarray, int]:
    """One SVM per cost on the same float64 rows: (coef n_costs x D, intercept, unconverged)."""
    from sklearn.exceptions import ConvergenceWarning

    coef = np.empty((len(costs), x.shape[1]), dtype=np.float64)
    intercept = np.empty(len(costs), dtype=np.float64)
    unconverged = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for j, cost in enumerate(costs):
            svm = linear_svc(cost, seed).fit(x, y)
            coef[j], intercept[j] = svm.coef_[0], svm.intercept_[0]
            unconverged += int(np.max(svm.n_iter_) >= MAX_ITER)
    return coef, intercept, unconverged


def _cv_task(features: np.ndarray, y: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray,
             costs: Sequence[float], seed: int) -> tuple[np.ndarray, int]:
    """Validation AP (scikit-learn's average_precision, as cross_val_score) of each cost on one
    fold of one class."""
    from sklearn.metrics import average_precision_score

    coef, intercept, unconverged = _fit_costs(_rows64(features, train_rows), y[train_rows],
                                              costs, seed)
    scores = decision_scores(features, coef, intercept, rows=val_rows)
    truth = y[val_rows] == 1
    return np.array([average_precision_score(truth, scores[:, j]) for j in range(len(costs))]), \
        unconverged


def _refit_task(features: np.ndarray, y: np.ndarray, cost: float, seed: int
                ) -> tuple[np.ndarray, float, int]:
    coef, intercept, unconverged = _fit_costs(_rows64(features), y, (cost,), seed)
    return coef[0], float(intercept[0]), unconverged


def _lowshot_task(train_features: np.ndarray, train_flags: np.ndarray, sample_rows: np.ndarray,
                  sample_y: np.ndarray, test_features: np.ndarray, test_flags: np.ndarray,
                  costs: Sequence[float], seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Train one class's SVM for every cost on its sample; return the test AP and the AP on the
    trainval images outside the sample (difficult ignored; NaN without a positive there)."""
    coef, intercept, unconverged = _fit_costs(_rows64(train_features, sample_rows), sample_y,
                                              costs, seed)
    test_scores = decision_scores(test_features, coef, intercept)
    test = np.array([ap_ignoring_difficult(test_flags, test_scores[:, j])
                     for j in range(len(costs))])
    outside = np.ones(len(train_flags), dtype=bool)
    outside[sample_rows] = False
    outside &= train_flags != DIFFICULT
    rows = np.flatnonzero(outside)
    held_out = np.full(len(costs), np.nan)
    if len(rows) and (train_flags[rows] == POSITIVE).any():
        scores = decision_scores(train_features, coef, intercept, rows=rows)
        held_out = np.array([voc_ap(train_flags[rows] == POSITIVE, scores[:, j])
                             for j in range(len(costs))])
    return test, held_out, unconverged


@contextmanager
def shared_arrays(*arrays: np.ndarray):
    """The arrays as read-only memory maps of temporary .npy files, so that every joblib worker
    reads the same pages (joblib passes a memmap by file name instead of pickling or hashing it)."""
    with tempfile.TemporaryDirectory(prefix="deepcluster-svm-") as folder:
        maps = []
        for number, array in enumerate(arrays):
            if isinstance(array, np.memmap):
                maps.append(array)
                continue
            path = Path(folder) / f"{number}.npy"
            np.save(path, np.ascontiguousarray(array, dtype=np.float32))
            maps.append(np.load(path, mmap_mode="r"))
        try:
            yield maps
        finally:
            del maps


def _parallel(jobs: int):
    from joblib import Parallel

    # Arrays above 1 MB are dumped once per run and memory-mapped read-only in the workers.
    return Parallel(n_jobs=jobs, backend="loky", max_nbytes="1M", mmap_mode="r")


def _job_count(jobs: int) -> int:
    from joblib import cpu_count

    return cpu_count() if jobs in (0, -1) else max(1, jobs)


# ----------------------------------------------------------------------------------------------
# The full SVM benchmark on arrays


def evaluable_classes(train_flags: np.ndarray, test_flags: np.ndarray, min_train_positives: int = 1
                      ) -> np.ndarray:
    """Indices of the classes with enough trainval positives and at least one test positive."""
    return np.flatnonzero(((train_flags == POSITIVE).sum(0) >= min_train_positives)
                          & ((test_flags == POSITIVE).sum(0) >= 1))


def svm_evaluate(train_features: np.ndarray, train_flags: np.ndarray, test_features: np.ndarray,
                 test_flags: np.ndarray, costs: Sequence[float] = MMSELFSUP_COSTS,
                 class_names: Sequence[str] | None = None, jobs: int = -1, seed: int = 0,
                 parallel=None) -> dict[str, Any]:
    """Cost by 3-fold CV AP on trainval per class, refit, VOC AP on test. Features must already be
    L2-normalised float32; flags are N x C in {1, -1, 0}. APs in the result are percentages."""
    num_classes = train_flags.shape[1]
    class_names = list(class_names or [str(c) for c in range(num_classes)])
    classes = evaluable_classes(train_flags, test_flags, min_train_positives=CV_FOLDS)
    skipped = [class_names[c] for c in range(num_classes) if c not in set(classes)]
    parallel = parallel or _parallel(jobs)
    # Cost groups interleave cheap and expensive costs, so that there are enough tasks to share.
    groups = max(1, min(len(costs), math.ceil(4 * _job_count(jobs) / max(1, len(classes) * CV_FOLDS))))
    cost_groups = [list(range(g, len(costs), groups)) for g in range(groups)]

    with shared_arrays(train_features, test_features) as (train_features, test_features):
        cv_ap, chosen, fits, unconverged = _svm_fits(
            train_features, train_flags, classes, costs, cost_groups, seed, parallel)
        per_class = {}
        for c, (coef, intercept, bad) in zip(classes, fits):
            unconverged += bad
            scores = decision_scores(test_features, coef, intercept)[:, 0]
            per_class[class_names[c]] = {
                "ap": 100.0 * ap_ignoring_difficult(test_flags[:, c], scores),
                "cost": costs[chosen[c]],
                "cv_ap": [100.0 * a for a in cv_ap[c].mean(axis=0)],
                "test_positives": int((test_flags[:, c] == POSITIVE).sum()),
                "test_difficult_ignored": int((test_flags[:, c] == DIFFICULT).sum()),
            }
    aps = [v["ap"] for v in per_class.values()]
    return {"map": float(np.mean(aps)) if aps else float("nan"), "classes": per_class,
            "skipped_classes": skipped, "unconverged_fits": unconverged,
            "fits": len(classes) * (CV_FOLDS * len(costs) + 1)}


def _svm_fits(train_features, train_flags, classes, costs, cost_groups, seed, parallel):
    """CV over every (class, fold, cost group), then the refit of each class at its best cost."""
    from joblib import delayed
    from sklearn.model_selection import StratifiedKFold

    targets = {c: train_labels(train_flags[:, c]) for c in classes}
    tasks, keys = [], []
    for c in classes:
        folds = StratifiedKFold(n_splits=CV_FOLDS).split(np.zeros(len(targets[c])), targets[c])
        for fold, (train_rows, val_rows) in enumerate(folds):
            for group in cost_groups:
                tasks.append(delayed(_cv_task)(train_features, targets[c], train_rows, val_rows,
                                               [costs[j] for j in group], seed))
                keys.append((c, fold, group))
    cv_ap = {c: np.zeros((CV_FOLDS, len(costs))) for c in classes}
    unconverged = 0
    for (c, fold, group), (aps, bad) in zip(keys, parallel(tasks)):
        cv_ap[c][fold, group] = aps
        unconverged += bad

    # The references' choice: the first cost (in list order) with the best mean CV AP.
    chosen = {c: int(np.argmax(cv_ap[c].mean(axis=0))) for c in classes}
    fits = parallel(delayed(_refit_task)(train_features, targets[c], costs[chosen[c]], seed)
                    for c in classes)
    return cv_ap, chosen, fits, unconverged


# ----------------------------------------------------------------------------------------------
# Low-shot sampling and evaluation on arrays


def lowshot_sample(flags: np.ndarray, k: int, sample: int, seed: int = 0,
                   negatives_per_positive: int | None = None) -> dict[str, Any]:
    """One low-shot sample: for each class, ``k`` positives and ``19k`` negatives (19 = classes - 1)
    drawn without replacement from trainval, from a generator seeded by (seed, sample, k).

    Returns ``rows`` (per class, sorted row indices), ``targets`` (per class, 1 / -1 aligned with
    rows) and ``capped`` (classes that had too few images: then ``CAPPED_SHARE`` of what there is
    was taken).
    """
    num_classes = flags.shape[1]
    ratio = num_classes - 1 if negatives_per_positive is None else negatives_per_positive
    rng = np.random.default_rng([seed, sample, k])
    rows, targets, capped = [], [], []
    for c in range(num_classes):
        picked = []
        short = {}
        for flag, wanted in ((POSITIVE, k), (NEGATIVE, ratio * k)):
            pool = np.flatnonzero(flags[:, c] == flag)
            count = wanted
            if wanted > len(pool):
                count = max(1, int(len(pool) * CAPPED_SHARE)) if len(pool) else 0
                short["positives" if flag == POSITIVE else "negatives"] = (wanted, count)
            picked.append(np.sort(rng.choice(pool, size=count, replace=False)))
        if short:
            capped.append({"class": c, **{key: {"wanted": w, "taken": t}
                                          for key, (w, t) in short.items()}})
        rows.append(np.concatenate(picked))
        targets.append(np.concatenate([np.ones(len(picked[0]), dtype=np.int32),
                                       -np.ones(len(picked[1]), dtype=np.int32)]))
    return {"rows": rows, "targets": targets, "capped": capped}


def _stats(values: np.ndarray) -> dict[str, float]:
    values = 100.0 * np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max()),
            "std": float(values.std())}  # population std over samples, as the references


def lowshot_evaluate(train_features: np.ndarray, train_flags: np.ndarray,
                     test_features: np.ndarray, test_flags: np.ndarray,
                     costs: Sequence[float] = MMSELFSUP_COSTS, ks: Sequence[int] = LOWSHOT_KS,
                     samples: int = LOWSHOT_SAMPLES, seed: int = 0,
                     class_names: Sequence[str] | None = None, jobs: int = -1,
                     parallel=None) -> dict[str, Any]:
    """Low-shot SVMs for every k, sample, class and cost; per k the mean / min / max / std of mAP
    over the samples, with the cost tuned on test (the references) and chosen on trainval."""
    from joblib import delayed

    num_classes = train_flags.shape[1]
    class_names = list(class_names or [str(c) for c in range(num_classes)])
    classes = evaluable_classes(train_flags, test_flags)
    parallel = parallel or _parallel(jobs)
    tasks, keys, capped = [], [], []
    with shared_arrays(train_features, test_features) as (train_shared, test_shared):
        for k in ks:
            for s in range(samples):
                drawn = lowshot_sample(train_flags, k, s, seed)
                capped += [{"k": k, "sample": s, **entry, "class": class_names[entry["class"]]}
                           for entry in drawn["capped"] if entry["class"] in set(classes)]
                for c in classes:
                    tasks.append(delayed(_lowshot_task)(
                        train_shared, train_flags[:, c], drawn["rows"][c], drawn["targets"][c],
                        test_shared, test_flags[:, c], costs, seed))
                    keys.append((k, s, c))
        outputs = parallel(tasks)
    test = {k: np.full((samples, len(classes), len(costs)), np.nan) for k in ks}
    held_out = {k: np.full((samples, len(classes), len(costs)), np.nan) for k in ks}
    position = {c: i for i, c in enumerate(classes)}
    unconverged = 0
    for (k, s, c), (test_ap_, held_ap, bad) in zip(keys, outputs):
        test[k][s, position[c]] = test_ap_
        held_out[k][s, position[c]] = held_ap
        unconverged += bad

    per_k = {}
    for k in ks:
        test_map = test[k].mean(axis=1)  # samples x costs
        tuned = int(np.argmax(test_map.mean(axis=0)))
        entry = {"tuned_on_test": {"cost": costs[tuned], **_stats(test_map[:, tuned])}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            held_map = np.nanmean(held_out[k], axis=1)  # samples x costs
            held_mean = np.nanmean(held_map, axis=0)
        if np.isfinite(held_mean).any():
            choice = int(np.nanargmax(held_mean))
            entry["chosen_on_trainval"] = {"cost": costs[choice], **_stats(test_map[:, choice]),
                                           "held_out_map": 100.0 * float(held_mean[choice])}
        else:
            entry["chosen_on_trainval"] = None  # no trainval image left out of the samples
        entry["test_map_per_cost"] = [100.0 * v for v in test_map.mean(axis=0)]
        per_k[str(k)] = entry
    return {"ks": list(ks), "samples": samples, "seed": seed, "per_k": per_k,
            "classes": [class_names[c] for c in classes],
            "skipped_classes": [class_names[c] for c in range(num_classes) if c not in set(classes)],
            "capped": capped, "unconverged_fits": unconverged,
            "fits": len(tasks) * len(costs)}


# ----------------------------------------------------------------------------------------------
# Features: extraction and the on-disk cache


def file_digest(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def default_image_size(checkpoint_image_size: int) -> int:
    """224 (the protocol) for networks trained on large images; small networks (28-64 px) get
    their own training size, since they were never trained at 224."""
    from ..transforms import is_small

    return checkpoint_image_size if is_small(checkpoint_image_size) else 224


def voc_transform(image_size: int):
    """Resize to image_size x image_size (no crop), then the checkpoint's normalisation."""
    import torch
    from torchvision.transforms import v2

    from ..transforms import IMAGENET_MEAN, IMAGENET_STD, SMALL_MEAN, SMALL_STD, is_small

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
        """The cached features (None when absent or stale); with ``check_only``, whether they are
        there (without reading the features)."""
        path = self.path(voc_split.split, layer)
        if not path.is_file():
            return None
        try:
            with np.load(path) as stored:  # an npz reads each array only when asked for
                if (list(stored["ids"]) != list(voc_split.ids)
                        or str(stored["images"]) != self._digest(voc_split)):
                    return None
                return True if check_only else np.ascontiguousarray(stored["features"],
                                                                    dtype=np.float32)
        except (OSError, KeyError, ValueError):
            return None  # unreadable or foreign cache entry: extract again

    def save(self, voc_split, layer: str, features: np.ndarray) -> None:
        from ..checkpoint import save_npz

        save_npz(self.path(voc_split.split, layer), features=features,
                 ids=np.asarray(voc_split.ids), images=np.asarray(self._digest(voc_split)))


def split_features(backbone, voc_split, layers: Sequence[str], cache: FeatureCache,
                   image_size: int, batch_size: int, workers: int, device: str,
                   progress: bool = True) -> tuple[dict[str, np.ndarray], list[str]]:
    """L2-normalised float32 features of one split for each layer: from the cache, and the missing
    layers from one extraction pass (then cached). Returns them and the layers extracted now."""
    from ..features import extract_layers

    found = {layer: cache.load(voc_split, layer) for layer in layers}
    missing = tuple(layer for layer in layers if found[layer] is None)
    if missing:
        dataset = voc_split.dataset(voc_transform(image_size))
        extracted, _ = extract_layers(backbone, dataset, missing, batch_size=batch_size,
                                      workers=workers, device=device, progress=progress)
        for layer in missing:
            found[layer] = normalise_rows(extracted.pop(layer))
            cache.save(voc_split, layer, found[layer])
    return found, list(missing)


# ----------------------------------------------------------------------------------------------
# Runs: checkpoint + VOC folder -> OUT/results.json and OUT/results.md


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
                 progress):
        import torch

        from ..checkpoint import load_checkpoint
        from ..config import PretrainConfig
        from ..voc import find_voc_root, read_voc

        self.checkpoint = Path(checkpoint)
        self.config = PretrainConfig.from_dict(load_checkpoint(self.checkpoint)["config"])
        self.sha = file_digest(self.checkpoint)
        self.voc_root = find_voc_root(voc)
        self.trainval = read_voc(self.voc_root, "trainval")
        self.test = read_voc(self.voc_root, "test")
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
                "images_sha256": self.images_sha}

    def _load_results(self) -> dict[str, Any]:
        path = self.out / "results.json"
        header = self.header()
        if path.is_file():
            try:
                previous = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                previous = None
            same = previous and all(previous.get(key) == header[key] for key in
                                    ("checkpoint_sha256", "voc", "image_size", "images_sha256"))
            if same:
                return previous
            warnings.warn(f"{path} holds results of another checkpoint or dataset; replacing them",
                          stacklevel=3)
        return {**header, "runs": {}}

    def features(self, random_init: bool, layers: Sequence[str]):
        """(trainval, test) feature dicts, the layers extracted now, and the seconds it took."""
        from ..checkpoint import backbone_from_checkpoint

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
        from ..checkpoint import atomic_write, save_json

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
            cache: str | Path | None = None, seed: int = 0, progress: bool = True
            ) -> dict[str, Any]:
    """The full VOC07 SVM benchmark for each requested layer; writes OUT/results.{json,md}."""
    from ..voc import VOC_CLASSES

    layers = parse_layers(layers) or list(LAYERS)
    cost_values = cost_list(costs)
    setup = _Setup(checkpoint, voc, out, image_size, cache, batch_size, workers, jobs, progress)
    with _parallel(jobs) as parallel:
        for name, untrained in _run_names(random_init, baselines):
            run_start = time.perf_counter()
            train, test, extracted, feature_seconds = setup.features(untrained, layers)
            per_layer = {}
            for layer in layers:
                start = time.perf_counter()
                result = svm_evaluate(train[layer], setup.trainval.labels, test[layer],
                                      setup.test.labels, cost_values, VOC_CLASSES, jobs, seed,
                                      parallel=parallel)
                result.update(dim=int(train[layer].shape[1]), seconds=time.perf_counter() - start)
                per_layer[layer] = result
            done = {k: v for k, v in per_layer.items() if np.isfinite(v["map"])}
            best = max(done, key=lambda k: done[k]["map"]) if done else None
            run = setup.results["runs"].setdefault(name, {})
            run["svm"] = {"costs": costs, "cost_values": list(cost_values), "layers": per_layer,
                          "best_layer": best, "feature_seconds": feature_seconds,
                          "features_extracted": extracted, "jobs": _job_count(jobs),
                          "seconds": time.perf_counter() - run_start}
            setup.save()
    return setup.results


def run_lowshot(checkpoint: str | Path, voc: str | Path, out: str | Path,
                layers: Sequence[str] | str | None = None, costs: str = DEFAULT_COSTS,
                ks: Sequence[int] | str = LOWSHOT_KS, samples: int = LOWSHOT_SAMPLES, seed: int = 0,
                random_init: bool = False, baselines: bool = False, image_size: int | None = None,
                jobs: int = -1, batch_size: int | None = None, workers: int = 0,
                cache: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Low-shot SVMs; ``layers`` None: the best SVM layer of each run when OUT already holds its
    SVM results, else every layer. Writes OUT/results.{json,md}."""
    from ..voc import VOC_CLASSES

    requested = parse_layers(layers)
    ks = parse_ks(ks)
    if samples < 1:
        raise ValueError("--samples must be at least 1")
    cost_values = cost_list(costs)
    setup = _Setup(checkpoint, voc, out, image_size, cache, batch_size, workers, jobs, progress)
    with _parallel(jobs) as parallel:
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
                                          VOC_CLASSES, jobs, parallel=parallel)
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
                              "jobs": _job_count(jobs), "seconds": time.perf_counter() - run_start}
            setup.save()
    return setup.results


# ----------------------------------------------------------------------------------------------
# Tables


CHOICES = (("tuned_on_test", "tuned on test (references)"),
           ("chosen_on_trainval", "chosen on trainval"))


def _lowshot_mean_over_k(layer_result: dict[str, Any]) -> float:
    return float(np.mean([v["tuned_on_test"]["mean"] for v in layer_result["per_k"].values()]))


def published_rows(results: dict[str, Any]) -> dict[str, Any]:
    """The published layout: Best layer | SVM | k=1 ... k=96, one row per run and low-shot cost
    choice. The layer is the run's best SVM layer; when low-shot results lack it (or there are no
    SVM results), the low-shot layer with the best mean over k."""
    ks = None
    rows = []
    for name, run in results.get("runs", {}).items():
        svm = run.get("svm")
        lowshot = run.get("lowshot")
        layer = svm["best_layer"] if svm else None
        if lowshot and (layer is None or layer not in lowshot["layers"]):
            layer = max(lowshot["layers"], key=lambda l: _lowshot_mean_over_k(lowshot["layers"][l]))
        svm_map = svm["layers"][layer]["map"] if svm and layer in svm["layers"] else None
        if lowshot:
            ks = lowshot["layers"][layer]["ks"]
            for key, label in CHOICES:
                cells = {}
                for k, entry in lowshot["layers"][layer]["per_k"].items():
                    choice = entry.get(key)
                    cells[k] = None if choice is None else choice["mean"]
                rows.append({"features": name, "lowshot_cost": label, "best_layer": layer,
                             "svm": svm_map, "lowshot": cells})
        else:
            rows.append({"features": name, "lowshot_cost": None, "best_layer": layer,
                         "svm": svm_map, "lowshot": {}})
    return {"columns": ["Features", "Low-shot cost", "Best layer", "SVM"] +
            [f"k={k}" for k in (ks or LOWSHOT_KS)], "ks": list(ks or LOWSHOT_KS), "rows": rows}


def _cell(value: float | None) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.2f}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown_report(results: dict[str, Any]) -> str:
    table = results.get("table") or published_rows(results)
    lines = ["# VOC07 SVM and low-shot SVM", "",
             f"Checkpoint `{results['checkpoint']}` ({results['arch']}"
             f"{', Sobel' if results['sobel'] else ''}); data `{results['voc']}` "
             f"({results['trainval_images']} trainval / {results['test_images']} test images); "
             f"features at {results['resize']}, L2-normalised. mAP in %.", "",
             "## Published layout", ""]
    ks = [str(k) for k in table["ks"]]
    lines += _markdown_table(
        table["columns"],
        [[row["features"], row["lowshot_cost"] or "–", row["best_layer"] or "–", _cell(row["svm"])]
         + [_cell(row["lowshot"].get(k)) for k in ks] for row in table["rows"]])
    runs = results.get("runs", {})
    svm_runs = {name: run["svm"] for name, run in runs.items() if "svm" in run}
    if svm_runs:
        layers = [l for l in LAYERS if any(l in s["layers"] for s in svm_runs.values())]
        lines += ["", "## SVM mAP per layer", ""]
        lines += _markdown_table(
            ["Features"] + layers + ["Costs", "Seconds"],
            [[name] + [_cell(s["layers"][l]["map"]) if l in s["layers"] else "–" for l in layers]
             + [s["costs"], f"{s['seconds']:.0f}"] for name, s in svm_runs.items()])
        evaluated = next(iter(next(iter(svm_runs.values()))["layers"].values()))
        lines += ["", f"Classes evaluated: {', '.join(evaluated['classes'])}."]
        if evaluated["skipped_classes"]:
            lines += [f"Skipped (fewer than {CV_FOLDS} trainval or no test positives): "
                      f"{', '.join(evaluated['skipped_classes'])}."]
    for name, run in runs.items():
        lowshot = run.get("lowshot")
        if not lowshot:
            continue
        lines += ["", f"## Low-shot, {name} ({lowshot['costs']} costs, "
                  f"{next(iter(lowshot['layers'].values()))['samples']} samples, "
                  f"{lowshot['seconds']:.0f} s)", ""]
        for layer, result in lowshot["layers"].items():
            rows = []
            for k, entry in result["per_k"].items():
                row = [k]
                for key, _ in CHOICES:
                    choice = entry.get(key)
                    row += (["–"] * 5 if choice is None else
                            [_cell(choice["mean"]), _cell(choice["min"]), _cell(choice["max"]),
                             _cell(choice["std"]), f"{choice['cost']:.3g}"])
                rows.append(row)
            lines += [f"### {layer}", ""]
            lines += _markdown_table(
                ["k", "mean (cost tuned on test)", "min", "max", "std", "cost",
                 "mean (cost chosen on trainval)", "min", "max", "std", "cost"], rows)
            if result["capped"]:
                ks_capped = sorted({entry["k"] for entry in result["capped"]})
                lines += ["", f"Too few trainval images for a full sample at k = "
                          f"{', '.join(map(str, ks_capped))}: {len(result['capped'])} "
                          f"(k, sample, class) draws took {int(CAPPED_SHARE * 100)}% of the "
                          "available positives and/or negatives instead (details in "
                          "results.json)."]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------
# Command line: ``deepcluster benchmark svm`` and ``deepcluster benchmark lowshot``


def _common_options(command):
    options = [
        click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
                     help="pretraining checkpoint"),
        click.option("--voc", required=True, type=click.Path(exists=True, file_okay=False),
                     help="VOC2007 devkit folder (VOCdevkit or VOCdevkit/VOC2007)"),
        click.option("--out", required=True, type=click.Path(file_okay=False),
                     help="output folder: results.json, results.md, features/ (the cache)"),
        click.option("--costs", default=DEFAULT_COSTS, show_default=True,
                     type=click.Choice(sorted(COST_LISTS)), help="SVM cost list"),
        click.option("--random-init", is_flag=True, help="evaluate the same network untrained"),
        click.option("--baselines", is_flag=True, help="also evaluate random init (second row)"),
        click.option("--image-size", type=int, default=None,
                     help="resize images to this square size [224; small networks: their own]"),
        click.option("--jobs", default=-1, show_default=True,
                     help="SVM worker processes (-1: all cores)"),
        click.option("--batch-size", type=int, default=None, help="extraction batch size"),
        click.option("--workers", default=0, show_default=True, help="data-loading workers"),
        click.option("--cache", type=click.Path(file_okay=False), default=None,
                     help="feature cache folder [OUT/features]"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _print(results: dict[str, Any], out: str) -> None:
    from rich.markdown import Markdown

    from ..report import console

    console.print(Markdown(results["markdown"]))
    console.print(f"results: {Path(out) / 'results.json'}, {Path(out) / 'results.md'}")


@click.command("svm")
@_common_options
@click.option("--layers", default="all", show_default=True,
              help="comma-separated subset of " + ", ".join(LAYERS))
def svm_command(layers, **options) -> None:
    """VOC07 linear SVM: cost by 3-fold CV AP on trainval, refit, VOC AP on test."""
    start = time.perf_counter()
    results = run_svm(layers=layers, **options)
    _print(results, options["out"])
    from ..report import console
    console.print(f"took {time.perf_counter() - start:.0f} s")


@click.command("lowshot")
@_common_options
@click.option("--layers", default="auto", show_default=True,
              help="comma-separated subset of " + ", ".join(LAYERS) +
              "; auto: the best SVM layer when OUT holds SVM results, else all")
@click.option("--ks", default=",".join(map(str, LOWSHOT_KS)), show_default=True,
              help="positives per class")
@click.option("--samples", default=LOWSHOT_SAMPLES, show_default=True,
              help="independent samples per k")
@click.option("--seed", default=0, show_default=True, help="seed of the samples")
def lowshot_command(layers, ks, samples, seed, **options) -> None:
    """Low-shot VOC07 SVM: k positives and 19k negatives per class, 5 seeded samples."""
    start = time.perf_counter()
    results = run_lowshot(layers=layers, ks=ks, samples=samples, seed=seed, **options)
    _print(results, options["out"])
    from ..report import console
    console.print(f"took {time.perf_counter() - start:.0f} s")
