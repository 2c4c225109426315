"""Class-aware PQ and the PanNuke bPQ/mPQ protocol (official `PanNuke-metrics/run.py`, methods.md §7).

Class information is either a per-pixel class map of the same shape as the instance map (HoVer-Net "type map",
0 = background) or a mapping {instance id: class}. The instances of class c are the pixels of class c, which
is exactly PanNuke's per-channel instance masks; `pannuke_masks_to_maps` converts the native (N, H, W, 6)
arrays.

Conventions (PanNuke): per image, bPQ = PQ of all instances (NaN if the GT has none); PQ_c = PQ of class c
(NaN if the GT has no instance of class c, even when the prediction has some); image mPQ = nanmean over
classes; a tissue's score is the nanmean over its images; the reported mPQ/bPQ are the nanmean over tissues. A
nanmean over only NaNs is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from promptsam.metrics.instance import _as_labels, panoptic_quality
from promptsam.metrics.semantic import check_same_shape

__all__ = ["mean_over_folds", "pannuke_masks_to_maps", "pannuke_pq", "score_classes"]

ClassInfo = np.ndarray | Mapping[int, int]


def _nanmean(values: Sequence[float]) -> float:
    """Mean of the non-NaN values, NaN if there are none (no RuntimeWarning)."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


def _class_map(inst: np.ndarray, cls: ClassInfo, name: str) -> np.ndarray:
    """Per-pixel class map for an instance map from a same-shape class array or an {id: class} mapping."""
    if isinstance(cls, Mapping):
        out = np.zeros(inst.shape, np.int64)
        for inst_id, c in cls.items():
            out[inst == inst_id] = c
        return out
    arr = np.asarray(cls)
    if arr.shape != inst.shape:
        raise ValueError(f"{name} must have the instance map's shape {inst.shape}, got {arr.shape}")
    return arr


def score_classes(
    gt_inst: np.ndarray,
    gt_class: ClassInfo,
    pred_inst: np.ndarray,
    pred_class: ClassInfo,
    *,
    classes: Sequence[int] | None = None,
) -> dict[str, float]:
    """Per-class PQ ("pq_<c>", NaN if GT lacks c), "mpq" (nanmean over classes) and "bpq" (NaN if GT is
    empty).

    `classes` defaults to the non-zero classes present in either class map (classes only in the prediction
    score NaN).
    """
    check_same_shape(gt_inst, pred_inst)
    g = _as_labels(gt_inst, "gt_inst")
    p = _as_labels(pred_inst, "pred_inst")
    g_cls = _class_map(g, gt_class, "gt_class")
    p_cls = _class_map(p, pred_class, "pred_class")
    if classes is None:
        present = np.union1d(np.unique(g_cls[g > 0]), np.unique(p_cls[p > 0]))
        classes = [c for c in present.tolist() if c != 0]
    out: dict[str, float] = {}
    for c in classes:
        g_c = np.where(g_cls == c, g, 0)
        if not g_c.any():
            out[f"pq_{c}"] = math.nan
            continue
        out[f"pq_{c}"] = panoptic_quality(g_c, np.where(p_cls == c, p, 0)).pq
    out["mpq"] = _nanmean([out[f"pq_{c}"] for c in classes])
    out["bpq"] = panoptic_quality(g, p).pq if g.any() else math.nan
    return out


def pannuke_masks_to_maps(masks: np.ndarray, *, n_classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Convert PanNuke (..., H, W, 6) channel masks to (int64 instance map, class map 1..n_classes)."""
    masks = np.asarray(masks)
    if masks.shape[-1] < n_classes:
        raise ValueError(f"expected a last axis with >= {n_classes} class channels, got shape {masks.shape}")
    inst = np.zeros(masks.shape[:-1], np.int64)
    cls = np.zeros(masks.shape[:-1], np.int32)
    offset = 0
    for j in range(n_classes):
        ch = _as_labels(masks[..., j], f"channel {j}")
        uniq, inv = np.unique(ch, return_inverse=True)
        inv = inv.reshape(ch.shape)
        base = 0 if uniq[0] == 0 else 1
        on = ch != 0
        inst[on] = inv[on] + base + offset
        cls[on] = j + 1
        offset += int(uniq.size)
    return inst, cls


def pannuke_pq(
    gt_inst: Sequence[np.ndarray] | np.ndarray,
    gt_class: Sequence[ClassInfo] | np.ndarray,
    pred_inst: Sequence[np.ndarray] | np.ndarray,
    pred_class: Sequence[ClassInfo] | np.ndarray,
    tissues: Sequence[Hashable],
    *,
    classes: Sequence[int] = (1, 2, 3, 4, 5),
) -> dict:
    """PanNuke protocol over a set of images (lists or (N, H, W) stacks) with one tissue name per image.

    Returns {"mpq", "bpq" (nanmean over tissues), "tissues": {name: {"mpq", "bpq", "n_images"}},
    "classes": {c: nanmean over images of PQ_c}, "images": [per-image `score_classes` dicts]}.
    """
    n = len(gt_inst)
    if not (len(gt_class) == len(pred_inst) == len(pred_class) == len(tissues) == n):
        raise ValueError(
            f"need one entry per image: got {n} gt_inst, {len(gt_class)} gt_class, "
            f"{len(pred_inst)} pred_inst, {len(pred_class)} pred_class, {len(tissues)} tissues"
        )
    images = [
        score_classes(gt_inst[i], gt_class[i], pred_inst[i], pred_class[i], classes=classes) for i in range(n)
    ]
    tissue_scores: dict[Hashable, dict[str, float]] = {}
    for name in dict.fromkeys(tissues):
        idx = [i for i, t in enumerate(tissues) if t == name]
        tissue_scores[name] = {
            "mpq": _nanmean([images[i]["mpq"] for i in idx]),
            "bpq": _nanmean([images[i]["bpq"] for i in idx]),
            "n_images": float(len(idx)),
        }
    return {
        "mpq": _nanmean([s["mpq"] for s in tissue_scores.values()]),
        "bpq": _nanmean([s["bpq"] for s in tissue_scores.values()]),
        "tissues": tissue_scores,
        "classes": {c: _nanmean([im[f"pq_{c}"] for im in images]) for c in classes},
        "images": images,
    }


def mean_over_folds(results: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Plain mean over fold results of every scalar key they share (PanNuke's 3 fold permutations)."""
    if not results:
        raise ValueError("mean_over_folds needs at least one fold result")
    keys = [k for k, v in results[0].items() if np.isscalar(v) and all(k in r for r in results)]
    return {k: float(np.mean([float(r[k]) for r in results])) for k in keys}
