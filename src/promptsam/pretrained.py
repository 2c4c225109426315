"""promptsam's own trained models, found by name and checked by hash: `load_model("default")`."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


REGISTRY_FILE = WEIGHTS / "models.json"


def _read_registry() -> dict[str, PretrainedModel]:
    if not REGISTRY_FILE.is_file():
        return {}
    return {name: PretrainedModel(name=name, **entry) for name, entry in json.loads(REGISTRY_FILE.read_text()).items()}


# Shipped models, written by `python -m promptsam.pretrained` (scripts/train_default.sh); empty until trained.
PRETRAINED: dict[str, PretrainedModel] = _read_registry()


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
    """The one door to a trained promptsam pipeline: a shipped name (`default`) or a saved model file.

    Returns a PromptNucSeg (2D nuclei) or an MSAM (3D lesions), whichever the file holds.
    """
    from promptsam.methods.msam import FORMAT as MSAM_FORMAT
    from promptsam.methods.msam import MSAM
    from promptsam.methods.promptnucseg import PromptNucSeg

    path = resolve_model(name_or_path)
    try:
        fmt = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("format")
    except Exception:  # noqa: BLE001 - the loaders below give the one-line error
        fmt = None
    return (MSAM if fmt == MSAM_FORMAT else PromptNucSeg).load(path, device=device)


def register(model_file: str | os.PathLike, *, name: str, card: str, description: str,
             overrides: dict[str, Any] | None = None) -> Path:
    """Ship a trained model: store it in bf16 inside the package and record its hash under `name`; dotted
    `overrides` ({"inference.nucleus_diameter": 40}) change its stored config first."""
    from promptsam.config import apply_overrides, from_dict, to_dict
    from promptsam.io.atomic import atomic_path

    model = load_model(model_file, device="cpu")
    if overrides:
        model.config = from_dict(type(model.config), apply_overrides(to_dict(model.config), overrides),
                                 where=str(model_file))
    target = WEIGHTS / f"promptnucseg_{name}.pt"
    model.save(target, dtype=torch.bfloat16)  # half the size; weights are used in bf16/fp32 autocast anyway
    entries = json.loads(REGISTRY_FILE.read_text()) if REGISTRY_FILE.is_file() else {}
    entries[name] = {"file": target.name, "sha256": sha256_of(target), "card": card, "description": description}
    with atomic_path(REGISTRY_FILE) as tmp:
        tmp.write_text(json.dumps(entries, indent=2) + "\n")
    return target


def main(argv: list[str] | None = None) -> None:
    """`python -m promptsam.pretrained MODEL_FILE --name default`: register a trained model as shipped."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("model_file")
    parser.add_argument("--name", default="default")
    parser.add_argument("--card", default="docs/model_card_default.md")
    parser.add_argument("--description", default="PromptNucSeg CPU model trained on ../shared/data (2D)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a stored setting first, e.g. --set inference.nucleus_diameter=40 (YAML value)")
    args = parser.parse_args(argv)
    from promptsam.config import parse_settings
    from promptsam.errors import PromptSAMError

    try:
        overrides = parse_settings(args.set)
    except PromptSAMError as err:
        parser.error(str(err))
    path = register(args.model_file, name=args.name, card=args.card, description=args.description,
                    overrides=overrides)
    print(f"registered {args.name!r}: {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
