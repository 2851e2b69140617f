"""The small CNN with per-image GroupNorm for BatchNorm: no statistic depends on how a batch is
split over processes, so several processes must train exactly as one (BatchNorm cannot on CPUs:
torch's SyncBatchNorm runs on GPUs only, see engine.processes.sync_batchnorm)."""

from torch import nn

from deepcluster.models import build_backbone


def group_norm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(1, child.num_features))
        else:
            group_norm(child)


def without_batchnorm(arch, sobel=False):
    backbone = build_backbone(arch, sobel)
    group_norm(backbone)
    return backbone
