"""One registry of model names -> builders and checkpoint metadata (timm style: sizes are data)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from promptsam.errors import CheckpointError


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture: its builder and where its official weights come from."""

    name: str
    builder: Callable[..., nn.Module]
    description: str
    checkpoint_file: str | None = None
    source: str | None = None
    licence: str | None = None


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    description: str,
    checkpoint_file: str | None = None,
    source: str | None = None,
    licence: str | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder under `name`."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ModelEntry(name, builder, description, checkpoint_file, source, licence)
        return builder

    return wrap


def list_models() -> list[ModelEntry]:
    """All registered models, in registration order."""
    _import_builders()
    return list(_REGISTRY.values())


def get_entry(name: str) -> ModelEntry:
    """The registry entry of `name`, or a one-line error listing the known names."""
    _import_builders()
    if name not in _REGISTRY:
        raise CheckpointError(f"unknown model {name!r}; known models: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def cache_dir() -> Path:
    """Where promptsam keeps weights: $PROMPTSAM_CACHE_DIR, else $XDG_CACHE_HOME/promptsam, else ~/.cache/promptsam."""
    if os.environ.get("PROMPTSAM_CACHE_DIR"):
        return Path(os.environ["PROMPTSAM_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "promptsam"


def checkpoint_dirs() -> list[Path]:
    """Folders searched for official checkpoint files: $PROMPTSAM_CHECKPOINTS (path list), then the cache dir."""
    extra = [Path(p).expanduser() for p in os.environ.get("PROMPTSAM_CHECKPOINTS", "").split(os.pathsep) if p]
    return [*extra, cache_dir()]


def find_checkpoint(name: str) -> Path:
    """Path of the official checkpoint of model `name` in the search folders, or a one-line error saying where."""
    entry = get_entry(name)
    if entry.checkpoint_file is None:
        raise CheckpointError(f"model {name!r} has no official checkpoint")
    for folder in checkpoint_dirs():
        candidate = folder / entry.checkpoint_file
        if candidate.is_file():
            return candidate
    where = ", ".join(str(d) for d in checkpoint_dirs())
    raise CheckpointError(
        f"{entry.checkpoint_file} not found in {where}; download it from {entry.source} and put it in one of these "
        "folders (or pass its path)"
    )


def _import_builders() -> None:
    # builders register themselves on import
    import promptsam.models.sam.build  # noqa: F401


def with_weights(model: nn.Module, name: str, *, checkpoint: str | os.PathLike | None, pretrained: bool) -> nn.Module:
    """Tag a freshly built `name` model and load its weights: `checkpoint`, or the official file when `pretrained`."""
    from promptsam.models.checkpoint import load_checkpoint

    model.arch_name = name
    if pretrained and checkpoint is None:
        checkpoint = find_checkpoint(name)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model
