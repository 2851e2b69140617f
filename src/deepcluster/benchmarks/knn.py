"""Weighted k-NN classification of frozen features (k = 20, cosine similarity, temperature 0.07).

Each test image votes with its k most similar training images, each vote weighted by
exp(similarity / temperature); the class with the largest total wins (Wu et al., 2018, the usual
k-NN protocol for self-supervised features).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import backbone_from_checkpoint, save_json
from ..data import ArrayImageDataset
from ..datasets import load_dataset
from ..features import extract_global
from ..models import Backbone
from ..precision import autocast, resolve_precision
from ..transforms import ChannelsLast, extraction_pipeline, is_small, pixel_pipeline

DEFAULT_K = 20
DEFAULT_TEMPERATURE = 0.07


def weighted_knn_predict(train_features: np.ndarray, train_labels: np.ndarray,
                         test_features: np.ndarray, k: int = DEFAULT_K,
                         temperature: float = DEFAULT_TEMPERATURE, chunk: int = 1024) -> np.ndarray:
    """Predicted class of every test row; features are L2-normalised here."""
    if k > len(train_features):
        raise ValueError(f"k={k} neighbours but only {len(train_features)} training images")
    train = torch.nn.functional.normalize(torch.from_numpy(train_features).float(), dim=1)
    test = torch.nn.functional.normalize(torch.from_numpy(test_features).float(), dim=1)
    labels = torch.from_numpy(train_labels).long()
    num_classes = int(labels.max()) + 1
    predictions = []
    for start in range(0, len(test), chunk):
        similarity, neighbours = (test[start:start + chunk] @ train.T).topk(k, dim=1)
        predictions.append(weighted_vote(similarity, labels[neighbours], num_classes, temperature))
    return torch.cat(predictions).numpy()


def weighted_vote(similarity: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int,
                  temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """The class each row's neighbours vote for, each vote weighted by exp(similarity / T):
    ``similarity`` and ``neighbour_labels`` are (rows, k), most similar first."""
    votes = torch.zeros(len(similarity), num_classes, device=similarity.device)
    votes.scatter_add_(1, neighbour_labels, (similarity / temperature).exp())
    return votes.argmax(dim=1)


def knn_top1(train_features, train_labels, test_features, test_labels, **kwargs) -> float:
    """Top-1 accuracy in percent."""
    predicted = weighted_knn_predict(train_features, train_labels, test_features, **kwargs)
    return float((predicted == test_labels).mean() * 100.0)


def _labelled_split(data: str, split: str):
    dataset = load_dataset(data, split)
    if dataset.targets is None:
        raise ValueError(f"--data {data!r} ({split} split) has no labels; k-NN needs them")
    return dataset


def raw_pixel_features(data: str, split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey pixel values in [0, 1] at ``image_size``, flattened: the raw-pixel baseline."""
    dataset = _labelled_split(data, split)
    pipeline = pixel_pipeline(image_size, in_memory=isinstance(dataset, ArrayImageDataset))
    return extract_global(nn.Flatten(), dataset.with_transform(pipeline.sample), batch_size=1024,
                          batch_transform=pipeline.batch, progress=False)


def network_features(backbone: Backbone, image_size: int, data: str, split: str,
                     batch_size: int = 512, workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The backbone's global feature of every image of ``split``, with the extraction transform
    (applied a batch at a time to small images held in memory)."""
    dataset = _labelled_split(data, split)
    in_memory = isinstance(dataset, ArrayImageDataset) and is_small(image_size)
    pipeline = extraction_pipeline(image_size, in_memory)
    # channels-last convolutions: several times faster on CPUs, same numbers
    backbone = backbone.to(memory_format=torch.channels_last)
    batch = nn.Sequential(pipeline.batch, ChannelsLast())
    return extract_global(backbone, dataset.with_transform(pipeline.sample), batch_size, workers,
                          batch_transform=batch)


def run_knn(checkpoint: str | Path, data: str, out: str | Path, random_init: bool = False,
            baselines: bool = False, k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE,
            workers: int = 0, precision: str = "32-true") -> dict[str, Any]:
    """k-NN top-1 on the test split from train-split features; writes ``out/results.json``.

    ``baselines`` adds the same network at random init and raw pixels as extra rows.
    ``precision`` of the networks' extraction passes: "auto" or "bf16-mixed" gives bf16
    convolutions (the online k-NN's in a bf16 run), about half the time on a CPU with bf16.
    """
    runs = [("random init" if random_init else "deepcluster", random_init)]
    if baselines and not random_init:
        runs.append(("random init", True))
    rows = []
    for name, untrained in runs:
        start = time.perf_counter()
        backbone, config = backbone_from_checkpoint(checkpoint, random_init=untrained)
        with autocast(precision):
            train = network_features(backbone, config.image_size, data, "train", workers=workers)
            test = network_features(backbone, config.image_size, data, "test", workers=workers)
        rows.append({"features": name, "top1": knn_top1(*train, *test, k=k, temperature=temperature),
                     "dim": train[0].shape[1], "seconds": time.perf_counter() - start})
    if baselines:
        start = time.perf_counter()
        train = raw_pixel_features(data, "train", config.image_size)
        test = raw_pixel_features(data, "test", config.image_size)
        rows.append({"features": "raw pixels",
                     "top1": knn_top1(*train, *test, k=k, temperature=temperature),
                     "dim": train[0].shape[1], "seconds": time.perf_counter() - start})
    results = {"benchmark": "knn", "checkpoint": str(checkpoint), "data": data, "k": k,
               "temperature": temperature, "split": "test",
               "precision": resolve_precision(precision, "cpu"), "rows": rows}
    save_json(results, Path(out) / "results.json")
    return results
