"""The VOC07 linear SVMs and their metric: the reference protocol, on arrays.

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

This module is what the joblib worker processes load (the tasks ``cv_task``, ``refit_task`` and
``lowshot_task`` live here), so it imports only numpy and scikit-learn: the workers start light,
without torch. Spreading the tasks over the workers is ``svm_evaluation``; the features come from
``svm_features``, the runs from ``svm_run`` and the tables from ``svm_report``.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import average_precision_score
from sklearn.svm import LinearSVC

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


def linear_svc(cost: float, seed: int = 0) -> LinearSVC:
    """The references' SVM. They leave random_state unset; a fixed one makes reruns identical."""
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


def cv_task(features: np.ndarray, y: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray,
            costs: Sequence[float], seed: int) -> tuple[np.ndarray, int]:
    """Validation AP (scikit-learn's average_precision, as cross_val_score) of each cost on one
    fold of one class."""
    coef, intercept, unconverged = _fit_costs(_rows64(features, train_rows), y[train_rows],
                                              costs, seed)
    scores = decision_scores(features, coef, intercept, rows=val_rows)
    truth = y[val_rows] == 1
    return np.array([average_precision_score(truth, scores[:, j]) for j in range(len(costs))]), \
        unconverged


def refit_task(features: np.ndarray, y: np.ndarray, cost: float, seed: int
               ) -> tuple[np.ndarray, float, int]:
    """The SVM of one class at its chosen cost, on all of trainval: (coef, intercept,
    unconverged)."""
    coef, intercept, unconverged = _fit_costs(_rows64(features), y, (cost,), seed)
    return coef[0], float(intercept[0]), unconverged


def lowshot_task(train_features: np.ndarray, train_flags: np.ndarray, sample_rows: np.ndarray,
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


# ----------------------------------------------------------------------------------------------
# Which classes count, and the low-shot samples


def evaluable_classes(train_flags: np.ndarray, test_flags: np.ndarray, min_train_positives: int = 1
                      ) -> np.ndarray:
    """Indices of the classes with enough trainval positives and at least one test positive."""
    return np.flatnonzero(((train_flags == POSITIVE).sum(0) >= min_train_positives)
                          & ((test_flags == POSITIVE).sum(0) >= 1))


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
