import pytest
import torch

from deepcluster.models import (ARCHITECTURES, FEATURE_NAMES, DeepClusterModel, SobelFilter,
                                build_backbone, reset_head)


def test_sobel_on_a_vertical_edge():
    # Left half black, right half white, the same in all three channels.
    image = torch.zeros(1, 3, 8, 8)
    image[..., 4:] = 1.0
    out = SobelFilter()(image)
    assert out.shape == (1, 2, 8, 8)
    horizontal, vertical = out[0, 0], out[0, 1]
    # [1 0 -1; 2 0 -2; 1 0 -1] gives -4 on both columns next to the edge, 0 elsewhere inside.
    assert torch.allclose(horizontal[1:-1, 3], torch.full((6,), -4.0))
    assert torch.allclose(horizontal[1:-1, 4], torch.full((6,), -4.0))
    assert torch.all(horizontal[1:-1, :3] == 0) and torch.all(horizontal[1:-1, 6:7] == 0)
    # No horizontal edge, so the vertical filter is zero away from the zero-padded border rows.
    assert torch.all(vertical[1:-1, :] == 0)


def test_sobel_is_frozen_and_grey_is_the_channel_mean():
    sobel = SobelFilter()
    assert not any(p.requires_grad for p in sobel.parameters())
    colour = torch.rand(2, 3, 6, 6)
    grey = colour.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    assert torch.allclose(sobel(colour), sobel(grey), atol=1e-6)


@torch.no_grad()
def test_resnet50_stage_maps_at_224():
    backbone = build_backbone("resnet50", sobel=True).eval()
    maps = backbone.forward_features(torch.randn(1, 3, 224, 224))
    shapes = {name: tuple(m.shape[1:]) for name, m in maps.items()}
    assert shapes == {"feature1": (64, 112, 112), "feature2": (256, 56, 56),
                      "feature3": (512, 28, 28), "feature4": (1024, 14, 14),
                      "feature5": (2048, 7, 7)}
    assert backbone(torch.randn(1, 3, 224, 224)).shape == (1, 2048)


@pytest.mark.parametrize("arch,size", [("resnet18", 64), ("resnet18-small", 32), ("alexnet", 224),
                                       ("vgg16", 64), ("small-cnn", 28),
                                       ("small-cnn-wide", 28)])
@torch.no_grad()
def test_every_backbone_has_five_maps_and_its_feature_dim(arch, size):
    backbone = build_backbone(arch, sobel=arch != "vgg16").eval()
    x = torch.randn(2, 3, size, size)
    maps = backbone.forward_features(x)
    assert list(maps) == list(FEATURE_NAMES)
    assert all(m.dim() == 4 and m.shape[0] == 2 for m in maps.values())
    assert backbone(x).shape == (2, backbone.feature_dim)
    assert DeepClusterModel(backbone, 7)(x).shape == (2, 7)


def test_hidden_layers_stack_and_one_keeps_the_old_keys():
    backbone = build_backbone("small-cnn", sobel=True)
    one = DeepClusterModel(backbone, 7, hidden=16)
    two = DeepClusterModel(backbone, 7, hidden=16, layers=2)
    # One hidden layer: the keys of checkpoints written before head_layers existed.
    assert sorted(one.hidden.state_dict()) == sorted(k for k in two.hidden.state_dict()
                                                     if k[0] in "01")
    assert two.hidden.state_dict()["0.weight"].shape == (16, backbone.feature_dim)
    assert two.hidden.state_dict()["3.weight"].shape == (16, 16)
    assert two.eval()(torch.randn(2, 3, 28, 28)).shape == (2, 7)


def test_sobel_backbone_takes_two_channels_after_the_filter():
    backbone = build_backbone("resnet18", sobel=True)
    assert backbone.stages[0][0].in_channels == 2
    assert build_backbone("resnet18", sobel=False).stages[0][0].in_channels == 3


def test_unknown_architecture_names_the_choices():
    with pytest.raises(ValueError, match="unknown architecture 'resnet51'.*resnet50"):
        build_backbone("resnet51")
    assert "resnet50" in ARCHITECTURES


def test_head_reinitialisation_statistics():
    head = torch.nn.Linear(512, 2000)
    head.weight.data.fill_(3.0)
    head.bias.data.fill_(1.0)
    reset_head(head)
    assert abs(head.weight.mean().item()) < 1e-3
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert torch.all(head.bias == 0)
    first = head.weight.clone()
    reset_head(head)
    assert not torch.equal(first, head.weight)  # a fresh draw each epoch
