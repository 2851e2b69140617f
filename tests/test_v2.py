import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from deepcluster.checkpoint import backbone_from_checkpoint, load_checkpoint
from deepcluster.config import PretrainConfig
from deepcluster.models import build_backbone
from deepcluster.clustering import torch_kmeans
from deepcluster.engine import pretrain
from deepcluster.engine.loaders import IndexedImages
from deepcluster.engine.schedule import learning_rate
from deepcluster.methods.deepcluster_v2 import DeepClusterV2, DeepClusterV2Model, cluster_memory
from deepcluster.transforms import MultiCrop, _ToFloatRGB, extraction_pipeline, multicrop_pipeline

SMALL = dict(method="deepcluster-v2", data="fashion-mnist", subset=400, arch="small-cnn", k=20,
             batch_size=100, lr=0.05, warmup_epochs=0.5, lr_schedule="cosine",
             projection_hidden=64, projection_dim=32, small_crops=1, seed=5)


def normalised(*shape: int) -> torch.Tensor:
    return nn.functional.normalize(torch.randn(*shape), dim=-1)


def test_prototypes_are_the_normalised_centroids_of_the_memory_bank():
    memory = normalised(2, 300, 16)
    assignments, prototypes = cluster_memory(memory, k=10, sets=3, iterations=5, seed=1)
    assert assignments.shape == (3, 300) and prototypes.shape == (3, 10, 16)
    for s in range(3):
        bank = memory[s % 2]  # set s clusters bank s mod 2
        for c in range(10):
            members = bank[assignments[s] == c]
            assert len(members) > 0
            expected = nn.functional.normalize(members.mean(dim=0), dim=0)
            torch.testing.assert_close(prototypes[s, c], expected, atol=1e-5, rtol=1e-5)
    # different seeds: the two sets on bank 0 are different k-means runs
    assert not torch.equal(prototypes[0], prototypes[2])


def test_an_empty_cluster_keeps_its_centroid():
    near_east = nn.functional.normalize(torch.tensor([1.0, 0.0, 0.0]) + 0.1 * torch.randn(50, 3), dim=1)
    west = torch.tensor([-1.0, 0.0, 0.0])
    init = torch.stack([near_east[0], near_east[1], west])
    assignments, centroids, _ = torch_kmeans(near_east, 3, iterations=4, init=init, spherical=True)
    assert (assignments == 2).sum() == 0
    assert torch.equal(centroids[2], west)
    assert set(assignments.tolist()) == {0, 1}
    torch.testing.assert_close(centroids.norm(dim=1), torch.ones(3))


@pytest.mark.parametrize("in_memory", [True, False])
def test_multicrop_gives_the_configured_number_and_sizes_of_views(fashion_train, in_memory):
    pipeline = multicrop_pipeline(28, large=2, small=3, small_size=0, in_memory=in_memory)
    dataset = fashion_train.subset(8).with_transform(pipeline.sample)
    loader = DataLoader(dataset, batch_size=4)
    views = pipeline.batch(next(iter(loader))[0])
    assert [tuple(v.shape) for v in views] == [(4, 3, 28, 28)] * 2 + [(4, 3, 12, 12)] * 3
    assert not torch.equal(views[0], views[1])  # two random crops, not one view twice
    explicit = multicrop_pipeline(28, large=1, small=2, small_size=16, in_memory=in_memory)
    loader = DataLoader(fashion_train.subset(4).with_transform(explicit.sample), batch_size=4)
    assert [v.shape[-1] for v in explicit.batch(next(iter(loader))[0])] == [28, 16, 16]


def test_the_memory_bank_is_filled_from_the_training_pass_in_dataset_order(fashion_train):
    images = fashion_train.subset(64)
    extraction = extraction_pipeline(28, in_memory=True)
    small = nn.Sequential(_ToFloatRGB(12), *list(extraction.batch)[1:])
    views = MultiCrop(extraction.batch, small, large=2, small=1)  # deterministic views
    model = DeepClusterV2Model(build_backbone("small-cnn", sobel=True), 32, 16, sets=1, k=5)
    memory = torch.zeros(2, 64, 16)
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=1)
    generator = torch.Generator().manual_seed(0)
    # One shuffled batch holding every image: BatchNorm's batch statistics do not depend on the
    # order, so each image's embedding is the same as in a dataset-order pass.
    indexed = IndexedImages(images.with_transform(extraction.sample))
    loader = DataLoader(indexed, batch_size=64,
                        shuffle=True, generator=generator)
    assert next(iter(loader))[1].tolist() != list(range(64))
    method = DeepClusterV2(PretrainConfig(**SMALL), fabric)
    method.memory = memory
    model.train()
    with torch.no_grad():
        for batch, indices in loader:
            method.remember(model, views(batch), indices)
    x = extraction.batch(torch.stack([images.with_transform(extraction.sample)[i][0]
                                      for i in range(64)]))
    with torch.no_grad():
        expected = model.embed([x, x]).view(2, 64, 16)
    torch.testing.assert_close(memory, expected, atol=1e-5, rtol=1e-4)


def test_learning_rate_warms_up_then_follows_the_cosine():
    config = PretrainConfig(lr=0.4, epochs=4, warmup_epochs=1, lr_schedule="cosine")
    lrs = [learning_rate(config, step, steps_per_epoch=10) for step in range(40)]
    assert lrs[0] == pytest.approx(0.04) and lrs[9] == pytest.approx(0.4)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[10] == pytest.approx(0.4) and lrs[-1] < 0.01


def run(tmp_path, name, resume=None, **changes):
    config = PretrainConfig(**{**SMALL, "out": str(tmp_path / name), **changes})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pretrain(config, resume=resume, progress=False)


def test_v2_pretraining_learns_writes_v1_compatible_checkpoints_and_resumes(tmp_path,
                                                                            fashion_train):
    result = run(tmp_path, "v2", epochs=2, keep_every=1)
    assert [row["epoch"] for row in result.history] == [0, 1, 2]
    kept = sorted(p.name for p in result.checkpoint.parent.glob("epoch_*.ckpt"))
    assert kept == ["epoch_001.ckpt", "epoch_002.ckpt"]
    assert load_checkpoint(result.checkpoint.parent / "epoch_001.ckpt")["epoch"] == 1
    losses = [row["loss"] for row in result.history[1:]]
    assert all(np.isfinite(losses)) and losses[1] < losses[0]  # it fits its own prototypes
    state = load_checkpoint(result.checkpoint)
    assert state["epoch"] == 2 and state["memory"].shape == (2, 400, 32)
    torch.testing.assert_close(state["memory"].norm(dim=2), torch.ones(2, 400))
    assert state["prototypes"].shape == (3, 20, 32)
    assert len(result.assignments) == 400
    # Every benchmark reads the backbone as from a v1 checkpoint; training changed it.
    trained, config = backbone_from_checkpoint(result.checkpoint)
    untrained, _ = backbone_from_checkpoint(result.checkpoint, random_init=True)
    assert config.method == "deepcluster-v2"
    assert not torch.equal(trained.stages[0][0].weight, untrained.stages[0][0].weight)
    # The cosine schedule was planned over 2 epochs: a third would change it, so it is refused.
    with pytest.raises(ValueError, match="planned over 2 epochs"):
        run(tmp_path, "v2", resume=result.checkpoint, epochs=3)
