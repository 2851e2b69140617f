"""Decoding JPEGs on the training device (--decode-on-device), run here on the CPU."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from lightning.fabric import Fabric
from PIL import Image
from skimage import data as photos

from deepcluster.config import PretrainConfig
from deepcluster.datasets import load_dataset
from deepcluster.device_decode import DecodeOnDevice, EncodedImages, collate_encoded
from deepcluster.engine import pretrain
from deepcluster.methods.deepcluster import DeepCluster
from deepcluster.transforms import device_decode_pipeline, extraction_transform

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "moon")


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    """Two classes of JPEG crops of scikit-image's photos (grey ones included), of mixed sizes,
    and one PNG among them (named .png: the decoder falls back for it)."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for index in range(24):
        photo = getattr(photos, PHOTOS[index % len(PHOTOS)])()
        height, width = rng.integers(70, 130), rng.integers(70, 130)
        top = rng.integers(0, photo.shape[0] - height)
        left = rng.integers(0, photo.shape[1] - width)
        crop = Image.fromarray(photo[top:top + height, left:left + width])
        folder = root / ("even" if index % 2 == 0 else "odd")
        folder.mkdir(exist_ok=True)
        if index == 5:
            crop.save(folder / f"{index:02d}.png")
        else:
            crop.save(folder / f"{index:02d}.jpg", quality=95)
    return root


@pytest.mark.parametrize("image_size", [64, 96])  # the small-image resize and the crop path
def test_decoding_on_the_device_gives_the_per_image_pipeline(jpeg_folder, image_size):
    images = load_dataset(str(jpeg_folder))
    transform = extraction_transform(image_size)
    expected = torch.stack([image for image, _ in images.with_transform(transform)])
    encoded = images.as_encoded()
    batch, labels = collate_encoded([encoded[i] for i in range(len(encoded))])
    assert isinstance(batch, EncodedImages) and batch.to("cpu") is batch  # bytes stay put
    assert labels.tolist() == images.targets.tolist()
    pipeline = device_decode_pipeline(None, image_size)
    decoded = DecodeOnDevice(pipeline.sample, pipeline.batch)(batch)
    assert decoded.shape == expected.shape == (len(images), 3, image_size, image_size)
    # Both decode with libjpeg; PIL and torch resize a little differently (at most ~1/255 here).
    difference = (decoded - expected).abs() * 0.25  # about [0, 1] pixel units
    assert difference.mean() < 1e-3 and difference.max() < 0.02


def test_training_batches_are_augmented_per_image(jpeg_folder):
    images = load_dataset(str(jpeg_folder)).as_encoded()
    batch, _ = collate_encoded([images[i] for i in range(8)])
    pipeline = device_decode_pipeline("mmselfsup", 64)
    decode = DecodeOnDevice(pipeline.sample, pipeline.batch)
    torch.manual_seed(0)
    first = decode(batch)
    torch.manual_seed(1)
    second = decode(batch)
    assert first.shape == (8, 3, 64, 64) and torch.isfinite(first).all()
    assert not torch.allclose(first, second)  # random crops differ with the seed


def test_pretraining_decodes_on_the_device(jpeg_folder, tmp_path):
    config = PretrainConfig(data=str(jpeg_folder), decode_on_device=True, image_size=32,
                            augmentation="original", k=4, pca_dim=8, epochs=1, batch_size=8,
                            extract_batch_size=8, accelerator="cpu", out=str(tmp_path / "run"))
    data = DeepCluster(config, Fabric(accelerator="cpu", devices=1)).training_data()
    assert isinstance(data.batch_transform[0], DecodeOnDevice)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pretrain(config, progress=False)
    assert len(result.assignments) == 24 and np.isfinite(result.history[-1]["loss"])
    assert result.checkpoint.exists()


def test_decode_on_device_needs_image_files_and_v1(jpeg_folder, tmp_path):
    config = PretrainConfig(data="digits", decode_on_device=True, out=str(tmp_path))
    with pytest.raises(ValueError, match="decode_on_device reads image files; data='digits'"):
        DeepCluster(config, Fabric(accelerator="cpu", devices=1)).training_data()
    with pytest.raises(ValueError, match="decode_on_device=True is a deepcluster option; method "
                                         "'deepcluster-v2' does not use it"):
        PretrainConfig(data=str(jpeg_folder), decode_on_device=True, method="deepcluster-v2")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_decoding_equals_cpu_decoding(jpeg_folder):
    images = load_dataset(str(jpeg_folder)).as_encoded()
    batch, _ = collate_encoded([images[i] for i in range(len(images))])
    pipeline = device_decode_pipeline(None, 64)
    on_cpu = DecodeOnDevice(pipeline.sample, pipeline.batch)(batch)
    on_gpu = DecodeOnDevice(pipeline.sample, pipeline.batch).cuda()(batch)
    assert on_gpu.device.type == "cuda"
    assert ((on_gpu.cpu() - on_cpu).abs() * 0.225).mean() < 0.01
