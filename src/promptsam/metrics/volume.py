"""Per-volume lesion scores: overlap and surface distances in mm plus per-lesion detection (3D connected components).

Lesions are the connected components of the binary masks, with 26-connectivity by default (face, edge and
corner neighbours; `connectivity=6` for faces only). Detection rule: a GT lesion is *detected* when any predicted
voxel overlaps it; a predicted lesion is a *true* detection when any of its voxels overlaps the GT. Hence
``lesion_recall = detected GT lesions / GT lesions`` and ``lesion_precision = predicted lesions touching the GT /
predicted lesions``; one large prediction covering several lesions detects all of them.

Empty-mask rules (as `promptsam.metrics.semantic`, methods.md §7):
- Dice / IoU: NaN when both masks are empty, 0.0 when exactly one is;
- HD95 / ASD: NaN when either mask is empty (never inf, so callers nan-mean; the Dice of 0 records the miss);
- lesion_recall: NaN without GT lesions; lesion_precision: NaN without predicted lesions (0.0 when the other
  side is empty but this one is not).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from promptsam.metrics.semantic import check_same_shape, score_volume

__all__ = ["connected_lesions", "lesion_detection", "remove_small_lesions", "score_lesions"]


def connected_lesions(mask: np.ndarray, *, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Label the 3D connected components of a mask's foreground; return (int32 label map, count)."""
    mask = np.asarray(mask) != 0
    if mask.ndim != 3:
        raise ValueError(f"lesion components need a 3D mask, got shape {mask.shape}")
    rank = {6: 1, 18: 2, 26: 3}.get(connectivity)
    if rank is None:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    labels, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, rank))
    return labels.astype(np.int32, copy=False), int(n)


def remove_small_lesions(mask: np.ndarray, *, min_voxels: int, connectivity: int = 26) -> np.ndarray:
    """Boolean `mask` without the connected components of fewer than `min_voxels` voxels."""
    mask = np.asarray(mask) != 0
    if min_voxels <= 1 or not mask.any():
        return mask
    labels, n = connected_lesions(mask, connectivity=connectivity)
    keep = np.bincount(labels.ravel(), minlength=n + 1) >= min_voxels
    keep[0] = False
    return keep[labels]


def lesion_detection(gt: np.ndarray, pred: np.ndarray, *, connectivity: int = 26) -> dict[str, float]:
    """Lesion counts, detected counts, recall and precision under the overlap rule of this module's docstring."""
    check_same_shape(gt, pred)
    gt_lab, n_gt = connected_lesions(gt, connectivity=connectivity)
    pred_lab, n_pred = connected_lesions(pred, connectivity=connectivity)
    hit_gt = np.unique(gt_lab[pred_lab > 0])
    hit_pred = np.unique(pred_lab[gt_lab > 0])
    n_hit_gt = int(np.count_nonzero(hit_gt))
    n_hit_pred = int(np.count_nonzero(hit_pred))
    return {
        "n_gt_lesions": n_gt,
        "n_pred_lesions": n_pred,
        "n_detected": n_hit_gt,
        "n_true_pred": n_hit_pred,
        "lesion_recall": n_hit_gt / n_gt if n_gt else math.nan,
        "lesion_precision": n_hit_pred / n_pred if n_pred else math.nan,
    }


def score_lesions(
    gt: np.ndarray, pred: np.ndarray, *, spacing: Sequence[float] | float, connectivity: int = 26
) -> dict[str, float]:
    """Scores of one 3D case: dice, iou, hd95 and asd (mm, `spacing` per axis) plus lesion detection counts/rates."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    check_same_shape(gt, pred)
    if gt.ndim != 3:
        raise ValueError(f"score_lesions needs 3D volumes, got shape {gt.shape}")
    out: dict[str, float] = dict(score_volume(gt, pred, spacing=spacing))
    out.update(lesion_detection(gt, pred, connectivity=connectivity))
    return out
