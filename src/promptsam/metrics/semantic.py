"""Binary (semantic) overlap and surface-distance metrics for 2D images and 3D volumes.

Foreground is every non-zero element, so label maps and boolean masks are both accepted.
Empty-mask conventions (documented per function): Dice/IoU are NaN when both masks are empty and 0.0 when
exactly one is; surface distances are NaN when either mask is empty (SAM-Med3D convention: nan-mean later).
HD95 / ASD are *our* addition (none of the reproduced methods computes them, methods.md §7); they call MONAI.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

__all__ = [
    "average_surface_distance",
    "check_same_shape",
    "dice",
    "hausdorff95",
    "hausdorff_distance",
    "iou",
    "score_volume",
]

Spacing = float | Sequence[float] | None


def check_same_shape(gt: np.ndarray, pred: np.ndarray) -> None:
    """Raise ValueError naming both shapes unless `gt` and `pred` have the same shape."""
    if np.shape(gt) != np.shape(pred):
        raise ValueError(
            f"gt and pred must have the same shape, got gt {np.shape(gt)} and pred {np.shape(pred)}"
        )


def _foreground_counts(gt: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """Return (|G|, |P|, |G∩P|) foreground element counts of two same-shape arrays."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    check_same_shape(gt, pred)
    g = gt != 0
    p = pred != 0
    return int(np.count_nonzero(g)), int(np.count_nonzero(p)), int(np.count_nonzero(g & p))


def dice_from_counts(n_gt: int, n_pred: int, n_inter: int) -> float:
    """Dice 2|G∩P|/(|G|+|P|) from counts; NaN when both are empty."""
    total = n_gt + n_pred
    return float("nan") if total == 0 else 2.0 * n_inter / total


def iou_from_counts(n_gt: int, n_pred: int, n_inter: int) -> float:
    """IoU |G∩P|/|G∪P| from counts; NaN when both are empty."""
    union = n_gt + n_pred - n_inter
    return float("nan") if union == 0 else n_inter / union


def dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """Binary foreground Dice (HoVer-Net Dice1, DES-SAM F1) of same-shape N-D arrays; NaN if both empty."""
    return dice_from_counts(*_foreground_counts(gt, pred))


def iou(gt: np.ndarray, pred: np.ndarray) -> float:
    """Binary foreground IoU (Jaccard) of two same-shape N-D arrays; NaN if both empty, 0.0 if one is."""
    return iou_from_counts(*_foreground_counts(gt, pred))


def _surface_inputs(gt: np.ndarray, pred: np.ndarray, spacing: Spacing):
    """Validate and return (gt_bool, pred_bool, spacing_list | None) or None when either mask is empty."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    check_same_shape(gt, pred)
    if gt.ndim not in (2, 3):
        raise ValueError(f"surface distances need a 2D or 3D array, got shape {gt.shape}")
    g = gt != 0
    p = pred != 0
    if not g.any() or not p.any():
        return None
    if spacing is None:
        sp = None
    elif np.ndim(spacing) == 0:
        sp = [float(spacing)] * gt.ndim
    else:
        sp = [float(s) for s in spacing]  # type: ignore[union-attr]
        if len(sp) != gt.ndim:
            raise ValueError(f"spacing needs {gt.ndim} values for shape {gt.shape}, got {len(sp)}")
    return g, p, sp


def _monai_surface(metric: str, gt: np.ndarray, pred: np.ndarray, spacing: Spacing, **options) -> float:
    """Run MONAI's `compute_<metric>` on one pair of 2D/3D masks; NaN if either is empty."""
    inputs = _surface_inputs(gt, pred, spacing)
    if inputs is None:
        return float("nan")
    g, p, sp = inputs
    import monai.metrics
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out = getattr(monai.metrics, f"compute_{metric}")(
            torch.from_numpy(p[None, None]), torch.from_numpy(g[None, None]), include_background=True, spacing=sp,
            **options,
        )
    return float(out.reshape(-1)[0])


def hausdorff_distance(
    gt: np.ndarray, pred: np.ndarray, *, percentile: float | None = None, spacing: Spacing = None
) -> float:
    """Symmetric (percentile) Hausdorff distance of 2D/3D foreground surfaces (MONAI); NaN if either empty."""
    return _monai_surface("hausdorff_distance", gt, pred, spacing, percentile=percentile)


def hausdorff95(gt: np.ndarray, pred: np.ndarray, *, spacing: Spacing = None) -> float:
    """HD95 (MONAI percentile=95, symmetric) of 2D/3D masks in `spacing` units (px); NaN if either empty."""
    return hausdorff_distance(gt, pred, percentile=95.0, spacing=spacing)


def average_surface_distance(gt: np.ndarray, pred: np.ndarray, *, spacing: Spacing = None) -> float:
    """Symmetric average surface distance (MONAI) of 2D/3D masks in `spacing` units; NaN if either empty."""
    return _monai_surface("average_surface_distance", gt, pred, spacing, symmetric=True)


def score_volume(gt: np.ndarray, pred: np.ndarray, *, spacing: Spacing = None) -> dict[str, float]:
    """Dict "dice", "iou", "hd95", "asd" of one 2D/3D binary case (NaN conventions as the single metrics)."""
    counts = _foreground_counts(gt, pred)
    out = {"dice": dice_from_counts(*counts), "iou": iou_from_counts(*counts)}
    if counts[0] == 0 or counts[1] == 0:
        out.update(hd95=math.nan, asd=math.nan)
    else:
        out["hd95"] = hausdorff95(gt, pred, spacing=spacing)
        out["asd"] = average_surface_distance(gt, pred, spacing=spacing)
    return out
