"""The named pretraining recipes. A preset is a complete ``PretrainConfig``; the command line
starts from one and overrides any field (``--k 100``, ``--lr 0.05`` ...)."""

from __future__ import annotations

from .config import PretrainConfig

# The default: learns visibly on Fashion-MNIST within about four minutes on a 2-core CPU.
# Precision "auto": bf16 convolutions are 1.5x faster on CPUs with AVX-512 BF16 (and on GPUs)
# but about 6x slower on CPUs without it (a Zen 3), which get 32-true.
# The augmentation is the one docs/ablation.md found best (crop scale 0.14-1, flip, jitter).
# PCA 128 rather than 64: k-NN +0.4 at 6 epochs and at 9 (docs/study.md, 2 seeds each).
# A hidden layer of 512 before the classifier: within 15 minutes on both cores of a Zen 4, k-NN
# 88.36 and linear 88.73 over 2 seeds, against 87.91 / 88.06 without it (docs/study.md).
# Crops of 50-100 % of the image rather than the strong augmentation's 14-100 %: within 15
# minutes k-NN 88.62, linear 88.95 and MNIST k-NN 95.67 over 2 seeds, against 88.36 / 88.73 /
# 94.96 (at 28 px the smallest crops hold a part of a garment, and the MNIST k-NN had confused
# 3s and 5s three times as often as the untrained network's).
# Crops of 60-100 % are level with these within 15 minutes (k-NN +0.09, linear -0.01, MNIST
# k-NN +0.16 over 3 seeds, session 29), so the preset keeps 50 %.
# 4 epochs, not 6: k-NN 87.34 / 87.52 after 4 (seeds 0 / 1) against 87.40 after 6, in two thirds
# of the time, which `make demo` needs to finish within ten minutes on a Zen 4 (docs/study.md).
FASHION_MNIST = PretrainConfig(precision="auto", augmentation="strong", pca_dim=128,
                               head_hidden=512, crop_min_scale=0.5, epochs=4)

# DeepCluster-v2 on the same data: 3 prototype sets, 2 x 28 px + 2 x 12 px crops, cosine
# schedule after a half-epoch warm-up. The first targets are v1's clustering of the untrained
# backbone, not the clusters of a random projector (docs/study.md: +1.2 k-NN, +1.1 linear
# over SwAV's first targets in 3 epochs, 2 seeds); k = 300 adds 0.2 k-NN over 100 (2 seeds).
# The large crops cover 50-100 % of the image and the small ones 14-50 %, the range below the
# large crops' as in SwAV, rather than SwAV's 14-100 % and 5-14 % (6-10 px of a 28 px image):
# k-NN 86.62 and MNIST k-NN 95.44 over 3 seeds against 86.45 / 94.76 over 2, the linear probe
# level (87.28 against 87.44; docs/study.md, session 18).
# Every clustering is v1's clustering of the backbone (bank "backbone"), not of the projector's
# memory bank, whose k-NN is 1.5-2 points below the backbone's at every epoch: in 2 epochs k-NN
# 87.27, linear 87.66 and MNIST k-NN 95.54 over 3 seeds, against the training bank's 86.62 /
# 87.28 / 95.44 in 3, so 2 epochs (one extraction pass each, about 11 s on both cores); within
# 15 minutes k-NN 88.41 and linear 89.10 (3 seeds; docs/study.md, session 19), within 60 minutes
# 89.33 and 89.86 (seed 0, 30 epochs, session 20). Those runs gave the three prototype sets one
# clustering; one k-means per set, as v2's reference, gave 87.44 / 87.68 / 95.74 in 2 epochs
# (3 seeds, session 20), and within 15 minutes on the Zen 4 k-NN 88.65 and linear 88.67 (8 epochs,
# 2 seeds: k-NN +0.20, linear -0.47 against prototype_sets=1); at 3 epochs on a Zen 3 without bf16
# it was ahead on both (k-NN +0.27, linear +0.04, 2 seeds, session 21).
# Batch 128 at lr 0.05 (twice the steps at the same lr per image): at the end of a 3-epoch cosine
# on a Zen 3, k-NN +0.17, linear +0.37 and MNIST k-NN +0.31 over batch 256 at lr 0.1, better on
# all three seeds on both benchmarks, which brings v2 level with v1 within 15 minutes there
# (docs/study.md, session 25). On a Zen 4 with bf16 it is at least level with v1 within 15
# minutes (k-NN +0.16, linear +0.15, 3 seeds); within 60 minutes it is level over three seed
# pairs on the two machines (k-NN -0.01, linear 0.00; sessions 26-29). The figures above were
# measured at batch 256.
# Prototype sets of 100, 300 and 900 clusters (k=100, k_factor=3) rather than 300 in each: within
# 15 minutes on the Zen 4, k-NN +0.15 and linear +0.17, better on both probes with each of 4
# seeds, MNIST k-NN level (+0.06; docs/study.md, session 30). The figures above, and the hour's,
# were measured with 300 in each set.
FASHION_MNIST_V2 = PretrainConfig(
    method="deepcluster-v2", precision="auto", kmeans_iters=10, lr_schedule="cosine",
    warmup_epochs=0.5, epochs=2, first_targets="backbone", bank="backbone", k=100, k_factor=3,
    crop_min_scale=0.5, small_crop_min_scale=0.14, small_crop_max_scale=0.5,
    batch_size=128, lr=0.05)

PRESETS: dict[str, PretrainConfig] = {
    "fashion-mnist": FASHION_MNIST,
    # The same for a user with an hour: 71 epochs, what 60 minutes on both cores of a Zen 4 with
    # bf16 ran with the online k-NN off (docs/study.md: k-NN 89.61, linear 89.61, MNIST k-NN
    # 96.10, seed 0). The online k-NN every 8 epochs, not every epoch: about 9 passes of 13-22 s
    # instead of 71.
    "quality": FASHION_MNIST.override(epochs=71, knn_every=8, out="runs/quality"),
    "fashion-mnist-v2": FASHION_MNIST_V2,
    # The same for a user with an hour: 28 epochs, what 60 minutes on both cores of a Zen 4 with
    # bf16 ran with the online k-NN off (docs/study.md, session 28: k-NN 89.62, linear 89.90,
    # MNIST k-NN 95.80, seed 0). Until session 20 this preset was the wide network in 3 epochs
    # (linear 88.19 / 88.01 over 2 seeds), the study's v2b-wide row. It keeps 300 clusters in each
    # set, as measured: the sets of 100 / 300 / 900 were not run for an hour.
    "quality-v2": FASHION_MNIST_V2.override(epochs=28, knn_every=8, k=300, k_factor=1,
                                            out="runs/quality-v2"),
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
        extract_batch_size=64, workers=1, threads=1, precision="auto",
        out="runs/mmselfsup-peer"),
}

DEFAULT_PRESET = "fashion-mnist"
DEFAULT_V2_PRESET = "fashion-mnist-v2"


def default_preset(method: str | None) -> str:
    """The preset a run of ``method`` starts from when none is named."""
    return DEFAULT_V2_PRESET if method == "deepcluster-v2" else DEFAULT_PRESET


def get_preset(name: str) -> PretrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
