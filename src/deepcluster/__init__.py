"""DeepCluster and DeepCluster-v2 self-supervised pretraining, and the benchmarks the field judges
such features by. The public Python API is below (see ``api``); everything loads on first use, so
that ``import deepcluster.<module>`` stays light (the SVM workers load numpy and scikit-learn
only)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["PretrainConfig", "PretrainResult", "PRESETS", "make_config", "load_config",
           "pretrain", "resume", "load_backbone", "train_supervised", "run_knn", "run_linear"]
_HOMES = {"PretrainConfig": "config", "PRESETS": "presets", "PretrainResult": "engine",
          "pretrain": "engine"}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'deepcluster' has no attribute {name!r}")
    return getattr(import_module(f".{_HOMES.get(name, 'api')}", __name__), name)
