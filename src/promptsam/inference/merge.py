"""Turn many per-object masks into one instance map: non-maximum suppression and painting by score."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torchvision.ops import nms


def keep_large(labels: np.ndarray, *, min_area: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Relabel a map to ids 1..K in ascending order of the old ids, dropping those with fewer than `min_area` pixels;
    returns the uint32 map and, for each new id, its old id."""
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    ids = ids[counts >= min_area].astype(np.int64)
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.uint32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    return lut[labels], ids


def box_nms(boxes: np.ndarray, scores: np.ndarray, *, iou_threshold: float = 0.5) -> np.ndarray:
    """Indices of boxes kept by greedy NMS, highest score first (torchvision's kernel)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    keep = nms(
        torch.as_tensor(boxes, dtype=torch.float32),
        torch.as_tensor(scores, dtype=torch.float32),
        iou_threshold,
    )
    return keep.numpy()


def paint_instances(masks: np.ndarray, scores: np.ndarray, *, min_area: int = 1) -> np.ndarray:
    """Paint (N, H, W) masks into a uint32 label map in ascending score order, so higher scores win overlaps.

    Ids are 1..K in descending-score order among masks that keep at least `min_area` visible pixels.
    """
    offsets = np.zeros((len(masks), 2), np.int64)
    return paint_crops(masks.shape[1:], list(masks), offsets, scores, min_area=min_area)[0]


def paint_crops(
    shape: tuple[int, int], crops: list[np.ndarray], offsets: np.ndarray, scores: np.ndarray, *, min_area: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Paint boolean crops placed at (y, x) `offsets` into a uint32 label map of `shape`, higher scores on top.

    Returns the label map (ids 1..K in descending-score order; masks left with fewer than `min_area` visible
    pixels are dropped) and, for each id k, the index of the crop painted as k (array of length K).
    """
    n = len(crops)
    labels = np.zeros(shape, np.uint32)
    order = np.argsort(scores, kind="stable")
    for rank, i in enumerate(order):
        y, x = offsets[i]
        crop = crops[i]
        region = labels[y : y + crop.shape[0], x : x + crop.shape[1]]
        region[crop[: region.shape[0], : region.shape[1]]] = n - rank
    labels, ids = keep_large(labels, min_area=min_area)  # painted value n - rank: ascending = descending score
    return labels, order[n - ids]


def shrink_labels(labels: np.ndarray, shape: tuple[int, int], *, min_area: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-sample a label map painted on a magnified grid back to `shape` (pixel centres map to pixel centres).

    Returns the relabelled map (ids 1..K kept in their original order; instances left with fewer than `min_area`
    pixels are dropped) and, for each new id, its old id.
    """
    h, w = shape
    rows = np.minimum(((np.arange(h) + 0.5) * labels.shape[0] / h).astype(np.int64), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * labels.shape[1] / w).astype(np.int64), labels.shape[1] - 1)
    return keep_large(labels[rows[:, None], cols[None, :]], min_area=min_area)


def largest_pieces(labels: np.ndarray) -> np.ndarray:
    """Each instance reduced to its largest 8-connected piece (ids kept): painting by score and SAM's own stray
    pixels leave fragments beside many masks (on a MoNuSeg crop 161 of 279 nuclei, ~9 px each)."""
    out = labels.copy()
    eight = np.ones((3, 3), bool)
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == k
        pieces, n = ndimage.label(mask, structure=eight)
        if n > 1:
            sizes = np.bincount(pieces.ravel())[1:]
            out[box][(pieces > 0) & (pieces != 1 + int(np.argmax(sizes)))] = 0
    return out

