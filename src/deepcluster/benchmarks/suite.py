"""``deepcluster benchmark all``: every benchmark of the published tables, for the datasets
given, into one Markdown file (``suite_report``) with the published ResNet-50 Sobel row beside.

The steps: VOC07 SVM then low-shot SVM (``--voc``), the ImageNet multi-head and AvgPool probes
(``--imagenet``), the Places205 and iNaturalist 2018 multi-head probes (``--places205``,
``--inat2018``); with ``--data`` (a bundled or labelled dataset) the small versions: the
multi-head + AvgPool probe on that data with its cached preset, and, without ``--voc``, the SVMs
on VOC-format data generated from Fashion-MNIST (``voc_generator``).

Resumable: each step's results go to ``OUT/<step>/results.json`` and are recorded in
``OUT/suite.json`` as the step finishes; a rerun with the same checkpoint (same bytes) and the
same settings skips the steps already done.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..checkpoint import atomic_write, save_json
from .linear_config import get_preset
from .linear_run import run_linear
from .suite_report import suite_markdown
from .svm_features import file_digest
from .svm_run import run_lowshot, run_svm

STATE_FILE = "suite.json"
REPORT_FILE = "benchmarks.md"
SUITE_VERSION = 1


@dataclass(frozen=True)
class SuiteOptions:
    """The knobs of a suite run; ``None`` keeps each benchmark's published setting."""

    costs: str = "mmselfsup"
    svm_layers: str = "all"
    ks: str | None = None
    samples: int | None = None
    epochs: int | None = None
    subset: int | None = None
    test_subset: int | None = None
    voc_images: tuple[int, int] = (500, 400)
    jobs: int = -1
    workers: int | None = None
    batch_size: int | None = None
    threads: int | None = None

    def linear_overrides(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "subset": self.subset,
                "test_subset": self.test_subset, "workers": self.workers,
                "threads": self.threads}


@dataclass
class Step:
    """One benchmark run of the suite: its name (and folder), table, settings and runner."""

    name: str
    table: str  # "voc07" or "linear"
    dataset: str  # the table row's dataset
    settings: dict[str, Any]
    run: Callable[[Path], dict[str, Any]] = field(repr=False)
    # where the step writes, relative to OUT (several steps may share one results file)
    folder: str = ""
    # whether what the step made is still there (steps that write outside their results)
    present: Callable[[], bool] = field(default=lambda: True, repr=False)


def _linear_step(name: str, dataset: str, preset: str, data: str, checkpoint: str,
                 options: SuiteOptions, **fields: Any) -> Step:
    config = get_preset(preset).override(data=data, **fields, **options.linear_overrides())
    settings = {"preset": preset, "config": config.to_dict()}
    return Step(name, "linear", dataset, settings,
                lambda out: run_linear(checkpoint, config, out, preset=preset))


def _voc_steps(checkpoint: str, voc: str, dataset: str, options: SuiteOptions,
               voc_out: str) -> list[Step]:
    common = dict(costs=options.costs, jobs=options.jobs, workers=options.workers or 0,
                  batch_size=options.batch_size)
    lowshot = {**common, "ks": options.ks or "1,2,4,8,16,32,64,96", "samples": options.samples or 5}
    layers = options.svm_layers
    svm = Step("voc07-svm", "voc07", dataset, {"voc": voc, "layers": layers, **common},
               lambda out: run_svm(checkpoint, voc, out, layers=layers, **common))
    shot = Step("voc07-lowshot", "voc07", dataset, {"voc": voc, **lowshot},
                lambda out: run_lowshot(checkpoint, voc, out, layers=None, **lowshot))
    for step in (svm, shot):
        step.folder = voc_out  # both write one results file, as the CLI commands do
    return [svm, shot]


def plan(checkpoint: str, datasets: dict[str, str | None], options: SuiteOptions,
         out: Path) -> list[Step]:
    """The steps for the datasets given (``voc``, ``imagenet``, ``places205``, ``inat2018``,
    ``data``: a small labelled dataset)."""
    steps: list[Step] = []
    voc, small = datasets.get("voc"), datasets.get("data")
    if voc is None and small is not None:
        voc = str(out / "data" / "voc-fashion-mnist" / "VOC2007")
        steps.append(Step("make-voc", "data", "generated", {"images": list(options.voc_images)},
                          lambda _: _generate_voc(out / "data" / "voc-fashion-mnist", options),
                          folder="data", present=lambda: Path(voc).is_dir()))
        voc_name = "VOC-format data generated from Fashion-MNIST"
    else:
        voc_name = "VOC2007"
    if voc is not None:
        steps += _voc_steps(checkpoint, voc, voc_name, options, "voc07")
    roots = {key: datasets.get(key) for key in ("imagenet", "places205", "inat2018")}
    if roots["imagenet"]:
        data = f"imagenet:{roots['imagenet']}"
        steps.append(_linear_step("imagenet-mhead", "ImageNet-1k", "imagenet-mhead", data,
                                  checkpoint, options))
        steps.append(_linear_step("imagenet-avgpool", "ImageNet-1k", "imagenet-avgpool", data,
                                  checkpoint, options))
    if roots["places205"]:
        steps.append(_linear_step("places205-mhead", "Places205", "places205-mhead",
                                  f"places205:{roots['places205']}", checkpoint, options))
    if roots["inat2018"]:
        steps.append(_linear_step("inat18-mhead", "iNaturalist2018", "inat18-mhead",
                                  f"inat2018:{roots['inat2018']}", checkpoint, options))
    if small is not None:
        steps.append(_linear_step(f"{_slug(small)}-linear", f"{small} (small version)",
                                  "fashion-mnist-mhead", small, checkpoint, options, heads="all"))
    if not steps:
        raise ValueError("benchmark all needs data: --voc, --imagenet, --places205, --inat2018 "
                         "or --data (e.g. fashion-mnist for the small versions)")
    return steps


def _slug(data: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in data).strip("-") or "data"


def _generate_voc(folder: Path, options: SuiteOptions) -> dict[str, Any]:
    from ..voc_generator import make_voc

    trainval, test = options.voc_images
    root = make_voc(folder, trainval=trainval, test=test)
    return {"voc": str(root), "trainval": trainval, "test": test}


def _summary(step: Step, results: dict[str, Any]) -> dict[str, Any]:
    """What the tables need of a step's results (the full results stay in its folder)."""
    if step.table == "linear":
        return {"heads": {name: head["top1"] for name, head in results["heads"].items()},
                "top5": {name: head["top5"] for name, head in results["heads"].items()},
                "label": results.get("label"), "arch": results.get("arch"),
                "train_images": results.get("train_images"),
                "test_images": results.get("test_images")}
    if step.table == "voc07":
        return {"table": results.get("table"), "trainval_images": results.get("trainval_images"),
                "test_images": results.get("test_images"), "classes": results.get("classes")}
    return results


def _load_state(out: Path, checkpoint: str, sha: str) -> dict[str, Any]:
    path = out / STATE_FILE
    fresh = {"version": SUITE_VERSION, "checkpoint": checkpoint, "checkpoint_sha256": sha,
             "steps": {}}
    if not path.is_file():
        return fresh
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable suite state ({error}); remove it to start "
                         "again") from None
    if state.get("checkpoint_sha256") != sha:
        raise ValueError(f"{out} holds the benchmarks of another checkpoint "
                         f"({state.get('checkpoint')}); give another --out")
    return state


def run_suite(checkpoint: str | Path, out: str | Path, datasets: dict[str, str | None],
              options: SuiteOptions = SuiteOptions(), log: Callable[[str], None] = print
              ) -> dict[str, Any]:
    """Run (or resume) every step for ``datasets``; writes ``OUT/benchmarks.md`` after each
    step and returns the suite state (``OUT/suite.json``)."""
    from ..checkpoint import load_checkpoint

    checkpoint, out = str(checkpoint), Path(out)
    header = load_checkpoint(checkpoint)  # one line for an unreadable file, before any work
    sha = file_digest(checkpoint)
    state = _load_state(out, checkpoint, sha)
    state["about"] = {"arch": header["config"]["arch"], "sobel": header["config"]["sobel"],
                      "image_size": header["config"]["image_size"],
                      "imported": header.get("imported")}
    steps = plan(checkpoint, datasets, options, out)
    for step in steps:
        done = state["steps"].get(step.name)
        folder = out / (step.folder or step.name)
        if done and done.get("settings") == _jsonable(step.settings) and step.present():
            log(f"{step.name}: done before, kept ({folder})")
            continue
        log(f"{step.name}: running")
        start = time.perf_counter()
        results = step.run(folder)
        state["steps"][step.name] = {"table": step.table, "dataset": step.dataset,
                                     "folder": step.folder or step.name,
                                     "settings": _jsonable(step.settings),
                                     "results": _summary(step, results),
                                     "seconds": time.perf_counter() - start}
        _save(state, out)
    state["order"] = [step.name for step in steps]
    _save(state, out)
    return state


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _save(state: dict[str, Any], out: Path) -> None:
    save_json(state, out / STATE_FILE)
    text = suite_markdown(state)
    atomic_write(out / REPORT_FILE, lambda temp: Path(temp).write_text(text))
