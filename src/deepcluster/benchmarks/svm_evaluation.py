"""The full and the low-shot SVM benchmarks on feature arrays, spread over joblib workers.

The SVMs run in joblib worker processes over (class, fold, cost group) / (k, sample, class); the
float32 feature matrices are written once per layer to temporary .npy files and handed to the
workers as read-only memory maps (``shared_arrays``), so no copy is made per worker or per cost: a
task copies only the rows it trains on, once, as the float64 that liblinear needs, and reuses
that copy for all its costs. The tasks themselves live in ``svm`` (numpy and scikit-learn only),
which is all a worker imports; this module stays in the main process.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from joblib import Parallel, cpu_count, delayed
from sklearn.model_selection import StratifiedKFold

from .svm import (CV_FOLDS, DIFFICULT, LOWSHOT_KS, LOWSHOT_SAMPLES, MMSELFSUP_COSTS, POSITIVE,
                  ap_ignoring_difficult, cv_task, decision_scores, evaluable_classes,
                  lowshot_sample, lowshot_task, refit_task, train_labels)


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


def worker_pool(jobs: int) -> Parallel:
    """The joblib pool of ``jobs`` worker processes (-1: all cores); entered once per run, so
    the workers start once and serve every layer."""
    # Arrays above 1 MB are dumped once per run and memory-mapped read-only in the workers.
    return Parallel(n_jobs=jobs, backend="loky", max_nbytes="1M", mmap_mode="r")


def job_count(jobs: int) -> int:
    """How many workers ``jobs`` means (0 and -1: every core), for the results and the cost
    groups."""
    return cpu_count() if jobs in (0, -1) else max(1, jobs)


# ----------------------------------------------------------------------------------------------
# The full SVM benchmark on arrays


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
    parallel = parallel or worker_pool(jobs)
    # Cost groups interleave cheap and expensive costs, so that there are enough tasks to share.
    groups = max(1, min(len(costs), math.ceil(4 * job_count(jobs) / max(1, len(classes) * CV_FOLDS))))
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
    targets = {c: train_labels(train_flags[:, c]) for c in classes}
    tasks, keys = [], []
    for c in classes:
        folds = StratifiedKFold(n_splits=CV_FOLDS).split(np.zeros(len(targets[c])), targets[c])
        for fold, (train_rows, val_rows) in enumerate(folds):
            for group in cost_groups:
                tasks.append(delayed(cv_task)(train_features, targets[c], train_rows, val_rows,
                                              [costs[j] for j in group], seed))
                keys.append((c, fold, group))
    cv_ap = {c: np.zeros((CV_FOLDS, len(costs))) for c in classes}
    unconverged = 0
    for (c, fold, group), (aps, bad) in zip(keys, parallel(tasks)):
        cv_ap[c][fold, group] = aps
        unconverged += bad

    # The references' choice: the first cost (in list order) with the best mean CV AP.
    chosen = {c: int(np.argmax(cv_ap[c].mean(axis=0))) for c in classes}
    fits = parallel(delayed(refit_task)(train_features, targets[c], costs[chosen[c]], seed)
                    for c in classes)
    return cv_ap, chosen, fits, unconverged


# ----------------------------------------------------------------------------------------------
# The low-shot benchmark on arrays


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
    num_classes = train_flags.shape[1]
    class_names = list(class_names or [str(c) for c in range(num_classes)])
    classes = evaluable_classes(train_flags, test_flags)
    parallel = parallel or worker_pool(jobs)
    tasks, keys, capped = [], [], []
    with shared_arrays(train_features, test_features) as (train_shared, test_shared):
        for k in ks:
            for s in range(samples):
                drawn = lowshot_sample(train_flags, k, s, seed)
                capped += [{"k": k, "sample": s, **entry, "class": class_names[entry["class"]]}
                           for entry in drawn["capped"] if entry["class"] in set(classes)]
                for c in classes:
                    tasks.append(delayed(lowshot_task)(
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


def merge_lowshot(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One ``lowshot_evaluate`` result from the results of its ks evaluated apart (one k each,
    or any split of the ks, in order): what a single call over all of them returns, since every
    k's samples and SVMs are independent of the others'."""
    if not parts:
        raise ValueError("no low-shot results to merge")
    merged = dict(parts[0])
    merged["ks"] = [k for part in parts for k in part["ks"]]
    merged["per_k"] = {k: entry for part in parts for k, entry in part["per_k"].items()}
    merged["capped"] = [entry for part in parts for entry in part["capped"]]
    for total in ("unconverged_fits", "fits"):
        merged[total] = sum(part[total] for part in parts)
    return merged
