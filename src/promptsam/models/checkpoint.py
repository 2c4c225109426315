"""Load official and promptsam checkpoints strictly by key name, with one-line errors and no half-loading."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from promptsam.errors import CheckpointError

# wrappers used by official releases and training frameworks around the raw state_dict
_WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a raw or wrapped state_dict from `path` with torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated/corrupt/pickled-code files
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({detail[:160]})") from None
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise CheckpointError(f"{path}: does not hold a state_dict (a mapping of parameter names to tensors)")
    return dict(obj)


def _first(names: list[str], n: int = 3) -> str:
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Raise CheckpointError naming `source` and the first mismatching keys unless the keys and shapes fit exactly."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_first(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatch: {_first(wrong_shape, 2)}")
    if problems:
        arch = getattr(model, "arch_name", type(model).__name__)
        raise CheckpointError(f"{source}: does not fit {arch}: " + "; ".join(problems))


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load `path` into `model` strictly; the model is untouched when anything does not fit."""
    state_dict = read_state_dict(path)
    check_state_dict(model, state_dict, source=str(path))
    model.load_state_dict(state_dict, strict=True)
    return model
