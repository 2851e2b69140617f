"""The Markdown of ``benchmark all``: the published tables column for column (VOC07 SVM best
layer and mAP, low-shot k = 1 .. 96; linear top-1 on Feature1..5 and AvgPool per dataset), the
published ResNet-50 Sobel 200-epoch row beside this checkpoint's. Reads only the suite state
(``suite.json``), so the file can be rewritten without running anything."""

from __future__ import annotations

from typing import Any, Sequence

# ../shared/PROTOCOLS.md: ResNet-50 with Sobel input, 200 epochs on ImageNet-1k (MMSelfSup).
PUBLISHED_LABEL = "ResNet-50 + Sobel, 200 epochs (MMSelfSup, published)"
PUBLISHED_VOC = {"best_layer": "feature5", "svm": 74.26,
                 "lowshot": {"1": 29.37, "2": 37.99, "4": 45.85, "8": 55.57, "16": 62.48,
                             "32": 66.15, "64": 70.00, "96": 71.37}}
PUBLISHED_LINEAR: dict[str, Sequence[float | None] | None] = {
    "ImageNet-1k": (12.78, 30.81, 43.88, 57.71, 51.68, 46.92),
    "Places205": (18.80, 33.93, 41.44, 47.22, 42.61, None),
    "iNaturalist2018": None,  # configs exist, no published number
}
LINEAR_DATASETS = {"ImageNet-1k": ("imagenet-mhead", "imagenet-avgpool", "--imagenet"),
                   "Places205": ("places205-mhead", None, "--places205"),
                   "iNaturalist2018": ("inat18-mhead", None, "--inat2018")}
HEADS = ("feature1", "feature2", "feature3", "feature4", "feature5", "avgpool")
HEAD_TITLES = ("Feature1", "Feature2", "Feature3", "Feature4", "Feature5", "AvgPool")
KS = ("1", "2", "4", "8", "16", "32", "64", "96")
TUNED_ON_TEST = "tuned on test (references)"
THIS = "this checkpoint"


def _cell(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(row) + " |" for row in rows]


def _about(state: dict[str, Any]) -> str:
    about = state.get("about", {})
    text = (f"Checkpoint `{state['checkpoint']}`: {about.get('arch')}"
            f"{' + Sobel' if about.get('sobel') else ''}, evaluated at "
            f"{about.get('image_size')} px")
    imported = about.get("imported")
    if imported:
        text += (f", read from the {imported['layout']} layout ({imported['variant']}) of "
                 f"`{imported['file']}`")
    return text + "."


def _voc_rows(state: dict[str, Any]) -> list[list[str]]:
    published = [PUBLISHED_LABEL, "VOC2007", PUBLISHED_VOC["best_layer"],
                 _cell(PUBLISHED_VOC["svm"])] + [_cell(PUBLISHED_VOC["lowshot"][k]) for k in KS]
    done = [state["steps"][name] for name in ("voc07-lowshot", "voc07-svm")
            if name in state["steps"]]
    if not done:
        return [published, [f"{THIS} (not run: no --voc)", "–", "–", "–"] + ["–"] * len(KS)]
    step = done[0]
    results = step["results"]
    table = results.get("table") or {"rows": []}
    rows = [r for r in table["rows"] if r["features"] == "deepcluster"]
    row = next((r for r in rows if r["lowshot_cost"] == TUNED_ON_TEST), rows[0] if rows else None)
    data = (f"{step['dataset']} ({results.get('trainval_images')} trainval / "
            f"{results.get('test_images')} test)")
    if row is None:
        return [published, [THIS, data, "–", "–"] + ["–"] * len(KS)]
    lowshot = {str(k): v for k, v in row.get("lowshot", {}).items()}
    return [published, [THIS, data, row.get("best_layer") or "–", _cell(row.get("svm"))] +
            [_cell(lowshot.get(k)) for k in KS]]


def _linear_heads(state: dict[str, Any], names: Sequence[str | None]) -> dict[str, float] | None:
    heads: dict[str, float] = {}
    found = False
    for name in names:
        if name and name in state["steps"]:
            found = True
            heads.update(state["steps"][name]["results"]["heads"])
    return heads if found else None


def _linear_rows(state: dict[str, Any]) -> list[list[str]]:
    rows = []
    for dataset, (mhead, avgpool, flag) in LINEAR_DATASETS.items():
        published = PUBLISHED_LINEAR[dataset]
        rows.append([dataset, PUBLISHED_LABEL] +
                    ([_cell(v) for v in published] if published else
                     ["no published number"] + ["–"] * (len(HEADS) - 1)))
        heads = _linear_heads(state, (mhead, avgpool))
        label = THIS if heads is not None else f"{THIS} (not run: no {flag})"
        rows.append([dataset, label] + [_cell((heads or {}).get(h)) for h in HEADS])
    for name, step in state["steps"].items():
        if step["table"] == "linear" and step["dataset"].endswith("(small version)"):
            heads = step["results"]["heads"]
            rows.append([step["dataset"], THIS] + [_cell(heads.get(h)) for h in HEADS])
    return rows


def suite_markdown(state: dict[str, Any]) -> str:
    """The suite's Markdown from its state."""
    lines = ["# Benchmarks", "", _about(state),
             f"The published rows are {PUBLISHED_LABEL.replace(' (MMSelfSup, published)', '')} "
             "on ImageNet-1k by MMSelfSup (`../shared/PROTOCOLS.md`); small versions run on "
             "other data and are not comparable with them.", "",
             "## VOC07 linear SVM and low-shot SVM (mAP %)", ""]
    lines += _table(["Features", "Data", "Best layer", "SVM"] + [f"k={k}" for k in KS],
                    _voc_rows(state))
    lines += ["", "Low-shot: k positives per class, mean over the samples, cost tuned on test as "
              "in the references (costs chosen on trainval: `voc07/results.md`).", "",
              "## Linear classification, top-1 (%)", ""]
    lines += _table(["Dataset", "Features", *HEAD_TITLES], _linear_rows(state))
    lines += ["", "## Steps", ""]
    lines += _table(["Step", "Data", "Seconds", "Results"],
                    [[name, step["dataset"], f"{step['seconds']:.0f}",
                      f"`{step.get('folder', name)}/`"] for name, step in state["steps"].items()])
    return "\n".join(lines) + "\n"
