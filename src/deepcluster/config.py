"""Pretraining configuration and its named presets.

A preset is a complete ``PretrainConfig``; the command line starts from one and overrides any
field (``--k 100``, ``--lr 0.05`` ...). The chosen values are saved in every checkpoint, so that a
benchmark can rebuild the same network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .clustering import KMEANS_BACKENDS
from .models import ARCHITECTURES
from .transforms import AUGMENTATIONS

LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


@dataclass(frozen=True)
class PretrainConfig:
    data: str = field(default="fashion-mnist", metadata={"help": "dataset: fashion-mnist, mnist, digits, idx:DIR, a class-folder tree, a list file or an image folder"})
    subset: int = field(default=0, metadata={"help": "use only the first N training images (0: all)"})
    skip_unreadable: bool = field(default=False, metadata={"help": "drop and count unreadable images instead of failing"})
    arch: str = field(default="small-cnn", metadata={"help": "backbone: " + ", ".join(ARCHITECTURES)})
    sobel: bool = field(default=True, metadata={"help": "fixed Sobel input layer (grey + Sobel pair)"})
    image_size: int = field(default=28, metadata={"help": "training and extraction crop size in pixels"})
    augmentation: str = field(default="small", metadata={"help": "training augmentation: " + ", ".join(AUGMENTATIONS)})
    k: int = field(default=100, metadata={"help": "number of k-means clusters"})
    pca_dim: int = field(default=64, metadata={"help": "PCA-whitening dimension before k-means"})
    streaming_pca: bool = field(default=True, metadata={"help": "fit the PCA batch by batch while extracting and spill the full features to a temporary file: N x pca_dim in memory, not N x D"})
    kmeans_iters: int = field(default=20, metadata={"help": "k-means iterations per clustering"})
    kmeans_backend: str = field(default="faiss", metadata={"help": "k-means implementation: " + ", ".join(KMEANS_BACKENDS)})
    epochs: int = field(default=6, metadata={"help": "training epochs (one clustering before the first and after each)"})
    batch_size: int = field(default=256, metadata={"help": "training batch size"})
    lr: float = field(default=0.1, metadata={"help": "SGD learning rate"})
    lr_schedule: str = field(default="constant", metadata={"help": "learning-rate schedule over the epochs: " + ", ".join(LR_SCHEDULES)})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum of the backbone (the head gets none)"})
    weight_decay: float = field(default=1e-5, metadata={"help": "SGD weight decay"})
    extract_batch_size: int = field(default=512, metadata={"help": "batch size of the extraction pass"})
    workers: int = field(default=0, metadata={"help": "data-loading worker processes"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    accelerator: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})
    devices: int = field(default=1, metadata={"help": "devices per node"})
    precision: str = field(default="32-true", metadata={"help": "training precision: " + ", ".join(PRECISIONS)})
    channels_last: bool = field(default=True, metadata={"help": "channels-last memory layout for model and batches (faster convolutions)"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, k-means, sampling and augmentation"})
    out: str = field(default="runs/pretrain", metadata={"help": "output folder (checkpoints, logs, assignments)"})

    def __post_init__(self) -> None:
        _check_choice("arch", self.arch, ARCHITECTURES)
        _check_choice("augmentation", self.augmentation, AUGMENTATIONS)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("kmeans_backend", self.kmeans_backend, KMEANS_BACKENDS)
        for name in ("k", "pca_dim", "kmeans_iters", "epochs", "batch_size", "image_size",
                     "extract_batch_size", "devices"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        for name in ("subset", "workers", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must not be negative")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PretrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config key(s): {', '.join(unknown)}")
        return cls(**values)

    def override(self, **changes: Any) -> "PretrainConfig":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")


PRESETS: dict[str, PretrainConfig] = {
    # The default: learns visibly on Fashion-MNIST within about ten minutes on a 2-core CPU.
    # bf16 convolutions: 1.5x faster on CPUs with AVX-512 BF16 (and on GPUs); 32-true elsewhere.
    "fashion-mnist": PretrainConfig(precision="bf16-mixed"),
    # The MMSelfSup recipe (configs/selfsup/deepcluster, 8 GPUs x 64 images).
    "imagenet-resnet50-sobel": PretrainConfig(
        data="imagenet/train", arch="resnet50", sobel=True, image_size=224,
        augmentation="mmselfsup", k=10000, pca_dim=256, epochs=200, batch_size=512, lr=0.1,
        weight_decay=1e-5, extract_batch_size=512, workers=8, out="runs/imagenet-resnet50-sobel"),
    # The original facebookresearch/deepcluster recipe (AlexNet, Sobel, lr 0.05, batch 256).
    "imagenet-alexnet-original": PretrainConfig(
        data="imagenet/train", arch="alexnet", sobel=True, image_size=224,
        augmentation="original", k=10000, pca_dim=256, epochs=500, batch_size=256, lr=0.05,
        weight_decay=1e-5, workers=8, out="runs/imagenet-alexnet-original"),
    # The setting MMSelfSup 1.0.0's DeepCluster was measured with on this kind of CPU.
    "mmselfsup-peer": PretrainConfig(
        data="fashion-mnist", subset=10000, arch="resnet18", sobel=True, image_size=64,
        augmentation="mmselfsup", k=100, pca_dim=256, epochs=3, batch_size=64, lr=0.0125,
        extract_batch_size=64, workers=1, threads=1, precision="bf16-mixed",
        out="runs/mmselfsup-peer"),
}

DEFAULT_PRESET = "fashion-mnist"


def get_preset(name: str) -> PretrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
