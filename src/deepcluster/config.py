"""Pretraining configuration: one frozen dataclass whose fields are grouped by what they belong to.

Every field says which methods use it (``common``: all of them) and whether it may change when a
run is resumed. A method-specific field is ``None`` until resolved: left unset it takes its
default for the methods that use it, and stays ``None`` for the others; set for a method that
does not use it, it is an error (``--prototype-sets 5`` with ``--method deepcluster``).

A config is saved in every checkpoint (``to_dict``, with ``CONFIG_VERSION``) and as ``config.yaml``
in every run folder; ``from_dict`` also reads the flat configs of checkpoints written before the
fields were grouped (version 1).
"""

from __future__ import annotations

from dataclasses import Field, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .clustering import KMEANS_BACKENDS
from .models import ARCHITECTURES
from .transforms import AUGMENTATIONS, small_crop_scale

V1, V2, SUPERVISED = "deepcluster", "deepcluster-v2", "supervised"
METHODS = (V1, V2, SUPERVISED)
COMMON = METHODS
GROUP_TITLES = {COMMON: "common to every method", (V1, V2): "DeepCluster v1 and v2",
                (V1, SUPERVISED): "DeepCluster v1 and the supervised baseline",
                (V1,): "DeepCluster (v1)", (V2,): "DeepCluster-v2"}
# One meaning per name: "cosine" decays every step (after the warm-up) to zero at the last step;
# "cosine-epoch" decays once per epoch (the original DeepCluster code's cosine).
LR_SCHEDULES = ("constant", "cosine", "cosine-epoch")
EPOCH_DEPENDENT_SCHEDULES = ("cosine", "cosine-epoch")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
CONFIG_VERSION = 2
BANKS = ("training", "clean", "backbone")  # DeepCluster-v2's memory bank
FIRST_TARGETS = ("bank", "backbone")
SAMPLINGS = ("images", "clusters")  # DeepCluster-v2's training order
V1_FIELDS_SINCE_VERSION_2 = ("small_crops", "small_crop_size")


def option(default: Any, help: str, methods: tuple[str, ...] = COMMON, resume: bool = False,
           choices: tuple[str, ...] | None = None, minimum: float | None = None,
           maximum: float | None = None) -> Any:
    """A config field: its default (or a dict of each method's), help, the methods that use it,
    whether it may change on resume, and its allowed values. Method-specific fields default to
    None (resolved later)."""
    metadata = {"help": help, "methods": methods, "resume": resume, "default": default,
                "choices": choices, "minimum": minimum, "maximum": maximum}
    return field(default=default if methods == COMMON else None, metadata=metadata)


@dataclass(frozen=True)
class PretrainConfig:
    # --- common to every method ---------------------------------------------------------------
    method: str = option(V1, "deepcluster (v1: k-means on PCA-whitened features, fresh linear head), deepcluster-v2 (spherical k-means prototypes of a projected memory bank, multi-crop) or supervised (the true labels)", choices=METHODS)
    data: str = option("fashion-mnist", "dataset: fashion-mnist, mnist, digits, idx:DIR, imagenet:ROOT, a class-folder tree, a list file or an image folder")
    subset: int = option(0, "use only the first N training images (0: all)", minimum=0)
    skip_unreadable: bool = option(False, "drop and count unreadable images instead of failing")
    allow_outside_root: bool = option(False, "accept list-file paths that are absolute or climb out of the list's folder with ..")
    arch: str = option("small-cnn", "backbone", choices=ARCHITECTURES)
    sobel: bool = option(True, "fixed Sobel input layer (grey + Sobel pair)")
    image_size: int = option(28, "training and extraction crop size in pixels", minimum=1)
    epochs: int = option(6, "training epochs (DeepCluster: one clustering before the first and after each)", resume=True, minimum=1)
    batch_size: int = option(256, "training batch size (the global batch: split over the processes of a multi-process run)", minimum=1)
    lr: float = option(0.1, "SGD learning rate", minimum=1e-300)
    lr_schedule: str = option("constant", "learning rate over the run: constant; cosine (every step, to zero at the end); cosine-epoch (once per epoch)", choices=LR_SCHEDULES)
    warmup_epochs: float = option(0.0, "linear learning-rate warm-up before the schedule, in epochs", minimum=0)
    momentum: float = option(0.9, "SGD momentum (DeepCluster v1's head, re-initialised every epoch, gets none)", minimum=0)
    weight_decay: float = option(1e-5, "SGD weight decay", minimum=0)
    workers: int = option(0, "data-loading worker processes (kept for the whole run)", resume=True, minimum=0)
    threads: int = option(0, "torch CPU threads (0: torch's default)", resume=True, minimum=0)
    accelerator: str = option("auto", "cpu, cuda or auto", resume=True)
    devices: int = option(1, "devices per node", resume=True, minimum=1)
    precision: str = option("32-true", "training precision (auto: bf16-mixed where the chip has bf16 "
                             "arithmetic, else 32-true)", choices=PRECISIONS)
    channels_last: bool = option(True, "channels-last memory layout for model and batches (faster convolutions)")
    compile: bool = option(False, "torch.compile the backbone: faster steps on GPUs after a compile of a minute or two (on the CPU it needs a C++ compiler)", resume=True)
    seed: int = option(0, "seed of initialisation, clustering, sampling and augmentation")
    keep_every: int = option(0, "also keep the checkpoint of every N-th epoch as checkpoints/epoch_NNN.ckpt (0: only last.ckpt)", resume=True, minimum=0)
    knn_every: int = option(-1, "online weighted k-NN top-1 of the test split (benchmark knn's) every N epochs and at the last, in metrics.csv, TensorBoard and the console (0: off; -1: every epoch on the bundled labelled data fashion-mnist, mnist, digits, else off)", resume=True, minimum=-1)
    out: str = option("runs/pretrain", "run folder (config.yaml, checkpoints, metrics.csv, TensorBoard, assignments)", resume=True)
    # --- DeepCluster v1 and the supervised baseline -----------------------------------------
    augmentation: str = option("small", "training augmentation", methods=(V1, SUPERVISED), choices=AUGMENTATIONS)
    crop_min_scale: float = option(0.0, "smallest area of a training crop, as a fraction of the image: the random resized crop's lower scale bound (v2: of its large crops; 0: the augmentation's own, strong and v2 0.14, small 0.3, original and mmselfsup 0.08)", methods=(V1, V2, SUPERVISED), minimum=0, maximum=1)
    # --- DeepCluster v1 and v2 ------------------------------------------------------------------
    k: int = option(100, "number of clusters (v2: per prototype set)", methods=(V1, V2), minimum=2)
    kmeans_iters: int = option(20, "k-means iterations per clustering", methods=(V1, V2), minimum=1)
    pca_dim: int = option(64, "PCA-whitening dimension before the k-means of the backbone's features", methods=(V1, V2), minimum=1)
    streaming_pca: bool = option(True, "fit the PCA batch by batch while extracting: N x pca_dim in memory, not N x D", methods=(V1, V2), resume=True)
    feature_memory_gb: float = option(2.0, "with streaming_pca: hold the full-width features in memory up to this many GiB per process, beyond it spill them to a temporary file in float16 (0: always spill)", methods=(V1, V2), resume=True, minimum=0)
    kmeans_backend: str = option("faiss", "k-means implementation of the backbone's clustering (v2: with first_targets=backbone; its bank's spherical k-means is torch's)", methods=(V1, V2), choices=KMEANS_BACKENDS)
    extract_batch_size: int = option(512, "batch size of the extraction pass (v2: of its clean passes)", methods=(V1, V2), resume=True, minimum=1)
    small_crops: int = option({V1: 0, V2: 2}, "extra small crops per image (SwAV's multi-crop), each trained on with the image's target; v1 adds them to its one view and needs augmentation strong", methods=(V1, V2), minimum=0)
    small_crop_size: int = option(0, "side of the small crops in pixels (0: 3/7 of image_size, as 96 is of 224)", methods=(V1, V2), minimum=0)
    small_crop_min_scale: float = option(0.0, "smallest area of a small crop, as a fraction of the image (0: SwAV's 0.05)", methods=(V1, V2), minimum=0, maximum=1)
    small_crop_max_scale: float = option(0.0, "largest area of a small crop, as a fraction of the image (0: SwAV's 0.14)", methods=(V1, V2), minimum=0, maximum=1)
    # --- DeepCluster (v1) -----------------------------------------------------------------------
    reset_head: bool = option(True, "re-initialise the classifier head before every epoch (the cluster ids change meaning at each clustering)", methods=(V1,))
    head_hidden: int = option(0, "width of a hidden layer (Linear, BatchNorm, ReLU) between the backbone's feature and the classifier, kept across epochs (only the classifier is re-initialised); 0: the classifier alone", methods=(V1,), minimum=0)
    head_layers: int = option(1, "number of hidden layers of width head_hidden (the original AlexNet has two: fc6 and fc7)", methods=(V1,), minimum=1)
    layer_lr_decay: float = option(1.0, "stage i of the backbone's five trains at lr x decay^(5 - i), the hidden layer and head at lr (1: one lr for all)", methods=(V1,), minimum=1e-300)
    decode_on_device: bool = option(False, "loader reads only the files' bytes; JPEGs are decoded, cropped and resized on the training device (nvJPEG on a GPU); image files only", methods=(V1,), resume=True)
    # --- DeepCluster-v2 -------------------------------------------------------------------------
    prototype_sets: int = option(3, "number of spherical k-means runs, each giving a set of k prototypes", methods=(V2,), minimum=1)
    k_factor: float = option(1.0, "set s of the prototype sets has round(k x k_factor^s) clusters, so that the sets see the data at several granularities (1: k in every set, as SwAV)", methods=(V2,), minimum=1)
    projection_dim: int = option(128, "dimension of the L2-normalised embedding the prototypes live in", methods=(V2,), minimum=1)
    projection_hidden: int = option(512, "hidden width of the projection MLP", methods=(V2,), minimum=1)
    temperature: float = option(0.1, "softmax temperature of the embedding-prototype similarities", methods=(V2,), minimum=1e-300)
    large_crops: int = option(2, "full-size crops per image (each keeps its own memory bank)", methods=(V2,), minimum=1)
    bank: str = option("training", "what each clustering clusters: training (the large crops' embeddings written during the last training pass, as SwAV does), clean (one pass over the images without augmentation, in eval mode, before every clustering) or backbone (every clustering is v1's clustering of the backbone's PCA-whitened features, one k-means per prototype set, the prototypes the clusters' mean embeddings, as first_targets=backbone does for the first, which it implies; one extraction pass per epoch)", methods=(V2,), choices=BANKS)
    sampling: str = option("images", "each epoch's training order: images (every image once, shuffled, as SwAV) or clusters (as many images from every cluster of the first prototype set, as v1 samples; needs bank=backbone or clean, since the training bank is written by the pass)", methods=(V2,), choices=SAMPLINGS)
    first_targets: str = option("bank", "the first epoch's targets: bank (the clusters of the untrained network's embeddings) or backbone (v1's clustering of the backbone's PCA-whitened features, one k-means per set; its prototypes are the clusters' mean embeddings)", methods=(V2,), choices=FIRST_TARGETS)

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        for spec in fields(self):
            value = getattr(self, spec.name)
            if self.method not in spec.metadata["methods"]:
                if value is not None:
                    raise ValueError(f"{spec.name}={value!r} is a {uses(spec)} option; "
                                     f"method {self.method!r} does not use it")
                continue
            if value is None:
                value = method_default(spec, self.method)
                object.__setattr__(self, spec.name, value)
            check_value(spec, value)
        if self.small_crop_min_scale is not None:
            small_crop_scale(self.small_crop_min_scale, self.small_crop_max_scale)  # min < max
        if self.sampling == "clusters" and self.bank == "training":
            raise ValueError("sampling='clusters' leaves images out of each training pass, but "
                             "bank='training' is written by that pass; use bank='backbone' or "
                             "bank='clean'")

    def to_dict(self) -> dict[str, Any]:
        """Every field that the method uses (unused ones are left out), and the version."""
        return {**{k: v for k, v in asdict(self).items() if v is not None},
                "config_version": CONFIG_VERSION}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "PretrainConfig":
        """A config from ``to_dict``'s output, a YAML file's mapping or a version-1 checkpoint's
        flat config; errors name ``source`` and the key at fault."""
        values = dict(values)
        version = values.pop("config_version", 1)
        if version == 1:
            values = upgrade_version_1(values)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown config key(s): {', '.join(unknown)}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from error

    def override(self, **changes: Any) -> "PretrainConfig":
        """The config with the non-None ``changes``. A change of method keeps only the fields
        that the new method uses."""
        changes = {k: v for k, v in changes.items() if v is not None}
        method = changes.get("method", self.method)
        if method != self.method:
            keep = {f.name: getattr(self, f.name) for f in fields(self)
                    if method in f.metadata["methods"] and self.method in f.metadata["methods"]}
            unused = {f.name: None for f in fields(self) if method not in f.metadata["methods"]}
            return replace(self, **{**unused, **keep, **changes})
        return replace(self, **changes)

    def to_yaml(self) -> str:
        """The resolved config as YAML, one commented section per group of fields."""
        import yaml

        lines: list[str] = []
        for methods, title in GROUP_TITLES.items():
            names = [f.name for f in fields(self)
                     if f.metadata["methods"] == methods and getattr(self, f.name) is not None]
            if names:
                lines.append(f"# {title}")
                lines += [yaml.safe_dump({n: getattr(self, n)}, sort_keys=False).rstrip()
                          for n in names]
        lines.append(f"config_version: {CONFIG_VERSION}")
        return "\n".join(lines) + "\n"


def uses(spec: Field) -> str:
    methods = spec.metadata["methods"]
    return " and ".join(methods) if methods != COMMON else "common"


def check_choice(name: str, value: Any, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")


def check_value(spec: Field, value: Any) -> None:
    if spec.metadata["choices"] is not None:
        check_choice(spec.name, value, spec.metadata["choices"])
    minimum = spec.metadata["minimum"]
    if minimum is not None and value < minimum:
        rule = "must be positive" if minimum == 1e-300 else (
            "must not be negative" if minimum == 0 else f"must be at least {minimum}")
        raise ValueError(f"{spec.name}={value} {rule}")
    maximum = spec.metadata["maximum"]
    if maximum is not None and value > maximum:
        raise ValueError(f"{spec.name}={value} must be at most {maximum}")


def upgrade_version_1(values: dict[str, Any]) -> dict[str, Any]:
    """A flat version-1 config (every field of every method, one meaning of "cosine" per method)
    in today's terms: fields the method does not use are dropped, and DeepCluster v1's
    "cosine" (decayed once per epoch) becomes "cosine-epoch"."""
    method = values.get("method", V1)
    by_name = {f.name: f for f in fields(PretrainConfig)}
    upgraded = {name: value for name, value in values.items()
                if name not in by_name or method in by_name[name].metadata["methods"]}
    if method == V1:
        if upgraded.get("lr_schedule") == "cosine":
            upgraded["lr_schedule"] = "cosine-epoch"
        for name in V1_FIELDS_SINCE_VERSION_2:  # then v2's alone: v1 had no multi-crop
            upgraded.pop(name, None)
    return upgraded


def resumable_fields() -> tuple[str, ...]:
    """The fields a resumed run may change (``epochs`` within the limits of ``check_resume``)."""
    return tuple(f.name for f in fields(PretrainConfig) if f.metadata["resume"])


def default_of(name: str) -> Any:
    """A field's default for the methods that use it (per method, where they differ)."""
    spec = {f.name: f for f in fields(PretrainConfig)}[name]
    default = spec.metadata["default"] if spec.default is None else spec.default
    if isinstance(default, dict):
        return ", ".join(f"{value} ({method})" for method, value in default.items())
    return default


def method_default(spec: Field, method: str) -> Any:
    """The default of field ``spec`` for ``method``."""
    default = spec.metadata["default"]
    return default[method] if isinstance(default, dict) else default


def load_yaml_config(path: str | Path, base: PretrainConfig | None = None) -> PretrainConfig:
    """``base`` (default: the default config) with the fields of the YAML file ``path``; a
    partial file changes only what it names. Errors name the file and the key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of config fields, got {type(values).__name__}")
    if values.pop("config_version", CONFIG_VERSION) == 1:
        values = upgrade_version_1(values)
    # a file that names another method starts from the base's fields that method uses
    start = (base or PretrainConfig()).override(method=values.get("method"))
    return PretrainConfig.from_dict({**start.to_dict(), **values}, source=str(path))

