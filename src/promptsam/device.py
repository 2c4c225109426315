"""Pick the compute device and precision: a GPU where one exists, else the CPU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from promptsam.errors import PromptSAMError


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto` -> cuda if available, else mps, else cpu; other names are checked and returned."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PromptSAMError(f"device {device!r} requested but no CUDA GPU is available")
    return dev


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul (avx512_bf16 / AMX), where bf16 runs ~2x fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # what a `precision` setting may name


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for `precision` (one of PRECISIONS) on `device` (None = plain fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":
            raise PromptSAMError("fp16 is unusably slow on CPU; use bf16 or fp32")
        return torch.float16
    if precision == "auto":
        return resolve_precision(auto_precision(device), device)
    raise PromptSAMError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")


def auto_precision(device: torch.device) -> str:
    """The precision "auto" stands for on `device`: bf16 where the hardware computes it (fp16 on older GPUs), else
    fp32."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and cpu_supports_bf16() else "fp32"


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to `dtype` on `device`, or do nothing when dtype is None."""
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield
