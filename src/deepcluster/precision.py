"""The precision a run computes in: "auto" resolved for this machine, and the autocast context
that the benchmarks' extraction passes run under (the training loop gets its own from Fabric)."""

from __future__ import annotations

from pathlib import Path

import torch

AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """``precision``, with "auto" made "bf16-mixed" where the chip computes in bf16 natively (a
    GPU that supports it, a CPU with AVX-512 BF16 or AMX) and "32-true" elsewhere: without those
    instructions bf16 is emulated and runs several times slower than fp32."""
    if precision != "auto":
        return precision
    if accelerator != "cpu" and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (Linux's flags; False where they cannot be read)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def autocast(precision: str, device: torch.device | str = "cpu") -> torch.autocast:
    """The autocast context of ``precision`` ("auto" resolved) on ``device``'s type: bf16 or
    fp16 operations under a mixed precision, none under "32-true"."""
    device_type = torch.device(device).type
    dtype = AUTOCAST_DTYPES.get(resolve_precision(precision, device_type))
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)
