"""The ImageNet, Places205 and iNaturalist 2018 readers on small fixtures in the official layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepcluster.data import DataError, ImageFileDataset
from deepcluster.datasets import load_dataset
from deepcluster.readers import (
    imagenet_dataset,
    inat2018_dataset,
    places205_dataset,
    read_list_file,
)


def _image(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(path)
    return path


# ----------------------------------------------------------------------------------------------
# ImageNet


@pytest.fixture
def imagenet_folders(tmp_path: Path) -> Path:
    for split, names in (("train", ("a", "b")), ("val", ("c",))):
        for wnid in ("n01440764", "n01443537"):
            for name in names:
                _image(tmp_path / split / wnid / f"{wnid}_{name}.JPEG")
    return tmp_path


def test_imagenet_class_folders(imagenet_folders: Path) -> None:
    train = imagenet_dataset(imagenet_folders, "train")
    val = imagenet_dataset(imagenet_folders, "test")
    assert isinstance(train, ImageFileDataset)
    assert train.classes == val.classes == ["n01440764", "n01443537"]
    assert train.targets.tolist() == [0, 0, 1, 1]
    assert val.targets.tolist() == [0, 1]
    image, label = val[1]
    assert image.size == (6, 6) and label == 1


def test_every_command_reads_the_official_layouts(imagenet_folders: Path) -> None:
    # --data imagenet:ROOT goes through the same reader in pretrain, extract and the benchmarks.
    _image(imagenet_folders / "train" / "n01440764" / "broken.JPEG").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match="skipped 1 unreadable image.*broken.JPEG"):
        dataset = load_dataset(f"imagenet:{imagenet_folders}", "train", skip_unreadable=True)
    assert dataset.classes == ["n01440764", "n01443537"]
    assert dataset.targets.tolist() == [0, 0, 1, 1]
    with pytest.raises(DataError, match="not found"):
        load_dataset(f"places205:{imagenet_folders / 'missing'}")


def test_imagenet_val_folder_must_be_a_training_class(imagenet_folders: Path) -> None:
    _image(imagenet_folders / "val" / "n99999999" / "x.JPEG")
    with pytest.raises(DataError, match="unknown class 'n99999999'"):
        imagenet_dataset(imagenet_folders, "test")


def test_imagenet_flat_val_folder_is_refused(tmp_path: Path) -> None:
    _image(tmp_path / "train" / "n01440764" / "a.JPEG")
    _image(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DataError, match="class folders, or use meta/val.txt"):
        imagenet_dataset(tmp_path, "test")


def test_imagenet_list_files(tmp_path: Path) -> None:
    _image(tmp_path / "train" / "n01440764" / "a.JPEG")
    _image(tmp_path / "train" / "n01443537" / "b.JPEG")
    _image(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "train.txt").write_text("n01440764/a.JPEG 0\nn01443537/b.JPEG 1\n")
    (tmp_path / "meta" / "val.txt").write_text("ILSVRC2012_val_00000001.JPEG 1\n")
    train = imagenet_dataset(tmp_path, "train")
    val = load_dataset(f"imagenet:{tmp_path}", "test")
    assert train.targets.tolist() == [0, 1] and val.targets.tolist() == [1]
    assert len(train.classes) == 1000 and train.classes[:2] == ["n01440764", "n01443537"]
    assert val.paths == [tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG"]


@pytest.mark.parametrize("line, message", [
    ("n01443537/b.JPEG", r"train.txt:2: expected 'relative/path label'"),
    ("n01443537/b.JPEG one", r"train.txt:2: label 'one' is not an integer"),
    ("n01443537/b.JPEG 1000", r"train.txt:2: label 1000 is outside \[0, 1000\) \(unknown class\)"),
    ("n01443537/missing.JPEG 1", r"train.txt:2: image .*missing.JPEG not found"),
    ("n01443537/b.JPEG 0", r"train.txt:2: label 0 is used for folder 'n01443537' here but for "
                           r"'n01440764' on line 1"),
])
def test_imagenet_list_file_errors_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    _image(tmp_path / "train" / "n01440764" / "a.JPEG")
    _image(tmp_path / "train" / "n01443537" / "b.JPEG")
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "train.txt").write_text(f"n01440764/a.JPEG 0\n{line}\n")
    with pytest.raises(DataError, match=message):
        imagenet_dataset(tmp_path, "train")


def test_missing_layout_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="meta/val.txt nor the folder"):
        imagenet_dataset(tmp_path, "test")
    with pytest.raises(DataError, match="folder .*nowhere not found"):
        load_dataset(f"places205:{tmp_path / 'nowhere'}")


# ----------------------------------------------------------------------------------------------
# Places205


def _places(root: Path, train_lines: str) -> Path:
    images = root / "images256"
    for name in ("a/abbey/00000001.jpg", "a/abbey/00000002.jpg", "b/bar/00000001.jpg"):
        _image(images / name)
    lists = root / "trainvalsplit_places205"
    lists.mkdir(parents=True)
    (lists / "train_places205.csv").write_text(train_lines)
    (lists / "val_places205.csv").write_text("a/abbey/00000002.jpg 0\n")
    return root


def test_places205_official_lists(tmp_path: Path) -> None:
    root = _places(tmp_path, "a/abbey/00000001.jpg 0\nb/bar/00000001.jpg 7\n\n")
    train = places205_dataset(root, "train")
    val = load_dataset(f"places205:{root}", "test")
    assert train.targets.tolist() == [0, 7] and val.targets.tolist() == [0]
    assert len(train.classes) == 205
    assert train.classes[0] == "abbey" and train.classes[7] == "bar" and train.classes[1] == "1"
    assert train[1][1] == 7


@pytest.mark.parametrize("line, message", [
    ("b/bar/00000001.jpg 205", r"train_places205.csv:2: label 205 is outside \[0, 205\)"),
    ("b/bar/00000001.jpg,7", r"train_places205.csv:2: expected 'relative/path label'"),
    ("b/bar/00000001.jpg -1", r"train_places205.csv:2: label -1 is outside"),
])
def test_places205_malformed_line(tmp_path: Path, line: str, message: str) -> None:
    root = _places(tmp_path, f"a/abbey/00000001.jpg 0\n{line}\n")
    with pytest.raises(DataError, match=message):
        places205_dataset(root, "train")


def test_places205_missing_list(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="Places205 list file .*train_places205.csv not found"):
        places205_dataset(tmp_path, "train")


# ----------------------------------------------------------------------------------------------
# iNaturalist 2018


def _coco(images: list[tuple[int, str]], annotations: list[tuple[int, int]],
          categories: list[int]) -> dict:
    return {
        "info": {"year": 2018},
        "images": [{"id": i, "file_name": name, "width": 6, "height": 6} for i, name in images],
        "annotations": [{"id": n, "image_id": i, "category_id": c}
                        for n, (i, c) in enumerate(annotations)],
        "categories": [{"id": c, "name": f"species {c}", "supercategory": "Plantae"}
                       for c in categories],
    }


def _inat(root: Path, val: dict | str | None = None) -> Path:
    names = ["train_val2018/Plantae/5/a.jpg", "train_val2018/Plantae/9/b.jpg",
             "train_val2018/Aves/2/c.jpg"]
    for name in names:
        _image(root / name)
    train = _coco([(10, names[0]), (11, names[1]), (12, names[2])], [(10, 5), (11, 9), (12, 2)],
                  [9, 2, 5])
    (root / "train2018.json").write_text(json.dumps(train, indent=1))
    val = val if val is not None else _coco([(20, names[2])], [(20, 2)], [2, 5, 9])
    (root / "val2018.json").write_text(val if isinstance(val, str) else json.dumps(val, indent=1))
    return root


def test_inat2018_coco_json(tmp_path: Path) -> None:
    root = _inat(tmp_path)
    train = inat2018_dataset(root, "train")
    val = load_dataset(f"inat2018:{root}", "test")
    # Labels follow the sorted category ids of the training file: 2 -> 0, 5 -> 1, 9 -> 2.
    assert train.targets.tolist() == [1, 2, 0] and val.targets.tolist() == [0]
    assert train.classes == ["species 2", "species 5", "species 9"] == val.classes
    assert val[0][1] == 0


@pytest.mark.parametrize("val, message", [
    ('{"images": [\n  {"id": 1,}\n]}', r"val2018.json:2:\d+: malformed JSON"),
    ({"images": [], "categories": []}, r"val2018.json: missing key 'annotations'"),
    (_coco([(20, "train_val2018/Aves/2/c.jpg")], [(20, 7)], [7]),
     r"annotations\[0\]: category_id 7 is not a known category \(unknown class\)"),
    (_coco([(20, "train_val2018/Aves/2/c.jpg")], [(21, 2)], [2]),
     r"annotations\[0\]: image_id 21 is not in 'images'"),
    ({**_coco([(20, "x.jpg")], [(20, 2)], [2]), "images": [{"id": 20}]},
     r"images\[0\] has no 'file_name'"),
    (_coco([(20, "train_val2018/none.jpg")], [(20, 2)], [2]), r"images\[0\]: image .*none.jpg not found"),
    (_coco([(20, "train_val2018/Aves/2/c.jpg"), (21, "train_val2018/Aves/2/c.jpg")], [(20, 2)], [2]),
     r"images\[1\] \(id 21\) has no annotation"),
])
def test_inat2018_malformed_file_names_the_key(tmp_path: Path, val, message: str) -> None:
    root = _inat(tmp_path, val)
    with pytest.raises(DataError, match=message):
        inat2018_dataset(root, "test")


def test_read_list_file_without_folders_names_classes_by_number(tmp_path: Path) -> None:
    _image(tmp_path / "x.png")
    (tmp_path / "list.txt").write_text("x.png 2\n")
    dataset = read_list_file(tmp_path / "list.txt", tmp_path)
    assert dataset.classes == ["0", "1", "2"] and dataset.targets.tolist() == [2]
