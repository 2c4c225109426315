"""Point prompts for SAM: one positive point per object plus its K nearest neighbours as negatives."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from promptsam.models.sam.prompt_encoder import NEGATIVE, PADDING, POSITIVE


def nearest_others(points: np.ndarray, k: int, *, min_distance: float = 0.0) -> np.ndarray:
    """Indices (N, k) of each point's k nearest OTHER points, -1 where fewer than k exist.

    With `min_distance` > 0, points nearer than that are skipped (looked for among the k + 16 nearest).
    """
    n = len(points)
    out = np.full((n, k), -1, np.int64)
    if k == 0 or n < 2:
        return out
    m = min(k + 1 + (16 if min_distance > 0 else 0), n)
    dist, idx = cKDTree(points).query(points, k=m)
    idx, dist = idx.reshape(n, m), dist.reshape(n, m)
    is_other = idx != np.arange(n)[:, None]  # drop self (usually column 0, but ties can move it)
    if min_distance > 0:
        is_other &= dist >= min_distance
    first = np.argsort(~is_other, axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(idx, first, axis=1)
    ok = np.take_along_axis(is_other, first, axis=1)
    out[:, : picked.shape[1]] = np.where(ok, picked, -1)
    return out


def point_prompts(
    positives: np.ndarray,
    references: np.ndarray,
    k: int,
    *,
    neighbours: np.ndarray | None = None,
    min_distance: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Coords (N, 1+k, 2) and labels (N, 1+k): each positive point, then the reference points of its k nearest
    other objects as negatives; missing neighbours are padding (label -1 at (0, 0)), as PromptNucSeg does.

    `references` (N, 2) locate the objects for the neighbour search (the positives themselves at inference);
    neighbours nearer than `min_distance` are skipped (`nearest_others`).
    """
    n = len(positives)
    nbr = nearest_others(references, k, min_distance=min_distance) if neighbours is None else neighbours
    coords = np.zeros((n, 1 + k, 2), np.float32)
    labels = np.full((n, 1 + k), PADDING, np.int64)
    coords[:, 0] = positives
    labels[:, 0] = POSITIVE
    valid = nbr >= 0
    coords[:, 1:][valid] = references[nbr[valid]]
    labels[:, 1:][valid] = NEGATIVE
    return coords, labels
