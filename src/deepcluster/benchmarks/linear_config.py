"""The linear benchmark's settings: ``LinearConfig`` and the published recipes as presets.

Its own module because the probe (``linear``), its feature sources (``linear_features``) and the
run (``linear_run``) all read the config, and the CLI builds its options from its fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..config import PRECISIONS
from ..features import LAYERS
from ..models import FEATURE_NAMES

HEAD_SETS = {"mhead": FEATURE_NAMES, "avgpool": ("avgpool",), "all": LAYERS}
# Training augmentations of the probes; "none" (the extraction transform) allows the feature cache.
PROBE_AUGMENTATIONS = ("imagenet-mhead", "crop-flip", "places", "none")
CACHE_MODES = ("auto", "off")
CACHE_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class LinearConfig:
    data: str = field(default="fashion-mnist", metadata={"help": "dataset: fashion-mnist, mnist, digits, imagenet:DIR, places205:DIR, inat2018:DIR, or any --data form"})
    heads: str = field(default="all", metadata={"help": "mhead (feature1..5), avgpool, or all (both, one forward pass)"})
    epochs: int = field(default=15, metadata={"help": "training epochs"})
    batch_size: int = field(default=256, metadata={"help": "training batch size"})
    lr: float = field(default=0.01, metadata={"help": "SGD learning rate (multi-head heads, or the AvgPool head alone)"})
    avgpool_lr: float = field(default=0.0, metadata={"help": "learning rate of the AvgPool head when trained beside the multi-head ones (0: same as lr)"})
    avgpool_bn: bool = field(default=True, metadata={"help": "BatchNorm(affine=False) before the AvgPool head too (the published recipe has none)"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    nesterov: bool = field(default=True, metadata={"help": "Nesterov momentum"})
    weight_decay: float = field(default=1e-4, metadata={"help": "weight decay (never on norm layers)"})
    milestones: tuple[int, ...] = field(default=(10, 13), metadata={"help": "epochs where the lr is multiplied by gamma, comma-separated"})
    gamma: float = field(default=0.1, metadata={"help": "lr factor at each milestone"})
    augmentation: str = field(default="none", metadata={"help": "training augmentation: " + ", ".join(PROBE_AUGMENTATIONS) + " (none: features cached)"})
    image_size: int = field(default=0, metadata={"help": "input crop size in pixels (0: the checkpoint's)"})
    cache: str = field(default="auto", metadata={"help": "auto: cache features when the augmentation is none; off: always stream"})
    cache_dtype: str = field(default="float16", metadata={"help": "dtype of the feature cache: float16 (half the memory) or float32"})
    subset: int = field(default=0, metadata={"help": "use only the first N training images (0: all)"})
    test_subset: int = field(default=0, metadata={"help": "evaluate on the first N validation images (0: all)"})
    eval_batch_size: int = field(default=512, metadata={"help": "batch size of extraction and evaluation"})
    workers: int = field(default=0, metadata={"help": "data-loading worker processes"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    accelerator: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})
    precision: str = field(default="32-true", metadata={"help": "precision: " + ", ".join(PRECISIONS)})
    seed: int = field(default=0, metadata={"help": "seed of head initialisation, shuffling and augmentation"})

    def __post_init__(self) -> None:
        for name, choices in (("heads", HEAD_SETS), ("augmentation", PROBE_AUGMENTATIONS),
                              ("cache", CACHE_MODES), ("cache_dtype", CACHE_DTYPES),
                              ("precision", PRECISIONS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {', '.join(choices)}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        for name in ("subset", "test_subset", "workers", "threads", "image_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must not be negative")
        if self.lr <= 0 or self.avgpool_lr < 0:
            raise ValueError(f"lr={self.lr} must be positive and avgpool_lr={self.avgpool_lr} "
                             "not negative")
        if list(self.milestones) != sorted(self.milestones) or any(m < 1 for m in self.milestones):
            raise ValueError(f"milestones={self.milestones} must be increasing positive epochs")

    @property
    def layers(self) -> tuple[str, ...]:
        return HEAD_SETS[self.heads]

    @property
    def cached(self) -> bool:
        return self.cache == "auto" and self.augmentation == "none"

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["milestones"] = list(self.milestones)
        return values

    def override(self, **changes: Any) -> "LinearConfig":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


_IMAGENET = dict(batch_size=256, momentum=0.9, nesterov=True, image_size=224, workers=8,
                 eval_batch_size=256, avgpool_bn=False)

PRESETS: dict[str, LinearConfig] = {
    # MMSelfSup 0.x multi-head recipe: all five heads, steps at 30/60 (1.x's 4 heads and 60/80
    # milestones are slips, not copied).
    "imagenet-mhead": LinearConfig(
        data="imagenet:data/imagenet", heads="mhead", epochs=90, lr=0.01, weight_decay=1e-4,
        milestones=(30, 60), augmentation="imagenet-mhead", **_IMAGENET),
    # Global-average-pooled res5 -> Linear, no BatchNorm; lr 30 without weight decay.
    "imagenet-avgpool": LinearConfig(
        data="imagenet:data/imagenet", heads="avgpool", epochs=100, lr=30.0, weight_decay=0.0,
        milestones=(60, 80), augmentation="crop-flip", **{**_IMAGENET, "nesterov": False}),
    # 28 epochs, steps 7/14/21 (1.x's 100 epochs are a slip); resize 256, centre 256, random 224.
    "places205-mhead": LinearConfig(
        data="places205:data/places205", heads="mhead", epochs=28, lr=0.01, weight_decay=1e-4,
        milestones=(7, 14, 21), augmentation="places", **_IMAGENET),
    "inat18-mhead": LinearConfig(
        data="inat2018:data/inat2018", heads="mhead", epochs=84, lr=0.01, weight_decay=1e-4,
        milestones=(24, 48, 72), augmentation="imagenet-mhead", **_IMAGENET),
    # Small images on a laptop CPU: features cached once, all six heads in a few minutes. The
    # published multi-head lr, 15 epochs (235 steps each on Fashion-MNIST), steps at 10/13; tuned
    # on a 20k-image training subset against lr 0.003 / 0.03 (within a point of each other).
    "fashion-mnist-mhead": LinearConfig(),
}
DEFAULT_PRESET = "fashion-mnist-mhead"
_PRESET_BY_PREFIX = {"imagenet:": "imagenet-mhead", "places205:": "places205-mhead",
                     "inat2018:": "inat18-mhead"}


def get_preset(name: str) -> LinearConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown linear preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def default_preset(data: str | None, heads: str | None) -> str:
    """The preset a run without ``--preset`` starts from: the one matching the dataset prefix."""
    for prefix, name in _PRESET_BY_PREFIX.items():
        if data and data.startswith(prefix):
            return "imagenet-avgpool" if name == "imagenet-mhead" and heads == "avgpool" else name
    return DEFAULT_PRESET
