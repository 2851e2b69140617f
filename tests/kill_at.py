"""``deepcluster`` that kills itself with SIGKILL at a chosen point of a run, to test that a
resumed run ends as an uninterrupted one wherever a kill lands.

    python kill_at.py POINT COUNT deepcluster-args...

POINT is where: ``forward`` (the COUNT-th forward pass of the backbone, in training or in
extraction), ``clustering`` (at the start of the COUNT-th k-means), ``checkpoint`` (half-way
through writing the COUNT-th checkpoint file), ``assignments`` (before the COUNT-th cluster-id
file), ``metrics`` (before the COUNT-th rewrite of metrics.csv), ``worker`` (a training-loader worker,
at its COUNT-th batch).
"""

import io
import os
import signal
import sys

import torch

import deepcluster.engine.history as history
import deepcluster.engine.loop as loop
import deepcluster.methods.deepcluster as deepcluster_method
from deepcluster.cli import main

point, count = sys.argv[1], int(sys.argv[2])
calls = 0


def due() -> bool:
    global calls
    calls += 1
    return calls == count


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def wrap(owner, name, before=None):
    original = getattr(owner, name)

    def patched(*args, **kwargs):
        if due():
            (before or (lambda *a: die()))(*args)
        return original(*args, **kwargs)
    setattr(owner, name, patched)


if point == "forward":
    build = deepcluster_method.build_backbone

    def build_with_hook(*args, **kwargs):
        backbone = build(*args, **kwargs)
        backbone.register_forward_pre_hook(lambda module, inputs: die() if due() else None)
        return backbone
    deepcluster_method.build_backbone = build_with_hook
elif point == "clustering":
    for name in ("cluster_whitened", "cluster_features"):
        wrap(deepcluster_method, name)
elif point == "checkpoint":
    save = torch.save

    def half_then_die(state, file, *args, **kwargs):
        buffer = io.BytesIO()
        save(state, buffer, *args, **kwargs)
        file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        file.flush()
        die()
    torch.save = lambda state, file, *a, **k: (half_then_die if due() else save)(state, file, *a, **k)
elif point == "assignments":
    wrap(loop, "save_npy")
elif point == "worker":  # a training-loader worker dies (as the kernel's OOM killer does it)
    import deepcluster.engine.loaders as loaders
    fetch = loaders.IndexedImages.__getitems__

    def fetch_or_die(self, indices):
        if loaders.get_worker_info() is not None and due():
            die()
        return fetch(self, indices)
    loaders.IndexedImages.__getitems__ = fetch_or_die
elif point == "metrics":
    wrap(history.History, "rewrite")
else:
    raise SystemExit(f"unknown point {point!r}")

sys.argv = ["deepcluster", *sys.argv[3:]]
sys.exit(main())
