"""The known checkpoint layouts, detected from the keys (``docs/interop.md`` lists them).

Each layout is a function from a file's contents to a ``Fit``: the backbone's weights under this
tool's names, the keys it left out on purpose (heads, projection MLPs, prototypes), and the keys
it could not map. ``identify`` tries every layout (or the one forced) and returns the one that
maps every key; otherwise one line names the layouts tried and the first keys that did not map.

- ``deepcluster``: this tool's checkpoints (``config`` + ``backbone``), and flat state dicts in its
  own parameter names (a safetensors export of an architecture torchvision has no model for);
- ``mmselfsup``: ``{'meta', 'state_dict'}`` with ``backbone.*`` (torchvision-style ResNet names),
  the Sobel layer at ``backbone.sobel_layer.sobel.{0,1}`` (1.x) or ``sobel_layer.sobel.{0,1}``
  (0.x) or none (RGB), and ``head.*`` / ``neck.*`` / ``loss_weight`` left out;
- ``original``: facebookresearch/deepcluster, ``{'epoch', 'arch', 'state_dict', 'optimizer'}``,
  ``features.module.N.*`` (DataParallel), ``sobel.{0,1}.*``, ``classifier.*`` (fc6, fc7), and
  ``top_layer.*`` left out;
- ``resnet``: a flat torchvision / timm / SwAV / DeepCluster-v2 ResNet state dict (any
  ``module.`` prefix removed), optionally with a Sobel pair ``sobel.{0,1}.*`` (this tool's
  torchvision export), and ``fc.*``, ``projection_head.*``, ``prototypes.*`` left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from ..models import SobelFilter
from . import keymaps
from .keymaps import KeyMap

FORMATS = ("deepcluster", "mmselfsup", "original", "resnet")


@dataclass
class Fit:
    """How one layout reads a file: the mapped backbone state and what did not map."""

    layout: str
    variant: str = ""
    arch: str | None = None
    sobel: bool = False
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    problem: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    keymap: KeyMap = ()

    def file_name(self, key: str) -> str:
        """A backbone key under the file's own names (for messages), as far as the map tells."""
        return keymaps.rename(key, keymaps.reverse(self.keymap)) or key

    @property
    def fits(self) -> bool:
        return self.problem is None and not self.unmapped and bool(self.state)

    def why_not(self) -> str:
        if self.problem:
            return self.problem
        if self.unmapped:
            shown = ", ".join(self.unmapped[:3])
            more = f" and {len(self.unmapped) - 3} more" if len(self.unmapped) > 3 else ""
            return f"keys that did not map: {shown}{more}"
        return "no backbone weights in it"


def _tensors(mapping: Any) -> dict[str, torch.Tensor] | None:
    """``mapping`` if it is a non-empty dict of tensors keyed by strings, else None."""
    if not isinstance(mapping, dict) or not mapping:
        return None
    if all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mapping.items()):
        return mapping
    return None


def _state_dict(raw: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The weights of a file: its ``state_dict`` / ``model`` entry, or the file itself."""
    for key in ("state_dict", "model"):
        found = _tensors(raw.get(key))
        if found is not None:
            return found
    return _tensors(raw)


def _map_keys(fit: Fit, state: Mapping[str, torch.Tensor], keymap: KeyMap,
              drop: Callable[[str], bool]) -> Fit:
    """Rename every key of ``state`` into ``fit.state``; the rest is dropped or unmapped."""
    fit.keymap = keymap
    for key, value in state.items():
        target = keymaps.rename(key, keymap)
        if target is not None:
            fit.state[target] = value
        elif drop(key):
            fit.dropped.append(key)
        else:
            fit.unmapped.append(key)
    return fit


def _starts(*prefixes: str) -> Callable[[str], bool]:
    return lambda key: key.startswith(prefixes)


# ----------------------------------------------------------------------------------------------
# ResNets: which architecture the blocks describe


def resnet_arch(state: Mapping[str, torch.Tensor]) -> tuple[str | None, str | None]:
    """(this tool's architecture, None) for a state in backbone names, or (None, why not)."""
    blocks = []
    for stage in range(1, 5):
        prefix = "stages.1.1." if stage == 1 else f"stages.{stage}."
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
        found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
        blocks.append(max(found) + 1 if found else 0)
    bottleneck = any(k.endswith(".conv3.weight") for k in state)
    stem = state.get("stages.0.0.weight")
    kernel = tuple(stem.shape[-2:]) if stem is not None else None
    if bottleneck and blocks == [3, 4, 6, 3] and kernel == (7, 7):
        return "resnet50", None
    if not bottleneck and blocks == [2, 2, 2, 2]:
        if kernel == (7, 7):
            return "resnet18", None
        if kernel == (3, 3):
            return "resnet18-small", None
    kind = "bottleneck" if bottleneck else "basic"
    return None, (f"a ResNet with {tuple(blocks)} {kind} blocks and a {kernel} stem is none of "
                  "resnet18, resnet18-small (3x3 stem), resnet50")


def _resnet_fit(fit: Fit, state: Mapping[str, torch.Tensor], keymap: KeyMap,
                drop: Callable[[str], bool]) -> Fit:
    _map_keys(fit, state, keymap, drop)
    fit.sobel = any(k.startswith("input_layer.") for k in fit.state)
    stem = fit.state.get("stages.0.0.weight")
    if not fit.sobel and stem is not None and stem.dim() == 4 and stem.shape[1] == 2:
        # a Sobel network's backbone saved without its Sobel layer (MMSelfSup's extracted
        # backbone weights): the references' fixed pair is the only one there is
        fit.sobel = True
        fit.variant += ", Sobel pair not in the file: the standard one"
        fit.state.update({"input_layer." + k: v for k, v in SobelFilter().state_dict().items()})
    if fit.unmapped or not fit.state:
        return fit
    fit.arch, fit.problem = resnet_arch(fit.state)
    return fit


# ----------------------------------------------------------------------------------------------
# The layouts


def fit_deepcluster(raw: dict[str, Any]) -> Fit:
    fit = Fit("deepcluster")
    if "config" in raw and "backbone" in raw:
        fit.variant, fit.state = "checkpoint", dict(raw["backbone"])
        fit.extra["config"] = raw["config"]
        return fit
    state = _state_dict(raw)
    if state is None:
        fit.problem = "no 'config' and 'backbone' entries and no flat state dict"
        return fit
    fit.variant = "backbone state dict"
    return _map_keys(fit, state, tuple((p, p) for p in keymaps.BACKBONE_PREFIXES),
                     lambda key: False)


MMSELFSUP: KeyMap = (("backbone.sobel_layer.sobel.", "input_layer.filters."),  # 1.x
                     ("sobel_layer.sobel.", "input_layer.filters."),  # 0.x
                     *(("backbone." + source, target) for source, target in keymaps.RESNET))


def fit_mmselfsup(raw: dict[str, Any]) -> Fit:
    fit = Fit("mmselfsup")
    state = _tensors(raw.get("state_dict"))
    if state is None:
        fit.problem = "no 'state_dict' entry of tensors"
        return fit
    state = {keymaps.strip_module(k): v for k, v in state.items()}
    if any(k.startswith("backbone.sobel_layer.") for k in state):
        fit.variant = "1.x, Sobel"
    elif any(k.startswith("sobel_layer.") for k in state):
        fit.variant = "0.x, Sobel"
    else:
        fit.variant = "RGB"
    _resnet_fit(fit, state, MMSELFSUP, _starts("head.", "neck.", "loss_weight"))
    head = state.get("head.fc_cls.weight")
    if head is not None:
        fit.extra["k"] = int(head.shape[0])
    return fit


def fit_original(raw: dict[str, Any]) -> Fit:
    fit = Fit("original")
    state = _tensors(raw.get("state_dict"))
    if state is None or "arch" not in raw:
        fit.problem = "no 'arch' and 'state_dict' entries"
        return fit
    arch = str(raw["arch"]).lower()
    maps = {"alexnet": keymaps.ALEXNET_FEATURES + keymaps.ALEXNET_CLASSIFIER,
            "vgg16": keymaps.VGG16_FEATURES + keymaps.VGG16_CLASSIFIER}
    if arch not in maps:
        fit.problem = f"arch {raw['arch']!r} is not one of the original code's alexnet, vgg16"
        return fit
    fit.arch, fit.variant = arch, arch
    state = {keymaps.strip_module(k): v for k, v in state.items()}
    _map_keys(fit, state, maps[arch] + keymaps.SOBEL, _starts("top_layer."))
    fit.sobel = any(k.startswith("input_layer.") for k in fit.state)
    if "top_layer.weight" in state:
        fit.extra["k"] = int(state["top_layer.weight"].shape[0])
    if isinstance(raw.get("epoch"), int):
        fit.extra["epoch"] = raw["epoch"]
    return fit


RESNET_EXTRAS = ("fc.", "projection_head.", "prototypes.")


def fit_resnet(raw: dict[str, Any]) -> Fit:
    fit = Fit("resnet")
    state = _state_dict(raw)
    if state is None:
        fit.problem = "no flat state dict of tensors"
        return fit
    state = {keymaps.strip_module(k): v for k, v in state.items()}
    if any(k.startswith("projection_head.") for k in state):
        multi = any(k.startswith("prototypes.prototypes") for k in state)
        fit.variant = "DeepCluster-v2" if multi else "SwAV"
    else:
        fit.variant = "torchvision / timm"
    return _resnet_fit(fit, state, keymaps.RESNET + keymaps.SOBEL, _starts(*RESNET_EXTRAS))


LAYOUTS: dict[str, Callable[[dict[str, Any]], Fit]] = {
    "deepcluster": fit_deepcluster, "mmselfsup": fit_mmselfsup, "original": fit_original,
    "resnet": fit_resnet}


def identify(raw: dict[str, Any], source: str, forced: str | None = None) -> Fit:
    """The layout that maps every key of ``raw`` (``forced``: only that one), or a one-line
    ValueError naming ``source``, the layouts tried and the first keys that did not map."""
    if forced not in (None, "auto") and forced not in LAYOUTS:
        raise ValueError(f"unknown checkpoint format {forced!r}; choose one of auto, "
                         f"{', '.join(LAYOUTS)}")
    names = [forced] if forced not in (None, "auto") else list(LAYOUTS)
    fits = [LAYOUTS[name](raw) for name in names]
    for fit in fits:
        if fit.fits:
            return fit
    if forced not in (None, "auto"):
        raise ValueError(f"checkpoint {source} does not fit the {forced} layout: "
                         f"{fits[0].why_not()}")
    closest = max(fits, key=lambda f: len(f.state))
    if closest.state:
        detail = f"closest, {closest.layout}: {closest.why_not()}"
    else:
        detail = "first keys: " + (", ".join(map(str, list(raw)[:3])) or "none")
    raise ValueError(f"checkpoint {source}: its keys fit no known layout (tried "
                     f"{', '.join(names)}); {detail}")
