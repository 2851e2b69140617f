"""VOC07 SVM and low-shot SVM: the metric, the protocol details, and an end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from joblib import Parallel

from deepcluster.benchmarks import svm
from deepcluster.benchmarks.svm import (LOWSHOT_KS, MMSELFSUP_COSTS, VISSL_COSTS,
                                        ap_ignoring_difficult, lowshot_sample, train_labels, voc_ap,
                                        voc_ap_11point)
from deepcluster.benchmarks.svm_evaluation import lowshot_evaluate, svm_evaluate


# ----------------------------------------------------------------------------------------------
# VOC AP


def reference_all_point_ap(positive, scores):
    """The definition, written plainly: rank by score; for each positive (each recall step of
    1/P), the best precision reached at that recall or beyond; their mean."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    hits = [bool(positive[i]) for i in order]
    total = sum(hits)
    precisions, recalls, tp = [], [], 0
    for rank, hit in enumerate(hits, start=1):
        tp += hit
        precisions.append(tp / rank)
        recalls.append(tp / total)
    ap = 0.0
    for step in range(1, total + 1):
        reachable = [p for p, r in zip(precisions, recalls) if r >= step / total - 1e-12]
        ap += max(reachable) / total
    return ap


def test_voc_ap_by_hand():
    # Ranked: + - + - - +  -> precisions at the positives 1, 2/3, 3/6.
    positive = np.array([1, 0, 1, 0, 0, 1], dtype=bool)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    assert voc_ap(positive, scores) == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    # The VOC2007 11-point version: recall >= 0, .1, .2, .3 -> 1; .4, .5, .6 -> 2/3; .7 ... 1 -> 1/2.
    assert voc_ap_11point(positive, scores) == pytest.approx((4 * 1 + 3 * 2 / 3 + 4 * 0.5) / 11)
    assert voc_ap(positive, scores) != pytest.approx(voc_ap_11point(positive, scores), abs=1e-3)
    # Interpolation: a later, higher precision lifts the earlier recall level.
    # Ranked: - + + -> precisions 1/2, 2/3; all-point 2/3 for both recall steps.
    assert voc_ap([0, 1, 1], [3.0, 2.0, 1.0]) == pytest.approx(2 / 3)
    assert voc_ap([1, 1, 0], [3.0, 2.0, 1.0]) == 1.0
    assert np.isnan(voc_ap([0, 0], [1.0, 2.0]))
    # Input order does not matter, only the ranking.
    perm = np.array([3, 0, 5, 1, 4, 2])
    assert voc_ap(positive[perm], scores[perm]) == pytest.approx(voc_ap(positive, scores))


def test_voc_ap_matches_the_definition_on_random_scores():
    rng = np.random.default_rng(0)
    differ = 0
    for trial in range(40):
        n = int(rng.integers(5, 60))
        positive = rng.random(n) < 0.3
        positive[rng.integers(n)] = True
        scores = rng.normal(size=n) + positive * rng.uniform(0, 2)
        assert voc_ap(positive, scores) == pytest.approx(reference_all_point_ap(positive, scores))
        differ += abs(voc_ap(positive, scores) - voc_ap_11point(positive, scores)) > 1e-3
    assert differ > 30  # the 11-point metric is a different number almost always


def test_voc_ap_is_not_sklearns_average_precision():
    from sklearn.metrics import average_precision_score

    positive, scores = [0, 1, 1], [3.0, 2.0, 1.0]
    # scikit-learn does not interpolate: (1/2 + 2/3) / 2.
    assert average_precision_score(positive, scores) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert voc_ap(positive, scores) == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------------------------
# The protocol: costs, SVM settings, difficult images


def test_cost_lists_are_exactly_the_references():
    # MMSelfSup svm_helper.parse_cost_list("1.0,10.0,100.0"): the list, then 0.5 ** 4 .. 0.5 ** 19.
    mmselfsup = [float(c) for c in "1.0,10.0,100.0".split(",")] + [0.5 ** n for n in range(4, 20)]
    assert list(MMSELFSUP_COSTS) == mmselfsup
    assert len(MMSELFSUP_COSTS) == 19
    assert MMSELFSUP_COSTS[3] == 0.0625 and MMSELFSUP_COSTS[-1] == 1.9073486328125e-06
    assert list(VISSL_COSTS) == [0.01, 0.1, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 50.0, 100.0, 1000.0]
    assert svm.cost_list("mmselfsup") is MMSELFSUP_COSTS and svm.cost_list("vissl") is VISSL_COSTS
    with pytest.raises(ValueError, match="unknown cost list"):
        svm.cost_list("other")


def test_svm_settings_are_the_references():
    params = svm.linear_svc(0.5).get_params()
    assert params["C"] == 0.5
    assert params["loss"] == "squared_hinge" and params["penalty"] == "l2"
    assert params["dual"] is True and params["tol"] == 1e-4 and params["max_iter"] == 2000
    assert params["class_weight"] == {1: 2, -1: 1}
    assert params["intercept_scaling"] == 1.0 and params["fit_intercept"] is True


def test_layers_match_the_extractor():
    from deepcluster.features import LAYERS

    assert svm.LAYERS == LAYERS


def test_rows_are_l2_normalised():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    out = svm.normalise_rows(x)
    assert out.dtype == np.float32
    assert out[0] == pytest.approx([3 / (5 + 1e-5), 4 / (5 + 1e-5)])
    assert (out[1] == 0).all()


def test_difficult_is_negative_in_training_and_ignored_in_testing(monkeypatch):
    assert train_labels(np.array([1, -1, 0, 1])).tolist() == [1, -1, -1, 1]
    flags = np.array([1, -1, 0, 1, 0, -1])
    scores = np.array([0.5, 0.1, 9.0, 0.4, -9.0, 0.3])
    # The difficult images (score 9 and -9) change nothing.
    assert ap_ignoring_difficult(flags, scores) == voc_ap([1, 0, 1, 0], [0.5, 0.1, 0.4, 0.3])
    assert ap_ignoring_difficult(flags, scores) == 1.0

    # End to end: separable data; test images marked difficult look like the opposite class.
    rng = np.random.default_rng(0)
    n, dim = 60, 8
    truth = np.arange(n) % 3 == 0
    base = np.where(truth[:, None], 1.0, -1.0) * np.eye(dim)[0] + 0.05 * rng.normal(size=(n, dim))
    train_flags = np.where(truth, 1, -1)[:, None].astype(np.int8)
    train_flags[[1, 2, 4]] = 0  # difficult, with negative-looking features: fine as negatives
    test_flags = np.where(truth, 1, -1)[:, None].astype(np.int8)
    test_features = base.copy()
    flipped = [0, 1, 3, 4]  # marked difficult and given the other class's features
    test_flags[flipped] = 0
    test_features[flipped] *= -1
    features = svm.normalise_rows(base.astype(np.float32))
    test_features = svm.normalise_rows(test_features.astype(np.float32))

    seen = []
    original = svm._fit_costs

    def spy(x, y, costs, seed):
        seen.append((len(x), y.copy()))
        return original(x, y, costs, seed)

    monkeypatch.setattr(svm, "_fit_costs", spy)
    result = svm_evaluate(features, train_flags, test_features, test_flags, costs=(1.0, 0.01),
                          class_names=["thing"], parallel=Parallel(n_jobs=1))
    assert result["classes"]["thing"]["ap"] == pytest.approx(100.0)
    assert result["classes"]["thing"]["test_difficult_ignored"] == 4
    refit_sizes, refit_targets = seen[-1]
    assert refit_sizes == n  # the difficult images are in the training set ...
    assert (refit_targets[[1, 2, 4]] == -1).all()  # ... as negatives
    assert (refit_targets[truth & (train_flags[:, 0] != 0)] == 1).all()


# ----------------------------------------------------------------------------------------------
# Low-shot sampling


def _flags(num_images=2300, num_classes=20, seed=0):
    rng = np.random.default_rng(seed)
    flags = np.where(rng.random((num_images, num_classes)) < 0.06, 1, -1).astype(np.int8)
    flags[rng.random((num_images, num_classes)) < 0.01] = 0
    return flags


def test_lowshot_samples_have_k_positives_and_19k_negatives():
    flags = _flags()
    assert ((flags == 1).sum(0) >= 96).all() and ((flags == -1).sum(0) >= 19 * 96).all()
    for k in LOWSHOT_KS:
        drawn = lowshot_sample(flags, k, sample=2, seed=7)
        assert drawn["capped"] == []
        for c in range(flags.shape[1]):
            rows, targets = drawn["rows"][c], drawn["targets"][c]
            assert len(np.unique(rows)) == len(rows) == 20 * k
            assert (flags[rows[targets == 1], c] == 1).sum() == k
            assert (flags[rows[targets == -1], c] == -1).sum() == 19 * k
            assert (flags[rows, c] != 0).all()  # difficult images are never drawn


def test_lowshot_samples_repeat_with_the_seed():
    flags = _flags()
    a = lowshot_sample(flags, 8, sample=1, seed=5)
    b = lowshot_sample(flags, 8, sample=1, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a["rows"], b["rows"]))
    for other in (lowshot_sample(flags, 8, sample=2, seed=5), lowshot_sample(flags, 8, 1, seed=6)):
        assert not all(np.array_equal(x, y) for x, y in zip(a["rows"], other["rows"]))


def test_lowshot_sample_is_capped_and_recorded_on_small_data():
    flags = _flags(num_images=300)
    drawn = lowshot_sample(flags, 32, sample=0)
    assert len(drawn["capped"]) == 20
    for entry in drawn["capped"]:
        c = entry["class"]
        available = int((flags[:, c] == -1).sum())
        assert entry["negatives"] == {"wanted": 19 * 32,
                                      "taken": int(available * svm.CAPPED_SHARE)}
        assert (drawn["targets"][c] == -1).sum() == int(available * svm.CAPPED_SHARE)


def _separable(n, classes, rng, noise=0.3):
    flags = np.where(rng.random((n, classes)) < 0.25, 1, -1).astype(np.int8)
    flags[rng.random((n, classes)) < 0.03] = 0
    features = (flags == 1).astype(np.float32) + noise * rng.normal(size=(n, classes)).astype(np.float32)
    return svm.normalise_rows(np.hstack([features, 0.1 * np.ones((n, 2), np.float32)])), flags


def test_lowshot_evaluate_reports_both_cost_choices():
    rng = np.random.default_rng(1)
    train, train_flags = _separable(400, 3, rng)
    test, test_flags = _separable(200, 3, rng)
    result = lowshot_evaluate(train, train_flags, test, test_flags, costs=(1.0, 0.01),
                              ks=(1, 4), samples=3, seed=0, class_names=["a", "b", "c"],
                              parallel=Parallel(n_jobs=1))
    assert result["classes"] == ["a", "b", "c"] and result["fits"] == 2 * 3 * 3 * 2
    for k in ("1", "4"):
        entry = result["per_k"][k]
        tuned = entry["tuned_on_test"]
        assert tuned["min"] <= tuned["mean"] <= tuned["max"] and tuned["std"] >= 0
        # The references' choice is the cost with the best mean test mAP.
        assert tuned["mean"] == pytest.approx(max(entry["test_map_per_cost"]))
        chosen = entry["chosen_on_trainval"]
        assert chosen["cost"] in (1.0, 0.01) and chosen["mean"] <= tuned["mean"] + 1e-9
    assert result["per_k"]["4"]["tuned_on_test"]["mean"] > 80


# ----------------------------------------------------------------------------------------------
# End to end: checkpoint + generated VOC folder -> results.json / results.md, with the cache


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from deepcluster.checkpoint import save_checkpoint
    from deepcluster.config import PretrainConfig
    from deepcluster.data import fashion_mnist_folder
    from deepcluster.models import build_backbone
    from deepcluster.voc_generator import make_voc

    if fashion_mnist_folder() is None:
        pytest.skip("Fashion-MNIST IDX files not installed")
    root = tmp_path_factory.mktemp("svm")
    config = PretrainConfig(arch="small-cnn", sobel=True, image_size=28)
    backbone = build_backbone(config.arch, config.sobel)
    checkpoint = root / "tiny.ckpt"
    save_checkpoint({"config": config.to_dict(), "backbone": backbone.state_dict(), "epoch": 1},
                    checkpoint)
    voc = make_voc(root / "voc", trainval=80, test=40, seed=1)
    return checkpoint, voc, root


def test_svm_and_lowshot_commands_end_to_end(tiny_setup, monkeypatch):
    from deepcluster.cli import main

    checkpoint, voc, root = tiny_setup
    # Large costs take liblinear its 2000 iterations; a short list keeps this test fast.
    monkeypatch.setitem(svm.COST_LISTS, "vissl", (0.1, 0.01))
    out = root / "out"
    common = ["--checkpoint", str(checkpoint), "--voc", str(voc.parent), "--out", str(out),
              "--jobs", "1", "--costs", "vissl"]
    runner = CliRunner()
    result = runner.invoke(main, ["benchmark", "svm", *common, "--layers", "feature5,avgpool"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    svm_run = results["runs"]["deepcluster"]["svm"]
    assert set(svm_run["layers"]) == {"feature5", "avgpool"}
    assert svm_run["best_layer"] in ("feature5", "avgpool")
    assert svm_run["features_extracted"] == ["avgpool", "feature5"]
    assert results["image_size"] == 28 and results["resize"] == "28 x 28, no crop"
    layer = svm_run["layers"]["avgpool"]
    assert 0 <= layer["map"] <= 100 and len(layer["classes"]) == 10
    assert all(len(c["cv_ap"]) == 2 for c in layer["classes"].values())
    assert svm_run["cost_values"] == [0.1, 0.01]
    assert (out / "features").is_dir()
    assert len(list((out / "features").rglob("*.npz"))) == 4  # 2 splits x 2 layers

    # Low-shot on the best SVM layer (auto), reusing the cached features.
    result = runner.invoke(main, ["benchmark", "lowshot", *common, "--ks", "1,2", "--samples", "2"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    run = results["runs"]["deepcluster"]
    assert run["lowshot"]["features_extracted"] == []
    assert list(run["lowshot"]["layers"]) == [svm_run["best_layer"]]
    assert run["lowshot"]["layer_choice"] == "best SVM layer"
    row = results["table"]["rows"][0]
    assert row["best_layer"] == svm_run["best_layer"] and row["svm"] == svm_run["layers"][
        svm_run["best_layer"]]["map"]
    assert set(row["lowshot"]) == {"1", "2"}
    assert [r["lowshot_cost"] for r in results["table"]["rows"]] == [
        "tuned on test (references)", "chosen on trainval"]
    markdown = (out / "results.md").read_text()
    assert "| Features | Low-shot cost | Best layer | SVM | k=1 | k=2 |" in markdown
    assert "SVM mAP per layer" in markdown and "tuned on test" in markdown

    # Changed images are extracted again, whatever the cache holds.
    from PIL import Image

    first = voc / "JPEGImages" / "000001.jpg"
    Image.open(first).transpose(Image.FLIP_LEFT_RIGHT).save(first)
    with pytest.warns(UserWarning, match="results of another checkpoint or dataset"):
        result = runner.invoke(main, ["benchmark", "svm", *common, "--layers", "avgpool"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["runs"]["deepcluster"]["svm"]["features_extracted"] == ["avgpool"]
    assert "lowshot" not in results["runs"]["deepcluster"]  # made from the old images: dropped

    # A random-init run in another folder: a different cache entry.
    result = runner.invoke(main, ["benchmark", "svm", *common[:4], "--out", str(root / "rand"),
                                  "--jobs", "1", "--costs", "vissl", "--layers", "avgpool",
                                  "--random-init", "--cache", str(out / "features")])
    assert result.exit_code == 0, result.output
    rand = json.loads((root / "rand" / "results.json").read_text())
    assert list(rand["runs"]) == ["random init"]
    assert rand["runs"]["random init"]["svm"]["features_extracted"] == ["avgpool"]
    assert len(list((out / "features").glob("*-random-28px"))) == 1


def test_unknown_layer_is_a_clear_error(tiny_setup):
    from deepcluster.cli import main

    checkpoint, voc, root = tiny_setup
    result = CliRunner().invoke(main, ["benchmark", "svm", "--checkpoint", str(checkpoint),
                                       "--voc", str(voc), "--out", str(root / "x"),
                                       "--layers", "feature9"])
    assert result.exit_code != 0
    assert "unknown layer(s) feature9" in result.output


def test_parallel_workers_give_the_same_numbers():
    rng = np.random.default_rng(2)
    train, train_flags = _separable(150, 3, rng, noise=0.8)
    test, test_flags = _separable(90, 3, rng, noise=0.8)
    args = (train, train_flags, test, test_flags, (1.0, 0.1, 0.01))
    serial = svm_evaluate(*args, parallel=Parallel(n_jobs=1))
    workers = svm_evaluate(*args, jobs=2)
    assert workers["map"] == serial["map"]
    assert [c["cost"] for c in workers["classes"].values()] == [
        c["cost"] for c in serial["classes"].values()]
    lowshot = dict(ks=(2,), samples=2)
    assert (lowshot_evaluate(*args, jobs=2, **lowshot)["per_k"]
            == lowshot_evaluate(*args, parallel=Parallel(n_jobs=1), **lowshot)["per_k"])
