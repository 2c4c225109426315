"""Prompter training targets from instance maps: one (x, y) point and one class per nucleus (methods.md §3.2)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import label as connected_label

__all__ = ["nucleus_points"]


def _interior_point(piece: np.ndarray) -> tuple[float, float]:
    """(row, col) of the Euclidean distance-transform maximum of a boolean crop (first in raster order)."""
    dist = ndimage.distance_transform_edt(np.pad(piece, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(r), float(c)


def nucleus_points(labels: np.ndarray, classes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One point per nucleus of an (H, W) instance map: (points (N, 2) float32 xy, point_classes (N,) int64).

    Nuclei are the non-zero ids in ascending order. Point = centroid (image moments m10/m00, m01/m00 of the
    pixel set, pixel-index coordinates) of the nucleus's largest 8-connected piece (ties: first in raster
    order). The official code uses cv2 contour moments of the largest contour, which differ from pixel
    moments by a fraction of a pixel; [A]. If the rounded centroid is not a pixel of that piece (e.g. a
    C-shaped nucleus), the point is the piece's distance-transform maximum instead. Class = majority non-zero
    value of `classes` under the whole nucleus (1-based ids as stored; ties -> smallest id; 0 if the class map
    is 0 everywhere under it), or 1 for every nucleus when `classes` is None.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2D instance map, got shape {labels.shape}")
    if classes is not None and np.shape(classes) != labels.shape:
        raise ValueError(f"classes {np.shape(classes)} and labels {labels.shape} differ in shape")
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    if ids[0] == 0:
        ids = ids[1:]
    else:  # no background: shift so 0 stays "no nucleus"
        inverse = inverse + 1
    n = len(ids)
    if n == 0:
        return np.zeros((0, 2), np.float32), np.zeros(0, np.int64)

    # connected pieces of equal instance value (ids 1..P), their areas, owners and pixel moments
    pieces, num_pieces = connected_label(inverse, background=0, connectivity=2, return_num=True)
    flat = pieces.ravel()
    area = np.bincount(flat, minlength=num_pieces + 1)[1:]
    owner = np.zeros(num_pieces + 1, np.int64)
    owner[flat] = inverse.ravel()  # every pixel of a piece has the same owner
    owner = owner[1:] - 1  # 0-based nucleus index
    rows, cols = np.indices(labels.shape)
    sum_r = np.bincount(flat, weights=rows.ravel(), minlength=num_pieces + 1)[1:]
    sum_c = np.bincount(flat, weights=cols.ravel(), minlength=num_pieces + 1)[1:]

    # the largest piece of each nucleus: sort by (owner, -area, piece id) and take the first of each owner
    order = np.lexsort((np.arange(num_pieces), -area, owner))
    first = np.ones(num_pieces, bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    best = order[first]  # 0-based piece index, one per nucleus in nucleus order
    cy = sum_r[best] / area[best]
    cx = sum_c[best] / area[best]

    # centroid outside its piece -> distance-transform maximum inside it
    ry = np.clip(np.rint(cy).astype(np.int64), 0, labels.shape[0] - 1)
    rx = np.clip(np.rint(cx).astype(np.int64), 0, labels.shape[1] - 1)
    outside = np.flatnonzero(pieces[ry, rx] != best + 1)
    if outside.size:
        slices = ndimage.find_objects(pieces)
        for k in outside.tolist():
            sl = slices[best[k]]
            r, c = _interior_point(pieces[sl] == best[k] + 1)
            cy[k], cx[k] = sl[0].start + r, sl[1].start + c
    points = np.stack([cx, cy], axis=1).astype(np.float32)

    if classes is None:
        return points, np.ones(n, np.int64)
    cls = np.asarray(classes).astype(np.int64)
    if cls.min(initial=0) < 0:
        raise ValueError("class map must be non-negative")
    fg = inverse.ravel() > 0
    num_cls = int(cls.max(initial=0)) + 1
    counts = np.bincount((inverse.ravel()[fg] - 1) * num_cls + cls.ravel()[fg], minlength=n * num_cls)
    counts = counts.reshape(n, num_cls)
    counts[:, 0] = 0
    point_classes = np.where(counts.max(1) > 0, counts.argmax(1), 0).astype(np.int64)
    return points, point_classes
