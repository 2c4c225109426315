"""promptsam: learned prompters + Segment Anything for automatic medical image segmentation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    import numpy as np

    from promptsam.methods.promptnucseg import NucleusSegmentation

_MODELS: dict[tuple[str, str], Any] = {}


def load_model(name_or_path: str = "default", *, device: str = "auto") -> Any:
    """A trained promptsam pipeline by shipped name (`default`) or model file path."""
    from promptsam.pretrained import load_model as _load

    return _load(name_or_path, device=device)


def segment(image: np.ndarray, model: str = "default", *, device: str = "auto", fast: bool = False
            ) -> NucleusSegmentation:
    """Every nucleus of a 2D image: `.labels`, `.classes`, `.points`, `.scores` (models are cached by name);
    `fast` trades a little accuracy for speed (see `PromptNucSeg.segment`)."""
    key = (str(model), str(device))
    if key not in _MODELS:
        _MODELS[key] = load_model(model, device=device)
    return _MODELS[key].segment(image, fast=fast)


__all__ = ["__version__", "load_model", "segment"]
