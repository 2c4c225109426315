"""promptsam: learned prompters + Segment Anything for automatic medical image segmentation."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    import numpy as np

    from promptsam.inference.large_image import SlideSegmentation
    from promptsam.methods.promptnucseg import NucleusSegmentation

_MODELS: dict[tuple[str, str], Any] = {}


def load_model(name_or_path: str = "default", *, device: str = "auto") -> Any:
    """A trained promptsam pipeline by shipped name (`default`) or model file path."""
    from promptsam.pretrained import load_model as _load

    return _load(name_or_path, device=device)


def _cached(model: str, device: str) -> Any:
    key = (str(model), str(device))
    if key not in _MODELS:
        _MODELS[key] = load_model(model, device=device)
    return _MODELS[key]


def _given(points: Any, shape: tuple[int, int], pipeline: Any) -> tuple[Any, Any]:
    """Points (and their types, for a typed model) as given: read from a points file, or the array unchanged."""
    if not isinstance(points, str | os.PathLike):
        return points, None
    from promptsam.io.points import read_prompts

    return read_prompts(points, shape=shape, class_names=pipeline.config.class_names)


def segment(image: np.ndarray, model: str = "default", *, device: str = "auto", fast: bool = False,
            points: np.ndarray | str | os.PathLike | None = None, diameter: float | None = None) -> NucleusSegmentation:
    """Every nucleus of a 2D image: `.labels`, `.classes`, `.points`, `.scores` (models are cached by name);
    `fast` trades a little accuracy for speed (see `PromptNucSeg.segment`); `points` ((N, 2) x, y, or a points file:
    `promptsam.io.points`, whose types a typed model reads) has SAM draw those nuclei instead of the prompter's;
    `diameter` (the typical nucleus's diameter in pixels, as Cellpose's) replaces the per-image estimate."""
    pipeline = _cached(model, device)
    points, types = _given(points, image.shape[:2], pipeline)
    return pipeline.segment(image, fast=fast, points=points, point_classes=types, diameter=diameter)


def segment_slide(slide: str | os.PathLike | np.ndarray, model: str = "default", *, device: str = "auto",
                  block: int = 1024, halo: int = 64, fast: bool = False, tissue: bool = True,
                  workers: int | None = None, scheduler: str | None = None,
                  points: np.ndarray | str | os.PathLike | None = None,
                  diameter: float | None = None) -> SlideSegmentation:
    """Every nucleus of an image too large for one pass (whole-slide image file, big TIFF or array), block by block
    without seams (`inference.large_image`); blocks without tissue are skipped unless `tissue` is False. Blocks run
    in `workers` local processes or on the workers of a dask `scheduler` address when given. `points` (level-0
    x, y, or a points file) are drawn instead of the prompter's, in the blocks that hold them; `diameter` (the
    typical nucleus's diameter in level-0 pixels) sets one magnification for every block instead of each block's
    estimate."""
    from promptsam.inference.large_image import block_executor
    from promptsam.inference.large_image import segment_slide as run
    from promptsam.io.slides import open_slide

    pipeline = _cached(model, device)
    scale = None if diameter is None else pipeline.scale_for_diameter(diameter)
    with open_slide(slide) as source, block_executor(workers=workers, scheduler=scheduler) as executor:
        points, types = _given(points, source.shape, pipeline)
        return run(pipeline, source, block=block, halo=halo, fast=fast, tissue=tissue, executor=executor,
                   worker_model=str(model), points=points, point_classes=types, scale=scale)


__all__ = ["__version__", "load_model", "segment", "segment_slide"]
