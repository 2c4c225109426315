"""Training prompts for a SAM segmentor: random interior points per nucleus, K nearest nuclei as negatives."""

from __future__ import annotations

import numpy as np

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
) -> dict[str, np.ndarray]:
    """PromptNucSeg's segmentor sampling (methods.md §3.3) on one instance map (H, W).

    Every nucleus gets a random reference pixel; Z = min(#nuclei, num_objects) nuclei are drawn, each prompted by
    a fresh random interior pixel (positive) and the reference pixels of its K nearest other nuclei (negatives,
    padded with label -1). With `point_jitter` (pixels, ours) every point is drawn near the nucleus's centroid instead
    (`InteriorPixels.draw_near_centre`), as a point prompter places them. With `duplicate_share` (ours) that share
    of the objects gets, as its first negative, a second point inside its own nucleus (the farthest of four random
    interior pixels: a prompter's duplicate detection near the rim), and the target stays the whole nucleus, so the
    segmentor learns to draw a nucleus whole when a duplicate point inside it serves as its negative prompt.
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
