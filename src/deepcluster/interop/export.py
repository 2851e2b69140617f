"""A checkpoint's backbone for other tools: a state dict that the matching torchvision model
loads, or the same tensors as safetensors, each with a JSON of the config beside it.

Keys: torchvision's names (``conv1.weight``, ``layer1.0.bn1.running_mean``, ``features.0.weight``,
``classifier.0.weight``) and, where the network has one, the Sobel pair as ``sobel.0.*`` (grey
1x1 conv with bias) and ``sobel.1.*`` (the Sobel 3x3 conv with bias): the first module of
``nn.Sequential(sobel, resnet)`` (``docs/interop.md`` shows it). Networks torchvision has no
model for (AlexNet with BatchNorm, the small CNN) keep this tool's names, in safetensors only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write, load_checkpoint, save_checkpoint
from ..config import PretrainConfig
from ..transforms import IMAGENET_MEAN, IMAGENET_STD, SMALL_MEAN, SMALL_STD, is_small
from . import keymaps
from .files import SIDECAR_MARK, sidecar_path
from .network import SOBEL_CONVS, backbone_from_state

EXPORT_FORMATS = ("torchvision", "safetensors")
TORCHVISION_MODELS = {"resnet50": "resnet50", "resnet18": "resnet18",
                      "resnet18-small": "resnet18", "vgg16": "vgg16_bn"}
HOW = {
    "resnet50": "torchvision.models.resnet50(); fc = nn.Identity() (the feature is the 2048-d "
                "global average pool)",
    "resnet18": "torchvision.models.resnet18(); fc = nn.Identity() (512-d global average pool)",
    "resnet18-small": "torchvision.models.resnet18(); conv1 = nn.Conv2d(C, 64, 3, 1, 1, "
                      "bias=False), maxpool = nn.Identity(), fc = nn.Identity()",
    "vgg16": "torchvision.models.vgg16_bn(); classifier = classifier[:4] (fc7 before its ReLU)",
}
SOBEL_MODULE = ("nn.Sequential(nn.Conv2d(3, 1, kernel_size=1), nn.Conv2d(1, 2, kernel_size=3, "
                "padding=1)) loaded from the 'sobel.' keys, before the network; the network's "
                "first conv then takes 2 channels")


@dataclass
class Exported:
    weights: Path
    sidecar: Path
    tensors: int
    keys: str
    model: str
    note: str


def torchvision_keymap(arch: str) -> keymaps.KeyMap | None:
    """This tool's names -> torchvision's (and ``sobel.*``), None for architectures torchvision
    has no model for."""
    if arch not in TORCHVISION_MODELS:
        return None
    body = keymaps.RESNET if arch.startswith("resnet") else \
        keymaps.VGG16_FEATURES + keymaps.VGG16_CLASSIFIER
    return keymaps.reverse(body + keymaps.SOBEL)


def _with_sobel_biases(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Sobel pair with biases (zero where this tool built it without), so that one
    documented first module loads every export."""
    for name in SOBEL_CONVS:
        weight = state.get(f"{name}.weight")
        if weight is not None and f"{name}.bias" not in state:
            state[f"{name}.bias"] = torch.zeros(weight.shape[0], dtype=weight.dtype)
    return state


def exported_tensors(state: dict[str, torch.Tensor], arch: str
                     ) -> tuple[dict[str, torch.Tensor], str]:
    """The backbone's tensors under the export's names, and which names ("torchvision" or
    "deepcluster")."""
    state = _with_sobel_biases({k: v.detach().contiguous() for k, v in state.items()})
    keymap = torchvision_keymap(arch)
    if keymap is None:
        return state, "deepcluster"
    renamed = {}
    for key, value in state.items():
        target = keymaps.rename(key, keymap)
        if target is None:
            raise ValueError(f"backbone weight {key} has no torchvision name for {arch}")
        renamed[target] = value
    return renamed, "torchvision"


def input_description(image_size: int) -> dict[str, Any]:
    """The evaluation transform the features are meant for."""
    if is_small(image_size):
        return {"resize": [image_size, image_size], "mean": list(SMALL_MEAN),
                "std": list(SMALL_STD), "channels": "RGB (grey repeated)"}
    return {"resize_short_side": round(image_size * 256 / 224), "centre_crop": image_size,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "channels": "RGB"}


def sidecar(config: PretrainConfig, keys: str, checkpoint: str | os.PathLike,
            export_format: str) -> dict[str, Any]:
    return {SIDECAR_MARK: {
        "config": config.to_dict(), "arch": config.arch, "sobel": config.sobel, "keys": keys,
        "torchvision_model": TORCHVISION_MODELS.get(config.arch) if keys == "torchvision" else None,
        "build": HOW.get(config.arch) if keys == "torchvision" else None,
        "first_module": SOBEL_MODULE if config.sobel and keys == "torchvision" else None,
        "input": input_description(config.image_size), "format": export_format,
        "source": str(checkpoint)}}


def export_backbone(checkpoint: str | os.PathLike, out: str | os.PathLike,
                    export_format: str = "torchvision") -> Exported:
    """Write ``checkpoint``'s backbone to ``out`` (and its config to ``out`` with ``.json``)."""
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {export_format!r}; choose one of "
                         f"{', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    side = sidecar_path(out)
    if side == out:
        raise ValueError(f"--out {out}: the config goes to FILE.json beside the weights; give the "
                         "weights another suffix (.pth, .safetensors)")
    state = load_checkpoint(checkpoint)
    config = PretrainConfig.from_dict(state["config"], source=str(checkpoint))
    backbone = backbone_from_state(config.arch, config.sobel, state["backbone"], str(checkpoint))
    tensors, keys = exported_tensors(backbone.state_dict(), config.arch)
    if export_format == "torchvision" and keys != "torchvision":
        raise ValueError(f"checkpoint {checkpoint}: torchvision has no model for {config.arch}; "
                         "use --format safetensors (this tool's parameter names)")
    meta = sidecar(config, keys, checkpoint, export_format)
    if export_format == "torchvision":
        save_checkpoint(tensors, out)
    else:
        from safetensors.torch import save_file

        atomic_write(out, lambda temp: save_file(tensors, temp, metadata={
            SIDECAR_MARK: json.dumps(meta[SIDECAR_MARK])}))
    atomic_write(side, lambda temp: Path(temp).write_text(json.dumps(meta, indent=2) + "\n"))
    info = meta[SIDECAR_MARK]
    model = info["torchvision_model"] or f"this tool's {config.arch}"
    note = f"build: {info['build']}" if info["build"] else ""
    if info["first_module"]:
        note += ("; " if note else "") + f"first module: {info['first_module']}"
    return Exported(out, side, len(tensors), keys, model, note)
