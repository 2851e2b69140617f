"""The learning rate at every training step; one meaning per schedule name (see config)."""

from __future__ import annotations

import math

from ..config import PretrainConfig


def learning_rate(config: PretrainConfig, step: int, steps_per_epoch: int) -> float:
    """The rate of global step ``step`` (0-based): a linear warm-up over ``warmup_epochs``, then
    constant, "cosine" (decayed every step to zero at the last step) or "cosine-epoch" (decayed
    once per epoch: epoch e of E trains at lr * (1 + cos(pi e / E)) / 2)."""
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.lr_schedule == "constant":
        return config.lr
    if config.lr_schedule == "cosine-epoch":
        epoch = step // max(1, steps_per_epoch)
        return 0.5 * config.lr * (1.0 + math.cos(math.pi * epoch / config.epochs))
    progress = (step - warmup) / max(1, config.epochs * steps_per_epoch - warmup)
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * progress))
