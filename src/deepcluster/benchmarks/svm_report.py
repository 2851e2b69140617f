"""The tables of the SVM benchmarks: the published layout and the Markdown report.

Both read the ``results.json`` dictionary that ``svm_run`` builds, so a report can be rewritten
from saved results without running anything.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .svm import CAPPED_SHARE, CV_FOLDS, LAYERS, LOWSHOT_KS


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


def _class_source(results: dict[str, Any]) -> str:
    return {"VOC2007": "VOC2007's 20", "ImageSets/Main": "from the devkit's ImageSets/Main files",
            "Annotations": "from the devkit's annotations", "given": "as asked for"
            }.get(results.get("class_source"), "source unknown")


def markdown_report(results: dict[str, Any]) -> str:
    table = results.get("table") or published_rows(results)
    lines = ["# VOC07 SVM and low-shot SVM", "",
             f"Checkpoint `{results['checkpoint']}` ({results['arch']}"
             f"{', Sobel' if results['sobel'] else ''}); data `{results['voc']}` "
             f"({results['trainval_images']} trainval / {results['test_images']} test images); "
             f"features at {results['resize']}, L2-normalised. mAP in %.", ""]
    if results.get("classes"):
        lines += [f"Classes ({len(results['classes'])}, {_class_source(results)}): "
                  f"{', '.join(results['classes'])}.", ""]
    lines += ["## Published layout", ""]
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
