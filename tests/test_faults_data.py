"""The data-input rows of the faults table (docs/faults.md): bad input ends in one line naming the
file and the key, line or value at fault; never a raw traceback, never a silently wrong result."""

from __future__ import annotations

import json
import signal
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from deepcluster.data import DataError, ImageFileDataset
from deepcluster.datasets import load_dataset
from deepcluster.list_files import list_file_dataset, read_list_file
from deepcluster.readers import inat2018_dataset, inat_json_dataset
from deepcluster.voc import (POSITIVE, VOCObject, devkit_classes, parse_annotation,
                             read_voc)

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _image(path: Path, colour=(0, 0, 0), size=(6, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


@contextmanager
def _no_hang(seconds: int = 20):
    """Fail (instead of hanging) when a reader takes more than ``seconds``."""
    def stop(*_):
        raise AssertionError(f"the reader hung for {seconds} s")
    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _one_line_error(error: Exception, file: Path) -> None:
    message = str(error)
    assert isinstance(error, ValueError), type(error)
    assert "\n" not in message and str(file) in message, message


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    from deepcluster.checkpoint import save_checkpoint
    from deepcluster.config import PretrainConfig
    from deepcluster.models import build_backbone

    config = PretrainConfig(arch="small-cnn", sobel=True, image_size=28)
    path = tmp_path / "tiny.ckpt"
    save_checkpoint({"config": config.to_dict(), "epoch": 1,
                     "backbone": build_backbone(config.arch, config.sobel).state_dict()}, path)
    return path


# ----------------------------------------------------------------------------------------------
# Row 3: train/ + val/ class-folder trees share train/'s classes


# One pattern per class (grey pixels: the k-NN's raw-pixel baseline sees them apart).
PATTERNS = {"apple": np.s_[:, :3], "banana": np.s_[:3, :], "cherry": np.s_[2:4, 2:4]}


def _pattern_image(path: Path, name: str, level: int) -> None:
    pixels = np.full((6, 6, 3), 10, dtype=np.uint8)
    pixels[PATTERNS.get(name, np.s_[:1, :1])] = level
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _split_tree(root: Path, val_classes) -> Path:
    for name in PATTERNS:
        for i in range(2):
            _pattern_image(root / "train" / name / f"{i}.png", name, 200 + 40 * i)
    for name in val_classes:
        _pattern_image(root / "val" / name / "v.png", name, 220)
    return root


def test_row3_val_tree_missing_a_class_keeps_train_labels(tmp_path: Path, tiny_checkpoint) -> None:
    from deepcluster.benchmarks.knn import knn_top1, raw_pixel_features

    root = _split_tree(tmp_path / "tree", ["banana", "cherry"])  # no val/apple
    with pytest.warns(UserWarning, match=r"no folder for 1 of the 3 training classes \(first: apple\)"):
        val = load_dataset(str(root), "test")
    assert val.classes == ["apple", "banana", "cherry"] and val.targets.tolist() == [1, 2]
    # The k-NN of the faults table: 100 % (it was 0 % with each split numbering its own folders).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = raw_pixel_features(str(root), "train", 6)
        test = raw_pixel_features(str(root), "test", 6)
    assert knn_top1(*train, *test, k=1) == 100.0

    # A val class that train does not have: an error naming the folder, and the CLI's one line.
    _image(root / "val" / "durian" / "v.png")
    with pytest.raises(DataError, match=r"val/durian: class folder is not one of the 3 training "
                                        r"classes \(unknown class 'durian'\)"):
        load_dataset(str(root), "test")
    from deepcluster.cli import main

    result = CliRunner().invoke(main, ["benchmark", "knn", "--checkpoint", str(tiny_checkpoint),
                                       "--data", str(root), "--out", str(tmp_path / "knn")])
    assert result.exit_code == 1 and "unknown class 'durian'" in result.output
    last = result.output.rstrip("\n").rsplit("\r", 1)[-1]  # after the progress bar
    assert "Traceback" not in result.output and last.startswith("Error: ") and "\n" not in last


def test_row3_empty_class_folder_is_named(tmp_path: Path) -> None:
    root = _split_tree(tmp_path, ["apple", "banana", "cherry"])
    (root / "train" / "banana" / "0.png").unlink()
    (root / "train" / "banana" / "1.png").unlink()
    (root / "train" / "banana" / "notes.txt").write_text("no image here")
    (root / "train" / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    for split in ("train", "test"):
        with pytest.raises(DataError, match=r"train: class folder\(s\) without images: banana"):
            load_dataset(str(root), split)
    # A val/ tree without train/: not a class tree with a class called "val".
    _image(tmp_path / "valonly" / "val" / "apple" / "v.png")
    for split in ("train", "test"):
        with pytest.raises(DataError, match=r"valonly: a 'val/' tree but no 'train/' one"):
            load_dataset(str(tmp_path / "valonly"), split)


# ----------------------------------------------------------------------------------------------
# Row 4: list files: paths checked when read, outside the root refused, comments and a header


def test_row4_list_file_paths_are_checked_when_read(tmp_path: Path) -> None:
    _image(tmp_path / "data" / "a.png")
    _image(tmp_path / "data" / "sub" / "b.png")
    outside = _image(tmp_path / "elsewhere.png")
    listing = tmp_path / "data" / "list.txt"
    listing.write_text("# made by hand\npath label\n\na.png 0\n  # indented comment\nsub/b.png 2\n")
    dataset = load_dataset(str(listing))
    assert dataset.targets.tolist() == [0, 2] and dataset.classes == ["0", "1", "2"]

    # A missing image: found when the list is read, blamed on its own line (comments count).
    listing.write_text("# comment\n\na.png 0\nmissing.png 1\n")
    with pytest.raises(DataError, match=r"list.txt:4: image .*missing.png not found"):
        load_dataset(str(listing))
    with pytest.raises(DataError, match=r"list.txt:4: image .*missing.png not found"):
        load_dataset(str(listing), skip_unreadable=True)  # not dropped as if it were corrupt

    # Outside the root: refused unless asked for.
    for line, message in (("../elsewhere.png 1", "path '../elsewhere.png' leads outside the root"),
                          (f"{outside} 1", "absolute path .* refused")):
        listing.write_text(f"a.png 0\n# c\n{line}\n")
        with pytest.raises(DataError, match=rf"list.txt:3: {message}.*allow_outside_root"):
            load_dataset(str(listing))
        assert len(load_dataset(str(listing), allow_outside_root=True)) == 2
    listing.write_text("sub/../a.png 0\n")  # climbs, but stays under the root
    assert load_dataset(str(listing)).paths == [tmp_path / "data" / "sub/../a.png"]

    listing.write_text("a.png 0\n#\nsub/b.png\n")
    with pytest.raises(DataError, match=r"list.txt:3: some lines have a label and some do not "
                                        r"\(this one has no label, line 1 has one\)"):
        load_dataset(str(listing))
    listing.write_text("a.png ３\n")  # a full-width digit is no label
    with pytest.raises(DataError, match=r"list.txt:1: label '３' is not an integer"):
        load_dataset(str(listing))

    # The official lists (ImageNet meta/*.txt, Places205) follow the same rules.
    (tmp_path / "meta.txt").write_text("filename label\n# c\n../elsewhere.png 1\n")
    with pytest.raises(DataError, match=r"meta.txt:3: path '../elsewhere.png' leads outside"):
        read_list_file(tmp_path / "meta.txt", tmp_path / "data", 5)
    assert read_list_file(tmp_path / "meta.txt", tmp_path / "data", 5,
                          allow_outside_root=True).targets.tolist() == [1]


def test_row4_vanished_image_is_not_skipped_as_corrupt(tmp_path: Path) -> None:
    for name in ("a/1.png", "a/2.png", "b/3.png"):
        _image(tmp_path / name)
    dataset = load_dataset(str(tmp_path))
    (tmp_path / "a" / "2.png").unlink()
    with pytest.raises(DataError, match=r"image .*a/2.png not found"):
        dataset.drop_unreadable()
    with pytest.raises(DataError, match=r"image .*a/2.png not found"):
        dataset[1]


# ----------------------------------------------------------------------------------------------
# Row 5: iNat errors name the JSON file and the record and key


def _coco(images, annotations, categories) -> dict:
    return {"images": [{"id": i, "file_name": name} for i, name in images],
            "annotations": [{"image_id": i, "category_id": c} for i, c in annotations],
            "categories": [{"id": c, "name": f"species {c}"} for c in categories]}


@pytest.mark.parametrize("train, val, message", [
    (None, _coco([(1, 5)], [(1, 2)], [2]),
     r"val2018.json: images\[0\]: 'file_name' 5 is not a path"),
    (_coco([(1, "x.png")], [(1, 2)], [2, "two"]), None,
     r"train2018.json: categories\[1\]: 'id' 'two' is not an integer category id"),
    (None, _coco([(1, "x.png")], [(1, 2.5)], [2]),
     r"val2018.json: annotations\[0\]: 'category_id' 2.5 is not an integer category id"),
    (None, _coco([([1], "x.png")], [(1, 2)], [2]),
     r"val2018.json: images\[0\]: 'id' \[1\] is not an integer or string image id"),
    (None, _coco([(1, "../x.png")], [(1, 2)], [2]),
     r"val2018.json: images\[0\]: path '../x.png' leads outside the root"),
])
def test_row5_inat_errors_name_the_file_and_key(tmp_path: Path, train, val, message) -> None:
    _image(tmp_path / "x.png")
    good = _coco([(1, "x.png")], [(1, 2)], [2])
    (tmp_path / "train2018.json").write_text(json.dumps(train or good))
    (tmp_path / "val2018.json").write_text(json.dumps(val or good))
    with pytest.raises(DataError, match=message) as raised:
        inat2018_dataset(tmp_path, "test")
    _one_line_error(raised.value, tmp_path)
    # "12" and 12 are the same category id in every record.
    (tmp_path / "val2018.json").write_text(json.dumps(_coco([(1, "x.png")], [(1, "2")], [2])))
    (tmp_path / "train2018.json").write_text(json.dumps(good))
    assert inat2018_dataset(tmp_path, "test").targets.tolist() == [0]


# ----------------------------------------------------------------------------------------------
# Fuzzed annotations: a dataset or one line naming the file, nothing else


TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
LIST_TOKENS = st.one_of(
    st.sampled_from(["a.png", "sub/b.png", "../a.png", "/etc/passwd", "sub/../a.png", "missing.png",
                     "#", "# note", "path", "label", "filename", "0", "1", "4", "-1", "07",
                     "99999999999999", "1.5", "x", "\x00", "a" * 300, "", "\t", "\r", "\ufeff"]),
    st.integers(-3, 12).map(str), TEXT)


@st.composite
def list_texts(draw) -> bytes:
    """Mostly entries, comments and blank lines with some lines fuzzed, sometimes random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=60))
    labelled = draw(st.booleans())
    lines = ["path label" if labelled else "filename"] if draw(st.integers(0, 3)) == 0 else []
    for _ in range(draw(st.integers(0, 5))):
        roll = draw(st.integers(0, 9))
        if roll <= 5:
            path = draw(st.sampled_from(["a.png", "sub/b.png", "sub/../a.png"]))
            lines.append(f"{path} {draw(st.integers(0, 4))}" if labelled else path)
        elif roll == 6:
            lines.append(draw(st.sampled_from(["", "   ", "# a comment", "#x.png 3"])))
        else:
            lines.append(" ".join(draw(st.lists(LIST_TOKENS, max_size=4))))
    return draw(st.sampled_from(["\n", "\r\n"])).join(lines).encode("utf-8", "surrogatepass")


@FUZZ
@given(content=list_texts(), num_classes=st.sampled_from([None, 5]))
def test_fuzz_list_file(tmp_path: Path, content: bytes, num_classes) -> None:
    _image(tmp_path / "a.png")
    _image(tmp_path / "sub" / "b.png")
    listing = tmp_path / "list.txt"
    listing.write_bytes(content)
    for read in (lambda: list_file_dataset(listing),
                 lambda: read_list_file(listing, tmp_path, num_classes)):
        try:
            with _no_hang():
                dataset = read()
        except ValueError as error:
            _one_line_error(error, listing)
            continue
        assert isinstance(dataset, ImageFileDataset) and len(dataset) >= 1
        assert all(path.is_file() and tmp_path in path.resolve().parents for path in dataset.paths)
        if dataset.targets is not None:
            assert (dataset.targets >= 0).all() and dataset.targets.max() < len(dataset.classes)


XML_TEXT = st.one_of(st.sampled_from(["0", "1", "2", "cat", " dog ", "1e400", "nan", "-5", "3.7",
                                      "", "&amp;", "a\nb", "<"]), TEXT)


def _maybe(draw, value: st.SearchStrategy, usual: str) -> str | None:
    """Mostly a usual value, sometimes a fuzzed one, sometimes nothing."""
    roll = draw(st.integers(0, 9))
    return None if roll == 0 else draw(value) if roll <= 3 else usual


def _escaped(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;")


@st.composite
def annotation_xml(draw) -> bytes:
    """Mostly well-formed VOC annotations with fuzzed fields, sometimes broken or random bytes."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=80))
    objects = ""
    for _ in range(draw(st.integers(0, 3))):
        parts = []
        for tag, usual in (("name", draw(st.sampled_from(["cat", "dog"]))), ("difficult", "0"),
                           ("truncated", "1")):
            text = _maybe(draw, XML_TEXT, usual)
            if text is not None:
                parts.append(f"<{tag}>{_escaped(text)}</{tag}>")
        if draw(st.booleans()):
            box = "".join(f"<{tag}>{_escaped(text)}</{tag}>" for tag in ("xmin", "ymin", "xmax", "ymax")
                          if (text := _maybe(draw, XML_TEXT, "3")) is not None)
            parts.append(f"<bndbox>{box}</bndbox>")
        objects += f"<object>{''.join(draw(st.permutations(parts)))}</object>"
    root = draw(st.sampled_from(["annotation"] * 5 + ["root"]))
    head = draw(st.sampled_from(["", "", '<?xml version="1.0"?>', '<?xml version="1.0" encoding="x"?>',
                                 '<?xml version="1.0" encoding="utf-16"?>']))
    document = f"{head}<{root}><filename>x.jpg</filename>{objects}</{root}>"
    if kind == 1:  # cut short
        document = document[:draw(st.integers(0, len(document)))]
    return document.encode("utf-8")


@FUZZ
@given(content=annotation_xml())
def test_fuzz_voc_xml(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "000001.xml"
    path.write_bytes(content)
    try:
        with _no_hang():
            objects = parse_annotation(path)
    except ValueError as error:
        _one_line_error(error, path)
        return
    assert all(isinstance(o, VOCObject) and o.name for o in objects)


JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2, 4), st.floats(allow_nan=False),
                        st.sampled_from(["a.png", "../a.png", "/a.png", "", "2", "x", "missing.png"]),
                        TEXT)
JSON_VALUE = st.recursive(JSON_SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)), max_leaves=6)
KEYED = {"images": {"id": st.one_of(st.integers(0, 3), JSON_VALUE),
                    "file_name": st.one_of(st.sampled_from(["a.png", "../a.png"]), JSON_VALUE)},
         "annotations": {"image_id": st.one_of(st.integers(0, 3), JSON_VALUE),
                         "category_id": st.one_of(st.integers(0, 3), JSON_VALUE)},
         "categories": {"id": st.one_of(st.integers(0, 3), JSON_VALUE), "name": JSON_VALUE}}


VALID_COCO = {"images": [{"id": 1, "file_name": "a.png"}, {"id": "b", "file_name": "a.png"}],
              "annotations": [{"image_id": 1, "category_id": 2},
                              {"image_id": "b", "category_id": 3}],
              "categories": [{"id": 2, "name": "x"}, {"id": 3, "name": "y"}]}


@st.composite
def coco_documents(draw) -> bytes:
    """Mostly a valid COCO-style file with a few fields fuzzed, records dropped or added;
    sometimes random JSON, a document cut short or random bytes."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=60))
    if kind == 1:
        return json.dumps(draw(JSON_VALUE)).encode()
    document = json.loads(json.dumps(VALID_COCO))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(KEYED)))
        records = document.get(key)
        action = draw(st.integers(0, 9))
        if not isinstance(records, list) or action == 0:
            document[key] = draw(JSON_VALUE)
        elif action == 1 and records:
            records.pop(draw(st.integers(0, len(records) - 1)))
        elif action == 2:
            records.append({name: draw(value) for name, value in KEYED[key].items()})
        elif records:
            record = records[draw(st.integers(0, len(records) - 1))]
            field = draw(st.sampled_from(sorted(KEYED[key])))
            if isinstance(record, dict) and draw(st.integers(0, 4)):
                record[field] = draw(KEYED[key][field])
            elif isinstance(record, dict):
                record.pop(field, None)
    text = json.dumps(document)
    if kind == 2:
        text = text[:draw(st.integers(0, len(text)))]
    return text.encode()


@FUZZ
@given(content=coco_documents())
def test_fuzz_inat_json(tmp_path: Path, content: bytes) -> None:
    _image(tmp_path / "a.png")
    path = tmp_path / "val2018.json"
    path.write_bytes(content)
    try:
        with _no_hang():
            dataset = inat_json_dataset(path, tmp_path)
    except ValueError as error:
        _one_line_error(error, path)
        return
    assert len(dataset) >= 1 and all(p == tmp_path / "a.png" for p in dataset.paths)
    assert dataset.targets.max() < len(dataset.classes)


# ----------------------------------------------------------------------------------------------
# A VOC-layout data set with its own classes


CUSTOM = ("widget", "gadget", "gizmo")


def _custom_devkit(root: Path, class_files: bool = True) -> Path:
    """3 classes, 12 trainval and 6 test images of 28 x 28, one object each (colour = class)."""
    voc = root / "VOC2007"
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True)
    colours = {"widget": (250, 20, 20), "gadget": (20, 250, 20), "gizmo": (20, 20, 250)}
    split_ids = {"trainval": [], "test": []}
    number = 0
    for split, per_class in (("trainval", 4), ("test", 2)):
        for i in range(per_class):
            for name in CUSTOM:
                number += 1
                image_id = f"{number:06d}"
                _image(voc / "JPEGImages" / f"{image_id}.jpg", tuple(c - 5 * i for c in colours[name]),
                       size=(28, 28))
                (voc / "Annotations").mkdir(exist_ok=True)
                (voc / "Annotations" / f"{image_id}.xml").write_text(
                    f"<annotation><object><name>{name}</name><difficult>0</difficult>"
                    "</object></annotation>")
                split_ids[split].append((image_id, name))
    for split, entries in split_ids.items():
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i, _ in entries))
        if class_files:
            for name in CUSTOM:
                (main / f"{name}_{split}.txt").write_text(
                    "".join(f"{i} {1 if n == name else -1:2d}\n" for i, n in entries))
    return voc


def test_voc_layout_with_its_own_classes(tmp_path: Path, tiny_checkpoint, monkeypatch) -> None:
    from deepcluster.benchmarks import svm
    from deepcluster.benchmarks.svm_run import run_lowshot, run_svm

    voc = _custom_devkit(tmp_path / "custom")
    assert devkit_classes(voc) == (("gadget", "gizmo", "widget"), "ImageSets/Main")
    trainval = read_voc(voc, "trainval")
    assert trainval.classes == ("gadget", "gizmo", "widget") and trainval.labels.shape == (12, 3)
    assert ((trainval.labels == POSITIVE).sum(axis=1) == 1).all()

    # Without class files: the classes and flags come from the annotations.
    bare = _custom_devkit(tmp_path / "bare", class_files=False)
    assert devkit_classes(bare) == (("gadget", "gizmo", "widget"), "Annotations")
    assert np.array_equal(read_voc(bare, "test").labels, read_voc(voc, "test").labels)

    # Class files with VOC names only: VOC2007 itself, so all 20 are required.
    for path in (voc / "ImageSets" / "Main").glob("*_*.txt"):
        path.rename(path.with_name(path.name.replace("widget", "dog").replace("gadget", "cat")
                                   .replace("gizmo", "bird")))
    with pytest.raises(DataError, match=r"missing VOC file .*aeroplane_trainval.txt"):
        read_voc(voc, "trainval")

    # The SVM and low-shot benchmarks end to end on the custom classes (a few seconds).
    monkeypatch.setitem(svm.COST_LISTS, "vissl", (0.1,))
    voc = _custom_devkit(tmp_path / "run")
    out = tmp_path / "out"
    results = run_svm(tiny_checkpoint, voc, out, layers="avgpool", costs="vissl", jobs=1,
                      progress=False)
    assert results["classes"] == ["gadget", "gizmo", "widget"]
    assert results["class_source"] == "ImageSets/Main"
    layer = results["runs"]["deepcluster"]["svm"]["layers"]["avgpool"]
    assert sorted(layer["classes"]) == ["gadget", "gizmo", "widget"] and 0 <= layer["map"] <= 100
    results = run_lowshot(tiny_checkpoint, voc, out, ks="1", samples=1, costs="vissl", jobs=1,
                          progress=False)
    assert results["runs"]["deepcluster"]["lowshot"]["layers"]["avgpool"]["classes"] == [
        "gadget", "gizmo", "widget"]
    assert ("Classes (3, from the devkit's ImageSets/Main files): gadget, gizmo, widget."
            in (out / "results.md").read_text())
