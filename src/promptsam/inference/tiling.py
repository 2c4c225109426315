"""Sliding windows over a large 2D image, and which window each point belongs to."""

from __future__ import annotations

import numpy as np


def tile_starts(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets of windows of `size` along an axis of `length` with `overlap`; the last one snaps to the end."""
    if length <= size:
        return [0]
    stride = size - overlap
    if stride <= 0:
        raise ValueError(f"overlap {overlap} must be smaller than the window size {size}")
    starts = list(range(0, length - size, stride))
    return [*starts, length - size]


def tile(shape: tuple[int, int], *, size: int = 256, overlap: int = 64) -> np.ndarray:
    """Top-left corners (y, x) of the sliding windows covering an image of `shape`: (T, 2) int."""
    ys, xs = tile_starts(shape[0], size, overlap), tile_starts(shape[1], size, overlap)
    return np.array([(y, x) for y in ys for x in xs], np.int64).reshape(-1, 2)


def assign_points(points: np.ndarray, corners: np.ndarray, size: int) -> np.ndarray:
    """Index of the window whose centre is nearest each (x, y) point (L-inf), so each object is decoded once,
    in the window where it lies furthest from the window's edges."""
    if len(points) == 0:
        return np.zeros(0, np.int64)
    centres = corners[:, ::-1] + size / 2.0  # (T, 2) as (x, y)
    dist = np.abs(points[:, None, :] - centres[None]).max(axis=2)
    return dist.argmin(axis=1)
