"""Prompter post-processing: prompter outputs -> per-image points, classes and scores (methods.md §3.1 step 7)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = ["decode_points", "merge_views", "nucleus_diameter", "point_nms"]


def point_nms(points: np.ndarray, scores: np.ndarray, radius: float) -> np.ndarray:
    """Greedy point NMS: visit points by descending score (stable), each kept point suppresses all others
    within `radius` px (distance <= radius, as the official `point_nms`); return kept indices, ascending."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(pts) != len(sc):
        raise ValueError(f"{len(pts)} points but {len(sc)} scores")
    if len(pts) == 0 or radius <= 0:
        return np.arange(len(pts), dtype=np.int64)
    order = np.argsort(-sc, kind="stable")
    neighbours = cKDTree(pts).query_ball_point(pts, r=radius)
    alive = np.ones(len(pts), dtype=bool)
    for i in order.tolist():  # O(n·k): one pass, each neighbour list visited once
        if alive[i]:
            nb = neighbours[i]
            alive[nb] = False
            alive[i] = True
    return np.flatnonzero(alive).astype(np.int64)


def decode_points(
    outputs: Mapping[str, torch.Tensor],
    *,
    image_size: tuple[int, int],
    nms_radius: float = 12.0,
    mask_filter: bool = True,
    mask_filter_logit: float = 0.0,
    score_threshold: float = 0.0,
    min_foreground: float | None = None,
) -> list[dict[str, np.ndarray]]:
    """Turn `PointPrompter` outputs into one dict per image: points (n, 2) float32 xy, classes (n,) int64
    (1-based, 1..C), scores (n,) float32.

    Per image, as the official `predict`: clip coords to [0, w-1] x [0, h-1] of the unpadded `image_size`
    (h, w); softmax over C+1 logits; drop anchors whose argmax is background; score = the argmax class's
    probability (= the max foreground probability for kept anchors); keep score >= `score_threshold`
    (ours; 0 keeps all). With `min_foreground` (ours) an anchor is kept when its total nucleus probability
    1 - p(background) reaches it instead, takes the most probable nucleus class and that total as its score:
    below 0.5 this finds nuclei the argmax rule drops.
    MAPF (`mask_filter`; off in the PanNuke configs): keep points whose aux mask logit
    at the rounded point is > `mask_filter_logit` (0 in the official code, which truncates with astype(int); we
    round, matching pixel-index coordinates); then `point_nms` with `nms_radius` (<= 0 disables it).
    """
    h, w = image_size
    coords = outputs["coords"].detach().float().cpu().numpy()
    probs = outputs["logits"].detach().float().softmax(-1).cpu().numpy()
    masks = outputs["mask_logits"].detach().float().cpu().numpy() if mask_filter else None
    results = []
    for b in range(coords.shape[0]):
        pts = np.stack([coords[b, :, 0].clip(0, w - 1), coords[b, :, 1].clip(0, h - 1)], axis=1)
        if min_foreground is None:
            cls = probs[b].argmax(-1)
            score = probs[b].max(-1)
            keep = (cls < probs.shape[-1] - 1) & (score >= score_threshold)
        else:
            cls = probs[b, :, :-1].argmax(-1)
            score = 1.0 - probs[b, :, -1]
            keep = score >= max(min_foreground, score_threshold)
        pts, cls, score = pts[keep], cls[keep], score[keep]
        if masks is not None and len(pts):
            ix = np.rint(pts).astype(np.int64)
            inside = masks[b, 0, ix[:, 1], ix[:, 0]] > mask_filter_logit
            pts, cls, score = pts[inside], cls[inside], score[inside]
        if nms_radius > 0 and len(pts):
            kept = point_nms(pts, score, nms_radius)
            pts, cls, score = pts[kept], cls[kept], score[kept]
        results.append(
            {
                "points": pts.astype(np.float32),
                "classes": cls.astype(np.int64) + 1,
                "scores": score.astype(np.float32),
            }
        )
    return results


def nucleus_diameter(foreground: np.ndarray, points: np.ndarray, *, min_count: int = 3) -> float | None:
    """Typical nucleus diameter (px) of an image: the median area of the foreground components that hold exactly one
    point, as an equal-area circle; None with fewer than `min_count` such components.

    On the validation split it is within 0.9-1.4x the ground-truth median on DSB2018 and CoNSeP and 0.7x on
    MoNuSeg, whose auxiliary masks are thin.
    """
    if len(points) == 0:
        return None
    components, n = ndimage.label(foreground)
    h, w = foreground.shape
    ix = np.rint(points).astype(np.int64)
    hit = components[ix[:, 1].clip(0, h - 1), ix[:, 0].clip(0, w - 1)]
    counts = np.bincount(hit, minlength=n + 1)
    single = np.flatnonzero(counts == 1)
    single = single[single > 0]
    if len(single) < min_count:
        return None
    area = float(np.median(np.bincount(components.ravel(), minlength=n + 1)[single]))
    return 2.0 * np.sqrt(area / np.pi)


def size_nms(points: np.ndarray, scores: np.ndarray, foreground: np.ndarray, *, radius: float,
             diameters: float) -> np.ndarray:
    """Indices of the points kept by point NMS within max(`radius`, `diameters` x the image's typical nucleus
    diameter, `nucleus_diameter`) [A]: two nuclei's centres lie about a diameter apart at the closest, so nearer
    points are mostly a second detection of one large nucleus (on MoNuSeg 200 of 1,516 validation points were).
    """
    diameter = nucleus_diameter(foreground, points)
    if diameter is None or diameters * diameter <= radius or len(points) == 0:
        return np.arange(len(points))
    return point_nms(points, scores, diameters * diameter)


def merge_views(views: list[dict[str, np.ndarray]], *, radius: float, min_votes: int = 2) -> dict[str, np.ndarray]:
    """Points of several views of one image (e.g. test-time flips, already on the image grid) as one set.

    A point's votes are the points of all views within radius / 2 (itself included); points NMS by score x votes
    within `radius`, those with >= `min_votes` votes stay, each moved to the mean of its voters, with its own class
    and score. On the validation split, 4 flips raised detection F1 by 0.016-0.028 and cut the median offset to the
    true centroid by 0.2-0.3 px.
    """
    points = np.concatenate([v["points"] for v in views]).astype(np.float64)
    scores = np.concatenate([v["scores"] for v in views])
    classes = np.concatenate([v["classes"] for v in views])
    if len(points) == 0:
        return {"points": np.zeros((0, 2), np.float32), "classes": np.zeros(0, np.int64),
                "scores": np.zeros(0, np.float32)}
    tree = cKDTree(points)
    voters = tree.query_ball_point(points, r=radius / 2)
    votes = np.array([len(v) for v in voters])
    kept = point_nms(points, scores * votes, radius)
    kept = kept[votes[kept] >= min_votes]
    centres = np.array([points[voters[i]].mean(0) for i in kept]).reshape(-1, 2)
    return {"points": centres.astype(np.float32), "classes": classes[kept].astype(np.int64),
            "scores": scores[kept].astype(np.float32)}
