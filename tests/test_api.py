"""The Python API a script uses: a config from a preset, a YAML file or keywords; a run; its
backbone; a benchmark on it."""

import subprocess
import sys
import warnings

import pytest
import torch

import deepcluster as dc

TINY = dict(data="digits", image_size=8, subset=320, k=10, pca_dim=16, batch_size=64,
            extract_batch_size=160, threads=1, precision="32-true", seed=2)


def test_the_public_names_are_declared_and_load_lazily():
    assert set(dc.__all__) >= {"PretrainConfig", "make_config", "load_config", "pretrain",
                               "resume", "load_backbone", "run_knn", "run_linear"}
    # Importing the package (e.g. in an SVM worker) loads neither torch nor the engine.
    code = "import sys, deepcluster.benchmarks.svm; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True).stdout.strip() == "False"


def test_configs_from_preset_yaml_and_keywords(tmp_path):
    config = dc.make_config("fashion-mnist-v2", epochs=1)
    assert config.method == "deepcluster-v2" and config.epochs == 1 and config.reset_head is None
    (tmp_path / "c.yaml").write_text(config.to_yaml())
    assert dc.load_config(tmp_path / "c.yaml") == config
    assert dc.load_config(tmp_path / "c.yaml", lr=0.3).lr == 0.3
    with pytest.raises(ValueError, match="reset_head=False is a deepcluster option"):
        dc.make_config("fashion-mnist-v2", reset_head=False)
    # a method change keeps only what the new method uses
    assert dc.make_config("fashion-mnist-v2", method="deepcluster").prototype_sets is None


def test_run_resume_load_and_benchmark(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dc.pretrain(dc.make_config(**TINY, epochs=1, out=str(tmp_path / "run")),
                             progress=False)
        resumed = dc.resume(tmp_path / "run", epochs=2, progress=False)
    assert [row["epoch"] for row in resumed.history] == [0, 1, 2]
    backbone, config = dc.load_backbone(resumed.checkpoint)
    assert config.epochs == 2 and not backbone.training
    untrained, _ = dc.load_backbone(result.checkpoint, random_init=True)
    assert not torch.equal(backbone.stages[0][0].weight, untrained.stages[0][0].weight)
    knn = dc.run_knn(resumed.checkpoint, "digits", tmp_path / "knn")
    assert knn["rows"][0]["features"] == "deepcluster" and 50 < knn["rows"][0]["top1"] <= 100
