"""The VOC devkit reader and the generated VOC-format dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deepcluster.data import DataError, fashion_mnist_folder, read_image
from deepcluster.voc import (DIFFICULT, NEGATIVE, POSITIVE, VOC_CLASSES, VOCObject,
                             find_voc_root, flags_from_objects, read_voc)
from deepcluster.voc_generator import FMNIST_TO_VOC, make_voc

needs_fmnist = pytest.mark.skipif(fashion_mnist_folder() is None,
                                  reason="Fashion-MNIST IDX files not installed")


def _xml(objects) -> str:
    body = "".join(
        f"<object><name>{name}</name><truncated>0</truncated><difficult>{int(difficult)}"
        "</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>"
        "</object>" for name, difficult in objects)
    return f"<annotation><filename>x.jpg</filename>{body}</annotation>"


def write_devkit(root: Path, images: dict[str, list[tuple[str, bool]]], split: str = "trainval",
                 flags: dict[str, dict[str, int]] | None = None) -> Path:
    """A hand-made devkit: image id -> [(class, difficult)], flags derived as the devkit does."""
    from PIL import Image

    voc = root / "VOCdevkit" / "VOC2007"
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    for image_id, objects in images.items():
        Image.new("RGB", (8, 6), (10, 20, 30)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        (voc / "Annotations" / f"{image_id}.xml").write_text(_xml(objects))
    (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
    for name in VOC_CLASSES:
        lines = []
        for image_id, objects in images.items():
            if flags and name in flags and image_id in flags[name]:
                flag = flags[name][image_id]
            elif any(n == name and not d for n, d in objects):
                flag = 1
            elif any(n == name for n, _ in objects):
                flag = 0
            else:
                flag = -1
            lines.append(f"{image_id} {flag:2d}\n")
        (voc / "ImageSets" / "Main" / f"{name}_{split}.txt").write_text("".join(lines))
    return voc


IMAGES = {
    "000001": [("dog", False), ("person", True)],       # person only difficult -> 0
    "000002": [("person", False), ("person", True)],    # one non-difficult -> 1
    "000003": [("cat", True)],
    "000004": [],
}


def test_reader_flags_and_difficult(tmp_path):
    write_devkit(tmp_path, IMAGES)
    voc = read_voc(tmp_path / "VOCdevkit", "trainval")
    assert voc.classes == VOC_CLASSES and len(VOC_CLASSES) == 20
    assert voc.ids == list(IMAGES)
    person, dog, cat = (VOC_CLASSES.index(n) for n in ("person", "dog", "cat"))
    assert voc.labels[:, person].tolist() == [DIFFICULT, POSITIVE, NEGATIVE, NEGATIVE]
    assert voc.labels[:, dog].tolist() == [POSITIVE, NEGATIVE, NEGATIVE, NEGATIVE]
    assert voc.labels[:, cat].tolist() == [NEGATIVE, NEGATIVE, DIFFICULT, NEGATIVE]
    assert voc.difficult.sum() == 2
    # Difficult: a negative for training, left out when testing.
    assert voc.train_targets()[:, person].tolist() == [-1, 1, -1, -1]
    assert voc.test_mask()[:, person].tolist() == [False, True, True, True]
    assert [o.name for o in voc.objects["000002"]] == ["person", "person"]
    assert voc.objects["000002"][1].difficult
    image, label = voc.dataset()[0]
    assert image.size == (8, 6) and label == -1


def test_reader_finds_the_voc2007_folder(tmp_path):
    voc = write_devkit(tmp_path, IMAGES)
    for path in (tmp_path, tmp_path / "VOCdevkit", voc):
        assert find_voc_root(path) == voc
    with pytest.raises(DataError, match="not a VOC devkit"):
        find_voc_root(voc / "JPEGImages")


def test_broken_xml_is_rejected_with_its_name(tmp_path):
    voc = write_devkit(tmp_path, IMAGES)
    (voc / "Annotations" / "000003.xml").write_text("<annotation><object><name>cat</name>")
    with pytest.raises(DataError, match=r"000003\.xml"):
        read_voc(voc, "trainval")
    (voc / "Annotations" / "000003.xml").write_text("<annotation><object><difficult>0</difficult>"
                                                    "</object></annotation>")
    with pytest.raises(DataError, match=r"000003\.xml.*without <name>"):
        read_voc(voc, "trainval")
    (voc / "Annotations" / "000003.xml").write_text(_xml([("unicorn", False)]))
    with pytest.raises(DataError, match=r"000003\.xml: unknown class name\(s\) unicorn"):
        read_voc(voc, "trainval")
    (voc / "Annotations" / "000003.xml").unlink()
    with pytest.raises(DataError, match=r"missing VOC annotation .*000003\.xml"):
        read_voc(voc, "trainval")


def test_bad_imagesets_are_rejected_with_file_and_line(tmp_path):
    voc = write_devkit(tmp_path, IMAGES)
    main = voc / "ImageSets" / "Main"
    (main / "dog_trainval.txt").write_text("000001  1\n000002 -1\n000003 2\n000004 -1\n")
    with pytest.raises(DataError, match=r"dog_trainval\.txt:3: flag '2'"):
        read_voc(voc, "trainval")
    (main / "dog_trainval.txt").write_text("000001  1\n000002 -1\n000003 -1\n")
    with pytest.raises(DataError, match=r"dog_trainval\.txt: 1 image\(s\) of trainval\.txt "
                                        r"missing, first 000004"):
        read_voc(voc, "trainval")
    (main / "dog_trainval.txt").unlink()
    with pytest.raises(DataError, match=r"missing VOC file .*dog_trainval\.txt"):
        read_voc(voc, "trainval")
    with pytest.raises(DataError, match="missing VOC file .*aeroplane_test.txt"):
        read_voc(voc, "test")


def test_missing_image_is_named(tmp_path):
    voc = write_devkit(tmp_path, IMAGES)
    (voc / "JPEGImages" / "000002.jpg").unlink()
    with pytest.raises(DataError, match=r"missing VOC image .*000002\.jpg"):
        read_voc(voc, "trainval")


def test_imagesets_disagreeing_with_annotations_warn(tmp_path):
    voc = write_devkit(tmp_path, IMAGES, flags={"dog": {"000001": -1}})
    with pytest.warns(UserWarning, match="disagree with their annotations"):
        split = read_voc(voc, "trainval")
    assert split.labels[0, VOC_CLASSES.index("dog")] == NEGATIVE  # the ImageSets flags win


def test_flags_from_objects():
    flags = flags_from_objects([VOCObject("cat", True), VOCObject("cat", False),
                                VOCObject("dog", True)])
    assert flags[VOC_CLASSES.index("cat")] == POSITIVE
    assert flags[VOC_CLASSES.index("dog")] == DIFFICULT
    assert (np.delete(flags, [VOC_CLASSES.index("cat"), VOC_CLASSES.index("dog")]) == NEGATIVE).all()


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    if fashion_mnist_folder() is None:
        pytest.skip("Fashion-MNIST IDX files not installed")
    out = tmp_path_factory.mktemp("voc")
    return make_voc(out, trainval=60, test=30, seed=3, difficult_rate=0.3)


@needs_fmnist
def test_make_voc_output_parses_with_the_reader(generated):
    root = generated
    assert root.name == "VOC2007"
    trainval = read_voc(root.parent, "trainval")
    test = read_voc(root, "test")
    assert len(trainval) == 60 and len(test) == 30
    assert not set(trainval.ids) & set(test.ids)
    for split in (trainval, test):
        # The ImageSets flags are the ones the annotations imply (the reader would warn otherwise).
        for image_id, row in zip(split.ids, split.labels):
            assert np.array_equal(flags_from_objects(split.objects[image_id]), row)
        present = {VOC_CLASSES[c] for c in np.flatnonzero((split.labels == POSITIVE).any(0))}
        assert present <= set(FMNIST_TO_VOC)
        assert (split.labels == DIFFICULT).any()  # some classes only difficult in an image
        assert all(any(o.difficult for o in objs) for objs in split.objects.values()
                   if any(o.difficult for o in objs))
    absent = [c for c, name in enumerate(VOC_CLASSES) if name not in FMNIST_TO_VOC]
    assert (trainval.labels[:, absent] == NEGATIVE).all()
    image = read_image(trainval.paths[0])
    assert image.size == (112, 96)
    for objects in trainval.objects.values():
        assert 1 <= len(objects) <= 3
        for obj in objects:
            xmin, ymin, xmax, ymax = obj.bbox
            assert 1 <= xmin <= xmax <= 112 and 1 <= ymin <= ymax <= 96
    main = root / "ImageSets" / "Main"
    assert len(list(main.glob("*_trainval.txt"))) == 20 and len(list(main.glob("*_test.txt"))) == 20
    assert read_voc(root, "train").ids + read_voc(root, "val").ids == trainval.ids


@needs_fmnist
def test_make_voc_repeats_with_its_seed(generated, tmp_path):
    again = make_voc(tmp_path, trainval=60, test=30, seed=3, difficult_rate=0.3)
    for name in ("Annotations/000007.xml", "ImageSets/Main/person_test.txt"):
        assert (again / name).read_text() == (generated / name).read_text()


@needs_fmnist
def test_make_voc_command(tmp_path):
    from deepcluster.cli import main

    result = CliRunner().invoke(main, ["data", "make-voc", "--out", str(tmp_path),
                                       "--trainval", "12", "--test", "6"])
    assert result.exit_code == 0, result.output
    assert "trainval: 12 images" in result.output
    assert len(list((tmp_path / "VOC2007" / "JPEGImages").glob("*.jpg"))) == 18
