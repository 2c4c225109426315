"""Overlay instance outlines on the image, for a quick look."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

from promptsam.inference.preprocess import to_rgb255
from promptsam.io.atomic import atomic_path


def overlay(
    image: np.ndarray, labels: np.ndarray, *, color: tuple[int, int, int] = (0, 255, 0)
) -> np.ndarray:
    """(H, W, 3) uint8 image with the outline of every instance drawn in `color`."""
    rgb = to_rgb255(image).astype(np.uint8)
    rgb[find_boundaries(labels, mode="inner")] = color
    return rgb


def write_overlay(path: str | os.PathLike, image: np.ndarray, labels: np.ndarray) -> None:
    """Write the outline overlay as a PNG, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(overlay(image, labels)).save(tmp, format="PNG")
