"""The run report, the cluster explorer and the online k-NN, on tiny digits runs (8 px, seconds
each): the k-NN figure of the last epoch is ``benchmark knn``'s on the same checkpoint, the
report loads in headless Chromium without errors or missing images, and the explorer puts every
image in exactly one cluster folder, ranked by a brute-force distance to its centroid."""

import csv
import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from deepcluster.benchmarks.knn import run_knn, weighted_knn_predict
from deepcluster.cli import main
from deepcluster.clustering import cluster_whitened, l2_normalise
from deepcluster.cluster_grids import ranks_in_clusters
from deepcluster.config import PretrainConfig
from deepcluster.data import load_digits_dataset
from deepcluster.engine import pretrain
from deepcluster.engine.history import format_row
from deepcluster.engine.online_knn import KnnAccumulator
from deepcluster.explorer import explore, image_files, whitened_features
from deepcluster.checkpoint import backbone_from_checkpoint
from deepcluster.run_report import write_report

from browser import find_chromium, load_page

TINY = dict(data="digits", image_size=8, k=10, pca_dim=16, batch_size=64, epochs=2, threads=1,
            precision="32-true", seed=1)


def train(out: Path, **changes):
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pretrain(PretrainConfig(**{**TINY, "out": str(out), **changes}), progress=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """2 epochs of DeepCluster on digits' 1437 training images, and benchmark knn of its
    checkpoint in the run folder (where the report finds it)."""
    out = tmp_path_factory.mktemp("report") / "run"
    result = train(out)
    knn = run_knn(result.checkpoint, "digits", out / "knn")
    return out, result, knn


def metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------------------------
# Online k-NN


def test_online_knn_of_the_last_epoch_is_benchmark_knn(tiny_run):
    run, result, knn = tiny_run
    rows = metrics(run)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert all(0 < float(r["knn_top1"]) <= 100 and float(r["knn_s"]) >= 0 for r in rows)
    assert float(rows[-1]["knn_top1"]) == knn["rows"][0]["top1"]
    assert result.history[-1]["knn_top1"] == knn["rows"][0]["top1"]
    assert "k-NN top-1" in format_row(result.history[-1])  # the console line


def test_online_knn_leaves_the_run_unchanged(tiny_run, tmp_path):
    run, result, _ = tiny_run
    plain = train(tmp_path / "plain", knn_every=0)
    assert "knn_top1" not in plain.history[-1]
    assert [r["loss"] for r in plain.history[1:]] == [r["loss"] for r in result.history[1:]]
    for epoch in range(3):
        name = f"epoch_{epoch:03d}.npy"
        np.testing.assert_array_equal(np.load(tmp_path / "plain" / "assignments" / name),
                                      np.load(run / "assignments" / name))


def test_online_knn_every_n_epochs_without_an_extraction_pass(tmp_path):
    # The supervised baseline (as DeepCluster-v2) has no extraction pass: the k-NN extracts the
    # training images itself. It has no row 0 either.
    result = train(tmp_path / "supervised", method="supervised", k=None, pca_dim=None,
                   knn_every=3)
    knn = [row["knn_top1"] for row in result.history]
    assert [math.isnan(value) for value in knn] == [True, False]  # epoch 1: no; 2: the last
    assert knn[-1] == run_knn(result.checkpoint, "digits", tmp_path / "knn")["rows"][0]["top1"]


def test_streamed_neighbours_vote_as_benchmark_knn():
    generator = np.random.default_rng(0)
    train_features = generator.normal(size=(500, 12)).astype(np.float32)
    train_labels = generator.integers(0, 4, 500)
    test_features = generator.normal(size=(70, 12)).astype(np.float32)
    accumulator = KnnAccumulator(torch.from_numpy(test_features), k=20)
    for start, stop in ((0, 7), (7, 300), (300, 500)):  # batches smaller and larger than k
        accumulator.update(torch.from_numpy(train_features[start:stop]),
                           torch.from_numpy(train_labels[start:stop]))
    expected = weighted_knn_predict(train_features, train_labels, test_features)
    assert accumulator.top1(expected, 4) == 100.0


def test_knn_every_on_data_without_labels_is_an_error(image_folder, tmp_path):
    with pytest.raises(ValueError, match="knn_every=1"):
        train(tmp_path / "unlabelled", data=str(image_folder / "loose"), knn_every=1, k=4)


# ----------------------------------------------------------------------------------------------
# The report


@pytest.fixture(scope="module")
def report(tiny_run, tmp_path_factory):
    run, _, _ = tiny_run
    return write_report(run, tmp_path_factory.mktemp("page") / "report", largest=4, random=2,
                        progress=False)


def test_report_holds_curves_sizes_clusters_benchmarks_and_config(tiny_run, report):
    run, result, knn = tiny_run
    html = report.read_text()
    for file in ("loss", "nmi", "knn", "clusters", "seconds", "cluster_sizes"):
        assert (report.parent / "curves" / f"{file}.png").is_file(), file
    assert len(list((report.parent / "clusters").glob("*_nearest.png"))) == 6  # 4 + 2 random
    assert html.count("majority ") == 6 and "random members" in html
    assert f"{knn['rows'][0]['top1']:.2f}" in html and "k-NN (k = 20" in html  # benchmark
    assert "pca_dim: 16" in html  # the config


def test_report_ranks_cluster_members_by_the_distances_the_run_kept(tiny_run, monkeypatch):
    """A v1 run keeps each image's distance to its centroid from its last clustering only, so the
    report ranks members without extracting again; a fresh extraction orders them the same way."""
    from scipy.stats import spearmanr

    import deepcluster.run_report as run_report
    from deepcluster.clustering import centroid_distances
    from deepcluster.datasets import load_dataset

    run, result, _ = tiny_run
    assert [p.name for p in (run / "assignments").glob("distances_*.npy")] == ["distances_002.npy"]
    kept = np.load(run / "assignments" / "distances_002.npy")
    assignments = np.load(run / "assignments" / "epoch_002.npy")
    backbone, config = backbone_from_checkpoint(result.checkpoint)
    features = whitened_features(backbone, load_dataset("digits", "train"), config.image_size,
                                 config.pca_dim, progress=False)
    fresh = centroid_distances(l2_normalise(features), assignments)
    assert spearmanr(kept, fresh).statistic > 0.95
    assert spearmanr(kept, np.random.default_rng(0).permutation(fresh)).statistic < 0.2

    def no_extraction(*args, **kwargs):
        raise AssertionError("the report extracted the features again")

    monkeypatch.setattr(run_report, "whitened_features", no_extraction)
    _, ids, distances, how = run_report.ranked_members(run_report.read_run(run), None, False)
    np.testing.assert_array_equal(ids, assignments)
    np.testing.assert_array_equal(distances, kept)
    assert "that the run clustered" in how


@pytest.mark.skipif(find_chromium() is None,
                    reason="chromium is not installed (scripts/setup_browser.sh installs "
                           "Debian's chromium as root; run 'apt-get install chromium')")
def test_report_and_explorer_pages_load_in_chromium(report, explored, tmp_path):
    for page in (report, explored.page):
        loaded = load_page(page)
        assert loaded.errors == [], page
        assert loaded.broken_images == [] and loaded.image_count >= 7, page
        shot = Image.open(io.BytesIO(loaded.screenshot)).convert("L")
        assert shot.width >= 1000 and shot.height > 900
        histogram = shot.histogram()
        assert max(histogram) < 0.97 * sum(histogram), "blank screenshot"
        assert sum(1 for count in histogram if count) > 32
    broken = tmp_path / "broken.html"  # the check sees what it should
    broken.write_text("<html><body><img src='missing.png'><script>console.error('x')</script>")
    loaded = load_page(broken)
    assert loaded.broken_images == ["missing.png"] and len(loaded.errors) >= 2


def test_report_command_and_a_run_folder_that_is_none(tiny_run, tmp_path):
    run, _, _ = tiny_run
    result = CliRunner().invoke(main, ["report", str(run), "--out", str(tmp_path / "r"),
                                       "--no-grids"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "index.html").is_file() and not (tmp_path / "r" / "clusters").exists()
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code != 0 and "not a pretraining run folder" in result.output


# ----------------------------------------------------------------------------------------------
# The explorer


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """60 digit images as 24 px PNG files: class folders (three digits, 20 each), and the same
    images loose in one folder and a sub-folder of it (unlabelled)."""
    root = tmp_path_factory.mktemp("images")
    digits = load_digits_dataset("test")
    for digit in (0, 1, 7):
        (root / "classes" / str(digit)).mkdir(parents=True)
        for count, index in enumerate(np.flatnonzero(digits.targets == digit)[:20]):
            image = Image.fromarray(digits.images[index]).resize((24, 24)).convert("RGB")
            image.save(root / "classes" / str(digit) / f"{index}.png")
            loose = root / "loose" / ("more" if count % 2 else "")  # images at its top: unlabelled
            loose.mkdir(parents=True, exist_ok=True)
            image.save(loose / f"{digit}_{index}.png")
    return root


@pytest.fixture(scope="module")
def explored(tiny_run, image_folder, tmp_path_factory):
    _, result, _ = tiny_run
    return explore(result.checkpoint, str(image_folder / "classes"), k=5,
                   out=tmp_path_factory.mktemp("explored") / "out", largest=3, random=1,
                   progress=False)


def linked(out: Path) -> dict[Path, list[Path]]:
    """Every file of the cluster folders by what it links to (or its content for copies)."""
    found: dict[Path, list[Path]] = {}
    for entry in sorted((out / "clusters").glob("*/*")):
        found.setdefault(entry.resolve(), []).append(entry)
    return found


def test_explorer_puts_every_image_in_exactly_one_cluster_folder(explored):
    found = linked(explored.out)
    assert sorted(found) == sorted(p.resolve() for p in explored.paths)
    assert all(len(entries) == 1 for entries in found.values())
    assert len(list((explored.out / "clusters").iterdir())) == 5  # one folder per cluster


def test_explorer_csv_matches_the_folders(explored):
    with open(explored.csv) as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["path"]) for r in rows] == explored.paths
    found = linked(explored.out)
    for row in rows:
        (entry,) = found[Path(row["path"]).resolve()]
        assert int(entry.parent.name) == int(row["cluster"])
        assert int(entry.name.split("_", 1)[0]) == int(row["rank"])
        assert entry.name.split("_", 1)[1] == Path(row["path"]).name
    np.testing.assert_allclose([float(r["distance"]) for r in rows], explored.distances,
                               rtol=1e-5)


def test_explorer_ranks_by_distance_to_the_centroid(explored, tiny_run, image_folder):
    # Brute force: the same features and k-means again, every distance to every centroid.
    _, result, _ = tiny_run
    backbone, config = backbone_from_checkpoint(result.checkpoint)
    features = whitened_features(backbone, image_files(str(image_folder / "classes")),
                                 config.image_size, config.pca_dim, progress=False)
    clustering = cluster_whitened(features, 5, 20, 0)
    x = l2_normalise(features).astype(np.float64)
    for i, row in enumerate(x):
        distances = [float(((row - c) ** 2).sum()) for c in clustering.centroids.astype(np.float64)]
        assert explored.assignments[i] == int(np.argmin(distances))
        assert explored.distances[i] == pytest.approx(min(distances), rel=1e-5, abs=1e-9)
    for cluster in range(5):
        members = np.flatnonzero(explored.assignments == cluster)
        by_distance = members[np.argsort(explored.distances[members], kind="stable")]
        assert [int(explored.ranks[m]) for m in by_distance] == list(range(1, len(members) + 1))
    np.testing.assert_array_equal(ranks_in_clusters(explored.assignments, explored.distances),
                                  explored.ranks)


def test_explorer_command_copies_and_refuses_data_in_memory(tiny_run, image_folder, tmp_path):
    _, result, _ = tiny_run
    out = tmp_path / "copied"
    args = ["cluster", "--checkpoint", str(result.checkpoint), "--data",
            str(image_folder / "loose"), "--k", "4", "--out", str(out), "--copy"]
    outcome = CliRunner().invoke(main, args)
    assert outcome.exit_code == 0, outcome.output
    files = [p for p in (out / "clusters").glob("*/*")]
    assert len(files) == 60 and not any(os.path.islink(p) for p in files)
    assert "majority" not in (out / "index.html").read_text()  # unlabelled
    outcome = CliRunner().invoke(main, ["cluster", "--checkpoint", str(result.checkpoint),
                                        "--data", "digits", "--k", "4", "--out", str(out)])
    assert outcome.exit_code != 0 and "'digits' is held in memory" in outcome.output
