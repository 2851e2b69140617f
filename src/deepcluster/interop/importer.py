"""A checkpoint of any known layout as this tool's own: ``{'format', 'config', 'epoch',
'backbone', 'imported'}``, which every command that takes ``--checkpoint`` reads.

Imported ImageNet weights get the reference evaluation: short side 256, centre crop 224,
ImageNet mean and std (``transforms.extraction_transform(224)``), fp32. A JSON written beside the
file by ``deepcluster export`` (``model.json`` beside ``model.safetensors``) gives back the
exported network's own config instead.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from ..config import SUPERVISED, V1, V2, PretrainConfig
from ..models import ARCHITECTURES
from .files import load_weights_file, read_sidecar
from .keymaps import group_names
from .layouts import Fit, identify
from .network import check_fits

IMPORT_FORMAT = "deepcluster-import/1"
IMAGENET_SIZE = 224
IMPORTED_DATA = "imagenet"  # where the published weights were trained (no root known)


def _method(fit: Fit) -> str:
    """What trained the weights, as far as the keys tell: it labels the benchmark rows."""
    if fit.layout == "resnet" and fit.variant == "torchvision / timm" and \
            any(k.startswith("fc.") for k in fit.dropped):
        return SUPERVISED
    return V2 if fit.variant == "DeepCluster-v2" else V1


def imported_config(fit: Fit, sidecar: dict[str, Any] | None, source: str) -> PretrainConfig:
    """The exported config when the file has its JSON, else the reference evaluation's."""
    if sidecar is not None and "config" in sidecar:
        return PretrainConfig.from_dict(sidecar["config"], source=f"{source} (its JSON)")
    method = _method(fit)
    fields: dict[str, Any] = dict(method=method, arch=fit.arch, sobel=fit.sobel,
                                  image_size=IMAGENET_SIZE, precision="32-true",
                                  data=IMPORTED_DATA)
    if method == V1 and fit.extra.get("k", 0) >= 2:
        fields["k"] = fit.extra["k"]
    return PretrainConfig(**fields)


def _arch_from_state(fit: Fit, sidecar: dict[str, Any] | None, source: str) -> str:
    """A flat state dict in this tool's names says nothing of its architecture: the export's
    JSON does, or the first architecture it loads into does."""
    if sidecar is not None and "config" in sidecar:
        return sidecar["config"]["arch"]
    for arch in ARCHITECTURES:
        try:
            check_fits(arch, fit.sobel, fit.state, source)
            return arch
        except (ValueError, RuntimeError):
            continue
    raise ValueError(f"checkpoint {source}: its weights (in this tool's names) fit none of the "
                     f"architectures {', '.join(ARCHITECTURES)}")


def import_state(raw: dict[str, Any], path: str | os.PathLike, forced: str | None = None
                 ) -> dict[str, Any]:
    """``raw`` (a file's contents) in this tool's checkpoint layout; this tool's own
    checkpoints come back unchanged."""
    source = str(path)
    fit = identify(raw, source, forced)
    if fit.layout == "deepcluster" and fit.variant == "checkpoint":
        return raw
    sidecar = read_sidecar(path)
    if fit.layout == "deepcluster":
        fit.sobel = any(k.startswith("input_layer.") for k in fit.state)
        fit.arch = _arch_from_state(fit, sidecar, source)
    config = imported_config(fit, sidecar, source)
    check_fits(config.arch, config.sobel, fit.state, source, fit.file_name)
    if fit.dropped:
        warnings.warn(f"{source} ({describe(fit)}): left out {len(fit.dropped)} key(s) that are "
                      f"not part of the backbone: {group_names(fit.dropped)}", stacklevel=3)
    return {"format": IMPORT_FORMAT, "config": config.to_dict(),
            "epoch": int(fit.extra.get("epoch", 0)), "backbone": fit.state,
            "imported": {"layout": fit.layout, "variant": fit.variant, "source": source,
                         "file": Path(path).name, "dropped": group_names(fit.dropped)}}


def describe(fit: Fit) -> str:
    return f"{fit.layout} layout{', ' + fit.variant if fit.variant else ''}"


def read_checkpoint(path: str | os.PathLike, forced: str | None = None) -> dict[str, Any]:
    """Any known checkpoint file as this tool's own checkpoint (``import_state``)."""
    return import_state(load_weights_file(path), path, forced)
