"""Backbones with five named feature maps, the Sobel input layer, and the clustering head.

Every backbone is a ``Backbone``: ``forward(x)`` gives the global feature that DeepCluster clusters
(global-average-pooled last stage for ResNets and the small CNN; fc7 before its ReLU for AlexNet and
VGG-16, as in the original code), and ``forward_features(x)`` gives the maps ``feature1`` ..
``feature5`` that the benchmarks probe (for ResNets: conv1 before max-pool, then res2 .. res5).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchvision import models as tv_models

FEATURE_NAMES = ("feature1", "feature2", "feature3", "feature4", "feature5")


class SobelFilter(nn.Module):
    """Frozen grey conversion followed by the horizontal and vertical Sobel filters (2 channels)."""

    def __init__(self) -> None:
        super().__init__()
        grey = nn.Conv2d(3, 1, kernel_size=1, bias=False)
        grey.weight.data.fill_(1.0 / 3.0)
        sobel = nn.Conv2d(1, 2, kernel_size=3, padding=1, bias=False)
        sobel.weight.data[0, 0] = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        sobel.weight.data[1, 0] = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])
        self.filters = nn.Sequential(grey, sobel)
        for parameter in self.parameters():
            parameter.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.filters(x)


class Backbone(nn.Module):
    """An optional input layer, five stages, and a global feature on top of the last stage."""

    def __init__(self, stages: list[nn.Module], global_feature: nn.Module, feature_dim: int,
                 input_layer: nn.Module | None = None, relu_before_head: bool = False):
        super().__init__()
        if len(stages) != len(FEATURE_NAMES):
            raise ValueError(f"a backbone needs {len(FEATURE_NAMES)} stages, got {len(stages)}")
        self.input_layer = input_layer if input_layer is not None else nn.Identity()
        self.stages = nn.ModuleList(stages)
        self.global_feature = global_feature
        self.feature_dim = feature_dim
        # AlexNet/VGG cluster fc7 before its ReLU but train the head on fc7 after it.
        self.relu_before_head = relu_before_head

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.input_layer(x)
        maps = {}
        for name, stage in zip(FEATURE_NAMES, self.stages):
            x = stage(x)
            maps[name] = x
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_layer(x)
        for stage in self.stages:
            x = stage(x)
        return self.global_feature(x)


def _pooled() -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _resnet(builder: Callable[..., tv_models.ResNet], in_channels: int, small_image: bool) -> Backbone:
    net = builder(weights=None)
    if small_image:
        # CIFAR-style stem for 28-64 px inputs: a 3x3 stride-1 conv and no max-pool.
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    stages = [
        nn.Sequential(net.conv1, net.bn1, net.relu),
        nn.Sequential(net.maxpool, net.layer1),
        net.layer2,
        net.layer3,
        net.layer4,
    ]
    return Backbone(stages, _pooled(), net.fc.in_features)


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1,
             padding: int = 0) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel, stride, padding),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def _fc7(in_features: int) -> nn.Module:
    """The original DeepCluster classifier trunk; the clustered feature is fc7 before its ReLU."""
    return nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(in_features, 4096),
                         nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(4096, 4096))


def _alexnet(in_channels: int) -> Backbone:
    """AlexNet with BatchNorm as in the DeepCluster paper (96-256-384-384-256 conv widths)."""
    stages = [
        nn.Sequential(*_conv_bn(in_channels, 96, 11, 4, 2), nn.MaxPool2d(3, 2)),
        nn.Sequential(*_conv_bn(96, 256, 5, 1, 2), nn.MaxPool2d(3, 2)),
        nn.Sequential(*_conv_bn(256, 384, 3, 1, 1)),
        nn.Sequential(*_conv_bn(384, 384, 3, 1, 1)),
        nn.Sequential(*_conv_bn(384, 256, 3, 1, 1), nn.MaxPool2d(3, 2)),
    ]
    return Backbone(stages, nn.Sequential(nn.AdaptiveAvgPool2d(6), _fc7(256 * 6 * 6)), 4096,
                    relu_before_head=True)


def _vgg16_bn(in_channels: int) -> Backbone:
    """torchvision's VGG-16 with BatchNorm; each of the five blocks ends at its max-pool."""
    net = tv_models.vgg16_bn(weights=None)
    layers = list(net.features)
    if in_channels != 3:
        layers[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
    stages, block = [], []
    for layer in layers:
        block.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            stages.append(nn.Sequential(*block))
            block = []
    return Backbone(stages, nn.Sequential(nn.AdaptiveAvgPool2d(7), _fc7(512 * 7 * 7)), 4096,
                    relu_before_head=True)


def _small_cnn(in_channels: int, width: int = 32) -> Backbone:
    """A five-block BatchNorm CNN for 28-64 px images; fast enough to pretrain on a laptop CPU."""
    w = width
    stages = [
        nn.Sequential(*_conv_bn(in_channels, w, 3, 1, 1)),
        nn.Sequential(nn.MaxPool2d(2), *_conv_bn(w, 2 * w, 3, 1, 1)),
        nn.Sequential(nn.MaxPool2d(2), *_conv_bn(2 * w, 4 * w, 3, 1, 1)),
        nn.Sequential(*_conv_bn(4 * w, 8 * w, 3, 1, 1)),
        nn.Sequential(nn.MaxPool2d(2), *_conv_bn(8 * w, 8 * w, 3, 1, 1)),
    ]
    return Backbone(stages, _pooled(), 8 * w)


ARCHITECTURES: dict[str, Callable[[int], Backbone]] = {
    "resnet50": lambda c: _resnet(tv_models.resnet50, c, small_image=False),
    "resnet18": lambda c: _resnet(tv_models.resnet18, c, small_image=False),
    "resnet18-small": lambda c: _resnet(tv_models.resnet18, c, small_image=True),
    "alexnet": _alexnet,
    "vgg16": _vgg16_bn,
    "small-cnn": _small_cnn,
    # 1.5x the channels (about 2.25x the compute): the issue-15 study's wider backbone
    "small-cnn-wide": lambda c: _small_cnn(c, width=48),
}


def build_backbone(arch: str, sobel: bool = False) -> Backbone:
    """A freshly initialised backbone; with ``sobel`` its first conv takes the 2 Sobel channels."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    backbone = ARCHITECTURES[arch](2 if sobel else 3)
    if sobel:
        backbone.input_layer = SobelFilter()
    return backbone


class DeepClusterModel(nn.Module):
    """A backbone and the linear head that predicts cluster ids; with ``hidden``, ``layers``
    hidden layers (Linear, BatchNorm, ReLU) between them, as the original AlexNet's fc6 and fc7
    stand between its convolutions and its classifier."""

    def __init__(self, backbone: Backbone, num_clusters: int, hidden: int = 0, layers: int = 1):
        super().__init__()
        self.backbone = backbone
        widths = [backbone.feature_dim] + [hidden] * layers if hidden else []
        # One flat Sequential, so that one hidden layer keeps the keys 0.*, 1.* of older checkpoints.
        self.hidden = (nn.Sequential(*[module for width_in, width_out in zip(widths, widths[1:])
                                       for module in (nn.Linear(width_in, width_out),
                                                      nn.BatchNorm1d(width_out),
                                                      nn.ReLU(inplace=True))])
                       if hidden else nn.Identity())
        self.head = nn.Linear(hidden or backbone.feature_dim, num_clusters)
        reset_head(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        features = torch.relu(features) if self.backbone.relu_before_head else features
        return self.head(self.hidden(features))


@torch.no_grad()
def reset_head(head: nn.Linear) -> None:
    """Fresh head each epoch: weights N(0, 0.01), bias 0 (the cluster ids are permuted anyway)."""
    head.weight.normal_(0.0, 0.01)
    head.bias.zero_()
