"""Training prompts for a SAM segmentor: random interior points per nucleus, K nearest nuclei as negatives."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from promptsam.inference.prompts import nearest_others, point_prompts


class InteriorPixels:
    """Draws uniformly random interior pixels of every instance of a label map, vectorised over instances."""

    def __init__(self, labels: np.ndarray) -> None:
        self.width = labels.shape[1]
        flat = labels.ravel()
        fg = np.flatnonzero(flat)
        order = np.argsort(flat[fg], kind="stable")
        self.pixels = fg[order]
        self.ids, self.start, self.count = np.unique(flat[self.pixels], return_index=True, return_counts=True)

    def __len__(self) -> int:
        return len(self.ids)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One random (x, y) interior pixel per instance, in the order of `ids`: (N, 2) float32."""
        pick = self.pixels[self.start + (rng.random(len(self.ids)) * self.count).astype(np.int64)]
        return np.stack([pick % self.width, pick // self.width], axis=1).astype(np.float32)

    def centroids(self) -> np.ndarray:
        """(x, y) centroid of every instance, in the order of `ids`: (N, 2) float32."""
        xs = np.add.reduceat(self.pixels % self.width, self.start) if len(self.ids) else np.zeros(0)
        ys = np.add.reduceat(self.pixels // self.width, self.start) if len(self.ids) else np.zeros(0)
        return (np.stack([xs, ys], axis=1) / self.count[:, None]).astype(np.float32)

    def marked(self, marks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A random pixel of the map `marks` holding each instance's id ((N, 2) (x, y), in the order of `ids`) and
        whether the instance has one (N,) bool."""
        points, found = np.zeros((len(self.ids), 2), np.float32), np.zeros(len(self.ids), bool)
        at = np.flatnonzero(marks.ravel())
        if at.size == 0 or len(self.ids) == 0:
            return points, found
        at = at[rng.permutation(at.size)]  # of several pixels with one id, a random one is written last
        ids = marks.ravel()[at]
        slot = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        valid = self.ids[slot] == ids
        slot, at = slot[valid], at[valid]
        points[slot] = np.stack([at % self.width, at // self.width], axis=1)
        found[slot] = True
        return points, found

    def draw_near_centre(self, rng: np.random.Generator, sigma: float, tries: int = 8) -> np.ndarray:
        """One interior pixel per instance near its centroid: of `tries` random interior pixels, the nearest to the
        centroid moved by N(0, sigma^2) per axis (a detector's point: near the centre, never outside)."""
        target = self.centroids() + rng.normal(0.0, sigma, (len(self.ids), 2)).astype(np.float32)
        draws = np.stack([self.draw(rng) for _ in range(tries)], axis=1)  # (N, tries, 2)
        best = np.linalg.norm(draws - target[:, None], axis=-1).argmin(1)
        return draws[np.arange(len(self.ids)), best]


def sample_point_prompts(
    labels: np.ndarray,
    *,
    num_objects: int = 25,
    num_negatives: int = 1,
    rng: np.random.Generator,
    point_jitter: float | None = None,
    duplicate_share: float = 0.0,
    prompted: np.ndarray | None = None,
    prompted_share: float = 0.0,
) -> dict[str, np.ndarray]:
    """PromptNucSeg's segmentor sampling (methods.md §3.3) on one instance map (H, W).

    Every nucleus gets a random reference pixel; Z = min(#nuclei, num_objects) nuclei are drawn, each prompted by
    a fresh random interior pixel (positive) and the reference pixels of its K nearest other nuclei (negatives,
    padded with label -1). With `point_jitter` (pixels, ours) every point is drawn near the nucleus's centroid instead
    (`InteriorPixels.draw_near_centre`), as a point prompter places them. With `duplicate_share` (ours) that share
    of the objects gets, as its first negative, a second point inside its own nucleus (the farthest of four random
    interior pixels: a prompter's duplicate detection near the rim), and the target stays the whole nucleus, so the
    segmentor learns to draw a nucleus whole when a duplicate point inside it serves as its negative prompt.
    With a `prompted` map (`prompt_map`, ours), that share of the nuclei a prompter found is prompted at the
    prompter's point instead, as its positive and as its neighbours' negative.
    Returns coords (Z, 1+K, 2), point_labels (Z, 1+K) and boolean masks (Z, H, W).
    """
    pixels = InteriorPixels(labels)
    n = len(pixels)
    if n == 0:
        return {
            "coords": np.zeros((0, 1 + num_negatives, 2), np.float32),
            "point_labels": np.zeros((0, 1 + num_negatives), np.int64),
            "masks": np.zeros((0, *labels.shape), bool),
        }
    def draw() -> np.ndarray:
        return pixels.draw(rng) if point_jitter is None else pixels.draw_near_centre(rng, point_jitter)

    references = draw()
    chosen = rng.permutation(n)[: min(n, num_objects)]
    positives = draw()[chosen]
    if prompted is not None and prompted_share > 0:
        own, found = pixels.marked(prompted, rng)
        use = found & (rng.random(n) < prompted_share)
        references[use] = own[use]
        positives[use[chosen]] = own[chosen][use[chosen]]
    neighbours = nearest_others(references, num_negatives)[chosen]
    coords, point_labels = point_prompts(positives, references, num_negatives, neighbours=neighbours)
    if duplicate_share > 0 and num_negatives > 0:
        dup = np.flatnonzero(rng.random(len(chosen)) < duplicate_share)
        draws = np.stack([pixels.draw(rng)[chosen[dup]] for _ in range(4)], axis=1)  # (d, 4, 2)
        far = np.linalg.norm(draws - positives[dup][:, None], axis=-1).argmax(1)
        coords[dup, 1] = draws[np.arange(len(dup)), far]
        point_labels[dup, 1] = 0
    masks = labels[None] == pixels.ids[chosen][:, None, None]
    return {"coords": coords, "point_labels": point_labels, "masks": masks}


def prompt_map(labels: np.ndarray, points: np.ndarray, *, reach: float = 4.0) -> np.ndarray:
    """Map (H, W) of a prompter's (N, 2) (x, y) `points` on an instance map: each point's pixel holds the id of the
    nucleus it prompts (the one under it, else the nearest within `reach` pixels), 0 elsewhere; points on no
    nucleus (false positives) are left out. Geometric transforms move it as a label map."""
    h, w = labels.shape
    marks = np.zeros_like(labels)
    if len(points) == 0 or not labels.any():
        return marks
    xy = np.clip(np.round(np.asarray(points)).astype(np.int64), 0, [w - 1, h - 1])
    ids = labels[xy[:, 1], xy[:, 0]]
    outside = np.flatnonzero(ids == 0)
    if outside.size:
        dist, (iy, ix) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
        y, x = xy[outside, 1], xy[outside, 0]
        ids[outside] = np.where(dist[y, x] <= reach, labels[iy[y, x], ix[y, x]], 0)
    keep = ids > 0
    marks[xy[keep, 1], xy[keep, 0]] = ids[keep]
    return marks
