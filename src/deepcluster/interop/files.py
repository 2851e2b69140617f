"""A weights file's contents: ``torch.load(..., weights_only=True)`` or safetensors.

Loading never runs code from the file: torch's restricted unpickler refuses every Python object
that is not a tensor, a container or a plain value, with NumPy's scalars, arrays and dtypes
(often in the ``meta`` of MMSelfSup checkpoints) the only additions. Every failure is one line
naming the file and what was expected; torch's own advice to retry with ``weights_only=False``
(which would run whatever the file holds) is never passed on.
"""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import re
import warnings
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

EXPECTED = "expected a torch.save checkpoint or a .safetensors file"
SIDECAR_MARK = "deepcluster"


def _numpy_globals() -> list:
    """NumPy's value types, under their NumPy 2 and NumPy 1 module names: building them runs no
    code from the file."""
    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    names = {"scalar": core.scalar, "_reconstruct": core._reconstruct}
    allowed: list = [np.ndarray, np.dtype]
    allowed += [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    for name, function in names.items():
        allowed += [(function, f"numpy._core.multiarray.{name}"),
                    (function, f"numpy.core.multiarray.{name}")]
    return allowed


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether the file starts like a safetensors file (8-byte header length, then '{')."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return struct.unpack("<Q", head[:8])[0] < os.path.getsize(path)


def load_weights_file(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping a checkpoint file holds (a safetensors file: its tensors), on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes); {EXPECTED}")
    if is_safetensors(path):
        return _load_safetensors(path)
    try:
        with torch.serialization.safe_globals(_numpy_globals()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a corrupt or foreign file
        raise ValueError(f"checkpoint {path} {_reason(error, path)}") from None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, not a mapping of "
                         f"weights; {EXPECTED}")
    return state


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"checkpoint {path} is a damaged safetensors file "
                         f"({_first_line(str(error))}); {EXPECTED}") from None


def _pickled_global(path: Path) -> str | None:
    """The first Python object a plain pickle refers to (``module.name``), found by reading its
    opcodes without executing any; None when there is none or the bytes are no pickle."""
    strings: list[str] = []
    try:
        with open(path, "rb") as handle:
            for opcode, argument, _ in pickletools.genops(handle):
                if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                    strings = (strings + [str(argument)])[-2:]
                elif opcode.name == "GLOBAL":
                    return str(argument).replace(" ", ".")
                elif opcode.name == "STACK_GLOBAL" and len(strings) == 2:
                    return ".".join(strings)
    except Exception:  # not a pickle (random bytes): nothing to name
        return None
    return None


def _reason(error: Exception, path: Path) -> str:
    """What is wrong with the file, from torch's exception, in a few words."""
    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"got <class '([\w.]+)'>", text)
    code = found.group(1) if found else None
    if code is None and isinstance(error, pickle.UnpicklingError):
        code = _pickled_global(path)
    if code:
        return (f"refers to Python code or objects beyond tensors and plain values ({code}); "
                f"refused, since building them could run code: checkpoints load with "
                f"weights_only=True ({EXPECTED})")
    if isinstance(error, EOFError) or "central directory" in text or "failed reading" in text:
        return f"is truncated or damaged (it ends before its contents do); {EXPECTED}"
    if isinstance(error, (pickle.UnpicklingError, zipfile.BadZipFile, UnicodeDecodeError)) \
            or "operand" in text or "load key" in text:
        return f"is not a torch checkpoint (its bytes are not a torch.save archive); {EXPECTED}"
    return f"cannot be read ({type(error).__name__}: {_first_line(text)}); {EXPECTED}"


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:200] if lines else "no details"


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON beside an exported weights file (``model.safetensors`` -> ``model.json``)."""
    return Path(path).with_suffix(".json")


def read_sidecar(path: str | os.PathLike) -> dict[str, Any] | None:
    """The export's JSON beside ``path`` (its ``deepcluster`` entry), None when there is none."""
    side = sidecar_path(path)
    if side == Path(path) or not side.is_file():
        return None
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{side}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or SIDECAR_MARK not in data:
        return None
    return data[SIDECAR_MARK]
