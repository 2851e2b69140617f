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
METHODS = ("deepcluster", "deepcluster-v2")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


@dataclass(frozen=True)
class PretrainConfig:
    method: str = field(default="deepcluster", metadata={"help": "deepcluster (v1: k-means on PCA-whitened features, fresh linear head) or deepcluster-v2 (spherical k-means prototypes of a projected memory bank, multi-crop)"})
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
    reset_head: bool = field(default=True, metadata={"help": "re-initialise the classifier head before every epoch (the cluster ids change meaning at each clustering)"})
    kmeans_iters: int = field(default=20, metadata={"help": "k-means iterations per clustering"})
    kmeans_backend: str = field(default="faiss", metadata={"help": "k-means implementation: " + ", ".join(KMEANS_BACKENDS)})
    prototype_sets: int = field(default=3, metadata={"help": "v2: number of spherical k-means runs, each giving a set of k prototypes"})
    projection_dim: int = field(default=128, metadata={"help": "v2: dimension of the L2-normalised embedding the prototypes live in"})
    projection_hidden: int = field(default=512, metadata={"help": "v2: hidden width of the projection MLP"})
    temperature: float = field(default=0.1, metadata={"help": "v2: softmax temperature of the embedding-prototype similarities"})
    large_crops: int = field(default=2, metadata={"help": "v2: full-size crops per image (each keeps its own memory bank)"})
    small_crops: int = field(default=2, metadata={"help": "v2: extra small crops per image (multi-crop)"})
    small_crop_size: int = field(default=0, metadata={"help": "v2: side of the small crops in pixels (0: 3/7 of image_size, as 96 is of 224)"})
    warmup_epochs: float = field(default=0.0, metadata={"help": "linear learning-rate warm-up before the schedule, in epochs (v2)"})
    epochs: int = field(default=6, metadata={"help": "training epochs (one clustering before the first and after each)"})
    batch_size: int = field(default=256, metadata={"help": "training batch size (the global batch: split over the processes of a multi-process run)"})
    lr: float = field(default=0.1, metadata={"help": "SGD learning rate"})
    lr_schedule: str = field(default="constant", metadata={"help": "learning-rate schedule over the epochs: " + ", ".join(LR_SCHEDULES)})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum of the backbone (the head gets none)"})
    weight_decay: float = field(default=1e-5, metadata={"help": "SGD weight decay"})
    extract_batch_size: int = field(default=512, metadata={"help": "batch size of the extraction pass"})
    decode_on_device: bool = field(default=False, metadata={"help": "loader reads only the files' bytes; JPEGs are decoded, cropped and resized on the training device (nvJPEG on a GPU); image files, DeepCluster v1 only"})
    workers: int = field(default=0, metadata={"help": "data-loading worker processes"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    accelerator: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})
    devices: int = field(default=1, metadata={"help": "devices per node"})
    precision: str = field(default="32-true", metadata={"help": "training precision: " + ", ".join(PRECISIONS)})
    channels_last: bool = field(default=True, metadata={"help": "channels-last memory layout for model and batches (faster convolutions)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the backbone: faster steps on GPUs after a compile of a minute or two (on the CPU it needs a C++ compiler)"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, k-means, sampling and augmentation"})
    keep_every: int = field(default=0, metadata={"help": "also keep the checkpoint of every N-th epoch as checkpoints/epoch_NNN.ckpt (0: only last.ckpt)"})
    out: str = field(default="runs/pretrain", metadata={"help": "output folder (checkpoints, logs, assignments)"})

    def __post_init__(self) -> None:
        _check_choice("method", self.method, METHODS)
        _check_choice("arch", self.arch, ARCHITECTURES)
        _check_choice("augmentation", self.augmentation, AUGMENTATIONS)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("kmeans_backend", self.kmeans_backend, KMEANS_BACKENDS)
        for name in ("k", "pca_dim", "kmeans_iters", "epochs", "batch_size", "image_size",
                     "extract_batch_size", "devices", "prototype_sets", "projection_dim",
                     "projection_hidden", "large_crops"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        for name in ("subset", "workers", "threads", "keep_every", "small_crops", "small_crop_size",
                     "warmup_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must not be negative")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be positive")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be positive")

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
    # The augmentation is the one docs/ablation.md found best (crop scale 0.14-1, flip, jitter).
    "fashion-mnist": PretrainConfig(precision="bf16-mixed", augmentation="strong"),
    # The same for a user with an hour: 40 epochs (docs/ablation.md: what 15 and 60 minutes reach).
    "quality": PretrainConfig(precision="bf16-mixed", augmentation="strong", epochs=40,
                              out="runs/quality"),
    # DeepCluster-v2 on the same data: 3 x 100 prototypes, 2 x 28 px + 2 x 12 px crops, cosine
    # schedule after a half-epoch warm-up.
    "fashion-mnist-v2": PretrainConfig(
        method="deepcluster-v2", precision="bf16-mixed", kmeans_iters=10, lr_schedule="cosine",
        warmup_epochs=0.5, epochs=3),
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
DEFAULT_V2_PRESET = "fashion-mnist-v2"


def get_preset(name: str) -> PretrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
