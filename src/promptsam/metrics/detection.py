"""Point-detection metrics (PromptNucSeg prompter evaluation, methods.md §3.1-3.2 and §7).

Matching (PromptNucSeg `utils.get_tp`): predictions are visited in descending score (stable, so equal scores
and `pred_scores=None` keep input order; PromptNucSeg's unstable argsort may order ties differently); each
takes the nearest still-unmatched GT point if it lies within `radius` (distance <= radius, Euclidean, any
dimensionality).

Per-image conventions: precision = tp/n_pred (NaN if no predictions), recall = tp/n_gt (NaN if no GT),
f1 = 2·tp/(n_pred + n_gt) (= 2PR/(P+R); NaN if both are empty, 0.0 if exactly one is). PromptNucSeg pools
counts over the whole test set before dividing: use `summarize_detection` on the per-image dicts for that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["PointMatching", "detection_scores", "match_points", "summarize_detection"]


@dataclass(frozen=True)
class PointMatching:
    """Result of `match_points`: matched pairs (gt_index[i] <-> pred_index[i]) and the unmatched indices."""

    gt_index: np.ndarray
    pred_index: np.ndarray
    unmatched_gt: np.ndarray
    unmatched_pred: np.ndarray

    @property
    def tp(self) -> int:
        """Number of matched pairs."""
        return int(self.gt_index.size)


def _points(points: np.ndarray | Sequence, name: str) -> np.ndarray:
    """Return points as a float64 (n, d) array (an empty input gives shape (0, 2))."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, arr.shape[-1] if arr.ndim == 2 else 2)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got {arr.shape}")
    return arr


def match_points(
    gt_points: np.ndarray,
    pred_points: np.ndarray,
    *,
    pred_scores: np.ndarray | None = None,
    radius: float = 12.0,
) -> PointMatching:
    """Greedy score-ordered one-to-one matching of (n, d) pred points to (m, d) GT points within `radius`."""
    gt = _points(gt_points, "gt_points")
    pr = _points(pred_points, "pred_points")
    if gt.size and pr.size and gt.shape[1] != pr.shape[1]:
        raise ValueError(f"gt_points and pred_points differ in dimension: {gt.shape} vs {pr.shape}")
    if pred_scores is None:
        order = np.arange(len(pr))
    else:
        scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
        if scores.size != len(pr):
            raise ValueError(f"pred_scores has {scores.size} values for {len(pr)} pred_points")
        order = np.argsort(-scores, kind="stable")
    matched_gt = np.zeros(len(gt), bool)
    pairs: list[tuple[int, int]] = []
    if len(gt) and len(pr):
        tree = cKDTree(gt)
        neighbours = tree.query_ball_point(pr, r=radius)
        for j in order.tolist():
            cands = [i for i in neighbours[j] if not matched_gt[i]]
            if not cands:
                continue
            d = np.linalg.norm(gt[cands] - pr[j], axis=1)
            best = cands[
                int(np.argmin(d))
            ]  # ties: lowest GT index among equally near ones (sorted candidate list)
            matched_gt[best] = True
            pairs.append((best, j))
    pairs_arr = np.array(pairs, np.int64).reshape(-1, 2)
    matched_pred = np.zeros(len(pr), bool)
    matched_pred[pairs_arr[:, 1]] = True
    return PointMatching(
        gt_index=pairs_arr[:, 0],
        pred_index=pairs_arr[:, 1],
        unmatched_gt=np.flatnonzero(~matched_gt),
        unmatched_pred=np.flatnonzero(~matched_pred),
    )


def _prf(tp: float, n_gt: float, n_pred: float) -> tuple[float, float, float]:
    """Precision, recall, F1 from counts with this module's NaN conventions."""
    p = tp / n_pred if n_pred else math.nan
    r = tp / n_gt if n_gt else math.nan
    f = 2.0 * tp / (n_pred + n_gt) if (n_pred + n_gt) else math.nan
    return p, r, f


def detection_scores(
    gt_points: np.ndarray,
    pred_points: np.ndarray,
    *,
    pred_scores: np.ndarray | None = None,
    gt_classes: np.ndarray | None = None,
    pred_classes: np.ndarray | None = None,
    radius: float = 12.0,
    class_mode: Literal["per_class", "hovernet"] = "per_class",
) -> dict[str, float]:
    """Detection P/R/F1 (+ per-class P/R/F1 when both class arrays are given) of (m, d) GT vs (n, d) pred
    points.

    Keys: "tp", "n_gt", "n_pred", "precision", "recall", "f1"; with classes, for every class c in either array
    "tp_c", "n_gt_c", "n_pred_c", "precision_c", "recall_c", "f1_c" and the nan-means "cls_precision",
    "cls_recall", "cls_f1". `class_mode="per_class"` (PromptNucSeg): class-c predictions are matched to
    class-c GT independently. `class_mode="hovernet"`: HoVer-Net's type F1 on the detection matching, F1_c =
    2(tp_c+tn_c) / (2(tp_c+tn_c) + 2fp_c + 2fn_c + fp_d + fn_d) over matched pairs plus unmatched points of
    class c (greedy matching, not Hungarian; only "f1_c"/"cls_f1" are then filled, P/R per class are NaN).
    """
    m = match_points(gt_points, pred_points, pred_scores=pred_scores, radius=radius)
    n_gt, n_pred = len(m.unmatched_gt) + m.tp, len(m.unmatched_pred) + m.tp
    p, r, f = _prf(m.tp, n_gt, n_pred)
    out = {
        "tp": float(m.tp),
        "n_gt": float(n_gt),
        "n_pred": float(n_pred),
        "precision": p,
        "recall": r,
        "f1": f,
    }
    if gt_classes is None or pred_classes is None:
        return out
    gc = np.asarray(gt_classes).reshape(-1)
    pc = np.asarray(pred_classes).reshape(-1)
    if gc.size != n_gt or pc.size != n_pred:
        raise ValueError(f"class arrays ({gc.size}, {pc.size}) do not match point counts ({n_gt}, {n_pred})")
    gt_arr = _points(gt_points, "gt_points")
    pr_arr = _points(pred_points, "pred_points")
    scores = None if pred_scores is None else np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    per_class: list[tuple[float, float, float]] = []
    for c in np.union1d(gc, pc).tolist():
        if class_mode == "per_class":
            gi, pj = gc == c, pc == c
            mc = match_points(
                gt_arr[gi], pr_arr[pj], pred_scores=None if scores is None else scores[pj], radius=radius
            )
            cp, cr, cf = _prf(mc.tp, int(gi.sum()), int(pj.sum()))
            out.update(
                {f"tp_{c}": float(mc.tp), f"n_gt_{c}": float(gi.sum()), f"n_pred_{c}": float(pj.sum())}
            )
        elif class_mode == "hovernet":
            tg, tp_ = gc[m.gt_index], pc[m.pred_index]
            tp_c = np.sum((tg == c) & (tp_ == c))
            tn_c = np.sum((tg != c) & (tp_ != c))
            fp_c = np.sum((tg != c) & (tp_ == c))
            fn_c = np.sum((tg == c) & (tp_ != c))
            fp_d = np.sum(pc[m.unmatched_pred] == c)
            fn_d = np.sum(gc[m.unmatched_gt] == c)
            denom = 2 * (tp_c + tn_c) + 2 * fp_c + 2 * fn_c + fp_d + fn_d
            cp, cr = math.nan, math.nan
            cf = float(2 * (tp_c + tn_c) / denom) if denom else math.nan
        else:
            raise ValueError(f"class_mode must be 'per_class' or 'hovernet', got {class_mode!r}")
        out.update({f"precision_{c}": cp, f"recall_{c}": cr, f"f1_{c}": cf})
        per_class.append((cp, cr, cf))
    arr = np.array(per_class, np.float64).reshape(-1, 3)
    for k, name in enumerate(("cls_precision", "cls_recall", "cls_f1")):
        col = arr[:, k]
        out[name] = float(np.mean(col[~np.isnan(col)])) if np.any(~np.isnan(col)) else math.nan
    return out


def summarize_detection(results: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Pool per-image `detection_scores` dicts: sum tp/n_gt/n_pred (per class), recompute P/R/F1."""
    totals: dict[str, float] = {}
    for res in results:
        for key, value in res.items():
            if key.startswith(("tp", "n_gt", "n_pred")):
                totals[key] = totals.get(key, 0.0) + float(value)
    out = dict(totals)
    out["precision"], out["recall"], out["f1"] = _prf(
        totals.get("tp", 0.0), totals.get("n_gt", 0.0), totals.get("n_pred", 0.0)
    )
    classes = sorted({k[len("tp_") :] for k in totals if k.startswith("tp_")})
    per_class = []
    for c in classes:
        prf = _prf(totals[f"tp_{c}"], totals.get(f"n_gt_{c}", 0.0), totals.get(f"n_pred_{c}", 0.0))
        out[f"precision_{c}"], out[f"recall_{c}"], out[f"f1_{c}"] = prf
        per_class.append(prf)
    if per_class:
        arr = np.array(per_class, np.float64)
        for k, name in enumerate(("cls_precision", "cls_recall", "cls_f1")):
            col = arr[:, k][~np.isnan(arr[:, k])]
            out[name] = float(col.mean()) if col.size else math.nan
    return out
