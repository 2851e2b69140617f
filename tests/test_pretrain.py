import csv
import warnings

import numpy as np
import pytest
import torch

from deepcluster.checkpoint import load_checkpoint
from deepcluster.clustering import nmi
from deepcluster.config import PretrainConfig
from deepcluster.engine import pretrain
from deepcluster.models import DeepClusterModel, build_backbone

SMALL = dict(data="fashion-mnist", subset=400, arch="small-cnn", k=20, pca_dim=32, batch_size=64,
             extract_batch_size=200, lr=0.05, seed=3, threads=1,  # one thread: any test order
             knn_every=0)  # the online k-NN (of all 10k test images) is tested in test_report


def run(tmp_path, name, resume=None, **changes):
    config = PretrainConfig(**{**SMALL, "out": str(tmp_path / name), **changes})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pretrain(config, resume=resume, progress=False)


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("pretrain")
    return tmp_path, run(tmp_path, "full", epochs=2)


def test_two_epochs_log_every_clustering(two_epochs, fashion_train):
    _, result = two_epochs
    labels = fashion_train.targets[:400]
    assert [row["epoch"] for row in result.history] == [0, 1, 2]
    final = result.history[-1]["nmi_labels"]
    assert final == pytest.approx(nmi(labels, result.assignments))
    for row in result.history[1:]:
        assert 0 < row["loss"] < np.log(20) + 0.5  # cross-entropy over 20 clusters, not 1/k-scaled
        assert row["train_s"] > 0 and row["extract_s"] > 0 and row["cluster_s"] > 0
        assert 0 <= row["nmi_previous"] <= 1
        assert row["smallest_cluster"] >= 1 and row["largest_cluster"] <= 400


def test_outputs_checkpoint_assignments_metrics_and_config(two_epochs):
    tmp_path, result = two_epochs
    out = tmp_path / "full"
    state = load_checkpoint(result.checkpoint)  # weights_only=True inside
    assert state["epoch"] == 2 and state["config"]["k"] == 20
    assert [row["epoch"] for row in state["history"]] == [0, 1, 2]
    assert torch.equal(state["assignments"], torch.from_numpy(result.assignments))
    for epoch in range(3):
        saved = np.load(out / "assignments" / f"epoch_{epoch:03d}.npy")
        assert saved.dtype == np.int32 and saved.shape == (400,)
    np.testing.assert_array_equal(np.load(out / "assignments" / "epoch_002.npy"), result.assignments)
    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert {"loss", "nmi_previous", "nmi_labels", "empty_clusters", "smallest_cluster",
            "largest_cluster", "lr", "extract_s", "cluster_s", "train_s"} <= set(rows[0])
    assert float(rows[2]["loss"]) == pytest.approx(result.history[2]["loss"])
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert not list(out.rglob("*.tmp"))
    # The run folder's config.yaml is the run's config.
    from deepcluster.config import load_yaml_config

    assert load_yaml_config(out / "config.yaml") == PretrainConfig(**{**SMALL, "epochs": 2,
                                                                        "out": str(out)})


def test_resume_gives_the_same_next_epoch(two_epochs):
    tmp_path, full = two_epochs
    first = run(tmp_path, "split", epochs=1)
    resumed = run(tmp_path, "split", resume=first.checkpoint, epochs=2)
    assert [row["epoch"] for row in resumed.history] == [0, 1, 2]
    np.testing.assert_array_equal(resumed.assignments, full.assignments)
    assert resumed.history[2]["loss"] == pytest.approx(full.history[2]["loss"], rel=1e-5)
    a = load_checkpoint(full.checkpoint)["backbone"]
    b = load_checkpoint(resumed.checkpoint)["backbone"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_resume_refuses_a_different_recipe(two_epochs, tmp_path):
    _, full = two_epochs
    with pytest.raises(ValueError, match="config differs.*k: 20 -> 30"):
        run(tmp_path, "other", resume=full.checkpoint, epochs=3, k=30)


def test_more_clusters_than_images_stops_before_training(tmp_path):
    with pytest.raises(ValueError, match="k=500 clusters is more than the 400 images"):
        run(tmp_path, "too-many", epochs=1, k=500)


def test_batch_transforms_in_loader_workers_give_the_same_run(tmp_path):
    # On the CPU with workers, the batched transforms run in the workers' collate; without
    # augmentation (deterministic) that must not change a single assignment or the loss.
    in_main = run(tmp_path, "workers0", epochs=1, augmentation="none", workers=0)
    in_workers = run(tmp_path, "workers1", epochs=1, augmentation="none", workers=1)
    np.testing.assert_array_equal(in_main.assignments, in_workers.assignments)
    assert in_main.history[-1]["loss"] == pytest.approx(in_workers.history[-1]["loss"], rel=1e-5)


def test_persistent_workers_resume_with_the_same_augmentation(tmp_path):
    # The workers live for the whole run and draw each batch's augmentation from the epoch and
    # step alone: a run resumed after epoch 1 trains epoch 2 exactly as the uninterrupted run.
    options = dict(subset=256, k=8, batch_size=64, extract_batch_size=256, workers=2,
                   augmentation="strong", threads=1)
    full = run(tmp_path, "w-full", epochs=2, **options)
    first = run(tmp_path, "w-split", epochs=1, **options)
    resumed = run(tmp_path, "w-split", resume=first.checkpoint, epochs=2, **options)
    np.testing.assert_array_equal(resumed.assignments, full.assignments)
    assert resumed.history[2]["loss"] == full.history[2]["loss"]


def _has_cpp_compiler() -> bool:
    import shutil

    return shutil.which("g++") is not None or shutil.which("c++") is not None


@pytest.mark.skipif(not _has_cpp_compiler(), reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_backbone_trains_as_the_eager_one(tmp_path):
    # Deterministic (no augmentation, 32-bit): the compiled kernels may round differently, but the
    # first clustering and the first epoch's loss agree, and the checkpoint keys are the eager ones.
    options = dict(subset=128, k=8, epochs=1, batch_size=64, extract_batch_size=128,
                   augmentation="none")
    eager = run(tmp_path, "eager", **options)
    compiled = run(tmp_path, "compiled", compile=True, **options)
    assert compiled.history[0]["nmi_labels"] == pytest.approx(eager.history[0]["nmi_labels"],
                                                              abs=0.02)
    assert compiled.history[-1]["loss"] == pytest.approx(eager.history[-1]["loss"], rel=0.02)
    eager_keys = set(load_checkpoint(eager.checkpoint)["backbone"])
    assert set(load_checkpoint(compiled.checkpoint)["backbone"]) == eager_keys


def test_multicrop_v1_trains_on_each_view_with_the_image_target(tmp_path):
    # One strong view at 28 px and two small ones at 12 px, each batch a list of views; the loss
    # is the mean of each view's cross-entropy against the image's cluster id.
    from lightning.fabric import Fabric
    from deepcluster.methods.deepcluster import DeepCluster

    config = PretrainConfig(**{**SMALL, "out": str(tmp_path / "m"), "subset": 64,
                               "augmentation": "strong", "small_crops": 2})
    method = DeepCluster(config, Fabric(accelerator="cpu", devices=1))
    data = method.training_data()
    images = torch.stack([data.images[i][0] for i in range(8)])
    views = data.batch_transform(images)
    assert [tuple(v.shape) for v in views] == [(8, 3, 28, 28), (8, 3, 12, 12), (8, 3, 12, 12)]
    model = method.build_model()
    method.set_assignments(np.arange(64) % 20)
    indices = torch.arange(8)
    targets = torch.as_tensor(np.arange(8) % 20)
    expected = sum(torch.nn.functional.cross_entropy(model(v), targets) for v in views) / 3
    torch.testing.assert_close(method.loss(model, views, indices), expected)


def test_multicrop_v1_run_resumes_as_the_uninterrupted_one(tmp_path):
    options = dict(subset=256, k=8, batch_size=64, extract_batch_size=256, augmentation="strong",
                   small_crops=1, small_crop_size=12)
    full = run(tmp_path, "mc-full", epochs=2, **options)
    one_view = run(tmp_path, "one-view", epochs=2, **{**options, "small_crops": 0})
    assert full.history[1]["loss"] != pytest.approx(one_view.history[1]["loss"], rel=1e-3)
    first = run(tmp_path, "mc-split", epochs=1, **options)
    resumed = run(tmp_path, "mc-split", resume=first.checkpoint, epochs=2, **options)
    np.testing.assert_array_equal(resumed.assignments, full.assignments)
    assert resumed.history[2]["loss"] == full.history[2]["loss"]
    assert load_checkpoint(full.checkpoint)["config"]["small_crops"] == 1


def test_multicrop_v1_needs_the_strong_augmentation(tmp_path):
    with pytest.raises(ValueError, match="small_crops=2 .* augmentation='small' is not 'strong'"):
        run(tmp_path, "mc-small", epochs=1, augmentation="small", small_crops=2)


def test_small_crops_default_per_method_and_old_v1_configs_stay_single_view():
    assert PretrainConfig().small_crops == 0
    assert PretrainConfig(method="deepcluster-v2").small_crops == 2
    # version-1 configs held every field of every method: v2's small_crops=2 was not v1's
    old = PretrainConfig.from_dict({"method": "deepcluster", "small_crops": 2, "small_crop_size": 0})
    assert old.small_crops == 0


def test_hidden_layer_is_kept_across_epochs_and_resumes(tmp_path):
    # --head-hidden puts Linear-BatchNorm-ReLU before the classifier: the epoch's fresh start
    # re-initialises the classifier only, and the checkpoint carries the hidden layer, so a
    # resumed run trains its second epoch as the uninterrupted one.
    options = dict(subset=256, k=8, batch_size=64, extract_batch_size=256, head_hidden=32)
    full = run(tmp_path, "h-full", epochs=2, **options)
    first = run(tmp_path, "h-split", epochs=1, **options)
    resumed = run(tmp_path, "h-split", resume=first.checkpoint, epochs=2, **options)
    np.testing.assert_array_equal(resumed.assignments, full.assignments)
    assert resumed.history[2]["loss"] == full.history[2]["loss"]
    state = load_checkpoint(first.checkpoint)
    assert state["hidden"]["0.weight"].shape == (32, 256)
    assert state["head"]["weight"].shape == (8, 32)

    from lightning.fabric import Fabric
    from deepcluster.methods.deepcluster import DeepCluster

    config = PretrainConfig(**{**SMALL, **options, "out": str(tmp_path / "u")})
    method = DeepCluster(config, Fabric(accelerator="cpu", devices=1))
    model = method.build_model()
    method.load_state_dict(state)  # the trained hidden layer and head of epoch 1
    hidden = {k: v.clone() for k, v in model.hidden.state_dict().items()}
    head = model.head.weight.clone()
    method.before_epoch(1)
    for name, value in model.hidden.state_dict().items():
        torch.testing.assert_close(value, hidden[name])
    assert not torch.equal(model.head.weight, head)
    assert model.head.weight.std().item() == pytest.approx(0.01, rel=0.2)


def test_layer_lr_decay_trains_each_stage_at_its_own_rate(tmp_path):
    # layer_lr_decay 0.5: stage i of five at lr x 0.5^(5 - i), everything above the stages at lr.
    options = dict(subset=256, k=8, batch_size=64, extract_batch_size=256, head_hidden=32,
                   epochs=1, layer_lr_decay=0.5)
    result = run(tmp_path, "decay", **options)
    groups = load_checkpoint(result.checkpoint)["optimizer"]["param_groups"]
    lrs = [group["lr"] for group in groups]
    assert lrs == pytest.approx([0.05 / 16, 0.05 / 8, 0.05 / 4, 0.05 / 2, 0.05, 0.05, 0.05])
    assert [group["momentum"] for group in groups][-2:] == [0.9, 0.0]  # hidden kept; head fresh
    # every trainable parameter of the backbone, hidden layer and head in one group
    model = DeepClusterModel(build_backbone("small-cnn", sobel=True), 8, hidden=32)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(len(group["params"]) for group in groups) == len(trainable)
    plain = load_checkpoint(run(tmp_path, "plain", **{**options, "layer_lr_decay": 1.0}).checkpoint)
    assert len(plain["optimizer"]["param_groups"]) == 2  # as before the option: resumable


COMMON = dict(data="fashion-mnist", subset=400, arch="small-cnn", batch_size=100, lr=0.05, seed=3,
              threads=1, knn_every=0, epochs=1)


@pytest.mark.parametrize("options", [
    dict(k=20, pca_dim=32),
    dict(k=20, pca_dim=32, augmentation="strong", small_crops=1),  # multi-crop's large view
    dict(method="deepcluster-v2", k=10, projection_hidden=32, projection_dim=16),
    dict(method="supervised"),
], ids=["deepcluster", "deepcluster-multicrop", "deepcluster-v2", "supervised"])
def test_crop_min_scale_reaches_every_methods_training_crops(tmp_path, options):
    # Each run is deterministic, so the option changes the first epoch's loss only if it reaches
    # the crops the method trains on.
    losses = [pretrain(PretrainConfig(**COMMON, **options, crop_min_scale=scale,
                                      out=str(tmp_path / f"run{index}")),
                       progress=False).history[-1]["loss"]
              for index, scale in enumerate((0.0, 0.0, 0.9))]
    assert losses[0] == losses[1] and losses[2] != losses[0], losses


@pytest.mark.parametrize("options", [
    dict(k=20, pca_dim=32, augmentation="strong", small_crops=1),
    dict(method="deepcluster-v2", k=10, projection_hidden=32, projection_dim=16),
], ids=["deepcluster-multicrop", "deepcluster-v2"])
def test_small_crop_scale_reaches_the_small_crops(tmp_path, options):
    losses = [pretrain(PretrainConfig(**COMMON, **options, out=str(tmp_path / f"run{index}"),
                                      small_crop_min_scale=low, small_crop_max_scale=high),
                       progress=False).history[-1]["loss"]
              for index, (low, high) in enumerate(((0.0, 0.0), (0.05, 0.14), (0.14, 0.5)))]
    # 0 is SwAV's 0.05-0.14 itself; another range changes what the small crops show
    assert losses[0] == losses[1] and losses[2] != losses[0], losses
