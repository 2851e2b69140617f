"""The training methods: each is one module with one ``Method`` subclass, registered here by name
(the config's ``method``). A new method (say SwAV or SeLa) is one new module and one line here."""

from __future__ import annotations

from .base import Method
from .deepcluster import DeepCluster
from .deepcluster_v2 import DeepClusterV2
from .supervised import Supervised

METHODS: dict[str, type[Method]] = {m.name: m for m in (DeepCluster, DeepClusterV2, Supervised)}


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]
