import json

import numpy as np
import pytest
from click.testing import CliRunner

from deepcluster.benchmarks.knn import knn_top1, raw_pixel_features, weighted_knn_predict
from deepcluster.cli import main
from deepcluster.datasets import load_dataset


def test_weighted_knn_on_a_hand_made_case():
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 1])
    test = np.array([[1.0, 0.05], [0.05, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(weighted_knn_predict(train, labels, test, k=2), [0, 1])
    # With all 5 neighbours, plain majority would say class 1 for the first point; the
    # exp(similarity / T) weights at T = 0.07 let its two near neighbours win.
    np.testing.assert_array_equal(weighted_knn_predict(train, labels, test[:1], k=5), [0])
    assert weighted_knn_predict(train, labels, test[:1], k=5, temperature=100.0)[0] == 1
    assert knn_top1(train, labels, test, np.array([0, 0]), k=2) == 50.0
    with pytest.raises(ValueError, match="k=9 neighbours but only 5"):
        weighted_knn_predict(train, labels, test, k=9)


def test_raw_pixels_are_the_grey_values_in_order():
    images = load_dataset("digits", "test")
    features, labels = raw_pixel_features("digits", "test", images.images.shape[-1])
    np.testing.assert_allclose(features * 255, images.images.reshape(len(images), -1), atol=1e-4)
    np.testing.assert_array_equal(labels, images.targets)
    resized, _ = raw_pixel_features("digits", "test", 28)
    assert resized.shape == (len(images), 28 * 28) and 0.0 <= resized.min() < resized.max() <= 1.0


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = CliRunner().invoke(main, ["pretrain", "--data", "digits", "--k", "20", "--pca-dim",
                                       "16", "--epochs", "1", "--batch-size", "64", "--out",
                                       str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_cli_pretrain_then_knn_with_baselines(digits_run):
    result = CliRunner().invoke(main, ["benchmark", "knn", "--checkpoint",
                                       str(digits_run / "checkpoints" / "last.ckpt"), "--data",
                                       "digits", "--baselines", "--out", str(digits_run / "knn")])
    assert result.exit_code == 0, result.output
    results = json.loads((digits_run / "knn" / "results.json").read_text())
    rows = {row["features"]: row for row in results["rows"]}
    assert set(rows) == {"deepcluster", "random init", "raw pixels"}
    assert rows["raw pixels"]["dim"] == 28 * 28 and rows["deepcluster"]["dim"] == 256
    for row in rows.values():
        assert 50.0 < row["top1"] <= 100.0  # 10 digit classes: chance is 10%
    assert "raw pixels" in result.output


def test_knn_in_bf16_extracts_in_bf16_and_votes_as_float32_does(digits_run):
    """--precision bf16-mixed runs the network in bf16 (features within bf16's rounding of
    float32's, not equal to them) and records it; the vote then agrees with float32's."""
    import torch

    from deepcluster.benchmarks.knn import network_features
    from deepcluster.checkpoint import backbone_from_checkpoint
    from deepcluster.precision import autocast

    checkpoint = str(digits_run / "checkpoints" / "last.ckpt")
    backbone, config = backbone_from_checkpoint(checkpoint)
    full, _ = network_features(backbone, config.image_size, "digits", "test")
    with autocast("bf16-mixed"):
        half, _ = network_features(backbone, config.image_size, "digits", "test")
    assert not np.array_equal(full, half)
    np.testing.assert_allclose(half, full, rtol=0.05, atol=0.05 * np.abs(full).mean())
    top1 = {}
    for precision in ("32-true", "bf16-mixed"):
        out = digits_run / f"knn-{precision}"
        result = CliRunner().invoke(main, ["benchmark", "knn", "--checkpoint", checkpoint,
                                           "--data", "digits", "--precision", precision,
                                           "--out", str(out)])
        assert result.exit_code == 0, result.output
        results = json.loads((out / "results.json").read_text())
        assert results["precision"] == precision
        top1[precision] = results["rows"][0]["top1"]
    assert abs(top1["bf16-mixed"] - top1["32-true"]) <= 1.0


def test_cli_extract_writes_features(digits_run, tmp_path):
    out = tmp_path / "f.npz"
    result = CliRunner().invoke(main, ["extract", "--checkpoint",
                                       str(digits_run / "checkpoints" / "last.ckpt"), "--data",
                                       "digits", "--split", "test", "--layer", "feature2", "--out",
                                       str(out)])
    assert result.exit_code == 0, result.output
    saved = np.load(out)
    assert saved["features"].shape == (360, 64 * 6 * 6) and saved["features"].dtype == np.float32
    assert saved["labels"].shape == (360,)


def test_cli_refuses_to_overwrite_a_run(digits_run):
    result = CliRunner().invoke(main, ["pretrain", "--data", "digits", "--out", str(digits_run)])
    assert result.exit_code != 0 and "already holds a run" in result.output


def test_cli_bad_input_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(main, ["pretrain", "--data", "no-such-data", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "Error: --data 'no-such-data': not a bundled dataset" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["pretrain", "--arch", "resnet51", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "arch='resnet51' is not one of" in result.output


def test_pretrain_help_lists_every_config_field():
    from dataclasses import fields

    from deepcluster.config import PretrainConfig

    result = CliRunner().invoke(main, ["pretrain", "--help"])
    for spec in fields(PretrainConfig):
        assert f"--{spec.name.replace('_', '-')}" in result.output
