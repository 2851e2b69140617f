import pytest
import torch
from torch.utils.data import DataLoader

from deepcluster.transforms import AUGMENTATIONS, training_pipeline


@pytest.mark.parametrize("name", [a for a in AUGMENTATIONS if a != "none"])
@pytest.mark.parametrize("in_memory", [True, False])
def test_every_augmentation_gives_random_normalised_rgb_crops(fashion_train, name, in_memory):
    pipeline = training_pipeline(name, 28, in_memory)
    loader = DataLoader(fashion_train.subset(16).with_transform(pipeline.sample), batch_size=16)
    raw = next(iter(loader))[0]
    first, second = pipeline.batch(raw), pipeline.batch(raw)
    if not in_memory:  # per image: the randomness is in the loader's transform
        second = pipeline.batch(next(iter(loader))[0])
    assert first.shape == (16, 3, 28, 28) and first.dtype == torch.float32
    assert torch.isfinite(first).all()
    assert not torch.equal(first, second)  # two draws of the augmentation differ
