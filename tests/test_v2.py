import warnings

import numpy as np
import pytest
import torch
from lightning.fabric import Fabric
from torch import nn
from torch.utils.data import DataLoader

from deepcluster.checkpoint import backbone_from_checkpoint, load_checkpoint
from deepcluster.config import PretrainConfig
from deepcluster.models import build_backbone
from deepcluster.clustering import torch_kmeans
from deepcluster.engine import pretrain
from deepcluster.engine.loaders import IndexedImages
from deepcluster.engine.schedule import learning_rate
from deepcluster.methods.deepcluster_v2 import (DeepClusterV2, DeepClusterV2Model, cluster_memory,
                                                swapped_loss)
from deepcluster.transforms import MultiCrop, _ToFloatRGB, extraction_pipeline, multicrop_pipeline

SMALL = dict(method="deepcluster-v2", data="fashion-mnist", subset=400, arch="small-cnn", k=20,
             batch_size=100, lr=0.05, warmup_epochs=0.5, lr_schedule="cosine",
             projection_hidden=64, projection_dim=32, small_crops=1, seed=5,
             knn_every=0)  # the online k-NN (of all 10k test images) is tested in test_report


def normalised(*shape: int) -> torch.Tensor:
    return nn.functional.normalize(torch.randn(*shape), dim=-1)


def test_prototypes_are_the_normalised_centroids_of_the_memory_bank():
    memory = normalised(2, 300, 16)
    assignments, prototypes = cluster_memory(memory, [10] * 3, iterations=5, seed=1)
    assert assignments.shape == (3, 300) and [p.shape for p in prototypes] == [(10, 16)] * 3
    for s in range(3):
        bank = memory[s % 2]  # set s clusters bank s mod 2
        for c in range(10):
            members = bank[assignments[s] == c]
            assert len(members) > 0
            expected = nn.functional.normalize(members.mean(dim=0), dim=0)
            torch.testing.assert_close(prototypes[s][c], expected, atol=1e-5, rtol=1e-5)
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
    model = DeepClusterV2Model(build_backbone("small-cnn", sobel=True), 32, 16, [5])
    memory = torch.zeros(2, 64, 16)
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


def test_backbone_first_targets_are_v1s_first_clustering(tmp_path):
    """first_targets=backbone: epoch 1 trains on exactly the clustering v1 starts from (same seed,
    same untrained backbone, clustered before the bank's pass moves the BatchNorm statistics)."""
    options = dict(subset=200, k=10, pca_dim=16, kmeans_iters=5, batch_size=100, epochs=1,
                   knn_every=0)  # knn_every for the v1 run (SMALL has it for v2)
    v2 = run(tmp_path, "v2", first_targets="backbone", **options)
    v1 = pretrain(PretrainConfig(data="fashion-mnist", seed=5, out=str(tmp_path / "v1"), **options),
                  progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "v2" / "assignments" / "epoch_000.npy"),
                                  np.load(tmp_path / "v1" / "assignments" / "epoch_000.npy"))
    assert v2.history[0]["nmi_labels"] == v1.history[0]["nmi_labels"]


def test_backbone_first_targets_bank_the_projection_of_their_own_extraction(fashion_train):
    """first_targets=backbone makes no pass of its own: the bank the first prototypes average is
    the projector (train mode, batch by batch) of the features the clustering extracted."""
    from types import SimpleNamespace

    config = PretrainConfig(**{**SMALL, "subset": 200, "k": 10, "pca_dim": 16, "kmeans_iters": 5,
                               "first_targets": "backbone", "extract_batch_size": 64})
    method = DeepClusterV2(config, Fabric(accelerator="cpu", devices=1))
    method.training_data()
    method.build_model()
    passes = []
    run_context = SimpleNamespace(feature_sink=None, data=SimpleNamespace(labels=None),
                                  forward_pass=lambda *args: passes.append(args))
    refresh = method.initial_targets(run_context)
    assert passes == [] and refresh.seconds.get("train_s", 0.0) == 0.0
    extraction = extraction_pipeline(28, in_memory=True)
    images = fashion_train.subset(200).with_transform(extraction.sample)
    x = extraction.batch(torch.stack([images[i][0] for i in range(200)]))
    # The backbone in eval mode, as extracted; the projector in train mode, in batches of 64 as
    # extracted (its BatchNorm's statistics are the batch's)
    backbone, projector = method.model.backbone.eval(), method.model.projector.train()
    with torch.no_grad():
        expected = torch.cat([nn.functional.normalize(projector(backbone(batch)), dim=1)
                              for batch in x.split(64)])
    torch.testing.assert_close(method.memory[0], expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(method.memory[1], expected, atol=1e-4, rtol=1e-4)
    ids = method.targets[0]
    for c in range(10):
        mean = nn.functional.normalize(expected[ids == c].mean(0), dim=0)
        torch.testing.assert_close(method.model.prototypes[0, c], mean, atol=1e-4, rtol=1e-4)


def test_each_sets_prototypes_are_the_mean_embeddings_of_its_own_clustering():
    from types import SimpleNamespace

    from deepcluster.clustering import ClusteringResult

    method = DeepClusterV2(PretrainConfig(**SMALL), Fabric(accelerator="cpu", devices=1))
    method.build_model()
    method.memory = normalised(2, 60, 32)
    random_prototypes = method.model.prototypes.clone()
    # Set s has its own clustering; cluster 19 of k = 20 stays empty in every one
    all_ids = [np.roll(np.arange(60) % 19, s) for s in range(3)]
    clusterings = [ClusteringResult(ids, np.zeros((20, 4), np.float32), 0.0, 0.0)
                   for ids in all_ids]
    refresh = method.start_from(clusterings, 0.0,
                                SimpleNamespace(data=SimpleNamespace(labels=None)))
    assert refresh.stats["empty_clusters"] == 1
    np.testing.assert_array_equal(method.assignments, all_ids[0])  # the first one is logged
    for s, ids in enumerate(all_ids):
        np.testing.assert_array_equal(method.targets[s].numpy(), ids)
        for c in range(19):
            expected = nn.functional.normalize(method.memory[s % 2][ids == c].mean(0), dim=0)
            torch.testing.assert_close(method.model.prototypes[s, c], expected)
        assert torch.equal(method.model.prototypes[s, 19], random_prototypes[s, 19])


def test_a_backbone_bank_takes_every_epochs_targets_from_v1s_clustering_of_the_backbone(tmp_path):
    """bank=backbone: the clustering after epoch 1 is v1's clustering (extraction, PCA, k-means
    with the epoch's seed) of the backbone that epoch trained; the other prototype sets are
    k-means runs of the same features with other seeds, and every set's prototypes are its
    clusters' mean embeddings of the projected features."""
    from deepcluster.clustering import nmi
    from deepcluster.methods.deepcluster import cluster_backbone

    options = dict(subset=200, k=10, pca_dim=16, kmeans_iters=5, epochs=1, precision="32-true")
    result = run(tmp_path, "backbone", bank="backbone", **options)
    state = load_checkpoint(result.checkpoint)
    config = PretrainConfig(**{**SMALL, **options, "bank": "backbone"})
    method = DeepClusterV2(config, Fabric(accelerator="cpu", devices=1, precision="32-true"))
    method.training_data()
    method.build_model()
    method.model.backbone.load_state_dict(state["backbone"])
    seed = config.seed + 1
    expected, _ = cluster_backbone(method.model.backbone, method.eval_set, method.eval_batch,
                                   config, method.fabric, seeds=[seed, seed + 1000, seed + 2000])
    after_epoch_1 = np.load(tmp_path / "backbone" / "assignments" / "epoch_001.npy")
    np.testing.assert_array_equal(after_epoch_1, expected[0].assignments)
    assert len(state["assignments"]) == len(expected) == 3
    for s, (ids, clustering) in enumerate(zip(state["assignments"], expected)):
        np.testing.assert_array_equal(ids.numpy(), clustering.assignments)
        for c in ids.unique():
            mean = nn.functional.normalize(state["memory"][s % 2][ids == c].mean(0), dim=0)
            torch.testing.assert_close(state["prototypes"][s, c], mean, atol=1e-5, rtol=1e-5)
    assert nmi(expected[0].assignments, expected[1].assignments) < 0.99  # not one clustering
    assert result.history[1]["nmi_previous"] is not None and result.history[1]["extract_s"] > 0


def test_a_clean_bank_holds_the_eval_mode_embeddings_of_unaugmented_images(tmp_path,
                                                                          fashion_train):
    result = run(tmp_path, "clean", subset=200, k=10, epochs=1, bank="clean", kmeans_iters=5)
    state = load_checkpoint(result.checkpoint)
    model = DeepClusterV2Model(build_backbone("small-cnn", sobel=True), 64, 32, [10] * 3)
    model.backbone.load_state_dict(state["backbone"])
    model.projector.load_state_dict(state["projector"])
    extraction = extraction_pipeline(28, in_memory=True)
    images = fashion_train.subset(200).with_transform(extraction.sample)
    x = extraction.batch(torch.stack([images[i][0] for i in range(200)]))
    with torch.no_grad():
        expected = model.eval().embed([x])
    torch.testing.assert_close(state["memory"][0], expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(state["memory"][1], expected, atol=1e-4, rtol=1e-4)
    assert result.history[1]["extract_s"] > 0  # the clean pass is timed as an extraction


def test_sampling_clusters_gives_every_cluster_of_the_first_set_an_equal_share():
    """sampling=clusters trains on v1's order: a cluster holding half the images gets about a
    21st of the epoch, not half; the default order visits every image once."""
    from collections import Counter

    fabric = Fabric(accelerator="cpu", devices=1)
    ids = np.r_[np.zeros(200, np.int64), np.repeat(np.arange(1, 21), 10)]  # cluster 0: half
    orders = {}
    for sampling in ("images", "clusters"):
        method = DeepClusterV2(PretrainConfig(**SMALL, bank="backbone", sampling=sampling), fabric)
        method.memory = torch.zeros(2, 400, 32)
        method.set_assignments(torch.from_numpy(np.stack([ids, ids[::-1], ids])))
        orders[sampling] = np.asarray(method.epoch_order(0, world=1))
    assert sorted(orders["images"]) == list(range(400))
    shares = Counter(ids[orders["clusters"]].tolist())
    assert len(orders["clusters"]) == 400 and len(shares) == 21
    assert max(shares.values()) <= 400 // 21 + 1  # 20 drawn from each cluster, then cut to 400


def test_sampling_clusters_is_refused_with_the_bank_the_training_pass_writes():
    with pytest.raises(ValueError, match="sampling='clusters'.*bank='training'"):
        PretrainConfig(**SMALL, sampling="clusters")  # SMALL keeps the default bank, training
    PretrainConfig(**SMALL, sampling="clusters", bank="clean")


@pytest.mark.parametrize("bank", ["training", "backbone"])
def test_k_factor_gives_each_prototype_set_its_own_number_of_clusters(tmp_path, bank):
    """k=5, k_factor=2: sets of 5, 10 and 20 clusters, from the bank's k-means or from v1's
    clustering of the backbone, each set's prototypes its clusters' mean embeddings."""
    options = dict(subset=200, k=5, k_factor=2.0, pca_dim=16, kmeans_iters=5, epochs=1,
                   bank=bank)
    state = load_checkpoint(run(tmp_path, bank, **options).checkpoint)
    sizes = [5, 10, 20]
    assert state["prototypes"].shape == (3, 20, 32)
    for ids, k in zip(state["assignments"], sizes):
        assert ids.max() < k and len(ids.unique()) > k // 2  # not the first set's 5 clusters
    for s, k in enumerate(sizes):
        bank_s = state["memory"][s % 2]
        for c in state["assignments"][s].unique():
            members = bank_s[state["assignments"][s] == c]
            expected = nn.functional.normalize(members.mean(0), dim=0)
            torch.testing.assert_close(state["prototypes"][s, c], expected, atol=1e-4, rtol=1e-4)


def test_the_loss_scores_each_set_against_its_own_prototypes_only():
    """With sets of 5, 10 and 20 in one (3, 20, dim) buffer, the loss of sets 0 and 1 leaves out
    their unused rows: scored against all 20, their softmax would spread over random prototypes."""
    config = PretrainConfig(**{**SMALL, "k": 5, "k_factor": 2.0, "bank": "backbone"})
    method = DeepClusterV2(config, Fabric(accelerator="cpu", devices=1))
    model = method.build_model().eval()
    views = [torch.rand(4, 3, 28, 28), torch.rand(4, 3, 28, 28)]
    method.targets = torch.tensor([[0, 1, 2, 4], [0, 3, 6, 9], [0, 5, 10, 19]])
    with torch.no_grad():
        loss = method.loss(model, views, torch.arange(4))
        embeddings = model(views)
        own_rows = [model.prototypes[s, :k] for s, k in enumerate([5, 10, 20])]
        expected = swapped_loss(embeddings, own_rows, method.targets, 2, config.temperature)
        every_row = swapped_loss(embeddings, model.prototypes, method.targets, 2,
                                 config.temperature)
    torch.testing.assert_close(loss, expected)
    assert not torch.isclose(loss, every_row)


def test_a_k_factor_that_gives_a_set_more_clusters_than_images_is_refused(tmp_path):
    with pytest.raises(ValueError, match="k_factor=3.0 gives the last prototype set 180 clusters, "
                                         "more than the 100 images"):
        run(tmp_path, "too-many", subset=100, k=20, k_factor=3.0, epochs=1)
