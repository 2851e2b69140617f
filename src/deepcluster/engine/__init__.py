"""The training engine: processes, seeding, the epoch loop, loaders, checkpoints, history and
resume, for every method of ``deepcluster.methods``."""

from .loop import PretrainResult, pretrain

__all__ = ["PretrainResult", "pretrain"]
