"""Classical floor for 3D FLAIR lesions: an intensity-percentile threshold inside the brain mask.

Lesions (MS plaques, glioma oedema) are hyperintense on FLAIR, so the floor keeps the voxels brighter than the
`percentile`-th percentile of the brain's intensities. The brain mask is the voxels > 0 (the development volumes
are skull-stripped), optionally eroded by `erosion` voxels to drop the bright rim at the brain's edge.
The percentile is chosen leave-one-out (`choose_percentile`): for each volume, the candidate with the best mean
Dice on the *other* volumes. No learning, no GT at inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from promptsam.metrics.semantic import dice
from promptsam.metrics.volume import remove_small_lesions

__all__ = ["brain_mask", "choose_percentile", "dice_table", "percentile_threshold"]


def brain_mask(volume: np.ndarray, *, erosion: int = 0) -> np.ndarray:
    """Boolean mask of the voxels > 0, eroded by `erosion` voxels (6-connected steps) when > 0."""
    mask = np.asarray(volume) > 0
    if erosion > 0 and mask.any():
        mask = ndimage.binary_erosion(mask, iterations=int(erosion))
    return mask


def percentile_threshold(
    volume: np.ndarray, *, percentile: float, erosion: int = 0, min_size: int = 0
) -> np.ndarray:
    """Boolean lesion mask: brain voxels brighter than the brain's `percentile`-th intensity percentile.

    `min_size` > 0 removes 26-connected components smaller than that many voxels.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"percentile_threshold expects a 3D volume, got shape {volume.shape}")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    mask = brain_mask(volume, erosion=erosion)
    if not mask.any():
        return np.zeros(volume.shape, dtype=bool)
    out = mask & (volume > np.percentile(volume[mask], percentile))
    return remove_small_lesions(out, min_voxels=min_size) if min_size > 0 else out


def dice_table(
    volumes: Sequence[np.ndarray], labels: Sequence[np.ndarray], candidates: Sequence[float], **options
) -> np.ndarray:
    """Dice of `percentile_threshold` for every (volume, candidate percentile): shape (n_volumes, n_candidates)."""
    if len(volumes) != len(labels):
        raise ValueError(f"got {len(volumes)} volumes but {len(labels)} labels")
    table = np.empty((len(volumes), len(candidates)))
    for i, (vol, lab) in enumerate(zip(volumes, labels, strict=True)):
        for j, p in enumerate(candidates):
            table[i, j] = dice(lab, percentile_threshold(vol, percentile=p, **options))
    return table


def choose_percentile(
    volumes: Sequence[np.ndarray], labels: Sequence[np.ndarray], candidates: Sequence[float], **options
) -> list[float]:
    """Leave-one-out: for each volume, the candidate percentile with the best mean Dice on the OTHER volumes.

    Needs at least two volumes; NaN Dice (both masks empty) is ignored in the mean; ties go to the first
    candidate. `options` go to `percentile_threshold` (erosion, min_size).
    """
    if len(volumes) < 2:
        raise ValueError("leave-one-out needs at least two volumes")
    if not len(candidates):
        raise ValueError("no candidate percentiles")
    table = dice_table(volumes, labels, candidates, **options)
    chosen = []
    for i in range(len(volumes)):
        others = np.delete(table, i, axis=0)
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(np.where(np.isnan(others), np.nan, others), axis=0)
        mean = np.where(np.isnan(mean), -np.inf, mean)
        chosen.append(float(candidates[int(np.argmax(mean))]))
    return chosen
