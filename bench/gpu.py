"""GPU rates of the reference recipe's parts, side by side in one run (the scaling issue's bench 4).

On one CUDA device, for ResNet-50 with the Sobel layer (bf16 autocast, channels-last):
  - model: images/s of the pure training step (forward, backward, SGD; k = 10000 head) and of the
    extraction forward pass, eager and compiled (torch.compile), on batches already on the GPU;
  - loop: images/s of the training pass and of the extraction pass inside a real pretraining
    epoch (``deepcluster.engine.pretrain``) on 25,600 JPEG entries (a list file cycling over the 2,048
    written JPEGs: every entry is read and decoded, on the GPU), and their share of the pure
    rates (the issue's target: at least 90%);
  - k-means: seconds per Lloyd's iteration of the torch backend at N = 1.28M, k = 10000, d = 256
    (TF32 products);
  - JPEG: images/s decoding 500 x 375 JPEGs and resizing them to 224 on the GPU, against one CPU
    core doing the same.
Prints a table and writes JSON naming the device. Without a GPU it says so, writes the reason
to the JSON and exits 0. ``--device cpu --tiny`` runs every part at toy sizes on the CPU (a check
that the script works, not a measurement).

    python bench/gpu.py                              # on a CUDA machine
    python bench/gpu.py --device cpu --tiny          # smoke run anywhere
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch import nn

from deepcluster.clustering import torch_kmeans
from deepcluster.config import PretrainConfig
from deepcluster.device_decode import decode_batch
from deepcluster.models import DeepClusterModel, build_backbone
from deepcluster.engine import pretrain

FULL = dict(batch=256, image_size=224, steps=30, kmeans_n=1_281_167, k=10_000, jpegs=2048,
            loop_images=25_600, workers=4, bf16=True, modes=("eager", "compiled"))
TINY = dict(batch=4, image_size=64, steps=2, kmeans_n=5_000, k=50, jpegs=16, loop_images=32, workers=1,
            bf16=False, modes=("eager",))  # fp32: CPUs without bf16 arithmetic emulate it, 6x slower


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device, repeats: int, warmup: int = 3) -> float:
    """Seconds per call of ``function`` after ``warmup`` calls (compilation included there)."""
    for _ in range(warmup):
        function()
    synchronise(device)
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    synchronise(device)
    return (time.perf_counter() - start) / repeats


def model_rates(device: torch.device, sizes: dict, mode: str) -> dict:
    """Pure training-step and extraction images/s of Sobel ResNet-50, eager or compiled."""
    torch.manual_seed(0)
    model = DeepClusterModel(build_backbone("resnet50", sobel=True), sizes["k"])
    model = model.to(device, memory_format=torch.channels_last)
    if mode == "compiled":
        model.backbone.compile()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    size, batch = sizes["image_size"], sizes["batch"]
    x = torch.randn(batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, sizes["k"], (batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=sizes["bf16"])

    def train_step():
        with autocast:
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    train = timed(train_step, device, sizes["steps"])
    model.eval()

    def extract_step():
        with torch.inference_mode(), autocast:
            model.backbone(x)

    extract = timed(extract_step, device, sizes["steps"])
    return {"train_images_per_s": batch / train, "extract_images_per_s": batch / extract}


def write_jpegs(folder: Path, count: int, size: tuple[int, int] = (500, 375)) -> list[Path]:
    """``count`` JPEGs of ``size`` (ImageNet's most common), crops of scikit-image's photos in two
    class folders."""
    from skimage import data as photos

    sources = [Image.fromarray(photo()).resize((size[0] + 40, size[1] + 40))
               for photo in (photos.astronaut, photos.coffee, photos.chelsea, photos.rocket)]
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        source = sources[index % len(sources)]
        left, top = rng.integers(0, 40, 2)
        path = folder / f"class{index % 2}" / f"{index:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        source.crop((left, top, left + size[0], top + size[1])).save(path, quality=90)
        paths.append(path)
    return paths


def jpeg_rates(device: torch.device, paths: list[Path], batch: int) -> dict:
    """Decode + resize to 224 images/s: batched on ``device`` against one CPU core (PIL)."""
    from torchvision.io import read_file
    from torchvision.transforms.v2 import functional as F

    encoded = [read_file(str(path)) for path in paths]
    batches = [encoded[i:i + batch] for i in range(0, len(encoded), batch)]

    def on_device():
        for part in batches:
            for image in decode_batch(part, device):
                F.resize(image, [224], antialias=True)

    seconds = timed(on_device, device, repeats=3, warmup=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    for path in paths[:256]:
        with Image.open(path) as image:
            image.convert("RGB").resize((298, 224), Image.BILINEAR)
    cpu_core = min(len(paths), 256) / (time.perf_counter() - start)
    torch.set_num_threads(threads)
    return {"device_images_per_s": len(paths) / seconds, "cpu_core_images_per_s": cpu_core}


def kmeans_rate(device: torch.device, n: int, k: int, iterations: int = 5) -> dict:
    """Seconds per Lloyd's iteration of the torch backend on ``device`` (TF32 products)."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(n, 256, generator=generator).to(device)
    x = nn.functional.normalize(x, dim=1)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        torch_kmeans(x, k, iterations=1, seed=0, distributed=False)  # warm-up
        synchronise(device)
        start = time.perf_counter()
        torch_kmeans(x, k, iterations=iterations, seed=0, distributed=False)
        synchronise(device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    # The call also runs one final assignment pass; count it as an iteration.
    return {"seconds_per_iteration": (time.perf_counter() - start) / (iterations + 1)}


def write_list_file(path: Path, images: list[Path], entries: int) -> Path:
    """A list file of ``entries`` lines cycling over ``images`` (label: the class folder)."""
    lines = [f"{images[i % len(images)].relative_to(path.parent)} "
             f"{images[i % len(images)].parent.name[-1]}" for i in range(entries)]
    path.write_text("\n".join(lines) + "\n")
    return path


def loop_rates(device: torch.device, data: Path, sizes: dict, out: Path, compiled: bool) -> dict:
    """Training and extraction images/s inside a real pretraining epoch (JPEGs decoded on the
    device, bf16, channels-last): the second of two, so that compilation and cuDNN's algorithm
    search fall in the first."""
    config = PretrainConfig(
        data=str(data), arch="resnet50", sobel=True, image_size=sizes["image_size"],
        augmentation="original", k=max(2, min(sizes["k"], sizes["loop_images"] // 25)), pca_dim=64,
        epochs=2, batch_size=sizes["batch"], extract_batch_size=sizes["batch"], workers=sizes["workers"],
        accelerator=device.type, precision="bf16-mixed" if sizes["bf16"] else "32-true", decode_on_device=True,
        compile=compiled, kmeans_backend="torch", out=str(out))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        epoch = pretrain(config, progress=False).history[-1]
    return {"train_images_per_s": sizes["loop_images"] / epoch["train_s"],
            "extract_images_per_s": sizes["loop_images"] / epoch["extract_s"],
            "cluster_s": epoch["cluster_s"]}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: checks the script runs")
    parser.add_argument("--parts", default="model,loop,kmeans,jpeg")
    parser.add_argument("--out", default="bench/results/gpu.json")
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        reason = "no CUDA device: nothing measured"
        print(reason)
        out.write_text(json.dumps({"skipped": reason}, indent=2))
        return
    sizes = TINY if args.tiny else FULL
    parts = args.parts.split(",")
    results: dict = {"device": device_name(device), "tiny": args.tiny, "sizes": sizes}
    rows: list[tuple[str, str, str]] = []
    if "model" in parts:
        for mode in sizes["modes"]:
            rates = model_rates(device, sizes, mode)
            results[f"model_{mode}"] = rates
            rows += [(f"train step, {mode}", f"{rates['train_images_per_s']:,.0f} images/s", ""),
                     (f"extraction, {mode}", f"{rates['extract_images_per_s']:,.0f} images/s", "")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_jpegs(tmp / "jpegs", sizes["jpegs"])
        if "loop" in parts:
            listed = write_list_file(tmp / "loop.txt", paths, sizes["loop_images"])
            for mode in sizes["modes"]:
                rates = loop_rates(device, listed, sizes, tmp / f"run-{mode}", mode == "compiled")
                results[f"loop_{mode}"] = rates
                pure = results.get(f"model_{mode}", {})
                for key, label in (("train_images_per_s", "train pass"),
                                   ("extract_images_per_s", "extraction pass")):
                    share = (f"{rates[key] / pure[key]:.0%} of pure" if key in pure else "")
                    rows.append((f"loop {label}, {mode}", f"{rates[key]:,.0f} images/s", share))
        if "jpeg" in parts:
            rates = jpeg_rates(device, paths[:sizes["jpegs"]], sizes["batch"])
            results["jpeg"] = rates
            rows.append(("JPEG decode + resize", f"{rates['device_images_per_s']:,.0f} images/s",
                         f"one CPU core: {rates['cpu_core_images_per_s']:,.0f}"))
    if "kmeans" in parts:
        rates = kmeans_rate(device, sizes["kmeans_n"], sizes["k"])
        results["kmeans"] = {"n": sizes["kmeans_n"], "k": sizes["k"], **rates}
        rows.append((f"k-means iteration, N={sizes['kmeans_n']:,}, k={sizes['k']:,}",
                     f"{rates['seconds_per_iteration']:.3f} s", ""))

    precision = "bf16" if sizes["bf16"] else "fp32"
    table = Table(title=f"ResNet-50 (Sobel), {precision}, channels-last, batch {sizes['batch']} "
                        f"- {results['device']}")
    for column in ("part", "rate", "note"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    out.write_text(json.dumps(results, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
