"""``make demo`` end to end (``deepcluster demo``) on a tiny version of its presets: both methods
pretrain, the k-NN table compares them with random init and raw pixels, each run gets its report,
and a second call reuses the finished runs."""

import json

from click.testing import CliRunner

import deepcluster.cli.pretrain as pretrain_command
from deepcluster.cli import main

TINY = dict(data="digits", subset=320, image_size=12, k=10, batch_size=64, threads=1,
            precision="32-true")
TINY_V1 = dict(TINY, pca_dim=16, extract_batch_size=160)
TINY_V2 = dict(TINY, prototype_sets=2, projection_hidden=32, projection_dim=16, small_crops=1,
               small_crop_size=8, kmeans_iters=5)


def tiny_preset(name):
    preset = pretrain_command.PRESETS[name]
    return preset.override(**(TINY_V2 if preset.method == "deepcluster-v2" else TINY_V1))


def test_demo_pretrains_both_methods_prints_the_table_and_writes_the_reports(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain_command, "get_preset", tiny_preset)
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--epochs", "1"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((out / "knn" / "results.json").read_text())
    assert [row["features"] for row in summary["rows"]] == [
        "DeepCluster", "DeepCluster-v2", "random init", "raw pixels"]
    for row in summary["rows"]:
        assert row["features"] in result.output
    for run in ("pretrain", "pretrain-v2"):
        page = out / run / "report" / "index.html"
        assert page.is_file() and f"report: {page}" in result.output.replace("\n", "")
    again = CliRunner().invoke(main, ["demo", "--out", str(out), "--epochs", "1"])
    assert again.exit_code == 0 and again.output.count("reusing the finished run") == 2
