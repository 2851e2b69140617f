"""List files: one ``relative/path [label]`` a line (``--data LIST``, ImageNet's ``meta/*.txt``,
Places205's ``*_places205.csv``).

The format, shared by every list reader:

- fields are separated by whitespace; blank lines and comment lines (first field starting with
  ``#``) are skipped, and so is a header as the first entry line (column names such as
  ``path label`` or ``filename class``: ``PATH_COLUMNS`` then optionally ``LABEL_COLUMNS``);
- line numbers in errors count every line of the file, comments and blank lines included, from 1;
- a label is a non-negative decimal integer (``0``, ``17``), nothing else;
- a listed path lies under the root (``root / path``): an absolute path, or one that climbs out of
  the root with ``..``, is refused unless ``allow_outside_root`` is given;
- every listed image must exist when the list is read (``check_files``): a missing one is an
  error naming the list file and the line, never an unreadable image to skip later.

Every error is a ``data.DataError`` that names the list file and the line (``FILE:LINE: ...``).
"""

from __future__ import annotations

import os
from pathlib import Path

from .data import DataError, ImageFileDataset, file_exists, printable

PATH_COLUMNS = ("path", "file", "filename", "file_name", "image", "image_path", "img",
                "relative_path")
LABEL_COLUMNS = ("label", "class", "class_id", "target", "category", "category_id")
# A label numbers a class, and the class list is built up to the largest one.
MAX_CLASSES = 1_000_000
# The end of the refusal (name the command-line flag here once the commands have one).
OUTSIDE_ROOT_HINT = ("list it relative to the root, or pass --allow-outside-root "
                     "(allow_outside_root=True)")


def read_text(path: Path, what: str = "list file") -> str:
    """The text of a UTF-8 file, or a DataError naming it."""
    if not file_exists(path):
        raise DataError(f"{what} {path} not found")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[:error.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {error.object[error.start]:#04x})"
                        ) from None
    except OSError as error:
        raise DataError(f"cannot read {what} {path}: {error.strerror or error}") from None


def is_header(fields: list[str]) -> bool:
    """Column names (``path``, ``filename label``...) rather than an entry."""
    names = [field.lower() for field in fields]
    return (len(names) in (1, 2) and names[0] in PATH_COLUMNS
            and (len(names) == 1 or names[1] in LABEL_COLUMNS))


def entry_lines(list_file: Path) -> list[tuple[str, list[str]]]:
    """``("FILE:LINE", fields)`` for every entry line of a list file: blank lines, comments and a
    header on the first entry line are left out; LINE counts every line, from 1."""
    entries: list[tuple[str, list[str]]] = []
    first = True
    for number, line in enumerate(read_text(list_file).split("\n"), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if first and is_header(fields):
            first = False
            continue
        first = False
        entries.append((f"{list_file}:{number}", fields))
    return entries


def parse_label(text: str, where: str, num_classes: int | None = None) -> int:
    """A label field: a decimal integer in ``[0, num_classes)`` (or below ``MAX_CLASSES``)."""
    digits = text[1:] if text.startswith("-") else text
    if not (digits.isascii() and digits.isdigit()):
        raise DataError(f"{where}: label {text!r} is not an integer")
    if len(digits) > 9:
        raise DataError(f"{where}: label {text} is outside [0, {num_classes or MAX_CLASSES}) "
                        "(unknown class)")
    label = int(text)
    if num_classes is not None and not 0 <= label < num_classes:
        raise DataError(f"{where}: label {label} is outside [0, {num_classes}) (unknown class)")
    if label < 0:
        raise DataError(f"{where}: label {label} is negative")
    if label >= MAX_CLASSES:
        raise DataError(f"{where}: label {label} is outside [0, {MAX_CLASSES}) (more classes "
                        "than a list may number)")
    return label


def listed_path(root: Path, relative: str, where: str, allow_outside_root: bool = False,
                check_files: bool = True) -> Path:
    """``root / relative`` for a path read from an annotation file, refusing one outside the root
    (absolute, or climbing out with ``..``) unless ``allow_outside_root``; with ``check_files``,
    the file must exist."""
    if not allow_outside_root:
        if os.path.isabs(relative):
            raise DataError(f"{where}: absolute path {relative!r} refused: listed paths lie "
                            f"under the root {root}; {OUTSIDE_ROOT_HINT}")
        normal = os.path.normpath(relative)
        if normal == os.pardir or normal.startswith(os.pardir + os.sep):
            raise DataError(f"{where}: path {relative!r} leads outside the root {root}; "
                            f"{OUTSIDE_ROOT_HINT}")
    path = root / relative
    if check_files and not file_exists(path):
        raise DataError(f"{where}: image {printable(str(path))} not found")
    return path


# ----------------------------------------------------------------------------------------------
# The two list readers


def list_file_dataset(list_file: str | os.PathLike, root: str | os.PathLike | None = None,
                      allow_outside_root: bool = False, check_files: bool = True
                      ) -> ImageFileDataset:
    """``--data LIST``: lines of ``relative/path [label]``, paths relative to ``root`` (default:
    the list file's folder). Either every entry has a label or none does."""
    list_file = Path(list_file)
    root = Path(root) if root is not None else list_file.parent
    paths, targets = [], []
    first_labelled: tuple[str, bool] | None = None
    for where, fields in entry_lines(list_file):
        if len(fields) > 2:
            raise DataError(f"{where}: expected 'path [label]', got {' '.join(fields)!r}")
        labelled = len(fields) == 2
        if first_labelled is None:
            first_labelled = (where, labelled)
        elif labelled != first_labelled[1]:
            has = "has a label" if labelled else "has no label"
            other = "has none" if labelled else "has one"
            raise DataError(f"{where}: some lines have a label and some do not (this one {has}, "
                            f"line {first_labelled[0].rsplit(':', 1)[1]} {other})")
        paths.append(listed_path(root, fields[0], where, allow_outside_root, check_files))
        if labelled:
            targets.append(parse_label(fields[1], where))
    if not paths:
        raise DataError(f"{list_file}: the list is empty")
    classes = [str(i) for i in range(max(targets) + 1)] if targets else []
    return ImageFileDataset(paths, targets or None, classes, name=str(list_file))


def read_list_file(list_file: str | os.PathLike, image_root: str | os.PathLike,
                   num_classes: int | None = None, check_files: bool = True,
                   name: str | None = None, allow_outside_root: bool = False) -> ImageFileDataset:
    """The official lists: lines of ``relative/path label``; paths relative to ``image_root``.

    Class names come from the image's parent folder when every label has a single one (``a/abbey``
    -> ``abbey``, ``n01440764`` -> ``n01440764``), else they are the label numbers. Errors name the
    line: a wrong number of fields, a label that is not an integer or outside
    ``[0, num_classes)``, one label used for two class folders, an image that does not exist or
    lies outside ``image_root``.
    """
    list_file, image_root = Path(list_file), Path(image_root)
    if not file_exists(list_file):
        raise DataError(f"list file {list_file} not found")
    if check_files and not image_root.is_dir():
        raise DataError(f"{list_file}: image folder {image_root} not found")
    paths, targets, folders = [], [], {}
    for where, fields in entry_lines(list_file):
        if len(fields) != 2:
            raise DataError(f"{where}: expected 'relative/path label', got {' '.join(fields)!r}")
        label = parse_label(fields[1], where, num_classes)
        paths.append(listed_path(image_root, fields[0], where, allow_outside_root, check_files))
        folder = str(Path(fields[0]).parent)
        if folder != ".":
            known = folders.setdefault(label, (folder, where))
            if known[0] != folder:
                raise DataError(f"{where}: label {label} is used for folder {folder!r} here "
                                f"but for {known[0]!r} on line {known[1].rsplit(':', 1)[1]}")
        targets.append(label)
    if not paths:
        raise DataError(f"{list_file}: the list is empty")
    classes = class_names_from_folders(folders, num_classes or max(targets) + 1)
    return ImageFileDataset(paths, targets, classes, name=name or str(list_file))


def class_names_from_folders(folders: dict[int, tuple[str, str]], count: int) -> list[str]:
    """Label -> the name of its folder (the last part), or the label number when a name is missing
    or two labels would share one."""
    names = [Path(folders[i][0]).name if i in folders else str(i) for i in range(count)]
    return names if len(set(names)) == len(names) else [str(i) for i in range(count)]
