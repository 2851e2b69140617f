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


def widths_kept(pipeline, in_memory: bool, draws: int = 64) -> torch.Tensor:
    """Each crop's share of a horizontal grey ramp's range: the crop's width over the image's
    (the "small" augmentation has no jitter to change the values; a flip keeps the range)."""
    from PIL import Image

    ramp = torch.linspace(0, 255, 28).round().to(torch.uint8).expand(28, 28)
    if in_memory:
        out = pipeline.batch(ramp.expand(draws, 1, 28, 28).contiguous())
    else:
        out = torch.stack([pipeline.sample(Image.fromarray(ramp.numpy())) for _ in range(draws)])
    grey = out[:, 0]
    full = (255 - 0) / 255 / 0.25  # the ramp's range after normalising (std 0.25)
    return (grey.amax(dim=(1, 2)) - grey.amin(dim=(1, 2))) / full


@pytest.mark.parametrize("in_memory", [True, False])
def test_crop_min_scale_keeps_most_of_the_image(in_memory):
    torch.manual_seed(0)
    default = widths_kept(training_pipeline("small", 28, in_memory), in_memory)
    large = widths_kept(training_pipeline("small", 28, in_memory, min_scale=0.9), in_memory)
    # scale 0.9 and aspect ratio 3/4 to 4/3: at least sqrt(0.9 * 3/4) = 0.82 of the width
    assert large.min() > 0.75
    assert default.min() < 0.6  # "small"'s own range starts at 0.3: narrower crops are drawn


def test_crop_min_scale_outside_0_1_is_refused():
    from deepcluster.config import PretrainConfig

    with pytest.raises(ValueError, match="crop_min_scale=1.5 must be at most 1"):
        PretrainConfig(crop_min_scale=1.5)
