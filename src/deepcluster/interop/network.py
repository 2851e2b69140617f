"""The backbone a state dict describes: built, its Sobel pair given the file's biases where the
file has them, loaded strictly, and refused when a weight is NaN or infinite."""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

from ..models import Backbone, build_backbone

SOBEL_CONVS = ("input_layer.filters.0", "input_layer.filters.1")


def add_input_biases(backbone: Backbone, state: Mapping[str, torch.Tensor]) -> Backbone:
    """Give the Sobel pair's convolutions a (frozen) bias where ``state`` has one: the original
    code and MMSelfSup build them with biases (zero, but read from the file all the same)."""
    for name in SOBEL_CONVS:
        if f"{name}.bias" not in state:
            continue
        conv = backbone.get_submodule(name)
        if isinstance(conv, nn.Conv2d) and conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels, device=conv.weight.device,
                                                 dtype=conv.weight.dtype), requires_grad=False)
    return backbone


def load_strict(backbone: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                arch: str, assign: bool = False,
                file_name: Callable[[str], str] = lambda key: key) -> None:
    """``load_state_dict`` with every weight required, or one line naming ``source`` and the
    first keys missing, unexpected or of the wrong shape (``file_name``: a key as the file
    names it)."""
    expected = backbone.state_dict()
    missing = [file_name(k) for k in expected if k not in state]
    unexpected = [file_name(k) for k in state if k not in expected]
    wrong = [f"{file_name(k)} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("wrong shape:", wrong)) if keys]
    if problems:
        raise ValueError(f"checkpoint {source}: its weights do not fit a {arch} backbone: "
                         + "; ".join(problems))
    backbone.load_state_dict(state, assign=assign)


def fill_batch_counts(backbone: nn.Module, state: dict[str, torch.Tensor]
                      ) -> dict[str, torch.Tensor]:
    """BatchNorm's ``num_batches_tracked`` (absent from files older than torch 0.4.1) set to 0:
    it plays no part in evaluation."""
    for key in backbone.state_dict():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.tensor(0, dtype=torch.long)
    return state


def check_fits(arch: str, sobel: bool, state: dict[str, torch.Tensor], source: str,
               file_name: Callable[[str], str] = lambda key: key) -> None:
    """That ``state`` loads strictly into a ``arch`` backbone, checked without allocating it."""
    with torch.device("meta"):
        backbone = add_input_biases(build_backbone(arch, sobel), state)
    load_strict(backbone, fill_batch_counts(backbone, state), source, arch, assign=True,
                file_name=file_name)


def first_non_finite(state: Mapping[str, torch.Tensor]) -> str | None:
    """The first floating-point tensor holding a NaN or an infinity, None when all are finite."""
    for key, value in state.items():
        if torch.is_floating_point(value) and value.numel():
            low, high = torch.aminmax(value)  # NaN propagates; much faster than isfinite()
            if not (bool(torch.isfinite(low)) and bool(torch.isfinite(high))):
                return key
    return None


def check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    bad = first_non_finite(state)
    if bad is not None:
        values = state[bad]
        count = int((~torch.isfinite(values)).sum())
        raise ValueError(f"checkpoint {source}: weight {bad} holds {count} NaN/inf value(s) of "
                         f"{values.numel()}; a diverged or damaged network cannot be benchmarked")


def backbone_from_state(arch: str, sobel: bool, state: dict[str, torch.Tensor],
                        source: str) -> Backbone:
    """A ``arch`` backbone (seeded by the caller) holding ``state``'s weights, after checking
    that they are finite; errors name ``source``."""
    check_finite(state, source)
    backbone = add_input_biases(build_backbone(arch, sobel), state)
    load_strict(backbone, fill_batch_counts(backbone, dict(state)), source, arch)
    return backbone
