import gzip
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from deepcluster.data import DataError, ImageReadError, read_idx
from deepcluster.datasets import load_dataset
from deepcluster.transforms import extraction_transform, training_transform


def write_idx(path, array, compress=False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def make_images(root, names, size=(12, 10)):
    rng = np.random.default_rng(0)
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(path)


def test_fashion_mnist_splits(fashion_train):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = load_dataset("fashion-mnist", "test")
    if fashion_train.name.startswith("digits"):
        pytest.skip("dataset-fashion-mnist is not installed")
    assert len(fashion_train) == 60000 and len(test) == 10000
    assert fashion_train.images.shape[1:] == (28, 28)
    assert np.bincount(fashion_train.targets).tolist() == [6000] * 10
    image, label = fashion_train[0]
    assert image.size == (28, 28) and label == fashion_train.targets[0]


def test_idx_folder_gzipped_or_not(tmp_path):
    images = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, compress=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1, 2, 1, 0]))
    dataset = load_dataset(f"idx:{tmp_path}", "train")
    np.testing.assert_array_equal(dataset.images, images)
    assert dataset.targets.tolist() == [0, 1, 2, 1, 0]
    assert len(dataset.subset(2)) == 2


def test_truncated_idx_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.zeros((2, 3, 3)))
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: IDX header says shape"):
        read_idx(path)


def test_class_folder_tree_and_splits(tmp_path):
    make_images(tmp_path, ["train/cat/a.png", "train/cat/b.jpg", "train/dog/c.png",
                           "val/cat/d.png", "val/dog/e.png"])
    train = load_dataset(str(tmp_path), "train")
    assert train.classes == ["cat", "dog"] and train.targets.tolist() == [0, 0, 1]
    assert load_dataset(str(tmp_path), "test").targets.tolist() == [0, 1]


def test_list_file_and_its_errors(tmp_path):
    make_images(tmp_path, ["imgs/a.png", "imgs/b.png"])
    good = tmp_path / "train.txt"
    good.write_text("imgs/a.png 3\nimgs/b.png 0\n")
    dataset = load_dataset(str(good))
    assert dataset.targets.tolist() == [3, 0] and len(dataset.classes) == 4
    image, label = dataset[0]
    assert image.size == (10, 12) and label == 3
    bad = tmp_path / "bad.txt"
    bad.write_text("imgs/a.png 3\nimgs/b.png x\n")
    with pytest.raises(DataError, match=r"bad.txt:2: label 'x' is not an integer"):
        load_dataset(str(bad))
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("imgs/a.png 3\nimgs/b.png\n")
    with pytest.raises(DataError, match="mixed.txt:2: some lines have a label"):
        load_dataset(str(mixed))


def test_unlabelled_folder(tmp_path):
    make_images(tmp_path, ["x.png", "y.png", "sub/z.png"])
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = load_dataset(str(tmp_path))  # images at the top: not a class tree
    assert dataset.targets is None and len(dataset) == 3
    assert dataset[0][1] == -1


def test_corrupt_image_fails_with_its_path_or_is_skipped(tmp_path):
    make_images(tmp_path, ["a/1.png", "a/2.png", "b/3.png"])
    (tmp_path / "a" / "2.png").write_bytes(b"not a png")
    dataset = load_dataset(str(tmp_path))
    with pytest.raises(ImageReadError, match=r"cannot read image .*a/2.png"):
        dataset[1]
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        skipped = load_dataset(str(tmp_path), skip_unreadable=True)
    assert len(skipped) == 2 and skipped.targets.tolist() == [0, 1]


def test_unknown_data_value():
    with pytest.raises(DataError, match="'nope': not a bundled dataset"):
        load_dataset("nope")


def test_transforms_give_three_channel_tensors(fashion_train):
    image, _ = fashion_train[0]
    for transform in (extraction_transform(28), training_transform("small", 28),
                      training_transform("mmselfsup", 32), training_transform("original", 32)):
        out = transform(image)
        assert out.dtype == torch.float32 and out.shape[0] == 3
    assert extraction_transform(224)(Image.new("RGB", (500, 375))).shape == (3, 224, 224)
    # The extraction transform has no randomness.
    assert torch.equal(extraction_transform(28)(image), extraction_transform(28)(image))


def test_batched_pipelines_match_the_per_image_transforms(fashion_train):
    from deepcluster.transforms import extraction_pipeline, training_pipeline

    images = [fashion_train[i][0] for i in range(6)]
    for size in (28, 48):
        pipeline = extraction_pipeline(size, in_memory=True)
        batch = pipeline.batch(torch.stack([pipeline.sample(image) for image in images]))
        per_image = torch.stack([extraction_transform(size)(image) for image in images])
        assert batch.shape == per_image.shape == (6, 3, size, size)
        assert (batch - per_image).abs().mean() < 0.01
    augment = training_pipeline("mmselfsup", 32, in_memory=True)
    torch.manual_seed(0)
    first = augment.batch(torch.stack([augment.sample(image) for image in images]))
    second = augment.batch(torch.stack([augment.sample(image) for image in images]))
    assert first.shape == (6, 3, 32, 32) and not torch.equal(first, second)


def test_in_memory_batches_are_fetched_whole_and_equal_per_image_ones(fashion_train):
    from torch.utils.data import DataLoader

    from deepcluster.engine.loaders import IndexedImages
    from deepcluster.transforms import extraction_pipeline

    dataset = fashion_train.subset(300).with_transform(extraction_pipeline(28, True).sample)
    indices = [5, 0, 299, 17]
    batched = dataset.__getitems__(indices)
    per_image = [dataset[i] for i in indices]
    for (image, label), (expected, expected_label) in zip(batched, per_image):
        assert image.dtype == torch.uint8 and image.shape == (1, 28, 28)
        assert torch.equal(image, expected) and label == expected_label
    # through the DataLoader and the index wrapper of the training loop
    loader = DataLoader(IndexedImages(dataset), batch_size=64, shuffle=False)
    images, indices = next(iter(loader))
    assert torch.equal(images, torch.stack([dataset[i][0] for i in range(64)]))
    assert indices.tolist() == list(range(64))
