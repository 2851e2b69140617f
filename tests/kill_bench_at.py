"""``deepcluster`` that kills itself with SIGKILL at a chosen point of a benchmark, to test that
the same command given again ends with the results of an uninterrupted run.

    python kill_bench_at.py POINT COUNT deepcluster-args...

POINT is where:

- ``forward``: the COUNT-th forward pass of the backbone (the linear probe's first one sizes
  its heads; then feature extraction, or every batch of a streamed probe);
- ``probe``: the COUNT-th forward pass of the linear probe's heads (a training or evaluation batch);
- ``save``: half-way through writing the COUNT-th torch file (the probe state after each epoch,
  then probe.ckpt);
- ``npz``: half-way through writing the COUNT-th SVM feature-cache file;
- ``cv``: the COUNT-th SVM fit of the cross-validated cost search (one class, fold, cost group);
- ``refit``: the COUNT-th refit at the chosen cost (the classes follow one another);
- ``lowshot``: the COUNT-th low-shot task (one k, sample and class);
- ``results``: before the COUNT-th results.json write;
- ``none``: nowhere (the uninterrupted run, through the same harness).

Always, for speed: the ``vissl`` cost list is cut to three small costs (the tests' SVMs run on
it), and ``--jobs 1`` keeps the SVMs in this process, where the points above can see them.
"""

import io
import os
import signal
import sys

import numpy as np
import torch

import deepcluster.benchmarks.linear as linear
import deepcluster.benchmarks.linear_run as linear_run
import deepcluster.benchmarks.svm as svm
import deepcluster.benchmarks.svm_evaluation as svm_evaluation
import deepcluster.benchmarks.svm_run as svm_run
from deepcluster.cli import main

point, count = sys.argv[1], int(sys.argv[2])
calls = 0
svm.COST_LISTS["vissl"] = (1.0, 0.1, 0.01)


def due() -> bool:
    global calls
    calls += 1
    return calls == count


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def wrap(owner, name):
    original = getattr(owner, name)

    def patched(*args, **kwargs):
        if due():
            die()
        return original(*args, **kwargs)
    setattr(owner, name, patched)


def write_half_then_die(file, save) -> None:
    """``save(buffer)``, then half of its bytes into ``file``, then SIGKILL."""
    buffer = io.BytesIO()
    save(buffer)
    file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    file.flush()
    die()


if point == "forward":
    for module in (linear_run, svm_run):
        build = module.backbone_from_checkpoint

        def build_with_hook(*args, _build=build, **kwargs):
            backbone, config = _build(*args, **kwargs)
            forward = backbone.forward_features  # what every extraction and probe calls

            def counted(*inputs, **options):
                if due():
                    die()
                return forward(*inputs, **options)
            backbone.forward_features = counted
            return backbone, config
        module.backbone_from_checkpoint = build_with_hook
elif point == "probe":
    wrap(linear.LinearProbe, "forward")
elif point == "save":
    torch_save = torch.save
    torch.save = lambda state, file, *a, **k: (
        write_half_then_die(file, lambda buffer: torch_save(state, buffer, *a, **k)) if due()
        else torch_save(state, file, *a, **k))
elif point == "npz":
    savez = np.savez
    np.savez = lambda file, *a, **k: (
        write_half_then_die(file, lambda buffer: savez(buffer, *a, **k)) if due()
        else savez(file, *a, **k))
elif point == "cv":
    wrap(svm_evaluation, "cv_task")
elif point == "refit":
    wrap(svm_evaluation, "refit_task")
elif point == "lowshot":
    wrap(svm_evaluation, "lowshot_task")
elif point == "results":
    wrap(svm_run, "save_json")
    wrap(linear_run, "save_json")
elif point != "none":
    raise SystemExit(f"unknown point {point!r}")

sys.argv = ["deepcluster", *sys.argv[3:]]
sys.exit(main())
