"""Point prompts for SAM: one positive point per object plus its K nearest neighbours as negatives."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from promptsam.models.sam.prompt_encoder import NEGATIVE, PADDING, POSITIVE


def nearest_others(points: np.ndarray, k: int) -> np.ndarray:
    """Indices (N, k) of each point's k nearest OTHER points, -1 where fewer than k exist."""
    n = len(points)
    out = np.full((n, k), -1, np.int64)
    if k == 0 or n < 2:
        return out
    m = min(k + 1, n)
    _, idx = cKDTree(points).query(points, k=m)
    idx = idx.reshape(n, m)
    is_other = idx != np.arange(n)[:, None]  # drop self (usually column 0, but ties can move it)
    first = np.argsort(~is_other, axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(idx, first, axis=1)
    ok = np.take_along_axis(is_other, first, axis=1)
    out[:, : picked.shape[1]] = np.where(ok, picked, -1)
    return out


def point_prompts(
    positives: np.ndarray, references: np.ndarray, k: int, *, neighbours: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Coords (N, 1+k, 2) and labels (N, 1+k): each positive point, then the reference points of its k nearest
    other objects as negatives; missing neighbours are padding (label -1 at (0, 0)), as PromptNucSeg does.

    `references` (N, 2) locate the objects for the neighbour search (the positives themselves at inference).
    """
    n = len(positives)
    nbr = nearest_others(references, k) if neighbours is None else neighbours
    coords = np.zeros((n, 1 + k, 2), np.float32)
    labels = np.full((n, 1 + k), PADDING, np.int64)
    coords[:, 0] = positives
    labels[:, 0] = POSITIVE
    valid = nbr >= 0
    coords[:, 1:][valid] = references[nbr[valid]]
    labels[:, 1:][valid] = NEGATIVE
    return coords, labels
