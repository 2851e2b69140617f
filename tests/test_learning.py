"""Pretraining learns: the clusters of the trained network agree better with the true labels than
those of the untrained one, which a run that cannot learn (lr 1e-6: the same passes, BatchNorm
statistics and clusterings, but no weight moves) does not reach; and, in the long test, the
trained network's k-NN beats the same network's random init.

At a few hundred steps DeepCluster's k-NN first falls below the untrained network's (its
features specialise to the first, poor clusterings) and overtakes it only after about two epochs
of all 60,000 Fashion-MNIST images: the k-NN test is the long one (DEEPCLUSTER_LONG_TESTS=1,
about 12 minutes on 2 cores), the NMI test runs in CI. DeepCluster-v2 does the same: with the
preset's backbone start on 6,000 images (k = 30, one thread, fp32, 2026-12-02), the online k-NN
(those 6,000 as the bank, the 10k test images) went 80.37 -> 78.04 after 3 epochs at batch 256,
-> 79.29 after 6 epochs at batch 64 and -> 80.02 at lr 0.05, while NMI with the labels rose
every epoch after the first."""

import csv
import os
import subprocess
import sys

import pytest

from deepcluster.data import fashion_mnist_folder
from run_helpers import cli

needs_fashion = pytest.mark.skipif(fashion_mnist_folder() is None,
                                   reason="dataset-fashion-mnist is not installed")
# PCA 64, no hidden layer and the strong augmentation's own crops, as the figures below were
# measured: at the preset's PCA 128 these 6,000 images' NMI went only 0.522 -> 0.524 in 4 epochs
# (CI, 2026-12-03). PCA 128 pays on all 60,000 (docs/study.md).
SMALL = ["--data", "fashion-mnist", "--subset", 6000, "--k", 30, "--pca-dim", 64, "--epochs", 4,
         "--head-hidden", 0, "--crop-min-scale", 0, "--threads", 1, "--precision", "32-true",
         "--knn-every", 0, "--seed", 0]
# NMI with the labels, last epoch against the untrained network's clustering, measured
# 2026-12-02 (these flags): trained 0.523 -> 0.551, lr 1e-6 0.523 -> 0.511. The threshold
# sits half-way.
MARGIN = 0.01
# DeepCluster-v2 (SwAV's recipe: the bank of the training pass, the first targets the untrained
# network's bank) on the same images. NMI with the labels, last epoch against the first
# clustering, measured 2026-12-02 (these flags): trained 0.164 -> 0.294, lr 1e-6 0.164 -> 0.181.
SMALL_V2 = ["--method", "deepcluster-v2", "--data", "fashion-mnist", "--subset", 6000, "--k", 30,
            "--epochs", 3, "--threads", 1, "--precision", "32-true", "--knn-every", 0, "--seed", 0,
            "--first-targets", "bank", "--bank", "training",  # SwAV's start: a poor first
            "--k-factor", 1]  # clustering, and its k in every set (the preset's sets grow by 3)
MARGIN_V2 = 0.05


def metric(run, name: str) -> list[float]:
    with open(run / "metrics.csv") as handle:
        return [float(row[name]) for row in csv.DictReader(handle) if row[name] != ""]


def side_by_side(tmp_path, flags: list) -> tuple[list[float], list[float]]:
    """NMI with the labels per epoch of ``flags`` trained and at lr 1e-6, run side by side."""
    runs = {name: subprocess.Popen([sys.executable, "-m", "deepcluster.cli", "pretrain",
                                    *map(str, flags + lr), "--out", str(tmp_path / name)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for name, lr in (("trained", []), ("frozen", ["--lr", 1e-6]))}
    for process in runs.values():
        _, errors = process.communicate(timeout=900)
        assert process.returncode == 0, errors[-2000:]
    return metric(tmp_path / "trained", "nmi_labels"), metric(tmp_path / "frozen", "nmi_labels")


@needs_fashion
def test_nmi_with_the_labels_rises_above_the_untrained_clustering(tmp_path):
    trained, frozen = side_by_side(tmp_path, SMALL)
    assert trained[0] == frozen[0]  # the same untrained network and first clustering
    assert trained[-1] >= trained[0] + MARGIN, trained
    assert frozen[-1] < frozen[0] + MARGIN, frozen  # the threshold is one no learning passes


@needs_fashion
def test_v2_nmi_with_the_labels_rises_above_its_first_clustering(tmp_path):
    trained, frozen = side_by_side(tmp_path, SMALL_V2)
    assert trained[0] == frozen[0]
    assert trained[-1] >= trained[0] + MARGIN_V2, trained
    assert frozen[-1] < frozen[0] + MARGIN_V2, frozen


@needs_fashion
@pytest.mark.skipif(os.environ.get("DEEPCLUSTER_LONG_TESTS") != "1",
                    reason="about 12 minutes: DEEPCLUSTER_LONG_TESTS=1")
def test_knn_of_the_default_preset_beats_its_random_init(tmp_path):
    cli("pretrain", "--precision", "32-true", "--knn-every", 6, "--out", tmp_path / "run")
    knn = metric(tmp_path / "run", "knn_top1")  # epoch 0 (the untrained network) and epoch 6
    # make demo's v1 run (this recipe at PCA 64, 2026-12-02, fp32): 85.68 against 84.80 untrained;
    # PCA 128 adds about 0.4 (bench/study.py's v1-pca128 row, bf16)
    assert len(knn) == 2 and knn[1] >= knn[0] + 0.5, knn


@needs_fashion
@pytest.mark.skipif(os.environ.get("DEEPCLUSTER_LONG_TESTS") != "1",
                    reason="about 15 minutes: DEEPCLUSTER_LONG_TESTS=1")
def test_knn_of_the_v2_preset_beats_its_random_init(tmp_path):
    cli("pretrain", "--method", "deepcluster-v2", "--first-targets", "backbone", "--precision",
        "32-true", "--knn-every", 3, "--out", tmp_path / "run")
    knn = metric(tmp_path / "run", "knn_top1")  # epoch 0 (the untrained network) and the last
    # bench/study.py's v2b-k300 row (the same recipe in bf16, 2026-12-02/03, seeds 0 and 1):
    # 86.10 and 86.04 against 84.80; 86.15 and 86.75 since the first targets make no pass of
    # their own (2026-12-06); 86.70, 86.90 and 86.27 with the crops of session 18; 87.14, 87.76
    # and 86.90 in the 2 epochs of the backbone's clustering (session 19); 87.65, 87.82 and 87.32
    # with prototype sets of 100 / 300 / 900 clusters (session 30, the first in make demo)
    assert len(knn) == 2 and knn[1] >= knn[0] + 0.5, knn
