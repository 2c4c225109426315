"""Shared fixtures: paths to ../shared/data and seeded randomisation of models for parity tests."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The development data beside the repo (read in place, never copied)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"development data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    warnings.filterwarnings("ignore", message=".*Overwriting tiny_vit.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="timm")


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every saved parameter and float buffer with seeded noise so parity tests can fail."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            if name.endswith("running_var"):
                tensor.copy_(noise.abs() + 0.5)
            elif tensor.ndim == 1 and ("norm" in name or name.split(".")[-2].isdigit() and "weight" in name):
                tensor.copy_(1.0 + 0.1 * noise)
            else:
                fan_in = tensor[0].numel() if tensor.ndim > 1 else 1
                tensor.copy_(noise / max(1.0, fan_in) ** 0.5)
    return module
