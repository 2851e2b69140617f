"""Parameter-name maps between the reference layouts and this tool's ``Backbone`` (models.py).

A map is a list of ``(reference prefix, backbone prefix)`` pairs; a key is renamed by the first
pair whose reference prefix it starts with. The same pairs read backwards give the export.

This tool's names: ``input_layer.filters.{0,1}`` (the Sobel pair: grey 1x1 conv, Sobel 3x3 conv),
``stages.0`` .. ``stages.4`` (feature1 .. feature5) and ``global_feature`` (AlexNet and VGG-16:
``global_feature.1.2`` is fc6, ``global_feature.1.5`` fc7).
"""

from __future__ import annotations

from typing import Iterable, Sequence

KeyMap = Sequence[tuple[str, str]]

SOBEL: KeyMap = (("sobel.", "input_layer.filters."),)

# torchvision's ResNet (and timm's, MMSelfSup's, SwAV's): stage 0 is conv1 + bn1 (+ ReLU);
# stage 1 is the max-pool (no weights, index 0) then layer1.
RESNET: KeyMap = (("conv1.", "stages.0.0."), ("bn1.", "stages.0.1."),
                  ("layer1.", "stages.1.1."), ("layer2.", "stages.2."),
                  ("layer3.", "stages.3."), ("layer4.", "stages.4."))

# The original AlexNet's ``features``: conv, BatchNorm, ReLU (and a max-pool after the 1st, 2nd
# and 5th) -> this tool's stage i holds conv (0) and BatchNorm (1).
ALEXNET_CONVS = (0, 4, 8, 11, 14)
ALEXNET_FEATURES: KeyMap = tuple(
    pair for stage, conv in enumerate(ALEXNET_CONVS)
    for pair in ((f"features.{conv}.", f"stages.{stage}.0."),
                 (f"features.{conv + 1}.", f"stages.{stage}.1.")))
# The original AlexNet's classifier: Dropout, fc6, ReLU, Dropout, fc7, ReLU.
ALEXNET_CLASSIFIER: KeyMap = (("classifier.1.", "global_feature.1.2."),
                              ("classifier.4.", "global_feature.1.5."))

# VGG-16 with BatchNorm (torchvision's vgg16_bn and the original code's): each stage runs from
# the index below to the next one's (the max-pool closing it included); 44 modules in all.
VGG16_STAGE_STARTS = (0, 7, 14, 24, 34, 44)
VGG16_FEATURES: KeyMap = tuple(
    (f"features.{index}.", f"stages.{stage}.{index - start}.")
    for stage, (start, end) in enumerate(zip(VGG16_STAGE_STARTS, VGG16_STAGE_STARTS[1:]))
    for index in range(start, end))
# fc6 and fc7 of both (the original has no Dropout before fc6, torchvision no fc8 here).
VGG16_CLASSIFIER: KeyMap = (("classifier.0.", "global_feature.1.2."),
                            ("classifier.3.", "global_feature.1.5."))

BACKBONE_PREFIXES = ("input_layer.", "stages.", "global_feature.")


def rename(key: str, keymap: KeyMap) -> str | None:
    """``key`` under the first pair whose source prefix it starts with; None when none does."""
    for source, target in keymap:
        if key.startswith(source):
            return target + key[len(source):]
    return None


def reverse(keymap: KeyMap) -> KeyMap:
    return tuple((target, source) for source, target in keymap)


def strip_module(key: str) -> str:
    """``key`` without DataParallel's ``module`` components (``features.module.0.weight`` ->
    ``features.0.weight``, ``module.conv1.weight`` -> ``conv1.weight``)."""
    return ".".join(part for part in key.split(".") if part != "module")


def group_names(keys: Iterable[str], depth: int = 1) -> str:
    """Keys summarised by their first ``depth`` components: ``projection_head.* (4), ...``."""
    counts: dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        name = ".".join(parts[:depth]) + (".*" if len(parts) > depth else "")
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{name} ({count})" if count > 1 else name for name, count in counts.items())
