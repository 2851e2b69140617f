"""Benchmarking anyone's weights: the published checkpoint layouts read into this tool's backbone,
layer by layer equal to independently written models of the reference layouts; ``extract`` on
every layout; ``export`` loaded by torchvision; one-line errors for files that cannot be read.

No MMSelfSup and no original code here: the state dicts are built with the documented key
layouts (docs/interop.md) from small reference models written below.
"""

from __future__ import annotations

import math
import os
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image
from torch import nn

from deepcluster.checkpoint import backbone_from_checkpoint, load_checkpoint, save_checkpoint
from deepcluster.cli import main
from deepcluster.config import PretrainConfig
from deepcluster.interop.layouts import identify
from deepcluster.interop.network import check_fits
from deepcluster.models import build_backbone
from deepcluster.transforms import extraction_transform

DOCS = Path(__file__).resolve().parent.parent / "docs" / "interop.md"


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result) -> str:
    """The command failed with exactly one line of output, which is returned."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output + repr(result.exception)
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output and "weights_only=False" not in result.output
    assert "set to `False`" not in result.output
    return lines[0]


# ----------------------------------------------------------------------------------------------
# Reference models of the published layouts, written from their descriptions


@torch.no_grad()
def randomise(module: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine weights, so a swapped layer shows."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
    return module.eval()


@torch.no_grad()
def reference_sobel() -> nn.Sequential:
    """The Sobel pair of both references (grey 1x1 conv with bias, Sobel 3x3 conv with bias),
    perturbed: the import must take these weights, not rebuild the textbook ones."""
    grey, sobel = nn.Conv2d(3, 1, kernel_size=1), nn.Conv2d(1, 2, kernel_size=3, padding=1)
    grey.weight.copy_(torch.tensor([0.30, 0.45, 0.25]).view(1, 3, 1, 1))
    grey.bias.fill_(0.05)
    sobel.weight.copy_(torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]))
    sobel.weight[1, 0] = sobel.weight[0, 0].t() * 1.1
    sobel.bias.copy_(torch.tensor([0.02, -0.03]))
    return nn.Sequential(grey, sobel)


class ReferenceResNet(nn.Module):
    """MMSelfSup's DeepCluster network: optional Sobel pair, then a torchvision-style ResNet
    (conv1 taking the 2 Sobel channels); feature1 = conv1-bn1-relu, feature2..5 = layer1..4."""

    def __init__(self, depth: int = 50, sobel: bool = True):
        super().__init__()
        self.sobel = reference_sobel() if sobel else None
        self.net = getattr(torchvision.models, f"resnet{depth}")()
        if sobel:
            self.net.conv1 = nn.Conv2d(2, 64, kernel_size=7, stride=2, padding=3, bias=False)
        randomise(self)

    def layers(self, x):
        n = self.net
        x = self.sobel(x) if self.sobel is not None else x
        maps = [n.relu(n.bn1(n.conv1(x)))]
        maps.append(n.layer1(n.maxpool(maps[-1])))
        for layer in (n.layer2, n.layer3, n.layer4):
            maps.append(layer(maps[-1]))
        return maps, maps[-1].mean(dim=(2, 3))


class ReferenceAlexNet(nn.Module):
    """The original DeepCluster AlexNet: Sobel, ``features`` (conv-BN-ReLU, max-pools after the
    1st, 2nd and 5th), ``classifier`` (Dropout, fc6, ReLU, Dropout, fc7, ReLU), ``top_layer``."""

    CONVS = [(96, 11, 4, 2), "M", (256, 5, 1, 2), "M", (384, 3, 1, 1), (384, 3, 1, 1),
             (256, 3, 1, 1), "M"]
    TAPS = (3, 7, 10, 13, 17)  # the end of each of the five stages in ``features``

    def __init__(self, k: int = 10):
        super().__init__()
        self.sobel = reference_sobel()
        layers, channels = [], 2
        for spec in self.CONVS:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
                continue
            out, kernel, stride, pad = spec
            layers += [nn.Conv2d(channels, out, kernel, stride, pad), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096),
                                        nn.ReLU(inplace=True), nn.Dropout(0.5),
                                        nn.Linear(4096, 4096), nn.ReLU(inplace=True))
        self.top_layer = nn.Linear(4096, k)
        randomise(self)

    def layers(self, x):
        x = self.sobel(x)
        maps = []
        for index, module in enumerate(self.features):
            x = module(x)
            if index in self.TAPS:
                maps.append(x.clone())
        return maps, self.classifier[:5](x.flatten(1))  # fc7 before its ReLU


def mmselfsup_file(model: ReferenceResNet, version: str, k: int = 10) -> dict:
    """``{'meta', 'state_dict'}`` as MMSelfSup writes it (1.x: the Sobel layer inside the
    backbone; 0.x: at the top level)."""
    state = OrderedDict()
    if model.sobel is not None:
        prefix = "backbone.sobel_layer.sobel." if version == "1.x" else "sobel_layer.sobel."
        state.update({prefix + key: value for key, value in model.sobel.state_dict().items()})
    state.update({"backbone." + key: value for key, value in model.net.state_dict().items()
                  if not key.startswith("fc.")})
    width = model.net.fc.in_features
    state["head.fc_cls.weight"] = torch.randn(k, width) * 0.01
    state["head.fc_cls.bias"] = torch.zeros(k)
    state["loss_weight"] = torch.full((k,), 1.0 / k)
    meta = {"epoch": 200, "iter": 500400, "seed": np.int64(0), "mmselfsup_version": version,
            "time": "Fri Sep  9 11:02:26 2022", "config": "model = dict(type='DeepCluster')"}
    return {"meta": meta, "state_dict": state}


def original_file(model: nn.Module, arch: str, leading_module: bool = False) -> dict:
    """``{'epoch', 'arch', 'state_dict', 'optimizer'}`` as facebookresearch/deepcluster's
    main.py saves it, ``features`` inside DataParallel."""
    state = OrderedDict()
    for key, value in model.state_dict().items():
        if key.startswith("features."):
            key = "features.module." + key[len("features."):]
        state[("module." if leading_module else "") + key] = value
    optimizer = {"state": {}, "param_groups": [{"lr": 0.05, "momentum": 0.9,
                                                "weight_decay": 1e-5, "params": [0, 1]}]}
    return {"epoch": 500, "arch": arch, "state_dict": state, "optimizer": optimizer}


def swav_file(net: nn.Module, prototype_sets: int) -> dict:
    """A SwAV (1 prototype set) / DeepCluster-v2 (several) release: ``module.`` prefixes, the
    projection head and the prototypes beside the trunk, no ``fc``."""
    state = OrderedDict(("module." + k, v) for k, v in net.state_dict().items()
                        if not k.startswith("fc."))
    width = net.fc.in_features
    state["module.projection_head.0.weight"] = torch.randn(64, width)
    state["module.projection_head.0.bias"] = torch.zeros(64)
    state["module.projection_head.1.weight"] = torch.ones(64)
    state["module.projection_head.1.bias"] = torch.zeros(64)
    state["module.projection_head.1.running_mean"] = torch.zeros(64)
    state["module.projection_head.1.running_var"] = torch.ones(64)
    state["module.projection_head.1.num_batches_tracked"] = torch.tensor(0)
    state["module.projection_head.3.weight"] = torch.randn(16, 64)
    state["module.projection_head.3.bias"] = torch.zeros(16)
    if prototype_sets == 1:
        state["module.prototypes.weight"] = torch.randn(30, 16)
    for index in range(prototype_sets if prototype_sets > 1 else 0):
        state[f"module.prototypes.prototypes{index}.weight"] = torch.randn(30, 16)
    return state


def assert_close_maps(ours, reference):
    for a, b in zip(ours, reference, strict=True):
        assert a.shape == b.shape
        scale = float(b.abs().max()) or 1.0
        assert float((a - b).abs().max()) <= 1e-4 * scale


# ----------------------------------------------------------------------------------------------
# Files: one of each layout, written once for the module


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """name -> (path, reference model) for every layout (small networks where the layout
    allows; ResNet-50 for MMSelfSup's Sobel network)."""
    folder = tmp_path_factory.mktemp("layouts")
    torch.manual_seed(0)
    made = {}

    def write(name, payload, model):
        path = folder / name
        torch.save(payload, path)
        made[name.split(".")[0]] = (path, model)

    r50 = ReferenceResNet(50, sobel=True)
    write("mmselfsup-1x-r50.pth", mmselfsup_file(r50, "1.x"), r50)
    r18 = ReferenceResNet(18, sobel=True)
    write("mmselfsup-0x-r18.pth", mmselfsup_file(r18, "0.x"), r18)
    rgb = ReferenceResNet(18, sobel=False)
    write("mmselfsup-rgb-r18.pth", mmselfsup_file(rgb, "1.x"), rgb)
    alexnet = ReferenceAlexNet()
    write("original-alexnet.pth.tar", original_file(alexnet, "alexnet"), alexnet)
    tv = ReferenceResNet(18, sobel=False)
    write("torchvision-r18.pth", tv.net.state_dict(), tv)
    swav = ReferenceResNet(18, sobel=False)
    write("dcv2-r18.pth.tar", swav_file(swav.net, prototype_sets=3), swav)
    return made


def test_mmselfsup_resnet50_sobel_matches_the_reference_layer_by_layer(files):
    path, reference = files["mmselfsup-1x-r50"]
    backbone, config = backbone_from_checkpoint(path)
    assert (config.arch, config.sobel, config.image_size, config.precision, config.k) == \
        ("resnet50", True, 224, "32-true", 10)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps, pooled = reference.layers(x)
        ours = backbone.forward_features(x)
        assert_close_maps([ours[f"feature{i}"] for i in range(1, 6)], maps)
        assert_close_maps([backbone(x)], [pooled])
    # the Sobel weights are the file's (perturbed), not the textbook ones
    grey = backbone.input_layer.filters[0]
    assert torch.equal(grey.weight, reference.sobel[0].weight)
    assert torch.equal(grey.bias, reference.sobel[0].bias)


@pytest.mark.parametrize("name", ["mmselfsup-0x-r18", "mmselfsup-rgb-r18", "torchvision-r18",
                                  "dcv2-r18"])
def test_resnet_layouts_match_the_reference(files, name):
    path, reference = files[name]
    with pytest.warns(UserWarning, match="left out"):
        backbone, config = backbone_from_checkpoint(path)
    assert config.arch == "resnet18" and config.sobel == (reference.sobel is not None)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        maps, pooled = reference.layers(x)
        ours = backbone.forward_features(x)
        assert_close_maps([ours[f"feature{i}"] for i in range(1, 6)] + [backbone(x)],
                          maps + [pooled])


def test_original_alexnet_with_its_sobel_pair_matches_the_reference(files):
    path, reference = files["original-alexnet"]
    state = load_checkpoint(path)
    assert state["imported"]["layout"] == "original" and state["epoch"] == 500
    backbone, config = backbone_from_checkpoint(path)
    assert (config.arch, config.sobel, config.k) == ("alexnet", True, 10)
    x = torch.randn(1, 3, 224, 224)  # the original's view(256 * 6 * 6) needs 224 px
    with torch.no_grad():
        maps, fc7 = reference.layers(x)
        ours = backbone.forward_features(x)
        assert_close_maps([ours[f"feature{i}"] for i in range(1, 6)] + [backbone(x)],
                          maps + [fc7])


# ----------------------------------------------------------------------------------------------
# Every layout maps every weight (key layouts only: meta tensors, no memory, no time)


def meta_state(build) -> dict:
    with torch.device("meta"):
        return build().state_dict()


def _vgg_original():
    features = torchvision.models.vgg16_bn().features
    features[0] = nn.Conv2d(2, 64, kernel_size=3, padding=1)
    model = nn.Module()
    model.sobel = nn.Sequential(nn.Conv2d(3, 1, 1), nn.Conv2d(1, 2, 3, padding=1))
    model.features = features
    model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(0.5),
                                     nn.Linear(4096, 4096), nn.ReLU(True))
    model.top_layer = nn.Linear(4096, 10000)
    return model


def _layout_cases():
    tv50 = lambda: torchvision.models.resnet50()  # noqa: E731 (timm's resnet50: the same names)
    with torch.device("meta"):
        r50 = ReferenceResNet(50, sobel=True)
        rgb50 = ReferenceResNet(50, sobel=False)
        alexnet = ReferenceAlexNet(k=10000)
        vgg = _vgg_original()
    return {
        "mmselfsup 1.x sobel": (mmselfsup_file(r50, "1.x", 10000), "mmselfsup", "resnet50", True),
        "mmselfsup 0.x sobel": (mmselfsup_file(r50, "0.x", 10000), "mmselfsup", "resnet50", True),
        "mmselfsup rgb": (mmselfsup_file(rgb50, "1.x", 10000), "mmselfsup", "resnet50", False),
        "original alexnet": (original_file(alexnet, "alexnet"), "original", "alexnet", True),
        "original alexnet, module.": (original_file(alexnet, "alexnet", leading_module=True),
                                      "original", "alexnet", True),
        "original vgg16": (original_file(vgg, "vgg16"), "original", "vgg16", True),
        "torchvision resnet50": (meta_state(tv50), "resnet", "resnet50", False),
        "torchvision resnet18": (meta_state(torchvision.models.resnet18), "resnet", "resnet18",
                                 False),
        "swav resnet50": (swav_file(rgb50.net, 1), "resnet", "resnet50", False),
        "deepcluster-v2 resnet50": (swav_file(rgb50.net, 3), "resnet", "resnet50", False),
        # MMSelfSup's extracted backbone weights of a Sobel network: 2-channel conv1, no Sobel
        "extracted sobel backbone": ({"state_dict": {k: v for k, v in r50.net.state_dict().items()
                                                     if not k.startswith("fc.")}},
                                     "resnet", "resnet50", True),
    }


LEFT_OUT = re.compile(r"^(head\.|loss_weight|top_layer\.|fc\.|projection_head\.|prototypes\.)")


@pytest.mark.parametrize("case", list(_layout_cases()))
def test_each_layout_maps_every_weight(case):
    raw, layout, arch, sobel = _layout_cases()[case]
    fit = identify(raw, case)
    assert (fit.layout, fit.arch, fit.sobel) == (layout, arch, sobel)
    source = raw["state_dict"] if "state_dict" in raw else raw
    mapped = {id(v) for v in fit.state.values()}
    for key, value in source.items():  # every tensor of the file is mapped or left out by name
        assert id(value) in mapped or LEFT_OUT.match(key.replace("module.", "")), key
    assert all(LEFT_OUT.match(k) for k in fit.dropped)
    check_fits(arch, sobel, fit.state, case)  # and every backbone weight is filled


# ----------------------------------------------------------------------------------------------
# extract on every layout


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """An unlabelled folder of 3 images, named so that sorted order differs from creation."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("b.png", "a.jpg", "c/d.png"):
        (folder / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.mark.parametrize("name", ["mmselfsup-1x-r50", "mmselfsup-0x-r18", "mmselfsup-rgb-r18",
                                  "original-alexnet", "torchvision-r18", "dcv2-r18"])
def test_extract_reads_every_layout(files, image_folder, tmp_path, name):
    out = tmp_path / "f.npz"
    result = cli("extract", "--checkpoint", files[name][0], "--data", image_folder,
                 "--layer", "avgpool", "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    saved = np.load(out)
    assert saved["features"].dtype == np.float32 and saved["features"].shape[0] == 3
    assert list(saved["paths"]) == sorted(str(p) for p in saved["paths"])
    assert (saved["labels"] == -1).all()


def test_extract_rows_are_the_sorted_files_features_at_every_layer(files, image_folder,
                                                                   tmp_path):
    from deepcluster.features import pooled_map

    path = files["torchvision-r18"][0]
    files_sorted = sorted(p for p in image_folder.rglob("*") if p.is_file())
    with pytest.warns(UserWarning):
        backbone, config = backbone_from_checkpoint(path)
    transform = extraction_transform(config.image_size)  # 256, centre 224, ImageNet mean/std
    batch = torch.stack([transform(Image.open(p)) for p in files_sorted])
    for layer in ("global", "avgpool", "feature1", "feature2", "feature3", "feature4",
                  "feature5"):
        out = tmp_path / f"{layer}.npz"
        result = cli("extract", "--checkpoint", path, "--data", image_folder, "--layer", layer,
                     "--format", "resnet", "--out", out)
        assert result.exit_code == 0, result.output + repr(result.exception)
        saved = np.load(out)
        assert [Path(p) for p in saved["paths"]] == files_sorted
        with torch.no_grad():
            expected = pooled_map(backbone, layer)(batch).flatten(1).numpy()
        np.testing.assert_allclose(saved["features"], expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# convert, export and the documented snippet


def _snippet() -> str:
    text = DOCS.read_text()
    block = text.split("<!-- export-snippet -->", 1)[1]
    return block.split("```python", 1)[1].split("```", 1)[0]


def test_export_then_torchvision_with_the_documented_first_module_gives_the_features(
        files, tmp_path):
    path = files["mmselfsup-1x-r50"][0]
    converted = tmp_path / "r50.ckpt"
    assert cli("convert", path, "--out", converted).exit_code == 0
    exported = tmp_path / "r50-sobel.pth"
    result = cli("export", converted, "--out", exported)
    assert result.exit_code == 0, result.output
    namespace: dict = {}
    exec(_snippet().replace('"r50-sobel.pth"', repr(str(exported))), namespace)
    model = namespace["model"]
    backbone, _ = backbone_from_checkpoint(converted)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_close_maps([model(x)], [backbone(x)])


def test_safetensors_export_reads_back_with_its_config(tmp_path):
    torch.manual_seed(1)
    config = PretrainConfig(arch="small-cnn", sobel=True, image_size=28, seed=3)
    backbone = randomise(build_backbone("small-cnn", True))
    native = tmp_path / "run.ckpt"
    save_checkpoint({"format": "deepcluster-run/2", "config": config.to_dict(), "epoch": 1,
                     "backbone": backbone.state_dict()}, native)
    assert cli("export", native, "--out", tmp_path / "x.pth").exit_code == 1  # no torchvision model
    out = tmp_path / "small.safetensors"
    assert cli("export", native, "--out", out, "--format", "safetensors").exit_code == 0
    assert (tmp_path / "small.json").is_file()
    again, read = backbone_from_checkpoint(out)
    assert read.to_dict() == config.to_dict()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(again(x), backbone(x))


def test_a_timm_style_safetensors_file_reads_as_a_resnet(files, tmp_path):
    from safetensors.torch import save_file

    path, reference = files["torchvision-r18"]
    out = tmp_path / "model.safetensors"  # timm's hub files: torchvision's names, safetensors
    save_file(reference.net.state_dict(), str(out))
    with pytest.warns(UserWarning, match="fc"):
        backbone, config = backbone_from_checkpoint(out)
    assert (config.arch, config.image_size, config.method) == ("resnet18", 224, "supervised")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert_close_maps([backbone(x)], [reference.layers(x)[1]])


# ----------------------------------------------------------------------------------------------
# Files that cannot be benchmarked: one line naming the file and what was expected


class RunsCode:
    """Pickles as a call of os.mkdir: loading the file unrestricted would create a folder."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return os.mkdir, (self.target,)


def _bad_files(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    (folder / "empty.pth").write_bytes(b"")
    (folder / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"state_dict": {"w": RunsCode(folder / "pwned")}}, folder / "code.pth")
    torch.save({"model_ema": {"cls_token": torch.zeros(1, 1, 8),
                              "patch_embed.proj.weight": torch.zeros(8, 3, 4, 4)}},
               folder / "vit.pth")
    data = good.read_bytes()
    (folder / "truncated.pth").write_bytes(data[:len(data) // 2])
    return {"empty": (folder / "empty.pth", "is empty"),
            "random bytes": (folder / "random.pth", "is not a torch checkpoint"),
            "code": (folder / "code.pth", "refers to Python code"),
            "foreign keys": (folder / "vit.pth", "fit no known layout (tried deepcluster, "
                                                 "mmselfsup, original, resnet)"),
            "truncated": (folder / "truncated.pth", "is truncated or damaged")}


@pytest.mark.parametrize("fault", ["empty", "random bytes", "code", "foreign keys", "truncated"])
def test_unreadable_checkpoints_give_one_line(files, image_folder, tmp_path, fault):
    path, expected = _bad_files(tmp_path, files["torchvision-r18"][0])[fault]
    line = one_line_error(cli("extract", "--checkpoint", path, "--data", image_folder,
                              "--out", tmp_path / "f.npz"))
    assert str(path) in line and expected in line
    assert not (tmp_path / "pwned").exists()  # nothing in the file ran
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_checkpoint(path)


def test_a_forced_format_that_does_not_fit_says_why(files, image_folder, tmp_path):
    line = one_line_error(cli("extract", "--checkpoint", files["original-alexnet"][0],
                              "--format", "mmselfsup", "--data", image_folder,
                              "--out", tmp_path / "f.npz"))
    assert "does not fit the mmselfsup layout" in line


def test_a_benchmark_refuses_nan_weights(tmp_path):
    config = PretrainConfig(arch="small-cnn", sobel=True, image_size=8, data="digits")
    state = build_backbone("small-cnn", True).state_dict()
    state["stages.3.0.weight"][0, 0, 0, 0] = math.nan
    state["stages.3.1.running_var"][1] = math.inf
    path = tmp_path / "diverged.ckpt"
    save_checkpoint({"config": config.to_dict(), "backbone": state}, path)
    line = one_line_error(cli("benchmark", "knn", "--checkpoint", path, "--data", "digits",
                              "--out", tmp_path / "knn"))
    assert str(path) in line and "stages.3.0.weight" in line and "NaN" in line
    backbone_from_checkpoint(path, random_init=True)  # the random-init baseline still builds


# ----------------------------------------------------------------------------------------------
# benchmark all: the small versions of the published tables, resumable


def test_benchmark_all_on_small_data_writes_the_tables_and_resumes(tmp_path):
    torch.manual_seed(0)
    config = PretrainConfig(arch="small-cnn", sobel=True, image_size=8, data="digits")
    checkpoint = tmp_path / "tiny.ckpt"
    save_checkpoint({"config": config.to_dict(),
                     "backbone": randomise(build_backbone("small-cnn", True)).state_dict()},
                    checkpoint)
    out = tmp_path / "all"
    args = ["benchmark", "all", "--checkpoint", checkpoint, "--data", "digits", "--out", out,
            "--voc-images", "40,24", "--costs", "vissl", "--svm-layers", "feature5",
            "--samples", "1", "--ks", "1,2",
            "--subset", "300", "--test-subset", "100", "--jobs", "1", "--threads", "1"]
    result = cli(*args, "--epochs", "1")
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = (out / "benchmarks.md").read_text()
    assert "| ResNet-50 + Sobel, 200 epochs (MMSelfSup, published) | VOC2007 | feature5 | " \
           "74.26 | 29.37 |" in report
    published = "| ImageNet-1k | ResNet-50 + Sobel, 200 epochs (MMSelfSup, published) | 12.78 |"
    assert published in report
    assert "| ImageNet-1k | this checkpoint (not run: no --imagenet) |" in report
    small = next(line for line in report.splitlines() if line.startswith("| digits (small"))
    assert len(re.findall(r"\| \d+\.\d\d ", small)) == 6  # Feature1..5 and AvgPool
    voc = next(line for line in report.splitlines() if "generated from Fashion-MNIST" in line)
    assert re.search(r"\| feature\d \| \d+\.\d\d \| \d+\.\d\d \| \d+\.\d\d \|", voc)
    again = cli(*args, "--epochs", "1")  # everything done: kept, nothing recomputed
    assert again.output.count("done before, kept") == 4 and "running" not in again.output
    longer = cli(*args, "--epochs", "2")  # a changed probe recipe reruns that step only
    assert longer.output.count("done before, kept") == 3
    assert "digits-linear: running" in longer.output
