"""The linear benchmark: pooled dimensions, frozen backbone, top-k, presets, an end-to-end probe,
the supervised baseline and the results table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from lightning.fabric import Fabric
from PIL import Image
from torch import nn

from deepcluster.api import train_supervised
from deepcluster.benchmarks.linear import (
    LinearProbe,
    build_optimizer,
    freeze,
    head_dims,
    topk_accuracy,
    train_epoch,
)
from deepcluster.benchmarks.linear_config import PRESETS, LinearConfig, default_preset
from deepcluster.benchmarks.linear_features import (
    cache_features,
    cached_batches,
    probe_train_transform,
    streamed_batches,
)
from deepcluster.benchmarks.linear_run import run_linear
from deepcluster.checkpoint import backbone_from_checkpoint, load_checkpoint, save_checkpoint
from deepcluster.cli import main
from deepcluster.config import PretrainConfig
from deepcluster.datasets import load_dataset
from deepcluster.features import make_loader
from deepcluster.models import FEATURE_NAMES, build_backbone
from deepcluster.results import gather, load_results, markdown_table
from deepcluster.transforms import extraction_transform


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained small CNN saved as a pretraining checkpoint for the digits data."""
    config = PretrainConfig(data="digits", arch="small-cnn", image_size=16, seed=0)
    torch.manual_seed(config.seed)
    backbone = build_backbone(config.arch, config.sobel)
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    save_checkpoint({"config": config.to_dict(), "epoch": 0, "backbone": backbone.state_dict()}, path)
    return path


def test_resnet50_pooled_dims_at_224() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("resnet50")
    dims = head_dims(backbone, 224)
    assert dims == {"feature1": 9216, "feature2": 9216, "feature3": 8192, "feature4": 9216,
                    "feature5": 8192, "avgpool": 2048}
    probe = LinearProbe(dims, 1000)
    assert [type(m) for m in probe.heads["feature3"]] == [nn.BatchNorm1d, nn.Linear]
    assert not probe.heads["feature3"][0].affine
    assert isinstance(probe.heads["avgpool"], nn.Linear)  # the published AvgPool head: Linear only


def test_topk_on_a_hand_made_case() -> None:
    logits = torch.tensor([
        [9.0, 8.0, 7.0, 6.0, 5.0, 4.0],   # target 0: top-1 and top-5
        [9.0, 8.0, 7.0, 6.0, 5.0, 4.0],   # target 4: top-5 only (5th largest)
        [9.0, 8.0, 7.0, 6.0, 5.0, 4.0],   # target 5: neither (6th largest)
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],   # target 5: top-1
    ])
    accuracy = topk_accuracy(logits, torch.tensor([0, 4, 5, 5]))
    assert accuracy == {1: 50.0, 5: 75.0}
    # Fewer classes than k: every row is within the top 5.
    assert topk_accuracy(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 0])) == {1: 50.0, 5: 100.0}


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


@pytest.mark.parametrize("mode", ["streamed", "cached"])
def test_backbone_stays_frozen(mode: str) -> None:
    torch.manual_seed(0)
    backbone = build_backbone("small-cnn", sobel=True)
    backbone.train()  # even handed over in training mode, the probe must not move its statistics
    before = _snapshot(backbone)
    freeze(backbone)
    fabric = Fabric(accelerator="cpu", devices=1)
    layers = FEATURE_NAMES + ("avgpool",)
    data = load_dataset("digits", "train").subset(64)
    probe = LinearProbe(head_dims(backbone, 16, layers), 10)
    initial_probe = _snapshot(probe)
    optimizer = build_optimizer(probe, LinearConfig())
    if mode == "streamed":
        backbone.train()
        loader = make_loader(data.with_transform(probe_train_transform("crop-flip", 16)), 16, 0,
                             shuffle=True)
        batches = streamed_batches(fabric, backbone, loader, layers, "test")
    else:
        cache = cache_features(backbone, data.with_transform(extraction_transform(16)), layers,
                               "float16", 32, 0, torch.device("cpu"), "test")
        assert all(values.dtype == torch.float16 for values in cache[0].values())
        batches = cached_batches(*cache, 16, torch.Generator().manual_seed(0), torch.device("cpu"))
    losses = train_epoch(fabric, probe, optimizer, batches)
    assert set(losses) == set(layers)
    assert all(p.grad is None for p in backbone.parameters())
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not backbone.training
    after = _snapshot(backbone)
    for name, value in before.items():  # weights, running_mean/var and num_batches_tracked
        assert torch.equal(value, after[name]), name
    assert not torch.equal(initial_probe["heads.feature5.1.weight"], probe.heads["feature5"][1].weight)


def test_presets_follow_the_published_schedules() -> None:
    mhead = PRESETS["imagenet-mhead"]
    assert (mhead.heads, mhead.epochs, mhead.lr, mhead.nesterov, mhead.momentum,
            mhead.weight_decay, mhead.milestones, mhead.batch_size, mhead.augmentation) == \
        ("mhead", 90, 0.01, True, 0.9, 1e-4, (30, 60), 256, "imagenet-mhead")
    assert mhead.layers == FEATURE_NAMES  # all five heads, not MMSelfSup 1.x's four
    avgpool = PRESETS["imagenet-avgpool"]
    assert (avgpool.heads, avgpool.epochs, avgpool.lr, avgpool.weight_decay, avgpool.milestones,
            avgpool.augmentation, avgpool.avgpool_bn) == ("avgpool", 100, 30.0, 0.0, (60, 80),
                                                          "crop-flip", False)
    places = PRESETS["places205-mhead"]
    assert (places.epochs, places.milestones, places.augmentation) == (28, (7, 14, 21), "places")
    inat = PRESETS["inat18-mhead"]
    assert (inat.epochs, inat.milestones) == (84, (24, 48, 72))
    assert PRESETS["fashion-mnist-mhead"].cached
    assert not mhead.cached and not places.cached
    assert default_preset("imagenet:/data/in1k", "avgpool") == "imagenet-avgpool"
    assert default_preset("places205:/data/p", None) == "places205-mhead"
    assert default_preset("mnist", None) == "fashion-mnist-mhead"


def test_no_weight_decay_on_norm_layers() -> None:
    probe = LinearProbe({"feature1": 8, "avgpool": 4}, 3, avgpool_batch_norm=False)
    probe.heads["feature1"][0] = nn.BatchNorm1d(8, affine=True)  # a norm layer with parameters
    optimizer = build_optimizer(probe, PRESETS["imagenet-mhead"])
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay[id(probe.heads["feature1"][0].weight)] == 0.0
    assert decay[id(probe.heads["feature1"][0].bias)] == 0.0
    assert decay[id(probe.heads["feature1"][1].weight)] == 1e-4
    assert decay[id(probe.heads["avgpool"].weight)] == 1e-4
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in optimizer.param_groups)


@pytest.mark.parametrize("name", ["imagenet-mhead", "crop-flip", "places", "none"])
def test_train_transforms_give_normalised_crops(name: str) -> None:
    torch.manual_seed(0)
    image = Image.new("L", (40, 30), color=128)
    out = probe_train_transform(name, 32)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


def test_end_to_end_probe_on_digits_beats_chance(checkpoint: Path, tmp_path: Path) -> None:
    config = LinearConfig(data="digits", epochs=4, milestones=(3,), lr=0.1, subset=800)
    results = run_linear(checkpoint, config, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["heads"] == results["heads"]
    assert set(saved["heads"]) == set(FEATURE_NAMES) | {"avgpool"}
    for head, metrics in saved["heads"].items():
        assert metrics["top1"] > 50.0, head  # chance is 10 %
        assert metrics["top5"] >= metrics["top1"]
    assert saved["label"] == "deepcluster" and saved["mode"] == "cached"
    assert saved["test_images"] == 360 and saved["num_classes"] == 10
    assert (tmp_path / "run" / "probe.ckpt").is_file()


def test_cli_random_init_supervised_and_results(checkpoint: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    supervised = train_supervised(checkpoint, tmp_path / "sup", epochs=1, subset=256,
                                  progress=False)
    state = load_checkpoint(supervised)
    assert {"config", "epoch", "backbone", "head", "optimizer", "rng", "history"} <= set(state)
    assert state["config"]["method"] == "supervised" and state["epoch"] == 1
    backbone_from_checkpoint(supervised)  # every benchmark can load it
    common = ["--data", "digits", "--epochs", "1", "--milestones", "", "--subset", "300",
              "--test-subset", "100"]
    for name, extra in (("random", ["--checkpoint", str(checkpoint), "--random-init"]),
                        ("sup", ["--checkpoint", str(supervised), "--heads", "mhead"])):
        result = runner.invoke(main, ["benchmark", "linear", *extra, *common,
                                      "--out", str(tmp_path / f"run-{name}")])
        assert result.exit_code == 0, result.output
        assert "Feature1" in result.output and "AvgPool" in result.output
    report = tmp_path / "table.md"
    result = runner.invoke(main, ["results", str(tmp_path / "run-random"), str(tmp_path / "run-sup"),
                                  "--out", str(report)])
    assert result.exit_code == 0, result.output
    text = report.read_text()
    assert "| Model | Dataset | Feature1 | Feature2 | Feature3 | Feature4 | Feature5 | AvgPool |" in text
    rows = [line for line in text.splitlines() if line.startswith("| random init") or
            line.startswith("| supervised")]
    assert len(rows) == 4  # two rows in each of the top-1 and top-5 tables
    assert rows[1].split("|")[8].strip() == "–"  # the supervised run had no AvgPool head

    bad = runner.invoke(main, ["benchmark", "linear", "--checkpoint", str(checkpoint),
                               "--out", str(tmp_path / "bad"), "--heads", "mhead",
                               "--milestones", "5,x"])
    assert bad.exit_code != 0 and "--milestones '5,x'" in bad.output


def test_results_gathering_merges_and_refuses_duplicates(tmp_path: Path) -> None:
    def write(name: str, label: str, heads: dict) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(
            {"benchmark": "linear", "label": label, "data": "fashion-mnist", "heads": heads,
             "seconds": {"total": 65.0}}))
        return folder

    mhead = write("m", "deepcluster", {f"feature{i}": {"top1": 80.0 + i, "top5": 99.0}
                                       for i in range(1, 6)})
    avg = write("a", "deepcluster", {"avgpool": {"top1": 70.5, "top5": 98.0}})
    rows = gather([load_results(mhead), load_results(avg)])
    assert len(rows) == 1
    table = markdown_table(rows)
    assert "| deepcluster | fashion-mnist | 81.00 | 82.00 | 83.00 | 84.00 | 85.00 | 70.50 | 2 min 10 s |" in table
    with pytest.raises(ValueError, match="feature1 of 'deepcluster' on 'fashion-mnist' is already given"):
        gather([load_results(mhead), load_results(mhead)])
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "results.json").write_text('{"benchmark": "knn"}')
    with pytest.raises(ValueError, match="not a linear-benchmark result"):
        load_results(tmp_path / "k")
