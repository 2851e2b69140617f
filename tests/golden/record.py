"""Record the golden runs: tiny pretraining runs with fixed seeds whose per-epoch assignments,
losses and final weights every later version of the training engine must reproduce.

Run once with the code whose behaviour is to be kept (``python tests/golden/record.py``); it
writes ``tests/golden/runs.json``. ``tests/test_golden.py`` reruns each run and compares.

runs.json was recorded on 2026-12-01 with the code before the training engine (commit dc0df94).
The supervised baseline's entry there is kept for the record only: as a method of the engine it
seeds every epoch like the other methods (so that it resumes exactly), where it drew its
augmentation and order from one stream across epochs before. Its golden run under the engine
is ``supervised_engine.json`` (``python tests/golden/record.py --supervised-engine``).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent

# digits at 8 px: 1,437 training images in scikit-learn; 320 of them, 2 epochs, one thread.
COMMON = dict(data="digits", subset=320, arch="small-cnn", image_size=8, k=10, pca_dim=16,
              batch_size=64, extract_batch_size=160, lr=0.05, seed=7, epochs=2, threads=1,
              precision="32-true", augmentation="small")
RUNS = {
    "v1-faiss": dict(COMMON, kmeans_backend="faiss"),
    "v1-torch": dict(COMMON, kmeans_backend="torch", lr_schedule="cosine"),
    # the default preset's augmentation (crop 0.14-1, flip, jitter) and lr; recorded 2026-12-02
    # with the same code (dc0df94), after the others
    "v1-strong": dict(COMMON, kmeans_backend="faiss", augmentation="strong", lr=0.1),
    "v2": dict(COMMON, method="deepcluster-v2", prototype_sets=2, projection_hidden=32,
               projection_dim=16, small_crops=1, image_size=12, small_crop_size=8, kmeans_iters=5,
               warmup_epochs=0.5, lr_schedule="cosine"),
}
SUPERVISED = dict(like="v1-faiss", epochs=2, lr=0.05, weight_decay=5e-4, batch_size=64,
                  subset=320, threads=1)


def weights_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor of a state dict, by sorted name (bit-for-bit identity)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16
                      else tensor.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


def summarise(out: Path, history: list[dict], checkpoint: Path) -> dict:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    epochs = sorted(int(p.stem.split("_")[1]) for p in (out / "assignments").glob("epoch_*.npy"))
    return {
        "losses": [row["loss"] for row in history],
        "assignments": [np.load(out / "assignments" / f"epoch_{e:03d}.npy").tolist()
                        for e in epochs],
        "backbone_sha256": weights_hash(state["backbone"]),
    }


def record_pretraining(name: str, config_values: dict, root: Path) -> tuple[dict, Path]:
    from deepcluster.config import PretrainConfig
    from deepcluster.engine import pretrain

    out = root / name
    # the recorded configs are version-1 (flat) configs
    config = PretrainConfig.from_dict({**config_values, "out": str(out)})
    result = pretrain(config, progress=False)
    return summarise(out, result.history, result.checkpoint), result.checkpoint


def record_supervised(like: Path, root: Path) -> dict:
    from deepcluster.api import train_supervised

    options = {k: v for k, v in SUPERVISED.items() if k != "like"}
    path = train_supervised(like, root / "supervised", data="digits", progress=False, **options)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {"backbone_sha256": weights_hash(state["backbone"])}


def record_supervised_engine() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _, like = record_pretraining(SUPERVISED["like"], RUNS[SUPERVISED["like"]], root)
        result = record_supervised(like, root)
    (HERE / "supervised_engine.json").write_text(json.dumps(
        {"supervised_options": SUPERVISED, "supervised": result}) + "\n")
    print("supervised (engine)", result["backbone_sha256"][:12])
    return 0


def main() -> int:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    if "--supervised-engine" in sys.argv:
        return record_supervised_engine()
    golden: dict = {"runs": {}, "configs": RUNS, "supervised_options": SUPERVISED}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoints = {}
        for name, values in RUNS.items():
            golden["runs"][name], checkpoints[name] = record_pretraining(name, values, root)
            print(name, golden["runs"][name]["losses"], golden["runs"][name]["backbone_sha256"][:12])
        golden["runs"]["supervised"] = record_supervised(checkpoints[SUPERVISED["like"]], root)
        print("supervised", golden["runs"]["supervised"]["backbone_sha256"][:12])
    (HERE / "runs.json").write_text(json.dumps(golden) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
