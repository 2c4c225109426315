"""promptsam's own trained models, found by name and checked by hash: `load_model("default")`."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from promptsam.errors import CheckpointError

WEIGHTS = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class PretrainedModel:
    """A shipped model: file inside the package, its SHA-256, and its model card."""

    name: str
    file: str
    sha256: str
    card: str
    description: str


# Filled in by `promptsam train ... --export-default` (see docs/model_card_default.md); empty until trained.
PRETRAINED: dict[str, PretrainedModel] = {}


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """Path of a shipped model given by name (hash-checked) or of a model file given by path."""
    name = str(name_or_path)
    if name in PRETRAINED:
        entry = PRETRAINED[name]
        path = WEIGHTS / entry.file
        if not path.is_file():
            raise CheckpointError(f"{path}: the {name!r} model file is missing from this installation")
        if sha256_of(path) != entry.sha256:
            raise CheckpointError(f"{path}: SHA-256 does not match the {name!r} model's; the file is corrupt")
        return path
    path = Path(name_or_path)
    if path.is_file():
        return path
    if name == "default":
        raise CheckpointError("the default model is not available in this version of promptsam (not trained yet); "
                              "pass --model PATH to a model trained with `promptsam train promptnucseg`")
    known = ", ".join(PRETRAINED) or "none shipped yet"
    raise CheckpointError(f"{path}: no such model file, and not a shipped model name ({known})")


def load_model(name_or_path: str | os.PathLike = "default", *, device: str | torch.device = "auto"):
    """The one door to a trained promptsam pipeline: a shipped name (`default`) or a saved model file."""
    from promptsam.methods.promptnucseg import PromptNucSeg

    return PromptNucSeg.load(resolve_model(name_or_path), device=device)
